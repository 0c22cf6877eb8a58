"""Data checks run before a sweep is queued (``genodl plan``, ``genodl submit``).

A missing CSV or a ``feature_col`` beyond the data's width would otherwise be found only on a
compute node, after the job waited in the queue. These checks read only what is cheap: file
existence, the first line of an NT3 CSV (its width) and the label column of its first rows, the
header of a ``.npy`` array (its shape), the shapes and id arrays of ``.npz``/HDF5 files (never the
matrix itself), and gene id list files. Anything they cannot judge cheaply is left to the trial.

There is one function per data source, dispatched by the source's name (:data:`CHECKS`); each
returns a list of :class:`Problem` (empty when the data look usable), so that every problem of
a sweep is reported at once.
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from genodl_core.errors import GenodlError, SpecError

#: NT3 CSV rows whose first column (the label) is checked: enough to catch a label column that
#: is not one, few enough to stay cheap on the 500 MB real file.
LABEL_ROWS = 20


@dataclass(frozen=True)
class Problem:
    """One data problem: the file (or data parameter) it is in, what is wrong, what would do."""

    file: str
    what: str
    expected: str

    def __str__(self) -> str:
        return f"{self.file}: {self.what} (expected: {self.expected})"


# --- cheap reads ---------------------------------------------------------------------------------

def _missing(path: str | None, kind: str) -> list[Problem]:
    """A problem when ``path`` is not an existing regular file."""
    if path is None:
        return []
    p = Path(path).expanduser()
    if not p.exists():
        return [Problem(str(path), "no such file", kind)]
    if not p.is_file():
        return [Problem(str(path), "not a regular file", kind)]
    return []


def nt3_csv_head(path: str, rows: int = LABEL_ROWS) -> tuple[int, list[str]]:
    """The feature count (fields of the first line minus the label) and the first fields of
    the first ``rows`` non-blank lines; only those lines are read."""
    labels: list[str] = []
    width = -1
    with open(Path(path).expanduser(), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            if width < 0:
                width = line.count(",")
            labels.append(line.split(",", 1)[0].strip())
            if len(labels) >= rows:
                break
    return width, labels


@functools.lru_cache(maxsize=64)
def _cached_head(path: str, size: int, mtime_ns: int) -> tuple[int, tuple[str, ...]]:
    width, labels = nt3_csv_head(path)
    return width, tuple(labels)


def csv_head_once(path: str) -> tuple[int, tuple[str, ...]]:
    """:func:`nt3_csv_head`, read once per file version: the trials of a noise sweep differ in
    noise settings only, and the first line of a real NT3 file is 60,000 fields long."""
    st = os.stat(Path(path).expanduser())
    return _cached_head(str(Path(path).expanduser().resolve()), st.st_size, st.st_mtime_ns)


def _bad_labels(labels: Iterable[str], n_classes: int) -> list[str]:
    """The labels among ``labels`` that are not integers in ``range(n_classes)``."""
    bad = []
    for text in labels:
        try:
            value = float(text)
        except ValueError:
            bad.append(text)
            continue
        if not value.is_integer() or not 0 <= value < n_classes:
            bad.append(text)
    return bad


def npy_shape(path: str | Path) -> tuple[int, ...]:
    """The shape in a ``.npy`` file's header (the array is not read)."""
    with open(path, "rb") as fh:
        return _npy_header_shape(fh)


def _npy_header_shape(fh) -> tuple[int, ...]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    return tuple(shape)


def _str_ids(raw: Any) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(raw).ravel()]


# --- width-dependent checks of the model and the noise -------------------------------------------

def _width_problems(spec, width: int, file: str) -> list[Problem]:
    """The model's conv/pool stack and the noise's feature columns against ``width``."""
    problems = []
    if spec.model.name == "nt3":
        from genodl_core.models.nt3 import nt3_widths

        try:
            nt3_widths(spec.model.params, width)
        except SpecError as err:
            problems.append(Problem(file, f"{width} feature columns are too few for "
                                          f"{err.field}={err.value!r}", str(err.allowed)))
    try:
        spec.check_data(width)
    except SpecError as err:
        problems.append(Problem(file, f"{err.field}={err.value!r} with {width} feature columns",
                                str(err.allowed)))
    return problems


# --- one check per source ------------------------------------------------------------------------

def check_nt3_csv(spec) -> list[Problem]:
    """Both files exist, have the same width, which fits the model and the noise, and the
    first rows' labels are classes ``0 .. n_classes-1``."""
    p = spec.data.params
    problems = (_missing(p.train_path, "an NT3-format CSV file (data.train_path)")
                + _missing(p.test_path, "an NT3-format CSV file (data.test_path)"))
    if problems:
        return problems
    widths = {}
    for path in (p.train_path, p.test_path):
        width, labels = csv_head_once(path)
        if width < 1:
            problems.append(Problem(path, "no feature columns (empty file or no commas)",
                                    "a label column then one column per gene"))
            continue
        widths[path] = width
        bad = _bad_labels(labels, p.n_classes)
        if bad:
            problems.append(Problem(path, f"labels {bad[:5]} in column 0 of the first "
                                          f"{len(labels)} rows",
                                    f"integers 0..{p.n_classes - 1} (data.n_classes = "
                                    f"{p.n_classes})"))
    if len(set(widths.values())) > 1:
        problems.append(Problem(p.test_path, f"{widths[p.test_path]} feature columns",
                                f"{widths[p.train_path]}, as in the train file {p.train_path}"))
    if p.train_path in widths:
        problems += _width_problems(spec, widths[p.train_path], p.train_path)
    return problems


