"""``genodl status DIR``: counts of a run directory's trials by state, and each failure.

States are :func:`genodl_core.records.record_state`'s, the same the gather stores (a corrupt
record is listed with what is wrong with it). Records the current sweep does not list are
counted apart, as not part of it. It also warns when the done trials were trained under more
than one execution plan (:func:`genodl_core.results.plans.plan_groups`), when a data file
changed since done trials read it, and when done classifiers collapsed to one class.
"""

from __future__ import annotations

import argparse
import json
import sys

#: Exit status of a sweep not finished yet with no failure (trials running, interrupted or not
#: started): distinct from 1 (some trial failed or is corrupt), so a script can wait on it.
EXIT_UNFINISHED = 4


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
    """Exit status 0 when every trial is done, 1 when some trial failed or is corrupt,
    :data:`EXIT_UNFINISHED` when the others are running, interrupted or missing."""
    from genodl_core.results.collapse import collapse_warning, collapsed_in_records
    from genodl_core.results.plans import mixed_plans_warning, plan_groups, read_engine
    from workflows.driver import format_status, sweep_status
    from workflows.rundir import RunDir

    report = sweep_status(args.run_dir)
    run = RunDir(report.run_dir)
    plans = plan_groups((tid, read_engine(run.trial_dir(tid)))
                        for tid, s in report.states.items() if s.state == "done")
    outside = run.records_outside_sweep()
    done_dirs = [run.trial_dir(tid) for tid, s in report.states.items() if s.state == "done"]
    warnings = [w for w in (mixed_plans_warning(plans),
                            collapse_warning(collapsed_in_records(done_dirs))) if w]
    warnings += [f"warning: {c.describe()}; `genodl run` and `genodl rerun` refuse to resume "
                 f"until it is restored or --rerun-changed-data is given"
                 for c in run.changed_data(report.states)]
    if args.json:
        data = report.to_dict()
        for trial in data["trials"]:
            trial["reason"] = report.states[trial["trial_id"]].reason
        from workflows.adaptive import read_rounds

        data["adaptive"] = read_rounds(report.run_dir)
        print(json.dumps({**data, "outside_sweep": outside,
                          "execution_plans": [g.to_dict() for g in plans]}, indent=1))
        for warning in warnings:
            print(warning, file=sys.stderr)
    else:
        print(format_status(report, show_all=args.all))
        from workflows.adaptive import status_lines

        for line in status_lines(report.run_dir, report.states):
            print(line)
        for line in corrupt_lines(report):
            print(line)
        if outside:
            print(outside_line(outside))
        for warning in warnings:
            print(warning)
    return status_exit_code(report.counts())


def status_exit_code(counts: dict[str, int]) -> int:
    """0 all done; 1 a failure (failed or corrupt trials); EXIT_UNFINISHED trials still to
    finish (running, interrupted, missing) and none failed."""
    if counts.get("failed", 0) or counts.get("corrupt", 0):
        return 1
    return 0 if counts.get("done", 0) == sum(counts.values()) else EXIT_UNFINISHED


def corrupt_lines(report) -> list[str]:
    """One line per corrupt record saying what is wrong (`genodl rerun` reruns them)."""
    return [f"  {s.trial_id} corrupt     {s.reason} (rerun by `genodl rerun`)"
            for s in report.states.values() if s.state == "corrupt"]


def outside_line(trial_ids: list[str]) -> str:
    """Records in trials/ that the current sweep does not list."""
    shown = ", ".join(trial_ids[:5]) + (", ..." if len(trial_ids) > 5 else "")
    return (f"{len(trial_ids)} record(s) not part of the current sweep (not counted, left out "
            f"of the summary): {shown}")
