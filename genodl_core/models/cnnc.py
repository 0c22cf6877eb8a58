"""CNNC: the gene-pair CNN of Yuan & Bar-Joseph (2019), seed 001's model, as a model family.

Input: a pair's NEPDF image (``bins x bins``, flattened; :mod:`genodl_core.data.cnnc_images`).
Network (defaults: the reference): for each width in ``filters`` (32, 64, 128) a block of
``convs_per_block`` 3x3 convolutions, the first 'same' and the others 'valid', each followed by
ReLU, then 2x2 max-pool and dropout ``conv_dropout`` (0.25); flatten; for each width in
``dense`` (512) Linear -> ReLU -> dropout ``dropout`` (0.5); a final Linear to the logits.
Binary pairs get two softmax logits (the reference's one sigmoid unit is the same model up to
one redundant output: softmax over (0, z) is sigmoid(z)); three classes (none, A -> B, B -> A)
three; the abstaining variant one more, trained with the abstention objective and controllers
of :mod:`genodl_core.training.abstention`, as NT3's. With 3 classes the reference network has
550,627 parameters.

Training options: SGD with Nesterov momentum (``nesterov = true`` with ``[train] optimizer =
"sgd", momentum = 0.9, learning_rate = 0.01``: the reference's settings; its Keras ``decay``
1e-6 per step is not modelled), a class-weighted cross-entropy (seed 001's weighted loss:
``class_weights`` given, or ``balance_classes`` = inverse class frequency of the trial's own,
possibly noised, training labels), and balanced down-sampling of the training pairs
(``train_balance = "downsample"`` of the data source). Weights are Glorot-uniform, biases zero
(Keras' defaults), drawn per trial from ``derive_seed(seed, "init")``.

**Packs.** One trial is a small network that leaves a GPU idle between kernel launches.
:class:`StackedCNNC` holds the weights of K trials with a leading K axis: every convolution
runs as one grouped 2-D convolution (K groups), every dense layer as one batched matmul; K = 1
is the ordinary trial, so a pack runs the very same computation. Dropout masks are a hash of
the trial's seed, the step, the layer and the position, the same alone as in any pack: packed
trials follow the trajectories they would alone, up to floating-point reassociation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from genodl_core.data.cnnc_metrics import pair_metrics
from genodl_core.errors import DataError, SpecError
from genodl_core.models.nt3 import _objective
from genodl_core.models.stacked_layers import StackedLayers, grouped_conv, stacked_linear
from genodl_core.registry import MODELS
from genodl_core.spec import TrialSpec, derive_seed
from genodl_core.training.abstention import AbstentionParams
from genodl_core.training.classifier import (ClassifierStack, _probabilities,
                                             check_classification)
from genodl_core.training.family import Family, FitOutcome, Member, stacking_key
from genodl_core.training.hashed_dropout import dropout_scale
from genodl_core.training.objectives import CrossEntropyObjective
from genodl_core.training.optim import make_optimizer
from genodl_core.training.plan import ExecutionPlan
from genodl_core.training.schedules import schedule_of
from genodl_core.typed import check_range

#: The reference's training settings, for ``[train]`` (the spec's own defaults are NT3's).
REFERENCE_TRAIN = {"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9,
                   "batch_size": 1024, "epochs": 20}


@dataclass(frozen=True)
class CNNCParams(AbstentionParams):
    """The CNNC network and its loss options (defaults: the reference network)."""

    #: Filters of each block's convolutions; one block per entry.
    filters: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = 2
    kernel: int = 3
    dense: tuple[int, ...] = (512,)
    conv_dropout: float = 0.25
    dropout: float = 0.5
    #: Per-class loss weights (empty: unweighted), or inverse class frequencies.
    class_weights: tuple[float, ...] = ()
    balance_classes: bool = False
    #: Nesterov momentum for SGD (the reference's optimizer).
    nesterov: bool = False

    def validate(self, where: str) -> None:
        prefix = f"{where}." if where else ""
        if not self.filters:
            raise SpecError(f"{prefix}filters", list(self.filters), "at least one block",
                            reason="empty network")
        for i, f in enumerate(self.filters):
            check_range(where, f"filters[{i}]", f, 1)
        for i, units in enumerate(self.dense):
            check_range(where, f"dense[{i}]", units, 1)
        check_range(where, "convs_per_block", self.convs_per_block, 1)
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise SpecError(f"{prefix}kernel", self.kernel, "an odd size >= 1",
                            reason="'same' padding of an even kernel is lopsided")
        check_range(where, "conv_dropout", self.conv_dropout, 0, 1, hi_open=True)
        check_range(where, "dropout", self.dropout, 0, 1, hi_open=True)
        for i, w in enumerate(self.class_weights):
            check_range(where, f"class_weights[{i}]", w, 0, lo_open=True)
        if self.class_weights and self.balance_classes:
            raise SpecError(f"{prefix}balance_classes", True, [False],
                            reason="class_weights are given; use one or the other")
        if self.variant == "abstaining" and (self.class_weights or self.balance_classes):
            raise SpecError(f"{prefix}variant", self.variant, ["base"],
                            reason="class weights apply to the plain cross-entropy only")
        self.validate_abstention(where)

    def sizes(self, side: int) -> list[int]:
        """Image side after each block.

        Raises
        ------
        SpecError
            When the image runs out before the last block (names the block).
        """
        out = []
        for i in range(len(self.filters)):
            side -= (self.convs_per_block - 1) * (self.kernel - 1)
            if side < 2:
                raise SpecError(f"model.filters[{i}]", self.filters[i],
                                "fewer blocks or convs_per_block, or larger images (bins)",
                                reason=f"block {i} gets a {max(side, 0)}-pixel image to pool")
            side //= 2
            out.append(side)
        return out

    def n_parameters(self, side: int, n_classes: int) -> int:
        total, channels = 0, 1
        for f in self.filters:
            for _ in range(self.convs_per_block):
                total += channels * self.kernel ** 2 * f + f
                channels = f
        fan_in = channels * self.sizes(side)[-1] ** 2
        for units in (*self.dense, self.n_outputs(n_classes)):
            total += fan_in * units + units
            fan_in = units
        return total


def cnnc_forward_flops(params: CNNCParams, n_features: int, n_classes: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass (for ``genodl bench``)."""
    side = image_side(n_features)
    flops, channels, k = 0.0, 1, params.kernel
    for f in params.filters:
        for i in range(params.convs_per_block):
            if i:
                side -= k - 1
            flops += 2.0 * channels * k * k * f * side * side
            channels = f
        side //= 2
    fan_in = channels * side * side
    for units in (*params.dense, params.n_outputs(n_classes)):
        flops += 2.0 * fan_in * units
        fan_in = units
    return flops


