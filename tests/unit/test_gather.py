"""Gather stage: schema, statistics, incremental and atomic writes, bad records, load API."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from genodl_core import records
from genodl_core.results import bench_gather, load, summary
from genodl_core.results.bench_gather import SyntheticTrial, write_synthetic_sweep, write_trial
from genodl_core.results.summary import SCHEMA_VERSION, gather

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _spec(variant="base", kind=None, level=0.0, seed=0, model="nt3"):
    noise = [] if kind is None else [{"kind": kind, "fraction": level}]
    return {"seed": seed, "device": "cpu", "precision": "fp32",
            "model": {"name": model, "variant": variant, "dense": [20, 10]},
            "data": {"source": "synthetic_nt3", "n_train": 50}, "noise": noise,
            "train": {"epochs": 3, "learning_rate": 0.01}}


def _write_done(run_dir: Path, spec: dict, final: dict, curves: dict,
                arrays: dict | None = None, where: str = "trials") -> str:
    """A done record with exactly the given finals and curves."""
    trial_id = SyntheticTrial(spec, "done").trial_id
    trial_dir = run_dir / where / trial_id if where else run_dir / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(trial_dir / records.SPEC_FILE, {"trial_id": trial_id, **spec})
    records.write_result(trial_dir, {"trial_id": trial_id, "final": final, "curves": curves,
                                     "noise": []}, arrays)
    records.write_status(trial_dir, records.DONE, trial_id=trial_id, wall_s=1.5, gpu="0")
    return trial_id


def _write_failed(run_dir: Path, spec: dict) -> str:
    trial_id = SyntheticTrial(spec, "failed").trial_id
    trial_dir = run_dir / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(trial_dir / records.SPEC_FILE, {"trial_id": trial_id, **spec})
    records.write_status(trial_dir, records.FAILED, trial_id=trial_id, wall_s=0.5,
                         error_type="ValueError", error="bad things", traceback="Traceback...")
    return trial_id


def _snapshot(path: Path) -> dict:
    """Every dataset and attribute of a summary (creation time left out)."""
    out = {}
    with h5py.File(path, "r") as h5:
        out["attrs"] = {k: v for k, v in h5.attrs.items() if k != "created_at"}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
                out[name] = data
            out[f"{name}@attrs"] = dict(obj.attrs)

        h5.visititems(visit)
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if key.endswith("@attrs") or key == "attrs":
            assert set(a[key]) == set(b[key]), key
            for k in a[key]:
                np.testing.assert_equal(a[key][k], b[key][k], err_msg=f"{key}.{k}")
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------------

def test_schema_of_a_mixed_sweep(tmp_path):
    run = tmp_path / "run"
    trials = write_synthetic_sweep(run, 40, epochs=6, task="both", failed_every=9, n_seeds=1,
                                   n_genes=12)
    path = gather(run)
    assert path == run / "summary.h5"
    with h5py.File(path, "r") as h5:
        assert h5.attrs["schema_version"] == SCHEMA_VERSION
        for attr in ("genodl_version", "git_revision", "created_at", "sweep_spec"):
            assert isinstance(h5.attrs[attr], str) and h5.attrs[attr], attr
        assert json.loads(h5.attrs["sweep_spec"])["n_trials"] == 40
        assert h5.attrs["n_trials"] == 40
        n_failed = sum(t.state == "failed" for t in trials)
        assert h5.attrs["n_failed"] == n_failed == 4
        assert h5.attrs["n_done"] == 36
        for name in summary.FIXED_COLUMNS:
            assert h5["trials"][name].shape == (40,), name
        assert "spec.model.dense" in h5["trials"] or "spec.model.hidden" in h5["trials"]
        assert h5["curves"]["val_accuracy"].shape == (40, 6)
        assert h5["curves"].attrs["max_epochs"] == 6
        assert h5["finals"]["val_accuracy"].shape == (40,)
        assert h5["genes"]["gene_ids"].shape == (12,)
        assert h5["genes"]["val_mae_per_gene"].shape == (40, 12)
        assert list(h5["problems"].asstr()[()]) == []

    table = load.trials(path)
    assert len(table) == 40 and table.index.name == "trial_id"
    assert set(table.index) == {t.trial_id for t in trials}
    failed = table[table.state == "failed"]
    assert (failed.error == "loss is NaN at epoch 3").all()
    assert (failed.error_type == "FloatingPointError").all()
    assert failed.traceback.str.contains("FloatingPointError").all()
    # every spec parameter flattened, with its type kept
    assert table["spec.train.epochs"].dtype == np.int64
    assert (table["spec.train.epochs"] == 6).all()
    nt3 = table[table.model == "nt3"]
    assert set(nt3.variant) == {"base", "abstaining"}
    assert set(table[table.model == "dgex"].variant) == {"default"}
    assert (nt3["spec.model.dense"] == "[200, 20]").all()
    # noise kind and level from the level field of each kind
    flips = table[table.noise_kind == "label_flip"]
    assert np.allclose(flips.noise_level, flips["spec.noise.0.fraction"])
    gauss = table[table.noise_kind == "gaussian"]
    assert np.allclose(gauss.noise_level, gauss["spec.noise.0.std"])
    assert (table[table.noise_kind == "none"].noise_level == 0.0).all()
    # finals are NaN for failed trials; D-GEX gene arrays only for D-GEX rows
    fin = load.finals(path)
    assert fin.loc[failed.index, "val_accuracy"].isna().all()
    genes = load.gene_errors(path)
    dgex_done = table[(table.model == "dgex") & (table.state == "done")].index
    assert genes.loc[dgex_done].notna().all().all()
    assert genes.drop(index=dgex_done).isna().all().all()
    assert list(genes.columns[:2]) == ["GENE00000", "GENE00001"]
    assert load.gene_arrays(path) == ["lr_val_mae_per_gene", "val_mae_per_gene"]


def test_curves_are_nan_padded_and_values_exact(tmp_path):
    run = tmp_path / "run"
    a = _write_done(run, _spec(seed=1), {"val_accuracy": 0.5},
                    {"val_accuracy": [0.1, 0.2, 0.3], "loss": [3.0, 2.0, 1.0]})
    b = _write_done(run, _spec(seed=2), {"val_accuracy": 0.6},
                    {"val_accuracy": [0.4, float("nan")], "loss": [5.0, 4.0]})
    path = gather(run)
    cur = load.curves(path, "val_accuracy")
    assert list(cur.columns) == [1, 2, 3]
    np.testing.assert_array_equal(cur.loc[a].to_numpy(), [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(cur.loc[b].to_numpy(), [0.4, np.nan, np.nan])
    assert load.trials(path).loc[[a, b], "n_epochs"].tolist() == [3, 2]
    assert load.curve_metrics(path) == ["loss", "val_accuracy"]
    with pytest.raises(KeyError, match="available"):
        load.curves(path, "nope")


def test_group_statistics_match_hand_computed_values(tmp_path):
    run = tmp_path / "run"
    accs = [0.9, 0.8, 0.7]
    for seed, acc in enumerate(accs):
        _write_done(run, _spec(kind="label_flip", level=0.2, seed=seed),
                    {"val_accuracy": acc, "val_loss": 1.0 + seed}, {"val_accuracy": [acc]})
    # a diverged trial: its NaN loss is not counted, its accuracy is
    _write_done(run, _spec(kind="label_flip", level=0.2, seed=9),
                {"val_accuracy": 0.6, "val_loss": float("nan")}, {"val_accuracy": [0.6]})
    _write_failed(run, _spec(kind="label_flip", level=0.2, seed=10))
    # another level: one trial only, std undefined
    _write_done(run, _spec(kind="label_flip", level=0.4, seed=0),
                {"val_accuracy": 0.55, "val_loss": 2.0}, {"val_accuracy": [0.55]})
    _write_failed(run, _spec(kind="label_flip", level=0.5, seed=0))
    path = gather(run)
    g = load.groups(path).set_index("noise_level")
    assert list(g.index) == [0.2, 0.4, 0.5]
    row = g.loc[0.2]
    vals = [0.9, 0.8, 0.7, 0.6]
    mean = sum(vals) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 3)
    assert row["val_accuracy.mean"] == pytest.approx(0.75)
    assert row["val_accuracy.std"] == pytest.approx(std) == pytest.approx(0.1290994)
    assert row["val_accuracy.min"] == pytest.approx(0.6)
    assert row["val_accuracy.max"] == pytest.approx(0.9)
    assert row["val_accuracy.count"] == 4
    assert row["val_loss.count"] == 3
    assert row["val_loss.mean"] == pytest.approx(2.0)
    assert row["val_loss.std"] == pytest.approx(1.0)
    assert row["n_done"] == 4 and row["n_failed"] == 1
    single = g.loc[0.4]
    assert single["val_accuracy.mean"] == pytest.approx(0.55)
    assert math.isnan(single["val_accuracy.std"])
    assert single["val_accuracy.count"] == 1
    only_failed = g.loc[0.5]
    assert only_failed["n_failed"] == 1 and only_failed["val_accuracy.count"] == 0
    assert math.isnan(only_failed["val_accuracy.mean"])
    assert set(g.noise_kind) == {"label_flip"} and set(g.model) == {"nt3"}
    # same figures through pandas on the finals table
    fin = load.finals(path).query("state == 'done'")
    by = fin.groupby("noise_levels")["val_accuracy"].agg(["mean", "std", "count"])
    assert by.loc["0.2", "mean"] == pytest.approx(row["val_accuracy.mean"])
    assert by.loc["0.2", "std"] == pytest.approx(row["val_accuracy.std"])


def test_groups_separate_variants_and_kinds(tmp_path):
    run = tmp_path / "run"
    _write_done(run, _spec("base"), {"val_accuracy": 0.9}, {})
    _write_done(run, _spec("abstaining"), {"val_accuracy": 0.95}, {})
    _write_done(run, _spec("base", "label_flip", 0.1), {"val_accuracy": 0.8}, {})
    _write_done(run, _spec("base", "correlated_label_flip", 0.1), {"val_accuracy": 0.7}, {})
    g = load.groups(gather(run), metrics=["val_accuracy"])
    assert len(g) == 4
    assert g["val_accuracy.count"].tolist() == [1, 1, 1, 1]
    assert sorted(g["val_accuracy.mean"].round(2)) == [0.7, 0.8, 0.9, 0.95]
    with pytest.raises(KeyError, match="available"):
        load.groups(run, metrics=["accuracy_typo"])


# ---------------------------------------------------------------------------------------------
# bad records, layouts
# ---------------------------------------------------------------------------------------------

def test_corrupt_and_partial_records_are_reported_not_fatal(tmp_path, caplog):
    run = tmp_path / "run"
    good = _write_done(run, _spec(seed=1), {"val_accuracy": 0.9}, {"val_accuracy": [0.9]})
    broken = _write_done(run, _spec(seed=2), {"val_accuracy": 0.1}, {"val_accuracy": [0.1]})
    (run / "trials" / broken / records.RESULT_FILE).write_text('{"trial_id": "')  # truncated
    partial = run / "trials" / "0123456789abcdef"
    partial.mkdir()
    (partial / records.SPEC_FILE).write_text(json.dumps({"trial_id": partial.name, **_spec(seed=3)}))
    records.write_status(partial, records.RUNNING)
    no_result = _write_done(run, _spec(seed=4), {"val_accuracy": 0.2}, {})
    (run / "trials" / no_result / records.RESULT_FILE).unlink()
    garbage = run / "trials" / "ffffffffffffffff"
    garbage.mkdir()
    (garbage / records.STATUS_FILE).write_text("not json at all")
    caplog.set_level("WARNING")

    path = gather(run)
    table = load.trials(path)
    assert table.loc[good, "state"] == "done"
    assert table.loc[broken, "state"] == "corrupt"
    assert "result.json is unreadable" in table.loc[broken, "error"]
    assert table.loc[no_result, "state"] == "corrupt"
    assert "result.json is missing" in table.loc[no_result, "error"]
    assert table.loc[partial.name, "state"] == "running"
    assert table.loc[garbage.name, "state"] == "corrupt"
    problems = load.problems(path)
    assert any(broken in p for p in problems) and any(garbage.name in p for p in problems)
    assert any(broken in r.getMessage() for r in caplog.records)
    g = load.groups(path)
    assert g["val_accuracy.count"].sum() == 1
    assert g["val_accuracy.mean"].dropna().tolist() == [0.9]


def test_records_directly_under_the_run_directory(tmp_path):
    run = tmp_path / "run"
    a = _write_done(run, _spec(seed=1), {"val_accuracy": 0.9}, {}, where="")
    b = _write_done(run, _spec(seed=2), {"val_accuracy": 0.8}, {})
    (run / "plots").mkdir()  # not a record folder
    table = load.trials(gather(run))
    assert sorted(table.index) == sorted([a, b])
    assert table.loc[a, "record_path"] == a
    assert table.loc[b, "record_path"] == f"trials/{b}"


def test_empty_run_directory_gives_an_empty_summary(tmp_path):
    path = gather(tmp_path)
    assert load.trials(path).empty
    assert load.groups(path).empty
    assert load.attributes(path)["sweep_spec"] is None


def test_missing_run_directory_is_a_data_error(tmp_path):
    from genodl_core.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        gather(tmp_path / "nope")
    with pytest.raises(DataError, match="genodl gather"):
        load.trials(tmp_path)


def test_gene_arrays_are_aligned_by_gene_id(tmp_path):
    run = tmp_path / "run"
    ids = np.array(["G1", "G2", "G3"])
    a = _write_done(run, _spec(model="dgex", seed=1), {"val_mae": 1.0}, {},
                    {"val_mae_per_gene": np.array([1.0, 2.0, 3.0]), "target_ids": ids})
    # same genes, other order, one unknown gene
    b = _write_done(run, _spec(model="dgex", seed=2), {"val_mae": 2.0}, {},
                    {"val_mae_per_gene": np.array([30.0, 10.0, 99.0]),
                     "target_ids": np.array(["G3", "G1", "G9"])})
    path = gather(run)
    genes = load.gene_errors(path)
    assert list(genes.columns) == ["G1", "G2", "G3"]
    first = genes.index[0]
    order = {a: [1.0, 2.0, 3.0], b: [10.0, np.nan, 30.0]}
    np.testing.assert_array_equal(genes.loc[first].to_numpy(), order[first])
    other = b if first == a else a
    np.testing.assert_array_equal(genes.loc[other].to_numpy(), order[other])
    assert any("not among the summary's gene ids" in p for p in load.problems(path))
    with pytest.raises(KeyError, match="available"):
        load.gene_errors(path, "nope")


# ---------------------------------------------------------------------------------------------
# incremental
# ---------------------------------------------------------------------------------------------

def test_incremental_gather_equals_gather_from_scratch(tmp_path, monkeypatch):
    run = tmp_path / "run"
    rng = np.random.default_rng(5)
    trials = write_synthetic_sweep(run, 30, epochs=5, task="both", failed_every=7, n_seeds=1,
                                   n_genes=8)
    pending = SyntheticTrial(bench_gather._spec("nt3", "base", "gaussian", 0.3, 77, 5), "running")
    write_trial(run / "trials" / pending.trial_id, pending, rng)
    gather(run)

    # more trials finish; the running one completes; one record is rewritten (a rerun)
    more = bench_gather.synthetic_specs(45, task="both", n_seeds=1, epochs=5)
    new = [SyntheticTrial(s, "done") for s in list(more)[30:]]
    for trial in new:
        write_trial(run / "trials" / trial.trial_id, trial, rng, n_genes=8)
    time.sleep(0.01)
    write_trial(run / "trials" / pending.trial_id, SyntheticTrial(pending.spec, "done"), rng)
    rerun = trials[3]
    write_trial(run / "trials" / rerun.trial_id, SyntheticTrial(rerun.spec, "done"), rng,
                n_genes=8)

    parsed = []
    original = summary.read_trial_row
    monkeypatch.setattr(summary, "read_trial_row",
                        lambda d, p=None: parsed.append(Path(d).name) or original(d, p))
    incremental = gather(run)
    assert sorted(parsed) == sorted([t.trial_id for t in new] + [pending.trial_id,
                                                                 rerun.trial_id])
    scratch = gather(run, output=tmp_path / "scratch.h5", incremental=False)
    _assert_same(_snapshot(incremental), _snapshot(scratch))
    table = load.trials(incremental)
    assert len(table) == 46 and table.loc[pending.trial_id, "state"] == "done"
    assert table.loc[rerun.trial_id, "state"] == "done"

    # nothing changed: nothing parsed, same file
    parsed.clear()
    again = gather(run)
    assert parsed == []
    _assert_same(_snapshot(again), _snapshot(scratch))


def test_unreadable_previous_summary_is_rebuilt(tmp_path):
    run = tmp_path / "run"
    write_synthetic_sweep(run, 5, epochs=3)
    (run / "summary.h5").write_bytes(b"garbage, not HDF5")
    path = gather(run)
    assert len(load.trials(path)) == 5


# ---------------------------------------------------------------------------------------------
# atomicity
# ---------------------------------------------------------------------------------------------

def test_failed_gather_leaves_previous_summary_intact(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_synthetic_sweep(run, 6, epochs=3)
    path = gather(run)
    before = _snapshot(path)
    write_synthetic_sweep(run / "more", 1)  # unrelated change; then the write fails midway

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(summary, "_write_groups", boom)
    with pytest.raises(OSError, match="disk full"):
        gather(run)
    _assert_same(_snapshot(path), before)
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_gather_killed_midway_leaves_previous_summary_intact(tmp_path):
    run = tmp_path / "run"
    write_synthetic_sweep(run, 8, epochs=4)
    path = gather(run)
    before = _snapshot(path)
    rng = np.random.default_rng(1)
    extra = SyntheticTrial(bench_gather._spec("nt3", "base", "gaussian", 0.4, 99, 4), "done")
    write_trial(run / "trials" / extra.trial_id, extra, rng)
    marker = tmp_path / "midway"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from genodl_core.results import summary
        real = summary._write_groups
        def slow(*args, **kwargs):
            real(*args, **kwargs)
            Path({str(marker)!r}).write_text("x")
            time.sleep(60)
        summary._write_groups = slow
        summary.gather({str(run)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "gather exited before reaching the midpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        temps = [p for p in run.iterdir() if p.name.endswith(".tmp")]
        assert temps, "the summary is being written to a temporary file"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_same(_snapshot(path), before)
    assert extra.trial_id not in set(load.trials(path).index)
    # the next gather completes and picks the new trial up
    assert extra.trial_id in set(load.trials(gather(run)).index)


# ---------------------------------------------------------------------------------------------
# readable without genodl; benchmark
# ---------------------------------------------------------------------------------------------

def test_readable_with_plain_h5py_and_pandas(tmp_path):
    run = tmp_path / "run"
    write_synthetic_sweep(run, 12, epochs=4, failed_every=5)
    path = gather(run)
    with h5py.File(path, "r") as f:
        cols = {}
        for name, ds in f["trials"].items():
            cols[name] = ds.asstr()[()] if ds.dtype.kind == "O" else ds[()]
        trials = pd.DataFrame(cols).set_index("trial_id")
        acc = pd.DataFrame(f["curves/val_accuracy"][()], index=trials.index)
        grp = pd.DataFrame({k: (v.asstr()[()] if v.dtype.kind == "O" else v[()])
                            for k, v in f["groups"].items()})
    assert len(trials) == 12 and acc.shape == (12, 4)
    assert (trials.state == "failed").sum() == 2
    pd.testing.assert_frame_equal(trials[list(load.trials(path).columns)], load.trials(path))
    assert grp["val_accuracy.count"].sum() == 10


def test_benchmark_runs_at_small_size(tmp_path, capsys):
    figures = bench_gather.run_benchmark(40, 10, directory=tmp_path)
    assert figures["trials"] == 40 and figures["gather_s"] > 0 and figures["regather_s"] > 0
    assert figures["gather_s"] < 5
    assert len(load.trials(tmp_path / "run")) == 40
    assert bench_gather.main(["--trials", "10", "--epochs", "3"]) == 0
    assert "gather 10 trials x 3 epochs" in capsys.readouterr().out


def test_column_types_are_inferred():
    assert summary.column_array([1, 2])[1] == "int"
    data, kind = summary.column_array([1, None, 2.5])
    assert kind == "float" and math.isnan(data[1])
    assert summary.column_array([True, False])[1] == "bool"
    assert summary.column_array(["a", None])[0].tolist() == ["a", ""]
    data, kind = summary.column_array([1, "x"])
    assert kind == "str" and data.tolist() == ["1", '"x"']


def test_trials_of_the_sweep_without_a_record_are_pending(tmp_path):
    run = tmp_path / "run"
    done = _write_done(run, _spec(seed=1), {"val_accuracy": 0.9}, {"val_accuracy": [0.9]})
    waiting = SyntheticTrial(_spec(kind="label_flip", level=0.3, seed=1), "done")
    records.atomic_write_json(run / "sweep.json", {"name": "s", "trials": [
        {"index": 0, "trial_id": done, "spec": _spec(seed=1)},
        {"index": 1, "trial_id": waiting.trial_id, "spec": waiting.spec},
        {"index": 2, "trial_id": 5}]})  # malformed entry: skipped
    path = gather(run)
    table = load.trials(path)
    assert table.state.to_dict() == {done: "done", waiting.trial_id: "pending"}
    assert table.loc[waiting.trial_id, "noise_level"] == 0.3
    assert table.loc[waiting.trial_id, "spec.noise.0.fraction"] == 0.3
    assert load.attributes(path)["n_pending"] == 1
    g = load.groups(path).set_index("noise_kind")
    assert g.loc["label_flip", "n_pending"] == 1 and g.loc["label_flip", "val_accuracy.count"] == 0
    assert load.attributes(path)["sweep_spec"]["name"] == "s"
    # the record appears: the next gather reads it and it is no longer pending
    rng = np.random.default_rng(0)
    write_trial(run / "trials" / waiting.trial_id, waiting, rng)
    incremental = gather(run)
    assert load.trials(incremental).loc[waiting.trial_id, "state"] == "done"
    _assert_same(_snapshot(incremental),
                 _snapshot(gather(run, output=tmp_path / "s.h5", incremental=False)))


def test_temporaries_of_killed_gathers_are_removed_once_stale(tmp_path):
    run = tmp_path / "run"
    write_synthetic_sweep(run, 2, epochs=2)
    stale, fresh = run / ".summary.h5.old.tmp", run / ".summary.h5.new.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - summary.STALE_TEMP_S - 10
    os.utime(stale, (old, old))
    gather(run)
    assert not stale.exists() and fresh.exists()


# ---------------------------------------------------------------------------------------------
# execution plans
# ---------------------------------------------------------------------------------------------

def _engine(mode="plain", precision="fp32", label="plain", pack_size=1, device="cpu", **switches):
    return {"mode": mode, "device": device, "precision": precision, "pack_size": pack_size,
            "switches": {"channels_last": False, "compile": False, **switches}, "label": label}


def _set_engine(run_dir: Path, trial_id: str, engine) -> None:
    """Give a record's provenance.json this plan (None: no 'engine' key, as older records)."""
    path = run_dir / "trials" / trial_id / records.PROVENANCE_FILE
    prov = records.read_json(path) if path.exists() else records.provenance({"device": "cpu"})
    prov.pop("engine", None)
    if engine is not None:
        prov["engine"] = engine
    records.atomic_write_json(path, prov)


