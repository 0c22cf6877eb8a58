"""Noise of gene-pair data (CNNC): missed relations in the labels, fewer cells, extra dropout.

The features are NEPDF images ``[pairs, bins * bins]`` (:mod:`genodl_core.data.cnnc_images`).
Steps that act on cells recover each image's cell counts by inverting CNNC's scaling (exact
for unsmoothed images; the cell count ``n`` is ``1 / the smallest non-empty density`` over
the training images, checked by requiring whole counts everywhere), change the counts, and
scale them back. They keep each image's bin edges: real down-sampling could also narrow a
gene's range and re-bin; this is the part of the effect a fixed image grid can show.

Uniform pair-label flips are the generic ``label_flip``; Gaussian feature noise and the other
generic steps apply to the images as they are. Every step draws from the generator it is
given, returns new arrays and records what it did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from genodl_core.data.cnnc_images import DENSITY_FLOOR, scale_density
from genodl_core.data.types import NoiseOutcome, TrainArrays
from genodl_core.errors import DataError, SpecError
from genodl_core.noise.base import SelectionMode, check_fraction, check_matrix, select_mask
from genodl_core.noise.base import with_features
from genodl_core.registry import NOISES
from genodl_core.typed import check_range

log = logging.getLogger(__name__)

#: How far a recovered cell count may lie from a whole number.
COUNT_TOLERANCE = 0.02


@dataclass(frozen=True)
class ClassFlipParams:
    """``class_conditional_flip``: a share ``fraction`` of the training pairs of class
    ``from_class`` get label ``to_class`` (default: positives listed as negatives, the common
    error of curated interaction databases)."""

    fraction: float = 0.1
    from_class: int = 1
    to_class: int = 0
    mode: SelectionMode = "exact"
    level_field: ClassVar[str] = "fraction"

    def validate(self, where: str) -> None:
        check_fraction(where, "fraction", self.fraction)
        check_range(where, "from_class", self.from_class, 0)
        check_range(where, "to_class", self.to_class, 0)
        if self.from_class == self.to_class:
            raise SpecError(f"{where}.to_class", self.to_class,
                            f"a class other than from_class={self.from_class}",
                            reason="a flip to the same class changes nothing")


@NOISES.register("class_conditional_flip", params=ClassFlipParams, tasks=("classification",))
def class_conditional_flip(arrays: TrainArrays, params: ClassFlipParams,
                           rng: np.random.Generator) -> NoiseOutcome:
    """Relabel a share of one class's training samples as another class.

    Returns
    -------
    NoiseOutcome
        New labels (features shared) and a record with ``n_flipped``, ``realised_fraction``
        (over the class's samples), ``realised_fraction_all`` (over all) and ``flip_mask``.

    Raises
    ------
    DataError
        When a class index is beyond the data's classes.
    """
    y = np.asarray(arrays.y)
    n_classes = int(arrays.n_classes or (int(y.max()) + 1))
    for name in ("from_class", "to_class"):
        value = getattr(params, name)
        if value >= n_classes:
            raise DataError(f"noise 'class_conditional_flip': {name}={value} but the data have "
                            f"classes 0..{n_classes - 1}")
    eligible = np.flatnonzero(y == params.from_class)
    chosen = select_mask(len(eligible), params.fraction, params.mode, rng)
    mask = np.zeros(len(y), dtype=bool)
    mask[eligible[chosen]] = True
    new_y = np.array(y, dtype=np.int64, copy=True)
    new_y[mask] = params.to_class
    n = int(mask.sum())
    record = {"kind": "class_conditional_flip", "fraction": float(params.fraction),
              "from_class": params.from_class, "to_class": params.to_class,
              "n_eligible": int(len(eligible)), "n_flipped": n,
              "realised_fraction": n / len(eligible) if len(eligible) else 0.0,
              "realised_fraction_all": n / len(y) if len(y) else 0.0, "flip_mask": mask}
    log.info("class_conditional_flip: %d of %d class-%d labels -> %d", n, len(eligible),
             params.from_class, params.to_class)
    return NoiseOutcome(TrainArrays(arrays.x, new_y, n_classes), record)


def image_counts(x: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
    """Cell counts ``[pairs, bins, bins]`` behind NEPDF images and the cells per image.

    Raises
    ------
    DataError
        When the rows are not square images, or the counts are not whole numbers (smoothed
        images, or features that are not NEPDF images).
    """
    check_matrix(x, "features")
    bins = int(round(np.sqrt(x.shape[1])))
    if bins * bins != x.shape[1]:
        raise DataError(f"noise {kind!r}: {x.shape[1]} features are not square NEPDF images")
    density = np.clip(10.0 ** (np.asarray(x, np.float64) * 4.0 - 4.0) - DENSITY_FLOOR, 0, None)
    density[np.asarray(x) <= 0] = 0.0
    nonzero = density[density > 0]
    if not nonzero.size:
        raise DataError(f"noise {kind!r}: every image is empty")
    n = int(round(1.0 / nonzero.min()))
    counts = density * n
    off = np.abs(counts - np.rint(counts)).max()
    if off > COUNT_TOLERANCE:
        raise DataError(f"noise {kind!r} needs unsmoothed NEPDF images (sigma = 0): the counts "
                        f"recovered for {n} cells are off whole numbers by up to {off:.3f}")
    return np.rint(counts).reshape(len(x), bins, bins), n


def _images(counts: np.ndarray) -> np.ndarray:
    """NEPDF images of counts ``[pairs, bins, bins]``, each scaled by its own cell total."""
    totals = np.maximum(counts.sum(axis=(1, 2), keepdims=True), 1.0)
    return scale_density(counts / totals).reshape(len(counts), -1).astype(np.float32)


@dataclass(frozen=True)
class CellDownsampleParams:
    """``cell_downsample``: each image keeps each of its cells with probability ``keep`` (an
    experiment with ``keep`` times the cells)."""

    keep: float = 0.5
    level_field: ClassVar[str] = "keep"

    def validate(self, where: str) -> None:
        check_range(where, "keep", self.keep, 0, 1, lo_open=True)


@NOISES.register("cell_downsample", params=CellDownsampleParams, tasks=("classification",))
def cell_downsample(arrays: TrainArrays, params: CellDownsampleParams,
                    rng: np.random.Generator) -> NoiseOutcome:
    """Binomially thin every image's cell counts; record the cells kept per image."""
    counts, n = image_counts(arrays.x, "cell_downsample")
    kept = rng.binomial(counts.astype(np.int64), params.keep).astype(np.float64)
    cells = kept.sum(axis=(1, 2))
    record = {"kind": "cell_downsample", "keep": float(params.keep), "n_cells": n,
              "realised_keep": float(cells.mean() / n), "cells_kept": cells.astype(np.int32)}
    return with_features(arrays, _images(kept), record)


@dataclass(frozen=True)
class PairDropoutParams:
    """``expression_dropout``: each cell's value of gene A, and independently of gene B, drops
    to zero with probability ``rate`` (extra technical dropout): the cell moves to that gene's
    lowest bin, where zeros fall (a gene with any zero has log10(0.01) as its minimum)."""

    rate: float = 0.1
    level_field: ClassVar[str] = "rate"

    def validate(self, where: str) -> None:
        check_range(where, "rate", self.rate, 0, 1)


@NOISES.register("expression_dropout", params=PairDropoutParams, tasks=("classification",))
def expression_dropout(arrays: TrainArrays, params: PairDropoutParams,
                       rng: np.random.Generator) -> NoiseOutcome:
    """Move a share of each image's cells to gene A's and then gene B's zero bin."""
    counts, n = image_counts(arrays.x, "expression_dropout")
    c = counts.astype(np.int64)
    moved_a = rng.binomial(c, params.rate)           # rows: B bins, columns: A bins
    c = c - moved_a
    c[:, :, 0] += moved_a.sum(axis=2)
    moved_b = rng.binomial(c, params.rate)
    c = c - moved_b
    c[:, 0, :] += moved_b.sum(axis=1)
    dropped = moved_a.sum(axis=(1, 2)) + moved_b.sum(axis=(1, 2))
    record = {"kind": "expression_dropout", "rate": float(params.rate), "n_cells": n,
              "realised_rate": float(dropped.sum() / (2.0 * n * len(c))) if len(c) else 0.0,
              "values_dropped": dropped.astype(np.int32)}
    return with_features(arrays, _images(c.astype(np.float64)), record)


__all__ = ["ClassFlipParams", "CellDownsampleParams", "PairDropoutParams",
           "class_conditional_flip", "cell_downsample", "expression_dropout", "image_counts"]
