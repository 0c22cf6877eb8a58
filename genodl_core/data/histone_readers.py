"""Histone-mark data from files: DeepChrome-style CSV, and .npz / HDF5 tensors.

**DeepChrome CSV** (one file per cell type): rows ``gene id, bin id, <one column per mark>,
label``, no header (``header = true`` skips one), ``n_bins`` rows per gene. ``path`` is one
such file (its cell type named by ``cell_type`` or the file name) or a folder of
``<cell type>.csv`` files. ``histone_csv`` reads the label as DeepChrome's class (0 / 1);
``histone_csv_expression`` as log expression.

**Tensor** (``.npz``, or ``.h5`` / ``.hdf5``): ``counts [cell types, genes, marks, bins]``,
``expression [cell types, genes]``, ``gene_ids``, ``cell_types`` and optionally ``marks`` and
class ``labels [cell types, genes]``. ``histone_tensor`` predicts the expression,
``histone_tensor_labels`` the labels (or, without them, above / below each cell type's median).

Gene ids and cell-type names stay with the data (inside the files and in the split
description), never in a side file. Every reader refuses, naming the file and the gene: ragged
bins, missing mark columns, genes without expression, duplicate genes, and cell types that do
not hold the same genes. Splits are :func:`genodl_core.data.histone.split_indices`'.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genodl_core.data.histone import (MARKS, Holdout, HistoneTask, HistoneTensor, split_indices,
                                      split_tensor)
from genodl_core.data.types import Dataset
from genodl_core.errors import DataError, SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import check_range


@dataclass(frozen=True)
class HistoneFileParams:
    """Parameters of the histone file sources (module docstring); the split parameters mean
    what they mean for ``synthetic_histone``."""

    path: str = ""
    marks: tuple[str, ...] = MARKS
    cell_type: str = ""
    header: bool = False
    holdout: Holdout = "genes"
    n_val_cell_types: int = 1
    n_test_cell_types: int = 1
    val_gene_fraction: float = 0.2
    test_gene_fraction: float = 0.2
    seed: int = 0
    scaling: str = "none"

    def validate(self, where: str) -> None:
        if not self.path:
            raise SpecError(f"{where}.path", self.path, "a histone CSV file or folder, or a "
                            ".npz / .h5 tensor", reason="missing")
        if not self.marks:
            raise SpecError(f"{where}.marks", list(self.marks), "at least one mark name",
                            reason="empty")
        check_range(where, "val_gene_fraction", self.val_gene_fraction, 0, 1, hi_open=True)
        check_range(where, "test_gene_fraction", self.test_gene_fraction, 0, 1, hi_open=True)
        check_range(where, "seed", self.seed, 0)
        if self.scaling != "none":
            raise SpecError(f"{where}.scaling", self.scaling, ["none"],
                            reason="histone models take log1p of the raw counts themselves")


# ----------------------------------------------------------------------------------- CSV


def read_deepchrome_csv(path: str | os.PathLike[str], marks: tuple[str, ...], *,
                        header: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One cell type's file: gene ids (file order), counts ``[genes, marks, bins]`` and the
    label column ``[genes]``.

    Raises
    ------
    DataError
        Missing mark columns, ragged or repeated bins, a gene listed twice, a gene without a
        label, non-numeric or negative counts; each names the file (and the gene).
    """
    import pandas as pd

    path = str(path)
    try:
        table = pd.read_csv(path, header=0 if header else None, dtype={0: str})
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read as a histone CSV ({err})") from None
    expected = len(marks) + 3
    if table.shape[1] != expected:
        raise DataError(f"{path}: {table.shape[1]} columns, expected {expected} (gene id, bin, "
                        f"one per mark {list(marks)}, label); a mark column is missing"
                        if table.shape[1] < expected else
                        f"{path}: {table.shape[1]} columns, expected {expected} (gene id, bin, "
                        f"one per mark {list(marks)}, label)")
    genes = table.iloc[:, 0].astype(str).to_numpy()
    try:
        bins = table.iloc[:, 1].to_numpy(dtype=np.int64)
        counts = table.iloc[:, 2:2 + len(marks)].to_numpy(dtype=np.float32)
        labels = pd.to_numeric(table.iloc[:, -1], errors="coerce").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise DataError(f"{path}: bins and mark counts must be numbers ({err})") from None
    per_gene = _group_rows(genes)
    gene_order = list(per_gene)
    for g, rows in per_gene.items():
        if len(np.unique(bins[rows])) != len(rows):
            raise DataError(f"{path}: gene {g!r} is listed twice (its bins repeat); every gene "
                            "may appear once")
    n_bins = {len(rows) for rows in per_gene.values()}
    if len(n_bins) != 1:
        sizes = {g: len(r) for g, r in per_gene.items()}
        common = max(set(sizes.values()), key=list(sizes.values()).count)
        odd = next(g for g, n in sizes.items() if n != common)
        raise DataError(f"{path}: ragged bins: gene {odd!r} has {sizes[odd]} rows, most genes "
                        f"have {common}; every gene needs one row per bin")
    n = n_bins.pop()
    out = np.empty((len(gene_order), len(marks), n), dtype=np.float32)
    gene_labels = np.empty(len(gene_order))
    for i, g in enumerate(gene_order):
        rows = per_gene[g]
        out[i] = counts[rows[np.argsort(bins[rows])]].T
        values = labels[rows]
        if not np.isfinite(values).all():
            raise DataError(f"{path}: gene {g!r} has no label (expression); drop the gene or "
                            "supply its label")
        gene_labels[i] = values[0]
    if (out < 0).any() or not np.isfinite(out).all():
        raise DataError(f"{path}: mark counts must be finite and >= 0")
    return list(gene_order), out, gene_labels


