"""Data checks before the queue: ``genodl plan`` and ``genodl submit`` read every data source's
header or shape and report missing files, widths, labels and gene ids, exiting 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genodl_core.data import preflight
from genodl_core.data.matrices import ExpressionMatrix, write_npz
from workflows.cli import main as genodl

pytestmark = pytest.mark.timeout(60)

SMALL_NT3 = '''
[trial.model]
name = "nt3"
conv = [[4, 3, 1]]
pool = [1]
dense = [8]
'''


def nt3_csv(path: Path, width: int = 10, labels=(0, 1, 0, 1)) -> Path:
    rows = [",".join([str(y)] + ["0.5"] * width) for y in labels]
    path.write_text("\n".join(rows) + "\n")
    return path


def nt3_sweep(tmp_path: Path, train: Path, test: Path, noise: str = "",
              model: str = SMALL_NT3) -> Path:
    text = f'''
[sweep]
name = "pre"
[sweep.axes]
seed = [0, 1]
[trial]
device = "cpu"
{model}
[trial.data]
source = "nt3_csv"
train_path = "{train}"
test_path = "{test}"
{noise}
'''
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def matrix_sweep(tmp_path: Path, matrix: Path, extra: str = "") -> Path:
    text = f'''
[sweep]
name = "mat"
[trial]
device = "cpu"
[trial.model]
name = "lr"
[trial.data]
source = "expression_matrix"
path = "{matrix}"
{extra}
'''
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def plan_and_submit(spec: Path, tmp_path: Path) -> list[int]:
    return [genodl(["plan", str(spec)]),
            genodl(["submit", str(spec), "--site", "slurm", "--out", str(tmp_path / "run"),
                    "--dry-run"])]


def test_good_nt3_data_passes(tmp_path, capsys):
    spec = nt3_sweep(tmp_path, nt3_csv(tmp_path / "train.csv"), nt3_csv(tmp_path / "test.csv"))
    assert plan_and_submit(spec, tmp_path) == [0, 0]
    assert "data:" not in capsys.readouterr().err


def test_missing_csv_fails_plan_and_submit_before_anything_is_written(tmp_path, capsys):
    spec = nt3_sweep(tmp_path, tmp_path / "nope.csv", nt3_csv(tmp_path / "test.csv"))
    assert plan_and_submit(spec, tmp_path) == [2, 2]
    err = capsys.readouterr().err
    assert f"data: {tmp_path / 'nope.csv'}: no such file" in err
    assert not (tmp_path / "run" / "submit.sbatch").exists()


def test_feature_col_beyond_the_width_is_reported(tmp_path, capsys):
    noise = '[[trial.noise]]\nkind = "correlated_label_flip"\nfraction = 0.1\nfeature_col = 50\n'
    spec = nt3_sweep(tmp_path, nt3_csv(tmp_path / "train.csv"), nt3_csv(tmp_path / "test.csv"),
                     noise=noise)
    assert genodl(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "feature_col" in err and "10 feature columns" in err


def test_all_problems_are_reported_at_once(tmp_path):
    train = nt3_csv(tmp_path / "train.csv", width=2, labels=(0, 7, 1))
    test = nt3_csv(tmp_path / "test.csv", width=3)
    problems = preflight.check_specs(
        [{"model": {"name": "nt3", "conv": [[4, 3, 1]], "pool": [1], "dense": [8]},
          "data": {"source": "nt3_csv", "train_path": str(train), "test_path": str(test)}}])
    text = "\n".join(map(str, problems))
    assert "labels ['7']" in text                      # label set, first rows only
    assert "3 feature columns" in text                 # train and test widths differ
    assert "too few for model.conv[0]" in text         # the conv stack against the width
    assert len(problems) == 3


def test_only_the_first_rows_are_read(tmp_path):
    path = nt3_csv(tmp_path / "big.csv", labels=[0] * preflight.LABEL_ROWS)
    with path.open("a") as fh:
        fh.write("not,a,row\n" * 5)
    width, labels = preflight.nt3_csv_head(str(path))
    assert width == 10 and labels == ["0"] * preflight.LABEL_ROWS


def test_npy_shape_comes_from_the_header(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((5, 7), np.float32))
    assert preflight.npy_shape(tmp_path / "m.npy") == (5, 7)


def test_matrix_gene_ids_and_counts(tmp_path, capsys):
    genes = np.array([f"g{i}" for i in range(6)])
    write_npz(tmp_path / "m.npz", ExpressionMatrix(np.ones((8, 6), np.float32), genes,
                                                   np.array([f"s{i}" for i in range(8)])))
    (tmp_path / "landmarks.txt").write_text("g0\ng1\nBRCA1\n")
    spec = matrix_sweep(tmp_path, tmp_path / "m.npz",
                        f'landmark_ids = "{tmp_path / "landmarks.txt"}"\nn_targets = 9\n'
                        f'split_file = "{tmp_path / "split.txt"}"')
    assert genodl(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "1 landmark ids not in the matrix" in err and "BRCA1" in err
    assert "split.txt: no such file" in err
    good = matrix_sweep(tmp_path, tmp_path / "m.npz", "n_landmarks = 2\nn_targets = 3")
    assert genodl(["plan", str(good)]) == 0


def test_matrix_without_the_named_array_lists_what_it_found(tmp_path):
    np.savez(tmp_path / "x.npz", X=np.ones((3, 4)))
    spec = {"model": {"name": "lr"},
            "data": {"source": "expression_matrix", "path": str(tmp_path / "x.npz"),
                     "matrix_key": "counts", "n_landmarks": 2, "n_targets": 1}}
    problems = preflight.check_specs([spec])
    assert len(problems) == 1 and "no array 'counts'" in problems[0].what
    assert "found: X (3, 4) float64" in problems[0].what
    spec["data"].pop("matrix_key")
    assert preflight.check_specs([spec]) == []


def test_npy_too_few_genes(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((10, 4), np.float32))
    spec = {"model": {"name": "lr"},
            "data": {"source": "expression_matrix", "path": str(tmp_path / "m.npy"),
                     "n_landmarks": 3, "n_targets": 3}}
    (problem,) = preflight.check_specs([spec])
    assert "4 genes for n_landmarks + n_targets = 6" in problem.what


def test_generated_sources_need_no_files():
    spec = {"model": {"name": "lr"}, "data": {"source": "synthetic_dgex"}}
    assert preflight.check_specs([spec]) == []


def test_each_csv_is_read_once_for_many_noise_settings(tmp_path, monkeypatch):
    train, test = nt3_csv(tmp_path / "tr.csv"), nt3_csv(tmp_path / "te.csv")
    reads = []
    real = preflight.nt3_csv_head
    monkeypatch.setattr(preflight, "nt3_csv_head", lambda p: reads.append(p) or real(p))
    preflight._cached_head.cache_clear()
    specs = [{"model": {"name": "nt3", "conv": [[4, 3, 1]], "pool": [1], "dense": [8]},
              "data": {"source": "nt3_csv", "train_path": str(train), "test_path": str(test)},
              "noise": [{"kind": "label_flip", "fraction": f / 10}]} for f in range(5)]
    assert preflight.check_specs(specs) == []
    assert len(reads) == 2
