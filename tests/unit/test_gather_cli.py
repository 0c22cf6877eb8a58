"""The result commands on synthetic records: gather, report, plot, bench-gather."""

from __future__ import annotations

import pandas as pd
import pytest

from genodl_core.results import load
from genodl_core.results.bench_gather import write_synthetic_sweep
from workflows.cli import main

pytestmark = pytest.mark.timeout(120)


def test_gather_full_and_incremental(tmp_path, capsys):
    write_synthetic_sweep(tmp_path, 10, epochs=3, failed_every=4)
    assert main(["gather", str(tmp_path)]) == 0
    assert "10 trials (8 done, 2 failed, 0 running, 0 pending, 0 corrupt)" in capsys.readouterr().out
    out = tmp_path / "elsewhere.h5"
    assert main(["gather", str(tmp_path), "--full", "--out", str(out)]) == 0
    assert len(load.trials(out)) == 10


def test_gather_of_a_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["gather", str(tmp_path / "missing")]) == 2
    assert "run directory does not exist" in capsys.readouterr().err


def test_report_gathers_when_there_is_no_summary(tmp_path, capsys):
    write_synthetic_sweep(tmp_path, 14, epochs=3, failed_every=5)
    csv = tmp_path / "out" / "g.csv"
    assert main(["report", str(tmp_path), "--metrics", "val_accuracy", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "summary.h5").is_file()
    assert "14 trials: 12 done, 2 failed" in out
    assert "val_accuracy" in out and "val_loss" not in out
    table = pd.read_csv(csv)
    assert list(table.columns[-5:]) == [f"val_accuracy.{s}" for s in
                                        ("mean", "std", "min", "max", "count")]
    assert table["val_accuracy.count"].sum() == 12


def test_plot_with_no_finished_trial_writes_nothing(tmp_path, capsys):
    write_synthetic_sweep(tmp_path, 2, epochs=3, failed_every=1)
    assert main(["plot", str(tmp_path)]) == 0
    assert "no finished trials" in capsys.readouterr().err
    assert not list((tmp_path / "plots").glob("*.png"))


def test_bench_gather_command_prints_the_figure(tmp_path, capsys):
    assert main(["bench-gather", "--trials", "20", "--epochs", "5", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gather 20 trials x 5 epochs: ") and " s from scratch" in out
    assert len(load.trials(tmp_path / "run")) == 20
