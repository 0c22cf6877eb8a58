"""Sparse matrices as files store them (CSR, CSC, COO), turned into dense float32 arrays.

Single-cell counts are usually saved sparse: scipy's ``save_npz`` (arrays ``format``,
``shape``, ``data``, ``indices``, ``indptr``), AnnData's ``X`` group (``encoding-type`` =
``csr_matrix`` / ``csc_matrix``, ``shape`` attribute) and 10x Genomics HDF5 files (a group
with a ``shape`` dataset). The models train on dense arrays, so these are densified once at
load time with numpy alone: scipy is not needed to read them. Duplicate entries are summed,
as scipy does.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from genodl_core.errors import DataError

#: Sparse layouts understood, as scipy names them.
SPARSE_FORMATS: tuple[str, ...] = ("csr", "csc", "coo")

#: Arrays of a scipy ``save_npz`` archive, by format (``format`` and ``shape`` always).
SCIPY_NPZ_PARTS: dict[str, tuple[str, ...]] = {
    "csr": ("data", "indices", "indptr"),
    "csc": ("data", "indices", "indptr"),
    "coo": ("data", "row", "col"),
}


def as_text(value: Any) -> str:
    """A stored name (``b"csr"``, a 0-d or 1-element array of one) as ``str``."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = np.asarray(value).reshape(-1)[0].item()
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def is_scipy_npz(names: set[str]) -> bool:
    """Whether an ``.npz`` archive's array names are those of scipy's ``save_npz``."""
    return {"format", "shape", "data"} <= names and (
        {"indices", "indptr"} <= names or {"row", "col"} <= names)


def guess_compressed_format(shape: tuple[int, int], indptr_length: int, source: str) -> str:
    """``csr`` or ``csc`` from the length of ``indptr`` (rows + 1 or columns + 1).

    Files that do not say which (10x Genomics HDF5) are read this way; a square matrix is
    ambiguous and read as CSR, the common case.

    Raises
    ------
    DataError
        If ``indptr`` fits neither axis.
    """
    if indptr_length == shape[0] + 1:
        return "csr"
    if indptr_length == shape[1] + 1:
        return "csc"
    raise DataError(f"{source}: sparse matrix of shape {shape} has an indptr of length "
                    f"{indptr_length}; expected {shape[0] + 1} (CSR) or {shape[1] + 1} (CSC)")


def densify(fmt: str, shape: tuple[int, ...], parts: Mapping[str, np.ndarray],
            source: str) -> np.ndarray:
    """A dense float32 ``shape`` array from the arrays of one sparse matrix.

    Parameters
    ----------
    fmt
        One of :data:`SPARSE_FORMATS`.
    shape
        ``(rows, columns)``.
    parts
        ``data`` with ``indices``/``indptr`` (CSR, CSC) or ``row``/``col`` (COO).
    source
        Named in errors.

    Raises
    ------
    DataError
        For an unknown format, a shape that is not 2-D, missing parts, or indices outside
        the shape.
    """
    fmt = fmt.lower()
    if fmt not in SPARSE_FORMATS:
        raise DataError(f"{source}: sparse format {fmt!r} is not supported; expected one of "
                        f"{list(SPARSE_FORMATS)} (convert it with scipy's .tocsr())")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 2:
        raise DataError(f"{source}: sparse matrix shape {shape} is not 2-D")
    missing = [p for p in SCIPY_NPZ_PARTS[fmt] if p not in parts]
    if missing:
        raise DataError(f"{source}: sparse {fmt} matrix lacks {missing}; found {sorted(parts)}")
    data = np.asarray(parts["data"]).reshape(-1)
    if data.dtype.kind not in "biuf":
        raise DataError(f"{source}: sparse matrix values have dtype {data.dtype}; expected numbers")
    if fmt == "coo":
        rows = np.asarray(parts["row"], dtype=np.int64).reshape(-1)
        cols = np.asarray(parts["col"], dtype=np.int64).reshape(-1)
    else:
        indptr = np.asarray(parts["indptr"], dtype=np.int64).reshape(-1)
        major = shape[0] if fmt == "csr" else shape[1]
        if indptr.size != major + 1 or indptr[-1] != data.size or np.any(np.diff(indptr) < 0):
            raise DataError(f"{source}: {fmt} indptr of length {indptr.size} ending at "
                            f"{int(indptr[-1]) if indptr.size else None} does not describe "
                            f"{major} {'rows' if fmt == 'csr' else 'columns'} and "
                            f"{data.size} stored values")
        outer = np.repeat(np.arange(major, dtype=np.int64), np.diff(indptr))
        inner = np.asarray(parts["indices"], dtype=np.int64).reshape(-1)
        rows, cols = (outer, inner) if fmt == "csr" else (inner, outer)
    if not rows.size == cols.size == data.size:
        raise DataError(f"{source}: sparse {fmt} parts disagree in length: {data.size} values, "
                        f"{rows.size} row and {cols.size} column indices")
    if rows.size and (rows.min() < 0 or cols.min() < 0 or rows.max() >= shape[0]
                      or cols.max() >= shape[1]):
        raise DataError(f"{source}: sparse {fmt} indices fall outside the shape {shape}")
    dense = np.zeros(shape, dtype=np.float32)
    np.add.at(dense, (rows, cols), data.astype(np.float32))
    return dense


