"""The breakdown level of a noise curve: where a group's metric crosses a target, with an interval.

A noise study wants the level at which a model stops working (accuracy halfway between its clean
value and chance, abstention crossing 0.5) rather than a table of evenly spaced levels. This
module estimates that level from the trials sampled so far and says where more trials pay; the
adaptive sweep (``workflows.adaptive``) calls it between rounds.

Why this method. The curve of a metric against a noise level is monotone in expectation but
its shape is not known (NT3's accuracy drops steeply, abstention rises in steps under some
controllers), so a parametric sigmoid can be confidently wrong. An isotonic fit (pool adjacent
violators, weighted by the trials per level) assumes only monotonicity; the crossing is read off
it by linear interpolation between the two sampled levels that bracket the target. Its
uncertainty has two sources, and the interval covers both:

- between-seed spread: a bootstrap over seeds (the trials of each level resampled with
  replacement, ``n_boot`` times, from a seeded generator), the 2.5 / 97.5 percentiles of the
  resampled crossings;
- sampling density: the true crossing of a monotone curve lies between the bracketing levels,
  so the interval never reads narrower than that bracket.

The next round places levels evenly inside the interval (the bracket shrinks geometrically, as
in a noisy bisection, see Waeber, Frazier & Henderson 2013) and adds seeds at levels inside it
whose between-seed spread is large. Only numpy is used; every random draw is seeded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genodl_core.errors import SpecError

#: The rounds and estimates of an adaptive run, beside ``sweep.json`` (workflows.adaptive).
ADAPTIVE_FILE = "adaptive.json"
#: Directions a metric moves as noise grows.
DIRECTIONS = ("decreasing", "increasing")
#: Where the crossing lies relative to the sampled levels.
SIDES = ("inside", "below", "above")


@dataclass(frozen=True)
class Breakdown:
    """The estimated crossing of one group's curve and what it was estimated from.

    ``side`` is ``inside`` when the fitted curve crosses the target between two sampled levels,
    ``below`` when it is already past the target at the lowest level, ``above`` when it never
    reaches it; ``estimate`` is None then, and the interval reaches to the end of the range.
    """

    estimate: float | None
    low: float
    high: float
    target: float
    side: str
    levels: tuple[float, ...]
    means: tuple[float, ...]
    fitted: tuple[float, ...]
    counts: tuple[int, ...]
    stds: tuple[float, ...] = field(default=())

    @property
    def width(self) -> float:
        return self.high - self.low

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["width"] = self.width
        for key in ("levels", "means", "fitted", "counts", "stds"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Breakdown":
        keys = ("estimate", "low", "high", "target", "side", "levels", "means", "fitted",
                "counts", "stds")
        values = {k: data[k] for k in keys if k in data}
        for key in ("levels", "means", "fitted", "counts", "stds"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def isotonic(y: np.ndarray, weights: np.ndarray, *, increasing: bool) -> np.ndarray:
    """Weighted least-squares monotone fit (pool adjacent violators) of ``y`` in its order."""
    sign = 1.0 if increasing else -1.0
    blocks: list[list[float]] = []  # [weighted mean, weight, length]
    for value, weight in zip(sign * np.asarray(y, float), np.asarray(weights, float)):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return sign * np.concatenate([np.full(n, v) for v, _, n in blocks])


def crossing(levels: np.ndarray, fitted: np.ndarray, target: float,
             decreasing: bool) -> tuple[str, float | None, int]:
    """Where a monotone fitted curve first reaches ``target``.

    Returns ``(side, level, i)``: ``i`` is the first sampled level at or past the target (the
    bracket is ``levels[i-1], levels[i]``), the level is linearly interpolated inside it.
    """
    f = -fitted if decreasing else fitted
    t = -target if decreasing else target
    past = np.nonzero(f >= t)[0]
    if len(past) == 0:
        return "above", None, len(levels)
    i = int(past[0])
    if i == 0:
        return "below", None, 0
    x0, x1, f0, f1 = levels[i - 1], levels[i], f[i - 1], f[i]
    return "inside", float(x0 + (t - f0) / (f1 - f0) * (x1 - x0)), i


def target_value(target: float | str, clean: float, chance: float | None) -> float:
    """The metric value that marks the breakdown: an explicit number, or ``halfway`` between
    the clean value (the mean at the lowest level) and ``chance``."""
    if target == "halfway":
        if chance is None:
            raise SpecError("sweep.adaptive.chance", chance,
                            "the metric's chance value (e.g. 0.5 for two balanced classes)",
                            reason="target = 'halfway' needs it")
        return (clean + chance) / 2.0
    return float(target)


def _group(levels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    order = np.argsort(levels, kind="stable")
    levels, values = levels[order], values[order]
    unique, starts = np.unique(levels, return_index=True)
    return unique, np.split(values, starts[1:])


def _fit(unique: np.ndarray, groups: list[np.ndarray], target: float | str,
         chance: float | None, decreasing: bool) -> tuple[np.ndarray, np.ndarray, float]:
    means = np.array([g.mean() for g in groups])
    counts = np.array([len(g) for g in groups], float)
    fitted = isotonic(means, counts, increasing=not decreasing)
    return means, fitted, target_value(target, float(means[0]), chance)


def estimate_breakdown(levels: Sequence[float], values: Sequence[float], *,
                       target: float | str, chance: float | None = None,
                       direction: str = "decreasing", lo: float | None = None,
                       hi: float | None = None, n_boot: int = 200, seed: int = 0,
                       confidence: float = 0.95) -> Breakdown:
    """The level where the group's metric crosses ``target``, with an interval.

    Parameters
    ----------
    levels, values
        One entry per finished trial: its level and its metric (non-finite values are left out).
    target
        A metric value, or ``"halfway"`` (between the mean at the lowest level and ``chance``).
    direction
        How the metric moves as the level grows: ``decreasing`` (accuracy) or ``increasing``
        (abstention, MAE).
    lo, hi
        The range searched (default: the lowest and highest sampled level); a crossing outside
        the sampled levels has its interval reach to these.
    n_boot, seed, confidence
        Bootstrap resamples over seeds, the seed of their generator and the interval's level.

    Raises
    ------
    SpecError
        For an unknown direction, no finite values, or ``halfway`` without ``chance``.
    """
    if direction not in DIRECTIONS:
        raise SpecError("sweep.adaptive.direction", direction, list(DIRECTIONS),
                        reason="unknown direction")
    x = np.asarray(levels, float)
    y = np.asarray(values, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) == 0:
        raise SpecError("breakdown values", list(values), "at least one finite metric value",
                        reason="no finished trial to estimate from")
    decreasing = direction == "decreasing"
    unique, groups = _group(x, y)
    lo = float(unique[0]) if lo is None else float(lo)
    hi = float(unique[-1]) if hi is None else float(hi)
    means, fitted, t = _fit(unique, groups, target, chance, decreasing)
    side, estimate, i = crossing(unique, fitted, t, decreasing)
    if side == "inside":
        low, high = float(unique[i - 1]), float(unique[i])
    elif side == "below":
        low, high = lo, float(unique[0])
    else:
        low, high = float(unique[-1]), hi
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        resampled = [g[rng.integers(0, len(g), len(g))] for g in groups]
        _, f_b, t_b = _fit(unique, resampled, target, chance, decreasing)
        side_b, level_b, _ = crossing(unique, f_b, t_b, decreasing)
        draws.append(level_b if side_b == "inside" else (lo if side_b == "below" else hi))
    if draws:
        tail = (1.0 - confidence) / 2.0 * 100.0
        b_low, b_high = np.percentile(draws, [tail, 100.0 - tail])
        low, high = min(low, float(b_low)), max(high, float(b_high))
    stds = tuple(float(g.std(ddof=1)) if len(g) > 1 else 0.0 for g in groups)
    return Breakdown(estimate=estimate, low=low, high=high, target=t, side=side,
                     levels=tuple(float(v) for v in unique),
                     means=tuple(float(v) for v in means),
                     fitted=tuple(float(v) for v in fitted),
                     counts=tuple(len(g) for g in groups), stds=stds)


def snap(level: float, lo: float, resolution: float) -> float:
    """``level`` on the grid ``lo + k * resolution``, tidied so that equal levels hash equal."""
    k = round((level - lo) / resolution)
    return float(f"{lo + k * resolution:.12g}")


def new_levels(bd: Breakdown, *, points: int, lo: float, hi: float,
               resolution: float) -> list[float]:
    """Levels for the next round: ``points`` evenly spaced inside the interval, on the grid,
    none closer than ``resolution`` to a sampled level. Empty when the crossing lies outside
    the range (nothing in range would narrow it)."""
    if bd.side != "inside":
        return []
    out: list[float] = []
    taken = list(bd.levels)
    for k in range(1, points + 1):
        level = snap(bd.low + (bd.high - bd.low) * k / (points + 1), lo, resolution)
        if lo <= level <= hi and all(abs(level - v) >= resolution * 0.5 for v in taken):
            out.append(level)
            taken.append(level)
    return sorted(out)


def spread_levels(bd: Breakdown, *, spread: float, most: int) -> list[float]:
    """Sampled levels inside the interval (the bracket included) whose between-seed standard
    deviation exceeds ``spread`` and that hold fewer than ``most`` trials: more seeds there
    narrow the bootstrap part of the interval."""
    if bd.side != "inside":
        return []
    return [v for v, s, n in zip(bd.levels, bd.stds, bd.counts)
            if bd.low <= v <= bd.high and n < most and s > spread]



# summary.h5, report and figure ----------------------------------------------------------------

#: The summary group of an adaptive run's estimates.
H5_GROUP = "breakdown"


def read_rounds_file(run_dir: str | Path) -> dict[str, Any] | None:
    """The rounds of an adaptive run (``adaptive.json``); None for a plain sweep."""
    path = Path(run_dir) / ADAPTIVE_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def write_breakdown(h5: Any, run_dir: str | Path) -> None:
    """Write the final estimates of an adaptive run into ``h5/breakdown`` (nothing otherwise).

    One row per group: ``group``, ``estimate`` (NaN when the crossing lies outside the range),
    ``low``/``high``/``width`` (the interval), ``target``, ``side``, ``n_levels``, ``n_trials``;
    ``curves/<row>`` holds the sampled levels, group means, fitted curve and trial counts that
    the figure draws; ``trial_id``/``round`` give each trial's round.
    """
    data = read_rounds_file(run_dir)
    if not data or not data.get("estimates"):
        return
    group = h5.create_group(H5_GROUP)
    spec = data.get("adaptive", {})
    for key in ("axis", "metric", "direction"):
        group.attrs[key] = str(spec.get(key, ""))
    group.attrs["stop_reason"] = str(data.get("stop_reason") or "not finished")
    group.attrs["rounds"] = len(data.get("rounds", []))
    group.attrs["description"] = ("estimated breakdown level per group (where the isotonic fit "
                                  "of the metric crosses the target) with its interval")
    items = list(data["estimates"].items())
    strings = {"group": [k for k, _ in items], "side": [bd["side"] for _, bd in items]}
    for name, values in strings.items():
        group.create_dataset(name, data=np.array(values, dtype=object),
                             dtype=_h5_str())
    for name in ("estimate", "low", "high", "width", "target"):
        group.create_dataset(name, data=np.array(
            [math.nan if bd.get(name) is None else float(bd[name]) for _, bd in items]))
    group.create_dataset("n_levels", data=np.array([len(bd["levels"]) for _, bd in items]))
    group.create_dataset("n_trials", data=np.array([int(sum(bd["counts"])) for _, bd in items]))
    curves = group.create_group("curves")
    for i, (_, bd) in enumerate(items):
        row = curves.create_group(str(i))
        for name in ("levels", "means", "fitted", "counts"):
            row.create_dataset(name, data=np.asarray(bd[name]))
    pairs = [(tid, int(r.get("round", 0))) for r in data.get("rounds", [])
             for tid in r.get("trial_ids", [])]
    group.create_dataset("trial_id", data=np.array([t for t, _ in pairs], dtype=object),
                         dtype=_h5_str())
    group.create_dataset("round", data=np.array([r for _, r in pairs], dtype=np.int64))


def _h5_str() -> Any:
    import h5py

    return h5py.string_dtype()


def read_breakdown(summary_file: str | Path) -> tuple[Any, dict[str, Any], list[dict]]:
    """The estimates table (pandas), the group's attributes and each row's curve; an empty
    table when the summary holds no adaptive run."""
    import h5py
    import pandas as pd

    with h5py.File(summary_file, "r") as h5:
        if H5_GROUP not in h5:
            return pd.DataFrame(), {}, []
        g = h5[H5_GROUP]
        table = pd.DataFrame({
            "group": [v.decode() if isinstance(v, bytes) else v for v in g["group"][()]],
            **{k: g[k][()] for k in ("estimate", "low", "high", "width", "target",
                                     "n_levels", "n_trials")},
            "side": [v.decode() if isinstance(v, bytes) else v for v in g["side"][()]]})
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
        curves = [{k: g["curves"][str(i)][k][()] for k in ("levels", "means", "fitted",
                                                           "counts")}
                  for i in range(len(table))]
    return table, attrs, curves


def report_lines(summary_file: str | Path) -> list[str]:
    """Lines of ``genodl report`` for an adaptive run: each group's breakdown and interval."""
    table, attrs, _ = read_breakdown(summary_file)
    if table.empty:
        return []
    lines = [f"\nbreakdown of {attrs.get('metric')} along {attrs.get('axis')} "
             f"({attrs.get('rounds')} rounds, ended: {attrs.get('stop_reason')}):"]
    for row in table.itertuples():
        if row.side == "inside":
            where = f"{row.estimate:.4g}  95% interval [{row.low:.4g}, {row.high:.4g}]"
        else:
            where = ("below the lowest level" if row.side == "below"
                     else "beyond the highest level") + f"  [{row.low:.4g}, {row.high:.4g}]"
        lines.append(f"  {row.group}: {where}  (target {row.target:.4g}; {row.n_trials} "
                     f"trials at {row.n_levels} levels)")
    return lines


