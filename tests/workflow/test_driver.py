"""The driver on the local thread executor: run, resume, extend, lock, status, progress, CLI."""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import Future

import pytest

from genodl_core import records
from genodl_core.errors import SpecError
from tests.workflow.conftest import count_events, events, run_cli, tiny_sweep
from workflows.driver import (RunSettings, format_status, make_units, plan_rerun, run_sweep,
                              settle_unit, sweep_status, trial_slots)
from workflows.progress import Progress, format_duration
from workflows.rundir import RunDir
from workflows.sweep import load_sweep, sweep_from_dict

pytestmark = pytest.mark.timeout(180)


def test_run_then_resume_skips_complete_trials(tmp_path):
    sweep = sweep_from_dict(tiny_sweep())
    out = tmp_path / "run"
    report = run_sweep(sweep, out)
    assert report.ok and report.submitted == 4 and report.already_done == 0
    assert report.summary == out / "summary.h5" and report.summary.is_file()
    stored = json.loads((out / "sweep.json").read_text())
    assert [t["trial_id"] for t in stored["trials"]] == sweep.trial_ids
    for tid in sweep.trial_ids:
        assert records.is_complete(out / "trials" / tid, tid)
    assert count_events(out, "start") == {tid: 1 for tid in sweep.trial_ids}
    assert count_events(out, "end", "done") == {tid: 1 for tid in sweep.trial_ids}
    log_text = (out / "logs" / "workflow.log").read_text()
    assert "[4/4] | done 4 | failed 0" in log_text
    assert "retried" not in log_text, "attempts that ended with a final state are not retries"
    assert (out / "runinfo").is_dir() and any((out / "runinfo").iterdir())

    # Same sweep again: nothing is submitted, nothing starts.
    again = run_sweep(sweep, out)
    assert again.ok and again.submitted == 0 and again.already_done == 4
    assert count_events(out, "start") == {tid: 1 for tid in sweep.trial_ids}

    # A lost record is the only trial that runs again.
    lost = sweep.trial_ids[2]
    shutil.rmtree(out / "trials" / lost)
    third = run_sweep(sweep, out)
    assert third.ok and third.submitted == 1
    starts = count_events(out, "start")
    assert starts.pop(lost) == 2 and set(starts.values()) == {1}


def test_other_sweep_in_same_directory_is_refused_unless_updated(tmp_path):
    out = tmp_path / "run"
    first = sweep_from_dict(tiny_sweep(trials_per_level=1))
    assert run_sweep(first, out, RunSettings(gather=False)).ok
    extended = sweep_from_dict(tiny_sweep(trials_per_level=2))
    with pytest.raises(SpecError, match="2 trials would be added, 0 dropped"):
        run_sweep(extended, out)
    report = run_sweep(extended, out, RunSettings(update_sweep=True, gather=False))
    assert report.ok and report.submitted == 2 and report.already_done == 2
    assert set(count_events(out, "start")) == set(extended.trial_ids)
    assert list((out / "logs").glob("sweep.*.json")), "the replaced sweep is kept"


def test_second_driver_on_a_directory_is_refused(tmp_path):
    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1))
    run = RunDir.prepare(tmp_path / "run", sweep)
    with run.driver_lock():
        with pytest.raises(SpecError, match="a driver \\(pid"):
            run_sweep(sweep, run.path)
        assert sweep_status(run.path).driver["pid"] > 0
    assert sweep_status(run.path).driver is None
    assert run_sweep(sweep, run.path, RunSettings(gather=False)).ok


def test_refused_second_driver_leaves_the_stored_sweep_alone(tmp_path):
    out = tmp_path / "run"
    first = sweep_from_dict(tiny_sweep(trials_per_level=1))
    run = RunDir.prepare(out, first)
    before = (out / "sweep.json").read_bytes()
    extended = sweep_from_dict(tiny_sweep(trials_per_level=2))
    with run.driver_lock():
        with pytest.raises(SpecError, match="a driver \\(pid"):
            run_sweep(extended, out, RunSettings(update_sweep=True, gather=False))
        with pytest.raises(SpecError, match="a driver \\(pid"):
            RunDir.prepare(out, extended, update=True)
    assert (out / "sweep.json").read_bytes() == before, "the running driver's sweep is intact"
    assert not list((out / "logs").glob("sweep.*.json")), "nothing was replaced"


