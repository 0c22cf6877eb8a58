"""File-based D-GEX data sources: any expression matrix on disk, and the NCI60 cell lines.

``expression_matrix`` turns one samples x genes matrix (.npy/.npz/HDF5/GCTX, see
:mod:`genodl_core.data.matrices`) into a landmark -> target regression task: landmark and
target genes are chosen by id list files or by count, samples are split at random (seeded) or
by an explicit split file. ``nci60`` does the same for the NCI60 microarray matrix shipped in
the ISLP package (64 cell lines x 6,830 genes), the small real data set of the tests.

Both return unscaled arrays; the trial runner standardises them with statistics fitted on the
training split only (``scaling``/``scale_fit``).
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from genodl_core.data.matrices import (ArrayKeys, ExpressionMatrix, GeneOrder, GeneSelection,
                                       Layout, MatrixFormat, check_finite, check_numeric,
                                       positional_ids, read_id_list, read_matrix, select_genes)
from genodl_core.data.types import Dataset
from genodl_core.errors import DataError, SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import check_range

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# splitting and assembling
# --------------------------------------------------------------------------------------------

def random_split(n_samples: int, val_fraction: float, test_fraction: float, seed: int,
                 source: str = "matrix") -> dict[str, np.ndarray]:
    """Seeded random train/val/test row indices (each sorted; val never empty).

    Raises
    ------
    DataError
        If the fractions leave no training or no validation sample.
    """
    order = np.random.default_rng(seed).permutation(n_samples)
    n_val = max(1, int(round(val_fraction * n_samples)))
    n_test = int(round(test_fraction * n_samples))
    n_train = n_samples - n_val - n_test
    counts = f"train {n_train}, val {n_val}, test {n_test}"
    if n_train < 1:
        raise DataError(f"{source}: {n_samples} samples are too few for val_fraction="
                        f"{val_fraction} and test_fraction={test_fraction}: no training samples "
                        f"({counts})")
    if test_fraction > 0 and n_test == 0:
        # A trial would finish 'done' with test metrics of no rows at all.
        raise DataError(f"{source}: {n_samples} samples leave the 'test' split empty "
                        f"(test_fraction={test_fraction} of {n_samples} rounds to 0; {counts}); "
                        f"use more samples, a larger test_fraction, or test_fraction = 0 for "
                        f"no test split")
    return {"val": np.sort(order[:n_val]), "test": np.sort(order[n_val:n_val + n_test]),
            "train": np.sort(order[n_val + n_test:])}


def read_split_file(path: str | Path, sample_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Read an explicit split: one ``sample_id,split`` (or tab/space separated) pair per line.

    ``split`` is one of train/val/test. Samples of the matrix that the file does not list are
    left out of the trial. A first line ``sample_id,split`` is treated as a header.

    Raises
    ------
    DataError
        Naming the line for an unknown sample id, an unknown split name, a sample listed twice
        or a malformed line; and when no training or no validation sample is listed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such split file")
    position = {s: i for i, s in enumerate(np.asarray(sample_ids).tolist())}
    chosen: dict[str, list[int]] = {s: [] for s in SPLITS}
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = [f for f in re.split(r"[,\t ]+", text) if f]
        if len(fields) != 2:
            raise DataError(f"{path}: line {lineno}: expected 'sample_id,split', got {line!r}")
        sample, split = fields
        if lineno == 1 and split.lower() == "split" and sample not in position:
            continue
        if split not in SPLITS:
            raise DataError(f"{path}: line {lineno}: split {split!r} for sample {sample!r} is not "
                            f"one of {list(SPLITS)}")
        if sample not in position:
            raise DataError(f"{path}: line {lineno}: sample id {sample!r} is not in the matrix")
        if sample in seen:
            raise DataError(f"{path}: line {lineno}: sample {sample!r} is listed twice (first on "
                            f"line {seen[sample]})")
        seen[sample] = lineno
        chosen[split].append(position[sample])
    for required in ("train", "val"):
        if not chosen[required]:
            raise DataError(f"{path}: no sample is assigned to the {required!r} split")
    left_out = len(position) - len(seen)
    if left_out:
        log.info("split file %s leaves %d sample(s) of the matrix out", path, left_out)
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in chosen.items()}


def assemble(matrix: ExpressionMatrix, genes: GeneSelection, split: dict[str, np.ndarray],
             info: dict) -> Dataset:
    """Slice the matrix into a regression :class:`Dataset` (new float32 arrays)."""
    values = matrix.values

    def part(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values[np.ix_(rows, cols)], dtype=np.float32)

    has_test = split.get("test") is not None and len(split["test"]) > 0
    return Dataset(
        x_train=part(split["train"], genes.landmarks), y_train=part(split["train"], genes.targets),
        x_val=part(split["val"], genes.landmarks), y_val=part(split["val"], genes.targets),
        x_test=part(split["test"], genes.landmarks) if has_test else None,
        y_test=part(split["test"], genes.targets) if has_test else None,
        task="regression",
        feature_ids=matrix.gene_ids[genes.landmarks].astype(str),
        target_ids=matrix.gene_ids[genes.targets].astype(str),
        info={**info, "n_landmarks": int(genes.landmarks.size),
              "n_targets": int(genes.targets.size),
              **{f"n_{k}": int(len(v)) for k, v in split.items()}})


def _check_fractions(where: str, val_fraction: float, test_fraction: float) -> None:
    check_range(where, "val_fraction", val_fraction, 0, 1, lo_open=True, hi_open=True)
    check_range(where, "test_fraction", test_fraction, 0, 1, hi_open=True)
    if val_fraction + test_fraction >= 1:
        raise SpecError(f"{where}.test_fraction", test_fraction,
                        f"val_fraction + test_fraction < 1 (val_fraction={val_fraction})",
                        reason="no samples left for training")


# --------------------------------------------------------------------------------------------
# expression_matrix
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExpressionMatrixParams:
    """A landmark -> target task from one expression matrix file.

    Landmarks: ``landmark_ids`` (a file with one gene id per line, e.g. the 978 L1000
    landmarks) or ``n_landmarks`` (the first genes in ``gene_order``: file order, seeded
    random, or ranked by variance or mean over the training samples). Targets:
    ``target_ids``, ``n_targets``, or by default every gene that is not a landmark. Samples:
    ``split_file`` (``sample_id,split`` lines) or a random split by
    ``val_fraction``/``test_fraction`` with ``split_seed``. ``matrix_key``, ``ids_key`` and
    ``sample_ids_key`` name the arrays of an ``.npz``/HDF5/AnnData file (``"auto"``: detected).
    """

    path: str
    format: MatrixFormat = "auto"
    layout: Layout = "samples_by_genes"
    matrix_key: str = "auto"
    ids_key: str = "auto"
    sample_ids_key: str = "auto"
    landmark_ids: str | None = None
    n_landmarks: int | None = None
    target_ids: str | None = None
    n_targets: int | None = None
    gene_order: GeneOrder = "first"
    gene_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    split_file: str | None = None
    scaling: Literal["standard", "none"] = "standard"
    scale_fit: Literal["train"] = "train"

    def n_features(self) -> int | None:
        return self.n_landmarks if self.landmark_ids is None else None

    def validate(self, where: str) -> None:
        if (self.landmark_ids is None) == (self.n_landmarks is None):
            raise SpecError(f"{where}.n_landmarks", self.n_landmarks,
                            "exactly one of landmark_ids (an id list file) or n_landmarks",
                            reason=f"landmark_ids={self.landmark_ids!r} and n_landmarks "
                                   f"cannot both be set or both be missing")
        if self.target_ids is not None and self.n_targets is not None:
            raise SpecError(f"{where}.n_targets", self.n_targets,
                            "at most one of target_ids or n_targets",
                            reason=f"target_ids={self.target_ids!r} is set too")
        check_range(where, "n_landmarks", self.n_landmarks, 1)
        check_range(where, "n_targets", self.n_targets, 1)
        check_range(where, "gene_seed", self.gene_seed, 0)
        check_range(where, "split_seed", self.split_seed, 0)
        _check_fractions(where, self.val_fraction, self.test_fraction)
        for name in ("matrix_key", "ids_key", "sample_ids_key"):
            value = getattr(self, name)
            if not value.strip():
                raise SpecError(f"{where}.{name}", value, "\"auto\", \"none\" (ids only) or "
                                "the name of an array in the file", reason="empty name")
        if self.matrix_key == "none":
            raise SpecError(f"{where}.matrix_key", self.matrix_key,
                            "\"auto\" or the name of the matrix array",
                            reason="the matrix cannot be left out")

    def keys(self) -> ArrayKeys:
        """The array names to read, as :func:`~genodl_core.data.matrices.read_matrix` takes them."""
        return ArrayKeys(self.matrix_key, self.ids_key, self.sample_ids_key)


def gene_choice(order: str, split: dict[str, np.ndarray]) -> dict:
    """What the dataset's ``info`` records about how genes chosen by count were ordered."""
    facts: dict = {"order": order}
    if order in ("most_variable", "highest_mean"):
        facts.update(computed_on="train", n_rows=int(len(split["train"])))
    return facts


