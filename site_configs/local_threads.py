"""``local_threads``: trials run as threads of the driver process (the default site).

No extra processes, no ports, nothing to clean up: the right choice on a laptop and for the
quick example. Threads share one Python interpreter, so CPU-bound PyTorch trials scale only as
far as PyTorch releases the GIL; more than a few threads rarely pay off on a small machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from site_configs import SiteOption, register_site, usable_cores


def default_threads() -> int:
    """Half the usable cores, at least 1 and at most 4.

    Each PyTorch trial already uses several intra-op threads; running more trials than half
    the cores mostly adds contention.
    """
    return max(1, min(4, usable_cores() // 2))


OPTIONS = (
    SiteOption("max_threads", "int", default_threads(),
               "trials run at once (default: half the cores, 1 to 4)", minimum=1),
)


@register_site("local_threads", options=OPTIONS, slots=lambda o: o["max_threads"],
               description="threads in the driver process; no GPUs pinned, nothing to start")
def config(run_dir: Path, *, retries: int = 0, retry_handler: Callable[..., float] | None = None,
           max_threads: int, **_: Any):
    """Build a Parsl ``Config`` with one ``ThreadPoolExecutor`` labelled ``local_threads``."""
    from parsl.config import Config
    from parsl.executors import ThreadPoolExecutor

    return Config(
        executors=[ThreadPoolExecutor(label="local_threads", max_threads=max_threads)],
        run_dir=str(run_dir / "runinfo"),
        retries=retries,
        retry_handler=retry_handler,
        usage_tracking=0,
    )
