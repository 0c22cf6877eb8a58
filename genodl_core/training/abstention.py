"""The deep abstaining classifier (DAC): its loss, its alpha controller and its training objective.

A DAC has ``k`` real classes plus one abstention output (index ``k``); labels stay in the real
classes. With ``p = softmax(logits)`` and ``p_abs = clip(p[k], eps, 1 - eps)`` the per-sample loss
is::

    L = (1 - p_abs) * (-log(p_y / (1 - p_abs))) - alpha * log(1 - p_abs)

The first term is the cross-entropy over the real classes renormalised without the abstention
mass, weighted by how much the model did not abstain; the second charges ``alpha`` for
abstaining. Abstaining is therefore cheap on samples whose label the model cannot predict (noisy
labels).

How ``alpha`` evolves is the controller's choice, named by the model's ``controller`` setting
(:func:`abstention_objective`):

- ``"genodl"`` (:class:`AbstentionObjective`): the :class:`AlphaController` tunes ``alpha`` after
  every epoch from the validation abstention accuracy and fraction (CANDLE's update rule) on the
  loss above, with one softmax.
- ``"candle"`` (:class:`CandleAbstentionObjective`): CANDLE's NT3 abstention script as it runs:
  the same update rule, fed with Keras' batch-averaged validation metrics, on a loss computed
  from a doubly softmaxed output (:func:`candle_abstention_loss`).
- ``"dac"`` (:class:`DacScheduleObjective`): the DAC authors' schedule: warm-up epochs of plain
  cross-entropy, ``alpha`` initialised from a moving average of the loss terms, then a linear
  ramp to ``alpha_final``; no feedback from validation.

docs/models.md gives the formulas and what each takes from where.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

import torch
import torch.nn.functional as F

from genodl_core.errors import SpecError
from genodl_core.typed import check_range
from genodl_core.training.objectives import CrossEntropyObjective

log = logging.getLogger(__name__)

#: Clipping of the abstention probability (Keras' epsilon, as in the reference implementation).
EPS = 1e-7


def dac_loss(logits: torch.Tensor, y: torch.Tensor, alpha: float, *, eps: float = EPS,
             reduction: str = "mean") -> torch.Tensor:
    """DAC loss of a batch; the last output column is the abstention class.

    Computed from ``log_softmax`` in float32 (or the logits' own wider dtype): ``1 - p_abs`` is
    the summed probability of the real classes, taken as a log-sum-exp of their
    log-probabilities and clipped in log space to ``[log(eps), log(1 - eps)]``. This is the same
    function as clipping ``p_abs`` to ``[eps, 1 - eps]`` but keeps precision when ``p_abs`` is close
    to 0 or 1, where ``log(1 - p_abs)`` computed from ``p_abs`` loses every digit.

    Parameters
    ----------
    logits
        ``[batch, k + 1]`` unnormalised outputs (no softmax applied).
    y
        ``[batch]`` int64 true classes in ``range(k)``.
    alpha
        Weight of the abstention penalty (> 0).
    eps
        Clipping of ``p_abs``.
    reduction
        'mean' (the training loss), 'sum' or 'none' (per-sample values).

    Raises
    ------
    ValueError
        Fewer than 2 outputs (no real class besides the abstention one), or an unknown
        ``reduction``.
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"DAC loss needs [batch, k + 1 >= 2] logits, got {tuple(logits.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}; allowed: 'mean', 'sum', 'none'")
    work = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(work, dim=1)
    k = logits.shape[1] - 1
    log_keep = torch.logsumexp(logp[:, :k], dim=1).clamp(math.log(eps), math.log1p(-eps))
    keep = log_keep.exp()                                  # 1 - p_abs, clipped
    logp_y = logp.gather(1, y.view(-1, 1)).squeeze(1)
    renormalised_ce = log_keep - logp_y                    # -log(p_y / (1 - p_abs))
    per_sample = keep * renormalised_ce - alpha * log_keep
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


