"""``genodl status DIR``: counts of a run directory's trials by state, and each failure.

It also warns when the done trials were trained under more than one execution plan
(:func:`genodl_core.results.plans.plan_groups`).
"""

from __future__ import annotations

import argparse
import json
import sys


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
    from genodl_core.results.plans import mixed_plans_warning, plan_groups, read_engine
    from workflows.driver import format_status, sweep_status
    from workflows.rundir import RunDir

    report = sweep_status(args.run_dir)
    run = RunDir(report.run_dir)
    plans = plan_groups((tid, read_engine(run.trial_dir(tid)))
                        for tid, s in report.states.items() if s.state == "done")
    warning = mixed_plans_warning(plans)
    if args.json:
        print(json.dumps({**report.to_dict(), "execution_plans": [g.to_dict() for g in plans]},
                         indent=1))
        if warning:
            print(warning, file=sys.stderr)
    else:
        print(format_status(report, show_all=args.all))
        if warning:
            print(warning)
    counts = report.counts()
    return 0 if counts["done"] == sum(counts.values()) else 1
