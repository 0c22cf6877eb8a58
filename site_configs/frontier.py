"""``frontier``: a Frontier-like machine (Slurm, AMD MI250X: 8 GCDs per node, Slingshot ``hsn0``).

Each MI250X module shows up as two GPUs (GCDs), so a node offers 8 devices; Parsl pins a worker
to one by setting ``ROCR_VISIBLE_DEVICES`` (and ``CUDA_VISIBLE_DEVICES``) to its entry. Nodes
keep 8 of their 64 cores for the system, hence 56 cores for the workers. The ``account``
option is a placeholder that must be set (``-o account=ABC123``); load the ROCm build of
PyTorch through ``worker_init`` (e.g. ``module load rocm; source .venv/bin/activate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from site_configs import register_site
from site_configs.slurm import build_slurm_config, slurm_options, slurm_slots

GPUS_PER_NODE = 8
CORES_PER_NODE = 56


@register_site("frontier", scheduler="slurm", slots=slurm_slots,
               options=slurm_options(partition="batch", gpus_per_node=GPUS_PER_NODE,
                                     cores_per_node=CORES_PER_NODE, interface="hsn0",
                                     account_required=True),
               description="Frontier-like Slurm system: AMD MI250X, 8 GCDs/node, hsn0 "
                           "(account required)")
def config(run_dir: Path, *, retries: int = 0, retry_handler: Callable[..., float] | None = None,
           **options: Any):
    """Build the Frontier-like ``Config`` (one worker per GCD by default)."""
    return build_slurm_config("frontier", run_dir, retries=retries, retry_handler=retry_handler,
                              vendor="amd", **options)