@dataclass
class AlphaController:
    """Adapts the abstention penalty ``alpha`` at the end of each epoch from validation metrics.

    After every epoch ``e`` (0-based, as the epoch numbers the loop reports) with
    ``e > init_abs_epoch`` (CANDLE's condition), with ``f = scale_factor``::

        acc_err = min(val_abstention_accuracy - min_acc, 0)   # <= 0: too inaccurate
        abs_err = max(val_abstention - max_abs, 0)            # >= 0: abstaining too much
        alpha  *= clip(1 + acc_gain * acc_err + abs_gain * abs_err, f, 1 / f)

    An inaccurate model gets a cheaper abstention (alpha falls), one that abstains too much a
    dearer one (alpha rises); the clip limits each step to a factor ``f`` either way, so one odd
    validation epoch cannot swing the penalty.

    ``history`` holds the alpha in effect during each epoch (the value that epoch's losses were
    computed with); :attr:`alpha` is the value for the next epoch.
    """

    alpha: float = 0.3
    scale_factor: float = 0.95
    min_acc: float = 0.99
    max_abs: float = 0.10
    acc_gain: float = 0.5
    abs_gain: float = 0.5
    init_abs_epoch: int = 2
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise SpecError("alpha", self.alpha, "alpha > 0", reason="out of range")
        if not 0 < self.scale_factor <= 1:
            raise SpecError("alpha_scale_factor", self.scale_factor,
                            "0 < alpha_scale_factor <= 1", reason="out of range")

    def scale(self, val_abstention_accuracy: float, val_abstention: float) -> float:
        """The multiplicative step for the given validation metrics (clipped to [f, 1/f])."""
        acc_err = min(val_abstention_accuracy - self.min_acc, 0.0)
        abs_err = max(val_abstention - self.max_abs, 0.0)
        raw = 1.0 + self.acc_gain * acc_err + self.abs_gain * abs_err
        return min(max(raw, self.scale_factor), 1.0 / self.scale_factor)

    def end_epoch(self, epoch: int, val_abstention_accuracy: float,
                  val_abstention: float) -> float:
        """Record the alpha used in ``epoch``, adapt it after the warm-up; return the new alpha.

        An undefined (NaN) accuracy means nothing was kept: there is no accuracy error then, and
        the abstention error alone steers alpha (what the rule did when that accuracy was
        reported as 1.0, so results are unchanged). A non-finite abstention fraction (a
        diverged model) leaves alpha unchanged rather than poisoning it.
        """
        self.history.append(self.alpha)
        if epoch <= self.init_abs_epoch:
            return self.alpha
        if not math.isfinite(val_abstention):
            log.warning("epoch %d: non-finite validation abstention; alpha kept at %g", epoch,
                        self.alpha)
            return self.alpha
        if math.isnan(val_abstention_accuracy):
            val_abstention_accuracy = self.min_acc  # nothing kept: no accuracy error
        step = self.scale(val_abstention_accuracy, val_abstention)
        self.alpha *= step
        log.debug("epoch %d: alpha scaled by %.4f to %.6g", epoch, step, self.alpha)
        return self.alpha


def candle_abstention_loss(logits: torch.Tensor, y: torch.Tensor, alpha: float, *,
                           eps: float = EPS) -> torch.Tensor:
    """Per-sample abstention loss exactly as CANDLE's NT3 abstention script computes it.

    CANDLE's model ends in a softmax layer, and its abstention adapter replaces the last dense
    layer by one with ``k + 1`` units and a softmax activation while keeping that softmax layer
    after it: the output is ``p = softmax(softmax(logits))``. Its loss then takes, with
    Keras' epsilon ``eps``::

        base    = p[:k] + eps, and eps in the abstention column         # (1 - mask) * p + eps
        q_y     = clip(base_y / sum(base), eps, 1 - eps)                 # Keras' crossentropy
        p_abs   = clip(p[k], eps, 1 - eps)
        L       = (1 - p_abs) * (-log q_y) - alpha * log(1 - p_abs)

    The double softmax keeps every probability inside ``[1 / (e + k), e / (e + k)]`` (for
    ``k = 2``: 0.212 to 0.576): the model can never be confident, neither in a class nor in
    abstaining, which changes what a given ``alpha`` means. Float32, as Keras runs it.
    """
    p = torch.softmax(torch.softmax(logits.float(), dim=1), dim=1)
    k = p.shape[1] - 1
    real = p[:, :k] + eps
    total = real.sum(dim=1) + eps
    q_y = (real.gather(1, y.view(-1, 1)).squeeze(1) / total).clamp(eps, 1 - eps)
    p_abs = p[:, k].clamp(eps, 1 - eps)
    return (1 - p_abs) * (-torch.log(q_y)) - alpha * torch.log(1 - p_abs)


def keras_batch_means(correct: np.ndarray, abstained: np.ndarray,
                      batch_size: int) -> tuple[float, float]:
    """Validation abstention accuracy and fraction as Keras reports CANDLE's metrics.

    Keras evaluates the validation data in batches of ``batch_size`` (the last one smaller)
    and reports the unweighted float32 mean of the per-batch values. CANDLE's per-batch
    abstention accuracy is ``correct / (n - abstained)``, and 1.0 for a batch abstained on
    entirely; its abstention is ``abstained / n``.
    """
    accs, fracs = [], []
    for start in range(0, len(correct), batch_size):
        n = len(correct[start:start + batch_size])
        abst = int(abstained[start:start + batch_size].sum())
        right = int(correct[start:start + batch_size].sum())
        accs.append(right / (n - abst) if n > abst else 1.0)
        fracs.append(abst / n)
    return _float32_mean(accs), _float32_mean(fracs)


