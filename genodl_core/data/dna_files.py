"""DNA sequences and multi-label targets from files: the ``dna_files`` data source.

Formats (``format = "auto"`` decides by the file name):

- ``npz`` (``.npz``) and ``hdf5`` (``.h5``, ``.hdf5``): arrays ``x`` (sequences: integer codes
  ``[n, L]`` with A=0, C=1, G=2, T=3, N=4, or one-hot ``[n, L, 4]`` / ``[n, 4, L]``), ``y``
  (0/1 targets ``[n, T]``) and optionally ``target_names`` (``[T]`` strings);
- ``npy_dir`` (a directory): ``x.npy`` (uint8 codes ``[n, L]``), ``y.npy`` and optionally
  ``target_names.npy``, **memory-mapped**: nothing is read until a batch needs it, so sets larger
  than memory train by streaming (the model's ``resident = "no"``, or ``"auto"`` on a GPU
  without room). :func:`write_npy_dir` writes one, e.g. from DeepSEA's ``train.mat`` once;
- ``deepsea_mat`` (``.mat``): DeepSEA's files. ``train.mat`` is MATLAB v7.3 (HDF5) with
  ``trainxdata`` ``[L, 4, n]`` and ``traindata`` ``[T, n]`` as stored; ``valid.mat`` /
  ``test.mat`` are MATLAB v5 (``validxdata`` ``[n, 4, L]``, ``validdata`` ``[n, T]``), read with
  ``scipy.io.loadmat`` (extra ``dna``). One-hot becomes codes in blocks of rows;
- ``fasta`` (``.fa``, ``.fasta``): sequences, with the targets in a tab-separated table of the
  same name and suffix ``.tsv``: a header ``name<TAB>target1<TAB>...`` and one 0/1 row per
  sequence name (every sequence needs a row).

Every split must have the same sequence length and the same targets (count and names).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genodl_core.data.dna_codes import check_codes, encode, from_one_hot
from genodl_core.data.types import Dataset
from genodl_core.errors import DataError, SpecError
from genodl_core.registry import DATASETS

Format = Literal["auto", "npz", "hdf5", "npy_dir", "deepsea_mat", "fasta"]
#: Rows converted from one-hot at a time (bounds the temporaries of DeepSEA's 4.4 M rows).
BLOCK_ROWS = 65536

_SUFFIX = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".mat": "deepsea_mat",
           ".fa": "fasta", ".fasta": "fasta", ".fna": "fasta"}


@dataclass(frozen=True)
class DNAFilesParams:
    """Paths of the splits (``test`` optional) and their format (see the module docstring)."""

    train: str = ""
    val: str = ""
    test: str = ""
    format: Format = "auto"

    def validate(self, where: str) -> None:
        for name in ("train", "val"):
            if not getattr(self, name):
                raise SpecError(f"{where}.{name}", "", "a path to a sequence file",
                                reason="missing required path")


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray
    names: list[str] | None


def format_of(path: str, fmt: str) -> str:
    """The format of ``path``: ``fmt`` itself, or for ``"auto"`` the one its name says."""
    if fmt != "auto":
        return fmt
    if os.path.isdir(path):
        return "npy_dir"
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX:
        raise DataError(f"{path}: cannot tell the format from the suffix {suffix!r}; allowed "
                        f"suffixes {sorted(_SUFFIX)} or a directory, or set data.format")
    return _SUFFIX[suffix]


def _sequences(x: np.ndarray, where: str) -> np.ndarray:
    """Integer codes ``[n, L]`` from codes or one-hot in either layout."""
    if x.ndim == 2:
        if not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"{where}: 2-D sequences must be integer codes 0..4, got dtype "
                            f"{x.dtype}")
        check_codes(x, where)
        return x.astype(np.uint8, copy=False)
    if x.ndim == 3:
        layout = "NCL" if x.shape[1] == 4 else "NLC"
        out = np.empty((x.shape[0], x.shape[2] if layout == "NCL" else x.shape[1]), np.uint8)
        for lo in range(0, len(x), BLOCK_ROWS):
            out[lo:lo + BLOCK_ROWS] = from_one_hot(np.asarray(x[lo:lo + BLOCK_ROWS]), layout,
                                                   where)
        return out
    raise DataError(f"{where}: sequences must be codes [n, L] or one-hot [n, L, 4] / "
                    f"[n, 4, L], got shape {x.shape}")


def _targets(y: np.ndarray, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 2 or len(y) != n:
        raise DataError(f"{where}: targets must be [n={n}, T], got shape {y.shape}")
    bad = np.argwhere((y != 0) & (y != 1))
    if bad.size:
        r, t = (int(v) for v in bad[0])
        raise DataError(f"{where}: target row {r}, column {t} is {y[r, t]!r}; allowed 0 or 1")
    return y.astype(np.uint8, copy=False)


def _names(values: Any) -> list[str] | None:
    if values is None:
        return None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def read_arrays(path: str, fmt: str) -> Split:
    """One split from an ``npz``, ``hdf5`` or ``npy_dir`` source."""
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as f:
            _require(f.files, path)
            x, y = f["x"], f["y"]
            names = f["target_names"] if "target_names" in f.files else None
    elif fmt == "hdf5":
        import h5py

        with h5py.File(path, "r") as f:
            _require(list(f.keys()), path)
            x, y = f["x"][...], f["y"][...]
            names = f["target_names"][...] if "target_names" in f else None
    else:  # npy_dir: memory-mapped
        files = os.listdir(path)
        _require([f[:-4] for f in files if f.endswith(".npy")], path)
        x = np.load(os.path.join(path, "x.npy"), mmap_mode="r")
        y = np.load(os.path.join(path, "y.npy"), mmap_mode="r")
        names_path = os.path.join(path, "target_names.npy")
        names = np.load(names_path) if os.path.exists(names_path) else None
        if x.ndim != 2 or x.dtype != np.uint8:
            raise DataError(f"{path}/x.npy: a memory-mapped split holds uint8 codes [n, L], "
                            f"got {x.dtype} {x.shape}; convert it with write_npy_dir")
        return Split(x, _targets_mapped(y, len(x), f"{path}/y.npy"), _names(names))
    return Split(_sequences(x, path), _targets(y, len(x), path), _names(names))


def _targets_mapped(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Shape and dtype checks only: reading every value would defeat the memory map."""
    if y.ndim != 2 or len(y) != n or y.dtype != np.uint8:
        raise DataError(f"{where}: targets must be uint8 [n={n}, T], got {y.dtype} {y.shape}")
    return y


