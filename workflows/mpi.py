"""Running a sweep over MPI ranks, for allocations where Parsl's interchange cannot run.

Some machines forbid the long-lived TCP connections between compute nodes and a login node that
Parsl's HighThroughputExecutor needs, but always allow ``mpiexec``/``srun``/``jsrun``. There::

    mpiexec -n 7 genodl run SPEC --site mpi --out DIR      # 1 dispatcher + 6 trial ranks

Rank 0 prepares the run directory exactly as the Parsl driver does (same ``sweep.json``, same
records, same skipping of complete trials, same driver lock) and hands trials to the other
ranks one at a time over ``MPI.COMM_WORLD`` (or batched packs of trials, with ``--pack-size``);
a rank asks for the next trial when it finishes one, so uneven trial times balance themselves.
Each rank is a persistent worker like an HTEX worker: it keeps the loaded dataset and CUDA
context between trials. With a single rank (or
without mpiexec) rank 0 runs the trials itself, one after another.

Failures follow the Parsl path's policy: a failure the trial runner calls retryable is queued
again up to ``retries`` times; a deterministic one is recorded and not retried. A rank that dies
takes the MPI job down (MPI has no fault tolerance); the records make the next run a resume.

Site options for ``--site mpi``: ``gpus_per_node=N`` pins each rank to GPU ``local_rank % N``
through ``CUDA_VISIBLE_DEVICES`` (before torch initialises CUDA); when the launcher already set
``CUDA_VISIBLE_DEVICES``, the rank takes the device at that position of the list. Without
``--threads-per-trial``, the trial ranks of a node share its cores for torch's threads.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Mapping

from genodl_core import records
from genodl_core.stop import INTERRUPTED
from genodl_core.errors import SpecError

from workflows.driver import (RERUN_STATES, RunReport, RunSettings, StopRequest, gather_summary,
                              interrupted_states, log_report, make_units, plan_rerun,
                              quiet_trial_logs, select_todo, stop_file_name, trial_slots,
                              workflow_logging)
from workflows.progress import Progress
from workflows.retry import failure_fields, record_driver_failure
from workflows.rundir import RunDir
from workflows.sweep import Sweep

log = logging.getLogger(__name__)

#: Options of the pseudo-site ``mpi`` (validated here; it builds no Parsl config).
MPI_OPTIONS = {"gpus_per_node": "pin rank r to GPU (local rank % N), counted within "
                                  "CUDA_VISIBLE_DEVICES when set; unset: no pinning"}

_TAG_READY, _TAG_TRIAL, _TAG_RESULT, _TAG_STOP = 1, 2, 3, 4


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise SpecError("--site", "mpi", "an environment with mpi4py (pip install mpi4py mpich)",
                        reason=f"mpi4py cannot be imported: {err}") from None
    return MPI


def run_sweep_mpi(sweep: Sweep, out: str | Path, settings: RunSettings | None = None, *,
                  only: Iterable[str] | None = None, comm: Any = None) -> RunReport | None:
    """Run ``sweep`` over the ranks of ``comm`` (default ``MPI.COMM_WORLD``); call on every rank.

    Returns
    -------
    RunReport | None
        The report on rank 0; None on the other ranks.

    Raises
    ------
    SpecError
        On every rank, when the sweep, options or run directory are invalid (found by rank 0
        before any trial starts).
    """
    MPI = _mpi()
    comm = comm or MPI.COMM_WORLD
    rank = comm.Get_rank()
    settings = (settings or RunSettings()).resolve(sweep)
    gpus = _gpus_per_node(settings.options)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks of this node
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = rank_device(
            node.Get_rank(), gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    threads = settings.threads_per_trial or _rank_threads(comm, node)
    if rank != 0:
        go = comm.bcast(None, root=0)
        if go["error"]:
            return None  # rank 0 reports the error
        # A signal mpiexec forwards stops this rank's trial at its next epoch end; the stop
        # file rank 0 writes does the same where only rank 0 got the signal.
        with quiet_trial_logs(), StopRequest(settings.grace_period_s, None).installed():
            _worker(comm, go["run_dir"], settings.worker_options(threads))
        return None

    t0 = time.monotonic()
    try:
        # The lock comes first: a refused second driver must not touch sweep.json.
        run = RunDir.create(out)
        with run.driver_lock():
            run.adopt(sweep, update=settings.update_sweep)
            halt = StopRequest(settings.grace_period_s, run.path / stop_file_name())
            with halt.installed():
                report = _drive(comm, run, sweep, settings, only, threads, t0, halt)
            if report.abandoned:
                # Ranks still training past the grace period: end the whole job now.
                logging.shutdown()
                comm.Abort(report.exit_code)
            return report
    except SpecError as err:
        # The lock, the sweep check or the selection failed before the broadcast: release
        # the waiting ranks.
        comm.bcast({"error": (err.field, err.value, err.allowed, err.reason)}, root=0)
        raise


def _drive(comm: Any, run: RunDir, sweep: Sweep, settings: RunSettings,
           only: Iterable[str] | None, threads: int, t0: float, halt: StopRequest) -> RunReport:
    """Rank 0's part of :func:`run_sweep_mpi`, under the driver lock."""
    size = comm.Get_size()
    with workflow_logging(run):
        todo, already_done = select_todo(run, sweep, only,
                                         rerun_changed_data=settings.rerun_changed_data)
        comm.bcast({"error": None, "run_dir": str(run.path)}, root=0)
        log.info("sweep %s over %d MPI ranks: %d trials, %d complete, %d to run; %d torch "
                 "threads per trial", sweep.name, size, len(sweep.trials), already_done,
                 len(todo), threads)
        try:
            units = make_units(todo, settings.pack_size)
            progress = Progress(already_done + len(todo), already_done,
                                interval_s=settings.progress_interval_s,
                                slots=trial_slots(max(size - 1, 1), units))
            if settings.pack_size > 1:
                log.info("%d trials in %d batched packs", len(todo), len(units))
            abandoned = 0
            if size == 1:
                _serial(run, units, settings.retries, settings.worker_options(threads), progress,
                        halt)
            else:
                abandoned = _dispatch(comm, run, units, settings.retries, progress, halt)
        except BaseException:
            log.exception("dispatcher failed; aborting the MPI job (records are safe)")
            comm.Abort(1)
            raise
        summary = gather_summary(run) if settings.gather else None
        states = run.scan(sweep.trial_ids)
        if halt.requested:
            states = interrupted_states(states)
        report = RunReport(run.path, len(sweep.trials), len(todo), already_done, states,
                           summary, time.monotonic() - t0, stopped_by=halt.signum,
                           abandoned=abandoned)
        log_report(report)
        return report


