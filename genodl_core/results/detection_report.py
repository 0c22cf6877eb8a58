"""The detection and cleaning sections of ``genodl report``.

Detection: per group (model, variant, noise, level) and detector, the mean AUROC, AUPRC,
precision and recall of the flagged set over the group's seeds, from the ``detect_*`` finals in
summary.h5 (docs/detection.md). Cleaning: per detector and noise level, the mean test accuracy
of the clean, noisy and cleaned base models and the share of the noise's cost recovered, from
the run directory's ``cleaning.json`` (:mod:`workflows.cleaning`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from genodl_core.results import load

#: Metrics shown per detector.
SHOWN = ("auroc", "auprc", "precision", "recall")
_FINAL = re.compile(r"^detect_(.+)_auroc$")
#: Subset metrics also end in ``_auroc``; they are not detectors of their own.
_SUBSETS = ("_eligible", "_ineligible")
CLEANING_FILE = "cleaning.json"


def detectors(metrics: list[str]) -> list[str]:
    """The detectors with an AUROC final among ``metrics``."""
    found = [m.group(1) for m in map(_FINAL.match, metrics) if m]
    return [d for d in found if not d.endswith(_SUBSETS)]


def detection_lines(path: str | Path, digits: int = 3) -> list[str]:
    """The detection section (empty when no trial scored a detector)."""
    available = load.final_metrics(path)
    names = detectors(available)
    if not names:
        return []
    wanted = [f"detect_{d}_{m}" for d in names for m in SHOWN if f"detect_{d}_{m}" in available]
    table = load.groups(path, metrics=wanted)
    keys = ["model", "variant", "noise_kind", "noise_levels"]
    rows = []
    for _, group in table.iterrows():
        for d in names:
            if not group.get(f"detect_{d}_auroc.count", 0):
                continue
            row = {k: group[k] for k in keys}
            row["detector"] = d
            for m in SHOWN:
                value = group.get(f"detect_{d}_{m}.mean", math.nan)
                row[m] = "-" if pd.isna(value) else f"{value:.{digits}f}"
            row["n"] = int(group[f"detect_{d}_auroc.count"])
            rows.append(row)
    if not rows:
        return []
    out = pd.DataFrame(rows).rename(columns={"noise_kind": "noise", "noise_levels": "level"})
    return ["\n[detection: flipped training labels found, mean over seeds (levels without flips have no row)]",
            out.to_string(index=False)]


def cleaning_lines(path: str | Path, digits: int = 3) -> list[str]:
    """The cleaning section (empty without ``cleaning.json`` beside the summary)."""
    file = load.summary_path(path).parent / CLEANING_FILE
    if not file.is_file():
        return []
    rows = json.loads(file.read_text()).get("rows", [])
    if not rows:
        return []
    frame = pd.DataFrame([{
        "model": r["model"], "variant": r.get("variant"), "detector": r["detector"],
        "noise": "+".join(f"{s['kind']}={s.get('fraction', '')}" for s in r["noise"]),
        "clean": r["clean"], "noisy": r["noisy"], "cleaned": r["cleaned"],
        "recovered": r["recovered"]} for r in rows])
    frame = frame.fillna({"variant": ""})
    grouped = frame.groupby(["model", "variant", "noise", "detector"], sort=True)
    table = grouped[["clean", "noisy", "cleaned", "recovered"]].mean().round(digits)
    table["n"] = grouped.size()
    return ["\n[cleaning: test accuracy of the base model, clean / noisy / retrained without "
            "the flagged samples; recovered = (cleaned - noisy) / (clean - noisy)]",
            table.reset_index().to_string(index=False)]


__all__ = ["detection_lines", "cleaning_lines", "detectors"]
