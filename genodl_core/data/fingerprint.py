"""Content fingerprints of the data files a trial reads, and checking them later.

A trial's numbers depend on its data files as much as on its spec, and a file can change under
a sweep (a corrected label column, a regenerated matrix) without changing its name. Every trial
therefore records, per file it read, ``{"size", "mtime_ns", "sha256"}`` under
``data_fingerprints`` in its ``provenance.json`` and ``result.json``. ``genodl run`` (resuming),
``genodl rerun`` and ``genodl gather`` compare those against each other and against the files
as they are now, so trials of two versions of a file are never mixed silently.

Hashing a large file takes seconds, and every trial of a sweep reads the same file, so the hash
is kept in a small sidecar file keyed by the file's size and modification time: next to the
data cache when the source has one (its ``cache_dir``, else ``.genodl-cache`` beside the file),
or, when that directory cannot be written, in the user's cache directory. A sidecar that cannot
be written is not an error: the hash is then computed again next time.

Synthetic sources read no file and have no fingerprints (an empty mapping).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

#: Key of the fingerprints in a trial's ``provenance.json`` and ``result.json``.
FINGERPRINTS_KEY = "data_fingerprints"
#: Sidecar folder beside a data file when its source names no cache directory (the data cache's).
SIDECAR_DIRNAME = ".genodl-cache"
#: Per-trial data columns of ``/trials`` in ``summary.h5`` with their kind.
DATA_COLUMNS: dict[str, str] = {
    "data_fingerprint": "str",
    "data_fingerprints_json": "str",
}

_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def data_files(params: Any) -> list[str]:
    """The existing files and folders a data component's parameters name (absolute, symlinks
    resolved).

    Every string parameter that names an existing file counts (the NT3 CSV source's
    ``train_path``/``test_path``, the expression sources' ``path``, id lists and split files),
    and so does one that names a folder of data files (a folder of per-cell-type CSVs, a folder
    of memory-mapped arrays): its fingerprint covers every file in it. Cache folders
    (parameters named ``*cache*``) are the source's own output, not its data, and do not count.
    """
    if not dataclasses.is_dataclass(params):
        return []
    files = []
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if not isinstance(value, str) or not value or "cache" in field.name:
            continue
        if os.path.isfile(value) or os.path.isdir(value):
            files.append(os.path.realpath(value))
    return sorted(set(files))


def data_fingerprints(params: Any) -> dict[str, dict[str, Any]]:
    """``{path: fingerprint}`` of every file or folder a data component's parameters name."""
    cache_dir = getattr(params, "cache_dir", None)
    return {path: file_fingerprint(path, cache_dir=cache_dir) for path in data_files(params)}


def file_fingerprint(path: str | os.PathLike[str], *,
                     cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of a file, the hash read from its sidecar when the
    size and modification time still match; for a folder, :func:`folder_fingerprint`.

    Raises
    ------
    OSError
        When the file cannot be read.
    """
    path = os.path.realpath(path)
    if os.path.isdir(path):
        return folder_fingerprint(path, cache_dir=cache_dir)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _memo_lock:
        sha = _memo.get(key)
    if sha is None:
        sha = _read_sidecar(path, st, cache_dir)
    if sha is None:
        sha = _hash_file(path)
        _write_sidecar(path, st, sha, cache_dir)
    with _memo_lock:
        _memo[key] = sha
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}


def folder_fingerprint(path: str | os.PathLike[str], *,
                       cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The fingerprint of a folder of data files: one sha256 over the relative name and the
    sha256 of every file below it (hidden names, such as the sidecar folder, left out), so a
    file changed, added, removed or renamed changes it. ``size`` is the total of the files'
    sizes, ``mtime_ns`` the newest file's, ``files`` their number.

    Raises
    ------
    OSError
        When the folder or a file in it cannot be read.
    """
    root = os.path.realpath(path)
    digest = hashlib.sha256()
    size = newest = count = 0
    for rel in _folder_files(root):
        fp = file_fingerprint(os.path.join(root, rel), cache_dir=cache_dir)
        digest.update(f"{rel}\0{fp['sha256']}\n".encode())
        size += fp["size"]
        newest = max(newest, fp["mtime_ns"])
        count += 1
    return {"size": size, "mtime_ns": newest, "sha256": digest.hexdigest(), "files": count}


def _folder_files(root: str) -> list[str]:
    """Relative names of the regular files below ``root``, sorted; hidden entries skipped."""
    found = []
    for folder, dirs, names in os.walk(root, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            full = os.path.join(folder, name)
            if not name.startswith(".") and os.path.isfile(full):
                found.append(os.path.relpath(full, root))
    return sorted(found)


def _raise(err: OSError) -> None:
    raise err


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar_dirs(path: str, cache_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Where a file's sidecar may live, in order of preference."""
    first = Path(cache_dir) if cache_dir else Path(path).parent / SIDECAR_DIRNAME
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genodl"
    return [first, user / "fingerprints"]


def _sidecar_name(path: str) -> str:
    tag = hashlib.sha256(path.encode()).hexdigest()[:16]
    return f"{Path(path).name}.{tag}.sha256.json"


def _read_sidecar(path: str, st: os.stat_result,
                  cache_dir: str | os.PathLike[str] | None) -> str | None:
    for folder in _sidecar_dirs(path, cache_dir):
        try:
            entry = json.loads((folder / _sidecar_name(path)).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and entry.get("path") == path and \
                entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns and \
                isinstance(entry.get("sha256"), str):
            return entry["sha256"]
    return None


def _write_sidecar(path: str, st: os.stat_result, sha: str,
                   cache_dir: str | os.PathLike[str] | None) -> None:
    """Keep the hash for next time; a folder that cannot be written is skipped, never fatal."""
    from genodl_core.records import atomic_write_json

    entry = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    for folder in _sidecar_dirs(path, cache_dir):
        try:
            atomic_write_json(folder / _sidecar_name(path), entry)
            return
        except OSError as err:
            log.debug("cannot keep the fingerprint of %s in %s: %s", path, folder, err)


def recorded_fingerprints(record: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The well-formed ``data_fingerprints`` of a result or provenance object ({} if none)."""
    value = record.get(FINGERPRINTS_KEY) if isinstance(record, Mapping) else None
    if not isinstance(value, Mapping):
        return {}
    return {str(p): dict(fp) for p, fp in value.items()
            if isinstance(fp, Mapping) and isinstance(fp.get("sha256"), str)}


def describe(fingerprint: Mapping[str, Any] | None) -> str:
    """One fingerprint as text: ``sha256 0123456789ab, 1234 bytes, modified <ns>``."""
    if not fingerprint:
        return "no such file"
    return (f"sha256 {str(fingerprint.get('sha256'))[:12]}, {fingerprint.get('size')} bytes, "
            f"mtime_ns {fingerprint.get('mtime_ns')}")


@dataclass
class DataChange:
    """A data file whose content differs from what some done trials recorded."""

    path: str
    recorded: dict[str, Any]
    current: dict[str, Any] | None
    trial_ids: list[str]

    def describe(self) -> str:
        shown = ", ".join(self.trial_ids[:3]) + (", ..." if len(self.trial_ids) > 3 else "")
        return (f"data file {self.path} changed since {len(self.trial_ids)} done trial(s) "
                f"({shown}) read it: recorded {describe(self.recorded)}; now "
                f"{describe(self.current)}")


def find_changes(recorded: Iterable[tuple[str, Mapping[str, Any]]]) -> list[DataChange]:
    """Compare each trial's recorded fingerprints with the files as they are now.

    Parameters
    ----------
    recorded
        ``(trial_id, data_fingerprints)`` of done trials.

    Returns
    -------
    list of DataChange
        One per (file, recorded version) that differs from the file now (or whose file is
        gone), with the trials that recorded it; content counts, not the modification time.
    """
    current: dict[str, dict[str, Any] | None] = {}
    changes: dict[tuple[str, str], DataChange] = {}
    for trial_id, fingerprints in recorded:
        for path, fp in fingerprints.items():
            if path not in current:
                try:
                    current[path] = file_fingerprint(path)
                except OSError:
                    current[path] = None
            now = current[path]
            if now is not None and now["sha256"] == fp.get("sha256"):
                continue
            change = changes.setdefault((path, str(fp.get("sha256"))),
                                        DataChange(path, dict(fp), now, []))
            change.trial_ids.append(trial_id)
    return list(changes.values())


@dataclass
class DataVersion:
    """The done trials that read one version of one data file."""

    path: str
    sha256: str
    size: Any
    trial_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size,
                "n_trials": len(self.trial_ids), "examples": self.trial_ids[:3]}


def data_versions(recorded: Iterable[tuple[str, Mapping[str, Any]]]) -> list[DataVersion]:
    """Versions of each data file among done trials, by path, the most used version first."""
    versions: dict[tuple[str, str], DataVersion] = {}
    for trial_id, fingerprints in recorded:
        for path, fp in fingerprints.items():
            sha = str(fp.get("sha256"))
            versions.setdefault((path, sha), DataVersion(path, sha, fp.get("size"), []))
            versions[(path, sha)].trial_ids.append(trial_id)
    return sorted(versions.values(), key=lambda v: (v.path, -len(v.trial_ids), v.sha256))


def mixed_versions(versions: list[DataVersion]) -> dict[str, list[DataVersion]]:
    """The files that more than one version of was read: ``{path: versions}``."""
    by_path: dict[str, list[DataVersion]] = {}
    for version in versions:
        by_path.setdefault(version.path, []).append(version)
    return {path: vs for path, vs in by_path.items() if len(vs) > 1}


def describe_mixed(path: str, versions: list[DataVersion]) -> str:
    """One line naming a file and each of its versions with their trials."""
    parts = []
    for v in versions:
        shown = ", ".join(v.trial_ids[:3]) + (", ..." if len(v.trial_ids) > 3 else "")
        parts.append(f"sha256 {v.sha256[:12]} ({v.size} bytes; {len(v.trial_ids)} trials: "
                     f"{shown})")
    return f"data file {path}: done trials read {len(versions)} versions: " + "; ".join(parts)


def data_columns(fingerprints: Mapping[str, Any] | None) -> dict[str, str]:
    """The data columns of one trial (see :data:`DATA_COLUMNS`).

    ``data_fingerprint`` is one short digest of every file the trial read (path and sha256;
    equal for trials that read the same content, "" for synthetic data or a record without
    fingerprints); ``data_fingerprints_json`` the full per-file fingerprints as JSON text.
    """
    fps = dict(fingerprints or {})
    if not fps:
        return {"data_fingerprint": "", "data_fingerprints_json": "{}"}
    text = "\n".join(f"{p}\0{fps[p].get('sha256')}" for p in sorted(fps))
    return {"data_fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16],
            "data_fingerprints_json": json.dumps(fps, sort_keys=True)}


__all__ = ["FINGERPRINTS_KEY", "DATA_COLUMNS", "DataChange", "DataVersion", "data_files",
           "data_fingerprints", "file_fingerprint", "recorded_fingerprints", "find_changes",
           "data_versions", "mixed_versions", "describe_mixed", "data_columns", "describe"]
