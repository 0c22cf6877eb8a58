"""Figures from hand-written records: clean level 0, models together, metrics by epoch.

Each test writes done records with known finals and curves, gathers them and reads the drawn
lines back from the figures (captured before they are saved), so the numbers are checked,
not only that a PNG exists.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from genodl_core.results import plots
from genodl_core.results.summary import gather
from tests.unit.conftest import capture_figures
from tests.unit.test_gather import _write_done

pytestmark = pytest.mark.timeout(120)

NAN = math.nan


@pytest.fixture
def figures(monkeypatch):
    """Figures by file name, captured as they are saved."""
    return capture_figures(monkeypatch, plots)


def _nt3_spec(variant: str, noise: list, seed: int) -> dict:
    return {"seed": seed, "model": {"name": "nt3", "variant": variant},
            "data": {"source": "synthetic_nt3"}, "noise": noise}


def _line(ax, label: str):
    lines = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(lines) == 1, [ln.get_label() for ln in ax.get_lines()]
    return lines[0].get_xdata(), lines[0].get_ydata()


def test_a_kind_without_level_zero_borrows_the_clean_trials_and_says_so(tmp_path, figures):
    for seed in (0, 1):
        _write_done(tmp_path, _nt3_spec("base", [], seed), {"val_accuracy": 0.9 + 0.02 * seed},
                    {})
        for level in (0.2, 0.4):
            _write_done(tmp_path, _nt3_spec("base", [{"kind": "gaussian", "std": level}], seed),
                        {"val_accuracy": 0.8 - level}, {})
    plots.make_plots(gather(tmp_path), tmp_path / "figs")
    ax = figures["accuracy_abstention_nt3_gaussian.png"].axes[0]
    x, y = _line(ax, "base model")
    np.testing.assert_allclose(x, [0.0, 0.2, 0.4])
    np.testing.assert_allclose(y, [0.91, 0.6, 0.4])
    assert "level 0: clean trials (no noise step)" in ax.get_legend_handles_labels()[1]
    # the borrowed point is ringed: a marker-only line at x = 0 on the clean mean
    rings = [ln for ln in ax.get_lines() if ln.get_linestyle() == "None"
             and ln.get_markerfacecolor() == "none" and len(ln.get_xdata())]
    assert [(list(r.get_xdata()), list(r.get_ydata())) for r in rings] == [([0.0], [0.91])]


def test_clean_rows_prefer_no_noise_then_level_zero_of_one_kind_on_the_same_data():
    frame = pd.DataFrame({
        "noise_kind": ["none", "label_flip", "label_flip", "gaussian", "none"],
        "noise_level": [0.0, 0.0, 0.3, 0.5, 0.0],
        "noise_levels": ["0", "0.0", "0.3", "0.5", "0"],
        "data_source": ["a", "a", "a", "a", "b"]})
    rows, label = plots.clean_rows(frame, "gaussian")
    assert list(rows.index) == [0] and label == "clean trials (no noise step)"
    rows, label = plots.clean_rows(frame.drop(index=[0]), "gaussian")
    assert list(rows.index) == [1] and label == "clean trials (label_flip at 0)"
    assert plots.clean_rows(frame, "label_flip")[1] is None  # it has its own level 0
    assert plots.clean_rows(frame.drop(index=[0, 1]), "gaussian")[0].empty  # other data only


def test_regression_models_and_null_predictors_share_one_figure(tmp_path, figures):
    maes = {"dgex": (0.60, 0.65), "lr": (0.61, 0.70), "knn_ge": (0.66, 0.66)}
    for model, (clean, noisy) in maes.items():
        for seed in (0, 1):
            for level, mae in ((0.0, clean), (0.5, noisy)):
                _write_done(tmp_path, {"seed": seed, "model": {"name": model},
                                       "data": {"source": "synthetic_dgex"},
                                       "noise": [{"kind": "gaussian", "std": level}]},
                            {"val_mae": mae + 0.01 * seed, "lr_val_mae": 0.5,
                             "null_mean_val_mae": 0.80 + 0.02 * seed,
                             "null_median_val_mae": 0.75}, {})
    written = plots.make_plots(gather(tmp_path), tmp_path / "figs")
    assert "mae_vs_level_models_gaussian.png" in {p.name for p in written}
    ax = figures["mae_vs_level_models_gaussian.png"].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert {"dgex", "lr", "knn_ge", "null: per-gene training mean",
            "null: per-gene training median"} <= set(labels)
    assert not any("fit within the trials" in label for label in labels)  # LR trials exist
    for model, expected in maes.items():
        np.testing.assert_allclose(_line(ax, model)[1], np.add(expected, 0.005))
    np.testing.assert_allclose(_line(ax, "null: per-gene training mean")[1], [0.81, 0.81])
    # the null is the same for all three models: counted once per seed, so its std is the
    # seeds' (0.0141), not that of six copies
    band = ax.collections[-2].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx(0.81 + 0.02 / math.sqrt(2))


def test_metrics_by_epoch_per_level_leave_undefined_epochs_out(tmp_path, figures):
    for seed in (0, 1):
        for level in (0.0, 0.5):
            kept_acc = [0.6, NAN, 0.7 if seed == 0 else NAN] if level else [0.8, 0.85, 0.9]
            _write_done(
                tmp_path, _nt3_spec("abstaining", [{"kind": "label_flip", "fraction": level}],
                                    seed),
                {"val_accuracy": 0.5, "val_abstention": 0.2},
                {"val_accuracy": [0.5, 0.0, 0.6], "val_abstention_accuracy": kept_acc,
                 "val_abstention": [0.2, 1.0, 0.1 + 0.6 * seed],
                 "alpha": [0.5, 0.1, 0.01 * (seed + 1)]})
            _write_done(tmp_path, _nt3_spec("base", [{"kind": "label_flip", "fraction": level}],
                                            seed),
                        {"val_accuracy": 0.7}, {"val_accuracy": [0.5, 0.6, 0.7]})
    written = {p.name for p in plots.make_plots(gather(tmp_path), tmp_path / "figs")}
    assert {"by_epoch_nt3_abstaining_label_flip.png",
            "by_epoch_nt3_base_label_flip.png"} <= written
    abst = [ax for ax in figures["by_epoch_nt3_abstaining_label_flip.png"].axes
            if ax.get_visible()]
    assert [ax.get_ylabel() for ax in abst] == [label for _, label in plots.EPOCH_PANELS]
    x, y = _line(abst[1], "0.5")  # accuracy on the kept samples at level 0.5
    assert list(x) == [1, 2, 3] and math.isnan(y[1])  # a gap, not a 0 or a 1
    np.testing.assert_allclose(y[[0, 2]], [0.6, 0.7])
    rings = [ln for ln in abst[1].get_lines() if ln.get_gid() == plots.PARTIAL_GID]
    assert [list(r.get_xdata()) for r in rings] == [[3]]  # epoch 3 rests on one seed of two
    assert "mean of fewer seeds (others undefined)" in abst[1].get_legend_handles_labels()[1]
    _, abstention = _line(abst[2], "0.5")
    np.testing.assert_allclose(abstention, [0.2, 1.0, 0.4])
    band = abst[2].collections[-1].get_paths()[0].vertices[:, 1]
    assert band.min() >= 0.0 and band.max() <= 1.0  # std 0.42 at epoch 3 clipped at 0
    assert abst[3].get_yscale() == "log"
    alpha_band = abst[3].collections[-1].get_paths()[0].vertices[:, 1]
    assert alpha_band.min() >= 0.01  # never below the smallest seed's alpha
    base = [ax for ax in figures["by_epoch_nt3_base_label_flip.png"].axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in base] == [plots.EPOCH_PANELS[0][1]]


def test_partial_and_undefined_levels_are_labelled():
    from matplotlib.figure import Figure

    groups = pd.DataFrame({"noise_level": [0.0, 0.4, 0.5], "n_done": [2, 3, 2],
                           "val_abstention_accuracy.mean": [0.9, 0.5, NAN],
                           "val_abstention_accuracy.std": [0.1, NAN, NAN],
                           "val_abstention_accuracy.count": [2, 1, 0]})
    ax = Figure().subplots()
    plots._mean_std_line(ax, groups, "val_abstention_accuracy", "abstaining", "tab:red")
    # level 0.5: every trial abstained on everything, so no point, and the gap is named
    assert [(t.get_text(), t.xy[0]) for t in ax.texts] == [("undefined", 0.5), ("1/3", 0.4)]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [0.0, 0.4])
