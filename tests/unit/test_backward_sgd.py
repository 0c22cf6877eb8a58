"""SGD applied inside the backward pass: the kernel's update rule and the swapped layers.

Without a GPU the kernel runs in Triton's CPU interpreter in fp32, so the swapped layers must
follow torch's own SGD to rounding; on a GPU the same checks run compiled with bf16 operands.
"""

import contextlib
import importlib.util

import pytest
import torch
from torch import nn

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
ON_GPU = torch.cuda.is_available()

from genodl_core.kernels.sgd_update import join_fp32_, sgd_update_, split_fp32_  # noqa: E402
from genodl_core.training.backward_sgd import (  # noqa: E402
    UpdatingLinear, sgd_with_backward_updates)

DEVICE = "cuda" if ON_GPU else "cpu"
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
TOL = 2e-2 if ON_GPU else 1e-5


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).norm() / ref.double().norm())


PREFETCH = {"BR": 32, "BC": 64, "BK": 16, "PREFETCH": True}


CASES = [
    (1, 13, 37, 50, 0.5, 0.0, False, None),      # ragged tiles, momentum
    (2, 16, 70, 33, 0.0, 0.0, False, None),      # groups, plain SGD (no buffer)
    (3, 5, 20, 140, 0.9, 1e-2, True, None),      # weight decay, [in, out] layout of batched matmuls
    (2, 24, 72, 48, 0.5, 1e-2, False, PREFETCH),  # loads before the product; aligned sizes
    (1, 7, 40, 100, 0.0, 0.0, True, PREFETCH),
]


def _kernel_case(groups, k, r, c, momentum, wd, transposed):
    gen = torch.Generator().manual_seed(groups * 100 + k)
    p = torch.randn(groups, k, r, generator=gen)
    q = torch.randn(groups, k, c, generator=gen)
    w0 = torch.randn(groups, r, c, generator=gen)
    m0 = torch.randn(groups, r, c, generator=gen) if momentum else None
    lr = torch.tensor([0.1, 0.01, 0.3][:groups])
    if transposed:  # the weight is [in, out]: its gradient is q-side rows
        p, q = q, p
        w0 = w0.transpose(1, 2).contiguous()
        m0 = None if m0 is None else m0.transpose(1, 2).contiguous()
    return p, q, w0, m0, lr


@pytest.mark.parametrize("groups,k,r,c,momentum,wd,transposed,config", CASES)
def test_kernel_applies_torch_sgd_rule(groups, k, r, c, momentum, wd, transposed, config):
    p, q, w0, m0, lr = _kernel_case(groups, k, r, c, momentum, wd, transposed)
    grad = p.transpose(1, 2) @ q + wd * w0
    buf = grad if m0 is None else momentum * m0 + grad
    want = w0 - lr.view(-1, 1, 1) * buf

    w = w0.clone().to(DEVICE)
    mom = None if m0 is None else m0.clone().to(DEVICE)
    sgd_update_(p.to(DEVICE, DTYPE), q.to(DEVICE, DTYPE), w, None, mom, lr.to(DEVICE),
                momentum=momentum, weight_decay=wd, config=config)
    # The step is small against the weights: compare the change itself.
    assert rel(w.cpu() - w0, want - w0) < TOL
    if mom is not None:
        assert rel(mom.cpu(), buf) < TOL


