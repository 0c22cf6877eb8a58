"""Label noise for classification: uncorrelated and feature-correlated label flips.

These reproduce the label corruptions of the NT3 noise study, with three deliberate changes from
CANDLE's implementation: every draw comes from the step's seeded generator, the labels are
copied rather than flipped in place, and the default ``exact`` mode flips exactly
``round(fraction * N)`` samples so that a noise level means the same amount of noise in every
trial (CANDLE's binomial behaviour is the ``bernoulli`` mode).

Both steps leave the features untouched: the returned ``TrainArrays.x`` is the caller's ``x``
object itself (shared, never written to).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from genodl_core.data.types import NoiseOutcome, TrainArrays
from genodl_core.errors import DataError, SpecError
from genodl_core.noise.base import (SelectionMode, check_fraction, check_matrix, fraction_of,
                                    runtime_where, select_mask)
from genodl_core.registry import NOISES
from genodl_core.typed import check_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelFlipParams:
    """Parameters of ``label_flip``.

    Attributes
    ----------
    fraction
        Share of training samples whose label is flipped, in [0, 1].
    mode
        ``"exact"`` flips exactly ``round(fraction * N)`` samples (rounded half up), chosen
        without replacement; ``"bernoulli"`` flips each sample independently with probability
        ``fraction``.
    """

    fraction: float = 0.1
    mode: SelectionMode = "exact"

    level_field: ClassVar[str] = "fraction"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` when ``fraction`` lies outside [0, 1]."""
        check_fraction(where, "fraction", self.fraction)


@dataclass(frozen=True)
class CorrelatedLabelFlipParams:
    """Parameters of ``correlated_label_flip``.

    Attributes
    ----------
    fraction
        Share of the *eligible* samples whose label is flipped, in [0, 1].
    mode
        ``"exact"`` or ``"bernoulli"``, as for ``label_flip``, applied to eligible samples.
    feature_col
        Index of the gene whose (scaled) value decides eligibility; the default is the column
        used in the NT3 noise study.
    feature_threshold
        A sample is eligible when ``x[:, feature_col] > feature_threshold`` (strictly).
    """

    fraction: float = 0.1
    mode: SelectionMode = "exact"
    feature_col: int = 11180
    feature_threshold: float = 0.01

    level_field: ClassVar[str] = "fraction"

    def validate(self, where: str) -> None:
        """Raise :class:`SpecError` for a fraction outside [0, 1] or a negative column."""
        check_fraction(where, "fraction", self.fraction)
        check_range(where, "feature_col", self.feature_col, 0)

    def check_data(self, where: str, n_features: int) -> None:
        """Raise :class:`SpecError` when ``feature_col`` does not address a feature.

        Raises
        ------
        SpecError
            Field ``<where>.feature_col``, its value, and ``0 <= feature_col < n_features``.
        """
        if not 0 <= self.feature_col < n_features:
            raise SpecError(f"{where}.feature_col", self.feature_col,
                            f"0 <= feature_col < {n_features}",
                            reason="column beyond the data width")


