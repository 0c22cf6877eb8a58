"""Synthetic NT3-like data: determinism, character (zeros, skew, label gene) and learnability."""

import numpy as np
import pytest

from genodl_core.data.scaling import scale_dataset
from genodl_core.data.synthetic_nt3 import (SyntheticNT3Params, make_synthetic_nt3,
                                            synthetic_truth)
from genodl_core.errors import SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import build

SMALL = dict(n_train=200, n_test=100, n_features=1000)


@pytest.fixture(scope="module")
def small():
    return make_synthetic_nt3(SyntheticNT3Params(**SMALL))


@pytest.fixture(scope="module")
def medium():
    # Enough samples for stable statistics, still well under a second to generate.
    return make_synthetic_nt3(SyntheticNT3Params(n_train=1000, n_test=300, n_features=3000, seed=5))


def test_registered_with_params_and_task():
    entry = DATASETS.get("synthetic_nt3")
    assert entry.params is SyntheticNT3Params and entry.meta["task"] == "classification"
    ds = entry.fn(SyntheticNT3Params(n_train=10, n_test=6, n_features=50))
    assert ds.x_train.shape == (10, 50)


def test_shapes_dtypes_and_splits(small):
    assert small.x_train.shape == (200, 1000) and small.x_val.shape == (100, 1000)
    assert small.x_train.dtype == np.float32 and small.y_train.dtype == np.int64
    assert small.task == "classification" and small.n_classes == 2
    assert small.feature_ids.shape == (1000,) and len(set(small.feature_ids)) == 1000
    assert small.info["generator_seed"] == 0 and small.info["label_gene"] == 1000 * 11180 // 60483


def test_same_seed_identical_and_different_seed_different(small):
    again = make_synthetic_nt3(SyntheticNT3Params(**SMALL))
    np.testing.assert_array_equal(again.x_train, small.x_train)
    np.testing.assert_array_equal(again.y_train, small.y_train)
    np.testing.assert_array_equal(again.x_val, small.x_val)
    other = make_synthetic_nt3(SyntheticNT3Params(**SMALL, seed=1))
    assert not np.array_equal(other.x_train, small.x_train)
    assert not np.array_equal(other.x_val, small.x_val)


def test_training_split_does_not_depend_on_test_size(small):
    more_test = make_synthetic_nt3(SyntheticNT3Params(**{**SMALL, "n_test": 37}))
    np.testing.assert_array_equal(more_test.x_train, small.x_train)
    assert more_test.x_val.shape[0] == 37


def test_non_negative_right_skewed_with_many_zeros(medium):
    x = medium.x_train
    assert (x >= 0).all() and np.isfinite(x).all()
    zero_share = np.mean(x == 0)
    assert 0.30 <= zero_share <= 0.50
    nonzero = x[x > 0].astype(np.float64)
    assert nonzero.mean() > np.median(nonzero) * 1.2          # right skew
    skew = np.mean((nonzero - nonzero.mean()) ** 3) / nonzero.std() ** 3
    assert skew > 1.0


def test_zero_fraction_knob_is_honoured():
    ds = make_synthetic_nt3(SyntheticNT3Params(n_train=300, n_test=10, n_features=2000,
                                               zero_fraction=0.1))
    assert 0.05 <= np.mean(ds.x_train == 0) <= 0.15


def test_classes_balanced(medium, small):
    for ds in (medium, small):
        for y in (ds.y_train, ds.y_val):
            counts = np.bincount(y, minlength=2)
            assert counts.max() - counts.min() <= 1
    assert not np.all(np.diff(small.y_train) >= 0)           # shuffled, not sorted by class
    odd = make_synthetic_nt3(SyntheticNT3Params(n_train=7, n_test=5, n_features=40, n_classes=3))
    assert sorted(np.bincount(odd.y_train).tolist()) == [2, 2, 3]


