"""``genodl submit SPEC --site summit|slurm|...``: write a batch script for the sweep and submit it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from site_configs import add_site_arguments
    from workflows.commands.run import add_run_arguments

    p = sub.add_parser(
        "submit", help="write a batch script (sbatch/bsub) that runs the sweep, and submit it",
        description="Validate the sweep, write DIR/submit.sbatch (Slurm sites) or DIR/submit.lsf "
                    "(LSF sites) asking for the nodes and walltime, and submit it. Inside the job "
                    "`genodl run` drives the sweep with the site's mode=inside. Submitting again "
                    "after a walltime stop resumes: finished trials are skipped.")
    p.add_argument("spec", help="sweep file (.toml or .json)")
    add_site_arguments(p, default_site=None)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run directory (default: runs/<sweep name>); it is written into the "
                        "script's directives, so letters, digits and . _ / + , : @ = ~ - only")
    p.add_argument("--env", metavar="LINE", default=None,
                   help="shell line that makes `genodl` available in the job, e.g. 'module load "
                        "python; source venv/bin/activate' (default: activate this Python's "
                        "virtual environment)")
    p.add_argument("--job-name", default=None,
                   help="scheduler job name: letters, digits, '.', '_', '-' "
                        "(default: genodl-<sweep>)")
    p.add_argument("--dry-run", action="store_true",
                   help="write the script and print it, but do not submit")
    add_run_arguments(p)
    p.add_argument("--update-sweep", action="store_true",
                   help="allow DIR to hold a different version of this sweep (e.g. more seeds); "
                        "records of shared trials are kept")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from genodl_core.errors import SpecError
    from site_configs import site_options_from_args
    from workflows.commands.run import settings_from_args
    from workflows.commands.plan import data_sources_ok
    from workflows.rundir import RunDir
    from workflows.submit import (BatchRequest, check_gpu_request, check_request,
                                  default_env_line, scheduler_of, submit_script,
                                  write_batch_script)
    from workflows.sweep import load_sweep

    if not args.site:
        raise SpecError("--site", None, "a site with a batch system, e.g. slurm or summit",
                        reason="required")
    scheduler = scheduler_of(args.site)
    sweep = load_sweep(args.spec)  # an invalid sweep fails here, before anything is queued
    settings_from_args(args)  # out-of-range --retries, --pack-size, ... fail here too
    out_dir = Path(args.out) if args.out else Path("runs") / sweep.name
    # The job may start in another directory than this one: give it absolute paths.
    request = BatchRequest(
        spec=os.path.abspath(args.spec), out_dir=os.path.abspath(out_dir), site=args.site,
        options=_options(sweep, args.site, site_options_from_args(args)),
        env=default_env_line() if args.env is None else args.env,
        job_name=args.job_name or f"genodl-{sweep.name}", run_args=_run_args(args))
    check_request(request)  # a value that would change the script fails before any file exists
    # GPU trials must not silently get CPU workers (a site without a preset GPU count).
    devices = [t.spec.get("device", "auto") for t in sweep.trials]
    check_gpu_request(args.site, request.options, devices)
    if not data_sources_ok(sweep):  # missing files, widths, labels: before the queue
        return 2
    # A directory holding another sweep would refuse the job's driver: say so before queueing.
    RunDir(out_dir).check_sweep(sweep, update=args.update_sweep)
    path = write_batch_script(request)
    print(f"{len(sweep.trials)} trials; batch script: {path}", file=sys.stderr)
    if args.dry_run:
        print(path.read_text(), end="")
        return 0
    job_id = submit_script(path, scheduler)
    print(job_id)
    return 0


def _options(sweep, site: str, given: dict[str, str]) -> dict:
    """The sweep's ``[run] options`` when it names this site, overridden by the command line.

    Options written for another site (``max_threads`` of local_threads) would not validate
    here, so they are left out.
    """
    options = dict(sweep.run.options) if sweep.run.site == site else {}
    options.update(given)
    return options


def _run_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The `genodl run` options given here, repeated for the driver inside the job."""
    out: list[str] = []
    for name in ("retries", "threads_per_trial", "pack_size", "progress_interval"):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    if args.no_gather:
        out.append("--no-gather")
    if args.update_sweep:
        out.append("--update-sweep")
    return tuple(out)
