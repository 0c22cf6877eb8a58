"""Write a summary's tables as flat files (CSV, or Parquet with pyarrow) for any tool.

``summary.h5`` needs h5py; spreadsheets, R and database loaders want flat tables. Four files
are written, one row per record and every row carrying its key:

* ``trials``: one row per trial (``trial_id`` first, then the trials table's columns);
* ``finals``: ``trial_id`` and one column per final metric;
* ``curves``: long form, one row per trial, epoch and metric (``trial_id, epoch, metric,
  value``); epochs count from 1 and the NaN padding after a trial's last epoch is dropped;
* ``groups``: one row per group with its statistics.

The formats ``mlflow`` and ``tensorboard`` log the trial records to an experiment tracker
instead (see :mod:`genodl_core.results.tracking`); they read the records, not the summary.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from genodl_core.errors import SpecError
from genodl_core.results import load

#: Output formats, with the file suffix each writes.
FORMATS = {"csv": ".csv", "parquet": ".parquet"}
#: Formats that log the records to an experiment tracker instead of writing tables.
TRACKING_FORMATS = ("mlflow", "tensorboard")
#: Tables written, in order.
TABLES = ("trials", "finals", "curves", "groups")


def curves_long(path: str | Path) -> pd.DataFrame:
    """Every per-epoch curve in long form: ``trial_id, epoch, metric, value`` (no padding)."""
    parts = []
    for metric in load.curve_metrics(path):
        wide = load.curves(path, metric)
        wide.columns = list(wide.columns)  # plain epoch numbers for melt
        long = wide.reset_index().melt(id_vars="trial_id", var_name="epoch", value_name="value")
        long["metric"] = metric
        parts.append(long[long["value"].notna()])
    if not parts:
        return pd.DataFrame({"trial_id": pd.Series(dtype=str), "epoch": pd.Series(dtype="int64"),
                             "metric": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
    return pd.concat(parts, ignore_index=True)[["trial_id", "epoch", "metric", "value"]]


def tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """The four flat tables of a summary (file or run directory), ``trial_id`` a column."""
    return {"trials": load.trials(path).reset_index(),
            "finals": load.finals(path, keys=False).reset_index(),
            "curves": curves_long(path),
            "groups": load.groups(path)}


def check_format(fmt: str) -> None:
    """Refuse an unknown format, and Parquet without pyarrow, before anything is written.

    Raises
    ------
    SpecError
        Naming the format and what is allowed (or how to install pyarrow).
    """
    if fmt in TRACKING_FORMATS:
        from genodl_core.results.tracking import check_tracker

        check_tracker(fmt)
        return
    if fmt not in FORMATS:
        raise SpecError("--format", fmt, sorted(FORMATS) + list(TRACKING_FORMATS),
                        reason="unknown export format")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise SpecError("--format", fmt, "csv, or parquet after `pip install pyarrow` "
                        "(or `pip install genodl[parquet]`)",
                        reason="Parquet needs the pyarrow package, which is not installed")


def export(path: str | Path, fmt: str = "csv", out: str | Path | None = None) -> list[Path]:
    """Write the flat tables of the summary at ``path`` into ``out`` and return their paths.

    ``out`` defaults to ``<run directory>/export``; files are ``<table>.csv`` or
    ``<table>.parquet``. The summary is read with :mod:`genodl_core.results.load`, so summaries
    of every readable schema version export alike.
    """
    check_format(fmt)
    summary = load.summary_path(path)
    folder = Path(out) if out is not None else summary.parent / "export"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in tables(summary).items():
        target = folder / f"{name}{FORMATS[fmt]}"
        if fmt == "csv":
            frame.to_csv(target, index=False)
        else:
            frame.to_parquet(target, index=False)
        written.append(target)
    return written


__all__ = ["FORMATS", "TRACKING_FORMATS", "TABLES", "curves_long", "tables", "check_format",
           "export"]
