"""Read a gathered ``summary.h5`` into pandas DataFrames.

Every function takes either the summary file or the run directory that holds it. Rows of
trial-level frames are indexed by ``trial_id`` in the summary's order (model, variant, noise
kind, level, seed). The file is plain HDF5, so none of this is needed to read it; see
``docs/summary-schema.md`` for reading it with h5py alone.

Examples
--------
>>> from genodl_core.results import load
>>> g = load.groups("runs/quick")                        # doctest: +SKIP
>>> g[["noise_kind", "noise_level", "val_accuracy.mean", "val_accuracy.std"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np
import pandas as pd

from genodl_core.errors import DataError
from genodl_core.results.plans import PlanGroup
from genodl_core.results.summary import (GROUP_KEYS, READABLE_SCHEMA_VERSIONS, STATES,
                                         SUMMARY_FILE)

#: Trial columns joined to :func:`finals` so that its frame can be grouped without a merge.
KEY_COLUMNS = ("state", "model", "variant", "setting", "data_source", "noise_kind",
               "noise_level", "noise_levels", "seed")
#: Key columns a summary written before they existed lacks; they read as this value there.
_LATER_KEYS = {"setting": ""}
#: Datasets of ``/genes`` that label rows or columns rather than hold per-gene values
#: (``trial_id`` exists from schema version 2 on).
_GENE_LABELS = ("gene_ids", "trial_id")


def summary_path(path: str | Path) -> Path:
    """The summary file of ``path`` (a run directory or the file itself).

    Raises
    ------
    DataError
        If there is no summary there (run ``genodl gather DIR`` first).
    """
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"{path}: no summary file; run `genodl gather` on the run directory")
    return path


def _open(path: str | Path) -> h5py.File:
    file = summary_path(path)
    try:
        h5 = h5py.File(file, "r")
    except OSError as err:
        raise DataError(f"{file}: not a readable HDF5 summary ({err})") from None
    version = int(h5.attrs.get("schema_version", -1))
    if version not in READABLE_SCHEMA_VERSIONS:
        h5.close()
        raise DataError(f"{file}: summary schema_version={version}, this genodl reads "
                        f"versions {list(READABLE_SCHEMA_VERSIONS)}; gather the run again")
    return h5


def _column(ds: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return ds.asstr()[()]
    return ds[()]


def attributes(path: str | Path) -> dict[str, Any]:
    """The root attributes (schema and genodl versions, git revision, sweep spec, counts, plans).

    ``sweep_spec`` is returned parsed (a dict, or None when the run had no ``sweep.json``), and
    so are ``engine_plans`` (a list of dicts, empty in summaries gathered before plans were
    stored) and ``data_versions`` (one dict per version of each data file the done trials read:
    path, sha256, size, n_trials, examples).
    """
    with _open(path) as h5:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}
        spec = attrs.get("sweep_spec", "")
        if spec == "@/sweep_spec":
            spec = h5["sweep_spec"].asstr()[()]
    attrs["sweep_spec"] = json.loads(spec) if spec else None
    attrs["engine_plans"] = json.loads(attrs.get("engine_plans") or "[]")
    attrs["data_versions"] = json.loads(attrs.get("data_versions") or "[]")
    attrs.setdefault("n_outside_sweep", 0)
    return attrs


def outside_sweep(path: str | Path) -> list[str]:
    """Ids of trial records the gather left out because the sweep does not list them."""
    with _open(path) as h5:
        return list(_column(h5["outside_sweep"])) if "outside_sweep" in h5 else []


def execution_plans(path: str | Path) -> list[PlanGroup]:
    """The execution plans that trained the done trials, the largest group first.

    More than one means the sweep's numbers come from different computations (see
    :func:`genodl_core.results.plans.plan_groups`); the trials' own plans are the ``engine_*``
    columns of :func:`trials`.
    """
    return [PlanGroup.from_dict(d) for d in attributes(path)["engine_plans"]]


def trials(path: str | Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The trials table: one row per trial, every state (done, failed, running, corrupt).

    Parameters
    ----------
    path
        Summary file or run directory.
    columns
        Only these columns (default: all, i.e. the fixed columns then ``spec.*``,
        ``noise_record.*``, ``timings.*`` and ``extra.*``).
    """
    with _open(path) as h5:
        group = h5["trials"]
        order = json.loads(group.attrs["columns"])
        wanted = order if columns is None else [c for c in columns if c != "trial_id"]
        missing = [c for c in wanted if c not in group]
        if missing:
            raise KeyError(f"no trial column(s) {missing}; available: {order}")
        frame = pd.DataFrame({c: _column(group[c]) for c in wanted if c != "trial_id"},
                             index=pd.Index(_column(group["trial_id"]), name="trial_id"))
    return frame


