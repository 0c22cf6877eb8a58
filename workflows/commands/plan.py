"""``genodl plan SPEC``: expand and validate a sweep, print its trials, run nothing."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="expand a sweep spec and show its trials (runs nothing)",
                       description="Expand and validate a sweep (its trials, and its [run] site "
                                   "and options) and check its data sources (missing files, "
                                   "widths, labels, gene ids; headers only); print the trial "
                                   "count and a table of trial ids and axis values.")
    p.add_argument("spec", help="sweep spec (.toml or .json)")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="rows of the table to print (default: %(default)s; 0 for all; "
                        "negative values are an error)")
    p.add_argument("--json", action="store_true", help="print the resolved sweep as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Exit status 0 when the sweep is valid; invalid specs and data problems exit 2."""
    from genodl_core.errors import SpecError
    from workflows.sweep import load_sweep, plan_table

    if args.limit < 0:
        raise SpecError("--limit", args.limit, "an integer >= 0 (0: every row)",
                        reason="out of range")
    sweep = load_sweep(args.spec)
    missing = check_run_table(sweep)
    if not data_sources_ok(sweep):
        return 2
    if args.json:
        print(json.dumps(sweep.to_dict(), indent=1))
        return 0
    axes = ", ".join(f"{a.path} ({len(a.values)})" for a in sweep.axes) or "none"
    print(f"sweep {sweep.name}: {len(sweep.trials)} trials; axes: {axes}")
    for group in sweep.zipped:
        print(f"zipped: {' + '.join(group)}")
    if sweep.adaptive is not None:
        from workflows.adaptive_spec import plan_lines

        for line in plan_lines(sweep.adaptive, len(sweep.trials)):
            print(line)
    from workflows.cleaning import plan_lines as detection_lines

    for line in detection_lines(sweep):
        print(line)
    print(f"run: site {sweep.run.site}, retries {sweep.run.retries}"
          + (f", options {sweep.run.options}" if sweep.run.options else ""))
    for name in missing:
        print(f"run: option {name} is required by site {sweep.run.site}: give it in [run] "
              f"options or as `genodl run ... -o {name}=VALUE`")
    print(plan_table(sweep, limit=args.limit or None))
    return 0


def data_sources_ok(sweep) -> bool:
    """Check every data source of the sweep (headers and shapes only) and print each problem.

    A missing file or a width that does not fit the model would otherwise be found only when
    a trial runs, on a compute node after the queue (see :mod:`genodl_core.data.preflight`).
    """
    import sys

    from genodl_core.data.preflight import check_specs

    problems = check_specs(t.spec for t in sweep.trials)
    for problem in problems:
        print(f"data: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} data problem(s): nothing was run or queued", file=sys.stderr)
    return not problems


def check_run_table(sweep) -> list[str]:
    """Check the sweep's ``[run]`` site and options now, as ``genodl run`` would later.

    Returns the required options the sweep leaves unset (they may come from the command line
    of ``genodl run``).

    Raises
    ------
    SpecError
        Naming ``run.site`` or ``run.options.<name>``.
    """
    from genodl_core.errors import SpecError
    from site_configs import SITES, check_run_options
    from workflows.driver import MPI_SITE

    if sweep.run.site not in SITES and sweep.run.site != MPI_SITE:
        raise SpecError("run.site", sweep.run.site, [*SITES, MPI_SITE], reason="unknown site")
    if sweep.run.site != MPI_SITE:
        return check_run_options(sweep.run.site, sweep.run.options)
    from workflows.mpi import _gpus_per_node  # the MPI path's own option check

    try:
        _gpus_per_node(sweep.run.options)
    except SpecError as err:  # it names mpi.<option>; say where the option was written
        raise SpecError(f"run.options.{err.field.split('.', 1)[-1]}", err.value, err.allowed,
                        reason=err.reason) from None
    return []
