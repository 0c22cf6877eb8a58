"""DeepSEA, DanQ and the seed's transformer model: shapes, parameter counts, trials end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genodl_core import records
from genodl_core.models.deepsea import (ARCHITECTURES, DeepSEAParams, TransformerParams,
                                        build_net, param_count)
from genodl_core.training.multilabel import prevalence_bias
from genodl_core.training.trial import run_trial
from tests.unit.conftest import interrupting_at

TINY_DATA = {"source": "synthetic_dna", "n_train": 256, "n_val": 128, "n_test": 64,
             "length": 120, "central_bin": 48, "n_targets": 6}
TINY_MODELS = {
    "deepsea": {"conv": [8, 8, 8], "kernel": 6, "pool": 3, "dense": 16},
    "danq": {"filters": 8, "kernel": 10, "pool": 5, "lstm": 8, "dense": 16},
    "deepsea_transformer": {"embedding": 8, "blocks": [16, 16], "expansion": 4, "layers": 1,
                            "heads": 2, "head_dim": 4, "inner": 16, "hidden": 16,
                            "warmup_steps": 3},
}


def test_reference_parameter_counts():
    """Full-size networks at 1,000 bp and 919 targets: the published sizes."""
    deepsea = param_count("deepsea", DeepSEAParams(), 1000, 919)
    # 3 convolutions, the 960 x 53 -> 925 dense layer and the 919 outputs.
    expected = (4 * 8 * 320 + 320 + 320 * 8 * 480 + 480 + 480 * 8 * 960 + 960
                + 960 * 53 * 925 + 925 + 925 * 919 + 919)
    assert deepsea == expected
    assert 46e6 < param_count("danq", ARCHITECTURES["danq"][0](), 1000, 919) < 48e6
    assert 38e6 < param_count("deepsea_transformer", TransformerParams(), 1000, 919) < 41e6


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_forward_shapes_and_seeded_weights(name):
    params = ARCHITECTURES[name][0](**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in TINY_MODELS[name].items()})
    codes = torch.randint(0, 5, (3, 120), dtype=torch.uint8)
    state = torch.random.get_rng_state()
    a, b = build_net(name, params, 120, 6, seed=7), build_net(name, params, 120, 6, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    a.eval()
    assert a(codes).shape == (3, 6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_deepsea_channels_last_computes_the_same_network():
    """The plan's channels-last DeepSEA (1 x k conv2d on NHWC tensors, dense widths padded to
    aligned sizes) gives the Conv1d network's logits and gradients (float64, so only the
    layout differs); 13 hidden units and 6 targets are both padded."""
    params = DeepSEAParams(conv=(8, 8, 8), kernel=6, pool=3, dense=13)
    net = build_net("deepsea", params, 120, 6, seed=3).double().eval()
    codes = torch.randint(0, 5, (4, 120), dtype=torch.uint8)
    outs, grads = [], []
    for layout in (False, True):
        net.channels_last = layout
        net.zero_grad()
        out = net(codes)
        out.sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_dense_chain_with_dropout_runs_unpadded():
    from genodl_core.models.deepsea import dense_aligned

    torch.manual_seed(0)
    layers = [torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Dropout(0.5),
              torch.nn.Linear(7, 3)]
    h = torch.rand(4, 5)
    torch.manual_seed(1)
    expected = torch.nn.Sequential(*layers)(h)
    torch.manual_seed(1)
    torch.testing.assert_close(dense_aligned(layers, h), expected, rtol=0, atol=0)
    padded = dense_aligned(layers[:2] + layers[3:], h)
    assert padded.shape == (4, 3)
    torch.testing.assert_close(padded, layers[3](layers[1](layers[0](h))))


def test_deepsea_alone_plans_channels_last_and_compile_on_cuda():
    from genodl_core.registry import MODELS
    from genodl_core.training.plan import RunSettings, choose_plan

    settings = RunSettings(checkpoint_interval_s=None)
    deepsea = choose_plan("cuda", "bf16", MODELS.get("deepsea").fn.switches(1),
                          settings=settings, triton=False).switches
    assert deepsea.channels_last and deepsea.compile and deepsea.step_graphs
    danq = choose_plan("cuda", "bf16", MODELS.get("danq").fn.switches(1),
                       settings=settings, triton=False).switches
    assert not danq.channels_last and not danq.compile and danq.fused_optimizer
    # Measured on the GPU only: a CPU trial keeps the Conv1d layers (and says so).
    assert not {"channels_last", "compile", "step_graphs"} & MODELS.get("deepsea").fn.switches(
        1, "cpu")
    off = choose_plan("cuda", "bf16", MODELS.get("deepsea").fn.switches(1),
                      settings=RunSettings(checkpoint_interval_s=None, step_graphs=False),
                      triton=False).switches
    assert off.compile and not off.step_graphs


def test_prevalence_bias_is_the_log_odds():
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.uint8)
    np.testing.assert_allclose(prevalence_bias(y).numpy(), np.log([1 / 3, 1 / 3]), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_trial_end_to_end_with_noise(name, tmp_path):
    spec = {"seed": 2, "model": {"name": name, **TINY_MODELS[name]}, "data": TINY_DATA,
            "noise": [{"kind": "missed_peaks", "rate": 0.3}, {"kind": "n_mask"}],
            "train": {"epochs": 2, "batch_size": 32, "optimizer": "adam",
                      "learning_rate": 0.003}}
    result = run_trial(spec, tmp_path, raise_errors=True)
    assert result.ok
    final = result.final
    for key in ("val_roc_auc", "val_pr_auc", "val_roc_auc_weighted", "test_roc_auc",
                "val_defined_targets", "val_roc_auc_median_tf"):
        assert key in final
    assert 0.0 <= final["val_roc_auc"] <= 1.0 and final["val_defined_targets"] <= 6
    record = json.loads((result.path / records.RESULT_FILE).read_text())
    noise = record["noise"]
    assert [n["kind"] for n in noise] == ["missed_peaks", "n_mask"]
    assert len(noise[0]["n_flipped_per_target"]) == 6
    assert record["extra"]["target_names"][0].startswith("tf_")
    assert record["data"]["ceiling"]["val_roc_auc"] > 0.8
    with np.load(result.path / records.ARRAYS_FILE) as arrays:
        names = set(arrays.files)
        assert {"val_roc_auc_per_target", "train_prevalence", "val_probabilities"} <= names
        mask = arrays[noise[0]["flip_mask"]["array"]]
        assert mask.shape == (256, 6) and mask.sum() == noise[0]["n_flipped"]
    if name == "deepsea":  # the gather keeps per-target areas with the target names
        h5py = pytest.importorskip("h5py", reason="summary.h5 needs h5py")
        from genodl_core.results.summary import gather

        with h5py.File(gather(tmp_path), "r") as f:
            assert f["genes/val_roc_auc_per_target"].shape == (1, 6)
            assert f["genes/gene_ids"][0].decode() == record["extra"]["target_names"][0]


def test_streamed_training_matches_resident(tmp_path):
    """Host-streamed batches train to the same numbers as the resident split (CPU)."""
    finals = []
    for resident in ("yes", "no"):
        spec = {"seed": 1, "device": "cpu",
                "model": {"name": "deepsea", **TINY_MODELS["deepsea"],
                          "resident": resident, "dropout": [0, 0, 0]},
                "data": TINY_DATA, "train": {"epochs": 2, "batch_size": 32}}
        result = run_trial(spec, tmp_path / resident, raise_errors=True)
        record = json.loads((result.path / records.RESULT_FILE).read_text())
        assert record["extra"]["data_resident"] is (resident == "yes")
        assert record["extra"]["step_graph"] == "not used"       # CPU: no CUDA graphs
        finals.append(result.final)
    assert finals[0]["val_loss"] == pytest.approx(finals[1]["val_loss"], rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_steps_train_like_eager_steps_on_cuda(tmp_path):
    """On CUDA DeepSEA trials replay captured steps, resident or streamed (the record says
    so), and with no dropout (the masks of a graph differ from eager ones) end where eager
    steps end; the last, partial batch of each epoch runs eagerly on the graph's gradient
    buffers."""
    from genodl_core.training.plan import RunSettings

    finals = {}
    for graphs, resident in ((False, "yes"), (True, "yes"), (True, "no")):
        spec = {"seed": 1, "device": "cuda", "precision": "fp32",
                "model": {"name": "deepsea", **TINY_MODELS["deepsea"], "resident": resident,
                          "dropout": [0, 0, 0]},
                "data": TINY_DATA, "train": {"epochs": 3, "batch_size": 48}}
        settings = RunSettings(checkpoint_interval_s=None, step_graphs=graphs)
        result = run_trial(spec, tmp_path / f"{graphs}{resident}", raise_errors=True,
                           settings=settings)
        record = json.loads((result.path / records.RESULT_FILE).read_text())
        assert record["extra"]["step_graph"] == ("captured" if graphs else "not used")
        finals[graphs, resident] = result.final
    eager = finals[False, "yes"]
    for key in ((True, "yes"), (True, "no")):
        assert finals[key]["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4), key
        assert finals[key]["loss"] == pytest.approx(eager["loss"], rel=1e-4), key


def test_transformer_warms_up_and_resumes_from_a_checkpoint(tmp_path, monkeypatch):
    """The warm-up's step count survives a checkpoint: a resumed trial ends as an
    uninterrupted one, bit for bit, on the CPU."""
    from genodl_core.training.checkpoint import CHECKPOINT_FILE
    from genodl_core.training.plan import RunSettings

    spec = {"seed": 4, "model": {"name": "deepsea_transformer",
                                 **{**TINY_MODELS["deepsea_transformer"], "warmup_steps": 12}},
            "data": TINY_DATA, "train": {"epochs": 3, "batch_size": 64, "optimizer": "adam",
                                         "learning_rate": 0.002}}
    every_epoch = RunSettings(checkpoint_interval_s=1e-9)
    whole = records.load_record(run_trial(spec, tmp_path / "whole", raise_errors=True).path)
    assert whole.result["extra"]["warmup_steps"] == 12
    interrupting_at(monkeypatch, 1)
    broken = run_trial(spec, tmp_path / "resumed", settings=every_epoch)
    assert not broken.ok and (broken.path / CHECKPOINT_FILE).is_file()
    resumed = run_trial(spec, tmp_path / "resumed", settings=every_epoch, raise_errors=True)
    again = records.load_record(resumed.path).result
    assert again["resumed_from_epoch"] == 1
    for key in ("loss", "val_loss", "val_roc_auc"):
        np.testing.assert_array_equal(whole.result["curves"][key], again["curves"][key])