def _float32_mean(values: Sequence[float]) -> float:
    total = np.float32(0.0)
    for v in values:
        total = np.float32(total + np.float32(v))
    return float(total / np.float32(len(values)))


class AbstentionObjective(CrossEntropyObjective):
    """The ``"genodl"`` controller: DAC loss (one softmax) at the :class:`AlphaController`'s alpha.

    After each epoch the controller adapts alpha from the row's validation metrics
    (``val_abstention_accuracy``, ``val_abstention``); the curve ``alpha`` holds the value each
    epoch's losses were computed with.
    """

    name = "genodl"

    def __init__(self, n_classes: int, controller: AlphaController):
        self.abstain_class: int | None = n_classes
        self.controller = controller

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dac_loss(logits, y, self.controller.alpha, reduction="none")

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        """Adapt alpha from validation metrics; return the curve entries of this epoch."""
        used = self.controller.alpha
        self.controller.end_epoch(epoch, metrics["val_abstention_accuracy"],
                                  metrics["val_abstention"])
        return {"alpha": used}

    def extra(self) -> dict[str, Any]:
        return {"controller": self.name, "alpha_next": self.controller.alpha}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.controller.alpha, "history": list(self.controller.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.alpha = state["alpha"]
        self.controller.history = list(state["history"])


class CandleAbstentionObjective(AbstentionObjective):
    """The ``"candle"`` controller: CANDLE's NT3 abstention script, detail for detail.

    - Loss: :func:`candle_abstention_loss` (double softmax, Keras' epsilons).
    - Model outputs as probabilities: ``softmax(softmax(logits))`` (:meth:`probabilities`).
    - Alpha: CANDLE's ``AbstentionAdapt_Callback`` rule (the :class:`AlphaController`, run at
      the end of every epoch after ``init_abs_epoch``), fed with the validation metrics as
      Keras reports them: means over validation batches of ``batch_size`` samples
      (:func:`keras_batch_means`; a batch abstained on entirely counts accuracy 1.0). They are
      recorded as the curves ``keras_val_abstention_accuracy`` and ``keras_val_abstention``.

    The per-sample flags come from the validation pass: the first ``n_val`` samples that the
    stack evaluates without gradients after an epoch's steps (the validation split) are kept
    until :meth:`end_epoch`.
    """

    name = "candle"

    def __init__(self, n_classes: int, controller: AlphaController, *, batch_size: int,
                 n_val: int):
        super().__init__(n_classes, controller)
        self.batch_size = batch_size
        self.n_val = n_val
        self._flags: list[tuple[torch.Tensor, torch.Tensor]] = []

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return candle_abstention_loss(logits, y, self.controller.alpha)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """What CANDLE's model outputs: the softmax of a softmax."""
        return torch.softmax(torch.softmax(logits.float(), dim=-1), dim=-1)

    def batch_sums(self, losses: torch.Tensor, loss: torch.Tensor | None, logits: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
        if loss is None:  # an evaluation pass (validation), not a training step
            pred = logits.detach().argmax(dim=1)
            self._flags.append((pred == y, pred == self.abstain_class))
        return super().batch_sums(losses, loss, logits, y)

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        acc, frac = self._keras_metrics()
        used = self.controller.alpha
        self.controller.end_epoch(epoch, acc, frac)
        return {"alpha": used, "keras_val_abstention_accuracy": acc,
                "keras_val_abstention": frac}

    def _keras_metrics(self) -> tuple[float, float]:
        if not self._flags:
            raise RuntimeError("the candle controller saw no validation pass this epoch")
        correct = torch.cat([c for c, _ in self._flags])[:self.n_val].cpu().numpy()
        abstained = torch.cat([a for _, a in self._flags])[:self.n_val].cpu().numpy()
        self._flags = []
        return keras_batch_means(correct, abstained, self.batch_size)


@dataclass
class DacSchedule:
    """Settings of the DAC authors' alpha schedule (see :class:`DacScheduleObjective`)."""

    #: Epochs of plain cross-entropy before abstention is allowed (the authors' ``learn_epochs``).
    warmup_epochs: int = 10
    #: Alpha of the last epoch.
    alpha_final: float = 1.0
    #: The first alpha is the moving average of the loss terms divided by this.
    alpha_init_factor: float = 64.0
    #: Weight of the newest batch in the moving average.
    ewma_mu: float = 0.05

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise SpecError("warmup_epochs", self.warmup_epochs, "warmup_epochs >= 0",
                            reason="out of range")
        if not self.alpha_final > 0:
            raise SpecError("alpha_final", self.alpha_final, "alpha_final > 0",
                            reason="out of range")
        if not self.alpha_init_factor > 0:
            raise SpecError("alpha_init_factor", self.alpha_init_factor,
                            "alpha_init_factor > 0", reason="out of range")


class DacScheduleObjective(CrossEntropyObjective):
    """The ``"dac"`` controller: the DAC authors' (Thulasidasan et al.) own alpha schedule.

    With ``W = warmup_epochs``, ``E`` the trial's epochs and epochs counted from 0:

    - Epochs ``0 .. W-1`` (warm-up): the loss is plain cross-entropy over all ``k + 1``
      outputs (the abstention output only in the softmax's denominator). Every training batch
      updates a moving average ``m <- mu * t + (1 - mu) * m`` (``m`` starts at the first
      ``t``) of ``t = mean((1 - p_abs) * h)``, where ``h`` is the cross-entropy over the real
      classes' outputs alone.
    - At the first training batch of epoch ``W`` (after that batch's update of ``m``):
      ``alpha = m / alpha_init_factor`` and ``step = (alpha_final - alpha) / (E - W - 1)``
      (0 when ``E = W + 1``, where the authors' code would divide by zero). Each later epoch
      adds ``step``, so the last epoch trains at ``alpha_final``.
    - From epoch ``W`` on the loss is ``(1 - p_abs) * h - alpha * log(1 - p_abs)`` with
      ``p_abs`` clipped from above at ``1 - eps`` (the authors clip only there), and ``m``
      keeps being updated (unused).

    Validation never changes alpha. Its loss is this objective's loss at the current alpha
    (the authors print plain cross-entropy there). The curve ``alpha`` is NaN in the
    warm-up (no abstention penalty exists yet). ``m``, ``alpha`` and ``step`` are float32
    tensors on the device, updated without host synchronisation.
    """

    name = "dac"

    def __init__(self, n_classes: int, schedule: DacSchedule, *, epochs: int):
        self.abstain_class: int | None = n_classes
        self.schedule = schedule
        self.epochs = epochs
        self.epoch = 0
        self.history: list[float] = []
        self._ewma: torch.Tensor | None = None
        self._alpha: torch.Tensor | None = None
        self._step: torch.Tensor | None = None

    @property
    def alpha(self) -> float:
        """The alpha in effect now (NaN during the warm-up); reading it synchronises."""
        return math.nan if self._alpha is None else float(self._alpha)

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        work = logits if logits.dtype == torch.float64 else logits.float()
        training = torch.is_grad_enabled()
        warmup = self.epoch < self.schedule.warmup_epochs
        p_abs = torch.softmax(work, dim=1)[:, -1]
        if not warmup:
            p_abs = p_abs.clamp(max=1 - EPS)
        real_ce = F.cross_entropy(work[:, :-1], y, reduction="none")
        if training:
            self._track(((1 - p_abs) * real_ce).mean().detach().float())
        if warmup:
            return F.cross_entropy(work, y, reduction="none")
        if self._alpha is None:
            self._start_ramp()
        alpha = self._alpha.to(work.dtype)
        return (1 - p_abs) * real_ce - alpha * torch.log(1 - p_abs)

    def _track(self, term: torch.Tensor) -> None:
        if self._ewma is None:
            self._ewma = term
        else:
            mu = self.schedule.ewma_mu
            self._ewma = mu * term + (1 - mu) * self._ewma.to(term.device)

    def _start_ramp(self) -> None:
        if self._ewma is None:
            raise RuntimeError("the dac schedule needs a training batch before its first alpha")
        self._alpha = self._ewma / self.schedule.alpha_init_factor
        remaining = self.epochs - (self.epoch + 1)
        self._step = ((self.schedule.alpha_final - self._alpha) / remaining if remaining > 0
                      else torch.zeros_like(self._alpha))

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        """Record the alpha of this epoch and take the next step of the ramp."""
        used = self.alpha
        self.history.append(used)
        if self._alpha is not None:
            self._alpha = self._alpha + self._step
        self.epoch = epoch + 1
        return {"alpha": used}

    def extra(self) -> dict[str, Any]:
        return {"controller": self.name, "alpha_next": self.alpha}

    def state_dict(self) -> dict[str, Any]:
        def plain(t: torch.Tensor | None) -> float | None:
            return None if t is None else float(t)  # float32 -> float64 is exact
        return {"epoch": self.epoch, "history": list(self.history),
                "ewma": plain(self._ewma), "alpha": plain(self._alpha),
                "step": plain(self._step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def tensor(v: float | None) -> torch.Tensor | None:
            return None if v is None else torch.tensor(v, dtype=torch.float32)
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self._ewma, self._alpha, self._step = (tensor(state["ewma"]), tensor(state["alpha"]),
                                               tensor(state["step"]))


@dataclass(frozen=True)
class AbstentionParams:
    """The abstaining variant's model parameters, shared by every classifier family.

    A family's parameter class inherits them (``class NT3Params(AbstentionParams)``), so the
    variant, the controller and its settings mean the same in every family and are checked by
    one rule. Defaults: the paper-era controller values (:class:`AlphaController`) and the DAC
    authors' schedule (:class:`DacSchedule`).
    """

    variant: Literal["base", "abstaining"] = "base"
    alpha: float = AlphaController.alpha
    alpha_scale_factor: float = AlphaController.scale_factor
    min_acc: float = AlphaController.min_acc
    max_abs: float = AlphaController.max_abs
    acc_gain: float = AlphaController.acc_gain
    abs_gain: float = AlphaController.abs_gain
    init_abs_epoch: int = AlphaController.init_abs_epoch
    controller: Literal["genodl", "candle", "dac"] = "genodl"
    warmup_epochs: int = DacSchedule.warmup_epochs
    alpha_final: float = DacSchedule.alpha_final
    alpha_init_factor: float = DacSchedule.alpha_init_factor

    def validate_abstention(self, where: str) -> None:
        """Range checks of the abstention settings; every error names the field."""
        check_range(where, "alpha", self.alpha, 0, lo_open=True)
        check_range(where, "alpha_scale_factor", self.alpha_scale_factor, 0, 1, lo_open=True)
        check_range(where, "min_acc", self.min_acc, 0, 1)
        check_range(where, "max_abs", self.max_abs, 0, 1)
        check_range(where, "acc_gain", self.acc_gain, 0)
        check_range(where, "abs_gain", self.abs_gain, 0)
        check_range(where, "init_abs_epoch", self.init_abs_epoch, 0)
        check_range(where, "warmup_epochs", self.warmup_epochs, 0)
        check_range(where, "alpha_final", self.alpha_final, 0, lo_open=True)
        check_range(where, "alpha_init_factor", self.alpha_init_factor, 0, lo_open=True)

    def n_outputs(self, n_classes: int) -> int:
        """Logit count: ``k`` for the base model, ``k + 1`` for the abstaining one."""
        return n_classes + (1 if self.variant == "abstaining" else 0)

    def alpha_controller(self) -> AlphaController:
        """A fresh CANDLE-rule alpha controller (``"genodl"`` and ``"candle"``)."""
        return AlphaController(alpha=self.alpha, scale_factor=self.alpha_scale_factor,
                               min_acc=self.min_acc, max_abs=self.max_abs,
                               acc_gain=self.acc_gain, abs_gain=self.abs_gain,
                               init_abs_epoch=self.init_abs_epoch)

    def dac_schedule(self) -> DacSchedule:
        """The DAC authors' schedule settings (``"dac"``)."""
        return DacSchedule(warmup_epochs=self.warmup_epochs, alpha_final=self.alpha_final,
                           alpha_init_factor=self.alpha_init_factor)



#: The controllers an abstaining model may name.
CONTROLLERS = ("genodl", "candle", "dac")


def abstention_objective(controller: str, n_classes: int, *, alpha_controller: AlphaController,
                         dac: DacSchedule, epochs: int, batch_size: int,
                         n_val: int) -> CrossEntropyObjective:
    """The training objective of an abstaining classifier under the named controller.

    Raises
    ------
    SpecError
        ``controller`` is not one of :data:`CONTROLLERS`.
    """
    if controller == "genodl":
        return AbstentionObjective(n_classes, alpha_controller)
    if controller == "candle":
        return CandleAbstentionObjective(n_classes, alpha_controller, batch_size=batch_size,
                                         n_val=n_val)
    if controller == "dac":
        return DacScheduleObjective(n_classes, dac, epochs=epochs)
    raise SpecError("model.controller", controller, list(CONTROLLERS), reason="unknown choice")


__all__ = ["EPS", "CONTROLLERS", "dac_loss", "candle_abstention_loss", "keras_batch_means",
           "AlphaController", "DacSchedule", "AbstentionParams", "AbstentionObjective", "CandleAbstentionObjective",
           "DacScheduleObjective", "abstention_objective"]
