"""A dense layer's weight gradient and its SGD update in one Triton kernel.

Why: at D-GEX's batch of 200 (NT3's 16) the weight gradient of a dense layer is a matrix
product whose reduction is the batch, so it costs what it moves through memory, not what it
computes. The usual step moves every weight many times: autocast casts the fp32 weights to
bf16 (6 bytes per weight), the backward pass writes a bf16 gradient and casts it to fp32 (8),
and even torch's fused SGD with momentum reads weight, gradient and momentum and writes weight
and momentum (20). Here each program computes one tile of the gradient in registers and
applies the update to it at once.

The fp32 master weight is stored split in two 16-bit halves (:func:`split_fp32_`): its upper
half rounded to nearest, which *is* the bf16 weight the forward pass and the input gradient
read, and the lower 16 bits of the fp32 pattern, from which the kernel rebuilds the exact fp32
value. The update is fp32 arithmetic on the exact master weight, as before, but the bf16 copy
no longer costs bytes of its own: 12 bytes per weight and step with a bf16 momentum (16 with
an fp32 one, 8 without momentum), against 14 / 18 / 10 for an fp32 master plus a bf16 copy
and ~34 for the usual step. An fp32 "upper half" without a lower one is an unsplit fp32
master (used by the CPU tests, where everything is fp32).

The update is torch's SGD (dampening 0, no Nesterov, L2 weight decay added to the gradient):
``buf = momentum * buf + (grad + weight_decay * w)``; ``w -= lr * buf``; a zero-initialised
buffer gives torch's first step (``buf = grad``). The gradient is ``P^T Q`` summed over the
batch (``P [K, R]``, ``Q [K, C]``), which covers both weight layouts: ``nn.Linear``'s
``[out, in]`` (P = output gradient, Q = input) and the ``[in, out]`` of batched matmuls.

A leading group axis updates several independent weight matrices (the trials of a pack) in one
launch, each with its own learning rate, read from a device tensor so that changing it never
recompiles or synchronises. Tests run the kernel through Triton's CPU interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from genodl_core.kernels import interpreting

_INTERPRETED = interpreting()


def _configs() -> list[triton.Config]:
    # PREFETCH: issue the weight and momentum loads before the short matrix product, so
    # their memory latency overlaps it (costs registers: only with small tiles per warp).
    shapes = ((64, 128, 32, 4, 3, False), (128, 128, 32, 8, 3, False), (128, 64, 32, 4, 3, False),
              (64, 256, 32, 8, 3, False), (64, 128, 32, 8, 3, True), (64, 64, 32, 4, 3, True),
              (32, 128, 32, 4, 3, True), (64, 128, 64, 4, 2, False), (128, 128, 64, 8, 2, False))
    configs = [triton.Config({"BR": br, "BC": bc, "BK": bk, "PREFETCH": pre}, num_warps=w,
                             num_stages=s)
               for br, bc, bk, w, s, pre in shapes]
    return configs[:1] if _INTERPRETED else configs


# The kernel writes its operands in place, so configurations are timed on copies that are put
# back afterwards (restore_value); otherwise tuning would apply the update several times.
@triton.autotune(configs=_configs(), key=["r_", "c_", "K", "HAS_MOM", "HAS_WD", "SPLIT", "A"],
                 restore_value=["hi", "lo", "mom"])
@triton.jit
def _sgd_update_kernel(p, q, hi, lo, mom, lr, r_, c_, K,
                       p_g_, p_k_, q_g_, q_k_, w_g_, w_r_, momentum, weight_decay,
                       HAS_MOM: tl.constexpr, HAS_WD: tl.constexpr, SPLIT: tl.constexpr,
                       A: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                       PREFETCH: tl.constexpr):
    """One ``[BR, BC]`` tile of group ``g``: gradient ``sum_k p[g, k, r] q[g, k, c]``, update.

    ``hi``, ``lo`` and ``mom`` share one layout (group stride ``w_g``, row stride ``w_r``,
    contiguous columns); ``p`` and ``q`` have contiguous last dimensions. With ``SPLIT`` the
    master weight is ``hi`` (bf16, rounded) and ``lo`` (int16) as :func:`split_fp32_` stores
    it; otherwise ``hi`` is the fp32 master itself. Sizes and strides arrive divided by
    ``A``, a power of two dividing all of them, and are multiplied back here: that tells the
    compiler they are multiples of ``A``, so rows stay aligned and masked loads and stores
    stay vectorised (Triton only assumes so for multiples of 16, and D-GEX's 9,000-wide
    layers are multiples of 8).
    """
    R, C = r_ * A, c_ * A
    p_g, p_k, q_g, q_k, w_g, w_r = p_g_ * A, p_k_ * A, q_g_ * A, q_k_ * A, w_g_ * A, w_r_ * A
    # Neighbouring programs take neighbouring column tiles, so the programs in flight sweep
    # whole rows of the weights: long contiguous runs of memory, measured faster than going
    # down the columns (docs/performance.md).
    n_c = tl.cdiv(C, BC)
    pid = tl.program_id(0)
    pid_r = pid // n_c
    pid_c = pid % n_c
    g = tl.program_id(1).to(tl.int64)
    rows = pid_r * BR + tl.arange(0, BR)
    cols = pid_c * BC + tl.arange(0, BC)
    r_ok = rows < R
    c_ok = cols < C
    ok = r_ok[:, None] & c_ok[None, :]
    at = g * w_g + rows.to(tl.int64)[:, None] * w_r + cols[None, :]
    if PREFETCH:
        weight = _load_master(hi, lo, at, ok, SPLIT)
        if HAS_MOM:
            buf = tl.load(mom + at, mask=ok, other=0.0).to(tl.float32)
    acc = tl.zeros((BR, BC), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < K
        a = tl.load(p + g * p_g + ks[None, :] * p_k + rows[:, None],
                    mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(q + g * q_g + ks[:, None] * q_k + cols[None, :],
                    mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    if not PREFETCH:
        weight = _load_master(hi, lo, at, ok, SPLIT)
        if HAS_MOM:
            buf = tl.load(mom + at, mask=ok, other=0.0).to(tl.float32)
    if HAS_WD:
        acc += weight_decay * weight
    if HAS_MOM:
        buf = buf * momentum + acc
        tl.store(mom + at, buf.to(mom.dtype.element_ty), mask=ok)
        acc = buf
    weight -= tl.load(lr + g) * acc
    if SPLIT:
        bits = weight.to(tl.uint32, bitcast=True)
        low = bits & 0xFFFF
        # Round the upper half to nearest (a tie goes away from zero): add one to it when the
        # dropped half is at least half of its last place. :func:`_load_master` undoes it.
        high = (bits >> 16) + (low >= 0x8000).to(tl.uint32)
        tl.store(hi + at, high.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=ok)
        tl.store(lo + at, low.to(tl.uint16).to(tl.int16, bitcast=True), mask=ok)
    else:
        tl.store(hi + at, weight, mask=ok)


@triton.jit
def _load_master(hi, lo, at, ok, SPLIT: tl.constexpr):
    """The exact fp32 master weights at ``at``: ``hi`` itself, or rebuilt from its halves."""
    # One return: an earlier form returning inside the branch failed to compile for the GPU
    # (the CPU interpreter ran it).
    if SPLIT:
        high = tl.load(hi + at, mask=ok, other=0.0).to(tl.uint16, bitcast=True).to(tl.uint32)
        low = tl.load(lo + at, mask=ok, other=0).to(tl.uint16, bitcast=True).to(tl.uint32)
        high = high - (low >= 0x8000).to(tl.uint32)  # the rounding's carry, taken back
        weight = ((high << 16) | low).to(tl.float32, bitcast=True)
    else:
        weight = tl.load(hi + at, mask=ok, other=0.0)
    return weight


def _alignment(*values: int) -> int:
    """The largest power of two up to 16 that divides every value."""
    align = 16
    while align > 1 and any(v % align for v in values):
        align //= 2
    return align


def efficient(weight_shape: tuple[int, ...]) -> bool:
    """Whether the kernel suits a ``[..., rows, columns]`` fp32 weight as it is: rows of a
    multiple of 4 weights (16 bytes). Other rows start unaligned and every access goes element
    by element; :class:`~genodl_core.training.backward_sgd.BackwardSGDState` can pad them
    (D-GEX's first layer, 943 landmarks wide).
    """
    return weight_shape[-1] % 4 == 0


def sgd_update_(p: torch.Tensor, q: torch.Tensor, weight: torch.Tensor,
                low: torch.Tensor | None, momentum_buf: torch.Tensor | None, lr: torch.Tensor, *,
                momentum: float, weight_decay: float, config: dict | None = None) -> None:
    """Update a master weight in place by SGD with the gradient ``p^T q``.

    Parameters
    ----------
    p, q
        ``[G, K, R]`` and ``[G, K, C]`` (same dtype; bf16 on a GPU): the gradient of group
        ``g`` is ``p[g].T @ q[g]``, summed over the ``K`` samples of the batch.
    weight, low
        The ``[G, R, C]`` master weights, updated in place: bf16 upper and int16 lower halves
        as :func:`split_fp32_` makes them (the upper half is what the forward pass reads), or
        an fp32 ``weight`` and ``low`` None.
    momentum_buf
        Same shape (fp32 or bf16), updated in place; None when ``momentum`` is 0.
    lr
        ``[G]`` fp32 learning rates on the weights' device.
    config
        Tile settings (``BR``, ``BC``, ``BK``, ``PREFETCH``) instead of the tuned ones; for
        tests of each code path.

    Raises
    ------
    ValueError
        On inconsistent shapes or dtypes, a momentum without a buffer, or non-contiguous last
        dimensions.
    """
    g, k, r = p.shape
    c = q.shape[2]
    split = low is not None
    if q.shape[:2] != (g, k) or weight.shape != (g, r, c) or (split and low.shape != weight.shape):
        raise ValueError(f"sgd_update_: shapes p {tuple(p.shape)}, q {tuple(q.shape)}, "
                         f"weight {tuple(weight.shape)}, "
                         f"low {None if low is None else tuple(low.shape)} do not fit")
    want = (torch.bfloat16, torch.int16) if split else (torch.float32, None)
    if (weight.dtype, None if low is None else low.dtype) != want:
        raise ValueError(f"sgd_update_: the master weight is an fp32 tensor, or bf16 and int16 "
                         f"halves; got {weight.dtype} and {None if low is None else low.dtype}")
    has_mom = momentum != 0.0
    if has_mom and (momentum_buf is None or momentum_buf.shape != weight.shape):
        got = None if momentum_buf is None else tuple(momentum_buf.shape)
        raise ValueError(f"sgd_update_: momentum {momentum} needs a momentum buffer of the "
                         f"weight's shape {tuple(weight.shape)}, got {got}")
    tensors = [weight] + ([low] if split else []) + ([momentum_buf] if has_mom else [])
    if any(t.stride() != weight.stride() for t in tensors) or weight.stride(2) != 1:
        raise ValueError(f"sgd_update_: the weight's halves and momentum need one layout with "
                         f"contiguous columns; strides {[t.stride() for t in tensors]}")
    if g * r * c == 0:
        return
    p, q = p.contiguous(), q.contiguous()
    if _INTERPRETED and p.dtype == torch.bfloat16:
        # Triton's CPU interpreter multiplies bf16 operands wrongly; widening them is exact.
        p, q = p.float(), q.float()
    dims = (r, c, p.stride(0), p.stride(1), q.stride(0), q.stride(1), weight.stride(0),
            weight.stride(1))
    align = _alignment(*dims)
    grid = lambda meta: (triton.cdiv(r, meta["BR"]) * triton.cdiv(c, meta["BC"]), g)  # noqa: E731
    kernel = _sgd_update_kernel if config is None else _sgd_update_kernel.fn
    kernel[grid](
        p, q, weight, low if split else weight, momentum_buf if has_mom else weight, lr,
        dims[0] // align, dims[1] // align, k, *(d // align for d in dims[2:]),
        float(momentum), float(weight_decay), HAS_MOM=has_mom, HAS_WD=weight_decay != 0.0,
        SPLIT=split, A=align, **(config or {}))


# Split and join run outside the training steps (a new pack's weights, a loaded state, a
# state dict, evaluation), with torch operations in chunks: int32 temporaries of a whole
# NT3 pack's dense layer would take gigabytes.
_CHUNK = 1 << 24


def _chunks(where: str, *tensors: torch.Tensor):
    if any(not t.is_contiguous() or t.shape != tensors[0].shape for t in tensors):
        raise ValueError(f"{where}: needs contiguous tensors of one shape, got shapes "
                         f"{[tuple(t.shape) for t in tensors]}, strides "
                         f"{[t.stride() for t in tensors]}")
    flat = [t.view(-1) for t in tensors]
    for start in range(0, flat[0].numel(), _CHUNK):
        yield [f[start:start + _CHUNK] for f in flat]


def _as_int16(v: torch.Tensor) -> torch.Tensor:
    """int32 values in [0, 65536) -> the int16 with the same 16 bits."""
    return (v - (v >= 0x8000).to(torch.int32) * 0x10000).to(torch.int16)


@torch.no_grad()
def split_fp32_(weight: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> None:
    """Store the fp32 ``weight`` as bf16 ``high`` (rounded to nearest, ties away from zero)
    and int16 ``low`` (its lower 16 bits); :func:`join_fp32_` gives back ``weight`` exactly.

    Ties differ from torch's cast (ties to even) in one weight in 65,536 on average, by one
    bf16 place; the rounding direction is then recoverable from ``low`` alone.
    """
    for w, h, lo in _chunks("split_fp32_", weight, high, low):
        bits = w.view(torch.int32)
        low_bits = bits & 0xFFFF
        high_bits = ((bits >> 16) & 0xFFFF) + (low_bits >= 0x8000).to(torch.int32)
        h.view(torch.int16).copy_(_as_int16(high_bits & 0xFFFF))
        lo.copy_(_as_int16(low_bits))


@torch.no_grad()
def join_fp32_(high: torch.Tensor, low: torch.Tensor, out: torch.Tensor) -> None:
    """Write into the fp32 ``out`` the master weights stored by :func:`split_fp32_`."""
    for h, lo, o in _chunks("join_fp32_", high, low, out):
        low_bits = lo.to(torch.int32) & 0xFFFF
        high_bits = (h.view(torch.int16).to(torch.int32) & 0xFFFF) \
            - (low_bits >= 0x8000).to(torch.int32)
        # The upper half as a signed 16-bit number times 2^16 stays within int32.
        signed = high_bits - (high_bits >= 0x8000).to(torch.int32) * 0x10000
        o.view(torch.int32).copy_(signed * 0x10000 + low_bits)


__all__ = ["sgd_update_", "efficient", "split_fp32_", "join_fp32_"]
