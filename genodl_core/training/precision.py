"""Numeric-precision scopes for training: TF32 matmuls and bf16 autocast, on CUDA only.

The trial runner resolves ``spec.precision`` to 'fp32', 'tf32' or 'bf16' (see
:mod:`genodl_core.training.device`); the training loop turns that choice into context managers
here. Everything is scoped and restored on exit, because TF32 switches are process-wide and a
persistent worker runs many trials one after another, possibly with different precisions.
On CPU every precision runs in fp32, so CPU results stay bit-for-bit reproducible.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

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
    """bf16 autocast for forward passes when ``precision='bf16'`` on CUDA; otherwise a no-op.

    Weights, optimizer state and losses stay fp32 (the loss functions cast logits up), so bf16
    changes only the speed and rounding of the large matmuls and convolutions.
    """
    _check(precision)
    if precision == "bf16" and is_cuda(device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["PRECISIONS", "autocast", "is_cuda", "matmul_precision"]
