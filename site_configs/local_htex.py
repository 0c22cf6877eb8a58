"""``local_htex``: Parsl's HighThroughputExecutor on this machine, one worker per GPU.

Workers are separate processes that live for the whole sweep, so each loads a data set and
initialises CUDA once and reuses both for every trial it runs, and a crashing trial cannot take
the driver down. GPUs are detected (``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``,
``nvidia-smi -L``, ``rocm-smi``) and handed to Parsl as ``available_accelerators``, which pins
each worker to its GPU before any trial imports torch.

The HTEX building blocks here (:func:`htex_executor`, :func:`accelerator_entries`) are shared by
the cluster sites.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from genodl_core.errors import SpecError
from site_configs import SiteOption, register_site, usable_cores
from site_configs.script_values import script_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInventory:
    """GPUs this process may use, and what ``nvidia-smi -L`` counts on the node.

    Parsl's worker pool uses the ``nvidia-smi`` count to spread packed workers over devices,
    so both numbers matter for pinning (see :func:`accelerator_entries`).
    """

    devices: tuple[str, ...]
    nvidia_smi_count: int | None
    source: str


def _env_list(name: str) -> tuple[str, ...] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    value = value.strip()
    if value in ("", "-1", "NoDevFiles"):
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _run_quiet(cmd: Sequence[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.debug("%s failed: %s", cmd[0], err)
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_smi_count() -> int | None:
    """Number of GPUs ``nvidia-smi -L`` lists, or None when the command is absent or fails."""
    out = _run_quiet(["nvidia-smi", "-L"])
    if out is None:
        return None
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _rocm_smi_count() -> int | None:
    out = _run_quiet(["rocm-smi", "--showid", "--csv"])
    if out is None:
        return None
    return sum(1 for line in out.splitlines() if line.startswith("card"))


def detect_gpus() -> GpuInventory:
    """Find the GPUs this process may use.

    The visibility variables win over the tools because a batch system or the user may have
    restricted this process to a subset of the node's devices.
    """
    smi = nvidia_smi_count()
    cuda = _env_list("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        return GpuInventory(cuda, smi, "CUDA_VISIBLE_DEVICES")
    for name in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        amd = _env_list(name)
        if amd is not None:
            return GpuInventory(amd, smi, name)
    if smi:
        return GpuInventory(tuple(str(i) for i in range(smi)), smi, "nvidia-smi -L")
    rocm = _rocm_smi_count()
    if rocm:
        return GpuInventory(tuple(str(i) for i in range(rocm)), smi, "rocm-smi")
    return GpuInventory((), smi, "none found")


def accelerator_entries(gpus: Sequence[str], trials_per_gpu: int,
                        nvidia_smi_count: int | None) -> list[str]:
    """Entries for HTEX ``available_accelerators`` that pin worker i to the intended GPU.

    Parsl gives each worker one entry. Where ``nvidia-smi`` works it does not use the entry
    as-is but as ``int(entry) // (workers // nvidia_smi_count)`` (to spread packed workers
    over devices), and uses it unchanged when that division fails. The entries are chosen so
    that either reading yields the intended GPU; workers are interleaved over GPUs so that a
    partly filled pool still spreads out.

    Parameters
    ----------
    gpus
        Device ids as the worker environment should see them (``"0"``, ``"3"`` or a UUID).
    trials_per_gpu
        Workers sharing one GPU (packing small trials).
    nvidia_smi_count
        What ``nvidia-smi -L`` counts on the worker's node; None where it is absent (AMD).

    Raises
    ------
    SpecError
        When ``trials_per_gpu`` is below 1.
    """
    if trials_per_gpu < 1:
        raise SpecError("trials_per_gpu", trials_per_gpu, ">= 1", reason="out of range")
    wanted = [g for _ in range(trials_per_gpu) for g in gpus]
    pool = len(wanted)
    if not nvidia_smi_count or pool // nvidia_smi_count == 0:
        return wanted
    per = pool // nvidia_smi_count
    entries = []
    for g in wanted:
        try:
            entries.append(str(int(g) * per))
        except ValueError:  # a UUID: Parsl falls back to using it unchanged
            entries.append(g)
    return entries


def resolve_address(site: str, address: str | None, interface: str | None) -> str | None:
    """The address workers use to reach the interchange on the driver's host.

    An explicit address wins; an interface name (``ib0``, ``hsn0``) is looked up on this host;
    with neither, Parsl probes all of this host's addresses.

    Raises
    ------
    SpecError
        When the interface does not exist on this host (listing the ones that do).
    """
    if address:
        return address
    if not interface:
        return None
    from parsl.addresses import address_by_interface

    try:
        return address_by_interface(interface)
    except OSError:
        known = [name for _, name in socket.if_nameindex()]
        raise SpecError(f"{site}.interface", interface, known,
                        reason="no such network interface on this host "
                               "(or set -o address=IP)") from None


def _parsl_bin_dir() -> Path | None:
    """The directory of Parsl's entry scripts when they are not on PATH (an unactivated venv)."""
    if shutil.which("process_worker_pool.py") and shutil.which("interchange.py"):
        return None
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "process_worker_pool.py").exists():
        return bin_dir
    return None


