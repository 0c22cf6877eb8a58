"""``genodl plan SPEC``: expand and validate a sweep, print its trials, run nothing."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="expand a sweep spec and show its trials (runs nothing)",
                       description="Expand and validate a sweep; print the trial count and a "
                                   "table of trial ids and axis values.")
    p.add_argument("spec", help="sweep spec (.toml or .json)")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="rows of the table to print (default: %(default)s; 0 for all)")
    p.add_argument("--json", action="store_true", help="print the resolved sweep as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status 0 when the sweep is valid; invalid specs exit 2 through the CLI."""
    from workflows.sweep import load_sweep, plan_table

    sweep = load_sweep(args.spec)
    if args.json:
        print(json.dumps(sweep.to_dict(), indent=1))
        return 0
    axes = ", ".join(f"{a.path} ({len(a.values)})" for a in sweep.axes) or "none"
    print(f"sweep {sweep.name}: {len(sweep.trials)} trials; axes: {axes}")
    for group in sweep.zipped:
        print(f"zipped: {' + '.join(group)}")
    print(f"run: site {sweep.run.site}, retries {sweep.run.retries}"
          + (f", options {sweep.run.options}" if sweep.run.options else ""))
    print(plan_table(sweep, limit=args.limit or None))
    return 0
