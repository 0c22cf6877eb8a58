"""Result commands: ``genodl gather``, ``genodl plot``, ``genodl report``, ``genodl bench-gather``.

``gather`` builds ``DIR/summary.h5`` from the trial records; ``plot`` and ``report`` read it
(gathering first when there is none yet); ``bench-gather`` times the gather of a synthetic
sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gather", help="collect the trial records of a run into DIR/summary.h5",
                       description="Build or update DIR/summary.h5 from the trial records in "
                                   "DIR/trials/ (or DIR/) of the sweep in DIR/sweep.json. Only "
                                   "new or changed records are read again; the file is "
                                   "replaced atomically. Corrupt records are left out with one "
                                   "warning line each; records the sweep does not list are left "
                                   "out and counted.")
    p.add_argument("run_dir", metavar="DIR", help="run directory")
    p.add_argument("--full", action="store_true",
                   help="re-read every record instead of reusing unchanged ones")
    p.add_argument("--out", default=None, help="summary file (default: DIR/summary.h5)")
    p.add_argument("--allow-mixed-data", action="store_true",
                   help="gather even when done trials read different versions of a data file "
                        "(default: refuse, naming the file and its versions)")
    p.add_argument("--json", action="store_true",
                   help="print the summary's path, counts by state and warnings as one JSON "
                        "object on stdout")
    p.set_defaults(func=gather_main)

    p = sub.add_parser("plot", help="write the sweep's figures (PNG) from its summary",
                       description="Accuracy and abstention vs noise level (base vs abstaining), "
                                   "loss curves by level, D-GEX MAE vs level with LR and the "
                                   "gene-wise D-GEX vs LR scatter.")
    p.add_argument("run_dir", metavar="DIR", help="run directory (or its summary.h5)")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: DIR/plots)")
    p.add_argument("--regather", action="store_true", help="gather before plotting")
    p.set_defaults(func=plot_main)

    p = sub.add_parser("report", help="print the per-group statistics table",
                       description="Mean ± std (n) over seeds of the final metrics per model, "
                                   "variant, noise kind and level.")
    p.add_argument("run_dir", metavar="DIR", help="run directory (or its summary.h5)")
    p.add_argument("--csv", metavar="FILE", default=None,
                   help="also write every statistic (mean, std, min, max, count) to FILE")
    p.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                   help="final metrics to show (default: the headline ones present)")
    p.add_argument("--regather", action="store_true", help="gather before reporting")
    p.add_argument("--json", action="store_true",
                   help="print the group table (every statistic of the chosen metrics) as one "
                        "JSON object on stdout instead of the text tables")
    p.set_defaults(func=report_main)

    from genodl_core.results import bench_gather

    p = sub.add_parser("bench-gather", help="time the gather of a synthetic sweep",
                       description="Write synthetic trial records and time gathering them, "
                                   "from scratch and incrementally.")
    bench_gather.add_arguments(p)
    p.set_defaults(func=bench_main)


def _summary_of(target: str, regather: bool) -> Path:
    """The summary to read; gathers when asked to, or when a run directory has none yet."""
    from genodl_core.results.summary import SUMMARY_FILE, gather

    path = Path(target)
    if path.is_dir() and (regather or not (path / SUMMARY_FILE).is_file()):
        return gather(path)
    return path


def gather_main(args: argparse.Namespace) -> int:
    """Exit status 0 (corrupt records and mixed execution plans are reported on stderr); 2 when
    done trials read different versions of a data file, unless --allow-mixed-data."""
    from genodl_core.results import load
    from genodl_core.results.plans import mixed_plans_warning
    from genodl_core.results.summary import gather

    # A folder with no sweep and no trial record is no run directory (a typo, a parent
    # folder): say so and fail, rather than write an empty summary into it.
    run_dir = Path(args.run_dir)
    if run_dir.is_dir() and not ((run_dir / "sweep.json").is_file()
                                 or (run_dir / "trials").is_dir()
                                 or any((d / "status.json").is_file() or (d / "spec.json").is_file()
                                        for d in run_dir.iterdir() if d.is_dir())):
        from genodl_core.errors import DataError

        raise DataError(f"{run_dir}: not a run directory (no sweep.json, no trials/ folder and "
                        f"no trial records): nothing to gather")
    path = gather(args.run_dir, output=args.out, incremental=not args.full,
                  allow_mixed_data=args.allow_mixed_data)
    attrs = load.attributes(path)
    outside = attrs.get("n_outside_sweep", 0)
    warning = mixed_plans_warning(load.execution_plans(path))
    if getattr(args, "json", False):
        print(json.dumps(gather_json(path, attrs, [warning] if warning else [])))
        if warning:
            print(warning, file=sys.stderr)
        return 0
    print(f"{path}: {attrs['n_trials']} trials ({attrs['n_done']} done, {attrs['n_failed']} "
          f"failed, {attrs['n_running']} running, {attrs['n_pending']} pending, "
          f"{attrs['n_corrupt']} corrupt)"
          + (f"; {outside} record(s) not part of the sweep left out" if outside else ""))
    if warning:
        print(warning, file=sys.stderr)
    return 0


def gather_json(path: Path, attrs: dict, warnings: list[str]) -> dict:
    """What `gather --json` prints: the summary, counts by state, what was left out, warnings
    (the gather's problems, one line each, and a mixed-plans warning)."""
    from genodl_core.results import load
    from genodl_core.results.summary import STATES

    return {"summary": str(path), "n_trials": attrs["n_trials"],
            "counts": {state: attrs.get(f"n_{state}", 0) for state in STATES},
            "n_outside_sweep": attrs.get("n_outside_sweep", 0),
            "outside_sweep": load.outside_sweep(path),
            "warnings": load.problems(path) + warnings}


def plot_main(args: argparse.Namespace) -> int:
    from genodl_core.results.plots import make_plots

    written = make_plots(_summary_of(args.run_dir, args.regather), args.out)
    for path in written:
        print(path)
    if not written:
        print("no finished trials to plot", file=sys.stderr)
    return 0


def report_main(args: argparse.Namespace) -> int:
    from genodl_core.errors import SpecError
    from genodl_core.results import load
    from genodl_core.results.report import report

    path = _summary_of(args.run_dir, args.regather)
    if args.metrics:
        available = load.final_metrics(path)
        for metric in args.metrics:
            if metric not in available:
                raise SpecError("--metrics", metric, available, reason="no such final metric")
    if getattr(args, "json", False):
        print(json.dumps(report_json(path, args.metrics)))
        return 0
    print(report(path, args.metrics, csv=args.csv))
    if args.csv:
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def report_json(path: Path, metrics: list[str] | None) -> dict:
    """What `report --json` prints: the summary and one object per group (keys, counts by
    state, ``<metric>.<stat>`` for every statistic; NaN as null)."""
    from genodl_core.results import load

    table = load.groups(path, metrics)
    return {"summary": str(path), "groups": json.loads(table.to_json(orient="records"))}


def bench_main(args: argparse.Namespace) -> int:
    from genodl_core.results import bench_gather

    figures = bench_gather.run_benchmark(args.trials, args.epochs, directory=args.dir,
                                         task=args.task)
    print(bench_gather.report(figures))
    return 0