def plot_breakdown(summary_file: str | Path, out: str | Path) -> list[Path]:
    """One figure per group: trial means at the sampled levels (dot size: trials), the fitted
    curve, the target and the estimate with its interval shaded."""
    from matplotlib.figure import Figure

    table, attrs, curves = read_breakdown(summary_file)
    written = []
    for i, row in enumerate(table.itertuples()):
        c = curves[i]
        fig = Figure(figsize=(5.5, 4.0), layout="constrained")
        ax = fig.subplots()
        ax.scatter(c["levels"], c["means"], s=12 * np.asarray(c["counts"]), color="C0",
                   label="sampled levels (mean; size: trials)", zorder=3)
        ax.plot(c["levels"], c["fitted"], color="C0", lw=1, label="isotonic fit")
        ax.axhline(row.target, color="grey", ls=":", label=f"target {row.target:.3g}")
        ax.axvspan(row.low, row.high, color="C1", alpha=0.2, label="95% interval")
        if row.side == "inside":
            ax.axvline(row.estimate, color="C1", label=f"breakdown {row.estimate:.3g}")
        ax.set_xlabel(str(attrs.get("axis")))
        ax.set_ylabel(str(attrs.get("metric")))
        ax.set_title(row.group, fontsize=9)
        ax.legend(fontsize=7)
        name = "breakdown_" + "".join(ch if ch.isalnum() or ch in "._-" else "_"
                                      for ch in row.group)[:80] + ".png"
        path = Path(out) / name
        fig.savefig(path, dpi=120)
        written.append(path)
    return written


__all__ = ["ADAPTIVE_FILE", "H5_GROUP", "read_rounds_file", "write_breakdown", "read_breakdown",
           "report_lines", "plot_breakdown", "Breakdown", "DIRECTIONS", "SIDES", "estimate_breakdown", "isotonic", "crossing",
           "target_value", "snap", "new_levels", "spread_levels"]
