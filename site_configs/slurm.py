"""``slurm``: a generic Slurm GPU cluster, in two modes.

``mode=pilot`` (default)
    The driver runs on a login node; Parsl's SlurmProvider submits pilot jobs whose ``srun``
    starts one worker manager per node. Good for long sweeps: pilot jobs come and go while the
    driver keeps the state.
``mode=inside``
    The driver itself runs inside an allocation (the batch script written by ``genodl submit``):
    a LocalProvider starts the managers with ``srun`` on the allocation's nodes. Nothing is
    queued twice, and it works where login nodes may not run long processes.

One manager per node, one worker per GPU (``gpus_per_node`` x ``trials_per_gpu``), or
``cpu_workers`` workers per node on CPU partitions. The Frontier-like and Perlmutter-like sites
reuse :func:`slurm_options` and :func:`build_slurm_config` with their own defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from site_configs import SiteOption, register_site
from site_configs.script_values import (interchange_address, launcher_arguments,
                                        sbatch_option_list, scheduler_name, script_path,
                                        slurm_constraint, slurm_partition)
from site_configs.local_htex import (accelerator_entries, cpu_only_init, htex_executor,
                                     make_config, resolve_address, worker_path_init)

log = logging.getLogger(__name__)

Vendor = Literal["nvidia", "amd"]


def slurm_options(*, partition: str | None = None, constraint: str | None = None,
                  qos: str | None = None, gpus_per_node: int = 0,
                  cores_per_node: int | None = None, interface: str | None = None,
                  account_required: bool = False) -> tuple[SiteOption, ...]:
    """The options of a Slurm site, with the machine's defaults."""
    return (
        SiteOption("mode", "str", "pilot",
                   "pilot: driver outside, workers in pilot jobs; inside: driver in the allocation",
                   choices=("pilot", "inside")),
        SiteOption("account", "str", None,
                   "allocation to charge (--account; letters, digits, . _ -)",
                   required=account_required, check=scheduler_name),
        SiteOption("partition", "str", partition, "partition(s) (--partition)",
                   check=slurm_partition),
        SiteOption("qos", "str", qos, "quality of service (--qos)", check=scheduler_name),
        SiteOption("constraint", "str", constraint, "node features (--constraint)",
                   check=slurm_constraint),
        SiteOption("nodes", "int", 1, "nodes per pilot job (or used inside the allocation)",
                   minimum=1),
        SiteOption("walltime", "walltime", "00:30:00", "walltime of each pilot job"),
        SiteOption("max_blocks", "int", 1, "pilot jobs queued at once", minimum=1),
        SiteOption("gpus_per_node", "int", gpus_per_node,
                   "GPUs per node (0: CPU workers); requested as --gpus-per-node", minimum=0),
        SiteOption("trials_per_gpu", "int", 1, "workers sharing each GPU", minimum=1),
        SiteOption("cpu_workers", "int", 1, "workers per node when gpus_per_node=0", minimum=1),
        SiteOption("cores_per_node", "int", cores_per_node,
                   "cores given to the workers of a node (--cpus-per-task of the srun step; "
                   "unset: every CPU the job holds on the node)",
                   minimum=1),
        SiteOption("exclusive", "bool", True, "request whole nodes (--exclusive)"),
        SiteOption("worker_init", "str", "",
                   "shell line run before the workers start (module load, venv activation)"),
        SiteOption("interface", "str", interface,
                   "network interface the workers reach the driver on (ib0, hsn0)"),
        SiteOption("address", "str", None, "explicit interchange address (wins over interface)",
                   check=interchange_address),
        SiteOption("srun_overrides", "str", "", "extra srun arguments for the worker step",
                   check=launcher_arguments),
        SiteOption("sbatch_options", "list", (),
                   "extra #SBATCH options, one --name=value each: a list, or separated by ';' "
                   "(e.g. --mem=0;--mail-type=END)", check=sbatch_option_list),
        SiteOption("encrypted", "bool", True,
                   "encrypt driver-worker traffic (the run dir must be on a shared file system)"),
    )


#: Seconds before the walltime at which Slurm sends SIGTERM to the batch script's
#: ``genodl run``, so that a walltime-limited job stops in order (running trials checkpoint
#: within the grace period, the rest is recorded as interrupted, the summary is gathered)
#: instead of being killed. Keep ``--grace-period`` well below it.
WALLTIME_WARNING_S = 180


def walltime_signal_directive() -> str:
    """The ``#SBATCH --signal`` line of a batch script whose ``genodl run`` is the job's shell.

    ``B:`` signals only the batch shell, which the script replaces by ``genodl run`` (``exec``):
    the driver then stops the workers itself, rather than Slurm signalling the worker step.
    """
    return f"#SBATCH --signal=B:TERM@{WALLTIME_WARNING_S}"


def workers_per_node(o: Mapping[str, Any]) -> int:
    """Trials one node runs at once."""
    if o["gpus_per_node"] > 0:
        return o["gpus_per_node"] * o["trials_per_gpu"]
    return o["cpu_workers"]


def slurm_slots(o: Mapping[str, Any]) -> int:
    blocks = 1 if o["mode"] == "inside" else o["max_blocks"]
    return workers_per_node(o) * o["nodes"] * blocks


