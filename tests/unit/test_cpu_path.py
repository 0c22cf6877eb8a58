"""The CPU path: threads from the worker's cores, channels-last fp32 that repeats bit for bit,
and bf16 only where the CPU computes it natively (checked against fp32 on the same data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genodl_core.errors import SpecError
from genodl_core.models.nt3 import NT3Params, build_nt3
from genodl_core.models.nt3_fast import ChannelsLastNT3
from genodl_core.records import load_record
from genodl_core.spec import spec_from_dict
from genodl_core.training import cpu, device
from genodl_core.training.plan import CPU_SWITCHES, RunSettings, Switches, choose_plan
from genodl_core.training.precision import autocast
from genodl_core.training.trial import run_trial

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NT3_SWITCHES = frozenset({"channels_last", "compile", "eval_batch_size", "conv_blocks"})
NO_CHECKPOINTS = RunSettings(checkpoint_interval_s=None)


def small_spec(precision="auto", seed=3, epochs=4, learning_rate=0.02):
    return spec_from_dict({
        "seed": seed, "device": "cpu", "precision": precision,
        "model": {"name": "nt3", "conv": [[4, 5, 1], [4, 5, 1]], "pool": [1, 4], "dense": [16]},
        "data": {"source": "synthetic_nt3", "n_train": 96, "n_test": 48, "n_features": 160},
        "train": {"epochs": epochs, "batch_size": 16, "learning_rate": learning_rate,
                  "momentum": 0.9}})


def trial_result(spec, out, settings=NO_CHECKPOINTS):
    return load_record(run_trial(spec, out, raise_errors=True, settings=settings).path).result


def test_cpu_plan_is_channels_last_with_the_workers_threads():
    plan = choose_plan("cpu", "fp32", NT3_SWITCHES, settings=NO_CHECKPOINTS)
    assert plan.switches == CPU_SWITCHES == Switches(channels_last=True, conv_blocks=True)
    assert plan.cpu_threads == min(cpu.owned_cores(), torch.get_num_threads())
    assert plan.to_dict()["cpu_threads"] == plan.cpu_threads
    plain = choose_plan("cpu", "fp32", NT3_SWITCHES,
                        settings=NO_CHECKPOINTS.replace(fast_path="off", cpu_threads=3))
    assert plain.switches == Switches() and plain.cpu_threads == 3
    # A family that cannot use channels-last convolutions keeps its plain plan.
    assert choose_plan("cpu", "fp32", frozenset(), settings=NO_CHECKPOINTS).switches == Switches()
    gpu = choose_plan("cuda", "bf16", NT3_SWITCHES, settings=NO_CHECKPOINTS, triton=False)
    assert gpu.cpu_threads is None and "cpu_threads" not in gpu.to_dict()


def test_threads_setting_from_environment_and_worker_share(monkeypatch):
    assert RunSettings.from_env({cpu.CPU_THREADS_ENV: "3"}).cpu_threads == 3
    assert RunSettings.from_env({}).cpu_threads is None
    for bad in ("0", "two", "-1"):
        with pytest.raises(SpecError) as err:
            RunSettings.from_env({cpu.CPU_THREADS_ENV: bad})
        assert cpu.CPU_THREADS_ENV in str(err.value) and repr(bad) in str(err.value)
    # Four unpinned workers on an 8-core node that torch would run with 8 threads: 2 each.
    monkeypatch.setattr(cpu, "owned_cores", lambda: 8)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(cpu.torch, "get_num_threads", lambda: 8)
    assert cpu.worker_threads({cpu.WORKER_COUNT_ENV: "4"}) == 2
    assert cpu.worker_threads({}) == 8


def test_thread_scope_restores_the_previous_setting():
    before = torch.get_num_threads()
    with cpu.cpu_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with cpu.cpu_threads(None):
        assert torch.get_num_threads() == before


def test_channels_last_gives_the_conv1d_logits():
    net = build_nt3(NT3Params(conv=((4, 5, 1), (6, 3, 1)), pool=(1, 4), dense=(8,)), 120, 2,
                    seed=1)
    x = torch.randn(5, 120, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ChannelsLastNT3(net)(x), net(x), rtol=1e-5, atol=1e-6)


def test_cpu_fp32_repeats_bit_for_bit_with_two_threads(tmp_path):
    """Same seed, same thread count: identical curves and final metrics (docs say why)."""
    settings = NO_CHECKPOINTS.replace(cpu_threads=2)
    a = trial_result(small_spec(), tmp_path / "a", settings)
    b = trial_result(small_spec(), tmp_path / "b", settings)
    assert a["engine"]["cpu_threads"] == 2 and a["engine"]["label"] == "nhwc+convblk"
    assert a["precision"] == "fp32"
    for key in a["curves"]:
        if key != "epoch_seconds":
            np.testing.assert_array_equal(a["curves"][key], b["curves"][key], err_msg=key)
    assert a["final"]["val_loss"] == b["final"]["val_loss"]


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch):
    assert cpu.bf16_supported(frozenset({"avx2", "avx512_bf16"}))
    assert cpu.bf16_supported(frozenset({"amx_bf16"}))
    assert not cpu.bf16_supported(frozenset({"avx2", "fma"}))
    with pytest.raises(SpecError) as err:
        cpu.check_bf16(supported=False)
    assert "bf16" in str(err.value) and "fp32" in str(err.value)
    monkeypatch.setattr(cpu, "bf16_supported", lambda: False)
    with pytest.raises(SpecError):
        device.resolve_precision("bf16", "cpu")
    assert device.resolve_precision("auto", "cpu") == "fp32"
    assert device.resolve_precision("tf32", "cpu") == "fp32"
    monkeypatch.setattr(cpu, "bf16_supported", lambda: True)
    assert device.resolve_precision("bf16", "cpu") == "bf16"


def test_bf16_on_cpu_autocasts_and_matches_fp32_accuracy(tmp_path, monkeypatch):
    """bf16 runs the convolutions and matmuls in bf16; accuracy matches fp32 (same data, seed).

    Where the CPU lacks native bf16 the arithmetic is emulated: slower, the same numbers.
    """
    with autocast("cpu", "bf16"):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == \
            torch.bfloat16
    with autocast("cpu", "fp32"):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == \
            torch.float32
    monkeypatch.setattr(cpu, "bf16_supported", lambda: True)
    fp32 = trial_result(small_spec("fp32", epochs=8, learning_rate=0.05), tmp_path / "fp32")
    bf16 = trial_result(small_spec("bf16", epochs=8, learning_rate=0.05), tmp_path / "bf16")
    assert bf16["precision"] == "bf16" and bf16["engine"]["precision"] == "bf16"
    assert fp32["curves"]["val_loss"] != bf16["curves"]["val_loss"]  # bf16 really ran
    assert fp32["final"]["val_accuracy"] >= 0.75  # the task is learnt at this size
    # 20 validation samples: at most two decided differently.
    assert abs(bf16["final"]["val_accuracy"] - fp32["final"]["val_accuracy"]) <= 0.1 + 1e-9
    np.testing.assert_allclose(bf16["curves"]["loss"], fp32["curves"]["loss"], rtol=0.05,
                               atol=0.01)


def test_cpu_bench_shows_bf16_only_where_the_cpu_has_it(monkeypatch):
    from genodl_core import bench

    monkeypatch.setattr(cpu, "bf16_supported", lambda: True)
    assert bench.default_modes("cpu") == ("plain", "fast", "fast-bf16")
    assert bench.MODES["fast-bf16"][1] == "bf16"
    monkeypatch.setattr(cpu, "bf16_supported", lambda: False)
    assert bench.default_modes("cpu") == ("plain", "fast")
    assert bench.default_modes("cuda") == ("plain", "fast")


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("active", "active")])
def test_openmp_threads_sleep_unless_the_user_says_otherwise(given, expected):
    """Set before torch loads OpenMP: importing genodl_core must come first in a process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", "import os, genodl_core; "
                          "print(os.environ['OMP_WAIT_POLICY'])"],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == expected
    assert device.device_info("cpu")["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")


def test_cpu_trials_keep_freed_memory_unless_told_not_to(monkeypatch):
    """Large freed blocks stay in the process (no page faults per step); the record says so,
    and GENODL_CPU_MALLOC=default leaves the allocator alone."""
    import ctypes.util

    from genodl_core.training.device import device_info

    monkeypatch.setattr(cpu, "_MALLOC_STATE", None)
    assert cpu.retain_freed_memory({cpu.CPU_MALLOC_ENV: "default"}) == "default"
    assert cpu.malloc_state() == "default" and device_info("cpu")["malloc"] == "default"
    monkeypatch.setattr(cpu, "_MALLOC_STATE", None)
    expected = "retain" if "libc.so" in str(ctypes.util.find_library("c")) else "unavailable"
    assert cpu.retain_freed_memory({}) == expected == device_info("cpu")["malloc"]
    monkeypatch.setattr(cpu, "_MALLOC_STATE", None)
    with pytest.raises(SpecError, match=r"GENODL_CPU_MALLOC='off'.*'default', 'retain'"):
        cpu.retain_freed_memory({cpu.CPU_MALLOC_ENV: "off"})
