"""The Triton convolution kernels against torch's conv1d (forward, input, weight, bias grads).

Without a GPU the kernels run in Triton's CPU interpreter in fp32 (exact up to summation
order), which checks the indexing, masks, groups and chunked reductions; on a GPU they run
compiled in bf16 against an fp64 reference.
"""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
ON_GPU = torch.cuda.is_available()

from genodl_core.kernels import conv1d as kc  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
TOL = 2e-2 if ON_GPU else 1e-5


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.detach().double() - ref.detach()).norm() / ref.detach().norm())


def run_case(n, length, c, co, k, groups, seed, relu=False, input_grad=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, groups * c, generator=gen).to(DEVICE, DTYPE)
    w = torch.randn(groups * co, c, k, generator=gen).to(DEVICE) / (c * k) ** 0.5
    b = torch.randn(groups * co, generator=gen).to(DEVICE)
    x.requires_grad_(c > 1 if input_grad is None else input_grad)
    w.requires_grad_()
    b.requires_grad_()
    y = kc.conv1d_nlc(x, w, b, groups, relu)
    dy = torch.randn(y.shape, generator=gen).to(DEVICE, y.dtype)
    inputs = [t for t in (x, w, b) if t.requires_grad]
    grads = torch.autograd.grad(y, inputs, dy)

    ref_in = [t.detach().double().requires_grad_(t.requires_grad) for t in (x, w, b)]
    xr, wr, br = ref_in
    if ON_GPU:  # the kernel multiplies bf16 weights
        wr = wr.to(torch.bfloat16).double()
    yr = F.conv1d(xr.transpose(1, 2), wr, br, groups=groups).transpose(1, 2)
    if relu:
        yr = F.relu(yr)
        assert (yr == 0).any() and (yr > 0).any()   # the mask matters in this case
    refs = torch.autograd.grad(yr, [t for t in ref_in if t.requires_grad], dy.double())
    assert y.shape == (n, length - k + 1, groups * co)
    assert y.dtype == x.dtype
    assert rel(y, yr) < TOL
    for got, want in zip(grads, refs):
        assert got.shape == want.shape
        assert torch.isfinite(got).all()
        assert rel(got, want) < TOL


@pytest.mark.parametrize("n,length,c,co,k,groups", [
    (2, 70, 1, 16, 20, 1),     # NT3's first convolution: one input channel, taps padded
    (2, 50, 16, 16, 5, 1),     # one tap per reduction block
    (3, 40, 16, 32, 3, 2),     # groups: trials packed side by side
    (2, 90, 1, 16, 7, 3),      # grouped first convolution
])
def test_matches_conv1d(n, length, c, co, k, groups):
    run_case(n, length, c, co, k, groups, seed=n * 100 + length)


@pytest.mark.parametrize("n,length,c,co,k,groups,input_grad", [
    # grouped first convolution: the mask is recomputed from the input in the kernel
    (2, 90, 1, 16, 7, 3, False),
    # many channels, no input gradient: the kernel reads the mask from the activated output
    (2, 40, 16, 16, 3, 2, False),
    # an input gradient too: the masked gradient feeds both
    (3, 40, 16, 32, 3, 2, True),
])
def test_relu_in_the_kernel_matches_relu_after_conv1d(n, length, c, co, k, groups, input_grad):
    run_case(n, length, c, co, k, groups, seed=n * 10 + length, relu=True,
             input_grad=input_grad)


def test_relu_mask_recomputed_equals_mask_read():
    # NT3's first convolution: one reduction block spans its taps, so the weight gradient can
    # rebuild the pre-activation from the input instead of reading the activated output.
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 90, 3, generator=gen).to(DEVICE, DTYPE)
    w = (torch.randn(48, 1, 7, generator=gen) / 7 ** 0.5).to(DEVICE)
    b = torch.randn(48, generator=gen).to(DEVICE)
    y = kc.forward(x, w, b, 3, relu=True)
    dy = torch.randn(y.shape, generator=gen).to(DEVICE, DTYPE)
    assert kc.recomputes_relu(w.shape)
    read = kc.weight_grad(x, dy, w.shape, 3, activated=y)
    recomputed = kc.weight_grad(x, dy, w.shape, 3, relu_of=(w, b))
    unmasked = kc.weight_grad(x, dy, w.shape, 3)
    for got, want in zip(recomputed, read):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[0], read[0], rtol=1e-2, atol=1e-2)  # the mask matters


