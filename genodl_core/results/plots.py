"""Figures of a gathered sweep, in the style of the NT3 noise study (figures 1-3) and D-GEX.

* ``accuracy_abstention_<model>_<kind>.png``: validation accuracy and abstention fraction
  against the noise level, base against abstaining model, mean +- std over seeds with each
  trial as a dot, and the naive abstention estimate ``1 - base accuracy``.
* ``loss_curves_<model>_<variant>_<kind>.png``: training and validation loss per epoch, one
  line per noise level (mean over seeds).
* ``by_epoch_<model>_<variant>_<kind>.png``: validation accuracy (for an abstaining model also
  the accuracy on the kept samples, the abstention fraction and alpha) per epoch, one line per
  noise level, mean +- std over seeds: the final values depend on the epoch budget.
* ``mae_vs_level_<model>_<kind>.png``: D-GEX validation MAE against the noise level with the
  linear-regression baseline alongside.
* ``mae_vs_level_models_<kind>.png``: every regression model's validation MAE against the noise
  level in one figure, with the per-gene mean and median null predictors when recorded.
* ``genewise_<model>_vs_lr.png``: per-gene MAE of D-GEX against LR (one panel per noise level),
  points below the diagonal being genes where D-GEX is better.
* ``target_auc_vs_level_<model>_<kind>.png`` and ``group_medians_vs_level_<model>_<kind>.png``:
  multi-label (DNA) trials' ROC AUC per target and per target group against the noise level
  (:mod:`genodl_core.results.dna_plots`).

A noise kind with no level-0 trial of its own takes the sweep's clean trials (no noise step, or
every step at level 0; same model, variant and data source) as its level 0, drawn with a hollow
marker and named in the legend, so every curve starts from the noise-free model.

A sweep that also varies another parameter (its ``setting``, e.g. the abstention controller)
gets these figures once per setting, each set in a folder named after it.

Only :class:`matplotlib.figure.Figure` is used (no pyplot), so plotting neither needs a display
nor changes the backend of the calling program.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from pathlib import Path
from typing import Iterable

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
#: Longest folder name of one setting's figures (longer ones are cut and end in a hash).
MAX_FOLDER = 80


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
    settings = sorted(done.setting.unique())
    for setting in settings:
        where = out if len(settings) == 1 else out / _setting_folder(setting)
        where.mkdir(parents=True, exist_ok=True)
        written += _plot_setting(summary_file, groups[groups.setting == setting],
                                 finals.columns, done[done.setting == setting], where)
    from genodl_core.results.breakdown import plot_breakdown

    written += plot_breakdown(summary_file, out)  # adaptive runs: curve, levels, estimate
    log.info("wrote %d figures to %s", len(written), out)
    return written


def _setting_folder(setting: str) -> str:
    """A folder name for a setting: readable, and short enough for any file system."""
    name = _safe(setting or "default")
    if len(name) <= MAX_FOLDER:
        return name
    digest = hashlib.sha1(setting.encode()).hexdigest()[:8]
    return f"{name[:MAX_FOLDER - 9]}_{digest}"


def _plot_setting(summary_file: Path, groups: pd.DataFrame, columns: Iterable[str],
                  done: pd.DataFrame, out: Path) -> list[Path]:
    """The figures of the trials of one setting (see ``setting`` in the summary schema).

    Trials of different settings (e.g. abstention controllers) are never drawn as one line: a
    sweep that varies a parameter besides model, variant and noise gets one folder per value.
    """
    written: list[Path] = []
    metrics = set(columns)
    for model in sorted(done.model.unique()):
        mdone = done[done.model == model]
        mgroups = groups[groups.model == model]
        if "val_accuracy" in metrics and mdone.val_accuracy.notna().any():
            for kind in _noise_kinds(mdone):
                written.append(plot_accuracy_abstention(mgroups, mdone, kind, model, out))
        if any(_DETECTION_AUROC.match(m) for m in metrics):
            for kind in _noise_kinds(mdone):
                written += plot_detection_auroc(mgroups, kind, model, out)
        if "val_mae" in metrics and mdone.val_mae.notna().any():
            for kind in _noise_kinds(mdone):
                written.append(plot_mae_vs_level(mgroups, mdone, kind, model, out))
            if LR_GENE_ARRAY in load.gene_arrays(summary_file):
                fig = plot_genewise(summary_file, mdone, model, out)
                if fig is not None:
                    written.append(fig)
        if "val_pearson" in metrics and mdone.val_pearson.notna().any():
            from genodl_core.results.histone_plots import plot_histone

            written += plot_histone(mgroups, mdone, model, out)
        if "val_roc_auc" in metrics and mdone.val_roc_auc.notna().any():
            from genodl_core.results.cnnc_plots import plot_auc_vs_level

            for kind in _noise_kinds(mdone):
                fig = plot_auc_vs_level(mgroups, kind, model, out)
                if fig is not None:
                    written.append(fig)
            if "val_defined_targets" in metrics:  # multi-label trials: per target and group
                from genodl_core.results.dna_plots import plot_multilabel

                for kind in _noise_kinds(mdone):
                    rows, clean_label = _with_baseline(mgroups, kind)
                    written += plot_multilabel(summary_file, rows, _with_baseline(mdone, kind)[0],
                                               kind, model, out, clean_label)
        written += plot_loss_curves(summary_file, mdone, model, out)
        written += plot_by_epoch(summary_file, mdone, model, out)
    written += plot_all_regression(groups, done, out)
    return written


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _noise_kinds(done: pd.DataFrame) -> list[str]:
    kinds = sorted(k for k in done.noise_kind.unique() if k != "none")
    return kinds or ["none"]


def _levels_zero(levels: object) -> bool:
    """Whether every step of a ``noise_levels`` string (``"0.0+0.0"``) is at level 0: a noise
    step of magnitude 0 (no flips, std 0, r = 0) leaves the data as it was."""
    try:
        return all(float(v) == 0.0 for v in str(levels).split("+"))
    except ValueError:
        return False


def clean_rows(frame: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, str | None]:
    """The clean trials standing in as level 0 of ``kind``, and a legend label naming them.

    Empty (and no label) when ``kind`` has level-0 trials of its own. Clean trials are those
    with no noise step (kind ``none``), else those whose every step is at level 0 (e.g. the
    ``label_flip`` 0 trials of a sweep over several kinds), of one kind only so that a level
    has one group per variant; only trials on the data sources the kind's trials use count.
    ``frame`` is a groups or finals table of one model (any variants).
    """
    rows = frame[frame.noise_kind == kind]
    if kind == "none" or (rows.noise_level == 0).any():
        return frame.iloc[:0], None
    others = frame[(frame.noise_kind != kind) & frame.data_source.isin(set(rows.data_source))]
    zero = others.noise_levels.map(_levels_zero).astype(bool)
    clean = others[(others.noise_kind == "none").to_numpy() | zero.to_numpy()]
    if clean.empty:
        return clean, None
    chosen = "none" if (clean.noise_kind == "none").any() else sorted(clean.noise_kind.unique())[0]
    label = ("clean trials (no noise step)" if chosen == "none"
             else f"clean trials ({chosen} at 0)")
    return clean[clean.noise_kind == chosen].assign(noise_level=0.0), label


def _with_baseline(frame: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, str | None]:
    """Rows of one noise kind plus, when it has no level 0 of its own, the clean trials as
    level 0 (the left end of a curve) and the label naming them (see :func:`clean_rows`)."""
    clean, label = clean_rows(frame, kind)
    rows = pd.concat([clean, frame[frame.noise_kind == kind]])
    return rows.sort_values("noise_level", kind="stable"), label


def _mark_clean(ax, rows: pd.DataFrame, kind: str, metric: str, color: str) -> None:
    """A hollow ring around the level-0 point taken from the clean trials (``rows`` of other
    kinds than ``kind``), so a borrowed point is told apart from a measured one."""
    col = f"{metric}.mean" if f"{metric}.mean" in rows else metric
    if col not in rows:
        return
    borrowed = rows[(rows.noise_kind != kind)].dropna(subset=[col])
    if not borrowed.empty:
        ax.plot(np.zeros(len(borrowed)), borrowed[col].to_numpy(), linestyle="none",
                marker="o", markersize=12, markerfacecolor="none", markeredgecolor=color,
                markeredgewidth=1.5)


def _clean_legend(ax, label: str | None) -> None:
    """One legend entry saying what the hollow ring at level 0 is."""
    if label:
        ax.plot([], [], linestyle="none", marker="o", markersize=10, markerfacecolor="none",
                markeredgecolor="black", label=f"level 0: {label}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def _new_figure(ncols: int, width: float = 5.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _panel_grid(n: int, width: float = 4.6, height: float = 3.6):
    """``n`` panels in one row, or two columns when there are more than two (readable width)."""
    from matplotlib.figure import Figure

    ncols = n if n <= 2 else 2
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


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
    _note_undefined(ax, groups, metric, color)
    g = groups.dropna(subset=[mean_col]).sort_values("noise_level")
    std = g[std_col].fillna(0.0).to_numpy()
    x, y = g.noise_level.to_numpy(), g[mean_col].to_numpy()
    low, high = y - std, y + std
    if metric in RATES:
        low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
    ax.plot(x, y, marker=marker, linestyle=linestyle, color=color, label=label)
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    _note_partial(ax, g, metric, color)


def _note_undefined(ax, g: pd.DataFrame, metric: str, color: str) -> None:
    """"undefined" at the foot of a level whose finished trials all lack the metric (e.g. all
    abstained on everything): the point is missing on purpose, not lost."""
    count_col = f"{metric}.count"
    if count_col not in g or "n_done" not in g:
        return
    for x, count, done in zip(g.noise_level, g[count_col], g.n_done):
        if count == 0 and done > 0:
            ax.annotate("undefined", (x, 0.03), xycoords=("data", "axes fraction"),
                        ha="center", fontsize="x-small", color=color, rotation=90)


def _note_partial(ax, g: pd.DataFrame, metric: str, color: str) -> None:
    """``defined/done`` beside a point whose mean covers fewer trials than finished (the others
    undefined, e.g. abstained on everything): such a mean rests on fewer seeds."""
    count_col = f"{metric}.count"
    if count_col not in g or "n_done" not in g:
        return
    for x, y, count, done in zip(g.noise_level, g[f"{metric}.mean"], g[count_col], g.n_done):
        if 0 < count < done:
            ax.annotate(f"{int(count)}/{int(done)}", (x, y), textcoords="offset points",
                        xytext=(6, 4), fontsize="x-small", color=color)


def _trial_dots(ax, done: pd.DataFrame, metric: str, color: str) -> None:
    if metric in done:
        pts = done.dropna(subset=[metric])
        ax.scatter(pts.noise_level, pts[metric], s=10, color=color, alpha=0.45, linewidths=0)


def _level_label(kind: str) -> str:
    return "noise level" if kind in ("none", "") else f"{kind} level"


def _level_color(cmap, i: int, n: int):
    """The ``i``-th of ``n`` level colours, stopping short of the colour map's pale end (the
    top of viridis is a yellow hard to see on white)."""
    return cmap(0.85 * i / max(n - 1, 1))


def _level_entry(level: float, clean_label: str | None) -> str:
    """A curve's legend entry: the level, and at level 0 whether the clean trials stand in."""
    return f"{level:g} (clean trials)" if level == 0 and clean_label else f"{level:g}"


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
    g, clean_label = _with_baseline(groups, kind)
    d, _ = _with_baseline(done, kind)
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
    _mark_clean(ax_acc, base_g, kind, "val_accuracy", "tab:blue")
    _mark_clean(ax_acc, abst_g, kind, abst_acc, "tab:red")
    _clean_legend(ax_acc, clean_label)
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_title(f"{model}: accuracy under {kind} noise")

    _mean_std_line(ax_abs, abst_g, "val_abstention", "abstaining model", "tab:red", marker="s")
    _trial_dots(ax_abs, abst_d, "val_abstention", "tab:red")
    _mark_clean(ax_abs, abst_g, kind, "val_abstention", "tab:red")
    _clean_legend(ax_abs, clean_label if not abst_g.empty else None)
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


