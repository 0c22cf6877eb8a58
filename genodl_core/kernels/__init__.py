"""Hand-written GPU kernels for the hot spots of the fast path (Triton; optional).

Triton ships with CUDA builds of PyTorch but not with CPU builds, so nothing here is imported
unless a kernel is asked for; :func:`triton_available` says whether one can be.
"""

from __future__ import annotations

import functools
import importlib.util


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (it is not on CPU builds of torch)."""
    return importlib.util.find_spec("triton") is not None


__all__ = ["triton_available"]
