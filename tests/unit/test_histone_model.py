"""Histone families: seed 002's network exactly, packs equal to single trials, the classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genodl_core.models.histone import (DeepChromeParams, HistoneParams, StackedConvNet)
from genodl_core.training.trial import run_pack, run_trial
from tests.unit.conftest import interrupting_at



DATA = {"n_cell_types": 4, "n_genes": 60, "n_bins": 45, "n_val_cell_types": 1,
        "n_test_cell_types": 1}
TRAIN = {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 25, "epochs": 2}


def _spec(model: str, source: str, seed: int = 1, **model_params):
    return {"seed": seed, "device": "cpu", "precision": "fp32",
            "model": {"name": model, **model_params},
            "data": {"source": source, **DATA}, "train": TRAIN}


def test_seed_network_has_28221_parameters_in_keras_layers():
    net = StackedConvNet(HistoneParams().layout(), 5, 100)
    counts = [p[0].numel() for p in net.parameters()]
    assert sum(counts) == 28221 == HistoneParams().layout().n_parameters(5, 100)
    # conv 2,550 / 12,550 / 7,550 and dense 5,050 / 510 / 11 as the seed's layer table
    conv = [w.numel() + b.numel() for w, b in zip(net.conv_w, net.conv_b)]
    dense = [w.numel() + b.numel() for w, b in zip(net.dense_w, net.dense_b)]
    assert conv == [2550, 12550, 7550] and dense == [5050, 510, 11]
    assert net.flat == 100  # 100 -> 20 -> 6 -> 2 positions x 50 filters
    out = net.eval()(torch.rand(3, 500) * 10)
    assert out.shape == (3, 1)


def test_keras_same_padding_puts_the_odd_pad_right():
    layout = HistoneParams(conv=((1, 2, 1),), pool=(1,), dense=()).layout()
    net = StackedConvNet(layout, 1, 4)
    with torch.no_grad():
        net.conv_w[0].copy_(torch.tensor([[[[1.0, 10.0]]]]))
        net.dense_w[0].copy_(torch.eye(4).view(1, 4, 4)[:, :, :1])
        layout_none = net.layout.__class__(**{**net.layout.__dict__, "input_transform": "none",
                                              "leaky_slope": 1.0})
        net.layout = layout_none
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # total pad 1, all on the right: outputs x0 + 10 x1, ..., x3 + 10 * 0
    h = torch.nn.functional.pad(x.view(1, 1, 4), (0, 1))
    expected = torch.nn.functional.conv1d(h, torch.tensor([[[1.0, 10.0]]]))[0, 0, 0]
    assert net.eval()(x)[0, 0].item() == pytest.approx(expected.item())


@pytest.mark.parametrize("model, source, keys", [
    ("histone", "synthetic_histone", ("loss", "val_mse", "val_pearson", "test_pearson")),
    ("deepchrome", "synthetic_histone_labels", ("loss", "val_loss", "val_auroc")),
])
def test_a_pack_of_two_equals_two_single_trials(tmp_path, model, source, keys):
    specs = [_spec(model, source, seed=s) for s in (1, 2)]
    alone = [run_trial(s, tmp_path / "alone", raise_errors=True) for s in specs]
    packed = run_pack(specs, tmp_path / "pack", raise_errors=True)
    for a, p in zip(alone, packed):
        for key in keys:
            assert p.final[key] == pytest.approx(a.final[key], rel=1e-4, abs=1e-5), key
    assert alone[0].final[keys[1]] != alone[1].final[keys[1]]


def test_regression_record_has_per_cell_type_values(tmp_path):
    result = run_trial(_spec("histone", "synthetic_histone"), tmp_path, raise_errors=True)
    final = result.final
    for key in ("val_mse", "val_pearson", "val_spearman", "test_pearson", "oracle_val_pearson",
                "val_pearson_ct_mean", "val_pearson_ct_min"):
        assert np.isfinite(final[key]), key
    per_ct = [k for k in final if k.startswith("val_pearson_ct_CT")]
    assert len(per_ct) == 1  # one held-out validation cell type
    arrays = np.load(result.path / "arrays.npz")
    assert arrays["val_pearson_per_cell_type"].shape == (1,)
    assert arrays["val_predictions"].shape == (DATA["n_genes"] // 5,)


@pytest.mark.parametrize("variant", ["base", "abstaining"])
def test_deepchrome_classifier_reports_auroc(tmp_path, variant):
    params = DeepChromeParams(variant=variant)
    assert params.n_outputs(2) == (3 if variant == "abstaining" else 2)
    result = run_trial(_spec("deepchrome", "synthetic_histone_labels", variant=variant),
                       tmp_path, raise_errors=True)
    assert 0.0 <= result.final["val_auroc"] <= 1.0
    assert any(k.startswith("val_auroc_ct_") for k in result.final)
    if variant == "abstaining":
        assert "val_abstention" in result.final


def test_bench_runs_histone_plain_and_packed():
    from genodl_core.bench import BenchConfig, run_benchmark

    report = run_benchmark(BenchConfig(model="histone", quick=True, device="cpu", epochs=2,
                                       modes=("plain", "batched"), pack=2))
    plain, packed = report.modes
    assert (plain.trials, packed.trials) == (1, 2)
    assert plain.val_metric == "val_pearson" and report.shape["n_features"] == 500
    assert plain.tflops > 0 and packed.trials_per_gpu_hour > 0


def test_examples_validate():
    from pathlib import Path

    from genodl_core.spec import load_spec
    from workflows.sweep import load_sweep

    root = Path(__file__).resolve().parents[2] / "jobs" / "examples"
    spec = load_spec(root / "histone_trial_small.toml")
    assert spec.model.name == "histone" and spec.train.batch_size == 250
    sweep = load_sweep(root / "histone_noise.toml")
    assert len(sweep.trials) == 12


def test_dropout_masks_depend_on_seed_and_step_not_on_the_pack():
    layout = HistoneParams().layout()
    nets = [StackedConvNet(layout, 5, 100) for _ in range(2)]
    for net, seed in zip(nets, (11, 12)):
        net.seed_dropout([seed])
    pack = StackedConvNet.stack(nets)
    h = torch.ones(1, 250, 100)
    first = nets[0]._dropout_mask(h)
    assert abs((first > 0).float().mean().item() - 0.7) < 0.01  # keep 1 - 0.3
    assert not torch.equal(first, nets[0]._dropout_mask(h))      # the next step differs
    both = pack._dropout_mask(h.expand(2, -1, -1))
    assert torch.equal(both[0], first[0]) and not torch.equal(both[0], both[1])


def test_interrupted_histone_trial_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from genodl_core import records
    from genodl_core.training.plan import RunSettings

    every_epoch = RunSettings(checkpoint_interval_s=1e-9)
    spec = {**_spec("histone", "synthetic_histone"), "train": {**TRAIN, "epochs": 3}}
    whole = records.load_record(run_trial(spec, tmp_path / "whole", raise_errors=True).path)
    interrupting_at(monkeypatch, 1)
    assert not run_trial(spec, tmp_path / "resumed", settings=every_epoch).ok
    resumed = run_trial(spec, tmp_path / "resumed", settings=every_epoch, raise_errors=True)
    again = records.load_record(resumed.path)
    assert again.result["resumed_from_epoch"] == 1
    for key in ("loss", "val_mse", "val_pearson"):  # dropout masks resume with the step count
        np.testing.assert_array_equal(whole.result["curves"][key], again.result["curves"][key])
