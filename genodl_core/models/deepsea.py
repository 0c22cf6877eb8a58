"""DNA sequence -> chromatin features: DeepSEA, DanQ and seed 003's convolution + transformer.

Three model families on multi-label DNA data (uint8 codes ``[n, L]``, labels ``[n, T]``),
trained by the engine through :class:`~genodl_core.training.multilabel.MultiLabelStack` with
binary cross-entropy on logits; mixed precision comes from the spec's ``precision`` (bf16
autocast on CUDA).

- ``deepsea`` (Zhou & Troyanskaya 2015): one-hot -> Conv(320, 8) -> ReLU -> MaxPool 4 ->
  Dropout 0.2 -> Conv(480, 8) -> ReLU -> MaxPool 4 -> Dropout 0.2 -> Conv(960, 8) -> ReLU ->
  Dropout 0.5 -> Linear(960 x 53 -> 925) -> ReLU -> Linear(T). The reference trainer's max-norm
  kernel constraint and L1 penalty on the output are left out (plain weight decay instead).
- ``danq`` (Quang & Xie 2016): one-hot -> Conv(320, 26) -> ReLU -> MaxPool 13 -> Dropout 0.2 ->
  BiLSTM(320 + 320) -> Dropout 0.5 -> Linear(-> 925) -> ReLU -> Linear(T).
- ``deepsea_transformer`` (seed 003): embedding of the bases (64) -> a wide 1-D ResNet of
  pre-activation bottleneck blocks whose 3-wide convolution has stride 2 (no pooling) ->
  a transformer encoder (learned positions; attention through
  ``torch.nn.functional.scaled_dot_product_attention``) -> the transformer output and, through
  a skip, the ResNet output, concatenated and flattened -> Linear(512) -> ReLU -> Linear(T).
  Its output bias starts at the log-odds of the training prevalence and its learning rate
  warms up linearly over ``warmup_steps`` steps. The seed used Transformer-XL (relative
  positions, segment memory); this port keeps a plain encoder, which at 1,000 bp (125
  positions after the ResNet) needs no memory.

A one-hot N (code 4) is 0.25 in every channel (DeepSEA's convention). Weights are torch's
default initialisation drawn under the trial's init seed (``derive_seed(seed, "init")``) with
the global generator restored afterwards. These families train alone (no packing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.data.dna_synthetic import target_groups
from genodl_core.errors import SpecError
from genodl_core.registry import MODELS
from genodl_core.spec import derive_seed
from genodl_core.training.family import Family, Member
from genodl_core.training.multilabel import (MultiLabelStack, check_multilabel,
                                             prevalence_bias)
from genodl_core.training.plan import ExecutionPlan
from genodl_core.training.schedules import schedule_of
from genodl_core.typed import check_range

Resident = Literal["auto", "yes", "no"]


def _check_common(where: str, dropout: Sequence[float], warmup_steps: int,
                  prefetch: int = 0) -> None:
    for i, rate in enumerate(dropout):
        check_range(where, f"dropout[{i}]", rate, 0.0, 1.0, hi_open=True)
    check_range(where, "warmup_steps", warmup_steps, 0)
    check_range(where, "prefetch", prefetch, 0)


@dataclass(frozen=True)
class DeepSEAParams:
    """DeepSEA's architecture (defaults: the paper's; ``dense`` 925 as published)."""

    conv: tuple[int, int, int] = (320, 480, 960)
    kernel: int = 8
    pool: int = 4
    dropout: tuple[float, float, float] = (0.2, 0.2, 0.5)
    dense: int = 925
    prevalence_bias: bool = False
    warmup_steps: int = 0
    #: Keep the training split on the device ('auto': when it fits), or stream batches.
    resident: Resident = "auto"
    #: Streamed batches read ahead on a background thread (0: each step reads its own).
    prefetch: int = 2

    def validate(self, where: str) -> None:
        for i, width in enumerate(self.conv):
            check_range(where, f"conv[{i}]", width, 1)
        check_range(where, "kernel", self.kernel, 1)
        check_range(where, "pool", self.pool, 1)
        check_range(where, "dense", self.dense, 1)
        _check_common(where, self.dropout, self.warmup_steps, self.prefetch)


@dataclass(frozen=True)
class DanQParams:
    """DanQ's architecture (defaults: the paper's)."""

    filters: int = 320
    kernel: int = 26
    pool: int = 13
    lstm: int = 320
    dropout: tuple[float, float] = (0.2, 0.5)
    dense: int = 925
    prevalence_bias: bool = False
    warmup_steps: int = 0
    resident: Resident = "auto"
    prefetch: int = 2

    def validate(self, where: str) -> None:
        for name in ("filters", "kernel", "pool", "lstm", "dense"):
            check_range(where, name, getattr(self, name), 1)
        _check_common(where, self.dropout, self.warmup_steps, self.prefetch)


@dataclass(frozen=True)
class TransformerParams:
    """Seed 003's model (defaults: its Table 1, with a plain encoder for Transformer-XL)."""

    embedding: int = 64
    #: Output channels of the ResNet blocks (each halves the length).
    blocks: tuple[int, ...] = (128, 256, 256)
    #: Width of a block's middle (3-wide) convolution = input channels x expansion / 4.
    expansion: int = 16
    layers: int = 6
    heads: int = 4
    head_dim: int = 16
    inner: int = 256
    hidden: int = 512
    dropout: float = 0.1
    prevalence_bias: bool = True
    warmup_steps: int = 500
    resident: Resident = "auto"
    prefetch: int = 2

    def validate(self, where: str) -> None:
        for name in ("embedding", "expansion", "heads", "head_dim", "inner", "hidden"):
            check_range(where, name, getattr(self, name), 1)
        check_range(where, "layers", self.layers, 0)
        if not self.blocks:
            raise SpecError(f"{where}.blocks", [], "at least one block width",
                            reason="empty ResNet")
        for i, width in enumerate(self.blocks):
            check_range(where, f"blocks[{i}]", width, 1)
        _check_common(where, (self.dropout,), self.warmup_steps, self.prefetch)


