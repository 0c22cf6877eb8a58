"""Log trials to an experiment tracker (MLflow or TensorBoard), from their records.

Researchers follow curves in MLflow or TensorBoard; the records and ``summary.h5`` stay the
source of truth, and this module copies each trial into a tracker:

* **parameters**: the resolved spec, flattened (``model.dense``, ``train.learning_rate``, ...),
  and the noise record's scalars (``noise_record.0.n_flipped``, ...);
* **curves**: one metric per curve (``val_accuracy``, ``loss``, ...) with the epoch (from 1)
  as its step;
* **finals**: ``final/<name>`` at the trial's last epoch;
* **tags**: ``genodl.trial_id``, ``genodl.sweep``, ``genodl.group`` (the summary's group keys:
  model, variant, setting, data source, noise kind and levels), ``genodl.state`` and the
  columns that name the point (model, variant, setting, noise kind and level, seed).

The same trial logged twice is not duplicated: each logged trial carries a key of its record
(the checksum of its result, or its failure's time); a trial already logged with the same key is
skipped, and one logged with another key (a rerun) is replaced. Nothing here needs a tracking
server: MLflow writes to a local store (a ``file:`` folder by default), TensorBoard to event
files. Both packages are optional extras (``pip install genodl[mlflow]`` /
``genodl[tensorboard]``) and imported only when a tracker is opened.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from genodl_core import records
from genodl_core.errors import SpecError
from genodl_core.results.summary import (GROUP_KEYS, TrialRow, assign_settings, pending_row,
                                         read_trial_row)

log = logging.getLogger(__name__)

#: Trackers, with the package each needs and where it logs by default (inside the run folder).
TRACKERS = {"mlflow": ("mlflow", "mlruns"), "tensorboard": ("tensorboard", "tensorboard")}
#: Tag that identifies a trial in a tracker (the key of idempotent logging).
TRIAL_TAG = "genodl.trial_id"
#: Tag holding the key of the record that was logged (see :func:`record_key`).
RECORD_TAG = "genodl.record"
#: TensorBoard: the file in each trial's folder that says which record it holds.
TB_MARKER = "genodl_trial.json"
#: MLflow limits: parameters and metrics per ``log_batch`` call.
_MLFLOW_PARAMS_PER_BATCH = 100
_MLFLOW_METRICS_PER_BATCH = 1000
#: Longest parameter value MLflow stores everywhere; longer ones are cut, saying so.
_MLFLOW_PARAM_CHARS = 6000


@dataclass
class TrackedTrial:
    """What a tracker receives for one trial (see the module docstring for the names)."""

    trial_id: str
    sweep: str
    state: str
    key: str
    params: dict[str, str] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    finals: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def n_epochs(self) -> int:
        return max((len(c) for c in self.curves.values()), default=0)

    @property
    def run_name(self) -> str:
        """A readable name: the point of the sweep, then the id."""
        t = self.tags
        level = t.get("genodl.noise_level", "")
        parts = [t.get("genodl.model", ""), t.get("genodl.variant", ""),
                 f"{t.get('genodl.noise_kind', '')}={level}" if level else "",
                 f"seed={t.get('genodl.seed', '')}", self.trial_id]
        return " ".join(p for p in parts if p)


def check_tracker(kind: str) -> None:
    """Refuse an unknown tracker, or one whose package is missing, before any work.

    Raises
    ------
    SpecError
        Naming the tracker and the allowed ones, or the extra to install.
    """
    if kind not in TRACKERS:
        raise SpecError("tracking", kind, sorted(TRACKERS), reason="unknown tracker")
    package = TRACKERS[kind][0]
    if importlib.util.find_spec(package) is None:
        raise SpecError("tracking", kind, f"{kind} after `pip install genodl[{kind}]`",
                        reason=f"the {package} package is not installed")


def default_target(kind: str, run_dir: str | Path) -> str:
    """Where a tracker logs when no target is given: a folder inside the run directory."""
    return str(Path(run_dir).resolve() / TRACKERS[kind][1])


def record_key(status: dict[str, Any] | None) -> str:
    """A key that changes whenever a trial's record does: its result's checksum when done,
    else its state and the time of its status."""
    status = status if isinstance(status, dict) else {}
    sums = status.get("checksums")
    if status.get("state") == records.DONE and isinstance(sums, dict):
        sha = (sums.get(records.RESULT_FILE) or {}).get("sha256")
        if sha:
            return f"sha256:{sha}"
    return f"{status.get('state', 'missing')}:{status.get('time', '')}"


def settings_of(specs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Each trial's ``setting`` (as the gather names it) among the sweep's trials."""
    rows = [pending_row(tid, spec) for tid, spec in specs]
    assign_settings(rows)
    return {row.trial_id: str(row.columns.get("setting", "")) for row in rows}


def tracked_trial(trial_dir: str | Path, sweep: str, setting: str = "") -> TrackedTrial:
    """Read one record into what a tracker logs (never raises for a bad record: its state says
    corrupt and it has no metrics)."""
    trial_dir = Path(trial_dir)
    row = read_trial_row(trial_dir)
    row.columns["setting"] = setting
    return _from_row(row, sweep, record_key(records.read_status(trial_dir)))


