"""The sweep driver: run, resume, rerun and report on a sweep through Parsl.

``run_sweep`` is the whole life of a run: prepare the run directory, find the trials that are not
complete yet, load the site's Parsl config, submit one app per trial, follow progress, record
what Parsl itself lost, and gather the summary. Because completeness is read from the trial
records every time, running it again on the same directory is a resume: finished trials are
never submitted, trials a killed driver left half-done are run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from genodl_core import records, stop
from genodl_core.errors import SpecError

from workflows.progress import Progress
from workflows.retry import failure_fields, record_driver_failure, retry_handler
from workflows.run_observers import run_observers
from workflows.rundir import STATES, RunDir, TrialState
from workflows.sweep import Sweep, SweepTrial

log = logging.getLogger(__name__)

#: States ``genodl rerun`` selects by default: everything that is not done or still running.
RERUN_STATES = ("failed", "interrupted", "missing", "corrupt")
#: The pseudo-site that runs the sweep over MPI ranks instead of Parsl (see workflows.mpi).
MPI_SITE = "mpi"


@dataclass(frozen=True)
class RunSettings:
    """How to run a sweep; unset fields fall back to the sweep's ``[run]`` table."""

    site: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    retries: int | None = None
    threads_per_trial: int | None = None
    progress_interval_s: float | None = None
    pack_size: int | None = None
    gather: bool = True
    update_sweep: bool = False
    #: Rerun done trials whose data files changed since they read them (else refuse to resume).
    rerun_changed_data: bool = False
    #: Seconds between checkpoints (0: none; None: the workers' default).
    checkpoint_interval_s: float | None = None
    #: Seconds running trials get to finish or checkpoint after SIGINT/SIGTERM.
    grace_period_s: float | None = None
    #: Called as ``(settled, total, trial_id, state)`` when a trial starts ("running") or
    #: settles, for callers that show progress themselves (notebooks; see ``genodl.run``).
    progress_callback: Callable[[int, int, str, str], Any] | None = None
    #: Draw the live progress view on the terminal (``workflows.progress_view``) instead of
    #: logging the plain progress lines on the console (the workflow log gets them either way).
    live_view: bool = False
    #: Log each trial as it settles to this tracker ("mlflow" or "tensorboard"; None: the
    #: sweep's ``[run] tracking``, "none": off), at ``tracking_uri`` (default: inside DIR).
    tracking: str | None = None
    tracking_uri: str | None = None

    def resolve(self, sweep: Sweep) -> "RunSettings":
        """Fill unset fields from the sweep; options given here override the sweep's."""
        site = self.site or sweep.run.site
        # The sweep's options belong to the sweep's site; another site named on the command
        # line starts from its own defaults. Typed TOML values and strings both convert.
        options = dict(sweep.run.options) if site == sweep.run.site else {}
        options.update(self.options)
        return RunSettings(
            site=site,
            options=options,
            retries=sweep.run.retries if self.retries is None else self.retries,
            threads_per_trial=self.threads_per_trial or sweep.run.threads_per_trial,
            progress_interval_s=self.progress_interval_s or sweep.run.progress_interval_s,
            pack_size=self.pack_size or sweep.run.pack_size,
            gather=self.gather,
            update_sweep=self.update_sweep,
            rerun_changed_data=self.rerun_changed_data,
            checkpoint_interval_s=(sweep.run.checkpoint_interval_s
                                   if self.checkpoint_interval_s is None
                                   else self.checkpoint_interval_s),
            grace_period_s=(sweep.run.grace_period_s if self.grace_period_s is None
                            else self.grace_period_s),
            progress_callback=self.progress_callback,
            live_view=self.live_view,
            tracking=_tracking_choice(self.tracking, getattr(sweep.run, "tracking", None)),
            tracking_uri=self.tracking_uri or getattr(sweep.run, "tracking_uri", None),
        )

    def worker_options(self, threads: int | None) -> dict[str, Any]:
        """Keyword options of every unit's execution on a worker (see workflows.apps)."""
        return {"threads": threads, "checkpoint_interval_s": self.checkpoint_interval_s}