class OneHot(nn.Module):
    """uint8 codes ``[B, L]`` -> float ``[B, 4, L]`` one-hot; N (code 4) is 0.25 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        table = torch.cat([torch.eye(4), torch.full((1, 4), 0.25)])
        self.register_buffer("table", table, persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table[codes.long()].transpose(1, 2)


def _too_short(where: str, length: int, needed: int) -> SpecError:
    return SpecError(f"{where}", length, f"sequences of at least {needed} bases",
                     reason="the convolution and pooling stack leaves no positions")


class DeepSEANet(nn.Module):
    def __init__(self, p: DeepSEAParams, length: int, n_targets: int):
        super().__init__()
        c1, c2, c3 = p.conv
        w = (length - p.kernel + 1) // p.pool
        w = (w - p.kernel + 1) // p.pool
        w = w - p.kernel + 1
        if w < 1:
            raise _too_short("data.length", length, p.kernel * (1 + p.pool + p.pool ** 2))
        self.flatten_width = c3 * w
        self.net = nn.Sequential(
            OneHot(), nn.Conv1d(4, c1, p.kernel), nn.ReLU(), nn.MaxPool1d(p.pool),
            nn.Dropout(p.dropout[0]), nn.Conv1d(c1, c2, p.kernel), nn.ReLU(),
            nn.MaxPool1d(p.pool), nn.Dropout(p.dropout[1]), nn.Conv1d(c2, c3, p.kernel),
            nn.ReLU(), nn.Dropout(p.dropout[2]), nn.Flatten(),
            nn.Linear(self.flatten_width, p.dense), nn.ReLU(), nn.Linear(p.dense, n_targets))

    #: Run the convolutions as ``1 x k`` conv2d on channels-last tensors (the plan's
    #: ``channels_last``): cuDNN's (and oneDNN's) NHWC kernels, no layout conversion per layer.
    channels_last: bool = False

    @property
    def output(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return self.net(codes)
        from genodl_core.models.nt3_fast import run_channels_last

        one_hot = self.net[0](codes).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        head = next(i for i, m in enumerate(self.net) if isinstance(m, nn.Flatten)) + 1
        return dense_aligned(self.net[head:], run_channels_last(self.net[1:head], one_hot))


#: Matrix sides that tensor-core GEMM kernels take without falling back (bf16: 16 bytes).
ALIGNMENT = 8


def dense_aligned(layers: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
    """``layers`` (Linear and ReLU only) on ``h`` with every width padded to a multiple of
    :data:`ALIGNMENT`; the same function as running them as they are.

    Why: DeepSEA's published dense width (925) makes cuBLAS run the dense layer's backward
    GEMMs in an unaligned fallback kernel, which a profile on the GPU found slower than all
    the convolutions' backward together (docs/deepsea.md). Zero rows appended to a weight give
    zero outputs, which ReLU keeps at zero and the next layer's zero columns ignore, so the
    padded chain computes the same outputs and the real weights get the same gradients; the
    padding copies fuse with the weights' cast to bf16 in a compiled forward. Other layers
    (dropout would draw masks for the padding) make the chain run as it is.
    """
    if not all(isinstance(m, (nn.Linear, nn.ReLU)) for m in layers):
        for m in layers:
            h = m(h)
        return h
    pad_in, width = 0, h.shape[-1]
    for m in layers:
        if isinstance(m, nn.Linear):
            width = m.out_features
            pad_out = -width % ALIGNMENT
            h = F.linear(h, F.pad(m.weight, (0, pad_in, 0, pad_out)),
                         None if m.bias is None else F.pad(m.bias, (0, pad_out)))
            pad_in = pad_out
        else:
            h = m(h)
    return h[..., :width] if pad_in else h


class DanQNet(nn.Module):
    def __init__(self, p: DanQParams, length: int, n_targets: int):
        super().__init__()
        w = (length - p.kernel + 1) // p.pool
        if w < 1:
            raise _too_short("data.length", length, p.kernel + p.pool - 1)
        self.conv = nn.Sequential(OneHot(), nn.Conv1d(4, p.filters, p.kernel), nn.ReLU(),
                                  nn.MaxPool1d(p.pool, p.pool), nn.Dropout(p.dropout[0]))
        self.lstm = nn.LSTM(p.filters, p.lstm, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(p.dropout[1]), nn.Flatten(),
                                  nn.Linear(w * 2 * p.lstm, p.dense), nn.ReLU(),
                                  nn.Linear(p.dense, n_targets))

    @property
    def output(self) -> nn.Linear:
        return self.head[-1]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.conv(codes).transpose(1, 2)        # [B, positions, filters]
        h, _ = self.lstm(h)
        return self.head(h)


class Bottleneck(nn.Module):
    """Pre-activation bottleneck (BN-ReLU-conv 1, BN-ReLU-conv 3 stride 2, BN-ReLU-conv 1)
    with a strided 1-wide projection on the identity path; halves the length."""

    def __init__(self, c_in: int, c_out: int, expansion: int):
        super().__init__()
        mid = max(1, c_in * expansion // 4)
        self.body = nn.Sequential(
            nn.BatchNorm1d(c_in), nn.ReLU(), nn.Conv1d(c_in, mid, 1, bias=False),
            nn.BatchNorm1d(mid), nn.ReLU(), nn.Conv1d(mid, mid, 3, stride=2, padding=1,
                                                      bias=False),
            nn.BatchNorm1d(mid), nn.ReLU(), nn.Conv1d(mid, c_out, 1, bias=False))
        self.skip = nn.Conv1d(c_in, c_out, 1, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer; attention via ``F.scaled_dot_product_attention`` (flash or
    memory-efficient kernels on GPUs)."""

    def __init__(self, d_model: int, heads: int, head_dim: int, inner: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, inner), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(inner, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, self.head_dim).permute(
            2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, -1)))
        return x + self.drop(self.ff(self.norm2(x)))