def rerun_mpi(run_dir: str | Path, settings: RunSettings | None = None, *,
              states: Iterable[str] = RERUN_STATES, trial_ids: Iterable[str] | None = None,
              comm: Any = None) -> RunReport | None:
    """:func:`workflows.driver.rerun` over MPI ranks; call on every rank."""
    sweep, ids = plan_rerun(run_dir, states=states, trial_ids=trial_ids)
    return run_sweep_mpi(sweep, run_dir, settings, only=ids, comm=comm)


def _gpus_per_node(options: Mapping[str, Any]) -> int | None:
    for key in options:
        if key not in MPI_OPTIONS:
            raise SpecError(f"mpi.{key}", options[key], list(MPI_OPTIONS),
                            reason="unknown option of site 'mpi'")
    value = options.get("gpus_per_node")
    if value is None:
        return None
    try:
        gpus = int(value)
    except (TypeError, ValueError):
        raise SpecError("mpi.gpus_per_node", value, "an integer >= 1",
                        reason="expected an integer") from None
    if gpus < 1:
        raise SpecError("mpi.gpus_per_node", value, "an integer >= 1", reason="out of range")
    return gpus


def rank_device(local_rank: int, gpus: int, visible: str | None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value of one rank: device ``local_rank % gpus``.

    When the launcher or batch system already restricted the node's devices (the variable is
    set), the rank picks among those, by position: pinning rank 1 to "1" when only "4,5" are
    this job's would give it a device of another job, or none.

    Parameters
    ----------
    local_rank
        The rank's index among the ranks of its node.
    gpus
        ``gpus_per_node``: how many devices the node's ranks share.
    visible
        The inherited ``CUDA_VISIBLE_DEVICES`` (None when unset).
    """
    if visible is None:
        return str(local_rank % gpus)
    devices = [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if not devices:
        log.warning("mpi.gpus_per_node=%d, but CUDA_VISIBLE_DEVICES=%r hides every device; "
                    "the rank stays on the CPU", gpus, visible)
        return visible
    pool = devices[:gpus]
    if len(pool) < gpus:
        log.warning("mpi.gpus_per_node=%d, but only %d devices are visible (%s); ranks share "
                    "them", gpus, len(pool), visible)
    return pool[local_rank % len(pool)]


def _rank_threads(comm: Any, node: Any) -> int:
    """Torch threads of this rank: its usable cores shared with the trial ranks that overlap.

    Ranks started without binding all see the node's cores, so each gets its share instead
    of torch's default of every core; ranks bound to disjoint cores by the launcher keep
    their own. Rank 0 only dispatches (with more than one rank) and takes no share.
    """
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    world = comm.Get_rank()
    masks = node.allgather((world, mine))
    trains = comm.Get_size() == 1
    mask = set(mine)
    sharing = sum(1 for r, m in masks if (trains or r != 0) and mask & set(m))
    return max(1, len(mask) // max(sharing, 1))


def _attempt(specs: list[dict[str, Any]], trial_ids: list[str], run_dir: str,
             worker: dict[str, Any], submitted_at: float) -> dict[str, Any]:
    """One attempt of a unit (a trial or a batched pack) on this rank, as a message."""
    from workflows.apps import RetryableTrialFailure, execute_pack, execute_trial

    try:
        if len(trial_ids) == 1:
            results = [execute_trial(specs[0], trial_ids[0], run_dir, **worker)]
        else:
            results = execute_pack(specs, trial_ids, run_dir, **worker, submitted_at=submitted_at)
        return {"outcome": "result", "trial_ids": trial_ids, "results": results}
    except RetryableTrialFailure as err:
        return {"outcome": "retry", "trial_ids": trial_ids, "error_type": err.error_type,
                "error": err.error}
    except Exception as err:  # noqa: BLE001 - reported to rank 0, which records it
        return {"outcome": "error", "trial_ids": trial_ids, **failure_fields(err)}


def _worker(comm: Any, run_dir: str, worker: dict[str, Any]) -> None:
    MPI = _mpi()
    status = MPI.Status()
    comm.send(None, dest=0, tag=_TAG_READY)
    while True:
        message = comm.recv(source=0, tag=MPI.ANY_TAG, status=status)
        if status.Get_tag() == _TAG_STOP:
            return
        specs, trial_ids, submitted_at = message
        comm.send(_attempt(specs, trial_ids, run_dir, worker, submitted_at), dest=0,
                  tag=_TAG_RESULT)


class _Queue:
    """Units of work waiting for a rank, with their retry counts."""

    def __init__(self, units: list[list]):
        self.units = deque(([t.spec for t in unit], [t.trial_id for t in unit], time.time())
                           for unit in units)
        self.failures: dict[tuple[str, ...], int] = {}

    def __bool__(self) -> bool:
        return bool(self.units)

    def pop(self) -> tuple[list[dict[str, Any]], list[str], float]:
        return self.units.popleft()

    def retry(self, specs: list[dict[str, Any]], trial_ids: list[str], submitted_at: float,
              retries: int) -> bool:
        """Queue the unit again unless it used up its retries; say whether it was queued."""
        key = tuple(trial_ids)
        self.failures[key] = self.failures.get(key, 0) + 1
        if self.failures[key] > retries:
            return False
        self.units.append((specs, trial_ids, submitted_at))
        return True


def _dispatch(comm: Any, run: RunDir, units: list[list], retries: int,
              progress: Progress, halt: StopRequest) -> int:
    """Hand units to ranks until all are settled; after a stop, until the grace period ends.

    Returns how many trials were still training when the grace period ran out.
    """
    MPI = _mpi()
    queue = _Queue(units)
    sent: dict[int, tuple[list[dict[str, Any]], list[str], float]] = {}
    workers = comm.Get_size() - 1
    stopped = 0
    status = MPI.Status()
    progress.tick(force=True)
    while stopped < workers:
        # Poll so that progress lines keep coming while every rank is busy with a long trial.
        while not comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            if halt.requested:
                _drop_queue(queue, progress)
                busy = {rank: unit[1] for rank, unit in sent.items()}
                if halt.expired(progress, set(busy), busy):
                    return sum(len(ids) for ids in busy.values())
            progress.tick()
            time.sleep(0.1)
        message = comm.recv(source=status.Get_source(), tag=status.Get_tag(), status=status)
        source = status.Get_source()
        if status.Get_tag() == _TAG_RESULT:
            _settle(run, message, sent.pop(source), queue, retries, progress)
        if halt.requested:
            _drop_queue(queue, progress)
        if queue:
            unit = queue.pop()
            comm.send(unit, dest=source, tag=_TAG_TRIAL)
            sent[source] = unit
            for trial_id in unit[1]:
                progress.started(trial_id)
        else:
            comm.send(None, dest=source, tag=_TAG_STOP)
            stopped += 1
        progress.tick()
    return 0


def _drop_queue(queue: _Queue, progress: Progress) -> None:
    """After a stop: no unit still queued starts; its trials count as interrupted."""
    while queue:
        for trial_id in queue.pop()[1]:
            progress.finished(trial_id, INTERRUPTED)


def _serial(run: RunDir, units: list[list], retries: int, worker: dict[str, Any],
            progress: Progress, halt: StopRequest) -> None:
    queue = _Queue(units)
    progress.tick(force=True)
    while queue:
        if halt.requested:
            _drop_queue(queue, progress)
            break
        unit = queue.pop()
        for trial_id in unit[1]:
            progress.started(trial_id)
        progress.tick()
        message = _attempt(*unit[:2], str(run.path), worker, unit[2])
        _settle(run, message, unit, queue, retries, progress)
        progress.tick()


def _settle(run: RunDir, message: dict[str, Any], unit: tuple, queue: _Queue, retries: int,
            progress: Progress) -> None:
    """Apply one attempt's outcome: count its trials, queue a retry, or record failures."""
    outcome = message["outcome"]
    if outcome == "result":
        for result in message["results"]:
            trial_id = result["trial_id"]
            if result["state"] == records.FAILED and not result.get("skipped"):
                log.warning("trial %s failed (not retried): %s: %s", trial_id,
                            result.get("error_type"), result.get("error"))
            progress.finished(trial_id, result["state"],
                              None if result.get("skipped") else result.get("wall_s"))
        return
    retryable = outcome == "retry" or not message.get("deterministic", True)
    if retryable and queue.retry(*unit, retries=retries):
        log.warning("%s failed (%s: %s): retrying", _unit_name(unit[1]),
                    message.get("error_type"), message.get("error"))
        for trial_id in unit[1]:
            progress.requeued(trial_id)
        return
    for trial_id in unit[1]:
        trial_dir = run.trial_dir(trial_id)
        if records.is_complete(trial_dir, trial_id):
            progress.finished(trial_id, records.DONE, None)
            continue
        previous = records.read_status(trial_dir) or {}
        if outcome == "error" or previous.get("state") != records.FAILED:
            # Raised around the trial: its record does not say so yet.
            record_driver_failure(trial_dir, trial_id, previous=previous,
                                  error_type=message.get("error_type"),
                                  error=message.get("error"), deterministic=not retryable)
        log.warning("trial %s failed: %s: %s", trial_id, message.get("error_type"),
                    message.get("error"))
        progress.finished(trial_id, records.FAILED, None)


def _unit_name(trial_ids: list[str]) -> str:
    return f"trial {trial_ids[0]}" if len(trial_ids) == 1 else \
        f"pack of {len(trial_ids)} trials ({trial_ids[0]}, ...)"


__all__ = ["run_sweep_mpi", "rerun_mpi", "rank_device", "MPI_OPTIONS"]
