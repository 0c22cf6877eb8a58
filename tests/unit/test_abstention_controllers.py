"""The three abstention controllers (genodl, CANDLE-exact, the DAC authors' schedule) against
hand-computed values and their checkpoints; the metrics behind the collapsed-classifier flag."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genodl_core.errors import SpecError
from genodl_core.models.nt3 import NT3Params
from genodl_core.training.abstention import (EPS, AbstentionObjective, AlphaController,
                                             CandleAbstentionObjective, DacSchedule,
                                             DacScheduleObjective, abstention_objective,
                                             candle_abstention_loss, keras_batch_means)
from genodl_core.training.metrics import collapsed_class, predicted_classes
from genodl_core.typed import build

# ------------------------------------------------------------------------------ CANDLE-exact


def keras_reference(logits: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """CANDLE's loss as its Keras code computes it, written out in float64 numpy."""
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p = softmax(softmax(logits))                        # softmax layer after a softmax dense
    mask = np.zeros(p.shape[1])
    mask[-1] = 1.0
    base = (1 - mask) * p + EPS                         # abstention column becomes eps
    base = base / base.sum(axis=1, keepdims=True)       # Keras' categorical_crossentropy ...
    base = np.clip(base, EPS, 1 - EPS)                  # ... normalises, then clips
    target = np.eye(p.shape[1])[y]                      # one-hot over k + 1 (abstention 0)
    base_cost = -(target * np.log(base)).sum(axis=1)
    p_abs = np.clip((mask * p).sum(axis=1), EPS, 1 - EPS)
    return (1 - p_abs) * base_cost - alpha * np.log(1 - p_abs)


def test_candle_loss_matches_its_keras_formula():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 1.0], [-1.0, -2.0, 30.0], [0.0, 0.0, 0.0]])
    y = np.array([0, 0, 1, 1])
    got = candle_abstention_loss(torch.tensor(logits), torch.tensor(y), 0.3)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), keras_reference(logits, y, 0.3), rtol=2e-6)


def test_double_softmax_bounds_the_abstention_probability():
    # softmax(softmax(z)) for k + 1 = 3 lies in [1/(e + 2), e/(e + 2)]: even a hugely
    # confident abstention logit gives p_abs ~ 0.576, so the penalty stays finite and small.
    objective = CandleAbstentionObjective(2, AlphaController(), batch_size=4, n_val=1)
    p = objective.probabilities(torch.tensor([[0.0, 0.0, 80.0], [80.0, 0.0, 0.0]]))
    assert p[0, 2].item() == pytest.approx(math.e / (math.e + 2), rel=1e-6)
    assert p[1, 2].item() == pytest.approx(1 / (math.e + 2), rel=1e-6)


def test_keras_batch_means_by_hand():
    # 5 samples in batches of 2: [c, a], [a, a], [w]:
    # accuracies 1/1, 1.0 (all abstained: CANDLE's value), 0/1 -> mean 2/3;
    # abstention 1/2, 2/2, 0/1 -> mean 0.5. Sample-level figures would be 1/2 and 3/5.
    correct = np.array([True, False, False, False, False])
    abstained = np.array([False, True, True, True, False])
    acc, frac = keras_batch_means(correct, abstained, 2)
    assert acc == pytest.approx(2 / 3, rel=1e-6)
    assert frac == pytest.approx(0.5, rel=1e-6)


def test_candle_controller_steers_by_keras_metrics_of_the_validation_pass():
    objective = CandleAbstentionObjective(2, AlphaController(alpha=0.3, init_abs_epoch=0),
                                          batch_size=2, n_val=5)
    # argmax: 0 (right), abstain, abstain, abstain, 1 (wrong, label 0)
    logits = torch.tensor([[3.0, 0, 0], [0, 0, 3.0], [0, 0, 3.0], [0, 0, 3.0], [0, 3.0, 0]])
    y = torch.zeros(5, dtype=torch.int64)
    losses = objective.per_sample_loss(logits, y)
    objective.batch_sums(losses[:3], None, logits[:3], y[:3])   # evaluation batches of any size
    objective.batch_sums(losses[3:], None, logits[3:], y[3:])
    row = objective.end_epoch(1, {"val_abstention_accuracy": 0.5, "val_abstention": 0.6})
    assert row["alpha"] == 0.3
    assert row["keras_val_abstention_accuracy"] == pytest.approx(2 / 3, rel=1e-6)
    assert row["keras_val_abstention"] == pytest.approx(0.5, rel=1e-6)
    # scale = 1 + 0.5 * (2/3 - 0.99) + 0.5 * (0.5 - 0.1) = 1.0383 (within [0.95, 1/0.95])
    assert objective.controller.alpha == pytest.approx(0.3 * (1 + 0.5 * (2 / 3 - 0.99) + 0.2))
    # A training step (loss given) records nothing for the controller.
    objective.batch_sums(losses, losses.mean(), logits, y)
    with pytest.raises(RuntimeError, match="no validation pass"):
        objective.end_epoch(2, {})