#: ``detect_<detector>_auroc`` finals (subsets of correlated flips excluded).
_DETECTION_AUROC = re.compile(r"^detect_(?!.*_(?:eligible|ineligible)_auroc$)(.+)_auroc$")


def plot_detection_auroc(groups: pd.DataFrame, kind: str, model: str, out: Path) -> list[Path]:
    """Detection AUROC of each detector against the noise level (docs/detection.md), one line
    per variant and detector; 0.5 is a detector no better than chance. None without data."""
    detectors = sorted({m.group(1) for c in groups.columns
                        if (m := _DETECTION_AUROC.match(c.removesuffix(".mean")))
                        and c.endswith(".mean")})
    if "drop_flagged" in kind:  # cleaning trials: the report's cleaning table covers them
        return []
    # Level 0 flips nothing: detection is undefined there by design, not worth a note.
    g = groups[(groups.noise_kind == kind) & (groups.noise_level != 0)]
    lines = [(v, d) for v in sorted(g.variant.unique()) for d in detectors
             if g.loc[g.variant == v, f"detect_{d}_auroc.mean"].notna().any()]
    if not lines:
        return []
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fig, (ax,) = _new_figure(1, width=6.0)
    for i, (variant, detector) in enumerate(lines):
        label = detector if variant in BASE_VARIANTS else f"{detector} ({variant})"
        _mean_std_line(ax, g[g.variant == variant], f"detect_{detector}_auroc", label,
                       cmap(i % 10))
    ax.axhline(0.5, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(_level_label(kind))
    ax.set_ylabel("AUROC of finding the flipped labels")
    ax.set_title(f"{model}: detecting {kind} noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return [_save(fig, out / f"detection_auroc_{_safe(model)}_{_safe(kind)}.png")]


def plot_mae_vs_level(groups: pd.DataFrame, done: pd.DataFrame, kind: str, model: str,
                      out: Path) -> Path:
    """D-GEX validation MAE against the noise level, with the LR baseline alongside."""
    g, clean_label = _with_baseline(groups, kind)
    d, _ = _with_baseline(done, kind)
    fig, (ax,) = _new_figure(1, width=6.0)
    for variant, color in zip(sorted(g.variant.unique()), ("tab:blue", "tab:green", "tab:purple")):
        label = model if variant in BASE_VARIANTS else f"{model} ({variant})"
        _mean_std_line(ax, g[g.variant == variant], "val_mae", label, color)
        _trial_dots(ax, d[d.variant == variant], "val_mae", color)
        _mark_clean(ax, g[g.variant == variant], kind, "val_mae", color)
    _mean_std_line(ax, g, "lr_val_mae", "linear regression", "tab:orange", marker="^",
                   linestyle="--")
    _trial_dots(ax, d, "lr_val_mae", "tab:orange")
    _clean_legend(ax, clean_label)
    ax.set_xlabel(_level_label(kind))
    ax.set_ylabel("validation MAE (mean over genes)")
    ax.set_title(f"{model}: MAE under {kind} noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out / f"mae_vs_level_{_safe(model)}_{_safe(kind)}.png")


#: Null predictors drawn in the models' MAE figure: (final metric, label, colour, line style).
NULL_MAE_LINES = (("null_mean_val_mae", "null: per-gene training mean", "tab:gray", ":"),
                  ("null_median_val_mae", "null: per-gene training median", "black", "-."))
#: Keys that identify what a null predictor saw: the same for every model of a sweep point.
_NULL_KEYS = ("data_source", "noise_kind", "noise_levels", "seed")


def _level_stats(rows: pd.DataFrame, metric: str, dedupe: bool = False) -> pd.DataFrame:
    """Mean and std (ddof 1) of a final metric per noise level, shaped like a groups table.

    With ``dedupe``, trials of different models that share data, noise and seed count once
    (their null predictors are the same numbers, which would otherwise shrink the std).
    """
    pts = rows.dropna(subset=[metric])
    if dedupe:
        pts = pts.drop_duplicates(subset=[*_NULL_KEYS, metric])
    stats = pts.groupby("noise_level")[metric].agg(["mean", "std"]).reset_index()
    return stats.rename(columns={"mean": f"{metric}.mean", "std": f"{metric}.std"})


def plot_models_mae(groups: pd.DataFrame, done: pd.DataFrame, kind: str, out: Path,
                    suffix: str = "") -> Path:
    """Every regression model's validation MAE against the noise level in one figure.

    One line per model and variant (mean +- std over seeds; the closed-form baselines such as
    LR, ridge or KNN-GE are models like the others), D-GEX's in-trial LR reference when the
    sweep has no LR trials of its own, and the per-gene training mean and median null
    predictors when recorded: a model above a null line does worse than ignoring its inputs.
    """
    from matplotlib import colormaps

    fig, (ax,) = _new_figure(1, width=7.0, height=4.6)
    palette = colormaps["tab10"]
    pairs = [(m, v) for m in sorted(done.model.unique())
             for v in sorted(done[done.model == m].variant.unique())]
    clean_label = None
    for i, (model, variant) in enumerate(pairs):
        g, label = _with_baseline(groups[groups.model == model], kind)
        g = g[g.variant == variant]
        clean_label = clean_label or label
        color = palette(i % 10)
        name = model if variant in BASE_VARIANTS else f"{model} ({variant})"
        _mean_std_line(ax, g, "val_mae", name, color)
        _mark_clean(ax, g, kind, "val_mae", color)
    rows = pd.concat([_with_baseline(done[done.model == m], kind)[0]
                      for m in sorted(done.model.unique())])
    if "lr" not in set(done.model) and "lr_val_mae" in rows and rows.lr_val_mae.notna().any():
        _mean_std_line(ax, _level_stats(rows, "lr_val_mae"), "lr_val_mae",
                       "linear regression (fit within the trials)", "tab:orange",
                       marker="^", linestyle="--")
    for metric, label, color, style in NULL_MAE_LINES:
        if metric in rows and rows[metric].notna().any():
            _mean_std_line(ax, _level_stats(rows, metric, dedupe=True), metric, label, color,
                           marker=".", linestyle=style)
    _clean_legend(ax, clean_label)
    ax.set_xlabel(_level_label(kind))
    ax.set_ylabel("validation MAE (mean over genes)")
    sources = ", ".join(sorted(done.data_source.unique()))
    ax.set_title(f"regression models under {kind} noise ({sources})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out / f"mae_vs_level_models_{_safe(kind)}{suffix}.png")


def plot_all_regression(groups: pd.DataFrame, done: pd.DataFrame, out: Path) -> list[Path]:
    """:func:`plot_models_mae` per noise kind (and data source, when there are several), for
    the models with a validation MAE, when there is more than one line to compare."""
    if "val_mae" not in done:
        return []
    reg = done[done.model.isin(done[done.val_mae.notna()].model.unique())]
    if reg.empty:
        return []
    has_nulls = any(m in reg and reg[m].notna().any() for m, *_ in NULL_MAE_LINES)
    n_lines = len(reg[["model", "variant"]].drop_duplicates())
    if n_lines < 2 and not has_nulls:
        return []
    written = []
    sources = sorted(reg.data_source.unique())
    for source in sources:
        sreg = reg[reg.data_source == source]
        sgroups = groups[groups.model.isin(set(sreg.model)) & (groups.data_source == source)]
        suffix = f"_{_safe(source)}" if len(sources) > 1 else ""
        for kind in _noise_kinds(sreg):
            written.append(plot_models_mae(sgroups, sreg, kind, out, suffix))
    return written


#: Per-epoch panels: (curve metric, y label); all but the first only abstaining models record.
EPOCH_PANELS = (("val_accuracy", "validation accuracy (abstained = wrong)"),
                ("val_abstention_accuracy", "validation accuracy on kept samples"),
                ("val_abstention", "validation abstention fraction"),
                ("alpha", "alpha (abstention penalty)"))


#: Marks the ringed points of a per-epoch mean over fewer seeds than ran.
PARTIAL_GID = "partial-mean"


def _epoch_band(ax, table: pd.DataFrame, metric: str, color, label: str, last: int) -> bool:
    """Mean over seeds per epoch with a +-1 std band; epochs where the metric is undefined for
    every seed (NaN: nothing kept) stay gaps. Shares stay in [0, 1]; alpha, drawn on a log
    axis, keeps its band above the smallest value a seed had. Returns whether anything was
    drawn."""
    table = table.loc[:, table.columns <= last]
    mean = table.mean(axis=0, skipna=True)
    if mean.isna().all():
        return False
    std = table.std(axis=0, ddof=1, skipna=True).fillna(0.0).to_numpy()
    x, y = mean.index.to_numpy(), mean.to_numpy()
    low, high = y - std, y + std
    if metric in RATES:
        low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
    elif metric == "alpha":
        low = np.maximum(low, table.min(axis=0, skipna=True).to_numpy())
    ax.plot(x, y, color=color, label=label, linewidth=1.4)
    ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
    count = table.notna().sum(axis=0).to_numpy()
    partial = (count > 0) & (count < len(table))
    if partial.any():  # a mean over fewer seeds than ran (the others undefined): ringed
        ax.plot(x[partial], y[partial], linestyle="none", marker="o", markersize=5,
                markerfacecolor="none", markeredgecolor=color, gid=PARTIAL_GID)
    return True


def plot_by_epoch(summary_file: Path, done: pd.DataFrame, model: str,
                  out: Path) -> list[Path]:
    """Accuracy, and for an abstaining model accuracy on the kept samples, abstention and
    alpha, per epoch: one panel per metric, one line per noise level (mean +- std over seeds).

    Final values depend strongly on the epoch budget (an abstaining model under heavy label
    noise can abstain on nearly everything for many epochs, then learn the noisy labels), so
    the path matters as much as the end point. One figure per variant and noise kind.
    """
    available = set(load.curve_metrics(summary_file))
    if "val_accuracy" not in available:
        return []
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    cmap = colormaps["viridis"]
    tables = {m: load.curves(summary_file, m) for m, _ in EPOCH_PANELS if m in available}
    epochs_seen = tables["val_accuracy"].notna()
    written = []
    for variant in sorted(done.variant.unique()):
        vdone = done[done.variant == variant]
        panels = [(m, label) for m, label in EPOCH_PANELS if m in tables and
                  tables[m].reindex(vdone.index).notna().any().any()]
        if not panels:
            continue
        for kind in _noise_kinds(vdone):
            rows, clean_label = _with_baseline(vdone, kind)
            levels = sorted(rows.noise_level.unique())
            fig, axes = _panel_grid(len(panels))
            drawn = 0
            for ax, (metric, ylabel) in zip(axes, panels):
                for i, level in enumerate(levels):
                    members = rows.index[rows.noise_level == level]
                    seen = epochs_seen.reindex(members, fill_value=False).any(axis=0)
                    last = int(seen[seen].index.max()) if seen.any() else 0
                    drawn += _epoch_band(ax, tables[metric].reindex(members), metric,
                                         _level_color(cmap, i, len(levels)),
                                         _level_entry(level, clean_label), last)
                if any(ln.get_gid() == PARTIAL_GID for ln in ax.get_lines()):
                    ax.plot([], [], linestyle="none", marker="o", markersize=5,
                            markerfacecolor="none", markeredgecolor="black",
                            label="mean of fewer seeds (others undefined)")
                    ax.legend(fontsize="x-small", handles=ax.get_lines()[-1:])
                if metric == "alpha":  # alpha moves over decades: log axis, plain numbers
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                elif metric in RATES:
                    ax.set_ylim(-0.02, 1.02)
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
            if not drawn:
                continue
            axes[0].legend(title=_level_label(kind), fontsize="small", ncols=2)
            fig.suptitle(f"{model} ({variant}): validation metrics by epoch per {kind} level, "
                         "mean ± std over seeds")
            written.append(_save(
                fig, out / f"by_epoch_{_safe(model)}_{_safe(variant)}_{_safe(kind)}.png"))
    return written


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
            rows, clean_label = _with_baseline(vdone, kind)
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
                    color = _level_color(cmap, i, len(levels))
                    ax.plot(mean.index, mean.to_numpy(), color=color,
                            label=_level_entry(level, clean_label))
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


__all__ = ["make_plots", "plot_accuracy_abstention", "plot_mae_vs_level", "plot_models_mae",
           "plot_all_regression", "plot_by_epoch", "plot_genewise", "plot_loss_curves",
           "clean_rows"]
