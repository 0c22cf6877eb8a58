"""The Slurm path against a real single-node Slurm (tests/slurm/start_slurm.sh starts one).

Skipped, with the reason, when no Slurm answers. Nothing here is mocked: pilot jobs go through
``sbatch``, workers start under ``srun``, and ``genodl submit`` queues a real batch job whose
driver runs the sweep inside the allocation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.workflow.conftest import REPO, tiny_lr_sweep_toml

SWEEP = tiny_lr_sweep_toml("slurm-tiny", 3)

#: Site options that fit the single-node test cluster: the driver and the workers share this
#: host, so the interchange listens on loopback.
LOCAL_NODE = ["-o", "address=127.0.0.1", "-o", "cpu_workers=2", "-o", "gpus_per_node=0",
              "-o", "encrypted=false",
              "--walltime", "0:10"]


def slurm_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None when a node is up."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (run tests/slurm/install_slurm.sh and start_slurm.sh)"
    try:
        done = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True,
                              text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (is slurmctld running?)"
    states = {s.strip("*~#") for s in done.stdout.split()}
    if done.returncode != 0 or not states & {"idle", "mixed", "allocated", "completing"}:
        return (f"no usable Slurm node (sinfo: {done.stdout.strip() or done.stderr.strip()}); "
                "run tests/slurm/start_slurm.sh")
    return None


_PROBLEM = slurm_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300),
              pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")]


def genodl(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def job_state(job_id: str) -> str | None:
    done = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format=%T"],
                          capture_output=True, text=True, timeout=15)
    state = done.stdout.strip()
    return state or None


def wait_for_queue_to_drain(job_ids: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(job_state(j) in (None, "COMPLETED", "CANCELLED", "FAILED") for j in job_ids):
            return
        time.sleep(1)


def test_pilot_job_workers_run_inside_slurm(tmp_path, monkeypatch):
    """An app sent through the slurm site runs in a Slurm job step started by srun."""
    import parsl

    from site_configs import load_site

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # workers import this module for the app

    @parsl.python_app
    def where():
        import os
        import socket

        return (os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID"),
                socket.gethostname())

    cfg = load_site("slurm", tmp_path, options={"address": "127.0.0.1", "cpu_workers": 2,
                                               "encrypted": False, "walltime": "0:05",
                                               "exclusive": False})
    with parsl.load(cfg):
        job_id, step_id, host = where().result(timeout=180)
        provider = cfg.executors[0].provider
        submitted = list(provider.resources)
    assert job_id is not None and job_id in submitted, (job_id, submitted)
    assert step_id is not None  # srun started the manager as a job step
    wait_for_queue_to_drain(submitted)  # parsl cancels its pilot job at cleanup


def test_sweep_through_slurm_pilot_jobs(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP)
    out = tmp_path / "run"
    done = genodl("run", str(spec), "--site", "slurm", "--out", str(out), *LOCAL_NODE,
                  "-o", "exclusive=false", "--progress-interval", "5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    status = genodl("status", str(out), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    import json

    counts = json.loads(status.stdout)["counts"]
    assert counts.get("done") == 3, status.stdout
    assert (out / "summary.h5").is_file()
    # the workers were started by the pilot job's srun, inside a real Slurm job
    stdout_files = list((out / "runinfo").glob("*/submit_scripts/*.stdout"))
    assert stdout_files and any("Found nodes : 1" in f.read_text() for f in stdout_files)
    scripts = [p for p in (out / "runinfo").glob("*/submit_scripts/parsl.slurm.block-*")
               if p.suffix not in (".stdout", ".stderr")]
    assert scripts and "#SBATCH --nodes=1" in scripts[0].read_text()


def test_genodl_submit_runs_the_sweep_in_a_batch_job(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP)
    out = tmp_path / "run"
    done = genodl("submit", str(spec), "--site", "slurm", "--out", str(out), *LOCAL_NODE,
                  cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert job_id.isdigit(), done.stdout
    summary = out / "summary.h5"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job_state(job_id) not in (None, "COMPLETED", "FAILED",
                                                                     "CANCELLED", "TIMEOUT"):
        time.sleep(2)
    logs = "".join(p.read_text() for p in (out / "logs").glob("batch-*"))
    assert summary.is_file(), f"job {job_id} ({job_state(job_id)}) left no summary:\n{logs[-3000:]}"
    assert f"batch-{job_id}.err" in {p.name for p in (out / "logs").iterdir()}
    status = genodl("status", str(out), "--json", cwd=tmp_path)
    import json

    assert json.loads(status.stdout)["counts"].get("done") == 3, status.stdout
    # submitting the finished sweep again runs nothing: every trial is skipped as complete
    again = genodl("submit", str(spec), "--site", "slurm", "--out", str(out), *LOCAL_NODE,
                   cwd=tmp_path, timeout=60)
    assert again.returncode == 0, again.stderr
    second = again.stdout.strip()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and job_state(second) not in (None, "COMPLETED", "FAILED",
                                                                    "CANCELLED", "TIMEOUT"):
        time.sleep(2)
    err = (out / "logs" / f"batch-{second}.err").read_text()
    assert "3 complete, 0 to run" in err, err[-2000:]
