"""AnnData ``.h5ad`` files (the single-cell standard) read with h5py alone.

An ``.h5ad`` file is HDF5 in AnnData's on-disk layout: the matrix ``X`` (cells x genes, a
dataset or a CSR/CSC group), optional ``layers/<name>`` and ``raw/X`` of the same orientation,
and the data frames ``obs`` (one row per cell) and ``var`` (one row per gene), each a group
whose ``_index`` attribute names the column holding its index (cell barcodes, gene ids).
Files of AnnData before 0.7 store ``obs``/``var`` as compound datasets with an ``index`` field;
both are read. Reading needs no ``anndata`` package, so it adds no dependency.

Which matrix and which id columns are used is set by the data parameters (see
:mod:`genodl_core.data.matrices`): ``matrix_key`` (``"auto"``: ``X``; or ``layers/counts``,
``raw/X``), ``ids_key`` (``"auto"``: the ``var`` index; or a ``var`` column such as
``gene_ids`` or ``feature_name``), ``sample_ids_key`` (``"auto"``: the ``obs`` index; or an
``obs`` column). Categorical columns are decoded through their categories.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from genodl_core.data.array_keys import AUTO, NONE, ArrayInfo, describe
from genodl_core.data.sparse import (as_text, is_sparse_group, read_sparse_group,
                                     sparse_group_shape)
from genodl_core.errors import DataError


def is_h5ad(fh: h5py.File) -> bool:
    """Whether an open HDF5 file is in AnnData's layout."""
    kind = fh.attrs.get("encoding-type")
    if kind is not None and as_text(kind) == "anndata":
        return True
    return all(k in fh for k in ("X", "obs", "var"))


def matrices(fh: h5py.File, source: str) -> dict[str, ArrayInfo]:
    """The matrices of an AnnData file by key: ``X``, ``layers/<name>``, ``raw/X``."""
    keys = ["X"] + [f"layers/{k}" for k in (fh["layers"].keys() if "layers" in fh else ())]
    keys += ["raw/X"]
    return {k: node_info(k, fh[k], source) for k in keys if k in fh}


def node_info(name: str, node: Any, source: str) -> ArrayInfo:
    """Shape and dtype of a dataset or sparse group."""
    if is_sparse_group(node):
        return ArrayInfo.of(name, sparse_group_shape(node, source), node["data"].dtype, True)
    if isinstance(node, h5py.Dataset):
        return ArrayInfo.of(name, tuple(node.shape), node.dtype)
    return ArrayInfo(name, (), "group")


def read_node(node: Any, source: str) -> np.ndarray:
    """The values of a dataset or sparse group (numeric, as stored; sparse densified)."""
    if is_sparse_group(node):
        return read_sparse_group(node, source)
    return np.asarray(node[()])


def choose_matrix(fh: h5py.File, source: str, key: str) -> str:
    """The matrix key to read: ``key``, or for ``auto`` ``X`` (else the file's only matrix).

    Raises
    ------
    DataError
        If the key is absent or ``auto`` finds no single matrix; lists the matrices found.
    """
    found = matrices(fh, source)
    listing = f"found: {describe(found)}"
    if key != AUTO:
        if key not in fh:
            raise DataError(f"{source}: no matrix {key!r} (data.matrix_key) in this AnnData "
                            f"file; {listing}")
        info = node_info(key, fh[key], source)
        if len(info.shape) != 2 or info.kind != "number":
            raise DataError(f"{source}: {key!r} (data.matrix_key) is {info.shape} {info.dtype}; "
                            f"expected a 2-D numeric matrix; {listing}")
        return key
    if "X" in found:
        return "X"
    if len(found) == 1:
        return next(iter(found))
    raise DataError(f"{source}: AnnData file without X; set data.matrix_key to one of "
                    f"{sorted(found)}; {listing}")


def frame_of(matrix_key: str, axis: str) -> str:
    """The data frame describing an axis of a matrix: ``raw/var`` for ``raw/X``'s genes."""
    return f"raw/{axis}" if matrix_key.startswith("raw/") and axis == "var" else axis


def frame_ids(fh: h5py.File, frame: str, key: str, param: str, length: int,
              source: str) -> np.ndarray | None:
    """The ids of one axis: the frame's index (``auto``) or a named column; ``None`` for
    ``none`` or a file without the frame.

    Raises
    ------
    DataError
        If the column is absent (listing the frame's columns) or its length is not ``length``.
    """
    if key == NONE or frame not in fh:
        return None
    node = fh[frame]
    if isinstance(node, h5py.Dataset):  # AnnData before 0.7: a compound dataset
        fields = node.dtype.names or ()
        name = "index" if key == AUTO else key
        if name not in fields:
            raise DataError(f"{source}: /{frame} has no column {name!r} (data.{param}); "
                            f"columns: {list(fields)}")
        raw = node[name]
    else:
        name = as_text(node.attrs.get("_index", "_index")) if key == AUTO else key
        if name not in node:
            raise DataError(f"{source}: /{frame} has no column {name!r} (data.{param}); "
                            f"columns: {sorted(node.keys())}")
        raw = _column(node[name], f"{source}:/{frame}/{name}")
    ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(raw)])
    if ids.size != length:
        raise DataError(f"{source}: /{frame}/{name} (data.{param}) has {ids.size} entries for "
                        f"a matrix axis of {length}")
    return ids


def _column(node: Any, source: str) -> np.ndarray:
    """A frame column: a dataset, a categorical group (codes into categories) or a nullable
    group (values); missing categories (code -1) become empty strings."""
    if isinstance(node, h5py.Dataset):
        return node[()]
    if "codes" in node and "categories" in node:
        codes = np.asarray(node["codes"][()], dtype=np.int64)
        categories = np.array([v.decode() if isinstance(v, bytes) else str(v)
                               for v in np.ravel(node["categories"][()])] + [""])
        return categories[np.where(codes < 0, len(categories) - 1, codes)]
    if "values" in node:
        return node["values"][()]
    raise DataError(f"{source}: column stored as {sorted(node.keys())}; expected a dataset, a "
                    f"categorical (codes, categories) or a nullable (values, mask) group")


def inspect(fh: h5py.File, source: str, matrix_key: str, ids_key: str,
            sample_ids_key: str) -> tuple[str, ArrayInfo, np.ndarray | None, np.ndarray | None]:
    """The chosen matrix key, its shape and the gene and sample ids, without reading values."""
    key = choose_matrix(fh, source, matrix_key)
    info = node_info(key, fh[key], source)
    n_samples, n_genes = info.shape
    genes = frame_ids(fh, frame_of(key, "var"), ids_key, "ids_key", n_genes, source)
    samples = frame_ids(fh, frame_of(key, "obs"), sample_ids_key, "sample_ids_key", n_samples,
                        source)
    return key, info, genes, samples


def read(path: str, matrix_key: str = AUTO, ids_key: str = AUTO, sample_ids_key: str = AUTO
         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, str]:
    """Values (cells x genes, as stored), gene ids, sample ids and the matrix key read.

    Raises
    ------
    DataError
        If the file is not readable HDF5, or a key is absent or does not fit the matrix.
    """
    try:
        with h5py.File(path, "r") as fh:
            key, _, genes, samples = inspect(fh, str(path), matrix_key, ids_key, sample_ids_key)
            values = read_node(fh[key], str(path))
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5/AnnData file ({err})") from None
    return values, genes, samples, key


__all__ = ["is_h5ad", "matrices", "node_info", "read_node", "choose_matrix", "frame_ids",
           "inspect", "read"]
