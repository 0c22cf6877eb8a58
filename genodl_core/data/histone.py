"""Histone-mark tensors per gene and cell type, and the held-out splits of seed 002.

Every histone source (synthetic, DeepChrome-style CSV, .npz/HDF5 tensor) produces a
:class:`HistoneTensor`: read counts ``[cell types, genes, marks, bins]`` around each gene's TSS
and log expression ``[cell types, genes]``. :func:`split_tensor` turns it into a
:class:`~genodl_core.data.types.Dataset` whose rows are (cell type, gene) pairs:

- ``x``: float32 ``[rows, marks * bins]``, mark-major (``x.reshape(-1, marks, bins)`` gives the
  tracks back), raw counts: thinning noise needs counts, and the models take ``log1p`` inside;
- ``y``: log expression ``[rows, 1]`` (regression), or 1 / 0 for expression above / below the
  median of its cell type (DeepChrome's classification labels).

Splits hold out genes, cell types or both (``holdout``); each split is a full cross product of
its cell types and genes, in cell-type-major order, so ``info["splits"][split]["cell_types"]``
and the split's gene count say which cell type every row belongs to (:func:`row_cell_types`)
without per-row arrays in the JSON-ready ``info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from genodl_core.data.types import Dataset
from genodl_core.errors import DataError, SpecError

#: The five marks of the REMC data DeepChrome and seed 002 use.
MARKS = ("H3K4me3", "H3K4me1", "H3K36me3", "H3K9me3", "H3K27me3")
#: Marks that go with expression; the others with repression.
ACTIVATING = ("H3K4me3", "H3K4me1", "H3K36me3")

Holdout = Literal["genes", "cell_types", "both"]
HOLDOUTS = ("genes", "cell_types", "both")
HistoneTask = Literal["regression", "classification"]


@dataclass(frozen=True)
class HistoneTensor:
    """Counts ``[C, G, M, B]``, log expression ``[C, G]`` and the names of every axis."""

    counts: np.ndarray
    expression: np.ndarray
    cell_types: tuple[str, ...]
    gene_ids: tuple[str, ...]
    marks: tuple[str, ...]
    source: str = "histone"
    #: Class labels ``[C, G]`` given by the source (DeepChrome's CSV); None: median labels.
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_tensor(self)


def check_tensor(t: HistoneTensor) -> None:
    """The shapes, names and values a histone tensor must have.

    Raises
    ------
    DataError
        Naming the source and what is wrong: shapes that disagree, duplicate genes or cell
        types, negative or non-finite counts, genes without (finite) expression.
    """
    src = t.source
    if t.counts.ndim != 4:
        raise DataError(f"{src}: counts must be [cell types, genes, marks, bins], got shape "
                        f"{t.counts.shape}")
    c, g, m, b = t.counts.shape
    if t.expression.shape != (c, g):
        raise DataError(f"{src}: expression has shape {t.expression.shape}, expected ({c}, {g}) "
                        "(cell types x genes)")
    for what, names, n in (("cell_types", t.cell_types, c), ("gene_ids", t.gene_ids, g),
                           ("marks", t.marks, m)):
        if len(names) != n:
            raise DataError(f"{src}: {len(names)} {what} for an axis of {n}")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise DataError(f"{src}: duplicate {what[:-1].replace('_id', '')} {name!r}; "
                                "every one must appear once")
            seen.add(name)
    if min(c, g, m, b) < 1:
        raise DataError(f"{src}: empty axis in counts of shape {t.counts.shape}")
    if not np.isfinite(t.counts).all() or (t.counts < 0).any():
        raise DataError(f"{src}: counts must be finite and >= 0")
    missing = ~np.isfinite(t.expression)
    if missing.any():
        ci, gi = np.argwhere(missing)[0]
        raise DataError(f"{src}: gene {t.gene_ids[gi]!r} has no expression in cell type "
                        f"{t.cell_types[ci]!r} ({int(missing.sum())} missing values); drop "
                        "the gene or supply its expression")


def median_labels(expression: np.ndarray) -> np.ndarray:
    """DeepChrome's labels: 1 where expression is above the median of its cell type, else 0."""
    med = np.median(expression, axis=1, keepdims=True)
    return (expression > med).astype(np.int64)


