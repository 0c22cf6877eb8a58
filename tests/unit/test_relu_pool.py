"""ReLU + max-pooling as one operation: the values and gradients of torch's two operations."""

import pytest
import torch
import torch.nn.functional as F

from genodl_core.kernels.relu_pool import relu_max_pool


def both(x: torch.Tensor, pool: int, grad_seed: int = 0):
    """Output and input gradient of torch's ops and of the fused one, for one upstream grad."""
    a = x.detach().clone().requires_grad_()
    b = x.detach().clone().requires_grad_()
    want = F.max_pool2d(F.relu(a), (1, pool))
    got = relu_max_pool(b, pool)
    upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(grad_seed),
                           dtype=x.dtype)
    want.backward(upstream)
    got.backward(upstream)
    return want, got, a.grad, b.grad


@pytest.mark.parametrize("length,pool", [(103, 10), (60, 10), (7, 3), (5, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_max_pool_of_relu(length, pool, channels_last):
    x = torch.randn(3, 8, 1, length, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(length))
    x[0, 0, 0, :pool] = 0.5          # a tie: the gradient goes to the first position only
    x[1, 2, 0, :pool] = -1.0         # a window without a positive value: no gradient
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want, got, grad_want, grad_got = both(x, pool)
    assert torch.equal(got, want)
    assert torch.equal(grad_got, grad_want)
    assert grad_got[0, 0, 0, :pool].count_nonzero() <= 1
    assert not grad_got[1, 2, 0, :pool].any()
    if length % pool:                 # positions past the last window get no gradient
        assert not grad_got[..., length // pool * pool:].any()
    if channels_last:
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert grad_got.is_contiguous(memory_format=torch.channels_last)


def test_backward_keeps_one_byte_per_pooled_output():
    # What makes it cheap: neither the input nor the ReLU's output is kept for the backward.
    x = torch.randn(2, 4, 1, 50, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        relu_max_pool(x, 10)
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.int8, (2, 1, 5, 4))]


def test_bias_taken_out_of_the_convolution():
    # relu(max(x) + b) and its gradients equal those of max_pool(relu(x + b)), b included.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 1, 43, dtype=torch.float64, generator=gen)
    bias = torch.randn(6, dtype=torch.float64, generator=gen)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    bias_a, bias_b = bias.clone().requires_grad_(), bias.clone().requires_grad_()
    want = F.max_pool2d(F.relu(a + bias_a.view(1, 6, 1, 1)), (1, 4))
    got = relu_max_pool(b, 4, bias_b)
    upstream = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    want.backward(upstream)
    got.backward(upstream)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert torch.allclose(b.grad, a.grad, rtol=0, atol=1e-12)
    assert torch.allclose(bias_b.grad, bias_a.grad, rtol=0, atol=1e-12)
    assert bias_b.grad.count_nonzero() >= 4


@pytest.mark.parametrize("pool", [0, 128, 51])
def test_rejects_windows_it_cannot_code(pool):
    with pytest.raises(ValueError, match=f"pool={pool}"):
        relu_max_pool(torch.randn(1, 2, 1, 50), pool)
