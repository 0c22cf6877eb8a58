"""Collapsed classifiers: trials whose model predicts one class for every sample.

Such a model still scores the majority-class accuracy, which can pass for learning in a table
of means; the trial runner flags it in the record (``extra.collapsed``, ``collapsed_class``),
and ``genodl status`` and ``genodl report`` name the flagged trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from genodl_core.records import RESULT_FILE

#: How many flagged trials a warning names before it says "...".
SHOWN = 5


def collapse_warning(collapsed: Mapping[str, int | None]) -> str | None:
    """One line naming the collapsed trials (trial id -> predicted class), or None."""
    if not collapsed:
        return None
    items = list(collapsed.items())
    shown = ", ".join(f"{tid} (class {'?' if cls is None else cls})" for tid, cls in items[:SHOWN])
    more = ", ..." if len(items) > SHOWN else ""
    return (f"warning: {len(items)} trial(s) predict a single class for every validation sample "
            f"(collapsed; their accuracy is the majority share): {shown}{more}")


def collapsed_in_records(trial_dirs: Iterable[Path]) -> dict[str, int | None]:
    """The collapsed trials among done records (read from each ``result.json``'s ``extra``)."""
    found: dict[str, int | None] = {}
    for trial_dir in trial_dirs:
        try:
            extra = json.loads((Path(trial_dir) / RESULT_FILE).read_text()).get("extra") or {}
        except (OSError, ValueError):
            continue  # status reports unreadable records itself
        if extra.get("collapsed"):
            found[Path(trial_dir).name] = extra.get("collapsed_class")
    return found


def collapsed_in_table(trials: pd.DataFrame) -> dict[str, int | None]:
    """The collapsed trials of a gathered trials table (``extra.collapsed`` column)."""
    if "extra.collapsed" not in trials:
        return {}
    flagged = trials[trials["extra.collapsed"].fillna(False).astype(bool)]
    classes = (flagged["extra.collapsed_class"] if "extra.collapsed_class" in flagged
               else pd.Series(None, index=flagged.index))
    return {str(tid): (None if pd.isna(cls) else int(cls)) for tid, cls in classes.items()}


__all__ = ["collapse_warning", "collapsed_in_records", "collapsed_in_table"]
