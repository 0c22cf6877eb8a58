"""Shared helpers of the workflow tests: tiny real sweeps, the CLI in a subprocess, polling.

Trials here are real NT3 trials (synthetic data, a few epochs, ~100 samples x 200 genes), so
every test exercises the trial runner, the records and the gather stage, not stand-ins.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
GENODL = [sys.executable, "-m", "workflows.cli"]

#: A tiny NT3 trial: trains in well under a second on one core.
TINY_TRIAL: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "model": {"name": "nt3", "conv": [[4, 10, 1], [4, 5, 1]], "pool": [1, 5], "dense": [8, 4]},
    "data": {"source": "synthetic_nt3", "n_train": 80, "n_test": 40, "n_features": 200},
    "noise": [{"kind": "label_flip", "fraction": 0.0}],
    "train": {"epochs": 2, "batch_size": 16, "learning_rate": 0.01, "timeout_s": 120},
}


def tiny_sweep(axes: dict[str, Any] | None = None, *, name: str = "tiny",
               trial: dict[str, Any] | None = None, run: dict[str, Any] | None = None,
               **sweep_keys: Any) -> dict[str, Any]:
    """A sweep table over the tiny trial (default: 2 noise levels x 2 seeds = 4 trials)."""
    axes = {"noise[0].fraction": [0.0, 0.3]} if axes is None else axes
    sweep = {"name": name, "axes": axes, **sweep_keys}
    if "trials_per_level" not in sweep_keys and not any(a == "seed" for a in axes):
        sweep["trials_per_level"] = 2
    return {"sweep": sweep,
            "run": {"site": "local_threads", "retries": 1, "options": {"max_threads": 2},
                    "progress_interval_s": 2, **(run or {})},
            "trial": copy.deepcopy(trial or TINY_TRIAL)}


def tiny_lr_sweep_toml(name: str, n_seeds: int) -> str:
    """A TOML sweep of the LR baseline on tiny synthetic D-GEX data over ``n_seeds`` seeds.

    The cheapest real trials, written the way users write sweeps, for the batch-job tests.
    """
    seeds = ", ".join(str(i) for i in range(n_seeds))
    return f"""\
[sweep]
name = "{name}"
[sweep.axes]
seed = [{seeds}]

[trial]
seed = 0
[trial.model]
name = "lr"
[trial.data]
source = "synthetic_dgex"
n_landmarks = 8
n_targets = 6
n_train = 60
n_val = 20
n_test = 20
n_factors = 3
seed = 0
"""


def write_spec(path: Path, table: dict[str, Any]) -> Path:
    """Write a sweep as JSON (sweep files may be TOML or JSON; the examples cover TOML)."""
    path.write_text(json.dumps(table, indent=1))
    return path


def cli_env() -> dict[str, str]:
    """Environment for a `genodl` subprocess: the repository importable, one torch thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `genodl ARGS` in a subprocess and return the completed process (text output)."""
    return subprocess.run([*GENODL, *args], cwd=cwd or REPO, env=cli_env(), text=True,
                          capture_output=True, timeout=timeout)


def start_cli(*args: str, log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start `genodl ARGS` in the background, its output going to ``log_path``."""
    out = open(log_path, "w")
    return subprocess.Popen([*GENODL, *args], cwd=cwd or REPO, env=cli_env(), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def events(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of the run's attempts log."""
    path = run_dir / "logs" / "attempts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def count_events(run_dir: Path, kind: str, state: str | None = None) -> dict[str, int]:
    """Per trial id: how many events of ``kind`` (and end ``state``) the attempts log holds."""
    counts: dict[str, int] = {}
    for e in events(run_dir):
        if e.get("event") == kind and (state is None or e.get("state") == state):
            counts[e["trial_id"]] = counts.get(e["trial_id"], 0) + 1
    return counts


def write_nt3_csv(path: Path, n: int, n_features: int, seed: int) -> Path:
    """A small NT3-format CSV (label, then features) cut from the synthetic generator."""
    from genodl_core.data.synthetic_nt3 import SyntheticNT3Params, make_synthetic_nt3

    data = make_synthetic_nt3(SyntheticNT3Params(n_train=n, n_test=2, n_features=n_features,
                                                 seed=seed))
    table = np.column_stack([data.y_train.astype(np.float64), data.x_train])
    np.savetxt(path, table, delimiter=",", fmt=["%d"] + ["%.5g"] * n_features)
    return path


@pytest.fixture
def sweep_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a tiny sweep (see :func:`tiny_sweep`) to a file in ``tmp_path``."""
    counter = iter(range(1000))

    def make(*args: Any, **kwargs: Any) -> Path:
        return write_spec(tmp_path / f"sweep{next(counter)}.json", tiny_sweep(*args, **kwargs))

    return make


@pytest.fixture(autouse=True)
def _no_parsl_leftovers():
    """Every test starts and ends without a loaded Parsl DataFlowKernel."""
    import parsl

    parsl.clear()
    yield
    parsl.clear()
