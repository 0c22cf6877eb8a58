"""genodl_core: data, noise injection, models and one training trial (no workflow engine).

The workflow layer (``workflows``) wraps :func:`genodl_core.training.trial.run_trial` in Parsl
apps; this package never imports Parsl, so a trial runs the same in a notebook, a batch script,
an MPI rank or a Parsl worker.
"""

import os as _os
from importlib import metadata as _metadata

# Before torch loads its OpenMP runtime (it reads this once): threads that wait sleep instead
# of spinning, which on a shared or oversubscribed CPU made steps several times slower
# (docs/performance.md, CPU section). Results do not change; a value set by the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = _metadata.version("genodl")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
