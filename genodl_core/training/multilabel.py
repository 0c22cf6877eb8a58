"""Multi-label training: T independent sigmoid targets (DeepSEA-like chromatin features).

Beside the softmax classifier (:mod:`genodl_core.training.classifier`) because everything
that makes it a classifier differs: the labels are a ``[n, T]`` 0/1 matrix, the loss is binary
cross-entropy on logits, and the metrics are per-target areas (ROC AUC, PR AUC; see
:mod:`genodl_core.training.multilabel_metrics`) computed on the device from all the split's
scores at once, not accuracies accumulated per batch.

Data: sequences arrive as uint8 codes ``[n, L]`` (:mod:`genodl_core.data.dna_codes`) and labels
as uint8. The training split is kept **resident** on the device when it fits in
:data:`RESIDENT_SHARE` of the free device memory; otherwise it stays in host memory (a
memory-mapped file included) and each step copies only its batch's rows, read in sorted order
(``extra["data_resident"]`` says which; the models' ``resident`` parameter can force either).
Streamed batches are read ``prefetch`` batches ahead on a background thread
(:mod:`genodl_core.training.batch_reader`; ``extra["data_prefetch"]``), so the host-side gather
and the copy overlap the step; the numbers stay those of reading in the step.
On the CPU resident arrays are used where they are.

A linear learning-rate warm-up over the first ``warmup_steps`` optimisation steps (seed 003:
500) multiplies the epoch's rate; its step count is saved in checkpoints.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.detection.signals import (MAX_MULTILABEL_ELEMENTS, MultiLabelSignals,
                                          wanted)
from genodl_core.errors import DataError
from genodl_core.spec import derive_seed
from genodl_core.training.batch_reader import BatchReader
from genodl_core.training.device_data import to_device
from genodl_core.training.family import (FitOutcome, LastEpochRows, Member, Schedule,
                                         row_gradients, seeded_training_scope)
from genodl_core.training.multilabel_metrics import per_target_auc, summarise
from genodl_core.training.objectives import StatelessObjective
from genodl_core.training.optim import make_optimizer
from genodl_core.training.plan import ExecutionPlan
from genodl_core.training.precision import amp_without_cache, autocast
from genodl_core.training.step_graph import StepGraph, eager_step

#: Share of the free device memory the training split may take to stay resident there.
RESIDENT_SHARE = 0.5
#: Rows per evaluation batch (evaluation keeps no activations for backward).
EVAL_BATCH = 512


class BinaryCrossEntropyObjective(StatelessObjective):
    """Mean over targets of the binary cross-entropy on logits, per sample; the epoch's
    ``loss`` is the sample mean. Metrics beyond the loss come from validation."""

    abstain_class: int | None = None
    selection: str | None = None
    fail_on_divergence = True

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), y.float(),
                                                  reduction="none").mean(dim=1)

    def batch_sums(self, losses: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
        return losses.detach().double().sum().reshape(1)

    def train_metrics(self, sums: torch.Tensor, n: int) -> dict[str, float]:
        return {"loss": float(sums[0]) / max(n, 1)}


def check_multilabel(member: Member) -> None:
    """Codes ``[n, L]`` and 0/1 labels ``[n, T]`` with equal L and T in every split.

    Raises
    ------
    DataError
        Naming the split and what differs.
    """
    ds = member.dataset
    source = f"data source {member.spec.data.name!r}"
    if ds.task != "multilabel":
        raise DataError(f"{source}: the DNA models need multilabel data, got task={ds.task!r}")
    splits = [("train", ds.x_train, ds.y_train), ("val", ds.x_val, ds.y_val)]
    if ds.x_test is not None and len(ds.x_test):
        splits.append(("test", ds.x_test, ds.y_test))
    length, targets = ds.x_train.shape[1], np.shape(ds.y_train)[-1]
    for split, x, y in splits:
        if x.ndim != 2 or len(x) == 0:
            raise DataError(f"{source}: x_{split} must be non-empty integer codes [n, L], got "
                            f"shape {x.shape}")
        if x.shape[1] != length:
            raise DataError(f"{source}: x_{split} sequences are {x.shape[1]} long, x_train's "
                            f"{length}")
        if y is None or y.ndim != 2 or len(y) != len(x):
            raise DataError(f"{source}: y_{split} must be [n={len(x)}, T], got shape "
                            f"{None if y is None else y.shape}")
        if y.shape[1] != targets:
            raise DataError(f"{source}: y_{split} has {y.shape[1]} targets, y_train {targets}")


def prevalence_bias(y: np.ndarray, floor: float = 1e-4) -> torch.Tensor:
    """Output biases ``log(p / (1 - p))`` of the training prevalence ``p`` per target (seed
    003): the untrained model then predicts the base rates, and early losses stay small."""
    p = np.clip(np.asarray(y, dtype=np.float64).mean(axis=0), floor, 1 - floor)
    return torch.as_tensor(np.log(p / (1 - p)), dtype=torch.float32)


class MultiLabelStack(LastEpochRows):
    """One multi-label trial for the engine (these families train alone: ``pack_key`` None)."""

    def __init__(self, member: Member, plan: ExecutionPlan, *, net: nn.Module,
                 schedule: Schedule, warmup_steps: int = 0, resident: str = "auto",
                 prefetch: int = 2,
                 extra: Callable[[], dict[str, Any]] = dict, groups: Sequence[str] | None = None):
        self.members = [member]
        self.plan = plan
        ds = member.dataset
        train = member.spec.train
        device = plan.device
        self.resident = (resident == "yes" or resident == "auto"
                         and _fits(ds.x_train.nbytes + ds.y_train.nbytes, device))
        if self.resident:
            self.x_train = to_device(ds.x_train, device, torch.uint8)
            self.y_train = to_device(ds.y_train, device, torch.uint8)
        else:
            self.x_host, self.y_host = ds.x_train, ds.y_train
        # Resident batches are one index_select on the device: nothing to read ahead.
        self.prefetch = 0 if self.resident else prefetch
        self.reader = (BatchReader(ds.x_train, ds.y_train, device, prefetch)
                       if self.prefetch else None)
        self.x_val = to_device(ds.x_val, device, torch.uint8)
        self.y_val = to_device(ds.y_val, device, torch.uint8)
        self.n_train = len(ds.x_train)
        self.batch_size = train.batch_size
        self.objectives = [BinaryCrossEntropyObjective()]
        self.schedules = [schedule]
        self.trial_rows = [[0]]
        self.step_groups = [[0]]
        self.shuffles = [torch.Generator().manual_seed(derive_seed(member.spec.seed, "shuffle"))]
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.base_lr = train.learning_rate
        self.prevalence = np.asarray(ds.y_train, dtype=np.float64).mean(axis=0)
        self.groups = groups
        self._extra = extra
        self.net = net
        self.n_parameters = sum(p.numel() for p in net.parameters())
        self.module: nn.Module | None = None
        self.val_scores: dict[str, np.ndarray] = {}
        self.signals = _signals(member, self.y_train if self.resident else None)

    def scope(self) -> contextlib.AbstractContextManager:
        return seeded_training_scope(self.plan, derive_seed(self.members[0].spec.seed, "dropout"),
                                     self._build)

    def _build(self) -> None:
        if self.module is not None:
            return
        self.module = self.net.to(self.plan.device)
        self.forward = (torch.compile(self.module, dynamic=False) if self.plan.switches.compile
                        else self.module)
        member = self.members[0]
        self.optimizer = make_optimizer(self.module, member.spec.train, self.plan, 1)
        # Full batches replay one captured forward + backward (the host would otherwise queue
        # a step's kernels slower than the GPU runs them; docs/deepsea.md). Streamed batches
        # are copied into the graph's input buffers first.
        self.graph = (StepGraph(self._gradients, self.batch_size, self.plan.device,
                                zero_grad=lambda: self.module.zero_grad(set_to_none=True))
                      if self.plan.switches.step_graphs else None)
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        member.log.info("training %d parameters on %d sequences (%d val), %d epochs, batch %d, "
                        "%s %s, %s, training data %s", self.n_parameters, self.n_train,
                        len(self.x_val), member.spec.train.epochs, self.batch_size,
                        self.plan.device, self.plan.precision, self.plan.switches.label(),
                        "resident on the device" if self.resident else
                        f"streamed, {self.prefetch} batches read ahead" if self.prefetch else
                        "streamed per batch")

    def amp(self) -> contextlib.AbstractContextManager:
        return autocast(self.plan.device, self.plan.precision)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        self.base_lr = lrs[0]
        self.optimizer.set_lrs(lrs)

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident:
            return self.x_train.index_select(0, idx), self.y_train.index_select(0, idx)
        rows = np.sort(idx.cpu().numpy())  # sorted reads: sequential on a memory-mapped file
        device = self.plan.device
        x = torch.from_numpy(np.ascontiguousarray(self.x_host[rows]))
        y = torch.from_numpy(np.ascontiguousarray(self.y_host[rows]))
        if device != "cpu":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(
                device, non_blocking=True)
        return x, y

    def read_ahead(self, group: Sequence[int], order: torch.Tensor, batch: int) -> None:
        """The engine's order of the coming epoch (CPU ``[1, n]``): the reader starts on it."""
        if self.reader is not None:
            self.reader.start(order[0], batch)

    def _next_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reader is None:
            return self._batch(idx)
        x, y = self.reader.next()
        if len(x) != len(idx):
            raise RuntimeError(f"the batch reader gave {len(x)} rows for a step of {len(idx)}: "
                               "its order is not the engine's")
        return x, y

    def step(self, group: Sequence[int], idx: torch.Tensor) -> torch.Tensor:
        try:
            return self._step(idx)
        except BaseException:
            if self.reader is not None:  # no reader thread outlives a failed step
                self.reader.stop()
            raise

    def _step(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.module.training:
            self.module.train()
        if self.warmup_steps and self.steps < self.warmup_steps:
            self.optimizer.set_lrs([self.base_lr * (self.steps + 1) / self.warmup_steps])
        elif self.warmup_steps and self.steps == self.warmup_steps:
            self.optimizer.set_lrs([self.base_lr])
        self.steps += 1
        batch, out = None, None
        if self.graph is not None:
            if not self.resident:
                batch = self._next_batch(idx[0])
                self._stage(*batch)
            out = self.graph.step(idx[0])
        if out is None:
            xb, yb = batch or self._next_batch(idx[0])
            out = eager_step(self.graph, self.optimizer.zero_grad, lambda: row_gradients(
                self.forward, self.amp(), self.objectives[0], xb, yb))
        self.optimizer.step()
        logits, sums = out
        if self.signals is not None:
            self.signals.collect(idx[0], logits)
        return sums

    def _gradients(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of the batch ``idx`` (what a step graph captures): gathered
        from the resident split, or the streamed batch staged in the input buffers."""
        batch = self._batch(idx) if self.resident else self._inputs
        # autocast's weight cache stays off inside a graph (stale copies after updates)
        return row_gradients(self.forward, amp_without_cache(self.amp), self.objectives[0],
                             *batch)

    def _stage(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Copy a full streamed batch into the buffers a captured step reads."""
        if len(x) != self.batch_size:
            return
        if self._inputs is None:
            self._inputs = (torch.empty_like(x), torch.empty_like(y))
        self._inputs[0].copy_(x)
        self._inputs[1].copy_(y)

    @torch.no_grad()
    def _scores(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Logits ``[n, T]`` (float32, on the device) and the mean loss of one split."""
        self.module.eval()
        outs, loss = [], 0.0
        obj = self.objectives[0]
        for start in range(0, len(x), EVAL_BATCH):
            xb, yb = x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH]
            with self.amp():
                logits = self.forward(xb).float()
            loss += float(obj.per_sample_loss(logits, yb).sum())
            outs.append(logits)
        return torch.cat(outs), loss / max(len(x), 1)

    def _split_metrics(self, prefix: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        logits, loss = self._scores(x, y)
        roc, pr = per_target_auc(logits, y)
        roc, pr = roc.cpu().numpy(), pr.cpu().numpy()
        self.val_scores[f"{prefix}_roc_auc_per_target"] = roc
        self.val_scores[f"{prefix}_pr_auc_per_target"] = pr
        if prefix == "val":
            self.val_scores["val_probabilities"] = torch.sigmoid(logits).cpu().numpy()
        return {f"{prefix}_loss": loss, **summarise(roc, pr, self.prevalence, self.groups,
                                                      prefix)}

    def validate(self) -> list[dict[str, Any]]:
        if self.signals is not None:  # once per epoch, right after its training steps
            self.signals.end_epoch()
        return [self._split_metrics("val", self.x_val, self.y_val)]

    def outcome(self, trial: int, curves: dict[str, list[float]],
                selected: list[int | None]) -> FitOutcome:
        graph_state = step_graph_state(self.graph)
        self.graph = None  # frees the graph's memory pool before the test split's pass
        final = {key: values[-1] for key, values in curves.items()}
        final.update(epochs_run=float(len(curves.get("loss", []))),
                     n_parameters=float(self.n_parameters))
        ds = self.members[0].dataset
        if ds.x_test is not None and len(ds.x_test):
            final.update(self._split_metrics(
                "test", to_device(ds.x_test, self.plan.device, torch.uint8),
                to_device(ds.y_test, self.plan.device, torch.uint8)))
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in self.val_scores.items()}
        arrays["train_prevalence"] = self.prevalence.astype(np.float32)
        if self.signals is not None:
            arrays.update(self.signals.arrays())
        extra = {"n_parameters": int(self.n_parameters), "data_resident": self.resident,
                 "step_graph": graph_state,
                 "data_prefetch": self.prefetch,
                 "n_targets": int(len(self.prevalence)), "warmup_steps": self.warmup_steps}
        if ds.target_ids is not None:
            extra["target_names"] = [str(t) for t in ds.target_ids]
            # The gather stores per-target arrays in summary.h5 aligned to these names.
            arrays["target_ids"] = np.asarray(extra["target_names"])
        if self.groups is not None:
            extra["target_groups"] = list(self.groups)
        ceiling = ds.info.get("ceiling")
        if ceiling:
            extra["auc_ceiling"] = ceiling
        extra.update(self._extra())
        return FitOutcome(curves=curves, final=final, arrays=arrays, extra=extra)

    def close(self) -> None:
        self.graph = None
        if self.reader is not None:
            self.reader.stop()

    def state_dict(self) -> dict[str, Any]:
        # The global generators draw the dropout masks: saved, so a resumed trial draws the
        # masks the uninterrupted one would.
        rng = {"cpu": torch.random.get_rng_state()}
        if torch.device(self.plan.device).type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        state = {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "steps": self.steps, "rng": rng}
        if self.signals is not None:
            state["signals"] = self.signals.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]
        torch.random.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        if self.signals is not None and "signals" in state:
            self.signals.load_state_dict(state["signals"])


def step_graph_state(graph: StepGraph | None) -> str:
    """What a trial's record says of its step graph: 'captured', 'failed' (steps ran eagerly
    after a failed capture), 'not captured' (too few full batches) or 'not used'."""
    if graph is None:
        return "not used"
    return "captured" if graph.captured else "failed" if graph.failed else "not captured"


def _signals(member: Member, y_train: torch.Tensor | None) -> MultiLabelSignals | None:
    """Per-sample, per-target detection signals (docs/detection.md) when the trial asks for
    them and its labels are on the device in a size the buffers allow."""
    if not wanted(member.spec):
        return None
    if y_train is None or y_train.numel() > MAX_MULTILABEL_ELEMENTS:
        member.log.warning("noisy-label detection skipped: the training labels are streamed or "
                           "larger than %d sample x target elements", MAX_MULTILABEL_ELEMENTS)
        return None
    return MultiLabelSignals(y_train, epochs=member.spec.train.epochs,
                             last_epochs=member.spec.train.detect_last_epochs)


def _fits(nbytes: int, device: str) -> bool:
    """Whether the training arrays stay on the device (always on the CPU: no copy is made)."""
    if torch.device(device).type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info()
    return nbytes <= RESIDENT_SHARE * free


__all__ = ["BinaryCrossEntropyObjective", "MultiLabelStack", "check_multilabel",
           "prevalence_bias", "RESIDENT_SHARE"]
