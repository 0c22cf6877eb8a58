"""Figures of gene-pair (CNNC) sweeps: ROC and PR AUC against the noise level, and example
NEPDF images of each class.

:func:`plot_auc_vs_level` is drawn by :func:`genodl_core.results.plots.make_plots` for every
model whose trials report ``val_roc_auc``: one line per variant (mean over seeds, +-1 std
band), with the chance level of each metric (0.5 for ROC AUC, the positive share for PR AUC,
which the summary does not hold and so is left out). :func:`plot_class_examples` shows a few
training images of each class side by side: seed 001's authors found only after weeks of
failed training that their two classes looked alike; look first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

METRICS = (("val_roc_auc", "validation ROC AUC"), ("val_pr_auc", "validation PR AUC"))
COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_auc_vs_level(groups: pd.DataFrame, kind: str, model: str, out: Path) -> Path | None:
    """ROC AUC and PR AUC against the level of noise ``kind``, one line per variant; None when
    the groups hold neither metric."""
    rows = groups[groups.noise_kind == kind]
    if not any(f"{m}.mean" in rows and rows[f"{m}.mean"].notna().any() for m, _ in METRICS):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0))
    variants = sorted(rows.variant.dropna().unique()) if "variant" in rows else [None]
    for ax, (metric, label) in zip(axes, METRICS):
        mean_col, std_col = f"{metric}.mean", f"{metric}.std"
        for color, variant in zip(COLORS, variants):
            g = rows if variant is None else rows[rows.variant == variant]
            if mean_col not in g:
                continue
            g = g.dropna(subset=[mean_col]).sort_values("noise_level")
            if g.empty:
                continue
            x, y = g.noise_level.to_numpy(float), g[mean_col].to_numpy(float)
            std = (g[std_col].fillna(0.0).to_numpy(float) if std_col in g
                   else np.zeros_like(y))
            ax.plot(x, y, marker="o", color=color, label=variant or model)
            ax.fill_between(x, np.clip(y - std, 0, 1), np.clip(y + std, 0, 1), color=color,
                            alpha=0.2, linewidth=0)
        if metric == "val_roc_auc":
            ax.axhline(0.5, color="grey", linestyle="--", label="chance")
        ax.set_xlabel(f"{kind} level")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(f"{model}: pair classification under {kind} noise")
    path = out / f"auc_vs_level_{_safe(model)}_{_safe(kind)}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_class_examples(images: np.ndarray, labels: np.ndarray, out: str | Path, *,
                        per_class: int = 6, seed: int = 0,
                        class_names: tuple[str, ...] | None = None) -> Path:
    """A grid of ``per_class`` NEPDF images of each class (rows: classes), drawn at random with
    ``seed``, and each class's mean image in the last column.

    Parameters
    ----------
    images
        ``[pairs, bins * bins]`` NEPDF images (a dataset's ``x_train``).
    labels
        ``[pairs]`` class indices.
    out
        The PNG file to write.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    side = int(round(np.sqrt(images.shape[1])))
    classes = np.unique(labels)
    names = class_names or tuple({0: "no relation", 1: "related / A->B", 2: "B->A"}.get(
        int(c), f"class {c}") for c in classes)
    rng = np.random.default_rng(seed)
    plt = _pyplot()
    fig, axes = plt.subplots(len(classes), per_class + 1,
                             figsize=(1.6 * (per_class + 1), 1.7 * len(classes)), squeeze=False)
    for row, (cls, name) in enumerate(zip(classes, names)):
        rows = np.flatnonzero(labels == cls)
        pick = rng.choice(rows, size=min(per_class, len(rows)), replace=False)
        shown = [images[i] for i in pick] + [images[rows].mean(axis=0)]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(shown) - 1 or col == per_class:
                img = shown[col] if col < len(shown) - 1 else shown[-1]
                ax.imshow(img.reshape(side, side), origin="lower", cmap="magma", vmin=0,
                          vmax=max(float(img.max()), 1e-6))
        axes[row][0].set_ylabel(f"{name}\n(n={len(rows)})", fontsize="small")
    axes[0][per_class].set_title("class mean", fontsize="small")
    fig.supxlabel("gene A bin (log expression)", fontsize="small")
    fig.supylabel("gene B bin", fontsize="small")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["plot_auc_vs_level", "plot_class_examples"]
