"""Sweep specs: a base trial plus axes, expanded into trials with stable ids.

A sweep is a TOML (or JSON) file with three tables::

    [sweep]
    name = "nt3-label-noise"          # the run directory is runs/<name>: see SWEEP_NAME_FORM
    trials_per_level = 2             # shorthand for a `seed` axis: base seed, base seed + 1
    max_trials = 100000              # optional: the most trials the axes may expand to
    zip = [["noise[0].kind", "noise[0].feature_col"]]   # optional: axes varied together

    [sweep.axes]                      # cartesian product, in the order written
    "model.variant" = ["base", "abstaining"]
    "noise[0].fraction" = { start = 0.0, stop = 0.5, step = 0.1 }   # stop is included

    [run]                             # optional defaults for `genodl run`
    site = "local_threads"
    retries = 2
    options = { max_threads = 2 }
    pack_size = 1                     # >1: train NT3 trials differing in seed/noise batched

    [trial]                           # the base trial, exactly as `genodl trial` reads it
    seed = 0
    [trial.model]
    name = "nt3"
    ...

A ``[sweep.adaptive]`` table makes one more axis adaptive: the expanded trials are then its first
round, and ``workflows.adaptive`` chooses the later rounds' levels (see
:mod:`workflows.adaptive_spec` and docs/adaptive.md).

Axis paths address the trial spec: ``model.variant``, ``data.n_samples``, ``noise[0].fraction``,
``train.epochs``, ``seed``. A path may also name a whole table (``noise[0]``, ``data``) or the
whole noise list (``noise``); such values replace what the base trial had there, and are applied
before the fields inside them, whatever the order of the axes. Every expanded trial is validated
before anything is submitted, so an invalid sweep fails with the point that broke it.

The number of trials is computed from the axis lengths before any value list is built, and a
sweep of more than ``max_trials`` trials (default :data:`DEFAULT_MAX_TRIALS`) is refused: a
range to ``inf`` or to 2**63 would otherwise exhaust the memory before saying anything. Ranges
take finite numbers only.

Trial ids are the hashes of the resolved trial specs (see :class:`genodl_core.spec.TrialSpec`):
they do not depend on the order of the axes or on which defaults were written out, so a sweep
that is extended later keeps the ids (and the finished records) of the trials it shares.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from genodl_core.errors import SpecError
from genodl_core.spec import read_table, spec_from_dict

log = logging.getLogger(__name__)

#: Version of the resolved-sweep format written to ``sweep.json``.
FORMAT = 1

_SWEEP_KEYS = {"name", "description", "axes", "zip", "trials_per_level", "max_trials",
               "adaptive", "cleaning"}
_RUN_KEYS = {"site", "retries", "options", "threads_per_trial", "progress_interval_s",
             "pack_size", "checkpoint_interval_s", "grace_period_s", "tracking",
             "tracking_uri"}
_TOP_KEYS = {"sweep", "run", "trial"}
_PATH_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
#: Significant digits kept for float ranges, so that 0.1 + 0.2 is written 0.3 (and hashes so).
_RANGE_DIGITS = 12
#: Widest rendering of one table value in `genodl plan` output.
_MAX_CELL = 40
#: The most trials a sweep may expand to unless its ``[sweep] max_trials`` says otherwise.
DEFAULT_MAX_TRIALS = 100_000
#: Sweep names: they become the run directory ``runs/<name>`` and part of the batch job name.
SWEEP_NAME_FORM = ("a letter or digit, then letters, digits, '.', '_' and '-' "
                   "(no '..', no '/'; e.g. nt3-label-noise_v2)")
_SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Axis:
    """One varied spec field: its path and the values it takes, in order."""

    path: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class SweepTrial:
    """One expanded trial: its position in the sweep, the axis values and the resolved spec."""

    index: int
    trial_id: str
    point: dict[str, Any]
    spec: dict[str, Any]

    def label(self) -> str:
        """A short human description of the axis values, e.g. ``variant=base fraction=0.2``."""
        return " ".join(f"{short_path(p)}={format_value(v)}" for p, v in self.point.items())


@dataclass(frozen=True)
class RunDefaults:
    """The ``[run]`` table: defaults for ``genodl run`` that the command line overrides."""

    site: str = "local_threads"
    retries: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    threads_per_trial: int | None = None
    progress_interval_s: float = 30.0
    #: Trials per batched computation (NT3 trials differing only in seed and noise); 1 = off.
    pack_size: int = 1
    #: Seconds of training between checkpoints of a trial or pack; 0 = none; None = the
    #: worker's default (GENODL_CHECKPOINT_INTERVAL_S, else 300 s).
    checkpoint_interval_s: float | None = None
    #: Seconds running trials get to finish or checkpoint after SIGINT/SIGTERM.
    grace_period_s: float = 30.0
    #: Log each trial as it settles to "mlflow" or "tensorboard" (None: no tracking), at
    #: ``tracking_uri`` (None: a folder inside the run directory).
    tracking: str | None = None
    tracking_uri: str | None = None


@dataclass(frozen=True)
class Sweep:
    """A resolved sweep: every trial expanded and validated."""

    name: str
    description: str
    axes: tuple[Axis, ...]
    zipped: tuple[tuple[str, ...], ...]
    base: dict[str, Any]
    trials: tuple[SweepTrial, ...]
    run: RunDefaults
    source: str | None = None
    #: The cap the sweep was expanded under (``[sweep] max_trials``).
    max_trials: int = DEFAULT_MAX_TRIALS
    #: The ``[sweep.adaptive]`` table (workflows.adaptive_spec.AdaptiveSpec): then ``trials``
    #: are its first round, and workflows.adaptive runs the later ones.
    adaptive: Any = None
    #: ``[sweep] cleaning``: detectors whose flagged samples a second round drops and retrains
    #: without (workflows.cleaning); empty: no cleaning stage.
    cleaning: tuple[str, ...] = ()

    @property
    def trial_ids(self) -> list[str]:
        return [t.trial_id for t in self.trials]

    def by_id(self) -> dict[str, SweepTrial]:
        return {t.trial_id: t for t in self.trials}

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep as plain data (what ``sweep.json`` holds)."""
        return {
            "format": FORMAT,
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "max_trials": self.max_trials,
            "axes": {a.path: list(a.values) for a in self.axes},
            "zip": [list(group) for group in self.zipped],
            "run": {"site": self.run.site, "retries": self.run.retries,
                    "options": dict(self.run.options),
                    "threads_per_trial": self.run.threads_per_trial,
                    "progress_interval_s": self.run.progress_interval_s,
                    "pack_size": self.run.pack_size,
                    "checkpoint_interval_s": self.run.checkpoint_interval_s,
                    "grace_period_s": self.run.grace_period_s,
                    "tracking": self.run.tracking, "tracking_uri": self.run.tracking_uri},
            "base": self.base,
            "trials": [{"index": t.index, "trial_id": t.trial_id, "point": t.point,
                        "spec": t.spec} for t in self.trials],
            **({"adaptive": self.adaptive.to_dict()} if self.adaptive is not None else {}),
            **({"cleaning": list(self.cleaning)} if self.cleaning else {}),
        }


