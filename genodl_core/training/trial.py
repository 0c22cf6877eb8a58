"""One trial, end to end: spec -> data -> noise -> model fit -> record.

:func:`run_trial` is the only entry point the workflow layer needs. It never raises for a trial
that fails: the failure is data (status ``failed`` with the exception type, message, traceback
and whether a retry could help), so one diverging seed never stops a sweep.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from genodl_core import records
from genodl_core.data.types import TrainArrays
from genodl_core.errors import GenodlError
from genodl_core.registry import MODELS, NOISES
from genodl_core.spec import TrialSpec, derive_seed, load_spec, spec_from_dict

#: Seconds between progress-file updates during training.
PROGRESS_INTERVAL_S = 5.0


@dataclass
class TrialResult:
    """The outcome of :func:`run_trial` (the full record is in ``path``)."""

    trial_id: str
    state: str
    path: Path
    final: dict[str, float] = field(default_factory=dict)
    error_type: str | None = None
    error: str | None = None
    #: For failures: True when a retry would fail the same way (bad spec or data, a bug).
    deterministic: bool | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == records.DONE


def resolve_spec(spec: TrialSpec | Mapping[str, Any] | str | Path) -> TrialSpec:
    """Accept a TrialSpec, a plain mapping, or a path to a TOML/JSON file."""
    if isinstance(spec, TrialSpec):
        return spec
    if isinstance(spec, Mapping):
        return spec_from_dict(spec)
    return load_spec(spec)


def run_trial(spec: TrialSpec | Mapping[str, Any] | str | Path, out_dir: str | Path, *,
              raise_errors: bool = False) -> TrialResult:
    """Run one trial and write its record to ``out_dir/<trial_id>/``.

    Parameters
    ----------
    spec
        The trial spec (object, mapping, or TOML/JSON path). It is validated first; an invalid
        spec raises :class:`SpecError` (there is no trial id to record it under).
    out_dir
        Parent directory of the trial's record folder.
    raise_errors
        Re-raise a failure after recording it (debugging); by default it is returned.

    Returns
    -------
    TrialResult
        State ``done`` with the final metrics, or ``failed`` with the error.
    """
    spec = resolve_spec(spec)
    trial_id = spec.trial_id
    trial_dir = Path(out_dir) / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    previous = records.read_status(trial_dir) or {}
    attempt = int(previous.get("attempt", 0)) + 1
    started = time.time()
    t0 = time.monotonic()

    log, handler = _trial_logger(trial_id, trial_dir)
    try:
        records.atomic_write_json(trial_dir / records.SPEC_FILE,
                                  {"trial_id": trial_id, **spec.to_dict()})
        records.write_status(trial_dir, records.RUNNING, trial_id=trial_id, attempt=attempt,
                             started_at=started, pid=os.getpid())
        # A rerun must never leave the previous attempt's result readable as this one's.
        for stale in (records.RESULT_FILE, records.ARRAYS_FILE):
            (trial_dir / stale).unlink(missing_ok=True)
        log.info("trial %s attempt %d: model=%s data=%s noise=%s seed=%d", trial_id, attempt,
                 spec.model.name, spec.data.name, [s.name for s in spec.noise] or "none", spec.seed)
        outcome, device = _execute(spec, trial_dir, log, t0)
        wall = time.monotonic() - t0
        records.write_result(trial_dir, outcome, outcome.pop("_arrays"))
        records.write_status(trial_dir, records.DONE, trial_id=trial_id, attempt=attempt,
                             started_at=started, wall_s=wall, device=device.get("device"),
                             gpu=device.get("cuda_visible_devices"))
        log.info("trial %s done in %.1f s: %s", trial_id, wall, _brief(outcome["final"]))
        return TrialResult(trial_id, records.DONE, trial_dir, outcome["final"], wall_s=wall)
    except BaseException as err:  # noqa: BLE001 - every failure becomes part of the record
        wall = time.monotonic() - t0
        deterministic = is_deterministic(err)
        message = f"{err}".strip().splitlines()[0] if f"{err}".strip() else type(err).__name__
        records.write_status(trial_dir, records.FAILED, trial_id=trial_id, attempt=attempt,
                             started_at=started, wall_s=wall, error_type=type(err).__name__,
                             error=message, traceback=traceback.format_exc(),
                             deterministic=deterministic)
        log.error("trial %s failed after %.1f s: %s: %s", trial_id, wall, type(err).__name__,
                  message)
        if raise_errors or not isinstance(err, Exception):
            raise
        return TrialResult(trial_id, records.FAILED, trial_dir, error_type=type(err).__name__,
                           error=message, deterministic=deterministic, wall_s=wall)
    finally:
        log.removeHandler(handler)
        handler.close()


def _execute(spec: TrialSpec, trial_dir: Path, log: logging.Logger,
             t0: float) -> tuple[dict[str, Any], dict[str, Any]]:
    # Deferred imports keep `import genodl_core.training.trial` light for the workflow layer.
    from genodl_core.data.loading import load_dataset
    from genodl_core.training.context import FitContext
    from genodl_core.training.device import device_info, resolve_device, resolve_precision

    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device)
    info = device_info(device)
    records.atomic_write_json(trial_dir / records.PROVENANCE_FILE, records.provenance(info))
    log.info("device %s (%s), precision %s", device, info.get("gpu_name", "cpu"), precision)

    t_load = time.monotonic()
    dataset, cached = load_dataset(spec.data)
    load_s = time.monotonic() - t_load
    log.info("data %s: train %s, val %s (%s, %.2f s)", spec.data.name, dataset.x_train.shape,
             dataset.x_val.shape, "in-process cache" if cached else "loaded", load_s)
    spec.check_data(dataset.n_features)

    t_noise = time.monotonic()
    arrays = TrainArrays(dataset.x_train, dataset.y_train, dataset.n_classes)
    noise_records = []
    for i, step in enumerate(spec.noise):
        rng = np.random.default_rng(derive_seed(spec.seed, f"noise[{i}]"))
        result = NOISES.get(step.name).fn(arrays, step.params, rng)
        arrays = result.arrays
        noise_records.append({"kind": step.name, **result.record})
        log.info("noise[%d] %s: %s", i, step.name, _brief(result.record))
    noised = dataset.replace(x_train=arrays.x, y_train=arrays.y)
    noise_s = time.monotonic() - t_noise

    progress = _Progress(trial_dir, spec.train.epochs, log)
    timeout = spec.train.timeout_s
    ctx = FitContext(spec=spec, dataset=noised, device=device, precision=precision, log=log,
                     on_epoch=progress,
                     deadline=None if timeout is None else time.monotonic() + timeout)
    t_fit = time.monotonic()
    fit = MODELS.get(spec.model.name).fn(ctx)
    fit_s = time.monotonic() - t_fit
    arrays_out = dict(fit.arrays)
    result = {
        "trial_id": spec.trial_id,
        "final": {k: float(v) for k, v in fit.final.items()},
        "curves": {k: [float(x) for x in v] for k, v in fit.curves.items()},
        "noise": noise_records,
        "data": dataset.info,
        "extra": fit.extra,
        "timings": {"load_s": load_s, "data_cached": cached, "noise_s": noise_s,
                    "fit_s": fit_s, "total_s": time.monotonic() - t0},
        "device": info,
        "precision": precision,
        "_arrays": arrays_out,
    }
    return result, info


class _Progress:
    """Per-epoch callback: logs the epoch and refreshes ``progress.json`` now and then."""

    def __init__(self, trial_dir: Path, epochs: int, log: logging.Logger):
        self.path = trial_dir / "progress.json"
        self.epochs = epochs
        self.log = log
        self.last_write = 0.0

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        self.log.info("epoch %d/%d %s", epoch + 1, self.epochs, _brief(metrics))
        now = time.monotonic()
        if now - self.last_write >= PROGRESS_INTERVAL_S or epoch + 1 == self.epochs:
            self.last_write = now
            records.atomic_write_json(self.path, {"epoch": epoch + 1, "epochs": self.epochs,
                                                  "time": time.time(), "metrics": metrics})


def is_deterministic(err: BaseException) -> bool:
    """Would running the same trial again fail the same way?

    Our own errors say so themselves. Out-of-memory, interrupted and OS-level errors depend on
    the node and its neighbours, so they are worth a retry, except those that name a missing or
    forbidden path, which fail the same way again; any other exception is a bug or bad input
    that reproduces.
    """
    if isinstance(err, GenodlError):
        return err.deterministic
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError)):
        return True
    if isinstance(err, (MemoryError, OSError, KeyboardInterrupt, SystemExit)):
        return False
    text = str(err)[:300]
    if type(err).__name__ in ("OutOfMemoryError", "AcceleratorError") or "CUDA error" in text \
            or "out of memory" in text:
        return False
    return True


def _trial_logger(trial_id: str, trial_dir: Path) -> tuple[logging.Logger, logging.Handler]:
    log = logging.getLogger(f"genodl.trial.{trial_id}")
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(trial_dir / records.LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log, handler


def _brief(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str, bool)):
            parts.append(f"{key}={value}")
    return " ".join(parts)


__all__ = ["TrialResult", "run_trial", "resolve_spec", "is_deterministic"]
