"""CPU execution: intra-op threads that fit the cores a worker owns, and bf16 support.

Why threads are set per trial: torch starts one intra-op thread per core of the machine, not
per core this process may use. Several workers sharing a node (each pinned to its share of
the cores by the executor, or told its share through :data:`CPU_THREADS_ENV`) would then run
more threads than cores, and oversubscribed OpenMP threads spin and wait on each other. The
plan therefore records the thread count a trial runs with, and :func:`cpu_threads` applies it
for the trial and restores the previous setting afterwards (a persistent worker runs many
trials). fp32 results are bit-for-bit reproducible for a given thread count; a different count
can change the order of floating-point sums, hence the last bits (docs/performance.md).

Why bf16 is checked: without native bf16 instructions (AVX512-BF16 or AMX) torch emulates bf16
arithmetic on CPU, which is slower than fp32, so asking for it there is refused.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

import torch

from genodl_core.errors import SpecError

#: Intra-op threads per trial on CPU (a positive integer); unset: the cores this process owns.
CPU_THREADS_ENV = "GENODL_CPU_THREADS"

#: Set by the workflow executor in each worker: how many workers share the node.
WORKER_COUNT_ENV = "PARSL_WORKER_COUNT"

#: CPU flags (as in /proc/cpuinfo) that mean native bf16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def owned_cores() -> int:
    """The cores this process may run on (its CPU affinity), or all cores where unknown."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_threads(env: Mapping[str, str] | None = None) -> int:
    """Intra-op threads for a trial on this worker.

    :data:`CPU_THREADS_ENV` if set; otherwise the cores this process owns, shared among the
    workers of a node when the executor started several without pinning them
    (:data:`WORKER_COUNT_ENV` > 1 and an affinity of every core), and never more than torch's
    own setting (a process started with fewer threads, e.g. ``OMP_NUM_THREADS``, keeps them).

    Raises
    ------
    SpecError
        :data:`CPU_THREADS_ENV` holds something other than a positive integer.
    """
    env = os.environ if env is None else env
    raw = env.get(CPU_THREADS_ENV, "").strip()
    if raw:
        return _positive(CPU_THREADS_ENV, raw)
    owned = owned_cores()
    workers = env.get(WORKER_COUNT_ENV, "").strip()
    if workers.isdigit() and int(workers) > 1 and owned >= (os.cpu_count() or owned):
        owned = max(1, owned // int(workers))
    return max(1, min(owned, torch.get_num_threads()))


def _positive(name: str, raw: str) -> int:
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise SpecError(name, raw, "a positive integer (threads per trial) or unset",
                        reason="environment variable with an unknown value")
    return threads


#: ``default`` leaves the C library's allocator as it is (see :func:`retain_freed_memory`).
CPU_MALLOC_ENV = "GENODL_CPU_MALLOC"
_MALLOC_STATE: str | None = None


def retain_freed_memory(env: Mapping[str, str] | None = None) -> str:
    """Let glibc keep large freed blocks in the process instead of unmapping them.

    Why: a CPU training step allocates and frees activations and gradients of tens of MB.
    Above its mmap threshold glibc serves each with a fresh mapping and unmaps it on free, so
    the kernel faults in and zeroes those pages again on every step: 13-15% of a CPU trial's
    time went to the kernel. Raising the mmap and trim thresholds keeps the blocks for reuse
    (the worker's resident memory then stays at its peak). Process-wide, set once when the
    first CPU trial starts; :data:`CPU_MALLOC_ENV` = ``default`` opts out.

    Returns the state the trial's record names: ``retain``, ``default`` (opted out) or
    ``unavailable`` (not glibc).
    """
    global _MALLOC_STATE
    if _MALLOC_STATE is not None:
        return _MALLOC_STATE
    env = os.environ if env is None else env
    choice = env.get(CPU_MALLOC_ENV, "").strip().lower() or "retain"
    if choice not in ("retain", "default"):
        raise SpecError(CPU_MALLOC_ENV, choice, ["retain", "default"],
                        reason="environment variable with an unknown value")
    if choice == "default":
        _MALLOC_STATE = "default"
        return _MALLOC_STATE
    _MALLOC_STATE = "unavailable"
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        # mallopt takes a C int: 1 GiB, the largest power of two it holds.
        if (libc.mallopt(m_mmap_threshold, 1 << 30) == 1
                and libc.mallopt(m_trim_threshold, 1 << 30) == 1):
            _MALLOC_STATE = "retain"
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to change
        pass
    return _MALLOC_STATE


def malloc_state() -> str | None:
    """What :func:`retain_freed_memory` did in this process (None: no CPU trial yet)."""
    return _MALLOC_STATE


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged); restore afterwards."""
    if threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (empty where there is no such file)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_supported(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (oneDNN says so, or its flags list it)."""
    if flags is None:
        try:
            if torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return True
        except (AttributeError, RuntimeError):  # a build without oneDNN
            pass
        flags = cpu_flags()
    return any(flag in flags for flag in BF16_FLAGS)


def check_bf16(supported: bool | None = None) -> None:
    """Refuse bf16 on a CPU without native bf16 arithmetic.

    Raises
    ------
    SpecError
        The CPU has neither AVX512-BF16 nor AMX: bf16 would be emulated, slower than fp32.
    """
    if not (bf16_supported() if supported is None else supported):
        raise SpecError("precision", "bf16", ["fp32", "auto"],
                        reason=f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no "
                               f"native bf16 arithmetic (none of {list(BF16_FLAGS)}); bf16 "
                               "would be emulated and slower than fp32")


__all__ = ["CPU_THREADS_ENV", "WORKER_COUNT_ENV", "CPU_MALLOC_ENV", "retain_freed_memory",
           "malloc_state",
           "BF16_FLAGS", "owned_cores", "worker_threads", "cpu_threads",
           "cpu_flags", "bf16_supported", "check_bf16"]
