"""Feature noise for both tasks: Gaussian, constant-percentage, column and cluster noise.

All steps act on the scaled training features ``x`` and return a NEW float32 matrix; the
targets ``y`` are shared unchanged (the caller's object itself, never written to). Magnitudes are
in scaled units, as in the NT3 noise study (CANDLE adds its noise after scaling too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from genodl_core.data.types import NoiseOutcome, TrainArrays
from genodl_core.errors import SpecError
from genodl_core.noise.base import (Distribution, SelectionMode, add_gaussian, check_columns,
                                    check_columns_fit, check_fraction, check_matrix, draw,
                                    float32_copy, fraction_of, runtime_where, select_mask,
                                    with_features)
from genodl_core.registry import NOISES
from genodl_core.typed import check_range

log = logging.getLogger(__name__)

BOTH_TASKS = ("classification", "regression")


@dataclass(frozen=True)
class GaussianParams:
    """Parameters of ``gaussian``: ``x + N(0, std)`` on every cell, without clipping.

    Attributes
    ----------
    std
        Standard deviation in scaled units, >= 0 (CANDLE's default 0.5).
    """

    std: float = 0.5

    level_field: ClassVar[str] = "std"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` for a negative ``std``."""
        check_range(where, "std", self.std, 0.0)


@dataclass(frozen=True)
class ConstantPctParams:
    """Parameters of ``constant_pct``: ``x * (1 + r * z)`` with ``z ~ U[0, 1)``.

    Attributes
    ----------
    r
        Largest relative increase, >= 0 (``r = 0.1`` raises values by up to 10 %).
    per
        ``"cell"``: an independent ``z`` for every value; ``"sample"``: one ``z`` per row, so
        a whole profile is scaled by the same factor.
    """

    r: float = 0.1
    per: Literal["cell", "sample"] = "cell"

    level_field: ClassVar[str] = "r"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` for a negative ``r``."""
        check_range(where, "r", self.r, 0.0)


@dataclass(frozen=True)
class ColumnParams:
    """Parameters of ``column``: additive noise on chosen columns of every row.

    Attributes
    ----------
    columns
        Distinct feature indices to corrupt (required).
    std
        Scale of the noise, >= 0: the standard deviation for ``normal``, the half-width for
        ``uniform`` (``U(-std, std)``, as CANDLE).
    distribution
        ``"normal"`` or ``"uniform"``.
    """

    columns: tuple[int, ...]
    std: float = 0.5
    distribution: Distribution = "normal"

    level_field: ClassVar[str] = "std"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` for an empty/negative/duplicated column list or std < 0."""
        check_columns(where, "columns", self.columns)
        check_range(where, "std", self.std, 0.0)

    def check_data(self, where: str, n_features: int) -> None:
        """Raise :class:`SpecError` naming the first column >= ``n_features``."""
        check_columns_fit(where, "columns", self.columns, n_features)


@dataclass(frozen=True)
class ClusterParams:
    """Parameters of ``cluster``: additive noise on a block of chosen rows x chosen columns.

    Exactly one of ``row_fraction`` and ``rows`` selects the rows.

    Attributes
    ----------
    columns
        Distinct feature indices of the block (required).
    row_fraction
        Share of training samples in the block, chosen with the step's generator.
    rows
        Explicit training-row indices of the block.
    row_mode
        How ``row_fraction`` is realised: ``"exact"`` or ``"bernoulli"``.
    std
        Scale of the noise, >= 0 (standard deviation, or half-width for ``uniform``).
    distribution
        ``"normal"`` or ``"uniform"``.
    """

    columns: tuple[int, ...]
    row_fraction: float | None = None
    rows: tuple[int, ...] | None = None
    row_mode: SelectionMode = "exact"
    std: float = 0.5
    distribution: Distribution = "normal"

    level_field: ClassVar[str] = "std"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` unless exactly one row selector is valid, and for bad
        columns or a negative std."""
        check_columns(where, "columns", self.columns)
        check_range(where, "std", self.std, 0.0)
        if (self.row_fraction is None) == (self.rows is None):
            field = f"{where}.row_fraction" if where else "row_fraction"
            raise SpecError(field, self.row_fraction,
                            "exactly one of row_fraction (in [0, 1]) or rows (a list)",
                            reason="give the rows either as a fraction or as a list")
        if self.row_fraction is not None:
            check_fraction(where, "row_fraction", self.row_fraction)
        if self.rows is not None:
            check_columns(where, "rows", self.rows, what="row")

    def check_data(self, where: str, n_features: int) -> None:
        """Raise :class:`SpecError` naming the first column >= ``n_features``."""
        check_columns_fit(where, "columns", self.columns, n_features)


@NOISES.register("gaussian", params=GaussianParams, tasks=BOTH_TASKS)
def gaussian(arrays: TrainArrays, params: GaussianParams,
             rng: np.random.Generator) -> NoiseOutcome:
    """Add ``N(0, std)`` to every training feature value.

    Returns
    -------
    NoiseOutcome
        New float32 ``x`` (``y`` shared unchanged); the record holds ``std``, ``n_cells`` and
        the realised mean and standard deviation of the added noise.

    Raises
    ------
    DataError
        When ``x`` is not two-dimensional.
    """
    check_matrix(arrays.x, "features")
    new_x, record = add_gaussian(arrays.x, params.std, "gaussian", rng)
    return with_features(arrays, new_x, record)


@NOISES.register("constant_pct", params=ConstantPctParams, tasks=BOTH_TASKS)
def constant_pct(arrays: TrainArrays, params: ConstantPctParams,
                 rng: np.random.Generator) -> NoiseOutcome:
    """Scale every value by ``1 + r * z``, ``z ~ U[0, 1)`` (the noise study's appendix C.1).

    The change is relative, so zeros stay zero and a value's sign never changes; negative
    scaled values move further from zero, exactly as positive ones do.

    Returns
    -------
    NoiseOutcome
        New float32 ``x`` (``y`` shared unchanged); the record holds ``r``, ``per`` and the
        realised mean factor ``mean_factor`` (expected ``1 + r / 2``).

    Raises
    ------
    DataError
        When ``x`` is not two-dimensional.
    """
    check_matrix(arrays.x, "features")
    n, f = arrays.x.shape
    shape = (n, f) if params.per == "cell" else (n, 1)
    factor = rng.random(shape, dtype=np.float32)
    factor *= np.float32(params.r)
    factor += np.float32(1.0)
    new_x = float32_copy(arrays.x)
    new_x *= factor
    record = {
        "kind": "constant_pct",
        "r": float(params.r),
        "per": params.per,
        "n_cells": int(n * f),
        "mean_factor": float(factor.mean(dtype=np.float64)) if factor.size else 1.0,
    }
    return with_features(arrays, new_x, record)


@NOISES.register("column", params=ColumnParams, tasks=BOTH_TASKS)
def column(arrays: TrainArrays, params: ColumnParams,
           rng: np.random.Generator) -> NoiseOutcome:
    """Add noise to the chosen columns of every row (CANDLE's column noise, seeded).

    Returns
    -------
    NoiseOutcome
        New float32 ``x`` (``y`` shared unchanged); the record holds the columns, ``std``,
        ``distribution``, ``n_cells`` touched and the realised noise standard deviation.

    Raises
    ------
    SpecError
        When a column is beyond the width of ``x``.
    DataError
        When ``x`` is not two-dimensional.
    """
    check_matrix(arrays.x, "features")
    params.check_data(runtime_where("column"), arrays.x.shape[1])
    cols = np.asarray(params.columns, dtype=np.intp)
    noise = draw(params.distribution, params.std, (arrays.x.shape[0], cols.size), rng)
    new_x = float32_copy(arrays.x)
    new_x[:, cols] += noise
    record = {
        "kind": "column",
        "columns": [int(c) for c in cols],
        "std": float(params.std),
        "distribution": params.distribution,
        "n_cells": int(noise.size),
        "realised_std": float(noise.std(dtype=np.float64)) if noise.size else 0.0,
    }
    return with_features(arrays, new_x, record)


@NOISES.register("cluster", params=ClusterParams, tasks=BOTH_TASKS)
def cluster(arrays: TrainArrays, params: ClusterParams,
            rng: np.random.Generator) -> NoiseOutcome:
    """Add noise to a block of chosen rows x chosen columns (CANDLE's cluster noise, seeded).

    Returns
    -------
    NoiseOutcome
        New float32 ``x`` (``y`` shared unchanged); the record holds the columns, ``std``,
        ``distribution``, ``n_rows``, ``realised_row_fraction``, ``n_cells`` and the boolean
        ``row_mask`` ``[n]``.

    Raises
    ------
    SpecError
        When a column is beyond the width of ``x`` or a listed row beyond its length.
    DataError
        When ``x`` is not two-dimensional.
    """
    check_matrix(arrays.x, "features")
    where = runtime_where("cluster")
    params.check_data(where, arrays.x.shape[1])
    n = arrays.x.shape[0]
    if params.rows is not None:
        check_columns_fit(where, "rows", params.rows, n, what="row")
        row_mask = np.zeros(n, dtype=bool)
        row_mask[np.asarray(params.rows, dtype=np.intp)] = True
    else:
        row_mask = select_mask(n, float(params.row_fraction), params.row_mode, rng)
    rows = np.flatnonzero(row_mask)
    cols = np.asarray(params.columns, dtype=np.intp)
    noise = draw(params.distribution, params.std, (rows.size, cols.size), rng)
    new_x = float32_copy(arrays.x)
    new_x[np.ix_(rows, cols)] += noise
    record = {
        "kind": "cluster",
        "columns": [int(c) for c in cols],
        "std": float(params.std),
        "distribution": params.distribution,
        "n_rows": int(rows.size),
        "realised_row_fraction": fraction_of(rows.size, n),
        "n_cells": int(noise.size),
        "row_mask": row_mask,
    }
    return with_features(arrays, new_x, record)
