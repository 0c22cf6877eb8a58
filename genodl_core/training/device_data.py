"""Training data on the device, copied once per worker for data that never changes.

A persistent worker trains many trials on the same dataset (a sweep varies noise and seeds,
not the data), and the in-process dataset cache (:mod:`genodl_core.data.loading`) hands every
trial the same read-only arrays. Copying them to the GPU again for every trial is the largest
fixed cost of a warm D-GEX trial (its targets are 3.4 GB), so the device copy of a read-only
array is kept for as long as the array itself lives. Arrays a noise step made (writable, one
trial's own) are copied as before, and on the CPU nothing is copied at all.
"""

from __future__ import annotations

import threading
import warnings
import weakref

import numpy as np
import torch

_copies: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}
_lock = threading.Lock()


def to_device(a: np.ndarray, device: str, dtype: torch.dtype) -> torch.Tensor:
    """``a`` as a ``dtype`` tensor on ``device`` (shared with ``a`` on the CPU where possible).

    The tensor of a read-only array on a GPU is shared by every trial that asks for the same
    array: callers never write into it.
    """
    if torch.device(device).type == "cpu" or a.flags.writeable:
        return _copy(a, device, dtype)
    key = (id(a), str(device), dtype)
    with _lock:
        tensor = _copies.get(key)
    if tensor is None:
        tensor = _copy(a, device, dtype)
        with _lock:
            _copies[key] = tensor
        weakref.finalize(a, _forget, key)
    return tensor


def _forget(key: tuple[int, str, torch.dtype]) -> None:
    with _lock:
        _copies.pop(key, None)


def _copy(a: np.ndarray, device: str, dtype: torch.dtype) -> torch.Tensor:
    # as_tensor shares the array's memory on the CPU; nothing writes into it, so read-only
    # inputs (memory-mapped caches, the shared dataset) need no copy there.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)


def clear() -> None:
    """Drop every kept device copy (tests, or a worker that must free GPU memory)."""
    with _lock:
        _copies.clear()


__all__ = ["to_device", "clear"]