def sbatch_lines(o: Mapping[str, Any]) -> list[str]:
    """Extra ``#SBATCH`` lines for GPUs and user options (the provider writes the rest).

    GPUs go through a plain ``--gpus-per-node`` line rather than a provider argument: every
    Slurm and every Parsl release understands it.
    """
    lines = []
    if o["gpus_per_node"] > 0:
        lines.append(f"#SBATCH --gpus-per-node={o['gpus_per_node']}")
    lines += [f"#SBATCH {option}" for option in o.get("sbatch_options") or ()]
    return lines


def srun_overrides(o: Mapping[str, Any], *, inside: bool) -> str:
    """Arguments of the ``srun`` that starts one worker manager per node.

    The step asks for its CPUs explicitly: ``cores_per_node`` when set, else every CPU the job
    holds on the node (``$SLURM_CPUS_ON_NODE``, expanded by the launcher script inside the
    job). Slurm 20.11.0-20.11.2 gave a step only the CPUs it asked for (one per task by
    default), so the workers of a node would have shared one core; later releases give a step
    without ``--cpus-per-task`` all of the job's CPUs, which the explicit request matches.
    ``--cpu-bind=none`` keeps the task from being bound to a subset of them.
    """
    parts = ["--ntasks-per-node=1", "--cpu-bind=none"]
    if inside:
        parts.insert(0, f"--nodes={o['nodes']}")
    cores = o.get("cores_per_node")
    parts.append(f"--cpus-per-task={cores if cores else '$SLURM_CPUS_ON_NODE'}")
    if o["gpus_per_node"] > 0:
        parts.append(f"--gpus-per-node={o['gpus_per_node']}")
    if o.get("srun_overrides"):
        parts.append(o["srun_overrides"])
    return " ".join(parts)


def warn_small_cpu_request(site: str, o: Mapping[str, Any]) -> None:
    """Log when a job would hold one CPU per node: not exclusive and no ``cores_per_node``.

    With one task per node and no CPU count, Slurm allocates one CPU per node to a shared-node
    job, and every worker of the node would share it.
    """
    if not o.get("exclusive") and not o.get("cores_per_node"):
        log.warning("%s: exclusive=false without cores_per_node: Slurm gives the job one CPU "
                    "per node; set -o cores_per_node=N", site)


def gpu_entries(o: Mapping[str, Any], vendor: Vendor) -> list[str]:
    """HTEX accelerator entries for one node (whole-node GPUs are numbered 0..N-1)."""
    gpus = [str(i) for i in range(o["gpus_per_node"])]
    smi = o["gpus_per_node"] if vendor == "nvidia" else None
    return accelerator_entries(gpus, o["trials_per_gpu"], smi)


def build_slurm_config(site: str, run_dir: Path, *, retries: int,
                       retry_handler: Callable[..., float] | None, vendor: Vendor = "nvidia",
                       **o: Any):
    """Build the Parsl ``Config`` of a Slurm site from its resolved options.

    Raises
    ------
    SpecError
        A required option (account) unset in pilot mode, or an unknown network interface.
    """
    from parsl.launchers import SrunLauncher
    from parsl.providers import LocalProvider, SlurmProvider

    from site_configs import SITES

    inside = o["mode"] == "inside"
    script_path(str(run_dir), "--out")  # written unquoted into the workers' launch command
    if not inside:
        SITES[site].check_required(o)
        warn_small_cpu_request(site, o)
    launcher = SrunLauncher(overrides=srun_overrides(o, inside=inside))
    init = worker_path_init(o["worker_init"])
    if o["gpus_per_node"] == 0:
        init = cpu_only_init(init)
    if inside:
        provider = LocalProvider(nodes_per_block=o["nodes"], init_blocks=1, min_blocks=0,
                                 max_blocks=1, worker_init=init, launcher=launcher)
    else:
        provider = SlurmProvider(
            partition=o["partition"], account=o["account"], qos=o["qos"],
            constraint=o["constraint"], nodes_per_block=o["nodes"],
            cores_per_node=o["cores_per_node"], walltime=o["walltime"],
            exclusive=o["exclusive"], init_blocks=1, min_blocks=0, max_blocks=o["max_blocks"],
            scheduler_options="\n".join(sbatch_lines(o)),
            worker_init=init, launcher=launcher, cmd_timeout=60)
    executor = htex_executor(site, provider, run_dir, accelerators=gpu_entries(o, vendor),
                             cpu_workers=o["cpu_workers"],
                             address=resolve_address(site, o["address"], o["interface"]),
                             encrypted=o["encrypted"], pilot=not inside)
    return make_config(run_dir, executor, retries, retry_handler)


@register_site("slurm", options=slurm_options(), slots=slurm_slots, scheduler="slurm",
               description="generic Slurm cluster: SlurmProvider pilot jobs + srun, or "
                           "mode=inside an allocation")
def config(run_dir: Path, *, retries: int = 0, retry_handler: Callable[..., float] | None = None,
           **options: Any):
    """Build the generic Slurm ``Config`` (see the module docstring for the two modes)."""
    return build_slurm_config("slurm", run_dir, retries=retries, retry_handler=retry_handler,
                              vendor="nvidia", **options)
