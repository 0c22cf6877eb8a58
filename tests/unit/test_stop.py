"""A stop request: trials checkpoint and stop at the next epoch end, interrupted, not failed,
and continue from that epoch when run again."""

from __future__ import annotations

import json

import pytest

from genodl_core import records, stop
from genodl_core.errors import TrialInterrupted
from genodl_core.failures import classify
from genodl_core.training.checkpoint import CHECKPOINT_FILE
from genodl_core.training.plan import RunSettings
from genodl_core.training.trial import run_trial

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: Checkpoints by the interval are off: the one written comes from the stop request.
NO_INTERVAL = RunSettings(checkpoint_interval_s=None)


def tiny_spec(epochs: int = 4) -> dict:
    return {"seed": 3, "device": "cpu",
            "model": {"name": "nt3", "conv": [[4, 10, 1]], "pool": [5], "dense": [8]},
            "data": {"source": "synthetic_nt3", "n_train": 60, "n_test": 30, "n_features": 100},
            "train": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.01}}


@pytest.fixture(autouse=True)
def _no_stop_left():
    stop.clear_stop()
    yield
    stop.clear_stop()


def test_the_flag_and_a_watched_stop_file_request_a_stop(tmp_path):
    assert not stop.stop_requested()
    stop.request_stop()
    assert stop.stop_requested()
    stop.clear_stop()
    flag = tmp_path / ".stop"
    flag.touch()
    assert not stop.stop_requested(), "an unwatched file means nothing"
    with stop.watch_stop_file(flag), stop.watch_stop_file(flag):
        assert stop.stop_requested()
    assert not stop.stop_requested(), "watching ends with the last watcher"


def test_an_interrupted_trial_is_transient_not_deterministic():
    assert classify(TrialInterrupted("stopped")) == "transient"


def test_a_stopped_trial_checkpoints_is_interrupted_and_resumes_to_the_same_result(tmp_path):
    whole = run_trial(tiny_spec(), tmp_path / "whole", settings=NO_INTERVAL)
    assert whole.state == "done"

    stop.request_stop()
    stopped = run_trial(tiny_spec(), tmp_path / "stopped", settings=NO_INTERVAL)
    assert stopped.state == stop.INTERRUPTED and stopped.error_type == "TrialInterrupted"
    status = records.read_status(stopped.path)
    assert status["state"] == records.RUNNING and status["interrupted"] is True
    assert "after epoch 1 of 4" in status["error"]
    assert (stopped.path / CHECKPOINT_FILE).is_file()
    assert not records.is_complete(stopped.path, stopped.trial_id)

    stop.clear_stop()
    resumed = run_trial(tiny_spec(), tmp_path / "stopped", settings=NO_INTERVAL)
    assert resumed.state == "done"
    result = json.loads((resumed.path / records.RESULT_FILE).read_text())
    assert result["resumed_from_epoch"] == 1
    timings = ("train_seconds", "epoch_seconds")
    assert ({k: v for k, v in resumed.final.items() if k not in timings}
            == {k: v for k, v in whole.final.items() if k not in timings}), \
        "continued bit for bit as the uninterrupted run"
    assert not (resumed.path / CHECKPOINT_FILE).exists()


def test_a_stop_during_the_last_epoch_lets_the_trial_finish(tmp_path):
    stop.request_stop()
    done = run_trial(tiny_spec(epochs=1), tmp_path, settings=NO_INTERVAL)
    assert done.state == "done"
