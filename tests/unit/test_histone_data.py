"""Histone data: the synthetic source's planted rule and oracle, the splits, the checks."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.histone import (HistoneTensor, row_cell_types, split_indices,
                                      split_tensor)
from genodl_core.data.histone_metrics import auroc, pearson, spearman
from genodl_core.data.histone_synthetic import SyntheticHistoneParams, generate
from genodl_core.errors import DataError, SpecError

SMALL = SyntheticHistoneParams(n_cell_types=6, n_genes=200, n_bins=20, n_val_cell_types=1,
                               n_test_cell_types=1)


def test_synthetic_is_deterministic_and_shaped():
    a, b = generate(SMALL, "regression"), generate(SMALL, "regression")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    # 4 training cell types x 120 genes; 1 held-out cell type x 40 genes in val and test
    assert a.x_train.shape == (480, 100) and a.y_train.shape == (480, 1)
    assert a.x_val.shape == (40, 100) and a.x_test.shape == (40, 100)
    assert np.array_equal(a.x_train, np.round(a.x_train)) and a.x_train.min() >= 0
    other = generate(SyntheticHistoneParams(**{**SMALL.__dict__, "seed": 1}), "regression")
    assert not np.array_equal(a.x_train, other.x_train)


def test_marks_raise_or_lower_expression_as_planted():
    ds = generate(SMALL, "regression")
    tracks = ds.x_train.reshape(len(ds.x_train), 5, 20).sum(axis=2)
    y = ds.y_train[:, 0]
    r = [pearson(np.log1p(tracks[:, m]), y) for m in range(5)]
    # MARKS order: H3K4me3, H3K4me1, H3K36me3 activate; H3K9me3, H3K27me3 repress
    assert min(r[:3]) > 0.3 and max(r[3:]) < -0.3, r


def test_oracle_is_recorded_and_a_mark_score_comes_close():
    ds = generate(SyntheticHistoneParams(**{**SMALL.__dict__, "n_genes": 1000}), "regression")
    oracle = ds.info["oracle"]
    assert 0.7 < oracle["val_pearson"] < 0.95
    tracks = np.log1p(ds.x_val.reshape(len(ds.x_val), 5, 20).sum(axis=2))
    naive = tracks[:, :3].sum(axis=1) - tracks[:, 3:].sum(axis=1)
    # the sign-weighted log totals nearly recover the latent activity: r is achievable, and
    # (up to sampling noise of the split) never above the oracle's
    assert oracle["val_pearson"] - 0.1 < pearson(naive, ds.y_val[:, 0]) < oracle["val_pearson"] + 0.02


def test_labels_are_above_the_cell_type_median():
    ds = generate(SMALL, "classification")
    assert ds.n_classes == 2 and ds.y_train.dtype == np.int64
    names, rows = row_cell_types(ds.info, "train")
    assert len(names) == 4 and len(rows) == len(ds.y_train)
    for g in range(len(names)):  # half of each cell type's genes, up to the split's sample
        assert 0.3 < ds.y_train[rows == g].mean() < 0.7


@pytest.mark.parametrize("holdout", ["genes", "cell_types", "both"])
def test_splits_hold_out_what_they_say(holdout):
    index = split_indices(10, 50, holdout=holdout, n_val_cell_types=2, n_test_cell_types=2,
                          val_gene_fraction=0.2, test_gene_fraction=0.2, seed=3)
    (tc, tg), (vc, vg), (sc, sg) = index["train"], index["val"], index["test"]
    if holdout in ("genes", "both"):
        assert not set(tg) & set(vg) and not set(tg) & set(sg) and not set(vg) & set(sg)
    if holdout in ("cell_types", "both"):
        assert not set(tc) & set(vc) and not set(tc) & set(sc) and len(vc) == 2
    if holdout == "genes":
        assert len(tc) == 10 and len(vg) == 10


def test_bad_holdout_sizes_name_the_field():
    with pytest.raises(SpecError, match="n_val_cell_types"):
        split_indices(3, 50, holdout="cell_types", n_val_cell_types=2, n_test_cell_types=1,
                      val_gene_fraction=0.2, test_gene_fraction=0.2, seed=0)


def _tensor(**changes):
    fields = dict(counts=np.ones((2, 3, 2, 4), np.float32), expression=np.zeros((2, 3)),
                  cell_types=("A", "B"), gene_ids=("g1", "g2", "g3"), marks=("m1", "m2"))
    fields.update(changes)
    return HistoneTensor(**fields)


def test_tensor_checks():
    with pytest.raises(DataError, match="duplicate gene 'g1'"):
        _tensor(gene_ids=("g1", "g2", "g1"))
    expression = np.zeros((2, 3))
    expression[1, 2] = np.nan
    with pytest.raises(DataError, match="gene 'g3' has no expression in cell type 'B'"):
        _tensor(expression=expression)
    with pytest.raises(DataError, match="expression has shape"):
        _tensor(expression=np.zeros((3, 2)))
    index = split_indices(2, 3, holdout="genes", n_val_cell_types=0, n_test_cell_types=0,
                          val_gene_fraction=0.34, test_gene_fraction=0.34, seed=0)
    ds = split_tensor(_tensor(), index, task="regression")
    assert ds.x_val.shape == (2, 8)


def test_metrics_against_known_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert np.isnan(auroc(x, np.ones(4))) and np.isnan(pearson(x, np.ones(4)))


def test_seed_size_preset_holds_out_what_the_seed_did():
    p = SyntheticHistoneParams(size="seed").resolved()
    assert (p.n_cell_types, p.n_genes) == (56, 17447)
    p.validate("data")
    index = split_indices(p.n_cell_types, p.n_genes, holdout="both",
                          n_val_cell_types=p.n_val_cell_types,
                          n_test_cell_types=p.n_test_cell_types,
                          val_gene_fraction=p.val_gene_fraction,
                          test_gene_fraction=p.test_gene_fraction, seed=0)
    (tc, tg), (vc, vg), (sc, sg) = index["train"], index["val"], index["test"]
    assert (len(tc), len(tg)) == (50, 16000) and len(vg) + len(sg) == 1447
    assert len(vc) + len(sc) == 6
    # an explicit size wins over the preset
    assert SyntheticHistoneParams(size="seed", n_genes=500).resolved().n_genes == 500
