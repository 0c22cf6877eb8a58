"""The fast path computes what the plain loop computes (CPU checks; CUDA ones when available)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genodl_core.data.loading import load_dataset
from genodl_core.errors import SpecError
from genodl_core.kernels import triton_available
from genodl_core.models.nt3 import NT3Params, build_nt3
from genodl_core.models.nt3_fast import ChannelsLastNT3, supports_channels_last
from genodl_core.records import load_record
from genodl_core.registry import MODELS
from genodl_core.spec import spec_from_dict
from genodl_core.training import engine
from genodl_core.training.device import resolve_precision
from genodl_core.training.family import Member
from genodl_core.training.plan import (CONV_KERNEL_ENV, CPU_SWITCHES, CUDA_SWITCHES,
                                       FAST_PATH_ENV,
                                       FUSED_ACTIVATIONS_ENV, FUSED_UPDATE_ENV, STEP_GRAPHS_ENV,
                                       ExecutionPlan, RunSettings, Switches, choose_plan)
from genodl_core.training.precision import cudnn_benchmark
from genodl_core.training.trial import run_trial, run_trials


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small_spec(seed=1, device="cpu", precision="auto", epochs=3, **model):
    return spec_from_dict({
        "seed": seed, "device": device, "precision": precision,
        "model": {"name": "nt3", "conv": [[4, 5, 1], [4, 5, 1]], "pool": [1, 4], "dense": [16],
                  **model},
        "data": {"source": "synthetic_nt3", "n_train": 80, "n_test": 48, "n_features": 160},
        "train": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.01}})


@pytest.mark.parametrize("params", [
    NT3Params(conv=((4, 5, 1), (6, 3, 1)), pool=(1, 4), dense=(8,)),
    NT3Params(conv=((3, 7, 2), (5, 3, 3)), pool=(2, 2), dense=(8, 4), activation="tanh"),
    NT3Params(conv=((4, 5, 1),), pool=(3,), dense=(), variant="abstaining"),
])
def test_channels_last_network_gives_the_same_logits(params):
    net = build_nt3(params, 90, 3, seed=4)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(6, 90)).astype(np.float32))
    torch.testing.assert_close(ChannelsLastNT3(net)(x), net(x), rtol=1e-5, atol=1e-6)
    # Gradients flow to the same parameters.
    ChannelsLastNT3(net)(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_locally_connected_network_is_not_converted():
    params = NT3Params(conv=((2, 3, 1),), pool=(2,), dense=(4,), locally_connected=True)
    net = build_nt3(params, 20, 2, seed=0)
    assert not supports_channels_last(net)
    with pytest.raises(TypeError):
        ChannelsLastNT3(net)


#: Environment switches that each turn one speed-up of the fast path off.
SWITCHES = [(CONV_KERNEL_ENV, "conv_kernel"), (FUSED_UPDATE_ENV, "fused_update"),
            (STEP_GRAPHS_ENV, "step_graphs"), (FUSED_ACTIVATIONS_ENV, "fused_activations")]

#: A family that could use every switch: what choose_plan itself turns on and off.
EVERY_SWITCH = frozenset(f.name for f in dataclasses.fields(Switches))
NT3 = MODELS.get("nt3").fn


def plan_switches(device, precision, used=EVERY_SWITCH, env=None, triton=True):
    return choose_plan(device, precision, used, settings=RunSettings.from_env(env or {}),
                       triton=triton).switches


@pytest.mark.parametrize("triton", [True, False])
def test_default_path_per_device(triton):
    assert plan_switches("cpu", "fp32", triton=triton) == CPU_SWITCHES
    assert plan_switches("cpu", "bf16", triton=triton) == CPU_SWITCHES
    assert plan_switches("cuda", "bf16", triton=triton) == CUDA_SWITCHES.replace(
        conv_kernel=triton, fused_update=triton)
    # A family's plans hold only the switches it can use (alone or in packs).
    for pack_size in (1, 4):
        used = NT3.switches(pack_size)
        assert plan_switches("cuda", "bf16", used, triton=triton) == CUDA_SWITCHES.replace(
            conv_kernel=triton, fused_update=triton).keep(used)
    fp32 = plan_switches("cuda", "fp32", triton=triton)
    assert not fp32.bf16_inputs
    assert not fp32.conv_kernel      # the kernels are for bf16 only
    assert not fp32.fused_update
    assert fp32 == CUDA_SWITCHES.replace(bf16_inputs=False, conv_kernel=False,
                                         fused_update=False)
    assert plan_switches("cuda", "bf16", env={FAST_PATH_ENV: "off"}) == Switches()
    with pytest.raises(SpecError) as err:
        RunSettings.from_env({FAST_PATH_ENV: "fastest"})
    assert FAST_PATH_ENV in str(err.value)
    assert "fastest" in str(err.value) and "off" in str(err.value)


def test_settings_read_the_process_environment(monkeypatch):
    for name in (FAST_PATH_ENV, *(env for env, _ in SWITCHES)):
        monkeypatch.delenv(name, raising=False)
    assert RunSettings.from_env() == RunSettings()
    monkeypatch.setenv(FAST_PATH_ENV, "off")
    assert RunSettings.from_env() == RunSettings(fast_path="off")


@pytest.mark.parametrize("env,option", SWITCHES)
def test_each_switch_turns_only_its_speedup_off(env, option):
    assert RunSettings.from_env({env: "off"}) == RunSettings().replace(**{option: False})
    assert RunSettings.from_env({env: "on"}) == RunSettings()
    default = plan_switches("cuda", "bf16")
    assert default == CUDA_SWITCHES and getattr(default, option)
    assert plan_switches("cuda", "bf16", env={env: "off"}) == default.replace(**{option: False})
    with pytest.raises(SpecError) as err:
        RunSettings.from_env({env: "maybe"})
    assert env in str(err.value) and "maybe" in str(err.value) and "off" in str(err.value)


def test_labels():
    assert Switches(channels_last=True).label() == "nhwc" and Switches().label() == "plain"


def test_cudnn_benchmark_is_restored():
    saved = torch.backends.cudnn.benchmark
    with cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == saved


def curves(spec, tmp, switches=None, settings=None):
    """The trial's curves: through run_trial as the runner plans it (``switches`` None), or
    with the given switches forced into its plan (on any device)."""
    if switches is None:
        settings = settings or RunSettings(checkpoint_interval_s=None)
        result = run_trial(spec, tmp, raise_errors=True, settings=settings)
        return load_record(result.path).result["curves"]
    member = Member(spec=spec, dataset=load_dataset(spec.data)[0])
    family = MODELS.get(spec.model.name).fn
    family.check(member)
    plan = ExecutionPlan(device=spec.device, switches=switches,
                         precision=resolve_precision(spec.precision, spec.device))
    (outcome,) = engine.train(family.stack([member], plan), [member], device=spec.device)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome.curves


def test_cpu_path_is_the_planned_one_and_deterministic(tmp_path):
    spec = small_spec()
    default = curves(spec, tmp_path / "a")
    planned = curves(spec, tmp_path / "b", CPU_SWITCHES)
    for key in default:
        if key != "epoch_seconds":
            assert default[key] == planned[key], key
    record = load_record(run_trial(spec, tmp_path / "c", raise_errors=True).path).result
    assert record["engine"]["mode"] == "fast" and record["engine"]["label"] == "nhwc+convblk"
    assert record["engine"]["cpu_threads"] == torch.get_num_threads()


@pytest.mark.parametrize("variant", ["base", "abstaining"])
def test_cpu_usable_speedups_keep_the_trial(tmp_path, variant):
    """Layout, convolution blocks and evaluation batch change only rounding: the curves
    agree closely."""
    spec = small_spec(variant=variant)
    plain = curves(spec, tmp_path / "a", Switches())
    fast = curves(spec, tmp_path / "b", Switches(channels_last=True, conv_blocks=True,
                                                  eval_batch_size=64))
    for key in plain:
        if key != "epoch_seconds":
            np.testing.assert_allclose(fast[key], plain[key], rtol=1e-4, atol=1e-5, err_msg=key)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
#: The in-backward update is planned only where Triton runs.
kernels = pytest.mark.skipif(not triton_available(), reason="needs Triton")


@cuda
def test_cuda_fast_path_accuracy_holds(tmp_path):
    """bf16 + every speed-up of the default path against the plain fp32 port, same seed."""
    spec = small_spec(device="cuda", epochs=8)
    plain = curves(spec.replace(precision="fp32"), tmp_path / "a", Switches())
    fast = curves(spec, tmp_path / "b")
    assert abs(fast["val_accuracy"][-1] - plain["val_accuracy"][-1]) <= 0.05
    np.testing.assert_allclose(fast["loss"], plain["loss"], rtol=0.05)


@cuda
@pytest.mark.parametrize("option", [f.name for f in dataclasses.fields(Switches)
                                    if f.type in (bool, "bool")])
def test_cuda_each_speedup_alone_runs(tmp_path, option):
    spec = small_spec(device="cuda", epochs=2)
    out = curves(spec, tmp_path, Switches(**{option: True}))
    assert np.isfinite(out["loss"]).all()


@cuda
@kernels
def test_cuda_dgex_backward_updates_match_torch_sgd(tmp_path):
    """D-GEX with its dense layers updated in backward against torch's SGD step, bf16 both."""
    spec = spec_from_dict({
        "seed": 3, "device": "cuda", "precision": "bf16",
        "model": {"name": "dgex", "hidden_layers": 2, "width": 512, "monitor_size": 200,
                  "lr_reference": False},
        "data": {"source": "synthetic_dgex", "n_landmarks": 40, "n_targets": 300,
                 "n_train": 1600, "n_val": 200, "n_test": 100},
        "train": {"epochs": 4, "batch_size": 50, "learning_rate": 5e-4, "momentum": 0.5}})
    every = RunSettings(checkpoint_interval_s=None)
    fused = curves(spec, tmp_path / "a", settings=every)
    torch_sgd = curves(spec, tmp_path / "b", settings=every.replace(fused_update=False))
    eager = curves(spec, tmp_path / "c", settings=every.replace(fused_update=False,
                                                                step_graphs=False))
    engine_of = [load_record(next((tmp_path / d).iterdir())).result["engine"]["switches"]
                 for d in "abc"]
    assert [(e["fused_update"], e["step_graphs"]) for e in engine_of] == [
        (True, True), (False, True), (False, False)]
    for other in (torch_sgd, eager):  # dropout masks differ between graphs and eager steps
        np.testing.assert_allclose(fused["val_mae"], other["val_mae"], rtol=0.02)
        np.testing.assert_allclose(fused["loss"], other["loss"], rtol=0.02)
    assert fused["val_mae"][-1] < fused["val_mae"][0]


