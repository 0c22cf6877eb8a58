"""The live progress view without a terminal: ETA after a resume, progress files, rendering."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import pytest

from genodl_core import records
from genodl_core.errors import SpecError
from workflows.driver import recorded_walls
from workflows.progress import MIN_OWN_WALLS, Progress
from workflows.progress_view import (LiveView, TrialWatch, pick_metric, render, sparkline,
                                     wants_live_view)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_resumed_run_has_an_eta_from_the_recorded_trials():
    clock = Clock()
    fresh = Progress(10, 4, slots=2, clock=clock, logger=logging.getLogger("t"))
    assert fresh.eta_s() is None and "ETA ?" in fresh.line()
    resumed = Progress(10, 4, slots=2, clock=clock, prior_walls=[10.0, 10.0, 10.0, 10.0])
    assert resumed.eta_s() == pytest.approx(10.0 * 6 / 2)
    assert "ETA 30s" in resumed.line()
    # This run's own trials join the recorded ones, then replace them (other hardware).
    resumed.started("a")
    resumed.finished("a", "done", 40.0)
    assert resumed.eta_s() == pytest.approx(16.0 * 5 / 2)
    for tid in "bc":
        resumed.started(tid)
        resumed.finished(tid, "done", 40.0)
    assert len(resumed.walls) == MIN_OWN_WALLS
    assert resumed.eta_s() == pytest.approx(40.0 * 3 / 2)


def test_recorded_walls_read_the_done_trials_this_run_does_not_run(tmp_path):
    walls = {"a": ("done", 3.0), "b": ("done", 5.0), "c": ("failed", 9.0), "d": ("done", 7.0)}
    for tid, (state, wall) in walls.items():
        (tmp_path / tid).mkdir()
        records.write_status(tmp_path / tid, state, wall_s=wall, checksums={})
    run = SimpleNamespace(trial_dir=lambda tid: tmp_path / tid)
    sweep = SimpleNamespace(trial_ids=["a", "b", "c", "d", "e"])
    todo = [SimpleNamespace(trial_id="d"), SimpleNamespace(trial_id="e")]
    assert recorded_walls(run, sweep, todo) == [3.0, 5.0]
    assert recorded_walls(run, sweep, todo, limit=1) == [3.0]


@pytest.mark.parametrize("choice, terminal, json_output, have_rich, expected", [
    ("auto", True, False, True, True),
    ("auto", False, False, True, False),      # batch logs and pipes keep the plain lines
    ("auto", True, True, True, False),        # --json owns stdout
    ("auto", True, False, False, False),      # no rich: plain lines, no error
    ("live", False, False, True, True),
    ("plain", True, False, True, False),
])
def test_when_the_live_view_is_drawn(choice, terminal, json_output, have_rich, expected):
    assert wants_live_view(choice, is_terminal=terminal, json_output=json_output,
                           have_rich=have_rich) is expected


def test_view_choices_are_checked():
    with pytest.raises(SpecError, match="genodl\\[progress\\]"):
        wants_live_view("live", is_terminal=True, json_output=False, have_rich=False)
    with pytest.raises(SpecError, match="'auto', 'live', 'plain'"):
        wants_live_view("fancy", is_terminal=True, json_output=False, have_rich=True)


def test_metric_choice_and_sparkline():
    assert pick_metric({"loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.8}) == \
        ("val_accuracy", 0.8)
    assert pick_metric({"epoch_seconds": 1.0, "flag": True}) == ("epoch_seconds", 1.0)
    assert pick_metric({"note": "x"}) is None
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([2.0, float("nan"), 2.0]) == "▅▅"
    assert sparkline(range(30), width=5) == "▁▃▅▆█"
    assert sparkline([]) == ""


def _report(trials_dir, tid, epoch, metrics, epochs=5):
    records.atomic_write_json(trials_dir / tid / "progress.json",
                              {"epoch": epoch, "epochs": epochs, "metrics": metrics})


def test_the_watch_reads_changed_progress_files_at_most_every_poll_interval(tmp_path):
    clock = Clock()
    (tmp_path / "t1").mkdir()
    watch = TrialWatch(tmp_path, {"t1": "fraction=0.2"}, poll_s=2.0, clock=clock)
    watch.started("t1")
    assert watch.poll() and watch.running["t1"].epoch == 0  # no file yet: nothing to read
    _report(tmp_path, "t1", 1, {"loss": 0.9, "val_accuracy": 0.5})
    assert not watch.poll(), "polled again before the interval"
    clock.now += 2.0
    assert watch.poll()
    trial = watch.running["t1"]
    assert (trial.epoch, trial.epochs, trial.metric, trial.value) == (1, 5, "val_accuracy", 0.5)
    for epoch, value in ((2, 0.6), (3, 0.75)):
        _report(tmp_path, "t1", epoch, {"val_accuracy": value})
        clock.now += 2.0
        watch.poll()
    watch.poll(force=True)  # an unchanged file adds no point
    assert trial.curve == [0.5, 0.6, 0.75]
    # A retry starts at epoch 1 again: the curve starts again.
    _report(tmp_path, "t1", 1, {"val_accuracy": 0.4})
    watch.poll(force=True)
    assert trial.curve == [0.4]


def test_every_epoch_reaches_the_view_although_the_file_is_written_every_few_seconds(
        tmp_path, monkeypatch):
    from genodl_core.training import trial as trial_module

    monkeypatch.setattr(trial_module, "PROGRESS_INTERVAL_S", 3600.0)
    (tmp_path / "t1").mkdir()
    report = trial_module._Progress(tmp_path / "t1", 6, logging.getLogger("t"))
    watch = TrialWatch(tmp_path)
    watch.started("t1")
    for epoch in range(6):
        report(epoch, {"loss": 1.0 - epoch / 10, "val_accuracy": epoch / 10})
        watch.poll(force=True)
    stored = records.read_json(tmp_path / "t1" / "progress.json")
    assert [pair[0] for pair in stored["recent"]] == [2, 3, 4, 5, 6]  # written at 1 and 6 only
    assert watch.running["t1"].curve == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])


def test_failures_are_kept_with_their_errors(tmp_path):
    (tmp_path / "t2").mkdir()
    records.write_status(tmp_path / "t2", records.FAILED, error_type="ValueError",
                         error="loss is NaN")
    watch = TrialWatch(tmp_path)
    watch.started("t2")
    watch.finished("t2", records.FAILED)
    assert not watch.running and watch.failures == [("t2", "ValueError: loss is NaN")]


def _console():
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True, width=140, color_system=None)


def test_render_shows_the_bar_running_trials_and_failures(tmp_path):
    pytest.importorskip("rich", reason="the live view needs the progress extra (rich)")
    clock = Clock()
    progress = Progress(10, 2, slots=2, clock=clock, prior_walls=[20.0])
    for tid in ("t1", "t3"):
        (tmp_path / tid).mkdir()
        progress.started(tid)
    progress.finished("t3", "failed", 1.0)
    records.write_status(tmp_path / "t3", records.FAILED, error_type="RuntimeError",
                         error="CUDA out of memory")
    watch = TrialWatch(tmp_path, {"t1": "variant=base fraction=0.2"}, clock=clock)
    watch.started("t1")
    watch.finished("t3", records.FAILED)
    _report(tmp_path, "t1", 3, {"val_accuracy": 0.8125})
    watch.poll()
    clock.now += 75
    console = _console()
    console.print(render(progress, watch))
    text = console.file.getvalue()
    assert "3/10" in text and "done 2 | failed 1 | running 1 | pending 6" in text
    assert "elapsed 1m15s" in text and "ETA 34s" in text  # (1 + 20) / 2 s x 6.5 trials / 2
    assert "variant=base fraction=0.2" in text and "3/5" in text and "▅" in text
    assert "val_accuracy 0.8125" in text
    assert "failed t3: RuntimeError: CUDA out of memory" in text


def test_live_view_keeps_log_lines_and_drops_the_plain_progress_lines(tmp_path):
    pytest.importorskip("rich", reason="the live view needs the progress extra (rich)")
    import sys

    console = _console()
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    progress = Progress(2, 0, clock=Clock())
    try:
        with LiveView(progress, TrialWatch(tmp_path), console=console) as view:
            assert handler.stream is not sys.__stderr__
            logging.getLogger("workflows.progress").warning("[0/2] | plain line")
            logging.getLogger("workflows.driver").warning("trial t9 failed: boom")
            view.started("t9")
            view.poll()
    finally:
        root.removeHandler(handler)
    assert handler.stream is sys.__stderr__ and not handler.filters
    text = console.file.getvalue()
    assert "workflows.driver: trial t9 failed: boom" in text
    assert "plain line" not in text
    assert "0/2" in text and "t9" in text
