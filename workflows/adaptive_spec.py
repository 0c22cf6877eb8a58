"""The ``[sweep.adaptive]`` table: one axis whose levels are chosen round by round.

::

    [sweep.adaptive]
    axis = "noise[0].fraction"   # the level axis (not also listed in [sweep.axes])
    range = [0.0, 0.5]           # levels searched, both ends in the first round
    coarse = 5                   # first-round levels, evenly spaced over the range
    metric = "val_accuracy"      # a final metric of every trial
    target = "halfway"           # "halfway" (between the clean value and chance), a number, or
                                 # "metric:NAME": the group mean of another final metric
    chance = 0.5                 # the metric's chance value; needed by "halfway"
    direction = "decreasing"     # how the metric moves as the level grows: or "increasing"
    seeds = 2                    # seeds per level
    budget = 40                  # the most trials of the whole sweep (all groups, all rounds)
    width = 0.02                 # stop a group once its interval is at most this wide
    points = 3                   # new levels per group and round, inside the interval
    extra_seeds = 2              # seeds added at a level whose between-seed std > spread
    spread = 0.05
    resolution = 0.001           # levels lie on lo + k * resolution
    max_rounds = 10
    bootstrap = 200              # bootstrap resamples over seeds, from generator `seed`
    seed = 0

The other axes of ``[sweep.axes]`` make the groups; each group gets its own levels. Seeds come
from ``seeds`` (the base trial's seed upwards), so ``trials_per_level`` and a ``seed`` axis are
refused beside an adaptive axis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Collection, Mapping

from genodl_core.errors import SpecError

from genodl_core.results.breakdown import DIRECTIONS

_KEYS = {"axis", "range", "coarse", "metric", "target", "chance", "direction", "seeds",
         "budget", "width", "points", "extra_seeds", "spread", "resolution", "max_rounds",
         "bootstrap", "seed"}
#: Named targets (besides a number).
TARGETS = ("halfway",)
#: A target read from another final metric of the same trials (its mean over the group):
#: ``metric:null_mean_val_mae`` is the MAE of predicting the training mean.
BASELINE_PREFIX = "metric:"


@dataclass(frozen=True)
class AdaptiveSpec:
    """A validated ``[sweep.adaptive]`` table."""

    axis: str
    lo: float
    hi: float
    metric: str
    target: float | str
    coarse: int = 5
    chance: float | None = None
    direction: str = "decreasing"
    seeds: int = 2
    budget: int | None = None
    width: float | None = None
    points: int = 3
    extra_seeds: int = 0
    spread: float = math.inf
    resolution: float = 0.0
    max_rounds: int = 10
    bootstrap: int = 200
    seed: int = 0

    def coarse_levels(self) -> list[float]:
        """The first round's levels: ``coarse`` evenly spaced over the range, on the grid."""
        from genodl_core.results.breakdown import snap

        if self.coarse == 1:
            return [self.lo]
        return sorted({snap(self.lo + (self.hi - self.lo) * i / (self.coarse - 1), self.lo,
                            self.resolution) for i in range(self.coarse)})

    def check_first_round(self, count: int) -> None:
        """Refuse a first round larger than the budget.

        Raises
        ------
        SpecError
            Naming the first round's size and the budget.
        """
        if self.budget is not None and count > self.budget:
            raise SpecError("sweep.adaptive.budget", self.budget,
                            f"at least the first round's {count} trials (groups x coarse x "
                            f"seeds)", reason="the first round alone exceeds the budget")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["range"] = [out.pop("lo"), out.pop("hi")]
        if out["spread"] == math.inf:
            out.pop("spread")  # JSON has no infinity; absent means "never add seeds"
        return {k: v for k, v in out.items() if v is not None}