def load_expression_task(p: ExpressionMatrixParams) -> Dataset:
    """Read the matrix, choose genes and samples, and return the unscaled dataset.

    Raises
    ------
    DataError
        For unreadable files, non-finite values, unknown or overlapping gene ids, counts larger
        than the matrix, and bad split files (each naming the file and the position).
    """
    matrix = read_matrix(p.path, p.format, p.layout, p.keys())
    # Samples are split first: a data-driven gene order ranks genes on training samples only.
    if p.split_file:
        split = read_split_file(p.split_file, matrix.sample_ids)
    else:
        split = random_split(matrix.n_samples, p.val_fraction, p.test_fraction, p.split_seed,
                             p.path)
    genes = select_genes(
        matrix,
        landmark_ids=read_id_list(p.landmark_ids) if p.landmark_ids else None,
        n_landmarks=p.n_landmarks,
        target_ids=read_id_list(p.target_ids) if p.target_ids else None,
        n_targets=p.n_targets, order=p.gene_order, seed=p.gene_seed,
        landmark_source=p.landmark_ids or "n_landmarks",
        target_source=p.target_ids or "n_targets", train_rows=split["train"])
    return assemble(matrix, genes, split, {"source": "expression_matrix", "path": p.path,
                                           "arrays": matrix.keys,
                                           "gene_choice": gene_choice(p.gene_order, split)})


