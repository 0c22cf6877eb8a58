"""The typed-config builder and the trial record files (no models or data needed)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

from genodl_core import records
from genodl_core.errors import SpecError
from genodl_core.typed import build, check_range, convert, to_plain


@dataclass(frozen=True)
class Inner:
    size: int = 3


@dataclass(frozen=True)
class Example:
    name: str
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    triples: tuple[tuple[int, int, int], ...] = ((1, 2, 3),)
    limit: float | None = None
    flag: bool = False
    inner: Inner = Inner()

    def validate(self, where: str) -> None:
        check_range(where, "rate", self.rate, 0, 1)


def test_build_fills_defaults_and_converts_lists():
    obj = build(Example, {"name": "x", "rate": 1, "sizes": [4, 5], "triples": [[7, 8, 9]],
                          "inner": {"size": 9}}, "model")
    assert obj.rate == 1.0 and isinstance(obj.rate, float)
    assert obj.sizes == (4, 5) and obj.triples == ((7, 8, 9),) and obj.inner == Inner(9)
    assert build(Example, to_plain(obj), "model") == obj


@pytest.mark.parametrize("data, field, fragment", [
    ({"name": "x", "rat": 1}, "model.rat", "unknown key"),
    ({"name": "x", "mode": "c"}, "model.mode", "['a', 'b']"),
    ({"name": "x", "rate": 1.5}, "model.rate", "0 <= rate <= 1"),
    ({"name": "x", "rate": "fast"}, "model.rate", "a number"),
    ({"name": "x", "sizes": [1, "two"]}, "model.sizes[1]", "an integer"),
    ({"name": "x", "triples": [[1, 2]]}, "model.triples[0]", "expected 3 items"),
    ({"name": "x", "flag": 1}, "model.flag", "true or false"),
    ({}, "model.name", "missing required key"),
])
def test_build_errors_name_field_value_and_allowed(data, field, fragment):
    with pytest.raises(SpecError) as info:
        build(Example, data, "model")
    assert info.value.field == field
    assert fragment in str(info.value)
    assert str(info.value).startswith(field + "=")


@pytest.mark.parametrize("tp, text, value", [
    (int, " 12 ", 12), (float, "0.5", 0.5), (float, "3", 3.0), (bool, "Yes", True),
    (bool, "off", False), (int | None, "4", 4), (tuple[int, ...], ["1", "2"], (1, 2)),
    (str, "7", "7"), (Literal["a", "b"], "b", "b"),
])
def test_convert_reads_numbers_and_booleans_from_text(tp, text, value):
    got = convert(tp, text, "opt", text=True)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("tp, value, fragment", [
    (int, "two", "expected an integer"), (int, "1.5", "expected an integer"),
    (float, "fast", "expected a number"), (float, "nan", "not finite"),
    (bool, "maybe", "'off', 'on', 'true', 'yes'"), (str, 7, "expected a string"),
])
def test_convert_from_text_names_field_value_and_allowed(tp, value, fragment):
    with pytest.raises(SpecError) as info:
        convert(tp, value, "site.opt", text=True)
    assert info.value.field == "site.opt" and info.value.value == value
    assert fragment in str(info.value)


def test_convert_without_text_keeps_strings_strings():
    with pytest.raises(SpecError, match="expected an integer"):
        convert(int, "3", "seed")
    with pytest.raises(SpecError, match="true or false"):
        convert(bool, "yes", "flag")


def test_result_arrays_are_split_out_and_complete_requires_both_files(tmp_path):
    trial = tmp_path / "abc123"
    trial.mkdir()
    mask = np.array([True, False, True])
    records.write_result(trial, {"trial_id": "abc123", "final": {"acc": 0.5},
                                 "noise": [{"kind": "label_flip", "flip_mask": mask}]})
    stored = json.loads((trial / records.RESULT_FILE).read_text())
    assert stored["noise"][0]["flip_mask"] == {"array": "noise.0.flip_mask"}
    assert not records.is_complete(trial)          # no 'done' status yet
    records.write_status(trial, records.DONE)
    assert records.is_complete(trial)
    rec = records.load_record(trial)
    assert rec.state == "done" and rec.problems == []
    np.testing.assert_array_equal(rec.arrays()["noise.0.flip_mask"], mask)
    (trial / records.ARRAYS_FILE).unlink()
    assert not records.is_complete(trial)


def test_done_status_with_foreign_or_corrupt_result_is_not_complete(tmp_path):
    trial = tmp_path / "abc123"
    trial.mkdir()
    records.write_status(trial, records.DONE)
    (trial / records.RESULT_FILE).write_text('{"trial_id": "abc1')
    assert not records.is_complete(trial)
    assert records.load_record(trial).state == "corrupt"
    records.atomic_write_json(trial / records.RESULT_FILE, {"trial_id": "other", "arrays": []})
    assert not records.is_complete(trial)


def _writer(path: str, n: int) -> None:
    for i in range(n):
        records.atomic_write_json(path, {"i": i, "payload": "x" * 100_000})


def test_atomic_write_never_exposes_partial_json(tmp_path):
    path = tmp_path / "status.json"
    records.atomic_write_json(path, {"i": -1})
    proc = mp.get_context("spawn").Process(target=_writer, args=(str(path), 200))
    proc.start()
    reads = 0
    while proc.is_alive() or reads == 0:
        json.loads(path.read_text())        # raises if a reader ever sees half a file
        reads += 1
    proc.join()
    assert proc.exitcode == 0
    assert json.loads(path.read_text())["i"] == 199
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