def test_reordered_axes_are_the_same_sweep_and_keep_the_stored_file(tmp_path):
    out = tmp_path / "run"
    a = sweep_from_dict(tiny_sweep({"model.variant": ["base", "abstaining"],
                                    "noise[0].fraction": [0.0, 0.2]}, trials_per_level=1))
    b = sweep_from_dict(tiny_sweep({"noise[0].fraction": [0.0, 0.2],
                                    "model.variant": ["base", "abstaining"]}, trials_per_level=1))
    assert a.trial_ids != b.trial_ids and set(a.trial_ids) == set(b.trial_ids)
    assert run_sweep(a, out, RunSettings(gather=False)).ok
    before = (out / "sweep.json").read_bytes()
    again = run_sweep(b, out, RunSettings(gather=False))
    assert again.ok and again.submitted == 0 and again.already_done == 4
    assert (out / "sweep.json").read_bytes() == before
    assert not list((out / "logs").glob("sweep.*.json"))
    assert RunDir(out).compare(b) == ("same", 0, 0)


def test_unknown_site_option_fails_before_anything_runs(tmp_path):
    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1))
    with pytest.raises(SpecError, match="max_thread"):
        run_sweep(sweep, tmp_path / "run", RunSettings(options={"max_thread": "2"}))
    assert not events(tmp_path / "run")
    assert not any((tmp_path / "run" / "trials").glob("[0-9a-f]*"))


def test_parsl_failure_is_written_into_the_record_and_selected_for_rerun(tmp_path):
    from parsl.executors.high_throughput.errors import WorkerLost

    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1))
    run = RunDir.prepare(tmp_path / "run", sweep)
    tid = sweep.trial_ids[0]
    records.write_status(run.trial_dir(tid), records.RUNNING, trial_id=tid, attempt=3)
    future: Future = Future()
    future.set_exception(WorkerLost(7, "node12"))
    assert settle_unit(run, [tid], future) == [(tid, "failed", None)]
    status = records.read_status(run.trial_dir(tid))
    assert status["state"] == "failed" and status["error_type"] == "WorkerLost"
    assert status["deterministic"] is False and status["attempt"] == 3
    report = sweep_status(run.path)
    assert report.counts()["failed"] == 1 and report.counts()["missing"] == 1
    assert f"{tid} failed" in format_status(report) and "WorkerLost" in format_status(report)
    _, ids = plan_rerun(run.path)
    assert set(ids) == set(sweep.trial_ids)
    _, ids = plan_rerun(run.path, states=["failed"])
    assert ids == [tid]
    with pytest.raises(SpecError, match="unknown trial state"):
        plan_rerun(run.path, states=["broken"])


def test_stale_running_record_reads_as_interrupted(tmp_path):
    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1))
    run = RunDir.prepare(tmp_path / "run", sweep)
    tid = sweep.trial_ids[0]
    records.write_status(run.trial_dir(tid), records.RUNNING, trial_id=tid, attempt=1)
    assert run.trial_state(tid).state == "interrupted"
    from workflows.rundir import trial_attempt_lock

    with trial_attempt_lock(run.trials_dir, tid):
        assert run.trial_state(tid).state == "running"


def test_progress_lines_counts_and_eta():
    now = [0.0]
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger("test.progress")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    progress = Progress(10, already_done=2, interval_s=30, slots=2, logger=logger,
                        clock=lambda: now[0])
    assert progress.tick() and "done 2 | failed 0 | running 0 | pending 8" in lines[-1]
    assert not progress.tick(), "no change, no interval: no line"
    progress.started("a")
    progress.started("b")
    now[0] = 10.0
    progress.finished("a", "done", 10.0)
    progress.finished("b", "failed", 20.0)
    assert progress.tick() and "[4/10] | done 3 | failed 1 | running 0 | pending 6" in lines[-1]
    # Mean 15 s per trial, 2 slots, 6 pending: 45 s.
    assert progress.eta_s() == pytest.approx(45.0)
    assert "ETA 45s" in lines[-1]
    now[0] = 45.0
    assert progress.tick(), "the interval forces a line"
    progress.started("c")
    progress.requeued("c")
    assert progress.tick() and "pending 6 | retried 1 |" in lines[-1]
    assert format_duration(3725) == "1h02m" and format_duration(75) == "1m15s"


