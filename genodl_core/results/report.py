"""The per-group table of a gathered sweep, as text for the terminal or as CSV.

A group is one model, variant, data source, noise kind and level; its statistics are over the
group's finished trials (seeds). The text form shows ``mean ± std`` per headline metric; the CSV
holds every statistic (mean, std, min, max, count) of every chosen metric.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from genodl_core.records import atomic_write_bytes
from genodl_core.results import load

#: Metrics shown by default when present (the others only with ``--metrics`` or in the CSV).
HEADLINE_METRICS = ("val_accuracy", "val_abstention", "val_abstention_accuracy", "val_loss",
                    "val_mae", "lr_val_mae", "relative_improvement",
                    "share_genes_better_than_lr")
KEY_COLUMNS = ("model", "variant", "data_source", "noise_kind", "noise_levels")
COUNT_COLUMNS = ("n_done", "n_failed", "n_running", "n_pending", "n_corrupt")


def group_table(path: str | Path, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Every statistic of the chosen final metrics per group (default: all metrics).

    Raises
    ------
    KeyError
        If a requested metric is not in the summary; the message lists those that are.
    DataError
        If there is no readable summary.
    """
    return load.groups(path, metrics=metrics)


def headline_metrics(path: str | Path) -> list[str]:
    """The headline metrics present in the summary, or all of them if none is."""
    available = load.final_metrics(path)
    chosen = [m for m in HEADLINE_METRICS if m in available]
    return chosen or available


def format_table(table: pd.DataFrame, metrics: Iterable[str], digits: int = 4) -> str:
    """Text table: group keys, trial counts, and ``mean ± std (n)`` per metric.

    Data source is shown only when the sweep uses more than one, and counts of running or
    corrupt trials only when there are any, so the usual table stays narrow.
    """
    if table.empty:
        return "no trials gathered"
    keys = [k for k in KEY_COLUMNS if k != "data_source" or table[k].nunique() > 1]
    out = table[keys].rename(columns={"noise_kind": "noise", "noise_levels": "level"})
    for col in COUNT_COLUMNS:
        if col in ("n_done", "n_failed") or table[col].any():
            out[col.removeprefix("n_")] = table[col]
    for metric in metrics:
        out[metric] = [_cell(m, s, n, digits) for m, s, n in zip(
            table[f"{metric}.mean"], table[f"{metric}.std"], table[f"{metric}.count"])]
    return out.to_string(index=False)


def _cell(mean: float, std: float, count: int, digits: int) -> str:
    if count == 0 or math.isnan(mean):
        return "-"
    if math.isnan(std):
        return f"{mean:.{digits}f} (n={count})"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={count})"


def report(path: str | Path, metrics: Iterable[str] | None = None,
           csv: str | Path | None = None) -> str:
    """The text report of a summary; with ``csv`` also write the full numeric table there.

    The text has one table per model, each showing the chosen metrics that model recorded
    (an NT3 table has no MAE column full of dashes).

    Parameters
    ----------
    path
        Run directory or summary file.
    metrics
        Final metrics to show (default: the headline metrics present).
    csv
        Optional CSV path for every statistic of the chosen metrics (all metrics when
        ``metrics`` is None), all models in one table.

    Raises
    ------
    KeyError
        If a requested metric is not in the summary (the message lists those that are).
    DataError
        If there is no readable summary.
    """
    shown = list(metrics) if metrics is not None else headline_metrics(path)
    table = group_table(path, shown)
    if csv is not None:
        every = table if metrics is not None else group_table(path, None)
        atomic_write_bytes(csv, every.to_csv(index=False).encode())
    attrs = load.attributes(path)
    parts = [f"{attrs['n_trials']} trials: {attrs['n_done']} done, {attrs['n_failed']} failed, "
             f"{attrs['n_running']} running, {attrs['n_pending']} pending, "
             f"{attrs['n_corrupt']} corrupt "
             f"(summary schema {attrs['schema_version']}, genodl {attrs['genodl_version']}, "
             f"gathered {attrs['created_at']})"]
    if table.empty:
        parts.append("no trials gathered")
    for model in dict.fromkeys(table.model):
        rows = table[table.model == model].reset_index(drop=True)
        recorded = [m for m in shown if rows[f"{m}.count"].sum() > 0] or shown
        parts.append(f"\n[{model}]\n{format_table(rows, recorded)}")
    problems = load.problems(path)
    if problems:
        parts.append(f"\n{len(problems)} problem(s) while gathering:")
        parts += [f"  {p}" for p in problems[:20]]
        if len(problems) > 20:
            parts.append(f"  ... and {len(problems) - 20} more")
    return "\n".join(parts)


__all__ = ["HEADLINE_METRICS", "group_table", "headline_metrics", "format_table", "report"]
