"""Values and data files that cannot train fail early, naming the field or the file.

Absurd numbers (``learning_rate = 1e300``, ``n_train = 1e11``) are refused when the spec is
validated, not after minutes of allocation; unreadable or non-numeric matrices and splits left
empty raise DataError naming the file, what was expected and the counts.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from genodl_core.data.dgex_source import random_split
from genodl_core.data.matrices import read_matrix
from genodl_core.errors import DataError, SpecError
from genodl_core.spec import spec_from_dict
from genodl_core.typed import convert

DGEX_TRIAL = {
    "model": {"name": "lr"},
    "data": {"source": "synthetic_dgex", "n_landmarks": 8, "n_targets": 6, "n_train": 60,
             "n_val": 20, "n_test": 20, "n_factors": 3, "seed": 0},
}
NT3_TRIAL = {
    "model": {"name": "nt3"},
    "data": {"source": "synthetic_nt3", "n_train": 80, "n_test": 40, "n_features": 200},
}


def _with(base: dict, section: str, key: str, value) -> dict:
    spec = copy.deepcopy(base)
    spec.setdefault(section, {})[key] = value
    return spec


def _refused(spec: dict) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec_from_dict(spec)
    return info.value


@pytest.mark.parametrize("value, fragment", [
    (1e300, "32-bit"), (1e30, "learning_rate <= 100"), (float("inf"), "not finite"),
    (float("nan"), "not finite"), (-0.1, "0 < learning_rate"),
])
def test_absurd_learning_rates_are_refused_naming_the_field(value, fragment):
    err = _refused(_with(DGEX_TRIAL, "train", "learning_rate", value))
    assert err.field == "train.learning_rate"
    assert fragment in str(err)


def test_huge_float_parameters_are_refused_wherever_they_appear():
    err = _refused(_with(DGEX_TRIAL, "data", "noise_std", 1e300))
    assert err.field == "data.noise_std" and "32-bit" in str(err)


@pytest.mark.parametrize("value", [1e11, 60.0])
def test_a_float_for_an_integer_field_is_refused(value):
    err = _refused(_with(DGEX_TRIAL, "data", "n_train", value))
    assert err.field == "data.n_train"
    assert "expected an integer" in str(err)


@pytest.mark.parametrize("base, key, value", [
    (DGEX_TRIAL, "n_train", 10**11), (DGEX_TRIAL, "n_landmarks", 10**8),
    (NT3_TRIAL, "n_train", 10**11), (NT3_TRIAL, "n_test", 10**9),
])
def test_sizes_have_upper_bounds(base, key, value):
    err = _refused(_with(base, "data", key, value))
    assert err.field == f"data.{key}"
    assert "out of range" in str(err)


def test_sizes_whose_matrix_would_not_fit_memory_are_refused_with_its_size():
    # Each size alone is allowed; together they make a 225 GiB matrix.
    err = _refused(_with(NT3_TRIAL, "data", "n_train", 1_000_000) | {
        "data": {**NT3_TRIAL["data"], "n_train": 1_000_000, "n_features": 60_483}})
    assert err.field == "data.n_train"
    assert "GiB" in str(err) and "cells" in str(err)


def test_counts_from_a_whole_range_stay_integers():
    from workflows.sweep import sweep_from_dict

    table = {"sweep": {"name": "sizes", "axes": {"data.n_train": {"start": 40, "stop": 100,
                                                                   "num": 3}}},
             "trial": copy.deepcopy(DGEX_TRIAL)}
    sweep = sweep_from_dict(table)
    assert [t.spec["data"]["n_train"] for t in sweep.trials] == [40, 70, 100]


def test_text_options_refuse_exponent_counts():
    with pytest.raises(SpecError, match="expected an integer"):
        convert(int, "1e11", "-o max_workers", text=True)


# Data files --------------------------------------------------------------------------------

def _matrix(tmp_path):
    values = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    path = tmp_path / "m.npz"
    np.savez(path, matrix=values)
    return path


@pytest.mark.parametrize("keep", [0.5, 0.97, 40], ids=["half", "most", "header"])
def test_a_truncated_npz_names_the_file_and_what_was_expected(tmp_path, keep):
    whole = _matrix(tmp_path).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole[:keep if isinstance(keep, int) else int(len(whole) * keep)])
    with pytest.raises(DataError) as info:
        read_matrix(cut)
    text = str(info.value)
    assert str(cut) in text and "not a readable .npz archive" in text and "'matrix'" in text


def test_a_truncated_npy_names_the_file(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.ones((50, 40), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"m\.npy: not a readable \.npy array"):
        read_matrix(path)


@pytest.mark.parametrize("suffix", ["npy", "npz"])
def test_a_text_matrix_names_the_file_and_the_dtype(tmp_path, suffix):
    values = np.array([["a", "b", "c"], ["d", "e", "f"]])
    path = tmp_path / f"ids.{suffix}"
    if suffix == "npy":
        np.save(path, values)
    else:
        np.savez(path, matrix=values)
    with pytest.raises(DataError) as info:
        read_matrix(path)
    text = str(info.value)
    assert str(path) in text and "holds text" in text and "expected numbers" in text


def test_a_split_left_empty_is_an_error_naming_the_split_and_the_counts():
    with pytest.raises(DataError) as info:
        random_split(3, 0.15, 0.15, seed=0, source="tiny.npy")
    text = str(info.value)
    assert "tiny.npy" in text and "'test' split empty" in text
    assert "train 2, val 1, test 0" in text


def test_no_test_split_asked_for_is_no_error():
    split = random_split(3, 0.34, 0.0, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"val": 1, "test": 0, "train": 2}


def test_a_three_row_matrix_fails_the_trial_with_a_data_error(tmp_path):
    """End to end: the trial fails (deterministically) instead of finishing with no test rows."""
    from genodl_core.training.trial import run_trial

    path = tmp_path / "three.npy"
    np.save(path, np.random.default_rng(0).random((3, 12)).astype(np.float32))
    spec = {"seed": 0, "device": "cpu", "model": {"name": "lr"},
            "data": {"source": "expression_matrix", "path": str(path), "n_landmarks": 4,
                     "n_targets": 4}}
    spec_path = tmp_path / "trial.json"
    spec_path.write_text(json.dumps(spec))
    result = run_trial(spec_path, tmp_path / "out")
    assert result.state == "failed"
    assert result.error_type == "DataError" and "'test' split empty" in result.error
