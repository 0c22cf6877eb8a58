"""Expression matrices on disk: .npy/.npz, plain HDF5 and GCTX, read and write, with gene ids kept.

In memory every matrix is ``samples x genes`` (one row per profile, one column per gene), the
orientation the models consume. Files may be stored either way; GCTX in particular keeps genes
as its *rows* in the metadata while h5py sees the matrix transposed, shape ``(n_samples,
n_genes)`` (the cmapPy convention), so reading it needs no transpose at all.

Gene identity travels with the values (:class:`ExpressionMatrix`) so that landmark and target
genes can be chosen by id and per-gene results keep their ids up to the summary.

Errors a user can cause (non-finite values, ids missing from the matrix, overlapping gene
sets, shapes that disagree) raise :class:`~genodl_core.errors.DataError` naming the file and
the row/column, so the fix is obvious without opening a debugger.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import h5py
import numpy as np

from genodl_core.data import h5ad
from genodl_core.data.array_keys import AUTO, ArrayInfo, ChosenArrays, choose_arrays
from genodl_core.data.sparse import SCIPY_NPZ_PARTS, as_text, densify, is_scipy_npz, is_sparse_group
from genodl_core.errors import DataError

log = logging.getLogger(__name__)

MatrixFormat = Literal["auto", "npy", "npz", "hdf5", "gctx", "h5ad"]
Layout = Literal["samples_by_genes", "genes_by_samples"]

#: GCTX conventions (cmapPy): matrix stored transposed, ids in per-axis metadata groups.
GCTX_VERSION = "GCTX1.0"
GCTX_MATRIX = "0/DATA/0/matrix"
GCTX_ROW_IDS = "0/META/ROW/id"
GCTX_COL_IDS = "0/META/COL/id"
GCTX_MISSING = -666.0

#: Dataset names used for plain HDF5 and .npz files.
MATRIX_KEY = "matrix"
GENE_IDS_KEY = "gene_ids"
SAMPLE_IDS_KEY = "sample_ids"


@dataclass(frozen=True)
class ExpressionMatrix:
    """Expression values ``[n_samples, n_genes]`` with their gene and sample ids.

    Ids are numpy unicode arrays; files without ids get positional ids (``"0"``, ``"1"``, ...),
    so that an id list file can still name columns of a bare ``.npy`` matrix.
    """

    values: np.ndarray
    gene_ids: np.ndarray
    sample_ids: np.ndarray
    source: str = "<memory>"
    #: Which stored arrays the values and ids came from (``matrix_key``, ``ids_key``, ...).
    keys: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise DataError(f"{self.source}: expected a 2-D matrix, got shape {self.values.shape}")
        n_samples, n_genes = self.values.shape
        if len(self.gene_ids) != n_genes:
            raise DataError(f"{self.source}: {len(self.gene_ids)} gene ids for a matrix with "
                            f"{n_genes} gene columns (shape {self.values.shape})")
        if len(self.sample_ids) != n_samples:
            raise DataError(f"{self.source}: {len(self.sample_ids)} sample ids for a matrix with "
                            f"{n_samples} sample rows (shape {self.values.shape})")

    @property
    def n_samples(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_genes(self) -> int:
        return int(self.values.shape[1])


def positional_ids(n: int) -> np.ndarray:
    """Ids ``"0" .. "n-1"`` for files that store none."""
    return np.array([str(i) for i in range(n)])


def _as_str_ids(raw: np.ndarray) -> np.ndarray:
    """Decode HDF5 byte strings / numbers into a numpy unicode array."""
    raw = np.asarray(raw).reshape(-1)
    if raw.dtype.kind in ("S", "O"):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in raw])
    return raw.astype(str)


def check_finite(values: np.ndarray, source: str, what: str = "matrix",
                 row_ids: Sequence[str] | None = None,
                 col_ids: Sequence[str] | None = None) -> None:
    """Raise :class:`DataError` at the first NaN/inf, naming its row and column.

    Models and scalers would silently turn one NaN into NaN losses for a whole trial; failing at
    load time with the exact cell is far cheaper to diagnose.

    Raises
    ------
    DataError
        If any value is NaN or infinite (reports the count and the first position).
    """
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    rows, cols = np.nonzero(bad)
    r, c = int(rows[0]), int(cols[0])
    row_name = f" (sample {str(row_ids[r])!r})" if row_ids is not None else ""
    col_name = f" (gene {str(col_ids[c])!r})" if col_ids is not None else ""
    raise DataError(f"{source}: {what} has {int(bad.sum())} non-finite value(s) (NaN, inf, or "
                    f"the GCTX missing code -666); first at row {r}{row_name}, column {c}"
                    f"{col_name}: {float(values[r, c])}. Impute or drop them before training")


def check_numeric(values: np.ndarray, source: str, what: str = "matrix") -> None:
    """Raise :class:`DataError` unless ``values`` hold numbers (integers or floats).

    A matrix of text (ids saved in place of values, a header row read as data) would fail
    later in a float conversion that names neither the file nor what was expected.
    """
    if values.dtype.kind not in "biuf":
        kind = {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers",
                "V": "records"}.get(values.dtype.kind, "non-numbers")
        raise DataError(f"{source}: {what} holds {kind} (dtype {values.dtype}); expected "
                        f"numbers (integer or floating point)")


def detect_format(path: str | Path) -> str:
    """The file format from the suffix, or from the HDF5 content for ``.h5``/``.hdf5``
    (GCTX groups make it ``gctx``, AnnData's layout ``h5ad``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz", ".gctx", ".h5ad"):
        return suffix[1:]
    if suffix in (".h5", ".hdf5", ".hdf"):
        try:
            with h5py.File(path, "r") as fh:
                if GCTX_MATRIX in fh:
                    return "gctx"
                return "h5ad" if h5ad.is_h5ad(fh) else "hdf5"
        except OSError as err:
            raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    raise DataError(f"{path}: cannot tell the matrix format from suffix {suffix!r}; use one of "
                    f"['.gctx', '.h5', '.h5ad', '.hdf5', '.npy', '.npz'] or set format explicitly")


@dataclass(frozen=True)
class ArrayKeys:
    """Which stored arrays hold the matrix and the ids (``"auto"``: detected, ``"none"``:
    positional ids); see :mod:`genodl_core.data.array_keys` and :mod:`genodl_core.data.h5ad`."""

    matrix_key: str = AUTO
    ids_key: str = AUTO
    sample_ids_key: str = AUTO


def read_matrix(path: str | Path, format: MatrixFormat = "auto",
                layout: Layout = "samples_by_genes",
                keys: ArrayKeys = ArrayKeys()) -> ExpressionMatrix:
    """Read an expression matrix with its ids from any supported file.

    Parameters
    ----------
    path
        The file.
    format
        ``auto`` decides from the suffix (and, for ``.h5``, whether GCTX groups or AnnData's
        layout are present).
    layout
        Orientation of ``.npy``/``.npz``/plain HDF5 matrices on disk; GCTX and AnnData have a
        fixed layout.
    keys
        The arrays of an ``.npz``/HDF5/AnnData file to read; detected by default.

    Raises
    ------
    DataError
        If the file is missing or unreadable, lacks the matrix (the message lists the arrays it
        holds), its ids disagree with the shape, or it holds non-finite values (GCTX missing
        values -666 count as non-finite).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such expression matrix file")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "npy":
        matrix = _read_npy(path, layout)
    elif fmt == "npz":
        matrix = _read_npz(path, layout, keys)
    elif fmt == "hdf5":
        matrix = _read_hdf5(path, layout, keys)
    elif fmt == "h5ad":
        matrix = _read_h5ad(path, keys)
    elif fmt == "gctx":
        matrix = read_gctx(path)
    else:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of "
                        f"['auto', 'gctx', 'h5ad', 'hdf5', 'npy', 'npz']")
    check_finite(matrix.values, str(path), row_ids=matrix.sample_ids, col_ids=matrix.gene_ids)
    log.info("read %s matrix %s: %d samples x %d genes (%s)", fmt, path, matrix.n_samples,
             matrix.n_genes, matrix.keys or "no named arrays")
    return matrix


def _orient(values: np.ndarray, layout: Layout, path: Path) -> np.ndarray:
    if values.ndim != 2:
        raise DataError(f"{path}: expected a 2-D matrix, got shape {values.shape}")
    check_numeric(values, str(path))
    if layout == "genes_by_samples":
        values = values.T
    return np.ascontiguousarray(values, dtype=np.float32)


def _ids_or_positions(raw: np.ndarray | None, n: int) -> np.ndarray:
    return _as_str_ids(raw) if raw is not None else positional_ids(n)


def _read_npy(path: Path, layout: Layout) -> ExpressionMatrix:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({type(err).__name__}: {err}); "
                        f"expected a complete numeric 2-D array saved by numpy") from None
    values = _orient(values, layout, path)
    return ExpressionMatrix(values, positional_ids(values.shape[1]),
                            positional_ids(values.shape[0]), str(path))


def npz_arrays(path: str | Path) -> dict[str, ArrayInfo]:
    """Name, shape and dtype of every array in an ``.npz`` archive, from the array headers
    (nothing is decompressed beyond them); a scipy sparse archive counts as one array."""
    arrays: dict[str, ArrayInfo] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith(".npy"):
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(fh)
                arrays[name[:-4]] = ArrayInfo.of(name[:-4], tuple(shape), dtype)
    if is_scipy_npz(set(arrays)):
        with np.load(path, allow_pickle=False) as npz:
            shape = tuple(int(n) for n in npz["shape"])
        return {SPARSE_NPZ_NAME: ArrayInfo.of(SPARSE_NPZ_NAME, shape, arrays["data"].dtype,
                                              sparse=True)}
    return arrays


#: The name a scipy sparse ``.npz`` archive's matrix goes by (its arrays are its parts).
SPARSE_NPZ_NAME = "sparse"

_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _read_npz(path: Path, layout: Layout, keys: ArrayKeys) -> ExpressionMatrix:
    try:
        arrays = npz_arrays(path)
        if SPARSE_NPZ_NAME in arrays and arrays[SPARSE_NPZ_NAME].sparse:
            info = arrays[SPARSE_NPZ_NAME]
            with np.load(path, allow_pickle=False) as npz:
                fmt = as_text(npz["format"])
                parts = {k: npz[k] for k in SCIPY_NPZ_PARTS.get(fmt, ()) if k in npz.files}
            values = _orient(densify(fmt, info.shape, parts, str(path)), layout, path)
            return ExpressionMatrix(values, positional_ids(values.shape[1]),
                                    positional_ids(values.shape[0]), str(path),
                                    keys={"matrix_key": f"scipy sparse {fmt}"})
        chosen = choose_arrays(arrays, str(path), layout, keys.matrix_key, keys.ids_key,
                               keys.sample_ids_key)
        with np.load(path, allow_pickle=False) as npz:
            values = _orient(npz[chosen.matrix], layout, path)
            genes = npz[chosen.gene_ids] if chosen.gene_ids else None
            samples = npz[chosen.sample_ids] if chosen.sample_ids else None
    except _NPZ_ERRORS as err:
        # A truncated archive fails as BadZipFile, EOFError or a zlib error, by where it ends.
        raise DataError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); "
                        f"expected a complete archive of numpy arrays with a matrix "
                        f"(named 'matrix', 'X', ... or data.matrix_key)") from None
    return ExpressionMatrix(values, _ids_or_positions(genes, values.shape[1]),
                            _ids_or_positions(samples, values.shape[0]), str(path),
                            keys=chosen.keys())


def hdf5_arrays(fh: h5py.File, source: str) -> dict[str, ArrayInfo]:
    """Every dataset of an HDF5 file by path (``group/name``), a sparse group (CSR/CSC: data,
    indices, indptr) counting as one 2-D array."""
    arrays: dict[str, ArrayInfo] = {}

    def visit(prefix: str, group: h5py.Group, skip: tuple[str, ...] = ()) -> None:
        for name, node in group.items():
            full = f"{prefix}{name}"
            if name in skip:
                continue
            if is_sparse_group(node):
                arrays[full] = h5ad.node_info(full, node, source)
                # 10x Genomics keeps the ids inside the matrix group (matrix/barcodes, ...).
                visit(f"{full}/", node, skip=_SPARSE_PARTS)
            elif isinstance(node, h5py.Dataset):
                arrays[full] = h5ad.node_info(full, node, source)
            elif isinstance(node, h5py.Group):
                visit(f"{full}/", node)

    visit("", fh)
    return arrays


#: Members of a sparse HDF5 group that make up the matrix (not listed as arrays of their own).
_SPARSE_PARTS = ("data", "indices", "indptr", "shape")


def _read_hdf5(path: Path, layout: Layout, keys: ArrayKeys) -> ExpressionMatrix:
    try:
        with h5py.File(path, "r") as fh:
            chosen = choose_arrays(hdf5_arrays(fh, str(path)), str(path), layout,
                                   keys.matrix_key, keys.ids_key, keys.sample_ids_key)
            values = _orient(h5ad.read_node(fh[chosen.matrix], str(path)), layout, path)
            genes = fh[chosen.gene_ids][()] if chosen.gene_ids else None
            samples = fh[chosen.sample_ids][()] if chosen.sample_ids else None
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    return ExpressionMatrix(values, _ids_or_positions(genes, values.shape[1]),
                            _ids_or_positions(samples, values.shape[0]), str(path),
                            keys=chosen.keys())


def _read_h5ad(path: Path, keys: ArrayKeys) -> ExpressionMatrix:
    values, genes, samples, key = h5ad.read(str(path), keys.matrix_key, keys.ids_key,
                                            keys.sample_ids_key)
    values = _orient(values, "samples_by_genes", path)
    return ExpressionMatrix(values, _ids_or_positions(genes, values.shape[1]),
                            _ids_or_positions(samples, values.shape[0]), str(path),
                            keys={"matrix_key": key, "ids_key": keys.ids_key,
                                  "sample_ids_key": keys.sample_ids_key})


@dataclass(frozen=True)
class MatrixHeader:
    """What a matrix file holds, read without its values: the checks before a sweep is
    queued use it. Ids are ``None`` when the file stores none (positional ids are used)."""

    format: str
    n_samples: int
    n_genes: int
    gene_ids: np.ndarray | None
    sample_ids: np.ndarray | None
    keys: dict


def inspect_matrix(path: str | Path, format: MatrixFormat = "auto",
                   layout: Layout = "samples_by_genes",
                   keys: ArrayKeys = ArrayKeys()) -> MatrixHeader:
    """Shape, ids and chosen arrays of a matrix file, from headers and id arrays only.

    Raises
    ------
    DataError
        As :func:`read_matrix` for a missing file, an unknown format, absent or ambiguous
        arrays (listing those found) and ids that do not fit the shape.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such expression matrix file")
    fmt = detect_format(path) if format == "auto" else format
    source = str(path)
    try:
        if fmt == "npy":
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, _ = read(fh)
            if len(shape) != 2:
                raise DataError(f"{path}: expected a 2-D matrix, got shape {tuple(shape)}")
            n_samples, n_genes = shape[::-1] if layout == "genes_by_samples" else shape
            return MatrixHeader(fmt, int(n_samples), int(n_genes), None, None, {})
        if fmt == "npz":
            arrays = npz_arrays(path)
            if SPARSE_NPZ_NAME in arrays and arrays[SPARSE_NPZ_NAME].sparse:
                rows, cols = arrays[SPARSE_NPZ_NAME].shape
                n_samples, n_genes = (cols, rows) if layout == "genes_by_samples" else (rows, cols)
                return MatrixHeader(fmt, n_samples, n_genes, None, None,
                                    {"matrix_key": "scipy sparse"})
            chosen = choose_arrays(arrays, source, layout, keys.matrix_key, keys.ids_key,
                                   keys.sample_ids_key)
            with np.load(path, allow_pickle=False) as npz:
                genes = npz[chosen.gene_ids] if chosen.gene_ids else None
                samples = npz[chosen.sample_ids] if chosen.sample_ids else None
            return _header(fmt, chosen, genes, samples)
        with h5py.File(path, "r") as fh:
            if fmt == "gctx":
                for name in (GCTX_MATRIX, GCTX_ROW_IDS, GCTX_COL_IDS):
                    if name not in fh:
                        raise DataError(f"{path}: not a GCTX file: dataset /{name} is missing")
                genes, samples = fh[GCTX_ROW_IDS][()], fh[GCTX_COL_IDS][()]
                return MatrixHeader(fmt, len(samples), len(genes), _as_str_ids(genes),
                                    _as_str_ids(samples), {})
            if fmt == "h5ad":
                key, info, genes, samples = h5ad.inspect(fh, source, keys.matrix_key,
                                                         keys.ids_key, keys.sample_ids_key)
                return MatrixHeader(fmt, info.shape[0], info.shape[1], genes, samples,
                                    {"matrix_key": key})
            if fmt != "hdf5":
                raise DataError(f"{path}: unknown format {fmt!r}; expected one of "
                                f"['auto', 'gctx', 'h5ad', 'hdf5', 'npy', 'npz']")
            chosen = choose_arrays(hdf5_arrays(fh, source), source, layout, keys.matrix_key,
                                   keys.ids_key, keys.sample_ids_key)
            genes = fh[chosen.gene_ids][()] if chosen.gene_ids else None
            samples = fh[chosen.sample_ids][()] if chosen.sample_ids else None
            return _header(fmt, chosen, genes, samples)
    except _NPZ_ERRORS as err:
        raise DataError(f"{path}: unreadable {fmt} header ({type(err).__name__}: {err})") from None


def _header(fmt: str, chosen: ChosenArrays, genes: np.ndarray | None,
            samples: np.ndarray | None) -> MatrixHeader:
    return MatrixHeader(fmt, chosen.n_samples, chosen.n_genes,
                        _as_str_ids(genes) if genes is not None else None,
                        _as_str_ids(samples) if samples is not None else None, chosen.keys())


def read_gctx(path: str | Path) -> ExpressionMatrix:
    """Read a GCTX file: genes are GCTX rows, samples GCTX columns, matrix stored transposed.

    Missing values (-666) become NaN, so :func:`read_matrix` reports them with their position.

    Raises
    ------
    DataError
        If the GCTX groups are missing or the id counts disagree with the matrix shape.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            for name in (GCTX_MATRIX, GCTX_ROW_IDS, GCTX_COL_IDS):
                if name not in fh:
                    raise DataError(f"{path}: not a GCTX file: dataset /{name} is missing")
            values = np.array(fh[GCTX_MATRIX][()], dtype=np.float32)
            gene_ids = _as_str_ids(fh[GCTX_ROW_IDS][()])
            sample_ids = _as_str_ids(fh[GCTX_COL_IDS][()])
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5/GCTX file ({err})") from None
    if values.ndim != 2:
        raise DataError(f"{path}: /{GCTX_MATRIX} must be 2-D, got shape {values.shape}")
    # The stored matrix is (n_samples, n_genes): h5py's view of the transposed gene x sample grid.
    if values.shape != (len(sample_ids), len(gene_ids)):
        raise DataError(f"{path}: /{GCTX_MATRIX} has shape {values.shape} but the file lists "
                        f"{len(gene_ids)} gene (row) ids and {len(sample_ids)} sample (column) "
                        f"ids; expected shape ({len(sample_ids)}, {len(gene_ids)})")
    values[values == GCTX_MISSING] = np.nan
    return ExpressionMatrix(values, gene_ids, sample_ids, str(path))


def _id_dataset(ids: np.ndarray) -> np.ndarray:
    return np.array([str(v) for v in ids], dtype=h5py.string_dtype())


def write_gctx(path: str | Path, matrix: ExpressionMatrix) -> Path:
    """Write ``matrix`` as GCTX (genes = rows, samples = columns, stored transposed).

    NaN values are written as -666, the GCTX missing-value code.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.array(matrix.values, dtype=np.float32, copy=True)
    values[np.isnan(values)] = GCTX_MISSING
    with h5py.File(path, "w") as fh:
        fh.attrs["version"] = GCTX_VERSION
        fh.create_dataset(GCTX_MATRIX, data=values)
        fh.create_dataset(GCTX_ROW_IDS, data=_id_dataset(matrix.gene_ids))
        fh.create_dataset(GCTX_COL_IDS, data=_id_dataset(matrix.sample_ids))
    return path


def write_hdf5(path: str | Path, matrix: ExpressionMatrix) -> Path:
    """Write a plain HDF5 matrix (samples x genes) with ``gene_ids`` and ``sample_ids``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset(MATRIX_KEY, data=np.asarray(matrix.values, dtype=np.float32))
        fh.create_dataset(GENE_IDS_KEY, data=_id_dataset(matrix.gene_ids))
        fh.create_dataset(SAMPLE_IDS_KEY, data=_id_dataset(matrix.sample_ids))
    return path


def write_npz(path: str | Path, matrix: ExpressionMatrix) -> Path:
    """Write an ``.npz`` with ``matrix`` (samples x genes), ``gene_ids`` and ``sample_ids``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{MATRIX_KEY: np.asarray(matrix.values, dtype=np.float32),
                      GENE_IDS_KEY: np.asarray(matrix.gene_ids).astype(str),
                      SAMPLE_IDS_KEY: np.asarray(matrix.sample_ids).astype(str)})
    return path


