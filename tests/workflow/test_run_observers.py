"""A real run with the live view and tracking on: trials logged as they settle, the view drawn,
and observers that fail never stopping the sweep."""

from __future__ import annotations

import pytest

from genodl_core.errors import SpecError
from tests.workflow.conftest import tiny_sweep
from workflows.driver import RunSettings, run_sweep
from workflows.run_observers import RunObservers
from workflows.sweep import sweep_from_dict

pytestmark = pytest.mark.timeout(180)


def test_a_run_logs_each_trial_to_tensorboard_and_draws_the_view(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="tracking needs the tensorboard extra")
    pytest.importorskip("rich", reason="the live view needs the progress extra (rich)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1, run={"tracking": "tensorboard"}))
    out = tmp_path / "run"
    report = run_sweep(sweep, out, RunSettings(gather=False, live_view=True))
    assert report.ok
    for tid in sweep.trial_ids:
        acc = EventAccumulator(str(out / "tensorboard" / "tiny" / tid))
        acc.Reload()
        assert [e.step for e in acc.Scalars("loss")] == [1, 2]  # the tiny trial's 2 epochs
    view = capsys.readouterr().out
    assert f"{len(sweep.trial_ids)}/{len(sweep.trial_ids)}" in view and "ETA 0s" in view
    # The plain lines still reach the workflow log.
    assert "[2/2] | done 2" in (out / "logs" / "workflow.log").read_text()


def test_an_unknown_or_missing_tracker_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SpecError, match="run.tracking='wandb': unknown tracker.*'mlflow'"):
        sweep_from_dict(tiny_sweep(run={"tracking": "wandb"}))
    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1))
    with pytest.raises(SpecError, match="unknown tracker"):
        run_sweep(sweep, tmp_path / "run", RunSettings(tracking="neptune"))
    assert not (tmp_path / "run").exists()


def test_a_failing_observer_is_switched_off_and_the_others_go_on(caplog):
    seen = []

    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            seen.append("closed")

        def started(self, tid):
            raise RuntimeError("display gone")

    class Counting(Broken):
        def started(self, tid):
            seen.append(tid)

    with RunObservers([Broken(), Counting()]) as observers:
        observers.started("a")
        observers.started("b")
    assert seen == ["closed", "a", "b", "closed"]
    assert "Broken failed; going on without it" in caplog.text
