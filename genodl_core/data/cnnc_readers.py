"""Gene pairs from files: an expression matrix (cells x genes) and a pair list (TSV).

The matrix is read by :func:`genodl_core.data.matrices.read_matrix` (dense or scipy-sparse
``.npy``/``.npz``, HDF5, AnnData ``.h5ad`` with h5py alone); its samples are the cells. The
pair list is a tab-separated file with a header naming at least ``gene_a``, ``gene_b`` and
``label`` (0 = no relation; 1 = related, or with 3 classes 1 = A -> B and 2 = B -> A).

The NEPDF images are computed once per version of both files and image settings and stored in
the binary cache beside the matrix (:mod:`genodl_core.data.cache`: memory-mapped,
built by one of several concurrent workers while the others wait).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genodl_core.data.cache import load_or_build, source_key
from genodl_core.data.cnnc_images import nepdf
from genodl_core.data.cnnc_synthetic import Balance, split_pairs
from genodl_core.data.matrices import ArrayKeys, Layout, MatrixFormat, read_matrix
from genodl_core.data.types import Dataset
from genodl_core.errors import DataError, SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import check_range

#: Version of the image builder for cache entries; bump when images of the same files change.
IMAGE_TAG = "cnnc_nepdf/1"
PAIR_COLUMNS = ("gene_a", "gene_b", "label")


@dataclass(frozen=True)
class CNNCFilesParams:
    """Parameters of ``cnnc_files``: the two files, the matrix's layout and arrays, the image
    settings (``bins``, ``sigma``), the classes and the split (as ``synthetic_cnnc``)."""

    expression: str = ""
    pairs: str = ""
    format: MatrixFormat = "auto"
    layout: Layout = "samples_by_genes"
    matrix_key: str = "auto"
    ids_key: str = "auto"
    sample_ids_key: str = "auto"
    n_classes: int = 2
    bins: int = 32
    sigma: float = 0.0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    train_balance: Balance = "none"
    seed: int = 0
    cache: bool = True
    cache_dir: str = ""
    scaling: str = "none"

    def validate(self, where: str) -> None:
        for name in ("expression", "pairs"):
            if not getattr(self, name):
                raise SpecError(f"{where}.{name}", getattr(self, name), "a file path",
                                reason="required")
        if self.n_classes not in (2, 3):
            raise SpecError(f"{where}.n_classes", self.n_classes, [2, 3])
        check_range(where, "bins", self.bins, 2, 256)
        check_range(where, "sigma", self.sigma, 0, 16)
        check_range(where, "val_fraction", self.val_fraction, 0, 0.5, lo_open=True)
        check_range(where, "test_fraction", self.test_fraction, 0, 0.5)
        check_range(where, "seed", self.seed, 0)
        if self.scaling != "none":
            raise SpecError(f"{where}.scaling", self.scaling, ["none"],
                            reason="NEPDF images are already scaled to [0, 1]")


def read_pairs(path: str | Path, gene_ids: np.ndarray, n_classes: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column indices of gene A and gene B and the label of every listed pair.

    Raises
    ------
    DataError
        A missing file or column, an empty field, a gene not in the matrix, a pair listed
        twice, or a label that is not one of the classes; each names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such pair list")
    column = {g: i for i, g in enumerate(np.asarray(gene_ids).astype(str))}
    a, b, labels, seen = [], [], [], {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in PAIR_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: the header lacks {missing}; a pair list is tab-separated "
                            f"with columns {list(PAIR_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            values = [(row.get(c) or "").strip() for c in PAIR_COLUMNS]
            if not all(values):
                empty = [c for c, v in zip(PAIR_COLUMNS, values) if not v]
                raise DataError(f"{path} line {line}: empty {empty}")
            gene_a, gene_b, label = values
            for gene in (gene_a, gene_b):
                if gene not in column:
                    raise DataError(f"{path} line {line}: gene {gene!r} is not in the "
                                    f"expression matrix ({len(column)} genes)")
            if (gene_a, gene_b) in seen:
                raise DataError(f"{path} line {line}: pair ({gene_a}, {gene_b}) is listed "
                                f"again (first on line {seen[(gene_a, gene_b)]})")
            seen[(gene_a, gene_b)] = line
            if label not in {str(c) for c in range(n_classes)}:
                raise DataError(f"{path} line {line}: label {label!r}; allowed: "
                                f"{list(range(n_classes))} (n_classes={n_classes})")
            a.append(column[gene_a])
            b.append(column[gene_b])
            labels.append(int(label))
    if not labels:
        raise DataError(f"{path}: no pairs listed")
    return np.array(a), np.array(b), np.array(labels, dtype=np.int64)


def build_images(p: CNNCFilesParams) -> tuple[dict[str, np.ndarray], dict]:
    """Images and labels of the listed pairs (what the cache stores).

    Raises
    ------
    DataError
        From reading either file, or when some cells have no expression at all.
    """
    matrix = read_matrix(p.expression, p.format, p.layout,
                         ArrayKeys(p.matrix_key, p.ids_key, p.sample_ids_key))
    values = np.asarray(matrix.values)
    empty = np.flatnonzero(values.sum(axis=1) <= 0)
    if empty.size:
        raise DataError(f"{p.expression}: {empty.size} cells have no expression (first: "
                        f"{matrix.sample_ids[empty[0]]!r}); filter empty cells first")
    ia, ib, labels = read_pairs(p.pairs, matrix.gene_ids, p.n_classes)
    images = np.empty((len(labels), p.bins * p.bins), dtype=np.float32)
    step = 4096
    for start in range(0, len(labels), step):
        rows = slice(start, start + step)
        images[rows] = nepdf(values[:, ia[rows]].T, values[:, ib[rows]].T, bins=p.bins,
                             sigma=p.sigma)
    return {"x": images, "y": labels}, {"n_cells": int(values.shape[0]),
                                        "n_genes": int(values.shape[1])}


@DATASETS.register("cnnc_files", params=CNNCFilesParams, task="classification")
def cnnc_files(params: CNNCFilesParams) -> Dataset:
    """Pairs of an expression matrix as NEPDF images (module docstring)."""
    if not Path(params.expression).is_file():
        raise DataError(f"{params.expression}: no such expression matrix file")
    if not Path(params.pairs).is_file():
        raise DataError(f"{params.pairs}: no such pair list")
    # The pair list's version and the image settings are part of the entry's key.
    tag = (f"{IMAGE_TAG}|pairs={source_key(params.pairs, 'pairs')}|bins={params.bins}|"
           f"sigma={params.sigma}|classes={params.n_classes}|{params.layout}|"
           f"{params.matrix_key}|{params.ids_key}|{params.sample_ids_key}")
    cached = load_or_build(params.expression, lambda: build_images(params), tag=tag,
                           cache_dir=params.cache_dir or None, enabled=params.cache)
    info = {"expression": params.expression, "pairs": params.pairs, "bins": params.bins,
            "sigma": params.sigma, "cache": cached.describe(), **cached.meta}
    return split_pairs(np.asarray(cached.arrays["x"]), np.asarray(cached.arrays["y"]),
                       n_classes=params.n_classes, val_fraction=params.val_fraction,
                       test_fraction=params.test_fraction, train_balance=params.train_balance,
                       seed=params.seed, info=info)


__all__ = ["CNNCFilesParams", "IMAGE_TAG", "read_pairs", "build_images", "cnnc_files"]
