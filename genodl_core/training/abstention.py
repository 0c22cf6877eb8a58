"""The deep abstaining classifier (DAC): its loss, its alpha controller and its training objective.

A DAC has ``k`` real classes plus one abstention output (index ``k``); labels stay in the real
classes. With ``p = softmax(logits)`` and ``p_abs = clip(p[k], eps, 1 - eps)`` the per-sample loss
is::

    L = (1 - p_abs) * (-log(p_y / (1 - p_abs))) - alpha * log(1 - p_abs)

The first term is the cross-entropy over the real classes renormalised without the abstention
mass, weighted by how much the model did not abstain; the second charges ``alpha`` for
abstaining. Abstaining is therefore cheap on samples whose label the model cannot predict (noisy
labels), and the :class:`AlphaController` tunes ``alpha`` from validation abstention accuracy and
abstention fraction, as CANDLE's adaptive callback does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from genodl_core.errors import SpecError
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

        Non-finite metrics (a diverged model) leave alpha unchanged rather than poisoning it.
        """
        self.history.append(self.alpha)
        if epoch <= self.init_abs_epoch:
            return self.alpha
        if not (math.isfinite(val_abstention_accuracy) and math.isfinite(val_abstention)):
            log.warning("epoch %d: non-finite validation metrics; alpha kept at %g", epoch,
                        self.alpha)
            return self.alpha
        step = self.scale(val_abstention_accuracy, val_abstention)
        self.alpha *= step
        log.debug("epoch %d: alpha scaled by %.4f to %.6g", epoch, step, self.alpha)
        return self.alpha


class AbstentionObjective(CrossEntropyObjective):
    """Training objective of an abstaining classifier: DAC loss at the controller's alpha.

    After each epoch the controller adapts alpha from the row's validation metrics
    (``val_abstention_accuracy``, ``val_abstention``); the curve ``alpha`` holds the value each
    epoch's losses were computed with.
    """

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

    def extra(self) -> dict[str, float | list[float]]:
        return {"alpha_next": self.controller.alpha}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.controller.alpha, "history": list(self.controller.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.alpha = state["alpha"]
        self.controller.history = list(state["history"])


__all__ = ["EPS", "dac_loss", "AlphaController", "AbstentionObjective"]
