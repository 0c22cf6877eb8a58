"""Implicit-GEMM 1-D convolution on channels-last tensors, forward and backward, in Triton.

Why: NT3's second convolution (64 -> 64 channels, kernel 10, 60,455 positions) is most of a
training step, and cuDNN's kernels for it measured well below the GPU's bf16 matrix
rate. As a matrix product it is ``[positions, taps x channels] @ [taps x channels, filters]``;
materialising the left operand (im2col) would move ten times the activations, so each program
here loads the ``taps`` shifted windows of its block of positions straight from the input
(neighbouring windows overlap and hit the cache) and accumulates one ``dot`` per block of the
reduction. The same kernel computes the input gradient (a full convolution of the output
gradient with the flipped filters: a negative shift and bounds masks instead of padding); the
weight gradient is a long reduction over positions, split into chunks whose partial sums are
added in a fixed order, so results are deterministic. Figures: docs/performance.md.

Layout: activations are ``[batch, positions, groups * channels]`` (what a channels-last
``[B, C, 1, L]`` tensor is in memory), weights the ``Conv1d`` ones ``[groups * filters,
channels, taps]``. ``groups`` packs several independent trials into one launch (trial ``g`` owns
channels ``g*C .. g*C + C - 1``), as :class:`~genodl_core.models.nt3_fast.BatchedNT3` does.
Stride 1, no padding, no dilation: what NT3 uses; :func:`supports` says which convolutions fit.

Public entry point: :func:`conv1d_nlc` (differentiable; a ``torch.library`` custom op, so
``torch.compile`` treats it as one opaque node). Tests run the kernels through Triton's
interpreter on CPU in fp32; on a GPU they run compiled, normally with bf16 activations.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genodl_core.kernels import interpreting

#: Most rows (positions) of the weight-gradient reduction handled by one program; its partial
#: sums are then added by torch in a fixed order. Smaller chunks are used when fewer programs
#: than :data:`WGRAD_PROGRAMS` would otherwise share the GPU.
WGRAD_CHUNK = 4096
#: Programs the weight-gradient grid aims for (a few per multiprocessor keep loads in flight).
WGRAD_PROGRAMS = 2048


#: Triton's CPU interpreter (used by the tests) cannot time configurations: it gets the first.
_INTERPRETED = interpreting()


def _configs(shapes: tuple[tuple[int, int, int], ...]) -> list[triton.Config]:
    configs = [triton.Config({"BM": bm}, num_warps=w, num_stages=s) for bm, w, s in shapes]
    return configs[:1] if _INTERPRETED else configs


def _fwd_configs() -> list[triton.Config]:
    return _configs(((128, 4, 3), (128, 8, 3), (256, 8, 3), (64, 4, 4), (128, 4, 4)))


def _wgrad_configs() -> list[triton.Config]:
    # Two warps measured fastest for NT3's first convolution in a pack (of the tiles, warps
    # and stages timed); see docs/performance.md.
    return _configs(((64, 2, 3), (64, 2, 4), (128, 2, 2), (64, 4, 3)))


@triton.autotune(configs=_fwd_configs(), key=["L_out", "C", "R", "CO", "G"])
@triton.jit
def _taps_kernel(src, w, bias, out, L_src, L_out, shift,
                 s_n, s_l, s_g, o_n, o_l, o_g, G,
                 C: tl.constexpr, R: tl.constexpr, CO: tl.constexpr, BR: tl.constexpr,
                 HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BM: tl.constexpr):
    """``out[n, m, g, :] = bias[g] + sum_r src[n, m + r // C + shift, g, r % C] * w[g, r, :]``.

    Positions outside ``[0, L_src)`` read as zero (the input gradient's implicit padding).
    With ``RELU`` the result is ``max(out, 0)``.
    """
    # Groups vary fastest over the programs: those in flight together write whole rows of
    # ``out`` (a row holds every group's channels) rather than one group's slice of many rows.
    pid = tl.program_id(0)
    pid_m = pid // G
    g = (pid % G).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_o = tl.arange(0, CO)
    src_base = src + n * s_n + g * s_g
    w_base = w + g * (R * CO)
    row_ok = offs_m < L_out
    acc = tl.zeros((BM, CO), dtype=tl.float32)
    if BR == C:
        # One tap per block: channels contiguous, row-only masks, so loads stay vectorised.
        offs_c = tl.arange(0, BR)
        for tap in range(0, R // C):
            pos = offs_m + tap + shift
            ok = row_ok & (pos >= 0) & (pos < L_src)
            a = tl.load(src_base + pos[:, None] * s_l + offs_c[None, :], mask=ok[:, None],
                        other=0.0)
            b = tl.load(w_base + (tap * C + offs_c)[:, None] * CO + offs_o[None, :])
            acc = tl.dot(a, b, acc)
    else:
        # Few channels (the first convolution): a block spans several taps, padded to BR.
        for r0 in range(0, R, BR):
            r = r0 + tl.arange(0, BR)
            pos = offs_m[:, None] + (r // C)[None, :] + shift
            ok = row_ok[:, None] & (r < R)[None, :] & (pos >= 0) & (pos < L_src)
            a = tl.load(src_base + pos * s_l + (r % C)[None, :], mask=ok, other=0.0)
            b = tl.load(w_base + r[:, None] * CO + offs_o[None, :], mask=(r < R)[:, None],
                        other=0.0)
            acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(bias + g * CO + offs_o).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    dst = out + n * o_n + g * o_g + offs_m[:, None] * o_l + offs_o[None, :]
    tl.store(dst, acc.to(out.dtype.element_ty), mask=row_ok[:, None])


@triton.autotune(configs=_wgrad_configs(), key=["L_out", "C", "R", "CO", "G"])
@triton.jit
def _wgrad_kernel(src, dy, out, w, bias, part, part_b, L_out, chunk, n_chunks,
                  s_n, s_l, s_g, d_n, d_l, d_g, G,
                  C: tl.constexpr, R: tl.constexpr, CO: tl.constexpr, BR: tl.constexpr,
                  RELU: tl.constexpr, BM: tl.constexpr):
    """Partial sums over chunk ``c`` of positions, for sample ``n`` and group ``g``.

    ``part[n, c, g, r, :] = sum_m src[n, m + r // C, g, r % C] * dy[n, m, g, :]`` and, from
    the programs of the first reduction block, ``part_b[n, c, g, :] = sum_m dy[n, m, g, :]``
    (the bias gradient, read from tiles already loaded). With ``RELU``, ``dy`` is the gradient
    of an activated output and is zeroed where that output is not positive: ``RELU == 1``
    reads the output ``out`` (same layout as ``dy``); ``RELU == 2`` recomputes the
    pre-activation from the tile of ``src`` already loaded, the tap-major weights ``w``
    ``[G, R, CO]`` and the fp32 ``bias``, as the forward kernel did (one reduction block only).
    """
    # Groups (and reduction blocks) vary fastest, so programs in flight together read whole
    # rows of ``dy`` (as in the forward kernel).
    n_rb = tl.cdiv(R, BR)
    pid = tl.program_id(0)
    pid_c = pid // (G * n_rb)
    pid_gr = pid % (G * n_rb)
    n = tl.program_id(1).to(tl.int64)
    g = (pid_gr // n_rb).to(tl.int64)
    rb = pid_gr % n_rb
    r = rb * BR + tl.arange(0, BR)
    offs_o = tl.arange(0, CO)
    src_base = src + n * s_n + g * s_g
    dy_base = dy + n * d_n + g * d_g
    start = pid_c * chunk
    stop = tl.minimum(start + chunk, L_out)
    acc = tl.zeros((BR, CO), dtype=tl.float32)
    acc_b = tl.zeros((CO,), dtype=tl.float32)
    if RELU == 2:
        w_tile = tl.load(w + g * (R * CO) + r[:, None] * CO + offs_o[None, :],
                         mask=(r < R)[:, None], other=0.0)
        b_row = tl.load(bias + g * CO + offs_o).to(tl.float32)
    for m0 in range(start, stop, BM):
        offs_m = m0 + tl.arange(0, BM)
        m_ok = offs_m < stop
        if BR == C:
            a_t = tl.load(src_base + (offs_m + rb)[None, :] * s_l + tl.arange(0, BR)[:, None],
                          mask=m_ok[None, :], other=0.0)
        else:
            pos = offs_m[None, :] + (r // C)[:, None]
            a_t = tl.load(src_base + pos * s_l + (r % C)[:, None],
                          mask=m_ok[None, :] & (r < R)[:, None], other=0.0)
        tile = offs_m[:, None] * d_l + offs_o[None, :]
        gy = tl.load(dy_base + tile, mask=m_ok[:, None], other=0.0)
        if RELU == 1:
            active = tl.load(out + n * d_n + g * d_g + tile, mask=m_ok[:, None], other=0.0) > 0
            gy = tl.where(active, gy, 0.0)
        elif RELU == 2:
            pre = tl.dot(tl.trans(a_t), w_tile) + b_row[None, :]
            gy = tl.where(pre > 0, gy, 0.0)
        acc = tl.dot(a_t, gy, acc)
        acc_b += tl.sum(gy.to(tl.float32), axis=0)
    row = (n * n_chunks + pid_c) * G + g
    tl.store(part + row * (R * CO) + r[:, None] * CO + offs_o[None, :], acc,
             mask=(r < R)[:, None])
    tl.store(part_b + row * CO + offs_o, acc_b, mask=(offs_o + rb * CO) < CO)  # rb == 0


def _block_r(reduction: int, channels: int) -> int:
    """Reduction block: one tap's channels when they fill a matrix-unit tile, else padded."""
    if channels >= 16 and channels & (channels - 1) == 0 and channels <= 128:
        return channels
    return max(16, min(64, triton.next_power_of_2(reduction)))


def supports(in_channels: int, filters: int, groups: int) -> bool:
    """Whether :func:`conv1d_nlc` handles a (stride-1, unpadded) conv of these sizes.

    The filter count is the width of a matrix tile (a power of two, 16 to 128).
    """
    return (groups >= 1 and in_channels >= 1 and 16 <= filters <= 128
            and filters & (filters - 1) == 0)


def preferred(in_channels: int, filters: int, groups: int) -> bool:
    """Whether the fast path should run this convolution here rather than in cuDNN.

    On NT3's shapes the first convolution (one input channel) of a pack of trials measured much
    faster here than in cuDNN's grouped kernel, and so did the whole batched epoch. For one
    trial the kernel alone is about as fast as cuDNN, but the compiled training step measured
    slower with it; for 64 -> 64 channels cuDNN is faster, alone and in packs. So only packed
    first convolutions run here. Figures in docs/performance.md ("The convolution kernel").
    """
    return supports(in_channels, filters, groups) and in_channels < 16 and groups > 1


def _taps(src: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor | None, *, groups: int,
          channels: int, l_out: int, shift: int, relu: bool = False) -> torch.Tensor:
    """Run :func:`_taps_kernel`: ``src [N, L_src, G*C]``, ``w_taps [G, R, CO]``."""
    n, l_src, _ = src.shape
    _, reduction, co = w_taps.shape
    out = torch.empty(n, l_out, groups * co, device=src.device, dtype=src.dtype)
    if n == 0 or l_out <= 0:
        return out
    grid = lambda meta: (triton.cdiv(l_out, meta["BM"]) * groups, n)  # noqa: E731
    _taps_kernel[grid](
        src, w_taps, bias if bias is not None else w_taps, out, l_src, l_out, shift,
        src.stride(0), src.stride(1), channels, out.stride(0), out.stride(1), co, groups,
        C=channels, R=reduction, CO=co, BR=_block_r(reduction, channels),
        HAS_BIAS=bias is not None, RELU=relu)
    return out


def _weight_taps(weight: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """``[G*CO, C, K]`` Conv1d weights as ``[G, K*C, CO]`` tap-major matrices."""
    go, c, k = weight.shape
    return (weight.to(dtype).view(groups, go // groups, c, k).permute(0, 3, 2, 1)
            .reshape(groups, k * c, go // groups).contiguous())


def _flipped_taps(weight: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """The input gradient's matrices: ``[G, K*CO, C]`` with the taps reversed."""
    go, c, k = weight.shape
    return (weight.to(dtype).view(groups, go // groups, c, k).flip(3).permute(0, 3, 1, 2)
            .reshape(groups, k * (go // groups), c).contiguous())


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            groups: int, relu: bool = False) -> torch.Tensor:
    """``[N, L, G*C] -> [N, L - K + 1, G*CO]``; weights are cast to the input's dtype.

    With ``relu`` the output is activated in the kernel (no separate pass over it).
    """
    go, c, k = weight.shape
    b = bias.to(torch.float32).contiguous() if bias is not None else None
    return _taps(x.contiguous(), _weight_taps(weight, groups, x.dtype), b, groups=groups,
                 channels=c, l_out=x.shape[1] - k + 1, shift=0, relu=relu)


def input_grad(dy: torch.Tensor, weight: torch.Tensor, groups: int,
               l_in: int) -> torch.Tensor:
    """Gradient of :func:`forward` with respect to ``x`` (``[N, l_in, G*C]``)."""
    go, c, k = weight.shape
    return _taps(dy.contiguous(), _flipped_taps(weight, groups, dy.dtype), None, groups=groups,
                 channels=go // groups, l_out=l_in, shift=-(k - 1))


def _input_grad_torch(dy: torch.Tensor, weight: torch.Tensor, groups: int,
                      x_shape: torch.Size) -> torch.Tensor:
    n, l_in, gc = x_shape
    grad = torch.nn.grad.conv1d_input((n, gc, l_in), weight.to(dy.dtype), dy.transpose(1, 2),
                                      groups=groups)
    return grad.transpose(1, 2).contiguous()


def recomputes_relu(weight_shape: torch.Size) -> bool:
    """Whether :func:`weight_grad` can mask a ReLU's gradient without the activated output.

    It can when one reduction block spans all ``taps x channels`` (NT3's first convolution:
    20 taps of one channel), so each tile of the input it loads anyway gives the whole
    pre-activation in one more small product.
    """
    _, c, k = weight_shape
    return k * c <= _block_r(k * c, c)


def weight_grad(x: torch.Tensor, dy: torch.Tensor, weight_shape: torch.Size,
                groups: int, activated: torch.Tensor | None = None,
                relu_of: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the ``[G*CO, C, K]`` weights and ``[G*CO]`` bias: fp32, deterministic.

    When ``dy`` is the gradient of a ReLU-activated output, the ReLU's backward is applied
    while ``dy`` is read, from either ``activated`` (that output) or ``relu_of``, the
    convolution's ``(weight, bias)``: the pre-activation is then recomputed from ``x`` (where
    :func:`recomputes_relu` allows), which saves reading the activated output, as large as
    ``dy`` (1 GB for NT3's first convolution in a pack of 8 trials).
    """
    go, c, k = weight_shape
    co = go // groups
    x, dy = x.contiguous(), dy.contiguous()
    n, l_out, _ = dy.shape
    reduction = k * c
    block_r = _block_r(reduction, c)
    n_rb = triton.cdiv(reduction, block_r)   # reduction blocks
    # The kernel's ReLU mode, and its mask operands (unused ones point at dy).
    relu_mode, out, w_taps, bias = 0, dy, dy, dy
    if activated is not None and relu_of is not None:
        raise ValueError("give the ReLU's mask as activated or relu_of, not both")
    if activated is not None:
        relu_mode, out = 1, activated.contiguous()
    elif relu_of is not None:
        if not recomputes_relu(weight_shape):
            raise ValueError(f"relu_of needs one reduction block of at most {block_r} taps x "
                             f"channels; {k} taps x {c} channels span "
                             f"{n_rb}")
        relu_mode, w_taps = 2, _weight_taps(relu_of[0], groups, x.dtype)
        bias = relu_of[1].to(torch.float32).contiguous()
    wanted = triton.cdiv(WGRAD_PROGRAMS, n * groups * n_rb)
    chunk = min(WGRAD_CHUNK, max(128, triton.cdiv(triton.cdiv(l_out, wanted), 128) * 128))
    n_chunks = triton.cdiv(l_out, chunk)
    part = torch.empty(n, n_chunks, groups, reduction, co, device=x.device, dtype=torch.float32)
    part_b = torch.empty(n, n_chunks, groups, co, device=x.device, dtype=torch.float32)
    _wgrad_kernel[(n_chunks * groups * n_rb, n)](
        x, dy, out, w_taps, bias, part, part_b, l_out, chunk, n_chunks,
        x.stride(0), x.stride(1), c, dy.stride(0), dy.stride(1), co, groups,
        C=c, R=reduction, CO=co, BR=block_r, RELU=relu_mode)
    total = part.sum(dim=(0, 1))                                  # [G, K*C, CO]
    dw = total.view(groups, k, c, co).permute(0, 3, 2, 1).reshape(go, c, k).contiguous()
    return dw, part_b.sum(dim=(0, 1)).reshape(go)


# --------------------------------------------------------------------------------------------
# the differentiable operator
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("genodl::conv1d_nlc", mutates_args=())
def conv1d_nlc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               groups: int, relu: bool = False) -> torch.Tensor:
    """Grouped stride-1 valid 1-D convolution of ``x [N, L, G*C]`` (channels last).

    ``weight`` ``[G*CO, C, K]`` and ``bias`` ``[G*CO]`` as in ``Conv1d(groups=G)``; the result
    ``[N, L - K + 1, G*CO]`` has ``x``'s dtype (the weights are cast to it, as autocast would).
    ``relu``: return ``relu(conv(x))``, activated in the kernel; the backward masks the
    gradient where it is read (no separate ReLU passes): from the pre-activation recomputed
    from ``x`` where :func:`recomputes_relu` allows and no input gradient is needed (the first
    convolution), else from the activated output.
    """
    return forward(x, weight, bias, groups, relu)


@conv1d_nlc.register_fake
def _(x, weight, bias, groups, relu=False):
    return x.new_empty(x.shape[0], x.shape[1] - weight.shape[2] + 1, weight.shape[0])


@torch.library.custom_op("genodl::conv1d_nlc_backward", mutates_args=())
def _conv1d_nlc_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, groups: int, need_input: bool,
                         activated: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    relu_of = None
    if need_input and activated is not None:   # the input gradient needs the masked dy itself
        dy = torch.where(activated > 0, dy, 0)
        activated = None
    elif activated is not None and recomputes_relu(weight.shape):
        relu_of, activated = (weight, bias), None
    if not need_input:
        dx = x.new_empty(0)
    elif weight.shape[1] < 16:  # too few input channels for a matrix tile: torch's kernel
        dx = _input_grad_torch(dy, weight, groups, x.shape)
    else:
        dx = input_grad(dy, weight, groups, x.shape[1])
    dw, db = weight_grad(x, dy, weight.shape, groups, activated, relu_of)
    return dx, dw.to(weight.dtype), db.to(weight.dtype)


@_conv1d_nlc_backward.register_fake
def _(dy, x, weight, bias, groups, need_input, activated):
    dx = x.new_empty(x.shape) if need_input else x.new_empty(0)
    return dx, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _setup_context(ctx, inputs, output):
    x, weight, bias, groups, relu = inputs
    ctx.save_for_backward(x, weight, bias, output if relu else None)
    ctx.groups = groups


def _backward(ctx, dy):
    x, weight, bias, activated = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    dx, dw, db = _conv1d_nlc_backward(dy.to(x.dtype), x, weight, bias, ctx.groups, need_input,
                                      activated)
    return (dx if need_input else None), dw, db, None, None


conv1d_nlc.register_autograd(_backward, setup_context=_setup_context)


__all__ = ["conv1d_nlc", "forward", "input_grad", "weight_grad", "recomputes_relu", "supports",
           "preferred", "WGRAD_CHUNK", "WGRAD_PROGRAMS"]
