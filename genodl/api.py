"""The functions behind ``import genodl``: thin wrappers over the workflow driver and results.

Only the standard library is imported at module level; every heavy dependency (torch, Parsl,
pandas, h5py) is imported inside the function that needs it, so that ``import genodl`` stays
fast and works on a login node without a GPU stack loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover - names for annotations only
    import pandas as pd

    from genodl_core.training.trial import TrialResult
    from workflows.driver import RunReport, StatusReport
    from workflows.sweep import Sweep

#: What :func:`run` calls as trials start and settle: ``(settled, total, trial_id, state)``.
ProgressCallback = Callable[[int, int, str, str], Any]


def as_sweep(sweep: Any) -> "Sweep":
    """A resolved sweep from a TOML/JSON path, a dict shaped like a sweep file, or a Sweep.

    Raises
    ------
    SpecError
        When the file or dict is not a valid sweep (the message names the bad key or value).
    TypeError
        When ``sweep`` is none of the accepted kinds.
    """
    from workflows.sweep import Sweep, load_sweep, sweep_from_dict

    if isinstance(sweep, Sweep):
        return sweep
    if isinstance(sweep, (str, Path)):
        return load_sweep(sweep)
    if isinstance(sweep, Mapping):
        return sweep_from_dict(sweep)
    raise TypeError(f"sweep={sweep!r}: expected a path to a .toml/.json sweep file, a dict "
                    f"with [sweep] and [trial] tables, or a workflows.sweep.Sweep")


@dataclass(frozen=True)
class Plan:
    """An expanded, validated sweep: what :func:`run` would train, before anything runs.

    Attributes
    ----------
    n_trials
        How many trials the sweep expands to.
    table
        One row per trial (index ``trial_id``): its position ``index`` and one column per axis.
    specs
        The resolved trial spec of every trial, by trial id (plain dicts, as written to
        ``sweep.json``).
    sweep
        The underlying :class:`workflows.sweep.Sweep`.
    """

    n_trials: int
    table: "pd.DataFrame"
    specs: dict[str, dict[str, Any]]
    sweep: "Sweep" = field(repr=False)

    @property
    def name(self) -> str:
        return self.sweep.name

    def __repr__(self) -> str:
        axes = ", ".join(f"{a.path} ({len(a.values)})" for a in self.sweep.axes) or "none"
        return f"Plan(name={self.name!r}, n_trials={self.n_trials}, axes: {axes})"


def plan(sweep: Any) -> Plan:
    """Expand and validate a sweep without running it (``genodl plan`` as data).

    Parameters
    ----------
    sweep
        Path to a sweep ``.toml``/``.json``, a dict with the same tables, or a Sweep.

    Examples
    --------
    >>> p = genodl.plan("jobs/examples/quick.toml")           # doctest: +SKIP
    >>> p.n_trials                                             # doctest: +SKIP
    12
    >>> p.table.groupby("variant").size()                      # doctest: +SKIP
    """
    import pandas as pd

    resolved = as_sweep(sweep)
    rows = [{"trial_id": t.trial_id, "index": t.index, **t.point} for t in resolved.trials]
    columns = ["trial_id", "index", *(a.path for a in resolved.axes)]
    table = pd.DataFrame(rows, columns=columns).set_index("trial_id")
    specs = {t.trial_id: t.spec for t in resolved.trials}
    return Plan(n_trials=len(resolved.trials), table=table, specs=specs, sweep=resolved)


def run(sweep: Any, out: str | Path, *, site: str = "local_threads",
        options: Mapping[str, Any] | None = None, pack_size: int | None = None,
        retries: int | None = None, progress: ProgressCallback | None = None,
        gather: bool = True) -> "RunReport":
    """Run (or resume) a sweep into ``out`` through the driver of ``genodl run``.

    Trials with a complete record in ``out`` are skipped, so calling it again resumes. The
    run's log lines go to ``out/logs/workflow.log`` as with the command line.

    Parameters
    ----------
    sweep
        Path to a sweep file, a dict shaped like one, or a Sweep.
    out
        The run directory.
    site
        A Parsl site of ``genodl sites`` (default ``local_threads``: this machine's cores). The
        sweep's ``[run] options`` apply only when this is the sweep's own site.
    options
        Site options (as ``-o NAME=VALUE`` on the command line), e.g. ``{"max_threads": 2}``.
    pack_size, retries
        As ``--pack-size`` and ``--retries`` (default: the sweep's ``[run]`` values).
    progress
        Called as ``progress(settled, total, trial_id, state)`` when a trial starts
        (``state == "running"``) and when it settles (``"done"``, ``"failed"``,
        ``"interrupted"``). ``settled`` counts trials found complete at the start too. An
        exception it raises is logged and the run goes on.
    gather
        Write ``out/summary.h5`` at the end (default True).

    Returns
    -------
    workflows.driver.RunReport
        ``.ok``, ``.count("failed")``, ``.states`` (each trial's state), ``.summary``.

    Examples
    --------
    >>> report = genodl.run("jobs/examples/quick.toml", "runs/quick",
    ...                     progress=lambda n, total, tid, state: print(f"{n}/{total} {tid} {state}"))
    ...                                                        # doctest: +SKIP
    >>> report.ok                                              # doctest: +SKIP
    """
    from workflows.driver import RunSettings, run_sweep

    check_at_least("pack_size", pack_size, 1)
    check_at_least("retries", retries, 0)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress={progress!r}: expected a callable "
                        f"(settled, total, trial_id, state) or None")
    settings = RunSettings(site=site, options=dict(options or {}), pack_size=pack_size,
                           retries=retries, gather=gather, progress_callback=progress)
    resolved = as_sweep(sweep)
    if resolved.adaptive is not None:  # rounds of runs; the last round's report
        from workflows.adaptive import run_adaptive

        return run_adaptive(resolved, out, settings).report
    return run_sweep(resolved, out, settings)


def check_at_least(name: str, value: int | None, least: int) -> None:
    """Refuse an integer setting below ``least`` here, where the caller can see its name."""
    from genodl_core.errors import SpecError

    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < least):
        raise SpecError(name, value, f"an integer >= {least}, or None for the sweep's default",
                        reason="out of range")


def trial(spec: Any, out: str | Path) -> "TrialResult":
    """Run one trial in this process and write its record to ``out/<trial_id>/``.

    Parameters
    ----------
    spec
        A trial spec: a dict, a ``.toml``/``.json`` path, or a TrialSpec. For one trial of a
        sweep use ``genodl.plan(sweep).specs[trial_id]``.
    out
        Parent directory of the trial's record.

    Returns
    -------
    genodl_core.training.trial.TrialResult
        ``.state``, ``.final`` (final metrics), ``.path`` (the record), ``.error`` if it failed.

    Examples
    --------
    >>> p = genodl.plan("jobs/examples/quick.toml")            # doctest: +SKIP
    >>> r = genodl.trial(p.specs[p.table.index[0]], "runs/one") # doctest: +SKIP
    >>> r.final["val_accuracy"]                                 # doctest: +SKIP
    """
    from genodl_core.training.trial import run_trial

    return run_trial(spec, out)


class Results:
    """The gathered results of one run directory as pandas DataFrames.

    Tables are read from ``summary.h5`` on first use and kept. ``trials`` has every trial's
    keys, spec columns and state; ``finals`` the final metrics with the grouping keys;
    ``curves`` every per-epoch metric in long form (``trial_id``, ``metric``, ``epoch``,
    ``value``); :meth:`curve` one metric wide (trials x epochs); :meth:`groups` the
    statistics per model, variant, noise kind and level.
    """

    def __init__(self, run_dir: str | Path, summary: Path):
        self.run_dir = Path(run_dir)
        self.summary = summary
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Results({str(self.run_dir)!r})"

    def _cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def trials(self) -> "pd.DataFrame":
        from genodl_core.results import load as results

        return self._cached("trials", lambda: results.trials(self.summary))

    @property
    def finals(self) -> "pd.DataFrame":
        from genodl_core.results import load as results

        return self._cached("finals", lambda: results.finals(self.summary))

    @property
    def curves(self) -> "pd.DataFrame":
        return self._cached("curves", self._long_curves)

    def _long_curves(self) -> "pd.DataFrame":
        import pandas as pd

        from genodl_core.results import load as results

        parts = []
        for metric in results.curve_metrics(self.summary):
            long = self.curve(metric).stack().rename("value").reset_index()  # drops NaN padding
            long.insert(1, "metric", metric)
            parts.append(long)
        if not parts:
            return pd.DataFrame(columns=["trial_id", "metric", "epoch", "value"])
        return pd.concat(parts, ignore_index=True)

    def curve(self, metric: str) -> "pd.DataFrame":
        """One per-epoch metric: rows = trials, columns = epochs 1..N (NaN past a trial's end).

        Raises KeyError naming the metrics there are when ``metric`` is not one of them.
        """
        from genodl_core.results import load as results

        return results.curves(self.summary, metric)

    def groups(self, metrics: Any = None) -> "pd.DataFrame":
        """Mean, std, min, max and count of the final metrics per group of done trials
        (``metrics``: only these; default all)."""
        from genodl_core.results import load as results

        return results.groups(self.summary, metrics)


def load(run_dir: str | Path, *, gather: str = "auto") -> Results:
    """Open a run directory's results, gathering ``summary.h5`` first when needed.

    Parameters
    ----------
    run_dir
        A directory written by :func:`run` or ``genodl run``.
    gather
        ``"auto"`` (default): gather when the summary is missing or older than a trial record
        or ``sweep.json`` (a run still going, or one gathered before a rerun); ``"always"``;
        ``"never"`` (read the summary as it is).

    Raises
    ------
    DataError
        When ``run_dir`` is not a directory, or (``gather="never"``) has no summary.

    Examples
    --------
    >>> res = genodl.load("runs/quick")                        # doctest: +SKIP
    >>> res.finals.query("state == 'done'").groupby(["variant", "noise_level"]).mean(numeric_only=True)
    ...                                                        # doctest: +SKIP
    >>> res.curve("val_loss").T.plot(legend=False)             # doctest: +SKIP
    """
    from genodl_core.errors import DataError
    from genodl_core.results.summary import SUMMARY_FILE, gather as gather_run

    allowed = ("auto", "always", "never")
    if gather not in allowed:
        raise ValueError(f"gather={gather!r}: expected one of {allowed}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a run directory (it does not exist)")
    summary = run_dir / SUMMARY_FILE
    if gather == "always" or (gather == "auto" and summary_is_stale(run_dir, summary)):
        summary = gather_run(run_dir)
    return Results(run_dir, summary)


def summary_is_stale(run_dir: Path, summary: Path) -> bool:
    """True when ``summary`` is missing or older than ``sweep.json`` or any trial record file."""
    from genodl_core.results.summary import find_record_dirs

    try:
        gathered = summary.stat().st_mtime_ns
    except FileNotFoundError:
        return True
    candidates = [run_dir / "sweep.json"]
    for record in find_record_dirs(run_dir):
        candidates.extend(p for p in record.iterdir() if p.is_file())
    return any(newer_than(p, gathered) for p in candidates)


def newer_than(path: Path, mtime_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns > mtime_ns
    except FileNotFoundError:  # a record being replaced right now
        return False


def status(run_dir: str | Path) -> "StatusReport":
    """Every trial's state in a run directory (``genodl status`` as data; no locks taken).

    Returns
    -------
    workflows.driver.StatusReport
        ``.counts()`` by state, ``.failures()``, ``.states`` per trial, ``.driver`` (the pid
        and host of a driver running now, else None), ``.to_dict()``.

    Examples
    --------
    >>> genodl.status("runs/quick").counts()                  # doctest: +SKIP
    """
    from workflows.driver import sweep_status

    return sweep_status(run_dir)
