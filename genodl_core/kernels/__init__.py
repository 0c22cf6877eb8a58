"""Hand-written GPU kernels for the hot spots of the fast path (Triton; optional).

Triton ships with CUDA builds of PyTorch but not with CPU builds, so nothing here is imported
unless a kernel is asked for; :func:`triton_available` says whether one can be.
"""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.cache
def triton_available() -> bool:
    """Whether the kernels can be used: ``triton`` installed (it is not with CPU builds of
    torch) and a torch with ``torch.library.custom_op`` (2.4 or later), which registers them.
    """
    import torch

    return (importlib.util.find_spec("triton") is not None
            and hasattr(torch.library, "custom_op"))


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, as the tests
    set it without a GPU): kernels then take CPU tensors, and tuning has nothing to time."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


__all__ = ["triton_available", "interpreting"]
