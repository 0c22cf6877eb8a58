"""The cleaning stage of a sweep: a second round retraining without each detector's flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import pytest

from genodl_core import records
from genodl_core.errors import SpecError
from tests.workflow.conftest import tiny_sweep
from workflows.cleaning import CLEANING_FILE, run_with_cleaning
from workflows.driver import RunSettings
from workflows.sweep import sweep_from_dict, sweep_from_resolved

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


def test_cleaning_round_runs_after_its_sources_and_resumes(tmp_path):
    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1, cleaning=["aum", "loss"]))
    assert sweep.cleaning == ("aum", "loss") and len(sweep.trials) == 2
    out = tmp_path / "run"
    report = run_with_cleaning(sweep, out, sweep.cleaning, RunSettings())
    assert report.ok, report.states
    # Level 0 flipped nothing: only the noisy trial gets cleaning trials, one per detector.
    assert report.total == 4
    stored = json.loads((out / "sweep.json").read_text())
    assert stored["cleaning"] == ["aum", "loss"]
    assert sweep_from_resolved(stored).trial_ids == [t["trial_id"] for t in stored["trials"]]
    noisy = sweep.trials[1].trial_id
    table = json.loads((out / CLEANING_FILE).read_text())["rows"]
    assert sorted(r["detector"] for r in table) == ["aum", "loss"]
    for row in table:
        assert row["source_trial"] == noisy == row["noisy_trial"]
        assert row["clean_trial"] == sweep.trials[0].trial_id
        assert 0 <= row["clean"] <= 1 and 0 <= row["cleaned"] <= 1
        spec = records.read_json(out / "trials" / row["trial_id"] / records.SPEC_FILE)
        assert spec["noise"][-1]["kind"] == "drop_flagged"
    with h5py.File(report.summary) as h5:
        assert "detect_aum_auroc" in h5["finals"]
        values = h5["finals/detect_aum_auroc"][:]
        assert sum(not math.isnan(v) for v in values) >= 1
    again = run_with_cleaning(sweep, out, sweep.cleaning, RunSettings(gather=False))
    assert again.ok and again.submitted == 0 and again.already_done == 4


def test_cleaning_key_names_the_detectors():
    with pytest.raises(SpecError, match="unknown detector"):
        sweep_from_dict(tiny_sweep(cleaning=["confidence"]))
    with pytest.raises(SpecError, match="not a list"):
        sweep_from_dict(tiny_sweep(cleaning="aum"))


def test_report_shows_detection_and_cleaning(tmp_path):
    from genodl_core.results.report import report

    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1, cleaning=["aum"]))
    out = tmp_path / "run"
    assert run_with_cleaning(sweep, out, sweep.cleaning, RunSettings()).ok
    text = report(out)
    detection = text[text.index("[detection"):]
    assert "aum" in detection and "loss" in detection and "auroc" in detection
    cleaning = text[text.index("[cleaning"):]
    assert "recovered" in cleaning and "label_flip=0.3" in cleaning
    from genodl_core.results.plots import make_plots

    names = [p.name for p in make_plots(out)]
    assert "detection_auroc_nt3_label_flip.png" in names
    assert not any("detection" in n and "drop_flagged" in n for n in names)


def test_correlated_flips_and_abstaining_sources_find_the_clean_base_trial():
    """The clean reference of every cleaning row is the sweep's level-0 base trial, also for
    correlated flips (whose level 0 is written as uncorrelated flips at 0) and for abstaining
    sources under another controller."""
    from workflows.cleaning import _level0_trials, _without_noise
    from workflows.sweep import load_sweep

    sweep = load_sweep(REPO / "jobs" / "examples" / "nt3_detection.toml")
    level0 = _level0_trials(sweep)
    clean = [t for t in sweep.trials
             if t.spec["model"]["variant"] == "base" and t.spec["noise"][0]["fraction"] == 0]
    assert len(clean) == 3  # one per seed
    for trial in sweep.trials:
        assert level0[_without_noise(trial.spec)] == [
            c.trial_id for c in clean if c.spec["seed"] == trial.spec["seed"]]


def test_plan_counts_fold_models_and_the_cleaning_round(capsys):
    from workflows.cli import main

    assert main(["plan", str(REPO / "jobs" / "examples" / "nt3_detection.toml"),
                 "--limit", "1"]) == 0
    out = capsys.readouterr().out
    # 54 trials x 4 folds; 8 flipped levels x 2 variants x 3 seeds = 48 sources x 4 detectors
    assert "54 trial(s) also train 4 fold models each" in out and "216 models more" in out
    assert "second round of up to 192 trials (48 trial(s) with flipped labels x 4" in out
