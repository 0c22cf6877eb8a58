"""One trial end to end through run_trial and `genodl trial`: records, failures, reproducibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from genodl_core import records
from genodl_core.spec import load_spec, read_table
from genodl_core.training.trial import run_trial

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "jobs" / "examples" / "nt3_trial_small.toml"


def tiny(**train) -> dict:
    """The small example shrunk further: a trial of a few seconds on a CPU core."""
    spec = read_table(SMALL)
    spec["data"].update(n_train=64, n_test=32, n_features=300)
    spec["model"].update(conv=[[4, 10, 1], [4, 5, 1]], dense=[8])
    spec["train"].update({"epochs": 2, **train})
    return spec


def test_small_example_learns_and_cli_prints_json_last(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "trial", str(SMALL), "--out", str(tmp_path),
         "--json"], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert out.returncode == 0, out.stderr
    final = json.loads(out.stdout.strip().splitlines()[-1])
    assert final["state"] == "done"
    assert final["val_accuracy"] >= 0.9
    trial_dir = tmp_path / final["trial_id"]
    assert records.is_complete(trial_dir)
    assert final["trial_id"] == load_spec(SMALL).trial_id


def test_record_holds_spec_provenance_curves_and_noise(tmp_path):
    spec = tiny()
    spec["noise"] = [{"kind": "label_flip", "fraction": 0.25}]
    result = run_trial(spec, tmp_path)
    assert result.ok, result.error
    rec = records.load_record(result.path)
    assert rec.state == "done" and not rec.problems
    assert rec.spec["trial_id"] == result.trial_id and rec.spec["noise"][0]["fraction"] == 0.25
    assert rec.provenance["versions"]["torch"] and rec.provenance["git_revision"]
    assert rec.provenance["device"]["device"] == "cpu"
    curves = rec.result["curves"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"):
        assert len(curves[key]) == 2, key
    noise = rec.result["noise"][0]
    # data.validation = "auto" carves 6 + 6 of the 64 training rows: noise sees 52.
    assert rec.result["data"]["validation"]["n_train"] == 52
    assert noise["kind"] == "label_flip" and noise["n_flipped"] == 13
    mask = rec.arrays()[noise["flip_mask"]["array"]]
    assert mask.sum() == 13 and mask.shape == (52,)
    assert "epoch 2/2" in (result.path / records.LOG_FILE).read_text()


def test_same_seed_gives_identical_curves_and_other_seed_differs(tmp_path):
    spec = tiny()
    spec["noise"] = [{"kind": "gaussian", "std": 0.1}]
    a = run_trial(spec, tmp_path / "a")
    b = run_trial(spec, tmp_path / "b")
    curves = [records.load_record(r.path).result["curves"] for r in (a, b)]
    for key in ("loss", "val_loss", "val_accuracy"):
        assert curves[0][key] == curves[1][key]
    c = run_trial({**spec, "seed": 1}, tmp_path / "c")
    assert records.load_record(c.path).result["curves"]["loss"] != curves[0]["loss"]


def test_failing_trial_is_recorded_failed_not_raised(tmp_path):
    spec = tiny()
    spec["data"] = {"source": "nt3_csv", "train_path": str(tmp_path / "missing_train.csv"),
                    "test_path": str(tmp_path / "missing_test.csv")}
    result = run_trial(spec, tmp_path / "out")
    assert result.state == "failed" and result.error_type == "DataError"
    assert result.deterministic is True
    status = records.read_status(result.path)
    assert status["state"] == "failed" and "missing_train.csv" in status["error"]
    assert "Traceback" in status["traceback"]
    assert not records.is_complete(result.path)
    assert not (result.path / records.RESULT_FILE).exists()


def test_timeout_fails_the_trial(tmp_path):
    result = run_trial(tiny(timeout_s=1e-6), tmp_path)
    assert result.state == "failed" and result.error_type == "TrialTimeout"


def test_killed_trial_never_reads_as_done(tmp_path):
    spec = tiny(epochs=5000)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    trial_id = load_spec(spec_file).trial_id
    trial_dir = tmp_path / "out" / trial_id
    proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", "trial", str(spec_file),
                             "--out", str(tmp_path / "out")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while "epoch 2/" not in _read(trial_dir / records.LOG_FILE):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert records.read_status(trial_dir)["state"] == "running"
    assert not records.is_complete(trial_dir)
    assert not (trial_dir / records.RESULT_FILE).exists()


def test_rerun_in_place_counts_attempts_and_replaces_the_result(tmp_path):
    first = run_trial(tiny(), tmp_path)
    second = run_trial(tiny(), tmp_path)
    assert first.trial_id == second.trial_id and second.ok
    assert records.read_status(second.path)["attempt"] == 2
    assert records.is_complete(second.path)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_rocm_pinning_keeps_only_rocr_visible_devices(monkeypatch):
    import torch

    from genodl_core.training.device import pin_rocm_devices

    env = {"ROCR_VISIBLE_DEVICES": "3", "CUDA_VISIBLE_DEVICES": "3", "HIP_VISIBLE_DEVICES": "3"}
    monkeypatch.setattr(torch.version, "hip", "6.2", raising=False)
    pin_rocm_devices(env)
    assert env == {"ROCR_VISIBLE_DEVICES": "3"}
    cuda_env = {"CUDA_VISIBLE_DEVICES": "1"}
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    pin_rocm_devices(cuda_env)
    assert cuda_env == {"CUDA_VISIBLE_DEVICES": "1"}


def test_worker_reloads_a_data_file_that_changed(tmp_path):
    from genodl_core.data.loading import load_dataset
    from genodl_core.spec import spec_from_dict

    rows = ["0," + ",".join(["1"] * 30), "1," + ",".join(["2"] * 30)] * 4
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("\n".join(rows) + "\n")
    test.write_text("\n".join(rows) + "\n")
    spec = spec_from_dict({"model": {"name": "nt3"}, "data": {
        "source": "nt3_csv", "train_path": str(train), "test_path": str(test),
        "validation": "test"}})  # 4 rows are too few to carve a validation split from
    first, cached = load_dataset(spec.data, spec.validation)
    assert not cached and load_dataset(spec.data, spec.validation)[1]
    train.write_text("\n".join(rows[:4]) + "\n")          # replaced: 4 samples instead of 8
    os.utime(train, ns=(time.time_ns(), time.time_ns() + 10**9))
    second, cached = load_dataset(spec.data, spec.validation)
    assert not cached and second.x_train.shape[0] == 4 and first.x_train.shape[0] == 8
