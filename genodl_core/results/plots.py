"""Figures of a gathered sweep, in the style of the NT3 noise study (figures 1-3) and D-GEX.

* ``accuracy_abstention_<model>_<kind>.png``: validation accuracy and abstention fraction
  against the noise level, base against abstaining model, mean +- std over seeds with each
  trial as a dot, and the naive abstention estimate ``1 - base accuracy``.
* ``loss_curves_<model>_<variant>_<kind>.png``: training and validation loss per epoch, one
  line per noise level (mean over seeds).
* ``mae_vs_level_<model>_<kind>.png``: D-GEX validation MAE against the noise level with the
  linear-regression baseline alongside.
* ``genewise_<model>_vs_lr.png``: per-gene MAE of D-GEX against LR (one panel per noise level),
  points below the diagonal being genes where D-GEX is better.

Only :class:`matplotlib.figure.Figure` is used (no pyplot), so plotting neither needs a display
nor changes the backend of the calling program.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from genodl_core.results import load

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
#: Variant names taken as the reference and the abstaining model in the accuracy figures.
BASE_VARIANTS = ("base", "default")
ABSTAINING_VARIANT = "abstaining"
#: Per-gene arrays compared in the gene-wise scatter.
MODEL_GENE_ARRAY = "val_mae_per_gene"
LR_GENE_ARRAY = "lr_val_mae_per_gene"
MAX_GENEWISE_PANELS = 4
DPI = 120


def make_plots(path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write every figure the summary has data for; return the files written.

    Parameters
    ----------
    path
        The run directory or its ``summary.h5``.
    out_dir
        Folder for the PNGs (default ``<run dir>/plots``).

    Raises
    ------
    DataError
        If there is no readable summary (gather first).
    """
    summary_file = load.summary_path(path)
    out = Path(out_dir) if out_dir is not None else summary_file.parent / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    groups = load.groups(summary_file)
    finals = load.finals(summary_file)
    done = finals[finals.state == "done"]
    written: list[Path] = []
    if done.empty:
        log.warning("no finished trials in %s: no plots", summary_file)
        return written
    metrics = set(finals.columns)
    for model in sorted(done.model.unique()):
        mdone = done[done.model == model]
        mgroups = groups[groups.model == model]
        if "val_accuracy" in metrics and mdone.val_accuracy.notna().any():
            for kind in _noise_kinds(mdone):
                written.append(plot_accuracy_abstention(mgroups, mdone, kind, model, out))
        if "val_mae" in metrics and mdone.val_mae.notna().any():
            for kind in _noise_kinds(mdone):
                written.append(plot_mae_vs_level(mgroups, mdone, kind, model, out))
            if LR_GENE_ARRAY in load.gene_arrays(summary_file):
                fig = plot_genewise(summary_file, mdone, model, out)
                if fig is not None:
                    written.append(fig)
        written += plot_loss_curves(summary_file, mdone, model, out)
    log.info("wrote %d figures to %s", len(written), out)
    return written


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _noise_kinds(done: pd.DataFrame) -> list[str]:
    kinds = sorted(k for k in done.noise_kind.unique() if k != "none")
    return kinds or ["none"]


