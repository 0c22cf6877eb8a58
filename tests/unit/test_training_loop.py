"""The classification engine through NT3's family: learning, determinism, curves, callbacks,
noise.

Every dataset is made here with a seeded numpy Generator: two classes that differ by a shift in a
contiguous block of features (a pattern a small conv stack finds in a few epochs). Specs are
built from dataclasses, with a small NT3 so that each fit takes well under a second on a CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pytest
import torch

from genodl_core.data.types import Dataset
from genodl_core.errors import DataError, SpecError, TrialTimeout
from genodl_core.models.nt3 import NT3Params
from genodl_core.registry import MODELS
from genodl_core.spec import Component, TrainSpec, TrialSpec
from genodl_core.training import engine
from genodl_core.training.family import FitOutcome, Member
from genodl_core.training.plan import RunSettings, choose_plan
from genodl_core.training.schedules import PlateauSchedule

N_FEATURES = 120
SMALL = NT3Params(conv=((4, 5, 1), (4, 5, 1)), pool=(1, 4), dense=(16,))
FAST = TrainSpec(epochs=8, batch_size=16, optimizer="adam", learning_rate=1e-3)

BASE_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"}
ABSTAIN_KEYS = BASE_KEYS | {"abstention", "abstention_accuracy", "val_abstention",
                            "val_abstention_accuracy", "alpha", "kept", "val_kept"}


def make_dataset(seed: int = 0, n_train: int = 160, n_val: int = 80,
                 flip_fraction: float = 0.0) -> Dataset:
    """Separable two-class data in [0, 1]; optionally flip training labels.

    Flips take exactly ``flip_fraction`` of EACH class, so that at 0.5 the training labels are
    independent of the features (an unstratified draw leaves a small class-dependent excess
    the model can still learn, which would blur what the abstention test measures).
    """
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % 2).astype(np.int64)
        x = rng.uniform(0.0, 1.0, (n, N_FEATURES)).astype(np.float32)
        x[y == 1, 40:70] += 1.0
        return x / np.float32(2.0), y

    x_train, y_train = draw(n_train)
    x_val, y_val = draw(n_val)
    if flip_fraction:
        clean, y_train = y_train, y_train.copy()
        for cls in (0, 1):
            members = np.flatnonzero(clean == cls)
            flipped = rng.choice(members, int(round(flip_fraction * len(members))), replace=False)
            y_train[flipped] = 1 - cls
    return Dataset(x_train, y_train, x_val, y_val, task="classification", n_classes=2)


def make_ctx(params: NT3Params = SMALL, train: TrainSpec = FAST, seed: int = 3,
             dataset: Dataset | None = None, precision: str = "fp32", device: str = "cpu",
             **kwargs) -> tuple[Member, str, str]:
    """A member (spec, data, callbacks) and the device and precision it is to train at."""
    spec = TrialSpec(model=Component("nt3", params), data=Component("synthetic_nt3", None),
                     train=train, seed=seed)
    member = Member(spec=spec, dataset=dataset if dataset is not None else make_dataset(),
                    log=logging.getLogger("test.nt3"), **kwargs)
    return member, device, precision


def fit(ctx: tuple[Member, str, str]) -> FitOutcome:
    """One trial through NT3's family and the engine, as the runner trains it (no records)."""
    member, device, precision = ctx
    family = MODELS.get("nt3").fn
    family.check(member)
    plan = choose_plan(device, precision, family.switches(1),
                       settings=RunSettings(checkpoint_interval_s=None))
    (outcome,) = engine.train(family.stack([member], plan), [member], device=device)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread_module):
    """Tiny models run fastest on one thread: before the module's trained fixtures."""


@pytest.fixture(scope="module")
def base_run():
    return fit(make_ctx())


def test_base_model_learns_separable_problem(base_run):
    assert base_run.final["val_accuracy"] >= 0.9
    assert base_run.curves["loss"][-1] < base_run.curves["loss"][0]
    assert base_run.curves["val_loss"][-1] < base_run.curves["val_loss"][0]


