"""Choices on users' data: NT3 z-scores, data-driven landmarks, array keys in specs and checks."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from genodl_core.data import preflight
from genodl_core.data.loading import clear_cache, load_dataset
from genodl_core.data.matrices import ExpressionMatrix, rank_genes, select_genes, write_npz
from genodl_core.data.nt3_csv import write_nt3_csv
from genodl_core.errors import SpecError
from genodl_core.registry import DATASETS
from genodl_core.spec import spec_from_dict
from genodl_core.training.trial import run_trial

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("torch_one_thread")]


# ------------------------------------------------------------------------ NT3 standardisation

def _nt3_files(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x_train = rng.gamma(2.0, 3.0, size=(12, 6)).astype(np.float32)
    x_train[:, 2] = 4.0                              # no spread in the training file
    x_test = rng.gamma(2.0, 30.0, size=(6, 6)).astype(np.float32)  # another scale entirely
    y_train, y_test = np.arange(12) % 2, np.arange(6) % 2
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    write_nt3_csv(train, x_train, y_train)
    write_nt3_csv(test, x_test, y_test)
    return train, test, x_train, x_test


def test_nt3_csv_standard_scaling_uses_training_statistics_only(tmp_path):
    train, test, x_train, x_test = _nt3_files(tmp_path)
    data = {"source": "nt3_csv", "train_path": str(train), "test_path": str(test),
            "scaling": "standard", "validation": "test"}
    spec = spec_from_dict({"model": {"name": "nt3"}, "data": data})
    clear_cache()
    ds, _ = load_dataset(spec.data, spec.validation)
    mean = x_train.astype(np.float64).mean(axis=0)
    std = x_train.astype(np.float64).std(axis=0)
    std[2] = 1.0
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.delete(ds.x_train.std(axis=0), 2), 1.0, atol=1e-5)
    assert np.all(ds.x_train[:, 2] == 0.0)
    np.testing.assert_allclose(ds.x_val, (x_test - mean) / std, rtol=1e-4, atol=1e-4)
    assert ds.info["scaling"] == {"method": "standard", "fit_on": "train", "n_fit_rows": 12,
                                  "n_constant_columns": 1, "scaled_targets": False}
    maxabs = spec_from_dict({"model": {"name": "nt3"}, "data": {**data, "scaling": "maxabs"}})
    assert spec.trial_id != maxabs.trial_id
    with pytest.raises(SpecError, match=r"data\.scaling='zscore'.*'maxabs', 'none', 'standard'"):
        spec_from_dict({"model": {"name": "nt3"}, "data": {**data, "scaling": "zscore"}})


def test_synthetic_nt3_takes_standard_scaling_too():
    data = {"source": "synthetic_nt3", "n_train": 40, "n_test": 20, "n_features": 30,
            "scaling": "standard", "validation": "test"}
    spec = spec_from_dict({"model": {"name": "nt3"}, "data": data})
    clear_cache()
    ds, _ = load_dataset(spec.data, spec.validation)
    assert ds.info["scaling"]["method"] == "standard"
    spread = ds.x_train.std(axis=0)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(spread[spread > 0], 1.0, atol=1e-4)


# ------------------------------------------------------------------------ landmarks from the data

def _matrix() -> ExpressionMatrix:
    """Six genes; on training rows 0-5 gene 4 varies most, then 1, then 5; rows 6-7 (held out)
    make gene 0 the most variable and the highest by far."""
    pattern = np.array([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0])[:, None]     # variance 1
    values = np.zeros((8, 6), dtype=np.float32)
    values[:6] = pattern * np.array([0.1, 3.0, 0.2, 0.3, 5.0, 1.0]) + \
        np.array([1.0, 0.0, 9.0, 2.0, 0.0, 0.0])
    values[6:, 0] = [1000.0, -1000.0]
    return ExpressionMatrix(values, np.array([f"g{i}" for i in range(6)]),
                            np.array([f"s{i}" for i in range(8)]))


def test_most_variable_and_highest_mean_rank_on_training_rows_only():
    m = _matrix()
    train = np.arange(6)
    assert rank_genes(m.values, train, "most_variable")[:3].tolist() == [4, 1, 5]
    assert rank_genes(m.values, None, "most_variable")[0] == 0
    assert rank_genes(m.values, train, "highest_mean")[0] == 2
    sel = select_genes(m, n_landmarks=2, n_targets=2, order="most_variable", train_rows=train)
    assert sel.landmarks.tolist() == [1, 4] and sel.targets.tolist() == [3, 5]
    sel = select_genes(m, landmark_ids=["g4"], n_targets=2, order="most_variable",
                       train_rows=train)                    # listed landmarks, ranked targets
    assert sel.landmarks.tolist() == [4] and sel.targets.tolist() == [1, 5]
    sel = select_genes(m, n_landmarks=1, order="highest_mean", train_rows=train)
    assert sel.landmarks.tolist() == [2] and sel.targets.tolist() == [0, 1, 3, 4, 5]
    ties = ExpressionMatrix(np.ones((3, 4), np.float32), np.array(list("abcd")),
                            np.array(list("xyz")))
    assert rank_genes(ties.values, None, "most_variable").tolist() == [0, 1, 2, 3]


def test_expression_matrix_source_chooses_landmarks_from_its_training_split(tmp_path):
    m = _matrix()
    write_npz(tmp_path / "m.npz", m)
    split = tmp_path / "split.txt"
    split.write_text("".join(f"s{i},{'train' if i < 6 else 'val'}\n" for i in range(8)))
    spec = spec_from_dict({"model": {"name": "lr"}, "data": {
        "source": "expression_matrix", "path": str(tmp_path / "m.npz"), "n_landmarks": 2,
        "n_targets": 2, "gene_order": "most_variable", "split_file": str(split)}})
    ds = DATASETS.get("expression_matrix").fn(spec.data.params)
    assert ds.feature_ids.tolist() == ["g1", "g4"] and ds.target_ids.tolist() == ["g3", "g5"]
    assert ds.info["gene_choice"] == {"order": "most_variable", "computed_on": "train",
                                      "n_rows": 6}
    assert ds.info["arrays"]["matrix_key"] == "matrix"
    with pytest.raises(SpecError, match=r"data\.gene_order='variance'.*'most_variable'"):
        spec_from_dict({"model": {"name": "lr"}, "data": {
            "source": "expression_matrix", "path": "m.npz", "n_landmarks": 2,
            "gene_order": "variance"}})


# ------------------------------------------------------------------------ keys in specs and checks

def _h5ad(path: Path, values: np.ndarray, genes: list[str]) -> Path:
    with h5py.File(path, "w") as fh:
        fh.attrs["encoding-type"] = "anndata"
        fh.create_dataset("X", data=values)
        for frame, index in (("obs", [f"c{i}" for i in range(values.shape[0])]), ("var", genes)):
            g = fh.create_group(frame)
            g.attrs["encoding-type"] = "dataframe"
            g.attrs["_index"] = "_index"
            g.create_dataset("_index", data=np.array(index, dtype=object),
                             dtype=h5py.string_dtype())
    return path


def test_array_keys_are_part_of_the_resolved_spec():
    base = {"source": "expression_matrix", "path": "cells.h5ad", "n_landmarks": 2}
    spec = spec_from_dict({"model": {"name": "lr"}, "data": base})
    assert {k: spec.to_dict()["data"][k] for k in ("matrix_key", "ids_key", "sample_ids_key")} \
        == {"matrix_key": "auto", "ids_key": "auto", "sample_ids_key": "auto"}
    other = spec_from_dict({"model": {"name": "lr"}, "data": {**base, "ids_key": "symbol"}})
    assert other.trial_id != spec.trial_id
    with pytest.raises(SpecError, match=r"data\.matrix_key=' ': empty name"):
        spec_from_dict({"model": {"name": "lr"}, "data": {**base, "matrix_key": " "}})
    with pytest.raises(SpecError, match=r"data\.matrix_key='none'"):
        spec_from_dict({"model": {"name": "lr"}, "data": {**base, "matrix_key": "none"}})


def test_preflight_reports_missing_keys_and_unknown_landmarks_in_h5ad(tmp_path):
    rng = np.random.default_rng(1)
    path = _h5ad(tmp_path / "cells.h5ad", rng.normal(size=(30, 6)).astype(np.float32),
                 ["TP53", "MYC", "EGFR", "KRAS", "GAPDH", "ACTB"])
    (tmp_path / "lm.txt").write_text("TP53\nMYC\nBRCA1\n")
    data = {"source": "expression_matrix", "path": str(path), "n_landmarks": 2,
            "n_targets": 3, "matrix_key": "layers/counts"}
    (problem,) = preflight.check_specs([{"model": {"name": "lr"}, "data": data}])
    assert "no matrix 'layers/counts'" in problem.what and "found: X (30, 6)" in problem.what
    data.pop("matrix_key")
    data.update(landmark_ids=str(tmp_path / "lm.txt"), n_landmarks=None)
    data = {k: v for k, v in data.items() if v is not None}
    (problem,) = preflight.check_specs([{"model": {"name": "lr"}, "data": data}])
    assert "1 landmark ids not in the matrix" in problem.what and "BRCA1" in problem.what
    data["ids_key"] = "symbol"
    (problem,) = preflight.check_specs([{"model": {"name": "lr"}, "data": data}])
    assert "/var has no column 'symbol'" in problem.what and "['_index']" in problem.what


def test_lr_trial_on_h5ad_with_most_variable_landmarks(tmp_path):
    rng = np.random.default_rng(2)
    latent = rng.normal(size=(60, 3))
    values = (latent @ rng.normal(size=(3, 12)) + 0.1 * rng.normal(size=(60, 12)))
    path = _h5ad(tmp_path / "cells.h5ad", values.astype(np.float32),
                 [f"G{i}" for i in range(12)])
    spec = {"model": {"name": "lr"},
            "data": {"source": "expression_matrix", "path": str(path), "n_landmarks": 4,
                     "gene_order": "most_variable", "val_fraction": 0.2, "test_fraction": 0.2}}
    result = run_trial(spec, tmp_path / "out")
    assert result.state == "done", result.error
    record = json.loads((result.path / "result.json").read_text())
    assert record["data"]["gene_choice"]["computed_on"] == "train"
    assert record["data"]["arrays"]["matrix_key"] == "X"
    assert record["data"]["scaling"]["method"] == "standard"      # how NT3's choice is kept too
    assert record["data"]["n_landmarks"] == 4 and record["data"]["n_targets"] == 8
    assert record["final"]["val_mae"] < 0.5
