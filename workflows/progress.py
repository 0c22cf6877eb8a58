"""Progress of a running sweep: counts by state, throughput and an ETA, as log lines.

A line is logged whenever the counts change and at least every ``interval_s`` seconds while
nothing changes, so a long trial never looks like a hung driver. The driver's logger writes to
stderr and to ``DIR/logs/workflow.log``. On a terminal, ``workflows.progress_view`` draws the
same counts as a live view instead.

The ETA is the mean trial time so far times the trials left, over the trials running at once.
A resumed run starts from the times of the trials already recorded (``prior_walls``), so its
first line has an ETA; once :data:`MIN_OWN_WALLS` trials of this run have finished, their times
alone count, since a resume may run on other hardware.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

from genodl_core.stop import INTERRUPTED

log = logging.getLogger(__name__)

#: Trials this run must finish before its own times replace the recorded ones in the ETA.
MIN_OWN_WALLS = 3


@dataclass(frozen=True)
class Counts:
    """Trials of this run by state (trials found complete at start count as done)."""

    done: int
    failed: int
    running: int
    pending: int
    #: Stopped by a stop request (SIGINT, SIGTERM) before they finished; resumable.
    interrupted: int = 0

    @property
    def total(self) -> int:
        return self.done + self.failed + self.running + self.pending + self.interrupted


class Progress:
    """Tracks trial transitions and logs a one-line summary with an ETA.

    Parameters
    ----------
    total
        Trials this run settles, plus those found complete (a rerun of some trials leaves the
        sweep's other trials out, so that the ETA reaches zero when the run ends).
    already_done
        Trials found complete before this run started (not run again).
    interval_s
        Longest silence between two progress lines.
    slots
        How many trials can run at once (workers/GPUs); used for the ETA until enough trials
        have been seen running together.
    prior_walls
        Wall times of trials already recorded (a resumed run's done trials), for the ETA before
        this run's own trials finish.
    """

    def __init__(self, total: int, already_done: int = 0, *, interval_s: float = 30.0,
                 slots: int | None = None, logger: logging.Logger | None = None,
                 clock=time.monotonic, prior_walls: Sequence[float] = ()):
        self.total = total
        self.already_done = already_done
        self.interval_s = interval_s
        self.slots = slots
        self.log = logger or log
        self.clock = clock
        self.started_at = clock()
        self.done = already_done
        self.failed = 0
        self.interrupted = 0
        self.running: set[str] = set()
        self.retried = 0
        self.walls: list[float] = []
        self.prior_walls = [float(w) for w in prior_walls if w is not None and w >= 0]
        self.max_parallel = 0
        self._last_line: float | None = None
        self._last_state: tuple[Counts, int] | None = None

    def counts(self) -> Counts:
        settled = self.done + self.failed + self.interrupted + len(self.running)
        return Counts(self.done, self.failed, len(self.running), max(self.total - settled, 0),
                      self.interrupted)

    def started(self, trial_id: str) -> None:
        self.running.add(trial_id)
        self.max_parallel = max(self.max_parallel, len(self.running))

    def finished(self, trial_id: str, state: str, wall_s: float | None = None) -> None:
        """Count a trial as done, failed or interrupted (``wall_s`` feeds the ETA; None for
        skipped ones)."""
        self.running.discard(trial_id)
        if state == "done":
            self.done += 1
        elif state == INTERRUPTED:
            self.interrupted += 1
            return  # a stopped trial's time says nothing about a full one
        else:
            self.failed += 1
        if wall_s is not None:
            self.walls.append(float(wall_s))

    def requeued(self, trial_id: str) -> None:
        """A trial attempt ended without a final state (it will be retried)."""
        self.running.discard(trial_id)
        self.retried += 1

    def eta_s(self) -> float | None:
        """Seconds until every trial is settled, from the mean trial time so far."""
        counts = self.counts()
        remaining = counts.pending + counts.running
        if remaining == 0:
            return 0.0
        walls = self.walls if len(self.walls) >= MIN_OWN_WALLS else \
            self.walls + self.prior_walls
        if not walls:
            return None
        mean = sum(walls) / len(walls)
        parallel = max(self.max_parallel, min(self.slots or 1, remaining), 1)
        # Running trials are about half done on average.
        return mean * (counts.pending + 0.5 * counts.running) / parallel

    def line(self) -> str:
        c = self.counts()
        elapsed = self.clock() - self.started_at
        eta = self.eta_s()
        parts = [f"[{c.done + c.failed + c.interrupted}/{c.total}]", f"done {c.done}",
                 f"failed {c.failed}",
                 *([f"interrupted {c.interrupted}"] if c.interrupted else []),
                 f"running {c.running}", f"pending {c.pending}",
                 *([f"retried {self.retried}"] if self.retried else []),
                 f"elapsed {format_duration(elapsed)}",
                 f"ETA {format_duration(eta) if eta is not None else '?'}"]
        return " | ".join(parts)

    def tick(self, force: bool = False) -> bool:
        """Log a line if the counts or retries changed, the interval passed, or ``force``;
        say if it did."""
        now = self.clock()
        state = (self.counts(), self.retried)
        due = self._last_line is None or now - self._last_line >= self.interval_s
        if force or due or state != self._last_state:
            self.log.info("%s", self.line())
            self._last_line = now
            self._last_state = state
            return True
        return False


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


__all__ = ["Progress", "Counts", "format_duration", "MIN_OWN_WALLS"]
