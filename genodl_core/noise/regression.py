"""Noise for the D-GEX regression task: corrupted targets and missing landmark measurements.

Regression has no labels to flip; these are its analogues. ``y`` is the float32 target matrix
``[n_samples, n_targets]`` and ``x`` the landmark genes, both standardised on the training split.
Gaussian and constant-percentage noise on the landmarks are the generic feature steps
(``gaussian``, ``constant_pct``); the steps here are regression only.

Every step returns new arrays; the side it does not touch is shared unchanged (the caller's
object itself, never written to): ``target_*`` share ``x``, ``landmark_dropout`` shares ``y``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from genodl_core.data.types import NoiseOutcome, TrainArrays
from genodl_core.noise.base import (SelectionMode, add_gaussian, check_fraction, check_matrix,
                                    float32_copy, fraction_of, select_mask, with_features,
                                    with_targets)
from genodl_core.registry import NOISES
from genodl_core.typed import check_range

log = logging.getLogger(__name__)

REGRESSION = ("regression",)


@dataclass(frozen=True)
class TargetGaussianParams:
    """Parameters of ``target_gaussian``: ``y + N(0, std)`` on every target value.

    Attributes
    ----------
    std
        Standard deviation in standardised target units, >= 0.
    """

    std: float = 0.5

    level_field: ClassVar[str] = "std"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` for a negative ``std``."""
        check_range(where, "std", self.std, 0.0)


