"""Which failures are worth another attempt: one answer for the trial runner and the workflow.

A failure is one of three kinds:

* ``infrastructure``: the machinery lost the task (a lost worker or manager, an executor whose
  pilot jobs kept failing, a provider that could not submit a block); the trial itself never
  failed, so it is retried;
* ``transient``: the attempt failed in a way that depends on the node and its neighbours
  (out of memory on the GPU, which a neighbouring process may hold, a CUDA error, I/O and
  network errors, an interrupt, our own errors that say they are not deterministic); a retry
  may succeed;
* ``deterministic``: a retry would fail the same way (an invalid spec, bad data, a bug, a
  missing or forbidden path, out of memory on the host: a spec that asks for more memory than
  the host has, e.g. ``n_train = 1e11``, asks for it on every attempt).

Independently of the kind, :func:`storage_error` says whether a failure means that the storage
cannot take writes at all (full, over quota, read-only): every later trial would fail the same
way, so the driver stops the run instead of failing trial after trial.

This module imports neither torch nor Parsl: their exceptions are recognised by class name.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Literal

from genodl_core.errors import GenodlError

Kind = Literal["deterministic", "transient", "infrastructure"]

#: Parsl exception class names that mean the machinery lost the task, not that it failed:
#: a lost worker or manager, an executor put in a bad state because its blocks (pilot jobs)
#: failed (``BadStateException`` on the tasks it held, ``TooManyJobFailuresError`` raised by
#: the submit of every later attempt), or a provider that could not submit a block. Matched by
#: name (on the class and its bases) so that this works with the Parsl releases that moved them
#: and without importing Parsl. Other executor errors (``InvalidResourceSpecification``,
#: ``UnsupportedFeatureError``) are configuration mistakes that every attempt would repeat, so
#: they stay deterministic.
INFRASTRUCTURE_NAMES = frozenset({
    "WorkerLost", "ManagerLost", "BadStateException", "ScalingFailed", "TooManyJobFailuresError",
})

#: OS errors that name a missing or forbidden path: the same path fails the same way again.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

#: Exception class names of torch's out-of-memory and device errors (torch is not imported).
DEVICE_ERROR_NAMES = frozenset({"OutOfMemoryError", "AcceleratorError"})

#: Text of a device failure raised as a plain RuntimeError (older torch, CUDA runtime errors).
DEVICE_ERROR_TEXT = ("CUDA error", "out of memory")

#: Text of torch's host out-of-memory error (a RuntimeError): deterministic, like MemoryError.
HOST_MEMORY_TEXT = ("DefaultCPUAllocator", "can't allocate memory")

#: errno values that say the storage as a whole takes no more writes (full, over quota,
#: read-only), as opposed to one path being missing or forbidden.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

#: How an OSError reads once recorded as text: ``[Errno 28] No space left on device: 'x'``.
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\][^:'\n]*(?:: '([^'\n]*)')?")


def classify(err: BaseException) -> Kind:
    """Say whether a failure is worth another attempt, and why.

    Parameters
    ----------
    err
        What the attempt raised: in the trial runner, or as Parsl re-raises it on the driver.

    Returns
    -------
    'infrastructure' (lost worker, manager or executor), 'transient' (a retry may cure it) or
    'deterministic' (a retry would fail the same way).
    """
    for cls in type(err).__mro__:
        if cls.__name__ in INFRASTRUCTURE_NAMES:
            return "infrastructure"
    if isinstance(err, GenodlError):
        return "deterministic" if err.deterministic else "transient"
    if isinstance(err, (PATH_ERRORS, MemoryError)):
        return "deterministic"
    if isinstance(err, (OSError, KeyboardInterrupt, SystemExit)):
        return "transient"
    if type(err).__name__ in DEVICE_ERROR_NAMES:
        return "transient"
    text = _text(err)
    if any(fragment in text for fragment in HOST_MEMORY_TEXT):
        return "deterministic"
    if any(fragment in text for fragment in DEVICE_ERROR_TEXT):
        return "transient"
    return "deterministic"


def is_deterministic(err: BaseException) -> bool:
    """Would running the same trial again fail the same way?"""
    return classify(err) == "deterministic"


def storage_error(err: BaseException, error_text: str | None = None) -> OSError | None:
    """The error saying that the storage takes no more writes (see :data:`STORAGE_ERRNOS`).

    Parameters
    ----------
    err
        What an attempt raised, with its cause and context searched too.
    error_text
        A failure as recorded in a trial's status (``[Errno 28] No space left on device``):
        failures that reach the driver as text (a recorded failure, Parsl's wrappers) count too.

    Returns
    -------
    An OSError with the errno, its message and the path when one is known; None when the
    failure is something else.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    for text in (error_text or "", _text(err)):
        match = _ERRNO_TEXT.search(text)
        if match and int(match.group(1)) in STORAGE_ERRNOS:
            code = int(match.group(1))
            return OSError(code, os.strerror(code), match.group(2))
    return None


def _text(err: BaseException) -> str:
    try:
        return str(err)[:300]
    except Exception:  # noqa: BLE001 - a classifier must not fail on a broken __str__
        return ""


__all__ = ["Kind", "classify", "is_deterministic", "storage_error", "INFRASTRUCTURE_NAMES",
           "PATH_ERRORS", "STORAGE_ERRNOS"]
