"""Expression matrix files: npy/npz/HDF5/GCTX reading and writing, gene selection, bad inputs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from genodl_core.data.matrices import (GCTX_MISSING, ExpressionMatrix, read_gctx, read_id_list,
                                       read_matrix, select_genes, write_gctx, write_hdf5,
                                       write_npz)
from genodl_core.errors import DataError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def matrix() -> ExpressionMatrix:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(7, 5)).astype(np.float32)
    return ExpressionMatrix(values, np.array(["g1", "g2", "g3", "g4", "g5"]),
                            np.array([f"s{i}" for i in range(7)]))


@pytest.mark.parametrize("writer, suffix", [(write_gctx, ".gctx"), (write_hdf5, ".h5"),
                                            (write_npz, ".npz")])
def test_round_trip_keeps_values_and_ids(tmp_path, matrix, writer, suffix):
    path = writer(tmp_path / f"m{suffix}", matrix)
    back = read_matrix(path)
    np.testing.assert_array_equal(back.values, matrix.values)
    assert back.gene_ids.tolist() == matrix.gene_ids.tolist()
    assert back.sample_ids.tolist() == matrix.sample_ids.tolist()


def test_gctx_written_in_the_documented_layout(tmp_path, matrix):
    path = write_gctx(tmp_path / "m.gctx", matrix)
    with h5py.File(path, "r") as fh:
        assert fh.attrs["version"] in ("GCTX1.0", b"GCTX1.0")
        # Stored transposed: h5py sees (n_samples, n_genes).
        assert fh["0/DATA/0/matrix"].shape == (7, 5)
        assert [v.decode() for v in fh["0/META/ROW/id"][()]] == matrix.gene_ids.tolist()
        assert [v.decode() for v in fh["0/META/COL/id"][()]] == matrix.sample_ids.tolist()


def test_reads_a_hand_built_gctx_file(tmp_path):
    """A file written directly with h5py, fixed-length byte ids as cmapPy writes them."""
    genes_by_samples = np.array([[1.0, 2.0, 3.0],     # gene A in samples x, y, z
                                 [4.0, 5.0, 6.0]])    # gene B
    path = tmp_path / "hand.gctx"
    with h5py.File(path, "w") as fh:
        fh.attrs["version"] = "GCTX1.0"
        fh.create_dataset("0/DATA/0/matrix", data=genes_by_samples.T.astype(np.float32))
        fh.create_dataset("0/META/ROW/id", data=np.array([b"A", b"B"]))
        fh.create_dataset("0/META/ROW/pr_gene_symbol", data=np.array([b"TP53", b"EGFR"]))
        fh.create_dataset("0/META/COL/id", data=np.array([b"x", b"y", b"z"]))
    m = read_matrix(path)
    assert m.gene_ids.tolist() == ["A", "B"]
    assert m.sample_ids.tolist() == ["x", "y", "z"]
    # In memory: samples x genes, so sample y has gene A = 2 and gene B = 5.
    np.testing.assert_array_equal(m.values, genes_by_samples.T)
    assert m.values[1].tolist() == [2.0, 5.0]


def test_gctx_in_h5_suffix_is_detected(tmp_path, matrix):
    path = write_gctx(tmp_path / "m.h5", matrix)
    assert read_matrix(path).gene_ids.tolist() == matrix.gene_ids.tolist()


def test_gctx_missing_values_are_reported_with_position(tmp_path, matrix):
    values = matrix.values.copy()
    values[2, 3] = np.nan
    path = write_gctx(tmp_path / "m.gctx", ExpressionMatrix(values, matrix.gene_ids,
                                                             matrix.sample_ids))
    with h5py.File(path, "r") as fh:
        assert fh["0/DATA/0/matrix"][2, 3] == GCTX_MISSING
    with pytest.raises(DataError, match=r"m\.gctx.*row 2 \(sample 's2'\), column 3 \(gene 'g4'\)"):
        read_matrix(path)
    assert np.isnan(read_gctx(path).values[2, 3])  # the low-level reader keeps it as NaN


def test_npy_and_layouts(tmp_path):
    values = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "m.npy", values)
    m = read_matrix(tmp_path / "m.npy")
    assert m.values.dtype == np.float32 and m.values.shape == (3, 4)
    assert m.gene_ids.tolist() == ["0", "1", "2", "3"]
    t = read_matrix(tmp_path / "m.npy", layout="genes_by_samples")
    assert t.values.shape == (4, 3) and t.gene_ids.tolist() == ["0", "1", "2"]
    np.testing.assert_array_equal(t.values, values.T)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_position(tmp_path, bad):
    values = np.ones((4, 3))
    values[3, 1] = bad
    np.save(tmp_path / "m.npy", values)
    with pytest.raises(DataError,
                       match=r"m\.npy: matrix has 1 non-finite.*row 3 \(sample .3.\), column 1"):
        read_matrix(tmp_path / "m.npy")


def test_shape_mismatches(tmp_path):
    np.save(tmp_path / "vec.npy", np.ones(5))
    with pytest.raises(DataError, match=r"vec\.npy: expected a 2-D matrix, got shape \(5,\)"):
        read_matrix(tmp_path / "vec.npy")
    np.savez(tmp_path / "ids.npz", matrix=np.ones((3, 4)), gene_ids=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"gene ids 'gene_ids' have 3 entries but the matrix "
                                        r"has 4 genes.*found: matrix \(3, 4\) float64"):
        read_matrix(tmp_path / "ids.npz")
    with h5py.File(tmp_path / "bad.gctx", "w") as fh:
        fh.create_dataset("0/DATA/0/matrix", data=np.ones((3, 2), np.float32))
        fh.create_dataset("0/META/ROW/id", data=np.array([b"a", b"b", b"c"]))
        fh.create_dataset("0/META/COL/id", data=np.array([b"x", b"y"]))
    with pytest.raises(DataError, match=r"bad\.gctx.*shape \(3, 2\).*expected shape \(2, 3\)"):
        read_matrix(tmp_path / "bad.gctx")
    np.savez(tmp_path / "nomatrix.npz", a=np.ones((2, 2)), b=np.ones((2, 3)))
    with pytest.raises(DataError, match=r"no matrix found .*found: a \(2, 2\) float64, "
                                        r"b \(2, 3\) float64"):
        read_matrix(tmp_path / "nomatrix.npz")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="no such expression matrix file"):
        read_matrix(tmp_path / "absent.npy")
    (tmp_path / "m.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"suffix '\.csv'"):
        read_matrix(tmp_path / "m.csv")


def test_id_list_file(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# landmarks\ng2\n\ng4  # comment\n")
    assert read_id_list(path) == ["g2", "g4"]
    path.write_text("g2\ng3\ng2\n")
    with pytest.raises(DataError, match=r"ids\.txt: line 3: gene id 'g2' is listed twice "
                                        r"\(first on line 1\)"):
        read_id_list(path)
    path.write_text("# nothing\n")
    with pytest.raises(DataError, match="empty"):
        read_id_list(path)


def test_select_by_ids_and_by_count(matrix):
    sel = select_genes(matrix, landmark_ids=["g5", "g1"], target_ids=["g3"])
    assert sel.landmarks.tolist() == [4, 0] and sel.targets.tolist() == [2]
    sel = select_genes(matrix, n_landmarks=2)
    assert sel.landmarks.tolist() == [0, 1] and sel.targets.tolist() == [2, 3, 4]
    sel = select_genes(matrix, n_landmarks=2, n_targets=1)
    assert sel.targets.tolist() == [2]
    a = select_genes(matrix, n_landmarks=2, order="random", seed=7)
    b = select_genes(matrix, n_landmarks=2, order="random", seed=7)
    assert a.landmarks.tolist() == b.landmarks.tolist()
    assert not set(a.landmarks.tolist()) & set(a.targets.tolist())
    assert len(a.landmarks) + len(a.targets) == 5


def test_selection_errors(matrix):
    with pytest.raises(DataError, match=r"lm\.txt: 1 landmark gene id\(s\) are not in the matrix"
                                        r".*\['nope'\]"):
        select_genes(matrix, landmark_ids=["g1", "nope"], landmark_source="lm.txt")
    with pytest.raises(DataError, match=r"tg\.txt: 1 gene\(s\) are both landmarks and targets: "
                                        r"\['g2'\]"):
        select_genes(matrix, landmark_ids=["g1", "g2"], target_ids=["g2", "g3"],
                     target_source="tg.txt")
    with pytest.raises(DataError, match="n_landmarks=5 leaves no target genes"):
        select_genes(matrix, n_landmarks=5)
    with pytest.raises(DataError, match="n_targets=4 but only 3 genes are left"):
        select_genes(matrix, n_landmarks=2, n_targets=4)