def _with_baseline(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of one noise kind plus the noise-free rows as level 0 (the left end of a curve).

    Noise-free trials are recorded with kind 'none' whatever the study, so each kind's figure
    borrows them unless the kind has its own level-0 trials.
    """
    rows = frame[frame.noise_kind == kind]
    if kind != "none" and not (rows.noise_level == 0).any():
        rows = pd.concat([frame[frame.noise_kind == "none"], rows])
    return rows.sort_values("noise_level")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def _new_figure(ncols: int, width: float = 5.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    log.debug("wrote %s", path)
    return path


#: Metrics that are shares of samples: their bands never leave [0, 1].
RATES = ("val_accuracy", "val_abstention", "val_abstention_accuracy", "test_accuracy")


def _mean_std_line(ax, groups: pd.DataFrame, metric: str, label: str, color: str,
                   marker: str = "o", linestyle: str = "-") -> None:
    """Mean over seeds with a +-1 std band; levels where the metric is undefined (NaN, e.g.
    the accuracy of a model that abstained on everything) are left out, not drawn as 0 or 1."""
    mean_col, std_col = f"{metric}.mean", f"{metric}.std"
    if mean_col not in groups or groups[mean_col].isna().all():
        return
    g = groups.dropna(subset=[mean_col]).sort_values("noise_level")
    std = g[std_col].fillna(0.0).to_numpy()
    x, y = g.noise_level.to_numpy(), g[mean_col].to_numpy()
    low, high = y - std, y + std
    if metric in RATES:
        low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
    ax.plot(x, y, marker=marker, linestyle=linestyle, color=color, label=label)
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)


def _trial_dots(ax, done: pd.DataFrame, metric: str, color: str) -> None:
    if metric in done:
        pts = done.dropna(subset=[metric])
        ax.scatter(pts.noise_level, pts[metric], s=10, color=color, alpha=0.45, linewidths=0)


def _level_label(kind: str) -> str:
    return "noise level" if kind in ("none", "") else f"{kind} level"


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

def plot_accuracy_abstention(groups: pd.DataFrame, done: pd.DataFrame, kind: str, model: str,
                             out: Path) -> Path:
    """Validation accuracy and abstention vs noise level, base vs abstaining (seed paper 1-3).

    The abstaining model's accuracy is that on the samples it does not abstain on
    (``val_abstention_accuracy``) when recorded, as in the paper; the naive abstention estimate
    is ``1 - base validation accuracy``, which the abstaining model should exceed under label
    noise.
    """
    g = _with_baseline(groups, kind)
    d = _with_baseline(done, kind)
    base_name = next((v for v in BASE_VARIANTS if (g.variant == v).any()), None)
    base_g, base_d = g[g.variant == base_name], d[d.variant == base_name]
    abst_g, abst_d = g[g.variant == ABSTAINING_VARIANT], d[d.variant == ABSTAINING_VARIANT]
    abst_acc = "val_abstention_accuracy" if "val_abstention_accuracy.mean" in abst_g and \
        abst_g["val_abstention_accuracy.mean"].notna().any() else "val_accuracy"

    fig, (ax_acc, ax_abs) = _new_figure(2)
    _mean_std_line(ax_acc, base_g, "val_accuracy", f"{base_name or 'base'} model", "tab:blue")
    _trial_dots(ax_acc, base_d, "val_accuracy", "tab:blue")
    _mean_std_line(ax_acc, abst_g, abst_acc, "abstaining model (non-abstained)", "tab:red",
                   marker="s")
    _trial_dots(ax_acc, abst_d, abst_acc, "tab:red")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_title(f"{model}: accuracy under {kind} noise")

    _mean_std_line(ax_abs, abst_g, "val_abstention", "abstaining model", "tab:red", marker="s")
    _trial_dots(ax_abs, abst_d, "val_abstention", "tab:red")
    if "val_accuracy.mean" in base_g and base_g["val_accuracy.mean"].notna().any():
        naive = base_g.dropna(subset=["val_accuracy.mean"]).sort_values("noise_level")
        ax_abs.plot(naive.noise_level, 1 - naive["val_accuracy.mean"], color="tab:gray",
                    linestyle="--", marker=".", label="naive: 1 - base accuracy")
    ax_abs.set_ylabel("validation abstention fraction")
    ax_abs.set_title(f"{model}: abstention under {kind} noise")
    for ax in (ax_acc, ax_abs):
        ax.set_xlabel(_level_label(kind))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return _save(fig, out / f"accuracy_abstention_{_safe(model)}_{_safe(kind)}.png")


def plot_mae_vs_level(groups: pd.DataFrame, done: pd.DataFrame, kind: str, model: str,
                      out: Path) -> Path:
    """D-GEX validation MAE against the noise level, with the LR baseline alongside."""
    g = _with_baseline(groups, kind)
    d = _with_baseline(done, kind)
    fig, (ax,) = _new_figure(1, width=6.0)
    for variant, color in zip(sorted(g.variant.unique()), ("tab:blue", "tab:green", "tab:purple")):
        label = model if variant in BASE_VARIANTS else f"{model} ({variant})"
        _mean_std_line(ax, g[g.variant == variant], "val_mae", label, color)
        _trial_dots(ax, d[d.variant == variant], "val_mae", color)
    _mean_std_line(ax, g, "lr_val_mae", "linear regression", "tab:orange", marker="^",
                   linestyle="--")
    _trial_dots(ax, d, "lr_val_mae", "tab:orange")
    ax.set_xlabel(_level_label(kind))
    ax.set_ylabel("validation MAE (mean over genes)")
    ax.set_title(f"{model}: MAE under {kind} noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out / f"mae_vs_level_{_safe(model)}_{_safe(kind)}.png")


def plot_genewise(summary_file: Path, done: pd.DataFrame, model: str, out: Path) -> Path | None:
    """Per-gene MAE of the model against LR, one panel per noise level (mean over seeds)."""
    try:
        ours = load.gene_errors(summary_file, MODEL_GENE_ARRAY)
        lr = load.gene_errors(summary_file, LR_GENE_ARRAY)
    except KeyError as err:
        log.info("no gene-wise figure: %s", err)
        return None
    ids = [t for t in done.index if t in ours.index and ours.loc[t].notna().any()
           and lr.loc[t].notna().any()]
    if not ids:
        return None
    sub = done.loc[ids]
    keys = sub[["noise_kind", "noise_level"]].drop_duplicates().sort_values(
        ["noise_level", "noise_kind"]).to_numpy().tolist()
    if len(keys) > MAX_GENEWISE_PANELS:  # evenly spread picks, always the first and the last
        picks = np.linspace(0, len(keys) - 1, MAX_GENEWISE_PANELS).round().astype(int)
        keys = [keys[i] for i in sorted(set(picks))]
    fig, axes = _new_figure(len(keys), width=4.2, height=4.2)
    for ax, (kind, level) in zip(axes, keys):
        members = sub[(sub.noise_kind == kind) & (sub.noise_level == level)].index
        x = lr.loc[members].mean(axis=0).to_numpy()
        y = ours.loc[members].mean(axis=0).to_numpy()
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        better = float(np.mean(y < x)) if x.size else math.nan
        ax.scatter(x, y, s=6, alpha=0.5, color="tab:blue", linewidths=0)
        lo = float(min(x.min(), y.min())) if x.size else 0.0
        hi = float(max(x.max(), y.max())) if x.size else 1.0
        ax.plot([lo, hi], [lo, hi], color="tab:gray", linestyle="--", linewidth=1)
        ax.set_xlabel("LR MAE per gene")
        ax.set_ylabel(f"{model} MAE per gene")
        title = "no noise" if kind == "none" else f"{kind} {level:g}"
        ax.set_title(f"{title}: {model} better on {better:.0%} of genes", fontsize="medium")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    return _save(fig, out / f"genewise_{_safe(model)}_vs_lr.png")


def plot_loss_curves(summary_file: Path, done: pd.DataFrame, model: str,
                     out: Path) -> list[Path]:
    """Training and validation loss per epoch, one line per noise level (mean over seeds)."""
    available = load.curve_metrics(summary_file)
    pair = [m for m in ("loss", "val_loss") if m in available]
    if "val_loss" not in pair and "val_mae" in available:
        pair.append("val_mae")
    if not pair:
        return []
    curves = {m: load.curves(summary_file, m) for m in pair}
    written = []
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    cmap = colormaps["viridis"]
    for variant in sorted(done.variant.unique()):
        vdone = done[done.variant == variant]
        for kind in _noise_kinds(vdone):
            rows = _with_baseline(vdone, kind)
            levels = sorted(rows.noise_level.unique())
            fig, axes = _new_figure(len(pair))
            drawn = 0
            for ax, metric in zip(axes, pair):
                table = curves[metric]
                for i, level in enumerate(levels):
                    members = table.index.intersection(rows[rows.noise_level == level].index)
                    mean = table.loc[members].mean(axis=0, skipna=True).dropna()
                    if mean.empty:
                        continue
                    color = cmap(i / max(len(levels) - 1, 1))
                    ax.plot(mean.index, mean.to_numpy(), color=color, label=f"{level:g}")
                    drawn += 1
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel(metric.replace("_", " "))
                ax.grid(alpha=0.3)
            if not drawn:  # a closed-form model has no epochs: no empty figure
                continue
            axes[0].legend(title=_level_label(kind), fontsize="small", ncols=2)
            fig.suptitle(f"{model} ({variant}): curves by {kind} level, mean over seeds")
            written.append(_save(
                fig, out / f"loss_curves_{_safe(model)}_{_safe(variant)}_{_safe(kind)}.png"))
    return written


__all__ = ["make_plots", "plot_accuracy_abstention", "plot_mae_vs_level", "plot_genewise",
           "plot_loss_curves"]
