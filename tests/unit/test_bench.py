"""`genodl bench --quick`: a CPU smoke run of the benchmark and its figures."""

from __future__ import annotations

import json

import pytest

from genodl_core.bench import BenchConfig, epoch_flops, forward_flops, run_benchmark, trial_spec
from genodl_core.errors import SpecError
from workflows.cli import main


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_quick_report_has_every_figure():
    report = run_benchmark(BenchConfig(quick=True, device="cpu", epochs=2))
    assert [m.mode for m in report.modes] == ["plain", "fast"]
    assert report.matmul_tflops > 0 and report.matmul_dtype == "float32"
    for m in report.modes:
        assert m.seconds_per_epoch > 0
        assert m.trials_per_gpu_hour == pytest.approx(
            3600 / (100 * m.seconds_per_trial_epoch + m.overhead_s))
        assert m.tflops > 0 and 0 < m.share_of_matmul
        assert m.overhead_s >= 0 and m.val_metric == "val_accuracy"
        assert 0 <= m.val_value <= 1
    # On CPU the default path runs channels-last convolutions, in fp32.
    assert report.modes[1].fast_path == "nhwc+convblk" and report.modes[1].precision == "fp32"


def test_cli_prints_table_and_json(capsys):
    assert main(["bench", "--quick", "--device", "cpu", "--epochs", "2", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("plain") for line in out)
    assert any("GFLOP/s" in line for line in out)
    data = json.loads(out[-1])
    assert data["model"] == "nt3" and len(data["modes"]) == 2


def test_batched_mode_trains_its_trials_as_one_pack(monkeypatch):
    # Per-trial figures divide a pack's epoch by --pack: the pack must hold that many trials
    # (run_trials' own default is 8, which once split larger packs unseen).
    import genodl_core.training.trial as trial

    packs = []
    original = trial.group_packs

    def recording(specs, pack_size):
        groups = list(original(specs, pack_size))
        packs.extend(len(g) for g in groups)
        return groups

    monkeypatch.setattr(trial, "group_packs", recording)
    report = run_benchmark(BenchConfig(quick=True, device="cpu", epochs=2, modes=("batched",),
                                       pack=9))
    assert packs == [9, 9]
    assert report.modes[0].seconds_per_trial_epoch == pytest.approx(
        report.modes[0].seconds_per_epoch / 9)


def test_quick_dgex_runs():
    report = run_benchmark(BenchConfig(model="dgex", quick=True, device="cpu", epochs=2,
                                       modes=("plain",)))
    (m,) = report.modes
    assert m.val_metric == "val_mae" and m.val_value > 0 and m.tflops > 0


def test_unknown_mode_names_allowed_ones():
    with pytest.raises(SpecError) as err:
        run_benchmark(BenchConfig(quick=True, device="cpu", modes=("turbo",)))
    assert "turbo" in str(err.value) and "plain" in str(err.value)


def test_nt3_paper_flops_match_hand_count():
    spec = trial_spec(BenchConfig(), seed=0, precision="fp32", epochs=2, device="cpu")
    conv1 = 2 * 1 * 20 * 64 * (60483 - 19)
    conv2 = 2 * 64 * 10 * 64 * (60464 - 9)
    dense = 2 * (64 * 6045 * 200 + 200 * 20 + 20 * 2)
    assert forward_flops(spec, 60483, 2) == conv1 + conv2 + dense
    assert epoch_flops(spec, 1120, 280, 60483, 2) == (conv1 + conv2 + dense) * (3 * 1120 + 280)
