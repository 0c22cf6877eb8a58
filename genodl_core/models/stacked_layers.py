"""Layers of K stacked trials (a pack): weights with a leading K axis, Glorot initialisation per
trial, grouped convolutions and batched dense layers.

A pack trains K small networks as one module so that a GPU runs one kernel per layer for all K
trials instead of K launches. The gene-pair CNN (:mod:`genodl_core.models.cnnc`) and the
histone-mark CNNs (:mod:`genodl_core.models.histone`) are both built on :class:`StackedLayers`:

- a convolution weight is ``[K, out, in, *kernel]`` and runs as one convolution with K groups
  (:func:`grouped_conv`: the input holds the K trials' channels side by side);
- a dense weight is ``[K, in, out]`` with a bias ``[K, 1, out]`` and runs as one batched matmul
  (:func:`stacked_linear`: ``[K, B, in] -> [K, B, out]``);
- trial ``t`` draws its weights from its own generator, convolutions then dense layers in order
  (:meth:`StackedLayers.glorot_`), so a trial gets the same numbers alone as in any pack;
- the dropout streams (a seed per trial and a step counter, see
  :mod:`genodl_core.training.hashed_dropout`) are buffers, stacked with the weights.

The parameter names (``conv_w``, ``conv_b``, ``dense_w``, ``dense_b``) are those of the families'
earlier modules, so their checkpoints load unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def glorot_bound(fan_in: int, fan_out: int) -> float:
    """Keras' Glorot-uniform limit ``sqrt(6 / (fan_in + fan_out))`` (fans include the
    receptive field of a convolution)."""
    return math.sqrt(6.0 / (fan_in + fan_out))


def stacked_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """K dense layers at once: ``h [K, B, in] @ weight [K, in, out] + bias [K, 1, out]``.

    One batched matmul (with the bias added in the same kernel) rather than K launches.
    """
    return torch.baddbmm(bias, h, weight)


def grouped_conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 **options) -> torch.Tensor:
    """K trials' convolutions as one grouped convolution.

    ``h`` is ``[B, K * in, *spatial]`` (trial ``t``'s channels are block ``t``), ``weight``
    ``[K, out, in, *kernel]`` (1-D or 2-D kernels), ``bias`` ``[K, out]``; the result is
    ``[B, K * out, *spatial']``. ``options`` go to ``conv1d`` / ``conv2d`` (padding, dilation).

    Raises
    ------
    ValueError
        When the kernel is neither 1-D nor 2-D.
    """
    conv = {4: F.conv1d, 5: F.conv2d}.get(weight.dim())
    if conv is None:
        raise ValueError(f"stacked convolution weights are [K, out, in, *kernel] with a 1-D or "
                         f"2-D kernel; got shape {tuple(weight.shape)}")
    return conv(h, weight.flatten(0, 1), bias.flatten(), groups=weight.shape[0], **options)


class StackedLayers(nn.Module):
    """The weights and dropout streams of K stacked trials; families add their own forward.

    Subclasses call :meth:`add_conv` and :meth:`add_dense` in layer order from ``__init__``,
    and give :meth:`shape_args`, the arguments before ``k`` their ``__init__`` takes.
    """

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.conv_w, self.conv_b = nn.ParameterList(), nn.ParameterList()
        self.dense_w, self.dense_b = nn.ParameterList(), nn.ParameterList()
        # Dropout masks are a hash of (trial seed, step, layer, position): hashed_dropout.
        self.register_buffer("dropout_seeds", torch.zeros(k, dtype=torch.int64))
        self.register_buffer("dropout_step", torch.zeros((), dtype=torch.int64))

    def add_conv(self, out_channels: int, in_channels: int, kernel: Sequence[int]) -> None:
        """One convolution ``[K, out, in, *kernel]`` (weights drawn later), zero biases."""
        self.conv_w.append(nn.Parameter(torch.empty(self.k, out_channels, in_channels,
                                                    *kernel)))
        self.conv_b.append(nn.Parameter(torch.zeros(self.k, out_channels)))

    def add_dense(self, fan_in: int, units: Sequence[int]) -> None:
        """Dense layers of the given widths after ``fan_in`` inputs, zero biases."""
        for width in units:
            self.dense_w.append(nn.Parameter(torch.empty(self.k, fan_in, width)))
            self.dense_b.append(nn.Parameter(torch.zeros(self.k, 1, width)))
            fan_in = width

    @torch.no_grad()
    def glorot_(self, seeds: Sequence[int]) -> None:
        """Glorot-uniform weights (Keras' fans); trial ``t`` draws from a CPU generator seeded
        with ``seeds[t]``, convolutions then dense layers, so its numbers do not depend on the
        pack or the device.

        Raises
        ------
        ValueError
            When the number of seeds is not K.
        """
        if len(seeds) != self.k:
            raise ValueError(f"{len(seeds)} seeds for {self.k} stacked trials; give one per trial")
        for t, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed)
            for w in self.conv_w:
                out, inp, field = w.shape[1], w.shape[2], math.prod(w.shape[3:])
                _draw(w, t, glorot_bound(inp * field, out * field), gen)
            for w in self.dense_w:
                _draw(w, t, glorot_bound(w.shape[1], w.shape[2]), gen)

    def shape_args(self) -> tuple:
        """The ``__init__`` arguments before ``k`` that rebuild a module of this shape."""
        raise NotImplementedError

    @classmethod
    def stack(cls, nets: Sequence["StackedLayers"]) -> "StackedLayers":
        """One module holding the weights and dropout streams of single-trial nets."""
        first = nets[0]
        out = cls(*first.shape_args(), k=len(nets)).to(first.conv_w[0].device)
        out.load_trials(nets)
        return out

    @torch.no_grad()
    def load_trials(self, nets: Sequence["StackedLayers"]) -> None:
        """Copy the weights and dropout streams of K single-trial (or smaller) modules of the
        same shape into this one, in order; the step counter is the first module's."""
        own = dict(self.named_parameters())
        for name, p in own.items():
            p.copy_(torch.cat([dict(n.named_parameters())[name] for n in nets]))
        self.dropout_seeds.copy_(torch.cat([n.dropout_seeds for n in nets]))
        self.dropout_step.copy_(nets[0].dropout_step)


def _draw(w: torch.Tensor, t: int, bound: float, gen: torch.Generator) -> None:
    """Trial ``t``'s slice of ``w`` uniform in ``[-bound, bound]``, drawn on the CPU."""
    w[t].copy_(torch.empty(w.shape[1:]).uniform_(-bound, bound, generator=gen))


__all__ = ["StackedLayers", "glorot_bound", "grouped_conv", "stacked_linear"]
