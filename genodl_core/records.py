"""The per-trial record on disk: atomic writes, status, provenance, and reading it back.

Layout of ``<out_dir>/<trial_id>/``:

``spec.json``        the resolved spec (plus ``trial_id``), written before training starts
``provenance.json``  versions, git revision, host, device/GPU, start time
``status.json``      ``{"state": "running" | "done" | "failed", ...}``; failed adds
                     ``error_type``, ``error`` (one line) and ``traceback``; done adds
                     ``checksums`` (size and sha256 of ``result.json`` and ``arrays.npz``)
``result.json``      curves, final metrics, noise records (scalars), array names
``arrays.npz``       large arrays (noise masks, per-gene errors, gene ids)
``trial.log``        the trial's log

Every file is written to a temporary name in the same directory and renamed into place, so a
reader sees either the previous version or the complete new one. ``result.json`` is written
before ``status.json`` says ``done``, and the done status carries the checksums of both result
files. :func:`record_state` is the one definition of a record's state that every reader uses
(``genodl status``, ``rerun``, ``run`` and its workers, and the gather): a record is done only
when its status says so, its spec and result parse, the result belongs to the trial, its final
metrics are numbers and its files match their checksums; a done status that fails any of these
is ``corrupt``, never done, so it is rerun and never stops a gather.

Files are created with the permissions the umask allows (like any ``open``), so a project group
can read results when its umask lets it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import zipfile
import socket
import subprocess
import sys
import threading
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
#: What :func:`record_state` can say besides the three states a status file holds.
CORRUPT, MISSING = "corrupt", "missing"
#: The files of a done record whose checksums its status holds.
CHECKSUMMED_FILES = (RESULT_FILE, ARRAYS_FILE)


def create_temp_file(path: str | Path) -> tuple[int, Path]:
    """Create a new, empty hidden temporary file beside ``path``; return its fd and path.

    Unlike :func:`tempfile.mkstemp` (always mode 0600), the file is created with mode 0666
    less the umask, as ``open`` would create ``path`` itself: a record renamed into place then
    has the permissions its owner's umask asks for (group-readable results for a project).
    """
    path = Path(path)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (atomic on POSIX).

    The file gets mode 0666 less the umask (see :func:`create_temp_file`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_file(path)
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
                 arrays: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
    """Write ``arrays.npz`` (if any) then ``result.json``, each atomically.

    Arrays nested anywhere in ``result`` are moved to the npz too (see :func:`split_arrays`).

    Returns
    -------
    dict
        The checksums of the files written (:func:`checksum_of`), for the done status.
    """
    trial_dir = Path(trial_dir)
    arrays = dict(arrays or {})
    plain = split_arrays(result, "", arrays)
    plain["arrays"] = sorted(arrays)
    sums = {}
    if arrays:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        data = buf.getvalue()
        atomic_write_bytes(trial_dir / ARRAYS_FILE, data)
        sums[ARRAYS_FILE] = checksum_of(data)
    data = (json.dumps(plain, indent=1, default=_json_default) + "\n").encode()
    atomic_write_bytes(trial_dir / RESULT_FILE, data)
    sums[RESULT_FILE] = checksum_of(data)
    return sums


def checksum_of(data: bytes) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file's content."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_checksums(trial_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Checksums of the result files present in ``trial_dir`` (see :data:`CHECKSUMMED_FILES`)."""
    sums = {}
    for name in CHECKSUMMED_FILES:
        path = Path(trial_dir) / name
        if path.is_file():
            sums[name] = {"size": path.stat().st_size, "sha256": _file_sha256(path)}
    return sums