def partition(n: int, sizes: tuple[int, int], rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val, test) index sets; val and test have the given sizes."""
    order = rng.permutation(n)
    n_val, n_test = sizes
    return (np.sort(order[n_val + n_test:]), np.sort(order[:n_val]),
            np.sort(order[n_val:n_val + n_test]))


def split_indices(n_cell_types: int, n_genes: int, *, holdout: Holdout,
                  n_val_cell_types: int, n_test_cell_types: int, val_gene_fraction: float,
                  test_gene_fraction: float, seed: int
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split (train, val, test): the indices of its cell types and of its genes.

    ``genes``: every cell type, disjoint gene sets; ``cell_types``: every gene, disjoint cell
    types; ``both`` (seed 002's harder question): the validation and test splits pair unseen
    cell types with unseen genes. Seeded by ``seed`` alone (every trial sees the same split).

    Raises
    ------
    SpecError
        When a held-out set would be empty or leave nothing to train on.
    """
    c, g = n_cell_types, n_genes
    rng = np.random.default_rng([seed, 22])
    all_c, all_g = np.arange(c), np.arange(g)
    if holdout not in HOLDOUTS:
        raise SpecError("data.holdout", holdout, list(HOLDOUTS), reason="unknown holdout")
    if holdout in ("cell_types", "both"):
        if n_val_cell_types < 1 or n_test_cell_types < 1 or \
                n_val_cell_types + n_test_cell_types >= c:
            raise SpecError("data.n_val_cell_types", [n_val_cell_types, n_test_cell_types],
                            f"n_val_cell_types >= 1, n_test_cell_types >= 1 and their sum < {c}",
                            reason=f"holdout={holdout!r} needs held-out and training cell types")
        cts = partition(c, (n_val_cell_types, n_test_cell_types), rng)
    else:
        cts = (all_c, all_c, all_c)
    if holdout in ("genes", "both"):
        n_val, n_test = round(val_gene_fraction * g), round(test_gene_fraction * g)
        if n_val < 1 or n_test < 1 or n_val + n_test >= g:
            raise SpecError("data.val_gene_fraction", [val_gene_fraction, test_gene_fraction],
                            f"fractions giving >= 1 validation and test gene of {g} and "
                            "leaving training genes",
                            reason=f"holdout={holdout!r} holds out {n_val} + {n_test} genes")
        genes = partition(g, (n_val, n_test), rng)
    else:
        genes = (all_g, all_g, all_g)
    return {name: (ci, gi) for name, ci, gi in zip(("train", "val", "test"), cts, genes)}


def split_tensor(t: HistoneTensor, index: dict[str, tuple[np.ndarray, np.ndarray]], *,
                 task: HistoneTask, info: dict | None = None) -> Dataset:
    """The tensor as a Dataset of (cell type, gene) rows, split by ``index``
    (:func:`split_indices`). Labels (classification) are the tensor's own when it has them,
    else above / below the median of each cell type over all its genes, as DeepChrome's."""
    c, g, m, b = t.counts.shape
    if task == "classification":
        labels = t.labels if t.labels is not None else median_labels(t.expression)
    arrays, splits = {}, {}
    for name, (ci, gi) in index.items():
        x = t.counts[np.ix_(ci, gi)].reshape(len(ci) * len(gi), m * b).astype(np.float32)
        if task == "classification":
            y = labels[np.ix_(ci, gi)].reshape(-1).astype(np.int64)
        else:
            y = t.expression[np.ix_(ci, gi)].reshape(-1, 1).astype(np.float32)
        arrays[name] = (x, y)
        splits[name] = {"cell_types": [t.cell_types[i] for i in ci], "n_genes": int(len(gi))}
    out_info = dict(info or {})
    out_info.update({"n_cell_types": c, "n_genes": g, "n_marks": m, "n_bins": b,
                     "marks": list(t.marks), "splits": splits})
    return Dataset(
        x_train=arrays["train"][0], y_train=arrays["train"][1],
        x_val=arrays["val"][0], y_val=arrays["val"][1],
        x_test=arrays["test"][0], y_test=arrays["test"][1], task=task,
        n_classes=2 if task == "classification" else None,
        feature_ids=np.array([f"{mark}:{i}" for mark in t.marks for i in range(b)]),
        target_ids=np.array(["log_expression"]) if task == "regression" else None,
        info=out_info)


def row_cell_types(info: dict, split: str) -> tuple[list[str], np.ndarray]:
    """The split's cell-type names and each row's index into them (rows are cell-type-major).

    Raises
    ------
    DataError
        When ``info`` carries no histone split description (not a histone source).
    """
    try:
        entry = info["splits"][split]
        names, n_genes = list(entry["cell_types"]), int(entry["n_genes"])
    except (KeyError, TypeError):
        raise DataError(f"no histone split description for split {split!r} in the data info; "
                        "histone models need a histone data source (synthetic_histone, "
                        "histone_csv, histone_tensor)") from None
    return names, np.repeat(np.arange(len(names)), n_genes)


def shape_of(info: dict, n_features: int) -> tuple[int, int]:
    """(marks, bins) of a histone dataset, checked against its feature count.

    Raises
    ------
    DataError
        When the info lacks them or they do not multiply to ``n_features``.
    """
    m, b = info.get("n_marks"), info.get("n_bins")
    if not m or not b or m * b != n_features:
        raise DataError(f"histone data must say n_marks and n_bins with n_marks * n_bins == "
                        f"{n_features} features; got n_marks={m!r}, n_bins={b!r}")
    return int(m), int(b)


__all__ = ["MARKS", "ACTIVATING", "HOLDOUTS", "HistoneTensor", "check_tensor", "median_labels",
           "split_indices", "split_tensor", "row_cell_types", "shape_of"]
