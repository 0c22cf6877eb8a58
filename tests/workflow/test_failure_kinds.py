"""One failure classifier: the trial runner and the workflow give every failure the same answer,
and the driver and the MPI path record a failure raised around a trial the same way."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import Future

import pytest

from genodl_core import failures, records
from genodl_core.errors import DataError, GenodlError, InfrastructureError, SpecError, TrialTimeout
from tests.workflow.conftest import tiny_sweep
from workflows import retry
from workflows.apps import RetryableTrialFailure


class OutOfMemoryError(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError (matched by name)."""


class AcceleratorError(RuntimeError):
    """Stands for torch.AcceleratorError (matched by name)."""


class Flaky(GenodlError):
    deterministic = False


def _parsl_errors() -> list[tuple[BaseException, str]]:
    from parsl.executors.errors import (BadStateException, InvalidResourceSpecification,
                                        ScalingFailed, UnsupportedFeatureError)
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost
    from parsl.jobs.errors import TooManyJobFailuresError

    class Executor:
        label = "htex"

    return [
        (WorkerLost(1, "node1"), "infrastructure"),
        (ManagerLost(b"m", "node1"), "infrastructure"),
        (BadStateException(Executor(), "block 0 failed"), "infrastructure"),
        (ScalingFailed(Executor(), "sbatch timed out"), "infrastructure"),
        (TooManyJobFailuresError("Error 1: EXIT CODE: 1"), "infrastructure"),
        (InvalidResourceSpecification({"gpus"}, "unknown key"), "deterministic"),
        (UnsupportedFeatureError("resource spec", "HTEX", None), "deterministic"),
    ]


CASES: list[tuple[BaseException, str]] = [
    # A missing or forbidden path fails the same way on a retry.
    (FileNotFoundError(2, "No such file or directory", "train.csv"), "deterministic"),
    (FileNotFoundError(), "deterministic"),
    (PermissionError(13, "Permission denied", "/scratch/x"), "deterministic"),
    (IsADirectoryError(21, "Is a directory", "data"), "deterministic"),
    (NotADirectoryError(20, "Not a directory", "x.csv/y"), "deterministic"),
    # Out of memory on the host: the spec asks for the same memory on every attempt.
    (MemoryError(), "deterministic"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                  "400000000000 bytes. Error code 12 (Cannot allocate memory)"), "deterministic"),
    # Other OS-level and interrupt failures depend on the node.
    (OSError(5, "Input/output error"), "transient"),
    (ConnectionError("reset by peer"), "transient"),
    (TimeoutError("nfs"), "transient"),
    (KeyboardInterrupt(), "transient"),
    (SystemExit(1), "transient"),
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "transient"),
    (AcceleratorError("device lost"), "transient"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "transient"),
    # Our own errors say so themselves.
    (SpecError("seed", -1, ">= 0"), "deterministic"),
    (DataError("x.csv: row 2, column 7: 'n/a' is not a number"), "deterministic"),
    (TrialTimeout("train.timeout_s=1 exceeded"), "deterministic"),
    (InfrastructureError("walltime"), "transient"),
    (RetryableTrialFailure("t1", "OutOfMemoryError", "oom"), "transient"),
    (Flaky("try again"), "transient"),
    # Anything else is a bug or bad input that reproduces.
    (ValueError("bug"), "deterministic"),
    (ZeroDivisionError("division by zero"), "deterministic"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "deterministic"),
]


def test_numpy_out_of_memory_is_deterministic():
    """numpy raises its own MemoryError subclass for an array that cannot be allocated."""
    import numpy as np

    with pytest.raises(MemoryError) as info:
        np.empty(2**62, dtype=np.uint8)
    assert failures.classify(info.value) == "deterministic"


@pytest.mark.parametrize("err, text, expected", [
    (OSError(28, "No space left on device"), None, (28, None)),
    (OSError(122, "Disk quota exceeded", "/scratch/run"), None, (122, "/scratch/run")),
    (OSError(30, "Read-only file system", "/ro/x"), None, (30, "/ro/x")),
    (RetryableTrialFailure("t1", "OSError", "[Errno 28] No space left on device (2 of 4 "
                           "trials of the pack)"), None, (28, None)),
    (RuntimeError("wrapped"), "[Errno 28] No space left on device: '/run/trials/t1/a.npz'",
     (28, "/run/trials/t1/a.npz")),
    (OSError("disk full"), None, None),
    (OSError(5, "Input/output error"), None, None),
    (PermissionError(13, "Permission denied", "/data/x.csv"), None, None),
    (MemoryError(), None, None),
], ids=["enospc", "edquot", "erofs", "retryable-text", "recorded-text", "no-errno", "eio",
        "eacces", "memory"])
