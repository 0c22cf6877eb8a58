"""The engine: a family is one module, packs on CPU, checkpoints and resumption, the plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genodl_core import records
from genodl_core.registry import MODELS
from genodl_core.spec import derive_seed, spec_from_dict
from genodl_core.training.checkpoint import CHECKPOINT_FILE
from genodl_core.training.classifier import ClassifierStack, check_classification
from genodl_core.training.family import Family, stacking_key
from genodl_core.training.objectives import CrossEntropyObjective
from genodl_core.training.plan import RunSettings
from genodl_core.training.schedules import schedule_of
from genodl_core.training.trial import run_trial, run_trials
from tests.unit.conftest import interrupting_at

pytestmark = pytest.mark.usefixtures("torch_one_thread")

EVERY_EPOCH = RunSettings(checkpoint_interval_s=1e-9)


# --------------------------------------------------------------------------------------------
# a family that lives only in the tests: a two-layer MLP classifier
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MLPParams:
    hidden: int = 16
    #: A non-finite training loss fails the trial (as D-GEX's objective does).
    strict: bool = False

    def validate(self, where: str) -> None:
        pass


class StackedMLP(nn.Module):
    """K two-layer MLPs as batched matmuls: ``[K, B, F] -> [K, B, C]``."""

    def __init__(self, nets):
        super().__init__()
        self.w1 = nn.Parameter(torch.stack([n[0].weight.t() for n in nets]).detach().clone())
        self.b1 = nn.Parameter(torch.stack([n[0].bias for n in nets]).unsqueeze(1).detach().clone())
        self.w2 = nn.Parameter(torch.stack([n[2].weight.t() for n in nets]).detach().clone())
        self.b2 = nn.Parameter(torch.stack([n[2].bias for n in nets]).unsqueeze(1).detach().clone())

    def forward(self, x):
        return torch.baddbmm(self.b2, torch.relu(torch.baddbmm(self.b1, x, self.w1)), self.w2)


class StrictObjective(CrossEntropyObjective):
    fail_on_divergence = True


class MLPFamily(Family):
    def pack_key(self, spec):
        return stacking_key(spec)

    def check(self, member):
        check_classification(member, int(member.dataset.n_classes))

    def stack(self, members, plan):
        ds = members[0].dataset
        hidden = members[0].spec.model.params.hidden
        nets = []
        for m in members:
            torch.manual_seed(derive_seed(m.spec.seed, "init"))
            nets.append(nn.Sequential(nn.Linear(ds.n_features, hidden), nn.ReLU(),
                                      nn.Linear(hidden, int(ds.n_classes))))

        def run(nets, plan):
            module = nets[0] if len(nets) == 1 else StackedMLP(nets)
            return module, module

        return ClassifierStack(members, plan, n_classes=int(ds.n_classes), nets=nets, run=run,
                               objectives=[StrictObjective() if m.spec.model.params.strict
                                           else CrossEntropyObjective() for m in members],
                               schedules=[schedule_of(m.spec.train) for m in members],
                               extra=lambda t: {})


if "test_mlp" not in MODELS:
    MODELS.register("test_mlp", params=MLPParams, task="classification")(MLPFamily())


def mlp_spec(seed: int, flip: float = 0.0, epochs: int = 6, **train):
    return spec_from_dict({
        "seed": seed, "device": "cpu", "model": {"name": "test_mlp", "hidden": 12},
        "data": {"source": "synthetic_nt3", "n_train": 64, "n_test": 32, "n_features": 40},
        "noise": [{"kind": "label_flip", "fraction": flip}] if flip else [],
        "train": {"epochs": epochs, "batch_size": 8, "learning_rate": 0.05, "momentum": 0.5,
                  **train}})


def result(path) -> dict:
    return records.load_record(path).result


def same_numbers(a: dict, b: dict) -> None:
    """Curves, final metrics and arrays equal bit for bit (timings aside)."""
    timing = {"epoch_seconds", "train_seconds"}
    assert a["curves"].keys() == b["curves"].keys()
    for key in a["curves"]:
        if key not in timing:  # NaN (an undefined metric) equals NaN here
            np.testing.assert_array_equal(a["curves"][key], b["curves"][key], err_msg=key)
    for key in a["final"]:
        if key not in timing:
            np.testing.assert_array_equal(a["final"][key], b["final"][key], err_msg=key)


def test_a_family_of_one_module_trains_alone_and_packed(tmp_path):
    specs = [mlp_spec(1), mlp_spec(2, 0.3), mlp_spec(3, 0.1, optimizer="adam", momentum=0.0)]
    alone = [result(run_trial(s, tmp_path / "alone", raise_errors=True).path) for s in specs]
    assert alone[0]["engine"]["mode"] == "plain"
    # The source's held-out file is the test split now (data.validation = "auto").
    assert alone[0]["final"]["test_accuracy"] > 0.6
    packed_runs = run_trials(specs[:2], tmp_path / "packed", pack_size=2, raise_errors=True)
    for a, r in zip(alone, packed_runs):
        b = result(r.path)
        assert b["engine"]["mode"] == "packed" and b["engine"]["pack_size"] == 2
        for key in a["curves"]:
            if key != "epoch_seconds":
                np.testing.assert_allclose(b["curves"][key], a["curves"][key], rtol=1e-4,
                                           atol=1e-6, err_msg=key)
    assert alone[0]["curves"]["loss"] != alone[1]["curves"]["loss"]


@pytest.mark.parametrize("spec", [
    mlp_spec(4, 0.2),
    spec_from_dict({"seed": 5, "device": "cpu",
                    "model": {"name": "nt3", "conv": [[4, 5, 1], [4, 5, 1]], "pool": [1, 4],
                              "dense": [16], "dropout": 0.2, "variant": "abstaining",
                              "alpha": 0.7, "init_abs_epoch": 1},
                    "data": {"source": "synthetic_nt3", "n_train": 64, "n_test": 32,
                             "n_features": 120},
                    "train": {"epochs": 6, "batch_size": 16, "learning_rate": 0.01,
                              "momentum": 0.9, "reduce_lr_on_plateau": True,
                              "plateau_patience": 1}}),
    *[spec_from_dict({"seed": 5, "device": "cpu",
                      "model": {"name": "nt3", "conv": [[4, 5, 1], [4, 5, 1]], "pool": [1, 4],
                                "dense": [16], "variant": "abstaining", "alpha": 0.7,
                                "init_abs_epoch": 1, "warmup_epochs": 1, **controller},
                      "data": {"source": "synthetic_nt3", "n_train": 64, "n_test": 30,
                               "n_features": 120},
                      "noise": [{"kind": "label_flip", "fraction": 0.3}],
                      "train": {"epochs": 6, "batch_size": 16, "learning_rate": 0.01,
                                "momentum": 0.9}})
      for controller in ({"controller": "candle"}, {"controller": "dac"})],
    spec_from_dict({"seed": 6, "device": "cpu",
                    "model": {"name": "dgex", "width": 32, "n_parts": 2, "monitor_size": 100,
                              "lr_reference": False},
                    "data": {"source": "synthetic_dgex", "n_landmarks": 12, "n_targets": 20,
                             "n_train": 300, "n_val": 80, "n_test": 40},
                    "train": {"epochs": 6, "batch_size": 50, "learning_rate": 0.02,
                              "momentum": 0.5}}),
], ids=["mlp", "nt3-abstaining-dropout-plateau", "nt3-candle-controller", "nt3-dac-controller",
        "dgex-parts"])
def test_interrupted_trial_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, spec):
    whole = result(run_trial(spec, tmp_path / "whole", raise_errors=True).path)
    interrupting_at(monkeypatch, 2)
    broken = run_trial(spec, tmp_path / "resumed", settings=EVERY_EPOCH)
    assert not broken.ok and broken.error_type == "Interrupt"
    assert (broken.path / CHECKPOINT_FILE).is_file()
    resumed = run_trial(spec, tmp_path / "resumed", settings=EVERY_EPOCH, raise_errors=True)
    again = result(resumed.path)
    assert again["resumed_from_epoch"] == 2  # the epoch that failed is trained again
    assert records.read_status(resumed.path)["resumes"] == 1
    same_numbers(whole, again)
    assert not (resumed.path / CHECKPOINT_FILE).exists()  # removed once complete


def test_checkpoints_are_kept_when_asked(tmp_path):
    settings = EVERY_EPOCH.replace(keep_checkpoints=True)
    done = run_trial(mlp_spec(7, epochs=3), tmp_path, settings=settings, raise_errors=True)
    assert (done.path / CHECKPOINT_FILE).is_file()


def test_checkpoint_of_another_plan_is_not_used(tmp_path, monkeypatch):
    spec = mlp_spec(8)
    interrupting_at(monkeypatch, 1)
    run_trial(spec, tmp_path, settings=EVERY_EPOCH)
    monkeypatch.undo()
    # Packed with another trial the plan differs: the single trial's checkpoint is not used.
    out = run_trials([spec, mlp_spec(9)], tmp_path, pack_size=2, settings=EVERY_EPOCH,
                     raise_errors=True)
    assert result(out[0].path)["resumed_from_epoch"] is None


KILLED_RUN = """
import sys, time
from genodl_core.training import trial
from genodl_core.training.plan import RunSettings
original = trial._Progress.__call__
def slow(self, epoch, metrics):
    original(self, epoch, metrics)
    time.sleep(0.3)