@pytest.mark.parametrize("groups,k,r,c,momentum,wd,transposed,config", CASES)
def test_split_master_steps_exactly_as_the_fp32_master(groups, k, r, c, momentum, wd,
                                                       transposed, config):
    """The same update on bf16 + int16 halves gives the fp32 master's result bit for bit, and
    the upper half is that result rounded to nearest."""
    p, q, w0, m0, lr = _kernel_case(groups, k, r, c, momentum, wd, transposed)
    p, q, lr = p.to(DEVICE, DTYPE), q.to(DEVICE, DTYPE), lr.to(DEVICE)
    w = w0.clone().to(DEVICE)
    mom = None if m0 is None else m0.to(DEVICE)
    sgd_update_(p, q, w, None, None if mom is None else mom.clone(), lr, momentum=momentum,
                weight_decay=wd, config=config)
    high = torch.empty_like(w, dtype=torch.bfloat16)
    low = torch.empty_like(w, dtype=torch.int16)
    split_fp32_(w0.to(DEVICE), high, low)
    sgd_update_(p, q, high, low, None if mom is None else mom.clone(), lr, momentum=momentum,
                weight_decay=wd, config=config)
    joined = torch.empty_like(w)
    join_fp32_(high, low, joined)
    assert torch.equal(joined.view(torch.int32), w.view(torch.int32))
    # The kernel's halves are those of the torch split (rounding tested below).
    want_high, want_low = torch.empty_like(high), torch.empty_like(low)
    split_fp32_(w, want_high, want_low)
    assert torch.equal(high.view(torch.int16), want_high.view(torch.int16))
    assert torch.equal(low, want_low)


def test_split_halves_round_to_nearest_and_join_exactly():
    gen = torch.Generator().manual_seed(5)
    w = torch.cat([torch.randn(5000, generator=gen) * 10.0 ** torch.randint(-30, 30, (5000,),
                                                                              generator=gen),
                   torch.tensor([0.0, -0.0, 1.0, -2.5, 3.0e38, -3.0e38, 1e-45, -1e-40])])
    # Exact ties between two bf16 values: the upper half rounds away from zero (torch's cast
    # rounds to even), so the direction can be read back from the lower half.
    ties = torch.tensor([0x3F808000, 0x3F818000, -0x40800000 + 0x8000], dtype=torch.int32)
    w = torch.cat([w, ties.view(torch.float32)]).to(DEVICE)
    high = torch.empty_like(w, dtype=torch.bfloat16)
    low = torch.empty_like(w, dtype=torch.int16)
    split_fp32_(w, high, low)
    n = w.numel() - ties.numel()
    assert torch.equal(high[:n], w[:n].to(torch.bfloat16))
    assert bool((high[n:].float().abs() > w[n:].abs()).all())
    back = torch.empty_like(w)
    join_fp32_(high, low, back)
    assert torch.equal(back.view(torch.int32), w.view(torch.int32))
    with pytest.raises(ValueError, match="contiguous"):
        split_fp32_(w.view(-1, 1).expand(-1, 2).t(), high, low)


def test_kernel_rejects_inconsistent_shapes_and_dtypes():
    w = torch.zeros(1, 4, 5, device=DEVICE)
    lr = torch.ones(1, device=DEVICE)
    p, q = torch.zeros(1, 3, 4, device=DEVICE), torch.zeros(1, 3, 6, device=DEVICE)
    with pytest.raises(ValueError, match="do not fit"):
        sgd_update_(p, q, w, None, None, lr, momentum=0.0, weight_decay=0.0)
    q = torch.zeros(1, 3, 5, device=DEVICE)
    with pytest.raises(ValueError, match="momentum buffer"):
        sgd_update_(p, q, w, None, None, lr, momentum=0.5, weight_decay=0.0)
    with pytest.raises(ValueError, match="bf16 and int16 halves; got torch.float32 and "
                                         "torch.float32"):
        sgd_update_(p, q, w, torch.zeros_like(w), None, lr, momentum=0.0, weight_decay=0.0)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(),
                         nn.Linear(40, 7)).to(DEVICE)


def _train(net, optimizer, batches, lr_at=None):
    for step, (x, y) in enumerate(batches):
        if lr_at is not None and step == lr_at[0]:
            optimizer.param_groups[0]["lr"] = lr_at[1]
        with torch.autocast("cuda", torch.bfloat16, enabled=ON_GPU):
            loss = (net(x).float() - y).pow(2).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("momentum,wd,shadow", [(0.5, 0.0, DTYPE), (0.0, 1e-3, DTYPE),
                                                 (0.5, 1e-3, torch.bfloat16)])
