"""Metrics of gene-pair classifiers: ROC AUC, PR AUC, balanced accuracy, per class.

Pair data are imbalanced (seed 001's were ~98% negative): accuracy alone rewards a model that
always answers "no relation", so the summary also gets ROC AUC (ranking), PR AUC (average
precision, what a curator screening the top pairs sees) and balanced accuracy (mean recall over
classes; 1 / classes for a constant guess). With 3 classes each is computed one class against
the rest (``_c0``, ``_c1``, ``_c2``) and averaged (macro). Plain numpy; an undefined value (a
split without one of the classes) is NaN, never a made-up number.
"""

from __future__ import annotations

import numpy as np

from genodl_core.data.histone_metrics import auroc


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (scikit-learn's
    definition: precision at each distinct threshold weighted by the recall it adds);
    NaN without positives."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, hit = scores[order], labels[order]
    # Tied scores form one threshold: take the counts at the last row of each tie group.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(hit)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Mean over the classes present of the share of their samples predicted right."""
    recalls = [np.mean(predicted[labels == c] == c) for c in range(n_classes)
               if np.any(labels == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def pair_metrics(prefix: str, probabilities: np.ndarray, labels: np.ndarray,
                 n_classes: int) -> dict[str, float]:
    """``{prefix}_roc_auc``, ``_pr_auc``, ``_balanced_accuracy`` (and per class for 3 classes)
    from probabilities ``[n, outputs]`` whose first ``n_classes`` columns are the real classes
    (an abstention column beyond them is ignored: scores are renormalised over the classes)."""
    real = np.asarray(probabilities, dtype=np.float64)[:, :n_classes]
    real = real / np.maximum(real.sum(axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    out = {f"{prefix}_balanced_accuracy": balanced_accuracy(real.argmax(axis=1), labels,
                                                            n_classes)}
    if n_classes == 2:
        out[f"{prefix}_roc_auc"] = auroc(real[:, 1], labels == 1)
        out[f"{prefix}_pr_auc"] = average_precision(real[:, 1], labels == 1)
        return out
    roc, pr = [], []
    for c in range(n_classes):
        roc.append(auroc(real[:, c], labels == c))
        pr.append(average_precision(real[:, c], labels == c))
        out[f"{prefix}_roc_auc_c{c}"], out[f"{prefix}_pr_auc_c{c}"] = roc[-1], pr[-1]
    out[f"{prefix}_roc_auc"] = float(np.nanmean(roc)) if np.isfinite(roc).any() else np.nan
    out[f"{prefix}_pr_auc"] = float(np.nanmean(pr)) if np.isfinite(pr).any() else np.nan
    return out


__all__ = ["average_precision", "balanced_accuracy", "pair_metrics"]