@cuda
@kernels
def test_cuda_pack_dense_update_in_backward_matches_the_pack_optimizer(tmp_path):
    """A compiled pack whose first dense layer (>= 2^16 weights) updates in backward, against
    the same pack with the optimizer updating it: same curves within bf16 rounding."""
    def pack(out, settings):
        specs = [spec_from_dict({
            "seed": seed, "device": "cuda",
            "model": {"name": "nt3", "conv": [[8, 5, 1], [8, 5, 1]], "pool": [1, 4],
                      "dense": [64]},
            "data": {"source": "synthetic_nt3", "n_train": 96, "n_test": 48,
                     "n_features": 1200},
            "train": {"epochs": 4, "batch_size": 16, "learning_rate": 0.01, "momentum": 0.5}})
            for seed in (1, 2)]
        done = run_trials(specs, out, pack_size=2, raise_errors=True, settings=settings)
        records = [load_record(r.path).result for r in done]
        assert all(r["engine"]["pack_size"] == 2 for r in records)
        assert all(r["engine"]["switches"]["fused_update"] == settings.fused_update
                   for r in records)
        return [r["curves"] for r in records]

    every = RunSettings(checkpoint_interval_s=None)
    in_backward = pack(tmp_path / "a", every)
    optimizer = pack(tmp_path / "b", every.replace(fused_update=False))
    for a, b in zip(in_backward, optimizer):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=0.02)
        np.testing.assert_allclose(a["val_accuracy"], b["val_accuracy"], atol=0.05)
        assert a["loss"][-1] < a["loss"][0]