__all__ = ["as_text", "SPARSE_FORMATS", "SCIPY_NPZ_PARTS", "is_scipy_npz", "guess_compressed_format",
           "densify"]


# --- sparse matrices stored as HDF5 groups ------------------------------------------------------

def is_sparse_group(node: Any) -> bool:
    """Whether an HDF5 node is a group holding a CSR/CSC matrix (AnnData, 10x Genomics)."""
    import h5py

    return isinstance(node, h5py.Group) and all(p in node for p in ("data", "indices", "indptr"))


def sparse_group_shape(node: Any, source: str) -> tuple[int, int]:
    """The shape of a sparse HDF5 group: its ``shape`` attribute (AnnData), ``h5sparse_shape``
    (older AnnData) or ``shape`` dataset (10x Genomics).

    Raises
    ------
    DataError
        If the group states no 2-D shape.
    """
    for attr in ("shape", "h5sparse_shape"):
        if attr in node.attrs:
            shape = tuple(int(n) for n in np.asarray(node.attrs[attr]).reshape(-1))
            break
    else:
        if "shape" not in node:
            raise DataError(f"{source}: sparse group /{node.name.lstrip('/')} states no shape "
                            f"(a 'shape' attribute or dataset)")
        shape = tuple(int(n) for n in np.asarray(node["shape"][()]).reshape(-1))
    if len(shape) != 2:
        raise DataError(f"{source}: sparse group /{node.name.lstrip('/')} has shape {shape}; "
                        f"expected 2-D")
    return shape  # type: ignore[return-value]


def sparse_group_format(node: Any, shape: tuple[int, int], source: str) -> str:
    """``csr`` or ``csc``: from ``encoding-type`` / ``h5sparse_format``, else from ``indptr``."""
    for attr in ("encoding-type", "h5sparse_format"):
        if attr in node.attrs:
            name = as_text(node.attrs[attr]).replace("_matrix", "")
            if name in ("csr", "csc"):
                return name
    return guess_compressed_format(shape, int(node["indptr"].shape[0]), source)


def read_sparse_group(node: Any, source: str) -> np.ndarray:
    """The dense float32 matrix of a sparse HDF5 group (see :func:`densify`)."""
    shape = sparse_group_shape(node, source)
    fmt = sparse_group_format(node, shape, source)
    parts = {p: node[p][()] for p in ("data", "indices", "indptr")}
    return densify(fmt, shape, parts, f"{source}:/{node.name.lstrip('/')}")


__all__ += ["is_sparse_group", "sparse_group_shape", "sparse_group_format", "read_sparse_group"]