def read_id_list(path: str | Path) -> list[str]:
    """Gene ids, one per line; blank lines and ``#`` comments are skipped.

    Raises
    ------
    DataError
        If the file is missing, empty, or names an id twice (with both line numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such gene id list file")
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text in seen:
            raise DataError(f"{path}: line {lineno}: gene id {text!r} is listed twice "
                            f"(first on line {seen[text]})")
        seen[text] = lineno
        ids.append(text)
    if not ids:
        raise DataError(f"{path}: the gene id list is empty")
    return ids


@dataclass(frozen=True)
class GeneSelection:
    """Column indices of landmark and target genes in an :class:`ExpressionMatrix`."""

    landmarks: np.ndarray
    targets: np.ndarray


def _indices_of(ids: Sequence[str], matrix: ExpressionMatrix, what: str, source: str) -> np.ndarray:
    position = {g: i for i, g in enumerate(matrix.gene_ids.tolist())}
    missing = [g for g in ids if g not in position]
    if missing:
        shown = missing[:10]
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{source}: {len(missing)} {what} gene id(s) are not in the matrix "
                        f"{matrix.source}: {shown}{more}")
    return np.array([position[g] for g in ids], dtype=np.int64)


#: How genes chosen by count are ordered: file order, seeded random, or ranked on the training
#: samples (largest first; ties keep file order).
GENE_ORDERS: tuple[str, ...] = ("first", "random", "most_variable", "highest_mean")
GeneOrder = Literal["first", "random", "most_variable", "highest_mean"]


def rank_genes(values: np.ndarray, rows: np.ndarray | None, by: str) -> np.ndarray:
    """Column indices from the highest to the lowest variance (``most_variable``) or mean
    (``highest_mean``) over ``rows`` (all rows when ``None``); ties keep file order.

    Statistics are computed in float64, a block of rows at a time, on the values as stored
    (before any scaling: standardising first would give every gene variance 1).

    Raises
    ------
    ValueError
        If ``by`` is not a ranking order or ``rows`` is empty.
    """
    if by not in ("most_variable", "highest_mean"):
        raise ValueError(f"by={by!r}; expected 'most_variable' or 'highest_mean'")
    picked = values if rows is None else values[np.asarray(rows, dtype=np.int64)]
    if picked.shape[0] == 0:
        raise ValueError("cannot rank genes on zero samples")
    mean = picked.mean(axis=0, dtype=np.float64)
    if by == "highest_mean":
        score = mean
    else:
        score = np.zeros(picked.shape[1], dtype=np.float64)
        step = max(1, (1 << 22) // max(1, picked.shape[1]))
        for start in range(0, picked.shape[0], step):
            dev = picked[start:start + step].astype(np.float64) - mean
            score += np.einsum("ij,ij->j", dev, dev)
        score /= picked.shape[0]
    return np.argsort(-score, kind="stable")


def select_genes(matrix: ExpressionMatrix, *, landmark_ids: Sequence[str] | None = None,
                 n_landmarks: int | None = None, target_ids: Sequence[str] | None = None,
                 n_targets: int | None = None, order: GeneOrder = "first",
                 seed: int = 0, landmark_source: str = "landmark ids",
                 target_source: str = "target ids",
                 train_rows: np.ndarray | None = None) -> GeneSelection:
    """Choose landmark and target columns by id list or by count.

    By count, genes are taken in matrix order (``first``), in a seeded random order
    (``random``), or ranked by their variance (``most_variable``) or mean (``highest_mean``)
    over the training samples ``train_rows`` only, so validation and test samples never
    influence which genes are inputs. Landmarks come first, targets from the genes that are
    not landmarks (for a ranking: the next ones down). Without ``target_ids`` or
    ``n_targets``, every non-landmark gene is a target. Chosen columns are kept in file order,
    except for ``random`` (the seeded order).

    Raises
    ------
    DataError
        If ids are missing from the matrix, landmarks and targets overlap, or the counts ask for
        more genes than the matrix has.
    """
    n_genes = matrix.n_genes
    if order not in GENE_ORDERS:
        raise DataError(f"gene order {order!r} is not one of {list(GENE_ORDERS)}")
    if order == "random":
        pool = np.random.default_rng(seed).permutation(n_genes)
    elif order == "first":
        pool = np.arange(n_genes)
    else:
        pool = rank_genes(matrix.values, train_rows, order)
    keep_order = order == "random"
    if landmark_ids is not None:
        landmarks = _indices_of(landmark_ids, matrix, "landmark", landmark_source)
    elif n_landmarks is not None:
        if n_landmarks >= n_genes:
            raise DataError(f"{matrix.source}: n_landmarks={n_landmarks} leaves no target genes: "
                            f"the matrix has only {n_genes} genes")
        landmarks = pool[:n_landmarks] if keep_order else np.sort(pool[:n_landmarks])
    else:
        raise DataError("choose landmark genes by an id list file or by n_landmarks")
    if target_ids is not None:
        targets = _indices_of(target_ids, matrix, "target", target_source)
        overlap = np.intersect1d(landmarks, targets)
        if overlap.size:
            names = matrix.gene_ids[overlap][:10].tolist()
            raise DataError(f"{target_source}: {overlap.size} gene(s) are both landmarks and "
                            f"targets: {names}; a target must not be an input")
    else:
        is_landmark = np.zeros(n_genes, dtype=bool)
        is_landmark[landmarks] = True
        rest = pool[~is_landmark[pool]]
        if n_targets is not None:
            if n_targets > rest.size:
                raise DataError(f"{matrix.source}: n_targets={n_targets} but only {rest.size} "
                                f"genes are left after {landmarks.size} landmarks")
            rest = rest[:n_targets]
        targets = rest if keep_order else np.sort(rest)
    if targets.size == 0:
        raise DataError(f"{matrix.source}: no target genes selected")
    return GeneSelection(landmarks.astype(np.int64), targets.astype(np.int64))


__all__ = ["ExpressionMatrix", "GeneSelection", "ArrayKeys", "MatrixHeader", "read_matrix",
           "inspect_matrix", "npz_arrays", "hdf5_arrays", "read_gctx", "write_gctx",
           "write_hdf5", "write_npz", "read_id_list", "select_genes", "rank_genes", "GENE_ORDERS", "check_finite",
           "detect_format", "positional_ids"]
