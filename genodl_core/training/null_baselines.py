"""Null baselines: what a model that ignores its inputs scores, beside every model's figure.

A score means little without the score of knowing nothing. On sparse single-cell data (most
values zero) the per-gene training median can beat every regression model; on unbalanced
classes, or after heavy label noise, predicting the majority class can match a classifier.
Every null is computed from the trial's own training split *after* its noise steps (the
labels and targets the model was given), so it is what the model could have learnt without
looking at its inputs:

- classification: ``null_accuracy`` / ``test_null_accuracy``, the accuracy on the validation /
  test split of always predicting the training split's most frequent class (the lowest class
  index on a tie);
- abstaining classification: ``null_kept_accuracy`` / ``test_null_kept_accuracy``, the same
  majority-class guess scored only on the samples the model kept (did not abstain on), so that
  the model's ``val_abstention_accuracy`` is compared with a null on the same samples (a model
  that keeps mostly majority-class samples is not better for it); NaN when nothing was kept;
- regression: the per-gene training mean and median as constant predictors,
  ``null_mean_val_mae`` / ``null_median_val_mae`` (``null_mean_test_mae`` /
  ``null_median_test_mae``), and the share of target genes on which the model's MAE is strictly
  below theirs, ``share_genes_better_than_mean`` / ``share_genes_better_than_median``
  (``test_share_genes_better_than_…``).

:func:`per_gene_pearson` is the per-gene correlation the regression models report next to
their MAE: a median predictor has a low MAE on sparse data but no correlation at all.
"""

from __future__ import annotations

import numpy as np

from genodl_core.training.regression import compare_with_reference

#: Target genes handled at once (bounds the float64 temporaries of paper-size data).
GENE_CHUNK = 1024


def majority_class(y_train: np.ndarray, n_classes: int) -> int:
    """The most frequent training label (the lowest class index on a tie)."""
    return int(np.argmax(np.bincount(np.asarray(y_train, dtype=np.int64), minlength=n_classes)))


def classification_nulls(y_train: np.ndarray, n_classes: int, y_val: np.ndarray,
                         y_test: np.ndarray | None = None) -> dict[str, float]:
    """``null_accuracy`` (and ``test_null_accuracy`` when there is a test split) of the
    majority class of the (noised) training labels."""
    majority = majority_class(y_train, n_classes)
    out = {"null_accuracy": float(np.mean(np.asarray(y_val) == majority))}
    if y_test is not None and len(y_test):
        out["test_null_accuracy"] = float(np.mean(np.asarray(y_test) == majority))
    return out


def kept_null_accuracy(predicted: np.ndarray, y: np.ndarray, majority: int,
                       abstain_class: int) -> float:
    """Accuracy of always predicting ``majority`` on the samples whose prediction is not the
    abstention class; NaN when every sample was abstained on (an accuracy over no samples is
    undefined, as the model's own ``abstention_accuracy`` is then)."""
    kept = np.asarray(predicted) != abstain_class
    if not kept.any():
        return float("nan")
    return float(np.mean(np.asarray(y)[kept] == majority))


def constant_predictor_mae(y: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """Per-gene MAE (float64 ``[genes]``) of predicting ``constant[g]`` for every sample."""
    out = np.empty(y.shape[1], dtype=np.float64)
    for start in range(0, y.shape[1], GENE_CHUNK):
        cols = slice(start, start + GENE_CHUNK)
        out[cols] = np.mean(np.abs(np.subtract(y[:, cols], constant[None, cols],
                                               dtype=np.float64)), axis=0)
    return out


def per_gene_median(y: np.ndarray) -> np.ndarray:
    """The median of every column, float64, a block of genes at a time (np.median copies)."""
    out = np.empty(y.shape[1], dtype=np.float64)
    for start in range(0, y.shape[1], GENE_CHUNK):
        cols = slice(start, start + GENE_CHUNK)
        out[cols] = np.median(y[:, cols].astype(np.float64), axis=0)
    return out


def per_gene_pearson(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson r between truth and prediction of every gene over samples, float64 ``[genes]``.

    NaN for a gene whose truth or prediction is constant over the samples (r is undefined
    there, e.g. a gene never expressed in the split, or a constant predictor).
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(f"prediction shape {y_pred.shape} != target shape {y_true.shape}")
    out = np.empty(y_true.shape[1], dtype=np.float64)
    for start in range(0, y_true.shape[1], GENE_CHUNK):
        cols = slice(start, start + GENE_CHUNK)
        t = y_true[:, cols].astype(np.float64)
        p = y_pred[:, cols].astype(np.float64)
        # Exactly constant columns first: centring leaves rounding noise, not zeros.
        constant = (np.ptp(t, axis=0) == 0) | (np.ptp(p, axis=0) == 0)
        t -= t.mean(axis=0)
        p -= p.mean(axis=0)
        denom = np.sqrt((t * t).sum(axis=0) * (p * p).sum(axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[cols] = np.where(constant | (denom == 0), np.nan, (t * p).sum(axis=0) / denom)
    return out


def mean_pearson(per_gene: np.ndarray) -> float:
    """Mean r over the genes where it is defined (NaN when it is defined for none)."""
    defined = per_gene[np.isfinite(per_gene)]
    return float(defined.mean()) if defined.size else float("nan")


def regression_nulls(y_train: np.ndarray, y_val: np.ndarray, y_test: np.ndarray | None,
                     model_arrays: dict[str, np.ndarray]
                     ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The per-gene mean and median predictors' MAE and the model's share of genes beating
    them, on the validation and (when present) test splits.

    ``model_arrays`` holds the model's ``val_mae_per_gene`` (and ``test_mae_per_gene``).
    Returns the final metrics and the per-gene arrays of the nulls
    (``null_mean_val_mae_per_gene`` ...).
    """
    constants = {"mean": np.mean(y_train, axis=0, dtype=np.float64),
                 "median": per_gene_median(y_train)}
    splits = [("val", y_val, "")]
    if y_test is not None and len(y_test) and "test_mae_per_gene" in model_arrays:
        splits.append(("test", y_test, "test_"))
    final: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    for split, y, prefix in splits:
        model = model_arrays[f"{split}_mae_per_gene"]
        for name, constant in constants.items():
            per_gene = constant_predictor_mae(y, constant)
            arrays[f"null_{name}_{split}_mae_per_gene"] = per_gene
            final[f"null_{name}_{split}_mae"] = float(np.mean(per_gene))
            final[f"{prefix}share_genes_better_than_{name}"] = compare_with_reference(
                model, per_gene)["share_genes_better"]
    return final, arrays


__all__ = ["majority_class", "classification_nulls", "kept_null_accuracy", "constant_predictor_mae",
           "per_gene_median", "per_gene_pearson", "mean_pearson", "regression_nulls"]
