"""Checks for values that end up in batch-script directives and launcher command lines.

Site options reach text that a scheduler or a shell reads again: ``#SBATCH``/``#BSUB`` lines of
batch scripts (``genodl submit``, Parsl's pilot jobs) and the ``srun``/``jsrun`` lines and
worker command that Parsl's launcher scripts run under bash. A newline in an account name
would end its directive and start a shell command; a space would add directives
(``--partition=gpu --qos=urgent``); a ``;`` in launcher arguments would start another
command. Every such value is therefore checked against the characters its place allows, when
the options are read, so a bad value fails at once with the option named, instead of being
written into a script.

The character sets are deliberately narrower than what the schedulers accept: they cover the
names sites hand out (accounts like ``m1234_g``, partitions like ``gpu-a100``) and leave out
every character that a directive parser or a shell gives a meaning to. Slurm reads a
directive's arguments split on whitespace, with quotes and backslashes removed and an
unquoted ``#`` starting a comment; LSF reads ``#BSUB`` lines much like a command line. The
directive sets below therefore hold no whitespace, quote, backslash or ``#``.
"""

from __future__ import annotations

import re
from typing import Any

from genodl_core.errors import SpecError

#: Control characters (newline, carriage return, NUL, tab, escape, ...): never in a value that
#: is written on one line of a script.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: A scheduler name: account, project, qos, queue, job name.
NAME_FORM = "letters, digits, '.', '_' and '-' (e.g. abc123, m1234_g, gpu-a100)"
_NAME = re.compile(r"[A-Za-z0-9._-]+")

#: Slurm partitions: one name, or several separated by commas (the first that fits is used).
PARTITION_FORM = "names of letters, digits, '.', '_' and '-', separated by commas (gpu,gpu-debug)"
_PARTITION = re.compile(r"[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*")

#: Slurm node-feature expressions: feature names joined by & | , with counts and brackets.
CONSTRAINT_FORM = ("feature names of letters, digits, '.', '_' and '-', joined with "
                   "& | , * ! [ ] ( ) (e.g. gpu, gpu&hbm80g)")
_CONSTRAINT = re.compile(r"[A-Za-z0-9._&|,*!\[\]()-]+")

#: One extra ``#SBATCH`` option: the long form, with its value attached by ``=``.
SBATCH_OPTION_FORM = ("one long option per item, --name or --name=value, the value made of "
                      "letters, digits and . _ , : @ = + / % * & | ! [ ] ( ) ~ - "
                      "(e.g. --mem=0, --mail-type=END,FAIL)")
_SBATCH_OPTION = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9._,:@=+/%*&|!\[\]()~-]*)?")

#: Directives ``genodl`` writes itself, with the option that sets each: given again through
#: ``sbatch_options`` they would contradict (or silently override) what the workers expect.
RESERVED_SBATCH = {
    "job-name": "genodl submit --job-name", "nodes": "-o nodes", "time": "-o walltime",
    "ntasks-per-node": "nothing (one worker manager per node)",
    "partition": "-o partition", "account": "-o account", "qos": "-o qos",
    "constraint": "-o constraint", "cpus-per-task": "-o cores_per_node",
    "gpus-per-node": "-o gpus_per_node", "exclusive": "-o exclusive",
    "output": "nothing (logs go to DIR/logs)", "error": "nothing (logs go to DIR/logs)",
    "signal": "nothing (batch scripts ask for their own warning signal before the walltime)",
}

#: One word of extra launcher arguments (``srun_overrides``, ``jsrun_overrides``).
LAUNCHER_WORD_FORM = ("words separated by spaces, each of letters, digits and . _ , : @ = + / % -"
                      " (e.g. --gpu-bind=closest -b packed:7); no quotes, $, ;, |, &, <, >, "
                      "backquotes or brackets")
_LAUNCHER_WORD = re.compile(r"[A-Za-z0-9._,:@=+/%-]+")

#: An interchange address: a host name or an IPv4/IPv6 address (a ``%scope`` allowed).
ADDRESS_FORM = "a host name or IP address (letters, digits, '.', ':', '-', '_', '%')"
_ADDRESS = re.compile(r"[A-Za-z0-9._:%-]+")

#: A path written into directives and into the worker command of Parsl's launchers.
SCRIPT_PATH_FORM = ("a path of letters, digits and . _ / + , : @ = ~ - (no spaces, quotes, "
                    "'#', '%', '$' or other shell characters)")
_SCRIPT_PATH = re.compile(r"[\w./+,:@=~-]+")


def reject_control_characters(value: str, where: str,
                              allowed: str = "a single line of printable characters") -> str:
    """Refuse newlines, carriage returns, NUL and other control characters in ``value``.

    Raises
    ------
    SpecError
        Naming ``where``, the value (its repr shows the hidden character) and ``allowed``.
    """
    found = _CONTROL.search(value)
    if found:
        raise SpecError(where, value, allowed,
                        reason=f"holds the control character {found.group()!r}")
    return value