FAST = _engine("fast", "bf16", "nhwc+fused+compile+bf16in", device="cuda", channels_last=True,
               compile=True, eval_batch_size=256)


def test_execution_plans_are_stored_per_trial_and_listed_in_an_attribute(tmp_path):
    run = tmp_path / "run"
    fast = [_write_done(run, _spec(seed=s), {"val_accuracy": 0.9}, {}) for s in (1, 2)]
    plain = _write_done(run, _spec(seed=3), {"val_accuracy": 0.8}, {})
    old = _write_done(run, _spec(seed=4), {"val_accuracy": 0.7}, {})
    failed = _write_failed(run, _spec(seed=5))
    for tid in fast:
        _set_engine(run, tid, FAST)
    _set_engine(run, plain, _engine())
    _set_engine(run, old, None)
    _set_engine(run, failed, _engine("packed", "tf32", "nhwc", pack_size=8, device="cuda"))
    waiting = SyntheticTrial(_spec(seed=6), "done")
    listed = [*fast, plain, old, failed, waiting.trial_id]  # a sweep gathers only its own trials
    records.atomic_write_json(run / "sweep.json", {"name": "s", "trials": [
        {"index": i, "trial_id": tid, "spec": waiting.spec} for i, tid in enumerate(listed)]})

    path = gather(run)
    with h5py.File(path, "r") as h5:
        columns = json.loads(h5["trials"].attrs["columns"])
        for name in ("engine_mode", "engine_device", "engine_precision", "engine_label",
                     "engine_pack_size", "engine_json"):
            assert name in columns and h5["trials"][name].shape == (6,)
        assert h5["trials"]["engine_pack_size"].dtype == np.int64
        plans = json.loads(h5.attrs["engine_plans"])
    table = load.trials(path)
    assert table.loc[fast[0], ["engine_mode", "engine_device", "engine_precision",
                               "engine_label", "engine_pack_size"]].tolist() == \
        ["fast", "cuda", "bf16", "nhwc+fused+compile+bf16in", 1]
    assert json.loads(table.loc[fast[1], "engine_json"]) == FAST
    assert table.loc[plain, ["engine_mode", "engine_precision", "engine_label"]].tolist() == \
        ["plain", "fp32", "plain"]
    # failed trials keep the plan they ran under; trials without one say so explicitly
    assert table.loc[failed, ["engine_mode", "engine_pack_size"]].tolist() == ["packed", 8]
    for tid in (old, waiting.trial_id):
        assert table.loc[tid, ["engine_mode", "engine_device", "engine_precision",
                               "engine_label"]].tolist() == ["unrecorded"] * 4
        assert table.loc[tid, "engine_pack_size"] == -1
        assert json.loads(table.loc[tid, "engine_json"]) is None

    # the attribute lists the plans of the done trials only, the largest group first
    assert [(p["name"], p["n_trials"]) for p in plans] == [
        ("fast/bf16/nhwc+fused+compile+bf16in", 2), ("plain/fp32/plain", 1), ("unrecorded", 1)]
    assert plans[0]["examples"] == [t for t in table.index if t in fast]
    assert plans[0]["pack_sizes"] == [1] and plans[0]["devices"] == ["cuda"]
    assert [g.name for g in load.execution_plans(path)] == [p["name"] for p in plans]
    assert load.attributes(path)["engine_plans"] == plans

    # incremental gathering keeps the plans; a changed plan is read again
    _set_engine(run, old, _engine())
    incremental = gather(run)
    _assert_same(_snapshot(incremental),
                 _snapshot(gather(run, output=tmp_path / "s.h5", incremental=False)))
    assert [(g.name, g.n_trials) for g in load.execution_plans(incremental)] == [
        ("fast/bf16/nhwc+fused+compile+bf16in", 2), ("plain/fp32/plain", 2)]


