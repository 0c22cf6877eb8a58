"""summary.h5 opens anywhere: UTF-8 strings, trial ids in every trial table, self-describing
datasets, the documented h5py/pandas reads, version-1 summaries, and ``genodl export``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from genodl_core.errors import SpecError
from genodl_core.results import export, load
from genodl_core.results.bench_gather import write_synthetic_sweep
from genodl_core.results.summary import SCHEMA_VERSION, gather
from workflows.cli import main as cli

pytestmark = pytest.mark.timeout(120)
DOC = Path(__file__).resolve().parents[2] / "docs" / "summary-schema.md"
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


@pytest.fixture(scope="module")
def summary_file(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("portable") / "run"
    write_synthetic_sweep(run, 40, epochs=4, task="both", failed_every=9, n_seeds=1, n_genes=5)
    return gather(run)


def _datasets(h5: h5py.File) -> dict[str, h5py.Dataset]:
    found = {}
    h5.visititems(lambda p, o: found.__setitem__(p, o) if isinstance(o, h5py.Dataset) else None)
    return found


def test_plain_h5py_reads_utf8_strings_and_every_trial_table_has_trial_id(summary_file):
    with h5py.File(summary_file, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION == 2
        ids = list(f["trials/trial_id"].asstr()[()])
        assert all(isinstance(i, str) for i in ids) and len(ids) == 40
        for table in ("finals", "curves", "genes"):
            assert list(f[table]["trial_id"].asstr()[()]) == ids, table
        for path, ds in _datasets(f).items():
            info = h5py.check_string_dtype(ds.dtype)
            if ds.dtype.kind == "O":
                assert info is not None and info.encoding == "utf-8", path
                assert all(isinstance(v, str) for v in np.ravel(ds.asstr()[()])), path
            assert isinstance(ds.attrs["description"], str) and ds.attrs["description"], path
            assert isinstance(ds.attrs["units"], str), path
        assert f["trials/wall_s"].attrs["units"] == "s"
        assert f["finals/val_accuracy"].attrs["units"] == "1"
        assert f["curves/epoch_seconds"].attrs["units"] == "s"


def test_the_documented_reads_run_as_written(summary_file, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    plain = [b for b in blocks if "h5py.File" in b]
    assert len(plain) == 2 and len(plain[0].strip().splitlines()) == 3
    namespaces = []
    for block in plain:
        namespaces.append({})
        exec(block.replace("runs/quick/summary.h5", str(summary_file)), namespaces[-1])
    namespaces[0]["f"].close()
    finals = namespaces[0]["finals"]
    assert all(isinstance(i, str) for i in finals.index) and len(finals) == 40
    pd.testing.assert_frame_equal(finals, load.finals(summary_file, keys=False),
                                  check_index_type=False, check_names=False)
    assert len(namespaces[1]["trials"]) == 40


def test_version_1_summaries_are_still_read(tmp_path, summary_file):
    old = tmp_path / "summary.h5"
    old.write_bytes(summary_file.read_bytes())
    with h5py.File(old, "r+") as f:  # as written before version 2
        f.attrs["schema_version"] = 1
        for table in ("finals", "curves", "genes"):
            del f[table]["trial_id"]
    assert load.gene_arrays(old) == load.gene_arrays(summary_file)
    pd.testing.assert_frame_equal(load.finals(old), load.finals(summary_file))
    assert "trial_id" not in load.gene_arrays(summary_file)
    written = export.export(old, "csv", tmp_path / "x")
    assert [p.name for p in written] == [f"{t}.csv" for t in export.TABLES]


def test_csv_export_writes_flat_tables_with_trial_ids(summary_file, tmp_path):
    assert cli(["export", str(summary_file), "--out", str(tmp_path)]) == 0
    trials = pd.read_csv(tmp_path / "trials.csv")
    curves = pd.read_csv(tmp_path / "curves.csv")
    finals = pd.read_csv(tmp_path / "finals.csv")
    groups = pd.read_csv(tmp_path / "groups.csv")
    assert list(curves.columns) == ["trial_id", "epoch", "metric", "value"]
    assert set(curves.trial_id) <= set(trials.trial_id) and curves.epoch.min() == 1
    wide = load.curves(summary_file, "val_accuracy")
    assert len(curves[curves.metric == "val_accuracy"]) == int(wide.notna().sum().sum())
    first = wide.index[0]
    got = curves[(curves.trial_id == first) & (curves.metric == "val_accuracy")]
    assert np.allclose(got.sort_values("epoch").value, wide.loc[first].dropna())
    assert list(finals.trial_id) == list(trials.trial_id) == list(wide.index)
    assert len(groups) == len(load.groups(summary_file))


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed: the missing-package error "
                                        "cannot be shown")
def test_parquet_without_pyarrow_names_the_package(summary_file, tmp_path, capsys):
    with pytest.raises(SpecError, match="pip install pyarrow"):
        export.export(summary_file, "parquet", tmp_path / "p")
    assert not (tmp_path / "p").exists()
    assert cli(["export", str(summary_file), "--format", "parquet",
                "--out", str(tmp_path / "p")]) == 2
    assert "pip install pyarrow" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed (optional: the "
                                            "`parquet` extra)")
def test_parquet_export_reads_back(summary_file, tmp_path):
    export.export(summary_file, "parquet", tmp_path)
    curves = pd.read_parquet(tmp_path / "curves.parquet")
    assert list(curves.columns) == ["trial_id", "epoch", "metric", "value"]
