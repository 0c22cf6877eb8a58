"""Per-target ROC AUC and PR AUC of multi-label scores, all targets at once, on any device.

DeepSEA-like data have hundreds of sparse binary targets; a Python loop over targets (or one
``sklearn`` call each) costs far more than the model's evaluation. Both areas are computed from
one sort per column of the ``[n, T]`` score matrix:

- ROC AUC is the Mann-Whitney statistic: ``(sum of positive ranks - P(P+1)/2) / (P N)``, with
  tied scores given their average rank (the same value as ``sklearn.metrics.roc_auc_score``);
- PR AUC is the average precision (``sklearn.metrics.average_precision_score``): the recall gained
  at each distinct score threshold times the precision there.

A target without a positive or without a negative in the evaluated rows has no defined area:
NaN, left out of the means (the count of defined targets is reported with them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _tie_groups(sorted_scores: torch.Tensor) -> torch.Tensor:
    """Flat group ids ``[n * T]`` of equal scores within each column of column-sorted scores
    ``[n, T]`` (ids are unique across columns)."""
    n, t = sorted_scores.shape
    new = torch.ones_like(sorted_scores, dtype=torch.int64)
    new[1:] = (sorted_scores[1:] != sorted_scores[:-1]).long()
    # Column-major flat order: each column's run of groups follows the previous column's.
    return torch.cumsum(new.t().reshape(-1), 0) - 1


#: Cells (rows x columns) sorted at once: the float64 and int64 temporaries of one chunk take
#: about 40 bytes a cell, so DeepSEA's 455,024 x 919 test scores go in chunks of ~1 GB.
CHUNK_CELLS = 1 << 25


def per_target_auc(scores: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC AUC and PR AUC per column: two float64 tensors ``[T]`` (NaN where undefined).

    Parameters
    ----------
    scores
        ``[n, T]`` scores (logits or probabilities: only their order matters).
    targets
        ``[n, T]`` labels, 0 or 1 (any dtype).
    """
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must "
                         "be equal [n, T] shapes")
    n, t = scores.shape
    step = max(1, CHUNK_CELLS // max(n, 1))
    if t > step:
        parts = [_auc_columns(scores[:, lo:lo + step], targets[:, lo:lo + step])
                 for lo in range(0, t, step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _auc_columns(scores, targets)


def _auc_columns(scores: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    n, t = scores.shape
    s = scores.detach().double()
    y = targets.detach().to(device=s.device, dtype=torch.float64)
    n_pos = y.sum(0)
    n_neg = n - n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    if n == 0:
        nan = torch.full((t,), float("nan"), dtype=torch.float64, device=s.device)
        return nan, nan.clone()
    # Ascending sort for ranks (ROC), the same groups read backwards for precision (PR).
    order = torch.argsort(s, dim=0)
    s_sorted = torch.gather(s, 0, order)
    y_sorted = torch.gather(y, 0, order)
    gid = _tie_groups(s_sorted)
    n_groups = int(gid[-1]) + 1
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=s.device).repeat(t)
    group_rank = torch.zeros(n_groups, dtype=torch.float64, device=s.device)
    group_size = torch.zeros_like(group_rank)
    group_rank.index_add_(0, gid, ranks)
    group_size.index_add_(0, gid, torch.ones_like(ranks))
    avg_rank = (group_rank / group_size)[gid].view(t, n)
    y_cols = y_sorted.t()
    rank_sum = (avg_rank * y_cols).sum(1)
    roc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    # Precision at a threshold counts every row scoring at or above it: within a column,
    # positives and negatives in groups at or after this one (ascending order).
    group_pos = torch.zeros_like(group_rank).index_add_(0, gid, y_cols.reshape(-1))
    group_all = group_size
    col_of_group = torch.zeros(n_groups, dtype=torch.int64, device=s.device)
    col_of_group.index_copy_(0, gid, torch.arange(t, device=s.device).repeat_interleave(n))
    # Suffix sums within each column: total of the column minus the prefix before the group.
    prefix_pos = torch.cumsum(group_pos, 0) - group_pos
    prefix_all = torch.cumsum(group_all, 0) - group_all
    col_start = torch.zeros(t, dtype=torch.int64, device=s.device)
    first = torch.ones(n_groups, dtype=torch.bool, device=s.device)
    first[1:] = col_of_group[1:] != col_of_group[:-1]
    col_start[col_of_group[first]] = torch.nonzero(first).flatten()
    start = col_start[col_of_group]
    col_pos_total = n_pos[col_of_group]
    above_pos = col_pos_total - (prefix_pos - prefix_pos[start])
    above_all = n - (prefix_all - prefix_all[start])
    precision = above_pos / above_all
    ap_terms = group_pos / torch.clamp(col_pos_total, min=1) * precision
    pr = torch.zeros(t, dtype=torch.float64, device=s.device).index_add_(0, col_of_group,
                                                                          ap_terms)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=s.device)
    return torch.where(defined, roc, nan), torch.where(defined, pr, nan)


def summarise(roc: np.ndarray, pr: np.ndarray, prevalence: np.ndarray,
              groups: Sequence[str] | None = None, prefix: str = "val") -> dict[str, float]:
    """The finals of one split from per-target areas.

    ``<prefix>_roc_auc`` / ``<prefix>_pr_auc``: mean over defined targets;
    ``..._weighted``: weighted by the training prevalence (seed 003's choice);
    ``<prefix>_defined_targets``: how many targets have both classes;
    ``<prefix>_roc_auc_median_<group>``: median per target group (TF / DNase / histone).
    """
    roc, pr = np.asarray(roc, dtype=np.float64), np.asarray(pr, dtype=np.float64)
    ok = np.isfinite(roc)
    out = {f"{prefix}_defined_targets": float(ok.sum())}
    w = np.asarray(prevalence, dtype=np.float64)[ok]
    for name, values in (("roc_auc", roc), ("pr_auc", pr)):
        v = values[ok]
        out[f"{prefix}_{name}"] = float(v.mean()) if v.size else float("nan")
        out[f"{prefix}_{name}_weighted"] = (float((v * w).sum() / w.sum())
                                            if v.size and w.sum() > 0 else float("nan"))
    if groups is not None:
        groups = np.asarray(groups)
        for group in sorted(set(groups.tolist())):
            sel = (groups == group) & ok
            out[f"{prefix}_roc_auc_median_{group}"] = (float(np.median(roc[sel])) if sel.any()
                                                       else float("nan"))
    return out


__all__ = ["per_target_auc", "summarise"]
