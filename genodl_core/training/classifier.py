"""The stack of K >= 1 classifier trials that any classification family can build.

A classification family supplies its trials' initialised networks and how to run them (alone,
possibly in a faster layout or compiled; or stacked into one module mapping ``[K, B, F]`` to
``[K, B, outputs]``); :class:`ClassifierStack` does the rest: the data on the device (checked),
the steps, validation, metrics and outcomes. Trials of a pack share the validation split and,
when their training features are the same array (label noise only), one device copy of them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from genodl_core.detection.signals import SignalCollector, wanted
from genodl_core.errors import DataError
from genodl_core.spec import derive_seed
from genodl_core.training.device_data import to_device
from genodl_core.training.family import (FitOutcome, LastEpochRows, Member, Objective, Schedule,
                                         one_row_step, seeded_training_scope)
from genodl_core.training.metrics import (collapsed_class, predicted_classes, rates_from_sums,
                                          row_batch_sums)
from genodl_core.training.null_baselines import (classification_nulls, kept_null_accuracy,
                                                 majority_class)
from genodl_core.training.objectives import CrossEntropyObjective
from genodl_core.training.optim import make_optimizer
from genodl_core.training.plan import ExecutionPlan
from genodl_core.training.precision import autocast

#: How a family runs its trials: ``(nets, plan) -> (module holding the parameters, forward)``.
#: For one net the forward maps ``[B, F]`` to logits, for K nets ``[K, B, F]`` to ``[K, B, C]``.
Runner = Callable[[Sequence[nn.Module], ExecutionPlan], tuple[nn.Module, Callable]]


def check_split(split: str, x: np.ndarray, y: np.ndarray, n_classes: int, source: str) -> None:
    """A split must be a non-empty ``[samples, features]`` array with labels in range.

    Raises
    ------
    DataError
        Naming the source, the split and the first offending row.
    """
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{source}: x_{split} must be a non-empty [samples, features] array, "
                        f"got shape {x.shape}")
    if y.shape != (len(x),):
        raise DataError(f"{source}: y_{split} has shape {y.shape}, expected ({len(x)},)")
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        raise DataError(f"{source}: y_{split} row {bad[0]} has label {y[bad[0]].item()!r}; "
                        f"labels must lie in 0..{n_classes - 1}")


def check_classification(member: Member, n_classes: int) -> None:
    """The checks a classifier trial's data must pass before anything is built."""
    ds = member.dataset
    source = f"data source {member.spec.data.name!r}"
    for split, x, y in (("train", ds.x_train, ds.y_train), ("val", ds.x_val, ds.y_val)):
        check_split(split, x, y, n_classes, source)
    if ds.x_val.shape[1] != ds.x_train.shape[1]:
        raise DataError(f"{source}: x_val has {ds.x_val.shape[1]} features but x_train has "
                        f"{ds.x_train.shape[1]}")


