"""Noisy-label detection: signals gathered during training, scored against the flip masks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genodl_core import records
from genodl_core.detection.detectors import attach, true_masks
from genodl_core.detection.scores import (auroc, average_precision, flagged_metrics,
                                          score_detector, top_k_metrics)
from genodl_core.detection.signals import SignalCollector
from genodl_core.spec import read_table, spec_from_dict
from genodl_core.training.trial import run_trial, run_trials

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "jobs" / "examples" / "nt3_trial_small.toml"


def planted(fraction: float = 0.2, epochs: int = 6, **train) -> dict:
    """A well separated synthetic NT3 case: a small CNN learns the classes in a few epochs and
    cannot fit the flipped labels in that time, so the flipped samples stand apart."""
    spec = read_table(SMALL)
    spec["data"].update(n_train=150, n_test=40, n_features=200, informative_fraction=0.5,
                        effect_size=4.0, zero_fraction=0.0, ambiguous_fraction=0.0)
    spec["model"].update(conv=[[4, 10, 1], [4, 5, 1]], dense=[8])
    spec["train"].update(epochs=epochs, optimizer="adam", learning_rate=0.003, momentum=0.0,
                         **train)
    if fraction:
        spec["noise"] = [{"kind": "label_flip", "fraction": fraction}]
    return spec


# --- metrics against hand-computed values ---------------------------------------------------

def test_auroc_and_average_precision_by_hand():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    truth = np.array([0, 0, 1, 1], dtype=bool)
    # Pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both): 3 of 4.
    assert auroc(scores, truth) == pytest.approx(0.75)
    # Thresholds 0.8 (P=1, R=.5), 0.4 (P=.5, R=.5), 0.35 (P=2/3, R=1): .5*1 + .5*2/3.
    assert average_precision(scores, truth) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Ties count half: every pair tied.
    assert auroc(np.ones(4), truth) == pytest.approx(0.5)
    # A tie group is admitted whole: one threshold, precision 1/2, recall 1.
    assert average_precision(np.ones(4), truth) == pytest.approx(0.5)


def test_flagged_and_top_k_by_hand():
    truth = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    flagged = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    m = flagged_metrics(flagged, truth)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert m["n_flagged"] == 3 and m["flagged_share"] == pytest.approx(0.3)
    scores = np.array([9, 1, 8, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    top = top_k_metrics(scores, truth)  # K = 2: samples 0 and 2, one flipped
    assert top["precision_at_k"] == pytest.approx(0.5)
    assert top["lift_at_k"] == pytest.approx(0.5 / 0.2)


def test_no_flips_gives_nan_not_errors():
    scores = np.arange(5.0)
    clean = np.zeros(5, dtype=bool)
    m = score_detector(scores, scores > 2, clean)
    for key in ("auroc", "auprc", "recall", "f1", "precision_at_k", "lift_at_k"):
        assert math.isnan(m[key]), key
    assert m["precision"] == 0.0 and m["n_flagged"] == 2
    final, extra = {}, {}
    attach(final, {"signal_loss": np.arange(5.0, dtype=np.float32)}, extra,
           [{"kind": "gaussian"}])
    assert math.isnan(final["detect_loss_auroc"])
    assert "no training label was flipped" in extra["detection"]["note"]


def test_true_masks_union_subset_and_eligible_split():
    flips = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    eligible = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    more = np.array([0, 1, 0, 0, 0, 0], dtype=bool)
    kept = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    recs = [{"flip_mask": flips, "eligible_mask": eligible}, {"flip_mask": more},
            {"kept_mask": kept}]
    truth, elig = true_masks(recs, 5)
    assert truth.tolist() == [True, True, True, False, False]
    assert elig.tolist() == [True, True, True, False, False]
    final, arrays = {}, {"signal_aum": np.array([-1.0, -2.0, -0.5, 1.0, -3.0])}
    attach(final, arrays, {}, recs)
    assert arrays["detect_aum_flagged"].tolist() == [True, True, True, False, True]
    assert final["detect_aum_eligible_recall"] == 1.0
    assert final["detect_aum_ineligible_flagged_share"] == 0.5
    assert math.isnan(final["detect_aum_ineligible_auroc"])  # no flips outside eligible
    with pytest.raises(ValueError, match="covers 6 samples but training had 4"):
        true_masks(recs[:1], 4)


# --- the collector --------------------------------------------------------------------------

def test_collector_writes_rows_and_samples_by_index():
    labels = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]])  # row 0 / row 1, samples 0..3
    col = SignalCollector(labels, 2, 2, abstaining=True, epochs=2, last_epochs=1)
    idx = torch.tensor([[3, 1], [0, 2]])
    # Outputs: two real classes and the abstention column.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]],
                           [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    for epoch in range(2):
        col.collect(idx, logits)
        col.collect(torch.tensor([[0, 2], [1, 3]]), torch.zeros(2, 2, 3))
        col.end_epoch()
    row0, row1 = col.arrays(0), col.arrays(1)
    assert row0["signal_aum"][[3, 1]] == pytest.approx([2.0, 1.0])
    assert row1["signal_aum"][[0, 2]] == pytest.approx([-1.0, 0.0])
    assert row0["signal_loss"][3] == pytest.approx(math.log(1 + math.exp(-2.0)))
    # Sample 1 of row 0 abstained (column 2 is the largest) in both epochs.
    assert row0["signal_abstain_final"][1] == 1.0 and row0["signal_abstain_fraction"][1] == 1.0
    assert row0["signal_abstain_fraction"][3] == 0.0 and row1["signal_abstain_final"].sum() == 0


def test_collector_averages_loss_over_the_last_epochs_only():
    col = SignalCollector(torch.tensor([0]), 1, 2, abstaining=False, epochs=3, last_epochs=2)
    for value in (0.0, 1.0, 2.0):  # the assigned class's logit, against 0
        col.collect(torch.tensor([[0]]), torch.tensor([[[value, 0.0]]], dtype=torch.bfloat16))
        col.end_epoch()
    expected = np.mean([math.log(1 + math.exp(-v)) for v in (1.0, 2.0)])
    assert col.arrays(0)["signal_loss"][0] == pytest.approx(expected, rel=1e-6)
    assert col.arrays(0)["signal_aum"][0] == pytest.approx(1.0)


def test_abstention_detectors_find_planted_abstentions():
    """Planted: the model abstains on exactly the flipped samples (and on one clean one)."""
    n = 40
    flips = np.zeros(n, dtype=bool)
    flips[::5] = True
    col = SignalCollector(torch.zeros(n, dtype=torch.int64), 1, 2, abstaining=True, epochs=4,
                          last_epochs=2)
    for epoch in range(4):
        logits = torch.zeros(1, n, 3)
        logits[0, :, 0] = 2.0
        logits[0, torch.as_tensor(flips), 2] = 5.0 if epoch >= 1 else 0.0
        logits[0, 1, 2] = 5.0 if epoch == 3 else 0.0
        col.collect(torch.arange(n).view(1, n), logits)
        col.end_epoch()
    final: dict = {}
    attach(final, col.arrays(0), {}, [{"flip_mask": flips}])
    assert final["detect_abstain_fraction_auroc"] > 0.95
    assert final["detect_abstain_final_recall"] == 1.0
    assert final["detect_abstain_final_precision"] == pytest.approx(8 / 9)


# --- end to end -----------------------------------------------------------------------------

def test_planted_trial_detectors_find_the_flips(tmp_path, torch_one_thread):
    result = run_trial(planted(), tmp_path)
    assert result.ok, result.error
    rec = records.load_record(result.path)
    final = rec.result["final"]
    for detector in ("loss", "aum"):
        assert final[f"detect_{detector}_auroc"] > 0.95, detector
        assert final[f"detect_{detector}_recall"] > 0.9, detector
    assert rec.result["extra"]["detection"]["n_flipped"] == 24
    with np.load(result.path / records.ARRAYS_FILE) as npz:
        assert npz["detect_loss_flagged"].dtype == bool and npz["signal_aum"].shape == (120,)


def test_detect_off_and_clean_trials_collect_nothing_and_keep_their_ids(tmp_path,
                                                                       torch_one_thread):
    clean = planted(fraction=0.0, epochs=1)
    assert "detect" not in spec_from_dict(clean).to_dict()["train"]  # ids of old records kept
    off = planted(epochs=1, detect="off")
    assert spec_from_dict(off).trial_id != spec_from_dict(planted(epochs=1)).trial_id
    for spec in (clean, off):
        result = run_trial(spec, tmp_path)
        assert result.ok, result.error
        assert not any(k.startswith("detect_") for k in result.final)
    on = run_trial(planted(fraction=0.0, epochs=1, detect="on"), tmp_path)
    assert math.isnan(on.final["detect_loss_auroc"])


def test_packed_trials_get_their_own_signals(tmp_path, torch_one_thread):
    specs = [planted(epochs=2), {**planted(epochs=2), "seed": 1}]
    alone = [run_trial(s, tmp_path / "alone") for s in specs]
    packed = run_trials(specs, tmp_path / "packed", pack_size=2)
    for a, p in zip(alone, packed):
        assert p.ok, p.error
        with np.load(a.path / records.ARRAYS_FILE) as one, \
                np.load(p.path / records.ARRAYS_FILE) as two:
            np.testing.assert_allclose(one["signal_aum"], two["signal_aum"], atol=1e-3)
        assert records.load_record(p.path).result["extra"]["batched_trials"] == 2
    assert alone[0].final["detect_aum_auroc"] != alone[1].final["detect_aum_auroc"]


# --- cleaning -------------------------------------------------------------------------------

def _source_dir(tmp_path: Path, flagged: np.ndarray) -> Path:
    trial_dir = tmp_path / "0123456789abcdef"
    trial_dir.mkdir()
    np.savez(trial_dir / records.ARRAYS_FILE, detect_aum_flagged=flagged)
    return trial_dir


def test_drop_flagged_drops_exactly_the_flags_and_checks_the_fingerprint(tmp_path):
    from genodl_core.data.types import TrainArrays
    from genodl_core.detection.cleaning import cleaning_spec, drop_flagged
    from genodl_core.errors import DataError
    from genodl_core.registry import NOISES
    from genodl_core.training.trial import pack_key

    flagged = np.array([1, 0, 0, 1, 0], dtype=bool)
    source = _source_dir(tmp_path, flagged)
    spec = cleaning_spec(spec_from_dict(planted()).to_dict() | {"trial_id": "x"}, source, "aum")
    step = spec["noise"][-1]
    assert step["source_trial"] == source.name and spec["model"]["variant"] == "base"
    resolved = spec_from_dict(spec)
    assert pack_key(resolved) is None  # its training split has its own size
    params = resolved.noise[-1].params
    x, y = np.arange(10.0).reshape(5, 2), np.array([0, 1, 0, 1, 1])
    out = NOISES.get("drop_flagged").fn(TrainArrays(x, y, 2), params, None)
    assert out.arrays.y.tolist() == [1, 0, 1] and out.arrays.x[:, 0].tolist() == [2, 4, 8]
    assert out.record["n_dropped"] == 2 and out.record["kept_mask"].tolist() == [0, 1, 1, 0, 1]
    np.savez(source / records.ARRAYS_FILE, detect_aum_flagged=~flagged)
    with pytest.raises(DataError, match="changed since this cleaning trial was planned"):
        drop_flagged(TrainArrays(x, y, 2), params, None)
    with pytest.raises(DataError, match=r"no flags of detector 'loss'; it has \['aum'\]"):
        cleaning_spec(spec, source, "loss")


def test_cleaning_trial_of_an_abstaining_source_is_the_base_model_without_folds(tmp_path):
    """The cleaning table compares the cleaned model with the sweep's base model: an abstaining
    source (any controller) must map to the base trial's very spec, and the retrained model
    trains no confident-learning fold models."""
    from genodl_core.detection.cleaning import as_base_model, cleaning_spec

    base = spec_from_dict(planted(detect_folds=3))
    abstaining = planted(detect_folds=3)
    abstaining["model"].update(variant="abstaining", controller="dac", alpha=2.5)
    abstaining = spec_from_dict(abstaining)
    assert abstaining.trial_id != base.trial_id
    assert spec_from_dict(as_base_model(abstaining.to_dict())).trial_id == base.trial_id
    base, abstaining = base.to_dict(), abstaining.to_dict()
    spec = cleaning_spec(abstaining, _source_dir(tmp_path, np.array([1, 0, 1], dtype=bool)),
                         "aum")
    resolved = spec_from_dict(spec).to_dict()
    assert resolved["model"] == base["model"] and resolved["train"].get("detect_folds", 0) == 0
    assert base["train"]["detect_folds"] == 3
    # ...but its summary group says whose flags it dropped (never pooled with the base's).
    from genodl_core.results.summary import kind_label
    assert kind_label("drop_flagged", resolved["noise"][-1]) == (
        "drop_flagged[detector=aum,source_model=abstaining]")


def test_recovered_share():
    from genodl_core.detection.cleaning import recovered_share

    assert recovered_share(0.9, 0.7, 0.85) == pytest.approx(0.75)
    assert recovered_share(0.9, 0.7, 0.6) == pytest.approx(-0.5)
    assert math.isnan(recovered_share(0.8, 0.8, 0.85))


@pytest.mark.slow
def test_cleaning_recovers_accuracy(tmp_path, torch_one_thread):
    """Flipped labels cost a small CNN test accuracy; retraining without the samples the area
    under the margin flagged wins most of it back."""
    from genodl_core.detection.cleaning import cleaning_spec, recovered_share

    def spec(fraction):
        s = planted(fraction=fraction, epochs=20)
        s["data"].update(effect_size=2.0, n_test=200, n_features=100)
        s["train"].update(learning_rate=0.01)
        return s

    clean = run_trial(spec(0.0), tmp_path)
    noisy = run_trial(spec(0.3), tmp_path)
    source = records.load_record(noisy.path).spec
    cleaned = run_trial(cleaning_spec(source, noisy.path, "aum"), tmp_path)
    assert cleaned.ok, cleaned.error
    acc = [r.final["test_accuracy"] for r in (clean, noisy, cleaned)]
    assert acc[0] - acc[1] > 0.05, acc  # the noise cost accuracy
    assert recovered_share(*acc) > 0.5, acc
    rec = records.load_record(cleaned.path).result
    # The cleaned trial scores its detectors on the samples it kept.
    assert rec["extra"]["detection"]["n_samples"] == 120 - rec["noise"][-1]["n_dropped"]


# --- confident learning ---------------------------------------------------------------------

def test_folds_partition_the_samples_and_detect_folds_is_checked():
    from genodl_core.detection.folds import fold_indices
    from genodl_core.errors import SpecError

    folds = fold_indices(10, 3, seed=4)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10))
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert all((a == b).all() for a, b in zip(folds, fold_indices(10, 3, seed=4)))
    with pytest.raises(SpecError, match="detect_folds"):
        spec_from_dict(planted(detect_folds=1))


def test_confident_learning_without_cleanlab_fails_the_trial_before_training(
        tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cleanlab" else real(name, *a))
    result = run_trial(planted(detect_folds=2), tmp_path)
    assert not result.ok and "pip install 'genodl[detection]'" in result.error


def test_confident_learning_finds_planted_flips_with_fold_models_in_one_pack(
        tmp_path, torch_one_thread):
    pytest.importorskip("cleanlab", reason="confident learning needs the detection extra")
    result = run_trial(planted(detect_folds=3), tmp_path)
    assert result.ok, result.error
    assert result.final["detect_confident_learning_auroc"] > 0.95
    assert result.final["detect_confident_learning_precision"] > 0.8
    log = (result.path / records.LOG_FILE).read_text()
    assert "training 3 trials batched" in log  # 120 samples: three equal folds, one pack
    with np.load(result.path / records.ARRAYS_FILE) as npz:
        probs = npz["cl_probabilities"]
        assert probs.shape == (120, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_collection_cost_is_timed_per_step_and_epoch():
    from genodl_core.detection.overhead import OverheadRow, collect_cost_us, format_rows

    per_step, per_epoch = collect_cost_us("cpu", k=2, n=64, repeats=50)
    assert 0 < per_step < 1e5 and 0 < per_epoch < 1e6
    text = format_rows([OverheadRow("alone", 0.10, 0.11)])
    assert "alone" in text and "10.0%" in text


# --- multi-label ----------------------------------------------------------------------------

def test_multilabel_scores_per_target_against_the_flip_mask():
    """Planted [n, T] signals: target 0's flips score high, target 1's are random."""
    rng = np.random.default_rng(0)
    truth = np.zeros((200, 2), dtype=bool)
    truth[rng.choice(200, 20, replace=False), 0] = True
    truth[rng.choice(200, 20, replace=False), 1] = True
    aum = rng.normal(1.0, 0.3, size=(200, 2))
    aum[truth[:, 0], 0] = -1.0
    final, arrays = {}, {"signal_aum": aum}
    attach(final, arrays, {}, [{"flip_mask": truth}])
    per_target = arrays["detect_aum_auroc_per_target"]
    assert per_target[0] == pytest.approx(1.0) and 0.3 < per_target[1] < 0.7
    assert final["detect_aum_target_mean_auroc"] == pytest.approx(per_target.mean(), rel=1e-6)
    assert arrays["detect_aum_flagged"].shape == (200, 2)


def test_multilabel_trial_gathers_signals_with_peak_noise(tmp_path, torch_one_thread):
    spec = {"seed": 1, "device": "cpu",
            "model": {"name": "deepsea", "conv": [8, 8, 8], "pool": 2, "dense": 8,
                      "dropout": [0.0, 0.0, 0.0]},
            "data": {"source": "synthetic_dna", "n_train": 400, "n_val": 100, "n_test": 0,
                     "seed": 0},
            "noise": [{"kind": "missed_peaks", "rate": 0.3}],
            "train": {"optimizer": "adam", "learning_rate": 0.003, "batch_size": 64,
                      "epochs": 2}}
    result = run_trial(spec, tmp_path)
    assert result.ok, result.error
    with np.load(result.path / records.ARRAYS_FILE) as npz:
        n_targets = npz["train_prevalence"].shape[0]
        assert npz["signal_aum"].shape[1] == n_targets
        assert npz["detect_loss_auroc_per_target"].shape == (n_targets,)
    assert 0.0 <= result.final["detect_loss_auroc"] <= 1.0


def test_auto_detection_follows_label_flipping_steps():
    from genodl_core.detection.signals import wanted

    assert wanted(spec_from_dict(planted()))
    feature_noise = planted(fraction=0.0)
    feature_noise["noise"] = [{"kind": "gaussian", "std": 0.1}]
    assert not wanted(spec_from_dict(feature_noise))
    feature_noise["train"]["detect"] = "on"
    assert wanted(spec_from_dict(feature_noise))
    assert not wanted(spec_from_dict(planted(detect="off")))


def test_confident_learning_runs_where_child_processes_do_not_fork(tmp_path):
    """A Parsl worker's children are not forked; cleanlab's process pool then lost its inputs
    and every confident-learning trial failed with a NameError. Run it under 'spawn'."""
    pytest.importorskip("cleanlab", reason="confident learning needs the detection extra")
    import subprocess
    import sys
    code = (
        "import multiprocessing as mp, numpy as np\n"
        "mp.set_start_method('spawn', force=True)\n"
        "from genodl_core.detection.folds import confident_learning_arrays\n"
        "rng = np.random.default_rng(0)\n"
        "labels = rng.integers(0, 2, 400)\n"
        "p1 = np.clip(labels * 0.9 + 0.05 + rng.normal(0, 0.02, 400), 0.01, 0.99)\n"
        "labels[:40] = 1 - labels[:40]\n"
        "out = confident_learning_arrays(np.stack([1 - p1, p1], 1), labels)\n"
        "print(int(out['signal_cl_issues'][:40].sum()), int(out['signal_cl_issues'][40:].sum()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    found, false = map(int, done.stdout.split())
    assert found == 40 and false == 0
