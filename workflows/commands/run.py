"""``genodl run SPEC``: run (or resume) a sweep on a site, then gather the summary."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from site_configs import add_site_arguments

    p = sub.add_parser("run", help="run or resume a sweep on a site, then gather the summary",
                       description="Run every trial of a sweep that has no complete record in "
                                   "the run directory, then gather DIR/summary.h5. Running it "
                                   "again on the same directory resumes the sweep. With "
                                   "--site mpi (under mpiexec) MPI ranks run the trials.")
    p.add_argument("spec", help="sweep spec (.toml or .json)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run directory (default: runs/<sweep name>)")
    add_site_arguments(p, default_site=None)
    describe_site_default(p)
    add_run_arguments(p)
    p.add_argument("--update-sweep", action="store_true",
                   help="allow DIR to hold a different version of this sweep (e.g. more seeds); "
                        "records of shared trials are kept")
    add_rerun_changed_data(p)
    p.add_argument("--json", action="store_true",
                   help="print the final report (counts by state, summary, failures, exit "
                        "status) as one JSON object on stdout; logs stay on stderr")
    p.set_defaults(func=main)


def describe_site_default(p: argparse.ArgumentParser) -> None:
    """Say in --help where the site comes from when --site is not given, and name `mpi`."""
    for action in p._actions:
        if action.dest == "site":
            action.help = ("site configuration (see `genodl sites`), or `mpi` under mpiexec; "
                           "default: the sweep's [run] site, else local_threads")


def add_rerun_changed_data(p: argparse.ArgumentParser) -> None:
    """The option of `genodl run` and `genodl rerun` that reruns trials of changed data."""
    p.add_argument("--rerun-changed-data", action="store_true",
                   help="rerun the done trials whose data files changed since they read them "
                        "(default: refuse to resume, naming the file and both fingerprints)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `genodl run` and `genodl rerun`."""
    p.add_argument("--retries", type=int, default=None, metavar="N",
                   help="retries of infrastructure failures per trial (default: the sweep's "
                        "[run] retries, else 2)")
    p.add_argument("--threads-per-trial", type=int, default=None, metavar="N",
                   help="torch CPU threads per trial (default: cores / trial slots on local sites)")
    p.add_argument("--progress-interval", type=float, default=None, metavar="S",
                   help="longest silence between progress lines in seconds (default: 30)")
    p.add_argument("--pack-size", type=int, default=None, metavar="K",
                   help="train up to K trials that differ only in seed and noise as one batched "
                        "computation per worker (NT3, the gene-pair CNN, the histone CNN and "
                        "DeepChrome; default: the sweep's [run] pack_size, else 1 = off)")
    p.add_argument("--no-gather", action="store_true", help="skip writing summary.h5")
    p.add_argument("--view", default="auto", choices=["auto", "live", "plain"],
                   help="progress on the console: a live view (running trials with epoch, "
                        "metric and curve; needs `pip install genodl[progress]`) or the plain "
                        "lines of batch logs; auto: live when stdout is a terminal and no "
                        "--json (default: auto)")
    p.add_argument("--tracking", default=None, choices=["mlflow", "tensorboard", "none"],
                   help="log each trial as it settles to MLflow or TensorBoard, from the "
                        "driver (default: the sweep's [run] tracking, else none)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI or folder, or TensorBoard log folder (default: "
                        "the sweep's [run] tracking_uri, else DIR/mlruns or DIR/tensorboard)")
    p.add_argument("--grace-period", type=float, default=None, metavar="S",
                   help="after SIGINT/SIGTERM, seconds running trials get to finish or "
                        "checkpoint before the run exits 130/143, resumable (default: the "
                        "sweep's [run] grace_period_s, else 30)")


