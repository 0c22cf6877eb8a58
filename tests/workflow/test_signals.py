"""Stopping a run: SIGINT and SIGTERM end it cleanly and resumably; a killed driver leaves
no worker processes behind.

Trials here are the tiny NT3 trials of the other workflow tests, slowed down with many epochs
so that a signal always finds some of them running and some still queued.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from genodl_core import records
from tests.workflow.conftest import (TINY_TRIAL, events, run_cli, start_cli, tiny_sweep,
                                     wait_for, write_spec)
from workflows.driver import sweep_status
from workflows.sweep import load_sweep


def _slow_trial(epochs: int) -> dict:
    trial = json.loads(json.dumps(TINY_TRIAL))
    trial["train"]["epochs"] = epochs
    trial["train"]["timeout_s"] = 600
    return trial


def _trial_log(out: Path, trial_id: str) -> str:
    path = out / "trials" / trial_id / records.LOG_FILE
    return path.read_text() if path.exists() else ""


def _complete(out: Path, trial_ids: list[str]) -> list[str]:
    return [tid for tid in trial_ids if records.is_complete(out / "trials" / tid, tid)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_first_signal_stops_the_run_and_a_second_run_finishes_it(tmp_path, signum, code):
    """After the first trial completes, one signal: no more trials start, the running one
    checkpoints and stops at its next epoch end, the run exits 130/143 within the grace period,
    nothing is 'failed', and `genodl run` again completes the sweep from the checkpoint."""
    # One trial at a time: a short one, a long one the signal finds training, two short ones
    # that never start.
    spec = write_spec(tmp_path / "stop.json", tiny_sweep(
        {"noise[0].fraction": [0.0, 0.1, 0.2, 0.3], "train.epochs": [3, 100, 3, 3]},
        zip=[["noise[0].fraction", "train.epochs"]], trial=_slow_trial(3), trials_per_level=1,
        run={"options": {"max_threads": 1}, "checkpoint_interval_s": 3600}))
    sweep = load_sweep(spec)
    out = tmp_path / "run"
    log_path = tmp_path / "first.log"
    driver = start_cli("run", str(spec), "--out", str(out), "--grace-period", "20",
                       "--threads-per-trial", "1", log_path=log_path)
    long_trial = sweep.trial_ids[1]
    try:
        wait_for(lambda: _complete(out, sweep.trial_ids), timeout=60,
                 what="the first trial to complete")
        wait_for(lambda: "epoch 1/100" in _trial_log(out, long_trial), timeout=30,
                 what="the long trial to train")
        done_before = {tid: records.read_status(out / "trials" / tid)
                       for tid in _complete(out, sweep.trial_ids)}
        t_signal = time.monotonic()
        driver.send_signal(signum)
        rc = driver.wait(timeout=40)
        elapsed = time.monotonic() - t_signal
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log_path.read_text()
    assert rc == code, output
    assert elapsed < 20 + 5, f"took {elapsed:.1f} s to stop\n{output}"
    assert "Traceback" not in output and "terminate called" not in output, output
    assert "Task " not in output, "Parsl's state lines stay off the console:\n" + output
    assert "stopping" in output and "interrupted" in output, output
    # Done records stay done and untouched; nothing reads as failed; most never started.
    states = sweep_status(out).counts()
    assert states["failed"] == 0 and states["running"] == 0, states
    assert states["done"] == len(done_before) < len(sweep.trials)
    for tid, status in done_before.items():
        assert records.read_status(out / "trials" / tid) == status
    started = {e["trial_id"] for e in events(out) if e["event"] == "start"}
    assert started == {sweep.trial_ids[0], long_trial}, "no trial starts after the stop"
    stopped = records.read_status(out / "trials" / long_trial)
    assert stopped.get("interrupted") and stopped.get("error_type") == "TrialInterrupted"
    # It checkpointed at the epoch end after the stop (the interval alone never would).
    assert (out / "trials" / long_trial / "checkpoint.pt").is_file()
    assert (out / "summary.h5").is_file(), "what was done is gathered"

    # A second run finishes the sweep; the interrupted trial resumes from its checkpoint (its
    # remaining epochs take a while on a loaded two-core machine).
    second = run_cli("run", str(spec), "--out", str(out), timeout=240)
    assert second.returncode == 0, second.stderr
    assert sweep_status(out).counts()["done"] == len(sweep.trials)
    resumed = json.loads((out / "trials" / long_trial / "result.json").read_text())
    assert resumed["resumed_from_epoch"], "the stopped trial continued from its checkpoint"
    for tid, status in done_before.items():
        assert records.read_status(out / "trials" / tid) == status


@pytest.mark.timeout(90)
def test_second_signal_exits_at_once(tmp_path):
    """A trial whose epochs are longer than the patience of the user: the second SIGINT
    ends the driver at once, and the records still read as interrupted, not failed."""
    trial = _slow_trial(4)
    trial["data"]["n_train"] = 20000  # long epochs: the first signal cannot stop it quickly
    spec = write_spec(tmp_path / "twice.json", tiny_sweep(
        {"noise[0].fraction": [0.0, 0.1]}, trial=trial, trials_per_level=1,
        run={"options": {"max_threads": 1}}))
    out = tmp_path / "run"
    log_path = tmp_path / "driver.log"
    driver = start_cli("run", str(spec), "--out", str(out), "--grace-period", "60",
                       log_path=log_path)
    try:
        first = wait_for(lambda: next((e for e in events(out) if e["event"] == "start"), None),
                         timeout=60, what="a trial to start")
        wait_for(lambda: (records.read_status(out / "trials" / first["trial_id"]) or {})
                 .get("state") == "running", timeout=30, what="the running record")
        driver.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert driver.poll() is None, "the first signal waits for the running trial"
        t_second = time.monotonic()
        driver.send_signal(signal.SIGINT)
        rc = driver.wait(timeout=10)
        elapsed = time.monotonic() - t_second
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log_path.read_text()
    assert rc == 130 and elapsed < 5, output
    assert "Traceback" not in output and "terminate called" not in output, output
    states = sweep_status(out).counts()
    assert states["failed"] == 0 and states["running"] == 0 and states["corrupt"] == 0, states


def _run_processes(out: Path, driver_pid: int) -> list[psutil.Process]:
    """The driver's descendants, and the worker pools (and their workers) logging into
    ``out`` (the pool is started in a process group of its own and outlives its shell)."""
    found: dict[int, psutil.Process] = {}
    try:
        for p in psutil.Process(driver_pid).children(recursive=True):
            found[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline"]):
        if str(out) in " ".join(p.info["cmdline"] or []):
            found[p.pid] = p
            try:
                for child in p.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.timeout(150)
def test_no_process_outlives_a_killed_htex_driver_by_60_s(tmp_path):
    """SIGKILL the driver of a local_htex run while a long trial runs: the interchange, the
    worker pool and its workers are gone within 60 s (they would otherwise finish the queue)."""
    spec = write_spec(tmp_path / "orphans.json", tiny_sweep(
        {"noise[0].fraction": [0.0, 0.1, 0.2]}, trial=_slow_trial(2000), trials_per_level=1,
        run={"site": "local_htex", "options": {"gpus": "none", "cpu_workers": 1}}))
    out = tmp_path / "run"
    driver = start_cli("run", str(spec), "--out", str(out), log_path=tmp_path / "driver.log")
    procs: list[psutil.Process] = []
    try:
        first = wait_for(lambda: next((e for e in events(out) if e["event"] == "start"), None),
                         timeout=60, what="a trial to start on an HTEX worker")
        procs = _run_processes(out, driver.pid)
        assert any(p.pid == first["pid"] for p in procs), "the worker is found"
        assert len(procs) >= 3, [p.cmdline() for p in procs]  # interchange, pool, worker
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        killed_at = time.monotonic()
        deadline = killed_at + 60
        while _alive(procs) and time.monotonic() < deadline:
            time.sleep(1.0)
        left = _alive(procs)
        lasted = time.monotonic() - killed_at
    finally:
        if driver.poll() is None:
            driver.kill()
        for p in _alive(procs):  # never leave them to the next test
            p.kill()
    assert not left, (f"{len(left)} processes of the run still alive {lasted:.0f} s after "
                      f"the driver's SIGKILL: {[' '.join(p.cmdline())[:120] for p in left]}")


def test_grace_period_comes_from_the_sweep_or_the_command_line(tmp_path):
    from genodl_core.errors import SpecError
    from workflows.cli import build_parser
    from workflows.commands.run import settings_from_args
    from workflows.driver import RunSettings

    sweep = load_sweep(write_spec(tmp_path / "g.json", tiny_sweep(run={"grace_period_s": 5})))
    assert RunSettings().resolve(sweep).grace_period_s == 5
    assert RunSettings(grace_period_s=0).resolve(sweep).grace_period_s == 0
    default = load_sweep(write_spec(tmp_path / "d.json", tiny_sweep()))
    assert RunSettings().resolve(default).grace_period_s == 30
    for bad in (-1, "soon", float("inf")):
        with pytest.raises(SpecError) as info:
            load_sweep(write_spec(tmp_path / "b.json", tiny_sweep(run={"grace_period_s": bad})))
        assert info.value.field == "run.grace_period_s"
    for bad in ("-1", "nan", "inf"):
        args = build_parser().parse_args(["run", "s.toml", "--grace-period", bad])
        with pytest.raises(SpecError) as info:
            settings_from_args(args)
        assert info.value.field == "--grace-period"


def test_local_htex_interchange_dies_with_the_driver_and_the_pool_with_the_interchange(tmp_path):
    from site_configs import load_site
    from site_configs.local_htex import LOCAL_HEARTBEAT_THRESHOLD_S

    executor = load_site("local_htex", tmp_path, options={"gpus": "none"}).executors[0]
    command = list(executor.interchange_launch_cmd)
    assert "PR_SET_PDEATHSIG" in command[2] and command[3] == str(os.getpid())
    assert command[-1].endswith("interchange.py")
    assert executor.heartbeat_threshold == LOCAL_HEARTBEAT_THRESHOLD_S < 60


@pytest.mark.timeout(120)
def test_sigterm_to_the_mpi_driver_rank_stops_the_worker_ranks_through_the_stop_file(tmp_path):
    """Only rank 0 gets the signal (as under a batch script's walltime signal): the worker
    rank's trial stops at its next epoch end through the stop file, the queue is dropped."""
    import shutil
    import subprocess
    import sys

    from tests.workflow.conftest import GENODL, REPO, cli_env

    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py mpich)")
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        mpiexec = Path(shutil.which("mpiexec") or "mpiexec")
    if shutil.which(str(mpiexec)) is None:
        pytest.skip("no mpiexec next to the interpreter or on PATH (pip install mpich)")
    spec = write_spec(tmp_path / "mpi.json", tiny_sweep(
        {"noise[0].fraction": [0.0, 0.1, 0.2, 0.3], "train.epochs": [3, 100, 3, 3]},
        zip=[["noise[0].fraction", "train.epochs"]], trial=_slow_trial(3), trials_per_level=1))
    sweep = load_sweep(spec)
    out = tmp_path / "run"
    log_path = tmp_path / "mpi.log"
    with open(log_path, "w") as log_file:
        job = subprocess.Popen([str(mpiexec), "-n", "2", *GENODL, "run", str(spec), "--out",
                                str(out), "--site", "mpi", "--threads-per-trial", "1"],
                               cwd=REPO, env=cli_env(), stdout=log_file, stderr=subprocess.STDOUT)
    long_trial = sweep.trial_ids[1]
    try:
        wait_for(lambda: "epoch 1/100" in _trial_log(out, long_trial), timeout=60,
                 what="the long trial to train")
        driver_pid = sweep_status(out).driver["pid"]
        os.kill(driver_pid, signal.SIGTERM)
        job.wait(timeout=40)
    finally:
        if job.poll() is None:
            job.kill()
    output = log_path.read_text()
    assert "SIGTERM received: stopping" in output and "Traceback" not in output, output
    states = sweep_status(out).counts()
    assert states["done"] == 1 and states["interrupted"] == 1 and states["failed"] == 0, states
    assert records.read_status(out / "trials" / long_trial).get("interrupted")
    assert not (out / ".stop").exists()