@DATASETS.register("expression_matrix", params=ExpressionMatrixParams, task="regression")
def expression_matrix(params: ExpressionMatrixParams, seed: int | None = None) -> Dataset:
    """Registered entry point of the ``expression_matrix`` source (``seed`` is unused)."""
    return load_expression_task(params)


# --------------------------------------------------------------------------------------------
# nci60
# --------------------------------------------------------------------------------------------

NCI60_MEMBER = "ISLP/data/NCI60data.npy"


@dataclass(frozen=True)
class NCI60Params:
    """The NCI60 matrix (64 cell lines x 6,830 genes) as a D-GEX-style task.

    ``path`` may be ``NCI60data.npy`` itself, an ISLP wheel (``.whl``), or a directory holding
    either; unset, the installed ISLP package is used. Genes have positional ids (``"0"`` ..
    ``"6829"``), as the file carries no gene names.
    """

    path: str | None = None
    n_landmarks: int = 200
    n_targets: int | None = 1000
    gene_order: GeneOrder = "random"
    gene_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    scaling: Literal["standard", "none"] = "standard"
    scale_fit: Literal["train"] = "train"

    def n_features(self) -> int:
        return self.n_landmarks

    def validate(self, where: str) -> None:
        check_range(where, "n_landmarks", self.n_landmarks, 1, 6829)
        check_range(where, "n_targets", self.n_targets, 1)
        check_range(where, "gene_seed", self.gene_seed, 0)
        check_range(where, "split_seed", self.split_seed, 0)
        _check_fractions(where, self.val_fraction, self.test_fraction)


