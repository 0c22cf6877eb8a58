"""The Parsl app that runs one trial, and the plain function behind it.

Why a ``python_app`` and not a ``bash_app`` around ``genodl trial``
-----------------------------------------------------------------
A bash_app starts a fresh Python for every trial: importing torch, creating the CUDA context and
loading (or memory-mapping) the dataset cost several seconds each time, a sizeable share of an
NT3 trial on a modern GPU. A python_app executed by HighThroughputExecutor's *persistent* workers
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

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from parsl import python_app

from genodl_core import records
from genodl_core.errors import GenodlError, InfrastructureError
from genodl_core.stop import INTERRUPTED, stop_requested, watch_stop_file

from site_configs import usable_cores
from workflows.rundir import ATTEMPTS_LOG, LOGS_DIR, TRIALS_DIR, append_event, trial_attempt_lock

log = logging.getLogger(__name__)

#: Written into the run directory by a driver asked to stop (SIGINT, SIGTERM): units that have
#: not started yet start no trial, and training trials stop at their next epoch end.
STOP_FILE = ".stop"


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
                  threads: int | None = None,
                  checkpoint_interval_s: float | None = None) -> dict[str, Any]:
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
        Torch intra-op threads for this process (None: see :func:`worker_threads`).

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
    (result,) = _run_unit([spec], [trial_id], Path(run_dir), threads=threads,
                          checkpoint_interval_s=checkpoint_interval_s)
    if result["state"] == records.FAILED and result["deterministic"] is False:
        raise RetryableTrialFailure(trial_id, result["error_type"], result["error"])
    return result


def execute_pack(specs: Sequence[Mapping[str, Any]], trial_ids: Sequence[str],
                 run_dir: str | Path, *, threads: int | None = None,
                 submitted_at: float | None = None,
                 checkpoint_interval_s: float | None = None) -> list[dict[str, Any]]:
    """Run several compatible trials as one batched computation, one record each.

    The trials (same architecture and training settings, differing in seed and noise; see
    ``genodl_core.training.trial.pack_key``) share one grouped computation on this worker's
    device, which fills a GPU far better than one small trial. Complete members are skipped.

    Parameters
    ----------
    specs, trial_ids
        The members' resolved specs and ids, in the same order.
    run_dir
        The sweep's run directory.
    threads
        Torch intra-op threads for this process.
    submitted_at
        When the driver submitted this pack (``time.time()``). On a retry, members that failed
        deterministically since then are not run again: only the retryable ones are.

    Returns
    -------
    list of dict
        One result per member, as :func:`execute_trial` returns it, in ``trial_ids`` order.

    Raises
    ------
    RetryableTrialFailure
        When some member failed in a way a retry could cure (the whole pack is retried; its
        complete and deterministically failed members are skipped then).
    """
    results = _run_unit(specs, trial_ids, Path(run_dir), threads=threads,
                        submitted_at=submitted_at, checkpoint_interval_s=checkpoint_interval_s)
    retryable = [r for r in results
                 if r["state"] == records.FAILED and r["deterministic"] is False]
    if retryable:
        first = retryable[0]
        raise RetryableTrialFailure(first["trial_id"], first["error_type"],
                                    f"{first['error']} ({len(retryable)} of "
                                    f"{len(results)} trials of the pack)")
    return results


def _run_unit(specs: Sequence[Mapping[str, Any]], trial_ids: Sequence[str], run_dir: Path, *,
              threads: int | None, submitted_at: float | None = None,
              checkpoint_interval_s: float | None = None) -> list[dict[str, Any]]:
    """Run the trials that still need it, holding every member's attempt lock meanwhile."""
    trials_dir = run_dir / TRIALS_DIR
    events = run_dir / LOGS_DIR / ATTEMPTS_LOG
    where = {"host": socket.gethostname(), "pid": os.getpid(),
             "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
             "worker_rank": os.environ.get("PARSL_WORKER_RANK")}
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as locks:
        locks.enter_context(watch_stop_file(run_dir / STOP_FILE))
        # One global order of acquisition: two packs sharing members can never deadlock.
        for trial_id in sorted(set(trial_ids)):
            locks.enter_context(trial_attempt_lock(trials_dir, trial_id))
        todo = []
        for spec, trial_id in zip(specs, trial_ids):
            trial_dir = trials_dir / trial_id
            status = records.read_status(trial_dir) or {}
            if records.is_complete(trial_dir, trial_id):
                append_event(events, {"event": "skip", "trial_id": trial_id, **where})
                results[trial_id] = _result(trial_id, records.DONE, where, skipped=True,
                                            wall_s=status.get("wall_s"))
            elif (submitted_at is not None and status.get("state") == records.FAILED
                  and status.get("deterministic") and status.get("time", 0) >= submitted_at):
                results[trial_id] = _result(trial_id, records.FAILED, where, skipped=True,
                                            error_type=status.get("error_type"),
                                            error=status.get("error"), deterministic=True)
            else:
                todo.append((spec, trial_id))
        if todo and stop_requested():
            todo = _cancel_for_stop(todo, events, where, results)
        if todo:
            used = _set_threads(threads)
            for _, trial_id in todo:
                append_event(events, {"event": "start", "trial_id": trial_id, **where,
                                      "threads": used})
            t0 = time.monotonic()
            outcomes = _run_trials([spec for spec, _ in todo], trials_dir, checkpoint_interval_s)
            for (_, trial_id), outcome in zip(todo, outcomes):
                if outcome.trial_id != trial_id:
                    raise GenodlError(f"spec of trial {trial_id} resolves to {outcome.trial_id}: "
                                      f"the worker runs another genodl version than the driver")
                append_event(events, {"event": "end", "trial_id": trial_id,
                                      "state": outcome.state, "wall_s": time.monotonic() - t0,
                                      "error_type": outcome.error_type,
                                      "deterministic": outcome.deterministic, **where})
                results[trial_id] = _result(trial_id, outcome.state, where,
                                            final=dict(outcome.final),
                                            error_type=outcome.error_type, error=outcome.error,
                                            deterministic=outcome.deterministic,
                                            wall_s=outcome.wall_s)
    return [results[trial_id] for trial_id in trial_ids]


