"""The dna_files source: npz/HDF5/npy_dir/FASTA/DeepSEA .mat readers and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.dna_codes import decode
from genodl_core.data.dna_files import (DNAFilesParams, load_dna_files, read_deepsea_mat,
                                        write_npy_dir)
from genodl_core.errors import DataError

RNG = np.random.default_rng(0)
CODES = RNG.integers(0, 4, size=(12, 30), dtype=np.uint8)
Y = (RNG.random((12, 3)) < 0.3).astype(np.uint8)
NAMES = ["tf_a", "dnase_b", "histone_c"]


def _npz(path, x=CODES, y=Y, names=NAMES):
    np.savez(path, x=x, y=y, target_names=np.array(names))
    return str(path)


def test_npz_codes_and_one_hot_layouts_agree(tmp_path):
    onehot_nlc = np.eye(4, dtype=np.float32)[CODES]
    onehot_ncl = onehot_nlc.transpose(0, 2, 1)
    ds = load_dna_files(DNAFilesParams(train=_npz(tmp_path / "a.npz"),
                                       val=_npz(tmp_path / "b.npz", x=onehot_nlc),
                                       test=_npz(tmp_path / "c.npz", x=onehot_ncl)))
    np.testing.assert_array_equal(ds.x_val, CODES)
    np.testing.assert_array_equal(ds.x_test, CODES)
    assert ds.task == "multilabel" and list(ds.target_ids) == NAMES


def test_hdf5_split(tmp_path):
    h5py = pytest.importorskip("h5py", reason="HDF5 files need h5py")
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = CODES, Y
    ds = load_dna_files(DNAFilesParams(train=str(path), val=str(path)))
    np.testing.assert_array_equal(ds.y_train, Y)


def test_npy_dir_is_memory_mapped(tmp_path):
    write_npy_dir(tmp_path / "train", np.eye(4)[CODES], Y, NAMES)
    ds = load_dna_files(DNAFilesParams(train=str(tmp_path / "train"),
                                       val=_npz(tmp_path / "v.npz")))
    assert isinstance(ds.x_train, np.memmap) and ds.info["memory_mapped"]
    np.testing.assert_array_equal(np.asarray(ds.x_train), CODES)


def test_fasta_with_target_table(tmp_path):
    seqs = decode(CODES[:3])
    (tmp_path / "s.fa").write_text("".join(f">s{i} note\n{s[:15]}\n{s[15:]}\n"
                                           for i, s in enumerate(seqs)))
    rows = ["name\t" + "\t".join(NAMES)] + [f"s{i}\t" + "\t".join(map(str, Y[i]))
                                            for i in (2, 0, 1)]
    (tmp_path / "s.tsv").write_text("\n".join(rows) + "\n")
    ds = load_dna_files(DNAFilesParams(train=str(tmp_path / "s.fa"),
                                       val=str(tmp_path / "s.fa")))
    np.testing.assert_array_equal(ds.x_train, CODES[:3])
    np.testing.assert_array_equal(ds.y_train, Y[:3])


def test_deepsea_train_mat_layout(tmp_path):
    h5py = pytest.importorskip("h5py", reason="train.mat is HDF5")
    path = tmp_path / "train.mat"
    onehot = np.eye(4, dtype=np.uint8)[CODES]                      # [n, L, 4]
    with h5py.File(path, "w") as f:
        f["trainxdata"] = onehot.transpose(1, 2, 0)                # [L, 4, n] as stored
        f["traindata"] = Y.T                                       # [T, n]
    split = read_deepsea_mat(str(path))
    np.testing.assert_array_equal(split.x, CODES)
    np.testing.assert_array_equal(split.y, Y)


def test_deepsea_v5_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="MATLAB v5 files need scipy")
    path = tmp_path / "valid.mat"
    scipy_io.savemat(path, {"validxdata": np.eye(4, dtype=np.uint8)[CODES].transpose(0, 2, 1),
                            "validdata": Y})
    split = read_deepsea_mat(str(path))
    np.testing.assert_array_equal(split.x, CODES)


def test_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.fa").write_text(">s0\nACGTXACGT\n")
    (tmp_path / "bad.tsv").write_text("name\tt\ns0\t1\n")
    with pytest.raises(DataError, match=r"position 4: letter 'X'"):
        load_dna_files(DNAFilesParams(train=str(tmp_path / "bad.fa"), val=str(tmp_path / "bad.fa")))
    short = _npz(tmp_path / "short.npz", x=CODES[:, :20])
    with pytest.raises(DataError, match="20 long"):
        load_dna_files(DNAFilesParams(train=_npz(tmp_path / "a.npz"), val=short))
    fewer = _npz(tmp_path / "fewer.npz", y=Y[:, :2], names=NAMES[:2])
    with pytest.raises(DataError, match="2 targets"):
        load_dna_files(DNAFilesParams(train=_npz(tmp_path / "a.npz"), val=fewer))
    bad_codes = CODES.copy()
    bad_codes[1, 2] = 7
    with pytest.raises(DataError, match="row 1, position 2 has code 7"):
        load_dna_files(DNAFilesParams(train=_npz(tmp_path / "c.npz", x=bad_codes),
                                      val=_npz(tmp_path / "a.npz")))
    with pytest.raises(DataError, match="allowed suffixes"):
        load_dna_files(DNAFilesParams(train=str(tmp_path / "bad.tsv"), val="x"))


def test_trial_streams_a_memory_mapped_training_split(tmp_path):
    from genodl_core.data.loading import clear_cache
    from genodl_core.training.trial import run_trial

    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(64, 40), dtype=np.uint8)
    y = (rng.random((64, 2)) < 0.3).astype(np.uint8)
    write_npy_dir(tmp_path / "train", x, y, ["t0", "t1"])
    val = _npz(tmp_path / "v.npz", x=x[:16], y=y[:16], names=["t0", "t1"])
    spec = {"model": {"name": "deepsea", "conv": [4, 4, 4], "kernel": 3, "pool": 2,
                      "dense": 4, "resident": "auto"},
            "data": {"source": "dna_files", "train": str(tmp_path / "train"), "val": val,
                     "test": val},
            "train": {"epochs": 1, "batch_size": 16}}
    result = run_trial(spec, tmp_path / "runs", raise_errors=True)
    clear_cache()
    assert result.ok and result.final["val_defined_targets"] == 2
