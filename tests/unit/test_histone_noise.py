"""Histone noise steps: seeded, recorded, never touching the caller's arrays."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.types import TrainArrays
from genodl_core.errors import DataError
from genodl_core.noise.histone import (DepthThinningParams, MarkMissingParams, TSSShiftParams,
                                       depth_thinning, mark_missing, tss_shift)
from genodl_core.spec import spec_from_dict


def _arrays(n=40, marks=5, bins=12):
    rng = np.random.default_rng(0)
    x = rng.poisson(20.0, size=(n, marks * bins)).astype(np.float32)
    x.flags.writeable = False  # a step writing into it would raise
    return TrainArrays(x, np.zeros((n, 1), np.float32))


def test_thinning_keeps_about_keep_of_the_reads_and_never_adds():
    arrays = _arrays()
    out = depth_thinning(arrays, DepthThinningParams(keep=0.3), np.random.default_rng(1))
    x = out.arrays.x
    assert (x <= arrays.x).all() and np.array_equal(x, np.round(x))
    assert 0.27 < out.record["realised_keep"] < 0.33
    again = depth_thinning(arrays, DepthThinningParams(keep=0.3), np.random.default_rng(1))
    np.testing.assert_array_equal(x, again.arrays.x)
    assert out.arrays.y is arrays.y
    with pytest.raises(DataError, match="raw read counts"):
        depth_thinning(TrainArrays(np.log1p(arrays.x), arrays.y), DepthThinningParams(),
                       np.random.default_rng(1))


def test_missing_mark_zeroes_exactly_the_recorded_tracks():
    arrays = _arrays()
    out = mark_missing(arrays, MarkMissingParams(fraction=0.25), np.random.default_rng(2))
    missing = out.record["missing_mark"]
    assert (missing >= 0).sum() == 10 == out.record["n_samples"]
    before, after = arrays.x.reshape(40, 5, 12), out.arrays.x.reshape(40, 5, 12)
    for r in range(40):
        for m in range(5):
            if missing[r] == m:
                assert not after[r, m].any()
            else:
                np.testing.assert_array_equal(after[r, m], before[r, m])
    fixed = mark_missing(arrays, MarkMissingParams(fraction=1.0, mark=3),
                         np.random.default_rng(2))
    assert not fixed.arrays.x.reshape(40, 5, 12)[:, 3].any()


def test_tss_shift_moves_every_track_by_the_recorded_bins():
    arrays = _arrays()
    out = tss_shift(arrays, TSSShiftParams(fraction=0.5, max_shift=3), np.random.default_rng(3))
    shifts = out.record["shift_bins"]
    assert (shifts != 0).sum() == 20 and np.abs(shifts).max() <= 3
    before, after = arrays.x.reshape(40, 5, 12), out.arrays.x.reshape(40, 5, 12)
    for r in range(40):
        s = shifts[r]
        if s > 0:
            np.testing.assert_array_equal(after[r, :, s:], before[r, :, :-s])
            assert not after[r, :, :s].any()
        elif s < 0:
            np.testing.assert_array_equal(after[r, :, :s], before[r, :, -s:])
        else:
            np.testing.assert_array_equal(after[r], before[r])
    with pytest.raises(DataError, match="n_marks=7"):
        tss_shift(arrays, TSSShiftParams(n_marks=7), np.random.default_rng(3))


def test_histone_specs_take_the_generic_steps_too():
    base = {"seed": 1, "data": {"source": "synthetic_histone_labels"},
            "model": {"name": "deepchrome"}}
    spec = spec_from_dict({**base, "noise": [{"kind": "label_flip", "fraction": 0.1},
                                             {"kind": "depth_thinning", "keep": 0.5}]})
    assert [s.name for s in spec.noise] == ["label_flip", "depth_thinning"]
    spec = spec_from_dict({**base, "data": {"source": "synthetic_histone"},
                           "model": {"name": "histone"},
                           "noise": [{"kind": "target_gaussian", "std": 0.5},
                                     {"kind": "tss_shift", "fraction": 0.2}]})
    assert spec.noise[1].params.max_shift == 5
