"""DAC loss against hand-computed values, its gradients, the alpha controller and the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genodl_core.errors import SpecError
from genodl_core.training.abstention import EPS, AbstentionObjective, AlphaController, dac_loss
from genodl_core.training.metrics import (abstention_accuracy, batch_sums,
                                          classification_metrics, rates_from_sums)


def reference_dac(logits: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """The note's formula written directly in float64 numpy (probabilities, then clip)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_abs = np.clip(p[:, -1], EPS, 1 - EPS)
    p_y = p[np.arange(len(y)), y]
    return (1 - p_abs) * (-np.log(p_y / (1 - p_abs))) - alpha * np.log(1 - p_abs)


def test_uniform_logits_by_hand():
    # p = 1/3 each; 1 - p_abs = 2/3; renormalised CE = -log((1/3)/(2/3)) = log 2.
    # L = (2/3) log 2 - 0.3 log(2/3) = 0.462098 + 0.121640 = 0.583738
    loss = dac_loss(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([0]), 0.3)
    assert loss.item() == pytest.approx(2 / 3 * math.log(2) - 0.3 * math.log(2 / 3), abs=1e-12)
    assert loss.item() == pytest.approx(0.583738, abs=1e-6)


def test_confident_correct_prediction_costs_almost_nothing():
    # logits [10, 0, 0]: p_abs = 1/(e^10 + 2) ~ 4.54e-5, p_y ~ 1 - 9.08e-5:
    # L ~ (1 - 4.54e-5) * 4.54e-5 + alpha * 4.54e-5 ~ 5.9e-5 with alpha 0.3.
    loss = dac_loss(torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64), torch.tensor([0]), 0.3)
    assert loss.item() == pytest.approx(1.3 / (math.exp(10) + 2), rel=1e-3)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0])