def test_cli_run_status_and_rerun_exit_codes(sweep_file, tmp_path):
    spec = sweep_file({"noise[0].fraction": [0.0, 0.3]}, trials_per_level=1)
    out = tmp_path / "cli-run"
    done = run_cli("run", str(spec), "--out", str(out), "--progress-interval", "1")
    assert done.returncode == 0, done.stderr
    assert "done 2 | failed 0" in done.stderr and "sweep finished" in done.stderr
    assert "epoch" not in done.stderr, "per-epoch trial lines stay in the trial logs"
    status = run_cli("status", str(out))
    assert status.returncode == 0 and "2 trials | done 2 | failed 0" in status.stdout
    as_json = json.loads(run_cli("status", str(out), "--json").stdout)
    assert {t["state"] for t in as_json["trials"]} == {"done"}
    assert all(t["point"] for t in as_json["trials"])
    again = run_cli("rerun", str(out))
    assert again.returncode == 0 and "0 to run" in again.stderr
    bad = run_cli("run", str(spec), "--out", str(out), "--site", "nowhere")
    assert bad.returncode == 2 and "unknown site" in bad.stderr and "local_threads" in bad.stderr
    assert load_sweep(spec).trial_ids == RunDir.open(out).load_sweep().trial_ids


def test_batched_packs_give_each_trial_its_own_record_and_the_same_results(tmp_path):
    table = tiny_sweep({"noise[0].fraction": [0.0, 0.3], "model.variant": ["base", "abstaining"]},
                       trials_per_level=1)
    sweep = sweep_from_dict(table)
    packed = run_sweep(sweep, tmp_path / "packed", RunSettings(pack_size=2, gather=False))
    single = run_sweep(sweep, tmp_path / "single", RunSettings(gather=False))
    assert packed.ok and single.ok
    log_text = (tmp_path / "packed" / "logs" / "workflow.log").read_text()
    assert "4 trials in 2 batched packs" in log_text  # base and abstaining cannot share a pack
    for tid in sweep.trial_ids:
        a = records.load_record(tmp_path / "packed" / "trials" / tid).result["final"]
        b = records.load_record(tmp_path / "single" / "trials" / tid).result["final"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.02)
    # Resume with packs: complete members are skipped, a lost one runs again alone.
    lost = sweep.trial_ids[0]
    shutil.rmtree(tmp_path / "packed" / "trials" / lost)
    again = run_sweep(sweep, tmp_path / "packed", RunSettings(pack_size=2, gather=False))
    assert again.ok and again.submitted == 1
    assert count_events(tmp_path / "packed", "start")[lost] == 2


def test_retried_pack_skips_members_that_failed_deterministically_in_this_submission(tmp_path):
    from workflows.apps import execute_pack

    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1))
    run = RunDir.prepare(tmp_path / "run", sweep)
    a, b = sweep.trials
    submitted_at = time.time()
    records.write_status(run.trial_dir(a.trial_id), records.FAILED, trial_id=a.trial_id,
                         attempt=1, error_type="DataError", error="bad row 3",
                         deterministic=True)
    results = execute_pack([a.spec, b.spec], [a.trial_id, b.trial_id], run.path,
                           submitted_at=submitted_at)
    assert [(r["state"], r["skipped"]) for r in results] == [("failed", True), ("done", False)]
    assert count_events(run.path, "start") == {b.trial_id: 1}
    # A failure from before this submission (an earlier run) is run again; b is complete.
    results = execute_pack([a.spec, b.spec], [a.trial_id, b.trial_id], run.path,
                           submitted_at=time.time() + 60)
    assert [(r["state"], r["skipped"]) for r in results] == [("done", False), ("done", True)]
    assert count_events(run.path, "start") == {a.trial_id: 1, b.trial_id: 1}


def test_partial_rerun_progress_reaches_zero(tmp_path):
    sweep = sweep_from_dict(tiny_sweep())
    out = tmp_path / "run"
    one = sweep.trial_ids[1]
    report = run_sweep(sweep, out, RunSettings(gather=False), only=[one])
    assert report.submitted == 1 and report.count("done") == 1 and report.count("missing") == 3
    log_text = (out / "logs" / "workflow.log").read_text()
    assert "[1/1] | done 1 | failed 0 | running 0 | pending 0" in log_text
    assert "ETA 0s" in log_text


def test_eta_slots_follow_the_real_units():
    # Base and abstaining NT3 trials cannot share a batched pack: with --pack-size 4 every
    # unit holds one trial, so 2 workers run 2 trials at once, not 8.
    singles = sweep_from_dict(tiny_sweep({"model.variant": ["base", "abstaining"]},
                                         trials_per_level=1))
    units = make_units(singles.trials, 4)
    assert [len(u) for u in units] == [1, 1]
    assert trial_slots(2, units) == 2
    packed = sweep_from_dict(tiny_sweep({"noise[0].fraction": [0.0, 0.1, 0.2, 0.3]},
                                        trials_per_level=2))
    units = make_units(packed.trials, 4)
    assert sorted(len(u) for u in units) == [4, 4]
    assert trial_slots(2, units) == 8
    assert trial_slots(3, []) == 3
