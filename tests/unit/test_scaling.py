"""Scaling: statistics fitted on training data only, CANDLE's pooled option, constant columns."""

import numpy as np
import pytest

from genodl_core.data.scaling import fit_dataset_scalers, fit_scaler, scale_dataset
from genodl_core.data.types import Dataset
from genodl_core.errors import SpecError


def _classification(rng: np.random.Generator) -> Dataset:
    x_train = rng.gamma(2.0, 3.0, (40, 6)).astype(np.float32)
    x_train[:, 2] = 0.0                       # a gene never measured in training
    x_train[5, 4] = -7.5                      # a negative value: MaxAbs uses the absolute value
    x_val = rng.gamma(2.0, 30.0, (10, 6)).astype(np.float32)  # much larger: must not leak
    return Dataset(x_train=x_train, y_train=rng.integers(0, 2, 40), x_val=x_val,
                   y_val=rng.integers(0, 2, 10), task="classification", n_classes=2,
                   info={"source": "test"})


def _regression(rng: np.random.Generator) -> Dataset:
    x_train = rng.normal(5.0, 2.0, (50, 4)).astype(np.float32)
    x_train[:, 3] = 4.25                      # constant landmark
    y_train = rng.normal(-3.0, 0.5, (50, 3)).astype(np.float32)
    return Dataset(x_train=x_train, y_train=y_train,
                   x_val=rng.normal(50.0, 9.0, (20, 4)).astype(np.float32),
                   y_val=rng.normal(10.0, 9.0, (20, 3)).astype(np.float32),
                   x_test=rng.normal(0.0, 1.0, (7, 4)).astype(np.float32),
                   y_test=rng.normal(0.0, 1.0, (7, 3)).astype(np.float32),
                   task="regression")


def test_maxabs_fits_on_train_only_and_keeps_train_in_unit_range():
    ds = _classification(np.random.default_rng(0))
    out = scale_dataset(ds, "maxabs", "train")
    peak = np.abs(ds.x_train).max(axis=0)
    peak[2] = 1.0
    np.testing.assert_allclose(out.x_train, ds.x_train / peak, rtol=1e-6)
    np.testing.assert_allclose(out.x_val, ds.x_val / peak, rtol=1e-6)
    assert np.abs(out.x_train).max() <= 1.0
    assert np.isclose(np.abs(out.x_train).max(axis=0)[[0, 1, 3, 4, 5]], 1.0).all()
    assert out.x_val.max() > 1.0              # validation was NOT used for the scale
    assert out.x_train.dtype == np.float32 and out.x_val.dtype == np.float32
    assert out.info["scaling"] == {"method": "maxabs", "fit_on": "train", "n_fit_rows": 40,
                                   "n_constant_columns": 1, "scaled_targets": False}
    assert out.info["source"] == "test" and "scaling" not in ds.info


def test_validation_data_never_influences_the_train_fitted_scale():
    ds = _classification(np.random.default_rng(1))
    other = ds.replace(x_val=ds.x_val * 1000.0 + 5.0)
    a, b = scale_dataset(ds, "maxabs", "train"), scale_dataset(other, "maxabs", "train")
    np.testing.assert_array_equal(a.x_train, b.x_train)


def test_maxabs_train_plus_test_matches_candle_pooled_fit():
    ds = _classification(np.random.default_rng(2))
    out = scale_dataset(ds, "maxabs", "train+test")
    pooled = np.abs(np.vstack([ds.x_train, ds.x_val])).max(axis=0)
    pooled[pooled == 0] = 1.0
    np.testing.assert_allclose(out.x_train, ds.x_train / pooled, rtol=1e-6)
    np.testing.assert_allclose(out.x_val, ds.x_val / pooled, rtol=1e-6)
    assert np.abs(out.x_val).max() <= 1.0
    assert out.info["scaling"]["n_fit_rows"] == 50


def test_all_zero_column_keeps_scale_one_and_stays_zero():
    ds = _classification(np.random.default_rng(3))
    out = scale_dataset(ds, "maxabs", "train")
    assert np.all(out.x_train[:, 2] == 0.0)
    np.testing.assert_allclose(out.x_val[:, 2], ds.x_val[:, 2], rtol=1e-6)
    assert np.isfinite(out.x_train).all() and np.isfinite(out.x_val).all()


