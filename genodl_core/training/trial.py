"""Trials end to end: spec -> data -> noise -> engine -> record, alone or in packs.

:func:`run_trial` and :func:`run_trials` are the entry points the workflow layer needs. The
runner groups compatible specs by their family's ``pack_key`` (:func:`group_packs`), and
:func:`run_pack` hands the engine K trials at once; every member still gets its own record. A
trial never raises for a failure: the failure is data (status ``failed`` with the exception
type, message, traceback and whether a retry could help), so one diverging seed never stops a
sweep, and a member that fails (before or during training) does not stop the others of its pack.

The execution plan of a pack (:func:`~genodl_core.training.plan.choose_plan`) is decided here,
once, after the members' data are ready and before anything trains; it is written into each
member's ``provenance.json`` under ``engine`` and into its ``result.json``.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from genodl_core import records
from genodl_core.data.fingerprint import FINGERPRINTS_KEY
from genodl_core.data.types import TrainArrays
from genodl_core.errors import GenodlError, TrialInterrupted
from genodl_core.failures import is_deterministic
from genodl_core.registry import MODELS, NOISES
from genodl_core.spec import TrialSpec, derive_seed, load_spec, spec_from_dict
from genodl_core.stop import INTERRUPTED

#: Seconds between progress-file updates during training.
PROGRESS_INTERVAL_S = 5.0
#: Epochs a progress-file update lists at most, the latest included (see ``_Progress``).
PROGRESS_RECENT = 100


@dataclass
class TrialResult:
    """The outcome of one trial (the full record is in ``path``)."""

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


def family_of(spec: TrialSpec) -> Any:
    """The registered implementation of the spec's model: a Family, or a closed-form fit."""
    return MODELS.get(spec.model.name).fn


def pack_key(spec: TrialSpec) -> str | None:
    """Equal for specs that can train as one stacked computation; None: the spec trains alone."""
    from genodl_core.training.family import Family

    family = family_of(spec)
    # A step that drops samples (cleaning) gives each trial its own training-split size.
    if any(NOISES.get(step.name).meta.get("resizes") for step in spec.noise):
        return None
    return family.pack_key(spec) if isinstance(family, Family) else None


def group_packs(specs: Sequence[TrialSpec], pack_size: int) -> list[list[int]]:
    """Indices of ``specs`` grouped into packs of at most ``pack_size`` compatible trials.

    Unpackable trials form packs of one. Order within a group follows ``specs``; packs are
    ordered by their first member.
    """
    groups: dict[str, list[int]] = {}
    packs: list[list[int]] = []
    for i, spec in enumerate(specs):
        key = pack_key(spec) if pack_size > 1 else None
        if key is None:
            packs.append([i])
        else:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        packs += [members[j:j + pack_size] for j in range(0, len(members), pack_size)]
    return sorted(packs, key=lambda p: p[0])