def settings_from_args(args: argparse.Namespace):
    """Build :class:`~workflows.driver.RunSettings` from parsed `run`/`rerun` arguments."""
    from genodl_core.errors import SpecError
    from site_configs import site_options_from_args
    from workflows.driver import RunSettings

    for name, least in (("retries", 0), ("threads_per_trial", 1), ("pack_size", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise SpecError(f"--{name.replace('_', '-')}", value, f">= {least}",
                            reason="out of range")
    interval = args.progress_interval
    if interval is not None and not (interval > 0 and interval != float("inf")):  # nan fails too
        raise SpecError("--progress-interval", interval, "a finite number of seconds > 0",
                        reason="out of range")
    return RunSettings(site=args.site, options=site_options_from_args(args),
                       retries=args.retries, threads_per_trial=args.threads_per_trial,
                       progress_interval_s=args.progress_interval, pack_size=args.pack_size,
                       gather=not args.no_gather,
                       update_sweep=getattr(args, "update_sweep", False),
                       rerun_changed_data=getattr(args, "rerun_changed_data", False),
                       grace_period_s=grace_period_from_args(args),
                       live_view=live_view_from_args(args),
                       tracking=getattr(args, "tracking", None),
                       tracking_uri=getattr(args, "tracking_uri", None))


def live_view_from_args(args: argparse.Namespace) -> bool:
    """Whether to draw the live progress view (see ``workflows.progress_view``)."""
    import sys

    from workflows.progress_view import wants_live_view

    return wants_live_view(getattr(args, "view", "plain"), is_terminal=sys.stdout.isatty(),
                           json_output=getattr(args, "json", False))


def grace_period_from_args(args: argparse.Namespace) -> float | None:
    """``--grace-period`` checked: finite seconds >= 0, or None for the sweep's default.

    Raises
    ------
    SpecError
        Naming the value and the allowed range.
    """
    import math

    from genodl_core.errors import SpecError

    value = getattr(args, "grace_period", None)
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise SpecError("--grace-period", value, "finite seconds >= 0", reason="out of range")
    return value


def exit_status(report) -> int:
    """The command's exit status; after a stop that left trials training, the exit itself.

    A trial thread that outlived the grace period cannot be killed, and Python would wait for
    it at exit: the process ends here with ``os._exit`` once the logs are flushed (the
    records are on disk, each written atomically; the trial reads as interrupted).
    """
    import logging
    import os
    import sys

    code = report.exit_code
    if report.stopped_by is not None and report.abandoned:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(args: argparse.Namespace) -> int:
    """Exit status 0 when every trial is done, 1 when some failed; invalid specs exit 2;
    130 / 143 when SIGINT / SIGTERM stopped the run."""
    from workflows.driver import MPI_SITE, run_sweep
    from workflows.sweep import load_sweep

    sweep = load_sweep(args.spec)
    settings = settings_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / sweep.name
    if (settings.site or sweep.run.site) == MPI_SITE:
        from workflows.mpi import run_sweep_mpi

        if sweep.adaptive is not None:
            from workflows.adaptive import run_adaptive_mpi

            done = run_adaptive_mpi(sweep, out, settings)
            report = None if done is None else done.report
        else:
            report = run_sweep_mpi(sweep, out, settings)
        if report is not None and getattr(args, "json", False):
            print_report_json(report)
        return 0 if report is None else exit_status(report)
    if sweep.adaptive is not None:
        from workflows.adaptive import run_adaptive

        report = run_adaptive(sweep, out, settings).report
    elif sweep.cleaning:
        from workflows.cleaning import run_with_cleaning

        report = run_with_cleaning(sweep, out, sweep.cleaning, settings)
    else:
        report = run_sweep(sweep, out, settings)
    if getattr(args, "json", False):
        print_report_json(report)
    return exit_status(report)


def report_json(report) -> dict:
    """The final report of a run as a JSON-ready dict (what `run --json` prints)."""
    counts: dict[str, int] = {}
    for state in report.states.values():
        counts[state.state] = counts.get(state.state, 0) + 1
    return {"run_dir": str(report.run_dir), "total": report.total,
            "submitted": report.submitted, "already_done": report.already_done,
            "counts": counts, "summary": str(report.summary) if report.summary else None,
            "wall_s": round(report.wall_s, 3), "stopped_by": report.stopped_by,
            "exit_code": report.exit_code,
            "not_done": [{"trial_id": s.trial_id, "state": s.state, "error_type": s.error_type,
                        "error": s.error} for s in report.states.values()
                       if s.state not in ("done",)]}


def print_report_json(report) -> None:
    """Print :func:`report_json` as one line, flushed before a possible hard exit."""
    import json
    import sys

    print(json.dumps(report_json(report)))
    sys.stdout.flush()
