"""Gene pairs from an expression matrix and a pair TSV: images, cache, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.data.cnnc_images import nepdf
from genodl_core.data.cnnc_readers import CNNCFilesParams, cnnc_files
from genodl_core.data.matrices import ExpressionMatrix, write_hdf5
from genodl_core.errors import DataError

GENES = ["g0", "g1", "g2", "g3", "g4"]


def _files(tmp_path, rows, values=None):
    rng = np.random.default_rng(0)
    values = rng.poisson(2.0, (30, 5)).astype(np.float32) + 1 if values is None else values
    matrix = ExpressionMatrix(values, np.array(GENES), np.array([f"c{i}" for i in range(30)]))
    expression = write_hdf5(tmp_path / "expr.h5", matrix)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("gene_a\tgene_b\tlabel\n" + "".join("\t".join(r) + "\n" for r in rows))
    return values, CNNCFilesParams(expression=str(expression), pairs=str(pairs), bins=8,
                                   val_fraction=0.25, test_fraction=0.0,
                                   cache_dir=str(tmp_path / "cache"))


PAIRS = [("g0", "g1", "1"), ("g1", "g0", "1"), ("g2", "g3", "0"), ("g3", "g4", "0"),
         ("g0", "g4", "0"), ("g1", "g2", "1"), ("g2", "g4", "0"), ("g4", "g0", "1")]


def test_images_of_listed_pairs_are_cached(tmp_path):
    values, params = _files(tmp_path, PAIRS)
    first = cnnc_files(params)
    assert first.info["cache"]["status"] == "miss"
    again = cnnc_files(params)
    assert again.info["cache"]["status"] == "hit"
    assert np.array_equal(first.x_train, again.x_train)
    x = np.concatenate([first.x_train, first.x_val])
    y = np.concatenate([first.y_train, first.y_val])
    assert sorted(y.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    expected = nepdf(values[:, [0]].T, values[:, [1]].T, bins=8)[0]
    assert any(np.array_equal(row, expected) for row in x)


@pytest.mark.parametrize("rows, message", [
    ([("g0", "gX", "1")], "gene 'gX' is not in the expression matrix"),
    ([("g0", "g1", "1"), ("g0", "g1", "0")], "listed again"),
    ([("g0", "g1", "2")], "label '2'"),
    ([("g0", "", "1")], "empty"),
])
def test_pair_list_errors_name_the_line(tmp_path, rows, message):
    _, params = _files(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        cnnc_files(params)


def test_cells_without_expression_are_refused(tmp_path):
    values = np.ones((30, 5), np.float32)
    values[7] = 0
    _, params = _files(tmp_path, PAIRS, values)
    with pytest.raises(DataError, match="1 cells have no expression.*c7"):
        cnnc_files(params)
