"""Feature noise steps: recovered magnitudes, which cells change, seeding, purity, validation."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.types import TrainArrays
from genodl_core.errors import DataError, SpecError
from genodl_core.noise.features import (ClusterParams, ColumnParams, ConstantPctParams,
                                        GaussianParams, cluster, column, constant_pct, gaussian)
from genodl_core.registry import NOISES
from genodl_core.typed import build

STEPS = {
    "gaussian": (gaussian, GaussianParams),
    "constant_pct": (constant_pct, ConstantPctParams),
    "column": (column, ColumnParams),
    "cluster": (cluster, ClusterParams),
}


def make_arrays(n=2000, f=40, seed=0, regression=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    if regression:
        return TrainArrays(x, rng.normal(size=(n, 3)).astype(np.float32), None)
    return TrainArrays(x, rng.integers(0, 2, size=n), 2)


def apply(kind, arrays, seed=1, **params):
    fn, cls = STEPS[kind]
    return fn(arrays, build(cls, params, "noise[0]"), np.random.default_rng(seed))


# --- gaussian ------------------------------------------------------------------------------

@pytest.mark.parametrize("std", [0.1, 0.5, 2.0])
def test_gaussian_std_and_mean_recovered(std):
    arrays = make_arrays()
    out = apply("gaussian", arrays, std=std)
    delta = out.arrays.x.astype(np.float64) - arrays.x
    n = delta.size
    assert delta.std() == pytest.approx(std, rel=0.02)
    assert abs(delta.mean()) < 4 * std / np.sqrt(n)
    assert np.all(delta != 0)
    assert out.record["kind"] == "gaussian"
    assert out.record["realised_std"] == pytest.approx(delta.std(), rel=1e-3)
    assert out.record["n_cells"] == n
    assert out.arrays.x.dtype == np.float32


def test_gaussian_zero_std_is_identity_and_no_clipping():
    arrays = make_arrays(n=200)
    out = apply("gaussian", arrays, std=0.0)
    np.testing.assert_array_equal(out.arrays.x, arrays.x)
    big = apply("gaussian", arrays, std=5.0)
    assert big.arrays.x.max() > arrays.x.max() + 5 and big.arrays.x.min() < arrays.x.min() - 5


def test_gaussian_casts_float64_input_to_float32_without_touching_it():
    arrays = make_arrays(n=100)
    x64 = arrays.x.astype(np.float64)
    x0 = x64.copy()
    out = apply("gaussian", TrainArrays(x64, arrays.y, 2), std=0.3)
    assert out.arrays.x.dtype == np.float32
    np.testing.assert_array_equal(x64, x0)


# --- constant_pct --------------------------------------------------------------------------

def with_zeros(arrays):
    x = arrays.x.copy()
    x[::7, ::3] = 0.0
    return TrainArrays(x, arrays.y, arrays.n_classes)


@pytest.mark.parametrize("r", [0.05, 0.5, 2.0])
def test_constant_pct_per_cell(r):
    arrays = with_zeros(make_arrays())
    out = apply("constant_pct", arrays, r=r)
    x, new = arrays.x, out.arrays.x
    zero = x == 0
    assert zero.sum() > 0
    assert np.all(new[zero] == 0)
    ratio = new[~zero].astype(np.float64) / x[~zero]
    assert ratio.min() >= 1.0 - 1e-6
    assert ratio.max() <= 1.0 + r + 1e-6
    # z ~ U[0, 1): ratio mean 1 + r/2, spread r / sqrt(12).
    assert ratio.mean() == pytest.approx(1 + r / 2, abs=4 * r / np.sqrt(12 * ratio.size))
    assert ratio.std() == pytest.approx(r / np.sqrt(12), rel=0.03)
    # Signs never change: negative values move away from zero too.
    assert np.all(np.sign(new) == np.sign(x))
    assert out.record["mean_factor"] == pytest.approx(1 + r / 2, rel=0.01)
    assert out.record["per"] == "cell"


def test_constant_pct_per_sample_has_one_ratio_per_row():
    arrays = with_zeros(make_arrays(n=500, f=20))
    r = 0.3
    out = apply("constant_pct", arrays, r=r, per="sample")
    x, new = arrays.x.astype(np.float64), out.arrays.x.astype(np.float64)
    row_ratios = []
    for i in range(x.shape[0]):
        nz = x[i] != 0
        assert np.all(new[i, ~nz] == 0)
        ratio = new[i, nz] / x[i, nz]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
        row_ratios.append(ratio[0])
    row_ratios = np.array(row_ratios)
    assert row_ratios.min() >= 1.0 - 1e-6 and row_ratios.max() <= 1 + r + 1e-6
    assert np.unique(np.round(row_ratios, 6)).size > 400


def test_constant_pct_zero_r_is_identity():
    arrays = make_arrays(n=100)
    out = apply("constant_pct", arrays, r=0.0)
    np.testing.assert_array_equal(out.arrays.x, arrays.x)


# --- column --------------------------------------------------------------------------------

@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_column_touches_only_chosen_columns(distribution):
    arrays = make_arrays(n=3000, f=12)
    cols = [1, 5, 11]
    std = 0.8
    out = apply("column", arrays, columns=cols, std=std, distribution=distribution)
    delta = out.arrays.x.astype(np.float64) - arrays.x
    others = [c for c in range(12) if c not in cols]
    assert np.all(delta[:, others] == 0)
    chosen = delta[:, cols]
    assert np.all(chosen != 0)
    assert abs(chosen.mean()) < 4 * std / np.sqrt(chosen.size)
    if distribution == "normal":
        assert chosen.std() == pytest.approx(std, rel=0.03)
    else:
        assert np.all(np.abs(chosen) <= std + 1e-6)
        assert chosen.std() == pytest.approx(std / np.sqrt(3), rel=0.03)
    # Independent noise per row and column (not one draw per column).
    assert np.unique(np.round(chosen[:, 0], 5)).size > 2900
    assert out.record["columns"] == cols
    assert out.record["n_cells"] == 3000 * 3


def test_column_beyond_width_is_refused_at_run_time():
    arrays = make_arrays(n=10, f=12)
    with pytest.raises(SpecError) as err:
        apply("column", arrays, columns=[1, 12])
    assert err.value.field.endswith("columns[1]")
    assert err.value.value == 12


# --- cluster -------------------------------------------------------------------------------

def test_cluster_by_fraction_touches_only_the_block():
    arrays = make_arrays(n=1000, f=10)
    cols = [0, 4]
    out = apply("cluster", arrays, columns=cols, row_fraction=0.25, std=0.6)
    rec = out.record
    rows = rec["row_mask"]
    assert rows.dtype == bool and rows.sum() == 250
    assert rec["n_rows"] == 250 and rec["realised_row_fraction"] == pytest.approx(0.25)
    delta = out.arrays.x.astype(np.float64) - arrays.x
    changed = delta != 0
    expected = np.zeros_like(changed)
    expected[np.ix_(rows, cols)] = True
    np.testing.assert_array_equal(changed, expected)
    assert delta[changed].std() == pytest.approx(0.6, rel=0.1)
    assert rec["n_cells"] == 500


def test_cluster_by_row_list_uniform():
    arrays = make_arrays(n=50, f=6)
    out = apply("cluster", arrays, columns=[2, 3], rows=[0, 7, 49], std=0.2,
                distribution="uniform")
    changed = out.arrays.x != arrays.x
    assert set(np.flatnonzero(changed.any(axis=1))) == {0, 7, 49}
    assert set(np.flatnonzero(changed.any(axis=0))) == {2, 3}
    delta = out.arrays.x[changed].astype(np.float64) - arrays.x[changed]
    assert np.all(np.abs(delta) <= 0.2 + 1e-6)


def test_cluster_bernoulli_rows_within_bounds():
    n = 5000
    arrays = make_arrays(n=n, f=4)
    out = apply("cluster", arrays, columns=[1], row_fraction=0.2, row_mode="bernoulli")
    assert abs(out.record["n_rows"] - 0.2 * n) <= 4 * np.sqrt(n * 0.2 * 0.8) + 1


def test_cluster_row_beyond_samples_is_refused():
    arrays = make_arrays(n=50, f=6)
    with pytest.raises(SpecError) as err:
        apply("cluster", arrays, columns=[1], rows=[3, 50])
    assert err.value.field.endswith("rows[1]")
    assert "50" in str(err.value.allowed)


# --- properties shared by every step --------------------------------------------------------

ALL_STEPS = [
    ("gaussian", {"std": 0.5}),
    ("constant_pct", {"r": 0.2}),
    ("constant_pct", {"r": 0.2, "per": "sample"}),
    ("column", {"columns": [0, 3]}),
    ("cluster", {"columns": [1, 2], "row_fraction": 0.5}),
]


@pytest.mark.parametrize("kind,params", ALL_STEPS)
def test_seeded_pure_and_targets_shared(kind, params):
    for regression in (False, True):
        arrays = make_arrays(n=300, f=8, regression=regression)
        x0, y0 = arrays.x.copy(), arrays.y.copy()
        a = apply(kind, arrays, seed=11, **params)
        b = apply(kind, arrays, seed=11, **params)
        c = apply(kind, arrays, seed=12, **params)
        np.testing.assert_array_equal(a.arrays.x, b.arrays.x)
        assert not np.array_equal(a.arrays.x, c.arrays.x)
        np.testing.assert_array_equal(arrays.x, x0)
        np.testing.assert_array_equal(arrays.y, y0)
        assert a.arrays.y is arrays.y
        assert a.arrays.n_classes == arrays.n_classes
        assert not np.shares_memory(a.arrays.x, arrays.x)
        assert a.arrays.x.dtype == np.float32
        assert a.record["kind"] == kind


def test_non_matrix_features_raise_data_error():
    arrays = TrainArrays(np.zeros(10, dtype=np.float32), np.zeros(10, dtype=np.int64), 2)
    with pytest.raises(DataError, match="2-D"):
        apply("gaussian", arrays)


def test_registered_for_both_tasks_with_level_fields():
    for kind, (fn, cls) in STEPS.items():
        entry = NOISES.get(kind)
        assert entry.fn is fn and entry.params is cls
        assert set(entry.meta["tasks"]) == {"classification", "regression"}
    assert GaussianParams.level_field == "std"
    assert ConstantPctParams.level_field == "r"
    assert ColumnParams.level_field == "std"
    assert ClusterParams.level_field == "std"
    assert build(GaussianParams, {}, "noise[0]").std == 0.5


# --- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls,params,field", [
    (GaussianParams, {"std": -1.0}, "noise[0].std"),
    (GaussianParams, {"std": "big"}, "noise[0].std"),
    (ConstantPctParams, {"r": -0.1}, "noise[0].r"),
    (ConstantPctParams, {"per": "row"}, "noise[0].per"),
    (ColumnParams, {}, "noise[0].columns"),
    (ColumnParams, {"columns": []}, "noise[0].columns"),
    (ColumnParams, {"columns": [1, -2]}, "noise[0].columns[1]"),
    (ColumnParams, {"columns": [1, 4, 1]}, "noise[0].columns[2]"),
    (ColumnParams, {"columns": [1], "std": -1}, "noise[0].std"),
    (ColumnParams, {"columns": [1], "distribution": "laplace"}, "noise[0].distribution"),
    (ClusterParams, {"columns": [1]}, "noise[0].row_fraction"),
    (ClusterParams, {"columns": [1], "rows": [1], "row_fraction": 0.1}, "noise[0].row_fraction"),
    (ClusterParams, {"columns": [1], "row_fraction": 1.5}, "noise[0].row_fraction"),
    (ClusterParams, {"columns": [1], "rows": [2, 2]}, "noise[0].rows[1]"),
    (ClusterParams, {"columns": [1], "rows": [1], "row_mode": "some"}, "noise[0].row_mode"),
])
def test_validation_names_the_field(cls, params, field):
    with pytest.raises(SpecError) as err:
        build(cls, params, "noise[0]")
    assert err.value.field == field


def test_unknown_distribution_lists_choices():
    with pytest.raises(SpecError) as err:
        build(ColumnParams, {"columns": [1], "distribution": "laplace"}, "noise[0]")
    assert set(err.value.allowed) == {"normal", "uniform"}
    assert err.value.value == "laplace"


@pytest.mark.parametrize("cls,extra", [(ColumnParams, {}), (ClusterParams, {"rows": [0]})])
def test_check_data_names_the_column(cls, extra):
    params = build(cls, {"columns": [0, 9, 10], **extra}, "noise[3]")
    params.check_data("noise[3]", 11)
    with pytest.raises(SpecError) as err:
        params.check_data("noise[3]", 10)
    assert err.value.field == "noise[3].columns[2]"
    assert err.value.value == 10
    assert err.value.allowed == "0 <= columns < 10"
