"""The ``genodl`` command: one subcommand per module listed in :data:`COMMANDS`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func=handler``; a handler returns the process exit code. Errors raised on purpose
(:class:`~genodl_core.errors.GenodlError`) are printed as one line without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from genodl_core.errors import GenodlError

#: Modules that provide subcommands, in the order ``genodl --help`` lists them.
COMMANDS = [
    "workflows.commands.trial",
    "workflows.commands.plan",
    "workflows.commands.run",
    "workflows.commands.rerun",
    "workflows.commands.status",
    "workflows.commands.sites",
    "workflows.commands.submit",
    "workflows.commands.gather",
    "workflows.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    from genodl_core import __version__

    parser = argparse.ArgumentParser(
        prog="genodl",
        description="Noise-injection ensemble studies for genomics deep-learning models.")
    parser.add_argument("--version", action="version", version=f"genodl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except GenodlError as err:
        print(f"genodl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"genodl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