@dataclass(frozen=True)
class TargetOutliersParams:
    """Parameters of ``target_outliers``: gross errors in a fraction of the target values.

    The outlier magnitude is ``scale`` times the training standard deviation of the target gene
    (computed on the clean targets; a constant gene uses 1), so it means the same on
    standardised and unstandardised targets.

    Attributes
    ----------
    fraction
        Share of units corrupted, in [0, 1].
    unit
        ``"cell"``: single target values are chosen; ``"sample"``: whole profiles (all targets
        of the chosen samples), as a failed array would give.
    action
        ``"shift"``: ``y + s * scale * std_j``; ``"replace"``: ``mean_j + s * scale * std_j``
        (the measurement is lost and replaced by an extreme value).
    sign
        ``s``: ``"random"`` (+1 or -1 with equal probability, per value), ``"positive"`` or
        ``"negative"``.
    scale
        Magnitude in standard deviations, >= 0.
    mode
        ``"exact"``: exactly ``round(fraction * units)``; ``"bernoulli"``: each independently.
    """

    fraction: float = 0.05
    unit: Literal["cell", "sample"] = "cell"
    action: Literal["shift", "replace"] = "shift"
    sign: Literal["random", "positive", "negative"] = "random"
    scale: float = 5.0
    mode: SelectionMode = "exact"

    level_field: ClassVar[str] = "fraction"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` for a fraction outside [0, 1] or a negative scale."""
        check_fraction(where, "fraction", self.fraction)
        check_range(where, "scale", self.scale, 0.0)


@dataclass(frozen=True)
class LandmarkDropoutParams:
    """Parameters of ``landmark_dropout``: landmark measurements lost and set to ``fill``.

    Attributes
    ----------
    fraction
        Share of landmark values (cells of ``x``) dropped, in [0, 1].
    fill
        The value written in place of a dropped measurement; 0.0 is the training mean after
        standardisation, i.e. mean imputation.
    mode
        ``"exact"``: exactly ``round(fraction * cells)``; ``"bernoulli"``: each independently.
    """

    fraction: float = 0.1
    fill: float = 0.0
    mode: SelectionMode = "exact"

    level_field: ClassVar[str] = "fraction"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` for a fraction outside [0, 1]."""
        check_fraction(where, "fraction", self.fraction)


def _targets(arrays: TrainArrays) -> np.ndarray:
    y = np.asarray(arrays.y)
    check_matrix(y, "targets")
    return y


@NOISES.register("target_gaussian", params=TargetGaussianParams, tasks=REGRESSION)
def target_gaussian(arrays: TrainArrays, params: TargetGaussianParams,
                    rng: np.random.Generator) -> NoiseOutcome:
    """Add ``N(0, std)`` to every training target value (measurement noise on the targets).

    Returns
    -------
    NoiseOutcome
        New float32 ``y`` (``x`` shared unchanged); the record holds ``std``, ``n_cells`` and
        the realised mean and standard deviation of the added noise.

    Raises
    ------
    DataError
        When ``y`` is not a 2-D target matrix.
    """
    new_y, record = add_gaussian(_targets(arrays), params.std, "target_gaussian", rng)
    return with_targets(arrays, new_y, record)


@NOISES.register("target_outliers", params=TargetOutliersParams, tasks=REGRESSION)
def target_outliers(arrays: TrainArrays, params: TargetOutliersParams,
                    rng: np.random.Generator) -> NoiseOutcome:
    """Turn a fraction of target values (or whole target profiles) into gross outliers.

    Returns
    -------
    NoiseOutcome
        New float32 ``y`` (``x`` shared unchanged); the record holds ``n_units``,
        ``n_outliers`` (units corrupted), ``realised_fraction`` (over units), ``n_cells``
        (target values changed) and the boolean ``outlier_mask`` ``[n, n_targets]``.

    Raises
    ------
    DataError
        When ``y`` is not a 2-D target matrix.
    """
    y = _targets(arrays)
    n, t = y.shape
    if params.unit == "cell":
        n_units = n * t
        mask = select_mask(n_units, params.fraction, params.mode, rng).reshape(n, t)
        n_outliers = int(mask.sum())
    else:
        n_units = n
        rows = select_mask(n, params.fraction, params.mode, rng)
        mask = np.repeat(rows[:, None], t, axis=1)
        n_outliers = int(rows.sum())
    # float64 accumulators without a float64 copy of y (the targets can be gigabytes).
    mean = y.mean(axis=0, dtype=np.float64) if n else np.zeros(t)
    std = y.std(axis=0, dtype=np.float64) if n else np.ones(t)
    std = np.where(std > 0, std, 1.0)
    rows_idx, cols_idx = np.nonzero(mask)
    if params.sign == "random":
        signs = rng.choice(np.array([-1.0, 1.0]), size=rows_idx.size)
    else:
        signs = np.full(rows_idx.size, 1.0 if params.sign == "positive" else -1.0)
    offset = signs * params.scale * std[cols_idx]
    base = (y[rows_idx, cols_idx].astype(np.float64) if params.action == "shift"
            else mean[cols_idx])
    new_y = float32_copy(y)
    new_y[rows_idx, cols_idx] = (base + offset).astype(np.float32)
    record = {
        "kind": "target_outliers",
        "fraction": float(params.fraction),
        "unit": params.unit,
        "action": params.action,
        "sign": params.sign,
        "scale": float(params.scale),
        "mode": params.mode,
        "n_units": int(n_units),
        "n_outliers": n_outliers,
        "realised_fraction": fraction_of(n_outliers, n_units),
        "n_cells": int(rows_idx.size),
        "outlier_mask": mask,
    }
    log.info("target_outliers: %d of %d %ss corrupted", n_outliers, n_units, params.unit)
    return with_targets(arrays, new_y, record)


@NOISES.register("landmark_dropout", params=LandmarkDropoutParams, tasks=REGRESSION)
def landmark_dropout(arrays: TrainArrays, params: LandmarkDropoutParams,
                     rng: np.random.Generator) -> NoiseOutcome:
    """Set a fraction of the landmark measurements to ``fill`` (missing values imputed).

    Returns
    -------
    NoiseOutcome
        New float32 ``x`` (``y`` shared unchanged); the record holds ``n_dropped``,
        ``realised_fraction`` over all cells and the boolean ``dropout_mask`` ``[n, f]``.

    Raises
    ------
    DataError
        When ``x`` is not two-dimensional.
    """
    check_matrix(arrays.x, "features")
    n, f = arrays.x.shape
    mask = select_mask(n * f, params.fraction, params.mode, rng).reshape(n, f)
    new_x = float32_copy(arrays.x)
    new_x[mask] = np.float32(params.fill)
    n_dropped = int(mask.sum())
    record = {
        "kind": "landmark_dropout",
        "fraction": float(params.fraction),
        "fill": float(params.fill),
        "mode": params.mode,
        "n_cells": int(n * f),
        "n_dropped": n_dropped,
        "realised_fraction": fraction_of(n_dropped, n * f),
        "dropout_mask": mask,
    }
    log.info("landmark_dropout: %d of %d landmark values set to %g", n_dropped, n * f,
             params.fill)
    return with_features(arrays, new_x, record)
