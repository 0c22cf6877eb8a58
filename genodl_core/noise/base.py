"""Helpers shared by the noise steps: seeded selection masks, draws, and parameter checks.

Every noise step is a pure function ``fn(arrays, params, rng) -> NoiseOutcome``; the helpers
here keep the common parts (how many samples to pick, which distribution to draw from, how a
column index is checked against the data width) identical across steps, so that a "fraction"
or a "std" means the same thing in every kind.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np

from genodl_core.data.types import NoiseOutcome, TrainArrays
from genodl_core.errors import DataError, SpecError
from genodl_core.typed import check_range

#: How a fraction is realised: exactly ``round(fraction * n)`` units chosen without replacement,
#: or each unit independently with probability ``fraction`` (CANDLE's binomial behaviour).
SelectionMode = Literal["exact", "bernoulli"]
#: Distribution of additive noise of scale ``std``: N(0, std) or U(-std, std).
Distribution = Literal["normal", "uniform"]


def exact_count(fraction: float, n: int) -> int:
    """Number of units an exact-mode step selects: ``fraction * n`` rounded half up.

    Half up (not Python's round-half-to-even) so that the count grows monotonically with the
    fraction and does not depend on the parity of ``n``.
    """
    return int(np.floor(fraction * n + 0.5))


def select_mask(n: int, fraction: float, mode: SelectionMode,
                rng: np.random.Generator) -> np.ndarray:
    """Choose a subset of ``n`` units, returning a boolean mask of shape ``[n]``.

    Parameters
    ----------
    n
        Number of units (samples, cells, eligible samples) to choose from.
    fraction
        Share of units to select, in [0, 1].
    mode
        ``"exact"``: exactly :func:`exact_count` units, without replacement;
        ``"bernoulli"``: every unit independently with probability ``fraction``.
    rng
        The step's generator; the only source of randomness.

    Raises
    ------
    ValueError
        For an unknown mode (parameters are validated earlier, so this is a programming error).
    """
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    if mode == "exact":
        k = exact_count(fraction, n)
        if k > 0:
            mask[rng.choice(n, size=k, replace=False, shuffle=False)] = True
    elif mode == "bernoulli":
        mask = rng.random(n) < fraction
    else:
        raise ValueError(f"unknown selection mode {mode!r}")
    return mask


def draw(distribution: Distribution, std: float, shape: tuple[int, ...],
         rng: np.random.Generator) -> np.ndarray:
    """Zero-centred float32 noise of scale ``std``: N(0, std) or U(-std, std).

    Drawn directly in float32 so that noising a large expression matrix does not need a
    float64 temporary twice its size.

    Raises
    ------
    ValueError
        For an unknown distribution (a programming error; parameters are validated earlier).
    """
    if distribution == "normal":
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise *= np.float32(std)
    elif distribution == "uniform":
        noise = rng.random(shape, dtype=np.float32)
        noise *= np.float32(2.0 * std)
        noise -= np.float32(std)
    else:
        raise ValueError(f"unknown distribution {distribution!r}")
    return noise


def float32_copy(x: np.ndarray) -> np.ndarray:
    """A new float32 array with the values of ``x`` (never a view of the caller's data)."""
    return np.array(x, dtype=np.float32, copy=True)


def as_float32(x: np.ndarray) -> np.ndarray:
    """``x`` itself when already float32 (steps that leave x alone share it), else a copy."""
    return x if x.dtype == np.float32 else np.asarray(x, dtype=np.float32)


def fraction_of(count: int, total: int) -> float:
    """``count / total`` as a python float, 0.0 when there is nothing to count."""
    return float(count) / float(total) if total else 0.0


def check_fraction(where: str, name: str, value: float) -> None:
    """A share of units must lie in [0, 1]."""
    check_range(where, name, value, 0.0, 1.0)


def check_columns(where: str, name: str, columns: Sequence[int], what: str = "column") -> None:
    """Columns (or rows) must be a non-empty list of distinct non-negative indices.

    Raises
    ------
    SpecError
        Naming ``<where>.<name>`` (or one element of it) and what is allowed.
    """
    path = f"{where}.{name}" if where else name
    if len(columns) == 0:
        raise SpecError(path, list(columns), f"a non-empty list of {what} indices",
                        reason=f"no {what}s chosen")
    seen: set[int] = set()
    for i, col in enumerate(columns):
        check_range(where, f"{name}[{i}]", col, 0)
        if col in seen:
            raise SpecError(f"{path}[{i}]", col, f"distinct {what} indices",
                            reason=f"{what} listed twice")
        seen.add(col)


def check_columns_fit(where: str, name: str, columns: Sequence[int], n_features: int,
                      what: str = "column") -> None:
    """Every column (or row) index must address an existing feature (or sample).

    Raises
    ------
    SpecError
        Naming ``<where>.<name>[i]``, the index and ``0 <= <name> < n_features``.
    """
    for i, col in enumerate(columns):
        if not 0 <= col < n_features:
            path = f"{where}.{name}[{i}]" if where else f"{name}[{i}]"
            raise SpecError(path, col, f"0 <= {name} < {n_features}",
                            reason=f"{what} beyond the data "
                                   f"{'width' if what == 'column' else 'size'}")


def runtime_where(kind: str) -> str:
    """Field prefix for checks made when a step runs (the step does not know its list index)."""
    return f"noise[kind={kind!r}]"


def check_matrix(x: np.ndarray, what: str) -> None:
    """The feature (or target) matrix of a step must be two-dimensional.

    Raises
    ------
    DataError
        Naming the array and its shape.
    """
    if x.ndim != 2:
        raise DataError(f"training {what}: expected a 2-D array [n_samples, n_columns], "
                        f"got shape {x.shape}")


def add_gaussian(matrix: np.ndarray, std: float, kind: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A float32 copy of ``matrix`` plus ``N(0, std)`` in every cell, and the step's record.

    Shared by feature and target noise: the record holds ``std``, ``n_cells`` and the realised
    mean and standard deviation of what was added.
    """
    noise = draw("normal", std, matrix.shape, rng)
    noisy = float32_copy(matrix)
    noisy += noise
    record = {
        "kind": kind,
        "std": float(std),
        "n_cells": int(noise.size),
        "realised_mean": float(noise.mean(dtype=np.float64)) if noise.size else 0.0,
        "realised_std": float(noise.std(dtype=np.float64)) if noise.size else 0.0,
    }
    return noisy, record


def with_features(arrays: TrainArrays, new_x: np.ndarray, record: dict) -> NoiseOutcome:
    """The outcome of a step that changed the features only (targets and classes shared)."""
    return NoiseOutcome(dataclasses.replace(arrays, x=new_x), record)


def with_targets(arrays: TrainArrays, new_y: np.ndarray, record: dict) -> NoiseOutcome:
    """The outcome of a step that changed the targets only (features and classes shared)."""
    return NoiseOutcome(dataclasses.replace(arrays, y=new_y), record)
