"""The live view of a running sweep on a terminal: overall bar with ETA, the running trials
with their epoch, latest metric and its curve so far, and failures as they happen.

Trials report their epochs through the ``progress.json`` each one already keeps in its record
folder (written at most once per epoch and at most every few seconds, listing the epochs since
its previous write; see ``genodl_core.training.trial``); the view reads those files from the
driver, only for the trials running, and only when a file changed. Training does no extra I/O
for the view.

The view needs the optional ``rich`` package (``pip install genodl[progress]``). Without a
terminal (batch jobs, pipes, ``--json``) or without ``rich``, ``genodl run`` logs the plain
progress lines of :mod:`workflows.progress` instead; the view does not change them, and they
are written to ``DIR/logs/workflow.log`` either way.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from genodl_core import records
from genodl_core.errors import SpecError

from workflows.progress import Progress, format_duration

log = logging.getLogger(__name__)

#: ``--view`` choices: ``auto`` is live on a terminal with ``rich`` installed, else plain.
VIEW_CHOICES = ("auto", "live", "plain")
#: Metrics a running trial shows, the first one it reports (else its first metric).
METRIC_PREFERENCE = ("val_accuracy", "val_auroc", "val_pearson", "val_mae", "val_loss",
                     "accuracy", "loss")
#: Seconds between two reads of the progress files (each is read only when it changed).
POLL_INTERVAL_S = 2.0
#: Running trials listed at most (the rest are counted), and failures kept on view.
MAX_ROWS = 10
MAX_FAILURES = 5
#: Points of a running trial's curve kept for its sparkline.
CURVE_POINTS = 40
_SPARKS = "▁▂▃▄▅▆▇█"


def rich_available() -> bool:
    return importlib.util.find_spec("rich") is not None


def wants_live_view(choice: str, *, is_terminal: bool, json_output: bool,
                    have_rich: bool | None = None) -> bool:
    """Whether ``genodl run`` draws the live view.

    ``auto`` draws it when stdout is a terminal, no JSON is printed and ``rich`` is installed;
    ``live`` asks for it (only ``--json`` overrides it); ``plain`` never draws it.

    Raises
    ------
    SpecError
        For an unknown choice, or ``live`` without the ``rich`` package.
    """
    if choice not in VIEW_CHOICES:
        raise SpecError("--view", choice, list(VIEW_CHOICES), reason="unknown progress view")
    have_rich = rich_available() if have_rich is None else have_rich
    if choice == "plain" or json_output:
        return False
    if choice == "live":
        if not have_rich:
            raise SpecError("--view", choice, "auto or plain, or live after "
                            "`pip install genodl[progress]`",
                            reason="the live view needs the rich package, which is not installed")
        return True
    return is_terminal and have_rich


@dataclass
class RunningTrial:
    """What the view knows of a running trial."""

    trial_id: str
    label: str
    started_at: float
    epoch: int = 0
    epochs: int = 0
    metric: str = ""
    value: float | None = None
    curve: list[float] = field(default_factory=list)
    _mtime: float = -1.0
    _last_epoch: int = 0


def pick_metric(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """The metric a running trial shows: the first of :data:`METRIC_PREFERENCE` it reports,
    else its first numeric metric."""
    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name in (*METRIC_PREFERENCE, *numeric):
        if name in numeric:
            return name, numeric[name]
    return None


def sparkline(values: Iterable[float], width: int = 20) -> str:
    """The last ``width`` values as block characters, scaled between their min and max."""
    values = [v for v in values if v == v][-width:]  # NaN compares unequal to itself
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return _SPARKS[len(_SPARKS) // 2] * len(values)
    top = len(_SPARKS) - 1
    return "".join(_SPARKS[round((v - low) / (high - low) * top)] for v in values)


class TrialWatch:
    """Follows the running trials through their ``progress.json`` files and remembers the
    failures with their errors.

    Parameters
    ----------
    trials_dir
        The run directory's ``trials/`` folder.
    labels
        A short description of each trial's point in the sweep, by trial id.
    """

    def __init__(self, trials_dir: Path, labels: Mapping[str, str] | None = None, *,
                 poll_s: float = POLL_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.trials_dir = Path(trials_dir)
        self.labels = dict(labels or {})
        self.poll_s = poll_s
        self.clock = clock
        self.running: dict[str, RunningTrial] = {}
        self.failures: list[tuple[str, str]] = []
        self._last_poll: float | None = None

    def started(self, trial_id: str) -> None:
        self.running[trial_id] = RunningTrial(trial_id, self.labels.get(trial_id, ""),
                                              self.clock())

    def finished(self, trial_id: str, state: str) -> None:
        self.running.pop(trial_id, None)
        if state == records.FAILED:
            status = records.read_status(self.trials_dir / trial_id) or {}
            error = f"{status.get('error_type') or 'failed'}: {status.get('error') or ''}"
            self.failures.append((trial_id, error.strip().rstrip(":")))

    def poll(self, force: bool = False) -> bool:
        """Read the progress files that changed, at most every ``poll_s``; say if it read."""
        now = self.clock()
        if not force and self._last_poll is not None and now - self._last_poll < self.poll_s:
            return False
        self._last_poll = now
        for trial in self.running.values():
            self._read(trial)
        return True

    def _read(self, trial: RunningTrial) -> None:
        path = self.trials_dir / trial.trial_id / "progress.json"
        try:
            mtime = path.stat().st_mtime
            if mtime == trial._mtime:
                return
            report = records.read_json(path)
        except (OSError, ValueError):
            return  # not written yet, or a previous attempt's: the next poll reads it
        trial._mtime = mtime
        if not isinstance(report, dict):
            return
        epoch = report.get("epoch")
        if not isinstance(epoch, int) or epoch < trial._last_epoch:
            # A file left by an earlier attempt (a retry restarts at epoch 1): start again.
            trial.curve.clear()
            trial._last_epoch = 0
        trial.epoch = epoch if isinstance(epoch, int) else 0
        trial.epochs = report.get("epochs") if isinstance(report.get("epochs"), int) else 0
        picked = pick_metric(report.get("metrics") or {})
        if picked is not None:
            if picked[0] != trial.metric:
                trial.curve.clear()
            trial.metric, trial.value = picked
            for point in _new_points(report, trial._last_epoch, picked[0]):
                trial.curve.append(point)
            if not trial.curve:
                trial.curve.append(picked[1])
            del trial.curve[:-CURVE_POINTS]
        trial._last_epoch = trial.epoch


def _new_points(report: Mapping[str, Any], after: int, metric: str) -> list[float]:
    """Values of ``metric`` for the epochs after ``after`` that a progress file reports: every
    epoch since its previous write (``recent``), else only the latest."""
    epoch = report.get("epoch")
    recent = report.get("recent")
    pairs = recent if isinstance(recent, list) else [[epoch, report.get("metrics") or {}]]
    points = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int)
                and isinstance(pair[1], dict)) or pair[0] <= after:
            continue
        value = pair[1].get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            points.append(float(value))
    return points


def render(progress: Progress, watch: TrialWatch, *, max_rows: int = MAX_ROWS) -> Any:
    """The view as a ``rich`` renderable (a pure function of the two, for tests)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    c = progress.counts()
    settled = c.done + c.failed + c.interrupted
    eta = progress.eta_s()
    head = Table.grid(padding=(0, 1))
    head.add_row(ProgressBar(total=max(c.total, 1), completed=settled, width=30),
                 Text(f"{settled}/{c.total}", style="bold"),
                 Text(" | ".join(
                     [f"done {c.done}", f"failed {c.failed}",
                      *([f"interrupted {c.interrupted}"] if c.interrupted else []),
                      f"running {c.running}", f"pending {c.pending}",
                      *([f"retried {progress.retried}"] if progress.retried else []),
                      f"elapsed {format_duration(progress.clock() - progress.started_at)}",
                      f"ETA {format_duration(eta) if eta is not None else '?'}"])))
    parts: list[Any] = [head]
    if watch.running:
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
        for name in ("trial", "point", "epoch", "metric", "curve", "time"):
            table.add_column(name, no_wrap=True, overflow="ellipsis",
                             max_width=40 if name == "point" else None)
        now = watch.clock()
        rows = sorted(watch.running.values(), key=lambda t: t.started_at)
        for trial in rows[:max_rows]:
            epoch = f"{trial.epoch}/{trial.epochs}" if trial.epochs else "-"
            metric = f"{trial.metric} {trial.value:.4g}" if trial.value is not None else "-"
            table.add_row(trial.trial_id, trial.label, epoch, metric, sparkline(trial.curve),
                          format_duration(now - trial.started_at))
        parts.append(table)
        if len(rows) > max_rows:
            parts.append(Text(f"... and {len(rows) - max_rows} more running", style="dim"))
    for tid, error in watch.failures[-MAX_FAILURES:]:
        parts.append(Text(f"failed {tid}: {error}", style="red", overflow="ellipsis",
                          no_wrap=True))
    if len(watch.failures) > MAX_FAILURES:
        parts.append(Text(f"... {len(watch.failures) - MAX_FAILURES} earlier failures "
                          "(genodl status DIR)", style="dim red"))
    return Group(*parts)


