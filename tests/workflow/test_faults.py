"""Fault tolerance with real faults: bad data, a killed worker, a killed driver, retry policy."""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from concurrent.futures import Future

import pytest

from genodl_core import records
from genodl_core.errors import DataError, InfrastructureError, SpecError
from tests.workflow.conftest import (TINY_TRIAL, count_events, events, run_cli, start_cli,
                                     tiny_sweep, wait_for, write_nt3_csv, write_spec)
from workflows.apps import RetryableTrialFailure
from workflows.cli import main as genodl
from workflows.driver import run_sweep, sweep_status
from workflows.retry import NO_RETRY_COST, classify, retry_handler
from workflows.sweep import load_sweep, sweep_from_dict


def _csv_trial(train_path: str, test_path: str) -> dict:
    trial = json.loads(json.dumps(TINY_TRIAL))
    trial["data"] = {"source": "nt3_csv", "train_path": train_path, "test_path": test_path}
    return trial


@pytest.mark.timeout(180)
def test_bad_data_fails_its_trials_only_and_rerun_after_the_fix_completes(tmp_path):
    good = write_nt3_csv(tmp_path / "train_good.csv", 60, 200, seed=1)
    test = write_nt3_csv(tmp_path / "test.csv", 30, 200, seed=2)
    bad = tmp_path / "train_bad.csv"
    lines = good.read_text().splitlines()
    cells = lines[2].split(",")
    cells[7] = "n/a"
    bad.write_text("\n".join(lines[:2] + [",".join(cells)] + lines[3:]) + "\n")

    table = tiny_sweep({"data.train_path": [str(good), str(bad)]},
                       trial=_csv_trial(str(good), str(test)), run={"retries": 2})
    sweep = sweep_from_dict(table)
    out = tmp_path / "run"
    report = run_sweep(sweep, out)
    assert not report.ok and report.count("done") == 2 and report.count("failed") == 2
    failed = [t.trial_id for t in sweep.trials if t.point["data.train_path"] == str(bad)]
    for tid in failed:
        state = report.states[tid]
        assert state.error_type == "DataError" and state.deterministic is True
        assert "row 3" in state.error and "column 7" in state.error and str(bad) in state.error
    # Deterministic: recorded once, never retried although retries = 2.
    assert all(count_events(out, "start")[tid] == 1 for tid in failed)
    status = run_cli("status", str(out))
    assert status.returncode == 1 and "failed 2" in status.stdout
    assert all(tid in status.stdout for tid in failed) and "DataError" in status.stdout

    # The scientist fixes the file; `genodl rerun` runs the two failed trials only.
    bad.write_text(good.read_text())
    assert genodl(["rerun", str(out)]) == 0
    final = sweep_status(out)
    assert final.counts()["done"] == 4
    starts = count_events(out, "start")
    assert {tid: starts[tid] for tid in failed} == {tid: 2 for tid in failed}
    assert all(n == 1 for tid, n in starts.items() if tid not in failed)


@pytest.mark.timeout(120)
def test_retry_policy_inside_parsl(tmp_path):
    """Real Parsl retries: infrastructure errors are retried, deterministic ones are not."""
    import parsl
    from parsl import python_app

    from site_configs import load_site

    @python_app
    def flaky(counter: str, exc_name: str, fail_times: int):
        import os

        from genodl_core.errors import SpecError
        from parsl.executors.high_throughput.errors import WorkerLost
        from workflows.apps import RetryableTrialFailure

        n = len(open(counter).read()) if os.path.exists(counter) else 0
        with open(counter, "a") as fh:
            fh.write("x")
        if n < fail_times:
            raise {"WorkerLost": WorkerLost(0, "nodeX"),
                   "Retryable": RetryableTrialFailure("t1", "OutOfMemoryError", "CUDA oom"),
                   "SpecError": SpecError("train.epochs", 0, ">= 1")}[exc_name]
        return n

    config = load_site("local_threads", tmp_path, retries=2, retry_handler=retry_handler,
                       options={"max_threads": "2"})
    with parsl.load(config):
        lost = flaky(str(tmp_path / "a"), "WorkerLost", 2)
        oom = flaky(str(tmp_path / "b"), "Retryable", 5)
        spec = flaky(str(tmp_path / "c"), "SpecError", 5)
        assert lost.result(timeout=60) == 2  # two losses retried, third attempt succeeds
        with pytest.raises(RetryableTrialFailure):
            oom.result(timeout=60)
        with pytest.raises(SpecError):
            spec.result(timeout=60)
    assert len((tmp_path / "b").read_text()) == 3  # 1 attempt + 2 retries
    assert len((tmp_path / "c").read_text()) == 1  # never retried