def test_relu_recompute_needs_one_reduction_block():
    assert kc.recomputes_relu(torch.Size((64, 1, 20)))      # NT3's first convolution
    assert not kc.recomputes_relu(torch.Size((64, 64, 10)))
    x = torch.randn(1, 20, 16, device=DEVICE, dtype=DTYPE)
    w = torch.randn(16, 16, 3, device=DEVICE)
    dy = torch.randn(1, 18, 16, device=DEVICE, dtype=DTYPE)
    with pytest.raises(ValueError, match="3 taps x 16 channels span 3"):
        kc.weight_grad(x, dy, w.shape, 1, relu_of=(w, torch.zeros(16, device=DEVICE)))


def test_weight_gradient_chunks_add_up(monkeypatch):
    # Positions split over several programs (and a ragged last chunk) still sum exactly.
    monkeypatch.setattr(kc, "WGRAD_CHUNK", 16)
    run_case(2, 75, 16, 16, 4, 2, seed=7)


def test_supports_and_preferred():
    assert kc.supports(64, 64, 8)
    assert kc.supports(1, 64, 1)
    assert not kc.supports(64, 48, 1)       # filters are a matrix tile's width
    assert not kc.supports(64, 256, 1)
    assert kc.preferred(1, 64, 8)
    assert not kc.preferred(1, 64, 1)    # one trial: cuDNN measured faster end to end
    assert not kc.preferred(64, 64, 1)   # cuDNN measured faster there


def test_fake_kernel_matches_real_output_layout():
    # torch.compile traces the op through its fake kernel: shapes and strides must agree.
    torch.library.opcheck(kc.conv1d_nlc, (torch.randn(2, 30, 16, device=DEVICE, dtype=DTYPE),
                                          torch.randn(16, 16, 3, device=DEVICE),
                                          torch.randn(16, device=DEVICE), 1),
                          test_utils=("test_schema", "test_faketensor"))


FUSED_STEPS = {
    # NT3's shape: ReLU in the first convolution's kernel; the second (cuDNN) gives its bias
    # to the fused ReLU/pool.
    (1, 4): [("conv", (0, 1, True, True)), ("conv", (1, 1, False, False)),
             ("relu_pool", (4, 1))],
    # A pool right after the kernel's convolution: the kernel keeps its bias.
    (4, 1): [("conv", (0, 1, False, True)), ("relu_pool", (4, None)),
             ("conv", (1, 1, True, True))],
}


@pytest.mark.parametrize("pool", [(1, 4), (4, 1)])
@pytest.mark.parametrize("fuse", [False, True])
def test_batched_module_with_kernel_equals_cudnn_path(fuse, pool):
    # The packed first convolution goes through the kernel on the [B, L, G*C] memory of the
    # channels-last activations; outputs and every gradient match the conv2d route, also
    # with the ReLUs fused into the kernel and into the max-pooling.
    from genodl_core.models.nt3 import NT3Params, build_nt3
    from genodl_core.models.nt3_fast import BatchedNT3

    params = NT3Params(conv=((16, 5, 1), (16, 3, 1)), pool=pool, dense=(8,))
    nets = [build_nt3(params, 60, 2, seed=s).to(DEVICE) for s in range(3)]
    x = torch.randn(3, 4, 60, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    outs, grads = [], []
    for kernel in (False, True):
        model = BatchedNT3(nets, conv_kernel=kernel, fuse_activations=fuse and kernel)
        if fuse and kernel:
            assert model.steps[:len(FUSED_STEPS[pool])] == FUSED_STEPS[pool]
        out = model(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    tol = 1e-2 if ON_GPU else 1e-5  # the GPU kernel's fp32 dot runs in TF32
    assert rel(outs[1], outs[0].double()) < tol
    for with_kernel, without in zip(grads[1], grads[0]):
        assert rel(with_kernel, without.double()) < tol
