"""Loader of the CANDLE NT3 tumour/normal CSV files (``nt_train2.csv`` / ``nt_test2.csv``).

Format (one file per split, no header row)::

    label,feature_1,feature_2,...,feature_F

Column 0 is the integer class index (believed 0 = normal, 1 = tumour), columns 1..F are the
expression values (60,483 genes, FPKM-UQ derived, in the real files). CANDLE validates NT3 on
its test file, so the test file becomes the dataset's *validation* split.

The real training file is over 500 MB. The first load parses it with numpy's C reader and stores
a memory-mappable binary copy (see :mod:`genodl_core.data.cache`) in ``.genodl-cache/`` next to
the file, or in ``cache_dir``; later loads, from any process, map that copy in milliseconds.
Editing or replacing a CSV file changes its size or modification time and so invalidates its
cached copy.

Malformed input is reported as a :class:`~genodl_core.errors.DataError` naming the file and the
position: rows are numbered from 1 in file order (blank lines are not counted), columns from 0
(column 0 = the label). Detected: missing or empty files, rows with a different number of
fields, non-numeric cells (including a header row), NaN or infinite values, non-integer labels,
labels outside ``range(n_classes)``, and train/test files with different feature counts.

The loader returns RAW values; the trial runner scales them afterwards according to
``scaling`` / ``scale_fit`` (see :mod:`genodl_core.data.scaling`).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genodl_core.data.cache import load_or_build
from genodl_core.data.types import Dataset
from genodl_core.errors import DataError, SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import check_range

log = logging.getLogger(__name__)

#: Parser name and version; part of the cache key, so changing the parser invalidates caches.
PARSER_TAG = "nt3_csv/1"


@dataclass(frozen=True)
class NT3CsvParams:
    """Parameters of the ``nt3_csv`` data source.

    Attributes
    ----------
    train_path, test_path
        The CSV files (absolute paths, or relative to the directory trials run in). The test
        file is used as the validation split, as in CANDLE.
    cache_dir
        Where binary copies are kept; default ``.genodl-cache/`` beside each CSV file. Point it
        at a node-local or scratch directory when the data directory is read-only.
    n_classes
        Number of classes; every label must lie in ``range(n_classes)``.
    scaling
        ``"maxabs"`` (CANDLE's choice), ``"standard"`` (z-score per gene: ``(x - mean) /
        std``; a gene without spread becomes all zeros) or ``"none"``; applied by the trial
        runner with statistics from ``scale_fit``, and recorded in the trial's data ``info``.
    scale_fit
        ``"train"`` (default) fits the scale on the training file only; ``"train+test"``
        reproduces CANDLE, which fits it on both files (a leak of validation data).
    """

    train_path: str
    test_path: str
    cache_dir: str | None = None
    n_classes: int = 2
    scaling: Literal["maxabs", "standard", "none"] = "maxabs"
    scale_fit: Literal["train", "train+test"] = "train"

    def validate(self, where: str) -> None:
        """Check values that can be judged without reading the files.

        Raises
        ------
        SpecError
            On an empty path or fewer than 2 classes.
        """
        for name in ("train_path", "test_path"):
            if not getattr(self, name).strip():
                raise SpecError(f"{where}.{name}" if where else name, getattr(self, name),
                                "a path to an NT3-format CSV file", reason="empty path")
        if self.cache_dir is not None and not self.cache_dir.strip():
            raise SpecError(f"{where}.cache_dir" if where else "cache_dir", self.cache_dir,
                            "a directory path, or leave it out", reason="empty path")
        check_range(where, "n_classes", self.n_classes, 2, 10_000)

    def n_features(self) -> int | None:
        """Unknown until the files are read (feature columns are then checked by the runner)."""
        return None


@dataclass(frozen=True)
class NT3Table:
    """One parsed NT3 file: features ``x`` (float32), labels ``y`` (int64) and provenance."""

    x: np.ndarray
    y: np.ndarray
    info: dict[str, Any]


@DATASETS.register("nt3_csv", params=NT3CsvParams, task="classification")
def load_nt3_csv(params: NT3CsvParams, seed: int | None = None) -> Dataset:
    """Load the NT3 train and test files as a raw (unscaled) classification dataset.

    Parameters
    ----------
    params
        Validated :class:`NT3CsvParams`.
    seed
        Ignored: the files are the same whatever the trial's seed. Accepted so the loader fits
        either data-source calling convention.

    Returns
    -------
    Dataset
        ``x_train``/``y_train`` from the train file, ``x_val``/``y_val`` from the test file,
        read-only (memory-mapped when cached); ``info`` records paths, sizes, modification
        times and the cache status of each file.

    Raises
    ------
    DataError
        If a file is missing, empty or malformed, or the two files disagree on feature count.
    """
    train = read_nt3_csv(params.train_path, cache_dir=params.cache_dir)
    test = read_nt3_csv(params.test_path, cache_dir=params.cache_dir)
    if train.x.shape[1] != test.x.shape[1]:
        raise DataError(
            f"{test.info['path']}: {test.x.shape[1]} feature columns, but the train file "
            f"{train.info['path']} has {train.x.shape[1]}; both files must describe the same genes")
    for table in (train, test):
        check_labels(table, params.n_classes)
    for table, split in ((train, "train"), (test, "test")):
        present = np.bincount(table.y, minlength=params.n_classes)
        if (present == 0).any():
            log.warning("%s file %s has no sample of class(es) %s", split, table.info["path"],
                        np.flatnonzero(present == 0).tolist())
    return Dataset(
        x_train=train.x, y_train=train.y, x_val=test.x, y_val=test.y,
        task="classification", n_classes=params.n_classes,
        info={"source": "nt3_csv", "train": train.info, "test": test.info,
              "validation_split": "test file (as CANDLE)"},
    )


def read_nt3_csv(path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
                 use_cache: bool = True) -> NT3Table:
    """Parse one NT3-format CSV file, through the binary cache.

    Labels are checked to be integers here; their range depends on ``n_classes`` and is
    checked by :func:`check_labels`.

    Raises
    ------
    DataError
        If the file is missing, not a regular file, empty or malformed (see the module doc).
    """
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise DataError(f"{source}: no such file (an NT3-format CSV file was expected)")
    if not source.is_file():
        raise DataError(f"{source}: not a regular file")
    result = load_or_build(source, lambda: _parse(source), tag=PARSER_TAG, cache_dir=cache_dir,
                           enabled=use_cache)
    x, y = result.arrays["x"], result.arrays["y"]
    st = source.stat()
    info = {"path": str(source), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "rows": int(x.shape[0]), "features": int(x.shape[1]), "cache": result.describe()}
    log.info("%s: %d rows x %d features (cache %s, %.2f s)", source, x.shape[0], x.shape[1],
             result.status, result.seconds)
    return NT3Table(x=x, y=y, info=info)


def check_labels(table: NT3Table, n_classes: int) -> None:
    """Raise a DataError at the first label outside ``range(n_classes)``.

    Raises
    ------
    DataError
        Naming the file, the row and the label.
    """
    bad = np.flatnonzero((table.y < 0) | (table.y >= n_classes))
    if bad.size:
        row = int(bad[0])
        raise DataError(f"{table.info['path']}: row {row + 1}, column 0: label {int(table.y[row])} "
                        f"is outside range(n_classes) = 0..{n_classes - 1} "
                        f"({bad.size} such rows; set data.n_classes if the file has more classes)")


def write_nt3_csv(path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray) -> None:
    """Write ``x`` and ``y`` in NT3 format (e.g. to hand synthetic data to CANDLE's code).

    Values are written with 9 significant digits, enough to read float32 back exactly.

    Raises
    ------
    ValueError
        If ``x`` is not 2-D or ``y`` has a different number of rows.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x [n, f] and y [n], got {x.shape} and {y.shape}")
    with open(path, "w", encoding="ascii") as fh:
        for label, row in zip(y, x):
            fh.write(f"{int(label)},")
            fh.write(",".join(f"{v:.9g}" for v in row.tolist()))
            fh.write("\n")


def _parse(source: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parse ``source`` into ``{"x": float32 [n, f], "y": int64 [n]}`` or raise a DataError."""
    if source.stat().st_size == 0:
        raise DataError(f"{source}: file is empty (expected rows of 'label,feature,...')")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            data = np.loadtxt(source, delimiter=",", dtype=np.float32, comments=None, ndmin=2,
                              encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(_locate_problem(source) or f"{source}: cannot parse as NT3 CSV: {err}") from None
    if data.shape[0] == 0:
        raise DataError(f"{source}: file is empty (no data rows)")
    if data.shape[1] < 2:
        raise DataError(f"{source}: rows have {data.shape[1]} field(s); expected the label in "
                        f"column 0 followed by at least one feature column")
    finite = np.isfinite(data)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise DataError(f"{source}: row {row + 1}, column {col}: value {data[row, col]} is not "
                        f"finite ({int((~finite).sum())} NaN/inf cells; missing values are not "
                        f"supported)")
    del finite
    labels = data[:, 0]
    fractional = np.flatnonzero(labels != np.round(labels))
    if fractional.size:
        row = int(fractional[0])
        raise DataError(f"{source}: row {row + 1}, column 0: label {labels[row]:g} is not an "
                        f"integer class index")
    y = labels.astype(np.int64)
    x = np.ascontiguousarray(data[:, 1:])
    del data
    return {"x": x, "y": y}, {"rows": int(x.shape[0]), "features": int(x.shape[1])}


def _locate_problem(source: Path) -> str | None:
    """Scan ``source`` line by line for the first malformed row or cell (error path only)."""
    first_fields = None
    first_row = 0
    row = 0
    try:
        with open(source, encoding="utf-8", newline="") as fh:
            for line in fh:
                text = line.rstrip("\r\n")
                if not text.strip():
                    continue
                row += 1
                fields = text.split(",")
                if first_fields is None:
                    first_fields, first_row = len(fields), row
                elif len(fields) != first_fields:
                    return (f"{source}: row {row} has {len(fields)} fields but row {first_row} "
                            f"has {first_fields}; every row needs the same number of columns")
                for col, cell in enumerate(fields):
                    problem = _cell_problem(cell)
                    if problem:
                        hint = (" (NT3 files have no header row)"
                                if row == 1 and problem == _NOT_A_NUMBER else "")
                        return f"{source}: row {row}, column {col}: {cell.strip()!r} {problem}{hint}"
    except UnicodeDecodeError as err:
        return f"{source}: row {row + 1}: not UTF-8/ASCII text ({err.reason})"
    return None


_NOT_A_NUMBER = "is not a number"


def _cell_problem(cell: str) -> str | None:
    text = cell.strip()
    if not text:
        return "is empty (missing values are not supported)"
    if "_" in text:  # Python's float() accepts digit separators; numpy's reader does not
        return _NOT_A_NUMBER
    try:
        value = float(text)
    except ValueError:
        return _NOT_A_NUMBER
    if not math.isfinite(value):
        return "is not finite (NaN/inf are not supported)"
    return None


__all__ = ["NT3CsvParams", "NT3Table", "load_nt3_csv", "read_nt3_csv", "check_labels",
           "write_nt3_csv", "PARSER_TAG"]