def run_trial(spec: TrialSpec | Mapping[str, Any] | str | Path, out_dir: str | Path, *,
              raise_errors: bool = False, settings: Any = None) -> TrialResult:
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
    settings
        :class:`~genodl_core.training.plan.RunSettings` (default: from the environment).

    Returns
    -------
    TrialResult
        State ``done`` with the final metrics, or ``failed`` with the error.
    """
    return run_pack([spec], out_dir, raise_errors=raise_errors, settings=settings)[0]


def run_trials(specs: Sequence[TrialSpec | Mapping[str, Any]], out_dir: str | Path, *,
               pack_size: int = 8, raise_errors: bool = False,
               settings: Any = None) -> list[TrialResult]:
    """Run trials, packing compatible ones (at most ``pack_size``); results in spec order."""
    resolved = [resolve_spec(s) for s in specs]
    results: list[Any] = [None] * len(resolved)
    for pack in group_packs(resolved, pack_size):
        for i, result in zip(pack, run_pack([resolved[i] for i in pack], out_dir,
                                            raise_errors=raise_errors, settings=settings)):
            results[i] = result
    return results


def run_pack(specs: Sequence[TrialSpec | Mapping[str, Any] | str | Path], out_dir: str | Path,
             *, raise_errors: bool = False, settings: Any = None) -> list[TrialResult]:
    """Train ``specs`` (compatible by ``pack_key`` when more than one) as one computation.

    Returns
    -------
    list of TrialResult
        One per spec, in order. With ``raise_errors`` the first failure is raised once every
        record is written.
    """
    from genodl_core.training.plan import RunSettings

    resolved = [resolve_spec(s) for s in specs]
    keys = {pack_key(s) for s in resolved}
    if len(resolved) > 1 and (len(keys) != 1 or None in keys):
        raise GenodlError("run_pack: the specs cannot train together (their pack keys differ "
                          "or one is not packable); group them with group_packs")
    settings = RunSettings.from_env() if settings is None else settings
    trials = [_Trial(spec, Path(out_dir)) for spec in resolved]
    try:
        _run(trials, settings)
    finally:
        for trial in trials:
            trial.close()
    if raise_errors:
        for trial in trials:
            if trial.error is not None:
                raise trial.error
    return [trial.result for trial in trials]


def _run(trials: list["_Trial"], settings: Any) -> None:
    # Deferred imports keep `import genodl_core.training.trial` light for the workflow layer.
    from genodl_core.training.device import device_info, resolve_device, resolve_precision
    from genodl_core.training.family import Family

    spec = trials[0].spec
    try:
        device = resolve_device(spec.device)
        precision = resolve_precision(spec.precision, device)
        if device == "cpu":
            from genodl_core.training.cpu import retain_freed_memory

            retain_freed_memory()  # before the first CPU trial allocates its tensors
        info = device_info(device)
    except BaseException as err:  # noqa: BLE001 - every member's record says so
        for trial in trials:
            trial.fail(err)
        if not isinstance(err, Exception):
            raise
        return
    family = family_of(spec)
    ready = [t for t in trials if t.prepare(family if isinstance(family, Family) else None)]
    if not ready:
        return
    if not isinstance(family, Family):  # a closed-form baseline: no engine
        (trial,) = ready
        trial.start(info, precision, None)
        trial.finish_with(_guarded(trial, lambda: family(trial.member)))
        return
    from genodl_core.training.plan import choose_plan

    plan = choose_plan(device, precision, family.switches(len(ready), device),
                       pack_size=len(ready),
                       settings=settings)
    for trial in ready:
        trial.start(info, precision, plan)
    outcomes = _train(family, ready, plan)
    for trial, outcome in zip(ready, outcomes):
        if trial.spec.train.detect_folds and not isinstance(outcome, BaseException):
            outcome = _guarded(trial, lambda: _confident_learning(
                family, trial, outcome, device, precision, settings), keep_fit_s=True)
        trial.finish_with(outcome)


def _confident_learning(family: Any, trial: "_Trial", outcome: Any, device: str,
                        precision: str, settings: Any) -> Any:
    """Add the out-of-sample probabilities of the trial's fold models and cleanlab's label
    issues to its outcome (``train.detect_folds``; :mod:`genodl_core.detection.folds`)."""
    from genodl_core.detection.folds import confident_learning_arrays, out_of_sample_probabilities
    from genodl_core.training.plan import choose_plan

    def plan_for(k: int) -> Any:
        return choose_plan(device, precision, family.switches(k, device), pack_size=k,
                           settings=settings)

    t0 = time.monotonic()
    probs = out_of_sample_probabilities(family, trial.member, plan_for)
    outcome.arrays.update(confident_learning_arrays(probs, trial.member.dataset.y_train))
    outcome.final["detect_folds_seconds"] = time.monotonic() - t0
    return outcome


def _train(family: Any, trials: list["_Trial"], plan: Any) -> list[Any]:
    """The engine's outcomes, or, when training as a whole failed, that error for everyone."""
    from genodl_core.training import engine
    from genodl_core.training.checkpoint import CHECKPOINT_FILE, Checkpoint
    from genodl_core.training.cpu import cpu_threads

    members = [t.member for t in trials]
    # What a checkpoint may be resumed under: the plan less how often it is written and how
    # many CPU threads run it (a worker of another share of the cores resumes it; the record
    # says which plan the resumed run had).
    identity = {k: v for k, v in plan.to_dict().items()
                if k not in ("checkpoint_interval_s", "cpu_threads")}
    checkpoint = Checkpoint(trials[0].dir / CHECKPOINT_FILE,
                            members=[t.spec.trial_id for t in trials], plan=identity,
                            interval_s=plan.checkpoint_interval_s, keep=plan.keep_checkpoints)
    t_fit = time.monotonic()
    stack = None
    try:
        # On CPU, the plan's thread count (the worker's cores): no oversubscription.
        with cpu_threads(plan.cpu_threads):
            stack = family.stack(members, plan)
            for m in members:
                m.log.info("built in %.2f s", time.monotonic() - t_fit)
            outcomes = engine.train(stack, members, device=plan.device, checkpoint=checkpoint)
    except BaseException as err:  # noqa: BLE001 - every member fails with it
        if not isinstance(err, Exception):
            for trial in trials:
                trial.fail(err)
            raise
        return [err] * len(trials)
    finally:
        if stack is not None:
            stack.close()
    fit_s = time.monotonic() - t_fit
    for trial in trials:
        trial.fit_s = fit_s
        trial.resumed_from = checkpoint.loaded_epoch
    checkpoint.finish()
    return outcomes


