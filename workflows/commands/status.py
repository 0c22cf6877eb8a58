"""``genodl status DIR``: counts of a run directory's trials by state, and each failure."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show a run directory's trials by state and its failures",
                       description="Count the trials of a run directory by state (done, failed, "
                                   "running, interrupted, missing, corrupt) and list each "
                                   "failure with its error line.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by `genodl run`")
    p.add_argument("--all", action="store_true", help="list every trial, not only failures")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status 0 when every trial is done, 1 otherwise."""
    from workflows.driver import format_status, sweep_status

    report = sweep_status(args.run_dir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(format_status(report, show_all=args.all))
    counts = report.counts()
    return 0 if counts["done"] == sum(counts.values()) else 1