class ClassifierStack(LastEpochRows):
    """Classifier trials trained as one computation; see the module docstring."""

    def __init__(self, members: Sequence[Member], plan: ExecutionPlan, *, n_classes: int,
                 nets: Sequence[nn.Module], run: Runner, objectives: Sequence[Objective],
                 schedules: Sequence[Schedule], extra: Callable[[int], dict[str, Any]]):
        self.members = list(members)
        self.plan = plan
        self.k = k = len(members)
        self.single = k == 1
        first = members[0]
        train = first.spec.train
        device, precision = plan.device, plan.precision
        sizes = {len(m.dataset.x_train) for m in members}
        if len(sizes) != 1:
            raise DataError(f"trials of one pack have training splits of sizes {sorted(sizes)}")
        feature_dtype = (torch.bfloat16 if plan.switches.bf16_inputs and precision == "bf16"
                         else torch.float32)
        xs = [m.dataset.x_train for m in members]
        if self.single:
            self.x_train = to_device(xs[0], device, feature_dtype)
            self.y_train = to_device(first.dataset.y_train, device, torch.int64)
        else:
            # Label-noise trials share the (cached, never modified) feature array: one copy.
            shared = all(a is xs[0] for a in xs[1:])  # identity: comparing values costs a pass
            self.x_train = (to_device(xs[0], device, feature_dtype) if shared else
                            torch.stack([to_device(a, device, feature_dtype) for a in xs]))
            self.y_train = torch.stack([torch.as_tensor(m.dataset.y_train, dtype=torch.int64)
                                        for m in members]).to(device)
        self.x_val = to_device(first.dataset.x_val, device, feature_dtype)
        self.y_val = to_device(first.dataset.y_val, device, torch.int64)
        self.rows = torch.arange(k, device=device).view(k, 1)
        self.n_train = len(xs[0])
        self.batch_size = train.batch_size
        # A pack's validation batch runs K trials' samples through every layer: K x batch is
        # held at a single trial's validation batch (docs/performance.md).
        eval_bs = plan.switches.eval_batch_size or 0
        self.eval_batch_size = (eval_bs or train.batch_size) if self.single else max(
            train.batch_size, eval_bs // k)
        self.objectives = list(objectives)
        #: A pack of plain cross-entropy trials computes its losses and sums for all rows in one
        #: operation each (the same values per row) rather than in a few kernels per trial.
        self.rows_at_once = k > 1 and all(type(o) is CrossEntropyObjective for o in objectives)
        self.schedules = list(schedules)
        self.trial_rows = [[t] for t in range(k)]
        self.step_groups = [list(range(k))]
        self.shuffles = [torch.Generator().manual_seed(derive_seed(m.spec.seed, "shuffle"))
                         for m in members]
        self._extra = extra
        self._nets = nets
        self._run = run
        self.n_parameters = sum(p.numel() for p in nets[0].parameters())
        self.module: nn.Module | None = None
        self.val_logits = torch.empty(0)
        self._test_rows: list[dict[str, float]] | None = None
        #: ``[K, n_test, outputs]`` once the test split was evaluated (the collapse check).
        self.test_logits: torch.Tensor | None = None
        #: Per-sample detection signals (docs/detection.md), when a member asks for them.
        self.detecting = [wanted(m.spec) for m in members]
        self.signals = (SignalCollector(
            self.y_train, k, n_classes, abstaining=objectives[0].abstain_class is not None,
            epochs=train.epochs, last_epochs=train.detect_last_epochs)
            if any(self.detecting) else None)

    def scope(self) -> contextlib.AbstractContextManager:
        # Dropout draws from the global generators: seeded per trial, restored afterwards.
        return seeded_training_scope(self.plan, derive_seed(self.members[0].spec.seed, "dropout"),
                                     self._build)

    def _build(self) -> None:
        """Module, forward and optimizer (inside the scope: compilation sees its switches)."""
        if self.module is not None:
            return
        nets = [net.to(self.plan.device) for net in self._nets]
        self.module, self.forward = self._run(nets, self.plan)
        self._nets = ()  # a stacked module holds copies: the trials' own nets can go
        self.optimizer = make_optimizer(self.module, self.members[0].spec.train, self.plan,
                                        self.k)
        for m in self.members:
            sw = self.plan.switches
            m.log.info("training %s%d parameters on %d samples (%d val), %d epochs, batch %d, "
                       "%s %s, %s", f"{self.k} trials batched, " if self.k > 1 else "",
                       self.n_parameters, self.n_train, len(self.x_val),
                       m.spec.train.epochs, self.batch_size, self.plan.device,
                       self.plan.precision, sw.label())

    def amp(self) -> contextlib.AbstractContextManager:
        return autocast(self.plan.device, self.plan.precision)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        self.optimizer.set_lrs(lrs)

    def step(self, group: Sequence[int], idx: torch.Tensor) -> torch.Tensor:
        if not self.module.training:
            self.module.train()
        self.optimizer.zero_grad()
        if self.single:
            i = idx[0]
            logits, sums = one_row_step(self.forward, self.amp(), self.objectives[0],
                                        self.optimizer, self.x_train.index_select(0, i),
                                        self.y_train.index_select(0, i))
            if self.signals is not None:
                self.signals.collect(idx, logits.unsqueeze(0))
            return sums
        xb = self.x_train[idx] if self.x_train.dim() == 2 else self.x_train[self.rows, idx]
        yb = self.y_train[self.rows, idx]
        with self.amp():
            logits = self.forward(xb)
        # Each trial's loss is its own batch mean, so the sum's gradient is each trial's.
        means, sums = rows_losses_and_sums(self.objectives, self.rows_at_once, logits, yb)
        means.sum().backward()
        self.optimizer.step()
        if self.signals is not None:
            self.signals.collect(idx, logits)
        return sums

    @torch.no_grad()
    def validate(self) -> list[dict[str, Any]]:
        """Metrics of the (shared) validation split per trial, in eval mode, without grad."""
        if self.signals is not None:  # once per epoch, right after its training steps
            self.signals.end_epoch()
        sums, self.val_logits = self._evaluate(self.x_val, self.y_val)
        return self._rates("val", sums, len(self.y_val))

    @torch.no_grad()
    def logits_of(self, x: np.ndarray) -> torch.Tensor:
        """Every trial's logits ``[K, n, outputs]`` on ``x`` (eval mode): the fold models of
        confident learning predict the samples they held out (docs/detection.md)."""
        xt = to_device(x, self.plan.device, self.x_val.dtype)
        return self._evaluate(xt, torch.zeros(len(x), dtype=torch.int64, device=xt.device))[1]

    def _rates(self, prefix: str, sums: torch.Tensor, n: int) -> list[dict[str, float]]:
        return [{f"{prefix}_{key}": v for key, v in
                 rates_from_sums(sums[t], n, obj.abstain_class is not None).items()}
                for t, obj in enumerate(self.objectives)]

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Metric sums ``[K, 3]`` and logits ``[K, n, outputs]`` of every trial on one split
        shared by the trials (eval mode, no gradients, in batches).

        With ``batch``, every batch has exactly that many rows (a short last one is padded
        with zeros, whose outputs are dropped): a forward compiled for fixed shapes then runs
        a new split without compiling again. Rows are independent in eval mode.
        """
        self.module.eval()
        k = self.k
        size = batch or self.eval_batch_size
        sums = torch.zeros(k, 3, dtype=torch.float64, device=x.device)
        outputs = []
        for start in range(0, len(x), size):
            xb, yb = x[start:start + size], y[start:start + size]
            n = len(xb)
            if batch is not None and n < batch:
                xb = torch.cat([xb, xb.new_zeros(batch - n, xb.shape[1])])
            if not self.single:
                xb = xb.unsqueeze(0).expand(k, -1, -1)
            with self.amp():
                logits = self.forward(xb).float()
            if self.single:
                logits = logits.unsqueeze(0)
            logits = logits[:, :n]
            sums += rows_losses_and_sums(self.objectives, self.rows_at_once, logits,
                                         yb.expand(k, -1), evaluating=True)[1]
            outputs.append(logits)
        return sums, torch.cat(outputs, dim=1)

    def _test_metrics(self) -> list[dict[str, float]]:
        """Every trial's metrics on the untouched test split, evaluated once, after training,
        with the kept model (none when the validation split is the test file, as CANDLE).

        Nothing tunes on these: the controller, schedules and selection see only the
        validation split. An abstaining model's ``test_loss`` is its loss at the final alpha.
        """
        if self._test_rows is None:
            ds = self.members[0].dataset
            if ds.x_test is None or ds.y_test is None or not len(ds.x_test):
                self._test_rows = [{} for _ in range(self.k)]
            else:
                device = self.plan.device
                x = to_device(ds.x_test, device, self.x_val.dtype)
                y = to_device(ds.y_test, device, torch.int64)
                # Batches of the validation split's first batch: shapes the forward has seen.
                sums, self.test_logits = self._evaluate(
                    x, y, min(self.eval_batch_size, len(self.x_val)))
                self._test_rows = self._rates("test", sums, len(y))
        return self._test_rows

    def outcome(self, trial: int, curves: dict[str, list[float]],
                selected: list[int | None]) -> FitOutcome:
        final = {key: values[-1] for key, values in curves.items()}
        final.update(epochs_run=float(len(curves.get("loss", []))),
                     n_parameters=float(self.n_parameters))
        final.update(self._test_metrics()[trial])
        ds = self.members[trial].dataset
        final.update(classification_nulls(ds.y_train, int(ds.n_classes), ds.y_val, ds.y_test))
        final.update(self._kept_nulls(trial))
        probabilities = _probabilities(self.objectives[trial], self.val_logits[trial])
        extra = {**self.objectives[trial].extra(), "n_parameters": int(self.n_parameters)}
        final["predicted_classes"], extra["collapsed"] = self._collapse_check(trial, extra)
        if self.k > 1:
            extra["batched_trials"] = self.k
        extra.update(self._extra(trial))
        arrays = {"val_probabilities": probabilities.astype(np.float32)}
        if self.signals is not None and self.detecting[trial]:
            arrays.update(self.signals.arrays(trial))
        return FitOutcome(curves=curves, final=final, arrays=arrays, extra=extra)

    def _kept_nulls(self, trial: int) -> dict[str, float]:
        """An abstaining trial's majority-class null on the samples it kept, per split: the fair
        reference for its accuracy on the kept samples (``null_kept_accuracy``,
        ``test_null_kept_accuracy``; see :mod:`genodl_core.training.null_baselines`)."""
        abstain = self.objectives[trial].abstain_class
        if abstain is None:
            return {}
        ds = self.members[trial].dataset
        majority = majority_class(ds.y_train, int(ds.n_classes))
        splits = [("null_kept_accuracy", self.val_logits[trial], ds.y_val)]
        if self.test_logits is not None and self.test_logits.numel():
            splits.append(("test_null_kept_accuracy", self.test_logits[trial], ds.y_test))
        return {name: kept_null_accuracy(logits.argmax(dim=-1).cpu().numpy(), y, majority,
                                         abstain) for name, logits, y in splits}

    def _collapse_check(self, trial: int, extra: dict[str, Any]) -> tuple[float, bool]:
        """Distinct real classes predicted on the validation split, and whether the trial
        predicts one and the same class for every validation (and test) sample.

        A collapsed classifier still scores the majority-class accuracy, which can pass for
        learning in a summary; it is flagged in ``extra`` (``collapsed``, ``collapsed_class``,
        ``collapsed_splits``) and warned about in the trial's log. Call after the test split
        was evaluated (:meth:`_test_metrics`).
        """
        abstain = self.objectives[trial].abstain_class
        logits = {"val": self.val_logits[trial]}
        if self.test_logits is not None and self.test_logits.numel():
            logits["test"] = self.test_logits[trial]
        n_predicted = float(len(predicted_classes(logits["val"], abstain)))
        classes = {split: collapsed_class(out, abstain) for split, out in logits.items()}
        if any(c is None for c in classes.values()) or len(set(classes.values())) != 1:
            return n_predicted, False
        cls = classes["val"]
        extra.update(collapsed_class=cls, collapsed_splits=sorted(classes))
        self.members[trial].log.warning(
            "collapsed: the model predicts class %d for every sample of the %s split(s); its "
            "accuracy is that of a constant guess", cls, " and ".join(sorted(classes)))
        return n_predicted, True

    def close(self) -> None:
        """Training is over: let go of the module's process-wide resources."""
        _release(self.module)

    def state_dict(self) -> dict[str, Any]:
        write_masters = getattr(self.module, "write_masters", None)
        if callable(write_masters):
            write_masters()
        state = {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": _global_rng_state(self.plan.device)}
        if self.signals is not None:
            state["signals"] = self.signals.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_global_rng_state(self.plan.device, state["rng"])
        if self.signals is not None and "signals" in state:
            self.signals.load_state_dict(state["signals"])


def rows_losses_and_sums(objectives: Sequence[Objective], at_once: bool, logits: torch.Tensor,
                         y: torch.Tensor, *, evaluating: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every trial's mean loss ``[K]`` and metric sums ``[K, 3]`` from ``[K, B, outputs]``
    logits and ``[K, B]`` labels; ``at_once`` (plain cross-entropy trials) computes them for
    all trials in one operation each instead of a few small kernels per trial. An objective's
    ``batch_sums`` gets no step loss in an evaluation pass (``evaluating``): that is how it
    tells validation batches from training steps."""
    if at_once:
        losses = objectives[0].per_sample_loss(logits.flatten(0, 1), y.flatten()).view(y.shape)
        return losses.mean(dim=1), row_batch_sums(losses, logits.detach(), y)
    losses = [obj.per_sample_loss(logits[t], y[t]) for t, obj in enumerate(objectives)]
    means = [loss.mean() for loss in losses]
    return torch.stack(means), torch.stack([
        obj.batch_sums(losses[t], None if evaluating else means[t], logits[t], y[t])
        for t, obj in enumerate(objectives)])


def _probabilities(objective: Objective, logits: torch.Tensor) -> np.ndarray:
    """The model's output probabilities as the objective defines them (softmax by default)."""
    as_probabilities = getattr(objective, "probabilities", None)
    probs = (as_probabilities(logits) if callable(as_probabilities)
             else torch.softmax(logits, dim=1))
    return probs.cpu().numpy()


def _release(module: nn.Module | None) -> None:
    release = getattr(module, "release", None)
    if callable(release):
        release()


def _global_rng_state(device: str) -> dict[str, Any]:
    state = {"cpu": torch.random.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_global_rng_state(device: str, state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


__all__ = ["ClassifierStack", "Runner", "check_split", "check_classification"]
