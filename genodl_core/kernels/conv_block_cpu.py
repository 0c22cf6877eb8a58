"""Convolution + ReLU + max-pooling as one autograd block on ``[batch, length, channels]``.

Why: on a CPU, oneDNN's weight gradient of NT3's long 1-D convolutions is its slowest part
(a wide ``1 x k`` kernel over ~6,000 positions runs at well under half the rate of its forward
pass), and mixing memory layouts between the convolution, the ReLU and the pooling adds copies
and slow strided element-wise passes. This block keeps every tensor in one layout
(channels-last: ``[B, L, C]`` in memory) and writes its own backward:

- input gradient: oneDNN's own (``convolution_backward`` on channels-last tensors, fast);
- weight gradient: ``dW[:, :, k] = sum_b dY_b^T X_b[k:k+L']``, one batched matmul per kernel
  tap on views of the saved input (no unfolded copy); for one input channel the unfolded input
  is small and one batched matmul takes all taps;
- ReLU and pooling: the pooled maximum keeps its argument indices, and the backward scatters
  the gradient there and masks it by the ReLU's output, both in the same layout.

Every step is deterministic for a given thread count, so fp32 CPU results stay bit-for-bit
reproducible (what the plan promises for CPU). The measured effect is in docs/performance.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as_nchw_view(x: torch.Tensor) -> torch.Tensor:
    """``[B, L, C]`` (contiguous) as the channels-last ``[B, C, 1, L]`` view oneDNN takes."""
    return x.permute(0, 2, 1).unsqueeze(2)


def _as_nlc(y: torch.Tensor) -> torch.Tensor:
    """A ``[B, C, 1, L]`` tensor as contiguous ``[B, L, C]`` (a view when channels-last)."""
    b, c, _, length = y.shape
    return y.permute(0, 2, 3, 1).reshape(b, length, c)


class ConvReluPool(torch.autograd.Function):
    """``maxpool(relu(conv1d(x, w, b)), pool)`` for ``x`` ``[B, L, C]`` -> ``[B, L'', CO]``.

    Stride 1, no padding; ``pool`` is the max-pooling window and stride (1: none), with
    ``MaxPool1d``'s floor rule. ``w`` is a ``Conv1d`` weight ``[CO, C, k]``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                pool: int) -> torch.Tensor:
        x = x.contiguous()
        w4 = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        y = _as_nlc(F.conv2d(_as_nchw_view(x), w4, bias)).relu_()
        indices = None
        out = y
        if pool > 1:
            # ATen's channels-last pooling (vectorised over channels); its indices are
            # positions along the length.
            out4, idx4 = F.max_pool2d(_as_nchw_view(y), (1, pool), (1, pool),
                                      return_indices=True)
            out, indices = _as_nlc(out4), _as_nlc(idx4)
        ctx.pool = pool
        ctx.has_bias = bias is not None
        ctx.shape = y.shape
        # Pooled: the backward needs only the window maxima (the ReLU's mask at the positions
        # the gradient reaches), not the full activation.
        ctx.save_for_backward(x, w4, out if pool > 1 else y, indices)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w4, y, indices = ctx.saved_tensors
        pool = ctx.pool
        batch, length, channels = ctx.shape
        if pool > 1:
            # The gradient reaches only each window's maximum, where the ReLU's mask is that
            # maximum's sign: mask the small pooled gradient, then scatter it.
            grad = torch.ops.aten.threshold_backward(grad, y, 0)  # y: the maxima here
            dy = grad.new_zeros(batch, length, channels).scatter_(1, indices, grad)
        else:
            dy = torch.ops.aten.threshold_backward(grad, y, 0).contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.convolution_backward(
                _as_nchw_view(dy), _as_nchw_view(x), w4, None, [1, 1], [0, 0], [1, 1], False,
                [0, 0], 1, [True, False, False])[0]
            dx = _as_nlc(dx)
        if ctx.needs_input_grad[1]:
            dw = weight_grad(x, dy, w4.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 1))
        return dx, dw, db, None


def weight_grad(x: torch.Tensor, dy: torch.Tensor, kernel: int) -> torch.Tensor:
    """The ``Conv1d`` weight gradient ``[CO, C, k]`` from ``x`` ``[B, L, C]`` and ``dy``
    ``[B, L', CO]`` (``L' = L - k + 1``), as batched matmuls (see the module docstring)."""
    batch, length, channels = x.shape
    out_len, out_channels = dy.shape[1], dy.shape[2]
    dyt = dy.transpose(1, 2)  # [B, CO, L']
    if channels == 1:
        taps = x.view(batch, length).unfold(1, kernel, 1)  # [B, L', k], small for one channel
        return torch.bmm(dyt, taps).sum(0).unsqueeze(1)
    dw = torch.empty(out_channels, channels, kernel, dtype=dy.dtype, device=dy.device)
    for k in range(kernel):
        dw[:, :, k] = torch.bmm(dyt, x[:, k:k + out_len]).sum(0)
    return dw


def conv_relu_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   pool: int = 1) -> torch.Tensor:
    """:class:`ConvReluPool` as a function (``x`` ``[B, L, C]`` -> ``[B, L'', CO]``)."""
    return ConvReluPool.apply(x, weight, bias, pool)


__all__ = ["ConvReluPool", "conv_relu_pool", "weight_grad"]