@dataclass
class RunReport:
    """What a run did and where the sweep stands afterwards."""

    run_dir: Path
    total: int
    submitted: int
    already_done: int
    states: dict[str, TrialState]
    summary: Path | None = None
    wall_s: float = 0.0
    #: The signal that stopped the run (None: it ran to the end).
    stopped_by: int | None = None
    #: Trials still training when the grace period ended (left interrupted).
    abandoned: int = 0

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s.state == state)

    @property
    def ok(self) -> bool:
        """True when every trial of the sweep is done."""
        return all(s.complete for s in self.states.values())

    @property
    def exit_code(self) -> int:
        """0 when every trial is done, 1 when some are not, 128 + N when signal N stopped it
        (130 for SIGINT, 143 for SIGTERM, as shells report such an end)."""
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        return 0 if self.ok else 1


def run_sweep(sweep: Sweep, out: str | Path, settings: RunSettings | None = None, *,
              only: Iterable[str] | None = None) -> RunReport:
    """Run every trial of ``sweep`` that has no complete record in ``out``.

    Parameters
    ----------
    sweep
        The expanded, validated sweep.
    out
        The run directory (created, or resumed when it holds the same sweep).
    settings
        Site, options, retries, threads per trial; defaults from the sweep's ``[run]`` table.
    only
        Restrict the run to these trial ids (``genodl rerun``); complete ones are still skipped.

    Returns
    -------
    RunReport
        Counts and the final state of every trial.

    Raises
    ------
    SpecError
        Invalid site or options, another driver using ``out``, or ``out`` holding another sweep.
        All of these are detected before any trial is submitted.
    """
    settings = (settings or RunSettings()).resolve(sweep)
    if settings.site == MPI_SITE:
        raise SpecError("--site", MPI_SITE, "run under mpiexec through workflows.mpi",
                        reason="the MPI path is not a Parsl site")
    from site_configs import get_site

    # Site name and options are checked before the run directory is touched.
    get_site(settings.site).resolve(settings.options)
    if settings.tracking:
        from genodl_core.results.tracking import check_tracker

        check_tracker(settings.tracking)
    t0 = time.monotonic()
    # The lock comes first: a refused second driver must not touch sweep.json.
    run = RunDir.create(out)
    with run.driver_lock():
        run.adopt(sweep, update=settings.update_sweep)
        halt = StopRequest(settings.grace_period_s, run.path / stop_file_name())
        with workflow_logging(run), halt.installed():
            report = _drive(run, sweep, settings, only, t0, halt)
        if halt.requested:
            keep_parsl_off_the_console()
        return report


def _drive(run: RunDir, sweep: Sweep, settings: RunSettings, only: Iterable[str] | None,
           t0: float, halt: "StopRequest") -> RunReport:
    """The part of :func:`run_sweep` that runs under the driver lock."""
    todo, already_done = select_todo(run, sweep, only,
                                     rerun_changed_data=settings.rerun_changed_data)
    log.info("sweep %s: %d trials, %d complete, %d to run; run directory %s",
             sweep.name, len(sweep.trials), already_done, len(todo), run.path)
    abandoned: list[str] = []
    if todo and not halt.requested:
        abandoned = _run_with_parsl(run, todo, settings, already_done=already_done, halt=halt,
                                    prior_walls=recorded_walls(run, sweep, todo))
    summary = gather_summary(run) if settings.gather else None
    states = run.scan(sweep.trial_ids)
    if halt.requested:
        states = interrupted_states(states)
    report = RunReport(run.path, len(sweep.trials), len(todo), already_done, states,
                       summary, time.monotonic() - t0, stopped_by=halt.signum,
                       abandoned=len(abandoned))
    log_report(report)
    return report


