"""What a model family tells the engine, and what the engine hands a family.

A model family is one module plus its registry entry
(``MODELS.register(name, params=MyParams, task="classification")(MyFamily())``). It declares:

- :meth:`Family.pack_key`: which specs may train stacked together (None: never);
- :meth:`Family.switches`: which fast-path switches it can apply;
- :meth:`Family.stack`: how to build the trainable state of K >= 1 trials (modules, data on the
  device, optimizer, per-row objectives and schedules): a :class:`Stack`.

The engine (:mod:`genodl_core.training.engine`) owns the epochs, batches, validation calls,
schedules, per-epoch hooks, timeouts, progress, curves and checkpoints, for every family alike.

A stack has *rows*: units with their own learning rate, schedule, objective hooks and epoch
selection. Usually one row is one trial; D-GEX trains the target blocks of one trial as separate
networks, so one of its trials has several rows, and :meth:`Stack.combine` merges their
metrics into the trial's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from genodl_core.data.types import Dataset
from genodl_core.errors import TrialTimeout
from genodl_core.spec import TrialSpec


@dataclass
class Member:
    """One trial as the engine trains it: spec, its scaled and noised data, its callbacks."""

    spec: TrialSpec
    dataset: Dataset
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("genodl.trial"))
    #: Called after every epoch with the epoch (0-based) and the trial's metrics.
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None
    #: time.monotonic() value after which training must stop (None = no limit).
    deadline: float | None = None

    def check_deadline(self) -> None:
        """Raise :class:`TrialTimeout` once the trial's time budget is spent."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TrialTimeout(f"train.timeout_s={self.spec.train.timeout_s} exceeded; raise it "
                               "or train fewer epochs")


