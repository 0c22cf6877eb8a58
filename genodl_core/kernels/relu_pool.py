"""ReLU followed by max-pooling as one operation with a cheap backward, for channels-last tensors.

Why: after NT3's second convolution the activations of a pack of trials are about 1 GB
(16 samples x 8 trials x 64 channels x 60,455 positions in bf16), and every elementwise pass
over them reads or writes all of that memory. ``max_pool2d(relu(x))`` as two torch
operations keeps the ReLU's output for its backward and, in the backward, writes the pool's
gradient and then reads it again with that output for the ReLU's. Here the forward reads ``x``
once and keeps, per output, only which position of its window won (one byte; -1 when the
maximum was not positive, so no gradient flows), and the backward writes the input gradient
in one pass from that byte and the pooled gradient. Under ``torch.compile`` each direction is
one fused pass (the maximum is a running one over the window's positions, pointwise over the
windows: a reduction over the strided window measured far slower).

Same values and gradients as ``max_pool2d(relu(x + bias), (1, pool))``: ``relu`` and ``max``
commute, a per-channel bias does not change which position wins, and the gradient goes to the
first maximal position of a window (what torch's max-pooling does), through the ReLU only
where that maximum is positive. Positions past the last whole window get no gradient, as with
max-pooling's floor mode. One difference: a NaN
wins its window only in the window's first position (torch's max-pool returns any NaN);
checking every position measured slower per pack step, and NaN activations come from NaN
weights or inputs, which the loss check and the loaders' finiteness checks already catch.
Figures in docs/performance.md ("NT3 packs: the ReLUs fused").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Largest window whose winning position fits the one-byte code.
MAX_POOL = 127


class _ReluMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, pool: int, bias: torch.Tensor | None) -> torch.Tensor:
        b, c, _, length = x.shape
        windows = length // pool
        rows = x.permute(0, 2, 3, 1)[:, :, :windows * pool]          # [B, 1, L', C]
        taps = rows.reshape(b, 1, windows, pool, c).unbind(3)
        # A running maximum over the window's positions (strictly greater: the first wins),
        # pointwise over [B, 1, windows, C], so a compiler makes it one coalesced pass.
        top, winner = taps[0], torch.zeros_like(taps[0], dtype=torch.int8)
        for tap, value in enumerate(taps[1:], start=1):
            better = value > top
            top = torch.where(better, value, top)
            winner = torch.where(better, tap, winner)
        if bias is not None:   # a per-channel constant: the same position wins
            wide = torch.promote_types(x.dtype, torch.float32)
            top = (top.to(wide) + bias.to(wide)).to(x.dtype)
        code = torch.where(top > 0, winner, -1)
        ctx.save_for_backward(code)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.length, ctx.pool = length, pool
        ctx.layout = x.stride() if x.is_contiguous(memory_format=torch.channels_last) else None
        return top.clamp_min(0).permute(0, 3, 1, 2)                  # [B, C, 1, windows]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (code,) = ctx.saved_tensors
        b, _, windows, c = code.shape
        pool = ctx.pool
        taps = torch.arange(pool, device=code.device, dtype=torch.int8).view(pool, 1)
        spread = torch.where(code.unsqueeze(3) == taps,
                             grad.permute(0, 2, 3, 1).unsqueeze(3), 0)   # [B, 1, W, pool, C]
        rows = F.pad(spread.reshape(b, 1, windows * pool, c),
                     (0, 0, 0, ctx.length - windows * pool))
        grad_bias = None
        if ctx.bias_dtype is not None:
            # From the pooled gradient: a tenth of the reads of summing the input gradient.
            grad_bias = torch.where(code >= 0, grad.permute(0, 2, 3, 1), 0).sum(
                (0, 1, 2), dtype=torch.promote_types(grad.dtype, torch.float32)
            ).to(ctx.bias_dtype)
        grad_x = rows.permute(0, 3, 1, 2)
        if ctx.layout is not None:
            # Written into a buffer with the input's strides: left to itself a compiler may
            # give the size-1 dimension another stride, and cuDNN's backward then copies the
            # whole gradient into a channels-last one, a pass over it every step.
            out = grad_x.new_empty_strided(grad_x.shape, ctx.layout)
            grad_x = out.copy_(grad_x)
        return grad_x, None, grad_bias


def relu_max_pool(x: torch.Tensor, pool: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``max_pool2d(relu(x + bias), (1, pool))``: ``[B, C, 1, L]`` -> ``[B, C, 1, L // pool]``.

    ``bias`` ``[C]`` (optional) is the preceding convolution's, taken out of it: added after
    the maximum (one addition per window instead of per position), its gradient summed from
    the pooled gradient. Both the result and the input gradient have ``x``'s channels-last
    layout when ``x`` has it.

    Raises
    ------
    ValueError
        ``pool`` outside ``1 .. MAX_POOL`` or longer than the sequence.
    """
    if not 1 <= pool <= min(MAX_POOL, x.shape[-1]):
        raise ValueError(f"pool={pool} outside 1..{min(MAX_POOL, x.shape[-1])} "
                         f"(the window must fit the {x.shape[-1]} positions and a one-byte code)")
    return _ReluMaxPool.apply(x, pool, bias)


__all__ = ["relu_max_pool", "MAX_POOL"]
