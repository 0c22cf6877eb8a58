"""Adaptive sweeps: rounds of ordinary sweep runs in one run directory.

A sweep with a ``[sweep.adaptive]`` table (:mod:`workflows.adaptive_spec`) runs its coarse
first round, estimates each group's breakdown level from the finished trials
(:mod:`genodl_core.results.breakdown`), and adds a round of levels inside each group's interval
(and seeds where the spread between seeds is large) until every interval is narrow enough, the
budget is spent or ``max_rounds`` rounds have run.

Each round is one call of :func:`workflows.driver.run_sweep` with the explicit list of every
trial planned so far (a sweep whose axes are all zipped), so a round runs on any executor,
packs as usual, and skips the trials already done. A trial's id is the hash of its spec alone:
a trial of an adaptive sweep at a level a uniform sweep also ran is the same trial and shares
its record. Its round is kept beside the records, in ``adaptive.json``.

The next round is a pure function of the recorded results (the bootstrap is seeded), so a run
killed at any point and started again replays the finished rounds from their records, runs what
is missing, and arrives at the same rounds as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from genodl_core import records
from genodl_core.errors import SpecError
from genodl_core.results.breakdown import (ADAPTIVE_FILE, Breakdown, estimate_breakdown,
                                           new_levels, read_rounds_file, spread_levels)

from workflows.adaptive_spec import BASELINE_PREFIX, AdaptiveSpec
from workflows.driver import RunReport, RunSettings, gather_summary, run_sweep
from workflows.rundir import RunDir
from workflows.sweep import Axis, Sweep, expand, format_value, short_path

log = logging.getLogger(__name__)

#: Why the rounds ended.
STOP_REASONS = ("width", "budget", "max_rounds", "exhausted", "outside_range", "stopped")


@dataclass
class AdaptiveReport:
    """What an adaptive run did: the last round's run report, every round, the estimates."""

    report: RunReport
    rounds: list[dict[str, Any]]
    estimates: dict[str, Breakdown]
    stop_reason: str

    @property
    def exit_code(self) -> int:
        return self.report.exit_code


def group_key(point: dict[str, Any], spec: AdaptiveSpec) -> str:
    """The group a trial belongs to: its values of the other axes, as stable text."""
    rest = {p: v for p, v in point.items() if p not in (spec.axis, "seed")}
    return " ".join(f"{short_path(p)}={format_value(v)}" for p, v in rest.items()) or "all"


def explicit_sweep(sweep: Sweep, points: list[dict[str, Any]]) -> Sweep:
    """A sweep of exactly ``points`` (every axis zipped), in their order.

    Raises
    ------
    SpecError
        When a point yields an invalid trial.
    """
    paths = [a.path for a in sweep.axes]
    axes = tuple(Axis(p, tuple(point[p] for point in points)) for p in paths)
    zipped = (tuple(paths),)
    trials = expand(sweep.base, axes, zipped)
    return Sweep(name=sweep.name, description=sweep.description, axes=axes, zipped=zipped,
                 base=sweep.base, trials=tuple(trials), run=sweep.run, source=sweep.source,
                 max_trials=max(sweep.max_trials, len(trials)))


def read_metric(run: RunDir, trial_id: str, metric: str) -> float | None:
    """A done trial's final ``metric``; None while it is not done.

    Raises
    ------
    SpecError
        When a done trial has no such metric (the error lists the ones it has).
    """
    if run.trial_state(trial_id).state != "done":
        return None
    result = records.read_json(run.trial_dir(trial_id) / records.RESULT_FILE)
    final = result.get("final", {})
    if metric not in final:
        raise SpecError("sweep.adaptive.metric", metric, sorted(final),
                        reason=f"not a final metric of trial {trial_id}")
    return float(final[metric])


