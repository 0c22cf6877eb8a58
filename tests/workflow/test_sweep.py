"""Sweep expansion: axes, ranges, zip, stable ids, validation before submission, `genodl plan`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from genodl_core.errors import SpecError
from genodl_core.spec import spec_from_dict
from tests.workflow.conftest import TINY_TRIAL, tiny_sweep
from workflows.cli import main as genodl
from workflows.sweep import (load_sweep, parse_path, plan_table, set_path, sweep_from_dict,
                             sweep_from_resolved)

EXAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "examples"
SWEEP_EXAMPLES = ["quick.toml", "nt3_label_noise.toml", "nt3_feature_noise.toml", "dgex_noise.toml",
                  "nt3_gpu_sweep.toml"]


def test_cartesian_product_in_written_order_with_seeds():
    sweep = sweep_from_dict(tiny_sweep({"model.variant": ["base", "abstaining"],
                                        "noise[0].fraction": [0.0, 0.1, 0.2]}))
    assert len(sweep.trials) == 2 * 3 * 2
    points = [tuple(t.point.values()) for t in sweep.trials]
    assert points[:3] == [("base", 0.0, 0), ("base", 0.0, 1), ("base", 0.1, 0)]
    assert points[-1] == ("abstaining", 0.2, 1)
    # Each trial's spec really carries its point.
    for t in sweep.trials:
        assert t.spec["model"]["variant"] == t.point["model.variant"]
        assert t.spec["noise"][0]["fraction"] == t.point["noise[0].fraction"]
        assert t.spec["seed"] == t.point["seed"]
        assert spec_from_dict(t.spec).trial_id == t.trial_id
    assert len(set(sweep.trial_ids)) == len(sweep.trials)


def test_trial_ids_do_not_depend_on_axis_order_or_written_defaults():
    a = sweep_from_dict(tiny_sweep({"model.variant": ["base", "abstaining"],
                                    "noise[0].fraction": [0.0, 0.2]}))
    b = sweep_from_dict(tiny_sweep({"noise[0].fraction": [0.0, 0.2],
                                    "model.variant": ["base", "abstaining"]}))
    assert set(a.trial_ids) == set(b.trial_ids)
    trial = copy.deepcopy(TINY_TRIAL)
    trial["train"]["optimizer"] = "sgd"  # the default, written out
    c = sweep_from_dict(tiny_sweep({"noise[0].fraction": [0.0, 0.2],
                                    "model.variant": ["base", "abstaining"]}, trial=trial))
    assert c.trial_ids == b.trial_ids


def test_ranges_include_stop_and_are_free_of_float_noise():
    sweep = sweep_from_dict(tiny_sweep({"noise[0].fraction": {"start": 0.0, "stop": 0.3,
                                                              "step": 0.1}},
                                       trials_per_level=1))
    assert [t.point["noise[0].fraction"] for t in sweep.trials] == [0.0, 0.1, 0.2, 0.3]
    sweep = sweep_from_dict(tiny_sweep({"noise[0].fraction": {"start": 0.0, "stop": 0.5,
                                                              "num": 3}}, trials_per_level=1))
    assert [t.point["noise[0].fraction"] for t in sweep.trials] == [0.0, 0.25, 0.5]
    sweep = sweep_from_dict(tiny_sweep({"train.epochs": {"start": 1, "stop": 5, "step": 2}},
                                       trials_per_level=1))
    assert [t.spec["train"]["epochs"] for t in sweep.trials] == [1, 3, 5]


def test_zip_pairs_axes_instead_of_crossing_them():
    sweep = sweep_from_dict(tiny_sweep(
        {"train.epochs": [1, 2, 3], "train.learning_rate": [0.1, 0.01, 0.001],
         "model.variant": ["base", "abstaining"]},
        zip=[["train.epochs", "train.learning_rate"]], trials_per_level=1))
    assert len(sweep.trials) == 3 * 2
    pairs = {(t.spec["train"]["epochs"], t.spec["train"]["learning_rate"]) for t in sweep.trials}
    assert pairs == {(1, 0.1), (2, 0.01), (3, 0.001)}


def test_table_valued_axis_replaces_the_step_before_its_fields_are_set():
    # Listed after the field on purpose: whole tables are applied first whatever the order.
    sweep = sweep_from_dict(tiny_sweep(
        {"noise[0].fraction": [0.1, 0.2],
         "noise[0]": [{"kind": "label_flip"},
                      {"kind": "correlated_label_flip", "feature_col": 36,
                       "feature_threshold": 0.01}]},
        trials_per_level=1))
    kinds = [(t.spec["noise"][0]["kind"], t.spec["noise"][0]["fraction"]) for t in sweep.trials]
    assert kinds == [("label_flip", 0.1), ("correlated_label_flip", 0.1),
                     ("label_flip", 0.2), ("correlated_label_flip", 0.2)]
    table = plan_table(sweep)
    assert "correlated_label_flip(feature_col=36,..." in table
    assert "kind=" not in table


def test_index_at_the_end_appends_a_noise_step():
    spec = {"noise": [{"kind": "label_flip"}]}
    set_path(spec, "noise[1]", {"kind": "gaussian", "std": 0.1})
    assert [s["kind"] for s in spec["noise"]] == ["label_flip", "gaussian"]
    with pytest.raises(SpecError, match="past the end"):
        set_path(spec, "noise[5].std", 0.2)
    assert parse_path("noise[0].fraction") == ["noise", 0, "fraction"]
    with pytest.raises(SpecError, match="cannot parse"):
        parse_path("noise[x].fraction")


def test_invalid_point_fails_naming_point_field_and_allowed_values():
    with pytest.raises(SpecError) as err:
        sweep_from_dict(tiny_sweep({"noise[0].fraction": [0.1, 1.5]}))
    text = str(err.value)
    assert "sweep point 2" in text and "noise[0].fraction=1.5" in text
    assert err.value.field.endswith("noise[0].fraction") and err.value.value == 1.5
    with pytest.raises(SpecError) as err:
        sweep_from_dict(tiny_sweep({"model.variant": ["base", "abstain"]}))
    assert err.value.value == "abstain" and "abstaining" in str(err.value)


@pytest.mark.parametrize("change, match", [
    (lambda t: t["sweep"].update(bogus=1), "sweep.bogus"),
    (lambda t: (t["sweep"]["axes"].update({"train.epochs": [1, 2, 3]}),
                t["sweep"].update(zip=[["noise[0].fraction", "train.epochs"]])),
     "differ in length"),
    (lambda t: t["sweep"].update(zip=[["noise[0].fraction", "nope"]]), "not an axis"),
    (lambda t: t["sweep"]["axes"].update({"seed": [1, 2]}), "both given"),
    (lambda t: t["sweep"]["axes"].update({"train.epochs": {"start": 1, "stop": 3}}),
     "unknown range form"),
    (lambda t: t["sweep"]["axes"].update({"train.epochs": []}), "empty axis"),
    (lambda t: t["run"].update(retries=-1), "run.retries"),
    (lambda t: t.pop("trial"), "missing required key"),
    (lambda t: t["sweep"]["axes"].update({"train.optimizer": ["sgd", "sgd"]}), "same trial"),
])
def test_malformed_sweeps_are_rejected(change, match):
    table = tiny_sweep()
    change(table)
    with pytest.raises(SpecError, match=match):
        sweep_from_dict(table)


def test_resolved_sweep_round_trips():
    sweep = sweep_from_dict(tiny_sweep({"model.variant": ["base", "abstaining"]}))
    again = sweep_from_resolved(sweep.to_dict())
    assert again.trial_ids == sweep.trial_ids
    assert again.run == sweep.run
    tampered = sweep.to_dict()
    tampered["trials"][0]["trial_id"] = "0" * 16
    with pytest.raises(SpecError, match="differ from a fresh expansion"):
        sweep_from_resolved(tampered)


@pytest.mark.parametrize("name", SWEEP_EXAMPLES)
def test_example_sweeps_expand_and_validate(name):
    sweep = load_sweep(EXAMPLES / name)
    assert len(sweep.trials) >= 4
    assert sweep.trials[0].trial_id == load_sweep(EXAMPLES / name).trials[0].trial_id


def test_gpu_sweep_example_is_ten_equal_packs_of_paper_trials():
    sweep = load_sweep(EXAMPLES / "nt3_gpu_sweep.toml")
    assert len(sweep.trials) == 100
    assert len(sweep.trials) % sweep.run.pack_size == 0
    assert {t.spec["data"]["n_features"] for t in sweep.trials} == {60483}


def test_quick_example_is_small_label_noise_study():
    sweep = load_sweep(EXAMPLES / "quick.toml")
    variants = {t.spec["model"]["variant"] for t in sweep.trials}
    seeds = {t.spec["seed"] for t in sweep.trials}
    assert variants == {"base", "abstaining"} and len(seeds) == 2
    assert all(t.spec["data"]["source"] == "synthetic_nt3" for t in sweep.trials)
    assert len(sweep.trials) <= 16


def test_plan_command_prints_count_and_table(sweep_file, capsys):
    path = sweep_file({"model.variant": ["base", "abstaining"]})
    assert genodl(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    sweep = load_sweep(path)
    assert f"{len(sweep.trials)} trials" in out
    for trial in sweep.trials:
        assert trial.trial_id in out
    assert "variant" in out and "seed" in out


def test_plan_rejects_an_invalid_sweep_with_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[sweep]\nname = "bad"\n[sweep.axes]\n"train.epochs" = [1, 0]\n'
                    '[trial]\n[trial.model]\nname = "nt3"\n[trial.data]\n'
                    'source = "synthetic_nt3"\n')
    assert genodl(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and "sweep point 1" in err


def test_checkpoint_interval_is_a_run_setting_that_reaches_the_workers(monkeypatch, tmp_path):
    assert sweep_from_dict(tiny_sweep()).run.checkpoint_interval_s is None
    sweep = sweep_from_dict(tiny_sweep(run={"checkpoint_interval_s": 0}))
    assert sweep.run.checkpoint_interval_s == 0.0
    assert sweep.to_dict()["run"]["checkpoint_interval_s"] == 0.0
    for bad in (-1, "often", True):
        with pytest.raises(SpecError, match="run.checkpoint_interval_s"):
            sweep_from_dict(tiny_sweep(run={"checkpoint_interval_s": bad}))

    from genodl_core.training import trial
    from workflows import apps

    seen = []
    monkeypatch.setattr(trial, "run_trials",
                        lambda specs, out, pack_size, settings: seen.append(settings) or [])
    monkeypatch.setenv("GENODL_CHECKPOINT_INTERVAL_S", "120")
    apps._run_trials([], tmp_path, None)
    apps._run_trials([], tmp_path, 0.0)
    apps._run_trials([], tmp_path, 30.0)
    assert [s.checkpoint_interval_s for s in seen] == [120.0, None, 30.0]
