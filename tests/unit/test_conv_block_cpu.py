"""The CPU convolution block (convolution + ReLU + max-pooling with its own backward) computes
what the layer-by-layer network computes, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.kernels.conv_block_cpu import conv_relu_pool, weight_grad
from genodl_core.models.nt3 import NT3Params, build_nt3
from genodl_core.models.nt3_fast import ChannelsLastNT3, conv_blocks


@pytest.mark.parametrize("channels,out_channels,kernel,length,pool", [
    (1, 6, 5, 50, 1), (1, 6, 5, 50, 4), (3, 5, 4, 47, 3), (4, 4, 1, 20, 5), (2, 3, 7, 30, 1)])
def test_block_equals_conv_relu_pool_in_value_and_gradient(channels, out_channels, kernel,
                                                           length, pool):
    gen = torch.Generator().manual_seed(channels * 100 + length)
    x = torch.randn(3, channels, length, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(out_channels, channels, kernel, generator=gen, dtype=torch.float64,
                    requires_grad=True)
    b = torch.randn(out_channels, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = F.relu(F.conv1d(x, w, b))
    if pool > 1:
        ref = F.max_pool1d(ref, pool)
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, (x, w, b), upstream)
    xl = x.detach().transpose(1, 2).contiguous().requires_grad_()
    out = conv_relu_pool(xl, w, b, pool)  # [B, L'', CO]
    assert out.shape == (3, ref.shape[2], out_channels)
    torch.testing.assert_close(out.transpose(1, 2), ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out, (xl, w, b), upstream.transpose(1, 2).contiguous())
    torch.testing.assert_close(grads[0].transpose(1, 2), ref_grads[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[1], ref_grads[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[2], ref_grads[2], rtol=0, atol=1e-12)


def test_weight_gradient_of_one_and_many_channels():
    gen = torch.Generator().manual_seed(3)
    for channels in (1, 5):
        x = torch.randn(2, 40, channels, generator=gen, dtype=torch.float64)
        dy = torch.randn(2, 33, 4, generator=gen, dtype=torch.float64)
        ref = torch.ops.aten.convolution_backward(
            dy.transpose(1, 2), x.transpose(1, 2), torch.zeros(4, channels, 8,
                                                               dtype=torch.float64),
            None, [1], [0], [1], False, [0], 1, [False, True, False])[1]
        torch.testing.assert_close(weight_grad(x, dy, 8), ref, rtol=0, atol=1e-12)


def test_nt3_in_blocks_trains_like_the_plain_network():
    params = NT3Params(conv=[[4, 6, 1], [5, 3, 1]], pool=[2, 3], dense=[7])
    net = build_nt3(params, 60, 2, seed=1).double()
    blocks = ChannelsLastNT3(net, blocks=True)
    assert blocks.blocks is not None
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 60, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    grads = []
    for module in (net, blocks):
        net.zero_grad()
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in net.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-12)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("changes", [
    {"conv": [[4, 6, 2], [5, 3, 1]]},  # a stride
    {"activation": "elu"},             # another activation
])
def test_layers_that_do_not_fit_a_block_run_layer_by_layer(changes):
    params = NT3Params(**{"conv": [[4, 6, 1], [5, 3, 1]], "pool": [2, 3], "dense": [7],
                          **changes})
    net = build_nt3(params, 60, 2, seed=1)
    assert conv_blocks(net) is None
    module = ChannelsLastNT3(net, blocks=True)
    x = torch.rand(2, 60)
    torch.testing.assert_close(module(x), net(x), rtol=1e-5, atol=1e-6)


def test_an_overlapping_pool_does_not_fit_a_block():
    net = build_nt3(NT3Params(conv=[[4, 6, 1]], pool=[2], dense=[7]), 60, 2, seed=1)
    layers = list(net.layers)
    layers[2] = nn.MaxPool1d(3, stride=2)
    net.layers = nn.Sequential(*layers)
    assert conv_blocks(net) is None


def test_the_cpu_plan_runs_blocks_unless_fused_activations_are_off():
    from genodl_core.training.plan import RunSettings, choose_plan

    used = frozenset({"channels_last", "conv_blocks"})
    on = choose_plan("cpu", "fp32", used, settings=RunSettings())
    assert on.switches.conv_blocks and on.switches.label() == "nhwc+convblk"
    off = choose_plan("cpu", "fp32", used, settings=RunSettings(fused_activations=False))
    assert not off.switches.conv_blocks and off.switches.channels_last
    assert not choose_plan("cpu", "fp32", used, settings=RunSettings(fast_path="off")).switches.enabled
