"""Null baselines: majority class, per-gene mean and median predictors, per-gene Pearson r."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import genodl_core.catalog  # noqa: F401
from genodl_core.data.types import Dataset
from genodl_core.registry import MODELS
from genodl_core.spec import spec_from_dict
from genodl_core.training import null_baselines as nb
from genodl_core.training.family import Member
from genodl_core.training.trial import run_trial

pytestmark = pytest.mark.timeout(120)


def test_majority_class_comes_from_the_noised_training_labels():
    y_train = np.array([0, 1, 1, 1, 2])
    nulls = nb.classification_nulls(y_train, 3, np.array([1, 0, 1, 2]), np.array([0, 0]))
    assert nulls == {"null_accuracy": 0.5, "test_null_accuracy": 0.0}
    assert nb.majority_class(np.array([2, 2, 0, 0]), 3) == 0  # tie: the lowest class
    assert "test_null_accuracy" not in nb.classification_nulls(y_train, 3, y_train, None)


def test_constant_predictors_and_their_gene_wise_comparison():
    y_train = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [4.0, 10.0]], np.float32)
    y_val = np.array([[0.0, 2.0], [1.0, 4.0]], np.float32)
    # mean = [1, 4], median = [0, 2.5]
    model = {"val_mae_per_gene": np.array([0.4, 1.5])}
    final, arrays = nb.regression_nulls(y_train, y_val, None, model)
    np.testing.assert_allclose(arrays["null_mean_val_mae_per_gene"], [0.5, 1.0])
    np.testing.assert_allclose(arrays["null_median_val_mae_per_gene"], [0.5, 1.0])
    assert final["null_mean_val_mae"] == pytest.approx(0.75)
    assert final["share_genes_better_than_mean"] == 0.5   # gene 0 only (strictly below)
    assert final["share_genes_better_than_median"] == 0.5
    assert not any(key.startswith("test_") or "test" in key for key in final)


def test_chunked_median_and_mae_equal_the_plain_computation(monkeypatch):
    monkeypatch.setattr(nb, "GENE_CHUNK", 3)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 10)).astype(np.float32)
    np.testing.assert_allclose(nb.per_gene_median(y), np.median(y, axis=0), rtol=1e-6)
    c = rng.normal(size=10)
    np.testing.assert_allclose(nb.constant_predictor_mae(y, c),
                               np.abs(y - c).mean(axis=0), rtol=1e-5)


def test_pearson_per_gene_is_nan_where_undefined():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(50, 3))
    pred = np.stack([truth[:, 0] * 2 + 1, -truth[:, 1], np.full(50, 0.3)], axis=1)
    r = nb.per_gene_pearson(truth, pred)
    np.testing.assert_allclose(r[:2], [1.0, -1.0])
    assert np.isnan(r[2])
    assert nb.mean_pearson(r) == pytest.approx(0.0)
    assert np.isnan(nb.mean_pearson(np.array([np.nan])))


def sparse_dataset(seed: int = 0) -> Dataset:
    """Single-cell-like targets: mostly exact zeros, unrelated to the landmarks."""
    rng = np.random.default_rng(seed)

    def split(n):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        y = rng.exponential(size=(n, 20)) * (rng.random((n, 20)) < 0.3)
        return x, y.astype(np.float32)

    (xt, yt), (xv, yv), (xs, ys) = split(60), split(200), split(200)
    return Dataset(xt, yt, xv, yv, task="regression", x_test=xs, y_test=ys)


def test_on_sparse_targets_the_median_beats_least_squares_and_the_outcome_says_so():
    ds = sparse_dataset()
    spec = spec_from_dict({"model": {"name": "lr"}, "data": {"source": "synthetic_dgex"}})
    out = MODELS.get("lr").fn(Member(spec=spec, dataset=ds, log=logging.getLogger("test")))
    final = out.final
    for key in ("null_mean_val_mae", "null_median_val_mae", "null_mean_test_mae",
                "null_median_test_mae", "share_genes_better_than_median",
                "test_share_genes_better_than_mean", "val_pearson_r", "test_pearson_r"):
        assert key in final, key
    assert final["null_median_val_mae"] < final["null_mean_val_mae"]
    assert final["null_median_val_mae"] < final["val_mae"]
    assert final["share_genes_better_than_median"] < 0.2
    assert abs(final["val_pearson_r"]) < 0.2
    assert out.arrays["val_pearson_r_per_gene"].shape == (20,)
    assert not any(name.startswith("null_") for name in out.arrays)  # finals only


def test_dgex_trial_records_null_baselines_and_pearson(tmp_path):
    spec = {"seed": 1, "device": "cpu",
            "model": {"name": "dgex", "width": 16, "monitor_size": 50, "lr_reference": False},
            "data": {"source": "synthetic_dgex", "n_landmarks": 6, "n_targets": 10,
                     "n_train": 120, "n_val": 40, "n_test": 40},
            "train": {"epochs": 3, "batch_size": 40, "learning_rate": 0.01, "momentum": 0.5}}
    result = run_trial(spec, tmp_path, raise_errors=True)
    final = result.final
    for key in ("null_mean_val_mae", "null_median_val_mae", "share_genes_better_than_mean",
                "test_share_genes_better_than_median", "val_pearson_r", "test_pearson_r"):
        assert key in final, key
    # Standardised targets: the training mean predicts about 0, an MAE near 0.8 per gene.
    assert 0.5 < final["null_mean_val_mae"] < 1.1


def test_classifier_trial_records_majority_accuracy(tmp_path):
    spec = {"seed": 1, "device": "cpu",
            "model": {"name": "nt3", "conv": [[2, 5, 1]], "pool": [4], "dense": []},
            "data": {"source": "synthetic_nt3", "n_train": 60, "n_test": 30, "n_features": 60},
            "train": {"epochs": 1}}
    final = run_trial(spec, tmp_path, raise_errors=True).final
    # Balanced classes: always guessing the majority is right on half the samples.
    assert final["null_accuracy"] == pytest.approx(0.5)
    assert final["test_null_accuracy"] == pytest.approx(0.5)


def test_report_shows_nulls_beside_the_figures_and_when_they_win(tmp_path):
    from genodl_core.results.report import report
    from genodl_core.results.summary import gather
    from tests.unit.test_gather import _write_done

    for seed in (0, 1):
        _write_done(tmp_path, {"seed": seed, "model": {"name": "lr"},
                               "data": {"source": "synthetic_dgex"}},
                    {"val_mae": 0.70, "null_mean_val_mae": 0.80, "null_median_val_mae": 0.58,
                     "share_genes_better_than_median": 0.1}, {})
        _write_done(tmp_path, {"seed": seed, "model": {"name": "nt3", "dense": [4]},
                               "data": {"source": "synthetic_nt3", "n_features": 300}},
                    {"val_accuracy": 0.9, "null_accuracy": 0.5, "test_accuracy": 0.45,
                     "test_null_accuracy": 0.5}, {})
    text = report(gather(tmp_path))
    assert "0.7000 ± 0.0000 (n=2) [null mean 0.8000, median 0.5800: median better]" in text
    assert "0.9000 ± 0.0000 (n=2) [null 0.5000]" in text
    assert "0.4500 ± 0.0000 (n=2) [null 0.5000: null better]" in text
    assert ("note: each gene's training median (null_median_val_mae) beats the model's val_mae "
            "in 1 of 1 group(s)") in text
    assert "note: always predicting the majority class (test_null_accuracy)" in text
    assert "null_accuracy " not in text.split("[nt3]")[1].splitlines()[1]  # no extra columns
