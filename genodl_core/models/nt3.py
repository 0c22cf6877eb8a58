"""NT3: the CANDLE tumour/normal 1D-CNN and its abstaining variant.

Architecture (paper Table I defaults): the expression vector is a 1-channel sequence; for each
``(filters, kernel, stride)`` in ``conv``: Conv1d (valid) -> activation -> MaxPool1d(pool[i])
(pool 1 is a no-op); flatten; for each width in ``dense``: Linear -> activation -> Dropout (when
dropout > 0); a final Linear producing logits. The base model has ``k`` outputs; the abstaining
model ``k + 1``, the last being the abstention class. Softmax lives in the loss and the metrics.

CANDLE's abstaining head applies softmax twice (once in the layer, once in the loss); that
leaves the argmax unchanged but squashes the probabilities towards uniform. We apply a single
softmax: the DAC loss then acts on the probabilities the paper describes.

Weights are Glorot-uniform and biases zero (the Keras defaults CANDLE relied on), drawn from an
explicit ``torch.Generator``, so that the weights depend only on the seed given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from genodl_core.errors import DataError, SpecError
from genodl_core.registry import MODELS
from genodl_core.spec import TrialSpec, derive_seed
from genodl_core.training.abstention import AbstentionParams, abstention_objective
from genodl_core.training.classifier import ClassifierStack, check_classification
from genodl_core.training.family import Family, Member, stacking_key
from genodl_core.training.objectives import CrossEntropyObjective
from genodl_core.training.plan import ExecutionPlan
from genodl_core.training.schedules import schedule_of
from genodl_core.typed import check_range

Activation = Literal["relu", "elu", "tanh", "sigmoid"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@dataclass(frozen=True)
class NT3Params(AbstentionParams):
    """Parameters of the NT3 model (defaults: the noise-study paper, Table I).

    The abstention parameters apply only when ``variant='abstaining'``. ``controller`` picks
    how alpha evolves (:mod:`genodl_core.training.abstention`): ``"genodl"`` and ``"candle"``
    use ``alpha`` .. ``init_abs_epoch`` (paper-era values; CANDLE's later configs use
    alpha_scale_factor 0.8, max_abs 0.30, acc_gain 1.5, init_abs_epoch 5); ``"dac"`` uses
    ``warmup_epochs``, ``alpha_final`` and ``alpha_init_factor`` (the DAC authors' defaults).
    """

    #: (filters, kernel, stride) of each convolution, applied in order.
    conv: tuple[tuple[int, int, int], ...] = ((64, 20, 1), (64, 10, 1))
    #: Max-pool size after each convolution (1 = no pooling); as long as ``conv``.
    pool: tuple[int, ...] = (1, 10)
    #: Widths of the hidden dense layers.
    dense: tuple[int, ...] = (200, 20)
    activation: Activation = "relu"
    #: Dropout after each hidden dense layer (0 = no dropout layer).
    dropout: float = 0.0
    #: Locally connected layers (unshared weights per position) instead of convolutions.
    locally_connected: bool = False

    def validate(self, where: str) -> None:
        """Range checks across fields; every error names the field.

        Raises
        ------
        SpecError
            A non-positive size, ``pool`` not as long as ``conv``, dropout outside [0, 1),
            or an abstention parameter out of range.
        """
        prefix = f"{where}." if where else ""
        if not self.conv:
            raise SpecError(f"{prefix}conv", list(self.conv),
                            "at least one [filters, kernel, stride] triple",
                            reason="empty convolution stack")
        for i, triple in enumerate(self.conv):
            if any(v < 1 for v in triple):
                raise SpecError(f"{prefix}conv[{i}]", list(triple),
                                "[filters, kernel, stride], each >= 1", reason="non-positive size")
        if len(self.pool) != len(self.conv):
            raise SpecError(f"{prefix}pool", list(self.pool),
                            f"a list of {len(self.conv)} pool sizes (one per conv layer)",
                            reason="length differs from conv")
        for i, size in enumerate(self.pool):
            check_range(where, f"pool[{i}]", size, 1)
        for i, units in enumerate(self.dense):
            check_range(where, f"dense[{i}]", units, 1)
        check_range(where, "dropout", self.dropout, 0, 1, hi_open=True)
        self.validate_abstention(where)


def nt3_widths(params: NT3Params, n_features: int, where: str = "model") -> list[tuple[int, int]]:
    """Sequence lengths after each (conv, pool) pair: ``[(conv_out, pool_out), ...]``.

    Raises
    ------
    SpecError
        The input is too narrow for the conv/pool stack; names the layer, its setting and the
        width that reached it, so the user can shrink kernels or pools or supply wider data.
    """
    widths = []
    length = n_features
    for i, ((_, kernel, stride), pool) in enumerate(zip(params.conv, params.pool)):
        if length < kernel:
            raise SpecError(f"{where}.conv[{i}]", list(params.conv[i]),
                            f"a kernel <= {length}",
                            reason=f"the input of conv layer {i} is only {length} wide "
                                   f"({n_features} features in); the conv/pool stack is too "
                                   "deep or wide for this data")
        conv_out = (length - kernel) // stride + 1
        if conv_out < pool:
            raise SpecError(f"{where}.pool[{i}]", pool, f"a pool size <= {conv_out}",
                            reason=f"conv layer {i} outputs only {conv_out} positions "
                                   f"({n_features} features in)")
        length = conv_out // pool
        widths.append((conv_out, length))
    return widths


def nt3_param_count(params: NT3Params, n_features: int, n_classes: int) -> int:
    """Number of trainable parameters, computed analytically (no tensors allocated).

    Raises
    ------
    SpecError
        The input is too narrow for the conv/pool stack.
    """
    widths = nt3_widths(params, n_features)
    total = 0
    channels = 1
    for (filters, kernel, _), (conv_out, _) in zip(params.conv, widths):
        per_position = channels * kernel * filters
        if params.locally_connected:
            total += conv_out * (per_position + filters)
        else:
            total += per_position + filters
        channels = filters
    width = channels * widths[-1][1]
    for units in (*params.dense, params.n_outputs(n_classes)):
        total += width * units + units
        width = units
    return total


class LocallyConnected1d(nn.Module):
    """A 1-D layer like Conv1d (valid padding) but with separate weights at every position.

    Weights ``[positions, in_channels * kernel, filters]``, biases ``[positions, filters]``
    (Keras' LocallyConnected1D). Implemented with ``unfold``: memory grows with positions x
    kernel x channels, which is fine for small widths but impractical at NT3's 60,483 features
    (the first layer alone would hold ~77 million weights per 64 filters).
    """

    def __init__(self, in_channels: int, filters: int, kernel: int, stride: int, in_width: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.positions = (in_width - kernel) // stride + 1
        self.weight = nn.Parameter(torch.empty(self.positions, in_channels * kernel, filters))
        self.bias = nn.Parameter(torch.empty(self.positions, filters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.unfold(2, self.kernel, self.stride)          # [B, C, P, K]
        patches = patches.permute(0, 2, 1, 3).flatten(2)         # [B, P, C*K]
        out = torch.einsum("bpf,pfo->bpo", patches, self.weight) + self.bias
        return out.transpose(1, 2)                               # [B, filters, P]


class NT3Net(nn.Module):
    """The NT3 network: ``[batch, features]`` -> ``[batch, outputs]`` logits."""

    def __init__(self, params: NT3Params, n_features: int, n_outputs: int):
        super().__init__()
        widths = nt3_widths(params, n_features)
        act = _ACTIVATIONS[params.activation]
        layers: list[nn.Module] = []
        channels, length = 1, n_features
        for (filters, kernel, stride), pool, (_, pooled) in zip(params.conv, params.pool, widths):
            if params.locally_connected:
                layers.append(LocallyConnected1d(channels, filters, kernel, stride, length))
            else:
                layers.append(nn.Conv1d(channels, filters, kernel, stride=stride))
            layers.append(act())
            if pool > 1:
                layers.append(nn.MaxPool1d(pool))
            channels, length = filters, pooled
        layers.append(nn.Flatten())
        width = channels * length
        for units in params.dense:
            layers += [nn.Linear(width, units), act()]
            if params.dropout > 0:
                layers.append(nn.Dropout(params.dropout))
            width = units
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)
        self.n_features = n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.unsqueeze(1))


def glorot_fans(module: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of a layer's weight as Keras' Glorot initialiser counts them.

    Locally connected layers count one position's receptive field (as a convolution would),
    not Keras' positions-multiplied fans, which would shrink the weights with the input width.
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv1d):
        kernel = module.kernel_size[0]
        return module.in_channels * kernel, module.out_channels * kernel
    if isinstance(module, LocallyConnected1d):
        fan_in = module.weight.shape[1]
        return fan_in, module.weight.shape[2] * module.kernel
    raise TypeError(f"no Glorot rule for {type(module).__name__}")


@torch.no_grad()
def init_glorot(model: nn.Module, generator: torch.Generator | None) -> None:
    """Glorot-uniform weights and zero biases, drawn from ``generator`` on its device.

    The generator lives on the model's device: a GPU draws NT3's 77 M weights far faster than
    a CPU (docs/performance.md). CPU runs stay reproducible bit for bit; a GPU run
    is reproducible for a given seed on the same kind of GPU, but its initial weights differ
    from the CPU draw of the same seed. On the 'meta' device nothing is drawn.
    """
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, LocallyConnected1d)):
            continue
        if module.bias is not None:
            module.bias.zero_()
        if module.weight.is_meta:
            continue
        fan_in, fan_out = glorot_fans(module)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        module.weight.uniform_(-bound, bound, generator=generator)


def build_nt3(params: NT3Params, n_features: int, n_classes: int, *, seed: int = 0,
              device: str | torch.device = "cpu") -> NT3Net:
    """Build an initialised NT3 network.

    Parameters
    ----------
    params
        Architecture (and variant: the abstaining one gets ``n_classes + 1`` outputs).
    n_features
        Input width (60,483 for the real data).
    n_classes
        Number of real classes ``k``.
    seed
        Seed of the weight initialisation (a local generator; the global RNG is untouched).
    device
        Where the weights live and are drawn ('cpu', 'cuda'), or 'meta' to build the structure
        without memory (weights left undrawn: for parameter counts and shape checks).

    Raises
    ------
    SpecError
        The input is too narrow for the conv/pool stack, or fewer than 2 classes.
    """
    if n_classes < 2:
        raise SpecError("data.n_classes", n_classes, "at least 2 classes",
                        reason="NT3 is a classifier")
    # Built on 'meta' first: torch's own layer initialisation would draw from (and advance)
    # the global RNG, and would be wasted work since Glorot init below replaces it.
    with torch.device("meta"):
        model = NT3Net(params, n_features, params.n_outputs(n_classes))
    if torch.device(device).type == "meta":
        return model
    model = model.to_empty(device=device)
    init_glorot(model, torch.Generator(device=device).manual_seed(seed))
    return model


class NT3Family(Family):
    """NT3 as a model family: K >= 1 trials through :class:`ClassifierStack`.

    Alone, a network runs as it is or, on the fast path, in its channels-last form
    (:class:`~genodl_core.models.nt3_fast.ChannelsLastNT3`), compiled. A pack of trials runs as
    one :class:`~genodl_core.models.nt3_fast.BatchedNT3`. Packable: ordinary convolutions and
    no dropout (dropout masks come from the global generator, which a stacked computation
    cannot split per trial the way separate runs draw them), and equal model, data, training,
    device and precision settings; seed and noise may differ.
    """

    single_switches = frozenset({"channels_last", "fused_optimizer", "eval_batch_size",
                                 "cudnn_benchmark", "compile", "bf16_inputs", "conv_blocks"})
    pack_switches = frozenset({"eval_batch_size", "cudnn_benchmark", "compile", "bf16_inputs",
                               "conv_kernel", "fused_update", "fused_activations"})

    def pack_key(self, spec: TrialSpec) -> str | None:
        params: NT3Params = spec.model.params
        if params.locally_connected or params.dropout > 0:
            return None
        return stacking_key(spec)

    def check(self, member: Member) -> None:
        dataset = member.dataset
        if dataset.task != "classification" or dataset.n_classes is None:
            raise DataError(f"NT3 needs classification data with n_classes set; got task="
                            f"{dataset.task!r}, n_classes={dataset.n_classes!r}")
        nt3_widths(member.spec.model.params, dataset.n_features)  # before moving any data
        check_classification(member, int(dataset.n_classes))

    def stack(self, members: Sequence[Member], plan: ExecutionPlan) -> ClassifierStack:
        params: NT3Params = members[0].spec.model.params
        dataset = members[0].dataset
        n_classes, n_features = int(dataset.n_classes), dataset.n_features
        nets = [build_nt3(params, n_features, n_classes, device=plan.device,
                          seed=derive_seed(m.spec.seed, "init")) for m in members]
        objectives = [_objective(params, m, n_classes) for m in members]
        flatten = params.conv[-1][0] * nt3_widths(params, n_features)[-1][1]
        return ClassifierStack(
            members, plan, n_classes=n_classes, nets=nets, run=_run_nt3,
            objectives=objectives, schedules=[schedule_of(m.spec.train) for m in members],
            extra=lambda t: {"variant": params.variant, "n_outputs": params.n_outputs(n_classes),
                             "flatten_width": flatten})


def _objective(params: NT3Params, member: Member, n_classes: int) -> CrossEntropyObjective:
    """A trial's objective: cross-entropy, or the abstention loss under its controller."""
    if params.variant != "abstaining":
        return CrossEntropyObjective()
    train = member.spec.train
    return abstention_objective(params.controller, n_classes,
                                alpha_controller=params.alpha_controller(),
                                dac=params.dac_schedule(), epochs=train.epochs,
                                batch_size=train.batch_size, n_val=len(member.dataset.x_val))


def _run_nt3(nets: Sequence[NT3Net], plan: ExecutionPlan) -> tuple[nn.Module, Callable]:
    """The module and forward of NT3 trials as the plan says (see :class:`NT3Family`)."""
    from genodl_core.models.nt3_fast import BatchedNT3, ChannelsLastNT3, supports_channels_last

    sw = plan.switches
    if len(nets) > 1:
        module: nn.Module = BatchedNT3(nets, conv_kernel=sw.conv_kernel,
                                       fuse_activations=sw.fused_activations).to(plan.device)
    elif sw.channels_last and supports_channels_last(nets[0]):
        module = ChannelsLastNT3(nets[0], blocks=sw.conv_blocks)
    else:
        module = nets[0]
    return module, torch.compile(module, dynamic=False) if sw.compile else module


MODELS.register("nt3", params=NT3Params, task="classification")(NT3Family())


__all__ = ["NT3Params", "NT3Net", "NT3Family", "LocallyConnected1d", "build_nt3",
           "nt3_param_count", "nt3_widths", "init_glorot"]
