"""``genodl bench``: the plain PyTorch port against the default fast path, side by side."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time the plain port against the fast path (s/epoch, TFLOP/s, overhead)",
        description="Train synthetic trials of one model in several modes, in this process, and "
                    "print seconds per epoch, trials per GPU-hour, achieved TFLOP/s and its "
                    "share of a dense matmul measured in the same run, and per-trial overhead.")
    p.add_argument("--model", choices=["nt3", "dgex", "histone", "deepsea", "danq",
                                       "deepsea_transformer", "cnnc"], default="nt3")
    p.add_argument("--quick", action="store_true",
                   help="small shapes: seconds on a CPU (a smoke test, not a measurement)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per benchmark trial (default: 3 quick, 6 NT3, 4 D-GEX and histone)")
    p.add_argument("--modes", default=None,
                   help="comma-separated modes: plain, plain-tf32, plain-bf16, fast, fast-bf16, "
                        "batched (default: plain,fast; with --device cpu also fast-bf16 where "
                        "the CPU has native bf16)")
    p.add_argument("--pack", type=int, default=4,
                   help="trials per batched computation in the 'batched' mode (default: 4)")
    p.add_argument("--out", default=None,
                   help="keep the benchmark trials' records here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    p.add_argument("--detection", action="store_true",
                   help="instead: epoch time of a label-flip NT3 trial with the noisy-label "
                        "detection signals on against off, alone and as a pack of --pack "
                        "(docs/detection.md)")
    p.add_argument("--repeats", type=int, default=3,
                   help="with --detection: runs of each setting (default: 3)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status 0; errors (bad mode, failed trial) propagate as GenodlError (status 2)."""
    if getattr(args, "detection", False):
        from genodl_core.detection.overhead import collect_cost_us, format_rows, measure

        rows = measure(quick=args.quick, device=args.device, epochs=args.epochs or 4,
                       repeats=args.repeats, pack=args.pack, out_dir=args.out)
        print(format_rows(rows))
        per_step, per_epoch = collect_cost_us(args.device, k=1)
        per_step_k, _ = collect_cost_us(args.device, k=args.pack)
        print(f"signal collection alone: {per_step:.1f} us per step ({per_step_k:.1f} us for a "
              f"pack of {args.pack}), {per_epoch:.1f} us per epoch")
        if args.json:
            print(json.dumps({"epochs": [r.to_dict() for r in rows],
                              "collect_us": per_step, "collect_pack_us": per_step_k,
                              "end_epoch_us": per_epoch}))
        return 0
    from genodl_core.bench import BenchConfig, default_modes, format_report, run_benchmark

    modes = (default_modes(args.device) if args.modes is None
             else tuple(m.strip() for m in args.modes.split(",") if m.strip()))
    cfg = BenchConfig(model=args.model, quick=args.quick, device=args.device, epochs=args.epochs,
                      modes=modes, pack=args.pack)
    report = run_benchmark(cfg, args.out)
    print(format_report(report))
    if args.json:
        print(json.dumps(report.to_dict()))
    return 0
