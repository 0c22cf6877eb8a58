"""Execution plans of a sweep's trials: stored in summary.h5, warned about when they differ.

Each test prepares the run directory of a tiny sweep (its real ``sweep.json``) and writes a done
record per trial, with the plans it needs in ``provenance.json`` (key ``engine``), as trials
resumed or rerun under other settings would have. The records are written directly, so that
what is tested here does not depend on training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import pytest

from genodl_core import records
from tests.workflow.conftest import run_cli, tiny_sweep
from workflows.rundir import RunDir
from workflows.sweep import sweep_from_dict

pytestmark = pytest.mark.timeout(120)

FAST = {"mode": "fast", "device": "cuda", "precision": "bf16", "pack_size": 1,
        "switches": {"channels_last": True, "fused_optimizer": True, "compile": True,
                     "bf16_inputs": True, "eval_batch_size": None},
        "label": "nhwc+fused+compile+bf16in"}
PLAIN = {"mode": "plain", "device": "cpu", "precision": "fp32", "pack_size": 1,
         "switches": {"channels_last": False, "compile": False}, "label": "plain"}
WARNING = re.compile(r"warning: the (\d+) done trials of this sweep were trained under (\d+) "
                     r"execution plans: (.*); compare their numbers with care")


@pytest.fixture
def sweep_run(tmp_path) -> tuple[Path, list[str]]:
    """The run directory of a tiny sweep (4 trials) with a done record per trial, and the
    trial ids in sweep order."""
    sweep = sweep_from_dict(tiny_sweep())
    run = RunDir.prepare(tmp_path / "run", sweep)
    for i, trial in enumerate(sweep.trials):
        trial_dir = run.trial_dir(trial.trial_id)
        trial_dir.mkdir(parents=True, exist_ok=True)
        records.atomic_write_json(trial_dir / records.SPEC_FILE,
                                  {"trial_id": trial.trial_id, **trial.spec})
        records.atomic_write_json(trial_dir / records.PROVENANCE_FILE,
                                  records.provenance({"device": "cpu"}))
        accuracy = [0.5, 0.6 + 0.01 * i]
        records.write_result(trial_dir, {"trial_id": trial.trial_id, "precision": "fp32",
                                         "final": {"val_accuracy": accuracy[-1]},
                                         "curves": {"val_accuracy": accuracy}, "noise": []})
        records.write_status(trial_dir, records.DONE, trial_id=trial.trial_id, attempt=1,
                             wall_s=0.5)
    return run.path, sweep.trial_ids


def set_engine(run: Path, trial_id: str, engine: dict | None) -> None:
    """Write ``engine`` into the trial's provenance (None: remove it, as in older records)."""
    path = run / "trials" / trial_id / records.PROVENANCE_FILE
    prov = records.read_json(path)
    prov.pop("engine", None)
    if engine is not None:
        prov["engine"] = engine
    records.atomic_write_json(path, prov)


def plans_in(text: str) -> dict[str, tuple[int, str]]:
    """Plan name -> (trials, example id) from the one warning line in ``text``."""
    found = WARNING.findall(text)
    assert len(found) == 1, text
    _, n_plans, listing = found[0]
    parts = re.findall(r"([^ ,]+) \((\d+) trials?, e\.g\. ([0-9a-f]{16})\)", listing)
    assert len(parts) == int(n_plans), listing
    return {name: (int(n), example) for name, n, example in parts}