def load_sweep(path: str | Path) -> Sweep:
    """Read, expand and validate a sweep file (``.toml`` or ``.json``).

    Raises
    ------
    SpecError
        When the file cannot be parsed, a key is unknown, an axis is malformed, or any expanded
        trial is invalid (the error names the sweep point).
    """
    table = read_table(path)
    return sweep_from_dict(table, source=str(path))


def sweep_from_dict(table: Mapping[str, Any], source: str | None = None) -> Sweep:
    """Expand and validate a sweep given as plain data (parsed TOML/JSON).

    Raises
    ------
    SpecError
        As :func:`load_sweep`.
    """
    if not isinstance(table, Mapping):
        raise SpecError("sweep file", table, "a table with [sweep] and [trial]",
                        reason="not a table")
    _check_keys(table, _TOP_KEYS, "")
    if "trial" not in table:
        raise SpecError("trial", None, "a [trial] table holding the base trial spec",
                        reason="missing required key")
    base = table["trial"]
    if not isinstance(base, Mapping):
        raise SpecError("trial", base, "a table (the base trial spec)", reason="not a table")
    meta = table.get("sweep", {})
    if not isinstance(meta, Mapping):
        raise SpecError("sweep", meta, "a table", reason="not a table")
    _check_keys(meta, _SWEEP_KEYS, "sweep")
    name = check_sweep_name(meta.get("name"), source)
    description = meta.get("description", "")
    if not isinstance(description, str):
        raise SpecError("sweep.description", description, "a string", reason="expected a string")

    max_trials = _parse_max_trials(meta.get("max_trials", DEFAULT_MAX_TRIALS))
    axes = _parse_axes(meta.get("axes", {}), max_trials)
    axes = _add_trials_per_level(axes, meta.get("trials_per_level"), base, max_trials)
    zipped = _parse_zip(meta.get("zip", []), axes)
    adaptive = None
    if "adaptive" in meta:
        from workflows.adaptive_spec import first_round_axes, parse_adaptive

        adaptive = parse_adaptive(meta["adaptive"], {a.path for a in axes},
                                  "trials_per_level" in meta or any(a.path == "seed" for a in axes))
        axes = first_round_axes(adaptive, axes, base)
    count = check_trial_count(axes, zipped, max_trials)
    if adaptive is not None:
        adaptive.check_first_round(count)
    run = _parse_run(table.get("run", {}))
    cleaning: tuple[str, ...] = ()
    if "cleaning" in meta:
        from workflows.cleaning import parse_cleaning

        cleaning = parse_cleaning(meta["cleaning"])
    trials = expand(dict(base), axes, zipped)
    log.debug("sweep %s: %d axes, %d trials", name, len(axes), len(trials))
    return Sweep(name=name, description=description, axes=tuple(axes), zipped=zipped,
                 base=copy.deepcopy(dict(base)), trials=tuple(trials), run=run, source=source,
                 max_trials=max_trials, adaptive=adaptive, cleaning=cleaning)


