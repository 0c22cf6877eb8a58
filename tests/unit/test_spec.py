"""Loading and validating trial specs; the stable trial id."""

from __future__ import annotations

import json

import pytest

from genodl_core.errors import SpecError
from genodl_core.spec import derive_seed, load_spec, spec_from_dict

BASE = {
    "seed": 3,
    "model": {"name": "nt3", "conv": [[4, 5, 1], [4, 3, 1]], "dense": [8]},
    "data": {"source": "synthetic_nt3", "n_train": 40, "n_test": 20, "n_features": 200},
    "noise": [{"kind": "label_flip", "fraction": 0.2}],
    "train": {"epochs": 2},
}


def with_(path: str, value):
    """BASE with one nested value replaced (path like 'noise.0.fraction')."""
    spec = json.loads(json.dumps(BASE))
    node = spec
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1]] = value
    return spec


def test_resolved_spec_round_trips_and_id_ignores_key_order_and_defaults():
    spec = spec_from_dict(BASE)
    again = spec_from_dict(spec.to_dict())
    assert again == spec and again.trial_id == spec.trial_id
    reordered = dict(reversed(list(BASE.items())))
    assert spec_from_dict(reordered).trial_id == spec.trial_id
    explicit = with_("train.batch_size", 16)       # 16 is the default: same trial
    assert spec_from_dict(explicit).trial_id == spec.trial_id
    assert spec_from_dict(with_("seed", 4)).trial_id != spec.trial_id
    assert len(spec.trial_id) == 16


def test_toml_and_json_files_load_the_same(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(BASE))
    (tmp_path / "t.toml").write_text(
        'seed = 3\n[model]\nname = "nt3"\nconv = [[4, 5, 1], [4, 3, 1]]\ndense = [8]\n'
        '[data]\nsource = "synthetic_nt3"\nn_train = 40\nn_test = 20\nn_features = 200\n'
        '[[noise]]\nkind = "label_flip"\nfraction = 0.2\n[train]\nepochs = 2\n')
    assert load_spec(tmp_path / "t.json").trial_id == load_spec(tmp_path / "t.toml").trial_id


@pytest.mark.parametrize("path, value, field, allowed", [
    ("model.name", "nt4", "model.name", "nt3"),
    ("noise.0.kind", "label_flp", "noise[0].kind", "label_flip"),
    ("noise.0.fraction", 1.5, "noise[0].fraction", "<= 1"),
    ("data.source", "csv", "data.source", "synthetic_nt3"),
    ("train.optimizer", "rmsprop", "train.optimizer", "adam"),
    ("train.epochs", 0, "train.epochs", "1 <= epochs"),
    ("device", "tpu", "device", "cuda"),
    ("precision", "fp8", "precision", "bf16"),
    ("train.learning_rate", "fast", "train.learning_rate", "a number"),
])
def test_invalid_values_name_field_value_and_allowed(path, value, field, allowed):
    with pytest.raises(SpecError) as info:
        spec_from_dict(with_(path, value))
    message = str(info.value)
    assert info.value.field == field and repr(value) in message and allowed in message


def test_feature_col_beyond_declared_width_is_rejected_at_load():
    bad = with_("noise", [{"kind": "correlated_label_flip", "fraction": 0.1,
                           "feature_col": 200, "feature_threshold": 0.01}])
    with pytest.raises(SpecError) as info:
        spec_from_dict(bad)
    assert info.value.field == "noise[0].feature_col" and "200" in str(info.value)


def test_negative_std_and_unknown_keys_are_rejected():
    with pytest.raises(SpecError, match=r"noise\[0\]\.std=-0\.1"):
        spec_from_dict(with_("noise", [{"kind": "gaussian", "std": -0.1}]))
    with pytest.raises(SpecError, match="unknown key"):
        spec_from_dict({**BASE, "epochs": 3})
    with pytest.raises(SpecError, match=r"model\.filters"):
        spec_from_dict(with_("model.filters", 3))


def test_task_mismatch_is_rejected():
    with pytest.raises(SpecError, match="does not apply to classification data") as info:
        spec_from_dict(with_("noise", [{"kind": "target_gaussian", "std": 0.1}]))
    assert info.value.field == "noise[0].kind"


def test_missing_file_and_bad_toml_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("seed = = 1\n")
    with pytest.raises(SpecError, match="cannot parse"):
        load_spec(tmp_path / "bad.toml")


def test_derived_seeds_are_stable_and_independent():
    assert derive_seed(1, "noise[0]") == derive_seed(1, "noise[0]")
    assert len({derive_seed(1, "noise[0]"), derive_seed(1, "init"), derive_seed(2, "noise[0]")}) == 3


@pytest.mark.parametrize("path, value, field", [
    ("noise.0.fraction", float("nan"), "noise[0].fraction"),
    ("train.learning_rate", float("nan"), "train.learning_rate"),
    ("train.timeout_s", float("inf"), "train.timeout_s"),
    ("train", 5, "train"),
    ("train", "abc", "train"),
    ("model.name", ["nt3"], "model.name"),
])
def test_non_finite_numbers_and_non_tables_name_the_field(path, value, field):
    with pytest.raises(SpecError) as info:
        spec_from_dict(with_(path, value))
    assert info.value.field == field