# ------------------------------------------------------------------------------ DAC schedule


def dac(warmup=2, epochs=6, **kw) -> DacScheduleObjective:
    return DacScheduleObjective(2, DacSchedule(warmup_epochs=warmup, **kw), epochs=epochs)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=g, requires_grad=True), torch.randint(0, 2, (8,),
                                                                             generator=g)


def loss_term(logits, y, clip: bool) -> float:
    p_abs = torch.softmax(logits.detach(), 1)[:, -1]
    if clip:
        p_abs = p_abs.clamp(max=1 - EPS)
    return float(((1 - p_abs) * F.cross_entropy(logits.detach()[:, :-1], y,
                                                reduction="none")).mean())


def test_dac_warmup_is_cross_entropy_then_alpha_from_moving_average_then_linear_ramp():
    obj = dac(warmup=2, epochs=6)
    terms = []
    for epoch in range(2):                                # warm-up: 2 epochs of 2 batches
        for b in range(2):
            x, y = batch(10 * epoch + b)
            loss = obj.per_sample_loss(x, y)
            torch.testing.assert_close(loss, F.cross_entropy(x, y, reduction="none"))
            terms.append(loss_term(x, y, clip=False))
        assert math.isnan(obj.end_epoch(epoch, {})["alpha"])
    x, y = batch(99)                                      # first batch of epoch 2
    loss = obj.per_sample_loss(x, y)
    terms.append(loss_term(x, y, clip=True))
    m = terms[0]
    for t in terms[1:]:
        m = 0.05 * t + 0.95 * m
    alpha0 = m / 64.0
    assert obj.alpha == pytest.approx(alpha0, rel=1e-5)
    p_abs = torch.softmax(x.detach(), 1)[:, -1]
    h = F.cross_entropy(x.detach()[:, :-1], y, reduction="none")
    torch.testing.assert_close(loss.detach(), (1 - p_abs) * h - alpha0 * torch.log(1 - p_abs),
                               rtol=1e-5, atol=1e-7)
    # step = (alpha_final - alpha0) / (E - W - 1); epochs 2..5 use alpha0 + (e - 2) * step
    step = (1.0 - alpha0) / (6 - 2 - 1)
    used = [obj.end_epoch(2, {})["alpha"]]
    for epoch in (3, 4, 5):
        obj.per_sample_loss(*batch(epoch))
        used.append(obj.end_epoch(epoch, {})["alpha"])
    np.testing.assert_allclose(used, [alpha0 + i * step for i in range(4)], rtol=1e-5)
    assert used[-1] == pytest.approx(1.0, rel=1e-5)          # alpha_final at the last epoch
    assert all(math.isnan(a) for a in obj.history[:2])        # no penalty in the warm-up
    assert obj.extra()["controller"] == "dac"


def test_dac_validation_does_not_touch_the_moving_average():
    obj = dac(warmup=1)
    x, y = batch(1)
    obj.per_sample_loss(x, y)
    before = obj.state_dict()["ewma"]
    with torch.no_grad():
        obj.per_sample_loss(*batch(2))
    assert obj.state_dict()["ewma"] == before


def test_dac_state_round_trips_bit_for_bit_mid_schedule():
    whole, first = dac(warmup=1, epochs=5), dac(warmup=1, epochs=5)
    for obj in (whole, first):
        for epoch in range(2):
            obj.per_sample_loss(*batch(epoch))
            obj.end_epoch(epoch, {})
    resumed = dac(warmup=1, epochs=5)
    resumed.load_state_dict(first.state_dict())
    for epoch in range(2, 5):
        a = whole.per_sample_loss(*batch(epoch))
        b = resumed.per_sample_loss(*batch(epoch))
        assert torch.equal(a, b)
        assert whole.end_epoch(epoch, {}) == resumed.end_epoch(epoch, {})
    assert whole.state_dict() == resumed.state_dict()


