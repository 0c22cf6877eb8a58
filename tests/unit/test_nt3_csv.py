"""NT3 CSV loader and binary cache: round trip, cache hits, staleness, concurrency, bad files."""

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

import genodl_core.data.nt3_csv as nt3_csv
from genodl_core.data.cache import CACHE_DIRNAME, load_or_build
from genodl_core.data.nt3_csv import (NT3CsvParams, load_nt3_csv, read_nt3_csv, write_nt3_csv)
from genodl_core.errors import DataError, SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import build

pytestmark = pytest.mark.timeout(60)


def _data(seed: int, n: int = 6, f: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0.0, 2.0, (n, f)).astype(np.float32)
    x[rng.random((n, f)) < 0.4] = 0.0
    x[0, 0] = np.float32(1.0e-7)             # awkward values must survive exactly
    x[1, 1] = np.float32(123456.789)
    y = np.arange(n) % 2
    return x, y


def _pair(tmp_path: Path, f_test: int = 5):
    x, y = _data(0)
    xt, yt = _data(1, n=4, f=f_test)
    write_nt3_csv(tmp_path / "train.csv", x, y)
    write_nt3_csv(tmp_path / "test.csv", xt, yt)
    return (x, y), (xt, yt)


def _params(tmp_path: Path, **kw) -> NT3CsvParams:
    return NT3CsvParams(train_path=str(tmp_path / "train.csv"),
                        test_path=str(tmp_path / "test.csv"), **kw)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_registered():
    entry = DATASETS.get("nt3_csv")
    assert entry.params is NT3CsvParams and entry.meta["task"] == "classification"
    assert NT3CsvParams("a", "b").n_features() is None


def test_round_trip_values_exact_and_test_file_is_validation(tmp_path):
    (x, y), (xt, yt) = _pair(tmp_path)
    ds = load_nt3_csv(_params(tmp_path))
    np.testing.assert_array_equal(ds.x_train, x)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.x_val, xt)
    np.testing.assert_array_equal(ds.y_val, yt)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.n_classes == 2 and ds.task == "classification"
    assert ds.info["train"]["path"] == str((tmp_path / "train.csv").resolve())
    assert ds.info["train"]["bytes"] == (tmp_path / "train.csv").stat().st_size
    assert ds.info["train"]["cache"]["status"] == "miss"
    assert (tmp_path / CACHE_DIRNAME).is_dir()


def test_hand_written_file_parses(tmp_path):
    path = _write(tmp_path / "t.csv", "0,1.5,0,2e-3\n\n1, 3 ,4.25,0\r\n")
    table = read_nt3_csv(path, use_cache=False)
    np.testing.assert_array_equal(table.x, np.array([[1.5, 0, 2e-3], [3, 4.25, 0]], np.float32))
    np.testing.assert_array_equal(table.y, [0, 1])


def test_second_load_is_a_cache_hit_without_parsing(tmp_path, monkeypatch):
    (x, _), _ = _pair(tmp_path)
    first = load_nt3_csv(_params(tmp_path))

    def no_parse(source):
        raise AssertionError(f"parser called for {source}")

    monkeypatch.setattr(nt3_csv, "_parse", no_parse)
    second = load_nt3_csv(_params(tmp_path))
    assert second.info["train"]["cache"]["status"] == "hit"
    assert second.info["test"]["cache"]["status"] == "hit"
    np.testing.assert_array_equal(second.x_train, x)
    np.testing.assert_array_equal(second.x_train, first.x_train)
    assert isinstance(second.x_train, np.memmap) or isinstance(second.x_train.base, np.memmap)
    assert not second.x_train.flags.writeable


