"""Stacked layers of K trials: per-trial Glorot init independent of the pack, batched dense and
grouped convolutions equal to each trial's own layer, packs loaded from single trials, and a
pack's step the same operators whatever its size (no per-trial loop)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from genodl_core.models.cnnc import CNNCParams, StackedCNNC
from genodl_core.models.histone import HistoneParams, StackedConvNet
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


class _CountOps(TorchDispatchMode):
    """Counts the operators a computation dispatches (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _ops_per_step(net: nn.Module, k: int, n_features: int) -> int:
    x = torch.rand(k, 4, n_features) * 5
    net.train()
    with _CountOps() as counter:
        net(x).float().pow(2).mean(dim=(1, 2)).sum().backward()
    return counter.calls


def test_a_packs_step_dispatches_as_many_operators_whatever_its_size():
    """A pack saves launches only if nothing in its step loops over the trials."""
    cnnc = CNNCParams(filters=(4, 6), dense=(8,))
    histone = HistoneParams(conv=((6, 5, 1), (6, 3, 2)), pool=(2, 2), dense=(5,)).layout()

    def cnnc_net(k):
        return StackedCNNC.stack([StackedCNNC(cnnc, 16, 2).initialise([s]) for s in range(k)])

    def histone_net(k):
        nets = [StackedConvNet(histone, 3, 20).initialise([s]) for s in range(k)]
        for s, net in enumerate(nets):
            net.seed_dropout([s])
        return StackedConvNet.stack(nets)

    for build, n_features in ((cnnc_net, 256), (histone_net, 60)):
        counts = {k: _ops_per_step(build(k), k, n_features) for k in (1, 2, 5)}
        # K = 1 may skip a layout copy ([B, K, ...] -> [K, B, ...] is free for one trial)
        assert counts[2] == counts[5] > 20 and counts[1] <= counts[2] <= counts[1] + 2, counts