def estimate_groups(spec: AdaptiveSpec, run: RunDir, trials: list[Any],
                    ) -> dict[str, Breakdown]:
    """Each group's breakdown estimate from its done trials (groups with none are left out)."""
    baseline = (spec.target[len(BASELINE_PREFIX):] if isinstance(spec.target, str)
                and spec.target.startswith(BASELINE_PREFIX) else None)
    samples: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for trial in trials:
        value = read_metric(run, trial.trial_id, spec.metric)
        levels, values, base = samples.setdefault(group_key(trial.point, spec), ([], [], []))
        if value is not None:
            levels.append(float(trial.point[spec.axis]))
            values.append(value)
            if baseline is not None:
                base.append(read_metric(run, trial.trial_id, baseline))
    out = {}
    for key, (levels, values, base) in samples.items():
        if values:
            target = spec.target if baseline is None else sum(base) / len(base)
            out[key] = estimate_breakdown(levels, values, target=target, chance=spec.chance,
                                          direction=spec.direction, lo=spec.lo, hi=spec.hi,
                                          n_boot=spec.bootstrap, seed=spec.seed)
    return out


def next_round(spec: AdaptiveSpec, estimates: dict[str, Breakdown],
               points: list[dict[str, Any]], first_seed: int) -> tuple[list[dict[str, Any]], str]:
    """The trials of the next round, and why there are none when there are none.

    Per group whose interval is wider than ``width``: ``points`` new levels inside the interval
    with ``seeds`` seeds each, then more seeds at levels inside it whose spread is large.
    Groups with the widest intervals come first when the budget cuts the round short.
    """
    if spec.budget is not None and len(points) >= spec.budget:
        return [], "budget"
    used: dict[tuple[str, float], set[int]] = {}
    bases: dict[str, dict[str, Any]] = {}
    for point in points:
        key = group_key(point, spec)
        bases.setdefault(key, point)
        used.setdefault((key, float(point[spec.axis])), set()).add(point["seed"])
    wanted: list[list[dict[str, Any]]] = []
    open_groups = 0
    for key, bd in sorted(estimates.items(), key=lambda kv: -kv[1].width):
        if bd.side != "inside" or spec.width is not None and bd.width <= spec.width:
            continue  # done, or no level in range would move a crossing outside it
        open_groups += 1
        mine: list[dict[str, Any]] = []
        for level in new_levels(bd, points=spec.points, lo=spec.lo, hi=spec.hi,
                                resolution=spec.resolution):
            mine += [{**bases[key], spec.axis: level, "seed": first_seed + s}
                     for s in range(spec.seeds)]
        most = spec.seeds + spec.extra_seeds
        for level in spread_levels(bd, spread=spec.spread, most=most):
            taken = used.get((key, level), set())
            free = (s for s in range(first_seed, first_seed + 10 * most + len(taken))
                    if s not in taken)
            mine += [{**bases[key], spec.axis: level, "seed": next(free)}
                     for _ in range(most - len(taken))]
        wanted.append(mine)
    # Round robin over groups, so that a budget cut leaves no group without trials.
    chosen = [p for row in _round_robin(wanted) for p in row]
    if spec.budget is not None:
        chosen = chosen[:spec.budget - len(points)]
    if chosen:
        return chosen, ""
    if open_groups:
        return [], "exhausted"
    inside = any(bd.side == "inside" for bd in estimates.values())
    return [], "width" if inside else "outside_range"


def _round_robin(lists: list[list[Any]]) -> list[list[Any]]:
    longest = max((len(x) for x in lists), default=0)
    return [[x[i] for x in lists if i < len(x)] for i in range(longest)]


