"""How well a detector finds the flipped labels: its scores against the recorded flip mask.

genodl knows which training labels its noise flipped, so a detector's suspicion score can be
scored exactly (docs/detection.md):

- ``auroc``: the chance that a flipped sample scores above a clean one (ties count half);
- ``auprc``: average precision, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score
  thresholds from the highest down (the definition of scikit-learn and cleanlab's benchmarks);
- ``precision``, ``recall``, ``f1``: of the detector's own flagged set;
- ``precision_at_k`` and ``lift_at_k``: of the K highest scores, K = number flipped; the lift is
  that precision over the flip rate (1 = no better than chance);
- ``n_flagged`` and ``flagged_share``.

Without a flipped sample (or without a clean one) the ranking metrics are undefined: NaN, and
the caller's record says why; never an error.
"""

from __future__ import annotations

import numpy as np

NAN = float("nan")


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (high = positive) for boolean ``truth``; NaN
    when either class is absent. Mann-Whitney form with average ranks for ties."""
    truth = np.asarray(truth, dtype=bool)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Average precision (area under the precision-recall steps); NaN without positives."""
    truth = np.asarray(truth, dtype=bool)
    n_pos = int(truth.sum())
    if n_pos == 0:
        return NAN
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    # The last index of each run of equal scores: a threshold admits a tie group whole.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def flagged_metrics(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a flagged set (NaN where undefined: nothing flagged, or
    nothing flipped), with ``n_flagged`` and ``flagged_share``."""
    flagged = np.asarray(flagged, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    tp = float(np.sum(flagged & truth))
    n_flagged, n_true = float(flagged.sum()), float(truth.sum())
    precision = tp / n_flagged if n_flagged else NAN
    recall = tp / n_true if n_true else NAN
    # 2 TP / (2 TP + FP + FN): 0 when nothing flagged was flipped, NaN only without flips.
    f1 = 2 * tp / (n_flagged + n_true) if n_true else NAN
    return {"precision": precision, "recall": recall, "f1": f1, "n_flagged": n_flagged,
            "flagged_share": n_flagged / truth.size if truth.size else NAN}


def top_k_metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision of the K highest scores (K = number of positives) and its lift over the
    positive rate; NaN without positives. Ties at the cut are broken by sample order."""
    truth = np.asarray(truth, dtype=bool)
    k = int(truth.sum())
    if k == 0 or k == truth.size:
        return {"precision_at_k": NAN, "lift_at_k": NAN}
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    precision = float(truth[top].mean())
    return {"precision_at_k": precision, "lift_at_k": precision / (k / truth.size)}


def score_detector(scores: np.ndarray, flagged: np.ndarray, truth: np.ndarray
                   ) -> dict[str, float]:
    """Every detection metric of one detector (see the module docstring)."""
    return {"auroc": auroc(scores, truth), "auprc": average_precision(scores, truth),
            **flagged_metrics(flagged, truth), **top_k_metrics(scores, truth)}


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values) != 0) + 1]
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends + 1) / 2.0  # average of the 1-based ranks start+1 .. end
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


__all__ = ["auroc", "average_precision", "flagged_metrics", "top_k_metrics", "score_detector"]