def test_swapped_network_follows_torch_sgd(momentum, wd, shadow):
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(9, 12, generator=gen).to(DEVICE),
                torch.randn(9, 7, generator=gen).to(DEVICE)) for _ in range(5)]
    ref, fused = _mlp(0), _mlp(0)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=momentum, weight_decay=wd)
    opt = sgd_with_backward_updates(fused, lr=0.05, momentum=momentum, weight_decay=wd,
                                    shadow_dtype=shadow)
    assert sum(isinstance(m, UpdatingLinear) for m in fused.modules()) == 3
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    # A schedule changing the group's rate mid-way steers the swapped layers too.
    _train(ref, ref_opt, batches, lr_at=(3, 0.02))
    _train(fused, opt, batches, lr_at=(3, 0.02))
    start = _mlp(0).state_dict()
    # Read through the state dict: it writes a split master back into the parameters.
    got = fused.state_dict()
    tol = 5e-2 if ON_GPU or shadow == torch.bfloat16 else 1e-5
    for name, want in ref.state_dict().items():
        assert rel(got[name].cpu() - start[name].cpu(), want.cpu() - start[name].cpu()) < tol, name


@pytest.mark.parametrize("shadow", [DTYPE, torch.bfloat16])
def test_loaded_state_refreshes_the_shadow_and_eval_is_plain_linear(shadow):
    net = _mlp(1)
    sgd_with_backward_updates(net, lr=0.1, momentum=0.5, shadow_dtype=shadow)
    x = torch.randn(4, 12, device=DEVICE)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [(x, torch.zeros(4, 7, device=DEVICE))]
    no_rest = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    _train(net, no_rest, batches)
    layer = net[0]
    assert not torch.equal(net.state_dict()["0.weight"], saved["0.weight"])  # updated
    _train(net, no_rest, batches)  # the split moves ahead of the parameter again ...
    net.load_state_dict(saved)     # ... and loading a state wins over it
    assert torch.equal(net.state_dict()["0.weight"], saved["0.weight"])
    # 12-weight rows are stored padded to 16 with zeros.
    stored = layer.state.shadow_weight().cpu()
    assert torch.equal(stored[:, :12], saved["0.weight"].to(shadow).cpu())
    assert stored.shape == (40, 16) and not stored[:, 12:].any()
    net.eval()
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ saved["0.weight"].T + saved["0.bias"])


def test_evaluation_reads_the_split_master_after_training():
    """Eval mode, between training steps, computes with the weights the steps reached."""
    net = _mlp(4)
    sgd_with_backward_updates(net, lr=0.1, momentum=0.5, shadow_dtype=torch.bfloat16)
    layer = net[2]
    high, low = layer.state.shadow, layer.state.low
    x = torch.randn(6, 12, device=DEVICE)
    no_rest = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    for _ in range(2):
        net.train()
        _train(net, no_rest, [(x, torch.ones(6, 7, device=DEVICE))])
        reached = torch.empty_like(layer.weight)
        join_fp32_(high, low, reached)
        net.eval()
        h = torch.tanh(net[0](x))
        with torch.no_grad():
            assert torch.equal(layer(h), h @ reached.T + layer.bias)
        assert torch.equal(layer.weight, reached)


def test_small_layers_stay_with_torch():
    net = _mlp(2)
    opt = sgd_with_backward_updates(net, lr=0.1, min_weights=1000, shadow_dtype=DTYPE)
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "UpdatingLinear", "Tanh",
                                               "Linear"]
    assert sum(p.numel() for p in opt.param_groups[0]["params"]) == \
        sum(p.numel() for p in net.parameters()) - 40 * 40