def image_side(n_features: int) -> int:
    """The side of square images of ``n_features`` pixels.

    Raises
    ------
    DataError
        When ``n_features`` is not a square.
    """
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise DataError(f"CNNC takes square NEPDF images; {n_features} features per pair are "
                        "not bins x bins")
    return side


class StackedCNNC(StackedLayers):
    """K trials' CNNC networks as one module: ``[K, B, side * side]`` -> ``[K, B, outputs]``
    (a 2-D input ``[B, pixels]`` is the K = 1 case and gives ``[B, outputs]``)."""

    def __init__(self, params: CNNCParams, side: int, n_outputs: int, k: int = 1):
        super().__init__(k)
        self.params, self.side, self.n_outputs = params, side, n_outputs
        channels = 1
        for f in params.filters:
            for _ in range(params.convs_per_block):
                self.add_conv(f, channels, (params.kernel, params.kernel))
                channels = f
        self.add_dense(channels * params.sizes(side)[-1] ** 2, (*params.dense, n_outputs))

    #: Run the convolutions on channels-last (NHWC) activations (the plan's ``channels_last``,
    #: on CUDA): cuDNN's grouped NHWC kernels without a layout conversion around each layer.
    #: The dropout masks are the same: they are drawn by logical position, whatever the layout.
    channels_last: bool = False

    @torch.no_grad()
    def initialise(self, seeds: Sequence[int]) -> "StackedCNNC":
        """Glorot-uniform weights (Keras' fans), zero biases; trial ``t`` draws from
        ``derive_seed(seeds[t], "init")`` on the CPU, layer by layer; dropout streams from the
        same seeds."""
        self.glorot_([derive_seed(seed, "init") for seed in seeds])
        self.dropout_seeds.copy_(torch.tensor(
            [derive_seed(s, "dropout") & (2**62 - 1) for s in seeds]))
        return self

    def shape_args(self) -> tuple:
        return self.params, self.side, self.n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
        k, batch = x.shape[0], x.shape[1]
        p = self.params
        drop = self.training and (p.conv_dropout > 0 or p.dropout > 0)
        if drop:
            self.dropout_step += 1
        # [K, B, S*S] -> [B, K, S, S]: the K trials are the groups of every convolution
        h = x.reshape(k, batch, self.side, self.side).transpose(0, 1)
        layer = 0
        for block in range(len(p.filters)):
            for i in range(p.convs_per_block):
                if self.channels_last:
                    h = h.contiguous(memory_format=torch.channels_last)
                h = grouped_conv(h, self.conv_w[layer], self.conv_b[layer],
                                 padding=p.kernel // 2 if i == 0 else 0)
                h = F.relu(h)
                layer += 1
            h = F.max_pool2d(h, 2)
            if drop and p.conv_dropout > 0:
                shape = h.shape
                flat = h.reshape(batch, k, -1).transpose(0, 1)
                h = (flat * self._mask(flat, p.conv_dropout, block)).transpose(0, 1).reshape(
                    shape)
        h = h.reshape(batch, k, -1).transpose(0, 1)                     # [K, B, C*H*W]
        last = len(self.dense_w) - 1
        for i, (w, b) in enumerate(zip(self.dense_w, self.dense_b)):
            h = stacked_linear(h, w, b)
            if i < last:
                h = F.relu(h)
                if drop and p.dropout > 0:
                    h = h * self._mask(h, p.dropout, len(p.filters) + i)
        return h[0] if single else h

    def _mask(self, h: torch.Tensor, rate: float, layer: int) -> torch.Tensor:
        """Inverted-dropout scale ``[K, B, F]``: a hash of (trial seed, step, layer, position),
        computed for all K trials in a few element-wise kernels; a trial draws the same masks
        alone as in any pack."""
        return dropout_scale(h, rate, self.dropout_seeds, self.dropout_step, layer)


def build_cnnc(params: CNNCParams, side: int, n_classes: int, seed: int,
               device: str | torch.device = "cpu") -> StackedCNNC:
    """One trial's initialised network (K = 1), weights and dropout stream from ``seed``.

    Raises
    ------
    SpecError
        The images are too small for the blocks, or fewer than 2 classes.
    """
    if n_classes < 2:
        raise SpecError("data.n_classes", n_classes, "2 or 3 classes", reason="CNNC classifies")
    net = StackedCNNC(params, side, params.n_outputs(n_classes)).initialise([seed])
    return net.to(device)


class WeightedCrossEntropyObjective(CrossEntropyObjective):
    """Cross-entropy with a weight per true class (seed 001's weighted loss): a sample's loss
    is its class weight times its cross-entropy; the step's loss is their plain mean."""

    def __init__(self, weights: Sequence[float]):
        self.weights = torch.tensor([float(w) for w in weights], dtype=torch.float32)

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.weights.device != logits.device:
            self.weights = self.weights.to(logits.device)
        return super().per_sample_loss(logits, y) * self.weights[y]

    def extra(self) -> dict[str, Any]:
        return {"class_weights": [float(w) for w in self.weights.cpu()]}


def class_weights(params: CNNCParams, y_train: np.ndarray, n_classes: int) -> list[float] | None:
    """The loss weights of a trial: given, inverse frequencies (``n / (classes * n_c)``, from the
    trial's own training labels), or None (unweighted).

    Raises
    ------
    SpecError
        When the number of given weights is not the number of classes.
    """
    if params.class_weights:
        if len(params.class_weights) != n_classes:
            raise SpecError("model.class_weights", list(params.class_weights),
                            f"{n_classes} weights, one per class",
                            reason=f"the data have {n_classes} classes")
        return list(params.class_weights)
    if params.balance_classes:
        counts = np.bincount(np.asarray(y_train), minlength=n_classes).astype(np.float64)
        return [len(y_train) / (n_classes * c) if c else 0.0 for c in counts]
    return None


class CNNCFamily(Family):
    """CNNC (and its abstaining variant) through :class:`ClassifierStack`; specs equal but
    for seed and noise train as one pack.

    Fast-path switches: validation at a larger batch, cuDNN's algorithm search, the fused
    optimizer step (single trials); on CUDA also channels-last convolutions and
    :func:`torch.compile` of the forward (which fuses the dropout hash with the ReLU and
    pooling around it): measured on the GPU in docs/cnnc.md. On a CPU the network runs as
    written (those two were not measured there).
    """

    single_switches = frozenset({"eval_batch_size", "cudnn_benchmark", "fused_optimizer"})
    pack_switches = frozenset({"eval_batch_size", "cudnn_benchmark"})

    def switches(self, pack_size: int, device: str = "cuda") -> frozenset[str]:
        used = super().switches(pack_size, device)
        return (used | {"channels_last", "compile"}) if device == "cuda" else used

    def pack_key(self, spec: TrialSpec) -> str | None:
        return "cnnc:" + stacking_key(spec)

    def check(self, member: Member) -> None:
        ds = member.dataset
        if ds.task != "classification" or ds.n_classes not in (2, 3):
            raise DataError(f"cnnc needs gene-pair classes (2, or 3 with direction); got "
                            f"task={ds.task!r}, n_classes={ds.n_classes!r}")
        params: CNNCParams = member.spec.model.params
        train = member.spec.train
        if params.nesterov and (train.optimizer != "sgd" or train.momentum <= 0):
            raise SpecError("model.nesterov", True, [False],
                            reason=f"Nesterov needs train.optimizer='sgd' and momentum > 0; got "
                                   f"{train.optimizer!r} with momentum {train.momentum}")
        params.sizes(image_side(ds.n_features))
        class_weights(params, ds.y_train, int(ds.n_classes))
        check_classification(member, int(ds.n_classes))

    def stack(self, members: Sequence[Member], plan: ExecutionPlan) -> "CNNCStack":
        params: CNNCParams = members[0].spec.model.params
        ds = members[0].dataset
        n_classes, side = int(ds.n_classes), image_side(ds.n_features)
        nets = [build_cnnc(params, side, n_classes, m.spec.seed, plan.device) for m in members]
        return CNNCStack(
            members, plan, n_classes=n_classes, nets=nets, run=_run_stacked,
            objectives=[_cnnc_objective(params, m, n_classes) for m in members],
            schedules=[schedule_of(m.spec.train) for m in members],
            extra=lambda t: {"variant": params.variant, "n_outputs": params.n_outputs(n_classes),
                             "image_side": side})


def _cnnc_objective(params: CNNCParams, member: Member, n_classes: int):
    weights = class_weights(params, member.dataset.y_train, n_classes)
    if weights is not None:
        return WeightedCrossEntropyObjective(weights)
    return _objective(params, member, n_classes)


def _run_stacked(nets: Sequence[StackedCNNC], plan: ExecutionPlan):
    module = nets[0] if len(nets) == 1 else StackedCNNC.stack(nets)
    module.channels_last = plan.switches.channels_last
    return module, torch.compile(module, dynamic=False) if plan.switches.compile else module


class CNNCStack(ClassifierStack):
    """The classifier stack with Nesterov SGD as an option and the pair metrics in the
    outcome (ROC AUC, PR AUC, balanced accuracy of the validation and test splits)."""

    def _build(self) -> None:
        built = self.module is not None
        super()._build()
        params: CNNCParams = self.members[0].spec.model.params
        if not built and params.nesterov:
            self.optimizer = make_optimizer(self.module, self.members[0].spec.train, self.plan,
                                            self.k, nesterov=True)

    def outcome(self, trial: int, curves: dict[str, list[float]],
                selected: list[int | None]) -> FitOutcome:
        out = super().outcome(trial, curves, selected)
        ds = self.members[trial].dataset
        n_classes = int(ds.n_classes)
        out.final.update(pair_metrics("val", out.arrays["val_probabilities"], ds.y_val,
                                      n_classes))
        if self.test_logits is not None and self.test_logits.numel():
            probs = _probabilities(self.objectives[trial], self.test_logits[trial])
            out.final.update(pair_metrics("test", probs, ds.y_test, n_classes))
        return out


MODELS.register("cnnc", params=CNNCParams, task="classification")(CNNCFamily())


__all__ = ["REFERENCE_TRAIN", "CNNCParams", "StackedCNNC", "CNNCFamily", "CNNCStack",
           "WeightedCrossEntropyObjective", "build_cnnc", "class_weights", "cnnc_forward_flops",
           "image_side"]
