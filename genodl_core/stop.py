"""A request to stop training at the next epoch end, for every trial of this process.

The workflow's driver asks for a stop when it receives SIGINT or SIGTERM. Trials that run as
threads of the driver see the in-process flag (:func:`request_stop`); trials in worker processes
see a stop file the driver writes into the run directory (:func:`watch_stop_file`). The
training engine checks :func:`stop_requested` once per epoch: it writes a checkpoint and raises
:class:`~genodl_core.errors.TrialInterrupted`, so the record says interrupted and a later run
continues from that epoch.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

#: The state a trial stopped by a request ends in (its record stays resumable, not failed).
INTERRUPTED = "interrupted"

_requested = threading.Event()
_files_lock = threading.Lock()
#: Stop files being watched, with how many units of work watch each.
_files: dict[Path, int] = {}


def request_stop() -> None:
    """Ask every trial of this process to stop at its next epoch end."""
    _requested.set()


def clear_stop() -> None:
    """Forget an earlier request (a new run in the same process starts afresh)."""
    _requested.clear()


def stop_requested() -> bool:
    """Whether this process was asked to stop, or a watched stop file exists.

    Cheap enough to call once per epoch: one flag test, plus one ``stat`` per watched file.
    """
    if _requested.is_set():
        return True
    with _files_lock:
        files = list(_files)
    return any(path.exists() for path in files)


@contextlib.contextmanager
def watch_stop_file(path: str | Path) -> Iterator[None]:
    """While inside, the existence of ``path`` counts as a stop request in this process."""
    path = Path(path)
    with _files_lock:
        _files[path] = _files.get(path, 0) + 1
    try:
        yield
    finally:
        with _files_lock:
            _files[path] -= 1
            if not _files[path]:
                del _files[path]


__all__ = ["INTERRUPTED", "request_stop", "clear_stop", "stop_requested", "watch_stop_file"]
