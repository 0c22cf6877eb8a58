"""The per-group table of a gathered sweep, as text for the terminal or as CSV.

A group is one model, variant, data source, noise kind and level; its statistics are over the
group's finished trials (seeds). The text form shows ``mean ± std`` per headline metric; the CSV
holds every statistic (mean, std, min, max, count) of every chosen metric.

Beside a model's accuracy or MAE the text shows the null baselines of the same trials (what
predicting the majority class, or each gene's training mean or median, scores: see
:mod:`genodl_core.training.null_baselines`), and says when a null does better than the model:
on sparse expression data a per-gene median can beat every model. An abstaining model's
accuracy on the samples it kept is set beside the majority class's accuracy on those same
samples (``null_kept_accuracy``), not on the whole split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from genodl_core.records import atomic_write_bytes
from genodl_core.results import load
from genodl_core.results.collapse import collapse_warning, collapsed_in_table

#: Metrics shown by default when present (the others only with ``--metrics`` or in the CSV).
HEADLINE_METRICS = ("val_accuracy", "test_accuracy", "val_abstention",
                    "val_abstention_accuracy", "val_loss", "val_mae", "test_mae", "val_pearson_r",
                    "val_pearson", "val_pearson_ct_min", "val_auroc", "val_roc_auc", "val_pr_auc",
                    "val_balanced_accuracy",
                    "lr_val_mae", "relative_improvement", "share_genes_better_than_lr",
                    "share_genes_better_than_median")
#: The null baselines shown beside a metric's figure: ``metric -> ((label, null metric), ...)``.
NULL_BASELINES = {
    "val_accuracy": (("null", "null_accuracy"),),
    "test_accuracy": (("null", "test_null_accuracy"),),
    # An abstaining model's accuracy on the samples it kept, against the majority class scored
    # on those same samples: keeping mostly majority-class samples must not pass for skill.
    "val_abstention_accuracy": (("null", "null_kept_accuracy"),),
    "test_abstention_accuracy": (("null", "test_null_kept_accuracy"),),
    "val_mae": (("mean", "null_mean_val_mae"), ("median", "null_median_val_mae")),
    "test_mae": (("mean", "null_mean_test_mae"), ("median", "null_median_test_mae")),
}
#: Accuracies that count abstentions as wrong, and the null on the kept samples that replaces
#: theirs as the verdict for an abstaining model (the one column compares like with like).
KEPT_NULLS = {"val_accuracy": "null_kept_accuracy", "test_accuracy": "test_null_kept_accuracy"}
#: Metrics where more is better (the others are errors: less is better).
HIGHER_IS_BETTER = frozenset({"val_accuracy", "test_accuracy", "val_abstention_accuracy",
                              "test_abstention_accuracy",
                              # histone models: correlations and AUROC
                              "val_pearson", "test_pearson", "val_spearman", "test_spearman",
                              "val_pearson_ct_mean", "val_pearson_ct_min", "val_auroc",
                              # gene-pair models: ranking and imbalance-aware metrics
                              "val_roc_auc", "test_roc_auc", "val_pr_auc", "test_pr_auc",
                              "val_balanced_accuracy", "test_balanced_accuracy"})
KEY_COLUMNS = ("model", "variant", "setting", "data_source", "noise_kind", "noise_levels")
#: Key columns shown only when they tell groups apart.
_OPTIONAL_KEYS = ("setting", "data_source")
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


def null_columns(metrics: Iterable[str], available: Iterable[str]) -> list[str]:
    """The null-baseline metrics to load beside ``metrics`` (those the summary holds)."""
    available = set(available)
    chosen = list(metrics)
    nulls = [null for m in chosen for _, null in NULL_BASELINES.get(m, ())]
    nulls += [KEPT_NULLS[m] for m in chosen if m in KEPT_NULLS]
    return list(dict.fromkeys(n for n in nulls if n in available and n not in chosen))


def judged(table: pd.DataFrame, metric: str) -> list[bool]:
    """Per row, whether the model's ``metric`` is judged against its null over all samples:
    not for an abstaining model's accuracy (abstentions count as wrong there), which is judged
    on its kept samples instead (:data:`KEPT_NULLS`, ``val_abstention_accuracy``)."""
    kept = f"{KEPT_NULLS.get(metric)}.count"
    if kept not in table:
        return [True] * len(table)
    return [not count > 0 for count in table[kept]]


def format_table(table: pd.DataFrame, metrics: Iterable[str], digits: int = 4) -> str:
    """Text table: group keys, trial counts, and ``mean ± std (n)`` per metric.

    Data source is shown only when the sweep uses more than one, and counts of running or
    corrupt trials only when there are any, so the usual table stays narrow. A metric with
    null baselines in ``table`` (:data:`NULL_BASELINES`) shows their means after its own, and
    which of them does better than the model.
    """
    if table.empty:
        return "no trials gathered"
    keys = [k for k in KEY_COLUMNS if k not in _OPTIONAL_KEYS or table[k].nunique() > 1]
    out = table[keys].rename(columns={"noise_kind": "noise", "noise_levels": "level"})
    for col in COUNT_COLUMNS:
        if col in ("n_done", "n_failed") or table[col].any():
            out[col.removeprefix("n_")] = table[col]
    for metric in metrics:
        cells = [_cell(m, s, n, digits) for m, s, n in zip(
            table[f"{metric}.mean"], table[f"{metric}.std"], table[f"{metric}.count"])]
        nulls = [(label, f"{null}.mean") for label, null in NULL_BASELINES.get(metric, ())
                 if f"{null}.mean" in table]
        if nulls:
            verdicts = judged(table, metric)
            cells = [cell + _null_note(metric, table[f"{metric}.mean"].iloc[i],
                                       [(label, table[col].iloc[i]) for label, col in nulls],
                                       digits, verdicts[i])
                     for i, cell in enumerate(cells)]
        out[metric] = cells
    return out.to_string(index=False)


def _beaten_by(metric: str, model: float, nulls: list[tuple[str, float]]) -> list[str]:
    """Labels of the nulls whose mean does strictly better than the model's mean."""
    higher = metric in HIGHER_IS_BETTER
    return [label for label, value in nulls if not (math.isnan(model) or math.isnan(value))
            and (value > model if higher else value < model)]


