"""Baselines of the D-GEX paper as trial models: LR, LR-L2 (ridge), LR-L1 (lasso) and KNN-GE.

All are fitted for every target gene at once with numpy in float64:

* ``lr``: ordinary least squares with an intercept, through one thin SVD of the landmark
  matrix (the same solution as ``numpy.linalg.lstsq``, also for rank-deficient inputs, where
  it is the minimum-norm one), applied to the targets in chunks to bound memory.
* ``lr_l2``: ridge regression ``(1/n)||Y - XB||^2 + lambda ||B||^2`` (intercept unpenalised);
  every lambda of the grid reuses the same SVD, so the validation search is nearly free.
* ``lr_l1``: lasso ``(1/2n)||y - Xb||^2 + alpha ||b||_1`` by coordinate descent on the Gram
  matrix, vectorised over targets, with warm starts along a decreasing alpha path.
* ``knn_ge``: for each target gene, the ``k`` landmark genes nearest to it (Euclidean distance
  over the training samples); the prediction is the mean of those landmarks in each sample.

Hyperparameters (lambda, alpha, k) are chosen on the validation split (mean MAE over genes);
the path of validation errors is stored in the record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from genodl_core.data.types import Dataset
from genodl_core.errors import SpecError
from genodl_core.registry import MODELS
from genodl_core.training.family import FitOutcome, Member
from genodl_core.training.null_baselines import mean_pearson, per_gene_pearson, regression_nulls
from genodl_core.training.regression import mae_metrics
from genodl_core.typed import check_range

log = logging.getLogger(__name__)

_TARGET_CHUNK = 2048


# --------------------------------------------------------------------------------------------
# linear models
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearModel:
    """``y = x @ coef + intercept`` for all targets; ``coef`` is ``[L, T]``."""

    coef: np.ndarray
    intercept: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) @ self.coef + self.intercept).astype(np.float32)

    @property
    def n_parameters(self) -> int:
        return int(self.coef.size + self.intercept.size)


def _chunked_project(left: np.ndarray, y: np.ndarray,
                     offset: np.ndarray | None = None) -> np.ndarray:
    """``left @ (y - offset)`` in float64, target columns in chunks (y may be float32 and big)."""
    out = np.empty((left.shape[0], y.shape[1]), dtype=np.float64)
    for start in range(0, y.shape[1], _TARGET_CHUNK):
        block = np.asarray(y[:, start:start + _TARGET_CHUNK], np.float64)
        if offset is not None:
            block = block - offset[start:start + _TARGET_CHUNK]
        out[:, start:start + _TARGET_CHUNK] = left @ block
    return out


def fit_least_squares(x: np.ndarray, y: np.ndarray, rcond: float | None = None) -> LinearModel:
    """Ordinary least squares with intercept for every target at once.

    Uses one thin SVD of ``[x, 1]``; singular values below ``rcond * s_max`` are treated as zero
    (default: machine epsilon times the larger dimension, as ``numpy.linalg.lstsq``), so the
    result equals ``lstsq`` also when there are more landmarks than samples.
    """
    x1 = np.hstack([np.asarray(x, np.float64), np.ones((x.shape[0], 1))])
    u, s, vt = np.linalg.svd(x1, full_matrices=False)
    if rcond is None:
        rcond = np.finfo(np.float64).eps * max(x1.shape)
    keep = s > rcond * s[0] if s.size else np.zeros(0, bool)
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    beta = vt.T @ (inv[:, None] * _chunked_project(u.T, y))
    return LinearModel(beta[:-1], beta[-1])


@dataclass(frozen=True)
class _CentredSVD:
    x_mean: np.ndarray
    y_mean: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    uty: np.ndarray  # U^T (y - y_mean), [r, T]
    n: int


def _centred_svd(x: np.ndarray, y: np.ndarray) -> _CentredSVD:
    x64 = np.asarray(x, np.float64)
    x_mean = x64.mean(axis=0)
    y_mean = np.asarray(y, np.float64).mean(axis=0)
    u, s, vt = np.linalg.svd(x64 - x_mean, full_matrices=False)
    return _CentredSVD(x_mean, y_mean, s, vt, _chunked_project(u.T, y, y_mean), x.shape[0])


def ridge_from_svd(svd: _CentredSVD, lam: float) -> LinearModel:
    """Ridge solution ``V diag(s / (s^2 + n lambda)) U^T y`` (lambda is per sample)."""
    shrink = svd.s / (svd.s ** 2 + svd.n * lam)
    coef = svd.vt.T @ (shrink[:, None] * svd.uty)
    return LinearModel(coef, svd.y_mean - svd.x_mean @ coef)


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> LinearModel:
    """Ridge regression for all targets (intercept unpenalised)."""
    return ridge_from_svd(_centred_svd(x, y), lam)


def lasso_path(x: np.ndarray, y: np.ndarray, alphas: Sequence[float], *, max_iter: int = 200,
               tol: float = 1e-4, check: Callable[[], None] = lambda: None
               ) -> list[tuple[LinearModel, int]]:
    """Lasso fits for every alpha (largest first, warm-started), all targets at once.

    Coordinate descent on the Gram form ``G = X'X/n``, ``C = X'y/n`` (centred data): each
    coordinate update costs ``O(L T)`` for all targets, independent of the sample count. Stops
    when no coefficient moved more than ``tol`` times the largest coefficient (or 1).

    Returns
    -------
    list of (LinearModel, sweeps) in the order of ``alphas``.
    """
    x64 = np.asarray(x, np.float64)
    n, n_landmarks = x64.shape
    x_mean = x64.mean(axis=0)
    y_mean = np.asarray(y, np.float64).mean(axis=0)
    xc = x64 - x_mean
    gram = xc.T @ xc / n
    corr = _chunked_project(xc.T, y, y_mean) / n
    diag = np.diag(gram).copy()
    coef = np.zeros_like(corr)
    fitted = np.zeros_like(corr)  # gram @ coef, kept up to date
    results: dict[float, tuple[LinearModel, int]] = {}
    for alpha in sorted(set(alphas), reverse=True):
        sweeps = 0
        for sweeps in range(1, max_iter + 1):
            max_delta = 0.0
            for j in range(n_landmarks):
                if diag[j] <= 0.0:
                    continue
                rho = corr[j] - fitted[j] + diag[j] * coef[j]
                new = np.sign(rho) * np.maximum(np.abs(rho) - alpha, 0.0) / diag[j]
                delta = new - coef[j]
                step = float(np.max(np.abs(delta)))
                if step > 0.0:
                    fitted += np.outer(gram[:, j], delta)
                    coef[j] = new
                    max_delta = max(max_delta, step)
            check()
            if max_delta <= tol * max(1.0, float(np.max(np.abs(coef)))):
                break
        else:
            log.warning("lasso alpha=%g stopped after max_iter=%d sweeps before converging",
                        alpha, max_iter)
        results[alpha] = (LinearModel(coef.copy(), y_mean - x_mean @ coef), sweeps)
    return [results[a] for a in alphas]


# --------------------------------------------------------------------------------------------
# KNN-GE
# --------------------------------------------------------------------------------------------

def knn_ge_neighbours(x: np.ndarray, y: np.ndarray, k_max: int) -> np.ndarray:
    """Indices ``[T, k_max]`` of the landmark genes nearest to each target gene, nearest first.

    Genes are compared as vectors over the training samples (Euclidean distance); ties are
    broken by the lower landmark index, so the result is deterministic.
    """
    x64 = np.asarray(x, np.float64)
    sq_x = np.sum(x64 ** 2, axis=0)                          # [L]
    sq_y = np.sum(np.asarray(y, np.float64) ** 2, axis=0)   # [T]
    cross = _chunked_project(x64.T, y)                        # [L, T]
    dist = np.maximum(sq_x[:, None] + sq_y[None, :] - 2.0 * cross, 0.0)
    order = np.argsort(dist, axis=0, kind="stable")[:k_max]  # [k_max, T]
    return order.T.copy()


def knn_ge_weights(neighbours: np.ndarray, k: int, n_landmarks: int) -> np.ndarray:
    """Averaging matrix ``[L, T]`` with ``1/k`` at each target's k nearest landmarks."""
    n_targets = neighbours.shape[0]
    w = np.zeros((n_landmarks, n_targets), dtype=np.float64)
    cols = np.repeat(np.arange(n_targets), k)
    np.add.at(w, (neighbours[:, :k].reshape(-1), cols), 1.0 / k)
    return w


