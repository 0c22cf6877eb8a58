"""Time a D-GEX training step with torch's SGD step against the update inside backward (GPU).

    python benchmarks/dense_update.py [--width 9000] [--layers 3] [--steps 30]

Builds the paper's D-GEX network (943 landmarks -> 9,520 targets, batch 200), then for each
variant: the relative difference of the weights after three steps from torch's SGD in fp32
arithmetic on the same batches, and the median time of a training step, scaled to one epoch of
88,807 samples. Variants: bf16 autocast with torch's fused SGD (what the fast path did before),
the update in backward with an fp32 momentum buffer, and with a bf16 one (fp32 master weights
split in bf16 and int16 halves). Beside the time: the bytes per weight each step moves at least
(the two matmuls' reads included) and the bandwidth that implies.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch
from timing import median_seconds, print_top_kernels

from genodl_core.models.dgex import DGEXNet
from genodl_core.training.backward_sgd import sgd_with_backward_updates

N_TRAIN, BATCH, LANDMARKS, TARGETS = 88_807, 200, 943, 9_520


def make_net(width: int, layers: int) -> DGEXNet:
    net = DGEXNet(LANDMARKS, TARGETS, layers, width, dropout=0.0)
    net.initialise(torch.Generator().manual_seed(0), 1e-2)
    return net.cuda()


def step(net, optimizer, x, y) -> None:
    with torch.autocast("cuda", torch.bfloat16):
        pred = net(x)
    loss = (pred.float() - y).pow(2).sum(dim=1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def variants(base: DGEXNet):
    torch_net = copy.deepcopy(base)
    yield "torch fused SGD (autocast casts)", torch_net, torch.optim.SGD(
        torch_net.parameters(), lr=5e-4, momentum=0.5, fused=True), 38
    for dtype, traffic in ((torch.float32, 20), (torch.bfloat16, 16)):
        net = copy.deepcopy(base)
        opt = sgd_with_backward_updates(net, lr=5e-4, momentum=0.5, momentum_dtype=dtype)
        yield f"update in backward, {str(dtype)[6:]} momentum", net, opt, traffic


def kernel_alone(width: int) -> None:
    """The update kernel by itself on one ``width x width`` layer: time and bandwidth, with the
    master weight split in bf16 and int16 halves (what training uses) and as one fp32 tensor."""
    from genodl_core.kernels.sgd_update import _sgd_update_kernel as sgd_update_kernel
    from genodl_core.kernels.sgd_update import sgd_update_, split_fp32_

    p = torch.randn(1, BATCH, width, device="cuda").bfloat16()
    q = torch.randn(1, BATCH, width, device="cuda").bfloat16()
    w = torch.randn(1, width, width, device="cuda")
    high = torch.empty_like(w, dtype=torch.bfloat16)
    low = torch.empty_like(w, dtype=torch.int16)
    split_fp32_(w, high, low)
    lr = torch.full((1,), 1e-4, device="cuda")
    for master, (weight, lower) in (("split", (high, low)), ("fp32", (w, None))):
        for dtype in (torch.float32, torch.bfloat16):
            traffic = 8 + 2 * dtype.itemsize
            mom = torch.zeros_like(w, dtype=dtype)
            run = lambda: sgd_update_(p, q, weight, lower, mom, lr,  # noqa: E731
                                      momentum=0.5, weight_decay=0.0)
            run()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                run()
            host_us = (time.perf_counter() - t0) / 20 * 1e6
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                run()
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / 20
            print(f"kernel alone, {width}x{width}, {master} master, {str(dtype)[6:]} momentum: "
                  f"{ms:.3f} ms, {traffic * width * width / (ms / 1e3) / 1e9:.0f} GB/s "
                  f"(host {host_us:.0f} us per call; {sgd_update_kernel.best_config})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=9000)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile", action="store_true",
                        help="list the top CUDA kernels of ten steps of each variant")
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randn(BATCH, LANDMARKS, device="cuda", generator=gen),
                torch.randn(BATCH, TARGETS, device="cuda", generator=gen)) for _ in range(4)]
    kernel_alone(args.width)
    base = make_net(args.width, args.layers)
    n_weights = sum(p.numel() for p in base.parameters())
    print(f"device: {torch.cuda.get_device_name()}; {n_weights / 1e6:.1f} M weights, batch {BATCH}")

    reference = copy.deepcopy(base)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=5e-4, momentum=0.5)
    for x, y in batches[:3]:  # fp32 arithmetic (no TF32): the reference trajectory
        loss = (reference(x) - y).pow(2).sum(dim=1).mean()
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
    change = [(r - b).detach() for r, b in zip(reference.parameters(), base.parameters())]

    print(f"{'variant':40s} {'vs fp32 step':>12s} {'ms/step':>8s} {'s/epoch':>8s} "
          f"{'B/weight':>8s} {'GB/s':>7s}")
    steps_per_epoch = -(-N_TRAIN // BATCH)
    for name, net, opt, traffic in variants(base):
        for x, y in batches[:3]:
            step(net, opt, x, y)
        # Through the state dict: it writes a split master weight back into the parameters.
        got = [(p - b).detach() for p, b in zip(net.state_dict().values(), base.parameters())]
        err = max(float((g - c).norm() / c.norm()) for g, c in zip(got, change))
        cycle = itertools.cycle(batches)
        ms = median_seconds(lambda: step(net, opt, *next(cycle)), reps=args.steps) * 1e3
        t0 = time.perf_counter()
        for _ in range(args.steps):  # host time to queue the steps (the GPU runs behind)
            step(net, opt, *next(cycle))
        host_ms = (time.perf_counter() - t0) / args.steps * 1e3
        torch.cuda.synchronize()
        print(f"  host time to queue one step: {host_ms:.2f} ms")
        if args.profile:
            print_top_kernels(lambda: [step(net, opt, *next(cycle)) for _ in range(10)])
        rate = traffic * n_weights / (ms / 1e3) / 1e9
        print(f"{name:40s} {err:12.1e} {ms:8.2f} {ms * steps_per_epoch / 1e3:8.3f} "
              f"{traffic:8d} {rate:7.0f}")


if __name__ == "__main__":
    main()
