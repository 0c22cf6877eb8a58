"""Learning-rate schedules, one per row of a stack, stepped by the engine after each epoch.

Each holds the rate of the coming epoch as a plain float; the engine hands the rates to the
stack's optimizer at the start of every epoch, so the same rule serves a single trial and every
row of a pack.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genodl_core.spec import TrainSpec

log = logging.getLogger(__name__)


class ConstantSchedule:
    """The same rate every epoch."""

    def __init__(self, lr: float):
        self.lr = lr

    def step(self, metrics: dict[str, float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = state["lr"]


class PlateauSchedule(ConstantSchedule):
    """Reduce the rate when ``val_loss`` stops improving, with Keras' semantics.

    An epoch improves when ``val_loss < best - min_delta``; after ``patience`` epochs in a row
    without improvement the rate is multiplied by ``factor`` (not below ``min_lr``) and the count
    restarts. Keras (which CANDLE used) reduces after ``patience`` bad epochs where torch's
    ``ReduceLROnPlateau`` waits ``patience + 1``, hence this small class.
    """

    def __init__(self, lr: float, factor: float, patience: int, min_delta: float,
                 min_lr: float, metric: str = "val_loss"):
        super().__init__(lr)
        self.factor, self.patience, self.min_delta, self.min_lr = factor, patience, min_delta, min_lr
        self.metric = metric
        self.best = math.inf
        self.wait = 0

    def step(self, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        if value < self.best - self.min_delta:  # NaN compares False: counts as no improvement
            self.best = value
            self.wait = 0
            return
        self.wait += 1
        if self.wait < self.patience or self.lr <= self.min_lr:
            return
        self.lr = max(self.lr * self.factor, self.min_lr)
        self.wait = 0
        log.info("%s has not improved for %d epochs: learning rate -> %g", self.metric,
                 self.patience, self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.best, self.wait = state["lr"], state["best"], state["wait"]


class RiseDecaySchedule(ConstantSchedule):
    """D-GEX's rule: multiply the rate by ``decay`` whenever the monitored error rose.

    The error is that of a fixed training subset (row metric ``metric``); the floor
    ``min_lr`` never raises a rate that started below it.
    """

    def __init__(self, lr: float, decay: float, min_lr: float, metric: str = "mae"):
        super().__init__(lr)
        self.decay, self.min_lr, self.metric = decay, min_lr, metric
        self.previous = math.inf

    def step(self, metrics: dict[str, float]) -> None:
        error = metrics[self.metric]
        if error > self.previous:
            self.lr = max(self.lr * self.decay, min(self.min_lr, self.lr))
            log.debug("monitored %s rose to %.5f; learning rate now %.3g", self.metric, error,
                      self.lr)
        self.previous = error

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.previous = state["lr"], state["previous"]


def schedule_of(train: "TrainSpec") -> ConstantSchedule:
    """The schedule ``[train]`` asks for: plateau reduction or a constant rate."""
    if train.reduce_lr_on_plateau:
        return PlateauSchedule(train.learning_rate, train.plateau_factor, train.plateau_patience,
                               train.plateau_min_delta, train.min_learning_rate)
    return ConstantSchedule(train.learning_rate)


__all__ = ["ConstantSchedule", "PlateauSchedule", "RiseDecaySchedule", "schedule_of"]