def run_adaptive(sweep: Sweep, out: str | Path, settings: RunSettings | None = None, *,
                 runner: Callable[[Sweep, str | Path, RunSettings], RunReport] = run_sweep,
                 ) -> AdaptiveReport:
    """Run the rounds of an adaptive sweep in ``out`` (or resume them there).

    ``runner`` runs one round (the sweep of every trial planned so far): the Parsl driver by
    default, the MPI path in :func:`run_adaptive_mpi`.

    Raises
    ------
    SpecError
        When ``sweep`` has no ``[sweep.adaptive]`` table, as :func:`run_sweep`, or when the
        metric is not a final metric of the trials.
    """
    spec: AdaptiveSpec | None = sweep.adaptive
    if spec is None:
        raise SpecError("sweep.adaptive", None, "a [sweep.adaptive] table",
                        reason="not an adaptive sweep")
    settings = settings or RunSettings()
    claim_directory(sweep, out, replace=settings.update_sweep)
    per_round = dataclasses.replace(settings, update_sweep=True, gather=False)
    first_seed = sweep.base.get("seed", 0)
    points = [dict(t.point) for t in sweep.trials]
    rounds: list[dict[str, Any]] = []
    added = len(points)
    reason = ""
    while True:
        current = explicit_sweep(sweep, points)
        report = runner(current, out, per_round)
        run = RunDir(report.run_dir)
        estimates = estimate_groups(spec, run, list(current.trials))
        rounds.append({"round": len(rounds),
                       "trial_ids": [t.trial_id for t in current.trials[len(points) - added:]],
                       "estimates": {k: bd.to_dict() for k, bd in estimates.items()}})
        if report.stopped_by is not None:
            reason = "stopped"
        elif len(rounds) >= spec.max_rounds:
            reason = "max_rounds"
        else:
            new, reason = next_round(spec, estimates, points, first_seed)
        _write_rounds(run, spec, rounds, reason if reason else "")
        log.info("adaptive round %d: %d trials; %s", len(rounds) - 1, added,
                 "; ".join(f"{k}: {describe(bd)}" for k, bd in estimates.items()))
        if reason:
            break
        points += new
        added = len(new)
    log.info("adaptive sweep %s ended after %d rounds (%s), %d trials", sweep.name, len(rounds),
             reason, len(points))
    if settings.gather and reason != "stopped":
        report.summary = gather_summary(run)
    return AdaptiveReport(report, rounds, estimates, reason)


def run_adaptive_mpi(sweep: Sweep, out: str | Path, settings: RunSettings | None = None, *,
                     comm: Any = None) -> AdaptiveReport | None:
    """:func:`run_adaptive` over MPI ranks; call on every rank (``genodl run --site mpi``).

    Rank 0 plans the rounds and sends each round's trial list to the other ranks, which then
    join that round's :func:`workflows.mpi.run_sweep_mpi`; None on the other ranks.
    """
    from workflows.mpi import _mpi, run_sweep_mpi

    comm = comm or _mpi().COMM_WORLD
    if comm.Get_rank() != 0:
        while True:
            round_settings = comm.bcast(None, root=0)
            if round_settings is None:
                return None
            points, round_settings = round_settings
            run_sweep_mpi(explicit_sweep(sweep, points), out, round_settings, comm=comm)

    def one_round(current: Sweep, where: str | Path, round_settings: RunSettings) -> RunReport:
        comm.bcast(([t.point for t in current.trials], round_settings), root=0)
        report = run_sweep_mpi(current, where, round_settings, comm=comm)
        assert report is not None  # rank 0 always reports
        return report

    try:
        return run_adaptive(sweep, out, settings, runner=one_round)
    finally:
        comm.bcast(None, root=0)  # no more rounds


def claim_directory(sweep: Sweep, out: str | Path, *, replace: bool = False) -> None:
    """Mark ``out`` as this adaptive sweep's before its first round runs there.

    Every round replaces ``sweep.json`` by a larger trial list, so the check that a plain run
    makes (``out`` holds another sweep: refused unless ``--update-sweep``) is made here, once,
    on the adaptive spec, the base trial and the other axes.

    Raises
    ------
    SpecError
        When ``out`` holds another sweep and ``replace`` is false.
    """
    path = Path(out)
    mine = {"name": sweep.name, "adaptive": sweep.adaptive.to_dict(), "base": sweep.base,
            "first_round": [t.trial_id for t in sweep.trials]}
    stored = read_rounds(path)
    if (path / "sweep.json").exists() and not replace:
        if stored is None or stored.get("claim") != json_ready(mine):
            raise SpecError("--out", str(path), "a new directory, or the one this adaptive "
                            "sweep ran in (--update-sweep replaces what is there)",
                            reason="the directory holds another sweep")
    if stored is None or stored.get("claim") != json_ready(mine):
        path.mkdir(parents=True, exist_ok=True)
        records.atomic_write_json(path / ADAPTIVE_FILE, {"claim": mine, "rounds": []})