def test_inputs_are_not_modified_and_outputs_are_new_arrays():
    ds = _classification(np.random.default_rng(4))
    before = {k: getattr(ds, k).copy() for k in ("x_train", "x_val", "y_train", "y_val")}
    for arr in (ds.x_train, ds.x_val):
        arr.flags.writeable = False            # memory-mapped cache arrays are read-only
    out = scale_dataset(ds, "maxabs", "train")
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(ds, k), v)
    assert not np.shares_memory(out.x_train, ds.x_train)
    assert out.x_train.flags.writeable
    np.testing.assert_array_equal(out.y_train, ds.y_train)


def test_standard_scaler_uses_train_statistics_for_every_split():
    ds = _regression(np.random.default_rng(5))
    out = scale_dataset(ds, "standard", "train")
    mean, std = ds.x_train.astype(np.float64).mean(0), ds.x_train.astype(np.float64).std(0)
    std[3] = 1.0
    np.testing.assert_allclose(out.x_train, (ds.x_train - mean) / std, atol=1e-5)
    np.testing.assert_allclose(out.x_val, (ds.x_val - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(out.x_test, (ds.x_test - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.x_train[:, :3].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.x_train[:, :3].std(0), 1.0, atol=1e-5)
    assert np.all(out.x_train[:, 3] == 0.0)    # constant landmark -> zeros, not NaN
    assert abs(out.x_val[:, 0].mean()) > 10    # far from train: proves val was not used
    # Regression targets are standardised by default with 'standard', per target gene.
    ymean, ystd = ds.y_train.mean(0), ds.y_train.std(0)
    np.testing.assert_allclose(out.y_train, (ds.y_train - ymean) / ystd, atol=1e-5)
    np.testing.assert_allclose(out.y_val, (ds.y_val - ymean) / ystd, rtol=1e-4)
    assert out.y_train.dtype == np.float32 and out.info["scaling"]["scaled_targets"] is True


def test_target_scaling_can_be_turned_off_and_inverted():
    ds = _regression(np.random.default_rng(6))
    plain = scale_dataset(ds, "standard", "train", scale_y=False)
    np.testing.assert_array_equal(plain.y_val, ds.y_val)
    scalers = fit_dataset_scalers(ds, "standard", "train")
    back = scalers.y.inverse_transform(scalers.y.transform(ds.y_val))
    np.testing.assert_allclose(back, ds.y_val, rtol=1e-5, atol=1e-5)


def test_none_passes_arrays_through_and_records_it():
    ds = _classification(np.random.default_rng(7))
    out = scale_dataset(ds, "none", "train")
    assert out.x_train is ds.x_train
    assert out.info["scaling"]["method"] == "none"


def test_blockwise_statistics_match_whole_matrix(monkeypatch):
    import genodl_core.data.scaling as scaling
    monkeypatch.setattr(scaling, "_BLOCK_CELLS", 7)  # forces many row blocks
    x = np.random.default_rng(8).lognormal(0, 1, (33, 5)).astype(np.float32)
    s = fit_scaler([x[:20], x[20:]], "standard")
    np.testing.assert_allclose(s.offset, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.scale, x.astype(np.float64).std(0), rtol=1e-5)
    m = fit_scaler([x], "maxabs")
    np.testing.assert_array_equal(m.scale, np.abs(x).max(0))


@pytest.mark.parametrize("method, fit_on, field", [("minmax", "train", "data.scaling"),
                                                   ("maxabs", "test", "data.scale_fit")])
def test_unknown_choices_name_field_and_allowed_values(method, fit_on, field):
    ds = _classification(np.random.default_rng(9))
    with pytest.raises(SpecError) as err:
        scale_dataset(ds, method, fit_on)
    assert err.value.field == field
    assert "maxabs" in str(err.value) or "train+test" in str(err.value)


def test_class_labels_are_never_scaled():
    ds = _classification(np.random.default_rng(10))
    with pytest.raises(SpecError):
        scale_dataset(ds, "standard", "train", scale_y=True)