def test_minority_of_genes_informative():
    params = SyntheticNT3Params(n_features=60483)
    truth = synthetic_truth(params)
    assert 0.05 <= truth.informative.size / 60483 <= 0.15
    assert truth.label_gene == 11180 and 11180 not in truth.informative


def test_label_gene_prevalent_and_correlated_with_label(medium):
    scaled = scale_dataset(medium, "maxabs", "train")
    gene = medium.info["label_gene"]
    for x, y in ((scaled.x_train, medium.y_train), (scaled.x_val, medium.y_val)):
        v = x[:, gene]
        prevalence = np.mean(v > 0.01)
        assert 0.60 <= prevalence <= 0.85
        assert np.corrcoef(v, y)[0, 1] > 0.4
        eligible = v > 0.01
        # Correlated label noise picks eligible samples: mostly tumour-like ones.
        assert y[eligible].mean() > 0.6
    # The label gene is more correlated with the label than any non-informative gene.
    truth = synthetic_truth(SyntheticNT3Params(n_train=1000, n_test=300, n_features=3000, seed=5))
    others = np.setdiff1d(np.arange(3000), np.append(truth.informative, gene))
    corr = [abs(np.corrcoef(scaled.x_train[:, g], medium.y_train)[0, 1]) for g in others[:200]]
    assert np.corrcoef(scaled.x_train[:, gene], medium.y_train)[0, 1] > max(corr)


def test_explicit_label_gene_is_used():
    ds = make_synthetic_nt3(SyntheticNT3Params(n_train=400, n_test=10, n_features=100,
                                               label_gene=3))
    assert ds.info["label_gene"] == 3
    v = ds.x_train[:, 3]
    assert v[ds.y_train == 1].mean() > 2 * v[ds.y_train == 0].mean()


def _logistic_regression(x, y, x_val, epochs=200, lr=0.5, l2=1e-3):
    """Full-batch gradient descent, seeded-free (zero init): a deliberately plain learner."""
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        grad = p - y
        w -= lr * (x.T @ grad / len(y) + l2 * w)
        b -= lr * grad.mean()
    return (x_val @ w + b) > 0


def test_small_config_is_learnable_by_logistic_regression(small):
    scaled = scale_dataset(small, "maxabs", "train")
    pred = _logistic_regression(scaled.x_train.astype(np.float64), small.y_train,
                                scaled.x_val.astype(np.float64))
    acc = np.mean(pred == small.y_val)
    assert acc >= 0.9, acc
    assert acc < 1.0 or small.info["ambiguous_val"] == 0


def test_accuracy_ceiling_below_one_through_ambiguous_samples():
    ds = make_synthetic_nt3(SyntheticNT3Params(n_train=20, n_test=4000, n_features=50,
                                               ambiguous_fraction=0.1))
    # About 10 % of the 2,000 non-normal test samples carry no signal at all.
    assert 120 <= ds.info["ambiguous_val"] <= 280


@pytest.mark.parametrize("changes, field", [
    ({"n_train": 1}, "data.n_train"),
    ({"n_features": 100, "label_gene": 100}, "data.label_gene"),
    ({"zero_fraction": 0.99}, "data.zero_fraction"),
    ({"informative_fraction": -0.1}, "data.informative_fraction"),
    ({"ambiguous_fraction": 1.0}, "data.ambiguous_fraction"),
    ({"scaling": "zscore"}, "data.scaling"),
    ({"n_classes": 1}, "data.n_classes"),
])
def test_invalid_parameters_name_the_field(changes, field):
    with pytest.raises(SpecError) as err:
        build(SyntheticNT3Params, changes, "data")
    assert err.value.field == field


def test_zero_informative_fraction_and_zero_zeros_are_allowed():
    ds = make_synthetic_nt3(SyntheticNT3Params(n_train=10, n_test=4, n_features=30,
                                               informative_fraction=0.0, zero_fraction=0.0))
    assert ds.info["n_informative"] == 0
    assert np.all(ds.x_train[:, [i for i in range(30) if i != ds.info["label_gene"]]] > 0)
