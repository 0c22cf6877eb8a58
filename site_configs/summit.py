"""``summit``: a Summit-like machine (IBM LSF, ``jsrun``, 6 NVIDIA V100 and 42 usable cores per node).

``jsrun`` gives a resource set one core and no GPU unless told otherwise, and a worker pool
started that way would see no device at all. The launcher therefore asks for one resource set
per node owning the whole node (``-a1 -c42 -g6 --bind=none``), and Parsl splits the six GPUs
among the workers through ``available_accelerators``. ``--smpiargs=off`` keeps Spectrum MPI's
CUDA hooks out of the (non-MPI) worker processes.

``mode=pilot`` submits LSF pilot jobs from a login node (``bsub`` reads the script on stdin so
that its ``#BSUB`` lines count); ``mode=inside`` runs inside the allocation of the batch script
written by ``genodl submit``, starting the managers with ``jsrun`` from the launch node.
``project`` is a placeholder that must be set (``-o project=ABC123``).

The GPU count is fixed (6 per node), so a sweep training on GPUs needs no GPU option here. A
batch script asks LSF for the node features a GPU job needs with ``#BSUB -alloc_flags``:
``gpumps`` (NVIDIA MPS) whenever several workers share a GPU (``trials_per_gpu > 1``; Summit's
GPUs run one process each otherwise), plus any flags of ``-o alloc_flags=...`` (``smt4``,
``gpudefault``, ``nvme``). ``-o modules=open-ce;cuda`` writes ``module load open-ce cuda`` into
the batch script before the ``--env`` line (and before ``worker_init`` of pilot jobs); it is
optional because module names differ from one machine to the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import re

from genodl_core.errors import SpecError
from site_configs import SITES, SiteOption, register_site
from site_configs.script_values import (interchange_address, launcher_arguments,
                                        scheduler_name, script_path)
from site_configs.local_htex import (accelerator_entries, htex_executor, make_config,
                                     resolve_address, worker_path_init)

GPUS_PER_NODE = 6
CORES_PER_NODE = 42

#: One LSF allocation flag or environment module name: no spaces, quotes or shell characters.
_FLAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_MODULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/-]*")


def _word_list(value: Any, where: str, pattern: re.Pattern[str], form: str) -> tuple[str, ...]:
    """Split a list option (a list, or one string separated by ``;`` or spaces) into words that
    each fit ``pattern``: they are written unquoted into a ``#BSUB`` or ``module load`` line."""
    if isinstance(value, str):
        items: list[Any] = value.replace(";", " ").split()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise SpecError(where, value, f"a list of {form}, or one string separated by ';'",
                        reason="expected a list or a string")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise SpecError(f"{where}[{i}]", item, form, reason="not a plain name")
    return tuple(items)


def alloc_flag_list(value: Any, where: str) -> tuple[str, ...]:
    """Extra ``-alloc_flags`` words (``smt4``, ``gpudefault``, ``nvme``)."""
    return _word_list(value, where, _FLAG, "letters, digits, . _ + - (e.g. smt4)")


def module_list(value: Any, where: str) -> tuple[str, ...]:
    """Environment modules to load (``open-ce``, ``cuda/11.0.3``)."""
    return _word_list(value, where, _MODULE, "module names: letters, digits, . _ + / -")


OPTIONS = (
    SiteOption("mode", "str", "pilot",
               "pilot: driver on a login node, LSF pilot jobs; inside: driver in the allocation",
               choices=("pilot", "inside")),
    SiteOption("project", "str", None, "LSF project to charge (#BSUB -P; letters, digits, . _ -)",
               required=True, check=scheduler_name),
    SiteOption("queue", "str", "batch", "LSF queue (#BSUB -q)", check=scheduler_name),
    SiteOption("nodes", "int", 1, "nodes per pilot job (or used inside the allocation)",
               minimum=1),
    SiteOption("walltime", "walltime", "00:30:00", "walltime of each pilot job"),
    SiteOption("max_blocks", "int", 1, "pilot jobs queued at once", minimum=1),
    SiteOption("trials_per_gpu", "int", 1, "workers sharing each of the 6 GPUs", minimum=1),
    SiteOption("worker_init", "str", "",
               "shell line run before the workers start (module load, conda activate)"),
    SiteOption("interface", "str", "ib0", "network interface the workers reach the driver on"),
    SiteOption("address", "str", None, "explicit interchange address (wins over interface)",
               check=interchange_address),
    SiteOption("jsrun_overrides", "str", "", "extra jsrun arguments for the worker step",
               check=launcher_arguments),
    SiteOption("encrypted", "bool", True,
               "encrypt driver-worker traffic (the run dir must be on GPFS, shared)"),
    SiteOption("alloc_flags", "list", (),
               "extra #BSUB -alloc_flags words (smt4, gpudefault, nvme); gpumps is added by "
               "itself when trials_per_gpu > 1", check=alloc_flag_list),
    SiteOption("modules", "list", (),
               "environment modules loaded in the batch script and pilot jobs, e.g. "
               "open-ce;cuda (site-specific names)", check=module_list),
)