def _null_note(metric: str, model: float, nulls: list[tuple[str, float]], digits: int,
               verdict: bool = True) -> str:
    """`` [null 0.5000]`` or `` [null mean 0.80, median 0.58: median better]`` (the verdict
    only with ``verdict``)."""
    shown = [(label, v) for label, v in nulls if not math.isnan(v)]
    if not shown:
        return ""
    named = len(shown) > 1
    values = ", ".join(f"{label} {v:.{digits}f}" if named else f"{v:.{digits}f}"
                       for label, v in shown)
    beaten = _beaten_by(metric, model, shown) if verdict else []
    better = f": {' and '.join(beaten) if named else 'null'} better" if beaten else ""
    return f" [null {values}{better}]"


def null_warnings(table: pd.DataFrame, metrics: Iterable[str]) -> list[str]:
    """One line per metric on which a null baseline beats the model in some group."""
    lines = []
    for metric in metrics:
        nulls = [(label, null) for label, null in NULL_BASELINES.get(metric, ())
                 if f"{null}.mean" in table]
        verdicts = judged(table, metric)
        for label, null in nulls:
            beaten = sum(bool(_beaten_by(metric, m, [(label, v)])) for m, v, judge in zip(
                table[f"{metric}.mean"], table[f"{null}.mean"], verdicts) if judge)
            if beaten:
                what = ("always predicting the majority class" if label == "null"
                        else f"each gene's training {label}")
                if "kept" in null:
                    what += " on the samples the model kept"
                lines.append(f"  note: {what} ({null}) beats the model's {metric} in {beaten} "
                             f"of {len(table)} group(s)")
    return lines


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
    table = group_table(path, shown + null_columns(shown, load.final_metrics(path)))
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
        parts += null_warnings(rows, recorded)
        if any(m in KEPT_NULLS and not all(judged(rows, m)) for m in recorded):
            parts.append("  note: an abstaining model's accuracy counts abstentions as wrong; "
                         "it is judged against the null on the samples it kept "
                         "(val_abstention_accuracy vs null_kept_accuracy)")
    from genodl_core.results.breakdown import report_lines

    parts += report_lines(load.summary_path(path))
    from genodl_core.results.detection_report import cleaning_lines, detection_lines

    parts += detection_lines(path) + cleaning_lines(path)
    collapsed = collapse_warning(collapsed_in_table(load.trials(path)))
    if collapsed:
        parts.append("\n" + collapsed)
    problems = load.problems(path)
    if problems:
        parts.append(f"\n{len(problems)} problem(s) while gathering:")
        parts += [f"  {p}" for p in problems[:20]]
        if len(problems) > 20:
            parts.append(f"  ... and {len(problems) - 20} more")
    return "\n".join(parts)


__all__ = ["HEADLINE_METRICS", "NULL_BASELINES", "KEPT_NULLS", "judged", "group_table", "headline_metrics",
           "null_columns", "format_table", "null_warnings", "report"]
