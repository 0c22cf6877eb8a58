"""Dropout masks for packs, as a hash of (trial seed, step, layer, position).

A pack of K trials would need K random generators per dropout layer and step (K launches each,
what packs exist to avoid) to give every trial its own stream. Instead each mask is SplitMix64's
finaliser applied to the trial's seed, the step counter, the layer and the element's position,
computed for all K trials in a few element-wise kernels. A trial therefore draws the same masks
alone as in any pack, and a resumed trial (its step counter restored) the same as uninterrupted.
"""

from __future__ import annotations

import torch

#: SplitMix64's increment and finaliser constants, as signed int64 (tensor products wrap).
GOLDEN = 0x9E3779B97F4A7C15 - 2**64
LAYER = 0x632BE59BD9B4E019 - 2**64
MIX1 = 0xBF58476D1CE4E5B9 - 2**64
MIX2 = 0x94D049BB133111EB - 2**64


def wrap(value: int) -> int:
    """A Python integer wrapped to int64, as a tensor product would wrap it."""
    return (value + 2**63) % 2**64 - 2**63


def mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (products wrap; shifts made logical by masks)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def dropout_scale(h: torch.Tensor, rate: float, seeds: torch.Tensor, step: torch.Tensor,
                  layer: int = 0) -> torch.Tensor:
    """Inverted-dropout scale ``[K, B, F]`` for activations ``h [K, B, F]``: 0 where dropped,
    ``1 / (1 - rate)`` where kept.

    ``seeds [K]`` are the trials' dropout seeds (int64), ``step`` the step counter (a 0-d
    int64 tensor, advanced by the caller), ``layer`` tells a network's dropout layers apart.
    """
    keep = 1.0 - rate
    k, batch, width = h.shape
    base = mix(seeds + (step * GOLDEN + wrap(layer * LAYER))).view(k, 1, 1)
    position = torch.arange(batch * width, device=h.device).view(1, batch, width)
    bits = (mix(base + position) >> 40) & 0xFFFFFF
    return (bits < int(keep * (1 << 24))).to(h.dtype) / keep


__all__ = ["dropout_scale", "mix", "wrap"]
