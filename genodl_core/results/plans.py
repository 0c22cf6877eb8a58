"""Execution plans of a sweep's trials: which plan trained each trial, and whether they differ.

Every trial record says in ``provenance.json`` (key ``engine``) how the trial was computed: its
mode (``plain``, ``fast`` or ``packed``), device, precision, the fast path's switches and a short
``label`` of them. Two trials of one sweep trained under different plans give numbers that may
differ by more than their seeds do (bf16 against fp32, fused kernels against the plain port), so
the gather stores the plan of every trial in ``summary.h5`` and ``genodl status`` and
``genodl gather`` warn when the done trials of a sweep were trained under more than one.

Records written before plans were recorded have no ``engine``; they count as one plan called
``unrecorded``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from genodl_core import records

#: Key of the plan in ``provenance.json``.
ENGINE_KEY = "engine"
#: Value of a plan field that a record does not say (no plan, or a plan without that field).
UNRECORDED = "unrecorded"
#: Trial ids shown per plan in warnings and in the summary's ``engine_plans`` attribute.
N_EXAMPLES = 3

#: Per-trial plan columns of ``/trials`` in ``summary.h5`` with their kind ('str' or 'int').
PLAN_COLUMNS: dict[str, str] = {
    "engine_mode": "str",
    "engine_device": "str",
    "engine_precision": "str",
    "engine_label": "str",
    "engine_pack_size": "int",
    "engine_json": "str",
}


def engine_of(provenance: Any) -> Any:
    """The plan in a record's provenance (None when the record has none)."""
    return provenance.get(ENGINE_KEY) if isinstance(provenance, Mapping) else None


def read_engine(trial_dir: str | Path) -> Any:
    """The plan in ``trial_dir/provenance.json``; None when it is missing or unreadable."""
    try:
        return engine_of(records.read_json(Path(trial_dir) / records.PROVENANCE_FILE))
    except (OSError, ValueError):
        return None


def _field(engine: Any, name: str) -> str:
    value = engine.get(name) if isinstance(engine, Mapping) else None
    if value is None or value == "":
        return UNRECORDED
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def plan_columns(engine: Any) -> dict[str, Any]:
    """The plan columns of one trial (see :data:`PLAN_COLUMNS`) from its ``engine`` object.

    Fields the plan does not give are ``"unrecorded"`` (``engine_pack_size``: -1);
    ``engine_json`` is the whole plan as JSON text, ``"null"`` for a record without one.
    """
    pack_size = engine.get("pack_size") if isinstance(engine, Mapping) else None
    return {
        "engine_mode": _field(engine, "mode"),
        "engine_device": _field(engine, "device"),
        "engine_precision": _field(engine, "precision"),
        "engine_label": _field(engine, "label"),
        "engine_pack_size": pack_size if isinstance(pack_size, int)
        and not isinstance(pack_size, bool) else -1,
        "engine_json": json.dumps(engine, sort_keys=True),
    }


def plan_identity(engine: Any) -> tuple[str, str, str]:
    """What makes two plans different: (mode, precision, label); see :func:`plan_groups`."""
    if not isinstance(engine, Mapping):
        return (UNRECORDED, UNRECORDED, UNRECORDED)
    return (_field(engine, "mode"), _field(engine, "precision"), _field(engine, "label"))


@dataclass
class PlanGroup:
    """The trials of a sweep trained under one plan."""

    mode: str
    precision: str
    label: str
    n_trials: int = 0
    #: The first few trial ids of the group, in the order the trials were given.
    examples: list[str] = field(default_factory=list)
    #: Distinct pack sizes and devices among the group's trials (-1 / "unrecorded": unknown).
    pack_sizes: list[int] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.mode, self.precision, self.label)

    @property
    def name(self) -> str:
        """``mode/precision/label`` (``fast/bf16/nhwc+fused``); ``unrecorded`` without a plan."""
        if self.identity == (UNRECORDED, UNRECORDED, UNRECORDED):
            return UNRECORDED
        return "/".join(self.identity)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "precision": self.precision,
                "label": self.label, "n_trials": self.n_trials, "examples": list(self.examples),
                "pack_sizes": list(self.pack_sizes), "devices": list(self.devices)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PlanGroup":
        return cls(data["mode"], data["precision"], data["label"], int(data["n_trials"]),
                   list(data.get("examples", [])), list(data.get("pack_sizes", [])),
                   list(data.get("devices", [])))


def plan_groups(trials: Iterable[tuple[str, Any]]) -> list[PlanGroup]:
    """Group one sweep's done trials by the plan that trained them.

    Parameters
    ----------
    trials
        ``(trial_id, engine)`` pairs, ``engine`` being the trial's plan as recorded in its
        provenance (:func:`engine_of`, :func:`read_engine`) or None when it has none.

    Returns
    -------
    list[PlanGroup]
        One group per distinct plan, the largest first (ties by name), each with its number of
        trials and a few example trial ids. More than one group means the sweep's numbers come
        from different computations.

    A plan is identified by its mode, precision and label (the label names the switches that
    were on). The device is not part of it, nor is the pack size: trials trained in packs of 4
    and of 8 reproduce the same separate trials, so they share one plan (the sizes are listed in
    ``pack_sizes``). A packed trial and one trained alone still differ by their mode. Trials
    without a plan form one group, ``unrecorded``.
    """
    groups: dict[tuple[str, str, str], PlanGroup] = {}
    for trial_id, engine in trials:
        identity = plan_identity(engine)
        group = groups.get(identity)
        if group is None:
            group = groups[identity] = PlanGroup(*identity)
        group.n_trials += 1
        if len(group.examples) < N_EXAMPLES:
            group.examples.append(trial_id)
        columns = plan_columns(engine)
        if columns["engine_pack_size"] not in group.pack_sizes:
            group.pack_sizes.append(columns["engine_pack_size"])
        if columns["engine_device"] not in group.devices:
            group.devices.append(columns["engine_device"])
    for group in groups.values():
        group.pack_sizes.sort()
        group.devices.sort()
    return sorted(groups.values(), key=lambda g: (-g.n_trials, g.name))


def mixed_plans_warning(groups: list[PlanGroup]) -> str | None:
    """One line warning that the done trials were trained under several plans (None if not)."""
    if len(groups) < 2:
        return None
    total = sum(g.n_trials for g in groups)
    parts = ", ".join(
        f"{g.name} ({g.n_trials} trial{'s' if g.n_trials != 1 else ''}, e.g. {g.examples[0]})"
        for g in groups)
    return (f"warning: the {total} done trials of this sweep were trained under {len(groups)} "
            f"execution plans: {parts}; compare their numbers with care")


__all__ = ["ENGINE_KEY", "UNRECORDED", "PLAN_COLUMNS", "PlanGroup", "engine_of", "read_engine",
           "plan_columns", "plan_identity", "plan_groups", "mixed_plans_warning"]
