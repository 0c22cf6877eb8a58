"""``genodl trial SPEC --out DIR [--json]``: run one trial in this process.

It holds the trial's attempt lock (``DIR/.locks/<trial_id>.lock``, the lock a sweep's workers
take when DIR is a run directory's ``trials/``) while it runs. A second run of the same trial
into the same DIR does not wait for the first: it refuses at once, naming the pid and host
that hold the lock (exit status 3), since waiting would only train the trial a second time.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trial", help="run one trial from a TOML/JSON trial spec",
                       description="Run one trial and write its record to DIR/<trial_id>/. "
                                   "Refuses (exit status 3) while another process runs the "
                                   "same trial into DIR.")
    p.add_argument("spec", help="trial spec (.toml or .json)")
    p.add_argument("--out", default="runs/trials", help="parent directory of the trial record "
                   "(default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print the final metrics as one JSON object on the last line of stdout")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status: 0 done, 1 failed (see the record), 2 invalid spec, 3 the trial is being run
    by another process."""
    from pathlib import Path

    from genodl_core.training.trial import resolve_spec, run_trial
    from workflows.rundir import TrialBusy, trial_attempt_lock

    spec = resolve_spec(args.spec)
    try:
        with trial_attempt_lock(Path(args.out), spec.trial_id, wait=False):
            result = run_trial(spec, args.out)
    except TrialBusy as err:
        print(f"genodl trial: {err}", file=sys.stderr)
        return 3
    if result.ok:
        print(f"trial {result.trial_id} done in {result.wall_s:.1f} s: {result.path}",
              file=sys.stderr)
    else:
        print(f"trial {result.trial_id} failed: {result.error_type}: {result.error} "
              f"(record: {result.path})", file=sys.stderr)
    if args.json:
        summary = {"trial_id": result.trial_id, "state": result.state, **result.final}
        if not result.ok:
            summary.update(error_type=result.error_type, error=result.error)
        print(json.dumps(summary))
    return 0 if result.ok else 1
