"""Numeric-precision scopes for training: TF32 matmuls (CUDA) and bf16 autocast (CUDA, CPU).

The trial runner resolves ``spec.precision`` to 'fp32', 'tf32' or 'bf16' (see
:mod:`genodl_core.training.device`); the training loop turns that choice into context managers
here. Everything is scoped and restored on exit, because TF32 switches are process-wide and a
persistent worker runs many trials one after another, possibly with different precisions.
On CPU, fp32 is the default (bit-for-bit reproducible for a thread count); bf16 autocast runs
only when a spec asks for ``precision='bf16'`` explicitly, on a CPU with native bf16
(:func:`genodl_core.training.cpu.check_bf16` refuses it elsewhere).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from genodl_core.errors import SpecError

PRECISIONS = ("fp32", "tf32", "bf16")


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SpecError("precision", precision, list(PRECISIONS),
                        reason="the training loop needs a resolved precision")


def is_cuda(device: str | torch.device) -> bool:
    """Whether ``device`` names a CUDA device ('cuda', 'cuda:1', ...)."""
    return torch.device(device).type == "cuda"


@contextlib.contextmanager
def matmul_precision(device: str | torch.device, precision: str) -> Iterator[None]:
    """Allow TF32 tensor-core matmuls and convolutions for the duration of the block.

    'tf32' and 'bf16' both allow TF32 for the operations that autocast leaves in fp32; 'fp32'
    forbids it so that fp32 means IEEE fp32. The previous switches are restored on exit.

    Raises
    ------
    SpecError
        ``precision`` is not one of 'fp32', 'tf32', 'bf16' (e.g. an unresolved 'auto').
    """
    _check(precision)
    if not is_cuda(device):
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes when ``precision='bf16'`` (CUDA or CPU); else a no-op.

    Weights, optimizer state and losses stay fp32 (the loss functions cast logits up), so bf16
    changes only the speed and rounding of the large matmuls and convolutions.
    """
    _check(precision)
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()




@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Set ``torch.backends.cudnn.benchmark`` for the block and restore it afterwards.

    Scoped because a persistent worker runs many trials, possibly with other settings.
    """
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or saved
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: str) -> Iterator[None]:
    """Seed the global CPU (and current CUDA) generators for dropout; restore them on exit."""
    devices = [torch.cuda.current_device()] if is_cuda(device) else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        yield


@contextlib.contextmanager
def amp_without_cache(amp: Callable[[], contextlib.AbstractContextManager]) -> Iterator[None]:
    """``amp()`` with autocast's weight cache off, as CUDA graph capture requires.

    The cache keeps bf16 copies of weights across calls within one autocast region; inside a
    captured graph those copies would be stale after the optimizer step.
    """
    scope = amp()
    if isinstance(scope, torch.autocast):
        scope = torch.autocast(device_type=scope.device, dtype=scope.fast_dtype,
                               cache_enabled=False)
    with scope:
        yield


__all__ = ["PRECISIONS", "autocast", "is_cuda", "matmul_precision", "cudnn_benchmark",
           "seeded_global_rng", "amp_without_cache"]