def parse_adaptive(raw: Any, axes: Collection[str], has_seed_axis: bool) -> AdaptiveSpec:
    """Validate the ``[sweep.adaptive]`` table.

    Raises
    ------
    SpecError
        Naming the key, the bad value and what is allowed.
    """
    where = "sweep.adaptive"
    if not isinstance(raw, Mapping):
        raise SpecError(where, raw, "a table", reason="not a table")
    for key in raw:
        if key not in _KEYS:
            raise SpecError(f"{where}.{key}", raw[key], sorted(_KEYS), reason="unknown key")
    for key in ("axis", "range", "metric", "target"):
        if key not in raw:
            raise SpecError(f"{where}.{key}", None, f"a value for {key}",
                            reason="missing required key")
    axis = raw["axis"]
    if not isinstance(axis, str) or not axis:
        raise SpecError(f"{where}.axis", axis, "an axis path such as noise[0].fraction",
                        reason="expected a path")
    from workflows.sweep import parse_path

    parse_path(axis)
    if axis in axes:
        raise SpecError(f"{where}.axis", axis, "a path not also listed in [sweep.axes]",
                        reason="the axis is both adaptive and fixed")
    if axis == "seed" or has_seed_axis:
        raise SpecError(f"{where}.seeds", raw.get("seeds"),
                        "seeds given by [sweep.adaptive] seeds alone",
                        reason="an adaptive sweep chooses its seeds; drop trials_per_level and "
                               "the seed axis")
    rng = raw["range"]
    if (not isinstance(rng, list) or len(rng) != 2
            or not all(_is_number(v) and math.isfinite(v) for v in rng) or not rng[0] < rng[1]):
        raise SpecError(f"{where}.range", rng, "[lo, hi], finite numbers with lo < hi",
                        reason="invalid range")
    lo, hi = float(rng[0]), float(rng[1])
    metric = raw["metric"]
    if not isinstance(metric, str) or not metric:
        raise SpecError(f"{where}.metric", metric, "a final metric name such as val_accuracy",
                        reason="expected a string")
    target = raw["target"]
    if not (target in TARGETS or (_is_number(target) and math.isfinite(target))
            or (isinstance(target, str) and target.startswith(BASELINE_PREFIX)
                and len(target) > len(BASELINE_PREFIX))):
        raise SpecError(f"{where}.target", target,
                        f"a number, one of {list(TARGETS)} or '{BASELINE_PREFIX}NAME' (another "
                        f"final metric, e.g. '{BASELINE_PREFIX}null_mean_val_mae')",
                        reason="unknown target")
    chance = raw.get("chance")
    if chance is not None and not (_is_number(chance) and math.isfinite(chance)):
        raise SpecError(f"{where}.chance", chance, "a finite number", reason="expected a number")
    if target == "halfway" and chance is None:
        raise SpecError(f"{where}.chance", None,
                        "the metric's chance value (e.g. 0.5 for two balanced classes)",
                        reason="target = 'halfway' needs it")
    direction = raw.get("direction", "decreasing")
    if direction not in DIRECTIONS:
        raise SpecError(f"{where}.direction", direction, list(DIRECTIONS),
                        reason="unknown direction")
    budget, width = raw.get("budget"), raw.get("width")
    if budget is None and width is None:
        raise SpecError(f"{where}.budget", None, "a budget (most trials) and/or a width",
                        reason="nothing would end the rounds")
    if budget is not None:
        _int_at_least(f"{where}.budget", budget, 1)
    if width is not None and not (_is_number(width) and 0 < width < math.inf):
        raise SpecError(f"{where}.width", width, "a finite number > 0", reason="out of range")
    resolution = raw.get("resolution", (hi - lo) / 1000.0)
    if not (_is_number(resolution) and 0 < resolution <= hi - lo):
        raise SpecError(f"{where}.resolution", resolution,
                        f"a number with 0 < resolution <= {hi - lo:g} (hi - lo)",
                        reason="out of range")
    spread = raw.get("spread", math.inf)
    if not (_is_number(spread) and spread >= 0):
        raise SpecError(f"{where}.spread", spread, "a number >= 0", reason="out of range")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError(f"{where}.seed", seed, "an integer", reason="expected an integer")
    spec = AdaptiveSpec(
        axis=axis, lo=lo, hi=hi, metric=metric, target=target,
        coarse=_int_at_least(f"{where}.coarse", raw.get("coarse", 5), 2),
        chance=None if chance is None else float(chance), direction=direction,
        seeds=_int_at_least(f"{where}.seeds", raw.get("seeds", 2), 1),
        budget=budget, width=None if width is None else float(width),
        points=_int_at_least(f"{where}.points", raw.get("points", 3), 1),
        extra_seeds=_int_at_least(f"{where}.extra_seeds", raw.get("extra_seeds", 0), 0),
        spread=float(spread), resolution=float(resolution),
        max_rounds=_int_at_least(f"{where}.max_rounds", raw.get("max_rounds", 10), 1),
        bootstrap=_int_at_least(f"{where}.bootstrap", raw.get("bootstrap", 200), 0), seed=seed)
    return spec


def plan_lines(spec: AdaptiveSpec, first_round: int) -> list[str]:
    """What ``genodl plan`` says of an adaptive axis: the first round and what ends the rounds."""
    levels = ", ".join(f"{v:g}" for v in spec.coarse_levels())
    target = (f"halfway between the clean value and chance {spec.chance:g}"
              if spec.target == "halfway" else f"{spec.target:g}"
              if not isinstance(spec.target, str) else f"the group mean of "
              f"{spec.target[len(BASELINE_PREFIX):]}")
    ends = [f"budget {spec.budget} trials" if spec.budget is not None else "",
            f"interval width {spec.width:g}" if spec.width is not None else "",
            f"{spec.max_rounds} rounds"]
    return [f"adaptive: {spec.axis} in [{spec.lo:g}, {spec.hi:g}]; {spec.metric} "
            f"({spec.direction}) crossing {target}",
            f"adaptive: first round {first_round} trials (levels {levels} x {spec.seeds} seeds "
            f"per group); later rounds add {spec.points} levels per group inside its interval; "
            f"ends at " + ", ".join(e for e in ends if e)]


def first_round_axes(spec: AdaptiveSpec, axes: list[Any], base: Mapping[str, Any]) -> list[Any]:
    """The sweep's axes plus the adaptive axis at its coarse levels and the seed axis."""
    from workflows.sweep import Axis

    first = base.get("seed", 0)
    if isinstance(first, bool) or not isinstance(first, int):
        raise SpecError("trial.seed", first, "an integer", reason="expected an integer")
    return [*axes, Axis(spec.axis, tuple(spec.coarse_levels())),
            Axis("seed", tuple(range(first, first + spec.seeds)))]


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _int_at_least(where: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SpecError(where, value, f"an integer >= {least}", reason="out of range")
    return value


__all__ = ["AdaptiveSpec", "parse_adaptive", "first_round_axes", "plan_lines",
           "TARGETS", "BASELINE_PREFIX"]