def _matrix_genes(params) -> tuple[int | None, list[str] | None, list[Problem]]:
    """The gene count and gene ids of an ``expression_matrix`` source's file, from headers and
    id arrays only (:func:`~genodl_core.data.matrices.inspect_matrix`, which applies the
    source's ``matrix_key`` / ``ids_key`` / ``sample_ids_key``); ids are ``None`` when the file
    stores none (positional ids are then used). A missing or ambiguous array is a problem whose
    text lists the arrays the file holds."""
    from genodl_core.data.matrices import inspect_matrix

    try:
        header = inspect_matrix(params.path, params.format, params.layout, params.keys())
    except GenodlError as err:
        text = str(err)
        prefix = f"{params.path}: "
        return None, None, [Problem(params.path, text[len(prefix):] if text.startswith(prefix)
                                    else text, "a matrix the data parameters name "
                                               "(matrix_key, ids_key, sample_ids_key)")]
    ids = _str_ids(header.gene_ids) if header.gene_ids is not None else None
    return header.n_genes, ids, []


def _id_list_problems(id_file: str | None, genes: list[str] | None, n_genes: int | None,
                      what: str, matrix: str) -> list[Problem]:
    """An id list file exists, is readable, and names genes of the matrix."""
    from genodl_core.data.matrices import positional_ids, read_id_list

    if id_file is None:
        return []
    missing = _missing(id_file, f"a {what} id list, one id a line")
    if missing:
        return missing
    try:
        ids = read_id_list(id_file)
    except GenodlError as err:
        return [Problem(id_file, str(err), f"a {what} id list, one id a line")]
    if n_genes is None:
        return []
    known = set(genes) if genes is not None else set(_str_ids(positional_ids(n_genes)))
    unknown = [i for i in ids if i not in known]
    if unknown:
        return [Problem(id_file, f"{len(unknown)} {what} ids not in the matrix, e.g. "
                                 f"{unknown[:3]}", f"gene ids of {matrix}")]
    return []


def check_expression_matrix(spec) -> list[Problem]:
    """The matrix and the id/split files exist; the gene counts fit; listed ids are genes of
    the matrix."""
    p = spec.data.params
    problems = _missing(p.split_file, "a split file (data.split_file)")
    n_genes, genes = None, None
    matrix_missing = _missing(p.path, "an expression matrix (.npy, .npz, .h5, .h5ad, .gctx)")
    if matrix_missing:
        problems += matrix_missing
    else:
        try:
            n_genes, genes, found = _matrix_genes(p)
        except (OSError, ValueError, zipfile.BadZipFile, GenodlError) as err:
            found = [Problem(p.path, f"unreadable header ({err})", "a complete matrix file")]
        problems += found
    problems += _id_list_problems(p.landmark_ids, genes, n_genes, "landmark", p.path)
    problems += _id_list_problems(p.target_ids, genes, n_genes, "target", p.path)
    wanted = (p.n_landmarks or 0) + (p.n_targets or 0)
    if n_genes is not None and wanted > n_genes:
        problems.append(Problem(p.path, f"{n_genes} genes for n_landmarks + n_targets = {wanted}",
                                f"at most {n_genes} landmarks and targets together"))
    return problems


def check_nci60(spec) -> list[Problem]:
    """An explicit ``path`` exists (without one the installed ISLP package is used)."""
    p = spec.data.params
    if p.path is None or Path(p.path).expanduser().is_dir():
        return []
    return _missing(p.path, "NCI60data.npy, an ISLP wheel or a directory holding one")


#: The check of each data source that reads files; generated sources need none.
CHECKS: dict[str, Callable[[Any], list[Problem]]] = {
    "nt3_csv": check_nt3_csv,
    "expression_matrix": check_expression_matrix,
    "nci60": check_nci60,
}


def check_trial(spec) -> list[Problem]:
    """The problems of one resolved trial's data (a :class:`~genodl_core.spec.TrialSpec`)."""
    check = CHECKS.get(spec.data.name)
    return check(spec) if check is not None else []


def check_specs(specs: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """Every problem of the trials' data, each reported once.

    Trials that share data, model and noise settings (seeds, repeats) are checked once, so
    a sweep of thousands of trials reads each header only a few times.
    """
    from genodl_core.spec import spec_from_dict

    seen: set[str] = set()
    problems: list[Problem] = []
    for raw in specs:
        key = json.dumps({k: raw.get(k) for k in ("data", "model", "noise")}, sort_keys=True,
                         default=str)
        if key in seen:
            continue
        seen.add(key)
        for problem in check_trial(spec_from_dict(raw)):
            if problem not in problems:
                problems.append(problem)
    return problems