def worker_path_init(worker_init: str) -> str:
    """``worker_init`` preceded by a PATH line when Parsl's scripts are not on PATH here.

    HTEX starts ``process_worker_pool.py`` by name; a driver run as ``.venv/bin/genodl``
    without activating the environment would otherwise start workers that cannot be found.
    The run directory and environment are on a shared file system on clusters, so the same
    path holds on the compute nodes.
    """
    bin_dir = _parsl_bin_dir()
    if bin_dir is None:
        return worker_init
    line = f'export PATH="{bin_dir}:$PATH"'
    return f"{line}\n{worker_init}" if worker_init else line


#: Consecutive failed pilot jobs after which a pilot-mode executor gives up.
PILOT_BLOCK_FAILURES = 3


def tolerant_block_errors(executor: Any, status: Mapping[str, Any]) -> None:
    """Block error handler of pilot-job executors: give up after consecutive failed blocks.

    Parsl's default handler puts the executor in a bad state as soon as every block it has
    started so far failed, which with one pilot job at a time means the first node failure:
    every remaining trial would then fail without running. Here the executor only gives up
    when the last :data:`PILOT_BLOCK_FAILURES` blocks all failed (a broken ``worker_init``
    or account, say), and otherwise starts a new pilot job.
    """
    from parsl.jobs.error_handlers import windowed_error_handler

    windowed_error_handler(executor, dict(status), threshold=PILOT_BLOCK_FAILURES)


#: Heartbeats of the local worker pool: a pool that hears nothing from the interchange for
#: ``threshold`` seconds stops its workers and exits (Parsl's defaults, 30 s and 120 s, let the
#: workers of a killed driver finish its queue for minutes).
LOCAL_HEARTBEAT_PERIOD_S = 5
LOCAL_HEARTBEAT_THRESHOLD_S = 30