def _from_row(row: TrialRow, sweep: str, key: str) -> TrackedTrial:
    c = row.columns
    params = {k[len("spec."):]: _param_text(v) for k, v in c.items() if k.startswith("spec.")}
    params.update({k: _param_text(v) for k, v in c.items()
                   if k.startswith("noise_record.") and _is_scalar(v)})
    curves = {name: [float(v) for v in values if not math.isnan(float(v))]
              for name, values in row.curves.items()}
    finals = {name: float(v) for name, v in row.finals.items()
              if v is not None and math.isfinite(float(v))}
    level = c.get("noise_level")
    tags = {TRIAL_TAG: row.trial_id, "genodl.sweep": sweep, "genodl.state": row.state,
            "genodl.group": " | ".join(f"{k}={_param_text(c.get(k))}" for k in GROUP_KEYS),
            "genodl.model": _param_text(c.get("model")),
            "genodl.variant": _param_text(c.get("variant")),
            "genodl.setting": _param_text(c.get("setting")),
            "genodl.data_source": _param_text(c.get("data_source")),
            "genodl.noise_kind": _param_text(c.get("noise_kind")),
            "genodl.noise_level": "" if level is None else _param_text(level),
            "genodl.seed": _param_text(c.get("seed")), RECORD_TAG: key}
    if row.state != records.DONE and c.get("error_type"):
        tags["genodl.error"] = f"{c.get('error_type')}: {c.get('error', '')}"[:5000]
    return TrackedTrial(row.trial_id, sweep, row.state, key, params, curves, finals, tags)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _param_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    return str(value)


def run_trials(run_dir: str | Path, trial_ids: Iterable[str] | None = None,
               ) -> Iterator[TrackedTrial]:
    """The tracked form of every settled (done, failed or corrupt) record of a run directory.

    The sweep (``sweep.json``) names the trials and their settings; records outside it, and
    trials still running or never started, are left out.
    """
    run_dir = Path(run_dir)
    sweep = _read_sweep(run_dir)
    specs = [(e["trial_id"], e["spec"]) for e in sweep.get("trials") or []
             if isinstance(e, dict) and isinstance(e.get("spec"), dict)]
    wanted = None if trial_ids is None else set(trial_ids)
    settings = settings_of(specs)
    for tid, _ in specs:
        if wanted is not None and tid not in wanted:
            continue
        trial_dir = run_dir / "trials" / tid
        if not trial_dir.is_dir():
            continue
        trial = tracked_trial(trial_dir, str(sweep.get("name", run_dir.name)),
                              settings.get(tid, ""))
        if trial.state in (records.DONE, records.FAILED, records.CORRUPT):
            yield trial