def select_todo(run: RunDir, sweep: Sweep, only: Iterable[str] | None = None, *,
                rerun_changed_data: bool = False) -> tuple[list[SweepTrial], int]:
    """Trials to submit (not complete, and in ``only`` if given) and how many are complete.

    Done trials whose data files changed since they read them stop the run
    (:meth:`RunDir.check_data`), or with ``rerun_changed_data`` are selected too.

    Raises
    ------
    SpecError
        When ``only`` names a trial id the sweep does not have, or a data file changed and
        ``rerun_changed_data`` is false.
    """
    wanted = None
    if only is not None:
        wanted = set(only)
        unknown = wanted - set(sweep.trial_ids)
        if unknown:
            raise SpecError("trial id", sorted(unknown)[0], "ids listed by `genodl status`",
                            reason="not a trial of this sweep")
    states = run.scan(sweep.trial_ids)
    changed = run.check_data(states, rerun_changed=rerun_changed_data)
    if changed:
        states = run.scan(sweep.trial_ids)
        wanted = None if wanted is None else wanted | set(changed)
    done = sum(1 for s in states.values() if s.complete)
    todo = [t for t in sweep.trials
            if not states[t.trial_id].complete and (wanted is None or t.trial_id in wanted)]
    return todo, done


def make_units(todo: list[SweepTrial], pack_size: int) -> list[list[SweepTrial]]:
    """Group the trials to run into units of work: single trials, or batched packs.

    With ``pack_size > 1``, trials whose model family can stack them and that differ only in
    seed and noise are packed (up to ``pack_size`` per unit) into one computation on one worker
    (see ``genodl_core.training.trial.group_packs``); other trials stay alone.

    """
    if pack_size <= 1 or len(todo) <= 1:
        return [[t] for t in todo]
    from genodl_core.spec import spec_from_dict
    from genodl_core.training.trial import group_packs

    packs = group_packs([spec_from_dict(t.spec) for t in todo], pack_size)
    return [[todo[i] for i in pack] for pack in packs]


def _tracking_choice(given: str | None, sweep_default: str | None) -> str | None:
    """The tracker a run logs to: the one given, else the sweep's; "none" turns it off."""
    choice = given if given is not None else sweep_default
    return None if choice in (None, "", "none") else choice


def recorded_walls(run: RunDir, sweep: Sweep, todo: list[SweepTrial], *,
                   limit: int = 500) -> list[float]:
    """Wall times of up to ``limit`` done trials of the sweep that this run does not run, so
    that a resumed run has an ETA before its own trials finish (read from their status
    files; a sample is enough for a mean)."""
    running = {t.trial_id for t in todo}
    walls: list[float] = []
    for tid in sweep.trial_ids:
        if len(walls) >= limit:
            break
        if tid in running:
            continue
        status = records.read_status(run.trial_dir(tid)) or {}
        wall = status.get("wall_s")
        if status.get("state") == records.DONE and isinstance(wall, (int, float)) \
                and not isinstance(wall, bool) and wall >= 0:
            walls.append(float(wall))
    return walls


