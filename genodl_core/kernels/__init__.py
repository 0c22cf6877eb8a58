"""Hand-written GPU kernels for the hot spots of the fast path (Triton; optional).

Triton ships with CUDA builds of PyTorch but not with CPU builds, so nothing here is imported
unless a kernel is asked for; :func:`triton_available` says whether one can be.
"""

from __future__ import annotations

import functools
import importlib.util


@functools.cache
def triton_available() -> bool:
    """Whether the kernels can be used: ``triton`` installed (it is not with CPU builds of
    torch) and a torch with ``torch.library.custom_op`` (2.4 or later), which registers them.
    """
    import torch

    return (importlib.util.find_spec("triton") is not None
            and hasattr(torch.library, "custom_op"))


__all__ = ["triton_available"]