trial._Progress.__call__ = slow
trial.run_trial(sys.argv[1], sys.argv[2], settings=RunSettings(checkpoint_interval_s=1e-9))
"""


def test_trial_killed_mid_run_resumes_bit_for_bit(tmp_path):
    spec = spec_from_dict({"seed": 3, "device": "cpu",
                           "model": {"name": "nt3", "conv": [[4, 5, 1], [4, 5, 1]],
                                     "pool": [1, 4], "dense": [16]},
                           "data": {"source": "synthetic_nt3", "n_train": 64, "n_test": 32,
                                    "n_features": 120},
                           "noise": [{"kind": "label_flip", "fraction": 0.2}],
                           "train": {"epochs": 12, "batch_size": 16, "learning_rate": 0.02,
                                     "momentum": 0.9}})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(spec_file), str(out)], env=env)
    checkpoint = out / spec.trial_id / CHECKPOINT_FILE
    progress = out / spec.trial_id / "progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.is_file() and progress.is_file() and \
                json.loads(progress.read_text())["epoch"] >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the trial ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert records.read_status(out / spec.trial_id)["state"] == records.RUNNING
    resumed = result(run_trial(spec, out, settings=EVERY_EPOCH, raise_errors=True).path)
    assert resumed["resumed_from_epoch"] >= 4
    whole = result(run_trial(spec, tmp_path / "whole", raise_errors=True).path)
    same_numbers(whole, resumed)


def test_plan_is_recorded_in_provenance_and_result(tmp_path):
    done = run_trial(mlp_spec(10, epochs=2), tmp_path, raise_errors=True)
    provenance = records.read_json(Path(done.path) / records.PROVENANCE_FILE)
    assert provenance["engine"]["mode"] == "plain"
    assert provenance["engine"]["device"] == "cpu"
    assert provenance["engine"]["precision"] == "fp32"
    assert provenance["engine"]["switches"]["compile"] is False
    assert result(done.path)["engine"] == provenance["engine"]


def test_member_failing_during_training_leaves_the_others(tmp_path):
    strict = spec_from_dict({**mlp_spec(1).to_dict(),
                             "model": {"name": "test_mlp", "hidden": 12, "strict": True}})
    diverging = strict.replace(seed=2, noise=[{"kind": "gaussian", "std": 1e38}])
    out = run_trials([strict, diverging], tmp_path, pack_size=2)
    assert [r.ok for r in out] == [True, False]
    assert out[1].error_type == "FloatingPointError"
    assert result(out[0].path)["extra"]["batched_trials"] == 2


def test_run_pack_refuses_specs_that_cannot_train_together(tmp_path):
    from genodl_core.errors import GenodlError
    from genodl_core.training.trial import run_pack

    dgex = spec_from_dict({"seed": 1, "device": "cpu", "model": {"name": "dgex", "width": 8},
                           "data": {"source": "synthetic_dgex", "n_landmarks": 6,
                                    "n_targets": 8, "n_train": 40, "n_val": 20, "n_test": 10},
                           "train": {"epochs": 1, "batch_size": 20}})
    for specs in ([mlp_spec(1), dgex], [mlp_spec(1), mlp_spec(2, epochs=3)]):
        with pytest.raises(GenodlError, match="cannot train together"):
            run_pack(specs, tmp_path)