def _cancel_for_stop(todo: list[tuple[Mapping[str, Any], str]], events: Path,
                     where: Mapping[str, Any],
                     results: dict[str, dict[str, Any]]) -> list[tuple[Mapping[str, Any], str]]:
    """The run was asked to stop before these trials started: start none of them.

    Their records are left as they were (missing, interrupted, failed), so the next run
    picks them up exactly as this one would have.
    """
    for _, trial_id in todo:
        append_event(events, {"event": "cancel", "trial_id": trial_id, **where})
        results[trial_id] = _result(trial_id, INTERRUPTED, where, skipped=True)
    return []


def _run_trials(specs: list[Mapping[str, Any]], trials_dir: Path,
                checkpoint_interval_s: float | None) -> list[Any]:
    from genodl_core.training.plan import RunSettings
    from genodl_core.training.trial import run_trials

    settings = RunSettings.from_env()
    if checkpoint_interval_s is not None:  # the sweep's choice wins over the environment's
        settings = settings.replace(checkpoint_interval_s=checkpoint_interval_s or None)
    return run_trials([dict(s) for s in specs], trials_dir, pack_size=len(specs),
                      settings=settings)


def _result(trial_id: str, state: str, where: Mapping[str, Any], *, skipped: bool = False,
            final: dict[str, float] | None = None, error_type: str | None = None,
            error: str | None = None, deterministic: bool | None = None,
            wall_s: float | None = None) -> dict[str, Any]:
    return {"trial_id": trial_id, **where, "state": state, "skipped": skipped,
            "final": final or {}, "error_type": error_type, "error": error,
            "deterministic": deterministic, "wall_s": wall_s}


def worker_threads(threads: int | None) -> int | None:
    """Torch threads for trials in this process.

    An explicit count wins. Otherwise, in an HTEX worker (``PARSL_WORKER_COUNT`` is set by the
    worker pool) the node's usable cores are shared among the node's workers: torch's own
    default is every core, and N workers each taking every core oversubscribe the node N-fold.
    Elsewhere (the thread executor, a plain process) torch's default is left alone.
    """
    if threads:
        return threads
    try:
        workers = int(os.environ.get("PARSL_WORKER_COUNT", ""))
    except ValueError:
        return None
    return max(1, usable_cores() // max(workers, 1))


def _set_threads(threads: int | None) -> int:
    """Apply :func:`worker_threads` to torch; return the thread count torch now uses."""
    import torch

    wanted = worker_threads(threads)
    if wanted and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


@python_app
def trial_app(spec: dict[str, Any], trial_id: str, run_dir: str, threads: int | None = None,
              checkpoint_interval_s: float | None = None) -> dict[str, Any]:
    """Parsl app around :func:`execute_trial` (imports inside: it runs on remote workers)."""
    from workflows.apps import execute_trial

    return execute_trial(spec, trial_id, run_dir, threads=threads,
                         checkpoint_interval_s=checkpoint_interval_s)


@python_app
def pack_app(specs: list[dict[str, Any]], trial_ids: list[str], run_dir: str,
             threads: int | None = None, submitted_at: float | None = None,
             checkpoint_interval_s: float | None = None) -> list[dict[str, Any]]:
    """Parsl app around :func:`execute_pack`: several trials as one batched computation."""
    from workflows.apps import execute_pack

    return execute_pack(specs, trial_ids, run_dir, threads=threads, submitted_at=submitted_at,
                        checkpoint_interval_s=checkpoint_interval_s)


__all__ = ["STOP_FILE", "RetryableTrialFailure", "execute_trial", "execute_pack", "trial_app", "pack_app",
           "worker_threads"]
