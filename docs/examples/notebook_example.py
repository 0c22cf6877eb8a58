"""The Python API end to end: plan, run, load and summarise the quick example.

Runs jobs/examples/quick.toml (12 small NT3 trials on synthetic data, ~15 s on two cores) into
a temporary folder, then prints the accuracy and abstention per model variant and noise level.
Each block is what one notebook cell would hold.

    python docs/examples/notebook_example.py            # from the repository root
    python docs/examples/notebook_example.py --keep runs/quick-api   # keep the run directory
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import genodl

SWEEP = Path(__file__).resolve().parents[2] / "jobs" / "examples" / "quick.toml"


def show_progress(settled: int, total: int, trial_id: str, state: str) -> None:
    """Print each trial as it settles (a notebook might update a progress bar instead)."""
    if state != "running":
        print(f"  [{settled}/{total}] {trial_id} {state}", flush=True)


def main(out: Path) -> int:
    # Cell 1: what will run.
    p = genodl.plan(SWEEP)
    print(f"{p.name}: {p.n_trials} trials")
    print(p.table.to_string(max_rows=6))

    # Cell 2: run it (a second call resumes: finished trials are skipped).
    report = genodl.run(SWEEP, out, progress=show_progress)
    print(f"ok={report.ok}: {report.count('done')} done, {report.count('failed')} failed")

    # Cell 3: the results as DataFrames.
    res = genodl.load(out)
    table = res.groups(["val_accuracy", "val_abstention"])
    columns = ["variant", "noise_level", "n_done", "val_accuracy.mean", "val_abstention.mean"]
    print(table[columns].to_string(index=False, float_format="{:.3f}".format))
    last = res.curves.query("metric == 'val_loss'").groupby("trial_id")["value"].last()
    print(f"final val_loss of {len(last)} trials: mean {last.mean():.3f}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="run into DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    if args.keep is not None:
        raise SystemExit(main(args.keep))
    with tempfile.TemporaryDirectory(prefix="genodl-api-") as tmp:
        raise SystemExit(main(Path(tmp) / "quick"))
