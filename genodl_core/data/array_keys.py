"""Which arrays of an ``.npz`` or HDF5 file hold the matrix, the gene ids and the sample ids.

Files come as their authors saved them: ``X`` and ``genes`` as often as ``matrix`` and
``gene_ids``. Each of the three roles is named by a data parameter (``matrix_key``,
``ids_key``, ``sample_ids_key``); the default ``"auto"`` detects it:

- the matrix is the one 2-D numeric array among the common names (:data:`MATRIX_NAMES`,
  case-insensitive), or else the file's only 2-D numeric array;
- gene ids are the first array among :data:`GENE_ID_NAMES` with one entry per gene, or else
  the only 1-D text array of that length; sample ids likewise (:data:`SAMPLE_ID_NAMES`);
- without ids, genes and samples get positional ids (``"0"``, ``"1"``, ...); ``"none"``
  asks for positional ids explicitly.

The choice works on names, shapes and dtypes alone (:class:`ArrayInfo`), so the checks before
a sweep is queued make it without reading the matrix. When it cannot choose, the error lists
every array found with its shape and dtype and names the parameter to set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from genodl_core.errors import DataError

AUTO = "auto"
NONE = "none"

#: Names taken for the matrix by ``matrix_key = "auto"`` (compared case-insensitively).
MATRIX_NAMES: tuple[str, ...] = ("matrix", "X", "data", "expression", "counts")
#: Names taken for gene ids by ``ids_key = "auto"``, in order of preference.
GENE_ID_NAMES: tuple[str, ...] = ("gene_ids", "genes", "var_names", "gene_names", "ids",
                                  "features")
#: Names taken for sample ids by ``sample_ids_key = "auto"``, in order of preference.
SAMPLE_ID_NAMES: tuple[str, ...] = ("sample_ids", "samples", "obs_names", "cell_ids",
                                    "barcodes", "cells")


@dataclass(frozen=True)
class ArrayInfo:
    """Name, shape and dtype of one stored array (a sparse matrix counts as one 2-D array).

    ``kind`` is ``number``, ``text`` or ``other``; :meth:`of` derives it from the dtype.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    sparse: bool = False
    kind: str = "other"

    @classmethod
    def of(cls, name: str, shape: tuple[int, ...], dtype: np.dtype | str,
           sparse: bool = False) -> "ArrayInfo":
        """An entry for an array of numpy/h5py ``dtype`` (variable-length strings are text)."""
        code = np.dtype(dtype).kind
        kind = "number" if code in "biuf" else "text" if code in "USOT" else "other"
        return cls(name, tuple(int(n) for n in shape), str(dtype), sparse, kind)

    def __str__(self) -> str:
        return f"{self.name} {self.shape} {self.dtype}{' sparse' if self.sparse else ''}"


def describe(arrays: Mapping[str, ArrayInfo]) -> str:
    """``"X (3, 4) float32, genes (4,) <U5"``: what a file holds, for error messages."""
    return ", ".join(str(a) for a in arrays.values()) or "no arrays"


@dataclass(frozen=True)
class ChosenArrays:
    """The arrays chosen for each role (``None``: positional ids) and the matrix's size."""

    matrix: str
    gene_ids: str | None
    sample_ids: str | None
    n_samples: int
    n_genes: int

    def keys(self) -> dict[str, str | None]:
        """The choice as the data parameters name it, for the dataset's ``info``."""
        return {"matrix_key": self.matrix, "ids_key": self.gene_ids,
                "sample_ids_key": self.sample_ids}


