"""``perlmutter``: a Perlmutter-like machine (Slurm, 4 NVIDIA A100 per node, ``-C gpu``).

GPU nodes are chosen by the ``gpu`` constraint and charged to a GPU account (``-o
account=m1234_g``, a placeholder that must be set); ``qos`` is ``regular`` by default
(``debug`` for short tests). Workers reach the driver over the Slingshot interface ``hsn0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from site_configs import register_site
from site_configs.slurm import build_slurm_config, slurm_options, slurm_slots

GPUS_PER_NODE = 4
CORES_PER_NODE = 64


@register_site("perlmutter", scheduler="slurm", slots=slurm_slots,
               options=slurm_options(constraint="gpu", qos="regular",
                                     gpus_per_node=GPUS_PER_NODE, cores_per_node=CORES_PER_NODE,
                                     interface="hsn0", account_required=True),
               description="Perlmutter-like Slurm system: 4 A100/node, constraint gpu, qos "
                           "regular (account required)")
def config(run_dir: Path, *, retries: int = 0, retry_handler: Callable[..., float] | None = None,
           **options: Any):
    """Build the Perlmutter-like ``Config`` (one worker per A100 by default)."""
    return build_slurm_config("perlmutter", run_dir, retries=retries,
                              retry_handler=retry_handler, vendor="nvidia", **options)