def knn_ge_predict(x: np.ndarray, neighbours: np.ndarray, k: int) -> np.ndarray:
    """Mean of each target's ``k`` nearest landmarks in every sample of ``x``."""
    w = knn_ge_weights(neighbours, k, x.shape[1])
    return (np.asarray(x, np.float64) @ w).astype(np.float32)


# --------------------------------------------------------------------------------------------
# trial models
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LRParams:
    """Ordinary least squares; ``rcond`` as in ``numpy.linalg.lstsq`` (None = its default)."""

    rcond: float | None = None

    def validate(self, where: str) -> None:
        check_range(where, "rcond", self.rcond, 0)


@dataclass(frozen=True)
class RidgeParams:
    """Ridge penalties to try (per-sample scale); the best on validation is kept."""

    lambdas: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

    def validate(self, where: str) -> None:
        _check_grid(where, "lambdas", self.lambdas)


@dataclass(frozen=True)
class LassoParams:
    """Lasso penalties to try, and the coordinate-descent limits."""

    alphas: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
    max_iter: int = 200
    tol: float = 1e-4

    def validate(self, where: str) -> None:
        _check_grid(where, "alphas", self.alphas)
        check_range(where, "max_iter", self.max_iter, 1)
        check_range(where, "tol", self.tol, 0, lo_open=True)


