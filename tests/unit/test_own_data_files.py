"""Matrix files as users have them: array names detected or named, sparse matrices, AnnData."""

import h5py
import numpy as np
import pytest

from genodl_core.data.matrices import ArrayKeys, inspect_matrix, read_matrix
from genodl_core.errors import DataError

GENES = np.array([f"g{i}" for i in range(5)])
CELLS = np.array([f"c{i}" for i in range(4)])


def _values(seed=0):
    rng = np.random.default_rng(seed)
    v = rng.poisson(1.0, size=(4, 5)).astype(np.float32)
    v[0, 0] = 0.0
    v[3, 4] = 7.0
    return v


def test_npz_with_x_and_genes_is_read_by_detection(tmp_path):
    values = _values()
    np.savez(tmp_path / "m.npz", X=values, genes=GENES, cells=CELLS)
    m = read_matrix(tmp_path / "m.npz")
    np.testing.assert_array_equal(m.values, values)
    assert m.gene_ids.tolist() == GENES.tolist() and m.sample_ids.tolist() == CELLS.tolist()
    assert m.keys == {"matrix_key": "X", "ids_key": "genes", "sample_ids_key": "cells"}
    header = inspect_matrix(tmp_path / "m.npz")
    assert (header.n_samples, header.n_genes) == (4, 5)
    assert header.gene_ids.tolist() == GENES.tolist()


def test_single_unnamed_arrays_are_the_matrix_and_ids(tmp_path):
    values = _values()
    np.savez(tmp_path / "m.npz", expr_2024=values, symbols=GENES)
    m = read_matrix(tmp_path / "m.npz")
    np.testing.assert_array_equal(m.values, values)
    assert m.gene_ids.tolist() == GENES.tolist()
    assert m.sample_ids.tolist() == ["0", "1", "2", "3"]


def test_genes_by_samples_layout_matches_ids_to_the_gene_axis(tmp_path):
    values = _values()
    np.savez(tmp_path / "t.npz", data=values.T, gene_names=GENES)
    m = read_matrix(tmp_path / "t.npz", layout="genes_by_samples")
    np.testing.assert_array_equal(m.values, values)
    assert m.gene_ids.tolist() == GENES.tolist()


def test_named_keys_override_detection_and_errors_list_the_arrays(tmp_path):
    values = _values()
    np.savez(tmp_path / "m.npz", X=values, counts=values * 2, genes=GENES, symbol=GENES[::-1])
    with pytest.raises(DataError, match=r"several arrays could be the matrix \(\['X', 'counts'\]\)"
                                        r".*found: X \(4, 5\) float32, counts \(4, 5\) float32"):
        read_matrix(tmp_path / "m.npz")
    m = read_matrix(tmp_path / "m.npz", keys=ArrayKeys("counts", "symbol", "none"))
    np.testing.assert_array_equal(m.values, values * 2)
    assert m.gene_ids.tolist() == GENES[::-1].tolist()
    with pytest.raises(DataError, match=r"no array 'layer' \(data.matrix_key\); found: X \(4, 5\)"):
        read_matrix(tmp_path / "m.npz", keys=ArrayKeys("layer"))
    with pytest.raises(DataError, match=r"array 'genes' \(data.sample_ids_key\) has shape \(5,\); "
                                        r"expected one sample id per sample: \(4,\)"):
        read_matrix(tmp_path / "m.npz", keys=ArrayKeys("X", sample_ids_key="genes"))


def test_plain_hdf5_with_nested_names(tmp_path):
    values = _values()
    with h5py.File(tmp_path / "m.h5", "w") as fh:
        fh.create_dataset("expression", data=values)
        fh.create_dataset("meta/gene_symbol", data=GENES.astype("S"))
    m = read_matrix(tmp_path / "m.h5")
    assert m.gene_ids.tolist() == ["0", "1", "2", "3", "4"]  # nested arrays are not guessed
    m = read_matrix(tmp_path / "m.h5", keys=ArrayKeys(ids_key="meta/gene_symbol"))
    np.testing.assert_array_equal(m.values, values)
    assert m.gene_ids.tolist() == GENES.tolist()


def _csr(values):
    rows, cols = np.nonzero(values)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=values.shape[0]))])
    return values[rows, cols], cols.astype(np.int32), indptr.astype(np.int32)


def test_scipy_sparse_npz_without_scipy(tmp_path):
    values = _values()
    data, indices, indptr = _csr(values)
    # The arrays scipy.sparse.save_npz writes for a CSR matrix.
    np.savez(tmp_path / "s.npz", format=np.array(b"csr"), shape=np.array(values.shape),
             data=data, indices=indices, indptr=indptr)
    m = read_matrix(tmp_path / "s.npz")
    np.testing.assert_array_equal(m.values, values)
    assert inspect_matrix(tmp_path / "s.npz").n_genes == 5
    # COO with a duplicate entry: summed, as scipy does.
    np.savez(tmp_path / "c.npz", format=np.array("coo"), shape=np.array([2, 3]),
             data=np.array([1.0, 2.0, 4.0]), row=np.array([0, 0, 1]), col=np.array([2, 2, 0]))
    np.testing.assert_array_equal(read_matrix(tmp_path / "c.npz").values,
                                  [[0, 0, 3], [4, 0, 0]])