def write_status(trial_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Atomically record the trial's state with a timestamp and the host.

    A ``done`` status always carries ``checksums`` of the result files (computed from the files
    when the caller does not pass those :func:`write_result` returned), so that
    :func:`record_state` can tell a complete record from a truncated or altered one.
    """
    if state == DONE and "checksums" not in fields:
        fields["checksums"] = file_checksums(trial_dir)
    status = {"state": state, "time": time.time(), "host": socket.gethostname(), **fields}
    atomic_write_json(Path(trial_dir) / STATUS_FILE, status)
    return status


def read_status(trial_dir: str | Path) -> dict[str, Any] | None:
    """The status dict, or None when there is none or it cannot be parsed."""
    try:
        return read_json(Path(trial_dir) / STATUS_FILE)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class RecordState:
    """What :func:`record_state` decided: the state, and why when it is not plainly so."""

    state: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.state} ({self.reason})" if self.reason else self.state


def record_state(trial_dir: str | Path, trial_id: str | None = None) -> RecordState:
    """The one definition of a trial record's state: done, failed, running, corrupt or missing.

    ``missing``: no status file (never started, or started and killed before its first
    status). ``corrupt``: the status, spec or provenance does not parse (each is written
    atomically, so garbage in one is damage), a noise step of the spec is not a table, the
    state is unknown, or a done
    record fails :func:`_done_problem` (its result does not parse or belongs to another trial,
    a final metric or a curve is not numbers, a file is missing or does not match its
    checksum). The
    reason names the file and what is wrong.

    Whether a ``running`` record still has a live attempt is the run directory's business
    (``workflows.rundir``), which adds ``interrupted``.
    """
    trial_dir = Path(trial_dir)
    expected = trial_id or trial_dir.name
    status_path = trial_dir / STATUS_FILE
    if not status_path.exists():
        return RecordState(MISSING, f"no {STATUS_FILE}")
    status, problem = _read_object(status_path)
    if problem:
        return RecordState(CORRUPT, problem)
    state = status.get("state")
    if state not in (DONE, FAILED, RUNNING):
        return RecordState(CORRUPT, f"{STATUS_FILE}: unknown state {state!r} (allowed: "
                                    f"{DONE}, {FAILED}, {RUNNING})")
    for name in (SPEC_FILE, PROVENANCE_FILE):  # written atomically: garbage is damage
        if (trial_dir / name).exists():
            value, problem = _read_object(trial_dir / name)
            problem = problem or (_spec_problem(value) if name == SPEC_FILE else "")
            if problem:
                return RecordState(CORRUPT, problem)
    if state == DONE:
        problem = _done_problem(trial_dir, expected, status)
        if problem:
            return RecordState(CORRUPT, problem)
    return RecordState(state)


def is_complete(trial_dir: str | Path, trial_id: str | None = None) -> bool:
    """True only when :func:`record_state` says done."""
    return record_state(trial_dir, trial_id).state == DONE


def _read_object(path: Path) -> tuple[dict[str, Any], str]:
    """A JSON object file, or ``({}, why not)``."""
    try:
        value = read_json(path)
    except (OSError, ValueError) as err:
        return {}, f"{path.name} is unreadable: {err}"
    if not isinstance(value, dict):
        return {}, f"{path.name} is not a JSON object"
    return value, ""


def _done_problem(trial_dir: Path, trial_id: str, status: dict[str, Any]) -> str:
    """Why a record whose status says done is not a complete record ('' when it is)."""
    result, problem = _read_object(trial_dir / RESULT_FILE)
    if problem:
        return problem if (trial_dir / RESULT_FILE).exists() else f"{RESULT_FILE} is missing"
    checksums = status.get("checksums")
    if checksums is not None:
        if not isinstance(checksums, dict):
            return f"{STATUS_FILE}: 'checksums' is not an object"
        for name, expected in sorted(checksums.items()):
            problem = _checksum_problem(trial_dir / name, expected)
            if problem:
                return problem
    if result.get("trial_id") != trial_id:
        return f"{RESULT_FILE} belongs to trial {result.get('trial_id')!r}, not {trial_id!r}"
    final = result.get("final")
    if final is not None and not isinstance(final, dict):
        return f"{RESULT_FILE}: 'final' is not an object"
    for name, value in (final or {}).items():
        if not _is_number(value):
            return f"{RESULT_FILE}: final metric {name!r}={value!r} is not a number"
    curves = result.get("curves")
    if curves is not None and not isinstance(curves, dict):
        return f"{RESULT_FILE}: 'curves' is not an object"
    for name, values in (curves or {}).items():
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            return f"{RESULT_FILE}: curve {name!r} is not a list of numbers"
    if result.get("arrays"):
        path = trial_dir / ARRAYS_FILE
        if not path.is_file():
            return f"{ARRAYS_FILE} is missing (the result lists {len(result['arrays'])} arrays)"
        if checksums is None or ARRAYS_FILE not in checksums:
            return _npz_problem(path, result["arrays"])  # a record written before checksums
    return ""


def _is_number(value: Any) -> bool:
    """A metric value as the runner writes it: a number, or null for 'not computed'."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _spec_problem(spec: dict[str, Any]) -> str:
    """What makes a parsed spec unusable for reading its record (its noise steps' shape)."""
    steps = spec.get("noise")
    if steps is None or isinstance(steps, dict):
        return ""
    if not isinstance(steps, list):
        return f"{SPEC_FILE}: 'noise' is neither a list nor a table"
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            return f"{SPEC_FILE}: noise[{i}] is not a table"
    return ""


def _checksum_problem(path: Path, expected: Any) -> str:
    if not isinstance(expected, dict):
        return f"{STATUS_FILE}: the checksum of {path.name} is not an object"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path.name} is missing"
    if size != expected.get("size"):
        return f"{path.name} has {size} bytes, its status recorded {expected.get('size')}"
    actual = _file_sha256(path)
    if actual != expected.get("sha256"):
        return (f"{path.name} does not match its checksum (sha256 {actual[:12]}..., recorded "
                f"{str(expected.get('sha256'))[:12]}...)")
    return ""


