"""Regression noise steps: target noise, target outliers, landmark dropout."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.types import TrainArrays
from genodl_core.errors import DataError, SpecError
from genodl_core.noise.regression import (LandmarkDropoutParams, TargetGaussianParams,
                                          TargetOutliersParams, landmark_dropout,
                                          target_gaussian, target_outliers)
from genodl_core.registry import NOISES
from genodl_core.typed import build

STEPS = {
    "target_gaussian": (target_gaussian, TargetGaussianParams),
    "target_outliers": (target_outliers, TargetOutliersParams),
    "landmark_dropout": (landmark_dropout, LandmarkDropoutParams),
}


def make_arrays(n=1000, landmarks=30, targets=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, landmarks)).astype(np.float32)
    # Targets with distinct spreads and means, so per-gene scaling of outliers is visible.
    spread = np.linspace(0.5, 3.0, targets)
    y = (rng.normal(size=(n, targets)) * spread + np.arange(targets)).astype(np.float32)
    return TrainArrays(x, y, None)


def apply(kind, arrays, seed=1, **params):
    fn, cls = STEPS[kind]
    return fn(arrays, build(cls, params, "noise[0]"), np.random.default_rng(seed))


def four_sigma(n, p):
    return 4.0 * np.sqrt(n * p * (1 - p)) + 1.0


# --- target_gaussian -----------------------------------------------------------------------

@pytest.mark.parametrize("std", [0.1, 1.0])
def test_target_gaussian_std_recovered(std):
    arrays = make_arrays(n=4000)
    out = apply("target_gaussian", arrays, std=std)
    delta = out.arrays.y.astype(np.float64) - arrays.y
    assert delta.std() == pytest.approx(std, rel=0.02)
    assert abs(delta.mean()) < 4 * std / np.sqrt(delta.size)
    assert np.all(delta != 0)
    assert out.arrays.y.dtype == np.float32
    assert out.arrays.x is arrays.x
    assert out.record["realised_std"] == pytest.approx(delta.std(), rel=1e-3)


# --- target_outliers -----------------------------------------------------------------------

def test_outliers_cell_shift_exact():
    arrays = make_arrays()
    out = apply("target_outliers", arrays, fraction=0.03, scale=6.0)
    rec = out.record
    n, t = arrays.y.shape
    assert rec["n_units"] == n * t
    assert rec["n_outliers"] == int(np.floor(0.03 * n * t + 0.5))
    assert rec["realised_fraction"] == pytest.approx(rec["n_outliers"] / (n * t))
    mask = rec["outlier_mask"]
    assert mask.shape == (n, t) and mask.dtype == bool
    delta = out.arrays.y.astype(np.float64) - arrays.y
    np.testing.assert_array_equal(delta != 0, mask)
    gene_std = arrays.y.astype(np.float64).std(axis=0)
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose(np.abs(delta[rows, cols]), 6.0 * gene_std[cols], rtol=1e-4)
    # Random signs: roughly balanced.
    pos = int((delta[rows, cols] > 0).sum())
    assert abs(pos - rows.size / 2) <= four_sigma(rows.size, 0.5)
    assert out.arrays.y.dtype == np.float32


def test_outliers_replace_sets_mean_plus_minus_scale_std():
    arrays = make_arrays()
    out = apply("target_outliers", arrays, fraction=0.05, action="replace", sign="positive",
                scale=4.0)
    mask = out.record["outlier_mask"]
    y64 = arrays.y.astype(np.float64)
    rows, cols = np.nonzero(mask)
    expected = y64.mean(axis=0)[cols] + 4.0 * y64.std(axis=0)[cols]
    np.testing.assert_allclose(out.arrays.y[rows, cols], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.arrays.y[~mask], arrays.y[~mask])


def test_outliers_negative_sign_always_lowers():
    arrays = make_arrays(n=300)
    out = apply("target_outliers", arrays, fraction=0.1, sign="negative")
    mask = out.record["outlier_mask"]
    assert np.all(out.arrays.y[mask] < arrays.y[mask])


def test_outliers_sample_unit_corrupts_whole_profiles():
    arrays = make_arrays(n=500)
    out = apply("target_outliers", arrays, fraction=0.1, unit="sample")
    rec = out.record
    mask = rec["outlier_mask"]
    rows = mask.any(axis=1)
    assert np.all(mask[rows]) and not np.any(mask[~rows])
    assert rec["n_units"] == 500 and rec["n_outliers"] == 50 == int(rows.sum())
    assert rec["n_cells"] == 50 * arrays.y.shape[1]
    assert rec["realised_fraction"] == pytest.approx(0.1)


def test_outliers_bernoulli_within_bounds():
    arrays = make_arrays(n=2000)
    n_cells = arrays.y.size
    counts = [apply("target_outliers", arrays, seed=s, fraction=0.02,
                    mode="bernoulli").record["n_outliers"] for s in range(3)]
    for c in counts:
        assert abs(c - 0.02 * n_cells) <= four_sigma(n_cells, 0.02)
    assert len(set(counts)) > 1


def test_outliers_constant_gene_uses_unit_std():
    arrays = make_arrays(n=200, targets=3)
    y = arrays.y.copy()
    y[:, 1] = 2.0
    out = apply("target_outliers", TrainArrays(arrays.x, y, None), fraction=1.0,
                sign="positive", scale=3.0)
    np.testing.assert_allclose(out.arrays.y[:, 1], 5.0)


# --- landmark_dropout ----------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_dropout_exact_count_and_fill(fraction):
    arrays = make_arrays(n=400, landmarks=25)
    out = apply("landmark_dropout", arrays, fraction=fraction, fill=-7.5)
    rec = out.record
    n_cells = arrays.x.size
    expected = int(np.floor(fraction * n_cells + 0.5))
    mask = rec["dropout_mask"]
    assert mask.shape == arrays.x.shape and mask.dtype == bool
    assert rec["n_dropped"] == expected == int(mask.sum())
    assert rec["realised_fraction"] == pytest.approx(expected / n_cells)
    assert np.all(out.arrays.x[mask] == -7.5)
    np.testing.assert_array_equal(out.arrays.x[~mask], arrays.x[~mask])
    assert out.arrays.y is arrays.y
    assert out.arrays.x.dtype == np.float32


def test_dropout_default_fill_zero_and_bernoulli_bounds():
    arrays = make_arrays(n=2000, landmarks=30)
    out = apply("landmark_dropout", arrays, fraction=0.2, mode="bernoulli")
    rec = out.record
    assert abs(rec["n_dropped"] - 0.2 * arrays.x.size) <= four_sigma(arrays.x.size, 0.2)
    assert np.all(out.arrays.x[rec["dropout_mask"]] == 0.0)
    # Cells are chosen independently: dropped counts differ across landmarks.
    per_landmark = rec["dropout_mask"].sum(axis=0)
    assert per_landmark.min() < per_landmark.max()


# --- shared properties ---------------------------------------------------------------------

@pytest.mark.parametrize("kind,params", [
    ("target_gaussian", {"std": 0.3}),
    ("target_outliers", {"fraction": 0.1}),
    ("target_outliers", {"fraction": 0.1, "unit": "sample", "action": "replace"}),
    ("landmark_dropout", {"fraction": 0.3}),
])
def test_seeded_and_pure(kind, params):
    arrays = make_arrays(n=300)
    x0, y0 = arrays.x.copy(), arrays.y.copy()
    a = apply(kind, arrays, seed=5, **params)
    b = apply(kind, arrays, seed=5, **params)
    c = apply(kind, arrays, seed=6, **params)
    np.testing.assert_array_equal(a.arrays.x, b.arrays.x)
    np.testing.assert_array_equal(a.arrays.y, b.arrays.y)
    assert not (np.array_equal(a.arrays.x, c.arrays.x) and np.array_equal(a.arrays.y, c.arrays.y))
    np.testing.assert_array_equal(arrays.x, x0)
    np.testing.assert_array_equal(arrays.y, y0)
    assert not np.shares_memory(a.arrays.x, arrays.x) or a.arrays.x is arrays.x
    assert not np.shares_memory(a.arrays.y, arrays.y) or a.arrays.y is arrays.y
    assert a.record["kind"] == kind


def test_target_steps_need_a_target_matrix():
    arrays = make_arrays(n=20)
    with pytest.raises(DataError, match="targets"):
        apply("target_gaussian", TrainArrays(arrays.x, arrays.y[:, 0], None))


def test_registered_for_regression_only():
    for kind, (fn, cls) in STEPS.items():
        entry = NOISES.get(kind)
        assert entry.fn is fn and entry.params is cls
        assert entry.meta["tasks"] == ("regression",)
    assert TargetGaussianParams.level_field == "std"
    assert TargetOutliersParams.level_field == "fraction"
    assert LandmarkDropoutParams.level_field == "fraction"


@pytest.mark.parametrize("cls,params,field", [
    (TargetGaussianParams, {"std": -1.0}, "noise[0].std"),
    (TargetOutliersParams, {"fraction": 1.5}, "noise[0].fraction"),
    (TargetOutliersParams, {"scale": -2.0}, "noise[0].scale"),
    (TargetOutliersParams, {"unit": "gene"}, "noise[0].unit"),
    (TargetOutliersParams, {"action": "drop"}, "noise[0].action"),
    (TargetOutliersParams, {"sign": "up"}, "noise[0].sign"),
    (TargetOutliersParams, {"mode": "binomial"}, "noise[0].mode"),
    (LandmarkDropoutParams, {"fraction": -0.5}, "noise[0].fraction"),
    (LandmarkDropoutParams, {"fill": "nan"}, "noise[0].fill"),
])
def test_validation_names_the_field(cls, params, field):
    with pytest.raises(SpecError) as err:
        build(cls, params, "noise[0]")
    assert err.value.field == field
    assert err.value.value == next(iter(params.values()))


# --- whole-spec validation -----------------------------------------------------------------

def dgex_spec(*steps):
    return {"model": {"name": "dgex"},
            "data": {"source": "synthetic_dgex", "n_landmarks": 20, "n_targets": 10},
            "noise": list(steps)}


def test_spec_resolves_regression_steps():
    from genodl_core.spec import spec_from_dict

    spec = spec_from_dict(dgex_spec({"kind": "gaussian", "std": 0.2},
                                    {"kind": "target_outliers", "unit": "sample"},
                                    {"kind": "landmark_dropout", "fraction": 0.25}))
    steps = spec.to_dict()["noise"]
    assert [s["kind"] for s in steps] == ["gaussian", "target_outliers", "landmark_dropout"]
    assert steps[1]["scale"] == 5.0 and steps[1]["unit"] == "sample"
    assert steps[2] == {"kind": "landmark_dropout", "fraction": 0.25, "fill": 0.0,
                        "mode": "exact"}


@pytest.mark.parametrize("step,field", [
    ({"kind": "landmark_dropout", "fraction": 1.5}, "noise[0].fraction"),
    ({"kind": "target_gaussian", "std": -1}, "noise[0].std"),
    ({"kind": "target_outliers", "unit": "gene"}, "noise[0].unit"),
    ({"kind": "column", "columns": [3, 20]}, "noise[0].columns[1]"),
    ({"kind": "cluster", "columns": [25], "rows": [0]}, "noise[0].columns[0]"),
    ({"kind": "label_flip"}, "noise[0].kind"),
])
def test_spec_errors_name_the_noise_field(step, field):
    from genodl_core.spec import spec_from_dict

    with pytest.raises(SpecError) as err:
        spec_from_dict(dgex_spec(step))
    assert err.value.field == field
    if "columns" in field:
        assert err.value.allowed == "0 <= columns < 20"
    if field.endswith(".kind"):
        assert "landmark_dropout" in err.value.allowed
        assert "label_flip" not in err.value.allowed


def test_steps_compose_in_order_through_the_registry():
    arrays = make_arrays(n=200, landmarks=10, targets=4)
    steps = [("target_outliers", {"fraction": 0.1, "sign": "positive"}),
             ("landmark_dropout", {"fraction": 0.2, "fill": 9.0}),
             ("gaussian", {"std": 0.1})]
    current, records = arrays, []
    for i, (kind, params) in enumerate(steps):
        entry = NOISES.get(kind)
        out = entry.fn(current, build(entry.params, params, f"noise[{i}]"),
                       np.random.default_rng(100 + i))
        current, records = out.arrays, records + [out.record]
    # Targets carry the outliers (later steps leave y alone) ...
    np.testing.assert_array_equal(current.y != arrays.y, records[0]["outlier_mask"])
    # ... and the dropped cells were filled, then noised by the later Gaussian step.
    dropped = records[1]["dropout_mask"]
    assert np.all(np.abs(current.x[dropped] - 9.0) < 1.0)
    assert np.all(current.x[dropped] != 9.0)
