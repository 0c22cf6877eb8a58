"""The run directory of a sweep, and the state of its trials as read from their records.

Layout::

    DIR/sweep.json            the resolved sweep (every trial's id, axis values and spec)
    DIR/trials/<trial_id>/    one record per trial (see genodl_core.records)
    DIR/trials/.locks/        one lock file per trial, held while an attempt runs
    DIR/logs/workflow.log     the driver's log, progress lines included
    DIR/logs/attempts.jsonl   one line per attempt start and end (host, pid, GPU, state)
    DIR/runinfo/              Parsl's own logs and submit scripts
    DIR/summary.h5            the gathered results

The trial records are the only source of truth about what is finished: a trial's state is what
``genodl_core.records.record_state`` says (done only when its result files match the checksums
its status recorded), whatever any log says. That is what makes a killed driver safe to start
again. Records in ``trials/`` whose ids the stored sweep does not list (left by a sweep
replaced with ``--update-sweep``) are not part of the sweep: status reports them apart and the
gather leaves them out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from genodl_core import records
from genodl_core.data.fingerprint import DataChange, find_changes, recorded_fingerprints
from genodl_core.errors import GenodlError, SpecError

from workflows.sweep import Sweep, sweep_from_resolved

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
TRIALS_DIR = "trials"
LOGS_DIR = "logs"
RUNINFO_DIR = "runinfo"
SUMMARY_FILE = "summary.h5"
WORKFLOW_LOG = "workflow.log"
ATTEMPTS_LOG = "attempts.jsonl"
LOCKS_DIR = ".locks"
DRIVER_LOCK = ".driver.lock"

#: Trial states reported by :meth:`RunDir.scan`, in display order. 'interrupted' is a record
#: left 'running' by an attempt that no live driver owns (killed driver, lost node).
STATES = ("done", "failed", "running", "interrupted", "missing", "corrupt")


@dataclass(frozen=True)
class TrialState:
    """What the record of one trial says (without loading its results)."""

    trial_id: str
    state: str
    #: Why the state is what it is, when that needs saying (a corrupt record's damage).
    reason: str = ""
    attempt: int = 0
    error_type: str | None = None
    error: str | None = None
    deterministic: bool | None = None
    host: str | None = None
    gpu: str | None = None
    wall_s: float | None = None

    @property
    def complete(self) -> bool:
        return self.state == "done"


class RunDir:
    """Paths of one run directory and the operations the driver and the commands need."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # Paths -------------------------------------------------------------------------------
    @property
    def sweep_file(self) -> Path:
        return self.path / SWEEP_FILE

    @property
    def trials_dir(self) -> Path:
        return self.path / TRIALS_DIR

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def runinfo_dir(self) -> Path:
        return self.path / RUNINFO_DIR

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def attempts_file(self) -> Path:
        return self.logs_dir / ATTEMPTS_LOG

    @property
    def workflow_log(self) -> Path:
        return self.logs_dir / WORKFLOW_LOG

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials_dir / trial_id

    # Creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path) -> "RunDir":
        """The run directory at ``path``, creating only its top folder.

        This is all a driver may do before it holds :meth:`driver_lock`: the sweep file and
        the subfolders are written by :meth:`adopt` under the lock, so that a driver refused
        because another one runs never changes what the running one reads.
        """
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def prepare(cls, path: str | Path, sweep: Sweep, *, update: bool = False) -> "RunDir":
        """Create the directory for ``sweep``, or check that an existing one holds the same sweep.

        Takes the driver lock for the moment of the check and write (see :meth:`adopt`).

        Raises
        ------
        SpecError
            As :meth:`adopt`, or when a live driver holds the directory.
        """
        run = cls.create(path)
        with run.driver_lock():
            run.adopt(sweep, update=update)
        return run

    def compare(self, sweep: Sweep) -> tuple[str, int, int]:
        """How ``sweep`` relates to the stored one, without writing anything.

        Returns
        -------
        (relation, added, dropped)
            ``relation`` is 'new' (no sweep stored), 'same' (the same trials, possibly listed
            in another order: axes written in another order expand to another order of the
            same trials) or 'different'; ``added``/``dropped`` count trial ids.

        Raises
        ------
        SpecError
            When a stored ``sweep.json`` cannot be read.
        """
        if not self.sweep_file.is_file():
            return "new", len(set(sweep.trial_ids)), 0
        old_ids = set(self._read_stored_ids())
        new_ids = set(sweep.trial_ids)
        if old_ids == new_ids:
            return "same", 0, 0
        return "different", len(new_ids - old_ids), len(old_ids - new_ids)

    def check_sweep(self, sweep: Sweep, *, update: bool = False) -> str:
        """Refuse ``sweep`` when the directory holds a different one and ``update`` is false.

        Read-only: ``genodl submit`` calls it before writing a batch script, so that a job
        that could only fail is never queued.

        Returns
        -------
        str
            The relation found by :meth:`compare`.

        Raises
        ------
        SpecError
            When the directory already holds a different sweep and ``update`` is false, because
            mixing two sweeps' trials in one summary would silently mislead.
        """
        relation, added, dropped = self.compare(sweep)
        if relation == "different" and not update:
            name = self._read_stored().get("name")
            raise SpecError("--out", str(self.path),
                            "a new directory, the same sweep, or --update-sweep",
                            reason=f"it holds a different sweep ({name!r}: "
                                   f"{added} trials would be added, {dropped} dropped)")
        return relation

    def adopt(self, sweep: Sweep, *, update: bool = False) -> None:
        """Make the subfolders and store ``sweep``, or check that it is the stored one.

        Call while holding :meth:`driver_lock`. A stored sweep with the same trials is kept as
        it is (whatever order they are listed in), so that trial order on disk never changes
        under a running ``genodl status``.

        Parameters
        ----------
        sweep
            The resolved sweep to run here.
        update
            Allow replacing a different stored sweep (e.g. one extended with more seeds); records
            of trials that both share are kept and count as done. The old ``sweep.json`` is kept
            under ``logs/``.

        Raises
        ------
        SpecError
            As :meth:`check_sweep`.
        """
        for folder in (self.path, self.trials_dir, self.logs_dir, self.runinfo_dir,
                       self.trials_dir / LOCKS_DIR):
            folder.mkdir(parents=True, exist_ok=True)
        relation = self.check_sweep(sweep, update=update)
        if relation == "same":
            return
        if relation == "different":
            stored = self._read_stored()
            backup = self.logs_dir / f"sweep.{time.strftime('%Y%m%d-%H%M%S')}.json"
            records.atomic_write_json(backup, stored)
            log.warning("replacing the stored sweep (%d trials) by %d trials; old copy in %s",
                        len(stored.get("trials", [])), len(sweep.trial_ids), backup)
        records.atomic_write_json(self.sweep_file, sweep.to_dict())

    def _read_stored(self) -> dict[str, Any]:
        try:
            return records.read_json(self.sweep_file)
        except (OSError, ValueError) as err:
            raise SpecError(SWEEP_FILE, str(self.sweep_file), "a readable resolved sweep",
                            reason=f"unreadable: {err}") from None

    def _read_stored_ids(self) -> list[str]:
        return [t.get("trial_id") for t in self._read_stored().get("trials", [])]

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory.

        Raises
        ------
        SpecError
            When ``path`` holds no ``sweep.json`` (not a run directory).
        """
        run = cls(path)
        if not run.sweep_file.is_file():
            raise SpecError("run directory", str(path), "a directory made by `genodl run`",
                            reason=f"no {SWEEP_FILE} in it")
        return run

    def load_sweep(self) -> Sweep:
        """The stored sweep, expanded and validated again.

        Raises
        ------
        SpecError
            When ``sweep.json`` is unreadable or no longer validates.
        """
        try:
            data = records.read_json(self.sweep_file)
        except (OSError, ValueError) as err:
            raise SpecError(SWEEP_FILE, str(self.sweep_file), "a readable resolved sweep",
                            reason=f"unreadable: {err}") from None
        return sweep_from_resolved(data)

    def stored_trial_ids(self) -> list[str]:
        """Trial ids in ``sweep.json`` without re-validating (for status on any version)."""
        return [t["trial_id"] for t in records.read_json(self.sweep_file).get("trials", [])]

    def stored_points(self) -> dict[str, dict[str, Any]]:
        return {t["trial_id"]: t.get("point", {})
                for t in records.read_json(self.sweep_file).get("trials", [])}

    # Trial states --------------------------------------------------------------------------
    def trial_state(self, trial_id: str) -> TrialState:
        """One trial's state as :func:`genodl_core.records.record_state` decides it.

        A record that says 'running' is only believed while some process holds the trial's
        attempt lock; otherwise the attempt died with its driver or node ('interrupted').
        """
        trial_dir = self.trial_dir(trial_id)
        verdict = records.record_state(trial_dir, trial_id)
        state = verdict.state
        if state == records.RUNNING and not self._attempt_lock_held(trial_id):
            state = "interrupted"
        status = records.read_status(trial_dir) if state != records.MISSING else None
        if not isinstance(status, dict):
            return TrialState(trial_id, state, verdict.reason)
        attempt = status.get("attempt", 0)
        return TrialState(trial_id, state, verdict.reason,
                          attempt=attempt if isinstance(attempt, int) else 0,
                          error_type=status.get("error_type"), error=status.get("error"),
                          deterministic=status.get("deterministic"), host=status.get("host"),
                          gpu=status.get("gpu"), wall_s=status.get("wall_s"))

    def scan(self, trial_ids: list[str] | None = None) -> dict[str, TrialState]:
        """States of the given trials (default: every trial of the stored sweep)."""
        ids = trial_ids if trial_ids is not None else self.stored_trial_ids()
        return {tid: self.trial_state(tid) for tid in ids}

    # Data files ----------------------------------------------------------------------------
    def changed_data(self, states: dict[str, TrialState]) -> list[DataChange]:
        """Data files that differ now from what done trials recorded (see
        :func:`genodl_core.data.fingerprint.find_changes`); records without fingerprints
        (synthetic data, older records) have nothing to compare."""
        return find_changes((tid, self.recorded_fingerprints(tid))
                            for tid, s in states.items() if s.complete)

    def recorded_fingerprints(self, trial_id: str) -> dict[str, dict[str, Any]]:
        """The data fingerprints a trial's result recorded ({} when none or unreadable)."""
        try:
            result = records.read_json(self.trial_dir(trial_id) / records.RESULT_FILE)
        except (OSError, ValueError):
            return {}
        return recorded_fingerprints(result)

    def check_data(self, states: dict[str, TrialState], *, rerun_changed: bool) -> list[str]:
        """Refuse to resume on changed data files, or mark the affected trials for a rerun.

        Parameters
        ----------
        states
            The trials' states (only done ones are compared).
        rerun_changed
            Instead of refusing, record every affected done trial as failed
            (``DataChanged``, retryable), so that this run and any later one train it again on
            the data as it is now.

        Returns
        -------
        list of str
            Ids of the trials marked for a rerun (empty when nothing changed).

        Raises
        ------
        SpecError
            When a file changed and ``rerun_changed`` is false: it names each file, the recorded
            and the current fingerprint, and the option that reruns the trials (a SpecError, so
            that every path that checks a run before it starts reports it the same way).
        """
        changes = self.changed_data(states)
        if not changes:
            return []
        affected = sorted({tid for change in changes for tid in change.trial_ids})
        if not rerun_changed:
            raise SpecError(
                "data file", changes[0].path,
                f"the version those trials read (restore it), or --rerun-changed-data to rerun "
                f"the {len(affected)} affected trial(s) on the data as it is now",
                reason="; ".join(change.describe() for change in changes)
                + "; resuming would mix trials of two versions of the data")
        for change in changes:
            log.warning("%s: rerunning those trials", change.describe())
        for trial_id in affected:
            trial_dir = self.trial_dir(trial_id)
            previous = records.read_status(trial_dir) or {}
            paths = [c.path for c in changes if trial_id in c.trial_ids]
            records.write_status(trial_dir, records.FAILED, trial_id=trial_id,
                                 attempt=int(previous.get("attempt", 0) or 0),
                                 error_type="DataChanged",
                                 error=f"data file(s) changed since the trial read them: "
                                       f"{', '.join(paths)}",
                                 deterministic=False, recorded_by="driver")
        return affected

    def records_outside_sweep(self) -> list[str]:
        """Ids of the trial records in ``trials/`` that the stored sweep does not list."""
        if not self.trials_dir.is_dir():
            return []
        listed = set(self.stored_trial_ids())
        return sorted(entry.name for entry in os.scandir(self.trials_dir)
                      if entry.is_dir() and not entry.name.startswith(".")
                      and entry.name not in listed)

    def _attempt_lock_held(self, trial_id: str) -> bool:
        """Whether some process holds the trial's attempt lock (only meaningful on this host
        or on file systems with coherent flock, which is what the lock relies on anyway)."""
        path = self.trials_dir / LOCKS_DIR / f"{trial_id}.lock"
        if not path.exists():
            return False
        return _lock_is_held(path)

    # The driver lock -----------------------------------------------------------------------
    @contextlib.contextmanager
    def driver_lock(self) -> Iterator[None]:
        """Hold the run directory for one driver; a second driver on it fails at once.

        The lock is an ``flock`` on ``DIR/.driver.lock``, so it vanishes with the process that
        held it: a driver killed by SIGKILL or by the batch system never leaves the directory
        locked.

        Raises
        ------
        SpecError
            When another live driver holds the directory.
        """
        path = self.path / DRIVER_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.driver_holder() or {}
                raise SpecError("--out", str(self.path), "a run directory no other driver uses",
                                reason=f"a driver (pid {holder.get('pid')} on "
                                       f"{holder.get('host')}) is running it") from None
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.time()}).encode())
            os.fsync(fd)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def driver_holder(self) -> dict[str, Any] | None:
        """Who holds the driver lock (pid, host, since), or None when no driver is live."""
        path = self.path / DRIVER_LOCK
        if not path.exists() or not _lock_is_held(path):
            return None
        try:
            return json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    # The attempts log ----------------------------------------------------------------------
    def append_event(self, event: dict[str, Any]) -> None:
        """Append one JSON line to ``logs/attempts.jsonl`` with a single ``write``.

        O_APPEND plus one write keeps lines from concurrent workers whole on local and most
        parallel file systems; the log is an audit trail, never the source of truth.
        """
        append_event(self.attempts_file, event)

    def read_events(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events appended since byte ``offset`` and the new offset (whole lines only)."""
        return read_events(self.attempts_file, offset)


def append_event(path: Path, event: dict[str, Any]) -> None:
    line = (json.dumps({"time": time.time(), **event}, default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_whole_line(fd, line, path)
    finally:
        os.close(fd)


def _write_whole_line(fd: int, line: bytes, path: Path) -> None:
    """Append ``line`` whole or not at all, so that a full disk never leaves a torn line.

    A write into a nearly full file system can store only the first bytes of the line; they
    are cut off again (unless another writer appended meanwhile) and the write fails. A line
    left torn all the same is ended first by the next append, so that it never swallows it.
    """
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        line = b"\n" + line
    written = os.write(fd, line)
    if written == len(line):
        return
    end = os.lseek(fd, 0, os.SEEK_CUR)
    if os.fstat(fd).st_size == end:
        os.ftruncate(fd, end - written)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            log.warning("skipping an unreadable line in %s", path)
    return events, offset + end


def _lock_is_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class TrialBusy(GenodlError):
    """Another process is running an attempt of the trial (``genodl trial`` does not wait)."""


@contextlib.contextmanager
def trial_attempt_lock(trials_dir: Path, trial_id: str, *, wait: bool = True) -> Iterator[None]:
    """Hold the trial's attempt lock, waiting while another attempt of it runs.

    Two attempts of one trial can overlap when a driver was killed while its workers kept
    running (an orphaned pilot job), or when a retried task races its lost predecessor. Waiting
    here, then checking whether the record is already complete, means a trial is never run to
    completion twice. The holder's pid, host and start time are written into the lock file for
    the message of one that does not wait.

    Raises
    ------
    TrialBusy
        With ``wait=False``, when another process holds the lock (names its pid and host).
    """
    path = trials_dir / LOCKS_DIR / f"{trial_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                holder = trial_lock_holder(trials_dir, trial_id) or {}
                raise TrialBusy(
                    f"trial {trial_id} is being run by another process (pid "
                    f"{holder.get('pid', 'unknown')} on {holder.get('host', 'unknown host')}, "
                    f"lock {path}); wait for it to finish, or stop that process") from None
            log.warning("trial %s: another attempt holds its lock; waiting for it", trial_id)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _write_holder(fd)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _write_holder(fd: int) -> None:
    """Say in the lock file who holds it (best effort: the flock is what counts)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.time()}).encode(), 0)
    except OSError:
        pass


def trial_lock_holder(trials_dir: Path, trial_id: str) -> dict[str, Any] | None:
    """Who holds a trial's attempt lock (pid, host, since), or None when nobody does."""
    path = trials_dir / LOCKS_DIR / f"{trial_id}.lock"
    if not _lock_is_held(path):
        return None
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


__all__ = ["RunDir", "TrialState", "TrialBusy", "STATES", "trial_attempt_lock", "trial_lock_holder",
           "append_event", "read_events"]
