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
the app raises for a recorded failure that a retry could cure. Which failures are which is
decided by :func:`genodl_core.failures.classify`, the classifier the trial runner uses too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from genodl_core import records
from genodl_core.failures import Kind, classify, storage_error

log = logging.getLogger(__name__)

#: Cost that exceeds any sensible retry budget: Parsl then fails the task at once.
NO_RETRY_COST = 10**6


def failure_fields(err: BaseException) -> dict[str, Any]:
    """How a failure raised around a trial goes into its record: type, first line, kind."""
    return {"error_type": type(err).__name__, "error": _first_line(err) or type(err).__name__,
            "deterministic": classify(err) == "deterministic"}


def record_driver_failure(trial_dir: str | Path, trial_id: str, *, error_type: str | None,
                          error: str | None, deterministic: bool,
                          previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Record a trial as failed for a failure raised around it, which it could not record.

    Parameters
    ----------
    trial_dir
        The trial's record folder.
    trial_id
        Its id.
    error_type, error, deterministic
        What failed (see :func:`failure_fields`) and whether a retry would fail the same way.
    previous
        The status the trial had (read from ``trial_dir`` when not given); its attempt count
        is kept.

    Returns
    -------
    The status written (``recorded_by`` is ``driver``).
    """
    if previous is None:
        previous = records.read_status(trial_dir) or {}
    return records.write_status(trial_dir, records.FAILED, trial_id=trial_id,
                                attempt=int(previous.get("attempt", 0) or 0),
                                error_type=error_type, error=error,
                                deterministic=deterministic, recorded_by="driver")


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
    if storage_error(exception) is not None:
        # Full or read-only storage: the driver stops the run at the first such failure and
        # says so once; retrying every queued task into it would only add noise.
        log.debug("task %s attempt %s: storage takes no writes (%s): not retried", task,
                  attempt, _first_line(exception))
        return NO_RETRY_COST
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


__all__ = ["Kind", "classify", "retry_handler", "failure_fields", "record_driver_failure",
           "NO_RETRY_COST"]