def _fullmatch(pattern: re.Pattern[str], value: Any, where: str, form: str) -> str:
    if not isinstance(value, str):
        raise SpecError(where, value, form, reason="expected a string")
    reject_control_characters(value, where, form)
    if not pattern.fullmatch(value):
        raise SpecError(where, value, form, reason="characters not allowed here")
    return value


def scheduler_name(value: Any, where: str) -> str:
    """An account, project, qos, queue or job name: :data:`NAME_FORM`."""
    return _fullmatch(_NAME, value, where, NAME_FORM)


def slurm_partition(value: Any, where: str) -> str:
    """A Slurm partition or comma-separated list of partitions: :data:`PARTITION_FORM`."""
    return _fullmatch(_PARTITION, value, where, PARTITION_FORM)


def slurm_constraint(value: Any, where: str) -> str:
    """A Slurm ``--constraint`` feature expression: :data:`CONSTRAINT_FORM`."""
    return _fullmatch(_CONSTRAINT, value, where, CONSTRAINT_FORM)


def interchange_address(value: Any, where: str) -> str:
    """An address the workers' command line carries unquoted: :data:`ADDRESS_FORM`."""
    return _fullmatch(_ADDRESS, value, where, ADDRESS_FORM)


def launcher_arguments(value: Any, where: str) -> str:
    """Extra ``srun``/``jsrun`` arguments, written unquoted into Parsl's launcher script.

    Returns the words joined by single spaces.

    Raises
    ------
    SpecError
        For a word holding a character the shell would act on (:data:`LAUNCHER_WORD_FORM`).
    """
    if not isinstance(value, str):
        raise SpecError(where, value, LAUNCHER_WORD_FORM, reason="expected a string")
    reject_control_characters(value, where, LAUNCHER_WORD_FORM)
    words = value.split()
    for word in words:
        if not _LAUNCHER_WORD.fullmatch(word):
            raise SpecError(where, value, LAUNCHER_WORD_FORM,
                            reason=f"the argument {word!r} holds characters the shell acts on")
    return " ".join(words)


def sbatch_option_list(value: Any, where: str) -> tuple[str, ...]:
    """Extra ``#SBATCH`` options: a list of single long options, or one ``;``-separated string.

    Each item becomes one ``#SBATCH`` line, so each must be exactly one option: a space would
    let one item add further directives (``--mem=0 --account=other``). Options that ``genodl``
    writes itself are refused with the option that sets them (:data:`RESERVED_SBATCH`).

    Raises
    ------
    SpecError
        Naming the item (``slurm.sbatch_options[1]``) and :data:`SBATCH_OPTION_FORM`.
    """
    if isinstance(value, str):
        reject_control_characters(value, where, SBATCH_OPTION_FORM)
        items: list[Any] = [part.strip() for part in value.split(";") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise SpecError(where, value, "a list of options, or one string separated by ';'",
                        reason="expected a list or a string")
    options = []
    for i, item in enumerate(items):
        item_where = f"{where}[{i}]"
        option = _fullmatch(_SBATCH_OPTION, item.strip() if isinstance(item, str) else item,
                            item_where, SBATCH_OPTION_FORM)
        name = option[2:].split("=", 1)[0]
        if name in RESERVED_SBATCH:
            raise SpecError(item_where, item, f"set it with {RESERVED_SBATCH[name]}",
                            reason=f"--{name} is written by genodl itself")
        options.append(option)
    return tuple(options)


def script_path(value: Any, where: str) -> str:
    """A path written into directives and unquoted launcher commands: :data:`SCRIPT_PATH_FORM`.

    Slurm would split a path with spaces into two directive arguments and expand ``%`` in it
    as a file-name pattern; Parsl writes the run directory unquoted into the worker command of
    its launcher scripts, where ``$(...)`` or ``;`` would run.
    """
    return _fullmatch(_SCRIPT_PATH, str(value) if value is not None else value, where,
                      SCRIPT_PATH_FORM)


def shell_code(value: Any, where: str) -> str:
    """Shell code the user writes on purpose (``--env``, ``worker_init``): lines of text.

    Such a value runs as written, so only what cannot be meant is refused: NUL and carriage
    returns (which hide text from a reviewer's terminal) and other control characters; new
    lines are allowed where several lines are expected.
    """
    if not isinstance(value, str):
        raise SpecError(where, value, "shell code as a string", reason="expected a string")
    for line in value.split("\n"):
        reject_control_characters(line.replace("\t", " "), where)
    return value


__all__ = ["reject_control_characters", "scheduler_name", "slurm_partition", "slurm_constraint",
           "interchange_address", "launcher_arguments", "sbatch_option_list", "script_path",
           "shell_code", "RESERVED_SBATCH"]