def test_scipy_written_sparse_npz(tmp_path):
    sparse = pytest.importorskip("scipy.sparse", reason="reading files written by scipy itself")
    values = _values()
    sparse.save_npz(tmp_path / "s.npz", sparse.csc_matrix(values))
    np.testing.assert_array_equal(read_matrix(tmp_path / "s.npz").values, values)


def _write_h5ad(path, values, *, sparse=None, layer=None, gene_column=False, categorical=False):
    """A minimal AnnData file in its on-disk layout (encoding-type attributes), by h5py."""
    str_dt = h5py.string_dtype()
    with h5py.File(path, "w") as fh:
        fh.attrs["encoding-type"] = "anndata"
        fh.attrs["encoding-version"] = "0.1.0"
        if sparse is None:
            x = fh.create_dataset("X", data=values)
            x.attrs["encoding-type"] = "array"
            x.attrs["encoding-version"] = "0.2.0"
        else:
            source = values if sparse == "csr" else values.T
            data, indices, indptr = _csr(source)
            x = fh.create_group("X")
            x.attrs["encoding-type"] = f"{sparse}_matrix"
            x.attrs["encoding-version"] = "0.1.0"
            x.attrs["shape"] = values.shape
            x.create_dataset("data", data=data)
            x.create_dataset("indices", data=indices)
            x.create_dataset("indptr", data=indptr)
        if layer is not None:
            fh.create_dataset("layers/counts", data=layer)
        for frame, index in (("obs", CELLS), ("var", GENES)):
            g = fh.create_group(frame)
            g.attrs["encoding-type"] = "dataframe"
            g.attrs["encoding-version"] = "0.2.0"
            g.attrs["_index"] = "_index"
            g.attrs["column-order"] = np.array(["symbol"] if frame == "var" and gene_column
                                               else [], dtype=str_dt)
            g.create_dataset("_index", data=index.astype(object), dtype=str_dt)
        if gene_column and categorical:
            col = fh.create_group("var/symbol")
            col.attrs["encoding-type"] = "categorical"
            col.create_dataset("categories", data=np.array(["A", "B"], dtype=object), dtype=str_dt)
            col.create_dataset("codes", data=np.array([1, 0, 0, -1, 1], dtype=np.int8))
        elif gene_column:
            fh.create_dataset("var/symbol", data=np.array([f"S{i}" for i in range(5)],
                                                           dtype=object), dtype=str_dt)


@pytest.mark.parametrize("sparse", [None, "csr", "csc"])
def test_h5ad_dense_and_sparse(tmp_path, sparse):
    values = _values()
    _write_h5ad(tmp_path / "cells.h5ad", values, sparse=sparse)
    m = read_matrix(tmp_path / "cells.h5ad")
    np.testing.assert_array_equal(m.values, values)
    assert m.gene_ids.tolist() == GENES.tolist() and m.sample_ids.tolist() == CELLS.tolist()
    header = inspect_matrix(tmp_path / "cells.h5ad")
    assert header.format == "h5ad" and (header.n_samples, header.n_genes) == (4, 5)


def test_h5ad_layers_columns_and_errors(tmp_path):
    values = _values()
    path = tmp_path / "cells.h5"  # detected as AnnData from its content
    _write_h5ad(path, values, layer=values + 1, gene_column=True)
    m = read_matrix(path, keys=ArrayKeys("layers/counts", "symbol"))
    np.testing.assert_array_equal(m.values, values + 1)
    assert m.gene_ids.tolist() == ["S0", "S1", "S2", "S3", "S4"]
    with pytest.raises(DataError, match=r"no matrix 'layers/raw' .*found: X \(4, 5\) float32, "
                                        r"layers/counts \(4, 5\) float32"):
        read_matrix(path, keys=ArrayKeys("layers/raw"))
    with pytest.raises(DataError, match=r"/var has no column 'gene_symbol' \(data.ids_key\); "
                                        r"columns: \['_index', 'symbol'\]"):
        read_matrix(path, keys=ArrayKeys(ids_key="gene_symbol"))
    _write_h5ad(tmp_path / "cat.h5ad", values, gene_column=True, categorical=True)
    m = read_matrix(tmp_path / "cat.h5ad", keys=ArrayKeys(ids_key="symbol"))
    assert m.gene_ids.tolist() == ["B", "A", "A", "", "B"]


