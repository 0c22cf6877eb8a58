"""The MPI path: the same sweep, run directory and records under `mpiexec -n N`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genodl_core import records
from tests.workflow.conftest import GENODL, REPO, cli_env, count_events, events
from workflows.sweep import load_sweep

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py mpich)")

MPIEXEC = Path(sys.executable).parent / "mpiexec"
if not MPIEXEC.exists():
    MPIEXEC = Path(shutil.which("mpiexec") or "mpiexec")

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which(str(MPIEXEC)) is None,
                       reason="no mpiexec next to the interpreter or on PATH (pip install mpich)"),
]


def mpirun(n: int, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([str(MPIEXEC), "-n", str(n), *GENODL, *args], cwd=REPO,
                          env=cli_env(), text=True, capture_output=True, timeout=timeout)


def test_sweep_over_three_ranks_then_resume_over_two(sweep_file, tmp_path):
    spec = sweep_file({"noise[0].fraction": [0.0, 0.3]})
    sweep = load_sweep(spec)
    out = tmp_path / "run"
    done = mpirun(3, "run", str(spec), "--out", str(out), "--site", "mpi")
    assert done.returncode == 0, done.stderr
    assert "over 3 MPI ranks" in done.stderr and "done 4 | failed 0" in done.stderr
    assert (out / "summary.h5").is_file()
    for tid in sweep.trial_ids:
        assert records.is_complete(out / "trials" / tid, tid)
    starts = [e for e in events(out) if e["event"] == "start"]
    assert len(starts) == 4
    assert len({e["pid"] for e in starts}) == 2, "both worker ranks ran trials"

    # Resume: a missing record is the only trial that runs again (here on one worker rank).
    lost = sweep.trial_ids[1]
    shutil.rmtree(out / "trials" / lost)
    again = mpirun(2, "run", str(spec), "--out", str(out), "--site", "mpi")
    assert again.returncode == 0, again.stderr
    assert "3 complete, 1 to run" in again.stderr
    counts = count_events(out, "start")
    assert counts.pop(lost) == 2 and set(counts.values()) == {1}


def test_single_process_with_packs_and_rerun_without_mpiexec(sweep_file, tmp_path):
    spec = sweep_file({"noise[0].fraction": [0.0]})
    out = tmp_path / "run"
    done = subprocess.run([*GENODL, "run", str(spec), "--out", str(out), "--site", "mpi",
                           "--pack-size", "2"],
                          cwd=REPO, env=cli_env(), text=True, capture_output=True, timeout=150)
    assert done.returncode == 0, done.stderr
    assert "over 1 MPI ranks" in done.stderr and "2 trials in 1 batched packs" in done.stderr
    assert count_events(out, "end", "done") == {t: 1 for t in load_sweep(spec).trial_ids}
    rerun = mpirun(2, "rerun", str(out), "--site", "mpi")
    assert rerun.returncode == 0 and "0 to run" in rerun.stderr


def test_invalid_option_fails_on_every_rank_without_hanging(sweep_file, tmp_path):
    spec = sweep_file()
    bad = mpirun(2, "run", str(spec), "--out", str(tmp_path / "run"), "--site", "mpi",
                 "-o", "gpus=2", timeout=60)
    assert bad.returncode != 0
    assert "unknown option of site 'mpi'" in bad.stderr and "gpus_per_node" in bad.stderr


def test_refused_second_driver_leaves_the_stored_sweep_alone(sweep_file, tmp_path):
    from workflows.rundir import RunDir

    out = tmp_path / "run"
    run = RunDir.prepare(out, load_sweep(sweep_file(trials_per_level=1)))
    before = (out / "sweep.json").read_bytes()
    extended = sweep_file(trials_per_level=2)
    with run.driver_lock():
        refused = mpirun(2, "run", str(extended), "--out", str(out), "--site", "mpi",
                         "--update-sweep", timeout=60)
    assert refused.returncode != 0 and "a driver (pid" in refused.stderr
    assert (out / "sweep.json").read_bytes() == before
    assert not list((out / "logs").glob("sweep.*.json"))


def test_ranks_share_the_node_cores_for_torch_threads(sweep_file, tmp_path):
    """Without --threads-per-trial, trial ranks of a node split its cores among themselves."""
    import os

    cores = len(os.sched_getaffinity(0))
    env = cli_env()
    env.pop("OMP_NUM_THREADS")  # torch's own default would be every core
    spec = sweep_file({"noise[0].fraction": [0.0]}, trials_per_level=2)
    for ranks, out in ((3, tmp_path / "three"), (2, tmp_path / "two")):
        done = subprocess.run([str(MPIEXEC), "-n", str(ranks), *GENODL, "run", str(spec),
                               "--out", str(out), "--site", "mpi", "--no-gather"],
                              cwd=REPO, env=env, text=True, capture_output=True, timeout=150)
        assert done.returncode == 0, done.stderr
        threads = {e["threads"] for e in events(out) if e["event"] == "start"}
        assert threads == {max(1, cores // (ranks - 1))}, (ranks, threads)


def test_gpu_pinning_indexes_an_inherited_device_list():
    from workflows.mpi import rank_device

    assert [rank_device(r, 2, None) for r in range(4)] == ["0", "1", "0", "1"]
    # The batch system gave this job devices 4 and 5 only.
    assert [rank_device(r, 2, "4,5") for r in range(3)] == ["4", "5", "4"]
    assert rank_device(1, 2, "GPU-aa,GPU-bb,GPU-cc") == "GPU-bb"
    assert rank_device(3, 4, "6,7") == "7"  # fewer visible than asked: ranks share them
    assert rank_device(0, 2, "") == ""  # everything hidden stays hidden