def test_status_and_gather_warn_when_the_done_trials_had_several_plans(sweep_run):
    run, ids = sweep_run
    set_engine(run, ids[0], FAST)
    set_engine(run, ids[1], FAST)
    set_engine(run, ids[2], PLAIN)
    set_engine(run, ids[3], None)

    status = run_cli("status", str(run))
    assert status.returncode == 0, status.stderr
    assert "4 trials | done 4" in status.stdout
    assert "the 4 done trials of this sweep were trained under 3 execution plans" in status.stdout
    listed = plans_in(status.stdout)
    assert list(listed) == ["fast/bf16/nhwc+fused+compile+bf16in", "plain/fp32/plain",
                            "unrecorded"]
    assert listed["fast/bf16/nhwc+fused+compile+bf16in"] == (2, ids[0])
    assert listed["plain/fp32/plain"] == (1, ids[2]) and listed["unrecorded"] == (1, ids[3])

    as_json = run_cli("status", str(run), "--json")
    report = json.loads(as_json.stdout)  # the warning goes to stderr, the JSON stays valid
    assert [(p["name"], p["n_trials"]) for p in report["execution_plans"]] == [
        ("fast/bf16/nhwc+fused+compile+bf16in", 2), ("plain/fp32/plain", 1), ("unrecorded", 1)]
    assert plans_in(as_json.stderr) == listed

    gathered = run_cli("gather", str(run))
    assert gathered.returncode == 0, gathered.stderr
    assert "4 trials (4 done" in gathered.stdout
    assert plans_in(gathered.stderr).keys() == listed.keys()
    with h5py.File(run / "summary.h5", "r") as h5:
        plans = json.loads(h5.attrs["engine_plans"])
        trial_ids = list(h5["trials/trial_id"].asstr()[()])
        labels = dict(zip(trial_ids, h5["trials/engine_label"].asstr()[()]))
        modes = dict(zip(trial_ids, h5["trials/engine_mode"].asstr()[()]))
        precisions = dict(zip(trial_ids, h5["trials/engine_precision"].asstr()[()]))
        pack_sizes = dict(zip(trial_ids, h5["trials/engine_pack_size"][()].tolist()))
        full = dict(zip(trial_ids, h5["trials/engine_json"].asstr()[()]))
    assert [(p["name"], p["n_trials"]) for p in plans] == [
        ("fast/bf16/nhwc+fused+compile+bf16in", 2), ("plain/fp32/plain", 1), ("unrecorded", 1)]
    assert sorted(plans[0]["examples"]) == sorted(ids[:2])
    assert [modes[t] for t in ids] == ["fast", "fast", "plain", "unrecorded"]
    assert [precisions[t] for t in ids] == ["bf16", "bf16", "fp32", "unrecorded"]
    assert labels[ids[0]] == "nhwc+fused+compile+bf16in" and labels[ids[3]] == "unrecorded"
    assert [pack_sizes[t] for t in ids] == [1, 1, 1, -1]
    assert json.loads(full[ids[0]]) == FAST and json.loads(full[ids[3]]) is None


def test_one_plan_gives_no_warning_whatever_the_pack_sizes(sweep_run):
    run, ids = sweep_run
    for tid, size in zip(ids, (2, 2, 4, 4)):
        set_engine(run, tid, {**FAST, "mode": "packed", "pack_size": size})
    status = run_cli("status", str(run))
    gathered = run_cli("gather", str(run))
    assert status.returncode == 0 and gathered.returncode == 0, gathered.stderr
    for text in (status.stdout, status.stderr, gathered.stdout, gathered.stderr):
        assert "execution plans" not in text and "warning:" not in text
    with h5py.File(run / "summary.h5", "r") as h5:
        plans = json.loads(h5.attrs["engine_plans"])
    assert [(p["name"], p["n_trials"], p["pack_sizes"]) for p in plans] == [
        ("packed/bf16/nhwc+fused+compile+bf16in", 4, [2, 4])]


def test_records_without_plans_are_one_unrecorded_plan(sweep_run):
    run, ids = sweep_run
    for tid in ids:
        set_engine(run, tid, None)
    status = run_cli("status", str(run), "--json")
    assert "warning:" not in status.stderr
    assert [(p["name"], p["n_trials"]) for p in json.loads(status.stdout)["execution_plans"]] \
        == [("unrecorded", 4)]
    gathered = run_cli("gather", str(run))
    assert "warning:" not in gathered.stderr
    with h5py.File(run / "summary.h5", "r") as h5:
        assert set(h5["trials/engine_mode"].asstr()[()]) == {"unrecorded"}
        assert [p["name"] for p in json.loads(h5.attrs["engine_plans"])] == ["unrecorded"]
