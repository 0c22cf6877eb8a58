"""Where a pack of NT3 trials spends its epoch: training steps and validation (needs a GPU).

    python benchmarks/nt3_pack.py [--pack 8] [--profile]

Builds ``--pack`` paper-config NT3 networks (64 filters, 60,483 features, batch 16) as one
compiled batched module, as a sweep's worker does, and times with CUDA events:

- one training step (``pack_train_step``): the pack's optimizer updating every layer; the
  first dense layer's SGD applied inside the backward pass; and that with the ReLUs fused into
  the first convolution and into the max-pooling (the default); scaled to one epoch (70 steps)
  per trial;
- validation of 280 samples at a batch of 256 per trial and at 256 / pack per trial (what
  ``fit_pack`` uses), per trial-epoch.

``--profile`` adds the CUDA kernels that took longest in ten training steps.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds, print_top_kernels

N_FEATURES, BATCH, N_TRAIN, N_VAL = 60483, 16, 1120, 280


def main() -> None:
    from genodl_core.models.nt3 import NT3Params, build_nt3
    from genodl_core.training.batched import (PACK_UPDATE_MIN_WEIGHTS, BatchedOptimizer,
                                              _batched_model, _evaluate, pack_train_step)
    from genodl_core.training.loop import CrossEntropyObjective

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
    objectives = [CrossEntropyObjective()] * k
    amp = lambda: torch.autocast("cuda", torch.bfloat16)  # noqa: E731
    rows = torch.arange(k, device="cuda").view(k, 1)
    steps = N_TRAIN // BATCH
    per_trial_epoch = lambda seconds: seconds * steps / k  # noqa: E731
    optimizer = model = forward = None

    def step(start: int = 0) -> torch.Tensor:
        idx = (torch.arange(BATCH, device="cuda") + start).expand(k, -1)
        model.train()
        return pack_train_step(forward, optimizer, objectives, x[idx], y[rows, idx], amp)

    for label, in_backward, fused in (
            ("optimizer updates every layer", False, False),
            ("dense layer updated in backward", True, False),
            ("same + ReLUs fused into conv and pool", True, True)):
        model, forward, release = _batched_model(nets, "cuda", True, True, fused)
        optimizer = BatchedOptimizer(model.trial_groups(), k, kind="sgd", lr=0.002)
        model.updates.clear()
        if in_backward:
            model.update_in_backward(optimizer.lr, momentum=0.0, weight_decay=0.0,
                                     min_weights=PACK_UPDATE_MIN_WEIGHTS)
        seconds = median_seconds(step, reps=20, warmup=3)
        print(f"train step, {label}: {seconds * 1e3:.2f} ms = "
              f"{per_trial_epoch(seconds):.4f} s per trial-epoch")
        if args.profile:
            print_top_kernels(lambda: [step(i * BATCH) for i in range(10)], rows=16)
        release()
    for per_trial in (256, max(BATCH, 256 // k)):
        seconds = median_seconds(lambda: _evaluate(model, forward, objectives, x_val, y_val,
                                                   per_trial, amp), reps=5, warmup=2)
        print(f"validation of {N_VAL} samples at batch {per_trial} per trial: "
              f"{seconds:.4f} s = {seconds / k:.4f} s per trial-epoch")


if __name__ == "__main__":
    main()
