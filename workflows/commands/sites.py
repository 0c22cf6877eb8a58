"""``genodl sites [NAME] [--json]``: the site configurations, their options and defaults."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sites", help="list site configurations and their options",
                       description="List the sites `genodl run --site` and `genodl submit` "
                                   "accept, with every option (-o KEY=VALUE), its type, default "
                                   "and meaning. Options shown as <required> have no default "
                                   "(an account or project) and must be given.")
    p.add_argument("name", nargs="?", help="show only this site")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from site_configs import describe_sites, describe_sites_dict, get_site
    from workflows.driver import MPI_SITE

    if args.name and args.name != MPI_SITE:
        get_site(args.name)  # unknown names list the known ones
    if args.json:
        rows = [{**row, "gpus": _gpu_line(row["name"])} for row in describe_sites_dict()]
        rows.append(_mpi_row())
        if args.name:
            rows = [r for r in rows if r["name"] == args.name]
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if args.name == MPI_SITE:
        print(_mpi_block(), end="")
        return 0
    text = _with_gpu_lines(describe_sites())
    if args.name:
        blocks = [b for b in text.split("\n\n") if b.split(" ", 1)[0] == args.name]
        text = "\n\n".join(blocks).rstrip() + "\n"
    else:
        # Not a Parsl configuration, so not in the registry, but a choice of --site all the same.
        text += "\n" + _mpi_block()
    print(text, end="")
    return 0


def _gpu_line(site: str) -> str:
    """How the site gets its GPU count, so a GPU sweep's user knows whether to give one."""
    from workflows.submit import site_gpu_count

    return site_gpu_count(site)


def _with_gpu_lines(text: str) -> str:
    """The site listing with a ``GPUs:`` line under each site's title line."""
    blocks = []
    for block in text.rstrip("\n").split("\n\n"):
        title, _, rest = block.partition("\n")
        name = title.split(" ", 1)[0]
        blocks.append(f"{title}\n    GPUs: {_gpu_line(name)}\n{rest}")
    return "\n\n".join(blocks) + "\n"


_MPI_DESCRIPTION = ("without Parsl, `mpiexec -n N genodl run SPEC --site mpi`: rank 0 hands out "
                    "trials, the other ranks train them")


def _mpi_block() -> str:
    from workflows.mpi import MPI_OPTIONS

    return (f"mpi [mpiexec]: {_MPI_DESCRIPTION}\n"
            + "".join(f"    {name:<15} {meaning}\n" for name, meaning in MPI_OPTIONS.items()))


def _mpi_row() -> dict:
    from workflows.mpi import MPI_OPTIONS

    return {"name": "mpi", "description": _MPI_DESCRIPTION, "scheduler": "mpiexec",
            "options": [{"name": name, "kind": "int", "default": None, "help": meaning}
                        for name, meaning in MPI_OPTIONS.items()]}