def _group_rows(genes: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of every gene, in order of first appearance (one sort, not one scan per
    gene)."""
    order = np.argsort(genes, kind="stable")
    sorted_genes = genes[order]
    starts = np.r_[0, np.flatnonzero(sorted_genes[1:] != sorted_genes[:-1]) + 1]
    groups = np.split(order, starts[1:])
    groups.sort(key=lambda rows: rows[0])
    return {str(genes[rows[0]]): rows for rows in groups}


def csv_files(p: HistoneFileParams) -> list[tuple[str, Path]]:
    """(cell type, file) pairs that ``path`` names: one file, or a folder's ``*.csv``."""
    path = Path(p.path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise DataError(f"{path}: no .csv files (one per cell type) in this folder")
        return [(f.stem, f) for f in files]
    if not path.is_file():
        raise DataError(f"{path}: no such histone CSV file or folder")
    return [(p.cell_type or path.stem, path)]


def read_csv_tensor(p: HistoneFileParams, *, labels_are_classes: bool) -> HistoneTensor:
    """Every cell type's CSV as one tensor (the same genes in each, in the first file's order).

    Raises
    ------
    DataError
        A reader error, or cell types that hold different genes or bin counts.
    """
    cell_types, blocks, values = [], [], []
    genes0: list[str] | None = None
    for name, f in csv_files(p):
        genes, counts, labels = read_deepchrome_csv(f, tuple(p.marks), header=p.header)
        if genes0 is None:
            genes0, first = genes, f
        elif set(genes) != set(genes0) or len(genes) != len(genes0):
            extra = sorted(set(genes) ^ set(genes0))[:3]
            raise DataError(f"{f}: its genes differ from those of {first} (e.g. {extra}); "
                            "every cell type must hold the same genes")
        else:
            where = {g: i for i, g in enumerate(genes)}
            index = np.array([where[g] for g in genes0])
            counts, labels = counts[index], labels[index]
        if blocks and counts.shape[2] != blocks[0].shape[2]:
            raise DataError(f"{f}: {counts.shape[2]} bins per gene, {first} has "
                            f"{blocks[0].shape[2]}; every file needs the same bins")
        cell_types.append(name)
        blocks.append(counts)
        values.append(labels)
    label_matrix = np.stack(values)
    class_labels = None
    if labels_are_classes:
        if not np.isin(label_matrix, (0, 1)).all():
            raise DataError(f"{p.path}: histone_csv reads the label column as DeepChrome's "
                            "class, 0 or 1; use histone_csv_expression for expression values")
        class_labels = label_matrix.astype(np.int64)
    return HistoneTensor(counts=np.stack(blocks), expression=label_matrix.astype(np.float32),
                         cell_types=tuple(cell_types), gene_ids=tuple(genes0),
                         marks=tuple(p.marks), source=str(p.path), labels=class_labels)


# -------------------------------------------------------------------------------- tensor


def read_tensor_file(p: HistoneFileParams) -> HistoneTensor:
    """A .npz or HDF5 tensor (module docstring).

    Raises
    ------
    DataError
        A missing array, or any check of :func:`genodl_core.data.histone.check_tensor`.
    """
    path = Path(p.path)
    if not path.is_file():
        raise DataError(f"{path}: no such histone tensor file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    elif path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            arrays = {k: f[k][()] for k in f.keys()}
    else:
        raise DataError(f"{path}: unknown tensor format {path.suffix!r}; allowed: .npz, .h5, "
                        ".hdf5")
    for key in ("counts", "expression", "gene_ids", "cell_types"):
        if key not in arrays:
            raise DataError(f"{path}: no {key!r} array; a histone tensor holds counts, "
                            "expression, gene_ids, cell_types (and optionally marks, labels)")
    names = {k: tuple(v.decode() if isinstance(v, bytes) else str(v) for v in arrays[k])
             for k in ("gene_ids", "cell_types", "marks") if k in arrays}
    counts = np.asarray(arrays["counts"], dtype=np.float32)
    marks = names.get("marks") or tuple(p.marks)
    if counts.ndim == 4 and len(marks) != counts.shape[2]:
        raise DataError(f"{path}: {counts.shape[2]} marks in counts but {len(marks)} mark "
                        f"names {list(marks)}; a mark is missing")
    labels = arrays.get("labels")
    return HistoneTensor(counts=counts, expression=np.asarray(arrays["expression"], np.float64),
                         cell_types=names["cell_types"], gene_ids=names["gene_ids"],
                         marks=marks, source=str(path),
                         labels=None if labels is None else np.asarray(labels, np.int64))


def to_dataset(t: HistoneTensor, p: HistoneFileParams, task: HistoneTask) -> Dataset:
    c, g = t.expression.shape
    index = split_indices(c, g, holdout=p.holdout, n_val_cell_types=p.n_val_cell_types,
                          n_test_cell_types=p.n_test_cell_types,
                          val_gene_fraction=p.val_gene_fraction,
                          test_gene_fraction=p.test_gene_fraction, seed=p.seed)
    return split_tensor(t, index, task=task, info={"path": str(p.path), "holdout": p.holdout,
                                                   "task": task})


@DATASETS.register("histone_csv", params=HistoneFileParams, task="classification")
def histone_csv(params: HistoneFileParams) -> Dataset:
    """DeepChrome CSV -> the class in its label column."""
    return to_dataset(read_csv_tensor(params, labels_are_classes=True), params,
                      "classification")


@DATASETS.register("histone_csv_expression", params=HistoneFileParams, task="regression")
def histone_csv_expression(params: HistoneFileParams) -> Dataset:
    """DeepChrome-style CSV whose label column is log expression."""
    return to_dataset(read_csv_tensor(params, labels_are_classes=False), params, "regression")


@DATASETS.register("histone_tensor", params=HistoneFileParams, task="regression")
def histone_tensor(params: HistoneFileParams) -> Dataset:
    """A .npz / HDF5 tensor -> log expression."""
    return to_dataset(read_tensor_file(params), params, "regression")


@DATASETS.register("histone_tensor_labels", params=HistoneFileParams, task="classification")
def histone_tensor_labels(params: HistoneFileParams) -> Dataset:
    """A .npz / HDF5 tensor -> its labels, or above / below each cell type's median."""
    return to_dataset(read_tensor_file(params), params, "classification")


__all__ = ["HistoneFileParams", "read_deepchrome_csv", "read_csv_tensor", "read_tensor_file",
           "csv_files", "to_dataset"]
