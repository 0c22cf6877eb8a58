"""Trials logged to MLflow and TensorBoard from their records: read back, never duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest

from genodl_core import records
from genodl_core.errors import SpecError
from genodl_core.results import tracking

CURVE = [0.5, 0.625, 0.75]


def _spec(tid: str, seed: int, fraction: float, lr: float = 0.01) -> dict:
    return {"trial_id": tid, "seed": seed, "device": "cpu",
            "model": {"name": "nt3", "variant": "base", "dense": [8]},
            "data": {"source": "synthetic_nt3", "n_train": 40},
            "noise": [{"kind": "label_flip", "fraction": fraction}],
            "train": {"epochs": 3, "learning_rate": lr}}


def _done(run: Path, tid: str, spec: dict, curve=CURVE) -> None:
    trial_dir = run / "trials" / tid
    trial_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(trial_dir / records.SPEC_FILE, spec)
    sums = records.write_result(trial_dir, {
        "trial_id": tid, "final": {"val_accuracy": curve[-1], "test_accuracy": 0.7},
        "curves": {"val_accuracy": list(curve), "loss": [0.9, 0.8, 0.7][:len(curve)]},
        "noise": [{"kind": "label_flip", "fraction": spec["noise"][0]["fraction"],
                   "n_flipped": 4}]})
    records.write_status(trial_dir, records.DONE, trial_id=tid, wall_s=2.0, checksums=sums)


def _run_dir(tmp_path: Path) -> Path:
    """Two done trials differing in learning rate (their settings) and one failed trial."""
    run = tmp_path / "run"
    specs = {"aaaa": _spec("aaaa", 0, 0.2, lr=0.01), "bbbb": _spec("bbbb", 1, 0.2, lr=0.1),
             "cccc": _spec("cccc", 0, 0.4)}
    run.mkdir()
    records.atomic_write_json(run / "sweep.json", {
        "name": "tiny", "trials": [{"trial_id": t, "spec": s} for t, s in specs.items()]})
    _done(run, "aaaa", specs["aaaa"])
    _done(run, "bbbb", specs["bbbb"])
    failed = run / "trials" / "cccc"
    failed.mkdir(parents=True)
    records.atomic_write_json(failed / records.SPEC_FILE, specs["cccc"])
    records.write_status(failed, records.FAILED, trial_id="cccc", error_type="ValueError",
                         error="diverged")
    return run


def test_a_record_becomes_params_curves_finals_and_tags(tmp_path):
    run = _run_dir(tmp_path)
    trials = {t.trial_id: t for t in tracking.run_trials(run)}
    assert set(trials) == {"aaaa", "bbbb", "cccc"}
    a = trials["aaaa"]
    assert a.params["train.learning_rate"] == "0.01"
    assert a.params["model.dense"] == "[8]"
    assert a.params["noise_record.0.n_flipped"] == "4"
    assert a.curves["val_accuracy"] == CURVE
    assert a.finals == {"val_accuracy": 0.75, "test_accuracy": 0.7}
    assert a.tags["genodl.sweep"] == "tiny"
    assert a.tags["genodl.setting"] == "train.learning_rate=0.01"
    assert "noise_kind=label_flip" in a.tags["genodl.group"]
    assert a.key.startswith("sha256:")
    failed = trials["cccc"]
    assert failed.state == "failed" and not failed.curves
    assert failed.tags["genodl.error"] == "ValueError: diverged"


def test_unknown_tracker_names_the_allowed_ones():
    with pytest.raises(SpecError, match="mlflow.*tensorboard"):
        tracking.check_tracker("wandb")


def test_tensorboard_export_reads_back_and_is_idempotent(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="TensorBoard export needs the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from workflows.cli import main

    run = _run_dir(tmp_path)
    target = tmp_path / "tb"
    assert main(["export", str(run), "--format", "tensorboard", "--to", str(target)]) == 0
    assert "logged 3 trials" in capsys.readouterr().err

    def scalars(tid: str, tag: str) -> list[tuple[int, float]]:
        acc = EventAccumulator(str(target / "tiny" / tid))
        acc.Reload()
        return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]

    assert scalars("aaaa", "val_accuracy") == [(1, 0.5), (2, 0.625), (3, 0.75)]
    assert scalars("aaaa", "final/test_accuracy") == [(3, 0.7)]
    files = sorted(p.name for p in (target / "tiny" / "aaaa").iterdir())

    counts = tracking.export_tracking(run, "tensorboard", target)
    assert (counts.logged, counts.skipped) == (0, 3)
    assert sorted(p.name for p in (target / "tiny" / "aaaa").iterdir()) == files

    # A rerun's new record replaces the old curves instead of adding to them.
    _done(run, "aaaa", _spec("aaaa", 0, 0.2), curve=[0.25, 0.5])
    counts = tracking.export_tracking(run, "tensorboard", target)
    assert (counts.logged, counts.skipped) == (1, 2)
    assert scalars("aaaa", "val_accuracy") == [(1, 0.25), (2, 0.5)]


def test_tensorboard_never_overwrites_a_foreign_folder(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard export needs the tensorboard extra")
    run = _run_dir(tmp_path)
    foreign = tmp_path / "tb" / "tiny" / "aaaa"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="did not write"):
        tracking.export_tracking(run, "tensorboard", tmp_path / "tb", trial_ids=["aaaa"])
    assert (foreign / "notes.txt").read_text() == "mine"


def test_mlflow_export_reads_back_and_is_idempotent(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow export needs the mlflow extra")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = _run_dir(tmp_path)
    store = tmp_path / "mlruns"
    counts = tracking.export_tracking(run, "mlflow", store)
    assert (counts.logged, counts.skipped) == (3, 0)
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("tiny").experiment_id

    def runs_of(tid: str) -> list:
        return client.search_runs([experiment], f"tags.`{tracking.TRIAL_TAG}` = '{tid}'")

    (a,) = runs_of("aaaa")
    assert a.data.params["train.learning_rate"] == "0.01"
    assert a.data.tags["genodl.setting"] == "train.learning_rate=0.01"
    assert a.data.metrics["final/test_accuracy"] == pytest.approx(0.7)
    history = client.get_metric_history(a.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.625), (3, 0.75)]
    (c,) = runs_of("cccc")
    assert c.info.status == "FAILED"

    counts = tracking.export_tracking(run, "mlflow", store)
    assert (counts.logged, counts.skipped) == (0, 3)
    assert len(client.search_runs([experiment])) == 3

    _done(run, "aaaa", _spec("aaaa", 0, 0.2), curve=[0.25, 0.5])
    tracking.export_tracking(run, "mlflow", store)
    (a2,) = runs_of("aaaa")
    assert a2.info.run_id != a.info.run_id
    history = client.get_metric_history(a2.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.25), (2, 0.5)]


def test_export_of_a_folder_without_a_sweep_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="sweep.json"):
        list(tracking.run_trials(tmp_path))
