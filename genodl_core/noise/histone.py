"""Noise of histone-mark data: shallower sequencing, a missing mark, a misannotated TSS.

The features are read counts ``[samples, marks * bins]``, mark-major, as the histone sources
produce them (:mod:`genodl_core.data.histone`); ``n_marks`` tells a step how to split a row
into tracks. Gaussian noise on log expression is ``target_gaussian`` and label flips for the
classifier are ``label_flip``: the generic steps apply as they are.

Every step draws from the generator it is given, returns new arrays (targets shared) and a
record of what it did, including per-sample arrays (which samples, which mark, which shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from genodl_core.data.types import NoiseOutcome, TrainArrays
from genodl_core.errors import DataError
from genodl_core.noise.base import (SelectionMode, check_fraction, check_matrix, select_mask,
                                    with_features)
from genodl_core.registry import NOISES
from genodl_core.typed import check_range

BOTH = ("regression", "classification")


def _tracks(x: np.ndarray, n_marks: int, kind: str) -> np.ndarray:
    """A float32 copy of ``x`` viewed as ``[samples, marks, bins]``.

    Raises
    ------
    DataError
        When ``x`` is not a matrix whose width ``n_marks`` divides.
    """
    check_matrix(x, "features")
    if x.shape[1] % n_marks:
        raise DataError(f"noise {kind!r}: {x.shape[1]} features do not split into "
                        f"n_marks={n_marks} tracks; set n_marks to the data's mark count")
    return np.array(x, dtype=np.float32, copy=True).reshape(len(x), n_marks, -1)


@dataclass(frozen=True)
class DepthThinningParams:
    """``depth_thinning``: keep each read with probability ``keep`` (binomial thinning), as a
    sequencing run of ``keep`` times the depth would have seen."""

    keep: float = 0.5
    level_field: ClassVar[str] = "keep"

    def validate(self, where: str) -> None:
        check_range(where, "keep", self.keep, 0.0, 1.0)


@NOISES.register("depth_thinning", params=DepthThinningParams, tasks=BOTH)
def depth_thinning(arrays: TrainArrays, params: DepthThinningParams,
                   rng: np.random.Generator) -> NoiseOutcome:
    """Binomially thin every count of the training features.

    Raises
    ------
    DataError
        When the features are not non-negative whole counts (log-transformed data cannot be
        thinned).
    """
    x = np.asarray(arrays.x)
    check_matrix(x, "features")
    if (x < 0).any() or not np.array_equal(x, np.round(x)):
        raise DataError("noise 'depth_thinning' needs raw read counts (non-negative whole "
                        "numbers); these features are transformed")
    new_x = rng.binomial(x.astype(np.int64), params.keep).astype(np.float32)
    before, after = float(x.sum()), float(new_x.sum())
    return with_features(arrays, new_x, {"keep": params.keep, "reads_before": before,
                                         "reads_after": after,
                                         "realised_keep": after / before if before else 0.0})


@dataclass(frozen=True)
class MarkMissingParams:
    """``mark_missing``: in ``fraction`` of the samples one mark reads zero everywhere (an
    assay missing in that sample). ``mark``: the index of the mark that goes missing, or -1
    for a mark drawn per sample."""

    fraction: float = 0.2
    mark: int = -1
    n_marks: int = 5
    mode: SelectionMode = "exact"
    level_field: ClassVar[str] = "fraction"

    def validate(self, where: str) -> None:
        check_fraction(where, "fraction", self.fraction)
        check_range(where, "n_marks", self.n_marks, 1)
        check_range(where, "mark", self.mark, -1, self.n_marks - 1)


@NOISES.register("mark_missing", params=MarkMissingParams, tasks=BOTH)
def mark_missing(arrays: TrainArrays, params: MarkMissingParams,
                 rng: np.random.Generator) -> NoiseOutcome:
    """Zero one mark's track in a fraction of the training samples."""
    tracks = _tracks(np.asarray(arrays.x), params.n_marks, "mark_missing")
    hit = select_mask(len(tracks), params.fraction, params.mode, rng)
    marks = np.full(len(tracks), -1, dtype=np.int64)
    rows = np.flatnonzero(hit)
    marks[rows] = (params.mark if params.mark >= 0
                   else rng.integers(params.n_marks, size=rows.size))
    tracks[rows, marks[rows], :] = 0.0
    return with_features(arrays, tracks.reshape(len(tracks), -1),
                         {"fraction": params.fraction, "n_samples": int(rows.size),
                          "realised_fraction": float(hit.mean()) if hit.size else 0.0,
                          "missing_mark": marks})


@dataclass(frozen=True)
class TSSShiftParams:
    """``tss_shift``: in ``fraction`` of the samples the TSS is misannotated by 1 to
    ``max_shift`` bins either way: every track moves by that many bins, the bins shifted in
    read zero."""

    fraction: float = 0.2
    max_shift: int = 5
    n_marks: int = 5
    mode: SelectionMode = "exact"
    level_field: ClassVar[str] = "fraction"

    def validate(self, where: str) -> None:
        check_fraction(where, "fraction", self.fraction)
        check_range(where, "max_shift", self.max_shift, 1)
        check_range(where, "n_marks", self.n_marks, 1)


@NOISES.register("tss_shift", params=TSSShiftParams, tasks=BOTH)
def tss_shift(arrays: TrainArrays, params: TSSShiftParams,
              rng: np.random.Generator) -> NoiseOutcome:
    """Shift every track of a fraction of the training samples by a drawn number of bins."""
    tracks = _tracks(np.asarray(arrays.x), params.n_marks, "tss_shift")
    n_bins = tracks.shape[2]
    if params.max_shift >= n_bins:
        raise DataError(f"noise 'tss_shift': max_shift={params.max_shift} must be below the "
                        f"{n_bins} bins of a track")
    hit = select_mask(len(tracks), params.fraction, params.mode, rng)
    shifts = np.zeros(len(tracks), dtype=np.int64)
    rows = np.flatnonzero(hit)
    magnitude = rng.integers(1, params.max_shift + 1, size=rows.size)
    shifts[rows] = np.where(rng.random(rows.size) < 0.5, -magnitude, magnitude)
    out = tracks.copy()
    for r in rows:
        s = shifts[r]
        out[r] = 0.0
        if s > 0:
            out[r, :, s:] = tracks[r, :, :-s]
        else:
            out[r, :, :s] = tracks[r, :, -s:]
    return with_features(arrays, out.reshape(len(out), -1),
                         {"fraction": params.fraction, "max_shift": params.max_shift,
                          "n_samples": int(rows.size),
                          "realised_fraction": float(hit.mean()) if hit.size else 0.0,
                          "shift_bins": shifts})


__all__ = ["DepthThinningParams", "MarkMissingParams", "TSSShiftParams", "depth_thinning",
           "mark_missing", "tss_shift"]
