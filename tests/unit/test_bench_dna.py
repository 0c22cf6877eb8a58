"""genodl bench for the DNA models: quick runs on the CPU, FLOP counts, the streamed mode."""

from __future__ import annotations

import pytest

from genodl_core.bench import BenchConfig, dna_forward_flops, run_benchmark
from genodl_core.models.deepsea import DeepSEAParams


def test_deepsea_forward_flops_match_the_layers():
    """1,000 bp, 919 targets: every convolution and dense layer, 2 FLOPs per multiply-add."""
    macs = (4 * 8 * 320 * 993 + 320 * 8 * 480 * 241 + 480 * 8 * 960 * 53
            + 960 * 53 * 925 + 925 * 919)
    assert dna_forward_flops("deepsea", DeepSEAParams(), 1000, 919) == pytest.approx(2 * macs)


def test_quick_bench_of_deepsea_resident_and_streamed(tmp_path):
    report = run_benchmark(BenchConfig(model="deepsea", quick=True, device="cpu", epochs=2,
                                       modes=("plain", "fast-streamed",
                                              "fast-streamed-inline")), tmp_path)
    plain, streamed, inline = report.modes
    assert plain.val_metric == "val_roc_auc" and 0.0 <= plain.val_value <= 1.0
    assert plain.tflops > 0 and report.shape["n_features"] == 120
    # The same trial either way: host-streamed batches change where rows come from only.
    assert streamed.val_value == pytest.approx(plain.val_value, abs=1e-6)
    # Read ahead on a thread or in the step: the same batches, the same numbers.
    assert inline.val_value == streamed.val_value
