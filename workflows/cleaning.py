"""The cleaning stage of a sweep (``[sweep] cleaning = ["loss", "aum"]``): a second round.

The first round is the sweep as written. Once it has run, every done trial whose record holds a
detector's flagged set (``detect_<detector>_flagged``, for the detectors the sweep names) gets
a cleaning trial (:func:`genodl_core.detection.cleaning.cleaning_spec`): the same trial with
the base model and the flagged samples dropped. The second round is one more
:func:`workflows.driver.run_sweep` in the same run directory over the first round's trials and
the cleaning trials together (every trial given explicitly, all axes zipped), so it packs, skips
what is done and resumes like any sweep; a cleaning trial's id depends on its source's flags.

Afterwards ``cleaning.json`` in the run directory lists, per cleaning trial, its source and its
references, all trained as the base model: the noisy one (the source's setting; the source
itself unless it abstains) and the clean one (the sweep's level 0: every noise fraction at 0,
or no noise step at all, whichever ran), the three test accuracies and the share of the
accuracy the noise cost that cleaning recovered; ``genodl report`` shows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from genodl_core import records
from genodl_core.detection.cleaning import (CLEANING_DETECTORS, DROP_STEP, as_base_model,
                                            cleaning_spec, recovered_share)
from genodl_core.errors import SpecError
from genodl_core.spec import spec_from_dict

from workflows.driver import RunReport, RunSettings, gather_summary, run_sweep
from workflows.rundir import RunDir
from workflows.sweep import Axis, Sweep, expand

log = logging.getLogger(__name__)

#: The stage's table in the run directory.
CLEANING_FILE = "cleaning.json"
#: Top-level keys of a resolved trial spec: the axes of an explicit sweep.
_SPEC_KEYS = ("seed", "device", "precision", "model", "data", "noise", "train")


def parse_cleaning(value: Any) -> tuple[str, ...]:
    """Check ``[sweep] cleaning``: a list of detector names.

    Raises
    ------
    SpecError
        Naming the bad value and the detectors a cleaning stage may use.
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SpecError("sweep.cleaning", value, f"a list of {list(CLEANING_DETECTORS)}",
                        reason="not a list")
    for name in value:
        if name not in CLEANING_DETECTORS:
            raise SpecError("sweep.cleaning", name, list(CLEANING_DETECTORS),
                            reason="unknown detector")
    return tuple(dict.fromkeys(value))


def cleaning_specs(sweep: Sweep, run: RunDir, detectors: Sequence[str]) -> list[dict[str, Any]]:
    """The cleaning trials' specs of the sweep's done trials with flipped labels, in order."""
    specs = []
    for trial in sweep.trials:
        if any(step.get("kind") == DROP_STEP for step in trial.spec.get("noise", [])):
            continue
        if run.trial_state(trial.trial_id).state != records.DONE:
            continue
        trial_dir = run.trial_dir(trial.trial_id)
        result = records.read_json(trial_dir / records.RESULT_FILE)
        names = result.get("arrays", [])
        # A trial without flipped labels (the sweep's level 0) has nothing to clean; a
        # multi-label trial flags (sample, target) labels, not samples to drop.
        extra = result.get("extra", {})
        if not extra.get("detection", {}).get("n_flipped") or "n_targets" in extra:
            continue
        for detector in detectors:
            if f"detect_{detector}_flagged" in names:
                specs.append(cleaning_spec(trial.spec, trial_dir, detector))
    return specs


def explicit(sweep: Sweep, specs: Sequence[dict[str, Any]]) -> Sweep:
    """A sweep of exactly these resolved specs (one zipped axis per top-level spec key)."""
    axes = tuple(Axis(key, tuple(s[key] for s in specs)) for key in _SPEC_KEYS)
    zipped = (tuple(_SPEC_KEYS),)
    trials = expand(sweep.base, axes, zipped)
    return dataclasses.replace(sweep, axes=axes, zipped=zipped, trials=tuple(trials),
                               max_trials=max(sweep.max_trials, len(trials)))


def run_with_cleaning(sweep: Sweep, out: str | Path, detectors: Sequence[str],
                      settings: RunSettings | None = None) -> RunReport:
    """Run the sweep, then its cleaning stage, in ``out`` (or resume either there)."""
    settings = settings or RunSettings()
    per_round = dataclasses.replace(settings, update_sweep=True, gather=False)
    report = run_sweep(sweep, out, per_round)
    run = RunDir(report.run_dir)
    if report.stopped_by is not None:
        return report
    extra = cleaning_specs(sweep, run, detectors)
    log.info("cleaning stage: %d trials (%s) from %d trials of the first round", len(extra),
             ", ".join(detectors), len(sweep.trials))
    if extra:
        report = run_sweep(explicit(sweep, [t.spec for t in sweep.trials] + extra), out,
                           per_round)
    write_table(run, sweep)
    if settings.gather and report.stopped_by is None:
        report.summary = gather_summary(run)
    return report


