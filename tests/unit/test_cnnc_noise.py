"""Noise steps of gene-pair images: class-conditional flips, fewer cells, extra dropout."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.cnnc_images import nepdf
from genodl_core.data.types import TrainArrays
from genodl_core.errors import DataError, SpecError
from genodl_core.noise.pairs import (CellDownsampleParams, ClassFlipParams, PairDropoutParams,
                                     cell_downsample, class_conditional_flip,
                                     expression_dropout, image_counts)


def _images(n_pairs=6, n_cells=50, bins=8, sigma=0.0):
    rng = np.random.default_rng(0)
    a = rng.poisson(3.0, (n_pairs, n_cells)).astype(float)
    b = rng.poisson(1.0, (n_pairs, n_cells)).astype(float)
    return nepdf(a, b, bins=bins, sigma=sigma)


def test_class_conditional_flip_moves_only_positives():
    y = np.array([0, 1, 1, 1, 1, 0, 1, 0, 1, 1])
    arrays = TrainArrays(np.zeros((10, 4), np.float32), y, 2)
    out = class_conditional_flip(arrays, ClassFlipParams(fraction=0.5),
                                 np.random.default_rng(1))
    mask = out.record["flip_mask"]
    assert mask.sum() == 4 and np.all(y[mask] == 1) and np.all(out.arrays.y[mask] == 0)
    assert np.array_equal(out.arrays.y[~mask], y[~mask]) and y.sum() == 7  # input untouched
    again = class_conditional_flip(arrays, ClassFlipParams(fraction=0.5),
                                   np.random.default_rng(1))
    assert np.array_equal(again.record["flip_mask"], mask)
    with pytest.raises(DataError, match="from_class=2"):
        class_conditional_flip(arrays, ClassFlipParams(from_class=2), np.random.default_rng(1))
    with pytest.raises(SpecError, match="to_class"):
        ClassFlipParams(from_class=0, to_class=0).validate("noise[0]")


def test_image_counts_recover_the_cells():
    counts, n = image_counts(_images(), "test")
    assert n == 50 and np.all(counts.sum(axis=(1, 2)) == 50)
    with pytest.raises(DataError, match="unsmoothed"):
        image_counts(_images(sigma=1.0), "test")


def test_cell_downsample_keeps_about_the_share_asked():
    x = _images(n_pairs=40)
    out = cell_downsample(TrainArrays(x, np.zeros(40, np.int64), 2),
                          CellDownsampleParams(keep=0.5), np.random.default_rng(2))
    assert out.arrays.x.shape == x.shape and not np.array_equal(out.arrays.x, x)
    assert 0.4 < out.record["realised_keep"] < 0.6
    counts, _ = image_counts(out.arrays.x[:1], "test")
    assert counts.sum() == out.record["cells_kept"][0]


def test_expression_dropout_moves_cells_to_the_zero_bins():
    x = _images(n_pairs=10)
    before, n = image_counts(x, "test")
    out = expression_dropout(TrainArrays(x, np.zeros(10, np.int64), 2),
                             PairDropoutParams(rate=0.3), np.random.default_rng(3))
    after, _ = image_counts(out.arrays.x, "test")
    assert np.all(after.sum(axis=(1, 2)) == n)
    zero_bins = lambda c: c[:, :, 0].sum() + c[:, 0, :].sum()  # noqa: E731
    assert zero_bins(after) > zero_bins(before)
