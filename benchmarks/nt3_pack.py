"""Where a pack of NT3 trials spends its epoch: training steps and validation (needs a GPU).

    python benchmarks/nt3_pack.py [--pack 8] [--profile]

Builds ``--pack`` paper-config NT3 networks (64 filters, 60,483 features, batch 16) as one
compiled :class:`~genodl_core.models.nt3_fast.BatchedNT3` with genodl's convolution kernel, as
the engine does for a pack at bf16, and times with CUDA events:

- one training step (the pack step of ``ClassifierStack.step``): the pack's optimizer updating
  every layer; the first dense layer's SGD applied inside the backward pass (the plan's
  ``fused_update``); and that with the ReLUs fused into the first convolution and into the
  max-pooling (``fused_activations``, the default); scaled to one epoch (70 steps) per trial;
- validation of 280 samples at a batch of 256 per trial and at 256 / pack per trial (what
  ``ClassifierStack`` uses in packs), per trial-epoch.

``--profile`` adds the CUDA kernels that took longest in ten training steps.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any, Callable, Sequence

import torch
from timing import median_seconds, print_top_kernels

N_FEATURES, BATCH, N_TRAIN, N_VAL = 60483, 16, 1120, 280


def pack_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: Any,
              objectives: Sequence[Any], xb: torch.Tensor, yb: torch.Tensor,
              amp: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """One step of every trial of a pack (``xb [K, B, F]``, ``yb [K, B]``), as the pack branch
    of ``ClassifierStack.step``: each trial's loss is its own batch mean, so the sum's gradient
    is each trial's. Returns the per-trial metric sums ``[K, 3]``, on the device."""
    optimizer.zero_grad()
    with amp():
        logits = forward(xb)
    losses = [obj.per_sample_loss(logits[t], yb[t]) for t, obj in enumerate(objectives)]
    means = [loss.mean() for loss in losses]
    torch.stack(means).sum().backward()
    optimizer.step()
    return torch.stack([obj.batch_sums(losses[t], means[t], logits[t], yb[t])
                        for t, obj in enumerate(objectives)])


@torch.no_grad()
def validate(module: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
             objectives: Sequence[Any], x: torch.Tensor, y: torch.Tensor, batch_size: int,
             amp: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """Per-trial metric sums ``[K, 3]`` of the shared split, as ``ClassifierStack.validate``."""
    module.eval()
    k = len(objectives)
    sums = torch.zeros(k, 3, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].unsqueeze(0).expand(k, -1, -1)
        yb = y[start:start + batch_size]
        with amp():
            logits = forward(xb).float()
        sums += torch.stack([obj.batch_sums(obj.per_sample_loss(logits[t], yb), None,
                                            logits[t], yb)
                             for t, obj in enumerate(objectives)])
    return sums


def main() -> None:
    from genodl_core.models.nt3 import NT3Params, build_nt3
    from genodl_core.models.nt3_fast import BatchedNT3
    from genodl_core.spec import TrainSpec
    from genodl_core.training.objectives import CrossEntropyObjective
    from genodl_core.training.optim import BatchedOptimizer, make_optimizer
    from genodl_core.training.plan import ExecutionPlan, Switches

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    k = args.pack
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name()}; pack of {k}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(N_TRAIN, N_FEATURES, device="cuda", generator=gen).bfloat16()
    y = torch.randint(0, 2, (k, N_TRAIN), device="cuda", generator=gen)
    x_val, y_val = x[:N_VAL], y[0, :N_VAL]
    nets = [build_nt3(NT3Params(), N_FEATURES, 2, seed=s, device="cuda") for s in range(k)]
    objectives = [CrossEntropyObjective() for _ in range(k)]
    amp = lambda: torch.autocast("cuda", torch.bfloat16)  # noqa: E731
    rows = torch.arange(k, device="cuda").view(k, 1)
    train = TrainSpec(epochs=1, batch_size=BATCH, optimizer="sgd", learning_rate=0.002,
                      momentum=0.0)
    steps = N_TRAIN // BATCH
    per_trial_epoch = lambda seconds: seconds * steps / k  # noqa: E731
    module: BatchedNT3 | None = None
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    optimizer: BatchedOptimizer | None = None

    def step(start: int = 0) -> torch.Tensor:
        idx = (torch.arange(BATCH, device="cuda") + start).expand(k, -1)
        module.train()
        return pack_step(forward, optimizer, objectives, x[idx], y[rows, idx], amp)

    for label, in_backward, fused in (
            ("optimizer updates every layer", False, False),
            ("dense layer updated in backward", True, False),
            ("same + ReLUs fused into conv and pool", True, True)):
        plan = ExecutionPlan(device="cuda", precision="bf16", pack_size=k, switches=Switches(
            compile=True, conv_kernel=True, fused_update=in_backward, fused_activations=fused))
        module = BatchedNT3(nets, conv_kernel=True, fuse_activations=fused).to("cuda")
        forward = torch.compile(module, dynamic=False)
        optimizer = make_optimizer(module, train, plan, k)
        assert bool(module.updates) == in_backward
        seconds = median_seconds(step, reps=20, warmup=3)
        print(f"train step, {label}: {seconds * 1e3:.2f} ms = "
              f"{per_trial_epoch(seconds):.4f} s per trial-epoch")
        if args.profile:
            print_top_kernels(lambda: [step(i * BATCH) for i in range(10)], rows=16)
    for per_trial in (256, max(BATCH, 256 // k)):
        seconds = median_seconds(lambda: validate(module, forward, objectives, x_val, y_val,
                                                  per_trial, amp), reps=5, warmup=2)
        print(f"validation of {N_VAL} samples at batch {per_trial} per trial: "
              f"{seconds:.4f} s = {seconds / k:.4f} s per trial-epoch")


if __name__ == "__main__":
    main()
