"""data.validation: the spec key, the seeded stratified carve, the cache, and the test metrics."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.loading import clear_cache, load_dataset
from genodl_core.data.types import Dataset
from genodl_core.data.validation import apply_validation, carve_validation
from genodl_core.errors import DataError, SpecError
from genodl_core.spec import ValidationSpec, spec_from_dict
from genodl_core.training.trial import run_trial


def nt3_spec(**data) -> dict:
    return {"model": {"name": "nt3", "conv": [[4, 10, 1], [4, 5, 1]], "dense": [8]},
            "data": {"source": "synthetic_nt3", "n_train": 100, "n_test": 40,
                     "n_features": 200, **data},
            "train": {"epochs": 2}}


def raw_classes(counts: list[int], n_val: int = 6) -> Dataset:
    y = np.repeat(np.arange(len(counts)), counts)
    x = np.arange(len(y) * 3, dtype=np.float32).reshape(len(y), 3)
    return Dataset(x_train=x, y_train=y, x_val=x[:n_val] + 1000, y_val=y[:n_val],
                   task="classification", n_classes=len(counts))


# --- the spec key ---------------------------------------------------------------------------

def test_default_rule_is_auto_and_part_of_the_trial_id():
    spec = spec_from_dict(nt3_spec())
    assert spec.validation == ValidationSpec("auto", 0)
    data = spec.to_dict()["data"]
    assert data["validation"] == "auto" and data["validation_seed"] == 0
    assert spec_from_dict(spec.to_dict()) == spec
    ids = {spec_from_dict(nt3_spec(**v)).trial_id for v in (
        {}, {"validation": "test"}, {"validation": 0.2}, {"validation": 0.2, "validation_seed": 1})}
    assert len(ids) == 4
    # The source's own parameters never see the key.
    assert not hasattr(spec.data.params, "validation")


def test_test_rule_ignores_the_seed_so_equal_experiments_share_an_id():
    a = spec_from_dict(nt3_spec(validation="test"))
    b = spec_from_dict(nt3_spec(validation="test", validation_seed=5))
    assert a.trial_id == b.trial_id and "validation_seed" not in a.to_dict()["data"]


@pytest.mark.parametrize("bad, reason", [("holdout", "unknown rule"), (0, "out of range"),
                                         (0.6, "out of range"), (True, "expected a name"),
                                         ([0.2], "expected a name")])
def test_bad_rules_name_the_value_and_what_is_allowed(bad, reason):
    with pytest.raises(SpecError, match=reason) as err:
        spec_from_dict(nt3_spec(validation=bad))
    assert err.value.field == "data.validation" and "fraction" in str(err.value)


def test_negative_validation_seed_is_refused():
    with pytest.raises(SpecError, match="validation_seed"):
        spec_from_dict(nt3_spec(validation_seed=-1))


# --- the carve ------------------------------------------------------------------------------

def test_carve_is_stratified_seeded_and_the_old_validation_becomes_the_test():
    raw = raw_classes([30, 10])
    ds = carve_validation(raw, 0.2, seed=0, source="toy")
    assert np.bincount(ds.y_val).tolist() == [6, 2]
    assert np.bincount(ds.y_train).tolist() == [24, 8]
    # Every row lands in exactly one of train / val; the test split is the source's val split.
    rows = np.concatenate([ds.x_train[:, 0], ds.x_val[:, 0]])
    assert sorted(rows.tolist()) == raw.x_train[:, 0].tolist()
    assert ds.x_test is raw.x_val and ds.y_test is raw.y_val
    again = carve_validation(raw, 0.2, seed=0, source="toy")
    other = carve_validation(raw, 0.2, seed=1, source="toy")
    assert np.array_equal(again.x_val, ds.x_val) and not np.array_equal(other.x_val, ds.x_val)
    record = ds.info["validation"]
    assert record["n_train"] == 32 and record["n_val"] == 8 and record["n_test"] == 6
    assert record["class_counts_val"] == [6, 2] and record["seed"] == 0


def test_auto_carves_only_when_the_source_has_no_separate_test():
    raw = raw_classes([20, 20])
    carved = apply_validation(raw, ValidationSpec("auto"), "toy")
    assert len(carved.x_val) == 8 and len(carved.x_test) == 6
    with_test = raw.replace(x_test=raw.x_val, y_test=raw.y_val)
    kept = apply_validation(with_test, ValidationSpec("auto"), "toy")
    assert kept.x_val is raw.x_val and kept.info["validation"]["validation_is"].startswith(
        "the source's own")
    candle = apply_validation(raw, ValidationSpec("test"), "toy")
    assert candle.x_val is raw.x_val and candle.x_test is None


def test_rules_that_do_not_fit_the_source_say_what_would():
    with_test = raw_classes([20, 20]).replace(x_test=np.zeros((3, 3), np.float32),
                                              y_test=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="allowed here: 'auto'"):
        apply_validation(with_test, ValidationSpec("test"), "toy")
    with pytest.raises(DataError, match="separate test split"):
        apply_validation(with_test, ValidationSpec(0.2), "toy")


def test_a_carve_that_empties_a_split_names_the_counts():
    with pytest.raises(DataError, match=r"validation=0.1 of 4 training rows carves 0"):
        carve_validation(raw_classes([2, 2]), 0.1, 0, "toy")
    with pytest.raises(DataError, match=r"no training row of class 1 \(1 rows, all carved\)"):
        carve_validation(raw_classes([10, 1]), 0.7, 0, "toy")


def test_regression_carve_takes_a_plain_seeded_share():
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    raw = Dataset(x_train=x, y_train=x * 2, x_val=x[:4], y_val=x[:4] * 2, task="regression")
    ds = carve_validation(raw, 0.2, 0, "toy")
    assert len(ds.x_val) == 5 and len(ds.x_train) == 20
    assert np.array_equal(ds.y_val, ds.x_val * 2) and "class_counts_val" not in ds.info[
        "validation"]


# --- loading: before scaling, cached by rule ------------------------------------------------

def test_load_dataset_carves_before_scaling_and_caches_per_rule():
    clear_cache()
    spec = spec_from_dict(nt3_spec())
    ds, cached = load_dataset(spec.data, spec.validation)
    assert not cached and ds.x_train.shape == (80, 200) and ds.x_val.shape == (20, 200)
    assert ds.x_test.shape == (40, 200)
    # MaxAbs fitted on the 80 remaining training rows only: they lie in [0, 1] exactly.
    assert ds.info["scaling"]["n_fit_rows"] == 80 and float(ds.x_train.max()) == 1.0
    assert load_dataset(spec.data, spec.validation)[1]
    candle, cached = load_dataset(spec.data, ValidationSpec("test"))
    assert not cached and candle.x_train.shape == (100, 200) and candle.x_test is None
    clear_cache()


def test_every_trial_seed_sees_the_same_split():
    clear_cache()
    a = spec_from_dict({**nt3_spec(), "seed": 1})
    b = spec_from_dict({**nt3_spec(), "seed": 2})
    ds_a = load_dataset(a.data, a.validation)[0]
    clear_cache()
    ds_b = load_dataset(b.data, b.validation)[0]
    assert np.array_equal(ds_a.x_val, ds_b.x_val)
    clear_cache()


# --- a trial reports on the untouched test split --------------------------------------------

def test_classifier_reports_test_metrics_and_the_split_counts(tmp_path):
    result = run_trial(nt3_spec(), tmp_path)
    assert result.ok, result.error
    final = result.final
    for key in ("val_accuracy", "test_accuracy", "test_loss"):
        assert 0.0 <= final[key] < float("inf"), key
    from genodl_core import records
    rec = records.load_record(result.path)
    assert rec.result["data"]["validation"]["n_test"] == 40
    assert rec.result["data"]["validation"]["n_val"] == 20


def test_abstaining_classifier_reports_test_abstention(tmp_path):
    spec = nt3_spec()
    spec["model"]["variant"] = "abstaining"
    result = run_trial(spec, tmp_path)
    assert result.ok, result.error
    for key in ("test_abstention", "test_abstention_accuracy", "test_accuracy"):
        assert key in result.final, key


def test_candle_arrangement_has_no_test_metrics(tmp_path):
    result = run_trial(nt3_spec(validation="test"), tmp_path)
    assert result.ok, result.error
    assert "test_accuracy" not in result.final and "val_accuracy" in result.final
