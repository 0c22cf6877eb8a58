"""``genodl rerun DIR``: run the failed, interrupted, missing and corrupt trials of a run
directory again (a corrupt record is one whose files do not match the checksums its status
recorded, see :func:`genodl_core.records.record_state`); with ``--rerun-changed-data`` also the
done trials whose data files changed since they read them."""

from __future__ import annotations

import argparse

from workflows.commands.run import (add_rerun_changed_data, add_run_arguments,
                                   describe_site_default, settings_from_args)


def register(sub: argparse._SubParsersAction) -> None:
    from site_configs import add_site_arguments

    p = sub.add_parser("rerun", help="rerun the failed and missing trials of a run directory",
                       description="Run again the trials of DIR that are failed, interrupted "
                                   "(left running by a dead driver), missing or corrupt, using "
                                   "the sweep stored in DIR/sweep.json; then gather.")
    p.add_argument("run_dir", metavar="DIR", help="run directory written by `genodl run`")
    add_site_arguments(p, default_site=None)
    describe_site_default(p)
    add_run_arguments(p)
    add_rerun_changed_data(p)
    p.add_argument("--only", action="append", default=None, metavar="STATE",
                   help="rerun only trials in this state (repeatable; failed, interrupted, "
                        "missing, corrupt; default: all four)")
    p.add_argument("--trial", action="append", default=None, metavar="ID",
                   help="rerun exactly this trial (repeatable; complete trials are skipped)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status 0 when every trial is done afterwards, 1 otherwise; 130 / 143 when
    SIGINT / SIGTERM stopped it."""
    from workflows.commands.run import exit_status
    from workflows.driver import MPI_SITE, RERUN_STATES, rerun
    from workflows.rundir import RunDir

    settings = settings_from_args(args)
    states = tuple(s for item in (args.only or RERUN_STATES) for s in item.split(",") if s)
    if settings.site == MPI_SITE or (settings.site is None and
                                     RunDir.open(args.run_dir).load_sweep().run.site == MPI_SITE):
        from workflows.mpi import rerun_mpi

        report = rerun_mpi(args.run_dir, settings, states=states, trial_ids=args.trial)
        return 0 if report is None else exit_status(report)
    report = rerun(args.run_dir, settings, states=states, trial_ids=args.trial)
    return exit_status(report)