def locate_nci60(path: str | Path | None = None) -> Path:
    """Find ``NCI60data.npy`` or an ISLP wheel holding it.

    Raises
    ------
    DataError
        If ``path`` holds neither, or (without ``path``) ISLP is not installed; the message
        says how to obtain the file.
    """
    hint = ("get it with `pip download --no-deps ISLP -d DIR` and pass DIR (or the .whl) as "
            "data.path, or `pip install ISLP`")
    if path is None:
        try:
            from importlib.resources import files
            candidate = files("ISLP") / "data" / "NCI60data.npy"
        except ModuleNotFoundError:
            raise DataError(f"the NCI60 matrix needs the ISLP package or data.path; "
                            f"{hint}") from None
        if not candidate.is_file():
            raise DataError(f"the installed ISLP package has no data/NCI60data.npy; {hint}")
        return Path(str(candidate))
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("NCI60data.npy")) + sorted(path.glob("[Ii][Ss][Ll][Pp]-*.whl"))
        if not found:
            raise DataError(f"{path}: holds neither NCI60data.npy nor an ISLP wheel; {hint}")
        return found[-1]
    if not path.is_file():
        raise DataError(f"{path}: no such file; {hint}")
    return path


def read_nci60(path: str | Path | None = None) -> ExpressionMatrix:
    """The NCI60 matrix with positional gene and sample ids (from a .npy or an ISLP wheel).

    Raises
    ------
    DataError
        If the file cannot be found or read, or is not the expected 2-D finite matrix.
    """
    found = locate_nci60(path)
    try:
        if found.suffix == ".whl":
            with zipfile.ZipFile(found) as wheel:
                values = np.load(io.BytesIO(wheel.read(NCI60_MEMBER)), allow_pickle=False)
            source = f"{found}!{NCI60_MEMBER}"
        else:
            values = np.load(found, allow_pickle=False)
            source = str(found)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{found}: cannot read the NCI60 matrix ({err})") from None
    if values.ndim != 2:
        raise DataError(f"{source}: expected a 2-D cell line x gene matrix, got {values.shape}")
    check_numeric(values, source)
    values = values.astype(np.float32)
    gene_ids = positional_ids(values.shape[1])
    sample_ids = np.array([f"cell{i:02d}" for i in range(values.shape[0])])
    check_finite(values, source, row_ids=sample_ids, col_ids=gene_ids)
    return ExpressionMatrix(values, gene_ids, sample_ids, source)


@DATASETS.register("nci60", params=NCI60Params, task="regression")
def nci60(params: NCI60Params, seed: int | None = None) -> Dataset:
    """Registered entry point of the ``nci60`` source (``seed`` is unused)."""
    matrix = read_nci60(params.path)
    split = random_split(matrix.n_samples, params.val_fraction, params.test_fraction,
                         params.split_seed, matrix.source)
    genes = select_genes(matrix, n_landmarks=params.n_landmarks, n_targets=params.n_targets,
                         order=params.gene_order, seed=params.gene_seed,
                         train_rows=split["train"])
    return assemble(matrix, genes, split, {"source": "nci60", "path": matrix.source,
                                           "gene_choice": gene_choice(params.gene_order, split)})


__all__ = ["ExpressionMatrixParams", "NCI60Params", "load_expression_task", "gene_choice",
           "random_split",
           "read_split_file", "assemble", "locate_nci60", "read_nci60"]