def json_ready(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists), for comparing with a stored one."""
    import json

    return json.loads(json.dumps(obj))


def _write_rounds(run: RunDir, spec: AdaptiveSpec, rounds: list[dict[str, Any]],
                  reason: str) -> None:
    claim = (read_rounds(run.path) or {}).get("claim")
    records.atomic_write_json(run.path / ADAPTIVE_FILE, {
        "claim": claim, "adaptive": spec.to_dict(), "rounds": rounds,
        "stop_reason": reason or None,
        "estimates": rounds[-1]["estimates"] if rounds else {}})


def read_rounds(run_dir: str | Path) -> dict[str, Any] | None:
    """The stored rounds of an adaptive run directory; None for a plain sweep."""
    return read_rounds_file(run_dir)


def describe(bd: Breakdown | dict[str, Any]) -> str:
    """One line: the estimate with its interval, or where the crossing lies outside."""
    if isinstance(bd, dict):
        bd = Breakdown.from_dict(bd)
    span = f"[{bd.low:.4g}, {bd.high:.4g}]"
    if bd.side == "inside":
        return f"breakdown {bd.estimate:.4g} {span} (target {bd.target:.4g})"
    where = "below the lowest level" if bd.side == "below" else "beyond the highest level"
    return f"breakdown {where} {span} (target {bd.target:.4g})"


def status_lines(run_dir: str | Path, states: dict[str, Any] | None = None) -> list[str]:
    """Lines for ``genodl status``: each round's trials (done of planned) and the estimates."""
    data = read_rounds(run_dir)
    if data is None:
        return []
    lines = []
    for r in data.get("rounds", []):
        ids = r.get("trial_ids", [])
        done = sum(1 for t in ids if states is not None and t in states
                   and getattr(states[t], "state", None) == "done")
        lines.append(f"round {r.get('round')}: {len(ids)} trials"
                     + (f", {done} done" if states is not None else ""))
    for key, bd in data.get("estimates", {}).items():
        lines.append(f"  {key}: {describe(bd)}")
    reason = data.get("stop_reason")
    lines.append(f"rounds ended: {reason}" if reason else "rounds not finished: `genodl run` "
                 "with the same sweep and --out goes on")
    return lines


def rounds_by_trial(data: dict[str, Any] | None) -> dict[str, int]:
    """Each trial's round (the first round that planned it)."""
    out: dict[str, int] = {}
    for r in (data or {}).get("rounds", []):
        for tid in r.get("trial_ids", []):
            out.setdefault(tid, int(r.get("round", 0)))
    return out


def estimates_table(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The final estimates as rows (group, estimate, low, high, ...) for summaries and reports."""
    rows = []
    for key, bd in ((data or {}).get("estimates") or {}).items():
        rows.append({"group": key, **{k: bd[k] for k in ("estimate", "low", "high", "width",
                                                          "target", "side")},
                     "n_levels": len(bd["levels"]), "n_trials": int(sum(bd["counts"]))})
    return rows


__all__ = ["ADAPTIVE_FILE", "STOP_REASONS", "AdaptiveReport", "run_adaptive", "run_adaptive_mpi", "explicit_sweep",
           "next_round", "estimate_groups", "group_key", "read_rounds", "status_lines",
           "rounds_by_trial", "estimates_table", "describe"]