def _guarded(trial: "_Trial", fit: Any, keep_fit_s: bool = False) -> Any:
    t_fit = time.monotonic()
    try:
        outcome = fit()
    except BaseException as err:  # noqa: BLE001
        if not isinstance(err, Exception):
            trial.fail(err)
            raise
        return err
    if not keep_fit_s:
        trial.fit_s = time.monotonic() - t_fit
    return outcome


class _Trial:
    """One trial's record while it runs: opened, prepared, then done or failed."""

    def __init__(self, spec: TrialSpec, out_dir: Path):
        self.spec = spec
        self.dir = out_dir / spec.trial_id
        self.dir.mkdir(parents=True, exist_ok=True)
        previous = records.read_status(self.dir) or {}
        self.attempt = int(previous.get("attempt", 0)) + 1
        self.resumes = int(previous.get("resumes", 0))
        self.started = time.time()
        self.t0 = time.monotonic()
        self.result: TrialResult | None = None
        self.error: BaseException | None = None
        self.member: Any = None
        self.info: dict[str, Any] = {}
        self.fit_s = 0.0
        self.resumed_from: int | None = None
        self.data_fingerprints: dict[str, Any] = {}
        self.log, self._handler = _trial_logger(spec.trial_id, self.dir)
        records.atomic_write_json(self.dir / records.SPEC_FILE,
                                  {"trial_id": spec.trial_id, **spec.to_dict()})
        self._status(records.RUNNING, pid=os.getpid())
        # A rerun must never leave the previous attempt's result readable as this one's.
        for stale in (records.RESULT_FILE, records.ARRAYS_FILE):
            (self.dir / stale).unlink(missing_ok=True)
        self.log.info("trial %s attempt %d: model=%s data=%s noise=%s seed=%d", spec.trial_id,
                      self.attempt, spec.model.name, spec.data.name,
                      [s.name for s in spec.noise] or "none", spec.seed)

    def _status(self, state: str, **fields: Any) -> None:
        records.write_status(self.dir, state, trial_id=self.spec.trial_id, attempt=self.attempt,
                             started_at=self.started, resumes=self.resumes, **fields)

    def prepare(self, family: Any) -> bool:
        """Load the data, apply the noise, check them; False (recorded failed) on any error."""
        from genodl_core.data.fingerprint import data_fingerprints
        from genodl_core.data.loading import load_dataset
        from genodl_core.training.family import Member

        spec, log = self.spec, self.log
        try:
            t_load = time.monotonic()
            # Before the load: a file replaced meanwhile then reads as changed, never as the
            # version the trial did not train on.
            self.data_fingerprints = data_fingerprints(spec.data.params)
            dataset, cached = load_dataset(spec.data, spec.validation)
            self.load_s = time.monotonic() - t_load
            self.cached = cached
            log.info("data %s: train %s, val %s (%s, %.2f s)", spec.data.name,
                     dataset.x_train.shape, dataset.x_val.shape,
                     "in-process cache" if cached else "loaded", self.load_s)
            spec.check_data(dataset.n_features)
            t_noise = time.monotonic()
            arrays = TrainArrays(dataset.x_train, dataset.y_train, dataset.n_classes)
            self.noise_records = []
            for i, step in enumerate(spec.noise):
                rng = np.random.default_rng(derive_seed(spec.seed, f"noise[{i}]"))
                result = NOISES.get(step.name).fn(arrays, step.params, rng)
                arrays = result.arrays
                self.noise_records.append({"kind": step.name, **result.record})
                log.info("noise[%d] %s: %s", i, step.name, _brief(result.record))
            self.noise_s = time.monotonic() - t_noise
            self.data_info = dataset.info
            timeout = spec.train.timeout_s
            self.member = Member(spec=spec, dataset=dataset.replace(x_train=arrays.x,
                                                                    y_train=arrays.y),
                                 log=log, on_epoch=_Progress(self.dir, spec.train.epochs, log),
                                 deadline=None if timeout is None else time.monotonic() + timeout)
            if family is not None:
                family.check(self.member)
            if spec.train.detect_folds:
                from genodl_core.detection.folds import require_cleanlab

                require_cleanlab()
            return True
        except BaseException as err:  # noqa: BLE001
            self.fail(err)
            if not isinstance(err, Exception):
                raise
            return False

    def start(self, info: dict[str, Any], precision: str, plan: Any) -> None:
        """Record where and how the trial is about to train (the plan, once decided)."""
        self.info, self.precision = info, precision
        self.plan = None if plan is None else plan.to_dict()
        provenance = records.provenance(info)
        provenance[FINGERPRINTS_KEY] = self.data_fingerprints
        if self.plan is not None:
            provenance["engine"] = self.plan
        records.atomic_write_json(self.dir / records.PROVENANCE_FILE, provenance)
        self.log.info("device %s (%s), precision %s, plan %s", info.get("device"),
                      info.get("gpu_name", "cpu"), precision,
                      "closed form" if plan is None else f"{plan.mode} ({plan.label})")

    def finish_with(self, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            self.fail(outcome)
            return
        if self.resumed_from is not None:
            self.resumes += 1
        if any(name.startswith("signal_") for name in outcome.arrays):
            from genodl_core.detection.detectors import attach

            attach(outcome.final, outcome.arrays, outcome.extra, self.noise_records)
        result = {
            "trial_id": self.spec.trial_id,
            "final": {k: float(v) for k, v in outcome.final.items()},
            "curves": {k: [float(x) for x in v] for k, v in outcome.curves.items()},
            "noise": self.noise_records,
            "data": self.data_info,
            FINGERPRINTS_KEY: self.data_fingerprints,
            "extra": outcome.extra,
            "timings": {"load_s": self.load_s, "data_cached": self.cached,
                        "noise_s": self.noise_s, "fit_s": self.fit_s,
                        "total_s": time.monotonic() - self.t0},
            "device": self.info,
            "precision": self.precision,
            "engine": self.plan,
            "resumed_from_epoch": self.resumed_from,
        }
        wall = time.monotonic() - self.t0
        checksums = records.write_result(self.dir, result, dict(outcome.arrays))
        self._status(records.DONE, wall_s=wall, device=self.info.get("device"),
                     gpu=self.info.get("cuda_visible_devices"), checksums=checksums)
        self.log.info("trial %s done in %.1f s: %s", self.spec.trial_id, wall,
                      _brief(result["final"]))
        self.result = TrialResult(self.spec.trial_id, records.DONE, self.dir, result["final"],
                                  wall_s=wall)

    def fail(self, err: BaseException) -> None:
        if isinstance(err, TrialInterrupted):
            self.interrupt(err)
            return
        wall = time.monotonic() - self.t0
        deterministic = is_deterministic(err)
        text = f"{err}".strip()
        message = text.splitlines()[0] if text else type(err).__name__
        tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        self._status(records.FAILED, wall_s=wall, error_type=type(err).__name__, error=message,
                     traceback=tb, deterministic=deterministic)
        self.log.error("trial %s failed after %.1f s: %s: %s", self.spec.trial_id, wall,
                       type(err).__name__, message)
        self.error = err
        self.result = TrialResult(self.spec.trial_id, records.FAILED, self.dir,
                                  error_type=type(err).__name__, error=message,
                                  deterministic=deterministic, wall_s=wall)

    def interrupt(self, err: TrialInterrupted) -> None:
        """Record a stop on request: not a failure, so the record keeps saying 'running' (with
        ``interrupted``), which reads as interrupted once this attempt lets go of the trial."""
        wall = time.monotonic() - self.t0
        self._status(records.RUNNING, pid=os.getpid(), interrupted=True, wall_s=wall,
                     error_type=type(err).__name__, error=str(err))
        self.log.warning("trial %s interrupted after %.1f s: %s", self.spec.trial_id, wall, err)
        self.result = TrialResult(self.spec.trial_id, INTERRUPTED, self.dir,
                                  error_type=type(err).__name__, error=str(err),
                                  deterministic=False, wall_s=wall)

    def close(self) -> None:
        self.log.removeHandler(self._handler)
        self._handler.close()


class _Progress:
    """Per-epoch callback: logs the epoch and refreshes ``progress.json`` now and then.

    Each write also lists the epochs since the previous one (``recent``: ``[epoch, metrics]``
    pairs, at most :data:`PROGRESS_RECENT` of them), so that the driver's live view gets every
    epoch of a curve although the file is written at most every few seconds.
    """

    def __init__(self, trial_dir: Path, epochs: int, log: logging.Logger):
        self.path = trial_dir / "progress.json"
        self.epochs = epochs
        self.log = log
        self.last_write = 0.0
        self.recent: list[list[Any]] = []

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        self.log.info("epoch %d/%d %s", epoch + 1, self.epochs, _brief(metrics))
        self.recent.append([epoch + 1, dict(metrics)])
        del self.recent[:-PROGRESS_RECENT]
        now = time.monotonic()
        if now - self.last_write >= PROGRESS_INTERVAL_S or epoch + 1 == self.epochs:
            self.last_write = now
            records.atomic_write_json(self.path, {"epoch": epoch + 1, "epochs": self.epochs,
                                                  "time": time.time(), "metrics": metrics,
                                                  "recent": self.recent})
            self.recent = []


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


__all__ = ["TrialResult", "run_trial", "run_trials", "run_pack", "group_packs", "pack_key",
           "resolve_spec", "is_deterministic"]
