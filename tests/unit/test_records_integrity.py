"""One definition of a record's state, checksums, data fingerprints and file permissions.

Issue 17, items 1 (data fingerprints), 2 (only the current sweep is gathered), 3 (one
definition of done; corrupt records never stop a gather), 4 (the per-trial lock names its
holder) and 12 (atomically written files honour the umask).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from genodl_core import records
from genodl_core.data import fingerprint
from genodl_core.errors import DataError
from genodl_core.results import load
from genodl_core.results.summary import gather
from workflows.driver import sweep_status
from workflows.rundir import RunDir, TrialBusy, trial_attempt_lock

SPEC = {"seed": 0, "model": {"name": "nt3"}, "data": {"source": "synthetic_nt3"}, "noise": []}


def _done(trials: Path, trial_id: str, *, final=None, arrays=None, fingerprints=None) -> Path:
    """A done record as the runner writes it (checksums in the status)."""
    trial_dir = trials / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(trial_dir / records.SPEC_FILE, {"trial_id": trial_id, **SPEC})
    result = {"trial_id": trial_id, "final": final or {"val_accuracy": 0.5},
              "curves": {"loss": [1.0, 0.5]}, "noise": []}
    if fingerprints is not None:
        result[fingerprint.FINGERPRINTS_KEY] = fingerprints
    sums = records.write_result(trial_dir, result, arrays)
    records.write_status(trial_dir, records.DONE, trial_id=trial_id, checksums=sums)
    return trial_dir


def _run_dir(tmp_path: Path, ids: list[str]) -> Path:
    run = tmp_path / "run"
    (run / "trials").mkdir(parents=True)
    records.atomic_write_json(run / "sweep.json", {"name": "s", "trials": [
        {"index": i, "trial_id": tid, "point": {}, "spec": SPEC} for i, tid in enumerate(ids)]})
    return run


# Item 3: checksums and one definition of done ------------------------------------------------

def test_done_status_records_checksums_and_a_truncated_npz_is_corrupt(tmp_path):
    trial = _done(tmp_path, "t1", arrays={"mask": np.arange(1000)})
    status = records.read_status(trial)
    assert set(status["checksums"]) == {records.RESULT_FILE, records.ARRAYS_FILE}
    assert records.record_state(trial).state == "done" and records.is_complete(trial)
    data = (trial / records.ARRAYS_FILE).read_bytes()
    (trial / records.ARRAYS_FILE).write_bytes(data[: len(data) // 2])
    verdict = records.record_state(trial)
    assert verdict.state == "corrupt" and records.ARRAYS_FILE in verdict.reason
    assert not records.is_complete(trial)


def test_same_size_alteration_is_caught_by_the_hash(tmp_path):
    trial = _done(tmp_path, "t1")
    path = trial / records.RESULT_FILE
    text = path.read_text()
    path.write_text(text.replace('"val_accuracy": 0.5', '"val_accuracy": 0.9'))
    verdict = records.record_state(trial)
    assert verdict.state == "corrupt" and "checksum" in verdict.reason


def test_record_without_checksums_still_has_its_npz_opened(tmp_path):
    """Records written before checksums: a truncated npz is found by opening the archive."""
    trial = _done(tmp_path, "t1", arrays={"mask": np.arange(1000)})
    status = records.read_status(trial)
    del status["checksums"]
    records.atomic_write_json(trial / records.STATUS_FILE, status)
    assert records.record_state(trial).state == "done"
    data = (trial / records.ARRAYS_FILE).read_bytes()
    (trial / records.ARRAYS_FILE).write_bytes(data[:-40])
    assert records.record_state(trial).state == "corrupt"


def _garbage_spec(trial: Path) -> None:
    (trial / records.SPEC_FILE).write_text("{not json")


def _deleted_arrays(trial: Path) -> None:
    (trial / records.ARRAYS_FILE).unlink()


def _unknown_state(trial: Path) -> None:
    status = records.read_status(trial)
    records.atomic_write_json(trial / records.STATUS_FILE, {**status, "state": "weird"})


def _non_numeric_metric(trial: Path) -> None:
    """A metric that is text, with the checksums made to match (only the content is wrong)."""
    result = json.loads((trial / records.RESULT_FILE).read_text())
    result["final"]["val_accuracy"] = "high"
    data = (json.dumps(result) + "\n").encode()
    (trial / records.RESULT_FILE).write_bytes(data)
    status = records.read_status(trial)
    status["checksums"][records.RESULT_FILE] = records.checksum_of(data)
    records.atomic_write_json(trial / records.STATUS_FILE, status)


@pytest.mark.parametrize("damage, fragment", [
    (_garbage_spec, "spec.json"),
    (_deleted_arrays, "arrays.npz"),
    (_unknown_state, "unknown state 'weird'"),
    (_non_numeric_metric, "'val_accuracy'='high' is not a number"),
])
def test_status_and_gather_agree_on_a_damaged_record(tmp_path, caplog, damage, fragment):
    run = _run_dir(tmp_path, ["good", "bad"])
    _done(run / "trials", "good")
    _done(run / "trials", "bad", arrays={"mask": np.arange(10)})
    damage(run / "trials" / "bad")

    status = sweep_status(run)
    assert status.states["bad"].state == "corrupt" and fragment in status.states["bad"].reason
    assert status.states["good"].state == "done"
    caplog.set_level("WARNING")
    table = load.trials(gather(run))
    assert table.state.to_dict() == {"good": "done", "bad": "corrupt"}
    assert fragment in table.loc["bad", "error"]
    lines = [r.getMessage() for r in caplog.records if "bad" in r.getMessage()]
    assert len(lines) == 1 and fragment in lines[0], lines


def test_truncated_per_gene_arrays_never_stop_a_gather(tmp_path, caplog):
    """Before: every gather failed with BadZipFile, so summary.h5 never updated again."""
    run = _run_dir(tmp_path, ["a", "b"])
    genes = {"val_mae_per_gene": np.arange(5.0), "target_ids": np.array(list("vwxyz"))}
    _done(run / "trials", "a", arrays=genes)
    bad = _done(run / "trials", "b", arrays=genes)
    data = (bad / records.ARRAYS_FILE).read_bytes()
    (bad / records.ARRAYS_FILE).write_bytes(data[: len(data) // 2])
    caplog.set_level("WARNING")
    for _ in range(2):  # from scratch, then incrementally
        path = gather(run)
        assert load.trials(path).state.to_dict() == {"a": "done", "b": "corrupt"}
        assert load.gene_errors(path).loc["a"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert any("trial b: corrupt record, left out" in r.getMessage() for r in caplog.records)


# Item 2: only the current sweep -------------------------------------------------------------

def test_gather_and_status_leave_out_records_the_sweep_does_not_list(tmp_path):
    run = _run_dir(tmp_path, ["kept"])
    _done(run / "trials", "kept", final={"val_accuracy": 0.9})
    _done(run / "trials", "dropped", final={"val_accuracy": 0.1})
    path = gather(run)
    assert list(load.trials(path).index) == ["kept"]
    assert load.attributes(path)["n_outside_sweep"] == 1
    assert load.outside_sweep(path) == ["dropped"]
    assert load.groups(path)["val_accuracy.mean"].tolist() == [0.9]
    assert RunDir(run).records_outside_sweep() == ["dropped"]
    assert list(sweep_status(run).states) == ["kept"]


# Item 1: data fingerprints -----------------------------------------------------------------

def test_file_fingerprint_is_hashed_once_and_kept_in_a_sidecar(tmp_path, monkeypatch):
    data = tmp_path / "train.csv"
    data.write_text("0,1.0,2.0\n1,3.0,4.0\n")
    first = fingerprint.file_fingerprint(data)
    assert first["size"] == data.stat().st_size and len(first["sha256"]) == 64
    assert list((tmp_path / ".genodl-cache").glob("train.csv.*.sha256.json"))
    fingerprint._memo.clear()
    monkeypatch.setattr(fingerprint, "_hash_file", lambda path: pytest.fail("hashed again"))
    assert fingerprint.file_fingerprint(data) == first


def test_a_sidecar_that_cannot_be_written_never_fails(tmp_path, monkeypatch):
    """Read-only places (here: folders under a plain file, which even root cannot create)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    data = tmp_path / "x.csv"
    data.write_text("0,1\n")
    fp = fingerprint.file_fingerprint(data, cache_dir=blocker / "sub")
    assert fp["sha256"] == fingerprint._hash_file(str(data))


