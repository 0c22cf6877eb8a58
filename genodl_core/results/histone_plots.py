"""Figures of histone sweeps: Pearson r against the noise level, and per held-out cell type.

Drawn by :func:`genodl_core.results.plots.make_plots` for every model whose trials report
``val_pearson`` (the histone regression family). The summary's group table gives each level's
mean and standard deviation over seeds; the per-cell-type finals (``val_pearson_ct_<name>``)
give the bars. The generator's oracle r (``oracle_val_pearson``), when the data have one, is
drawn as the ceiling no model of the marks beats in expectation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: Per-cell-type finals and the summaries among them that are not cell types.
CELL_TYPE_PREFIX = "val_pearson_ct_"
_SUMMARIES = ("mean", "min")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_pearson_vs_level(groups: pd.DataFrame, kind: str, model: str, out: Path) -> Path:
    """Validation Pearson r (all held-out rows, and the worst held-out cell type) against the
    level of noise ``kind``: mean over seeds with a +-1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = groups[groups.noise_kind == kind].sort_values("noise_level")
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for metric, label, color in (("val_pearson", "all held-out rows", "tab:blue"),
                                 ("val_pearson_ct_min", "worst held-out cell type",
                                  "tab:red")):
        mean_col, std_col = f"{metric}.mean", f"{metric}.std"
        if mean_col not in rows or rows[mean_col].isna().all():
            continue
        x, y = rows.noise_level.to_numpy(float), rows[mean_col].to_numpy(float)
        std = rows[std_col].fillna(0.0).to_numpy(float)
        ax.plot(x, y, marker="o", color=color, label=label)
        ax.fill_between(x, y - std, y + std, color=color, alpha=0.2)
    if "oracle_val_pearson.mean" in rows and rows["oracle_val_pearson.mean"].notna().any():
        ax.axhline(float(rows["oracle_val_pearson.mean"].mean()), color="grey", linestyle="--",
                   label="oracle (latent activity)")
    ax.set_xlabel(f"{kind} level")
    ax.set_ylabel("validation Pearson r")
    ax.set_title(f"{model}: Pearson r under {kind} noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path = out / f"pearson_vs_level_{_safe(model)}_{_safe(kind)}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def cell_type_table(done: pd.DataFrame) -> pd.DataFrame:
    """Mean validation Pearson r per (noise kind, level) row and held-out cell-type column."""
    columns = [c for c in done.columns if c.startswith(CELL_TYPE_PREFIX)
               and c[len(CELL_TYPE_PREFIX):] not in _SUMMARIES]
    if not columns:
        return pd.DataFrame()
    table = done.groupby(["noise_kind", "noise_level"])[columns].mean()
    table.columns = [c[len(CELL_TYPE_PREFIX):] for c in columns]
    return table.dropna(axis=1, how="all")


def plot_cell_type_bars(done: pd.DataFrame, model: str, out: Path) -> Path | None:
    """Grouped bars: each held-out cell type's validation Pearson r (mean over seeds), one bar
    per noise kind and level; None when the trials report no per-cell-type values."""
    table = cell_type_table(done)
    if table.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_types, n_levels = table.shape[1], table.shape[0]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * n_types * max(1, n_levels) / 2), 4.0))
    width = 0.8 / n_levels
    x = np.arange(n_types)
    cmap = plt.get_cmap("viridis")
    for i, ((kind, level), values) in enumerate(table.iterrows()):
        ax.bar(x + i * width, values.to_numpy(float), width,
               color=cmap(i / max(1, n_levels - 1)), label=f"{kind} {level:g}")
    ax.set_xticks(x + 0.4 - width / 2, list(table.columns), rotation=45, ha="right")
    ax.set_ylabel("validation Pearson r")
    ax.set_title(f"{model}: Pearson r per held-out cell type")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="x-small", ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    path = out / f"pearson_per_cell_type_{_safe(model)}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_histone(groups: pd.DataFrame, done: pd.DataFrame, model: str, out: Path) -> list[Path]:
    """Every histone figure of one model's trials (one setting)."""
    written = [plot_pearson_vs_level(groups, kind, model, out)
               for kind in sorted(done.noise_kind.unique())]
    bars = plot_cell_type_bars(done, model, out)
    return written + ([bars] if bars is not None else [])


__all__ = ["plot_pearson_vs_level", "plot_cell_type_bars", "cell_type_table", "plot_histone"]