def check_sweep_name(name: Any, source: str | None) -> str:
    """The sweep's name, checked: it names the run directory ``runs/<name>``.

    A name like ``..`` or ``a/../../x`` would put the run directory (and everything a run
    writes) outside ``runs/``, so only :data:`SWEEP_NAME_FORM` is accepted. Without ``[sweep]
    name`` the file's stem is used, and must fit the same form.

    Raises
    ------
    SpecError
        Naming the name, where it came from and :data:`SWEEP_NAME_FORM`.
    """
    from_file = name is None
    if from_file:
        name = Path(source).stem if source else "sweep"
    if isinstance(name, str) and _SWEEP_NAME.fullmatch(name) and ".." not in name:
        return name
    reason = ("the sweep file's name gives no valid sweep name: set [sweep] name"
              if from_file else "invalid name")
    raise SpecError("sweep.name", name, SWEEP_NAME_FORM, reason=reason)


def check_trial_count(axes: list[Axis], zipped: tuple[tuple[str, ...], ...],
                      max_trials: int) -> int:
    """The number of trials the axes expand to, refused above ``max_trials``.

    Counted from the axis lengths (a zipped group counts once), before any trial is built.

    Raises
    ------
    SpecError
        Naming the count and the cap, and how to raise it.
    """
    grouped = {p for group in zipped for p in group}
    count = math.prod(len(axis.values) for axis in axes if axis.path not in grouped)
    by_path = {a.path: a for a in axes}
    count *= math.prod(len(by_path[group[0]].values) for group in zipped)
    if count > max_trials:
        raise SpecError("sweep.axes", f"{count} trials",
                        f"at most {max_trials} trials (raise [sweep] max_trials to allow more)",
                        reason=f"the axes expand to {count} trials, more than the cap of "
                               f"{max_trials}")
    return count


