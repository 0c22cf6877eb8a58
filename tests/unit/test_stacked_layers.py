"""Stacked layers of K trials: per-trial Glorot init independent of the pack, batched dense and
grouped convolutions equal to each trial's own layer, packs loaded from single trials."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.models.stacked_layers import (StackedLayers, glorot_bound, grouped_conv,
                                               stacked_linear)


def _layers(k: int, kernel=(3, 3)) -> StackedLayers:
    net = StackedLayers(k)
    net.add_conv(4, 2, kernel)
    net.add_conv(5, 4, kernel)
    net.add_dense(20, (7, 3))
    return net


def test_each_trial_draws_the_weights_it_would_draw_alone():
    seeds = [11, 12, 13]
    pack = _layers(3)
    pack.glorot_(seeds)
    for t, seed in enumerate(seeds):
        alone = _layers(1)
        alone.glorot_([seed])
        for p_pack, p_alone in zip(pack.parameters(), alone.parameters()):
            assert torch.equal(p_pack[t], p_alone[0])
    assert not torch.equal(pack.dense_w[0][0], pack.dense_w[0][1])
    assert all(torch.count_nonzero(b) == 0 for b in (*pack.conv_b, *pack.dense_b))


@pytest.mark.parametrize("kernel", [(3, 3), (5,)])
def test_glorot_init_matches_torch_xavier_uniform_with_the_same_generator(kernel):
    net = _layers(2, kernel)
    net.glorot_([5, 6])
    gen = torch.Generator().manual_seed(6)
    for w in (*net.conv_w, *net.dense_w):
        # trial 1's draws, in layer order, from its own generator
        expected = nn.init.xavier_uniform_(torch.empty(w.shape[1:]), generator=gen)
        torch.testing.assert_close(w[1], expected, rtol=1e-6, atol=0)
    field = int(torch.tensor(kernel).prod())
    bound = glorot_bound(4 * field, 5 * field)
    assert bound == pytest.approx((6 / ((4 + 5) * field)) ** 0.5)
    assert 0.9 * bound < float(net.conv_w[1].detach().abs().max()) <= bound


def test_stacked_linear_equals_k_separate_linear_layers():
    torch.manual_seed(0)
    linears = [nn.Linear(6, 4) for _ in range(3)]
    weight = torch.stack([lin.weight.detach().t() for lin in linears])     # [K, in, out]
    bias = torch.stack([lin.bias.detach() for lin in linears]).unsqueeze(1)
    x = torch.randn(3, 5, 6)
    out = stacked_linear(x, weight, bias)
    assert out.shape == (3, 5, 4)
    for t, lin in enumerate(linears):
        torch.testing.assert_close(out[t], lin(x[t]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spatial, options", [((9,), {"dilation": 2}),
                                              ((7, 7), {"padding": 1})])
def test_grouped_conv_equals_each_trials_own_convolution(spatial, options):
    torch.manual_seed(1)
    k, cin, cout = 3, 2, 4
    kernel = (3,) * len(spatial)
    weight, bias = torch.randn(k, cout, cin, *kernel), torch.randn(k, cout)
    x = torch.randn(k, 5, cin, *spatial)                                   # [K, B, C, ...]
    packed = grouped_conv(x.transpose(0, 1).flatten(1, 2), weight, bias, **options)
    conv = F.conv1d if len(spatial) == 1 else F.conv2d
    for t in range(k):
        own = conv(x[t], weight[t], bias[t], **options)
        torch.testing.assert_close(packed[:, t * cout:(t + 1) * cout], own,
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1-D or 2-D kernel"):
        grouped_conv(x, torch.randn(k, cout, cin), bias)


def test_load_trials_stacks_weights_and_dropout_streams():
    nets = [_layers(1) for _ in range(2)]
    for seed, net in zip((3, 4), nets):
        net.glorot_([seed])
        net.dropout_seeds.fill_(seed * 100)
        net.dropout_step.fill_(7)
    pack = _layers(2)
    pack.load_trials(nets)
    for t, net in enumerate(nets):
        for p_pack, p_net in zip(pack.parameters(), net.parameters()):
            assert torch.equal(p_pack[t], p_net[0])
    assert pack.dropout_seeds.tolist() == [300, 400] and int(pack.dropout_step) == 7
    with pytest.raises(ValueError, match="one per trial"):
        pack.glorot_([1])
