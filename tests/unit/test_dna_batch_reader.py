"""The background batch reader of streamed DNA training data: same batches, same numbers,
bounded, and no thread left behind."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from genodl_core import records
from genodl_core.training.batch_reader import BatchReader
from genodl_core.training.trial import run_trial

TINY_DATA = {"source": "synthetic_dna", "n_train": 256, "n_val": 128, "n_test": 64,
             "length": 120, "central_bin": 48, "n_targets": 6}
TINY_MODEL = {"name": "deepsea", "conv": [8, 8, 8], "kernel": 6, "pool": 3, "dense": 16}


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "genodl-batch-reader"]


def _read_all_and_check(x, y, device, order, batch) -> BatchReader:
    """Read every batch of ``order`` and check each is the sorted rows of ``x`` and ``y`` (a
    kernel runs on the batch right after ``next()``: it must see the copied rows)."""
    reader = BatchReader(x, y, device, depth=2)
    reader.start(order, batch)
    for start in range(0, len(order), batch):
        xb, yb = reader.next()
        rows = np.sort(order[start:start + batch].numpy())
        assert np.array_equal((xb.long() + 0).cpu().numpy(), x[rows])
        assert np.array_equal(yb.cpu().numpy(), y[rows])
    return reader


def test_reader_yields_the_sorted_rows_of_each_batch_in_order():
    x = np.arange(50 * 3, dtype=np.uint8).reshape(50, 3)
    y = (np.arange(50 * 2).reshape(50, 2) % 2).astype(np.uint8)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    reader = _read_all_and_check(x, y, "cpu", order, 16)
    with pytest.raises(RuntimeError, match="no batch left"):
        reader.next()
    reader.stop()
    assert not reader.running


def test_reader_gathers_from_a_memory_mapped_file(tmp_path):
    x = np.random.default_rng(0).integers(0, 5, size=(40, 12), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    reader = BatchReader(mapped, mapped[:, :2], "cpu", depth=1)
    reader.start(order, 15)
    batches = [reader.next()[0].numpy() for _ in range(3)]
    reader.stop()
    expected = [x[np.sort(order[i:i + 15].numpy())] for i in range(0, 40, 15)]
    assert all(np.array_equal(b, e) for b, e in zip(batches, expected))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream copy needs CUDA")
def test_prefetched_batches_on_cuda_equal_the_host_rows():
    x = np.random.default_rng(0).integers(0, 5, size=(300, 50), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 2, size=(300, 7), dtype=np.uint8)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    reader = _read_all_and_check(x, y, "cuda", order, 64)
    reader.stop()
    assert not reader.running


def test_reader_queue_is_bounded_and_stop_ends_a_blocked_thread():
    x = np.zeros((100, 4), dtype=np.uint8)
    reader = BatchReader(x, x, "cpu", depth=2)
    reader.start(torch.arange(100), 10)
    for _ in range(100):  # the thread fills the queue, then blocks on it
        if reader._queue.full():
            break
        threading.Event().wait(0.01)
    assert reader._queue.qsize() == 2 and reader.running
    reader.stop()
    assert not reader.running and not _reader_threads()


def test_reader_hands_a_read_error_to_the_step():
    x = np.zeros((20, 4), dtype=np.uint8)
    reader = BatchReader(x, np.zeros((10, 2), dtype=np.uint8), "cpu")  # y too short
    reader.start(torch.arange(20), 5)
    reader.next()
    with pytest.raises(IndexError):
        for _ in range(3):
            reader.next()
    assert not reader.running


def test_depth_zero_is_refused():
    with pytest.raises(ValueError, match="depth=0"):
        BatchReader(np.zeros((2, 2)), np.zeros((2, 1)), "cpu", depth=0)


def _trial(tmp_path, name, **model):
    spec = {"seed": 1, "model": {**TINY_MODEL, "dropout": [0, 0, 0], **model},
            "data": TINY_DATA, "train": {"epochs": 2, "batch_size": 40}}
    result = run_trial(spec, tmp_path / name, raise_errors=True)
    record = json.loads((result.path / records.RESULT_FILE).read_text())
    return result, record


def test_prefetched_streaming_equals_reading_in_the_step_to_the_bit(tmp_path):
    """Same curves and final numbers with and without the reader (CPU, seeded order)."""
    plain, plain_record = _trial(tmp_path, "plain", resident="no", prefetch=0)
    ahead, ahead_record = _trial(tmp_path, "ahead", resident="no", prefetch=2)
    assert plain_record["extra"]["data_prefetch"] == 0
    assert ahead_record["extra"]["data_prefetch"] == 2
    assert ahead_record["extra"]["data_resident"] is False
    for key in ("loss", "val_loss", "val_roc_auc", "test_roc_auc"):
        assert ahead.final[key] == plain.final[key], key
    assert not _reader_threads()


def test_an_exception_in_the_step_ends_the_reader_thread(tmp_path, monkeypatch):
    from genodl_core.training import multilabel

    calls = {"n": 0}
    original = multilabel.row_gradients

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            assert _reader_threads(), "the reader runs while the steps do"
            raise FloatingPointError("step 2 failed")
        return original(*args, **kwargs)

    monkeypatch.setattr(multilabel, "row_gradients", failing)
    with pytest.raises(FloatingPointError, match="step 2 failed"):
        _trial(tmp_path, "fails", resident="no", prefetch=2)
    assert not _reader_threads()
