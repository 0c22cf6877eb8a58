"""Metrics of expression prediction: MSE, Pearson and Spearman r, AUROC, overall and per group.

Plain numpy, so the synthetic source can record its oracle with the same definitions the models
are judged by. An undefined value (constant predictions or targets, a group with one class) is
NaN rather than a made-up number.
"""

from __future__ import annotations

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors; NaN when either is constant or shorter than 2."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def ranks(a: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties sharing their mean rank (as Spearman's r needs)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_a)) + 1]
    ends = np.r_[starts[1:], a.size]
    mean_rank = (starts + ends + 1) / 2.0
    out = np.empty(a.size)
    out[order] = np.repeat(mean_rank, ends - starts)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson r of the tie-averaged ranks)."""
    return pearson(ranks(a), ranks(b))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney, ties 1/2);
    NaN when only one class is present."""
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def regression_metrics(prefix: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{prefix}_mse``, ``{prefix}_pearson``, ``{prefix}_spearman``."""
    y, pred = np.asarray(y, np.float64).ravel(), np.asarray(pred, np.float64).ravel()
    return {f"{prefix}_mse": float(np.mean((y - pred) ** 2)) if y.size else float("nan"),
            f"{prefix}_pearson": pearson(y, pred), f"{prefix}_spearman": spearman(y, pred)}


def per_group(metric, groups: np.ndarray, n_groups: int, *arrays: np.ndarray) -> np.ndarray:
    """``metric(*arrays restricted to group g)`` for every group ``g`` in ``range(n_groups)``."""
    return np.array([metric(*(np.asarray(a).reshape(len(groups), -1)[groups == g].ravel()
                              for a in arrays)) for g in range(n_groups)], dtype=np.float64)


__all__ = ["pearson", "spearman", "ranks", "auroc", "regression_metrics", "per_group"]