def alloc_flags(o: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``-alloc_flags`` words of a job: MPS when workers share a GPU, then the user's."""
    flags = ["gpumps"] if o.get("trials_per_gpu", 1) > 1 else []
    flags += [f for f in o.get("alloc_flags") or () if f not in flags]
    return tuple(flags)


def alloc_flags_directives(o: Mapping[str, Any]) -> list[str]:
    """The ``#BSUB -alloc_flags`` line of a batch script, or none when no flag is needed."""
    flags = alloc_flags(o)
    return [f'#BSUB -alloc_flags "{" ".join(flags)}"'] if flags else []


def module_lines(o: Mapping[str, Any]) -> list[str]:
    """The ``module load`` line of the ``modules`` option, or none."""
    modules = o.get("modules") or ()
    return [f"module load {' '.join(modules)}"] if modules else []


def _pilot_init(o: Mapping[str, Any]) -> str:
    """``worker_init`` of pilot jobs, after the ``module load`` line when modules are set."""
    return "; ".join([*module_lines(o), *([o["worker_init"]] if o["worker_init"] else [])])


#: Minutes before the run limit at which LSF sends SIGTERM to the batch job (``-wa``/``-wt``):
#: its ``genodl run`` stops in order instead of being killed (see ``slurm.WALLTIME_WARNING_S``).
WALLTIME_WARNING_MIN = 3


def walltime_warning_directives() -> list[str]:
    """The ``#BSUB`` lines asking for SIGTERM :data:`WALLTIME_WARNING_MIN` minutes before the
    run limit."""
    return ["#BSUB -wa TERM", f"#BSUB -wt {WALLTIME_WARNING_MIN}"]


def jsrun_overrides(o: Mapping[str, Any]) -> str:
    """The jsrun resource-set arguments: one set per node with all its cores and GPUs."""
    parts = ["-a1", f"-c{CORES_PER_NODE}", f"-g{GPUS_PER_NODE}", "--bind=none",
             "--smpiargs=off"]
    if o.get("jsrun_overrides"):
        parts.append(o["jsrun_overrides"])
    return " ".join(parts)


def _slots(o: Mapping[str, Any]) -> int:
    blocks = 1 if o["mode"] == "inside" else o["max_blocks"]
    return GPUS_PER_NODE * o["trials_per_gpu"] * o["nodes"] * blocks


@register_site("summit", options=OPTIONS, slots=_slots, scheduler="lsf",
               description="Summit-like LSF system: jsrun, 6 V100/node, ib0 (project required)")
def config(run_dir: Path, *, retries: int = 0, retry_handler: Callable[..., float] | None = None,
           **o: Any):
    """Build the Summit-like ``Config``: LSFProvider or LocalProvider, both with JsrunLauncher.

    Raises
    ------
    SpecError
        ``project`` unset in pilot mode, or the network interface missing on this host.
    """
    from parsl.launchers import JsrunLauncher
    from parsl.providers import LocalProvider, LSFProvider

    script_path(str(run_dir), "--out")  # written unquoted into the workers' launch command
    launcher = JsrunLauncher(overrides=jsrun_overrides(o))
    if o["mode"] == "inside":
        provider = LocalProvider(nodes_per_block=o["nodes"], init_blocks=1, min_blocks=0,
                                 max_blocks=1, worker_init=worker_path_init(o["worker_init"]),
                                 launcher=launcher)
    else:
        SITES["summit"].check_required(o)
        provider = LSFProvider(
            project=o["project"], queue=o["queue"], walltime=o["walltime"],
            nodes_per_block=o["nodes"], init_blocks=1, min_blocks=0, max_blocks=o["max_blocks"],
            worker_init=worker_path_init(_pilot_init(o)), bsub_redirection=True,
            request_by_nodes=True, launcher=launcher, cmd_timeout=120,
            scheduler_options="\n".join(alloc_flags_directives(o)))
    entries = accelerator_entries([str(i) for i in range(GPUS_PER_NODE)], o["trials_per_gpu"],
                                  GPUS_PER_NODE)
    executor = htex_executor("summit", provider, run_dir, accelerators=entries, cpu_workers=1,
                             address=resolve_address("summit", o["address"], o["interface"]),
                             encrypted=o["encrypted"], pilot=o["mode"] != "inside")
    return make_config(run_dir, executor, retries, retry_handler)