def test_matches_reference_formula(alpha):
    logits = np.array([[2.0, 0.0, -1.0],
                       [0.5, 1.5, 1.0],
                       [-1.0, -2.0, 3.0],
                       [0.0, 0.0, 0.0],
                       [4.0, -4.0, 0.5]])
    y = np.array([0, 0, 1, 1, 1])
    expected = reference_dac(logits, y, alpha)
    got = dac_loss(torch.tensor(logits), torch.tensor(y), alpha, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    mean = dac_loss(torch.tensor(logits), torch.tensor(y), alpha)
    assert mean.item() == pytest.approx(expected.mean(), rel=1e-12)
    total = dac_loss(torch.tensor(logits), torch.tensor(y), alpha, reduction="sum")
    assert total.item() == pytest.approx(expected.sum(), rel=1e-12)


def test_clipping_at_both_ends_matches_reference():
    # p_abs ~ 1 (clipped to 1 - eps) and p_abs ~ 0 (clipped to eps).
    logits = np.array([[0.0, 0.0, 40.0], [30.0, 0.0, -30.0], [-30.0, 0.0, -30.0]])
    y = np.array([0, 0, 0])
    expected = reference_dac(logits, y, 0.3)
    got = dac_loss(torch.tensor(logits), torch.tensor(y), 0.3, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    # When p_abs is clipped at 1 - eps the penalty term is -alpha * log(eps).
    assert got[0].item() == pytest.approx(1e-7 * (40 - math.log(1e-7)) - 0.3 * math.log(1e-7),
                                          rel=1e-4)


def test_float32_gradients_finite_at_extremes():
    logits = torch.tensor([[0.0, 0.0, 80.0], [90.0, -90.0, -90.0], [-90.0, 90.0, -90.0],
                           [0.3, -0.2, 0.1]], requires_grad=True)
    y = torch.tensor([0, 0, 0, 1])
    loss = dac_loss(logits, y, 0.3)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[3].abs().sum() > 0


def test_bf16_logits_are_lifted_to_float32():
    logits = torch.tensor([[1.0, -1.0, 0.5]], dtype=torch.bfloat16)
    loss = dac_loss(logits, torch.tensor([0]), 0.3)
    assert loss.dtype == torch.float32


def test_cheaper_abstention_wins_on_unpredictable_labels():
    # Two identical inputs with opposite labels: abstaining fully (1 - p_abs -> eps) costs
    # -alpha log(eps) ~ 16 alpha; predicting 50/50 with no abstention costs log 2. An
    # intermediate p_abs is optimal: d/dq [q log 2 - alpha log q] = 0 at q = alpha / log 2.
    alpha = 0.3
    q_star = alpha / math.log(2)
    qs = np.linspace(0.05, 0.95, 181)
    losses = []
    for q in qs:
        p_abs = 1 - q
        logits = torch.tensor(np.log([[q / 2, q / 2, p_abs]] * 2))
        losses.append(dac_loss(logits, torch.tensor([0, 1]), alpha).item())
    assert qs[int(np.argmin(losses))] == pytest.approx(q_star, abs=0.01)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="k \\+ 1"):
        dac_loss(torch.zeros(2, 1), torch.tensor([0, 0]), 0.3)
    with pytest.raises(ValueError, match="reduction"):
        dac_loss(torch.zeros(2, 3), torch.tensor([0, 0]), 0.3, reduction="max")


# -------------------------------------------------------------------------- alpha controller


def test_no_update_up_to_init_abs_epoch():
    ctl = AlphaController(alpha=0.3, init_abs_epoch=2)
    for epoch in range(3):  # epochs 0, 1, 2 (0-based) keep alpha
        assert ctl.end_epoch(epoch, 0.5, 0.9) == 0.3
    assert ctl.end_epoch(3, 0.5, 0.0) == pytest.approx(0.3 * 0.95)
    assert ctl.history == [0.3, 0.3, 0.3, 0.3]


def test_decrease_when_inaccurate_unclipped():
    # acc_err = 0.9 - 0.99 = -0.09; scale = 1 - 0.5 * 0.09 = 0.955 (inside [0.95, 1/0.95]).
    ctl = AlphaController(alpha=0.3, init_abs_epoch=0)
    assert ctl.scale(0.9, 0.05) == pytest.approx(0.955)
    assert ctl.end_epoch(1, 0.9, 0.05) == pytest.approx(0.3 * 0.955)


def test_increase_when_abstaining_too_much_unclipped():
    # abs_err = 0.2 - 0.1 = 0.1; accuracy above target; scale = 1.05 < 1/0.95 = 1.0526.
    ctl = AlphaController(alpha=0.3, init_abs_epoch=0)
    assert ctl.end_epoch(1, 1.0, 0.2) == pytest.approx(0.3 * 1.05)


def test_clipped_to_scale_factor_both_ways():
    ctl = AlphaController(alpha=1.0, scale_factor=0.95, init_abs_epoch=0)
    assert ctl.scale(0.5, 0.0) == pytest.approx(0.95)        # raw 0.755
    assert ctl.scale(1.0, 1.0) == pytest.approx(1 / 0.95)    # raw 1.45
    ctl8 = AlphaController(alpha=1.0, scale_factor=0.8, acc_gain=1.5, max_abs=0.3)
    assert ctl8.scale(0.5, 0.0) == pytest.approx(0.8)        # raw 0.265
    assert ctl8.scale(0.99, 0.4) == pytest.approx(1.05)      # raw, inside [0.8, 1.25]


def test_errors_combine_and_targets_met_means_no_change():
    ctl = AlphaController(alpha=0.3, init_abs_epoch=0)
    assert ctl.scale(0.995, 0.05) == 1.0
    # acc_err -0.04, abs_err +0.06: 1 - 0.02 + 0.03 = 1.01
    assert ctl.scale(0.95, 0.16) == pytest.approx(1.01)


def test_non_finite_abstention_keeps_alpha():
    ctl = AlphaController(alpha=0.3, init_abs_epoch=0)
    assert ctl.end_epoch(1, 0.5, float("nan")) == 0.3


def test_nothing_kept_means_no_accuracy_error():
    # Accuracy over no kept samples is NaN; the rule then acts as it did when that accuracy
    # was reported as 1.0: only the abstention error counts (here clipped at 1/0.95).
    undefined = AlphaController(alpha=0.3, init_abs_epoch=0)
    as_before = AlphaController(alpha=0.3, init_abs_epoch=0)
    assert undefined.end_epoch(1, float("nan"), 1.0) == as_before.end_epoch(1, 1.0, 1.0)
    assert undefined.alpha == pytest.approx(0.3 / 0.95)


def test_controller_rejects_bad_settings():
    with pytest.raises(SpecError, match="alpha_scale_factor"):
        AlphaController(scale_factor=0.0)
    with pytest.raises(SpecError, match="alpha"):
        AlphaController(alpha=-1.0)


def test_objective_reports_alpha_in_effect():
    objective = AbstentionObjective(2, AlphaController(alpha=0.3, init_abs_epoch=0))
    extra = objective.end_epoch(1, {"val_abstention_accuracy": 0.5, "val_abstention": 0.0})
    assert extra == {"alpha": 0.3}
    assert objective.controller.alpha == pytest.approx(0.285)
    assert objective.abstain_class == 2
    assert objective.extra()["controller"] == "genodl"


# -------------------------------------------------------------------------- metrics


def test_abstention_metrics():
    # argmax: 0, 2 (abstain), 1, 2 (abstain), 0 ; labels 0, 1, 0, 0, 0
    logits = torch.tensor([[3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0], [0, 1.0, 3.0], [2.0, 1.0, 0]])
    y = torch.tensor([0, 1, 0, 0, 0])
    m = classification_metrics(logits, y, abstain_class=2)
    assert m["accuracy"] == pytest.approx(2 / 5)        # abstentions count as wrong
    assert m["abstention"] == pytest.approx(2 / 5)
    assert m["abstention_accuracy"] == pytest.approx(2 / 3)


def test_all_abstained_gives_undefined_accuracy_and_zero_kept():
    logits = torch.tensor([[0, 0, 5.0]] * 4)
    m = classification_metrics(logits, torch.tensor([0, 1, 0, 1]), abstain_class=2)
    assert math.isnan(m.pop("abstention_accuracy"))
    assert m == {"accuracy": 0.0, "abstention": 1.0, "kept": 0.0}
    assert math.isnan(abstention_accuracy(0, 4, 4))


def test_kept_counts_the_samples_not_abstained_on():
    logits = torch.tensor([[3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0]])
    m = classification_metrics(logits, torch.tensor([0, 0, 0]), abstain_class=2)
    assert m["kept"] == 2.0 and m["abstention_accuracy"] == pytest.approx(0.5)
    assert "kept" not in classification_metrics(logits[:, :2], torch.tensor([0, 0, 0]))


def test_sums_accumulate_to_sample_means():
    losses = torch.tensor([1.0, 2.0, 3.0])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    sums = batch_sums(losses, logits, torch.tensor([0, 0, 0]), None)
    sums = sums + batch_sums(torch.tensor([6.0]), torch.tensor([[0.0, 1.0]]), torch.tensor([1]),
                             None)
    rates = rates_from_sums(sums, 4, abstaining=False)
    assert rates == {"loss": pytest.approx(3.0), "accuracy": pytest.approx(0.75)}
    with pytest.raises(ValueError):
        rates_from_sums(sums, 0, abstaining=False)