@pytest.mark.parametrize("shadow", [DTYPE, torch.bfloat16])
def test_unaligned_rows_are_padded_and_follow_torch_sgd(shadow):
    """Layers whose rows are not a multiple of 8 wide (D-GEX's 943 landmarks) train on
    zero-padded storage and inputs: the same steps and input gradients as torch's SGD, the
    parameters keep their shapes, and the padding stays zero."""
    def odd(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(13, 21), nn.Tanh(), nn.Linear(21, 3)).to(DEVICE)

    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 13, generator=gen).to(DEVICE),
                torch.randn(6, 3, generator=gen).to(DEVICE)) for _ in range(4)]
    ref, fused = odd(1), odd(1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.5)
    opt = sgd_with_backward_updates(fused, lr=0.05, momentum=0.5, shadow_dtype=shadow)
    assert [m.state.pad for m in fused if isinstance(m, UpdatingLinear)] == [3, 3]
    _train(ref, ref_opt, batches)
    _train(fused, opt, batches)
    start = odd(1).state_dict()
    got = fused.state_dict()
    tol = 5e-2 if ON_GPU or shadow == torch.bfloat16 else 1e-5
    for name, want in ref.state_dict().items():
        assert got[name].shape == want.shape
        assert rel(got[name].cpu() - start[name].cpu(), want.cpu() - start[name].cpu()) < tol, name
    for layer in (fused[0], fused[2]):
        assert not layer.state.shadow[:, -3:].any()
        if layer.state.momentum_buf is not None:
            assert not layer.state.momentum_buf[:, -3:].float().any()


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 1e-2)])
def test_pack_dense_layers_updated_in_backward_follow_the_pack_optimizer(momentum, wd):
    """A pack whose dense layers update in backward equals one whose optimizer updates them,
    with per-trial learning rates changed between steps; evaluation reads the same weights."""
    import types

    from genodl_core.models.nt3 import NT3Params, build_nt3
    from genodl_core.models.nt3_fast import BatchedNT3
    from genodl_core.training.classifier import ClassifierStack
    from genodl_core.training.objectives import CrossEntropyObjective
    from genodl_core.training.optim import BatchedOptimizer

    params = NT3Params(conv=((3, 4, 1), (4, 3, 1)), pool=(1, 2), dense=(12,))
    k, n_features = 3, 64
    models, optimizers = [], []
    for in_backward in (False, True):
        nets = [build_nt3(params, n_features, 2, seed=s) for s in range(k)]
        model = BatchedNT3(nets).to(DEVICE)
        opt = BatchedOptimizer(model.trial_groups(), k, kind="sgd", lr=0.05, momentum=momentum,
                               weight_decay=wd)
        if in_backward:
            assert model.update_in_backward(opt.lr, momentum=momentum, weight_decay=wd,
                                            min_weights=100, shadow_dtype=DTYPE) == 1
        models.append(model)
        optimizers.append(opt)
    gen = torch.Generator().manual_seed(0)
    objectives = [CrossEntropyObjective() for _ in range(k)]
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if ON_GPU else (
        lambda: contextlib.nullcontext())
    rows = torch.arange(k, device=DEVICE).view(k, 1)
    for step in range(4):
        xb = torch.randn(k, 8, n_features, generator=gen).to(DEVICE)
        yb = torch.randint(0, 2, (k, 8), generator=gen).to(DEVICE)
        idx = torch.arange(8, device=DEVICE).expand(k, 8)
        for model, opt in zip(models, optimizers):
            if step == 2:
                opt.set_lrs([0.05, 0.01, 0.2])
            # The engine's pack step (ClassifierStack.step) on this batch: per-trial features
            # [K, n, F] and labels [K, n], indexed by each trial's batch order.
            pack = types.SimpleNamespace(module=model, forward=model, optimizer=opt,
                                         single=False, rows_at_once=True, x_train=xb,
                                         y_train=yb, rows=rows, objectives=objectives,
                                         amp=autocast, signals=None)
            sums = ClassifierStack.step(pack, list(range(k)), idx)
            assert sums.shape == (k, 3) and model.training
    ref, fused = models
    fused.write_masters()
    assert fused.dense_w[0].grad is None and fused.dense_w[1].grad is not None
    for name, want in ref.named_parameters():
        assert rel(dict(fused.named_parameters())[name].detach(), want.detach()) < TOL, name
    ref.eval(), fused.eval()
    with torch.no_grad(), autocast():
        assert rel(fused(xb).float(), ref(xb).float()) < TOL
