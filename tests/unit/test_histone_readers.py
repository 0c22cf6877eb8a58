"""Histone readers: DeepChrome CSV and .npz / HDF5 tensors round-trip; bad files are named."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.histone_readers import (HistoneFileParams, histone_csv,
                                              histone_csv_expression, histone_tensor,
                                              histone_tensor_labels, read_csv_tensor)
from genodl_core.data.histone_synthetic import SyntheticHistoneParams, generate_tensor
from genodl_core.errors import DataError

MARKS = ("H3K4me3", "H3K4me1", "H3K36me3", "H3K9me3", "H3K27me3")


def _tensor():
    return generate_tensor(SyntheticHistoneParams(n_cell_types=3, n_genes=20, n_bins=6))[0]


def _write_csv(path, genes, counts, labels):
    """DeepChrome's layout: gene, bin (1-based), one column per mark, label; no header."""
    with open(path, "w") as f:
        for g, block, label in zip(genes, counts, labels):
            for b in range(block.shape[1]):
                f.write(",".join([g, str(b + 1), *(f"{v:g}" for v in block[:, b]),
                                  f"{label:g}"]) + "\n")


def test_csv_folder_reads_back_the_tensor(tmp_path):
    t = _tensor()
    for ci, name in enumerate(t.cell_types):
        order = np.arange(20)[::-1] if ci else np.arange(20)  # genes in another order
        _write_csv(tmp_path / f"{name}.csv", [t.gene_ids[i] for i in order],
                   t.counts[ci][order], t.expression[ci][order])
    back = read_csv_tensor(HistoneFileParams(path=str(tmp_path)), labels_are_classes=False)
    assert back.cell_types == t.cell_types and back.gene_ids == t.gene_ids
    np.testing.assert_array_equal(back.counts, t.counts)
    np.testing.assert_allclose(back.expression, t.expression, rtol=1e-5)
    ds = histone_csv_expression(HistoneFileParams(path=str(tmp_path), val_gene_fraction=0.25,
                                                  test_gene_fraction=0.25))
    assert ds.x_train.shape == (3 * 10, 30) and ds.info["splits"]["val"]["n_genes"] == 5


def test_csv_class_labels_are_taken_as_given(tmp_path):
    t = _tensor()
    labels = (np.arange(20) % 3 == 0).astype(float)
    _write_csv(tmp_path / "E003.csv", t.gene_ids, t.counts[0], labels)
    ds = histone_csv(HistoneFileParams(path=str(tmp_path / "E003.csv")))
    assert ds.n_classes == 2 and ds.info["splits"]["train"]["cell_types"] == ["E003"]
    assert sorted(np.concatenate([ds.y_train, ds.y_val, ds.y_test]).tolist()) == \
        sorted(labels.astype(int).tolist())
    _write_csv(tmp_path / "E004.csv", t.gene_ids, t.counts[0], t.expression[0])
    with pytest.raises(DataError, match="0 or 1"):
        histone_csv(HistoneFileParams(path=str(tmp_path)))


@pytest.mark.parametrize("defect, message", [
    ("ragged", "ragged bins: gene 'G00003' has 5 rows"),
    ("duplicate", "gene 'G00001' is listed twice"),
    ("no_label", "gene 'G00002' has no label"),
    ("missing_mark", "a mark column is missing"),
])
def test_csv_defects_are_named(tmp_path, defect, message):
    t = _tensor()
    path = tmp_path / "bad.csv"
    _write_csv(path, t.gene_ids, t.counts[0], t.expression[0])
    lines = path.read_text().splitlines()
    if defect == "ragged":
        del lines[3 * 6]  # first row of the fourth gene
    elif defect == "duplicate":
        lines += lines[6:12]
    elif defect == "no_label":
        lines[2 * 6] = lines[2 * 6].rsplit(",", 1)[0] + ","
    elif defect == "missing_mark":
        lines = [",".join(line.split(",")[:-2] + line.split(",")[-1:]) for line in lines]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_csv_tensor(HistoneFileParams(path=str(path)), labels_are_classes=False)


def test_cell_types_with_other_genes_are_refused(tmp_path):
    t = _tensor()
    _write_csv(tmp_path / "A.csv", t.gene_ids, t.counts[0], t.expression[0])
    _write_csv(tmp_path / "B.csv", t.gene_ids[:19], t.counts[1][:19], t.expression[1][:19])
    with pytest.raises(DataError, match="genes differ"):
        read_csv_tensor(HistoneFileParams(path=str(tmp_path)), labels_are_classes=False)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_tensor_files_round_trip(tmp_path, suffix):
    t = _tensor()
    arrays = {"counts": t.counts, "expression": t.expression,
              "gene_ids": np.array(t.gene_ids, dtype="S"), "cell_types": np.array(t.cell_types),
              "marks": np.array(MARKS)}
    path = tmp_path / f"marks{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        h5py = pytest.importorskip("h5py", reason="HDF5 tensors need h5py")
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                f[key] = value.astype("S") if value.dtype.kind == "U" else value
    params = HistoneFileParams(path=str(path), holdout="cell_types")
    ds = histone_tensor(params)
    assert ds.x_train.shape == (20, 30) and ds.info["marks"] == list(MARKS)
    assert histone_tensor_labels(params).n_classes == 2


def test_tensor_defects_are_named(tmp_path):
    t = _tensor()
    expression = t.expression.copy()
    expression[0, 4] = np.nan
    np.savez(tmp_path / "gap.npz", counts=t.counts, expression=expression,
             gene_ids=np.array(t.gene_ids), cell_types=np.array(t.cell_types))
    with pytest.raises(DataError, match="gene 'G00004' has no expression"):
        histone_tensor(HistoneFileParams(path=str(tmp_path / "gap.npz")))
    np.savez(tmp_path / "dup.npz", counts=t.counts, expression=t.expression,
             gene_ids=np.array(t.gene_ids[:-1] + t.gene_ids[:1]),
             cell_types=np.array(t.cell_types))
    with pytest.raises(DataError, match="duplicate gene 'G00000'"):
        histone_tensor(HistoneFileParams(path=str(tmp_path / "dup.npz")))
    np.savez(tmp_path / "four.npz", counts=t.counts[:, :, :4], expression=t.expression,
             gene_ids=np.array(t.gene_ids), cell_types=np.array(t.cell_types))
    with pytest.raises(DataError, match="a mark is missing"):
        histone_tensor(HistoneFileParams(path=str(tmp_path / "four.npz")))
