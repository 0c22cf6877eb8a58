"""Gather every trial record of a run directory into one HDF5 summary (``summary.h5``).

The summary is what scientists read after a sweep: one trials table, per-epoch curves as
NaN-padded ``[n_trials x max_epochs]`` arrays, final metrics, per-group statistics and, for
D-GEX, per-gene errors with their gene ids. The layout is described in ``docs/summary-schema.md``
and versioned by the root attribute ``schema_version``.

Design
------
* **Streaming.** Pass 1 reads each record once and keeps only a compact row (scalars, finals and
  the short curves); per-gene arrays, the only large part, are read again one trial at a time in
  pass 2 while they are written, so memory never holds every record's arrays.
* **Incremental.** Each row is stored (as JSON) together with a fingerprint of the record's files
  (modification time and size). A later gather reuses the rows, curves and gene arrays of
  unchanged records from the previous summary and parses only new or changed records; the file
  written is the same as a gather from scratch.
* **Atomic.** The summary is written to a temporary file in the run directory and moved into
  place with :func:`os.replace`, so readers (and a crash) only ever see a complete file.
* **Failures are data.** Failed, running and corrupt records appear in the trials table with
  their state and error and are left out of the statistics; a corrupt record is logged (one
  line naming the trial and why) and listed in ``/problems``, never fatal. Every record's state
  is :func:`genodl_core.records.record_state`'s, the same that ``genodl status`` shows.
* **The current sweep only.** With a ``sweep.json``, only the trials it lists are gathered;
  records of trials it no longer lists (a sweep replaced with ``--update-sweep``) are left out,
  counted in ``n_outside_sweep`` and named in ``/outside_sweep``.
* **One version of the data.** Each trial's data fingerprints (``data_fingerprint`` columns)
  are stored; done trials that read different versions of one data file are refused unless
  ``allow_mixed_data``, and files that changed since are reported.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import pkgutil
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from genodl_core import records
from genodl_core.data.fingerprint import (DATA_COLUMNS, data_columns, data_versions, find_changes,
                                          mixed_versions, recorded_fingerprints)
from genodl_core.results.plans import (PLAN_COLUMNS, PlanGroup, engine_of, plan_columns,
                                       plan_groups)

log = logging.getLogger(__name__)

#: Trial states in the summary; ``pending`` trials are listed in ``sweep.json`` without a record
#: yet (or have a spec but no status), ``corrupt`` ones have records that do not parse.
STATES = ("done", "failed", "running", "pending", "corrupt")
#: Version of the summary layout; bumped whenever a reader would need to change. Version 2
#: added a ``trial_id`` dataset to every table whose rows are trials (``/finals``, ``/curves``,
#: ``/genes``) and ``description`` / ``units`` attributes on every dataset.
SCHEMA_VERSION = 2
#: Versions :mod:`genodl_core.results.load` reads (version 1 lacks only what version 2 added).
READABLE_SCHEMA_VERSIONS = (1, 2)
SUMMARY_FILE = "summary.h5"
SWEEP_FILE = "sweep.json"
#: Folder of per-trial records inside a run directory (records directly under it also count).
TRIALS_DIR = "trials"

#: Columns of ``/trials`` that every summary has, with their kind ('str', 'float', 'int').
FIXED_COLUMNS: dict[str, str] = {
    "trial_id": "str",
    "state": "str",
    "model": "str",
    "variant": "str",
    "setting": "str",
    "data_source": "str",
    "noise_kind": "str",
    "noise_level": "float",
    "noise_levels": "str",
    "seed": "int",
    "n_epochs": "int",
    "wall_s": "float",
    "finished_at": "float",
    "attempt": "int",
    "host": "str",
    "gpu": "str",
    "gpu_name": "str",
    "device": "str",
    "precision": "str",
    **PLAN_COLUMNS,
    **DATA_COLUMNS,
    "git_revision": "str",
    "error_type": "str",
    "error": "str",
    "traceback": "str",
    "record_path": "str",
}
#: Columns that identify a group; statistics are computed per distinct combination.
GROUP_KEYS = ("model", "variant", "setting", "data_source", "noise_kind", "noise_levels")
#: Spec paths that never make a setting: they are a group's other keys, its seeds and noise, or
#: they cannot change a trial's numbers (the time budget).
SETTING_EXCLUDED = ("spec.seed", "spec.noise", "spec.model.name", "spec.model.variant",
                    "spec.data.source", "spec.train.timeout_s")
#: The statistics stored per group and final metric (``<metric>.<stat>`` columns of ``/groups``).
GROUP_STATS = ("mean", "std", "min", "max", "count")
#: Name of the gene id array in a trial's ``arrays.npz``; any array with ``per_gene`` in its
#: name is stored under ``/genes`` aligned to these ids.
GENE_IDS_ARRAY = "target_ids"
GENE_IDS_FALLBACK = ("gene_ids",)
PER_GENE_MARK = "per_gene"
#: Per-target arrays of multi-label models (per-target AUCs) are stored the same way.
PER_TARGET_MARK = "per_target"
#: Variant of models that have a single form (e.g. D-GEX).
DEFAULT_VARIANT = "default"
#: Parameter names tried, in order, when a noise kind does not declare its ``level_field``.
LEVEL_FIELD_GUESSES = ("fraction", "std", "r", "level", "scale", "sigma", "rate", "p", "percent")
#: A temporary summary older than this is left over from a killed gather and is removed.
STALE_TEMP_S = 3600.0
#: HDF5 keeps attributes in the object header; larger values go to a dataset instead.
MAX_ATTR_BYTES = 60_000

_STR = h5py.string_dtype("utf-8")


@dataclass
class TrialRow:
    """The compact form of one trial record, as gathered (everything but per-gene arrays)."""

    trial_id: str
    columns: dict[str, Any]
    finals: dict[str, float] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    #: Names of per-gene arrays in the record's ``arrays.npz``.
    gene_arrays: list[str] = field(default_factory=list)
    #: SHA-1 of the trial's gene ids (None without per-gene arrays).
    gene_ids_sha: str | None = None
    fingerprint: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.columns["state"]

    def to_json(self) -> str:
        """Everything except the curves (stored as arrays), to reuse the row next gather."""
        return json.dumps({
            "columns": self.columns, "finals": self.finals,
            "curve_len": {m: int(len(c)) for m, c in self.curves.items()},
            "gene_arrays": self.gene_arrays, "gene_ids_sha": self.gene_ids_sha,
            "problems": self.problems,
        }, sort_keys=True)


@dataclass
class GatherStats:
    """Counts of one gather, logged at its end."""

    n_trials: int = 0
    n_reused: int = 0
    n_parsed: int = 0
    states: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: Ids of records the sweep does not list (left out of the summary).
    outside_sweep: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------

def gather(run_dir: str | Path, *, output: str | Path | None = None,
           incremental: bool = True, allow_mixed_data: bool = False) -> Path:
    """Build (or update) ``run_dir/summary.h5`` from the trial records of a run directory.

    Parameters
    ----------
    run_dir
        The run directory: records in ``run_dir/trials/<trial_id>/`` or ``run_dir/<trial_id>/``
        (folders holding ``status.json`` or ``spec.json``), and optionally ``sweep.json``.
    output
        Where to write the summary (default ``run_dir/summary.h5``).
    incremental
        Reuse the rows of unchanged records from the existing summary (same result, less
        parsing). ``False`` re-reads every record.
    allow_mixed_data
        Gather even when done trials read different versions of one data file (their numbers
        are then averaged together; each trial's ``data_fingerprint`` tells them apart).

    Returns
    -------
    Path
        The summary file written.

    Raises
    ------
    DataError
        If ``run_dir`` is not a directory, or done trials read different versions of a data
        file and ``allow_mixed_data`` is false (the previous summary is left as it was).
        Corrupt trial records are reported, not raised.
    OSError
        If the summary cannot be written (full disk, permissions); the previous summary, if
        any, is left intact.
    """
    from genodl_core.errors import DataError

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory does not exist (nothing to gather)")
    output = Path(output) if output is not None else run_dir / SUMMARY_FILE
    stats = GatherStats()

    previous = _PreviousSummary.open(output) if incremental else None
    try:
        sweep_text, sweep = _read_sweep(run_dir, stats)
        rows = _collect_rows(run_dir, previous, stats, sweep)
        check_data_versions(rows, stats, allow_mixed=allow_mixed_data)
        _write_atomically(output, run_dir, rows, previous, stats, sweep_text)
    finally:
        if previous is not None:
            previous.close()

    elapsed = time.perf_counter() - t0
    states = ", ".join(f"{n} {s}" for s, n in sorted(stats.states.items())) or "no trials"
    log.info("gathered %d trials (%s; %d parsed, %d reused) into %s in %.2f s",
             stats.n_trials, states, stats.n_parsed, stats.n_reused, output, elapsed)
    for problem in stats.problems:
        log.warning("gather: %s", problem)
    if stats.outside_sweep:
        log.warning("gather: %s", outside_sweep_line(stats.outside_sweep))
    return output


def outside_sweep_line(trial_ids: list[str]) -> str:
    """One line saying which records are not part of the current sweep."""
    shown = ", ".join(trial_ids[:5]) + (", ..." if len(trial_ids) > 5 else "")
    return (f"{len(trial_ids)} trial record(s) are not part of the current sweep (sweep.json "
            f"does not list them) and are left out: {shown}")


def check_data_versions(rows: list[TrialRow], stats: GatherStats, *,
                        allow_mixed: bool = False) -> None:
    """Refuse done trials that read different versions of one data file; report changed files.

    Raises
    ------
    DataError
        When the done trials read more than one version of a file and ``allow_mixed`` is false;
        the message names each file, its versions and their trials.
    """
    from genodl_core.data.fingerprint import describe_mixed
    from genodl_core.errors import DataError

    recorded = [(r.trial_id, row_fingerprints(r)) for r in rows if r.state == "done"]
    mixed = mixed_versions(data_versions(recorded))
    lines = [describe_mixed(path, versions) for path, versions in sorted(mixed.items())]
    if lines and not allow_mixed:
        raise DataError("; ".join(lines) + "; refusing to average trials of different data: "
                        "rerun the trials of the old version (`genodl rerun DIR "
                        "--rerun-changed-data`), or gather with --allow-mixed-data")
    stats.problems.extend(f"{line} (averaged together: --allow-mixed-data)" for line in lines)
    stats.problems.extend(change.describe() for change in find_changes(recorded))


def row_fingerprints(row: TrialRow) -> dict[str, dict[str, Any]]:
    """The data fingerprints a row recorded (from its ``data_fingerprints_json`` column)."""
    try:
        value = json.loads(row.columns.get("data_fingerprints_json") or "{}")
    except ValueError:
        return {}
    return recorded_fingerprints({"data_fingerprints": value})


# --------------------------------------------------------------------------------------------
# Finding and reading records (pass 1)
# --------------------------------------------------------------------------------------------

def find_record_dirs(run_dir: str | Path) -> Iterator[Path]:
    """Yield the trial record folders of a run directory.

    A record folder is one holding ``status.json`` or ``spec.json``, either in ``run_dir/trials``
    or directly in ``run_dir``. Hidden folders (temporary files of atomic writes) are skipped.
    """
    run_dir = Path(run_dir)
    for base in (run_dir / TRIALS_DIR, run_dir):
        if not base.is_dir():
            continue
        with os.scandir(base) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                path = Path(entry.path)
                if (path / records.STATUS_FILE).exists() or (path / records.SPEC_FILE).exists():
                    yield path


def record_fingerprint(trial_dir: Path) -> str:
    """Modification time and size of each record file: changes whenever the record does."""
    parts = []
    for name in (records.SPEC_FILE, records.STATUS_FILE, records.RESULT_FILE,
                 records.PROVENANCE_FILE, records.ARRAYS_FILE):
        try:
            st = os.stat(trial_dir / name)
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except FileNotFoundError:
            parts.append("-")
    return "|".join(parts)


def _collect_rows(run_dir: Path, previous: "_PreviousSummary | None", stats: GatherStats,
                  sweep: dict[str, Any] | None = None) -> list[TrialRow]:
    rows: dict[str, TrialRow] = {}
    reused: list[tuple[TrialRow, int]] = []
    listed = _sweep_ids(sweep)
    for trial_dir in find_record_dirs(run_dir):
        trial_id = trial_dir.name
        if listed is not None and trial_id not in listed:
            stats.outside_sweep.append(trial_id)
            continue
        if trial_id in rows:
            stats.problems.append(f"trial {trial_id}: a second record at {trial_dir} is ignored")
            continue
        fingerprint = record_fingerprint(trial_dir)
        rel = os.path.relpath(trial_dir, run_dir)
        old = previous.row_for(trial_id, fingerprint, rel) if previous is not None else None
        if old is not None:
            row, index = old
            reused.append((row, index))
            stats.n_reused += 1
        else:
            row = read_trial_row(trial_dir, rel)
            row.fingerprint = fingerprint
            stats.n_parsed += 1
        rows[trial_id] = row
    if reused and previous is not None:
        previous.fill_curves(reused)
    for trial_id, spec in _sweep_trials(sweep):
        if trial_id not in rows:
            rows[trial_id] = pending_row(trial_id, spec)
    assign_settings(list(rows.values()))
    ordered = sorted(rows.values(), key=_row_order)
    for row in ordered:
        stats.states[row.state] = stats.states.get(row.state, 0) + 1
        if row.problems:
            stats.problems.append(problem_line(row))
    stats.n_trials = len(ordered)
    return ordered


def assign_settings(rows: list[TrialRow]) -> None:
    """Fill each row's ``setting`` column: the spec parameters, other than the group's keys,
    seeds and noise, whose values differ between the gathered trials of the same model
    (``"model.controller=dac, train.epochs=50"``; empty when nothing else varies).

    Groups are keyed by it, so trials that differ in anything that changes their numbers (an
    abstention controller, a learning rate, the data's seed) are never averaged together.
    Models are compared only with themselves: D-GEX and the baselines beside it have different
    parameters, which say nothing about a setting.
    """
    by_model: dict[str, list[TrialRow]] = {}
    for row in rows:
        by_model.setdefault(str(row.columns.get("model", "")), []).append(row)
    for model_rows in by_model.values():
        keys = {key for row in model_rows for key in row.columns
                if key.startswith("spec.") and not key.startswith(SETTING_EXCLUDED)}
        varying = sorted(key for key in keys if len(
            {_setting_value(row.columns.get(key)) for row in model_rows}) > 1)
        for row in model_rows:
            row.columns["setting"] = ", ".join(
                f"{key[len('spec.'):]}={_setting_value(row.columns.get(key))}"
                for key in varying)


def _setting_value(value: Any) -> str:
    """A spec value as a setting shows it; absent and NaN read as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value or "-"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def problem_line(row: TrialRow) -> str:
    """One line per trial with problems: a corrupt record is left out, and why."""
    what = "corrupt record, left out" if row.state == "corrupt" else row.state
    return f"trial {row.trial_id}: {what}: {'; '.join(row.problems)}"


def _sweep_ids(sweep: dict[str, Any] | None) -> set[str] | None:
    """Trial ids the sweep lists, or None without a sweep (then every record is gathered)."""
    if not sweep or not isinstance(sweep.get("trials"), list):
        return None
    return {tid for tid, _ in _sweep_trials(sweep)}


def _row_order(row: TrialRow) -> tuple:
    c = row.columns
    level = c["noise_level"]
    # Noise-free trials first: they are every noise curve's reference point.
    return (c["model"], c["variant"], c.get("setting", ""), c["data_source"],
            c["noise_kind"] != "none",
            c["noise_kind"],
            -math.inf if math.isnan(level) else level, c["noise_levels"], c["seed"], row.trial_id)


def read_trial_row(trial_dir: str | Path, record_path: str | None = None) -> TrialRow:
    """Read one record into a :class:`TrialRow`; unreadable parts become ``problems``.

    Never raises for a bad record: the state is :func:`genodl_core.records.record_state`'s (as
    ``genodl status`` shows it), and a corrupt record is returned with the reason in its
    ``error`` column, so that one broken folder cannot stop the gather of a thousand good ones.
    Problems only the gather meets (per-gene arrays without gene ids) are listed without
    changing the state.
    """
    trial_dir = Path(trial_dir)
    rec = records.load_record(trial_dir)
    problems = list(rec.problems)
    spec = rec.spec if isinstance(rec.spec, dict) else {}
    status = rec.status if isinstance(rec.status, dict) else {}
    result = rec.result if isinstance(rec.result, dict) else {}
    prov = rec.provenance if isinstance(rec.provenance, dict) else {}

    state = rec.state
    if state == records.MISSING:
        state = "pending"
    columns: dict[str, Any] = {name: _empty(kind) for name, kind in FIXED_COLUMNS.items()}
    columns.update(trial_id=rec.trial_id, state=state,
                   record_path=record_path if record_path is not None else str(trial_dir))
    _spec_columns(spec, columns, problems)

    columns["wall_s"] = _as_float(status.get("wall_s"))
    columns["finished_at"] = _as_float(status.get("time"))
    attempt = status.get("attempt")
    columns["attempt"] = attempt if _is_int(attempt) else -1
    columns["host"] = _as_str(status.get("host") or prov.get("host"))
    gpu = status.get("gpu")
    if gpu is None:
        gpu = prov.get("cuda_visible_devices")
    columns["gpu"] = _as_str(gpu)
    device_info = result.get("device") if isinstance(result.get("device"), dict) else \
        prov.get("device") if isinstance(prov.get("device"), dict) else {}
    columns["gpu_name"] = _as_str(device_info.get("gpu_name"))
    columns["device"] = _as_str(status.get("device") or device_info.get("device"))
    columns["precision"] = _as_str(result.get("precision"))
    columns.update(plan_columns(engine_of(prov)))
    columns.update(data_columns(recorded_fingerprints(result if state == "done" else prov)))
    columns["git_revision"] = _as_str(prov.get("git_revision"))
    columns["error_type"] = _as_str(status.get("error_type"))
    columns["error"] = _as_str(status.get("error"))
    columns["traceback"] = _as_str(status.get("traceback"))

    finals: dict[str, float] = {}
    curves: dict[str, np.ndarray] = {}
    gene_arrays: list[str] = []
    gene_sha = None
    if state == "done":
        finals = _read_finals(result.get("final"), problems)
        curves = _read_curves(result.get("curves"), problems)
        _flatten_into(columns, "noise_record", result.get("noise"))
        _flatten_into(columns, "timings", result.get("timings"))
        _flatten_into(columns, "extra", result.get("extra"))
        names = [n for n in result.get("arrays") or [] if isinstance(n, str)]
        gene_arrays = sorted(n for n in names if PER_GENE_MARK in n or PER_TARGET_MARK in n)
        if gene_arrays:
            try:
                ids = read_gene_ids(trial_dir)
                gene_sha = gene_ids_sha(ids)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
                problems.append(f"per-gene arrays unusable: {err}")
                gene_arrays = []
    if state == "corrupt":
        columns["error_type"] = columns["error_type"] or "CorruptRecord"
        columns["error"] = "; ".join(problems)
        finals, curves, gene_arrays, gene_sha = {}, {}, [], None
    columns["n_epochs"] = max((len(c) for c in curves.values()), default=0)
    return TrialRow(rec.trial_id, columns, finals, curves, gene_arrays, gene_sha,
                    problems=problems)


def pending_row(trial_id: str, spec: dict[str, Any]) -> TrialRow:
    """The row of a trial the sweep defines but that has no record yet."""
    columns: dict[str, Any] = {name: _empty(kind) for name, kind in FIXED_COLUMNS.items()}
    columns.update(trial_id=trial_id, state="pending", n_epochs=0)
    columns.update(plan_columns(None))
    columns.update(data_columns(None))
    problems: list[str] = []
    _spec_columns(spec, columns, problems)
    return TrialRow(trial_id, columns, fingerprint="pending", problems=problems)


def _read_sweep(run_dir: Path, stats: GatherStats) -> tuple[str, dict[str, Any] | None]:
    """``sweep.json`` as canonical JSON text and parsed (``""``/None when there is none)."""
    path = run_dir / SWEEP_FILE
    if not path.is_file():
        return "", None
    try:
        sweep = records.read_json(path)
    except (OSError, ValueError) as err:
        stats.problems.append(f"{SWEEP_FILE} is unreadable: {err}")
        return "", None
    return json.dumps(sweep, sort_keys=True), sweep if isinstance(sweep, dict) else None


def _sweep_trials(sweep: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(trial id, spec) of each trial a resolved sweep lists; malformed entries are skipped."""
    trials = sweep.get("trials") if sweep else None
    for entry in trials if isinstance(trials, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("trial_id"), str) \
                and isinstance(entry.get("spec"), dict):
            yield entry["trial_id"], entry["spec"]


def _spec_columns(spec: dict[str, Any], columns: dict[str, Any], problems: list[str]) -> None:
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    data = spec.get("data") if isinstance(spec.get("data"), dict) else {}
    columns["model"] = _as_str(model.get("name"))
    columns["variant"] = _as_str(model.get("variant")) or DEFAULT_VARIANT
    columns["data_source"] = _as_str(data.get("source"))
    seed = spec.get("seed")
    columns["seed"] = seed if _is_int(seed) else -1
    steps = spec.get("noise") or []
    if isinstance(steps, dict):
        steps = [steps]
    kinds, levels = [], []
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            problems.append(f"{records.SPEC_FILE}: noise[{i}] is not a table")
            continue
        kind = _as_str(step.get("kind")) or "unknown"
        kinds.append(kind_label(kind, step))
        levels.append(noise_level(kind, step))
    columns["noise_kind"] = "+".join(kinds) if kinds else "none"
    columns["noise_level"] = levels[0] if levels else 0.0
    columns["noise_levels"] = "+".join(_fmt_level(v) for v in levels) if levels else "0"
    flat: dict[str, Any] = {}
    # An empty noise list would become a column of its own beside the noise.<i>.* columns.
    _flatten({k: v for k, v in spec.items() if k != "trial_id" and not (k == "noise" and not v)},
             "spec", flat)
    columns.update(flat)


def _fmt_level(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


_NOISE_MODULES_IMPORTED = False
#: Modules outside ``genodl_core.noise`` that register noise steps (light to import).
NOISE_MODULES_ELSEWHERE = ("genodl_core.detection.cleaning",)


def _level_field(kind: str) -> str | None:
    """The registered ``level_field`` of a noise kind, importing the noise modules once.

    Only ``genodl_core.noise`` is imported (not the full catalogue), so that gathering does not
    pay for importing torch; a module that fails to import only costs the heuristic fallback.
    """
    global _NOISE_MODULES_IMPORTED
    from genodl_core.registry import NOISES

    if kind not in NOISES and not _NOISE_MODULES_IMPORTED:
        _NOISE_MODULES_IMPORTED = True
        try:
            import genodl_core.noise as noise_pkg

            names = [f"{noise_pkg.__name__}.{info.name}"
                     for info in pkgutil.iter_modules(noise_pkg.__path__)]
            for name in [*names, *NOISE_MODULES_ELSEWHERE]:
                try:
                    importlib.import_module(name)
                except Exception as err:  # noqa: BLE001 - a broken plug-in must not stop gather
                    log.debug("cannot import noise module %s: %s", name, err)
        except ImportError as err:
            log.debug("no noise package: %s", err)
    if kind in NOISES:
        return getattr(NOISES.get(kind).params, "level_field", None)
    return None


def _registered(kind: str, attribute: str) -> Any:
    """An attribute of a noise kind's registered parameter class, or None."""
    from genodl_core.registry import NOISES

    _level_field(kind)  # imports the noise modules once
    return getattr(NOISES.get(kind).params, attribute, None) if kind in NOISES else None


def kind_label(kind: str, step: dict[str, Any]) -> str:
    """A noise step's kind as the summary groups it: the kind, followed by the values of the
    parameters its registration names in ``kind_fields`` (``drop_flagged[detector=aum,source_model=base]``).

    Such parameters say *which* step it is rather than how strong, so steps differing in them
    are different kinds of noise and are never grouped (or drawn) together.
    """
    fields = _registered(kind, "kind_fields") or ()
    shown = [f"{name}={step[name]}" for name in fields if name in step]
    return f"{kind}[{','.join(shown)}]" if shown else kind


def noise_level(kind: str, step: dict[str, Any]) -> float:
    """The main magnitude of a noise step (its ``level_field``, else a well-known name).

    Returns NaN when no numeric magnitude can be found, so the trial still appears in the
    summary (in a group of its own) instead of being mislabelled as noise-free.
    """
    candidates = [f for f in (_level_field(kind),) if f] + list(LEVEL_FIELD_GUESSES)
    for name in candidates:
        value = step.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return math.nan


def _read_finals(final: Any, problems: list[str]) -> dict[str, float]:
    if final is None:
        return {}
    if not isinstance(final, dict):
        problems.append(f"{records.RESULT_FILE}: 'final' is not an object")
        return {}
    out = {}
    for name, value in final.items():
        if value is None:
            out[_h5_name(name)] = math.nan
        elif isinstance(value, (int, float)):
            out[_h5_name(name)] = float(value)
        else:
            log.debug("final %s=%r is not a number; left out", name, value)
    return out


def _read_curves(curves: Any, problems: list[str]) -> dict[str, np.ndarray]:
    if curves is None:
        return {}
    if not isinstance(curves, dict):
        problems.append(f"{records.RESULT_FILE}: 'curves' is not an object")
        return {}
    out = {}
    for name, values in curves.items():
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            problems.append(f"{records.RESULT_FILE}: curve {name!r} is not a list of numbers")
            continue
        if arr.ndim != 1:
            problems.append(f"{records.RESULT_FILE}: curve {name!r} is not one-dimensional")
            continue
        out[_h5_name(name)] = arr
    return out


def read_gene_ids(trial_dir: str | Path) -> np.ndarray:
    """The gene ids of a trial's per-gene arrays (``target_ids`` in ``arrays.npz``), as str.

    Raises
    ------
    KeyError
        If the npz holds no gene ids (per-gene errors without ids cannot be aligned).
    OSError, ValueError
        If ``arrays.npz`` is missing or unreadable.
    """
    with np.load(Path(trial_dir) / records.ARRAYS_FILE, allow_pickle=False) as npz:
        for name in (GENE_IDS_ARRAY, *GENE_IDS_FALLBACK):
            if name in npz.files:
                return np.asarray(npz[name]).astype(str)
    raise KeyError(f"{records.ARRAYS_FILE} has per-gene arrays but no '{GENE_IDS_ARRAY}'")


def gene_ids_sha(ids: np.ndarray) -> str:
    return hashlib.sha1("\0".join(ids.tolist()).encode()).hexdigest()


def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    """Flatten nested objects into dotted scalar columns; lists of scalars become JSON text."""
    if isinstance(obj, dict):
        if set(obj) == {"array"} and isinstance(obj["array"], str):
            return  # a reference to an array in arrays.npz, not a scalar
        for key, value in obj.items():
            _flatten(value, f"{prefix}.{_h5_name(str(key))}", out)
    elif isinstance(obj, (list, tuple)):
        if any(isinstance(v, (dict, list, tuple)) for v in obj):
            for i, value in enumerate(obj):
                _flatten(value, f"{prefix}.{i}", out)
        else:
            out[prefix] = json.dumps(list(obj))
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        out[prefix] = obj
    else:
        out[prefix] = str(obj)


def _flatten_into(columns: dict[str, Any], prefix: str, obj: Any) -> None:
    if obj is None or (isinstance(obj, (list, dict)) and not obj):
        return
    flat: dict[str, Any] = {}
    _flatten(obj, prefix, flat)
    columns.update(flat)


def _h5_name(name: str) -> str:
    """HDF5 uses '/' as the path separator, so it cannot appear in a column or metric name."""
    return name.replace("/", "|")


def _empty(kind: str) -> Any:
    return {"str": "", "float": math.nan, "int": -1}[kind]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _as_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return str(value)


# --------------------------------------------------------------------------------------------
# The previous summary (incremental gathering)
# --------------------------------------------------------------------------------------------

class _PreviousSummary:
    """Rows of an existing summary, reused for records whose fingerprint has not changed."""

    def __init__(self, h5: h5py.File):
        self.h5 = h5
        index = h5["index"]
        ids = index["trial_id"].asstr()[()]
        fingerprints = index["fingerprint"].asstr()[()]
        paths = h5["trials"]["record_path"].asstr()[()]
        self.by_id = {tid: (i, fp, p) for i, (tid, fp, p) in enumerate(zip(ids, fingerprints,
                                                                          paths))}
        self._rows_dataset = index["row"]
        self._rows_json: np.ndarray | None = None
        self.gene_ids_sha = h5["genes"].attrs.get("gene_ids_sha") if "genes" in h5 else None

    @classmethod
    def open(cls, path: Path) -> "_PreviousSummary | None":
        if not path.is_file():
            return None
        try:
            h5 = h5py.File(path, "r")
        except OSError as err:
            log.warning("previous summary %s is unreadable (%s); gathering from scratch", path, err)
            return None
        try:
            if int(h5.attrs.get("schema_version", -1)) != SCHEMA_VERSION or "index" not in h5:
                log.info("previous summary %s has another schema; gathering from scratch", path)
                h5.close()
                return None
            if not set(FIXED_COLUMNS) <= set(json.loads(h5["trials"].attrs["columns"])):
                # Written before a fixed column was added: its rows lack the column.
                log.info("previous summary %s lacks columns; gathering from scratch", path)
                h5.close()
                return None
            return cls(h5)
        except (OSError, KeyError, ValueError) as err:
            log.warning("previous summary %s is unusable (%s); gathering from scratch", path, err)
            h5.close()
            return None

    def row_for(self, trial_id: str, fingerprint: str,
                record_path: str) -> tuple[TrialRow, int] | None:
        hit = self.by_id.get(trial_id)
        if hit is None or hit[1] != fingerprint or hit[2] != record_path:
            return None
        index = hit[0]
        if self._rows_json is None:  # one read of the whole column beats one read per row
            self._rows_json = self._rows_dataset.asstr()[()]
        data = json.loads(self._rows_json[index])
        row = TrialRow(trial_id, data["columns"], data["finals"], {}, data["gene_arrays"],
                       data["gene_ids_sha"], fingerprint, data["problems"])
        row.curves = {m: n for m, n in data["curve_len"].items()}  # lengths; filled below
        return row, index

    def fill_curves(self, reused: list[tuple[TrialRow, int]]) -> None:
        """Replace the curve lengths of reused rows by the curves, one metric at a time."""
        metrics = {m for row, _ in reused for m in row.curves}
        curves = self.h5["curves"]
        for metric in sorted(metrics):
            full = curves[metric][()]
            for row, index in reused:
                n = row.curves.get(metric)
                if isinstance(n, int):
                    row.curves[metric] = full[index, :n].copy()

    def gene_row(self, index: int, name: str) -> np.ndarray | None:
        genes = self.h5.get("genes")
        if genes is None or name not in genes:
            return None
        return genes[name][index]

    def gene_ids(self) -> np.ndarray:
        return self.h5["genes"]["gene_ids"].asstr()[()]

    def close(self) -> None:
        self.h5.close()


# --------------------------------------------------------------------------------------------
# Writing (pass 2)
# --------------------------------------------------------------------------------------------

def _write_atomically(output: Path, run_dir: Path, rows: list[TrialRow],
                      previous: "_PreviousSummary | None", stats: GatherStats,
                      sweep_text: str = "") -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(output)
    fd, tmp = records.create_temp_file(output)  # mode 0666 less the umask, as for records
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as h5:
            _write_summary(h5, run_dir, rows, previous, stats, sweep_text)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temps(output: Path) -> None:
    """Delete temporaries of gathers killed long ago (a live gather's file is recent)."""
    cutoff = time.time() - STALE_TEMP_S
    for tmp in output.parent.glob(f".{output.name}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                log.info("removed %s, left by an interrupted gather", tmp)
        except FileNotFoundError:
            pass


def _write_summary(h5: h5py.File, run_dir: Path, rows: list[TrialRow],
                   previous: "_PreviousSummary | None", stats: GatherStats,
                   sweep_text: str = "") -> None:
    from genodl_core import __version__

    h5.attrs["schema_version"] = SCHEMA_VERSION
    h5.attrs["genodl_version"] = __version__
    h5.attrs["git_revision"] = records.git_revision()
    h5.attrs["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    h5.attrs["n_trials"] = len(rows)
    for state in STATES:
        h5.attrs[f"n_{state}"] = sum(1 for r in rows if r.state == state)
    _write_sweep_spec(h5, sweep_text)
    h5.attrs["engine_plans"] = json.dumps([g.to_dict() for g in execution_plans(rows)])
    h5.attrs["data_versions"] = json.dumps([v.to_dict() for v in data_versions(
        (r.trial_id, row_fingerprints(r)) for r in rows if r.state == "done")])
    h5.attrs["n_outside_sweep"] = len(stats.outside_sweep)
    _str_dataset(h5, "outside_sweep", stats.outside_sweep)

    _write_trials(h5.create_group("trials"), rows)
    _write_curves(h5.create_group("curves"), rows)
    finals = _write_finals(h5.create_group("finals"), rows)
    _write_groups(h5.create_group("groups"), rows, finals)
    _write_genes(h5, run_dir, rows, previous, stats)
    from genodl_core.results.breakdown import write_breakdown

    write_breakdown(h5, run_dir)  # adaptive runs only: the breakdown level per group
    index = h5.create_group("index")
    index.attrs["description"] = "bookkeeping for incremental gathering; not for analysis"
    _str_dataset(index, "trial_id", [r.trial_id for r in rows])
    _str_dataset(index, "fingerprint", [r.fingerprint for r in rows])
    _str_dataset(index, "row", [r.to_json() for r in rows])
    _str_dataset(h5, "problems", stats.problems)
    annotate_datasets(h5)


def execution_plans(rows: list[TrialRow]) -> list[PlanGroup]:
    """The plans that trained the done trials (:func:`~genodl_core.results.plans.plan_groups`)."""
    return plan_groups((r.trial_id, json.loads(r.columns["engine_json"]))
                       for r in rows if r.state == "done")


def _write_sweep_spec(h5: h5py.File, text: str) -> None:
    if len(text.encode()) <= MAX_ATTR_BYTES:
        h5.attrs["sweep_spec"] = text
    else:
        h5.attrs["sweep_spec"] = "@/sweep_spec"
        h5.create_dataset("sweep_spec", data=text, dtype=_STR)


def _str_dataset(group: h5py.Group, name: str, values: list[str]) -> h5py.Dataset:
    return group.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR,
                                shape=(len(values),))


def column_array(values: list[Any]) -> tuple[np.ndarray, str]:
    """Choose a storage type for one column of per-trial values (None = missing).

    Integers stay int64 when none is missing; numbers otherwise become float64 with NaN for
    missing; booleans become bool (or float 1/0/NaN with gaps); text stays text ("" missing);
    anything mixed is stored as JSON text, so no value is silently lost.
    """
    present = [v for v in values if v is not None]
    missing = len(present) < len(values)
    if present and all(isinstance(v, bool) for v in present):
        if not missing:
            return np.array(values, dtype=bool), "bool"
        return np.array([math.nan if v is None else float(v) for v in values]), "float"
    if present and all(_is_int(v) for v in present) and not missing:
        return np.array(values, dtype=np.int64), "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return np.array([math.nan if v is None else float(v) for v in values]), "float"
    if all(isinstance(v, str) for v in present):
        return np.array(["" if v is None else v for v in values], dtype=object), "str"
    return np.array(["" if v is None else json.dumps(v) for v in values], dtype=object), "str"


def _write_trials(group: h5py.Group, rows: list[TrialRow]) -> None:
    names = list(FIXED_COLUMNS)
    extra = sorted({k for r in rows for k in r.columns} - set(names))
    group.attrs["columns"] = json.dumps(names + extra)
    for name in names + extra:
        values = [r.columns.get(name) for r in rows]
        kind = FIXED_COLUMNS.get(name)
        if kind == "str":
            data, kind = np.array(values, dtype=object), "str"
        elif kind == "float":
            data = np.array(values, dtype=np.float64)
        elif kind == "int":
            data = np.array(values, dtype=np.int64)
        else:
            data, kind = column_array(values)
        if kind == "str":
            _str_dataset(group, name, list(data))
        else:
            group.create_dataset(name, data=data, shape=(len(rows),))


def _write_curves(group: h5py.Group, rows: list[TrialRow]) -> None:
    metrics = sorted({m for r in rows for m in r.curves})
    max_epochs = max((r.columns["n_epochs"] for r in rows), default=0)
    group.attrs["max_epochs"] = max_epochs
    group.attrs["metrics"] = json.dumps(metrics)
    _str_dataset(group, "trial_id", [r.trial_id for r in rows])
    for metric in metrics:
        data = np.full((len(rows), max_epochs), np.nan)
        for i, row in enumerate(rows):
            curve = row.curves.get(metric)
            if curve is not None:
                data[i, :len(curve)] = curve
        group.create_dataset(metric, data=data)


def _write_finals(group: h5py.Group, rows: list[TrialRow]) -> dict[str, np.ndarray]:
    metrics = sorted({m for r in rows for m in r.finals})
    group.attrs["metrics"] = json.dumps(metrics)
    _str_dataset(group, "trial_id", [r.trial_id for r in rows])
    out = {}
    for metric in metrics:
        data = np.array([r.finals.get(metric, math.nan) for r in rows], dtype=np.float64)
        group.create_dataset(metric, data=data)
        out[metric] = data
    return out


def group_statistics(values: np.ndarray) -> dict[str, float]:
    """Mean, sample std (ddof=1), min, max and count of the finite values.

    Non-finite values (a diverged trial's NaN loss) are left out and not counted; the std of a
    single value is NaN rather than 0, since one seed says nothing about the spread.
    """
    finite = values[np.isfinite(values)]
    n = int(finite.size)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "count": 0}
    return {"mean": float(finite.mean()),
            "std": float(finite.std(ddof=1)) if n > 1 else math.nan,
            "min": float(finite.min()), "max": float(finite.max()), "count": n}


def _write_groups(group: h5py.Group, rows: list[TrialRow],
                  finals: dict[str, np.ndarray]) -> None:
    keys: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row.state == "corrupt" and not row.columns["model"]:
            continue  # no spec: nothing to group it by
        keys.setdefault(tuple(row.columns[k] for k in GROUP_KEYS), []).append(i)
    group_keys = list(keys)
    group.attrs["keys"] = json.dumps(list(GROUP_KEYS))
    group.attrs["stats"] = json.dumps(list(GROUP_STATS))
    group.attrs["metrics"] = json.dumps(sorted(finals))
    group.attrs["std_ddof"] = 1
    for j, name in enumerate(GROUP_KEYS):
        _str_dataset(group, name, [k[j] for k in group_keys])
    members = list(keys.values())
    group.create_dataset("noise_level", data=np.array(
        [rows[m[0]].columns["noise_level"] for m in members], dtype=np.float64),
        shape=(len(members),))
    for state in STATES:
        group.create_dataset(f"n_{state}", data=np.array(
            [sum(rows[i].state == state for i in m) for m in members], dtype=np.int64),
            shape=(len(members),))
    done_members = [np.array([i for i in m if rows[i].state == "done"], dtype=np.int64)
                    for m in members]
    for metric, values in sorted(finals.items()):
        table = [group_statistics(values[idx]) for idx in done_members]
        for stat in GROUP_STATS:
            dtype = np.int64 if stat == "count" else np.float64
            group.create_dataset(f"{metric}.{stat}", data=np.array(
                [t[stat] for t in table], dtype=dtype), shape=(len(members),))


def _write_genes(h5: h5py.File, run_dir: Path, rows: list[TrialRow],
                 previous: "_PreviousSummary | None", stats: GatherStats) -> None:
    with_genes = [(i, r) for i, r in enumerate(rows) if r.gene_arrays]
    if not with_genes:
        return
    reference = with_genes[0][1]
    ref_sha = reference.gene_ids_sha
    reuse_ok = previous is not None and previous.gene_ids_sha == ref_sha
    if reuse_ok:
        ref_ids = previous.gene_ids()
    else:
        ref_ids = read_gene_ids(run_dir / reference.columns["record_path"])
    position = {g: j for j, g in enumerate(ref_ids.tolist())}
    group = h5.create_group("genes")
    group.attrs["gene_ids_sha"] = ref_sha
    group.attrs["description"] = "per-gene arrays [n_trials x n_genes], columns = gene_ids"
    _str_dataset(group, "gene_ids", ref_ids.tolist())
    _str_dataset(group, "trial_id", [r.trial_id for r in rows])
    names = sorted({n for _, r in with_genes for n in r.gene_arrays})
    datasets = {n: group.create_dataset(n, shape=(len(rows), len(ref_ids)), dtype=np.float64,
                                        fillvalue=np.nan, chunks=(1, len(ref_ids)))
                for n in names}
    prev_rows = previous.by_id if previous is not None else {}
    for i, row in with_genes:
        hit = prev_rows.get(row.trial_id)
        if reuse_ok and hit is not None and hit[1] == row.fingerprint:
            for name in row.gene_arrays:
                old = previous.gene_row(hit[0], name)
                if old is not None:
                    datasets[name][i] = old
            continue
        trial_dir = run_dir / row.columns["record_path"]
        try:
            with np.load(trial_dir / records.ARRAYS_FILE, allow_pickle=False) as npz:
                ids = None
                for name in row.gene_arrays:
                    values = np.asarray(npz[name], dtype=np.float64).ravel()
                    if row.gene_ids_sha == ref_sha:
                        datasets[name][i] = values
                        continue
                    if ids is None:
                        ids = read_gene_ids(trial_dir).tolist()
                    aligned = np.full(len(ref_ids), np.nan)
                    cols = [(position[g], k) for k, g in enumerate(ids) if g in position]
                    if cols:
                        dst, src = np.array(cols).T
                        aligned[dst] = values[src]
                    datasets[name][i] = aligned
                    if len(cols) < len(ids):
                        stats.problems.append(
                            f"trial {row.trial_id}: {len(ids) - len(cols)} genes of {name} are "
                            f"not among the summary's gene ids and are left out")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            stats.problems.append(f"trial {row.trial_id}: per-gene arrays unreadable: {err}")


# --------------------------------------------------------------------------------------------
# Self-description: a description and units attribute on every dataset
# --------------------------------------------------------------------------------------------

#: What the fixed columns of ``/trials`` hold, with their units ("" where none applies).
COLUMN_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "trial_id": ("trial id: 16 hex digits, the hash of the resolved spec", ""),
    "state": ("trial state: done, failed, running, pending or corrupt", ""),
    "model": ("model name from the spec", ""),
    "variant": ("model variant ('default' for models with a single form)", ""),
    "setting": ("the spec parameters besides model, variant, data source, seed and noise that "
                "vary between the gathered trials, as key=value pairs (empty: none vary); part "
                "of the group key", ""),
    "data_source": ("data source name from the spec", ""),
    "noise_kind": ("noise steps' kinds joined with '+' ('none' without noise)", ""),
    "noise_level": ("main magnitude of the first noise step (its kind's level field)",
                    "noise kind's level field"),
    "noise_levels": ("level of every noise step, joined with '+'", ""),
    "seed": ("trial seed (-1 when unknown)", ""),
    "n_epochs": ("length of the trial's longest curve", "epochs"),
    "wall_s": ("wall time of the trial", "s"),
    "finished_at": ("time of the last status change", "s since 1970-01-01 UTC"),
    "attempt": ("attempt number that produced the record (-1 unknown)", ""),
    "record_path": ("record folder relative to the run directory", ""),
    "error_type": ("exception type of a failed or corrupt trial ('' otherwise)", ""),
    "error": ("error message of a failed or corrupt trial ('' otherwise)", ""),
    "traceback": ("traceback of a failed trial ('' otherwise)", ""),
}
#: Units of metrics by name ending; metrics not matched are dimensionless ("1").
_METRIC_UNITS = (("epoch_seconds", "s"), ("_s", "s"), ("seconds", "s"))


def metric_units(name: str) -> str:
    """Units of a metric or column named ``name``: seconds for timings, "1" otherwise.

    Accuracies, fractions, losses, errors of scaled data and learning rates carry no unit of
    their own; "1" says so explicitly (the UDUNITS convention for dimensionless numbers).
    """
    return next((units for end, units in _METRIC_UNITS if name.endswith(end)), "1")


def describe_dataset(path: str, ds: h5py.Dataset) -> tuple[str, str]:
    """The ``description`` and ``units`` attributes of the dataset at ``path`` (e.g.
    ``finals/val_accuracy``), so that a reader without the schema document knows each one."""
    group, _, name = path.rpartition("/")
    is_str = h5py.check_string_dtype(ds.dtype) is not None
    if name == "trial_id":
        return ("trial id of each row (rows align with /trials/trial_id)", "")
    if group == "trials":
        if name in COLUMN_DESCRIPTIONS:
            return COLUMN_DESCRIPTIONS[name]
        head = name.split(".", 1)[0]
        what = {"spec": "resolved spec parameter", "noise_record": "noise step's report",
                "timings": "trial timing", "extra": "model's extra fact"}.get(head, "trial column")
        timed = head in ("timings", "extra") or name.endswith("_s")
        units = metric_units(name) if timed and not is_str else ""
        return (f"{what} {name} per trial", units)
    if group == "curves":
        return (f"per-epoch {name} [n_trials x max_epochs], column j = epoch j+1, NaN-padded",
                metric_units(name))
    if group == "finals":
        return (f"final {name} per trial (NaN when absent)", metric_units(name))
    if group == "groups":
        metric, _, stat = name.rpartition(".")
        if metric:
            units = "" if stat == "count" else metric_units(metric)
            return (f"{stat} of final {metric} over the group's done trials", units)
        if name.startswith("n_"):
            return (f"number of the group's trials in state {name[2:]}", "")
        return (COLUMN_DESCRIPTIONS.get(name, (f"group key {name}", ""))[0],
                COLUMN_DESCRIPTIONS.get(name, ("", ""))[1])
    if group == "genes":
        if name == "gene_ids":
            return ("target gene ids, the columns of every per-gene array", "")
        return (f"per-gene {name} [n_trials x n_genes] (NaN rows for trials without it)",
                metric_units(name))
    if group == "index":
        return (f"bookkeeping for incremental gathering ({name}); not for analysis", "")
    return ({"problems": "problems met while gathering, one line each",
             "outside_sweep": "ids of records left out because sweep.json does not list them",
             "sweep_spec": "the resolved sweep (sweep.json) as JSON text"}.get(name, name), "")


def annotate_datasets(h5: h5py.File) -> None:
    """Give every dataset of the summary ``description`` and ``units`` attributes."""
    def visit(path: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            description, units = describe_dataset(path, obj)
            obj.attrs["description"] = description
            obj.attrs["units"] = units
    h5.visititems(visit)


__all__ = ["SCHEMA_VERSION", "READABLE_SCHEMA_VERSIONS", "SUMMARY_FILE", "GROUP_KEYS", "GROUP_STATS", "TrialRow", "gather",
           "find_record_dirs", "read_trial_row", "record_fingerprint", "noise_level",
           "execution_plans",
           "group_statistics", "column_array", "read_gene_ids"]
