"""D-GEX data sources: the synthetic generator, expression matrix files, and real NCI60 data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import genodl_core.catalog  # noqa: F401
from genodl_core.data.dgex_source import locate_nci60, read_split_file
from genodl_core.data.matrices import ExpressionMatrix, write_gctx, write_npz
from genodl_core.data.synthetic_dgex import SyntheticDGEXParams, generate
from genodl_core.errors import DataError, SpecError
from genodl_core.models.baselines import fit_least_squares
from genodl_core.registry import DATASETS
from genodl_core.spec import spec_from_dict
from genodl_core.training.trial import run_trial


REPO = Path(__file__).resolve().parents[2]


pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("torch_one_thread")]


def _load(data: dict):
    spec = spec_from_dict({"model": {"name": "lr"}, "data": data})
    return DATASETS.get(spec.data.name).fn(spec.data.params)


# ------------------------------------------------------------------------------ synthetic

def test_synthetic_is_deterministic_and_sized():
    p = SyntheticDGEXParams(n_landmarks=10, n_targets=20, n_train=50, n_val=20, n_test=10, seed=3)
    a, b = generate(p), generate(p)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == np.float32
    assert a.x_train.shape == (50, 10) and a.y_train.shape == (50, 20)
    assert a.x_test.shape == (10, 10) and a.task == "regression"
    assert a.feature_ids[0] == "LM0000" and a.target_ids[-1] == "TG00019"
    c = generate(SyntheticDGEXParams(n_landmarks=10, n_targets=20, n_train=50, n_val=20,
                                     n_test=10, seed=4))
    assert not np.array_equal(a.x_train, c.x_train)
    assert SyntheticDGEXParams(size="paper").sizes() == (943, 9520, 88807, 11101, 11101)
    assert SyntheticDGEXParams(size="paper", n_train=10).sizes()[2] == 10
    assert SyntheticDGEXParams().n_features() == 50


def test_synthetic_genes_are_correlated_and_targets_nonlinear():
    common = dict(n_landmarks=30, n_targets=60, n_train=4000, n_val=2000, n_test=0, seed=1,
                  noise_std=0.3)
    linear = generate(SyntheticDGEXParams(nonlinearity=0.0, **common))
    mixed = generate(SyntheticDGEXParams(nonlinearity=0.6, **common))
    corr = np.corrcoef(linear.x_train, rowvar=False)
    assert np.mean(np.abs(corr[np.triu_indices(30, 1)])) > 0.15   # co-expression modules

    def lr_residual_std(ds):
        model = fit_least_squares(ds.x_train, ds.y_train)
        return float(np.std(ds.y_val - model.predict(ds.x_val)))

    # Purely linear targets: LR leaves only the noise. Nonlinear ones: LR misses a lot.
    assert lr_residual_std(linear) == pytest.approx(0.3, rel=0.1)
    assert lr_residual_std(mixed) > 0.6
    assert mixed.x_test is None


def test_synthetic_params_validation():
    with pytest.raises(SpecError, match=r"data\.nonlinearity=1\.5: out of range"):
        spec_from_dict({"model": {"name": "lr"},
                        "data": {"source": "synthetic_dgex", "nonlinearity": 1.5}})
    with pytest.raises(SpecError, match=r"data\.size='huge'.*'paper'"):
        spec_from_dict({"model": {"name": "lr"}, "data": {"source": "synthetic_dgex",
                                                          "size": "huge"}})
    with pytest.raises(SpecError, match=r"model\.name='nt3'.*regression"):
        spec_from_dict({"model": {"name": "nt3"}, "data": {"source": "synthetic_dgex"}})


# ------------------------------------------------------------------------------ files

@pytest.fixture
def gctx_file(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 8)).astype(np.float32)
    genes = np.array([f"G{i}" for i in range(8)])
    samples = np.array([f"S{i:02d}" for i in range(40)])
    return write_gctx(tmp_path / "expr.gctx", ExpressionMatrix(values, genes, samples)), values


def test_expression_matrix_by_id_files(tmp_path, gctx_file):
    path, values = gctx_file
    (tmp_path / "lm.txt").write_text("G3\nG0\n")
    (tmp_path / "tg.txt").write_text("G7\nG5\n")
    ds = _load({"source": "expression_matrix", "path": str(path),
                "landmark_ids": str(tmp_path / "lm.txt"),
                "target_ids": str(tmp_path / "tg.txt"), "val_fraction": 0.25,
                "test_fraction": 0.25})
    assert ds.feature_ids.tolist() == ["G3", "G0"] and ds.target_ids.tolist() == ["G7", "G5"]
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (20, 10, 10)
    # Every row is some sample's landmark values, in the id-file order.
    rows = {tuple(r) for r in values[:, [3, 0]].tolist()}
    assert all(tuple(r) in rows for r in ds.x_train.tolist())
    all_x = np.vstack([ds.x_train, ds.x_val, ds.x_test])
    assert len({tuple(r) for r in all_x.tolist()}) == 40   # a partition of the samples
    again = _load({"source": "expression_matrix", "path": str(path),
                   "landmark_ids": str(tmp_path / "lm.txt"), "val_fraction": 0.25})
    assert again.target_ids.tolist() == ["G1", "G2", "G4", "G5", "G6", "G7"]


def test_expression_matrix_by_count_and_split_file(tmp_path, gctx_file):
    path, values = gctx_file
    npz = write_npz(tmp_path / "expr.npz", ExpressionMatrix(
        values, np.array([f"G{i}" for i in range(8)]), np.array([f"S{i:02d}" for i in range(40)])))
    split = tmp_path / "split.csv"
    split.write_text("sample_id,split\nS00,train\nS01,train\nS02,train\nS03,val\nS04,test\n")
    ds = _load({"source": "expression_matrix", "path": str(npz), "n_landmarks": 3,
                "n_targets": 2, "split_file": str(split)})
    assert ds.feature_ids.tolist() == ["G0", "G1", "G2"]
    assert ds.target_ids.tolist() == ["G3", "G4"]
    np.testing.assert_array_equal(ds.x_train, values[:3, :3])
    np.testing.assert_array_equal(ds.y_val, values[3:4, 3:5])
    np.testing.assert_array_equal(ds.x_test, values[4:5, :3])


def test_split_file_errors(tmp_path):
    ids = np.array(["a", "b", "c"])
    f = tmp_path / "s.tsv"
    cases = {
        "a\ttrain\nzz\tval\n": r"s\.tsv: line 2: sample id 'zz' is not in the matrix",
        "a\ttrain\nb\tvalid\n": r"line 2: split 'valid' for sample 'b' is not one of",
        "a\ttrain\nb\tval\na\ttest\n": r"line 3: sample 'a' is listed twice \(first on line 1\)",
        "a\ttrain\tx\n": r"line 1: expected 'sample_id,split'",
        "a\ttrain\n": r"no sample is assigned to the 'val' split",
    }
    for text, message in cases.items():
        f.write_text(text)
        with pytest.raises(DataError, match=message):
            read_split_file(f, ids)


def test_expression_matrix_bad_inputs(tmp_path, gctx_file):
    path, values = gctx_file
    base = {"source": "expression_matrix", "path": str(path)}
    with pytest.raises(SpecError, match=r"data\.n_landmarks.*exactly one of landmark_ids"):
        _load(base)
    with pytest.raises(SpecError, match=r"data\.n_landmarks.*exactly one of landmark_ids"):
        _load({**base, "n_landmarks": 2, "landmark_ids": "x.txt"})
    with pytest.raises(SpecError, match=r"data\.n_targets.*at most one of target_ids"):
        _load({**base, "n_landmarks": 2, "n_targets": 2, "target_ids": "t.txt"})
    with pytest.raises(SpecError, match=r"data\.test_fraction.*no samples left for training"):
        _load({**base, "n_landmarks": 2, "val_fraction": 0.5, "test_fraction": 0.5})
    with pytest.raises(SpecError, match=r"data\.format='csv'"):
        _load({**base, "n_landmarks": 2, "format": "csv"})
    (tmp_path / "lm.txt").write_text("G1\nG9\n")
    with pytest.raises(DataError, match=r"lm\.txt: 1 landmark gene id\(s\) are not in the matrix "
                                        r".*expr\.gctx: \['G9'\]"):
        _load({**base, "landmark_ids": str(tmp_path / "lm.txt")})
    (tmp_path / "lm.txt").write_text("G1\nG2\n")
    (tmp_path / "tg.txt").write_text("G2\nG3\n")
    with pytest.raises(DataError, match=r"tg\.txt: 1 gene\(s\) are both landmarks and targets"):
        _load({**base, "landmark_ids": str(tmp_path / "lm.txt"),
               "target_ids": str(tmp_path / "tg.txt")})
    with pytest.raises(DataError, match=r"absent\.txt: no such gene id list file"):
        _load({**base, "landmark_ids": str(tmp_path / "absent.txt")})
    bad = values.copy()
    bad[5, 6] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DataError, match=r"bad\.npy: matrix has 1 non-finite.*row 5 .*column 6"):
        _load({"source": "expression_matrix", "path": str(tmp_path / "bad.npy"),
               "n_landmarks": 2})
    # 3 samples (stored genes x samples): 2 for validation and 1 for test leave none to train.
    np.save(tmp_path / "few.npy", values[:3].T)
    with pytest.raises(DataError, match=r"few\.npy: 3 samples are too few .*no training"):
        _load({"source": "expression_matrix", "path": str(tmp_path / "few.npy"),
               "n_landmarks": 2, "format": "npy", "layout": "genes_by_samples",
               "val_fraction": 0.5, "test_fraction": 0.4})


def test_expression_matrix_trial_end_to_end(tmp_path, gctx_file):
    path, _ = gctx_file
    result = run_trial({"model": {"name": "lr_l2"},
                        "data": {"source": "expression_matrix", "path": str(path),
                                 "n_landmarks": 4}}, tmp_path / "trials")
    assert result.ok, result.error
    assert np.isfinite(result.final["val_mae"])


# ------------------------------------------------------------------------------ NCI60 (real)

def _nci60_path() -> Path | None:
    try:
        return locate_nci60(None)
    except DataError:
        pass
    cache = Path(os.environ.get("GENODL_TEST_DATA", REPO / ".test-data"))
    try:
        return locate_nci60(cache)
    except DataError:
        return None


@pytest.fixture(scope="module")
def nci60_path():
    path = _nci60_path()
    if path is None:
        pytest.skip("NCI60 data not available: run tests/fetch_test_data.sh (needs the package "
                    "index once) or pip install ISLP; looked in GENODL_TEST_DATA / .test-data/")
    return path


def test_nci60_source_reads_the_real_matrix(nci60_path):
    ds = _load({"source": "nci60", "path": str(nci60_path), "n_landmarks": 100,
                "n_targets": 300})
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (44, 10, 10)
    assert ds.x_train.shape[1] == 100 and ds.y_train.shape[1] == 300
    assert not set(ds.feature_ids.tolist()) & set(ds.target_ids.tolist())
    assert np.all(np.isfinite(ds.x_train)) and ds.x_train.std() > 0.1


def test_nci60_dgex_versus_lr_trial(nci60_path, tmp_path):
    """A D-GEX-style task on real data: some genes as landmarks, predict others."""
    spec = {"seed": 0, "model": {"name": "dgex", "width": 64},
            "data": {"source": "nci60", "path": str(nci60_path), "n_landmarks": 200,
                     "n_targets": 500},
            "train": {"epochs": 15, "batch_size": 200, "learning_rate": 0.01,
                      "momentum": 0.5}}
    result = run_trial(spec, tmp_path / "trials")
    assert result.ok, result.error
    f = result.final
    # Standardised targets: predicting the training mean gives the validation MAE of ~0.8;
    # both models must use the landmarks to do clearly better on held-out cell lines.
    ds = _load(spec["data"])
    y_mu, y_sd = ds.y_train.mean(0), ds.y_train.std(0)
    mean_mae = float(np.mean(np.abs((ds.y_val - y_mu) / y_sd)))
    assert f["val_mae"] < 0.95 * mean_mae
    assert f["lr_val_mae"] < 0.95 * mean_mae
    assert 0.0 <= f["share_genes_better_than_lr"] <= 1.0
    assert np.isfinite(f["relative_improvement"])