def test_curves_and_final_metrics(base_run):
    assert set(base_run.curves) == BASE_KEYS
    assert all(len(v) == FAST.epochs for v in base_run.curves.values())
    assert set(base_run.final) == BASE_KEYS | {"epochs_run", "train_seconds", "n_parameters",
                                               "null_accuracy", "predicted_classes"}
    for key in BASE_KEYS:
        assert base_run.final[key] == base_run.curves[key][-1]
    assert base_run.final["epochs_run"] == FAST.epochs
    # conv 4*5+4, conv 4*4*5+4, flatten 4*((116-4)//4=28)=112 -> 16 -> 2
    assert base_run.final["n_parameters"] == 24 + 84 + 112 * 16 + 16 + 16 * 2 + 2
    assert base_run.curves["learning_rate"] == [1e-3] * FAST.epochs
    probs = base_run.arrays["val_probabilities"]
    assert probs.shape == (80, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # the saved probabilities are the final model's: their accuracy is val_accuracy
    y_val = make_dataset().y_val
    assert (probs.argmax(axis=1) == y_val).mean() == pytest.approx(base_run.final["val_accuracy"])


def test_same_seed_gives_identical_curves(base_run):
    again = fit(make_ctx())
    for key in BASE_KEYS - {"epoch_seconds"}:
        assert again.curves[key] == base_run.curves[key], key
    np.testing.assert_array_equal(again.arrays["val_probabilities"],
                                  base_run.arrays["val_probabilities"])
    other = fit(make_ctx(seed=4, train=dataclasses.replace(FAST, epochs=2)))
    assert other.curves["loss"] != base_run.curves["loss"][:2]


def test_precision_requests_other_than_bf16_run_fp32_on_cpu():
    """CPU trials are fp32 unless bf16 is asked for explicitly (tests/unit/test_cpu_path.py)."""
    from genodl_core.training.device import resolve_precision

    for requested in ("auto", "fp32", "tf32"):
        assert resolve_precision(requested, "cpu") == "fp32", requested


def test_dropout_is_seeded_and_global_rng_untouched():
    params = dataclasses.replace(SMALL, dropout=0.3)
    train = dataclasses.replace(FAST, epochs=2)
    dataset = make_dataset()
    x_before, y_before = dataset.x_train.copy(), dataset.y_train.copy()
    state = torch.get_rng_state()
    first = fit(make_ctx(params, train, dataset=dataset))
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(10)  # a caller using the global RNG in between changes nothing
    second = fit(make_ctx(params, train, dataset=dataset))
    assert first.curves["loss"] == second.curves["loss"]
    np.testing.assert_array_equal(dataset.x_train, x_before)
    np.testing.assert_array_equal(dataset.y_train, y_before)


def test_on_epoch_called_after_every_epoch():
    calls = []
    ctx = make_ctx(train=dataclasses.replace(FAST, epochs=3),
                   on_epoch=lambda epoch, metrics: calls.append((epoch, dict(metrics))))
    out = fit(ctx)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[-1][1]["val_accuracy"] == out.final["val_accuracy"]
    assert set(calls[0][1]) == BASE_KEYS


def test_deadline_raises_trial_timeout():
    ctx = make_ctx(deadline=time.monotonic() - 1.0)
    with pytest.raises(TrialTimeout, match="timeout_s"):
        fit(ctx)


def test_sgd_with_plateau_reduces_learning_rate():
    # A learning rate far too small to improve val_loss by min_delta: every epoch is a plateau
    # epoch after the first, so with patience 2 the rate falls by 10x after epochs 2 and 4
    # (0-based) and the next epoch runs at the lower rate.
    train = TrainSpec(epochs=5, batch_size=32, optimizer="sgd", learning_rate=1e-9,
                      momentum=0.9, reduce_lr_on_plateau=True, plateau_patience=2,
                      plateau_min_delta=0.1, min_learning_rate=0.0)
    out = fit(make_ctx(train=train))
    assert out.curves["learning_rate"] == pytest.approx([1e-9, 1e-9, 1e-9, 1e-10, 1e-10])


def test_plateau_schedule_keras_semantics():
    plateau = PlateauSchedule(1.0, factor=0.5, patience=2, min_delta=0.01, min_lr=0.2)

    def step(val_loss: float) -> bool:
        """Step on an epoch's val_loss; whether the rate was reduced."""
        before = plateau.lr
        plateau.step({"val_loss": val_loss})
        return plateau.lr != before

    assert not step(1.0)            # improves on inf
    assert not step(0.995)          # within min_delta: wait 1
    assert step(1.2) and plateau.lr == 0.5   # wait 2 = patience: reduce
    assert not step(0.5)            # improves
    assert not step(float("nan"))   # NaN never improves: wait 1
    assert step(0.6) and plateau.lr == 0.25
    step(0.6)
    assert step(0.6) and plateau.lr == 0.2   # floored at min_lr
    step(0.6)
    assert not step(0.6) and plateau.lr == 0.2


def test_bad_labels_are_data_errors():
    dataset = make_dataset()
    y_val = dataset.y_val.copy()
    y_val[7] = 2
    with pytest.raises(DataError, match="y_val row 7 has label 2"):
        fit(make_ctx(dataset=dataset.replace(y_val=y_val)))
    with pytest.raises(DataError, match="n_classes"):
        fit(make_ctx(dataset=dataset.replace(n_classes=None)))


def test_too_narrow_data_is_a_spec_error():
    dataset = make_dataset()
    narrow = dataset.replace(x_train=dataset.x_train[:, :12], x_val=dataset.x_val[:, :12])
    with pytest.raises(SpecError) as err:
        fit(make_ctx(params=NT3Params(), dataset=narrow))
    assert err.value.field == "model.conv[0]"


# -------------------------------------------------------------------------- abstaining model

ABSTAINING = dataclasses.replace(SMALL, variant="abstaining")
#: 12 epochs: long enough for the clean model to learn, short enough that the controller,
#: which raises alpha by 1/0.95 per epoch while abstention exceeds max_abs, has not yet made
#: abstention dearer than the log 2 a coin-flip prediction costs (alpha < ~0.46).
ABSTAIN_TRAIN = dataclasses.replace(FAST, epochs=12)


@pytest.fixture(scope="module")
def abstaining_runs():
    clean = fit(make_ctx(ABSTAINING, ABSTAIN_TRAIN))
    noisy = fit(make_ctx(ABSTAINING, ABSTAIN_TRAIN, dataset=make_dataset(flip_fraction=0.5)))
    return clean, noisy


def test_abstaining_curves(abstaining_runs):
    clean, _ = abstaining_runs
    assert set(clean.curves) == ABSTAIN_KEYS
    assert all(len(v) == ABSTAIN_TRAIN.epochs for v in clean.curves.values())
    assert clean.arrays["val_probabilities"].shape == (80, 3)
    # alpha is held for epochs 0..init_abs_epoch, then adapted (each step within [f, 1/f])
    alpha = clean.curves["alpha"]
    assert alpha[:4] == [0.3] * 4
    steps = np.array(alpha[1:]) / np.array(alpha[:-1])
    assert np.all((steps >= 0.95 - 1e-12) & (steps <= 1 / 0.95 + 1e-12))
    assert clean.extra["variant"] == "abstaining" and clean.extra["n_outputs"] == 3
    # accuracy counts abstentions as wrong: accuracy = (1 - abstention) * abstention_accuracy;
    # the latter is undefined (NaN) exactly where nothing was kept (accuracy 0 there)
    for prefix in ("", "val_"):
        acc = np.array(clean.curves[f"{prefix}accuracy"])
        kept = np.array(clean.curves[f"{prefix}kept"])
        kept_acc = np.array(clean.curves[f"{prefix}abstention_accuracy"])
        np.testing.assert_array_equal(np.isnan(kept_acc), kept == 0)
        reconstructed = ((1 - np.array(clean.curves[f"{prefix}abstention"]))
                         * np.nan_to_num(kept_acc))
        np.testing.assert_allclose(acc, reconstructed, atol=1e-12)


def test_abstaining_model_learns_clean_data(abstaining_runs):
    clean, _ = abstaining_runs
    assert clean.final["val_accuracy"] >= 0.9
    assert clean.final["val_abstention"] <= 0.1


def test_abstaining_model_abstains_under_half_label_noise(abstaining_runs):
    # Half the training labels flipped: labels carry no information, so the cheapest answer is
    # to abstain (alpha = 0.3 < 2/3 log 2). The clean run, same seed and epochs, does not.
    clean, noisy = abstaining_runs
    assert noisy.final["val_abstention"] >= 0.8
    assert noisy.final["abstention"] >= 0.8
    assert noisy.final["val_abstention"] > clean.final["val_abstention"] + 0.5
    # abstaining too much (above max_abs) with nothing attempted wrongly: alpha rose
    assert noisy.curves["alpha"][-1] > 0.3


def test_runs_inside_a_trial_from_a_spec(tmp_path):
    # The whole path: spec validation, registered data source, noise, fit, record.
    from genodl_core.training.trial import run_trial

    spec = {"seed": 1, "device": "cpu",
            "model": {"name": "nt3", "variant": "abstaining", "conv": [[4, 5, 1], [4, 5, 1]],
                      "pool": [1, 4], "dense": [16]},
            "data": {"source": "synthetic_nt3", "n_train": 60, "n_test": 30, "n_features": 200},
            "noise": [{"kind": "label_flip", "fraction": 0.5}],
            "train": {"epochs": 2, "optimizer": "adam", "learning_rate": 1e-3}}
    result = run_trial(spec, tmp_path, raise_errors=True)
    assert result.ok
    # data.validation = "auto": the source's test file is the untouched test split.
    test_keys = {"test_loss", "test_accuracy", "test_abstention", "test_abstention_accuracy",
                 "test_kept", "null_accuracy", "test_null_accuracy", "null_kept_accuracy",
                 "test_null_kept_accuracy"}
    # the labels were flipped, so the noisy-label detectors ran and were scored by default
    detection = {k for k in result.final if k.startswith("detect_")}
    assert {"detect_loss_auroc", "detect_aum_auroc", "detect_abstain_final_auroc"} <= detection
    assert set(result.final) - detection == ABSTAIN_KEYS | test_keys | {
        "epochs_run", "train_seconds", "n_parameters", "predicted_classes"}
    assert result.final["epochs_run"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_precisions_learn_and_restore_switches(precision):
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    out = fit(make_ctx(precision=precision, device="cuda"))
    assert out.final["val_accuracy"] >= 0.9
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
