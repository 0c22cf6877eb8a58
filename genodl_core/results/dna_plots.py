"""Figures of multi-label (DNA -> chromatin feature) sweeps: per target and per target group.

Drawn by :func:`genodl_core.results.plots.make_plots` for every model whose trials stored
per-target validation ROC AUCs (``val_roc_auc_per_target`` under ``/genes`` of summary.h5, one
column per target name):

* ``target_auc_vs_level_<model>_<kind>.png``: one thin line per target (its ROC AUC, mean over
  seeds, against the noise level), coloured by target group, and in bold each group's median
  over its targets. A mean over targets hides the rare targets that a noise kind hurts most;
  the thin lines show them.
* ``group_medians_vs_level_<model>_<kind>.png``: the trials' own group medians
  (``val_roc_auc_median_<group>``, mean +- std over seeds) and the mean over targets, against
  the level.

Groups are the suffixes of the ``val_roc_auc_median_<group>`` finals; a target belongs to a
group when its name starts with ``<group>_`` (the synthetic data's ``tf_3``, ``dnase_0``, ...).
Without groups, the bold line is the median over all targets. As in the other figures, a noise
kind without level-0 trials of its own takes the sweep's clean trials as its level 0: the caller
passes each kind's rows with that level 0 added (:func:`genodl_core.results.plots.clean_rows`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from genodl_core.results import load

log = logging.getLogger(__name__)

#: The per-target array drawn, and the prefix of the group-median finals.
TARGET_ARRAY = "val_roc_auc_per_target"
MEDIAN_PREFIX = "val_roc_auc_median_"
#: Colours of the usual groups; others take the cycle after them.
GROUP_COLORS = {"tf": "tab:blue", "dnase": "tab:orange", "histone": "tab:green"}
_OTHER_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
DPI = 120


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def _new_axes(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no display, the backend left alone

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    log.debug("wrote %s", path)
    return path


def target_group_names(columns) -> list[str]:
    """Groups named by ``val_roc_auc_median_<group>`` columns (finals or group stats)."""
    names = {c.split(".", 1)[0][len(MEDIAN_PREFIX):] for c in columns
             if str(c).startswith(MEDIAN_PREFIX)}
    return sorted(names)


def _group_of(targets: list[str], groups: list[str]) -> dict[str, list[str]]:
    """Targets of each group by name prefix; ``{"all": targets}`` without groups."""
    if not groups:
        return {"all": list(targets)}
    return {g: [t for t in targets if t.startswith(f"{g}_")] for g in groups}


def _color(group: str, i: int) -> str:
    return GROUP_COLORS.get(group, _OTHER_COLORS[i % len(_OTHER_COLORS)])


def target_auc_table(summary_file: Path, done: pd.DataFrame) -> pd.DataFrame:
    """Per level (rows) and target (columns): validation ROC AUC, mean over the level's trials
    (NaN where undefined); ``done``: the finals of one noise kind's trials (and level 0)."""
    per_target = load.gene_errors(summary_file, TARGET_ARRAY)
    rows = done[done.index.isin(per_target.index)]
    if rows.empty:
        return pd.DataFrame()
    values = per_target.loc[rows.index]
    values.index = rows.noise_level.to_numpy(float)
    return values.groupby(level=0).mean().sort_index()


def plot_target_auc_vs_level(summary_file: Path, done: pd.DataFrame, kind: str, model: str,
                             out: Path) -> Path | None:
    """One line per target and the bold median per group (see the module docstring); None when
    the trials have no per-target AUCs. ``done``: finals of ``kind``'s trials and level 0."""
    table = target_auc_table(summary_file, done)
    if table.empty or table.notna().to_numpy().sum() == 0:
        return None
    members = _group_of([str(c) for c in table.columns], target_group_names(done.columns))
    fig, ax = _new_axes(6.5, 4.5)
    x = table.index.to_numpy(float)
    for i, (group, targets) in enumerate(members.items()):
        if not targets:
            continue
        color = _color(group, i)
        for target in targets:
            ax.plot(x, table[target].to_numpy(float), color=color, linewidth=0.7, alpha=0.35,
                    label=f"_target {target}")
        median = np.nanmedian(table[targets].to_numpy(float), axis=1)
        ax.plot(x, median, color=color, linewidth=2.5, marker="o",
                label=f"median {group} ({len(targets)} targets)")
    return _finish(fig, ax, kind, "validation ROC AUC per target",
                   f"{model}: ROC AUC per target under {kind}",
                   out / f"target_auc_vs_level_{_safe(model)}_{_safe(kind)}.png")


def plot_group_medians_vs_level(rows: pd.DataFrame, kind: str, model: str, out: Path,
                                clean_label: str | None = None) -> Path | None:
    """Each group's median ROC AUC (mean +- std over seeds) and the mean over targets against
    the level; None when the trials report no group medians. ``rows``: the group table's rows
    of ``kind`` and level 0; ``clean_label`` names borrowed level-0 trials in the legend."""
    names = target_group_names(rows.columns)
    if not names or rows.empty:
        return None
    rows = rows.sort_values("noise_level", kind="stable")
    fig, ax = _new_axes(6.0, 4.2)
    lines = [(f"{MEDIAN_PREFIX}{g}", f"median {g}", _color(g, i), "-")
             for i, g in enumerate(names)]
    lines.append(("val_roc_auc", "mean over targets", "black", "--"))
    for metric, label, color, style in lines:
        mean_col, std_col = f"{metric}.mean", f"{metric}.std"
        if mean_col not in rows or rows[mean_col].isna().all():
            continue
        x, y = rows.noise_level.to_numpy(float), rows[mean_col].to_numpy(float)
        std = rows[std_col].fillna(0.0).to_numpy(float)
        ax.plot(x, y, color=color, linestyle=style, marker="o", label=label)
        ax.fill_between(x, y - std, y + std, color=color, alpha=0.15)
    if clean_label:
        ax.plot([], [], " ", label=f"level 0: {clean_label}")
    return _finish(fig, ax, kind, "validation ROC AUC",
                   f"{model}: ROC AUC per target group under {kind}",
                   out / f"group_medians_vs_level_{_safe(model)}_{_safe(kind)}.png")


def _finish(fig, ax, kind: str, ylabel: str, title: str, path: Path) -> Path:
    """Label the level axis, title, grid and legend of a figure of these, and save it."""
    ax.set_xlabel(f"{kind} level")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_multilabel(summary_file: Path, groups: pd.DataFrame, done: pd.DataFrame, kind: str,
                    model: str, out: Path, clean_label: str | None = None) -> list[Path]:
    """Both figures of one model and noise kind, those with data (``groups`` and ``done``: the
    kind's rows and level 0, see the module docstring)."""
    written: list[Path] = []
    if TARGET_ARRAY in load.gene_arrays(summary_file):
        fig = plot_target_auc_vs_level(summary_file, done.sort_values("noise_level"), kind,
                                       model, out)
        if fig is not None:
            written.append(fig)
    fig = plot_group_medians_vs_level(groups, kind, model, out, clean_label)
    if fig is not None:
        written.append(fig)
    return written


__all__ = ["plot_target_auc_vs_level", "plot_group_medians_vs_level", "plot_multilabel",
           "target_auc_table", "target_group_names"]