@dataclass(frozen=True)
class KNNGEParams:
    """Numbers of nearest landmark genes to try; the best on validation is kept."""

    ks: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 50)

    def validate(self, where: str) -> None:
        if not self.ks:
            raise SpecError(f"{where}.ks", list(self.ks), "a non-empty list of integers >= 1",
                            reason="empty grid")
        for i, k in enumerate(self.ks):
            check_range(where, f"ks[{i}]", k, 1)


def _check_grid(where: str, name: str, grid: tuple[float, ...]) -> None:
    if not grid:
        raise SpecError(f"{where}.{name}", list(grid), "a non-empty list of numbers > 0",
                        reason="empty grid")
    for i, v in enumerate(grid):
        check_range(where, f"{name}[{i}]", v, 0, lo_open=True)


def evaluate_predictor(ds: Dataset, predict: Callable[[np.ndarray], np.ndarray]
                       ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Validation (and test) MAE and Pearson r metrics and per-gene arrays of a fitted
    predictor: ``{split}_mae``, ``{split}_mae_std``, ``{split}_pearson_r`` (mean r over the
    genes where it is defined), and ``{split}_mae_per_gene``, ``{split}_pearson_r_per_gene``."""
    final: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    splits = [("val", ds.x_val, ds.y_val)]
    if ds.x_test is not None and ds.y_test is not None and len(ds.x_test):
        splits.append(("test", ds.x_test, ds.y_test))
    for split, x, y in splits:
        pred = predict(x)
        split_final, per_gene = mae_metrics(split, y, pred)
        pearson = per_gene_pearson(y, pred)
        final.update(split_final)
        final[f"{split}_pearson_r"] = mean_pearson(pearson)
        arrays[f"{split}_mae_per_gene"] = per_gene
        arrays[f"{split}_pearson_r_per_gene"] = pearson
    if ds.target_ids is not None:
        arrays["target_ids"] = np.asarray(ds.target_ids).astype(str)
    return final, arrays


def _select(ds: Dataset, candidates: Sequence[tuple[float, Callable[[np.ndarray], np.ndarray]]]
            ) -> tuple[int, list[float]]:
    """Index of the candidate with the lowest mean validation MAE, and all their errors."""
    errors = [float(np.mean(np.abs(predict(ds.x_val).astype(np.float64) - ds.y_val)))
              for _, predict in candidates]
    return int(np.argmin(errors)), errors


def _outcome(ds: Dataset, predict: Callable[[np.ndarray], np.ndarray], n_parameters: int,
             started: float, extra_final: dict[str, float] | None = None,
             extra: dict | None = None) -> FitOutcome:
    final, arrays = evaluate_predictor(ds, predict)
    # Finals only: the nulls' per-gene arrays are cheap to recompute and would double the
    # per-gene arrays every summary carries.
    final.update(regression_nulls(ds.y_train, ds.y_val, ds.y_test, arrays)[0])
    final.update(extra_final or {})
    final["n_parameters"] = float(n_parameters)
    final["train_seconds"] = time.perf_counter() - started
    return FitOutcome(curves={}, final=final, arrays=arrays, extra=extra or {})


@MODELS.register("lr", params=LRParams, task="regression")
def fit_lr(ctx: Member) -> FitOutcome:
    """Least squares for all target genes at once (the LINCS inference method)."""
    started = time.perf_counter()
    ds = ctx.dataset
    model = fit_least_squares(ds.x_train, ds.y_train, ctx.spec.model.params.rcond)
    return _outcome(ds, model.predict, model.n_parameters, started)


@MODELS.register("lr_l2", params=RidgeParams, task="regression")
def fit_lr_l2(ctx: Member) -> FitOutcome:
    """Ridge regression; lambda chosen on the validation split."""
    started = time.perf_counter()
    ds = ctx.dataset
    lambdas = ctx.spec.model.params.lambdas
    svd = _centred_svd(ds.x_train, ds.y_train)
    models = [ridge_from_svd(svd, lam) for lam in lambdas]
    best, errors = _select(ds, [(lam, m.predict) for lam, m in zip(lambdas, models)])
    ctx.log.info("lr_l2: validation MAE by lambda %s; chose %g",
                 dict(zip(lambdas, np.round(errors, 5))), lambdas[best])
    return _outcome(ds, models[best].predict, models[best].n_parameters, started,
                    {"selected_lambda": float(lambdas[best])},
                    {"validation_path": {"lambda": list(lambdas), "val_mae": errors}})


@MODELS.register("lr_l1", params=LassoParams, task="regression")
def fit_lr_l1(ctx: Member) -> FitOutcome:
    """Lasso; alpha chosen on the validation split (coordinate descent, warm starts)."""
    started = time.perf_counter()
    ds = ctx.dataset
    p: LassoParams = ctx.spec.model.params
    fits = lasso_path(ds.x_train, ds.y_train, p.alphas, max_iter=p.max_iter, tol=p.tol,
                      check=ctx.check_deadline)
    best, errors = _select(ds, [(a, m.predict) for a, (m, _) in zip(p.alphas, fits)])
    model, sweeps = fits[best]
    return _outcome(ds, model.predict, model.n_parameters, started,
                    {"selected_alpha": float(p.alphas[best]),
                     "nonzero_share": float(np.mean(model.coef != 0.0))},
                    {"validation_path": {"alpha": list(p.alphas), "val_mae": errors,
                                         "sweeps": [s for _, s in fits]}})


@MODELS.register("knn_ge", params=KNNGEParams, task="regression")
def fit_knn_ge(ctx: Member) -> FitOutcome:
    """Gene-based KNN: each target is the mean of its k most similar landmark genes."""
    started = time.perf_counter()
    ds = ctx.dataset
    n_landmarks = ds.x_train.shape[1]
    ks = tuple(k for k in ctx.spec.model.params.ks if k <= n_landmarks)
    if not ks:
        raise SpecError("model.ks", list(ctx.spec.model.params.ks),
                        f"values <= the number of landmarks ({n_landmarks})",
                        reason="every k exceeds the landmark count")
    neighbours = knn_ge_neighbours(ds.x_train, ds.y_train, max(ks))
    predictors = [(k, (lambda x, k=k: knn_ge_predict(x, neighbours, k))) for k in ks]
    best, errors = _select(ds, predictors)
    k = ks[best]
    return _outcome(ds, predictors[best][1], k * ds.y_train.shape[1], started,
                    {"selected_k": float(k)},
                    {"validation_path": {"k": list(ks), "val_mae": errors}})


__all__ = ["LinearModel", "fit_least_squares", "fit_ridge", "ridge_from_svd", "lasso_path",
           "knn_ge_neighbours", "knn_ge_predict", "knn_ge_weights", "evaluate_predictor",
           "LRParams", "RidgeParams", "LassoParams", "KNNGEParams"]