def choose_arrays(arrays: Mapping[str, ArrayInfo], source: str, layout: str,
                  matrix_key: str = AUTO, ids_key: str = AUTO,
                  sample_ids_key: str = AUTO) -> ChosenArrays:
    """Choose the matrix and id arrays of a file (see the module doc for the rules).

    Parameters
    ----------
    arrays
        Every array of the file by name.
    source
        The file, named in errors.
    layout
        ``samples_by_genes`` or ``genes_by_samples``: which axis of the stored matrix is genes.

    Raises
    ------
    DataError
        If a named array is absent, the matrix is not a 2-D numeric array, ids do not match the
        matrix's size, or ``auto`` finds no matrix or several; the message lists the arrays.
    """
    found = f"found: {describe(arrays)}"
    matrix = _choose_matrix(arrays, source, matrix_key, found)
    rows, cols = matrix.shape
    n_samples, n_genes = (cols, rows) if layout == "genes_by_samples" else (rows, cols)
    taken = {matrix.name}
    genes = _choose_ids(arrays, source, ids_key, "ids_key", "gene", n_genes, GENE_ID_NAMES,
                        taken, found, ambiguous=n_genes == n_samples)
    if genes:
        taken.add(genes)
    samples = _choose_ids(arrays, source, sample_ids_key, "sample_ids_key", "sample", n_samples,
                          SAMPLE_ID_NAMES, taken, found, ambiguous=n_genes == n_samples)
    return ChosenArrays(matrix.name, genes, samples, n_samples, n_genes)


def _choose_matrix(arrays: Mapping[str, ArrayInfo], source: str, key: str,
                   found: str) -> ArrayInfo:
    fix = "set data.matrix_key to the samples x genes (or genes x samples) array"
    if key != AUTO:
        if key not in arrays:
            raise DataError(f"{source}: no array {key!r} (data.matrix_key); {found}")
        chosen = arrays[key]
        if len(chosen.shape) != 2 or chosen.kind != "number":
            raise DataError(f"{source}: array {key!r} (data.matrix_key) is {chosen.shape} "
                            f"{chosen.dtype}; expected a 2-D numeric matrix; {found}")
        return chosen
    matrices = [a for a in arrays.values() if len(a.shape) == 2 and a.kind == "number"]
    wanted = {n.lower() for n in MATRIX_NAMES}
    # Any 2-D array under a matrix name: one of text is reported as such when it is read.
    named = [a for a in arrays.values() if len(a.shape) == 2 and a.name.lower() in wanted]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise DataError(f"{source}: several arrays could be the matrix "
                        f"({[a.name for a in named]}); {fix}; {found}")
    if len(matrices) == 1:
        return matrices[0]
    reason = ("no 2-D numeric array" if not matrices else
              f"{len(matrices)} 2-D numeric arrays and none named one of {list(MATRIX_NAMES)}")
    raise DataError(f"{source}: no matrix found ({reason}); {fix}; {found}")


def _choose_ids(arrays: Mapping[str, ArrayInfo], source: str, key: str, param: str, what: str,
                length: int, names: tuple[str, ...], taken: set[str], found: str,
                ambiguous: bool) -> str | None:
    if key == NONE:
        return None
    if key != AUTO:
        if key not in arrays:
            raise DataError(f"{source}: no array {key!r} (data.{param}); {found}")
        chosen = arrays[key]
        if len(chosen.shape) != 1 or chosen.shape[0] != length:
            raise DataError(f"{source}: array {key!r} (data.{param}) has shape {chosen.shape}; "
                            f"expected one {what} id per {what}: ({length},); {found}")
        return key
    by_lower = {n.lower(): a for n, a in arrays.items() if n not in taken}
    named = [by_lower[n.lower()] for n in names if n.lower() in by_lower]
    named = [a for a in named if len(a.shape) == 1]
    fitting = [a for a in named if a.shape[0] == length]
    if fitting:
        return fitting[0].name
    if named:
        raise DataError(f"{source}: {what} ids {named[0].name!r} have {named[0].shape[0]} "
                        f"entries but the matrix has {length} {what}s; set data.{param} "
                        f"(or \"none\" for positional ids) or data.layout; {found}")
    if ambiguous:
        return None
    # Only top-level arrays: nested ones (10x Genomics' matrix/barcodes) belong to a structure
    # the file describes itself, and guessing among them would mix up the axes.
    loose = [a for n, a in arrays.items() if n not in taken and "/" not in n
             and len(a.shape) == 1
             and a.shape[0] == length and a.kind == "text"]
    return loose[0].name if len(loose) == 1 else None


__all__ = ["AUTO", "NONE", "MATRIX_NAMES", "GENE_ID_NAMES", "SAMPLE_ID_NAMES", "ArrayInfo",
           "ChosenArrays", "choose_arrays", "describe"]