def _run_with_parsl(run: RunDir, todo: list[SweepTrial], settings: RunSettings, *,
                    already_done: int, halt: "StopRequest",
                    prior_walls: list[float] | None = None) -> list[str]:
    """Submit the units of ``todo`` and follow them until they settle, or a stop ends the wait.

    Returns the ids of trials still training when the grace period of a stop ran out (they
    are left to die with this process, their records reading as interrupted).
    """
    import parsl

    from site_configs import get_site, load_site
    from workflows.apps import pack_app, trial_app

    site = get_site(settings.site)
    slots = site.slots(settings.options)
    threads = settings.threads_per_trial or default_threads_per_trial(site.scheduler, slots)
    config = load_site(settings.site, run.path, retries=settings.retries,
                       retry_handler=retry_handler, options=settings.options)
    units = make_units(todo, settings.pack_size)
    log.info("site %s: %d trial slots, %s torch threads per trial, %d retries%s", settings.site,
             slots, threads or "default", settings.retries,
             f"; {len(todo)} trials in {len(units)} batched packs" if settings.pack_size > 1
             else "")
    # Progress counts the trials this run settles (a rerun of some leaves the others out, so
    # the ETA reaches zero), plus the complete ones for orientation.
    progress = Progress(already_done + len(todo), already_done,
                        interval_s=settings.progress_interval_s,
                        slots=trial_slots(slots, units), prior_walls=prior_walls or ())
    observers = run_observers(run.path, todo, progress, live_view=settings.live_view,
                              tracking=settings.tracking, tracking_uri=settings.tracking_uri)
    wanted = {t.trial_id for t in todo}
    worker = settings.worker_options(threads)
    offset = _file_size(run.attempts_file)  # only this run's attempts count for progress
    dfk = parsl.load(config)
    pending: set[Future] = set()
    try:
        observers.__enter__()
        futures: dict[Future, list[str]] = {}
        for unit in units:
            if halt.requested:
                break  # a stop submits nothing more
            ids = [t.trial_id for t in unit]
            if len(unit) == 1:
                future = trial_app(unit[0].spec, ids[0], str(run.path), **worker)
            else:
                future = pack_app([t.spec for t in unit], ids, str(run.path), **worker,
                                  submitted_at=time.time())
            futures[future] = ids
        pending = set(futures)
        progress.tick(force=True)
        while pending:
            if halt.requested and halt.expired(progress, pending, futures):
                break
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            if halt.requested:
                halt.announce(progress, pending | finished, futures)
            events, offset = run.read_events(offset)
            for event in events:
                tid = event.get("trial_id")
                if tid not in wanted:
                    continue
                if event.get("event") == "start":
                    progress.started(tid)
                    observers.started(tid)
                    notify_progress(settings.progress_callback, progress, tid, "running")
                elif (event.get("event") == "end" and event.get("state") == records.FAILED
                      and event.get("deterministic") is False):
                    # The attempt failed in a way Parsl retries. A final attempt is counted
                    # when its future settles.
                    progress.requeued(tid)
                    observers.finished(tid, "requeued")
            for future in finished:
                for tid, state, wall in settle_unit(run, futures[future], future):
                    progress.finished(tid, state, wall)
                    observers.finished(tid, state)
                    notify_progress(settings.progress_callback, progress, tid, state)
            progress.tick()
            observers.poll()
    finally:
        observers.__exit__(None, None, None)
        shutdown_parsl(dfk, wait=not (halt.requested and pending))
    return [tid for future in pending for tid in futures[future]]


def notify_progress(callback: Callable[[int, int, str, str], Any] | None, progress: Progress,
                    trial_id: str, state: str) -> None:
    """Tell the caller's progress callback about a trial; a failing callback is logged, since
    a broken progress display must not stop the trials it displays."""
    if callback is None:
        return
    counts = progress.counts()
    try:
        callback(counts.done + counts.failed + counts.interrupted, counts.total, trial_id, state)
    except Exception:  # noqa: BLE001 - the sweep goes on; the traceback is in the log
        log.exception("progress callback failed on trial %s (%s)", trial_id, state)


def settle_unit(run: RunDir, trial_ids: list[str],
                future: Future) -> list[tuple[str, str, float | None]]:
    """Turn a finished app future into its trials' final states, recording Parsl's failures.

    Returns ``(trial_id, state, wall_s)`` per trial (``wall_s`` None when nothing ran).

    A trial whose attempts Parsl gave up on (a worker lost more often than the retry budget, a
    deterministic exception raised around the trial) has no truthful record of its own: the
    record says 'running', or nothing. The driver writes the failure into the record so that
    `genodl status` and the summary show it, and `genodl rerun` picks it up.
    """
    try:
        result = future.result()
    except Exception as err:  # noqa: BLE001 - every failure is written down, none is fatal
        return [_settle_failure(run, tid, err) for tid in trial_ids]
    settled = []
    for item in (result if isinstance(result, list) else [result]):
        tid = item["trial_id"]
        if item["state"] == records.FAILED and not item.get("skipped"):
            log.warning("trial %s failed (not retried): %s: %s", tid, item.get("error_type"),
                        item.get("error"))
        settled.append((tid, item["state"], None if item.get("skipped") else item.get("wall_s")))
    return settled