def test_content_counts_not_the_modification_time(tmp_path):
    data = tmp_path / "x.csv"
    data.write_text("0,1\n")
    recorded = fingerprint.file_fingerprint(data)
    os.utime(data, ns=(1, 1))
    assert fingerprint.find_changes([("t", {str(data.resolve()): recorded})]) == []
    data.write_text("1,1\n")
    (change,) = fingerprint.find_changes([("t", {str(data.resolve()): recorded})])
    assert change.trial_ids == ["t"] and recorded["sha256"][:12] in change.describe()


def test_gather_refuses_trials_of_two_data_versions_unless_allowed(tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("0,1\n")
    old = {str(data): fingerprint.file_fingerprint(data)}
    data.write_text("1,1\n")
    new = {str(data): fingerprint.file_fingerprint(data)}
    run = _run_dir(tmp_path, ["a", "b"])
    _done(run / "trials", "a", fingerprints=old)
    _done(run / "trials", "b", fingerprints=new)
    with pytest.raises(DataError) as info:
        gather(run)
    message = str(info.value)
    assert str(data) in message and old[str(data)]["sha256"][:12] in message
    assert new[str(data)]["sha256"][:12] in message and "--allow-mixed-data" in message
    assert not (run / "summary.h5").exists()
    path = gather(run, allow_mixed_data=True)
    table = load.trials(path)
    assert table.data_fingerprint.nunique() == 2 and "" not in set(table.data_fingerprint)
    assert json.loads(table.loc["a", "data_fingerprints_json"]) == old
    assert len(load.attributes(path)["data_versions"]) == 2


def test_synthetic_data_has_no_fingerprints(tmp_path):
    from genodl_core.data.synthetic_nt3 import SyntheticNT3Params

    assert fingerprint.data_fingerprints(SyntheticNT3Params()) == {}
    run = _run_dir(tmp_path, ["a"])
    _done(run / "trials", "a")
    assert load.trials(gather(run)).loc["a", "data_fingerprint"] == ""


# Item 4: the per-trial lock names its holder ---------------------------------------------------

def test_trial_lock_that_does_not_wait_names_the_holder(tmp_path):
    with trial_attempt_lock(tmp_path, "t1"):
        with pytest.raises(TrialBusy, match=f"pid {os.getpid()}"):
            with trial_attempt_lock(tmp_path, "t1", wait=False):
                pass
    with trial_attempt_lock(tmp_path, "t1", wait=False):
        pass


# Item 12: permissions follow the umask -------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_and_summary_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run = _run_dir(tmp_path, ["a"])
        trial = _done(run / "trials", "a", arrays={"m": np.arange(3)})
        summary = gather(run)
    finally:
        os.umask(old)
    for path in (run / "sweep.json", trial / records.SPEC_FILE, trial / records.STATUS_FILE,
                 trial / records.RESULT_FILE, trial / records.ARRAYS_FILE, summary):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
