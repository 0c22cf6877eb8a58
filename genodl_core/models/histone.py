"""Histone-mark CNNs (seed 002 and DeepChrome) as model families, trained K trials at a time.

``histone`` (regression): seed 002's final network. Conv1D 50 x width 10 -> LeakyReLU(0.05) ->
MaxPool 5 -> Conv1D 50 x width 5, dilation 3 -> LeakyReLU -> MaxPool 3 -> Conv1D 50 x width 3,
dilation 2 -> LeakyReLU -> MaxPool 3 -> Flatten -> Dropout 0.3 -> Dense 50 -> LeakyReLU ->
Dense 10 -> LeakyReLU -> Dense 1; 'same' padding (Keras': the extra pad of an even width goes
right), 28,221 parameters with 5 marks x 100 bins. Train it as the seed did with
:data:`SEED_TRAIN` (Adam 1e-3, batch 250, 15 epochs, MSE).

``deepchrome`` (classification, above / below median expression): Conv 50 x width 10 (valid)
-> ReLU -> MaxPool 5 -> Dropout 0.5 -> Dense 625 -> ReLU -> Dense 125 -> ReLU -> 2 logits;
``variant = "abstaining"`` adds the abstention class and trains with the abstention objective
and controller of :mod:`genodl_core.training.abstention` (as NT3's abstaining variant).

Both take ``log1p`` of the raw counts inside the network (``input_transform``), so noise steps
work on counts. Weights are Glorot-uniform, biases zero (Keras' defaults), drawn per trial from
``derive_seed(seed, "init")``.

**Packs.** A trial has tens of thousands of parameters: alone on a GPU it is launch-bound. Every
network here is a :class:`StackedConvNet` holding the weights of K trials with a leading K
axis; convolutions run as one grouped convolution, dense layers as one batched matmul. K = 1 is
the ordinary trial, so a pack runs the very same computation, and each trial's dropout masks
are a hash of its own seed (``derive_seed(seed, "dropout")``), the step and the position, the
same alone as in any pack: a pack's trials follow the trajectories they would alone, up to
floating-point reassociation.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from genodl_core.data.histone import row_cell_types, shape_of
from genodl_core.data.histone_metrics import auroc, per_group, regression_metrics
from genodl_core.errors import DataError, SpecError
from genodl_core.models.nt3 import _objective
from genodl_core.models.stacked_layers import StackedLayers, grouped_conv, stacked_linear
from genodl_core.registry import MODELS
from genodl_core.spec import TrialSpec, derive_seed
from genodl_core.training.abstention import AbstentionParams
from genodl_core.training.classifier import ClassifierStack, check_classification
from genodl_core.training.device_data import to_device
from genodl_core.training.family import (Family, FitOutcome, LastEpochRows, Member,
                                         stacking_key, training_scope)
from genodl_core.training.hashed_dropout import dropout_scale
from genodl_core.training.objectives import StatelessObjective
from genodl_core.training.optim import make_optimizer
from genodl_core.training.plan import ExecutionPlan
from genodl_core.training.precision import autocast, matmul_precision
from genodl_core.training.schedules import schedule_of
from genodl_core.typed import check_range

#: Seed 002's training settings, for ``[train]`` (the spec's own defaults are NT3's).
SEED_TRAIN = {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 250, "epochs": 15}

Transform = Literal["log1p", "none"]


@dataclass(frozen=True)
class ConvLayout:
    """What :class:`StackedConvNet` builds: conv layers, activations, dropout, dense head."""

    conv: tuple[tuple[int, int, int], ...]   # (filters, width, dilation)
    pool: tuple[int, ...]
    padding: Literal["same", "valid"]
    dense: tuple[int, ...]
    dropout: float
    leaky_slope: float                      # 0: ReLU
    n_outputs: int
    input_transform: Transform

    def widths(self, n_bins: int) -> list[int]:
        """Sequence length after each (conv, pool) pair.

        Raises
        ------
        SpecError
            When the bins run out before the last layer (names the layer).
        """
        out, length = [], n_bins
        for i, ((_, width, dilation), pool) in enumerate(zip(self.conv, self.pool)):
            if self.padding == "valid":
                length -= dilation * (width - 1)
            if length < pool or length < 1:
                raise SpecError(f"model.conv[{i}]", list(self.conv[i]),
                                f"layers that fit {n_bins} bins",
                                reason=f"layer {i} gets {max(length, 0)} positions for pool {pool}")
            length //= pool
            out.append(length)
        return out

    def n_parameters(self, n_marks: int, n_bins: int) -> int:
        total, channels = 0, n_marks
        for filters, width, _ in self.conv:
            total += channels * width * filters + filters
            channels = filters
        fan_in = channels * self.widths(n_bins)[-1]
        for units in (*self.dense, self.n_outputs):
            total += fan_in * units + units
            fan_in = units
        return total


class StackedConvNet(StackedLayers):
    """K trials' networks as one module: ``[K, B, marks * bins]`` -> ``[K, B, outputs]``
    (a 2-D input ``[B, features]`` is the K = 1 case and gives ``[B, outputs]``)."""

    def __init__(self, layout: ConvLayout, n_marks: int, n_bins: int, k: int = 1):
        super().__init__(k)
        self.layout, self.n_marks, self.n_bins = layout, n_marks, n_bins
        channels = n_marks
        for filters, width, _ in layout.conv:
            self.add_conv(filters, channels, (width,))
            channels = filters
        self.flat = channels * layout.widths(n_bins)[-1]
        self.add_dense(self.flat, (*layout.dense, layout.n_outputs))
        self.dropout_seeded = False

    @torch.no_grad()
    def initialise(self, seeds: Sequence[int]) -> "StackedConvNet":
        """Glorot-uniform weights (Keras' fans), zero biases; trial ``t`` draws from
        ``seeds[t]`` on the CPU, layer by layer (the same numbers whatever the pack)."""
        self.glorot_(seeds)
        return self

    def seed_dropout(self, seeds: Sequence[int]) -> None:
        """Each trial's dropout stream: its seed (63-bit) in the hash of every mask."""
        self.dropout_seeds.copy_(torch.tensor([s & (2**62 - 1) for s in seeds]))
        self.dropout_seeded = True

    def shape_args(self) -> tuple:
        return self.layout, self.n_marks, self.n_bins

    @classmethod
    def stack(cls, nets: Sequence["StackedConvNet"]) -> "StackedConvNet":
        """One module holding the weights of single-trial nets (and their dropout streams)."""
        out = super().stack(nets)
        out.dropout_seeded = all(n.dropout_seeded for n in nets)
        return out

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        slope = self.layout.leaky_slope
        return F.leaky_relu(h, slope) if slope else F.relu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
        k, batch = x.shape[0], x.shape[1]
        lay = self.layout
        if lay.input_transform == "log1p":
            x = torch.log1p(x.clamp_min(0))
        # [K, B, M*L] -> [B, K*M, L]: the K trials are the groups of one convolution
        h = x.reshape(k, batch, self.n_marks, self.n_bins).transpose(0, 1).reshape(
            batch, k * self.n_marks, self.n_bins)
        for w, b, (_, width, dilation), pool in zip(self.conv_w, self.conv_b, lay.conv,
                                                     lay.pool):
            if lay.padding == "same":
                # Keras' 'same': the odd one of an even total pad goes to the right
                total = dilation * (width - 1)
                h = F.pad(h, (total // 2, total - total // 2))
            h = grouped_conv(h, w, b, dilation=dilation)
            h = self._act(h)
            if pool > 1:
                h = F.max_pool1d(h, pool)
        h = h.reshape(batch, k, -1).transpose(0, 1)                  # [K, B, C*L']
        if self.training and lay.dropout > 0:
            h = h * self._dropout_mask(h)
        last = len(self.dense_w) - 1
        for i, (w, b) in enumerate(zip(self.dense_w, self.dense_b)):
            h = stacked_linear(h, w, b)
            if i < last:
                h = self._act(h)
        return h[0] if single else h

    def _dropout_mask(self, h: torch.Tensor) -> torch.Tensor:
        """Inverted-dropout scale ``[K, B, F]`` for this training step.

        Counter-based rather than a generator per trial: a mask is a hash of the trial's seed,
        the step number and the position in the batch, computed for all K trials in a few
        element-wise kernels (K generators would cost K launches a step, which is what packs
        avoid). A trial draws the same masks alone as in any pack.
        """
        if not self.dropout_seeded:
            raise RuntimeError("dropout needs its seeds: call seed_dropout first")
        self.dropout_step += 1
        return dropout_scale(h, self.layout.dropout, self.dropout_seeds, self.dropout_step)


@dataclass(frozen=True)
class HistoneParams:
    """Seed 002's network (defaults: its final model). ``conv`` holds (filters, width,
    dilation) per layer, ``pool`` the max-pool size after each."""

    conv: tuple[tuple[int, int, int], ...] = ((50, 10, 1), (50, 5, 3), (50, 3, 2))
    pool: tuple[int, ...] = (5, 3, 3)
    dense: tuple[int, ...] = (50, 10)
    dropout: float = 0.3
    leaky_slope: float = 0.05
    input_transform: Transform = "log1p"

    def validate(self, where: str) -> None:
        _check_layers(where, self.conv, self.pool, self.dense)
        check_range(where, "dropout", self.dropout, 0, 1, hi_open=True)
        check_range(where, "leaky_slope", self.leaky_slope, 0, 1)

    def layout(self) -> ConvLayout:
        return ConvLayout(self.conv, self.pool, "same", self.dense, self.dropout,
                          self.leaky_slope, 1, self.input_transform)


@dataclass(frozen=True)
class DeepChromeParams(AbstentionParams):
    """DeepChrome's classifier (defaults: the paper's); ``variant = "abstaining"`` adds the
    abstention class, steered by the same controller settings as NT3's abstaining variant."""

    filters: int = 50
    width: int = 10
    pool: int = 5
    dense: tuple[int, ...] = (625, 125)
    dropout: float = 0.5
    input_transform: Transform = "log1p"

    def validate(self, where: str) -> None:
        _check_layers(where, ((self.filters, self.width, 1),), (self.pool,), self.dense)
        check_range(where, "dropout", self.dropout, 0, 1, hi_open=True)
        self.validate_abstention(where)

    def layout(self, n_classes: int) -> ConvLayout:
        return ConvLayout(((self.filters, self.width, 1),), (self.pool,), "valid", self.dense,
                          self.dropout, 0.0, self.n_outputs(n_classes), self.input_transform)


def _check_layers(where: str, conv, pool, dense) -> None:
    prefix = f"{where}." if where else ""
    if not conv or len(pool) != len(conv):
        raise SpecError(f"{prefix}pool", list(pool), f"{len(conv)} pool sizes (one per conv "
                        "layer, at least one layer)", reason="length differs from conv")
    for i, triple in enumerate(conv):
        if len(triple) != 3 or min(triple) < 1:
            raise SpecError(f"{prefix}conv[{i}]", list(triple),
                            "[filters, width, dilation], each >= 1", reason="bad layer")
    for i, size in enumerate(pool):
        check_range(where, f"pool[{i}]", size, 1)
    for i, units in enumerate(dense):
        check_range(where, f"dense[{i}]", units, 1)


def build_net(layout: ConvLayout, n_marks: int, n_bins: int, spec: TrialSpec,
              device: str) -> StackedConvNet:
    """One trial's initialised network (K = 1) with its own dropout stream on ``device``."""
    net = StackedConvNet(layout, n_marks, n_bins).initialise([derive_seed(spec.seed, "init")])
    net.seed_dropout([derive_seed(spec.seed, "dropout")])
    return net.to(device)


# ------------------------------------------------------------------------------ regression


class MSEObjective(StatelessObjective):
    """Mean squared error of log expression; the last epoch is kept (as the seed did)."""

    abstain_class: int | None = None
    selection: str | None = None
    fail_on_divergence = True

    def per_sample_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (pred.float() - y).pow(2).sum(dim=-1)

    def batch_sums(self, losses, loss, pred, y) -> torch.Tensor:
        return losses.detach().double().sum().reshape(1)

    def train_metrics(self, sums: torch.Tensor, n: int) -> dict[str, float]:
        return {"loss": float(sums[0]) / max(n, 1)}


class HistoneFamily(Family):
    """Seed 002's regression network; any specs equal but for seed and noise train as a pack."""

    def pack_key(self, spec: TrialSpec) -> str | None:
        return "histone:" + stacking_key(spec)

    def check(self, member: Member) -> None:
        ds = member.dataset
        if ds.task != "regression" or ds.y_train.ndim != 2 or ds.y_train.shape[1] != 1:
            raise DataError(f"the histone model needs regression data with one target "
                            f"(log expression); got task={ds.task!r}, y_train of shape "
                            f"{ds.y_train.shape}")
        m, b = shape_of(ds.info, ds.n_features)
        member.spec.model.params.layout().widths(b)
        row_cell_types(ds.info, "val")

    def stack(self, members: Sequence[Member], plan: ExecutionPlan) -> "HistoneStack":
        return HistoneStack(members, plan)


class HistoneStack(LastEpochRows):
    """K histone regression trials trained as one :class:`StackedConvNet`."""

    def __init__(self, members: Sequence[Member], plan: ExecutionPlan):
        self.t0 = time.perf_counter()
        self.members, self.plan = list(members), plan
        self.k = k = len(members)
        first = members[0]
        ds, train = first.dataset, first.spec.train
        self.n_marks, self.n_bins = shape_of(ds.info, ds.n_features)
        self.layout = first.spec.model.params.layout()
        self.n_parameters = self.layout.n_parameters(self.n_marks, self.n_bins)
        sizes = {len(m.dataset.x_train) for m in members}
        if len(sizes) != 1:
            raise DataError(f"trials of one pack have training splits of sizes {sorted(sizes)}")
        self.n_train = sizes.pop()
        self.batch_size = train.batch_size
        self.objectives = [MSEObjective() for _ in members]
        self.schedules = [schedule_of(m.spec.train) for m in members]
        self.trial_rows = [[t] for t in range(k)]
        self.step_groups = [list(range(k))]
        self.shuffles = [torch.Generator().manual_seed(derive_seed(m.spec.seed, "shuffle"))
                         for m in members]
        self.module: StackedConvNet | None = None
        self.val_pred: torch.Tensor | None = None

    def scope(self) -> contextlib.AbstractContextManager:
        return training_scope([matmul_precision(self.plan.device, self.plan.precision)],
                              self._build)

    def _build(self) -> None:
        if self.module is not None:
            return
        device = self.plan.device
        nets = [build_net(self.layout, self.n_marks, self.n_bins, m.spec, device)
                for m in self.members]
        self.module = nets[0] if self.k == 1 else StackedConvNet.stack(nets)
        xs = [m.dataset.x_train for m in self.members]
        # Trials without feature noise share the (cached, never modified) array: one copy.
        self.shared_x = all(a is xs[0] for a in xs[1:])
        self.x_train = (to_device(xs[0], device, torch.float32) if self.shared_x else
                        torch.stack([to_device(a, device, torch.float32) for a in xs]))
        self.y_train = torch.from_numpy(np.stack([m.dataset.y_train for m in self.members]
                                                 ).astype(np.float32)).to(device)
        ds = self.members[0].dataset
        self.x_val = to_device(ds.x_val, device, torch.float32)
        self.rows = torch.arange(self.k, device=device).view(self.k, 1)
        self.optimizer = make_optimizer(self.module, self.members[0].spec.train, self.plan,
                                        self.k)
        for m in self.members:
            m.log.info("histone: %d marks x %d bins, %d parameters%s; %d samples (%d val), %s",
                       self.n_marks, self.n_bins, self.n_parameters,
                       f", {self.k} trials packed" if self.k > 1 else "", self.n_train,
                       len(ds.x_val), self.plan.label)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        self.optimizer.set_lrs(lrs)

    def step(self, group: Sequence[int], idx: torch.Tensor) -> torch.Tensor:
        self.module.train()
        self.optimizer.zero_grad()
        xb = self.x_train[idx] if self.shared_x else self.x_train[self.rows, idx]
        yb = self.y_train[self.rows, idx]                                   # [K, B, 1]
        with autocast(self.plan.device, self.plan.precision):
            pred = self.module(xb)
        losses = (pred.float() - yb).pow(2).sum(dim=-1)                     # [K, B]
        # Each trial's loss is its own batch mean, so the sum's gradient is each trial's.
        losses.mean(dim=1).sum().backward()
        self.optimizer.step()
        return losses.detach().double().sum(dim=1, keepdim=True)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Every trial's predictions ``[K, n]`` in eval mode, in batches."""
        self.module.eval()
        out = []
        size = max(self.batch_size, 4096 // self.k)
        for start in range(0, len(x), size):
            xb = x[start:start + size].unsqueeze(0).expand(self.k, -1, -1)
            with autocast(self.plan.device, self.plan.precision):
                out.append(self.module(xb).float()[..., 0])
        return torch.cat(out, dim=1)

    def validate(self) -> list[dict[str, Any]]:
        self.val_pred = self.predict(self.x_val)
        y = self.members[0].dataset.y_val[:, 0]
        pred = self.val_pred.cpu().numpy()
        rows = []
        for t in range(self.k):
            metrics = regression_metrics("val", y, pred[t])
            metrics["val_loss"] = metrics["val_mse"]
            rows.append(metrics)
        return rows

    def outcome(self, trial: int, curves: dict[str, list[float]],
                selected: list[int | None]) -> FitOutcome:
        member = self.members[trial]
        ds = member.dataset
        final = {key: values[-1] for key, values in curves.items()}
        arrays: dict[str, np.ndarray] = {}
        extra: dict[str, Any] = {"n_parameters": self.n_parameters}
        splits = [("val", ds.y_val, self.val_pred[trial].cpu().numpy())]
        if ds.x_test is not None and len(ds.x_test):
            if not hasattr(self, "test_pred"):
                self.test_pred = self.predict(to_device(ds.x_test, self.plan.device,
                                                        torch.float32)).cpu().numpy()
            splits.append(("test", ds.y_test, self.test_pred[trial]))
        for split, y, pred in splits:
            final.update(regression_metrics(split, y[:, 0], pred))
            final.update(_per_cell_type(ds.info, split, y[:, 0], pred, arrays, extra))
            arrays[f"{split}_predictions"] = pred.astype(np.float32)
        for key, value in ds.info.get("oracle", {}).items():
            final[f"oracle_{key}"] = float(value)
        final.update(epochs_run=float(len(curves.get("loss", []))),
                     n_parameters=float(self.n_parameters),
                     train_seconds=time.perf_counter() - self.t0)
        if self.k > 1:
            extra["batched_trials"] = self.k
        return FitOutcome(curves=curves, final=final, arrays=arrays, extra=extra)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])

    def close(self) -> None:
        self.test_pred = None


def _per_cell_type(info: dict, split: str, y: np.ndarray, pred: np.ndarray,
                   arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> dict[str, float]:
    """Per cell type of the split: MSE, Pearson and Spearman r as arrays (record), the Pearson
    r of each as a final ``{split}_pearson_ct_<name>`` (summary), and their mean and minimum."""
    names, groups = row_cell_types(info, split)
    finals: dict[str, float] = {}
    for metric in ("mse", "pearson", "spearman"):
        values = per_group(lambda a, b, m=metric: regression_metrics("x", a, b)[f"x_{m}"],
                           groups, len(names), y, pred)
        arrays[f"{split}_{metric}_per_cell_type"] = values
        if metric == "pearson":
            finals.update({f"{split}_pearson_ct_{n}": float(v) for n, v in zip(names, values)})
            if np.isfinite(values).any():
                finals[f"{split}_pearson_ct_mean"] = float(np.nanmean(values))
                finals[f"{split}_pearson_ct_min"] = float(np.nanmin(values))
    extra[f"{split}_cell_types"] = names
    return finals


# -------------------------------------------------------------------------- classification


class DeepChromeFamily(Family):
    """DeepChrome (and its abstaining variant) through :class:`ClassifierStack`."""

    def pack_key(self, spec: TrialSpec) -> str | None:
        return "deepchrome:" + stacking_key(spec)

    def check(self, member: Member) -> None:
        ds = member.dataset
        if ds.task != "classification" or ds.n_classes != 2:
            raise DataError(f"deepchrome needs two-class data (above / below median "
                            f"expression); got task={ds.task!r}, n_classes={ds.n_classes!r}")
        m, b = shape_of(ds.info, ds.n_features)
        member.spec.model.params.layout(2).widths(b)
        check_classification(member, 2)
        row_cell_types(ds.info, "val")

    def stack(self, members: Sequence[Member], plan: ExecutionPlan) -> "DeepChromeStack":
        params: DeepChromeParams = members[0].spec.model.params
        ds = members[0].dataset
        m, b = shape_of(ds.info, ds.n_features)
        layout = params.layout(2)
        nets = [build_net(layout, m, b, mem.spec, plan.device) for mem in members]
        return DeepChromeStack(
            members, plan, n_classes=2, nets=nets, run=_run_stacked,
            objectives=[_objective(params, mem, 2) for mem in members],
            schedules=[schedule_of(mem.spec.train) for mem in members],
            extra=lambda t: {"variant": params.variant, "n_outputs": params.n_outputs(2)})


def _run_stacked(nets: Sequence[StackedConvNet], plan: ExecutionPlan):
    module = nets[0] if len(nets) == 1 else StackedConvNet.stack(nets)
    return module, module


class DeepChromeStack(ClassifierStack):
    """The classifier stack plus AUROC, overall and per cell type, of the validation split."""

    def outcome(self, trial: int, curves: dict[str, list[float]],
                selected: list[int | None]) -> FitOutcome:
        out = super().outcome(trial, curves, selected)
        ds = self.members[trial].dataset
        probs = out.arrays["val_probabilities"].astype(np.float64)
        score = probs[:, 1] / np.maximum(probs[:, 0] + probs[:, 1], 1e-12)
        out.final["val_auroc"] = auroc(score, ds.y_val)
        names, groups = row_cell_types(ds.info, "val")
        values = per_group(auroc, groups, len(names), score, ds.y_val)
        out.arrays["val_auroc_per_cell_type"] = values
        out.final.update({f"val_auroc_ct_{n}": float(v) for n, v in zip(names, values)})
        out.extra["val_cell_types"] = names
        for key, value in ds.info.get("oracle", {}).items():
            out.final[f"oracle_{key}"] = float(value)
        return out


MODELS.register("histone", params=HistoneParams, task="regression")(HistoneFamily())
MODELS.register("deepchrome", params=DeepChromeParams, task="classification")(
    DeepChromeFamily())


__all__ = ["SEED_TRAIN", "ConvLayout", "StackedConvNet", "HistoneParams", "DeepChromeParams",
           "HistoneFamily", "DeepChromeFamily", "HistoneStack", "DeepChromeStack", "build_net"]