def test_dac_last_epoch_as_first_abstaining_one_has_no_step():
    obj = dac(warmup=2, epochs=3)
    for epoch in range(3):
        obj.per_sample_loss(*batch(epoch))
        obj.end_epoch(epoch, {})
    assert obj.state_dict()["step"] == 0.0


def test_dac_schedule_rejects_bad_settings():
    with pytest.raises(SpecError, match="alpha_final"):
        DacSchedule(alpha_final=0.0)
    with pytest.raises(SpecError, match="warmup_epochs"):
        DacSchedule(warmup_epochs=-1)


# ------------------------------------------------------------------------------ the spec


def test_controller_is_chosen_in_the_model_parameters():
    common = dict(alpha_controller=AlphaController(), dac=DacSchedule(), epochs=5,
                  batch_size=4, n_val=10)
    assert type(abstention_objective("genodl", 2, **common)) is AbstentionObjective
    assert isinstance(abstention_objective("candle", 2, **common), CandleAbstentionObjective)
    assert isinstance(abstention_objective("dac", 2, **common), DacScheduleObjective)
    with pytest.raises(SpecError, match="genodl"):
        abstention_objective("keras", 2, **common)
    p = build(NT3Params, {"variant": "abstaining", "controller": "dac", "warmup_epochs": 3,
                          "alpha_final": 0.5}, "model")
    assert (p.dac_schedule().warmup_epochs, p.dac_schedule().alpha_final) == (3, 0.5)
    assert NT3Params().controller == "genodl"
    with pytest.raises(SpecError) as err:
        build(NT3Params, {"controller": "pid"}, "model")
    assert err.value.field == "model.controller"
    with pytest.raises(SpecError) as err:
        build(NT3Params, {"alpha_init_factor": 0}, "model")
    assert err.value.field == "model.alpha_init_factor"


# ------------------------------------------------------------------------------ collapse


def test_predicted_and_collapsed_classes():
    one = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.5]])
    assert collapsed_class(one, 2) == 0
    assert predicted_classes(one, 2).tolist() == [0]
    mixed = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])     # one kept, one abstained
    assert collapsed_class(mixed, 2) is None
    assert predicted_classes(mixed, 2).tolist() == [0]
    assert collapsed_class(torch.tensor([[0.0, 0.0, 3.0]] * 2), 2) is None  # abstains on all
    assert predicted_classes(torch.tensor([[0.0, 0.0, 3.0]] * 2), 2).numel() == 0
    assert collapsed_class(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), None) is None


# ------------------------------------------------------------------------------ in a trial


def abstaining_spec(seed: int, controller: str):
    from genodl_core.spec import spec_from_dict
    return spec_from_dict({
        "seed": seed, "device": "cpu",
        "model": {"name": "nt3", "conv": [[4, 5, 1], [4, 5, 1]], "pool": [1, 4], "dense": [16],
                  "variant": "abstaining", "alpha": 0.7, "init_abs_epoch": 1,
                  "warmup_epochs": 1, "controller": controller},
        "data": {"source": "synthetic_nt3", "n_train": 64, "n_test": 30, "n_features": 120},
        "noise": [{"kind": "label_flip", "fraction": 0.3}],
        "train": {"epochs": 4, "batch_size": 16, "learning_rate": 0.01, "momentum": 0.9}})


@pytest.mark.usefixtures("torch_one_thread")
@pytest.mark.parametrize("controller", ["candle", "dac"])
def test_controllers_train_alone_and_packed_alike(tmp_path, controller):
    from genodl_core import records
    from genodl_core.training.trial import run_trial, run_trials
    specs = [abstaining_spec(1, controller), abstaining_spec(2, controller)]
    alone = [records.load_record(run_trial(s, tmp_path / "alone", raise_errors=True).path).result
             for s in specs]
    packed = [records.load_record(r.path).result for r in
              run_trials(specs, tmp_path / "packed", pack_size=2, raise_errors=True)]
    for a, b in zip(alone, packed):
        assert b["engine"]["mode"] == "packed" and a["extra"]["controller"] == controller
        assert len(a["curves"]["alpha"]) == 4 and "val_kept" in a["curves"]
        for key in a["curves"]:
            if key != "epoch_seconds":
                np.testing.assert_allclose(b["curves"][key], a["curves"][key], rtol=1e-4,
                                           atol=1e-6, err_msg=key)
    if controller == "dac":
        assert math.isnan(alone[0]["curves"]["alpha"][0])
        assert alone[0]["curves"]["alpha"][-1] == pytest.approx(1.0, rel=1e-6)
    else:
        assert "keras_val_abstention_accuracy" in alone[0]["curves"]