#: Run before the interchange replaces it (``exec``): the kernel sends SIGTERM to it when the
#: driver that started it dies, however it dies (Linux ``PR_SET_PDEATHSIG``); a driver already
#: gone by then means exit at once. Elsewhere the interchange starts unguarded.
_INTERCHANGE_GUARD = """\
import ctypes, os, signal, sys
driver = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != driver:
    sys.exit(0)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def guarded_interchange_command(command: Sequence[str]) -> list[str]:
    """``command`` (how Parsl starts the interchange) so that it dies with this process.

    The interchange is a child of the driver; without this, a driver killed with SIGKILL leaves
    it running, and through it the worker pool keeps taking trials from the queue. Once it is
    gone, the pool misses its heartbeats and exits too (see :data:`LOCAL_HEARTBEAT_THRESHOLD_S`
    for the local pool; cluster pools use Parsl's longer default).
    """
    return [sys.executable, "-c", _INTERCHANGE_GUARD, str(os.getpid()), *command]


def htex_executor(label: str, provider: Any, run_dir: Path, *, accelerators: Sequence[str],
                  cpu_workers: int, address: str | None, encrypted: bool,
                  cores_per_worker: float = 1.0, pilot: bool = False,
                  heartbeat: tuple[int, int] | None = None):
    """One HighThroughputExecutor with workers pinned to ``accelerators`` (or CPU workers).

    With GPUs the worker count is the number of entries: ``cores_per_worker`` is made small so
    that Parsl's core-based limit never silently drops a GPU. ``pilot`` marks a provider that
    queues batch jobs: one failed pilot job then does not end the sweep (see
    :func:`tolerant_block_errors`). ``heartbeat`` is (period, threshold) in seconds (None:
    Parsl's defaults). The interchange always dies with the driver
    (:func:`guarded_interchange_command`).
    """
    from parsl.executors import HighThroughputExecutor

    kwargs: dict[str, Any] = {}
    if pilot:
        kwargs["block_error_handler"] = tolerant_block_errors
    if accelerators:
        kwargs.update(available_accelerators=list(accelerators),
                      max_workers_per_node=len(accelerators), cores_per_worker=1e-3)
    else:
        kwargs.update(max_workers_per_node=cpu_workers, cores_per_worker=cores_per_worker)
    if address is not None:
        kwargs["address"] = address
    if heartbeat is not None:
        kwargs["heartbeat_period"], kwargs["heartbeat_threshold"] = heartbeat
    bin_dir = _parsl_bin_dir()
    interchange = (["interchange.py"] if bin_dir is None
                   else [sys.executable, str(bin_dir / "interchange.py")])
    kwargs["interchange_launch_cmd"] = guarded_interchange_command(interchange)
    # Parsl writes the worker log folder unquoted into the worker pool's command line.
    logdir = script_path(str(run_dir / "runinfo" / "workers"), "--out")
    return HighThroughputExecutor(
        label=label,
        provider=provider,
        encrypted=encrypted,
        worker_logdir_root=logdir,
        **kwargs,
    )


def make_config(run_dir: Path, executor: Any, retries: int,
                retry_handler: Callable[..., float] | None):
    """The ``Config`` every site returns: one executor, run info in ``run_dir/runinfo``."""
    from parsl.config import Config

    return Config(executors=[executor], run_dir=str(run_dir / "runinfo"), retries=retries,
                  retry_handler=retry_handler, usage_tracking=0)


#: One device id of ``-o gpus``: an index, or an NVIDIA GPU/MIG UUID as ``nvidia-smi -L``
#: prints it (MIG ids may hold slashes in the older ``MIG-GPU-<uuid>/gi/ci`` form).
_DEVICE_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z][0-9A-Za-z/_-]*)$")
GPUS_ALLOWED = "auto | none | ids like 0,2"


def check_gpus(value: str, where: str = "local_htex.gpus") -> str:
    """Normalise ``-o gpus``: 'auto', 'none', or a comma-separated list of distinct ids.

    Checked when the options are read, so that a typo (``-o gpus=0;1``, ``-o gpus=all``)
    fails before anything starts instead of pinning workers to devices that do not exist.

    Raises
    ------
    SpecError
        Naming the option, the value and the accepted forms, for anything else or for an id
        given twice (two workers would share a device the user meant to be separate).
    """
    text = value.strip()
    if text.lower() in ("auto", "none"):
        return text.lower()
    ids = [v.strip() for v in text.split(",")]
    for device in ids:
        if not _DEVICE_ID.match(device):
            raise SpecError(where, value, GPUS_ALLOWED,
                            reason=f"{device!r} is not a device index or GPU-/MIG- UUID")
    duplicates = sorted({d for d in ids if ids.count(d) > 1})
    if duplicates:
        raise SpecError(where, value, GPUS_ALLOWED,
                        reason=f"device {duplicates[0]} is listed twice (use trials_per_gpu "
                               f"to share a device)")
    return ",".join(ids)


def _parse_gpus(value: str) -> GpuInventory:
    text = check_gpus(value)
    if text == "auto":
        return detect_gpus()
    if text == "none":
        return GpuInventory((), None, "-o gpus=none")
    return GpuInventory(tuple(text.split(",")), nvidia_smi_count(), "-o gpus")


def cpu_only_init(worker_init: str) -> str:
    """``worker_init`` preceded by a line that hides every GPU from the workers.

    CPU workers on a node with GPUs would otherwise all see them, and a trial whose device
    is 'auto' would put every worker on GPU 0.
    """
    line = "export CUDA_VISIBLE_DEVICES="
    return f"{line}\n{worker_init}" if worker_init else line


def _local_accelerators(o: dict[str, Any]) -> list[str]:
    inv = _parse_gpus(o["gpus"])
    return accelerator_entries(inv.devices, o["trials_per_gpu"], inv.nvidia_smi_count)


def _slots(o: dict[str, Any]) -> int:
    return len(_local_accelerators(o)) or o["cpu_workers"]


def default_cpu_workers() -> int:
    """Half the cores this process may use (its affinity mask, not the machine's count)."""
    return max(1, usable_cores() // 2)


OPTIONS = (
    SiteOption("gpus", "str", "auto",
               "GPUs to use: auto (detect), none, or ids like 0,1", check=check_gpus),
    SiteOption("trials_per_gpu", "int", 1, "workers sharing each GPU (packing small trials)",
               minimum=1),
    SiteOption("cpu_workers", "int", default_cpu_workers(),
               "worker processes when no GPU is used (default: half the usable cores)",
               minimum=1),
    SiteOption("address", "str", "127.0.0.1", "interchange address the workers connect to"),
    SiteOption("worker_init", "str", "", "shell line run before the workers start"),
    SiteOption("encrypted", "bool", True, "encrypt driver-worker traffic (keys in the run dir)"),
)


@register_site("local_htex", options=OPTIONS, slots=_slots,
               description="HighThroughputExecutor on this machine; one persistent worker per "
                           "detected GPU (or CPU workers)")
def config(run_dir: Path, *, retries: int = 0, retry_handler: Callable[..., float] | None = None,
           gpus: str, trials_per_gpu: int, cpu_workers: int, address: str, worker_init: str,
           encrypted: bool, **_: Any):
    """Build a Parsl ``Config``: HTEX + LocalProvider, accelerators from :func:`detect_gpus`."""
    from parsl.providers import LocalProvider

    inv = _parse_gpus(gpus)
    entries = accelerator_entries(inv.devices, trials_per_gpu, inv.nvidia_smi_count)
    log.info("local_htex: %s (%s) -> %s", inv.devices or "no GPU", inv.source,
             entries or f"{cpu_workers} CPU workers")
    init = worker_path_init(worker_init)
    provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1,
                             worker_init=init if entries else cpu_only_init(init))
    executor = htex_executor("local_htex", provider, run_dir, accelerators=entries,
                             cpu_workers=cpu_workers, address=address or None,
                             encrypted=encrypted,
                             heartbeat=(LOCAL_HEARTBEAT_PERIOD_S, LOCAL_HEARTBEAT_THRESHOLD_S))
    return make_config(run_dir, executor, retries, retry_handler)