def _settle_failure(run: RunDir, trial_id: str, err: Exception) -> tuple[str, str, float | None]:
    """Record a trial whose attempts Parsl gave up on; stop the run when storage is exhausted.

    A full, over-quota or read-only file system fails every later trial the same way, and the
    failure itself cannot be recorded: the run stops with an OSError naming the path (the
    command prints it as one line). Records stay consistent, since each is written atomically:
    a trial left 'running' or without a record reads as interrupted or missing, and `genodl
    run` runs it again once space is freed.

    Raises
    ------
    OSError
        When the failure, or writing its record, says that the storage takes no more writes.
    """
    from genodl_core.failures import storage_error

    trial_dir = run.trial_dir(trial_id)
    if records.is_complete(trial_dir, trial_id):
        return trial_id, records.DONE, None  # a pack member that finished before the failure
    status = records.read_status(trial_dir) or {}
    full = storage_error(err, status.get("error") if status.get("state") == records.FAILED
                         else None)
    if full is not None:
        raise OSError(full.errno, f"{full.strerror} (trial {trial_id})",
                      full.filename or str(trial_dir)) from err
    if status.get("state") == records.FAILED and type(err).__name__ == "RetryableTrialFailure":
        # The trial's own failure, recorded by the runner on the last attempt.
        log.warning("trial %s failed after retries: %s: %s", trial_id,
                    status.get("error_type"), status.get("error"))
        return trial_id, records.FAILED, status.get("wall_s")
    failure = failure_fields(err)
    try:
        record_driver_failure(trial_dir, trial_id, previous=status, **failure)
        run.append_event({"event": "lost", "trial_id": trial_id,
                          "error_type": failure["error_type"], "error": failure["error"]})
    except OSError as write_err:
        raise OSError(write_err.errno,
                      f"{write_err.strerror} (recording the failure of trial {trial_id})",
                      write_err.filename or str(trial_dir)) from write_err
    log.warning("trial %s failed: %s: %s", trial_id, failure["error_type"], failure["error"])
    return trial_id, records.FAILED, None


def rerun(run_dir: str | Path, settings: RunSettings | None = None, *,
          states: Iterable[str] = RERUN_STATES,
          trial_ids: Iterable[str] | None = None) -> RunReport:
    """Run again the trials of an existing run directory that are in ``states``.

    Parameters
    ----------
    run_dir
        A directory written by :func:`run_sweep` (its ``sweep.json`` defines the trials).
    settings
        As for :func:`run_sweep`; defaults come from the stored sweep's ``[run]`` table.
    states
        Which trial states to rerun (default: failed, interrupted, missing, corrupt).
    trial_ids
        Rerun exactly these trials instead (complete ones are still skipped).

    Raises
    ------
    SpecError
        When ``run_dir`` is not a run directory, a state name is unknown, or a trial id is not
        part of the sweep.
    """
    sweep, ids = plan_rerun(run_dir, states=states, trial_ids=trial_ids)
    return run_sweep(sweep, run_dir, settings, only=ids)


def plan_rerun(run_dir: str | Path, *, states: Iterable[str] = RERUN_STATES,
               trial_ids: Iterable[str] | None = None) -> tuple[Sweep, list[str]]:
    """The stored sweep of ``run_dir`` and the ids of the trials :func:`rerun` would run.

    Raises
    ------
    SpecError
        As :func:`rerun`.
    """
    run = RunDir.open(run_dir)
    sweep = run.load_sweep()
    states = tuple(states)
    for state in states:
        if state not in STATES or state == "done":
            raise SpecError("--only", state, [s for s in STATES if s != "done"],
                            reason="unknown trial state")
    if trial_ids is None:
        current = run.scan(sweep.trial_ids)
        trial_ids = [tid for tid, s in current.items() if s.state in states]
    trial_ids = list(trial_ids)
    log.info("rerunning %d trials of %s", len(trial_ids), run.path)
    return sweep, trial_ids


@dataclass
class StatusReport:
    """Counts by state and the failures of one run directory."""

    run_dir: Path
    name: str
    states: dict[str, TrialState]
    points: dict[str, dict[str, Any]]
    driver: dict[str, Any] | None

    def counts(self) -> dict[str, int]:
        out = {state: 0 for state in STATES}
        for s in self.states.values():
            out[s.state] = out.get(s.state, 0) + 1
        return out

    def failures(self) -> list[TrialState]:
        return [s for s in self.states.values() if s.state == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "name": self.name, "counts": self.counts(),
            "driver": self.driver,
            "trials": [{"trial_id": s.trial_id, "state": s.state, "attempt": s.attempt,
                        "error_type": s.error_type, "error": s.error,
                        "deterministic": s.deterministic, "host": s.host, "gpu": s.gpu,
                        "wall_s": s.wall_s, "point": self.points.get(s.trial_id, {})}
                       for s in self.states.values()],
        }


