"""Noise of DNA multi-label data: what peak calling and sequencing do to DeepSEA-like sets.

Four steps, each a pure function of the training split and a seeded generator (validation and
test data stay clean), each returning new arrays and a record:

- ``missed_peaks``: positive -> negative flips per target (a peak the caller missed; far more
  common than the reverse). The rate of target t is ``rate * (prevalence_t / mean
  prevalence) ** prevalence_power``, clipped to [0, 1]: power 0 flips every target alike, a
  negative power hits rare targets harder (weak, rare peaks are missed most).
- ``spurious_peaks``: negative -> positive flips per target at ``rate`` (false peaks).
- ``base_substitution``: every known base (not N) replaced by one of the three others with
  probability ``rate`` (sequencing errors, SNPs against the reference).
- ``n_mask``: a share ``fraction`` of the sequences gets a stretch of ``length`` Ns at a random
  position (unmappable or masked sequence).

Records: the label steps store the flip mask ``[n, T]`` and per-target realised rates; the
sequence steps per-row counts (a ``[n, L]`` mask of a DeepSEA-sized set would take 4.4 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from genodl_core.data.dna_codes import N_CODE
from genodl_core.data.types import NoiseOutcome, TrainArrays
from genodl_core.errors import DataError
from genodl_core.noise.base import (SelectionMode, check_fraction, select_mask, with_features,
                                    with_targets)
from genodl_core.registry import NOISES
from genodl_core.typed import check_range

TASKS = ("multilabel",)


@dataclass(frozen=True)
class MissedPeaksParams:
    """``missed_peaks``: share of each target's positives turned negative."""

    rate: float = 0.1
    #: Exponent of the prevalence dependence (0: equal rates; < 0: rare targets lose more).
    prevalence_power: float = 0.0
    mode: SelectionMode = "exact"

    level_field: ClassVar[str] = "rate"

    def validate(self, where: str) -> None:
        check_fraction(where, "rate", self.rate)
        check_range(where, "prevalence_power", self.prevalence_power, -4.0, 4.0)


@dataclass(frozen=True)
class SpuriousPeaksParams:
    """``spurious_peaks``: share of each target's negatives turned positive."""

    rate: float = 0.001
    mode: SelectionMode = "exact"

    level_field: ClassVar[str] = "rate"

    def validate(self, where: str) -> None:
        check_fraction(where, "rate", self.rate)


@dataclass(frozen=True)
class BaseSubstitutionParams:
    """``base_substitution``: per-base substitution probability."""

    rate: float = 0.01

    level_field: ClassVar[str] = "rate"

    def validate(self, where: str) -> None:
        check_fraction(where, "rate", self.rate)


@dataclass(frozen=True)
class NMaskParams:
    """``n_mask``: share of sequences with one stretch of ``length`` Ns."""

    fraction: float = 0.1
    length: int = 20
    mode: SelectionMode = "exact"

    level_field: ClassVar[str] = "fraction"

    def validate(self, where: str) -> None:
        check_fraction(where, "fraction", self.fraction)
        check_range(where, "length", self.length, 1)


def _labels(arrays: TrainArrays, kind: str) -> np.ndarray:
    y = np.asarray(arrays.y)
    if y.ndim != 2:
        raise DataError(f"noise {kind!r}: expects multi-label targets [n, T], got shape "
                        f"{y.shape}")
    return y


def _codes(arrays: TrainArrays, kind: str) -> np.ndarray:
    x = np.asarray(arrays.x)
    if x.ndim != 2 or x.dtype != np.uint8:
        raise DataError(f"noise {kind!r}: expects uint8 DNA codes [n, L], got {x.dtype} "
                        f"{x.shape}")
    return x


