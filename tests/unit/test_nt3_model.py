"""NT3 architecture: shapes, parameter counts, initialisation and parameter validation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from genodl_core.errors import SpecError
from genodl_core.models.nt3 import (LocallyConnected1d, NT3Params, build_nt3, glorot_fans,
                                    nt3_param_count, nt3_widths)
from genodl_core.registry import MODELS
from genodl_core.typed import build

SMALL = NT3Params(conv=((4, 5, 1), (6, 3, 2)), pool=(2, 3), dense=(16, 8))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_as_classification_model():
    entry = MODELS.get("nt3")
    assert entry.params is NT3Params
    assert entry.meta["task"] == "classification"


def test_defaults_are_paper_table_one():
    p = NT3Params()
    assert p.conv == ((64, 20, 1), (64, 10, 1))
    assert p.pool == (1, 10)
    assert p.dense == (200, 20)
    assert (p.activation, p.dropout, p.variant) == ("relu", 0.0, "base")


@pytest.mark.parametrize("params,n_features,n_classes,outputs", [
    (SMALL, 100, 2, 2),
    (dataclasses.replace(SMALL, variant="abstaining"), 100, 2, 3),
    (dataclasses.replace(SMALL, activation="elu", dropout=0.3), 64, 5, 5),
    (dataclasses.replace(SMALL, activation="tanh", dense=()), 50, 3, 3),
    (dataclasses.replace(SMALL, activation="sigmoid", locally_connected=True), 40, 2, 2),
    (NT3Params(conv=((3, 4, 1),), pool=(1,), dense=(5,), variant="abstaining"), 12, 4, 5),
])
def test_output_shape_and_analytic_count(params, n_features, n_classes, outputs):
    model = build_nt3(params, n_features, n_classes, seed=1)
    out = model(torch.rand(7, n_features))
    assert out.shape == (7, outputs)
    assert torch.isfinite(out).all()
    assert n_params(model) == nt3_param_count(params, n_features, n_classes)


def test_widths_follow_valid_conv_and_pool():
    # 100 -> conv k5 s1: 96 -> pool 2: 48 -> conv k3 s2: 23 -> pool 3: 7
    assert nt3_widths(SMALL, 100) == [(96, 48), (23, 7)]


@pytest.mark.parametrize("filters,expected", [(64, 77_422_630), (128, 154_922_918)])
def test_full_size_parameter_counts(filters, expected):
    params = NT3Params(conv=((filters, 20, 1), (filters, 10, 1)))
    assert nt3_param_count(params, 60_483, 2) == expected
    # The real module, built without memory on the meta device, agrees.
    assert n_params(build_nt3(params, 60_483, 2, device="meta")) == expected


def test_full_size_shapes_match_reference():
    assert nt3_widths(NT3Params(), 60_483) == [(60_464, 60_464), (60_455, 6_045)]
    abstaining = NT3Params(variant="abstaining")
    # One more output unit on a 20-wide last hidden layer: 21 more parameters.
    assert nt3_param_count(abstaining, 60_483, 2) == 77_422_630 + 21


def test_glorot_uniform_weights_and_zero_biases():
    params = NT3Params(conv=((8, 5, 1), (8, 3, 1)), pool=(1, 2), dense=(300, 20))
    model = build_nt3(params, 400, 2, seed=5)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    assert len(layers) == 5
    for layer in layers:
        fan_in, fan_out = glorot_fans(layer)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound
        assert torch.count_nonzero(layer.bias) == 0
        if w.numel() > 10_000:  # uniform on [-b, b]: std b/sqrt(3), max close to b
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
            assert w.abs().max() > 0.99 * bound


def test_conv_fans_are_keras_fans():
    conv = nn.Conv1d(4, 6, 5)
    assert glorot_fans(conv) == (20, 30)
    lc = LocallyConnected1d(4, 6, 5, 1, 30)
    assert glorot_fans(lc) == (20, 30)


def test_init_depends_only_on_seed_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_nt3(SMALL, 100, 2, seed=11)
    b = build_nt3(SMALL, 100, 2, seed=11)
    c = build_nt3(SMALL, 100, 2, seed=12)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        if pa.abs().sum() > 0:
            assert not torch.equal(pa, pc)


def test_locally_connected_matches_conv_when_weights_are_shared():
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        conv = nn.Conv1d(2, 3, 4, stride=2)
    conv = conv.to_empty(device="cpu")
    lc = LocallyConnected1d(2, 3, 4, 2, 21)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(3, 2, 4, generator=gen) - 0.5)
        conv.bias.copy_(torch.rand(3, generator=gen))
        # Conv weight [out, in, k] -> LC weight [positions, in*k, out], same at every position.
        lc.weight.copy_(conv.weight.reshape(3, 8).T.expand(lc.positions, 8, 3))
        lc.bias.copy_(conv.bias.expand(lc.positions, 3))
    x = torch.rand(5, 2, 21, generator=gen)
    assert lc.positions == 9
    assert torch.allclose(lc(x), conv(x), atol=1e-6)


def test_too_narrow_input_names_layer_and_width():
    with pytest.raises(SpecError) as err:
        build_nt3(NT3Params(), 25, 2)
    assert err.value.field == "model.conv[1]"
    assert "only 6 wide" in str(err.value)
    with pytest.raises(SpecError) as err:
        nt3_param_count(NT3Params(conv=((4, 5, 1),), pool=(10,)), 12, 2)
    assert err.value.field == "model.pool[0]"
    assert "8 positions" in str(err.value)


def test_fewer_than_two_classes_rejected():
    with pytest.raises(SpecError, match="n_classes"):
        build_nt3(SMALL, 100, 1)


@pytest.mark.parametrize("data,field", [
    ({"pool": [1, 2, 3]}, "model.pool"),
    ({"conv": []}, "model.conv"),
    ({"conv": [[64, 0, 1], [64, 10, 1]]}, "model.conv[0]"),
    ({"pool": [1, 0]}, "model.pool[1]"),
    ({"dense": [200, 0]}, "model.dense[1]"),
    ({"dropout": 1.0}, "model.dropout"),
    ({"dropout": -0.1}, "model.dropout"),
    ({"alpha": 0.0}, "model.alpha"),
    ({"alpha_scale_factor": 0.0}, "model.alpha_scale_factor"),
    ({"alpha_scale_factor": 1.2}, "model.alpha_scale_factor"),
    ({"min_acc": 1.5}, "model.min_acc"),
    ({"max_abs": -0.1}, "model.max_abs"),
    ({"acc_gain": -1}, "model.acc_gain"),
    ({"init_abs_epoch": -1}, "model.init_abs_epoch"),
    ({"activation": "gelu"}, "model.activation"),
    ({"variant": "dac"}, "model.variant"),
    ({"conv": [[64, 20]]}, "model.conv[0]"),
])
def test_invalid_params_name_the_field(data, field):
    with pytest.raises(SpecError) as err:
        build(NT3Params, data, "model")
    assert err.value.field == field
    assert repr(err.value.value) in str(err.value) or str(err.value.value) in str(err.value)


def test_params_from_plain_data():
    p = build(NT3Params, {"conv": [[128, 20, 1], [128, 10, 1]], "dropout": 0.1,
                          "activation": "elu", "variant": "abstaining", "alpha": 0.5}, "model")
    assert p.conv == ((128, 20, 1), (128, 10, 1)) and p.alpha == 0.5
    assert p.n_outputs(2) == 3
    ctl = p.alpha_controller()
    assert (ctl.alpha, ctl.scale_factor, ctl.init_abs_epoch) == (0.5, 0.95, 2)


def test_dropout_only_when_positive():
    with_drop = build_nt3(dataclasses.replace(SMALL, dropout=0.2), 100, 2)
    without = build_nt3(SMALL, 100, 2)
    assert sum(isinstance(m, nn.Dropout) for m in with_drop.modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())
    # pool 1 is a no-op: no MaxPool layer for it
    one = build_nt3(NT3Params(conv=((2, 3, 1), (2, 3, 1)), pool=(1, 2), dense=(4,)), 30, 2)
    assert sum(isinstance(m, nn.MaxPool1d) for m in one.modules()) == 1


def test_eval_is_deterministic_and_batch_independent():
    model = build_nt3(SMALL, 100, 2, seed=3).eval()
    x = torch.as_tensor(np.random.default_rng(0).random((6, 100), dtype=np.float32))
    with torch.no_grad():
        whole = model(x)
        parts = torch.cat([model(x[:2]), model(x[2:])])
    assert torch.allclose(whole, parts, atol=1e-6)