def sweep_status(run_dir: str | Path) -> StatusReport:
    """Read the state of every trial of a run directory (no Parsl, no locks taken).

    Raises
    ------
    SpecError
        When ``run_dir`` is not a run directory.
    """
    run = RunDir.open(run_dir)
    stored = records.read_json(run.sweep_file)
    return StatusReport(run.path, stored.get("name", ""), run.scan(), run.stored_points(),
                        run.driver_holder())


def format_status(report: StatusReport, *, show_all: bool = False) -> str:
    """Counts by state, then one line per failed (or, with ``show_all``, every) trial."""
    from workflows.sweep import format_value, short_path

    counts = report.counts()
    total = sum(counts.values())
    head = f"{report.name}: {total} trials | " + " | ".join(
        f"{state} {n}" for state, n in counts.items() if n or state in ("done", "failed"))
    lines = [head]
    if report.driver:
        lines.append(f"driver running: pid {report.driver.get('pid')} on "
                     f"{report.driver.get('host')}")
    shown = report.states.values() if show_all else report.failures()
    for s in shown:
        point = " ".join(f"{short_path(p)}={format_value(v)}"
                         for p, v in report.points.get(s.trial_id, {}).items())
        detail = ""
        if s.state == "failed":
            kind = "deterministic" if s.deterministic else "retryable"
            detail = f" {s.error_type}: {s.error} ({kind}, attempt {s.attempt})"
        elif s.state == "done" and s.wall_s is not None:
            detail = f" {s.wall_s:.1f} s" + (f" gpu {s.gpu}" if s.gpu else "")
        lines.append(f"  {s.trial_id} {s.state:<11} {point}{detail}")
    return "\n".join(lines)


def gather_summary(run: RunDir) -> Path | None:
    """Write ``summary.h5`` with the gather stage, if it is installed; never fatal.

    The trials are already on disk when this runs, so a failing gather is logged and the run
    still reports its trials; ``genodl gather`` can be run again later.
    """
    try:
        from genodl_core.results.summary import gather
    except ImportError as err:
        log.warning("gather stage unavailable (%s); records are in %s", err, run.trials_dir)
        return None
    try:
        return gather(run.path)
    except Exception:  # noqa: BLE001 - the trials are safe; report and go on
        log.exception("gather failed; the trial records are intact in %s", run.trials_dir)
        return None


def log_report(report: RunReport) -> None:
    counts = {s: report.count(s) for s in STATES}
    log.info("sweep finished in %.1f s: %s (%d submitted, %d were already complete)%s",
             report.wall_s, ", ".join(f"{n} {s}" for s, n in counts.items() if n),
             report.submitted, report.already_done,
             f"; summary {report.summary}" if report.summary else "")
    log_stop(report)
    failed = [s for s in report.states.values() if s.state == "failed"]
    for s in failed[:20]:
        log.info("  failed %s: %s: %s", s.trial_id, s.error_type, s.error)
    if len(failed) > 20:
        log.info("  ... %d more failures (genodl status %s)", len(failed) - 20, report.run_dir)


def trial_slots(slots: int, units: list[list[SweepTrial]]) -> int:
    """Trials that run at once when ``slots`` workers each take one unit of work.

    With ``--pack-size K`` a unit holds up to K trials, but only trials that can share a
    batched computation are packed: the mean size of the real units, not K, says how many
    trials a worker runs at once.
    """
    if not units:
        return max(slots, 1)
    mean = sum(len(unit) for unit in units) / len(units)
    return max(1, round(max(slots, 1) * mean))


