"""Site configurations: one small module per machine, each building a fresh Parsl ``Config``.

A site is a function ``config(run_dir, *, retries=0, retry_handler=None, **options)``
registered in :data:`SITES` together with the options it accepts (name, type, default,
one-line help). Options arrive from the command line as ``-o KEY=VALUE`` strings; they are
converted and checked here, before any Parsl object exists, so that a typo in an account name
or a walltime fails at once instead of after a job sat in the queue.

This package never imports from ``workflows``: the retry policy enters through the
``retry_handler`` argument.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from genodl_core.errors import SpecError
from genodl_core.typed import convert
from site_configs.script_values import reject_control_characters

OptionKind = Literal["int", "float", "bool", "str", "walltime", "list"]
Scheduler = Literal["local", "slurm", "lsf"]

def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask (what a cgroup or a binding allows),
    which can be far fewer than ``os.cpu_count()`` inside a batch job or a container."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Shown in place of a value the user must supply (an account, a project).
PLACEHOLDER = "<required>"

#: The type each option kind converts to (walltimes are parsed on their own).
_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class SiteOption:
    """One named option of a site.

    Parameters
    ----------
    name
        Option name as written after ``-o`` (``-o account=abc``).
    kind
        Value type; ``walltime`` accepts ``H:MM:SS``, ``H:MM`` (hours:minutes) or minutes and
        is normalised to ``HH:MM:SS``; ``list`` takes a list of strings or one string
        separated by ``;`` and leaves its normalisation to ``check``. A ``str`` value never
        holds a control character (newline, carriage return, NUL): every string option is
        written on one line of some script or command.
    default
        Value when the option is not given; ``None`` means "not set" (left to the scheduler).
    help
        One line for ``genodl sites``.
    choices
        Allowed values for a ``str`` option; empty means any string.
    minimum
        Smallest allowed value for numeric options.
    required
        The option has no sensible default (an allocation name): building a pilot-job
        configuration or a batch script without it is an error.
    check
        ``check(value, where)`` for a converted value: returns it normalised or raises
        ``SpecError``. For values whose form a type cannot say (a list of device ids).
    """

    name: str
    kind: OptionKind
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    required: bool = False
    check: Callable[[Any, str], Any] | None = field(default=None, repr=False, compare=False)

    def convert(self, value: Any, site: str) -> Any:
        """Convert a command-line string (or an already typed value) to this option's type.

        Raises
        ------
        SpecError
            Naming ``<site>.<option>``, the value and what is accepted, when the value does
            not parse, is not among ``choices``, is below ``minimum`` or fails ``check``.
        """
        where = f"{site}.{self.name}"
        if value is None:
            if self.default is None:
                return None
            raise SpecError(where, value, self.describe_type(), reason="a value is needed")
        if self.kind == "walltime":
            converted = format_walltime(parse_walltime(value, where))
        elif self.kind == "list":
            converted = value  # the option's check splits and validates the items
        else:
            # Converted as spec fields are, also from command-line text.
            converted = convert(_TYPES[self.kind], value, where, text=True)
        if self.choices and converted not in self.choices:
            raise SpecError(where, value, list(self.choices), reason="unknown choice")
        if self.minimum is not None and converted < self.minimum:
            raise SpecError(where, value, f">= {self.minimum}", reason="out of range")
        if self.check is not None:
            converted = self.check(converted, where)  # names the option's own allowed form
        if isinstance(converted, str):
            reject_control_characters(converted, where)
        return converted

    def describe_type(self) -> str:
        if self.choices:
            return "one of " + "|".join(self.choices)
        return {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a string", "walltime": "H:MM:SS, H:MM or minutes",
                "list": "a list or ';'-separated"}[self.kind]


def parse_walltime(value: Any, where: str = "walltime") -> int:
    """Return a walltime in seconds.

    Accepted forms: ``H:MM:SS``, ``H:MM`` (hours and minutes, as LSF's ``-W`` reads it) and a
    plain number of minutes. Slurm would read ``MM:SS`` for two fields; the batch scripts are
    always written with three fields so that both schedulers agree with this reading.

    Raises
    ------
    SpecError
        When the text is none of the accepted forms or is zero.
    """
    allowed = "H:MM:SS, H:MM or a number of minutes (greater than zero)"
    if isinstance(value, bool):
        raise SpecError(where, value, allowed, reason="not a walltime")
    if isinstance(value, int):
        seconds = value * 60
    else:
        text = str(value).strip()
        parts = text.split(":")
        if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
            raise SpecError(where, value, allowed, reason="not a walltime")
        nums = [int(p) for p in parts]
        if len(nums) == 1:
            seconds = nums[0] * 60
        elif len(nums) == 2:
            if nums[1] >= 60:
                raise SpecError(where, value, allowed, reason="minutes must be below 60")
            seconds = nums[0] * 3600 + nums[1] * 60
        else:
            if nums[1] >= 60 or nums[2] >= 60:
                raise SpecError(where, value, allowed, reason="minutes and seconds must be below 60")
            seconds = nums[0] * 3600 + nums[1] * 60 + nums[2]
    if seconds <= 0:
        raise SpecError(where, value, allowed, reason="walltime must be positive")
    return seconds


def format_walltime(seconds: int) -> str:
    """Format seconds as ``HH:MM:SS`` (hours may exceed 99)."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


@dataclass(frozen=True)
class Site:
    """A registered site: its config builder, its options and what it provides.

    Calling the site builds a fresh ``parsl.config.Config`` (executors hold state, so a
    config object must never be loaded twice).
    """

    name: str
    description: str
    builder: Callable[..., Any]
    options: tuple[SiteOption, ...]
    scheduler: Scheduler
    slots_fn: Callable[[Mapping[str, Any]], int]
    _index: dict[str, SiteOption] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({opt.name: opt for opt in self.options})

    def option_names(self) -> list[str]:
        return [opt.name for opt in self.options]

    def resolve(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return every option of this site, converted, with defaults filled in.

        Raises
        ------
        SpecError
            For an unknown option name (listing the site's options) or a bad value.
        """
        given = dict(options or {})
        for key in given:
            if key not in self._index:
                raise SpecError(f"{self.name}.{key}", given[key], self.option_names(),
                                reason=f"unknown option of site {self.name!r}")
        resolved = {}
        for opt in self.options:
            if opt.name in given:
                resolved[opt.name] = opt.convert(given[opt.name], self.name)
            else:
                resolved[opt.name] = opt.default
        return resolved

    def missing_required(self, resolved: Mapping[str, Any]) -> list[str]:
        """Names of required options (allocation, project) still unset."""
        return [opt.name for opt in self.options if opt.required and resolved.get(opt.name) is None]

    def check_required(self, resolved: Mapping[str, Any]) -> None:
        """Raise when a required option is unset.

        Raises
        ------
        SpecError
            Naming the first missing option; the scheduler would reject the job anyway, but
            only after the user waited for it.
        """
        for name in self.missing_required(resolved):
            opt = self._index[name]
            raise SpecError(f"{self.name}.{name}", None, f"-o {name}=VALUE ({opt.help})",
                            reason="required option not set")

    def slots(self, options: Mapping[str, Any] | None = None) -> int:
        """How many trials this site runs at once with these options (workers in total)."""
        return int(self.slots_fn(self.resolve(options)))

    def __call__(self, run_dir: str | Path, *, retries: int = 0,
                 retry_handler: Callable[..., float] | None = None, **site_options: Any):
        """Build a fresh Parsl ``Config`` writing its run info under ``run_dir/runinfo``.

        Raises
        ------
        SpecError
            For unknown or invalid options, or a required option left unset.
        """
        resolved = self.resolve(site_options)
        if retries < 0:
            raise SpecError("retries", retries, ">= 0", reason="out of range")
        return self.builder(Path(run_dir), retries=retries, retry_handler=retry_handler,
                            **resolved)


#: All known sites by name; filled by the site modules imported at the end of this file.
SITES: dict[str, Site] = {}

#: The site used when none is named.
DEFAULT_SITE = "local_threads"


def register_site(name: str, *, description: str, options: Iterable[SiteOption],
                  slots: Callable[[Mapping[str, Any]], int], scheduler: Scheduler = "local"):
    """Register the decorated config builder as site ``name``.

    The builder is called as ``builder(run_dir: Path, *, retries, retry_handler, **options)``
    with every option resolved (converted, defaults filled in).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in SITES:
            raise ValueError(f"site {name!r} is registered twice")
        SITES[name] = Site(name=name, description=description, builder=fn,
                           options=tuple(options), scheduler=scheduler, slots_fn=slots)
        return fn

    return deco


def get_site(name: str) -> Site:
    """Return the registered site ``name``.

    Raises
    ------
    SpecError
        Listing the known site names when ``name`` is unknown.
    """
    try:
        return SITES[name]
    except KeyError:
        raise SpecError("site", name, sorted(SITES), reason="unknown site") from None


def check_run_options(site: str, options: Mapping[str, Any]) -> list[str]:
    """Validate a sweep's ``[run] site`` and ``options`` as building its config would.

    ``genodl plan`` calls it so that a typo in the sweep file fails when the sweep is planned,
    not when it is run (possibly after waiting in a queue). Required options (an account)
    may still come from the command line of ``genodl run``, so they are returned, not raised.

    Returns
    -------
    list[str]
        Names of required options the sweep leaves unset.

    Raises
    ------
    SpecError
        Naming ``run.site`` (unknown site, listing the known ones) or ``run.options.<name>``
        (unknown option, listing the site's options, or a bad value).
    """
    if site not in SITES:
        raise SpecError("run.site", site, sorted(SITES), reason="unknown site")
    entry = SITES[site]
    try:
        resolved = entry.resolve(options)
    except SpecError as err:
        option = err.field.split(".", 1)[1] if err.field.startswith(f"{site}.") else err.field
        raise SpecError(f"run.options.{option}", err.value, err.allowed,
                        reason=err.reason) from None
    return entry.missing_required(resolved)


def load_site(name: str, run_dir: str | Path, *, retries: int = 0,
              retry_handler: Callable[..., float] | None = None,
              options: Mapping[str, Any] | None = None):
    """Validate ``options`` for site ``name`` and build its fresh Parsl ``Config``.

    Parameters
    ----------
    name
        A key of :data:`SITES`.
    run_dir
        The sweep's run directory; Parsl's run info goes to ``run_dir/runinfo``.
    retries, retry_handler
        Passed to ``Config``; the handler decides which failures deserve another attempt.
    options
        Site options, as strings from ``-o KEY=VALUE`` or as typed values.

    Raises
    ------
    SpecError
        Unknown site, unknown option (listing the allowed ones), bad value, or a required
        option (account, project) left unset.
    """
    return get_site(name)(run_dir, retries=retries, retry_handler=retry_handler,
                          **dict(options or {}))


def parse_option_pairs(pairs: Sequence[str] | None) -> dict[str, str]:
    """Turn ``["KEY=VALUE", ...]`` from ``-o`` into a dict (later keys win).

    Raises
    ------
    SpecError
        For an item without ``=`` or with an empty key.
    """
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError("-o/--option", pair, "KEY=VALUE", reason="not a KEY=VALUE pair")
        options[key] = value
    return options


def add_site_arguments(parser, *, default_site: str | None = DEFAULT_SITE) -> None:
    """Add ``--site``, ``-o/--option KEY=VALUE``, ``--nodes`` and ``--walltime`` to ``parser``.

    Shared by every command that builds a site config, so that they spell options alike.
    """
    parser.add_argument("--site", default=default_site, metavar="NAME",
                        help=f"site configuration (see `genodl sites`; default: {default_site})")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        dest="site_option", help="site option (repeatable), e.g. -o account=abc123")
    parser.add_argument("--nodes", type=int, default=None, metavar="N",
                        help="nodes per block (shorthand for -o nodes=N)")
    parser.add_argument("--walltime", default=None, metavar="T",
                        help="batch walltime, H:MM:SS or H:MM or minutes (shorthand for -o walltime=T)")


def site_options_from_args(args) -> dict[str, str]:
    """Collect site options from parsed arguments made by :func:`add_site_arguments`.

    ``--nodes`` and ``--walltime`` are shorthands for the options of the same name; given
    both ways, the explicit ``-o`` wins.
    """
    options: dict[str, Any] = {}
    if getattr(args, "nodes", None) is not None:
        options["nodes"] = str(args.nodes)
    if getattr(args, "walltime", None) is not None:
        options["walltime"] = str(args.walltime)
    options.update(parse_option_pairs(getattr(args, "site_option", None)))
    return options


def describe_sites() -> str:
    """A text listing of every site with its options, defaults and help (for ``genodl sites``)."""
    lines: list[str] = []
    for name in sorted(SITES):
        site = SITES[name]
        default_mark = " (default)" if name == DEFAULT_SITE else ""
        lines.append(f"{name}{default_mark} [{site.scheduler}]: {site.description}")
        width = max((len(opt.name) for opt in site.options), default=0)
        for opt in site.options:
            if opt.required:
                default = PLACEHOLDER
            elif opt.default is None or opt.default == ():
                default = "unset"
            else:
                default = str(opt.default).lower() if opt.kind == "bool" else repr(opt.default)
            lines.append(f"    {opt.name:<{width}}  {opt.describe_type():<28} default {default:<12} "
                         f"{opt.help}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def describe_sites_dict() -> list[dict[str, Any]]:
    """The same listing as plain data (for ``genodl sites --json``)."""
    return [{"name": s.name, "description": s.description, "scheduler": s.scheduler,
             "options": [{k: v for k, v in dataclasses.asdict(o).items() if k != "check"}
                         for o in s.options]}
            for s in (SITES[n] for n in sorted(SITES))]


_SITE_MODULES = ("local_threads", "local_htex", "slurm", "summit", "frontier", "perlmutter")

for _module in _SITE_MODULES:
    importlib.import_module(f"{__name__}.{_module}")
