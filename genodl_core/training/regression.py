"""Regression metrics shared by D-GEX and the closed-form baselines.

Metrics are per target gene (MAE over samples), summarised as the mean and the standard
deviation over genes, and compared gene by gene with a reference (LR), as the D-GEX paper does.
"""

from __future__ import annotations

import numpy as np

def per_gene_mae(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean absolute error of every target gene over samples, float64 ``[n_targets]``.

    Raises
    ------
    ValueError
        If the two arrays differ in shape (a programming error, not a user one).
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(f"prediction shape {y_pred.shape} != target shape {y_true.shape}")
    # Subtracting in float64 directly: the same values without two float64 copies of the inputs.
    return np.mean(np.abs(np.subtract(y_true, y_pred, dtype=np.float64)), axis=0)


def summarise_mae(per_gene: np.ndarray) -> tuple[float, float]:
    """The paper's overall error: mean over genes, and its '±' (std over genes)."""
    return float(np.mean(per_gene)), float(np.std(per_gene))


def compare_with_reference(model_mae: np.ndarray, reference_mae: np.ndarray) -> dict[str, float]:
    """Relative improvement over a reference and the share of genes where the model is better.

    ``relative_improvement = (MAE_ref - MAE_model) / MAE_ref`` on the overall (mean) errors, and
    ``share_genes_better`` = fraction of target genes whose MAE is strictly lower than the
    reference's, the paper's gene-wise comparison.
    """
    ref = float(np.mean(reference_mae))
    model = float(np.mean(model_mae))
    return {
        "relative_improvement": (ref - model) / ref if ref > 0 else float("nan"),
        "share_genes_better": float(np.mean(model_mae < reference_mae)),
    }


def mae_metrics(prefix: str, y_true: np.ndarray,
                y_pred: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """``{prefix_mae, prefix_mae_std}`` and the per-gene MAE array."""
    per_gene = per_gene_mae(y_true, y_pred)
    mean, std = summarise_mae(per_gene)
    return {f"{prefix}_mae": mean, f"{prefix}_mae_std": std}, per_gene


__all__ = ["per_gene_mae", "summarise_mae", "compare_with_reference", "mae_metrics"]