def _require(keys: list[str], path: str) -> None:
    missing = [k for k in ("x", "y") if k not in keys]
    if missing:
        raise DataError(f"{path}: no array {missing[0]!r}; found {sorted(keys)}; expected 'x' "
                        "(sequences), 'y' (targets) and optionally 'target_names'")


def read_deepsea_mat(path: str) -> Split:
    """A DeepSEA ``.mat`` file: v7.3/HDF5 (``train.mat``) or v5 (``valid.mat``, ``test.mat``)."""
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            xkey, ykey = _mat_keys(list(f.keys()), path)
            xd, yd = f[xkey], f[ykey]
            if xd.ndim != 3 or xd.shape[1] != 4:
                raise DataError(f"{path}: {xkey} has shape {xd.shape}; expected [L, 4, n] as "
                                "MATLAB v7.3 stores DeepSEA's one-hot sequences")
            n = xd.shape[2]
            codes = np.empty((n, xd.shape[0]), dtype=np.uint8)
            for lo in range(0, n, BLOCK_ROWS):
                block = np.asarray(xd[:, :, lo:lo + BLOCK_ROWS]).transpose(2, 1, 0)
                codes[lo:lo + len(block)] = from_one_hot(block, "NCL", path)
            y = np.asarray(yd[...]).T
        return Split(codes, _targets(y, n, path), None)
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{path}: MATLAB v5 files need scipy (pip install 'genodl[dna]'); "
                        "allowed without it: npz, hdf5, npy_dir or fasta files") from None
    mat = loadmat(path)
    xkey, ykey = _mat_keys([k for k in mat if not k.startswith("__")], path)
    x = mat[xkey]
    return Split(_sequences(x, path), _targets(mat[ykey], len(x), path), None)


def _mat_keys(keys: list[str], path: str) -> tuple[str, str]:
    for x in keys:
        if x.endswith("xdata"):
            y = x[:-5] + "data"
            if y in keys:
                return x, y
    raise DataError(f"{path}: no DeepSEA arrays (<split>xdata and <split>data, e.g. trainxdata "
                    f"and traindata); found {sorted(keys)}")


