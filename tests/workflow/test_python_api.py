"""The ``genodl`` package facade: plan, run (with a progress callback), trial, load, status.

Runs are the tiny real NT3 sweeps of the other workflow tests; the example script of
docs/python-api.md runs end to end in the one slow test.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import subprocess
import sys
import time

import pytest

import genodl
from genodl_core.errors import DataError, SpecError

from .conftest import REPO, TINY_TRIAL, cli_env, tiny_sweep


def test_importing_genodl_loads_neither_torch_nor_parsl():
    code = ("import sys, genodl; heavy = [m for m in ('torch', 'parsl') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_setup_cfg_installs_the_genodl_package():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = cfg["options.packages.find"]["include"].split()
    assert any(fnmatch.fnmatch("genodl", p) for p in patterns), patterns
    assert "workflows.cli:main" in cfg["options.entry_points"]["console_scripts"]


def test_plan_of_a_dict_gives_count_table_and_specs():
    p = genodl.plan(tiny_sweep())
    assert p.n_trials == 4
    assert list(p.table.columns) == ["index", "noise[0].fraction", "seed"]
    assert sorted(p.table["noise[0].fraction"].unique()) == [0.0, 0.3]
    assert list(p.specs) == list(p.table.index)
    assert p.specs[p.table.index[0]]["model"]["name"] == "nt3"


def test_plan_of_the_quick_example_file():
    p = genodl.plan(REPO / "jobs" / "examples" / "quick.toml")
    assert p.name == "quick" and p.n_trials == 12 == len(p.table)


def test_plan_refuses_what_is_not_a_sweep():
    with pytest.raises(TypeError, match="sweep=42"):
        genodl.plan(42)
    with pytest.raises(SpecError, match="trial"):
        genodl.plan({"sweep": {"name": "x"}})


def test_run_reports_every_trial_to_the_progress_callback_then_load_and_status(tmp_path):
    calls = []
    report = genodl.run(tiny_sweep(), tmp_path / "run",
                        progress=lambda *args: calls.append(args))
    assert report.ok and report.count("done") == 4
    settled = [c for c in calls if c[3] != "running"]
    assert sorted(c[2] for c in settled) == sorted(report.states)
    assert [c[0] for c in settled] == [1, 2, 3, 4]
    assert all(c[1] == 4 and c[3] == "done" for c in settled)
    assert {c[2] for c in calls if c[3] == "running"} <= set(report.states)

    res = genodl.load(tmp_path / "run")
    assert len(res.trials) == 4 and set(res.trials["state"]) == {"done"}
    assert "val_accuracy" in res.finals.columns and len(res.finals) == 4
    assert list(res.curves.columns) == ["trial_id", "metric", "epoch", "value"]
    assert set(res.curves["trial_id"]) == set(report.states)
    assert set(res.curves.query("metric == 'val_loss'")["epoch"]) == {1, 2}
    assert res.curve("val_loss").shape == (4, 2)
    assert set(res.groups(["val_accuracy"])["n_done"]) == {2}

    status = genodl.status(tmp_path / "run")
    assert status.counts()["done"] == 4 and status.driver is None


def test_a_failing_progress_callback_does_not_stop_the_run(tmp_path):
    def broken(*args):
        raise RuntimeError("display broke")

    report = genodl.run(tiny_sweep(trials_per_level=1), tmp_path / "run", progress=broken)
    assert report.ok and report.count("done") == 2


def test_run_refuses_bad_settings_before_touching_the_directory(tmp_path):
    with pytest.raises(SpecError, match="pack_size"):
        genodl.run(tiny_sweep(), tmp_path / "run", pack_size=0)
    with pytest.raises(TypeError, match="progress"):
        genodl.run(tiny_sweep(), tmp_path / "run", progress="bar")
    assert not (tmp_path / "run").exists()


def test_load_gathers_a_missing_or_stale_summary(tmp_path):
    report = genodl.run(tiny_sweep(trials_per_level=1), tmp_path / "run", gather=False)
    assert report.ok and report.summary is None
    with pytest.raises(DataError, match="no summary"):
        genodl.load(tmp_path / "run", gather="never").trials
    assert len(genodl.load(tmp_path / "run").trials) == 2

    summary = tmp_path / "run" / "summary.h5"
    past = time.time() - 60
    os.utime(summary, (past, past))  # a record written after the gather makes it stale
    before = summary.stat().st_mtime_ns
    genodl.load(tmp_path / "run")
    assert summary.stat().st_mtime_ns > before
    fresh = summary.stat().st_mtime_ns
    genodl.load(tmp_path / "run")
    assert summary.stat().st_mtime_ns == fresh  # up to date: not gathered again
    with pytest.raises(ValueError, match="gather='sometimes'"):
        genodl.load(tmp_path / "run", gather="sometimes")


def test_load_of_a_missing_directory_names_it(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        genodl.load(tmp_path / "nowhere")


def test_trial_runs_one_spec_into_a_folder(tmp_path):
    result = genodl.trial(TINY_TRIAL, tmp_path)
    assert result.ok and result.path.parent == tmp_path
    assert 0.0 <= result.final["val_accuracy"] <= 1.0


@pytest.mark.slow
def test_the_documented_example_script_runs(tmp_path):
    script = REPO / "docs" / "examples" / "notebook_example.py"
    done = subprocess.run([sys.executable, str(script), "--keep", str(tmp_path / "quick")],
                          cwd=tmp_path, env=cli_env(), text=True, capture_output=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "quick: 12 trials" in done.stdout
    assert "[12/12]" in done.stdout and "ok=True: 12 done" in done.stdout
    assert "val_accuracy.mean" in done.stdout and "abstaining" in done.stdout
    assert (tmp_path / "quick" / "summary.h5").is_file()
