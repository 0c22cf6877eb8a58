"""A binary cache of matrices parsed from slow text formats, safe under concurrent loaders.

Parsing a 500 MB CSV takes tens of seconds; an ensemble runs hundreds of trials on the same
file, often many at once on one node. The first loader parses the file and stores its arrays as
``.npy`` files; later loaders memory-map them, which costs milliseconds and shares pages
between processes.

Layout: one *entry* per source file version, in ``<source dir>/.genodl-cache/`` unless another
directory is given::

    <name>.<key>.<array>.npy   one file per array (e.g. x, y)
    <name>.<key>.json          manifest, written LAST: its presence means the entry is complete
    <name>.<key>.lock          advisory lock serialising the parse among concurrent loaders

``key`` is a hash of the source's absolute path, size and modification time (ns) and a format
tag chosen by the caller (bump it when the parser changes). A modified source therefore has a
new key and its stale entry is never read (it is removed when the new one is written).

Every file is written under a unique temporary name in the same directory, flushed to disk
and moved into place with :func:`os.replace` (atomic on POSIX file systems), so a reader never
sees a half-written file. Concurrent loaders take an exclusive ``flock`` on the entry's lock
file so that one parses while the others wait and then memory-map its result; where the file
system does not support locks, each loader parses and the identical results replace each other
atomically, which is slower but still correct. A cache directory that cannot be written is
not an error: the parsed arrays are returned from memory and a warning is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np

log = logging.getLogger(__name__)

#: Directory created next to a source file when no cache directory is given.
CACHE_DIRNAME = ".genodl-cache"
#: Version of the entry layout itself (not of any parser).
LAYOUT_VERSION = 1

Status = Literal["hit", "miss", "disabled", "unwritable"]
Builder = Callable[[], "tuple[dict[str, np.ndarray], dict[str, Any]]"]


@dataclass(frozen=True)
class CacheResult:
    """Arrays of one source plus how they were obtained.

    ``status`` is ``"hit"`` (memory-mapped from an existing entry), ``"miss"`` (parsed now and
    stored), ``"disabled"`` (caching turned off) or ``"unwritable"`` (parsed now, the cache
    directory could not be written). Arrays are read-only in every case.
    """

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    status: Status
    key: str
    manifest: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance: status, key, manifest path, seconds spent."""
        return {"status": self.status, "key": self.key, "manifest": self.manifest,
                "seconds": round(self.seconds, 3)}


