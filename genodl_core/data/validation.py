"""The validation split of a trial: carved from the training rows, or the source's own.

The alpha controller, the plateau schedule and D-GEX's best-epoch selection all tune on the
validation split, so a score on it is not a score on untouched data. The NT3 sources hold a
training file and a test file only, and (as CANDLE) hand the test file over as the validation
split. :func:`apply_validation` turns that into three splits before anything is scaled: a
seeded share of the training rows (stratified by class) becomes the validation split, and the
test file becomes the test split, which nothing tunes on. Scalers fitted on the training split
then see only the rows that remain in it. The rules are those of
:class:`genodl_core.spec.ValidationSpec`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genodl_core.data.types import Dataset
from genodl_core.errors import DataError
from genodl_core.spec import AUTO_VALIDATION_FRACTION, ValidationSpec, derive_seed


def apply_validation(raw: Dataset, rule: ValidationSpec, source: str) -> Dataset:
    """The dataset with its validation split chosen by ``rule``; ``info["validation"]`` says
    what was done and how many rows each split holds.

    Parameters
    ----------
    raw
        What the data source returned (raw values, not yet scaled).
    rule
        The trial's validation rule.
    source
        The data source's name, for messages.

    Raises
    ------
    DataError
        When a carve would leave a split empty or a class without training rows (naming the
        counts), or when the rule does not fit the source's splits.
    """
    has_test = raw.x_test is not None and len(raw.x_test) > 0
    if rule.rule == "test":
        if has_test:
            raise DataError(
                f"data source {source!r}: data.validation='test' validates on the test split "
                f"with no separate test (CANDLE's NT3 arrangement), but this source has a test "
                f"split ({len(raw.x_test)} rows) separate from its validation split "
                f"({len(raw.x_val)} rows); allowed here: 'auto' (keep the source's splits)")
        return _with_record(raw, {"rule": "test", "validation_is": "the test split (as CANDLE)",
                                  "test": False})
    if rule.rule == "auto":
        if has_test:
            return _with_record(raw, {"rule": "auto", "validation_is": "the source's own split",
                                      "test": True})
        fraction = AUTO_VALIDATION_FRACTION
    else:
        fraction = float(rule.rule)
        if has_test:
            raise DataError(
                f"data source {source!r}: data.validation={fraction} carves the validation "
                f"split from the training rows and makes the source's validation split the "
                f"test split, but this source already has a separate test split "
                f"({len(raw.x_test)} rows); allowed here: 'auto' (set the source's own "
                f"validation size with its parameters)")
    return carve_validation(raw, fraction, rule.seed, source, rule_name=rule.rule)


def carve_validation(raw: Dataset, fraction: float, seed: int, source: str, *,
                     rule_name: str | float | None = None) -> Dataset:
    """Move a seeded ``fraction`` of the training rows into the validation split; the former
    validation split becomes the test split.

    Classification carves the same share of every class (rounded per class), so the
    validation split keeps the training split's class balance; regression carves
    ``round(fraction * n_train)`` rows. The rows keep their file order within each split. The
    generator is seeded from ``seed`` alone, never from the trial seed, so every trial of a
    sweep sees the same split.

    Raises
    ------
    DataError
        When the carve leaves the validation or the training split empty, or a class with
        no training rows (naming the counts).
    """
    n_train = len(raw.x_train)
    rng = np.random.default_rng(derive_seed(seed, "validation"))
    if raw.task == "classification":
        val_rows = _stratified_rows(raw.y_train, fraction, rng)
    else:
        val_rows = np.sort(rng.permutation(n_train)[:int(round(fraction * n_train))])
    keep = np.ones(n_train, dtype=bool)
    keep[val_rows] = False
    _check_carve(raw, keep, fraction, source)
    info = {"rule": fraction if rule_name is None else rule_name, "validation_is": "carved from the training split",
            "fraction": fraction, "seed": seed, "stratified": raw.task == "classification",
            "test": True, "test_is": "the source's validation split"}
    carved = raw.replace(x_train=raw.x_train[keep], y_train=raw.y_train[keep],
                         x_val=raw.x_train[val_rows], y_val=raw.y_train[val_rows],
                         x_test=raw.x_val, y_test=raw.y_val)
    return _with_record(carved, info)


def _stratified_rows(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices holding ``round(fraction * n_c)`` seeded rows of every class c."""
    chosen = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        chosen.append(rng.permutation(rows)[:int(round(fraction * len(rows)))])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _check_carve(raw: Dataset, keep: np.ndarray, fraction: float, source: str) -> None:
    n_train, n_keep = len(keep), int(keep.sum())
    where = f"data source {source!r}: data.validation={fraction} of {n_train} training rows"
    if n_keep == n_train:
        raise DataError(f"{where} carves 0 validation rows; allowed: a larger fraction or more "
                        f"training rows")
    if n_keep == 0:
        raise DataError(f"{where} leaves 0 training rows; allowed: a smaller fraction")
    if raw.task != "classification":
        return
    labels, counts = np.unique(raw.y_train, return_counts=True)
    kept = np.bincount(raw.y_train[keep], minlength=int(labels.max()) + 1)[labels]
    lost = [(int(c), int(n)) for c, n, k in zip(labels, counts, kept) if k == 0]
    if lost:
        listed = ", ".join(f"class {c} ({n} rows, all carved)" for c, n in lost)
        raise DataError(f"{where} leaves no training row of {listed}; allowed: a smaller "
                        f"fraction or more rows of that class")


def _with_record(ds: Dataset, record: dict[str, Any]) -> Dataset:
    """``ds`` with ``info["validation"]``: the rule and every split's row count."""
    counts = {"n_train": len(ds.x_train), "n_val": len(ds.x_val),
              "n_test": 0 if ds.x_test is None else len(ds.x_test)}
    if ds.task == "classification" and ds.n_classes:
        for split, y in (("train", ds.y_train), ("val", ds.y_val), ("test", ds.y_test)):
            if y is not None:
                counts[f"class_counts_{split}"] = np.bincount(
                    y, minlength=ds.n_classes).astype(int).tolist()
    return ds.replace(info={**ds.info, "validation": {**record, **counts}})


__all__ = ["apply_validation", "carve_validation"]