def test_storage_errors_are_recognised_by_errno_and_in_recorded_text(err, text, expected):
    found = failures.storage_error(err, text)
    if expected is None:
        assert found is None
    else:
        assert (found.errno, found.filename) == expected
        assert found.strerror  # the system's words for the errno


def test_storage_errors_are_not_retried_into_a_full_disk():
    """A full disk is no fault of the trial (transient: `genodl run` runs it again), but the
    driver stops the run at the first one, so retrying every queued task into it is noise."""
    full = OSError(28, "No space left on device")
    assert failures.classify(full) == "transient"
    cost = retry.retry_handler(full, {"id": 1, "try_id": 0})
    assert cost == retry.NO_RETRY_COST
    assert retry.retry_handler(OSError(5, "Input/output error"), {"id": 1, "try_id": 0}) == 1


def _all_cases() -> list[tuple[BaseException, str]]:
    return CASES + _parsl_errors()


def test_each_failure_has_one_kind():
    wrong = [(type(e).__name__, str(e), failures.classify(e), kind)
             for e, kind in _all_cases() if failures.classify(e) != kind]
    assert not wrong


def test_trial_runner_and_workflow_agree():
    assert retry.classify is failures.classify
    for err, _ in _all_cases():
        trial_answer = failures.is_deterministic(err)
        workflow_answer = retry.classify(err) == "deterministic"
        assert trial_answer == workflow_answer, (type(err).__name__, str(err))
        cost = retry.retry_handler(err, {"id": 1, "try_id": 0})
        assert (cost == retry.NO_RETRY_COST) == trial_answer, type(err).__name__


def test_classifier_imports_neither_torch_nor_parsl():
    code = ("import sys, genodl_core.failures; "
            "print(sorted(m for m in ('torch', 'parsl', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("err", [FileNotFoundError(), OSError("disk full")],
                         ids=["path", "oserror"])
def test_driver_and_mpi_record_a_failure_around_a_trial_alike(tmp_path, monkeypatch, err):
    import workflows.apps as apps
    from workflows import mpi
    from workflows.driver import settle_unit
    from workflows.progress import Progress
    from workflows.rundir import RunDir
    from workflows.sweep import sweep_from_dict

    sweep = sweep_from_dict(tiny_sweep(trials_per_level=1))
    trial = sweep.trials[0]
    recorded = {}
    for path in ("driver", "mpi"):
        run = RunDir.prepare(tmp_path / path, sweep)
        records.write_status(run.trial_dir(trial.trial_id), records.RUNNING,
                             trial_id=trial.trial_id, attempt=2)
        if path == "driver":
            future: Future = Future()
            future.set_exception(err)
            assert settle_unit(run, [trial.trial_id], future) == [
                (trial.trial_id, records.FAILED, None)]
        else:
            def raise_around(*args, **kwargs):
                raise err

            monkeypatch.setattr(apps, "execute_trial", raise_around)
            unit = ([trial.spec], [trial.trial_id], time.time())
            # The worker settings do not matter: the patched runner raises before using them.
            message = mpi._attempt(unit[0], unit[1], str(run.path), {}, unit[2])
            assert message["outcome"] == "error"
            mpi._settle(run, message, unit, mpi._Queue([]), 0, Progress(1))
        status = records.read_status(run.trial_dir(trial.trial_id))
        recorded[path] = {k: v for k, v in status.items() if k not in ("time", "host")}
    assert recorded["driver"] == recorded["mpi"]
    assert recorded["driver"] == {
        "state": records.FAILED, "trial_id": trial.trial_id, "attempt": 2,
        "error_type": type(err).__name__, "error": str(err) or type(err).__name__,
        "deterministic": failures.is_deterministic(err), "recorded_by": "driver"}
