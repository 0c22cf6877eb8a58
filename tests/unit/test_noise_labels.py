"""Label-flip noise steps: realised amounts, where flips land, seeding, purity, validation."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from genodl_core.data.types import TrainArrays
from genodl_core.errors import DataError, SpecError
from genodl_core.noise.base import exact_count
from genodl_core.noise.labels import (CorrelatedLabelFlipParams, LabelFlipParams,
                                      correlated_label_flip, label_flip)
from genodl_core.registry import NOISES
from genodl_core.typed import build


def make_arrays(n: int = 1000, n_features: int = 8, n_classes: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    y = rng.integers(0, n_classes, size=n).astype(np.int64)
    return TrainArrays(x, y, n_classes)


def flip(arrays, seed=1, **params):
    return label_flip(arrays, build(LabelFlipParams, params, "noise[0]"),
                      np.random.default_rng(seed))


def corr_flip(arrays, seed=1, **params):
    return correlated_label_flip(arrays, build(CorrelatedLabelFlipParams, params, "noise[0]"),
                                 np.random.default_rng(seed))


def four_sigma(n: int, p: float) -> float:
    return 4.0 * np.sqrt(n * p * (1.0 - p)) + 1.0


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.2, 0.333, 0.5, 1.0])
def test_exact_mode_flips_exactly_the_rounded_count(fraction):
    arrays = make_arrays(n=999)
    out = flip(arrays, fraction=fraction)
    expected = int(np.floor(fraction * 999 + 0.5))
    rec = out.record
    assert rec["kind"] == "label_flip"
    assert rec["n_flipped"] == expected
    assert rec["realised_fraction"] == pytest.approx(expected / 999)
    assert isinstance(rec["realised_fraction"], float) and isinstance(rec["n_flipped"], int)
    assert rec["flip_mask"].dtype == bool and rec["flip_mask"].shape == (999,)
    np.testing.assert_array_equal(out.arrays.y != arrays.y, rec["flip_mask"])


def test_exact_count_rounds_half_up():
    assert exact_count(0.5, 3) == 2
    assert exact_count(0.5, 5) == 3
    assert exact_count(0.25, 10) == 3
    assert exact_count(0.0, 10) == 0 and exact_count(1.0, 10) == 10


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.7])
def test_bernoulli_mode_is_within_binomial_bounds(fraction):
    n = 20000
    arrays = make_arrays(n=n)
    counts = [flip(arrays, seed=s, fraction=fraction, mode="bernoulli").record["n_flipped"]
              for s in range(5)]
    for c in counts:
        assert abs(c - n * fraction) <= four_sigma(n, fraction)
    # Bernoulli counts vary between seeds, exact counts do not.
    assert len(set(counts)) > 1


def test_binary_flip_swaps_the_class():
    arrays = make_arrays(n=500)
    out = flip(arrays, fraction=0.4)
    mask = out.record["flip_mask"]
    np.testing.assert_array_equal(out.arrays.y[mask], 1 - arrays.y[mask])
    np.testing.assert_array_equal(out.arrays.y[~mask], arrays.y[~mask])
    assert out.arrays.y.dtype == np.int64


def test_multiclass_flips_land_on_another_class_uniformly():
    k, n, fraction = 4, 40000, 0.6
    arrays = make_arrays(n=n, n_classes=k)
    out = flip(arrays, fraction=fraction)
    mask = out.record["flip_mask"]
    old, new = arrays.y[mask], out.arrays.y[mask]
    assert np.all(old != new)
    assert np.all((new >= 0) & (new < k))
    for c in range(k):
        dest = new[old == c]
        m = dest.size
        counts = np.bincount(dest, minlength=k)
        assert counts[c] == 0
        for other in range(k):
            if other != c:
                assert abs(counts[other] - m / (k - 1)) <= four_sigma(m, 1 / (k - 1))


def test_same_seed_same_flips_different_seed_different():
    arrays = make_arrays()
    a = flip(arrays, seed=7, fraction=0.3)
    b = flip(arrays, seed=7, fraction=0.3)
    c = flip(arrays, seed=8, fraction=0.3)
    np.testing.assert_array_equal(a.arrays.y, b.arrays.y)
    np.testing.assert_array_equal(a.record["flip_mask"], b.record["flip_mask"])
    assert not np.array_equal(a.record["flip_mask"], c.record["flip_mask"])


def test_inputs_are_not_mutated_and_x_is_shared():
    arrays = make_arrays()
    x0, y0 = arrays.x.copy(), arrays.y.copy()
    out = flip(arrays, fraction=0.5)
    np.testing.assert_array_equal(arrays.x, x0)
    np.testing.assert_array_equal(arrays.y, y0)
    assert out.arrays.x is arrays.x
    assert out.arrays.y is not arrays.y
    assert not np.shares_memory(out.arrays.y, arrays.y)
    assert out.arrays.n_classes == 2


def test_n_classes_is_inferred_when_missing():
    arrays = make_arrays(n_classes=3)
    out = flip(TrainArrays(arrays.x, arrays.y, None), fraction=0.5)
    assert out.record["n_classes"] == 3
    assert out.arrays.n_classes == 3


def test_bad_labels_raise_data_error_naming_the_row():
    arrays = make_arrays(n=50)
    y = arrays.y.copy()
    y[17] = 5
    with pytest.raises(DataError, match="row 17"):
        flip(TrainArrays(arrays.x, y, 2), fraction=0.1)
    with pytest.raises(DataError, match="at least 2"):
        flip(TrainArrays(arrays.x, np.zeros(10, dtype=np.int64), 1), fraction=0.1)
    with pytest.raises(DataError, match="integer"):
        flip(TrainArrays(arrays.x, arrays.y.astype(np.float32), 2), fraction=0.1)


# --- correlated label flips ----------------------------------------------------------------

def correlated_arrays(n=4000, seed=0):
    arrays = make_arrays(n=n, n_features=6, seed=seed)
    x = arrays.x.copy()
    # Column 3 mimics a prevalent, label-correlated gene: higher in class 1.
    x[:, 3] = x[:, 3] * 0.5 + (arrays.y - 0.3)
    return TrainArrays(x, arrays.y, 2)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_correlated_flips_touch_only_eligible_samples(fraction):
    arrays = correlated_arrays()
    out = corr_flip(arrays, fraction=fraction, feature_col=3, feature_threshold=0.2)
    rec = out.record
    eligible = arrays.x[:, 3] > 0.2
    np.testing.assert_array_equal(rec["eligible_mask"], eligible)
    n_eligible = int(eligible.sum())
    assert 0 < n_eligible < arrays.x.shape[0]
    assert rec["n_eligible"] == n_eligible
    changed = out.arrays.y != arrays.y
    np.testing.assert_array_equal(changed, rec["flip_mask"])
    assert not np.any(changed & ~eligible)
    expected = int(np.floor(fraction * n_eligible + 0.5))
    assert rec["n_flipped"] == expected
    assert rec["realised_fraction_eligible"] == pytest.approx(expected / n_eligible)
    assert rec["realised_fraction"] == pytest.approx(expected / arrays.x.shape[0])
    assert rec["realised_fraction"] < rec["realised_fraction_eligible"]


def test_correlated_bernoulli_within_bounds_among_eligible():
    arrays = correlated_arrays(n=20000)
    out = corr_flip(arrays, fraction=0.3, mode="bernoulli", feature_col=3,
                    feature_threshold=0.0)
    rec = out.record
    m = rec["n_eligible"]
    assert abs(rec["n_flipped"] - 0.3 * m) <= four_sigma(m, 0.3)
    assert not np.any(rec["flip_mask"] & ~rec["eligible_mask"])


def test_correlated_threshold_is_strict_and_no_eligible_flips_nothing(caplog):
    arrays = correlated_arrays(n=200)
    x = arrays.x.copy()
    x[:, 3] = 0.01
    with caplog.at_level(logging.WARNING):
        out = corr_flip(TrainArrays(x, arrays.y, 2), fraction=1.0, feature_col=3)
    assert out.record["n_eligible"] == 0
    assert out.record["n_flipped"] == 0
    assert out.record["realised_fraction_eligible"] == 0.0
    np.testing.assert_array_equal(out.arrays.y, arrays.y)
    assert "no label was flipped" in caplog.text


def test_correlated_is_seeded_and_pure():
    arrays = correlated_arrays()
    x0, y0 = arrays.x.copy(), arrays.y.copy()
    a = corr_flip(arrays, seed=3, fraction=0.4, feature_col=3)
    b = corr_flip(arrays, seed=3, fraction=0.4, feature_col=3)
    c = corr_flip(arrays, seed=4, fraction=0.4, feature_col=3)
    np.testing.assert_array_equal(a.arrays.y, b.arrays.y)
    assert not np.array_equal(a.arrays.y, c.arrays.y)
    np.testing.assert_array_equal(arrays.x, x0)
    np.testing.assert_array_equal(arrays.y, y0)
    assert a.arrays.x is arrays.x


def test_correlated_defaults_are_the_papers():
    p = build(CorrelatedLabelFlipParams, {}, "noise[0]")
    assert p.feature_col == 11180 and p.feature_threshold == 0.01
    assert p.mode == "exact"
    assert CorrelatedLabelFlipParams.level_field == "fraction"
    assert LabelFlipParams.level_field == "fraction"


# --- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [LabelFlipParams, CorrelatedLabelFlipParams])
@pytest.mark.parametrize("fraction", [1.5, -0.1])
def test_fraction_out_of_range_names_the_field(cls, fraction):
    with pytest.raises(SpecError) as err:
        build(cls, {"fraction": fraction}, "noise[0]")
    assert err.value.field == "noise[0].fraction"
    assert err.value.value == fraction
    assert "1.0" in str(err.value.allowed)


@pytest.mark.parametrize("cls", [LabelFlipParams, CorrelatedLabelFlipParams])
def test_unknown_mode_lists_the_modes(cls):
    with pytest.raises(SpecError) as err:
        build(cls, {"mode": "binomial"}, "noise[2]")
    assert err.value.field == "noise[2].mode"
    assert set(err.value.allowed) == {"exact", "bernoulli"}


def test_feature_col_checks():
    with pytest.raises(SpecError) as err:
        build(CorrelatedLabelFlipParams, {"feature_col": -1}, "noise[0]")
    assert err.value.field == "noise[0].feature_col"
    params = build(CorrelatedLabelFlipParams, {"feature_col": 6}, "noise[1]")
    params.check_data("noise[1]", 7)
    with pytest.raises(SpecError) as err:
        params.check_data("noise[1]", 6)
    assert err.value.field == "noise[1].feature_col"
    assert err.value.value == 6
    assert err.value.allowed == "0 <= feature_col < 6"
    # The step itself refuses a column beyond the data it is given.
    with pytest.raises(SpecError, match="feature_col"):
        corr_flip(make_arrays(n_features=6), feature_col=6)


def test_unknown_key_is_rejected():
    with pytest.raises(SpecError) as err:
        build(LabelFlipParams, {"fracton": 0.1}, "noise[0]")
    assert err.value.field == "noise[0].fracton"


def test_registered_for_classification_only():
    for name in ("label_flip", "correlated_label_flip"):
        entry = NOISES.get(name)
        assert entry.meta["tasks"] == ("classification",)
    assert NOISES.get("label_flip").params is LabelFlipParams


# --- whole-spec validation -----------------------------------------------------------------

def nt3_spec(*steps):
    return {"model": {"name": "nt3"},
            "data": {"source": "synthetic_nt3", "n_features": 50, "n_train": 20, "n_test": 10},
            "noise": list(steps)}


def test_spec_resolves_label_steps_with_defaults():
    from genodl_core.spec import spec_from_dict

    spec = spec_from_dict(nt3_spec({"kind": "label_flip", "fraction": 0.2},
                                   {"kind": "correlated_label_flip", "feature_col": 7}))
    steps = spec.to_dict()["noise"]
    assert steps[0] == {"kind": "label_flip", "fraction": 0.2, "mode": "exact"}
    assert steps[1]["feature_threshold"] == 0.01 and steps[1]["feature_col"] == 7
    # Omitted defaults and explicit defaults are the same trial.
    explicit = spec_from_dict(nt3_spec({"kind": "label_flip", "fraction": 0.2, "mode": "exact"},
                                       {"kind": "correlated_label_flip", "feature_col": 7,
                                        "fraction": 0.1}))
    assert explicit.trial_id == spec.trial_id


@pytest.mark.parametrize("step,field", [
    ({"kind": "label_flip", "fraction": 1.5}, "noise[1].fraction"),
    ({"kind": "label_flip", "mode": "sometimes"}, "noise[1].mode"),
    ({"kind": "correlated_label_flip", "feature_col": -3}, "noise[1].feature_col"),
    ({"kind": "label_flop"}, "noise[1].kind"),
    ({"kind": "target_gaussian"}, "noise[1].kind"),
])
def test_spec_errors_name_the_noise_field(step, field):
    from genodl_core.spec import spec_from_dict

    with pytest.raises(SpecError) as err:
        spec_from_dict(nt3_spec({"kind": "gaussian"}, step))
    assert err.value.field == field
    if field.endswith(".kind"):
        assert "label_flip" in err.value.allowed