def _npz_problem(path: Path, names: list[Any]) -> str:
    """Whether an npz without a recorded checksum opens and holds the listed arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            stored = {n[:-4] if n.endswith(".npy") else n for n in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as err:
        return f"{ARRAYS_FILE} is unreadable: {err}"
    absent = [n for n in names if n not in stored]
    return f"{ARRAYS_FILE} lacks the arrays {absent[:3]}" if absent else ""


#: sha256 of files already hashed in this process, by (path, size, mtime_ns, inode).
_sha_cache: dict[tuple[str, int, int, int], str] = {}
_sha_lock = threading.Lock()


def _file_sha256(path: Path) -> str:
    """The sha256 of a file, remembered while its size, mtime and inode stay the same."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _sha_lock:
        if key in _sha_cache:
            return _sha_cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _sha_lock:
        if len(_sha_cache) > 100_000:
            _sha_cache.clear()
        _sha_cache[key] = value
    return value


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
    #: The state as :func:`record_state` decided it when the record was loaded.
    verdict: RecordState = field(default_factory=lambda: RecordState(MISSING))

    @property
    def state(self) -> str:
        """'done', 'failed', 'running', 'missing' (no status) or 'corrupt' (see
        :func:`record_state`; the reasons are in ``problems``)."""
        return CORRUPT if self.problems else self.verdict.state

    def arrays(self) -> dict[str, np.ndarray]:
        """Load the stored arrays (empty dict when the trial has none)."""
        path = self.path / ARRAYS_FILE
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def load_record(trial_dir: str | Path) -> TrialRecord:
    """Read every file of a trial record; unreadable parts are listed in ``problems``.

    Its state is :func:`record_state`'s; a corrupt record's reason is its first problem.
    """
    trial_dir = Path(trial_dir)
    verdict = record_state(trial_dir)
    problems: list[str] = [verdict.reason] if verdict.state == CORRUPT else []

    def quietly(name: str) -> Any:
        try:
            return read_json(trial_dir / name)
        except (OSError, ValueError):
            return None  # record_state has said why, when it matters

    spec = quietly(SPEC_FILE)
    status = quietly(STATUS_FILE)
    result = quietly(RESULT_FILE) if isinstance(status, dict) and \
        status.get("state") == DONE else None
    return TrialRecord(trial_dir, trial_dir.name, spec, status, result,
                       quietly(PROVENANCE_FILE), problems, verdict)


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
