"""CNNC data: NEPDF images exactly as CNNC builds them, and the synthetic pair source."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.cnnc_images import (counts_from_images, log_expression, nepdf,
                                          pair_histograms, smooth)
from genodl_core.data.cnnc_metrics import average_precision, balanced_accuracy, pair_metrics
from genodl_core.data.cnnc_synthetic import SyntheticCNNCParams, synthetic_cnnc
from genodl_core.errors import DataError, SpecError

SMALL = dict(n_pairs=60, n_cells=40, bins=8)


def test_histograms_equal_numpy_histogram2d_transposed():
    rng = np.random.default_rng(0)
    a = rng.poisson(2.0, (20, 150)).astype(np.float64)
    b = rng.poisson(0.7, (20, 150)).astype(np.float64)
    a[3] = 5.0  # a constant gene: numpy widens the range by 0.5 each side
    b[4, :] = 0.0
    got = pair_histograms(log_expression(a), log_expression(b), 32)
    for i in range(len(a)):
        ref, _, _ = np.histogram2d(np.log10(a[i] + 0.01), np.log10(b[i] + 0.01), bins=32)
        assert np.array_equal(got[i], ref.T), i


def test_nepdf_of_a_hand_computed_two_by_two_histogram():
    # log10(x + 0.01): A spans [-2, log10(9.01)], B spans [-2, log10(1.01)]; two bins each.
    a = np.array([[0.0, 0.0, 9.0, 9.0]])
    b = np.array([[0.0, 1.0, 1.0, 1.0]])
    # cells (A bin, B bin): (0, 0), (0, 1), (1, 1), (1, 1); rows are B's bins
    counts = np.array([[1.0, 0.0], [1.0, 2.0]])
    expected = (np.log10(counts / 4 + 1e-4) + 4) / 4
    got = nepdf(a, b, bins=2)
    np.testing.assert_allclose(got.reshape(2, 2), expected, rtol=1e-6)
    assert got[0, 1] == 0.0  # an empty bin maps to 0
    np.testing.assert_allclose(counts_from_images(got, 4).reshape(2, 2), counts)
    assert np.array_equal(nepdf(b, a, bins=2).reshape(2, 2), got.reshape(2, 2).T)


def test_smoothing_keeps_mass_and_spreads_it():
    img = np.zeros((1, 9, 9))
    img[0, 4, 4] = 1.0
    out = smooth(img, 1.0)
    assert out.sum() == pytest.approx(1.0)
    assert out[0, 4, 4] < 1.0 and out[0, 4, 5] > 0 and out[0, 4, 5] == pytest.approx(out[0, 5, 4])
    assert nepdf(np.ones((1, 5)), np.ones((1, 5)), bins=4, sigma=1.0).shape == (1, 16)


def test_nepdf_refuses_negative_values_and_empty_cells():
    with pytest.raises(DataError, match="negative"):
        nepdf(np.array([[-1.0, 2.0]]), np.array([[1.0, 2.0]]))
    with pytest.raises(DataError, match="no cells"):
        nepdf(np.zeros((1, 0)), np.zeros((1, 0)))


def test_synthetic_source_is_deterministic_balanced_and_split():
    p = SyntheticCNNCParams(**SMALL, positive_fraction=0.25, seed=3)
    one, two = synthetic_cnnc(p), synthetic_cnnc(p)
    assert np.array_equal(one.x_train, two.x_train) and np.array_equal(one.y_val, two.y_val)
    other = synthetic_cnnc(SyntheticCNNCParams(**SMALL, positive_fraction=0.25, seed=4))
    assert not np.array_equal(one.x_train, other.x_train)
    labels = np.concatenate([one.y_train, one.y_val, one.y_test])
    assert len(labels) == 60 and labels.sum() == 15
    assert one.x_train.shape[1] == 64 and 0.0 <= one.x_train.min() and one.x_train.max() <= 1.0
    balanced = synthetic_cnnc(SyntheticCNNCParams(**SMALL, positive_fraction=0.25,
                                                  train_balance="downsample", seed=3))
    assert np.bincount(balanced.y_train).tolist() == [9, 9]
    assert np.array_equal(balanced.y_val, one.y_val)


def test_three_classes_hold_both_directions():
    ds = synthetic_cnnc(SyntheticCNNCParams(**SMALL, n_classes=3))
    labels = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    assert np.bincount(labels).tolist() == [30, 15, 15] and ds.n_classes == 3


def test_synthetic_parameters_are_checked():
    with pytest.raises(SpecError, match="n_classes"):
        SyntheticCNNCParams(n_classes=4).validate("data")
    with pytest.raises(SpecError, match="positive_fraction"):
        SyntheticCNNCParams(positive_fraction=1.0).validate("data")


def test_pair_metrics_against_hand_values():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    labels = np.array([1, 0, 1, 0])
    # precision at the positives: 1/1, 2/3, each adding recall 1/2
    assert average_precision(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert balanced_accuracy(np.zeros(4, int), np.array([0, 0, 0, 1]), 2) == 0.5
    probs = np.stack([1 - scores, scores], axis=1)
    m = pair_metrics("val", probs, labels, 2)
    assert m["val_roc_auc"] == pytest.approx(0.75) and m["val_balanced_accuracy"] == 0.75
    three = pair_metrics("val", np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 2, 1]), 3)
    assert three["val_roc_auc_c2"] == 1.0 and "val_pr_auc" in three


def test_unlisted_negatives_hide_related_pairs_among_training_negatives():
    clean = synthetic_cnnc(SyntheticCNNCParams(**SMALL))
    noisy = synthetic_cnnc(SyntheticCNNCParams(**SMALL, unlisted_negatives=0.5))
    assert np.array_equal(noisy.y_train, clean.y_train)
    assert np.array_equal(noisy.x_val, clean.x_val) and np.array_equal(noisy.x_test, clean.x_test)
    changed = np.flatnonzero((noisy.x_train != clean.x_train).any(axis=1))
    assert noisy.info["unlisted_negatives"] == 9 == len(changed)  # half of 18 negatives
    assert np.all(clean.y_train[changed] == 0)


@pytest.mark.parametrize("noise", [{"train_cell_keep": 0.5}, {"train_log_noise_std": 0.3}])
def test_expression_noise_changes_training_images_only(noise):
    clean = synthetic_cnnc(SyntheticCNNCParams(**SMALL))
    noisy = synthetic_cnnc(SyntheticCNNCParams(**SMALL, **noise))
    assert np.array_equal(noisy.x_val, clean.x_val) and np.array_equal(noisy.x_test, clean.x_test)
    assert np.array_equal(noisy.y_train, clean.y_train)
    assert (noisy.x_train != clean.x_train).any(axis=1).mean() > 0.9
    if "train_cell_keep" in noise:  # 20 of 40 cells: every non-empty bin holds k / 20
        density = 10.0 ** (noisy.x_train.astype(np.float64) * 4 - 4) - 1e-4
        counts = density[noisy.x_train > 0] * 20
        np.testing.assert_allclose(counts, np.rint(counts), atol=1e-3)
