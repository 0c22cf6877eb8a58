"""Timing helpers shared by the GPU benchmark scripts of this folder."""

from __future__ import annotations

from typing import Callable

import torch


def median_seconds(fn: Callable[[], object], reps: int = 20, warmup: int = 3) -> float:
    """Median GPU time of ``fn()`` over ``reps`` calls (CUDA events, synchronised each call).

    ``warmup`` calls first absorb one-time costs (tuning, allocation, lazy initialisation).
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def print_top_kernels(fn: Callable[[], object], rows: int = 12) -> None:
    """Run ``fn()`` under the profiler and print the CUDA kernels that took longest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows,
                                    max_name_column_width=70))