def default_threads_per_trial(scheduler: str, slots: int) -> int | None:
    """Torch threads per trial so that concurrent trials share the cores without contention.

    On a local machine all slots share this machine's cores; on cluster sites workers run on
    other nodes, and each worker shares its node's cores with the node's other workers
    (``workflows.apps.worker_threads``).
    """
    if scheduler != "local":
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(slots, 1))


@contextlib.contextmanager
def workflow_logging(run: RunDir) -> Iterator[None]:
    """Copy the workflow's log lines to ``DIR/logs/workflow.log`` while a driver runs.

    Per-epoch lines of the trials go to each trial's own log, and Parsl's to ``runinfo/``; both
    are kept off the console here, where only progress and failures belong. Lines of the
    library (data generation, noise, gather) go to the workflow log only.
    """
    handler = logging.FileHandler(run.workflow_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    ours = [logging.getLogger(name) for name in ("workflows", "site_configs", "genodl_core")]
    levels = [(lg, lg.level) for lg in ours]
    for lg in ours:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        with quiet_trial_logs():
            yield
    finally:
        for lg in ours:
            lg.removeHandler(handler)
        for lg, level in levels:
            lg.setLevel(level)
        handler.close()


@contextlib.contextmanager
def quiet_trial_logs() -> Iterator[None]:
    """Keep trial, library and Parsl lines off the console (they have their own log files).

    With threads or MPI ranks, every concurrent trial would otherwise repeat its per-epoch
    lines on the driver's stderr.
    """
    quiet = [logging.getLogger(name) for name in ("genodl.trial", "genodl_core", "parsl")]
    saved = [(lg, lg.propagate) for lg in quiet]
    for lg in quiet:
        lg.propagate = False
    try:
        yield
    finally:
        for lg, propagate in saved:
            lg.propagate = propagate


# Stopping a run on SIGINT / SIGTERM ------------------------------------------------------------

#: Signals that stop a run: the first one in an orderly way, the second one at once.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds running trials get to finish or checkpoint after the first signal, by default.
DEFAULT_GRACE_PERIOD_S = 30.0
#: Seconds a stopped run waits for Parsl to shut down before it leaves it behind.
SHUTDOWN_WAIT_S = 10.0


class StopRequest:
    """The first SIGINT or SIGTERM stops the run in order; the second ends the process at once.

    In order means: nothing more is submitted, units that have not started start no trial
    (the stop file, see ``workflows.apps.STOP_FILE``), training trials checkpoint and stop at
    their next epoch end (``genodl_core.stop``), and the driver waits for them at most
    ``grace_s`` seconds before it gathers what is done and exits. The second signal exits
    without waiting: every record is written atomically, so none is left half-written, and
    what was still running reads as interrupted.
    """

    def __init__(self, grace_s: float | None, stop_file: Path | None):
        self.grace_s = DEFAULT_GRACE_PERIOD_S if grace_s is None else float(grace_s)
        self.stop_file = stop_file
        self.signum: int | None = None
        self.at: float | None = None
        self._announced = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Handle the stop signals while inside (only the main thread can; elsewhere, e.g. a
        library caller's thread, the process's own handlers stay)."""
        stop.clear_stop()
        self._remove_stop_file()  # left by a driver killed while stopping
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self.handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._remove_stop_file()

    def _remove_stop_file(self) -> None:
        if self.stop_file is not None:
            self.stop_file.unlink(missing_ok=True)

    def handle(self, signum: int, frame: Any = None) -> None:
        """The signal handler: request the stop, or on a second signal exit at once."""
        if self.signum is not None:
            exit_at_once(signum)
        self.signum = signum
        self.at = time.monotonic()
        stop.request_stop()  # trials in this process (threads)
        if self.stop_file is None:
            return
        try:  # trials in worker processes
            self.stop_file.touch()
        except OSError as err:
            log.warning("cannot write the stop file %s (%s): worker processes finish their "
                        "trials", self.stop_file, err)

    def announce(self, progress: Progress, unsettled: set[Any],
                 futures: Mapping[Any, list[str]]) -> None:
        """Log the stop, once."""
        if self._announced:
            return
        self._announced = True
        trials = sum(len(futures[f]) for f in unsettled)
        log.warning("%s received: stopping; no more trials start, the %d not settled get up "
                    "to %.0f s to finish or checkpoint (a second signal exits at once)",
                    signal_name(self.signum), trials, self.grace_s)
        progress.tick(force=True)

    def expired(self, progress: Progress, pending: set[Any],
                futures: Mapping[Any, list[str]]) -> bool:
        """Log the stop once; say whether the grace period is over."""
        assert self.at is not None
        self.announce(progress, pending, futures)
        if time.monotonic() - self.at < self.grace_s:
            return False
        trials = sorted(tid for f in pending for tid in futures[f])
        log.warning("grace period of %.0f s over: %d trials still training are left "
                    "interrupted (%s%s)", self.grace_s, len(trials), ", ".join(trials[:5]),
                    ", ..." if len(trials) > 5 else "")
        return True


def log_stop(report: RunReport) -> None:
    """After a stop: what is left, and how to go on."""
    if report.stopped_by is None:
        return
    left = report.count("interrupted") + report.count("missing")
    log.warning("stopped by %s: %d trials done, %d interrupted or not started; `genodl run` "
                "with the same sweep and --out resumes them%s", signal_name(report.stopped_by),
                report.count("done"), left,
                " (trials stopped at an epoch end continue from their checkpoint)"
                if report.count("interrupted") else "")


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name  # type: ignore[arg-type]
    except ValueError:
        return f"signal {signum}"


def exit_at_once(signum: int) -> None:
    """End the process now with status 128 + ``signum``, skipping every cleanup.

    Only async-signal-safe work: one write to stderr, then ``os._exit``. Locks held by this
    process (driver, trial attempts) vanish with it.
    """
    os.write(2, f"genodl: second {signal_name(signum)}: exiting at once; unfinished trials "
                f"read as interrupted and resume with `genodl run`\n".encode())
    os._exit(128 + signum)


def stop_file_name() -> str:
    from workflows.apps import STOP_FILE

    return STOP_FILE


def interrupted_states(states: dict[str, TrialState]) -> dict[str, TrialState]:
    """States after a stop: a trial still 'running' is one this driver gave up on.

    The trial's attempt lock is held by this process (a thread) or by a worker being shut
    down; either is gone once the driver exits, and the record then reads as interrupted.
    No other driver can run trials of this directory meanwhile (the driver lock).
    """
    return {tid: dataclasses.replace(s, state="interrupted") if s.state == "running" else s
            for tid, s in states.items()}


def shutdown_parsl(dfk: Any, *, wait: bool) -> None:
    """Shut Parsl down; after a stop, give up waiting after :data:`SHUTDOWN_WAIT_S`.

    Parsl's thread executor waits for running tasks on shutdown, and a trial thread cannot be
    killed: after a stop, the shutdown runs in a daemon thread, and the process exits without
    it (``genodl run`` ends with ``os._exit``). HighThroughputExecutor's shutdown stops the
    interchange and the worker pool quickly.
    """
    if wait:
        dfk.cleanup()
        return
    closer = threading.Thread(target=dfk.cleanup, name="parsl-shutdown", daemon=True)
    closer.start()
    closer.join(SHUTDOWN_WAIT_S)
    if closer.is_alive():
        log.info("Parsl still shutting down after %.0f s; leaving it to the process exit",
                 SHUTDOWN_WAIT_S)


def keep_parsl_off_the_console() -> None:
    """After a stop, Parsl's per-task lines stay in ``runinfo/`` for the rest of the process
    (tasks settling during the shutdown would otherwise flood stderr)."""
    logging.getLogger("parsl").propagate = False


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


__all__ = ["RunSettings", "RunReport", "StatusReport", "run_sweep", "rerun", "select_todo",
           "settle_unit", "make_units", "trial_slots", "plan_rerun", "sweep_status", "format_status",
           "gather_summary", "default_threads_per_trial", "workflow_logging", "quiet_trial_logs",
           "MPI_SITE", "RERUN_STATES", "StopRequest", "shutdown_parsl", "interrupted_states",
           "stop_file_name",
           "DEFAULT_GRACE_PERIOD_S"]