def source_key(source: str | os.PathLike[str], tag: str) -> str:
    """Hash identifying one version of ``source`` as read by the parser called ``tag``.

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    """
    path = Path(source).resolve()
    st = path.stat()
    text = json.dumps([LAYOUT_VERSION, tag, str(path), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def default_cache_dir(source: str | os.PathLike[str]) -> Path:
    """``<directory of source>/.genodl-cache``."""
    return Path(source).resolve().parent / CACHE_DIRNAME


def load_or_build(source: str | os.PathLike[str], build: Builder, *, tag: str,
                  cache_dir: str | os.PathLike[str] | None = None,
                  enabled: bool = True) -> CacheResult:
    """Return the arrays of ``source`` from the cache, or build them and store them.

    Parameters
    ----------
    source
        The file the arrays are derived from; its path, size and mtime key the entry.
    build
        Called (at most once per process, and once overall where locks work) on a miss;
        returns ``(arrays, meta)``: named numpy arrays and a small JSON-ready dict kept in the
        manifest (e.g. row counts). It may raise; nothing is written then.
    tag
        Name and version of the parser, e.g. ``"nt3_csv/1"``; part of the key.
    cache_dir
        Where entries live; default :func:`default_cache_dir`.
    enabled
        ``False`` skips the cache entirely (always builds, status ``"disabled"``).

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    Exception
        Whatever ``build`` raises (e.g. a DataError describing a malformed file).
    """
    started = time.monotonic()
    source = Path(source).resolve()
    key = source_key(source, tag)
    if not enabled:
        arrays, meta = build()
        return CacheResult(_read_only(arrays), meta, "disabled", key,
                           seconds=time.monotonic() - started)

    directory = Path(cache_dir).expanduser().resolve() if cache_dir else default_cache_dir(source)
    prefix = directory / f"{source.name}.{key}"
    manifest = prefix.with_name(prefix.name + ".json")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return _build_unwritable(source, build, key, directory, err, started)

    hit = _read_entry(manifest, key)
    if hit is not None:
        return CacheResult(hit[0], hit[1], "hit", key, str(manifest), time.monotonic() - started)

    stack = contextlib.ExitStack()
    try:
        # Entering (not just creating) the context opens the lock file: a directory that
        # exists but is read-only fails here and falls back to parsing without a cache.
        stack.enter_context(_exclusive_lock(prefix.with_name(prefix.name + ".lock")))
    except OSError as err:
        return _build_unwritable(source, build, key, directory, err, started)
    with stack:
        # Another loader may have written the entry while this one waited for the lock.
        hit = _read_entry(manifest, key)
        if hit is not None:
            return CacheResult(hit[0], hit[1], "hit", key, str(manifest),
                               time.monotonic() - started)
        arrays, meta = build()
        if source_key(source, tag) != key:
            log.warning("%s changed while it was being read; not caching this version", source)
            return CacheResult(_read_only(arrays), meta, "unwritable", key,
                               seconds=time.monotonic() - started)
        try:
            _write_entry(prefix, manifest, source, key, tag, arrays, meta)
        except OSError as err:
            log.warning("cannot write cache entry %s (%s); using the parsed data uncached",
                        manifest, err)
            return CacheResult(_read_only(arrays), meta, "unwritable", key,
                               seconds=time.monotonic() - started)
    _prune_stale(directory, source, key)
    # Hand back the memory-mapped copies so that a miss and a hit look the same to callers and
    # the parsed arrays can be freed.
    stored = _read_entry(manifest, key)
    if stored is None:
        return CacheResult(_read_only(arrays), meta, "miss", key, str(manifest),
                           time.monotonic() - started)
    return CacheResult(stored[0], stored[1], "miss", key, str(manifest), time.monotonic() - started)


def _build_unwritable(source: Path, build: Builder, key: str, directory: Path, err: OSError,
                      started: float) -> CacheResult:
    log.warning("cache directory %s unusable (%s); parsing %s without a cache", directory, err,
                source)
    arrays, meta = build()
    return CacheResult(_read_only(arrays), meta, "unwritable", key,
                       seconds=time.monotonic() - started)


def _read_entry(manifest: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Memory-map a complete entry, or return None if it is absent or damaged."""
    try:
        with open(manifest, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable cache manifest %s: %s", manifest, err)
        return None
    try:
        if doc["layout"] != LAYOUT_VERSION or doc["key"] != key:
            return None
        arrays = {}
        for name, desc in doc["arrays"].items():
            arr = np.load(manifest.with_name(desc["file"]), mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != desc["shape"] or str(arr.dtype) != desc["dtype"]:
                raise ValueError(f"array {name!r} is {arr.dtype}{arr.shape}, manifest says "
                                 f"{desc['dtype']}{desc['shape']}")
            arrays[name] = arr
        return arrays, dict(doc.get("meta", {}))
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring damaged cache entry %s: %s", manifest, err)
        return None


def _write_entry(prefix: Path, manifest: Path, source: Path, key: str, tag: str,
                 arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    described = {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        target = prefix.with_name(f"{prefix.name}.{name}.npy")
        with _atomic_file(target) as fh:
            np.save(fh, arr, allow_pickle=False)
        described[name] = {"file": target.name, "shape": list(arr.shape), "dtype": str(arr.dtype)}
    st = source.stat()
    doc = {"layout": LAYOUT_VERSION, "key": key, "tag": tag, "source": str(source),
           "size": st.st_size, "mtime_ns": st.st_mtime_ns, "arrays": described, "meta": meta,
           "written_at": time.time()}
    with _atomic_file(manifest) as fh:
        fh.write(json.dumps(doc, indent=1).encode())
    _fsync_dir(manifest.parent)


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[Any]:
    """Write to a unique temporary sibling, fsync, then rename over ``target``."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    # Makes the renames durable; not every platform or file system allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (no-op where ``flock`` is unsupported)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError) as err:
            log.debug("no file lock on %s (%s); concurrent loaders may parse twice", path, err)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _prune_stale(directory: Path, source: Path, key: str) -> None:
    """Remove entries of earlier versions of ``source`` (best effort; readers keep their maps)."""
    for other in directory.glob(f"{source.name}.*.json"):
        if other.name == f"{source.name}.{key}.json":
            continue
        try:
            doc = json.loads(other.read_text(encoding="utf-8"))
            if doc.get("source") != str(source):
                continue
            other.unlink()
            for desc in doc.get("arrays", {}).values():
                with contextlib.suppress(FileNotFoundError):
                    other.with_name(desc["file"]).unlink()
            with contextlib.suppress(FileNotFoundError):
                other.with_suffix(".lock").unlink()
            log.info("removed stale cache entry %s", other)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.debug("could not prune %s: %s", other, err)


def _read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in arrays.items():
        view = arr.view()
        view.flags.writeable = False
        out[name] = view
    return out


__all__ = ["CacheResult", "load_or_build", "source_key", "default_cache_dir", "CACHE_DIRNAME"]