class TransformerNet(nn.Module):
    def __init__(self, p: TransformerParams, length: int, n_targets: int):
        super().__init__()
        positions = length
        for _ in p.blocks:
            positions = (positions + 1) // 2
        self.embed = nn.Embedding(5, p.embedding)
        widths = (p.embedding, *p.blocks)
        self.resnet = nn.Sequential(*[Bottleneck(a, b, p.expansion)
                                      for a, b in zip(widths[:-1], widths[1:])],
                                    nn.BatchNorm1d(widths[-1]), nn.ReLU())
        d = widths[-1]
        self.position = nn.Parameter(torch.zeros(1, positions, d))
        self.encoder = nn.Sequential(*[EncoderLayer(d, p.heads, p.head_dim, p.inner, p.dropout)
                                       for _ in range(p.layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * d * positions, p.hidden),
                                  nn.ReLU(), nn.Dropout(p.dropout),
                                  nn.Linear(p.hidden, n_targets))

    @property
    def output(self) -> nn.Linear:
        return self.head[-1]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.resnet(self.embed(codes.long()).transpose(1, 2)).transpose(1, 2)  # [B, P, d]
        z = self.norm(self.encoder(h + self.position))
        return self.head(torch.cat([h, z], dim=2))


#: model name -> (params class, network class)
ARCHITECTURES = {"deepsea": (DeepSEAParams, DeepSEANet), "danq": (DanQParams, DanQNet),
                 "deepsea_transformer": (TransformerParams, TransformerNet)}


def build_net(name: str, params, length: int, n_targets: int, *, seed: int = 0) -> nn.Module:
    """An initialised network; the weights depend only on ``seed`` (global RNG restored)."""
    net_cls = ARCHITECTURES[name][1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return net_cls(params, length, n_targets)


def param_count(name: str, params, length: int, n_targets: int) -> int:
    """Trainable parameters of a network (built on the 'meta' device: no memory)."""
    with torch.device("meta"):
        net = ARCHITECTURES[name][1](params, length, n_targets)
    return sum(p.numel() for p in net.parameters())


class DNAFamily(Family):
    """A multi-label DNA model family (one trial at a time; see the module docstring)."""

    single_switches = frozenset({"cudnn_benchmark", "fused_optimizer"})

    def __init__(self, name: str):
        self.name = name

    def switches(self, pack_size: int, device: str = "cuda") -> frozenset[str]:
        # Channels-last convolutions, torch.compile and captured steps were measured faster
        # for DeepSEA on the GPU (docs/deepsea.md); on a CPU it keeps its Conv1d layers, and
        # DanQ and the transformer keep theirs everywhere (an untested compilation of their
        # LSTM and attention must not be what fails a long GPU trial).
        used = super().switches(pack_size, device)
        if self.name == "deepsea" and device == "cuda":
            used = used | {"channels_last", "compile", "step_graphs"}
        return used

    def check(self, member: Member) -> None:
        check_multilabel(member)

    def stack(self, members: Sequence[Member], plan: ExecutionPlan) -> MultiLabelStack:
        (member,) = members
        params = member.spec.model.params
        ds = member.dataset
        length, n_targets = ds.x_train.shape[1], ds.y_train.shape[1]
        net = build_net(self.name, params, length, n_targets,
                        seed=derive_seed(member.spec.seed, "init"))
        if isinstance(net, DeepSEANet):
            net.channels_last = plan.switches.channels_last
        if params.prevalence_bias:
            with torch.no_grad():
                net.output.bias.copy_(prevalence_bias(ds.y_train))
        return MultiLabelStack(member, plan, net=net, schedule=schedule_of(member.spec.train),
                               warmup_steps=params.warmup_steps, resident=params.resident,
                               prefetch=params.prefetch,
                               groups=ds.info.get("target_groups") or target_groups(
                                   ds.target_ids),
                               extra=lambda: {"model": self.name, "sequence_length": length})


for _name, (_params, _) in ARCHITECTURES.items():
    MODELS.register(_name, params=_params, task="multilabel")(DNAFamily(_name))


__all__ = ["DeepSEAParams", "DanQParams", "TransformerParams", "DeepSEANet", "DanQNet",
           "TransformerNet", "DNAFamily", "build_net", "param_count", "ARCHITECTURES"]
