"""CNNC family: the reference network's size, packs equal to single trials, options, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genodl_core.errors import SpecError
from genodl_core.models.cnnc import (CNNCParams, StackedCNNC, WeightedCrossEntropyObjective,
                                     class_weights)
from genodl_core.training.trial import run_pack, run_trial

TINY = {"filters": [4, 6], "convs_per_block": 1, "dense": [8]}
DATA = {"source": "synthetic_cnnc", "n_pairs": 80, "n_cells": 40, "bins": 8}
TRAIN = {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "batch_size": 16,
         "epochs": 2}


def _spec(seed: int = 1, **model):
    return {"seed": seed, "device": "cpu", "precision": "fp32",
            "model": {"name": "cnnc", **TINY, **model}, "data": DATA, "train": TRAIN}


def test_reference_network_has_the_keras_parameter_count():
    params = CNNCParams()
    net = StackedCNNC(params, 32, params.n_outputs(3))
    # 320 + 9,248 + 18,496 + 36,928 + 73,856 + 147,584 (convs) + 262,656 + 1,539 (dense)
    assert sum(p.numel() for p in net.parameters()) == 550627 == params.n_parameters(32, 3)
    assert params.sizes(32) == [15, 6, 2]
    assert net.eval()(torch.rand(5, 1024)).shape == (5, 3)
    with pytest.raises(SpecError, match="filters"):
        CNNCParams(filters=(8, 8, 8, 8)).sizes(32)


def test_stacked_forward_equals_each_trial_and_dropout_ignores_the_pack():
    params = CNNCParams(filters=(4, 6), dense=(8,))
    nets = [StackedCNNC(params, 16, 2).initialise([s]) for s in (1, 2)]
    pack = StackedCNNC.stack(nets)
    x = torch.rand(3, 256)
    both = pack.eval()(x.expand(2, -1, -1))
    for t, net in enumerate(nets):
        torch.testing.assert_close(both[t], net.eval()(x), rtol=1e-5, atol=1e-6)
    alone = nets[0].train()(x)
    packed = pack.train()(x.expand(2, -1, -1))
    torch.testing.assert_close(packed[0], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(nets[0](x), alone)  # the next step draws other masks


def test_a_pack_of_two_equals_two_single_trials(tmp_path):
    specs = [_spec(seed=s, nesterov=True) for s in (1, 2)]
    alone = [run_trial(s, tmp_path / "alone", raise_errors=True) for s in specs]
    packed = run_pack(specs, tmp_path / "pack", raise_errors=True)
    for a, p in zip(alone, packed):
        for key in ("loss", "val_loss", "val_roc_auc", "test_pr_auc"):
            assert p.final[key] == pytest.approx(a.final[key], rel=1e-4, abs=1e-5), key
    assert alone[0].final["val_loss"] != alone[1].final["val_loss"]
    final = alone[0].final
    for key in ("val_roc_auc", "val_pr_auc", "val_balanced_accuracy", "test_roc_auc"):
        assert 0.0 <= final[key] <= 1.0, key


@pytest.mark.parametrize("model", [{"variant": "abstaining"}, {"balance_classes": True}])
def test_abstaining_and_weighted_variants_train(tmp_path, model):
    result = run_trial(_spec(**model), tmp_path, raise_errors=True)
    assert np.isfinite(result.final["val_loss"])
    if model.get("variant") == "abstaining":
        assert "val_abstention" in result.final


def test_class_weights_weight_each_sample_by_its_true_class():
    y = np.array([0, 0, 0, 1])
    assert class_weights(CNNCParams(balance_classes=True), y, 2) == [4 / 6, 2.0]
    assert class_weights(CNNCParams(), y, 2) is None
    with pytest.raises(SpecError, match="class_weights"):
        class_weights(CNNCParams(class_weights=(1.0, 2.0, 3.0)), y, 2)
    logits = torch.zeros(2, 2)
    losses = WeightedCrossEntropyObjective([1.0, 3.0]).per_sample_loss(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(losses, torch.tensor([1.0, 3.0]) * float(np.log(2)))


def test_nesterov_needs_sgd_with_momentum(tmp_path):
    spec = _spec(nesterov=True)
    spec["train"] = {**TRAIN, "momentum": 0.0}
    with pytest.raises(SpecError, match="nesterov"):
        run_trial(spec, tmp_path, raise_errors=True)


def test_bench_runs_cnnc_plain_and_packed():
    from genodl_core.bench import BenchConfig, run_benchmark
    from genodl_core.models.cnnc import cnnc_forward_flops

    # the reference network: ~49 MFLOPs per 32 x 32 image
    assert 4.8e7 < cnnc_forward_flops(CNNCParams(), 1024, 2) < 5.0e7
    report = run_benchmark(BenchConfig(model="cnnc", quick=True, device="cpu", epochs=2,
                                       modes=("plain", "batched"), pack=2))
    plain, packed = report.modes
    assert (plain.trials, packed.trials) == (1, 2)
    assert report.shape["n_features"] == 256 and report.shape["n_train"] == 120
    assert plain.tflops > 0 and packed.trials_per_gpu_hour > 0


def test_examples_validate():
    from pathlib import Path

    from genodl_core.spec import load_spec
    from workflows.sweep import load_sweep

    root = Path(__file__).resolve().parents[2] / "jobs" / "examples"
    spec = load_spec(root / "cnnc_trial_small.toml")
    assert spec.model.name == "cnnc" and spec.data.params.bins == 32
    sweep = load_sweep(root / "cnnc_label_noise.toml")
    assert len(sweep.trials) == 16
    assert {t.spec["noise"][0]["kind"] for t in sweep.trials} == {"class_conditional_flip"}


def test_fast_path_switches_change_layout_and_scheduling_not_the_arithmetic():
    from genodl_core.models.cnnc import CNNCFamily
    from genodl_core.training.plan import RunSettings, choose_plan

    family = CNNCFamily()
    single = choose_plan("cuda", "bf16", family.switches(1), settings=RunSettings(),
                         triton=True).switches
    packed = choose_plan("cuda", "bf16", family.switches(4), pack_size=4,
                         settings=RunSettings(), triton=True).switches
    assert single.cudnn_benchmark and single.fused_optimizer and not single.fused_update
    assert packed.cudnn_benchmark and not packed.fused_optimizer and not packed.bf16_inputs
    assert single.channels_last and single.compile and packed.channels_last and packed.compile
    on_cpu = family.switches(4, "cpu")
    assert "channels_last" not in on_cpu and "compile" not in on_cpu


def test_channels_last_pack_gives_the_same_outputs_masks_and_gradients(monkeypatch):
    import genodl_core.models.cnnc as cnnc

    layouts = []

    def recording(h, *args, **options):
        layouts.append(h.is_contiguous(memory_format=torch.channels_last))
        return grouped_conv(h, *args, **options)

    grouped_conv = cnnc.grouped_conv
    monkeypatch.setattr(cnnc, "grouped_conv", recording)
    params = CNNCParams(filters=(4, 6), dense=(8,))
    nets = [StackedCNNC(params, 16, 3).initialise([s]) for s in (3, 4)]
    plain, nhwc = StackedCNNC.stack(nets).double(), StackedCNNC.stack(nets).double()
    nhwc.channels_last = True
    x = torch.rand(2, 5, 256, dtype=torch.float64)
    outs = []
    for module in (plain, nhwc):
        module.train()
        module.zero_grad()
        first = module(x)
        second = module(x)              # the next step's masks
        (first.square().sum() + second.sum()).backward()
        outs.append((first, second, [p.grad.clone() for p in module.parameters()]))
    (a1, a2, ga), (b1, b2, gb) = outs
    assert layouts == [False] * 8 + [True] * 8    # 2 steps x 4 convolutions each way
    torch.testing.assert_close(b1, a1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b2, a2, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a1, a2)
    for g, h in zip(ga, gb):
        torch.testing.assert_close(h, g, rtol=1e-10, atol=1e-12)