class LiveView:
    """Draws :func:`render` on the terminal while a run goes on.

    Log lines keep their place: while the view is on, the console's log handlers write above
    it (through ``rich``), and the plain progress lines, which the view replaces, go to the
    workflow log only.
    """

    def __init__(self, progress: Progress, watch: TrialWatch, *, console: Any = None):
        from rich.console import Console

        self.progress = progress
        self.watch = watch
        self.console = console or Console(file=sys.stdout)
        self._live: Any = None
        self._handlers: list[tuple[logging.Handler, Any, logging.Filter]] = []

    def __enter__(self) -> "LiveView":
        from rich.live import Live

        self._live = Live(render(self.progress, self.watch), console=self.console,
                          auto_refresh=False, redirect_stdout=True, redirect_stderr=True,
                          transient=False)
        self._live.start()
        self._route_console_logs()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is None:
            return  # already closed
        try:
            self.refresh()
        finally:
            self._restore_console_logs()
            self._live.stop()
            self._live = None

    def started(self, trial_id: str) -> None:
        self.watch.started(trial_id)

    def finished(self, trial_id: str, state: str) -> None:
        self.watch.finished(trial_id, state)

    def poll(self) -> None:
        self.watch.poll()
        self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(render(self.progress, self.watch), refresh=True)

    def _route_console_logs(self) -> None:
        quiet = _DropLogger("workflows.progress")
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and \
                    getattr(handler, "stream", None) in (sys.__stderr__, sys.__stdout__,
                                                         self._live.console.file):
                # sys.stderr is the view's proxy now: lines print above the view.
                self._handlers.append((handler, handler.stream, quiet))
                handler.setStream(sys.stderr)
                handler.addFilter(quiet)

    def _restore_console_logs(self) -> None:
        for handler, stream, quiet in self._handlers:
            handler.removeFilter(quiet)
            handler.setStream(stream)
        self._handlers.clear()


class _DropLogger(logging.Filter):
    """Drops the records of one logger (and its children)."""

    def __init__(self, name: str):
        super().__init__()
        self.prefix = name

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == self.prefix or record.name.startswith(self.prefix + "."))


__all__ = ["VIEW_CHOICES", "METRIC_PREFERENCE", "RunningTrial", "TrialWatch", "LiveView",
           "wants_live_view", "pick_metric", "sparkline", "render", "rich_available"]
