"""The breakdown estimate and the adaptive rounds on a synthetic curve with a known threshold."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from genodl_core.errors import SpecError
from genodl_core.results.breakdown import crossing, estimate_breakdown, isotonic
from workflows.adaptive import next_round
from workflows.adaptive_spec import plan_lines
from workflows.sweep import sweep_from_dict

#: The known curve: accuracy falls from 0.95 to chance 0.5, halfway at level THRESHOLD.
THRESHOLD = 0.23
WIDTH = 0.02


def accuracy(level: float, seed: int) -> float:
    """A logistic accuracy curve plus seeded between-seed noise (std 0.02)."""
    rng = np.random.default_rng([seed, int(round(level * 1e6))])
    clean = 0.5 + 0.45 * (1 - 1 / (1 + np.exp(-(level - THRESHOLD) / 0.02)))
    return float(clean + rng.normal(0, 0.02))


ADAPTIVE = {"axis": "noise[0].fraction", "range": [0.0, 0.5], "coarse": 5,
            "metric": "val_accuracy", "target": "halfway", "chance": 0.5, "seeds": 2,
            "width": WIDTH, "points": 3, "extra_seeds": 2, "spread": 0.05,
            "resolution": 0.001}
TRIAL = {"seed": 0, "model": {"name": "nt3"}, "data": {"source": "synthetic_nt3"},
         "noise": [{"kind": "label_flip", "fraction": 0.0}]}


def table(**changes) -> dict:
    adaptive = {**ADAPTIVE, **changes}
    return {"sweep": {"name": "adaptive", "adaptive": adaptive}, "trial": copy.deepcopy(TRIAL)}


def estimate(points: list[dict]) -> object:
    levels = [p["noise[0].fraction"] for p in points]
    values = [accuracy(p["noise[0].fraction"], p["seed"]) for p in points]
    return estimate_breakdown(levels, values, target="halfway", chance=0.5, lo=0.0, hi=0.5)


def test_isotonic_pools_violators_and_crossing_interpolates():
    fitted = isotonic(np.array([1.0, 0.8, 0.9, 0.4]), np.ones(4), increasing=False)
    assert np.allclose(fitted, [1.0, 0.85, 0.85, 0.4])
    side, level, i = crossing(np.array([0.0, 0.1, 0.2, 0.3]), fitted, 0.6, decreasing=True)
    assert (side, i) == ("inside", 3) and level == pytest.approx(0.2 + 0.25 / 0.45 * 0.1)
    assert crossing(np.array([0.0, 1.0]), np.array([0.9, 0.8]), 0.5, True)[0] == "above"
    assert crossing(np.array([0.0, 1.0]), np.array([0.4, 0.3]), 0.5, True)[0] == "below"


def test_interval_never_narrower_than_the_bracketing_levels():
    bd = estimate_breakdown([0.0, 0.0, 0.5, 0.5], [0.9, 0.9, 0.5, 0.5], target=0.7)
    assert bd.estimate == pytest.approx(0.25)
    assert (bd.low, bd.high) == (0.0, 0.5)  # no seed spread, but two levels only


def test_adaptive_rounds_find_the_threshold_with_half_the_uniform_trials():
    sweep = sweep_from_dict(table())
    points = [dict(t.point) for t in sweep.trials]
    assert len(points) == 10  # 5 coarse levels x 2 seeds
    for _ in range(sweep.adaptive.max_rounds):
        bd = estimate(points)
        new, reason = next_round(sweep.adaptive, {"all": bd}, points, first_seed=0)
        if not new:
            break
        points += new
    assert reason == "width"
    assert bd.width <= WIDTH and bd.low <= THRESHOLD <= bd.high
    # The uniform grid (2 seeds per level) that reaches the same width with the same estimator;
    # its interval is never narrower than its spacing, so coarser grids need no trying.
    for n in range(int(np.ceil(0.5 / WIDTH)) + 1, 200):
        grid = [{"noise[0].fraction": float(x), "seed": s}
                for x in np.linspace(0.0, 0.5, n) for s in range(2)]
        if estimate(grid).width <= WIDTH:
            break
    assert len(points) <= len(grid) / 2, (len(points), len(grid))


def test_next_round_respects_budget_and_adds_seeds_where_spread_is_large():
    spec = sweep_from_dict(table(budget=14, width=None)).adaptive
    points = [{"noise[0].fraction": x, "seed": s} for x in (0.0, 0.25, 0.5) for s in (0, 1)]
    values = [0.95, 0.95, 0.9, 0.5, 0.5, 0.5]  # wide spread at 0.25
    bd = estimate_breakdown([p["noise[0].fraction"] for p in points], values,
                            target="halfway", chance=0.5, lo=0.0, hi=0.5)
    new, _ = next_round(spec, {"all": bd}, points, first_seed=0)
    assert len(new) == 8  # cut to the budget of 14
    extra = [p for p in new if p["noise[0].fraction"] == 0.25]
    assert sorted(p["seed"] for p in extra) == [2, 3]  # two extra seeds, new seed numbers
    assert next_round(spec, {"all": bd}, points + new, first_seed=0) == ([], "budget")


@pytest.mark.parametrize("change, field", [
    ({"target": "halfway", "chance": None}, "sweep.adaptive.chance"),
    ({"direction": "down"}, "sweep.adaptive.direction"),
    ({"range": [0.5, 0.1]}, "sweep.adaptive.range"),
    ({"colour": 1}, "sweep.adaptive.colour"),
    ({"width": None}, "sweep.adaptive.budget"),
    ({"budget": 4}, "sweep.adaptive.budget"),
    ({"target": "median"}, "sweep.adaptive.target"),
])
def test_invalid_adaptive_tables_name_the_key(change, field):
    raw = table(**change)
    raw["sweep"]["adaptive"] = {k: v for k, v in raw["sweep"]["adaptive"].items()
                                if v is not None}
    with pytest.raises(SpecError) as err:
        sweep_from_dict(raw)
    assert err.value.field == field


def test_adaptive_axis_cannot_also_be_fixed_or_have_seed_axes():
    raw = table()
    raw["sweep"]["axes"] = {"noise[0].fraction": [0.1]}
    with pytest.raises(SpecError, match="both adaptive and fixed"):
        sweep_from_dict(raw)
    raw = table()
    raw["sweep"]["trials_per_level"] = 2
    with pytest.raises(SpecError, match="chooses its seeds"):
        sweep_from_dict(raw)


def test_plan_shows_the_first_round_and_what_ends_it():
    raw = table(budget=40)
    raw["sweep"]["axes"] = {"model.variant": ["base", "abstaining"]}
    sweep = sweep_from_dict(raw)
    assert len(sweep.trials) == 2 * 5 * 2
    text = "\n".join(plan_lines(sweep.adaptive, len(sweep.trials)))
    assert "first round 20 trials" in text and "0, 0.125, 0.25, 0.375, 0.5" in text
    assert "budget 40 trials" in text and "interval width 0.02" in text
    assert sweep.to_dict()["adaptive"]["range"] == [0.0, 0.5]


def test_rounds_end_when_no_curve_crosses_inside_the_range():
    spec = sweep_from_dict(table()).adaptive
    points = [{"noise[0].fraction": x, "seed": s} for x in (0.0, 0.25, 0.5) for s in (0, 1)]
    bd = estimate_breakdown([p["noise[0].fraction"] for p in points], [0.95] * 6,
                            target="halfway", chance=0.5, lo=0.0, hi=0.5)
    assert bd.side == "above" and bd.estimate is None and (bd.low, bd.high) == (0.5, 0.5)
    assert next_round(spec, {"all": bd}, points, first_seed=0) == ([], "outside_range")