def _class_labels(arrays: TrainArrays) -> tuple[np.ndarray, int]:
    """Validate the labels and return them with the number of classes.

    Raises
    ------
    DataError
        When labels are not a 1-D integer vector, a label lies outside ``range(n_classes)``
        (naming the first offending row), or there is only one class to flip between.
    """
    y = np.asarray(arrays.y)
    if y.ndim != 1:
        raise DataError(f"training labels: expected a 1-D vector of class indices, "
                        f"got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"training labels: expected integer class indices, got dtype {y.dtype}")
    n_classes = arrays.n_classes
    if n_classes is None:
        n_classes = int(y.max()) + 1 if y.size else 0
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        row = int(bad[0])
        raise DataError(f"training labels, row {row}: label {int(y[row])} is outside "
                        f"range({n_classes}) ({bad.size} such rows)")
    if n_classes < 2:
        raise DataError(f"training labels: {n_classes} class(es); a label flip needs at least 2")
    return y, int(n_classes)


def flip_labels(y: np.ndarray, mask: np.ndarray, n_classes: int,
                rng: np.random.Generator) -> np.ndarray:
    """A copy of ``y`` where every masked label moves to a different class, chosen uniformly.

    A random offset in ``1 .. n_classes - 1`` added modulo ``n_classes`` lands uniformly on the
    other classes; for two classes it is always 1, i.e. a swap.
    """
    new = np.array(y, dtype=np.int64, copy=True)
    n_flip = int(mask.sum())
    if n_flip:
        offsets = rng.integers(1, n_classes, size=n_flip)
        new[mask] = (new[mask] + offsets) % n_classes
    return new


@NOISES.register("label_flip", params=LabelFlipParams, tasks=("classification",))
def label_flip(arrays: TrainArrays, params: LabelFlipParams,
               rng: np.random.Generator) -> NoiseOutcome:
    """Flip the labels of a fraction of the training samples.

    Parameters
    ----------
    arrays
        Training split; ``y`` holds integer class indices.
    params
        Fraction and selection mode.
    rng
        The step's seeded generator.

    Returns
    -------
    NoiseOutcome
        New labels (``x`` shared unchanged) and a record with ``n_flipped``,
        ``realised_fraction`` (over all samples) and the boolean ``flip_mask`` ``[n]``.

    Raises
    ------
    DataError
        When the labels are not valid class indices or there is only one class.
    """
    y, n_classes = _class_labels(arrays)
    mask = select_mask(y.shape[0], params.fraction, params.mode, rng)
    new_y = flip_labels(y, mask, n_classes, rng)
    n_flipped = int(mask.sum())
    record = {
        "kind": "label_flip",
        "fraction": float(params.fraction),
        "mode": params.mode,
        "n_samples": int(y.shape[0]),
        "n_classes": n_classes,
        "n_flipped": n_flipped,
        "realised_fraction": fraction_of(n_flipped, y.shape[0]),
        "flip_mask": mask,
    }
    log.info("label_flip: flipped %d of %d labels (%.4f)", n_flipped, y.shape[0],
             record["realised_fraction"])
    return NoiseOutcome(TrainArrays(arrays.x, new_y, n_classes), record)


@NOISES.register("correlated_label_flip", params=CorrelatedLabelFlipParams,
                 tasks=("classification",))
def correlated_label_flip(arrays: TrainArrays, params: CorrelatedLabelFlipParams,
                          rng: np.random.Generator) -> NoiseOutcome:
    """Flip labels only among samples where one gene is expressed above a threshold.

    This models label errors that depend on the biology (e.g. a marker gene confusing the
    annotator): ``fraction`` applies to the eligible samples, so the share of all samples
    flipped is lower and is recorded separately.

    Parameters
    ----------
    arrays
        Training split after scaling (the threshold is in scaled units).
    params
        Fraction, mode, eligibility column and threshold.
    rng
        The step's seeded generator.

    Returns
    -------
    NoiseOutcome
        New labels (``x`` shared unchanged) and a record with ``n_eligible``, ``n_flipped``,
        ``realised_fraction`` (over all samples), ``realised_fraction_eligible``, and the
        boolean ``eligible_mask`` and ``flip_mask`` ``[n]``.

    Raises
    ------
    SpecError
        When ``feature_col`` is beyond the width of ``x``.
    DataError
        When the labels are not valid class indices or there is only one class.
    """
    check_matrix(arrays.x, "features")
    params.check_data(runtime_where("correlated_label_flip"), arrays.x.shape[1])
    y, n_classes = _class_labels(arrays)
    eligible = np.asarray(arrays.x[:, params.feature_col] > params.feature_threshold)
    eligible_idx = np.flatnonzero(eligible)
    chosen = select_mask(eligible_idx.size, params.fraction, params.mode, rng)
    mask = np.zeros(y.shape[0], dtype=bool)
    mask[eligible_idx[chosen]] = True
    new_y = flip_labels(y, mask, n_classes, rng)
    n_flipped = int(mask.sum())
    n_eligible = int(eligible_idx.size)
    if n_eligible == 0:
        log.warning("correlated_label_flip: no training sample has x[:, %d] > %g; "
                    "no label was flipped", params.feature_col, params.feature_threshold)
    record = {
        "kind": "correlated_label_flip",
        "fraction": float(params.fraction),
        "mode": params.mode,
        "feature_col": int(params.feature_col),
        "feature_threshold": float(params.feature_threshold),
        "n_samples": int(y.shape[0]),
        "n_classes": n_classes,
        "n_eligible": n_eligible,
        "n_flipped": n_flipped,
        "realised_fraction": fraction_of(n_flipped, y.shape[0]),
        "realised_fraction_eligible": fraction_of(n_flipped, n_eligible),
        "eligible_mask": eligible,
        "flip_mask": mask,
    }
    log.info("correlated_label_flip: flipped %d of %d eligible (%d samples)", n_flipped,
             n_eligible, y.shape[0])
    return NoiseOutcome(TrainArrays(arrays.x, new_y, n_classes), record)
