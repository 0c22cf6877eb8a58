"""CLI conventions: `--json` on run, report and gather; status exit codes by sweep state."""

from __future__ import annotations

import json
import shutil

import pytest

from genodl_core import records
from tests.workflow.conftest import run_cli, tiny_lr_sweep_toml
from workflows.commands.status import EXIT_UNFINISHED, status_exit_code

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished three-trial LR sweep, run with `genodl run --json`."""
    base = tmp_path_factory.mktemp("cli-json")
    spec = base / "lr.toml"
    spec.write_text(tiny_lr_sweep_toml("lr_json", 3))
    out = base / "run"
    done = run_cli("run", str(spec), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    return out, done


def test_run_json_is_one_object_on_stdout(finished_run):
    out, done = finished_run
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, "logs stay on stderr"
    report = json.loads(lines[0])
    assert report["counts"] == {"done": 3} and report["total"] == 3
    assert report["exit_code"] == 0 and report["not_done"] == []
    assert report["summary"].endswith("summary.h5") and report["run_dir"] == str(out)


def test_gather_and_report_json(finished_run):
    out, _ = finished_run
    gathered = run_cli("gather", str(out), "--json")
    assert gathered.returncode == 0, gathered.stderr
    data = json.loads(gathered.stdout)
    assert data["counts"]["done"] == 3 and data["n_trials"] == 3
    assert data["summary"].endswith("summary.h5") and data["warnings"] == []
    reported = run_cli("report", str(out), "--json")
    assert reported.returncode == 0, reported.stderr
    groups = json.loads(reported.stdout)["groups"]
    assert len(groups) == 1 and groups[0]["model"] == "lr" and groups[0]["n_done"] == 3
    assert any(key.endswith(".mean") for key in groups[0])


def test_status_tells_unfinished_from_failed(finished_run, tmp_path):
    out, _ = finished_run
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    assert run_cli("status", str(run)).returncode == 0
    trials = sorted(p for p in (run / "trials").iterdir() if not p.name.startswith("."))
    shutil.rmtree(trials[0])  # never ran: missing, not a failure
    unfinished = run_cli("status", str(run))
    assert unfinished.returncode == EXIT_UNFINISHED == 4, unfinished.stdout
    records.write_status(trials[1], records.FAILED, trial_id=trials[1].name,
                         error_type="ValueError", error="bad")
    assert run_cli("status", str(run)).returncode == 1


def test_status_exit_code_by_counts():
    assert status_exit_code({"done": 2, "failed": 0, "running": 0}) == 0
    assert status_exit_code({"done": 1, "running": 1, "failed": 0}) == EXIT_UNFINISHED
    assert status_exit_code({"done": 1, "interrupted": 1, "missing": 1}) == EXIT_UNFINISHED
    assert status_exit_code({"done": 1, "running": 1, "failed": 1}) == 1
    assert status_exit_code({"done": 1, "corrupt": 1}) == 1
