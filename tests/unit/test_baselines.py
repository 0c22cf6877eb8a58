"""LR, ridge, lasso and KNN-GE baselines: exact solutions, hand-made cases, model selection."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import genodl_core.catalog  # noqa: F401
from genodl_core.data.types import Dataset
from genodl_core.errors import SpecError
from genodl_core.models.baselines import (fit_least_squares, fit_ridge, knn_ge_neighbours,
                                          knn_ge_predict, lasso_path)
from genodl_core.registry import MODELS
from genodl_core.spec import spec_from_dict
from genodl_core.training.family import Member

pytestmark = pytest.mark.timeout(60)


def _linear_data(n=80, n_landmarks=6, n_targets=4, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_landmarks))
    coef = rng.normal(size=(n_landmarks, n_targets))
    y = x @ coef + 0.5 + noise * rng.normal(size=(n, n_targets))
    return x.astype(np.float32), y.astype(np.float32)


def _fit(model: str, ds: Dataset, **params):
    spec = spec_from_dict({"model": {"name": model, **params},
                           "data": {"source": "synthetic_dgex"}})
    return MODELS.get(model).fn(Member(spec=spec, dataset=ds, log=logging.getLogger("test")))


def _dataset(seed=0, n_landmarks=6, n_targets=4, noise=0.1):
    x, y = _linear_data(n=300, n_landmarks=n_landmarks, n_targets=n_targets, noise=noise,
                        seed=seed)
    return Dataset(x[:200], y[:200], x[200:250], y[200:250], task="regression",
                   x_test=x[250:], y_test=y[250:],
                   target_ids=np.array([f"t{j}" for j in range(n_targets)]))


def test_lr_equals_numpy_least_squares():
    x, y = _linear_data()
    model = fit_least_squares(x, y)
    x1 = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    expected, *_ = np.linalg.lstsq(x1, y.astype(np.float64), rcond=None)
    np.testing.assert_allclose(model.coef, expected[:-1], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(model.intercept, expected[-1], rtol=1e-9, atol=1e-10)


def test_lr_equals_lstsq_min_norm_when_underdetermined():
    x, y = _linear_data(n=5, n_landmarks=12, n_targets=3)
    model = fit_least_squares(x, y)
    x1 = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    expected, *_ = np.linalg.lstsq(x1, y.astype(np.float64), rcond=None)
    np.testing.assert_allclose(np.vstack([model.coef, model.intercept]), expected, atol=1e-9)
    np.testing.assert_allclose(model.predict(x), y, atol=1e-4)  # interpolates the samples


def test_ridge_matches_closed_form_and_shrinks():
    x, y = _linear_data()
    lam = 0.3
    model = fit_ridge(x, y, lam)
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    n = len(x)
    expected = np.linalg.solve(xc.T @ xc + n * lam * np.eye(x.shape[1]), xc.T @ yc)
    np.testing.assert_allclose(model.coef, expected, rtol=1e-6, atol=1e-8)
    assert np.abs(fit_ridge(x, y, 1e6).coef).max() < 1e-3
    np.testing.assert_allclose(fit_ridge(x, y, 1e-12).coef, fit_least_squares(x, y).coef,
                               atol=1e-6)


def test_lasso_zero_above_alpha_max_and_kkt_conditions():
    x, y = _linear_data(noise=0.5)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x64 - x64.mean(0), y64 - y64.mean(0)
    n = len(x)
    alpha_max = np.abs(xc.T @ yc).max() / n
    alpha = 0.2
    (zero, _), (fit, sweeps) = lasso_path(x, y, [alpha_max * 1.01, alpha], max_iter=1000,
                                          tol=1e-10)
    assert np.all(zero.coef == 0.0)
    assert sweeps < 1000
    grad = xc.T @ (yc - xc @ fit.coef) / n
    active = fit.coef != 0.0
    assert active.any() and (~active).any()
    np.testing.assert_allclose(grad[active], alpha * np.sign(fit.coef[active]), atol=1e-6)
    assert np.all(np.abs(grad[~active]) <= alpha + 1e-6)
    (tiny, _), = lasso_path(x, y, [1e-9], max_iter=5000, tol=1e-12)
    np.testing.assert_allclose(tiny.coef, fit_least_squares(x, y).coef, atol=1e-5)


def test_knn_ge_hand_made_example():
    # Three landmark genes over four training samples, two target genes.
    x = np.array([[0.0, 1.0, 10.0],
                  [0.0, 1.0, 10.0],
                  [0.0, 1.0, 10.0],
                  [0.0, 1.0, 10.0]])
    # Target 0 sits at 0.9: nearest l1 (distance 0.2), then l0 (1.8), then l2.
    # Target 1 sits at 7: nearest l2 (6), then l1 (12), then l0 (14).
    y = np.array([[0.9, 7.0]] * 4)
    neighbours = knn_ge_neighbours(x, y, 3)
    assert neighbours.tolist() == [[1, 0, 2], [2, 1, 0]]
    x_new = np.array([[2.0, 4.0, 12.0]])
    np.testing.assert_allclose(knn_ge_predict(x_new, neighbours, 1), [[4.0, 12.0]])
    np.testing.assert_allclose(knn_ge_predict(x_new, neighbours, 2), [[3.0, 8.0]])
    np.testing.assert_allclose(knn_ge_predict(x_new, neighbours, 3), [[6.0, 6.0]])


def test_knn_ge_model_selects_k_on_validation():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(300, 1))
    # Landmarks 0-3 are noisy copies of one signal, 4-9 unrelated; the target is the signal.
    # Averaging the 4 copies cancels their noise best, so k=4 wins on validation.
    x = np.hstack([base + 0.5 * rng.normal(size=(300, 4)), rng.normal(size=(300, 6))])
    y = base + 0.05 * rng.normal(size=(300, 1))
    ds = Dataset(x[:200].astype(np.float32), y[:200].astype(np.float32),
                 x[200:].astype(np.float32), y[200:].astype(np.float32), task="regression")
    out = _fit("knn_ge", ds, ks=[1, 2, 4, 8])
    assert out.final["selected_k"] == 4.0
    path = out.extra["validation_path"]
    assert path["k"] == [1, 2, 4, 8] and int(np.argmin(path["val_mae"])) == 2
    assert out.final["val_mae"] == pytest.approx(min(path["val_mae"]), rel=1e-5)


def test_registered_baselines_report_metrics_and_arrays():
    ds = _dataset()
    lr = _fit("lr", ds)
    for key in ("val_mae", "val_mae_std", "test_mae", "test_mae_std", "n_parameters",
                "train_seconds"):
        assert key in lr.final
    assert lr.arrays["target_ids"].tolist() == ["t0", "t1", "t2", "t3"]
    per_gene = lr.arrays["val_mae_per_gene"]
    assert per_gene.shape == (4,)
    assert lr.final["val_mae"] == pytest.approx(per_gene.mean())
    assert lr.final["val_mae_std"] == pytest.approx(per_gene.std())
    # Linear data with noise 0.1: LR's per-gene MAE is near 0.1 * sqrt(2/pi).
    assert 0.05 < lr.final["val_mae"] < 0.12
    ridge = _fit("lr_l2", ds, lambdas=[1e-6, 10.0])
    assert ridge.final["selected_lambda"] == 1e-6
    lasso = _fit("lr_l1", ds, alphas=[1.0, 1e-4])
    assert lasso.final["selected_alpha"] == 1e-4
    assert lasso.final["val_mae"] == pytest.approx(lr.final["val_mae"], rel=0.02)
    knn = _fit("knn_ge", ds)
    assert knn.final["val_mae"] > lr.final["val_mae"]


def test_bad_baseline_params():
    with pytest.raises(SpecError, match=r"model\.ks\[1\]=0: out of range"):
        spec_from_dict({"model": {"name": "knn_ge", "ks": [1, 0]},
                        "data": {"source": "synthetic_dgex"}})
    with pytest.raises(SpecError, match=r"model\.lambdas.*empty grid"):
        spec_from_dict({"model": {"name": "lr_l2", "lambdas": []},
                        "data": {"source": "synthetic_dgex"}})
    with pytest.raises(SpecError, match=r"model\.alphas\[0\]=-1.0"):
        spec_from_dict({"model": {"name": "lr_l1", "alphas": [-1.0]},
                        "data": {"source": "synthetic_dgex"}})
    ds = _dataset(n_landmarks=6)
    with pytest.raises(SpecError, match=r"model\.ks.*every k exceeds the landmark count"):
        _fit("knn_ge", ds, ks=[7, 9])
