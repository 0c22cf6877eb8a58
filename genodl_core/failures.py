"""Which failures are worth another attempt: one answer for the trial runner and the workflow.

A failure is one of three kinds:

* ``infrastructure``: the machinery lost the task (a lost worker or manager, an executor whose
  pilot jobs kept failing, a provider that could not submit a block); the trial itself never
  failed, so it is retried;
* ``transient``: the attempt failed in a way that depends on the node and its neighbours
  (out of memory on the host or the GPU, a CUDA error, I/O and network errors, an interrupt,
  our own errors that say they are not deterministic); a retry may succeed;
* ``deterministic``: a retry would fail the same way (an invalid spec, bad data, a bug, a
  missing or forbidden path).

This module imports neither torch nor Parsl: their exceptions are recognised by class name.
"""

from __future__ import annotations

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
    if isinstance(err, PATH_ERRORS):
        return "deterministic"
    if isinstance(err, (OSError, MemoryError, KeyboardInterrupt, SystemExit)):
        return "transient"
    if type(err).__name__ in DEVICE_ERROR_NAMES:
        return "transient"
    try:
        text = str(err)[:300]
    except Exception:  # noqa: BLE001 - a classifier must not fail on a broken __str__
        text = ""
    if any(fragment in text for fragment in DEVICE_ERROR_TEXT):
        return "transient"
    return "deterministic"


def is_deterministic(err: BaseException) -> bool:
    """Would running the same trial again fail the same way?"""
    return classify(err) == "deterministic"


__all__ = ["Kind", "classify", "is_deterministic", "INFRASTRUCTURE_NAMES", "PATH_ERRORS"]