def _read_sweep(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "sweep.json"
    try:
        sweep = records.read_json(path)
    except (OSError, ValueError) as err:
        raise SpecError("DIR", str(run_dir), "a run directory written by `genodl run`",
                        reason=f"its sweep.json is unreadable ({err})") from None
    return sweep if isinstance(sweep, dict) else {}


# Trackers --------------------------------------------------------------------------------------

class MlflowTracker:
    """Logs trials as MLflow runs of one experiment (named after the sweep).

    ``uri`` is any MLflow tracking URI; a plain folder becomes a ``file:`` store. MLflow 3 keeps
    its file store only on request (``MLFLOW_ALLOW_FILE_STORE``); a local folder is what this
    module is for, so that request is made for ``file:`` URIs unless the variable is set.
    """

    def __init__(self, uri: str):
        if "://" not in uri and not uri.startswith("file:"):
            uri = Path(uri).resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self._experiments: dict[str, str] = {}

    def experiment(self, name: str) -> str:
        if name not in self._experiments:
            found = self.client.get_experiment_by_name(name)
            self._experiments[name] = (found.experiment_id if found is not None
                                       else self.client.create_experiment(name))
        return self._experiments[name]

    def find(self, trial: TrackedTrial) -> list[Any]:
        """Runs of this experiment already logged for the trial."""
        return self.client.search_runs([self.experiment(trial.sweep)],
                                       f"tags.`{TRIAL_TAG}` = '{trial.trial_id}'")

    def log(self, trial: TrackedTrial) -> bool:
        """Log one trial; False when it is already logged from the same record."""
        from mlflow.entities import Metric, Param

        existing = self.find(trial)
        if any(r.data.tags.get(RECORD_TAG) == trial.key for r in existing):
            return False
        for old in existing:  # a rerun replaces what the earlier record logged
            self.client.delete_run(old.info.run_id)
        run = self.client.create_run(self.experiment(trial.sweep), run_name=trial.run_name,
                                     tags=trial.tags)
        rid = run.info.run_id
        params = [Param(k, _cut(v)) for k, v in sorted(trial.params.items())]
        metrics = [Metric(name, value, 0, epoch)
                   for name, values in sorted(trial.curves.items())
                   for epoch, value in enumerate(values, start=1)]
        metrics += [Metric(f"final/{name}", value, 0, trial.n_epochs)
                    for name, value in sorted(trial.finals.items())]
        for i in range(0, len(params), _MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(rid, params=params[i:i + _MLFLOW_PARAMS_PER_BATCH])
        for i in range(0, len(metrics), _MLFLOW_METRICS_PER_BATCH):
            self.client.log_batch(rid, metrics=metrics[i:i + _MLFLOW_METRICS_PER_BATCH])
        self.client.set_terminated(rid, "FINISHED" if trial.state == records.DONE else "FAILED")
        return True

    def close(self) -> None:
        pass


def _cut(text: str) -> str:
    if len(text) <= _MLFLOW_PARAM_CHARS:
        return text
    return text[:_MLFLOW_PARAM_CHARS - 14] + "...(truncated)"


class TensorboardTracker:
    """Writes each trial's event files into ``<folder>/<sweep>/<trial_id>/``.

    Curves are scalars by epoch, finals ``final/<name>`` at the last epoch, parameters and tags
    a text summary and the HParams plugin's record. A trial folder carries a marker with the key
    of the record it holds; a folder without a marker is never removed.
    """

    def __init__(self, folder: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self._writer_class = SummaryWriter

    def trial_folder(self, trial: TrackedTrial) -> Path:
        return self.folder / _safe_name(trial.sweep) / trial.trial_id

    def log(self, trial: TrackedTrial) -> bool:
        """Log one trial; False when it is already logged from the same record."""
        target = self.trial_folder(trial)
        marker = target / TB_MARKER
        if marker.is_file():
            try:
                if records.read_json(marker).get("key") == trial.key:
                    return False
            except (OSError, ValueError, AttributeError):
                pass
            shutil.rmtree(target)  # a rerun replaces what the earlier record logged
        elif target.exists() and any(target.iterdir()):
            raise SpecError("tensorboard folder", str(target),
                            "an empty folder or one written by genodl",
                            reason="it holds files genodl did not write; not overwriting them")
        writer = self._writer_class(log_dir=str(target))
        try:
            for name, values in sorted(trial.curves.items()):
                for epoch, value in enumerate(values, start=1):
                    writer.add_scalar(name, value, epoch)
            for name, value in sorted(trial.finals.items()):
                writer.add_scalar(f"final/{name}", value, trial.n_epochs)
            lines = [f"| {k} | {v} |" for k, v in sorted({**trial.tags, **trial.params}.items())]
            writer.add_text("genodl", "| name | value |\n|---|---|\n" + "\n".join(lines), 0)
            self._hparams(writer, trial)
        finally:
            writer.close()
        records.atomic_write_json(marker, {"trial_id": trial.trial_id, "key": trial.key})
        return True

    @staticmethod
    def _hparams(writer: Any, trial: TrackedTrial) -> None:
        """The HParams plugin's record in the trial's own folder, so the dashboard's table
        lists one row per trial."""
        from torch.utils.tensorboard.summary import hparams

        hp = {**{k: v for k, v in trial.params.items()},
              **{k: v for k, v in trial.tags.items() if k != RECORD_TAG}}
        metrics = {f"final/{k}": v for k, v in trial.finals.items()}
        for summary in hparams(hp, metrics):
            writer.file_writer.add_summary(summary)

    def close(self) -> None:
        pass


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "sweep"


def open_tracker(kind: str, target: str | Path) -> MlflowTracker | TensorboardTracker:
    """A tracker of ``kind`` logging to ``target`` (an MLflow URI or folder; a TensorBoard folder).

    Raises
    ------
    SpecError
        For an unknown tracker or a missing package.
    """
    check_tracker(kind)
    if kind == "mlflow":
        return MlflowTracker(str(target))
    return TensorboardTracker(target)


@dataclass
class TrackingCounts:
    """What an export to a tracker did."""

    target: str
    logged: int = 0
    skipped: int = 0


def export_tracking(run_dir: str | Path, kind: str, target: str | Path | None = None,
                    trial_ids: Iterable[str] | None = None) -> TrackingCounts:
    """Log every settled trial of ``run_dir`` to a tracker; trials logged before from the same
    record are skipped (see the module docstring).

    Raises
    ------
    SpecError
        For an unknown tracker, a missing package or a folder that is not a run directory.
    """
    check_tracker(kind)
    target = str(target) if target is not None else default_target(kind, run_dir)
    tracker = open_tracker(kind, target)
    counts = TrackingCounts(target)
    try:
        for trial in run_trials(run_dir, trial_ids):
            if tracker.log(trial):
                counts.logged += 1
            else:
                counts.skipped += 1
    finally:
        tracker.close()
    return counts


__all__ = ["TRACKERS", "TRIAL_TAG", "RECORD_TAG", "TrackedTrial", "TrackingCounts",
           "MlflowTracker", "TensorboardTracker", "check_tracker", "default_target",
           "record_key", "settings_of", "tracked_trial", "run_trials", "open_tracker",
           "export_tracking"]
