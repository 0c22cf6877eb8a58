"""The ``genodl`` command: one subcommand per module listed in :data:`COMMANDS`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func=handler``; a handler returns the process exit code. Errors raised on purpose
(:class:`~genodl_core.errors.GenodlError`) and errors of the operating system (a full disk, a
read-only or forbidden folder, a file where a folder should be) are printed as one line
without a traceback; ``--debug`` adds the traceback. A closed output pipe (``genodl plan |
head``) ends the command quietly, as other command-line tools do.

Exit statuses: 0 success, 1 some trials failed, 2 invalid input, 3 a trial already being run
(``genodl trial``), 4 a sweep not finished without failures (``genodl status``),
:data:`EXIT_OS_ERROR` an operating-system error, 130/143 stopped by SIGINT/SIGTERM,
:data:`EXIT_BROKEN_PIPE` output pipe closed; the table in docs/workflow.md says which command
returns which.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback

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
    "workflows.commands.export",
    "workflows.commands.bench",
]

#: Exit status of a command stopped by an operating-system error (EX_IOERR of sysexits.h).
EXIT_OS_ERROR = 74
#: Exit status when the reader of our output went away: what a shell reports for a tool that
#: SIGPIPE ended (128 + 13).
EXIT_BROKEN_PIPE = 141

#: What to do about an operating-system error, by errno (appended to its one line).
OS_ERROR_HINTS = {
    errno.ENOSPC: "the file system is full: free space (or choose another location) and run "
                  "the command again; complete trial records are kept",
    errno.EDQUOT: "the disk quota is exhausted: free space (or choose another location) and run "
                  "the command again; complete trial records are kept",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "no permission: choose a location you can write to, or fix its permissions",
    errno.EPERM: "not permitted: choose a location you can write to, or fix its permissions",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EEXIST: "it exists and is not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "no such file or folder",
}


def build_parser() -> argparse.ArgumentParser:
    from genodl_core import __version__

    parser = argparse.ArgumentParser(
        prog="genodl",
        description="Noise-injection ensemble studies for genomics deep-learning models.")
    parser.add_argument("--version", action="version", version=f"genodl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error besides its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    for command in sub.choices.values():
        # Also accepted after the command (`genodl run SPEC --debug`); SUPPRESS keeps the
        # top-level value when it is given before the command.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="print the traceback of an error besides its message")
    return parser


def configure_logging(verbose: bool) -> None:
    """Log to stderr; a log handler that cannot write never floods the console.

    A full or read-only disk makes every file handler (the workflow log, Parsl's logs, each
    trial's log) fail on every record, and logging's default prints a '--- Logging error ---'
    block with a traceback for each: thousands of them. The error that matters reaches the
    command anyway, through the writes of the records, and is reported once.
    """
    logging.raiseExceptions = False
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    debug = getattr(args, "debug", False)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return quiet_broken_pipe()
    except GenodlError as err:
        _report(args.command, str(err), debug)
        return 2
    except OSError as err:
        _report(args.command, describe_os_error(err, where=command_location(args)), debug)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        print(f"genodl {args.command}: interrupted", file=sys.stderr)
        return 130


def _report(command: str, message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"genodl {command}: error: {message}", file=sys.stderr)


def quiet_broken_pipe() -> int:
    """End quietly after the reader of stdout went away (``genodl plan | head``).

    Python would otherwise report the failed flush of stdout again at exit; pointing stdout at
    the null device lets it exit silently.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def command_location(args: argparse.Namespace) -> str | None:
    """The folder or file a command writes to, to name when an error does not say which."""
    for name in ("out", "run_dir"):
        value = getattr(args, name, None)
        if value:
            return str(value)
    return None


def describe_os_error(err: OSError, where: str | None = None) -> str:
    """One line for an operating-system error: the path, what went wrong, what to do.

    Writes through a file descriptor (a log line, a flush) raise errors without a file name,
    often while another error is being handled; the chain of errors is searched for one that
    names its path, and ``where`` (the command's output location) is named otherwise.
    """
    named = _error_with_path(err) or err
    path = named.filename
    if named.filename2:
        path = f"{named.filename} -> {named.filename2}"
    code = named.errno if named.errno is not None else err.errno
    reason = named.strerror or err.strerror or str(named) or type(named).__name__
    name = errno.errorcode.get(code) if code is not None else None
    text = f"{path}: {reason}" if path else (f"{reason} (writing under {where})" if where
                                             else reason)
    if name:
        text += f" [{name}]"
    hint = OS_ERROR_HINTS.get(code)
    return f"{text}; {hint}" if hint else text


def _error_with_path(err: BaseException) -> OSError | None:
    """The first OSError naming a path in ``err``, its cause or its context (the same errno
    first, so that a later unrelated error does not hide the path of the first one)."""
    chain: list[OSError] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            chain.append(current)
        current = current.__cause__ or current.__context__
    for candidate in chain:
        if candidate.filename is not None:
            return candidate
    return None


if __name__ == "__main__":
    sys.exit(main())
