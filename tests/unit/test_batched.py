"""Batched multi-trial training gives the same trials as separate runs (CPU, fp32)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genodl_core.records import load_record
from genodl_core.spec import spec_from_dict
from genodl_core.models.nt3 import NT3Params, build_nt3
from genodl_core.models.nt3_fast import BatchedNT3
from genodl_core.training.optim import BatchedOptimizer
from genodl_core.training.trial import group_packs, pack_key, run_trial, run_trials


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_spec(seed: int, flip: float | None = None, *, optimizer: str = "sgd",
              momentum: float = 0.0, variant: str = "base", plateau: bool = False,
              dropout: float = 0.0, **data):
    spec = {"seed": seed, "device": "cpu",
            "model": {"name": "nt3", "conv": [[4, 5, 1], [4, 5, 1]], "pool": [1, 4],
                      "dense": [16], "variant": variant, "dropout": dropout},
            "data": {"source": "synthetic_nt3", "n_train": 72, "n_test": 40, "n_features": 160,
                     **data},
            "train": {"epochs": 4, "batch_size": 16, "optimizer": optimizer,
                      "learning_rate": 0.01, "momentum": momentum,
                      "reduce_lr_on_plateau": plateau, "plateau_patience": 1}}
    if flip:
        spec["noise"] = [{"kind": "label_flip", "fraction": flip}]
    return spec_from_dict(spec)


def results(paths):
    return [load_record(p).result for p in paths]


@pytest.mark.parametrize("kwargs", [
    {"optimizer": "sgd"},
    {"optimizer": "sgd", "momentum": 0.9, "plateau": True},
    {"optimizer": "adam", "variant": "abstaining"},
])
def test_pack_equals_separate_trials(tmp_path, kwargs):
    specs = [make_spec(1, **kwargs), make_spec(2, 0.2, **kwargs), make_spec(3, 0.4, **kwargs)]
    alone = results(run_trial(s, tmp_path / "alone", raise_errors=True).path for s in specs)
    packed_results = run_trials(specs, tmp_path / "packed", pack_size=3, raise_errors=True)
    packed = results(r.path for r in packed_results)
    assert [r.trial_id for r in packed_results] == [s.trial_id for s in specs]
    for a, b in zip(alone, packed):
        assert b["extra"]["batched_trials"] == 3 and "batched_trials" not in a["extra"]
        assert a["curves"].keys() == b["curves"].keys()
        for key in a["curves"]:
            if key == "epoch_seconds":
                continue
            np.testing.assert_allclose(b["curves"][key], a["curves"][key], rtol=1e-4, atol=1e-5,
                                       err_msg=key)
        # Different seeds and labels really gave different trials.
    assert alone[0]["curves"]["loss"] != alone[1]["curves"]["loss"]


def test_pack_with_feature_noise_uses_each_trials_features(tmp_path):
    specs = [make_spec(s).replace(noise=[{"kind": "gaussian", "std": 0.3 * s}]) for s in (1, 2)]
    alone = results(run_trial(s, tmp_path / "a", raise_errors=True).path for s in specs)
    packed = results(r.path for r in run_trials(specs, tmp_path / "b", raise_errors=True))
    for a, b in zip(alone, packed):
        np.testing.assert_allclose(b["curves"]["loss"], a["curves"]["loss"], rtol=1e-4)
        np.testing.assert_allclose(b["curves"]["val_loss"], a["curves"]["val_loss"], rtol=1e-4)


def test_member_failing_before_its_fit_leaves_the_pack(tmp_path, monkeypatch):
    from genodl_core.registry import NOISES

    entry = NOISES.get("label_flip")
    original = entry.fn

    def flaky(arrays, params, rng):
        if params.fraction == 0.3:
            raise ValueError("injected noise failure")
        return original(arrays, params, rng)

    real_get = NOISES.get

    def get(name, *args, **kwargs):
        found = real_get(name, *args, **kwargs)
        return dataclasses.replace(found, fn=flaky) if name == "label_flip" else found

    monkeypatch.setattr(NOISES, "get", get)
    specs = [make_spec(1, 0.1), make_spec(2, 0.3), make_spec(3, 0.2)]
    out = run_trials(specs, tmp_path, pack_size=3)
    assert [r.ok for r in out] == [True, False, True]
    assert out[1].error_type == "ValueError"
    assert load_record(out[0].path).result["extra"]["batched_trials"] == 2


def test_grouping_and_keys():
    a, b = make_spec(1), make_spec(2, 0.3)
    other_arch = make_spec(3, n_features=170)
    with_dropout = make_spec(4, dropout=0.2)
    assert pack_key(a) == pack_key(b) != pack_key(other_arch)
    assert pack_key(with_dropout) is None
    packs = group_packs([a, other_arch, b, with_dropout, make_spec(5)], pack_size=2)
    assert sorted(map(sorted, packs)) == [[0, 2], [1], [3], [4]]


def test_batched_model_matches_nets_and_writes_back():
    params = NT3Params(conv=((3, 4, 1), (5, 3, 2)), pool=(2, 2), dense=(7,))
    nets = [build_nt3(params, 60, 2, seed=s) for s in range(3)]
    model = BatchedNT3(nets)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 5, 60)).astype(np.float32))
    out = model(x)
    for t, net in enumerate(nets):
        torch.testing.assert_close(out[t], net(x[t]), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    copies = [build_nt3(params, 60, 2, seed=s) for s in range(3)]
    model.write_back(copies)
    # Each trial's network now holds exactly its doubled weights (doubling is exact in fp32).
    # (The logits of the doubled weights are not compared at the tolerance above: at logits up
    # to 7, a near-zero one differs by a few float32 ulps between the two summation orders.)
    for net, copy in zip(nets, copies):
        for (name, p), q in zip(net.named_parameters(), copy.parameters()):
            assert torch.equal(q, 2 * p), name


def test_batched_optimizer_per_trial_learning_rates():
    p = torch.nn.Parameter(torch.ones(2, 3))
    opt = BatchedOptimizer([p], 2, kind="sgd", lr=0.1)
    opt.set_lrs([0.1, 0.5])
    p.grad = torch.ones(2, 3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([[0.9] * 3, [0.5] * 3]))


def test_later_packs_still_equal_separate_trials(tmp_path):
    # Nothing of one pack (module, optimizer state, generators) leaks into the next.
    first = [make_spec(1), make_spec(2, 0.2)]
    second = [make_spec(3, 0.1), make_spec(4, 0.3)]
    run_trials(first, tmp_path / "packed", pack_size=2, raise_errors=True)
    packed = run_trials(second, tmp_path / "packed", pack_size=2, raise_errors=True)
    alone = [run_trial(s, tmp_path / "alone", raise_errors=True) for s in second]
    for a, b in zip(results(r.path for r in alone), results(r.path for r in packed)):
        assert b["extra"]["batched_trials"] == 2
        np.testing.assert_allclose(a["curves"]["loss"], b["curves"]["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["curves"]["val_loss"], b["curves"]["val_loss"], rtol=1e-5)
