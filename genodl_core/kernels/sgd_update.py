"""A dense layer's weight gradient and its SGD update in one Triton kernel.

Why: at D-GEX's batch of 200 (NT3's 16) the weight gradient of a dense layer is a matrix
product whose reduction is the batch, so it costs what it moves through memory, not what it
computes. The usual step moves every weight many times: autocast casts the fp32 weights to
bf16 (6 bytes per weight), the backward pass writes a bf16 gradient and casts it to fp32 (8),
and even torch's fused SGD with momentum reads weight, gradient and momentum and writes weight
and momentum (20). Here each program computes one tile of the gradient in registers and
applies the update to it at once: it reads the fp32 master weight and the momentum, writes
them back and writes the bf16 copy that the next forward pass uses. That is 18 bytes per
weight with an fp32 momentum and 14 with a bf16 one (10 without momentum), against ~34.

The update is torch's SGD (dampening 0, no Nesterov, L2 weight decay added to the gradient):
``buf = momentum * buf + (grad + weight_decay * w)``; ``w -= lr * buf``; a zero-initialised
buffer gives torch's first step (``buf = grad``). The gradient is ``P^T Q`` summed over the
batch (``P [K, R]``, ``Q [K, C]``), which covers both weight layouts: ``nn.Linear``'s
``[out, in]`` (P = output gradient, Q = input) and the ``[in, out]`` of batched matmuls.

A leading group axis updates several independent weight matrices (the trials of a pack) in one
launch, each with its own learning rate, read from a device tensor so that changing it never
recompiles or synchronises. Tests run the kernel through Triton's CPU interpreter in fp32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRETED = os.environ.get("TRITON_INTERPRET", "") == "1"


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
@triton.autotune(configs=_configs(), key=["r_", "c_", "K", "HAS_MOM", "HAS_WD", "A"],
                 restore_value=["w", "wb", "mom"])
@triton.jit
def _sgd_update_kernel(p, q, w, wb, mom, lr, r_, c_, K,
                       p_g_, p_k_, q_g_, q_k_, w_g_, w_r_, momentum, weight_decay,
                       HAS_MOM: tl.constexpr, HAS_WD: tl.constexpr, A: tl.constexpr,
                       BR: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                       PREFETCH: tl.constexpr):
    """One ``[BR, BC]`` tile of group ``g``: gradient ``sum_k p[g, k, r] q[g, k, c]``, update.

    ``w``, ``wb`` and ``mom`` share one layout (group stride ``w_g``, row stride ``w_r``,
    contiguous columns); ``p`` and ``q`` have contiguous last dimensions. Sizes and strides
    arrive divided by ``A``, a power of two dividing all of them, and are multiplied back
    here: that tells the compiler they are multiples of ``A``, so rows stay aligned and masked
    loads and stores stay vectorised (Triton only assumes so for multiples of 16, and D-GEX's
    9,000-wide layers are multiples of 8).
    """
    R, C = r_ * A, c_ * A
    p_g, p_k, q_g, q_k, w_g, w_r = p_g_ * A, p_k_ * A, q_g_ * A, q_k_ * A, w_g_ * A, w_r_ * A
    # Neighbouring programs take neighbouring column tiles, so the programs in flight sweep
    # whole rows of the weights: long contiguous runs of memory (0.52 against 0.60 ms for a
    # 9000 x 9000 layer on an H100 when they went down the columns).
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
        weight = tl.load(w + at, mask=ok, other=0.0)
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
        weight = tl.load(w + at, mask=ok, other=0.0)
        if HAS_MOM:
            buf = tl.load(mom + at, mask=ok, other=0.0).to(tl.float32)
    if HAS_WD:
        acc += weight_decay * weight
    if HAS_MOM:
        buf = buf * momentum + acc
        tl.store(mom + at, buf.to(mom.dtype.element_ty), mask=ok)
        acc = buf
    weight -= tl.load(lr + g) * acc
    tl.store(w + at, weight, mask=ok)
    tl.store(wb + at, weight.to(wb.dtype.element_ty), mask=ok)


def _alignment(*values: int) -> int:
    """The largest power of two up to 16 that divides every value."""
    align = 16
    while align > 1 and any(v % align for v in values):
        align //= 2
    return align


def efficient(weight_shape: tuple[int, ...]) -> bool:
    """Whether the kernel suits a ``[..., rows, columns]`` fp32 weight: rows of a multiple of
    4 weights (16 bytes). Other rows start unaligned and every access goes element by element
    (D-GEX's first layer, 943 landmarks wide, is better left to torch's fused SGD).
    """
    return weight_shape[-1] % 4 == 0


def sgd_update_(p: torch.Tensor, q: torch.Tensor, weight: torch.Tensor, shadow: torch.Tensor,
                momentum_buf: torch.Tensor | None, lr: torch.Tensor, *, momentum: float,
                weight_decay: float, config: dict | None = None) -> None:
    """Update ``weight`` in place by SGD with the gradient ``p^T q``; refresh ``shadow``.

    Parameters
    ----------
    p, q
        ``[G, K, R]`` and ``[G, K, C]`` (same dtype; bf16 on a GPU): the gradient of group
        ``g`` is ``p[g].T @ q[g]``, summed over the ``K`` samples of the batch.
    weight
        ``[G, R, C]`` fp32 master weights, updated in place.
    shadow
        Same shape, the low-precision copy the forward pass reads; overwritten with ``weight``.
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
        On inconsistent shapes, a momentum without a buffer, or non-contiguous last dimensions.
    """
    g, k, r = p.shape
    c = q.shape[2]
    if q.shape[:2] != (g, k) or weight.shape != (g, r, c) or shadow.shape != weight.shape:
        raise ValueError(f"sgd_update_: shapes p {tuple(p.shape)}, q {tuple(q.shape)}, "
                         f"weight {tuple(weight.shape)}, shadow {tuple(shadow.shape)} do not fit")
    has_mom = momentum != 0.0
    if has_mom and (momentum_buf is None or momentum_buf.shape != weight.shape):
        got = None if momentum_buf is None else tuple(momentum_buf.shape)
        raise ValueError(f"sgd_update_: momentum {momentum} needs a momentum buffer of the "
                         f"weight's shape {tuple(weight.shape)}, got {got}")
    tensors = [weight, shadow] + ([momentum_buf] if has_mom else [])
    if any(t.stride() != weight.stride() for t in tensors) or weight.stride(2) != 1:
        raise ValueError(f"sgd_update_: weight, shadow and momentum need one layout with "
                         f"contiguous columns; strides {[t.stride() for t in tensors]}")
    if g * r * c == 0:
        return
    p, q = p.contiguous(), q.contiguous()
    dims = (r, c, p.stride(0), p.stride(1), q.stride(0), q.stride(1), weight.stride(0),
            weight.stride(1))
    align = _alignment(*dims)
    grid = lambda meta: (triton.cdiv(r, meta["BR"]) * triton.cdiv(c, meta["BC"]), g)  # noqa: E731
    kernel = _sgd_update_kernel if config is None else _sgd_update_kernel.fn
    kernel[grid](
        p, q, weight, shadow, momentum_buf if has_mom else weight, lr,
        dims[0] // align, dims[1] // align, k, *(d // align for d in dims[2:]),
        float(momentum), float(weight_decay), HAS_MOM=has_mom, HAS_WD=weight_decay != 0.0,
        A=align, **(config or {}))


__all__ = ["sgd_update_", "efficient"]