def test_summary_without_plan_columns_is_gathered_again(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_synthetic_sweep(run, 4, epochs=2)
    path = gather(run)
    with h5py.File(path, "r+") as h5:  # as written before the plan columns existed
        trials = h5["trials"]
        for name in list(trials):
            if name.startswith("engine_"):
                del trials[name]
        trials.attrs["columns"] = json.dumps([c for c in json.loads(trials.attrs["columns"])
                                              if not c.startswith("engine_")])
        del h5.attrs["engine_plans"]
    assert load.execution_plans(path) == []
    parsed = []
    original = summary.read_trial_row
    monkeypatch.setattr(summary, "read_trial_row",
                        lambda d, p=None: parsed.append(Path(d).name) or original(d, p))
    again = gather(run)
    assert len(parsed) == 4
    assert set(load.trials(again)["engine_mode"]) == {"unrecorded"}


def test_plan_groups_ignore_pack_size_and_warn_only_for_several_plans():
    from genodl_core.results.plans import mixed_plans_warning, plan_groups

    packs = [("a" * 16, _engine("packed", "tf32", "nhwc", pack_size=4)),
             ("b" * 16, _engine("packed", "tf32", "nhwc", pack_size=8))]
    one = plan_groups(packs)
    assert len(one) == 1 and one[0].n_trials == 2 and one[0].pack_sizes == [4, 8]
    assert one[0].name == "packed/tf32/nhwc" and mixed_plans_warning(one) is None
    assert mixed_plans_warning(plan_groups([])) is None
    assert [g.name for g in plan_groups([("c" * 16, None), ("d" * 16, "garbage")])] == \
        ["unrecorded"]

    groups = plan_groups([*packs, ("e" * 16, _engine()), ("f" * 16, None),
                          ("0" * 16, _engine("fast", "bf16", "nhwc"))])
    assert [(g.name, g.n_trials) for g in groups] == [
        ("packed/tf32/nhwc", 2), ("fast/bf16/nhwc", 1), ("plain/fp32/plain", 1),
        ("unrecorded", 1)]
    assert mixed_plans_warning(groups) == (
        "warning: the 5 done trials of this sweep were trained under 4 execution plans: "
        f"packed/tf32/nhwc (2 trials, e.g. {'a' * 16}), fast/bf16/nhwc (1 trial, e.g. "
        f"{'0' * 16}), plain/fp32/plain (1 trial, e.g. {'e' * 16}), unrecorded (1 trial, e.g. "
        f"{'f' * 16}); compare their numbers with care")
    # a plan that leaves a field out is not mistaken for another one
    partial = plan_groups([("1" * 16, {"mode": "fast", "label": "nhwc"})])
    assert partial[0].name == "fast/unrecorded/nhwc"
