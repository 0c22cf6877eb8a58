"""D-GEX through the trial machinery: the example spec, the record, noise, the CLI's --json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import genodl_core.catalog  # noqa: F401
from genodl_core import toml
from genodl_core.records import is_complete, load_record
from genodl_core.spec import load_spec
from genodl_core.training.trial import run_trial


EXAMPLE = Path(__file__).resolve().parents[2] / "jobs" / "examples" / "dgex_trial_small.toml"


pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("torch_one_thread")]


def _example(epochs: int) -> dict:
    spec = toml.loads(EXAMPLE.read_text())
    spec["train"]["epochs"] = epochs
    return spec


def test_example_spec_uses_the_paper_settings():
    spec = load_spec(EXAMPLE)
    assert spec.model.name == "dgex" and spec.data.name == "synthetic_dgex"
    assert spec.train.batch_size == 200 and spec.train.momentum == 0.5
    assert spec.model.params.lr_reference
    assert [s.name for s in spec.noise] == ["gaussian", "target_gaussian"]


def test_trial_record_has_metrics_curves_and_gene_arrays(tmp_path):
    result = run_trial(_example(epochs=6), tmp_path)
    assert result.ok, result.error
    assert is_complete(result.path)
    record = load_record(result.path)
    final = record.result["final"]
    for key in ("val_mae", "val_mae_std", "test_mae", "test_mae_std", "best_epoch",
                "epochs_run", "n_parameters", "train_seconds", "lr_val_mae",
                "relative_improvement", "share_genes_better_than_lr"):
        assert key in final, key
    curves = record.result["curves"]
    assert {"loss", "mae", "val_mae", "learning_rate", "epoch_seconds"} <= set(curves)
    assert all(len(v) == 6 for v in curves.values())
    arrays = record.arrays()
    assert arrays["target_ids"].shape == (200,) and arrays["target_ids"][0] == "TG00000"
    np.testing.assert_allclose(arrays["val_mae_per_gene"].mean(), final["val_mae"], rtol=1e-6)
    assert arrays["lr_val_mae_per_gene"].shape == (200,)
    kinds = [step["kind"] for step in record.result["noise"]]
    assert kinds == ["gaussian", "target_gaussian"]


def test_training_noise_degrades_dgex_and_its_lr_reference(tmp_path):
    clean = _example(epochs=3)
    clean.pop("noise")
    noisy = _example(epochs=3)
    noisy["noise"] = [{"kind": "target_gaussian", "std": 1.5}]
    a = run_trial(clean, tmp_path)
    b = run_trial(noisy, tmp_path)
    assert a.ok and b.ok, (a.error, b.error)
    assert a.trial_id != b.trial_id
    # The LR reference is fitted on the same noisy data as D-GEX, so it degrades too.
    assert b.final["lr_val_mae"] > a.final["lr_val_mae"]
    assert b.final["val_mae"] > a.final["val_mae"]


def test_cli_json_reports_dgex_and_lr(tmp_path, capsys):
    from workflows.cli import main

    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(_example(epochs=2)))
    assert main(["trial", str(spec_path), "--out", str(tmp_path / "trials"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["state"] == "done"
    for key in ("val_mae", "lr_val_mae", "relative_improvement"):
        assert isinstance(summary[key], float)
