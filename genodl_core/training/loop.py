"""The classification training loop shared by the base and abstaining NT3 models.

Pieces are separate functions so that a faster loop (compiled step, CUDA graphs, batched trials)
can replace one of them without touching the rest:

- :class:`DeviceData` moves the whole dataset to the device once (NT3 is ~300 MB in fp32);
- :func:`make_optimizer` and :class:`PlateauSchedule` follow ``spec.train``;
- :func:`train_step` is one optimisation step; :func:`evaluate` one pass without gradients;
- :func:`fit_classifier` runs the epochs, the curves, the callbacks and the final metrics.

Reproducibility: the weights come from the model builder (seeded by the caller), the shuffling
from a CPU ``torch.Generator`` seeded with ``derive_seed(seed, "shuffle")`` (so CPU and GPU runs
see the same batches) and dropout from the global generators re-seeded with
``derive_seed(seed, "dropout")`` inside :func:`torch.random.fork_rng`, which restores the caller's
global RNG state afterwards. On CPU the same spec gives bit-identical curves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.data.types import Dataset
from genodl_core.errors import DataError
from genodl_core.spec import TrainSpec, derive_seed
from genodl_core.training.context import FitContext, FitOutcome
from genodl_core.training.fast import FastPath, cudnn_benchmark, fast_path_for, prepare_forward
from genodl_core.training.metrics import batch_sums, rates_from_sums
from genodl_core.training.precision import autocast, is_cuda, matmul_precision

log = logging.getLogger(__name__)


class Objective(Protocol):
    """What the loop needs from a training objective (plain or abstaining)."""

    #: Index of the abstention output, or None for a plain classifier.
    abstain_class: int | None

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[batch]`` losses; the training loss is their mean."""

    def end_epoch(self, epoch: int, val: dict[str, float]) -> dict[str, float]:
        """Hook after validation (e.g. alpha control); returns extra curve entries of the epoch."""

    def extra(self) -> dict[str, float]:
        """Small facts for the record once training ends."""


class CrossEntropyObjective:
    """Categorical cross-entropy over ``k`` softmax outputs (the base NT3 model)."""

    abstain_class: int | None = None

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        work = logits if logits.dtype == torch.float64 else logits.float()
        return F.cross_entropy(work, y, reduction="none")

    def end_epoch(self, epoch: int, val: dict[str, float]) -> dict[str, float]:
        return {}

    def extra(self) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class DeviceData:
    """The training and validation splits as tensors resident on the training device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @classmethod
    def from_dataset(cls, dataset: Dataset, device: str, n_classes: int,
                     source: str = "dataset",
                     feature_dtype: torch.dtype = torch.float32) -> "DeviceData":
        """Copy the splits to ``device`` once (``feature_dtype`` features, int64 labels).

        Raises
        ------
        DataError
            A split is empty, the feature widths differ, or a label lies outside
            ``range(n_classes)`` (names the split and the first offending row).
        """
        for split, x, y in (("train", dataset.x_train, dataset.y_train),
                            ("val", dataset.x_val, dataset.y_val)):
            check_split(split, x, y, n_classes, source)
        if dataset.x_val.shape[1] != dataset.x_train.shape[1]:
            raise DataError(f"{source}: x_val has {dataset.x_val.shape[1]} features but x_train "
                            f"has {dataset.x_train.shape[1]}")

        def put(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            # as_tensor may share the caller's memory on CPU; nothing below writes into it, so
            # read-only inputs (memory-mapped caches, the shared dataset) need no copy.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

        return cls(put(dataset.x_train, feature_dtype), put(dataset.y_train, torch.int64),
                   put(dataset.x_val, feature_dtype), put(dataset.y_val, torch.int64))


def check_split(split: str, x: np.ndarray, y: np.ndarray, n_classes: int, source: str) -> None:
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{source}: x_{split} must be a non-empty [samples, features] array, "
                        f"got shape {x.shape}")
    if y.shape != (len(x),):
        raise DataError(f"{source}: y_{split} has shape {y.shape}, expected ({len(x)},)")
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        raise DataError(f"{source}: y_{split} row {bad[0]} has label {y[bad[0]].item()!r}; "
                        f"labels must lie in 0..{n_classes - 1}")


def make_optimizer(model: nn.Module, train: TrainSpec, *,
                   fused: bool = False) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam as ``train`` says; weight decay is plain L2 in both.

    ``fused`` selects torch's single-kernel implementation (CUDA only; same update rule).
    """
    options = {"fused": True} if fused else {}
    if train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=train.learning_rate,
                               momentum=train.momentum, weight_decay=train.weight_decay,
                               **options)
    # Keras' Adam epsilon (1e-7) rather than torch's 1e-8, to match CANDLE's runs.
    return torch.optim.Adam(model.parameters(), lr=train.learning_rate,
                            weight_decay=train.weight_decay, eps=1e-7, **options)


