"""The one training loop: K >= 1 stacked trials of any model family.

:func:`train` runs the epochs of a :class:`~genodl_core.training.family.Stack` that a family
built: batches in each row's own seeded order, the steps, validation, each row's objective hook
(e.g. the alpha controller), epoch selection and learning-rate schedule, the trials' curves and
progress callbacks, time budgets and checkpoints. How a step runs (modules, fast-path switches,
optimizer) is the stack's business, decided by the execution plan before training starts.

Reproducibility: batch orders come from one CPU ``torch.Generator`` per row (seeded by the
family with ``derive_seed(seed, "shuffle")``), so CPU and GPU runs see the same batches; on CPU
the same spec gives bit-identical curves, alone, and, resumed from a checkpoint, equal to an
uninterrupted run.

A stack may read its batches ahead of the steps (host-streamed DNA batches): if it has a
``read_ahead(group, order, batch)`` method, that gets each group's CPU order before the epoch's
first step, and the steps still get their indices as before.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from genodl_core.errors import TrialInterrupted, TrialTimeout
from genodl_core.stop import stop_requested
from genodl_core.training.checkpoint import Checkpoint
from genodl_core.training.family import FitOutcome, Member, Stack


def train(stack: Stack, members: Sequence[Member], *, device: str,
          checkpoint: Checkpoint | None = None) -> list[FitOutcome | BaseException]:
    """Train the stack's trials for ``spec.train.epochs`` epochs; one outcome per member.

    A member whose objective fails it (a diverged D-GEX trial) gets its exception as outcome;
    the others finish. Exceptions that stop the whole stack (a timeout, out of memory, an
    interrupt) propagate.

    Raises
    ------
    TrialTimeout
        The earliest time budget of the members ran out (checked before every step).
    TrialInterrupted
        A stop was requested (``genodl_core.stop``); checked at every epoch end, after the
        checkpoint that the request makes due.
    """
    epochs = members[0].spec.train.epochs
    deadline = min((m.deadline for m in members if m.deadline is not None), default=None)
    rows = len(stack.objectives)
    k = len(members)
    curves: list[dict[str, list[float]]] = [{} for _ in members]
    best = [math.inf] * rows
    selected: list[int | None] = [None] * rows
    snapshots: list[Any] = [None] * rows
    failed: dict[int, BaseException] = {}
    t_start = time.perf_counter()
    with stack.scope():
        for m in members:
            m.log.info("ready to train after %.2f s", time.perf_counter() - t_start)
        first = 0
        state = checkpoint.load() if checkpoint is not None else None
        if state is not None:
            first = state["epoch"]
            curves, best, selected, snapshots = (state["curves"], state["best"],
                                                 state["selected"], state["snapshots"])
            for obj, sched, s_obj, s_sched in zip(stack.objectives, stack.schedules,
                                                  state["objectives"], state["schedules"]):
                obj.load_state_dict(s_obj)
                sched.load_state_dict(s_sched)
            for gen, gen_state in zip(stack.shuffles, state["shuffles"]):
                gen.set_state(gen_state)
            stack.load_state_dict(state["stack"])
            for m in members:
                m.log.info("resumed from the checkpoint of epoch %d", first)
        for epoch in range(first, epochs):
            t_epoch = time.perf_counter()
            lrs = [s.lr for s in stack.schedules]
            stack.set_lrs(lrs)
            sums = _train_epoch(stack, device, deadline, members[0].spec.train.timeout_s)
            row_metrics = [obj.train_metrics(sums[r], stack.n_train)
                           for r, obj in enumerate(stack.objectives)]
            for t, trial_rows in enumerate(stack.trial_rows):
                for r in trial_rows:
                    if (stack.objectives[r].fail_on_divergence and t not in failed
                            and not math.isfinite(row_metrics[r]["loss"])):
                        failed[t] = FloatingPointError(
                            f"training loss became {row_metrics[r]['loss']} at epoch "
                            f"{epoch + 1}; lower train.learning_rate (now "
                            f"{members[t].spec.train.learning_rate})")
            if len(failed) == k:
                break
            for r, val in enumerate(stack.validate()):
                metrics = row_metrics[r]
                metrics.update(val)
                obj = stack.objectives[r]
                metrics.update(obj.end_epoch(epoch, metrics))
                metrics["learning_rate"] = lrs[r]
                if obj.selection is not None and metrics[obj.selection] < best[r]:
                    best[r] = metrics[obj.selection]
                    selected[r] = epoch
                    snapshots[r] = stack.snapshot(r)
                stack.schedules[r].step(metrics)
            seconds = time.perf_counter() - t_epoch
            for t, member in enumerate(members):
                if t in failed:
                    continue
                metrics = stack.combine(t, [row_metrics[r] for r in stack.trial_rows[t]])
                metrics["epoch_seconds"] = seconds
                for key, value in metrics.items():
                    if isinstance(value, (int, float)):
                        curves[t].setdefault(key, []).append(float(value))
                if not math.isfinite(metrics.get("loss", 0.0)):
                    member.log.warning("epoch %d: training loss is %s", epoch, metrics["loss"])
                member.on_epoch(epoch, {key: v for key, v in metrics.items()
                                        if isinstance(v, (int, float))})
            if checkpoint is not None and epoch + 1 < epochs and checkpoint.due():
                checkpoint.save({
                    "epoch": epoch + 1, "curves": curves, "best": best, "selected": selected,
                    "snapshots": snapshots,
                    "objectives": [o.state_dict() for o in stack.objectives],
                    "schedules": [s.state_dict() for s in stack.schedules],
                    "shuffles": [g.get_state() for g in stack.shuffles],
                    "stack": stack.state_dict()})
            if epoch + 1 < epochs and stop_requested():
                raise TrialInterrupted(f"stopped after epoch {epoch + 1} of {epochs} because "
                                       f"the run was asked to stop; it resumes from there")
        for r, snapshot in enumerate(snapshots):
            # Without a finite selection metric there is no best epoch: the last state stays.
            if snapshot is not None:
                stack.restore(r, snapshot)
        train_seconds = time.perf_counter() - t_start
        outcomes: list[FitOutcome | BaseException] = []
        for t in range(k):
            if t in failed:
                outcomes.append(failed[t])
                continue
            t_outcome = time.perf_counter()
            outcome = stack.outcome(t, curves[t], [selected[r] for r in stack.trial_rows[t]])
            outcome.final.setdefault("train_seconds", train_seconds)
            members[t].log.info("final evaluation in %.2f s", time.perf_counter() - t_outcome)
            outcomes.append(outcome)
    return outcomes


def _train_epoch(stack: Stack, device: str, deadline: float | None,
                 timeout_s: float | None) -> list[torch.Tensor]:
    """One pass of every row over its training data; per row, the summed step metrics."""
    orders = [torch.randperm(stack.n_train, generator=g) for g in stack.shuffles]
    sums: list[Any] = [None] * len(orders)
    batch = stack.batch_size
    for group in stack.step_groups:
        order = (orders[group[0]].unsqueeze(0) if len(group) == 1
                 else torch.stack([orders[r] for r in group]))
        if hasattr(stack, "read_ahead"):  # a stack reading its batches on a background thread
            stack.read_ahead(group, order, batch)
        order = order.to(device)
        total: torch.Tensor | None = None
        for start in range(0, stack.n_train, batch):
            if deadline is not None and time.monotonic() > deadline:
                raise TrialTimeout(f"train.timeout_s={timeout_s} exceeded; raise it or train "
                                   "fewer epochs")
            step = stack.step(group, order[:, start:start + batch])
            if total is None:
                total = torch.zeros_like(step)
            total += step
        assert total is not None  # n_train >= 1: checked when the data were moved
        for i, r in enumerate(group):
            sums[r] = total[i]
    return sums


__all__ = ["train"]
