"""Results that cannot be silently mixed (issue 17, items 1 to 4 and 12), command by command.

Each test replays the issue's command on a tiny real sweep: a data file changed between two
`genodl run` calls, a sweep shrunk with --update-sweep, a truncated arrays.npz, two
`genodl trial` runs of one trial at once, and the permissions of what a run writes.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from genodl_core import records
from genodl_core.data.fingerprint import file_fingerprint
from genodl_core.results import load
from tests.workflow.conftest import (TINY_TRIAL, count_events, run_cli, tiny_sweep, write_nt3_csv,
                                     write_spec)
from workflows.driver import RunSettings, run_sweep
from workflows.rundir import trial_attempt_lock
from workflows.sweep import sweep_from_dict

pytestmark = pytest.mark.timeout(300)


def _csv_sweep(tmp_path: Path) -> tuple[Path, Path]:
    """A two-seed NT3 sweep reading CSV files; returns (sweep file, train file)."""
    train = write_nt3_csv(tmp_path / "train.csv", 80, 200, seed=1)
    test = write_nt3_csv(tmp_path / "test.csv", 40, 200, seed=2)
    trial = copy.deepcopy(TINY_TRIAL)
    trial["data"] = {"source": "nt3_csv", "train_path": str(train), "test_path": str(test)}
    return write_spec(tmp_path / "csv.json", tiny_sweep({"seed": [0, 1]}, trial=trial)), train


def _flip_labels(path: Path) -> None:
    table = np.loadtxt(path, delimiter=",")
    table[:, 0] = 1 - table[:, 0]
    np.savetxt(path, table, delimiter=",", fmt=["%d"] + ["%.5g"] * (table.shape[1] - 1))


def test_a_changed_data_file_stops_resume_until_its_trials_are_rerun(tmp_path):
    """Item 1: kill after some trials, flip the training labels, run again."""
    spec, train = _csv_sweep(tmp_path)
    out = tmp_path / "run"
    first = run_cli("run", str(spec), "--out", str(out))
    assert first.returncode == 0, first.stderr
    ids = json.loads((out / "sweep.json").read_text())["trials"]
    ids = [t["trial_id"] for t in ids]
    old = file_fingerprint(train)
    assert {load.trials(out).data_fingerprint.nunique()} == {1}
    recorded = records.read_json(out / "trials" / ids[0] / records.RESULT_FILE)
    assert recorded["data_fingerprints"][str(train.resolve())]["sha256"] == old["sha256"]
    assert "data_fingerprints" in records.read_json(out / "trials" / ids[0] /
                                                    records.PROVENANCE_FILE)

    import shutil

    shutil.rmtree(out / "trials" / ids[1])  # killed before this trial finished
    _flip_labels(train)
    new = file_fingerprint(train)
    for command in (["run", str(spec), "--out", str(out)], ["rerun", str(out)]):
        refused = run_cli(*command)
        assert refused.returncode == 2, refused.stderr
        assert str(train.resolve()) in refused.stderr
        assert old["sha256"][:12] in refused.stderr and new["sha256"][:12] in refused.stderr
        assert "--rerun-changed-data" in refused.stderr
    assert count_events(out, "start") == {tid: 1 for tid in ids}, "nothing ran on the new data"

    rerun = run_cli("run", str(spec), "--out", str(out), "--rerun-changed-data")
    assert rerun.returncode == 0, rerun.stderr
    assert count_events(out, "start") == {tid: 2 for tid in ids}
    table = load.trials(out)
    assert set(table.state) == {"done"} and table.data_fingerprint.nunique() == 1
    fps = json.loads(table.data_fingerprints_json.iloc[0])
    assert fps[str(train.resolve())]["sha256"] == new["sha256"]


def test_update_sweep_gathers_only_the_trials_of_the_current_sweep(tmp_path):
    """Item 2: change n_train with --update-sweep; the old trials leave the summary."""
    out = tmp_path / "run"
    assert run_sweep(sweep_from_dict(tiny_sweep()), out, RunSettings(gather=False)).ok
    trial = copy.deepcopy(TINY_TRIAL)
    trial["data"]["n_train"] = 60
    smaller = tiny_sweep(trial=trial)
    report = run_sweep(sweep_from_dict(smaller), out, RunSettings(update_sweep=True))
    assert report.ok and report.total == 4
    attrs = load.attributes(out)
    assert attrs["n_trials"] == 4 and attrs["n_outside_sweep"] == 4
    assert set(load.trials(out)["spec.data.n_train"]) == {60}
    assert load.groups(out)["n_done"].tolist() == [2, 2]
    status = run_cli("status", str(out))
    assert status.returncode == 0, status.stderr
    assert "4 trials" in status.stdout
    assert "4 record(s) not part of the current sweep" in status.stdout


def test_a_corrupt_record_is_shown_rerun_and_never_stops_a_gather(tmp_path):
    """Item 3: a truncated arrays.npz read as done, rerun skipped it, gather failed forever."""
    out = tmp_path / "run"
    sweep = sweep_from_dict(tiny_sweep({"noise[0].fraction": [0.3]}, trials_per_level=2))
    assert run_sweep(sweep, out).ok
    victim = sweep.trial_ids[0]
    npz = out / "trials" / victim / records.ARRAYS_FILE
    npz.write_bytes(npz.read_bytes()[:100])

    status = run_cli("status", str(out))
    assert status.returncode == 1
    assert "corrupt 1" in status.stdout and victim in status.stdout
    assert "arrays.npz" in status.stdout
    gathered = run_cli("gather", str(out))
    assert gathered.returncode == 0, gathered.stderr
    lines = [line for line in gathered.stderr.splitlines() if victim in line]
    assert len(lines) == 1 and "arrays.npz" in lines[0], gathered.stderr
    assert "Traceback" not in gathered.stderr
    assert load.trials(out).loc[victim, "state"] == "corrupt"

    rerun = run_cli("rerun", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert count_events(out, "start")[victim] == 2
    assert records.record_state(out / "trials" / victim).state == "done"
    assert load.attributes(out)["n_done"] == 2


def test_a_second_trial_command_on_the_same_trial_refuses_naming_the_holder(tmp_path):
    """Item 4: two `genodl trial` runs on one out dir at once both trained the trial."""
    from genodl_core.training.trial import resolve_spec

    spec_path = tmp_path / "trial.json"
    spec_path.write_text(json.dumps(TINY_TRIAL))
    trial_id = resolve_spec(spec_path).trial_id
    out = tmp_path / "trials"
    with trial_attempt_lock(out, trial_id):  # what a running `genodl trial` or worker holds
        busy = run_cli("trial", str(spec_path), "--out", str(out))
    assert busy.returncode == 3, busy.stderr
    assert f"pid {os.getpid()}" in busy.stderr and trial_id in busy.stderr
    assert not (out / trial_id).exists(), "the refused run wrote nothing"
    free = run_cli("trial", str(spec_path), "--out", str(out))
    assert free.returncode == 0, free.stderr
    assert records.record_state(out / trial_id).state == "done"


@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o077, 0o600)])
def test_a_run_writes_its_files_as_the_umask_allows(tmp_path, umask, mode):
    """Item 12: every record file, sweep.json and summary.h5 were 0600 whatever the umask."""
    out = tmp_path / "run"
    old = os.umask(umask)
    try:
        assert run_sweep(sweep_from_dict(tiny_sweep({"noise[0].fraction": [0.3]},
                                                    trials_per_level=1)), out).ok
    finally:
        os.umask(old)
    (trial,) = [p for p in (out / "trials").iterdir() if not p.name.startswith(".")]
    for path in (out / "sweep.json", out / "summary.h5", trial / records.SPEC_FILE,
                 trial / records.STATUS_FILE, trial / records.RESULT_FILE,
                 trial / records.ARRAYS_FILE, trial / records.PROVENANCE_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
