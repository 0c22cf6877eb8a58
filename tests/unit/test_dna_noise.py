"""DNA noise steps: seeded, per-target records, training split only, inputs untouched."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.dna_codes import N_CODE
from genodl_core.data.types import TrainArrays
from genodl_core.errors import DataError
from genodl_core.noise.dna import (BaseSubstitutionParams, MissedPeaksParams, NMaskParams,
                                   SpuriousPeaksParams, base_substitution, missed_peaks, n_mask,
                                   spurious_peaks)


def _arrays(seed: int = 0) -> TrainArrays:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(400, 50), dtype=np.uint8)
    x[0, :5] = N_CODE
    y = (rng.random((400, 4)) < [0.02, 0.1, 0.2, 0.05]).astype(np.uint8)
    return TrainArrays(x, y)


def test_missed_peaks_flip_positives_per_target_and_record_the_mask():
    a = _arrays()
    out = missed_peaks(a, MissedPeaksParams(rate=0.5), np.random.default_rng(1))
    mask = out.record["flip_mask"]
    assert mask.shape == a.y.shape and (a.y[mask] == 1).all() and (out.arrays.y[mask] == 0).all()
    np.testing.assert_array_equal(out.arrays.y[~mask], a.y[~mask])
    positives = a.y.sum(axis=0)
    assert out.record["n_flipped_per_target"] == np.floor(0.5 * positives + 0.5).astype(
        int).tolist()
    assert out.arrays.x is a.x and a.y.sum() == positives.sum()  # inputs untouched
    again = missed_peaks(a, MissedPeaksParams(rate=0.5), np.random.default_rng(1))
    np.testing.assert_array_equal(again.record["flip_mask"], mask)


def test_missed_peaks_rates_can_depend_on_prevalence():
    a = _arrays()
    out = missed_peaks(a, MissedPeaksParams(rate=0.2, prevalence_power=-1.0),
                       np.random.default_rng(0))
    rates = np.array(out.record["rate_per_target"])
    prevalence = a.y.mean(axis=0)
    assert rates[np.argmin(prevalence)] > rates[np.argmax(prevalence)]


def test_spurious_peaks_flip_negatives_only():
    a = _arrays()
    out = spurious_peaks(a, SpuriousPeaksParams(rate=0.1), np.random.default_rng(2))
    mask = out.record["flip_mask"]
    assert (a.y[mask] == 0).all() and (out.arrays.y[mask] == 1).all()
    assert 0.09 < np.mean(out.record["realised_rate_per_target"]) < 0.11


def test_base_substitution_changes_known_bases_at_the_rate():
    a = _arrays()
    out = base_substitution(a, BaseSubstitutionParams(rate=0.1), np.random.default_rng(3))
    changed = out.arrays.x != a.x
    assert not changed[0, :5].any()  # Ns stay N
    assert changed.sum() == out.record["n_substituted"]
    assert 0.08 < out.record["realised_rate"] < 0.12
    assert (out.arrays.x[changed] < 4).all() and out.arrays.y is a.y


def test_n_mask_writes_stretches_and_records_where():
    a = _arrays()
    out = n_mask(a, NMaskParams(fraction=0.25, length=7), np.random.default_rng(4))
    starts = out.record["mask_start"]
    rows = np.flatnonzero(starts >= 0)
    assert rows.size == 100
    r = rows[1]
    assert (out.arrays.x[r, starts[r]:starts[r] + 7] == N_CODE).all()
    untouched = np.setdiff1d(np.arange(400), rows)
    np.testing.assert_array_equal(out.arrays.x[untouched], a.x[untouched])


def test_steps_refuse_other_data():
    with pytest.raises(DataError, match=r"\[n, T\]"):
        missed_peaks(TrainArrays(np.zeros((3, 4), np.uint8), np.zeros(3, np.int64)),
                     MissedPeaksParams(), np.random.default_rng(0))
    with pytest.raises(DataError, match="uint8 DNA codes"):
        n_mask(TrainArrays(np.zeros((3, 4), np.float32), np.zeros((3, 2))), NMaskParams(),
               np.random.default_rng(0))