def finals(path: str | Path, *, keys: bool = True) -> pd.DataFrame:
    """Final metrics per trial (NaN for trials that did not finish or lack the metric).

    With ``keys`` the grouping columns (state, model, variant, noise kind and level, seed) are
    included, so ``finals(p).query("state == 'done'").groupby([...])`` works directly.
    """
    with _open(path) as h5:
        ids = _column(h5["trials"]["trial_id"])
        data = {m: h5["finals"][m][()] for m in json.loads(h5["finals"].attrs["metrics"])}
        if keys:
            data = {**{k: _key_column(h5["trials"], k, len(ids)) for k in KEY_COLUMNS}, **data}
    return pd.DataFrame(data, index=pd.Index(ids, name="trial_id"))


def final_metrics(path: str | Path) -> list[str]:
    """Names of the final metrics stored under ``/finals``."""
    with _open(path) as h5:
        return json.loads(h5["finals"].attrs["metrics"])


def curve_metrics(path: str | Path) -> list[str]:
    """Names of the per-epoch metrics stored under ``/curves``."""
    with _open(path) as h5:
        return json.loads(h5["curves"].attrs["metrics"])


def curves(path: str | Path, metric: str) -> pd.DataFrame:
    """One metric's curves: rows = trials, columns = epochs 1..max_epochs, NaN-padded.

    Raises
    ------
    KeyError
        If no trial recorded ``metric``; the message lists the metrics there are.
    """
    with _open(path) as h5:
        group = h5["curves"]
        if metric not in group:
            raise KeyError(f"no curve {metric!r}; available: {json.loads(group.attrs['metrics'])}")
        data = group[metric][()]
        ids = _column(h5["trials"]["trial_id"])
    return pd.DataFrame(data, index=pd.Index(ids, name="trial_id"),
                        columns=pd.RangeIndex(1, data.shape[1] + 1, name="epoch"))


def groups(path: str | Path, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-group statistics of the final metrics over the group's done trials.

    A group is one combination of model, variant, setting (the other spec parameters that vary
    in the sweep: :func:`genodl_core.results.summary.assign_settings`), data source, noise kind
    and level(s).
    Columns: the keys, ``noise_level`` (numeric, first step), ``n_done``, ``n_failed``,
    ``n_running``, ``n_pending``, ``n_corrupt``, then ``<metric>.mean|std|min|max|count`` per metric (std with
    ddof=1; count = finite values among the done trials).
    """
    with _open(path) as h5:
        group = h5["groups"]
        available = json.loads(group.attrs["metrics"])
        chosen = available if metrics is None else list(metrics)
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise KeyError(f"no final metric(s) {unknown}; available: {available}")
        stats = json.loads(group.attrs["stats"])
        names = [*GROUP_KEYS, "noise_level", *(f"n_{state}" for state in STATES)]
        names += [f"{m}.{s}" for m in chosen for s in stats]
        n_groups = len(group["noise_level"])
        return pd.DataFrame({n: _key_column(group, n, n_groups) for n in names})


def _key_column(group: h5py.Group, name: str, length: int) -> np.ndarray:
    """A column of ``group``, or the fixed value of a key column older summaries lack."""
    if name not in group and name in _LATER_KEYS:
        return np.full(length, _LATER_KEYS[name], dtype=object)
    return _column(group[name])


def gene_errors(path: str | Path, name: str = "val_mae_per_gene") -> pd.DataFrame:
    """A per-gene array: rows = trials, columns = gene ids (NaN for trials without it).

    Raises
    ------
    KeyError
        If the summary holds no such per-gene array (e.g. an NT3-only sweep).
    """
    with _open(path) as h5:
        genes = h5.get("genes")
        available = [k for k in genes if k not in _GENE_LABELS] if genes is not None else []
        if name not in available:
            raise KeyError(f"no per-gene array {name!r}; available: {available}")
        data = genes[name][()]
        gene_ids = _column(genes["gene_ids"])
        ids = _column(h5["trials"]["trial_id"])
    return pd.DataFrame(data, index=pd.Index(ids, name="trial_id"),
                        columns=pd.Index(gene_ids, name="gene_id"))


def gene_arrays(path: str | Path) -> list[str]:
    """Names of the per-gene arrays in the summary (empty for NT3-only sweeps)."""
    with _open(path) as h5:
        genes = h5.get("genes")
        return sorted(k for k in genes if k not in _GENE_LABELS) if genes is not None else []


def problems(path: str | Path) -> list[str]:
    """Problems met while gathering (corrupt records, unreadable arrays)."""
    with _open(path) as h5:
        return list(_column(h5["problems"]))


__all__ = ["summary_path", "attributes", "outside_sweep", "execution_plans", "trials", "finals", "final_metrics",
           "curve_metrics", "curves", "groups", "gene_errors", "gene_arrays", "problems"]
