"""Trials that differ in a parameter besides model, variant and noise are never averaged.

A sweep over abstention controllers (or learning rates, or data seeds) gathers each value into
groups of its own, named by the summary's ``setting`` column; the report shows that column and
the figures are drawn once per setting.
"""

from __future__ import annotations

import pytest

from genodl_core.results import load, plots, report
from genodl_core.results.summary import gather
from tests.unit.test_gather import _write_done

pytestmark = pytest.mark.timeout(120)


def _spec(controller: str, seed: int, lr: float = 0.01) -> dict:
    return {"seed": seed, "model": {"name": "nt3", "variant": "abstaining",
                                    "controller": controller},
            "data": {"source": "synthetic_nt3"}, "train": {"learning_rate": lr, "timeout_s": 60 + seed},
            "noise": [{"kind": "label_flip", "fraction": 0.2}]}


def test_controllers_make_separate_groups_and_seeds_timeouts_do_not(tmp_path):
    for seed in (0, 1):
        _write_done(tmp_path, _spec("candle", seed), {"val_accuracy": 0.9}, {})
        _write_done(tmp_path, _spec("dac", seed), {"val_accuracy": 0.5}, {})
    summary = gather(tmp_path)
    groups = load.groups(summary, metrics=["val_accuracy"])
    by_setting = dict(zip(groups.setting, groups["val_accuracy.mean"]))
    # seeds and time budgets differ too, but only the controller makes a setting
    assert by_setting == {"model.controller=candle": 0.9, "model.controller=dac": 0.5}
    assert list(groups.n_done) == [2, 2]
    text = report.report(summary)
    assert "model.controller=candle" in text and "model.controller=dac" in text


def test_nothing_else_varying_leaves_the_setting_empty_and_the_report_without_it(tmp_path):
    for seed in (0, 1):
        _write_done(tmp_path, _spec("candle", seed), {"val_accuracy": 0.8 + seed / 10}, {})
    summary = gather(tmp_path)
    groups = load.groups(summary, metrics=["val_accuracy"])
    assert list(groups.setting) == [""]
    assert groups["val_accuracy.mean"].iloc[0] == pytest.approx(0.85)
    assert "setting" not in report.report(summary)


def test_two_varying_parameters_are_both_named(tmp_path):
    _write_done(tmp_path, _spec("candle", 0, lr=0.01), {"val_accuracy": 0.9}, {})
    _write_done(tmp_path, _spec("dac", 0, lr=0.1), {"val_accuracy": 0.5}, {})
    settings = set(load.finals(gather(tmp_path)).setting)
    assert settings == {"model.controller=candle, train.learning_rate=0.01",
                        "model.controller=dac, train.learning_rate=0.1"}


def test_figures_are_drawn_once_per_setting(tmp_path):
    pytest.importorskip("matplotlib", reason="figures need matplotlib (the plots extra)")
    for seed in (0, 1):
        for controller in ("candle", "dac"):
            _write_done(tmp_path, _spec(controller, seed), {"val_accuracy": 0.9,
                                                            "val_abstention": 0.1}, {})
    written = plots.make_plots(gather(tmp_path), tmp_path / "figs")
    folders = {p.parent.name for p in written}
    assert folders == {"model.controller_candle", "model.controller_dac"}


def test_models_are_compared_only_with_themselves(tmp_path):
    """Parameters one model has and another lacks do not make a setting."""
    _write_done(tmp_path, _spec("candle", 0), {"val_accuracy": 0.9}, {})
    other = {"seed": 0, "model": {"name": "lr", "ridge": 1.0}, "data": {"source": "synthetic_dgex"},
             "noise": []}
    _write_done(tmp_path, other, {"val_mae": 0.5}, {})
    assert set(load.finals(gather(tmp_path)).setting) == {""}


def test_long_settings_get_short_distinct_folders():
    a, b = "x=1, " * 100 + "y=1", "x=1, " * 100 + "y=2"
    assert len(plots._setting_folder(a)) <= plots.MAX_FOLDER
    assert plots._setting_folder(a) != plots._setting_folder(b)


def test_cleaning_by_different_detectors_is_never_one_group(tmp_path):
    """A step's kind_fields (drop_flagged's detector) are part of its kind in the summary."""
    for detector, acc in (("loss", 0.9), ("aum", 0.7)):
        for seed in (0, 1):
            spec = _spec("candle", seed)
            spec["noise"] = [{"kind": "label_flip", "fraction": 0.2},
                             {"kind": "drop_flagged", "detector": detector,
                              "source_trial": f"src{seed}", "flags": "f", "flags_sha256": "x"}]
            _write_done(tmp_path, spec, {"test_accuracy": acc}, {})
    groups = load.groups(gather(tmp_path), metrics=["test_accuracy"])
    assert dict(zip(groups.noise_kind, groups["test_accuracy.mean"])) == {
        "label_flip+drop_flagged[detector=loss]": 0.9,
        "label_flip+drop_flagged[detector=aum]": 0.7}
