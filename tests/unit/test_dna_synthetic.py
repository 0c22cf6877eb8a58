"""Synthetic DNA with planted motifs: determinism, prevalence, groups, the recorded ceiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genodl_core.data.dna_codes import decode, encode, from_one_hot
from genodl_core.data.dna_motifs import CONSENSUS, builtin_motifs
from genodl_core.data.dna_synthetic import SyntheticDNAParams, generate, target_groups
from genodl_core.errors import DataError, SpecError
from genodl_core.spec import spec_from_dict
from genodl_core.training.multilabel_metrics import per_target_auc, summarise

SMALL = SyntheticDNAParams(n_train=600, n_val=300, n_test=200, seed=3)


def test_generation_is_deterministic_and_seeded():
    a, b = generate(SMALL), generate(SMALL)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    c = generate(SyntheticDNAParams(n_train=600, n_val=300, n_test=200, seed=4))
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.dtype == np.uint8 and a.x_train.shape == (600, 200)
    assert a.y_train.shape == (600, 8) and set(np.unique(a.y_train)) <= {0, 1}


def test_test_split_size_leaves_training_rows_alone():
    a = generate(SMALL)
    b = generate(SyntheticDNAParams(n_train=600, n_val=300, n_test=50, seed=3))
    np.testing.assert_array_equal(a.x_train, b.x_train)


def test_prevalence_groups_and_ceiling_recorded():
    ds = generate(SyntheticDNAParams(n_train=4000, n_val=1000, n_test=0, seed=0))
    prev = ds.y_train.mean(axis=0)
    assert (prev > 0.004).all() and (prev < 0.25).all(), prev
    assert target_groups(ds.target_ids) == ["tf"] * 4 + ["dnase"] * 2 + ["histone"] * 2
    assert ds.info["motifs"] == "builtin" and len(ds.info["target_rules"]) == 8
    ceiling = ds.info["ceiling"]["val_roc_auc"]
    assert 0.9 < ceiling < 1.0
    # Targets sharing a motif are correlated: some pair has a clearly positive correlation.
    corr = np.corrcoef(ds.y_train.T.astype(float))
    assert np.nanmax(corr - np.eye(8)) > 0.3


def _best_score(codes: np.ndarray, pwm: np.ndarray) -> np.ndarray:
    """Per row, the best log-odds score of ``pwm`` over every window of ``codes``."""
    logodds = np.log(pwm / 0.25)
    w = len(pwm)
    windows = np.lib.stride_tricks.sliding_window_view(codes, w, axis=1)  # [n, P, w]
    scores = logodds[np.arange(w), np.minimum(windows, 3)].sum(axis=2)
    return scores.max(axis=1)


def test_planted_motif_sits_in_the_central_bin():
    """A tf target's motif scores high in the central bin of its positives only, and decoys
    put it into the flanks of negatives too."""
    ds = generate(SyntheticDNAParams(n_train=2000, n_val=10, n_test=0, seed=1,
                                     decoy_rate=0.3, label_purity=1.0, background_rate=0.0))
    assert ds.info["target_rules"][0] == "tf:CTCF"
    names, pwms = builtin_motifs(1, seed=1)
    pwm = pwms[0]
    threshold = 0.4 * np.log(pwm.max(axis=1) / 0.25).sum()
    pos = ds.y_train[:, 0] == 1
    centre = _best_score(ds.x_train[:, 50:150], pwm) > threshold
    flanks = _best_score(ds.x_train[:, :50], pwm) > threshold
    assert centre[pos].mean() > 0.9 and centre[~pos].mean() < 0.05
    assert flanks[~pos].mean() > 0.1


def test_large_version_scales_motifs_and_targets():
    ds = generate(SyntheticDNAParams(n_train=200, n_val=100, n_test=0, length=1000,
                                     central_bin=200, n_targets=200, seed=0))
    assert ds.y_train.shape == (200, 200) and ds.x_train.shape == (200, 1000)
    assert len(ds.info["motif_names"]) > len(CONSENSUS) // 2


def test_derived_motifs_extend_the_builtin_set():
    names, pwms = builtin_motifs(len(CONSENSUS) + 3, seed=0)
    assert names[-1].startswith("DERIVED3_") and len(pwms) == len(CONSENSUS) + 3
    assert all(np.allclose(p.sum(axis=1), 1) for p in pwms)


def test_bad_parameters_name_the_field():
    with pytest.raises(SpecError, match="central_bin"):
        spec_from_dict({"model": {"name": "deepsea"},
                        "data": {"source": "synthetic_dna", "length": 100, "central_bin": 200}})
    with pytest.raises(SpecError, match="min_prevalence"):
        spec_from_dict({"model": {"name": "deepsea"},
                        "data": {"source": "synthetic_dna", "min_prevalence": 0.3}})


def test_codes_round_trip_and_reject_bad_letters():
    codes = encode(["ACGTN", "acgtn"])
    assert codes.tolist() == [[0, 1, 2, 3, 4]] * 2
    assert decode(codes) == ["ACGTN", "ACGTN"]
    with pytest.raises(DataError, match=r"position 2: letter 'X'"):
        encode(["ACXT"])
    with pytest.raises(DataError, match="length 3, expected 4"):
        encode(["ACGT", "ACG"])
    onehot = np.eye(4)[[0, 3, 1]][None].astype(np.float32)
    onehot = np.concatenate([onehot, np.full((1, 1, 4), 0.25, np.float32)], axis=1)
    assert from_one_hot(onehot).tolist() == [[0, 3, 1, 4]]


def _brute_force(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    pos, neg = s[y == 1], s[y == 0]
    roc = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg))
    ap = 0.0
    for th in np.unique(s)[::-1]:
        above = s >= th
        ap += (y[s == th] == 1).sum() / len(pos) * (y[above] == 1).sum() / above.sum()
    return roc, ap


def test_per_target_auc_matches_the_definitions_with_ties_and_nan():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < [0.01, 0.05, 0.2, 0.5, 0.0, 1.0]).astype(np.uint8)
    s = np.round(rng.random((300, 6)) + y * 0.3, 1)
    roc, pr = per_target_auc(torch.tensor(s), torch.tensor(y))
    for j in range(4):
        want = _brute_force(y[:, j], s[:, j])
        assert roc[j].item() == pytest.approx(want[0], abs=1e-12)
        assert pr[j].item() == pytest.approx(want[1], abs=1e-12)
    assert torch.isnan(roc[4:]).all() and torch.isnan(pr[4:]).all()
    out = summarise(roc.numpy(), pr.numpy(), y.mean(0) + 0.01, ["a", "a", "b", "b", "b", "b"])
    assert out["val_defined_targets"] == 4.0
    assert out["val_roc_auc"] == pytest.approx(float(np.nanmean(roc.numpy())))
    assert out["val_roc_auc_median_a"] == pytest.approx(float(np.median(roc[:2].numpy())))


def test_per_target_auc_in_column_chunks_equals_one_pass(monkeypatch):
    from genodl_core.training import multilabel_metrics

    rng = np.random.default_rng(1)
    y = torch.tensor((rng.random((50, 7)) < 0.3).astype(np.uint8))
    s = torch.tensor(rng.random((50, 7)))
    whole = per_target_auc(s, y)
    monkeypatch.setattr(multilabel_metrics, "CHUNK_CELLS", 120)  # 2 columns a chunk
    chunked = per_target_auc(s, y)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_an_unreachable_prevalence_range_fails_at_once():
    """Histone targets (both of two motifs) cannot reach 5 %: a clear error, not a long search."""
    import time

    start = time.monotonic()
    with pytest.raises(DataError, match=r"no histone target .*0\.005625, 0\.04"):
        generate(SyntheticDNAParams(n_targets=6, min_prevalence=0.05))
    assert time.monotonic() - start < 5
