"""``genodl export DIR``: a run's summary as flat tables (CSV, or Parquet with pyarrow)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from genodl_core.results.export import FORMATS

    p = sub.add_parser("export", help="write the summary's tables as CSV or Parquet files",
                       description="Write trials, finals, curves (long form: trial_id, epoch, "
                                   "metric, value) and groups of DIR/summary.h5 as flat tables, "
                                   "for tools that do not read HDF5. Gathers first when DIR has "
                                   "no summary yet.")
    p.add_argument("run_dir", metavar="DIR", help="run directory (or its summary.h5)")
    p.add_argument("--format", default="csv", choices=sorted(FORMATS),
                   help="file format (parquet needs `pip install pyarrow`; default: csv)")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="folder for the tables (default: DIR/export)")
    p.add_argument("--regather", action="store_true", help="gather before exporting")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status 0; 2 for Parquet without pyarrow or a path with no summary."""
    from genodl_core.results.export import check_format, export
    from workflows.commands.gather import _summary_of

    check_format(args.format)  # before a gather: say at once what is missing
    for path in export(_summary_of(args.run_dir, args.regather), args.format, args.out):
        print(path)
    print(f"wrote {args.format} tables", file=sys.stderr)
    return 0