def test_h5ad_written_by_anndata(tmp_path):
    anndata = pytest.importorskip("anndata", reason="reading files written by anndata itself")
    import pandas as pd

    values = _values()
    adata = anndata.AnnData(X=values, obs=pd.DataFrame(index=CELLS),
                            var=pd.DataFrame({"symbol": [f"S{i}" for i in range(5)]}, index=GENES))
    adata.layers["counts"] = values * 3
    if hasattr(anndata.settings, "allow_write_nullable_strings"):
        # pandas 3 makes string columns nullable arrays, which anndata writes only on request.
        anndata.settings.allow_write_nullable_strings = True
    adata.write_h5ad(tmp_path / "a.h5ad")
    m = read_matrix(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(m.values, values)
    assert m.gene_ids.tolist() == GENES.tolist() and m.sample_ids.tolist() == CELLS.tolist()
    m = read_matrix(tmp_path / "a.h5ad", keys=ArrayKeys("layers/counts", "symbol"))
    np.testing.assert_array_equal(m.values, values * 3)
    assert m.gene_ids.tolist()[0] == "S0"


def test_sparse_h5ad_written_by_anndata(tmp_path):
    anndata = pytest.importorskip("anndata", reason="reading files written by anndata itself")
    sparse = pytest.importorskip("scipy.sparse", reason="anndata's sparse X")
    values = _values()
    adata = anndata.AnnData(X=sparse.csr_matrix(values))
    adata.obs_names = list(CELLS)
    adata.var_names = list(GENES)
    adata.raw = adata
    if hasattr(anndata.settings, "allow_write_nullable_strings"):
        anndata.settings.allow_write_nullable_strings = True
    adata.write_h5ad(tmp_path / "s.h5ad")
    for key in ("auto", "raw/X"):
        m = read_matrix(tmp_path / "s.h5ad", keys=ArrayKeys(key))
        np.testing.assert_array_equal(m.values, values)
        assert m.gene_ids.tolist() == GENES.tolist() and m.sample_ids.tolist() == CELLS.tolist()


def test_10x_genomics_hdf5_by_named_keys(tmp_path):
    values = _values()                                   # cells x genes
    data, indices, indptr = _csr(values)                 # = CSC of the genes x cells matrix
    with h5py.File(tmp_path / "filtered_feature_bc_matrix.h5", "w") as fh:
        g = fh.create_group("matrix")
        g.create_dataset("data", data=data.astype(np.int32))
        g.create_dataset("indices", data=indices)
        g.create_dataset("indptr", data=indptr)
        g.create_dataset("shape", data=np.array([5, 4], dtype=np.int32))
        g.create_dataset("barcodes", data=CELLS.astype("S"))
        g.create_dataset("features/id", data=GENES.astype("S"))
        g.create_dataset("features/name", data=np.array([b"A", b"B", b"C", b"D", b"E"]))
    keys = ArrayKeys("matrix", "matrix/features/id", "matrix/barcodes")
    m = read_matrix(tmp_path / "filtered_feature_bc_matrix.h5", layout="genes_by_samples",
                    keys=keys)
    np.testing.assert_array_equal(m.values, values)
    assert m.gene_ids.tolist() == GENES.tolist() and m.sample_ids.tolist() == CELLS.tolist()
    header = inspect_matrix(tmp_path / "filtered_feature_bc_matrix.h5",
                            layout="genes_by_samples", keys=keys)
    assert (header.n_samples, header.n_genes) == (4, 5)
    with pytest.raises(DataError, match=r"no array 'features/id' \(data.ids_key\); found: "
                                        r"matrix \(5, 4\) int32 sparse, matrix/barcodes"):
        read_matrix(tmp_path / "filtered_feature_bc_matrix.h5", layout="genes_by_samples",
                    keys=ArrayKeys("matrix", "features/id"))


def test_h5ad_of_anndata_before_0_7_with_compound_frames(tmp_path):
    values = _values()
    str_dt = h5py.string_dtype()
    with h5py.File(tmp_path / "old.h5ad", "w") as fh:
        fh.create_dataset("X", data=values)
        fh.create_dataset("obs", data=np.array([(c,) for c in CELLS],
                                               dtype=[("index", str_dt)]))
        fh.create_dataset("var", data=np.array([(g, f"S{i}") for i, g in enumerate(GENES)],
                                               dtype=[("index", str_dt), ("symbol", str_dt)]))
    m = read_matrix(tmp_path / "old.h5ad")
    assert m.gene_ids.tolist() == GENES.tolist() and m.sample_ids.tolist() == CELLS.tolist()
    assert read_matrix(tmp_path / "old.h5ad", keys=ArrayKeys(ids_key="symbol")).gene_ids[0] == "S0"
    with pytest.raises(DataError, match=r"/var has no column 'name' \(data.ids_key\); "
                                        r"columns: \['index', 'symbol'\]"):
        read_matrix(tmp_path / "old.h5ad", keys=ArrayKeys(ids_key="name"))
