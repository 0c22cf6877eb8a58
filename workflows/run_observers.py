"""What else follows a run besides the progress lines: the live view on a terminal, and the
experiment tracker that logs each trial as it settles.

Both live in the driver process (never on workers, so compute nodes need neither ``rich`` nor a
tracker), both only read records, and neither can stop the sweep: an observer that raises is
logged once and switched off, and the trials go on.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterable

from genodl_core import records

log = logging.getLogger(__name__)


class TrialTracking:
    """Logs each trial that settles (done or failed) to MLflow or TensorBoard.

    The tracker opens before the first trial is submitted, so that a store that cannot be
    opened is said at once (the run then goes on without tracking). A trial that cannot be
    logged is logged as a warning; ``genodl export DIR --format KIND`` logs it later (trials
    already logged are skipped there).
    """

    def __init__(self, run_dir: str | Path, kind: str, target: str | None = None):
        from genodl_core.results.tracking import check_tracker, default_target

        check_tracker(kind)
        self.run_dir = Path(run_dir)
        self.kind = kind
        self.target = target or default_target(kind, run_dir)
        self._tracker: Any = None
        self._sweep = ""
        self._settings: dict[str, str] = {}
        self.logged = 0
        self.failed = 0

    def _open(self) -> Any:
        from genodl_core.results.tracking import open_tracker, settings_of

        if self._tracker is None:
            sweep = records.read_json(self.run_dir / "sweep.json")
            self._sweep = str(sweep.get("name") or self.run_dir.name)
            self._settings = settings_of(
                (e["trial_id"], e["spec"]) for e in sweep.get("trials") or []
                if isinstance(e, dict) and isinstance(e.get("spec"), dict))
            self._tracker = open_tracker(self.kind, self.target)
            log.info("logging trials to %s at %s", self.kind, self.target)
        return self._tracker

    def started(self, trial_id: str) -> None:
        pass

    def poll(self) -> None:
        pass

    def finished(self, trial_id: str, state: str) -> None:
        from genodl_core.results.tracking import tracked_trial

        if state not in (records.DONE, records.FAILED):
            return
        try:
            tracker = self._open()
            trial = tracked_trial(self.run_dir / "trials" / trial_id, self._sweep,
                                  self._settings.get(trial_id, ""))
            tracker.log(trial)
            self.logged += 1
        except Exception as err:  # noqa: BLE001 - the record is safe; export can log it later
            self.failed += 1
            log.warning("trial %s not logged to %s (%s: %s); `genodl export %s --format %s` "
                        "logs it later", trial_id, self.kind, type(err).__name__, err,
                        self.run_dir, self.kind)

    def __enter__(self) -> "TrialTracking":
        self._open()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._tracker is not None:
            self._tracker.close()


class RunObservers:
    """Tells every observer about trials starting and settling, and polls them once per turn
    of the driver's loop; an observer that raises is switched off (see the module docstring)."""

    def __init__(self, observers: Iterable[Any] = ()):
        self.observers = list(observers)

    def __enter__(self) -> "RunObservers":
        entered = []
        for observer in self.observers:
            try:
                observer.__enter__()
                entered.append(observer)
            except Exception:  # noqa: BLE001 - a display must not stop the run
                log.exception("%s could not start; going on without it",
                              type(observer).__name__)
        self.observers = entered
        return self

    def __exit__(self, *exc: Any) -> None:
        """Close the observers still on (one switched off was closed then), last first."""
        for observer in reversed(self.observers):
            try:
                observer.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - the run's results are already safe
                log.exception("closing %s failed", type(observer).__name__)
        self.observers = []

    def _call(self, method: str, *args: Any) -> None:
        for observer in list(self.observers):
            try:
                getattr(observer, method)(*args)
            except Exception:  # noqa: BLE001 - a display must not stop the run
                log.exception("%s failed; going on without it", type(observer).__name__)
                self.observers.remove(observer)
                with contextlib.suppress(Exception):
                    observer.__exit__(None, None, None)

    def started(self, trial_id: str) -> None:
        self._call("started", trial_id)

    def finished(self, trial_id: str, state: str) -> None:
        self._call("finished", trial_id, state)

    def poll(self) -> None:
        self._call("poll")


def run_observers(run_dir: Path, trials: Iterable[Any], progress: Any, *, live_view: bool,
                  tracking: str | None, tracking_uri: str | None) -> RunObservers:
    """The observers a run's settings ask for (none: an observer list that does nothing)."""
    observers: list[Any] = []
    if live_view:
        from workflows.progress_view import LiveView, TrialWatch

        labels = {t.trial_id: t.label() for t in trials}
        observers.append(LiveView(progress, TrialWatch(Path(run_dir) / "trials", labels)))
    if tracking:
        observers.append(TrialTracking(run_dir, tracking, tracking_uri))
    return RunObservers(observers)


__all__ = ["TrialTracking", "RunObservers", "run_observers"]
