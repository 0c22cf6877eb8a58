"""The per-trial record on disk: atomic writes, status, provenance, and reading it back.

Layout of ``<out_dir>/<trial_id>/``:

``spec.json``        the resolved spec (plus ``trial_id``), written before training starts
``provenance.json``  versions, git revision, host, device/GPU, start time
``status.json``      ``{"state": "running" | "done" | "failed", ...}``; failed adds
                     ``error_type``, ``error`` (one line) and ``traceback``
``result.json``      curves, final metrics, noise records (scalars), array names
``arrays.npz``       large arrays (noise masks, per-gene errors, gene ids)
``trial.log``        the trial's log

Every file is written to a temporary name in the same directory and renamed into place, so a
reader sees either the previous version or the complete new one. ``result.json`` is written
before ``status.json`` says ``done``; a record counts as complete only if both agree, so a
trial killed at any instant never reads as done.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

SPEC_FILE = "spec.json"
PROVENANCE_FILE = "provenance.json"
STATUS_FILE = "status.json"
RESULT_FILE = "result.json"
ARRAYS_FILE = "arrays.npz"
LOG_FILE = "trial.log"

RUNNING, DONE, FAILED = "running", "done", "failed"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (a node crash must not undo a 'done'); best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=_json_default) + "\n").encode())


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a JSON record")


def split_arrays(obj: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Replace every numpy array (ndim >= 1) in a nested record by ``{"array": name}``.

    The arrays are collected into ``arrays`` under a name derived from their position, so that
    masks of 100k samples or per-gene errors never bloat the JSON that gather parses.
    """
    if isinstance(obj, np.ndarray) and obj.ndim >= 1:
        arrays[prefix] = obj
        return {"array": prefix}
    if isinstance(obj, dict):
        return {k: split_arrays(v, f"{prefix}.{k}" if prefix else str(k), arrays)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (np.ndarray, dict)) for v in obj):
        return [split_arrays(v, f"{prefix}.{i}", arrays) for i, v in enumerate(obj)]
    return obj


def write_result(trial_dir: str | Path, result: dict[str, Any],
                 arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write ``arrays.npz`` (if any) then ``result.json``, each atomically.

    Arrays nested anywhere in ``result`` are moved to the npz too (see :func:`split_arrays`).
    """
    trial_dir = Path(trial_dir)
    arrays = dict(arrays or {})
    plain = split_arrays(result, "", arrays)
    plain["arrays"] = sorted(arrays)
    if arrays:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(trial_dir / ARRAYS_FILE, buf.getvalue())
    atomic_write_json(trial_dir / RESULT_FILE, plain)


def write_status(trial_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Atomically record the trial's state with a timestamp and the host."""
    status = {"state": state, "time": time.time(), "host": socket.gethostname(), **fields}
    atomic_write_json(Path(trial_dir) / STATUS_FILE, status)
    return status


def read_status(trial_dir: str | Path) -> dict[str, Any] | None:
    """The status dict, or None when there is none or it cannot be parsed."""
    try:
        return read_json(Path(trial_dir) / STATUS_FILE)
    except (OSError, ValueError):
        return None


def is_complete(trial_dir: str | Path, trial_id: str | None = None) -> bool:
    """True only if the status says done AND the result parses and belongs to this trial."""
    trial_dir = Path(trial_dir)
    status = read_status(trial_dir)
    if not status or status.get("state") != DONE:
        return False
    try:
        result = read_json(trial_dir / RESULT_FILE)
    except (OSError, ValueError):
        return False
    expected = trial_id or trial_dir.name
    if result.get("trial_id") != expected:
        return False
    if result.get("arrays") and not (trial_dir / ARRAYS_FILE).is_file():
        return False
    return True


@dataclass
class TrialRecord:
    """A trial record read back from disk (any state)."""

    path: Path
    trial_id: str
    spec: dict[str, Any] | None
    status: dict[str, Any] | None
    result: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """'done', 'failed', 'running', or 'missing' (no status) / 'corrupt' (unreadable)."""
        if self.problems:
            return "corrupt"
        if self.status is None:
            return "missing"
        return self.status.get("state", "corrupt")

    def arrays(self) -> dict[str, np.ndarray]:
        """Load the stored arrays (empty dict when the trial has none)."""
        path = self.path / ARRAYS_FILE
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def load_record(trial_dir: str | Path) -> TrialRecord:
    """Read every file of a trial record; unreadable parts are listed in ``problems``."""
    trial_dir = Path(trial_dir)
    problems: list[str] = []

    def maybe(name: str, required: bool) -> Any:
        path = trial_dir / name
        if not path.exists():
            if required:
                problems.append(f"{name} is missing")
            return None
        try:
            return read_json(path)
        except (OSError, ValueError) as err:
            problems.append(f"{name} is unreadable: {err}")
            return None

    spec = maybe(SPEC_FILE, required=False)
    status = maybe(STATUS_FILE, required=False)
    done = bool(status and status.get("state") == DONE)
    result = maybe(RESULT_FILE, required=done)
    if done and result is not None and result.get("trial_id") != trial_dir.name:
        problems.append(f"{RESULT_FILE} belongs to trial {result.get('trial_id')!r}")
    return TrialRecord(trial_dir, trial_dir.name, spec, status, result,
                       maybe(PROVENANCE_FILE, required=False), problems)


@lru_cache(maxsize=1)
def git_revision() -> str:
    """The git revision of the genodl source tree ('+dirty' if modified), or 'unknown'."""
    src = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=src, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of genodl and the libraries that shape its numbers (without importing them)."""
    versions = {"python": sys.version.split()[0]}
    for name in ("genodl", "torch", "numpy", "pandas", "h5py", "parsl"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(device: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a record needs to rerun and explain a trial besides its spec."""
    return {
        "versions": package_versions(),
        "git_revision": git_revision(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": sys.argv,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "worker_rank": os.environ.get("PARSL_WORKER_RANK"),
        "device": device or {},
        "started_at": time.time(),
    }
