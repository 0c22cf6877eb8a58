"""The Parsl app that runs one trial, and the plain function behind it.

Why a ``python_app`` and not a ``bash_app`` around ``genodl trial``
-----------------------------------------------------------------
A bash_app starts a fresh Python for every trial: importing torch, creating the CUDA context and
loading (or memory-mapping) the dataset cost several seconds each time, 10-20% of a 25 s NT3
trial on a modern GPU. A python_app executed by HighThroughputExecutor's *persistent* workers
pays that once per worker: ``run_trial`` keeps the scaled dataset in an in-process cache and the
CUDA context stays alive, so the second and later trials of a worker start training at once.
Each HTEX worker is still its own process, pinned to its GPU through ``CUDA_VISIBLE_DEVICES``
(the executor's accelerator list), so trials on different GPUs stay isolated.

What process isolation would have bought us is survival of the sweep when a trial crashes the
interpreter (a segfault in a CUDA kernel, the OOM killer). With HTEX that shows up as Parsl's
``WorkerLost``; the executor starts a new worker and our retry handler retries the trial, so the
sweep survives anyway. With the thread executor (the local default) trials share the driver's
process; that is the price of a zero-setup local run, and ``threads_per_trial`` keeps several
concurrent trials from oversubscribing the cores.

Failures as data
----------------
``run_trial`` never raises for a failing trial; it records the failure and says whether a retry
could help. The app returns normally for deterministic failures (so Parsl does not retry them)
and raises :class:`RetryableTrialFailure` for the others (so the retry handler retries them).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from parsl import python_app

from genodl_core import records
from genodl_core.errors import GenodlError, InfrastructureError

from workflows.rundir import ATTEMPTS_LOG, LOGS_DIR, TRIALS_DIR, append_event, trial_attempt_lock

log = logging.getLogger(__name__)


class RetryableTrialFailure(InfrastructureError):
    """A trial attempt failed in a way that may not repeat (out of memory, I/O, a lost device).

    Its record already says 'failed'; raising lets Parsl's retry handler try again.
    """

    def __init__(self, trial_id: str, error_type: str | None, error: str | None):
        self.trial_id = trial_id
        self.error_type = error_type
        self.error = error
        super().__init__(f"trial {trial_id}: {error_type}: {error}")

    def __reduce__(self):
        # Exceptions travel from workers to the driver by pickle; keep all three fields.
        return (type(self), (self.trial_id, self.error_type, self.error))


def execute_trial(spec: Mapping[str, Any], trial_id: str, run_dir: str | Path, *,
                  threads: int | None = None) -> dict[str, Any]:
    """Run one trial of a sweep in this process, unless its record is already complete.

    Parameters
    ----------
    spec
        The resolved trial spec (plain data, as in ``sweep.json``).
    trial_id
        Its id (checked against the spec by the record).
    run_dir
        The sweep's run directory; the record goes to ``run_dir/trials/<trial_id>/``.
    threads
        Torch intra-op threads for this process (None leaves torch's default).

    Returns
    -------
    dict
        ``trial_id``, ``state`` ('done' | 'failed'), ``final`` metrics, ``error_type``,
        ``error``, ``deterministic``, ``wall_s``, ``host``, ``pid``, ``gpu`` and ``skipped``
        (True when a complete record was found and nothing ran).

    Raises
    ------
    RetryableTrialFailure
        When the trial failed and the runner says a retry could succeed.
    """
    from genodl_core.training.trial import run_trial

    run_dir = Path(run_dir)
    trials_dir = run_dir / TRIALS_DIR
    events = run_dir / LOGS_DIR / ATTEMPTS_LOG
    where = {"trial_id": trial_id, "host": socket.gethostname(), "pid": os.getpid(),
             "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
             "worker_rank": os.environ.get("PARSL_WORKER_RANK")}
    with trial_attempt_lock(trials_dir, trial_id):
        if records.is_complete(trials_dir / trial_id, trial_id):
            append_event(events, {"event": "skip", **where})
            status = records.read_status(trials_dir / trial_id) or {}
            return {**where, "state": records.DONE, "skipped": True, "final": {},
                    "error_type": None, "error": None, "deterministic": None,
                    "wall_s": status.get("wall_s")}
        _set_threads(threads)
        append_event(events, {"event": "start", **where})
        t0 = time.monotonic()
        result = run_trial(dict(spec), trials_dir)
        append_event(events, {"event": "end", "state": result.state,
                              "wall_s": time.monotonic() - t0,
                              "error_type": result.error_type, **where})
    if result.trial_id != trial_id:
        raise GenodlError(f"spec of trial {trial_id} resolves to {result.trial_id}: "
                                  f"the worker runs a different genodl version than the driver")
    if result.state == records.FAILED and not result.deterministic:
        raise RetryableTrialFailure(trial_id, result.error_type, result.error)
    return {**where, "state": result.state, "skipped": False, "final": dict(result.final),
            "error_type": result.error_type, "error": result.error,
            "deterministic": result.deterministic, "wall_s": result.wall_s}


def _set_threads(threads: int | None) -> None:
    if not threads:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@python_app
def trial_app(spec: dict[str, Any], trial_id: str, run_dir: str,
              threads: int | None = None) -> dict[str, Any]:
    """Parsl app around :func:`execute_trial` (imports inside: it runs on remote workers)."""
    from workflows.apps import execute_trial

    return execute_trial(spec, trial_id, run_dir, threads=threads)


__all__ = ["RetryableTrialFailure", "execute_trial", "trial_app"]
