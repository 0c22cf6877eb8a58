"""D-GEX network and training: initialisation, dropout, learning-rate rule, model selection,
determinism, and that it beats LR and KNN-GE on nonlinear synthetic data."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

import genodl_core.catalog  # noqa: F401
from genodl_core.data.scaling import scale_dataset
from genodl_core.data.synthetic_dgex import SyntheticDGEXParams, generate
from genodl_core.errors import SpecError, TrialTimeout
from genodl_core.models.dgex import DGEXNet, DGEXParams, SeededDropout
from genodl_core.registry import MODELS
from genodl_core.spec import spec_from_dict
from genodl_core.training import engine
from genodl_core.training.family import FitOutcome, Member
from genodl_core.training.plan import ExecutionPlan, RunSettings, choose_plan
from genodl_core.training.schedules import RiseDecaySchedule



pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("torch_one_thread")]


def _ctx(ds, model=None, train=None, deadline=None, seed=0, name="dgex"):
    spec = spec_from_dict({"seed": seed, "model": {"name": name, **(model or {})},
                           "data": {"source": "synthetic_dgex"},
                           "train": {"batch_size": 200, "momentum": 0.5, "learning_rate": 0.005,
                                     "epochs": 5, **(train or {})}})
    return Member(spec=spec, dataset=ds, log=logging.getLogger("test"), deadline=deadline)


def _fit(ds, **kw) -> FitOutcome:
    """One D-GEX trial through its family and the engine, as the runner trains it on CPU."""
    member = _ctx(ds, **kw)
    family = MODELS.get("dgex").fn
    family.check(member)
    plan = choose_plan("cpu", "fp32", family.switches(1),
                       settings=RunSettings(checkpoint_interval_s=None))
    (outcome,) = engine.train(family.stack([member], plan), [member], device="cpu")
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@pytest.fixture(scope="module")
def tiny():
    raw = generate(SyntheticDGEXParams(n_landmarks=12, n_targets=30, n_train=400, n_val=100,
                                       n_test=100, seed=5))
    return scale_dataset(raw, "standard", "train")


@pytest.fixture(scope="module")
def small():
    return scale_dataset(generate(SyntheticDGEXParams(seed=0)), "standard", "train")


def test_initialisation_follows_the_paper():
    net = DGEXNet(40, 25, hidden_layers=3, width=30, dropout=0.1)
    net.initialise(torch.Generator().manual_seed(1), output_init=1e-4)
    linears = [m for m in net.hidden if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(30, 40), (30, 30), (30, 30)]
    for m in linears:
        bound = np.sqrt(6.0 / (m.in_features + m.out_features))
        w = m.weight.detach().numpy()
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
        assert np.all(m.bias.detach().numpy() == 0)
    assert np.abs(net.output.weight.detach().numpy()).max() <= 1e-4
    assert np.all(net.output.bias.detach().numpy() == 0)
    assert net.n_parameters == (40 * 30 + 30) + 2 * (30 * 30 + 30) + (30 * 25 + 25)
    same = DGEXNet(40, 25, 3, 30, 0.1).initialise(torch.Generator().manual_seed(1))
    other = DGEXNet(40, 25, 3, 30, 0.1).initialise(torch.Generator().manual_seed(2))
    assert torch.equal(same.hidden[0].weight, net.hidden[0].weight)
    assert not torch.equal(other.hidden[0].weight, net.hidden[0].weight)


def test_dropout_is_seeded_scaled_and_off_in_eval():
    drop = SeededDropout(0.25)
    h = torch.ones(200, 50)
    drop.generator = torch.Generator().manual_seed(3)
    a = drop(h)
    drop.generator = torch.Generator().manual_seed(3)
    assert torch.equal(a, drop(h))
    kept = (a != 0).float().mean().item()
    assert 0.72 < kept < 0.78
    assert torch.allclose(a[a != 0], torch.full_like(a[a != 0], 1 / 0.75))
    drop.eval()
    assert torch.equal(drop(h), h)
    # No dropout on the input: the first module of the network is the first Linear layer.
    net = DGEXNet(5, 3, 1, 4, 0.5)
    assert isinstance(net.hidden[0], torch.nn.Linear)


#: (monitor MAE, validation MAE) of five epochs: the monitor error rises after epochs 2, 3, 4
#: (0-based), validation is best at epoch 3.
SCRIPT = [(1.0, 0.5), (0.9, 0.4), (0.95, 0.45), (0.97, 0.3), (0.99, 0.35)]


def test_learning_rate_rule_decays_on_rising_monitor_error_with_floor():
    schedule = RiseDecaySchedule(1.2e-5, decay=0.9, min_lr=1e-5)
    lrs = []
    for mon, val in SCRIPT:
        schedule.step({"mae": mon, "val_mae": val})
        lrs.append(schedule.lr)
    assert lrs[:2] == [1.2e-5, 1.2e-5]
    assert lrs[2] == pytest.approx(1.08e-5)
    assert lrs[3] == pytest.approx(1e-5) and lrs[4] == pytest.approx(1e-5)   # the floor


def test_engine_applies_the_rule_and_keeps_the_best_validation_epoch(tiny, monkeypatch):
    """Scripted monitor and validation errors through D-GEX's stack and the engine: the
    optimizer runs each epoch at the rule's rate and the best validation epoch's weights stay."""
    member = _ctx(tiny, model={"width": 8, "lr_decay": 0.9, "min_learning_rate": 1e-5},
                  train={"learning_rate": 1.2e-5, "epochs": len(SCRIPT)})
    stack = MODELS.get("dgex").fn.stack([member], ExecutionPlan(device="cpu", precision="fp32"))
    script = iter(SCRIPT)

    def scripted_validate():
        mon, val = next(script)
        return [{"mae": mon, "val_mae": val, "mae_per_gene": np.full(30, mon),
                 "val_mae_per_gene": np.full(30, val)}]

    weights = []
    member.on_epoch = lambda epoch, metrics: weights.append(
        {k: v.clone() for k, v in stack.parts[0].net.state_dict().items()})
    monkeypatch.setattr(stack, "validate", scripted_validate)
    (out,) = engine.train(stack, [member], device="cpu")
    # The rate in effect during each epoch: the rule's after the epoch before.
    assert out.curves["learning_rate"] == pytest.approx([1.2e-5] * 3 + [1.08e-5, 1e-5])
    assert stack.parts[0].optimizer.torch.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert stack.schedules[0].lr == pytest.approx(1e-5)
    assert out.curves["val_mae"] == pytest.approx([v for _, v in SCRIPT])
    assert out.final["best_epoch"] == 4 and out.extra["best_epoch_per_part"] == [4]
    kept = stack.parts[0].net.state_dict()
    assert all(torch.equal(kept[k], weights[3][k]) for k in kept)
    assert not all(torch.equal(kept[k], weights[4][k]) for k in kept)


def test_best_validation_epoch_is_selected(tiny):
    # A large step makes validation error wander, so the last epoch is usually not the best.
    out = _fit(tiny, model={"width": 64}, train={"epochs": 12, "learning_rate": 0.02})
    curve = out.curves["val_mae"]
    assert len(curve) == 12 and out.final["epochs_run"] == 12
    assert out.final["best_epoch"] == int(np.argmin(curve)) + 1
    assert out.final["val_mae"] == pytest.approx(min(curve), rel=1e-5)
    for key in ("loss", "mae", "learning_rate", "epoch_seconds"):
        assert len(out.curves[key]) == 12
    assert out.arrays["val_mae_per_gene"].shape == (30,)
    assert out.arrays["test_mae_per_gene"].shape == (30,)
    assert out.arrays["target_ids"][0] == "TG00000"


def test_fit_is_deterministic_and_seed_dependent(tiny):
    a = _fit(tiny, model={"width": 32, "dropout": 0.25})
    b = _fit(tiny, model={"width": 32, "dropout": 0.25})
    c = _fit(tiny, model={"width": 32, "dropout": 0.25}, seed=1)
    assert a.curves["loss"] == b.curves["loss"]
    np.testing.assert_array_equal(a.arrays["val_mae_per_gene"], b.arrays["val_mae_per_gene"])
    assert a.curves["loss"] != c.curves["loss"]


def test_split_targets_into_parts(tiny):
    out = _fit(tiny, model={"width": 32, "n_parts": 3, "hidden_layers": 2})
    assert len(out.extra["best_epoch_per_part"]) == 3
    assert {f"learning_rate_part{i}" for i in range(3)} <= set(out.curves)
    per_gene = out.arrays["val_mae_per_gene"]
    assert per_gene.shape == (30,) and np.all(np.isfinite(per_gene))
    assert out.final["val_mae"] == pytest.approx(per_gene.mean())
    # Three networks, each with its own output block of 10 genes.
    one = 12 * 32 + 32 + 32 * 32 + 32
    assert out.final["n_parameters"] == 3 * one + 32 * 30 + 30


def test_lr_reference_metrics(tiny):
    out = _fit(tiny, model={"width": 32})
    f = out.final
    lr_per_gene = out.arrays["lr_val_mae_per_gene"]
    assert f["lr_val_mae"] == pytest.approx(lr_per_gene.mean())
    assert f["relative_improvement"] == pytest.approx(
        (f["lr_val_mae"] - f["val_mae"]) / f["lr_val_mae"])
    assert f["share_genes_better_than_lr"] == pytest.approx(
        np.mean(out.arrays["val_mae_per_gene"] < lr_per_gene))
    assert "lr_test_mae" in f and "test_relative_improvement" in f
    off = _fit(tiny, model={"width": 32, "lr_reference": False})
    assert "lr_val_mae" not in off.final and "lr_val_mae_per_gene" not in off.arrays


def test_dgex_beats_lr_and_knn_ge_on_nonlinear_synthetic_data(small):
    started = time.perf_counter()
    dgex = _fit(small, model={"width": 256, "dropout": 0.1},
                train={"epochs": 25, "learning_rate": 0.005})
    lr = MODELS.get("lr").fn(_ctx(small, name="lr"))
    knn = MODELS.get("knn_ge").fn(_ctx(small, name="knn_ge"))
    assert dgex.final["val_mae"] < 0.92 * lr.final["val_mae"]
    assert dgex.final["test_mae"] < 0.92 * lr.final["test_mae"]
    assert dgex.final["relative_improvement"] > 0.08
    assert dgex.final["share_genes_better_than_lr"] > 0.9
    assert knn.final["val_mae"] > lr.final["val_mae"] > dgex.final["val_mae"]
    assert time.perf_counter() - started < 60


def test_bad_dgex_params_and_timeout(tiny):
    data = {"source": "synthetic_dgex"}
    with pytest.raises(SpecError, match=r"model\.dropout=1\.0: out of range"):
        spec_from_dict({"model": {"name": "dgex", "dropout": 1.0}, "data": data})
    with pytest.raises(SpecError, match=r"model\.hidden_layers=0"):
        spec_from_dict({"model": {"name": "dgex", "hidden_layers": 0}, "data": data})
    with pytest.raises(SpecError, match=r"model\.widht.*unknown key"):
        spec_from_dict({"model": {"name": "dgex", "widht": 10}, "data": data})
    with pytest.raises(SpecError, match=r"model\.n_parts=31.*more parts than target genes"):
        _fit(tiny, model={"n_parts": 31, "width": 8})
    with pytest.raises(TrialTimeout):
        _fit(tiny, model={"width": 8}, deadline=time.monotonic() - 1)
    assert DGEXParams().width == 3000 and DGEXParams().monitor_size == 5000