def plan_lines(sweep: Sweep) -> list[str]:
    """What ``genodl plan`` says of the work the trial table does not show: confident
    learning's fold models inside trials, and the cleaning stage's second round."""
    from genodl_core.detection.signals import flips_labels

    lines = []
    folds = [int(t.spec.get("train", {}).get("detect_folds") or 0) for t in sweep.trials]
    with_folds = [k for k in folds if k >= 2]
    if with_folds:
        ks = sorted(set(with_folds))
        lines.append(f"detection: {len(with_folds)} trial(s) also train "
                     f"{'/'.join(map(str, ks))} fold models each for confident learning "
                     f"({sum(with_folds)} models more, each on (K - 1) / K of its training "
                     f"split)")
    if sweep.cleaning:
        flipped = [t for t in sweep.trials if any(
            flips_labels(step.get("kind", "")) and (step.get("fraction") or 0) > 0
            for step in t.spec.get("noise", []))]
        lines.append(f"cleaning: then a second round of up to "
                     f"{len(flipped) * len(sweep.cleaning)} trials ({len(flipped)} trial(s) with "
                     f"flipped labels x {len(sweep.cleaning)} detector(s): "
                     f"{', '.join(sweep.cleaning)}), planned from the first round's flags")
    return lines


def write_table(run: RunDir, sweep: Sweep) -> list[dict[str, Any]]:
    """Write ``cleaning.json``: per done cleaning trial, the accuracies and recovered share."""
    done: dict[str, dict[str, Any]] = {}

    def final(trial_id: str | None) -> dict[str, Any]:
        if trial_id is None or run.trial_state(trial_id).state != records.DONE:
            return {}
        if trial_id not in done:
            done[trial_id] = records.read_json(
                run.trial_dir(trial_id) / records.RESULT_FILE).get("final", {})
        return done[trial_id]

    level0 = _level0_trials(sweep)
    rows = []
    for trial_dir in sorted(p for p in run.trials_dir.iterdir() if p.is_dir()):
        spec_file = trial_dir / records.SPEC_FILE
        if not spec_file.is_file():
            continue
        spec = records.read_json(spec_file)
        steps = spec.get("noise", [])
        if not steps or steps[-1].get("kind") != DROP_STEP or not final(trial_dir.name):
            continue
        step = steps[-1]
        source_id = step["source_trial"]
        source = records.read_json(run.trial_dir(source_id) / records.SPEC_FILE)
        noisy_id = reference(source, clean=False)
        # Level 0 is the noise steps at fraction 0, no noise at all, or the sweep's own level 0
        # in another noise kind (correlated flips at 0 are uncorrelated flips at 0).
        clean_id = next((t for t in (reference(source, clean=True),
                                     reference({**source, "noise": []}, clean=False),
                                     *level0.get(_without_noise(source), ()))
                         if final(t)), None)
        metric = "test_accuracy" if "test_accuracy" in final(trial_dir.name) else "val_accuracy"
        acc = [final(t).get(metric, float("nan")) for t in (clean_id, noisy_id, trial_dir.name)]
        rows.append({"trial_id": trial_dir.name, "source_trial": source_id,
                     "noisy_trial": noisy_id, "clean_trial": clean_id,
                     "detector": step["detector"],
                     "model": source["model"]["name"],
                     "variant": source["model"].get("variant"),
                     "noise": [{k: v for k, v in s.items() if k in ("kind", "fraction")}
                               for s in steps[:-1]],
                     "seed": source["seed"], "metric": metric, "clean": acc[0],
                     "noisy": acc[1], "cleaned": acc[2], "recovered": recovered_share(*acc)})
    records.atomic_write_json(run.path / CLEANING_FILE, {"sweep": sweep.name, "rows": rows})
    return rows


def _without_noise(spec: dict[str, Any]) -> str:
    """A key of a spec as the base model, leaving its noise out."""
    return json.dumps({k: v for k, v in as_base_model(spec).items() if k != "noise"},
                      sort_keys=True, default=str)


def _level0_trials(sweep: Sweep) -> dict[str, list[str]]:
    """The sweep's base-model trials whose noise changes nothing (every step at fraction 0), by
    the rest of their spec."""
    found: dict[str, list[str]] = {}
    for trial in sweep.trials:
        steps = trial.spec.get("noise", [])
        is_base = as_base_model(trial.spec)["model"] == trial.spec.get("model")
        if is_base and all(step.get("fraction") == 0 for step in steps):
            found.setdefault(_without_noise(trial.spec), []).append(trial.trial_id)
    return found


def reference(source: dict[str, Any], *, clean: bool) -> str | None:
    """The trial id the cleaned model is compared with: the source's setting trained as the
    base model (what the cleaning trial trains), with its noise (``clean=False``) or with every
    noise ``fraction`` at 0 (``clean=True``, one form of the sweep's level 0); None when not a
    valid trial.
    """
    spec = as_base_model(source)
    if clean:
        spec["noise"] = [{**s, "fraction": 0.0} if "fraction" in s else s
                         for s in spec["noise"]]
    try:
        return spec_from_dict(spec).trial_id
    except SpecError:
        return None


__all__ = ["CLEANING_FILE", "parse_cleaning", "plan_lines", "cleaning_specs", "explicit",
           "run_with_cleaning", "write_table", "reference"]
