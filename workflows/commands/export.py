"""``genodl export DIR``: a run's summary as flat tables (CSV, or Parquet with pyarrow), or its
trial records logged to MLflow or TensorBoard."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from genodl_core.results.export import FORMATS, TRACKING_FORMATS

    p = sub.add_parser("export", help="write the summary's tables as CSV or Parquet files",
                       description="Write trials, finals, curves (long form: trial_id, epoch, "
                                   "metric, value) and groups of DIR/summary.h5 as flat tables, "
                                   "for tools that do not read HDF5. Gathers first when DIR has "
                                   "no summary yet. --format mlflow or tensorboard logs each "
                                   "finished trial (parameters, curves by epoch, finals, noise "
                                   "record, tags) to an MLflow store or TensorBoard event files "
                                   "instead; trials logged before from the same record are "
                                   "skipped.")
    p.add_argument("run_dir", metavar="DIR", help="run directory (or its summary.h5)")
    p.add_argument("--format", default="csv", choices=sorted(FORMATS) + list(TRACKING_FORMATS),
                   help="file format (parquet needs `pip install pyarrow`), or a tracker "
                        "(`pip install genodl[mlflow]` / `genodl[tensorboard]`); default: csv")
    p.add_argument("--out", "--to", default=None, metavar="FOLDER",
                   help="folder for the tables (default: DIR/export); for mlflow a tracking URI "
                        "or folder (default: DIR/mlruns), for tensorboard a log folder "
                        "(default: DIR/tensorboard)")
    p.add_argument("--regather", action="store_true", help="gather before exporting")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status 0; 2 for Parquet without pyarrow or a path with no summary."""
    from genodl_core.results.export import TRACKING_FORMATS, check_format, export
    from workflows.commands.gather import _summary_of

    check_format(args.format)  # before a gather: say at once what is missing
    if args.format in TRACKING_FORMATS:
        return export_to_tracker(args)
    for path in export(_summary_of(args.run_dir, args.regather), args.format, args.out):
        print(path)
    print(f"wrote {args.format} tables", file=sys.stderr)
    return 0


def export_to_tracker(args: argparse.Namespace) -> int:
    """Log the run's settled trials to MLflow or TensorBoard, from the records (no gather)."""
    from pathlib import Path

    from genodl_core.results.tracking import export_tracking

    run_dir = Path(args.run_dir)
    if run_dir.is_file():  # DIR/summary.h5 names its run directory
        run_dir = run_dir.parent
    counts = export_tracking(run_dir, args.format, args.out)
    print(counts.target)
    print(f"logged {counts.logged} trials to {args.format}, {counts.skipped} already logged",
          file=sys.stderr)
    return 0
