"""Which failed trial attempts Parsl should retry.

Parsl calls ``retry_handler(exception, task_record)`` after every failed attempt and retries the
task while the summed costs stay within ``Config.retries``. We separate two kinds of failure:

* infrastructure and transient failures (a lost worker or manager: a node died, the batch job
  hit its walltime; an executor whose pilot jobs kept failing; CUDA out-of-memory caused by a
  neighbour; I/O errors) cost 1, so they are retried up to ``retries`` times, and a trial that
  uses them all up is recorded as a retryable failure for ``genodl rerun``;
* deterministic failures (an invalid spec, bad data, a bug in the model code) would fail the
  same way again, so they cost more than any retry budget and are recorded as failed at once.

Deterministic failures of a trial normally never reach this handler: the trial runner records
them and the app returns normally (see :mod:`workflows.apps`). What arrives here are
exceptions raised around the trial, and :class:`~workflows.apps.RetryableTrialFailure`, which
the app raises for a recorded failure that a retry could cure.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from genodl_core.errors import GenodlError

log = logging.getLogger(__name__)

Kind = Literal["infrastructure", "transient", "deterministic"]

#: Cost that exceeds any sensible retry budget: Parsl then fails the task at once.
NO_RETRY_COST = 10**6

#: Parsl exception class names that mean the machinery lost the task, not that it failed:
#: a lost worker or manager, an executor put in a bad state because its blocks (pilot jobs)
#: failed (``BadStateException`` on the tasks it held, ``TooManyJobFailuresError`` raised by
#: the submit of every later attempt), or a provider that could not submit a block. Matched by
#: name so that this module works with the Parsl releases that moved them. Other executor
#: errors (``InvalidResourceSpecification``, ``UnsupportedFeatureError``) are configuration
#: mistakes that every attempt would repeat, so they stay deterministic.
_INFRASTRUCTURE_NAMES = frozenset({
    "WorkerLost", "ManagerLost", "BadStateException", "ScalingFailed", "TooManyJobFailuresError",
})


def classify(exception: BaseException) -> Kind:
    """Say whether a failed attempt is worth retrying and why.

    Parameters
    ----------
    exception
        What the attempt raised (as Parsl re-raises it on the driver).

    Returns
    -------
    'infrastructure' (lost worker/manager/executor), 'transient' (a recorded failure that a
    retry may cure, out-of-memory, OS errors) or 'deterministic' (everything else).
    """
    for cls in type(exception).__mro__:
        if cls.__name__ in _INFRASTRUCTURE_NAMES:
            return "infrastructure"
    if isinstance(exception, GenodlError):
        return "deterministic" if exception.deterministic else "transient"
    if isinstance(exception, (OSError, MemoryError, ConnectionError, TimeoutError)):
        return "transient"
    if type(exception).__name__ in ("OutOfMemoryError", "AcceleratorError"):
        return "transient"
    return "deterministic"


def retry_handler(exception: BaseException, task_record: dict[str, Any]) -> float:
    """Parsl retry handler: cost 1 for retryable failures, more than any budget otherwise.

    Parameters
    ----------
    exception
        The exception of the failed attempt.
    task_record
        Parsl's record of the task (its ``id``, ``try_id`` and ``fail_cost`` are logged).

    Returns
    -------
    The cost Parsl adds to the task's ``fail_cost``.
    """
    kind = classify(exception)
    task = task_record.get("id") if isinstance(task_record, dict) else None
    attempt = (task_record.get("try_id", 0) + 1) if isinstance(task_record, dict) else None
    if kind == "deterministic":
        log.warning("task %s attempt %s failed deterministically (%s: %s): not retried",
                    task, attempt, type(exception).__name__, _first_line(exception))
        return NO_RETRY_COST
    log.warning("task %s attempt %s failed (%s, %s: %s): retryable", task, attempt, kind,
                type(exception).__name__, _first_line(exception))
    return 1


def _first_line(exception: BaseException) -> str:
    text = str(exception).strip()
    return text.splitlines()[0] if text else ""


__all__ = ["classify", "retry_handler", "NO_RETRY_COST"]
