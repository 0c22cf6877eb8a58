"""Imports every module that registers a data source, noise step or model.

Registration happens at import; this one list keeps the registries complete wherever a spec is
loaded, without sys.path tricks or entry-point scanning. The registries import this module on
their first lookup that needs it (see :mod:`genodl_core.registry`); nothing below the models
imports it.
"""

# isort: off
# NT3 (tumour/normal 1D-CNN, seed 000) and the noise every classifier shares
from genodl_core.data import synthetic_nt3, nt3_csv  # noqa: F401
from genodl_core.noise import labels, features, regression  # noqa: F401
from genodl_core.models import nt3  # noqa: F401
# D-GEX (expression from landmarks, seed 004) and its closed-form baselines
from genodl_core.data import synthetic_dgex, dgex_source  # noqa: F401
from genodl_core.models import dgex, baselines  # noqa: F401
# Gene-pair CNN (CNNC, seed 001)
from genodl_core.data import cnnc_synthetic, cnnc_readers  # noqa: F401
from genodl_core.noise import pairs  # noqa: F401
from genodl_core.models import cnnc  # noqa: F401
# Histone-mark CNN and DeepChrome (seed 002)
from genodl_core.data import histone_synthetic, histone_readers  # noqa: F401
from genodl_core.noise import histone as histone_noise  # noqa: F401
from genodl_core.models import histone  # noqa: F401
# DeepSEA-style DNA classifiers (seed 003)
from genodl_core.data import dna_synthetic, dna_files  # noqa: F401
from genodl_core.noise import dna  # noqa: F401
from genodl_core.models import deepsea  # noqa: F401
# The cleaning stage's noise step (noisy-label detection)
from genodl_core.detection import cleaning  # noqa: F401
