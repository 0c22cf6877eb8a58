"""``genodl trial SPEC --out DIR [--json]``: run one trial in this process."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trial", help="run one trial from a TOML/JSON trial spec",
                       description="Run one trial and write its record to DIR/<trial_id>/.")
    p.add_argument("spec", help="trial spec (.toml or .json)")
    p.add_argument("--out", default="runs/trials", help="parent directory of the trial record "
                   "(default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print the final metrics as one JSON object on the last line of stdout")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status: 0 done, 1 failed (see the record), 2 invalid spec."""
    from genodl_core.training.trial import run_trial

    result = run_trial(args.spec, args.out)
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