def _parse_max_trials(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError("sweep.max_trials", value, "an integer >= 1", reason="out of range")
    return value


def sweep_from_resolved(data: Mapping[str, Any]) -> Sweep:
    """Rebuild a :class:`Sweep` from the plain data of :meth:`Sweep.to_dict` (``sweep.json``).

    The trials are expanded and validated again, so a record of a sweep written by an older
    version that no longer validates fails here, before anything runs.

    Raises
    ------
    SpecError
        When the stored sweep is not in a known format or no longer expands to the same trials.
    """
    if data.get("format") != FORMAT:
        raise SpecError("sweep.json format", data.get("format"), [FORMAT],
                        reason="unknown resolved-sweep format")
    table: dict[str, Any] = {
        "sweep": {"name": data["name"], "description": data.get("description", ""),
                  "axes": data["axes"], "zip": data.get("zip", []),
                  "max_trials": data.get("max_trials", DEFAULT_MAX_TRIALS),
                  **({"cleaning": data["cleaning"]} if data.get("cleaning") else {})},
        "run": {k: v for k, v in data.get("run", {}).items() if v is not None},
        "trial": data["base"],
    }
    sweep = sweep_from_dict(table, source=data.get("source"))
    stored = [t["trial_id"] for t in data.get("trials", [])]
    if stored and stored != sweep.trial_ids:
        raise SpecError("sweep.json", f"{len(stored)} trials", "the trials its axes expand to",
                        reason="the stored trial ids differ from a fresh expansion (was the "
                               "sweep written by another genodl version?)")
    return sweep


def expand(base: Mapping[str, Any], axes: list[Axis] | tuple[Axis, ...],
           zipped: tuple[tuple[str, ...], ...] = ()) -> list[SweepTrial]:
    """The cartesian product of the axes (zipped groups vary together), validated.

    Raises
    ------
    SpecError
        When a point yields an invalid trial or two points yield the same trial.
    """
    by_path = {a.path: a for a in axes}
    grouped = {p for group in zipped for p in group}
    leaders = {group[0]: group for group in zipped}
    # Each factor of the product is a list of {path: value} assignments.
    factors: list[list[dict[str, Any]]] = []
    for axis in axes:
        if axis.path in leaders:
            members = [by_path[p] for p in leaders[axis.path]]
            factors.append([{m.path: m.values[i] for m in members}
                            for i in range(len(members[0].values))])
        elif axis.path not in grouped:
            factors.append([{axis.path: v} for v in axis.values])

    trials: list[SweepTrial] = []
    seen: dict[str, int] = {}
    for index, combo in enumerate(itertools.product(*factors)):
        point: dict[str, Any] = {}
        for assignment in combo:
            point.update(assignment)
        # Order the point as the axes were written (zipped members sit where they were listed).
        point = {a.path: point[a.path] for a in axes}
        spec_dict = copy.deepcopy(dict(base))
        for path in sorted(point, key=lambda p: len(parse_path(p))):
            set_path(spec_dict, path, copy.deepcopy(point[path]))
        try:
            spec = spec_from_dict(spec_dict)
        except SpecError as err:
            where = " ".join(f"{p}={format_value(v)}" for p, v in point.items()) or "base trial"
            raise SpecError(f"sweep point {index} ({where}): {err.field}", err.value,
                            err.allowed, reason=err.reason) from None
        trial_id = spec.trial_id
        if trial_id in seen:
            raise SpecError("sweep.axes", _point_text(point),
                            "axes whose points all differ as trials",
                            reason=f"points {seen[trial_id]} and {index} are the same trial "
                                   f"{trial_id} (an axis value changes nothing?)")
        seen[trial_id] = index
        trials.append(SweepTrial(index, trial_id, point, spec.to_dict()))
    return trials


def parse_path(path: str) -> list[str | int]:
    """Split ``noise[0].fraction`` into ``['noise', 0, 'fraction']``.

    Raises
    ------
    SpecError
        When the path is not a dotted name with optional ``[index]`` parts.
    """
    tokens: list[str | int] = []
    for part in path.split("."):
        if not part:
            raise SpecError(f"sweep.axes.{path!r}", path, "dotted names like noise[0].fraction",
                            reason="empty path component")
        consumed = 0
        for m in _PATH_TOKEN.finditer(part):
            if m.start() != consumed or (m.group(2) is not None and consumed == 0):
                break
            tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
            consumed = m.end()
        if consumed != len(part):
            raise SpecError(f"sweep.axes.{path!r}", path, "dotted names like noise[0].fraction",
                            reason=f"cannot parse {part!r}")
    return tokens


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at ``path`` inside a nested spec dict (in place on the given copy).

    Missing tables are created; a list index may be the list's length, which appends a step
    (e.g. adding a second noise step only on some points).

    Raises
    ------
    SpecError
        When the path goes through a value that is not a table/list or an index is out of range.
    """
    tokens = parse_path(path)
    node: Any = spec
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        where = f"sweep.axes.{path!r}"
        if isinstance(token, int):
            if not isinstance(node, list):
                raise SpecError(where, path, "an index into a list such as noise[0]",
                                reason="not a list at this point")
            if token > len(node) or (token == len(node) and not last):
                raise SpecError(where, path, f"indices 0..{len(node)}",
                                reason="index past the end of the list")
            if token == len(node):
                node.append(value)
                return
            if last:
                node[token] = value
                return
            node = node[token]
        else:
            if not isinstance(node, dict):
                raise SpecError(where, path, "a path through tables", reason="not a table here")
            if last:
                node[token] = value
                return
            if token not in node:
                node[token] = [] if token == "noise" else {}
            elif token == "noise" and isinstance(node[token], Mapping):
                node[token] = [node[token]]
            node = node[token]


def short_path(path: str) -> str:
    """The last name of a path (``noise[0].fraction`` -> ``fraction``) for compact tables."""
    tokens = [t for t in parse_path(path) if isinstance(t, str)]
    return tokens[-1] if tokens else path


def format_value(value: Any) -> str:
    """A compact rendering of an axis value (tables by their kind/name/source)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        # A component table reads as its name with its parameters: gaussian(std=0.1).
        head = next((str(value[k]) for k in ("kind", "name", "source") if k in value), "")
        rest = ",".join(f"{k}={format_value(v)}" for k, v in value.items()
                        if k not in ("kind", "name", "source"))
        text = f"{head}({rest})" if head and rest else head or "{" + rest + "}"
        return text if len(text) <= _MAX_CELL else text[:_MAX_CELL - 3] + "..."
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _point_text(point: Mapping[str, Any]) -> str:
    return " ".join(f"{p}={format_value(v)}" for p, v in point.items())


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise SpecError(f"{where}.{key}" if where else key, table[key], sorted(allowed),
                            reason="unknown key")


def _parse_axes(raw: Any, max_trials: int = DEFAULT_MAX_TRIALS) -> list[Axis]:
    if not isinstance(raw, Mapping):
        raise SpecError("sweep.axes", raw, "a table of path = values", reason="not a table")
    axes = []
    for path, spec in raw.items():
        parse_path(path)
        values = _axis_values(path, spec, max_trials)
        if not values:
            raise SpecError(f"sweep.axes.{path!r}", spec, "at least one value",
                            reason="empty axis")
        axes.append(Axis(path, tuple(values)))
    return axes


def _axis_values(path: str, spec: Any, max_trials: int = DEFAULT_MAX_TRIALS) -> list[Any]:
    where = f"sweep.axes.{path!r}"
    if isinstance(spec, list):
        return _within_cap(where, list(spec), len(spec), max_trials)
    if isinstance(spec, Mapping):
        if set(spec) == {"values"} and isinstance(spec["values"], list):
            return _within_cap(where, list(spec["values"]), len(spec["values"]), max_trials)
        keys = set(spec)
        if keys not in ({"start", "stop", "step"}, {"start", "stop", "num"}):
            raise SpecError(where, dict(spec),
                            "a list, {start, stop, step} or {start, stop, num}",
                            reason="unknown range form")
        start, stop = spec["start"], spec["stop"]
        for key in keys:
            if isinstance(spec[key], bool) or not isinstance(spec[key], (int, float)):
                raise SpecError(f"{where}.{key}", spec[key], "a number", reason="expected a number")
            if not math.isfinite(spec[key]):
                raise SpecError(f"{where}.{key}", spec[key], "a finite number",
                                reason="a range needs finite bounds and step")
        if "num" in spec:
            num = spec["num"]
            if not isinstance(num, int) or num < 1:
                raise SpecError(f"{where}.num", num, "an integer >= 1", reason="out of range")
            _within_cap(where, None, num, max_trials)
            if num == 1:
                return [start]
            points = [_tidy(start + (stop - start) * i / (num - 1)) for i in range(num)]
            if isinstance(start, int) and isinstance(stop, int) and all(
                    p.is_integer() for p in points):
                return [int(p) for p in points]  # whole points between whole bounds: counts
            return points
        step = spec["step"]
        if step == 0 or (stop - start) * step < 0:
            raise SpecError(f"{where}.step", step, f"a step that moves from {start} towards {stop}",
                            reason="range never reaches stop")
        count = _range_count(where, start, stop, step)
        _within_cap(where, None, count, max_trials)
        if all(isinstance(v, int) for v in (start, stop, step)):
            return [start + i * step for i in range(count)]
        return [_tidy(start + i * step) for i in range(count)]
    raise SpecError(where, spec, "a list, {start, stop, step} or {start, stop, num}",
                    reason="not an axis")


def _range_count(where: str, start: float, stop: float, step: float) -> int:
    """Points of ``start, start + step, ...`` up to ``stop`` (included when landed on).

    Integer ranges are counted exactly, whatever their size; float ranges whose span
    overflows (``-1e308`` to ``1e308``) are refused rather than counted as infinite.
    """
    if all(isinstance(v, int) for v in (start, stop, step)):
        return (stop - start) // step + 1
    steps = (stop - start) / step
    if not math.isfinite(steps):
        raise SpecError(where, {"start": start, "stop": stop, "step": step},
                        "a range of finitely many points", reason="the range is too long to count")
    # The stop value is included when the steps land on it (up to rounding).
    return int(math.floor(steps + 1e-9)) + 1


def _within_cap(where: str, values: list[Any] | None, count: int, max_trials: int) -> Any:
    """``values`` when one axis of ``count`` points fits in the sweep's cap; else an error."""
    if count > max_trials:
        raise SpecError(where, f"{count} points",
                        f"at most {max_trials} (raise [sweep] max_trials to allow more)",
                        reason=f"the axis has {count} points, more than the cap of "
                               f"{max_trials} trials")
    return values


def _tidy(x: float) -> float:
    return float(f"{x:.{_RANGE_DIGITS}g}")


def _add_trials_per_level(axes: list[Axis], n: Any, base: Mapping[str, Any],
                          max_trials: int = DEFAULT_MAX_TRIALS) -> list[Axis]:
    if n is None:
        return axes
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError("sweep.trials_per_level", n, "an integer >= 1", reason="out of range")
    _within_cap("sweep.trials_per_level", None, n, max_trials)
    if any(a.path == "seed" for a in axes):
        raise SpecError("sweep.trials_per_level", n, "either trials_per_level or a 'seed' axis",
                        reason="both given")
    first = base.get("seed", 0)
    if isinstance(first, bool) or not isinstance(first, int):
        raise SpecError("trial.seed", first, "an integer", reason="expected an integer")
    return [*axes, Axis("seed", tuple(range(first, first + n)))]


def _parse_zip(raw: Any, axes: list[Axis]) -> tuple[tuple[str, ...], ...]:
    if not isinstance(raw, list) or not all(isinstance(g, list) for g in raw):
        raise SpecError("sweep.zip", raw, "a list of lists of axis paths", reason="wrong shape")
    by_path = {a.path: a for a in axes}
    used: set[str] = set()
    groups = []
    for group in raw:
        if len(group) < 2:
            raise SpecError("sweep.zip", group, "groups of two or more axis paths",
                            reason="a group needs at least two axes")
        for path in group:
            if path not in by_path:
                raise SpecError("sweep.zip", path, list(by_path), reason="not an axis")
            if path in used:
                raise SpecError("sweep.zip", path, "each axis in at most one group",
                                reason="axis zipped twice")
            used.add(path)
        lengths = {p: len(by_path[p].values) for p in group}
        if len(set(lengths.values())) != 1:
            raise SpecError("sweep.zip", lengths, "axes of equal length",
                            reason="zipped axes differ in length")
        # Keep the group in the order the axes were written, so its first member leads.
        order = [a.path for a in axes]
        groups.append(tuple(sorted(group, key=order.index)))
    return tuple(groups)


def _parse_run(raw: Any) -> RunDefaults:
    if not isinstance(raw, Mapping):
        raise SpecError("run", raw, "a table", reason="not a table")
    _check_keys(raw, _RUN_KEYS, "run")
    defaults = RunDefaults()
    site = raw.get("site", defaults.site)
    if not isinstance(site, str):
        raise SpecError("run.site", site, "a site name", reason="expected a string")
    retries = raw.get("retries", defaults.retries)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SpecError("run.retries", retries, "an integer >= 0", reason="out of range")
    options = raw.get("options", {})
    if not isinstance(options, Mapping):
        raise SpecError("run.options", options, "a table of site options", reason="not a table")
    threads = raw.get("threads_per_trial")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise SpecError("run.threads_per_trial", threads, "an integer >= 1", reason="out of range")
    interval = raw.get("progress_interval_s", defaults.progress_interval_s)
    if (isinstance(interval, bool) or not isinstance(interval, (int, float))
            or not (interval > 0 and math.isfinite(interval))):
        raise SpecError("run.progress_interval_s", interval, "a finite number > 0",
                        reason="out of range")
    pack = raw.get("pack_size", defaults.pack_size)
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise SpecError("run.pack_size", pack, "an integer >= 1", reason="out of range")
    checkpoint = raw.get("checkpoint_interval_s")
    if checkpoint is not None and (isinstance(checkpoint, bool)
                                   or not isinstance(checkpoint, (int, float))
                                   or not (checkpoint >= 0 and math.isfinite(checkpoint))):
        raise SpecError("run.checkpoint_interval_s", checkpoint,
                        "finite seconds >= 0 (0: no checkpoints)", reason="out of range")
    grace = raw.get("grace_period_s", defaults.grace_period_s)
    if (isinstance(grace, bool) or not isinstance(grace, (int, float))
            or not (grace >= 0 and math.isfinite(grace))):
        raise SpecError("run.grace_period_s", grace, "finite seconds >= 0", reason="out of range")
    tracking, tracking_uri = _parse_tracking(raw)
    return RunDefaults(tracking=tracking, tracking_uri=tracking_uri,
                       site=site, retries=retries, options=dict(options),
                       threads_per_trial=threads, progress_interval_s=float(interval),
                       pack_size=pack, grace_period_s=float(grace),
                       checkpoint_interval_s=None if checkpoint is None else float(checkpoint))


def _parse_tracking(raw: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``[run] tracking`` ("mlflow", "tensorboard" or "none") and ``tracking_uri``, checked
    (whether the tracker's package is installed is checked when a run starts)."""
    tracking = raw.get("tracking")
    if tracking is not None:
        from genodl_core.results.tracking import TRACKERS

        if tracking not in (*TRACKERS, "none"):
            raise SpecError("run.tracking", tracking, [*TRACKERS, "none"],
                            reason="unknown tracker")
    uri = raw.get("tracking_uri")
    if uri is not None and (not isinstance(uri, str) or not uri):
        raise SpecError("run.tracking_uri", uri, "an MLflow tracking URI or a folder",
                        reason="expected a non-empty string")
    return (None if tracking == "none" else tracking), uri


def plan_table(sweep: Sweep, limit: int | None = None) -> str:
    """A compact text table: one row per trial with its id and axis values.

    ``limit`` rows at most (``None``: all); a negative limit is refused, since slicing with it
    would silently drop rows from the end.
    """
    if limit is not None and limit < 0:
        raise SpecError("--limit", limit, "an integer >= 0 (0: every row)", reason="out of range")
    headers = ["#", "trial_id"] + [short_path(a.path) for a in sweep.axes]
    # Disambiguate equal short names (e.g. two noise steps' `fraction`).
    if len(set(headers)) != len(headers):
        headers = ["#", "trial_id"] + [a.path for a in sweep.axes]
    rows = [[str(t.index), t.trial_id] + [format_value(t.point[a.path]) for a in sweep.axes]
            for t in sweep.trials]
    shown = rows if limit is None or len(rows) <= limit else rows[:limit]
    widths = [max(len(r[i]) for r in [headers, *shown]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in shown]
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more")
    return "\n".join(lines)


__all__ = ["Axis", "SweepTrial", "RunDefaults", "Sweep", "load_sweep", "sweep_from_dict",
           "check_sweep_name", "check_trial_count", "DEFAULT_MAX_TRIALS", "SWEEP_NAME_FORM",
           "sweep_from_resolved", "expand", "parse_path", "set_path", "plan_table",
           "format_value", "short_path"]