class PlateauSchedule:
    """Reduce the learning rate when ``val_loss`` stops improving, with Keras' semantics.

    An epoch improves when ``val_loss < best - min_delta``; after ``patience`` epochs in a row
    without improvement the rate is multiplied by ``factor`` (not below ``min_lr``) and the count
    restarts. Keras (which CANDLE used) reduces after ``patience`` bad epochs where torch's
    ``ReduceLROnPlateau`` waits ``patience + 1``, hence this small class.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float, patience: int,
                 min_delta: float, min_lr: float):
        self.optimizer = optimizer
        self.factor = factor
        self.patience = patience
        self.min_delta = min_delta
        self.min_lr = min_lr
        self.best = math.inf
        self.wait = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, val_loss: float) -> bool:
        """Account for one epoch's ``val_loss``; return whether the rate was reduced."""
        if val_loss < self.best - self.min_delta:  # NaN compares False: counts as no improvement
            self.best = val_loss
            self.wait = 0
            return False
        self.wait += 1
        if self.wait < self.patience or self.lr <= self.min_lr:
            return False
        new_lr = max(self.lr * self.factor, self.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        self.wait = 0
        log.info("val_loss has not improved for %d epochs: learning rate -> %g",
                 self.patience, new_lr)
        return True


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
               xb: torch.Tensor, yb: torch.Tensor,
               amp: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """One optimisation step on a batch; returns the batch's metric sums (on the device).

    The loss is computed outside autocast, in fp32, from the (possibly bf16) logits.
    """
    optimizer.zero_grad(set_to_none=True)
    with amp():
        logits = model(xb)
    losses = objective.per_sample_loss(logits, yb)
    losses.mean().backward()
    optimizer.step()
    return batch_sums(losses, logits.detach(), yb, objective.abstain_class)


@torch.no_grad()
def evaluate(model: nn.Module, objective: Objective, x: torch.Tensor, y: torch.Tensor,
             batch_size: int,
             amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric sums and fp32 logits of a whole split, in eval mode (dropout off), without grad.

    The model is left in eval mode; :func:`fit_classifier` switches it back for training.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    outputs = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with amp():
            logits = model(xb)
        logits = logits.float()
        sums += batch_sums(objective.per_sample_loss(logits, yb), logits, yb,
                           objective.abstain_class)
        outputs.append(logits)
    return sums, torch.cat(outputs)


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: str) -> Iterator[None]:
    """Seed the global CPU (and current CUDA) generators for dropout; restore them on exit."""
    devices = [torch.cuda.current_device()] if is_cuda(device) else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        yield


def fit_classifier(ctx: FitContext, build_model: Callable[[], nn.Module], objective: Objective,
                   *, n_classes: int, eval_batch_size: int | None = None,
                   fast: FastPath | None = None) -> FitOutcome:
    """Train a classifier on ``ctx.dataset`` as ``ctx.spec.train`` says and report its curves.

    Parameters
    ----------
    ctx
        The fit context (spec, scaled and noised dataset, device, precision, callbacks).
    build_model
        Returns a freshly initialised model mapping ``[batch, features]`` to logits (the
        caller seeds it, ideally on ``ctx.device``); it is moved to ``ctx.device`` here if not.
    objective
        :class:`CrossEntropyObjective` or an abstaining objective.
    n_classes
        Number of real classes ``k`` (labels lie in ``range(k)``).
    eval_batch_size
        Batch size of validation passes (default: the fast path's, else the training batch
        size).
    fast
        Speed-ups to apply (default: :func:`~genodl_core.training.fast.fast_path_for` the
        device: none on CPU). They change how the steps run, not what they compute.

    Returns
    -------
    FitOutcome
        ``curves``: loss, accuracy, val_loss, val_accuracy, learning_rate, epoch_seconds (and
        abstention, abstention_accuracy, val_abstention, val_abstention_accuracy, alpha for an
        abstaining objective), one value per epoch; ``final``: the last epoch's value of every
        curve plus epochs_run, train_seconds, n_parameters; ``arrays``: ``val_probabilities``.

    Raises
    ------
    DataError
        Malformed splits or labels outside ``range(n_classes)``.
    TrialTimeout
        ``train.timeout_s`` ran out (checked before every batch).
    """
    train = ctx.spec.train
    device, precision = ctx.device, ctx.precision
    fast = fast_path_for(device, precision) if fast is None else fast
    data = DeviceData.from_dataset(
        ctx.dataset, device, n_classes, source=f"data source {ctx.spec.data.name!r}",
        feature_dtype=torch.bfloat16 if fast.bf16_inputs and precision == "bf16" else torch.float32)
    abstaining = objective.abstain_class is not None
    eval_bs = eval_batch_size or fast.eval_batch_size or train.batch_size

    def amp() -> contextlib.AbstractContextManager:
        return autocast(device, precision)

    curves: dict[str, list[float]] = {}
    t_start = time.perf_counter()
    with matmul_precision(device, precision), cudnn_benchmark(fast.cudnn_benchmark), \
            seeded_global_rng(derive_seed(ctx.spec.seed, "dropout"), device):
        model = build_model().to(device)
        n_parameters = sum(p.numel() for p in model.parameters())
        optimizer = make_optimizer(model, train, fused=fast.fused_optimizer)
        if fast.enabled:
            model = prepare_forward(model, fast, sample=data.x_train[:train.batch_size], amp=amp)
        plateau = PlateauSchedule(optimizer, train.plateau_factor, train.plateau_patience,
                                  train.plateau_min_delta, train.min_learning_rate)
        shuffle = torch.Generator().manual_seed(derive_seed(ctx.spec.seed, "shuffle"))
        n = len(data.x_train)
        ctx.log.info("training %d parameters on %d samples (%d val), %d epochs, batch %d, %s %s, "
                     "fast path %s", n_parameters, n, len(data.x_val), train.epochs,
                     train.batch_size, device, precision, fast.label())
        val_logits = torch.empty(0)
        for epoch in range(train.epochs):
            t_epoch = time.perf_counter()
            lr = plateau.lr
            model.train()
            order = torch.randperm(n, generator=shuffle).to(device)
            sums = torch.zeros(3, dtype=torch.float64, device=device)
            for start in range(0, n, train.batch_size):
                ctx.check_deadline()
                idx = order[start:start + train.batch_size]
                sums += train_step(model, optimizer, objective, data.x_train.index_select(0, idx),
                                   data.y_train.index_select(0, idx), amp)
            val_sums, val_logits = evaluate(model, objective, data.x_val, data.y_val, eval_bs, amp)
            metrics = rates_from_sums(sums, n, abstaining)
            val = rates_from_sums(val_sums, len(data.x_val), abstaining)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics.update(objective.end_epoch(epoch, val))
            metrics["learning_rate"] = lr
            if train.reduce_lr_on_plateau:
                plateau.step(metrics["val_loss"])
            metrics["epoch_seconds"] = time.perf_counter() - t_epoch
            for key, value in metrics.items():
                curves.setdefault(key, []).append(float(value))
            if not math.isfinite(metrics["loss"]):
                ctx.log.warning("epoch %d: training loss is %s", epoch, metrics["loss"])
            ctx.on_epoch(epoch, dict(metrics))
    train_seconds = time.perf_counter() - t_start
    final = {key: values[-1] for key, values in curves.items()}
    final.update(epochs_run=float(train.epochs), train_seconds=train_seconds,
                 n_parameters=float(n_parameters))
    probabilities = torch.softmax(val_logits, dim=1).cpu().numpy().astype(np.float32)
    return FitOutcome(curves=curves, final=final,
                      arrays={"val_probabilities": probabilities},
                      extra={**objective.extra(), "n_parameters": int(n_parameters)})


__all__ = ["Objective", "CrossEntropyObjective", "DeviceData", "make_optimizer",
           "PlateauSchedule", "train_step", "evaluate", "seeded_global_rng", "fit_classifier"]
