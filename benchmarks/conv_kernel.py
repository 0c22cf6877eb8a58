"""Check and time genodl's Triton convolution against cuDNN on NT3's shapes (needs a GPU).

    python benchmarks/conv_kernel.py [--groups 1,8] [--profile]

For each NT3 convolution (1 -> 64 channels, kernel 20; 64 -> 64, kernel 10; batch 16 of 60,483
features) and each group count: the relative error of the bf16 kernel's forward, input and
weight gradients against an fp64 reference on fresh random data, then the median time of
forward + backward for cuDNN (conv2d, 1 x k kernel, channels-last, bf16) and for the kernel,
scaled to one NT3 epoch (70 steps) per trial. ``--profile`` adds the top CUDA kernels of ten
training steps of the default fast path.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import median_seconds, print_top_kernels


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.detach().double() - ref.detach()).norm() / ref.detach().norm())


def check(c_in: int, c_out: int, k: int, groups: int, length: int = 4099, n: int = 3) -> str:
    from genodl_core.kernels.conv1d import conv1d_nlc

    x = torch.randn(n, length, groups * c_in, device="cuda").bfloat16().requires_grad_(c_in > 1)
    w = (torch.randn(groups * c_out, c_in, k, device="cuda") / (c_in * k) ** 0.5).requires_grad_()
    b = torch.randn(groups * c_out, device="cuda").requires_grad_()
    y = conv1d_nlc(x, w, b, groups)
    dy = torch.randn_like(y)
    inputs = [t for t in (x, w, b) if t.requires_grad]
    grads = torch.autograd.grad(y, inputs, dy)
    xd, wd, bd = x.double().detach(), w.double().bfloat16().double().detach(), b.double().detach()
    for t in (xd, wd, bd):
        t.requires_grad_()
    yr = F.conv1d(xd.transpose(1, 2), wd, bd, groups=groups).transpose(1, 2)
    refs = torch.autograd.grad(yr, [t for t, s in zip((xd, wd, bd), (x, w, b)) if s.requires_grad],
                               dy.double())
    parts = [f"y {rel(y, yr):.1e}"] + [f"d{name} {rel(g, r):.1e}" for name, g, r in zip(
        [nm for nm, s in zip("xwb", (x, w, b)) if s.requires_grad], grads, refs)]
    return ", ".join(parts)


def bench(c_in: int, c_out: int, k: int, groups: int, batch: int = 16,
          features: int = 60483) -> tuple[float, float]:
    from genodl_core.kernels.conv1d import conv1d_nlc
    from genodl_core.models.nt3_fast import conv_channels_last

    length = features if c_in == 1 else features - 19
    x = torch.randn(batch, groups * c_in, 1, length, device="cuda").bfloat16()
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(c_in > 1)
    w = (torch.randn(groups * c_out, c_in, k, device="cuda") / (c_in * k) ** 0.5).requires_grad_()
    b = torch.zeros(groups * c_out, device="cuda", requires_grad=True)
    dy = None
    out = {}
    def kernel_conv(x, w, b, groups):
        # Straight to the kernel: the fast path's routing (conv1d.preferred) is what is measured.
        n, gc, _, length = x.shape
        y = conv1d_nlc(x.permute(0, 2, 3, 1).reshape(n, length, gc), w, b, groups)
        return y.view(n, 1, y.shape[1], y.shape[2]).permute(0, 3, 1, 2)

    for name, conv in (("cudnn", conv_channels_last), ("triton", kernel_conv)):
        def step():
            nonlocal dy
            with torch.autocast("cuda", torch.bfloat16):
                y = conv(x, w, b, groups=groups)
            if dy is None or dy.shape != y.shape:
                dy = torch.randn_like(y)
            y.backward(dy)
        out[name] = median_seconds(step)
    return out["cudnn"], out["triton"]


def profile_fast_path(groups: int) -> None:
    import tempfile

    from genodl_core.bench import BenchConfig, trial_spec
    from genodl_core.training.trial import run_trials
    from genodl_core.training.trial import run_trial

    cfg = BenchConfig(model="nt3")
    specs = [trial_spec(cfg, seed=i, precision="auto", epochs=1, device="cuda")
             for i in range(groups)]
    with tempfile.TemporaryDirectory() as tmp:
        go = (lambda: run_trials(specs, tmp, raise_errors=True)) if groups > 1 else (
            lambda: run_trial(specs[0], tmp, raise_errors=True))
        go()  # compile and tune
        print_top_kernels(go, rows=18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="1,8")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    groups = [int(g) for g in args.groups.split(",")]
    print(f"device: {torch.cuda.get_device_name()}")
    for g in groups:
        for c_in, c_out, k in ((1, 64, 20), (64, 64, 10)):
            print(f"check conv {c_in}->{c_out} k={k} groups={g}: {check(c_in, c_out, k, g)}")
    print(f"{'conv':<14} {'groups':>6} {'cudnn s/ep/trial':>17} {'triton s/ep/trial':>18} "
          f"{'speed-up':>8}")
    for g in groups:
        for c_in, c_out, k in ((1, 64, 20), (64, 64, 10)):
            cudnn, tri = bench(c_in, c_out, k, g)
            print(f"{c_in}->{c_out} k={k:<4} {g:>6} {cudnn * 70 / g:>17.4f} {tri * 70 / g:>18.4f} "
                  f"{cudnn / tri:>7.2f}x")
    if args.profile:
        for g in groups:
            print(f"--- profile of one epoch, {g} trial(s)")
            profile_fast_path(g)


if __name__ == "__main__":
    main()