def read_fasta(path: str) -> Split:
    """Sequences of a FASTA file and their targets from ``<same name>.tsv``."""
    names, seqs, current = [], [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                if names:
                    seqs.append("".join(current))
                names.append(line[1:].split()[0])
                current = []
            elif line:
                if not names:
                    raise DataError(f"{path}: sequence text before the first '>' header")
                current.append(line)
    if names:
        seqs.append("".join(current))
    if not seqs:
        raise DataError(f"{path}: no FASTA records")
    codes = encode(seqs, where=path)
    table = str(Path(path).with_suffix(".tsv"))
    if not os.path.isfile(table):
        raise DataError(f"{path}: its target table {table} does not exist; expected a TSV with "
                        "a header 'name<TAB>target...' and one 0/1 row per sequence")
    with open(table) as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = {}
        for i, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise DataError(f"{table}, line {i}: {len(parts)} fields, the header has "
                                f"{len(header)}")
            rows[parts[0]] = parts[1:]
    missing = [n for n in names if n not in rows]
    if missing:
        raise DataError(f"{table}: no target row for sequence {missing[0]!r} "
                        f"({len(missing)} sequences without one)")
    try:
        y = np.array([[int(v) for v in rows[n]] for n in names])
    except ValueError as err:
        raise DataError(f"{table}: targets must be 0 or 1 ({err})") from None
    return Split(codes, _targets(y, len(codes), table), header[1:])


def read_split(path: str, fmt: str) -> Split:
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    fmt = format_of(path, fmt)
    if fmt == "deepsea_mat":
        return read_deepsea_mat(path)
    if fmt == "fasta":
        return read_fasta(path)
    return read_arrays(path, fmt)


def load_dna_files(params: DNAFilesParams) -> Dataset:
    """Read every split and check that they agree (length, target count and names).

    Raises
    ------
    DataError
        A bad letter or code, a wrong shape, or splits that disagree (naming both files).
    """
    paths = {"train": params.train, "val": params.val}
    if params.test:
        paths["test"] = params.test
    splits = {name: read_split(path, params.format) for name, path in paths.items()}
    first = splits["train"]
    for name, split in splits.items():
        if split.x.shape[1] != first.x.shape[1]:
            raise DataError(f"{paths[name]}: sequences are {split.x.shape[1]} long, those of "
                            f"{paths['train']} {first.x.shape[1]}; every split needs one length")
        if split.y.shape[1] != first.y.shape[1]:
            raise DataError(f"{paths[name]}: {split.y.shape[1]} targets, {paths['train']} has "
                            f"{first.y.shape[1]}; every split needs the same targets")
        if split.names and first.names and split.names != first.names:
            col = next(i for i, (a, b) in enumerate(zip(split.names, first.names)) if a != b)
            raise DataError(f"{paths[name]}: target {col} is {split.names[col]!r}, in "
                            f"{paths['train']} {first.names[col]!r}; every split needs the "
                            "same targets in the same order")
    names = next((s.names for s in splits.values() if s.names), None)
    test = splits.get("test")
    return Dataset(x_train=first.x, y_train=first.y, x_val=splits["val"].x,
                   y_val=splits["val"].y, task="multilabel",
                   x_test=None if test is None else test.x,
                   y_test=None if test is None else test.y,
                   target_ids=None if names is None else np.array(names),
                   info={"paths": paths, "format": params.format,
                         "memory_mapped": isinstance(first.x, np.memmap)})


def write_npy_dir(path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray,
                  target_names: list[str] | None = None) -> None:
    """Write a split as an ``npy_dir`` (codes and targets as uint8) for memory-mapped reading."""
    os.makedirs(path, exist_ok=True)
    np.save(os.path.join(path, "x.npy"), _sequences(np.asarray(x), str(path)))
    np.save(os.path.join(path, "y.npy"), _targets(np.asarray(y), len(x), str(path)))
    if target_names is not None:
        np.save(os.path.join(path, "target_names.npy"), np.array(target_names))


@DATASETS.register("dna_files", params=DNAFilesParams, task="multilabel")
def dna_files(params: DNAFilesParams, seed: int | None = None) -> Dataset:
    """Registered entry point of the ``dna_files`` data source."""
    return load_dna_files(params)


__all__ = ["DNAFilesParams", "load_dna_files", "read_split", "read_deepsea_mat", "read_fasta",
           "write_npy_dir", "format_of"]