def test_failure_classes():
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    assert classify(WorkerLost(1, "h")) == "infrastructure"
    assert classify(ManagerLost(b"m", "h")) == "infrastructure"
    assert classify(RetryableTrialFailure("t", "OSError", "disk")) == "transient"
    assert classify(InfrastructureError("walltime")) == "transient"
    assert classify(OSError("nfs")) == "transient"
    assert classify(SpecError("seed", -1, ">= 0")) == "deterministic"
    assert classify(DataError("x.csv: row 2")) == "deterministic"
    assert classify(ValueError("bug")) == "deterministic"
    assert retry_handler(WorkerLost(1, "h"), {"id": 1, "try_id": 0}) == 1
    assert retry_handler(DataError("bad"), {"id": 1, "try_id": 0}) == NO_RETRY_COST
    err = pickle.loads(pickle.dumps(RetryableTrialFailure("t9", "OutOfMemoryError", "oom")))
    assert (err.trial_id, err.error_type, err.error) == ("t9", "OutOfMemoryError", "oom")


def test_executor_failures_are_infrastructure_and_configuration_errors_are_not():
    from parsl.executors.errors import (BadStateException, InvalidResourceSpecification,
                                        ScalingFailed, UnsupportedFeatureError)
    from parsl.jobs.errors import TooManyJobFailuresError

    class Executor:
        label = "slurm"

    # A failed pilot job: the tasks it held, then every later submit of the executor.
    assert classify(BadStateException(Executor(), "block 0 failed")) == "infrastructure"
    assert classify(TooManyJobFailuresError("Error 1: EXIT CODE: 1")) == "infrastructure"
    assert classify(ScalingFailed(Executor(), "sbatch timed out")) == "infrastructure"
    assert retry_handler(TooManyJobFailuresError("x"), {"id": 3, "try_id": 1}) == 1
    # Mistakes in the configuration fail every attempt the same way.
    assert classify(InvalidResourceSpecification({"gpus"}, "unknown key")) == "deterministic"
    assert classify(UnsupportedFeatureError("resource spec", "HTEX", None)) == "deterministic"


def test_trial_lost_to_a_bad_executor_is_recorded_as_retryable(tmp_path):
    from parsl.jobs.errors import TooManyJobFailuresError

    from workflows.driver import settle_unit
    from workflows.rundir import RunDir

    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1))
    run = RunDir.prepare(tmp_path / "run", sweep)
    tid = sweep.trial_ids[0]
    future = Future()
    future.set_exception(TooManyJobFailuresError("Error 1:\n\tEXIT CODE: 1"))
    assert settle_unit(run, [tid], future) == [(tid, "failed", None)]
    status = records.read_status(run.trial_dir(tid))
    assert status["error_type"] == "TooManyJobFailuresError"
    assert status["deterministic"] is False


def test_htex_workers_share_the_node_cores_for_torch_threads(monkeypatch):
    import torch

    from workflows.apps import _set_threads, worker_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.delenv("PARSL_WORKER_COUNT", raising=False)
    assert worker_threads(None) is None, "outside a worker pool torch keeps its default"
    assert worker_threads(5) == 5
    monkeypatch.setenv("PARSL_WORKER_COUNT", "4")
    assert worker_threads(None) == 3
    assert worker_threads(2) == 2, "an explicit count wins"
    monkeypatch.setenv("PARSL_WORKER_COUNT", "32")
    assert worker_threads(None) == 1
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("PARSL_WORKER_COUNT", "6")
        assert _set_threads(None) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_pilot_executors_survive_one_failed_block(tmp_path):
    from parsl.jobs.states import JobState, JobStatus

    from site_configs import load_site
    from site_configs.local_htex import PILOT_BLOCK_FAILURES, tolerant_block_errors

    class Executor:
        def __init__(self):
            self.bad = None

        def set_bad_state_and_fail_all(self, exception):
            self.bad = exception

    def statuses(*states):
        return {str(i): JobStatus(state) for i, state in enumerate(states)}

    executor = Executor()
    tolerant_block_errors(executor, statuses(JobState.FAILED))
    assert executor.bad is None, "one dead pilot job does not end the sweep"
    tolerant_block_errors(executor, statuses(JobState.FAILED, JobState.COMPLETED,
                                             JobState.FAILED, JobState.RUNNING))
    assert executor.bad is None
    tolerant_block_errors(executor, statuses(JobState.COMPLETED,
                                             *[JobState.FAILED] * PILOT_BLOCK_FAILURES))
    assert type(executor.bad).__name__ == "TooManyJobFailuresError"

    pilot = load_site("slurm", tmp_path, options={"account": "a", "address": "127.0.0.1"})
    assert pilot.executors[0].block_error_handler is tolerant_block_errors
    lsf = load_site("summit", tmp_path, options={"project": "p", "address": "127.0.0.1"})
    assert lsf.executors[0].block_error_handler is tolerant_block_errors
    inside = load_site("slurm", tmp_path, options={"mode": "inside", "address": "127.0.0.1"})
    assert inside.executors[0].block_error_handler is not tolerant_block_errors