@dataclass
class FitOutcome:
    """What training gives one trial.

    ``curves`` maps a metric name to one value per epoch (all the same length); ``final`` maps
    metric names to floats (the state the model ends in, or the selected epoch's); ``arrays``
    holds large outputs (per-gene errors, probabilities); ``extra`` small JSON-ready facts.
    """

    curves: dict[str, list[float]]
    final: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Objective(Protocol):
    """What a step and an epoch compute for one row (see :mod:`genodl_core.training.objectives`)."""

    #: Index of an abstention output, or None.
    abstain_class: int | None
    #: Row metric whose minimum selects the epoch whose weights are kept (None: the last).
    selection: str | None
    #: A non-finite training loss fails the trial (True) or is only logged (False).
    fail_on_divergence: bool

    def per_sample_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def batch_sums(self, losses: torch.Tensor, loss: torch.Tensor, outputs: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor: ...

    def train_metrics(self, sums: torch.Tensor, n: int) -> dict[str, float]: ...

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> dict[str, float]: ...

    def extra(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Schedule(Protocol):
    """A row's learning-rate rule: the rate of the next epoch from this epoch's metrics."""

    lr: float

    def step(self, metrics: dict[str, float]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LastEpochRows:
    """What a stack whose rows are its trials and that keeps the last epoch's weights (no
    epoch selection) answers the engine: a trial's metrics are its one row's, and there is
    nothing to snapshot or restore. Classifier, multi-label and histone stacks inherit it.
    """

    def combine(self, trial: int, rows: list[dict[str, Any]]) -> dict[str, float]:
        return dict(rows[0])

    def snapshot(self, row: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} keeps the last epoch (no selection)")

    def restore(self, row: int, state: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps the last epoch (no selection)")


class Stack(Protocol):
    """The trainable state of K >= 1 trials, built by a family for the engine."""

    #: Per row: its objective and its learning-rate schedule.
    objectives: Sequence[Objective]
    schedules: Sequence[Schedule]
    #: Rows of each trial, in member order.
    trial_rows: Sequence[Sequence[int]]
    #: Groups of rows whose steps run together, in the order they run within an epoch.
    step_groups: Sequence[Sequence[int]]
    #: Training samples per row and the batch size.
    n_train: int
    batch_size: int
    #: One CPU generator per row, for the order of its batches.
    shuffles: Sequence[torch.Generator]

    def scope(self) -> Any:
        """Context manager around the whole training (precision switches, RNG streams)."""

    def set_lrs(self, lrs: Sequence[float]) -> None: ...

    def step(self, group: Sequence[int], idx: torch.Tensor) -> torch.Tensor:
        """One optimisation step of the group's rows on ``idx [rows, B]``; their metric sums."""

    def validate(self) -> list[dict[str, Any]]:
        """Per row: validation metrics (floats) and any detail :meth:`combine` needs."""

    def combine(self, trial: int, rows: list[dict[str, Any]]) -> dict[str, float]:
        """The trial's epoch metrics from its rows' metrics (``learning_rate`` included)."""

    def snapshot(self, row: int) -> Any: ...

    def restore(self, row: int, state: Any) -> None: ...

    def outcome(self, trial: int, curves: dict[str, list[float]],
                selected: list[int | None]) -> FitOutcome:
        """The trial's outcome once training ends (``selected``: epoch kept, per row)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Training is over (done or failed): release what the stack holds beyond itself."""


class Family:
    """Base of the model families; subclasses override what differs."""

    #: Switches the family can apply alone and in packs (see genodl_core.training.plan).
    single_switches: frozenset[str] = frozenset()
    pack_switches: frozenset[str] = frozenset()

    def pack_key(self, spec: TrialSpec) -> str | None:
        """Equal for specs that may train stacked together; None: this spec trains alone."""
        return None

    def switches(self, pack_size: int, device: str = "cuda") -> frozenset[str]:
        """The switches this family can apply to a pack of ``pack_size`` on ``device``."""
        return self.pack_switches if pack_size > 1 else self.single_switches

    def check(self, member: Member) -> None:
        """Checks of one member's data before anything is built (raise to fail it alone)."""

    def stack(self, members: Sequence[Member], plan: Any) -> Stack:
        raise NotImplementedError


@contextlib.contextmanager
def training_scope(scopes: Sequence[contextlib.AbstractContextManager],
                   build: Callable[[], None]) -> Iterator[None]:
    """Enter ``scopes`` (precision switches, RNG streams), build the stack's modules inside them
    (compilation and kernel choices see the switches), and leave them all afterwards."""
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(scope)
        build()
        yield


def seeded_training_scope(plan: Any, dropout_seed: int,
                          build: Callable[[], None]) -> contextlib.AbstractContextManager:
    """:func:`training_scope` with the scopes most stacks need: the plan's matmul precision and
    cuDNN choice, and the global generators (which dropout draws from) seeded from
    ``dropout_seed`` and restored afterwards."""
    from genodl_core.training.precision import (cudnn_benchmark, matmul_precision,
                                                seeded_global_rng)

    return training_scope([matmul_precision(plan.device, plan.precision),
                           cudnn_benchmark(plan.switches.cudnn_benchmark),
                           seeded_global_rng(dropout_seed, plan.device)], build)


def row_gradients(forward: Callable[[torch.Tensor], torch.Tensor],
                  amp: contextlib.AbstractContextManager, objective: Objective,
                  xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of a single row on a batch (the caller zeroed the gradients): the
    logits and the row's metric sums ``[1, ...]``. No host synchronisation, so a CUDA graph
    can capture it."""
    with amp:
        logits = forward(xb)
    losses = objective.per_sample_loss(logits, yb)
    loss = losses.mean()
    loss.backward()
    return logits, objective.batch_sums(losses, loss, logits, yb).unsqueeze(0)


def one_row_step(forward: Callable[[torch.Tensor], torch.Tensor],
                 amp: contextlib.AbstractContextManager, objective: Objective,
                 optimizer: Any, xb: torch.Tensor, yb: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step of a single row on a batch (the caller zeroed the gradients):
    the logits and the row's metric sums ``[1, ...]``, as :meth:`Stack.step` returns them."""
    out = row_gradients(forward, amp, objective, xb, yb)
    optimizer.step()
    return out


def stacking_key(spec: TrialSpec) -> str:
    """The resolved spec without seed and noise: trials equal in it may share a computation."""
    import json

    plain = spec.to_dict()
    plain.pop("seed")
    plain.pop("noise")
    return json.dumps(plain, sort_keys=True)


__all__ = ["Member", "FitOutcome", "Objective", "Schedule", "Stack", "Family", "stacking_key",
           "training_scope", "seeded_training_scope", "one_row_step",
           "row_gradients"]
