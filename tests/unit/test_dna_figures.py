"""Multi-label sweep figures: ROC AUC per target and per target group against the noise level,
read back from the drawn lines of a tiny 2-level DNA sweep and checked against the records."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("h5py", reason="summary.h5 needs h5py")
pytest.importorskip("matplotlib", reason="the figures need matplotlib")

from genodl_core import records  # noqa: E402
from genodl_core.results import dna_plots, plots  # noqa: E402
from genodl_core.results.summary import gather  # noqa: E402
from genodl_core.training.trial import run_trial  # noqa: E402
from tests.unit.conftest import capture_figures  # noqa: E402

pytestmark = pytest.mark.timeout(120)

LEVELS = (0.0, 0.5)
DATA = {"source": "synthetic_dna", "n_train": 300, "n_val": 200, "n_test": 0, "length": 100,
        "central_bin": 40, "n_targets": 6}
MODEL = {"name": "deepsea", "conv": [8, 8, 8], "kernel": 6, "pool": 3, "dense": 16}


@pytest.fixture
def figures(monkeypatch):
    """Figures by file name, captured as they are saved."""
    return capture_figures(monkeypatch, dna_plots)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two trials of one seed under missed peaks at 0 and 0.5; their records by level."""
    run = tmp_path_factory.mktemp("dna_sweep")
    by_level = {}
    for level in LEVELS:
        spec = {"seed": 0, "model": MODEL, "data": DATA,
                "noise": [{"kind": "missed_peaks", "rate": level}],
                "train": {"epochs": 1, "batch_size": 50, "optimizer": "adam",
                          "learning_rate": 0.01}}
        result = run_trial(spec, run, raise_errors=True)
        record = json.loads((result.path / records.RESULT_FILE).read_text())
        arrays = np.load(result.path / "arrays.npz")
        by_level[level] = (record, arrays["val_roc_auc_per_target"])
    return gather(run), by_level


def _lines(ax):
    return {ln.get_label(): np.asarray(ln.get_ydata(), float) for ln in ax.get_lines()}


def test_per_target_lines_and_group_medians_are_the_records(sweep, figures, tmp_path):
    summary, by_level = sweep
    plots.make_plots(summary, tmp_path / "figs")
    lines = _lines(figures["target_auc_vs_level_deepsea_missed_peaks.png"].axes[0])
    names = by_level[0.0][0]["extra"]["target_names"]
    groups = by_level[0.0][0]["extra"]["target_groups"]
    for i, name in enumerate(names):  # one trial per level: the line is that trial's AUC
        expected = [by_level[level][1][i] for level in LEVELS]
        np.testing.assert_allclose(lines[f"_target {name}"], expected, rtol=1e-6)
    for group in sorted(set(groups)):
        members = [i for i, g in enumerate(groups) if g == group]
        expected = [np.nanmedian(by_level[level][1][members]) for level in LEVELS]
        label = f"median {group} ({len(members)} targets)"
        np.testing.assert_allclose(lines[label], expected, rtol=1e-6)


def test_group_medians_figure_draws_the_trials_group_finals(sweep, figures, tmp_path):
    summary, by_level = sweep
    plots.make_plots(summary, tmp_path / "figs")
    lines = _lines(figures["group_medians_vs_level_deepsea_missed_peaks.png"].axes[0])
    groups = sorted(set(by_level[0.0][0]["extra"]["target_groups"]))
    assert {f"median {g}" for g in groups} <= set(lines)
    for group in groups:
        expected = [by_level[level][0]["final"][f"val_roc_auc_median_{group}"]
                    for level in LEVELS]
        np.testing.assert_allclose(lines[f"median {group}"], expected, rtol=1e-9)
    np.testing.assert_allclose(lines["mean over targets"],
                               [by_level[level][0]["final"]["val_roc_auc"] for level in LEVELS],
                               rtol=1e-9)