def _flip_per_target(y: np.ndarray, source: int, rates: np.ndarray, mode: SelectionMode,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip, per target t, a share ``rates[t]`` of the entries equal to ``source``."""
    mask = np.zeros(y.shape, dtype=bool)
    for t in range(y.shape[1]):
        rows = np.flatnonzero(y[:, t] == source)
        chosen = select_mask(len(rows), float(rates[t]), mode, rng)
        mask[rows[chosen], t] = True
    new = y.copy()
    new[mask] = 1 - source
    return new, mask


def _label_record(kind: str, y: np.ndarray, source: int, mask: np.ndarray,
                  rates: np.ndarray) -> dict:
    eligible = (y == source).sum(axis=0)
    realised = np.divide(mask.sum(axis=0), eligible, out=np.zeros(y.shape[1]),
                         where=eligible > 0)
    return {"kind": kind, "n_flipped": int(mask.sum()),
            "n_flipped_per_target": mask.sum(axis=0).astype(int).tolist(),
            "rate_per_target": np.round(rates, 6).tolist(),
            "realised_rate_per_target": np.round(realised, 6).tolist(),
            "flip_mask": mask}


@NOISES.register("missed_peaks", params=MissedPeaksParams, tasks=TASKS)
def missed_peaks(arrays: TrainArrays, params: MissedPeaksParams,
                 rng: np.random.Generator) -> NoiseOutcome:
    """Turn positives negative per target (see the module docstring for the rates)."""
    y = _labels(arrays, "missed_peaks")
    prevalence = y.mean(axis=0, dtype=np.float64)
    if params.prevalence_power and (prevalence > 0).any():
        rel = np.where(prevalence > 0, prevalence / prevalence[prevalence > 0].mean(), 1.0)
        rates = np.clip(params.rate * rel ** params.prevalence_power, 0.0, 1.0)
    else:
        rates = np.full(y.shape[1], params.rate)
    new, mask = _flip_per_target(y, 1, rates, params.mode, rng)
    return with_targets(arrays, new, _label_record("missed_peaks", y, 1, mask, rates))


@NOISES.register("spurious_peaks", params=SpuriousPeaksParams, tasks=TASKS)
def spurious_peaks(arrays: TrainArrays, params: SpuriousPeaksParams,
                   rng: np.random.Generator) -> NoiseOutcome:
    """Turn negatives positive per target at ``rate``."""
    y = _labels(arrays, "spurious_peaks")
    rates = np.full(y.shape[1], params.rate)
    new, mask = _flip_per_target(y, 0, rates, params.mode, rng)
    return with_targets(arrays, new, _label_record("spurious_peaks", y, 0, mask, rates))


@NOISES.register("base_substitution", params=BaseSubstitutionParams, tasks=TASKS)
def base_substitution(arrays: TrainArrays, params: BaseSubstitutionParams,
                      rng: np.random.Generator) -> NoiseOutcome:
    """Replace known bases by a different base with probability ``rate`` each."""
    x = _codes(arrays, "base_substitution")
    new = x.copy()
    per_row = np.zeros(len(x), dtype=np.int32)
    for lo in range(0, len(x), 8192):  # bounded float temporaries on large sets
        block = new[lo:lo + 8192]
        hit = (rng.random(block.shape, dtype=np.float32) < params.rate) & (block != N_CODE)
        shift = rng.integers(1, 4, size=int(hit.sum()), dtype=np.uint8)
        block[hit] = (block[hit] + shift) % 4
        per_row[lo:lo + 8192] = hit.sum(axis=1)
    known = int((x != N_CODE).sum())
    record = {"kind": "base_substitution", "rate": params.rate,
              "n_substituted": int(per_row.sum()),
              "realised_rate": float(per_row.sum()) / known if known else 0.0,
              "substitutions_per_row": per_row}
    return with_features(arrays, new, record)


@NOISES.register("n_mask", params=NMaskParams, tasks=TASKS)
def n_mask(arrays: TrainArrays, params: NMaskParams, rng: np.random.Generator) -> NoiseOutcome:
    """Write a stretch of ``length`` Ns at a random position into a share of the sequences."""
    x = _codes(arrays, "n_mask")
    n, length = x.shape
    width = min(params.length, length)
    rows = np.flatnonzero(select_mask(n, params.fraction, params.mode, rng))
    starts = rng.integers(0, length - width + 1, size=rows.size)
    new = x.copy()
    new[rows[:, None], starts[:, None] + np.arange(width)] = N_CODE
    start_per_row = np.full(n, -1, dtype=np.int32)
    start_per_row[rows] = starts
    record = {"kind": "n_mask", "fraction": params.fraction, "length": width,
              "n_masked": int(rows.size), "realised_fraction": rows.size / n if n else 0.0,
              "mask_start": start_per_row}
    return with_features(arrays, new, record)


__all__ = ["MissedPeaksParams", "SpuriousPeaksParams", "BaseSubstitutionParams", "NMaskParams",
           "missed_peaks", "spurious_peaks", "base_substitution", "n_mask"]
