"""Load, scale and cache a trial's dataset once per process.

Persistent workers run many trials on the same data (a sweep varies noise and seeds, not the
data), so the scaled dataset is kept in a small in-process cache keyed by the canonical data
spec. Arrays in the cache are never modified: noise steps return new arrays.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections import OrderedDict

import numpy as np

from genodl_core.data.fingerprint import data_files
from genodl_core.data.scaling import scale_dataset
from genodl_core.data.types import Dataset
from genodl_core.data.validation import apply_validation
from genodl_core.registry import DATASETS
from genodl_core.spec import Component, ValidationSpec

log = logging.getLogger(__name__)

#: How many distinct datasets a process keeps (a full-size NT3 set is ~0.3 GB of float32).
CACHE_SIZE = 2

_cache: "OrderedDict[str, Dataset]" = OrderedDict()
_cache_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}


def load_dataset(data: Component, validation: ValidationSpec = ValidationSpec()
                 ) -> tuple[Dataset, bool]:
    """Return the scaled dataset for a data component and whether it came from the cache.

    ``validation`` (the trial's ``data.validation`` rule) chooses the validation split before
    scaling, so scalers fitted on the training split never see the carved validation rows.

    Concurrent callers in one process (thread executor) asking for the same data wait for a
    single load instead of each parsing the files.
    """
    key = json.dumps({"spec": {**data.to_dict("source"), **validation.to_dict()},
                      "files": _file_versions(data.params)},
                     sort_keys=True)
    with _cache_lock:
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key], True
        entry = DATASETS.get(data.name, "data.source")
        raw = apply_validation(entry.fn(data.params), validation, data.name)
        scaling = getattr(data.params, "scaling", "none")
        fit_on = getattr(data.params, "scale_fit", "train")
        dataset = scale_dataset(raw, scaling, fit_on)
        del raw
        _freeze(dataset)
        with _cache_lock:
            _cache[key] = dataset
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        return dataset, False


def _freeze(dataset: Dataset) -> None:
    """Mark the cached arrays read-only: every trial of the process shares them (and their
    device copies, see :mod:`genodl_core.training.device_data`); a write would be a bug."""
    for field in dataclasses.fields(dataset):
        value = getattr(dataset, field.name)
        if isinstance(value, np.ndarray):
            value.flags.writeable = False


def _file_versions(params: object) -> dict[str, list[int]]:
    """Size and modification time of every existing file a data spec names.

    A worker keeps its cached arrays only while the files behind them are unchanged (the same
    rule as the on-disk binary cache), and relative paths are told apart by where they resolve.
    The files are those :func:`~genodl_core.data.fingerprint.data_files` finds, which a trial
    also records content fingerprints of.
    """
    versions = {}
    for path in data_files(params):
        stat = os.stat(path)
        versions[path] = [stat.st_size, stat.st_mtime_ns]
    return versions


def clear_cache() -> None:
    """Drop every cached dataset (tests, or a worker that must free memory)."""
    with _cache_lock:
        _cache.clear()