@pytest.mark.timeout(240)
def test_worker_killed_mid_trial_is_retried_on_htex(tmp_path):
    """SIGKILL the HTEX worker running a trial: Parsl reports WorkerLost, the trial reruns.

    Workers are pinned to accelerators "0" and "1" (CPU trials; the pinning is what counts),
    so the test also checks that every record names the GPU slot that ran it.
    """
    trial = json.loads(json.dumps(TINY_TRIAL))
    trial["train"]["epochs"] = 40  # long enough to be killed mid-training
    spec = write_spec(tmp_path / "htex.json", tiny_sweep(
        trial=trial, run={"site": "local_htex", "retries": 2,
                          "options": {"gpus": "0,1"}, "progress_interval_s": 5}))
    out = tmp_path / "run"
    driver = start_cli("run", str(spec), "--out", str(out), log_path=tmp_path / "driver.log")
    try:
        first = wait_for(lambda: next((e for e in events(out) if e["event"] == "start"), None),
                         timeout=150, what="a trial to start on an HTEX worker")
        # Kill once the attempt has written its 'running' record: truly mid-trial.
        wait_for(lambda: (records.read_status(out / "trials" / first["trial_id"]) or {})
                 .get("state") == "running", timeout=60, what="the trial's running record")
        os.kill(first["pid"], signal.SIGKILL)
        assert driver.wait(timeout=200) == 0, (tmp_path / "driver.log").read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
    victim = first["trial_id"]
    ended = [e for e in events(out) if e["event"] == "end" and e["trial_id"] == victim]
    assert count_events(out, "start")[victim] == 2
    assert len(ended) == 1 and ended[0]["pid"] != first["pid"]
    status = records.read_status(out / "trials" / victim)
    assert status["state"] == "done" and status["attempt"] == 2
    assert "WorkerLost" in (tmp_path / "driver.log").read_text()
    for tid in load_sweep(spec).trial_ids:
        assert records.read_status(out / "trials" / tid)["gpu"] in ("0", "1")


@pytest.mark.timeout(240)
def test_driver_killed_mid_sweep_finishes_only_the_missing_trials(tmp_path):
    trial = json.loads(json.dumps(TINY_TRIAL))
    trial["train"]["epochs"] = 6
    spec = write_spec(tmp_path / "kill.json", tiny_sweep(
        {"noise[0].fraction": [0.0, 0.1, 0.2]}, trial=trial,
        run={"options": {"max_threads": 1}}))
    sweep = load_sweep(spec)
    out = tmp_path / "run"

    def complete() -> list[str]:
        return [tid for tid in sweep.trial_ids
                if records.is_complete(out / "trials" / tid, tid)]

    driver = start_cli("run", str(spec), "--out", str(out), log_path=tmp_path / "first.log")
    try:
        wait_for(lambda: len(complete()) >= 2, timeout=150, what="two complete trials")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    before = {tid: records.read_status(out / "trials" / tid) for tid in complete()}
    assert 2 <= len(before) < len(sweep.trials), "killed mid-sweep"
    states = sweep_status(out).counts()
    assert states["running"] == 0 and states["done"] == len(before)
    assert sweep_status(out).driver is None, "the dead driver holds no lock"

    restarted_at = time.time()
    second = run_cli("run", str(spec), "--out", str(out), timeout=200)
    assert second.returncode == 0, second.stderr
    assert f"{len(before)} complete, {len(sweep.trials) - len(before)} to run" in second.stderr
    assert sweep_status(out).counts()["done"] == len(sweep.trials)
    # Nothing complete before the kill was started again, and its record is untouched.
    late_starts = {e["trial_id"] for e in events(out)
                   if e["event"] == "start" and e["time"] >= restarted_at}
    assert late_starts == set(sweep.trial_ids) - set(before)
    for tid, status in before.items():
        assert records.read_status(out / "trials" / tid) == status
    # No trial ran to completion twice.
    assert all(n == 1 for n in count_events(out, "end", "done").values())