def test_stale_cache_is_not_used(tmp_path):
    _pair(tmp_path)
    load_nt3_csv(_params(tmp_path))
    x2, y2 = _data(7)
    write_nt3_csv(tmp_path / "train.csv", x2, y2)
    st = (tmp_path / "train.csv").stat()
    os.utime(tmp_path / "train.csv", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    ds = load_nt3_csv(_params(tmp_path))
    assert ds.info["train"]["cache"]["status"] == "miss"
    assert ds.info["test"]["cache"]["status"] == "hit"
    np.testing.assert_array_equal(ds.x_train, x2)
    manifests = list((tmp_path / CACHE_DIRNAME).glob("train.csv.*.json"))
    assert len(manifests) == 1                  # the stale entry was removed


def test_cache_dir_parameter_and_damaged_entry_is_rebuilt(tmp_path):
    (x, _), _ = _pair(tmp_path)
    cache = tmp_path / "scratch"
    load_nt3_csv(_params(tmp_path, cache_dir=str(cache)))
    assert not (tmp_path / CACHE_DIRNAME).exists()
    npys = sorted(cache.glob("train.csv.*.x.npy"))
    assert len(npys) == 1
    npys[0].write_bytes(b"garbage")            # e.g. a disk problem
    ds = load_nt3_csv(_params(tmp_path, cache_dir=str(cache)))
    assert ds.info["train"]["cache"]["status"] == "miss"
    np.testing.assert_array_equal(ds.x_train, x)


def test_unwritable_cache_dir_falls_back_to_parsing(tmp_path):
    (x, _), _ = _pair(tmp_path)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory would go")
    ds = load_nt3_csv(_params(tmp_path, cache_dir=str(blocker / "cache")))
    assert ds.info["train"]["cache"]["status"] == "unwritable"
    np.testing.assert_array_equal(ds.x_train, x)


def test_existing_cache_dir_without_lock_permission_falls_back_to_parsing(tmp_path, monkeypatch):
    # As for a non-root user on a shared, read-only cache directory: creating the lock fails.
    import genodl_core.data.cache as cache_module

    (x, _), _ = _pair(tmp_path)
    (tmp_path / "cache").mkdir()
    real_open = os.open

    def refuse_locks(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cache_module.os, "open", refuse_locks)
    ds = load_nt3_csv(_params(tmp_path, cache_dir=str(tmp_path / "cache")))
    assert ds.info["train"]["cache"]["status"] == "unwritable"
    np.testing.assert_array_equal(ds.x_train, x)


def _load_in_child(args):
    path, cache_dir = args
    table = read_nt3_csv(path, cache_dir=cache_dir)
    return table.info["cache"]["status"], np.asarray(table.x).tobytes(), table.y.tolist()


def test_many_processes_loading_at_once_get_identical_data(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.lognormal(0, 1, (60, 400)).astype(np.float32)
    y = np.arange(60) % 2
    path = tmp_path / "big.csv"
    write_nt3_csv(path, x, y)
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_load_in_child, [(str(path), str(tmp_path / "c"))] * 8)
    statuses = [r[0] for r in results]
    assert statuses.count("miss") == 1 and statuses.count("hit") == 7   # one parse, then maps
    for _, xb, yl in results:
        assert xb == x.tobytes() and yl == y.tolist()
    leftovers = [p.name for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_generic_cache_builds_once_and_passes_meta(tmp_path):
    src = _write(tmp_path / "m.txt", "anything")
    calls = []

    def builder():
        calls.append(1)
        return {"a": np.arange(6, dtype=np.int16).reshape(2, 3)}, {"rows": 2}

    r1 = load_or_build(src, builder, tag="test/1")
    r2 = load_or_build(src, builder, tag="test/1")
    r3 = load_or_build(src, builder, tag="test/2")   # a new parser version is a new entry
    assert [r.status for r in (r1, r2, r3)] == ["miss", "hit", "miss"] and len(calls) == 2
    assert r2.meta == {"rows": 2} and r2.arrays["a"].dtype == np.int16
    np.testing.assert_array_equal(r2.arrays["a"], [[0, 1, 2], [3, 4, 5]])
    r4 = load_or_build(src, builder, tag="test/1", enabled=False)
    assert r4.status == "disabled" and len(calls) == 3


# --- malformed input -------------------------------------------------------------------------

@pytest.mark.parametrize("text, fragments", [
    ("0,1,2\n1,3,4,5\n", ["row 2 has 4 fields", "row 1 has 3"]),
    ("0,1,2\n1,3\n", ["row 2 has 2 fields", "row 1 has 3"]),
    ("0,1,2\n1,abc,4\n", ["row 2, column 1", "'abc' is not a number"]),
    ("label,g1,g2\n0,1,2\n", ["row 1, column 0", "'label'", "no header row"]),
    ("0,1,2\n1,nan,4\n", ["row 2, column 1", "not finite"]),
    ("0,1,inf\n1,2,3\n", ["row 1, column 2", "not finite"]),
    ("0,1,2\n1,,3\n", ["row 2, column 1", "empty"]),
    ("0,1,2\n0.5,1,2\n", ["row 2, column 0", "label 0.5 is not an integer"]),
    ("", ["file is empty"]),
    ("\n\n", ["file is empty"]),
    ("0\n1\n", ["at least one feature column"]),
])
def test_malformed_files_name_file_and_position(tmp_path, text, fragments):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as err:
        read_nt3_csv(path, cache_dir=str(tmp_path / "c"))
    message = str(err.value)
    assert str(path.resolve()) in message
    for fragment in fragments:
        assert fragment in message, message
    # Nothing is cached for a file that failed to parse.
    assert not list((tmp_path / "c").glob("*.json"))


def test_label_outside_range_names_row_and_n_classes(tmp_path):
    write_nt3_csv(tmp_path / "train.csv", np.ones((3, 2)), np.array([0, 1, 2]))
    write_nt3_csv(tmp_path / "test.csv", np.ones((2, 2)), np.array([0, 1]))
    with pytest.raises(DataError) as err:
        load_nt3_csv(_params(tmp_path))
    assert "train.csv: row 3, column 0: label 2" in str(err.value)
    assert "n_classes" in str(err.value)
    ds = load_nt3_csv(_params(tmp_path, n_classes=3))  # with 3 classes the same file is fine
    assert ds.n_classes == 3


def test_negative_label_is_rejected(tmp_path):
    write_nt3_csv(tmp_path / "train.csv", np.ones((2, 2)), np.array([0, 1]))
    write_nt3_csv(tmp_path / "test.csv", np.ones((2, 2)), np.array([-1, 1]))
    with pytest.raises(DataError, match=r"test.csv: row 1, column 0: label -1"):
        load_nt3_csv(_params(tmp_path))


def test_feature_count_mismatch_names_both_files(tmp_path):
    _pair(tmp_path, f_test=4)
    with pytest.raises(DataError) as err:
        load_nt3_csv(_params(tmp_path))
    message = str(err.value)
    assert "test.csv" in message and "train.csv" in message
    assert "4 feature columns" in message and "has 5" in message


def test_missing_file(tmp_path):
    _pair(tmp_path)
    params = NT3CsvParams(train_path=str(tmp_path / "train.csv"),
                          test_path=str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"nope.csv: no such file"):
        load_nt3_csv(params)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        read_nt3_csv(tmp_path)


@pytest.mark.parametrize("changes, field", [
    ({"train_path": "", "test_path": "b"}, "data.train_path"),
    ({"train_path": "a", "test_path": "b", "n_classes": 1}, "data.n_classes"),
    ({"train_path": "a", "test_path": "b", "scaling": "zscore"}, "data.scaling"),
    ({"train_path": "a", "test_path": "b", "scale_fit": "all"}, "data.scale_fit"),
    ({"test_path": "b"}, "data.train_path"),
])
def test_invalid_params_name_the_field(changes, field):
    with pytest.raises(SpecError) as err:
        build(NT3CsvParams, changes, "data")
    assert err.value.field == field
