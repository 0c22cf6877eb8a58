"""Adaptive sweeps end to end: rounds in one run directory, resume after a kill, summary, report.

The trials are the LR baseline on tiny synthetic D-GEX data with Gaussian target noise: they
finish in a fraction of a second, and their validation MAE grows with the noise until it
crosses the MAE of predicting each gene's training mean (the target ``metric:...``).
"""

from __future__ import annotations

import json
import signal
import time

import h5py
import pytest

from genodl_core.errors import SpecError
from genodl_core.results.breakdown import ADAPTIVE_FILE
from genodl_core.results.report import report
from workflows.adaptive import read_rounds, run_adaptive, status_lines
from workflows.driver import RunSettings
from workflows.sweep import sweep_from_dict

from workflows.cli import main as cli_main

from .conftest import start_cli, wait_for, write_spec

pytestmark = pytest.mark.timeout(240)


def lr_adaptive(name: str = "adaptive") -> dict:
    return {
        "sweep": {"name": name, "adaptive": {
            "axis": "noise[0].std", "range": [0.0, 2.0], "coarse": 3, "metric": "val_mae",
            "target": "metric:null_mean_val_mae", "direction": "increasing", "seeds": 2,
            "budget": 14, "points": 2, "width": 0.05}},
        "run": {"site": "local_threads", "retries": 0, "options": {"max_threads": 2}},
        "trial": {"seed": 0, "model": {"name": "lr"},
                  "data": {"source": "synthetic_dgex", "n_landmarks": 8, "n_targets": 6,
                           "n_train": 60, "n_val": 20, "n_test": 20, "n_factors": 3, "seed": 0},
                  "noise": [{"kind": "target_gaussian", "std": 0.0}]},
    }


def test_rounds_share_one_directory_and_reach_summary_report_and_status(tmp_path, capsys):
    sweep = sweep_from_dict(lr_adaptive())
    out = tmp_path / "run"
    result = run_adaptive(sweep, out, RunSettings())
    assert result.report.ok and result.stop_reason in ("budget", "width")
    rounds = read_rounds(out)["rounds"]
    assert len(rounds) >= 2 and len(rounds[0]["trial_ids"]) == 6
    every = [tid for r in rounds for tid in r["trial_ids"]]
    assert len(every) == len(set(every)) == len(result.report.states) <= 14
    # A trial's id is its spec's: the first round's trials are those of a uniform sweep.
    uniform = lr_adaptive()
    uniform["sweep"] = {"name": "adaptive", "axes": {"noise[0].std": [0.0, 1.0, 2.0]},
                        "trials_per_level": 2}
    assert set(sweep_from_dict(uniform).trial_ids) == set(rounds[0]["trial_ids"])
    bd = result.estimates["all"]
    assert bd.side == "inside" and bd.low <= bd.estimate <= bd.high
    with h5py.File(out / "summary.h5") as h5:
        assert h5["breakdown/estimate"][0] == pytest.approx(bd.estimate)
        assert sorted(h5["breakdown/round"][()]) == sorted(
            r["round"] for r in rounds for _ in r["trial_ids"])
    text = report(out)
    assert f"{bd.estimate:.4g}  95% interval [{bd.low:.4g}, {bd.high:.4g}]" in text
    lines = status_lines(out)
    assert lines[0] == "round 0: 6 trials" and lines[-1].startswith("rounds ended")
    other = lr_adaptive()
    other["sweep"]["adaptive"]["width"] = 0.2
    with pytest.raises(SpecError, match="holds another sweep"):
        run_adaptive(sweep_from_dict(other), out, RunSettings())
    capsys.readouterr()
    assert cli_main(["status", str(out)]) == 0
    assert "round 1: " in capsys.readouterr().out
    pytest.importorskip("matplotlib", reason="figures need the plots extra")
    from genodl_core.results.breakdown import plot_breakdown

    assert [p.name for p in plot_breakdown(out / "summary.h5", tmp_path)] == ["breakdown_all.png"]


def test_killed_run_resumes_to_the_same_rounds(tmp_path):
    """A driver killed (SIGKILL) once its first round is recorded, mid-way through the second
    round or between rounds, resumes to exactly the rounds of an uninterrupted run."""
    table = lr_adaptive()
    table["sweep"]["adaptive"]["budget"] = 10
    spec = write_spec(tmp_path / "adaptive.json", table)
    killed = tmp_path / "killed"
    proc = start_cli("run", str(spec), "--out", str(killed), log_path=tmp_path / "run.log")
    try:
        wait_for(lambda: proc.poll() is not None or (killed / ADAPTIVE_FILE).exists()
                 and (read_rounds(killed) or {}).get("rounds"), 120, "the first round's record")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    resumed = run_adaptive(sweep_from_dict(table), killed, RunSettings(gather=False))
    straight = run_adaptive(sweep_from_dict(table), tmp_path / "straight",
                            RunSettings(gather=False))
    assert read_rounds(killed)["rounds"] == read_rounds(tmp_path / "straight")["rounds"]
    assert resumed.stop_reason == straight.stop_reason
    stored = json.loads((killed / "sweep.json").read_text())
    assert len(stored["trials"]) == len(straight.report.states)


def test_rounds_over_mpi_ranks(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py mpich)")
    from .test_mpi import MPIEXEC, mpirun

    if not MPIEXEC.exists():
        pytest.skip("no mpiexec next to the interpreter or on PATH (pip install mpich)")
    table = lr_adaptive()
    table["sweep"]["adaptive"]["budget"] = 8
    spec = write_spec(tmp_path / "adaptive.json", table)
    out = tmp_path / "run"
    done = mpirun(2, "run", str(spec), "--out", str(out), "--site", "mpi")
    assert done.returncode == 0, done.stderr
    rounds = read_rounds(out)
    assert [len(r["trial_ids"]) for r in rounds["rounds"]] == [6, 2]
    assert rounds["stop_reason"] == "budget"
    with h5py.File(out / "summary.h5") as h5:
        assert len(h5["breakdown/group"]) == 1


def test_nt3_example_plans_its_first_round():
    from pathlib import Path

    from workflows.sweep import load_sweep

    sweep = load_sweep(Path(__file__).resolve().parents[2] / "jobs/examples/nt3_adaptive.toml")
    assert sweep.adaptive.axis == "noise[0].fraction" and sweep.adaptive.target == "halfway"
    assert len(sweep.trials) == 10 <= sweep.adaptive.budget
    assert {t.spec["noise"][0]["kind"] for t in sweep.trials} == {"label_flip"}
