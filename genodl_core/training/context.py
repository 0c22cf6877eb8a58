"""What the trial runner hands to a model's ``fit`` and what it gets back.

Models are registered in :data:`genodl_core.registry.MODELS` as ``fit(ctx) -> FitOutcome``.
The runner owns data loading, scaling, noise and the record; a model owns only its training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from genodl_core.data.types import Dataset
from genodl_core.errors import TrialTimeout
from genodl_core.spec import TrialSpec


@dataclass
class FitContext:
    """Inputs of one model fit.

    ``dataset`` is already scaled and noised (training split only). ``device`` is a torch device
    string ('cpu', 'cuda'); ``precision`` the resolved one ('fp32', 'tf32', 'bf16').
    ``on_epoch(epoch, metrics)`` must be called after every epoch (progress, logging).
    """

    spec: TrialSpec
    dataset: Dataset
    device: str
    precision: str
    log: logging.Logger
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None
    #: time.monotonic() value after which training must stop (None = no limit).
    deadline: float | None = None

    def check_deadline(self) -> None:
        """Raise :class:`TrialTimeout` once the trial's time budget is spent."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TrialTimeout(
                f"train.timeout_s={self.spec.train.timeout_s} exceeded; raise it or train fewer epochs")


@dataclass
class FitOutcome:
    """Outputs of one model fit.

    ``curves`` maps a metric name to one value per epoch (all the same length); ``final`` maps
    metric names to floats (the state the model ends in, or the selected epoch's); ``arrays``
    holds large outputs (per-gene errors, ids); ``extra`` small JSON-ready facts.
    """

    curves: dict[str, list[float]]
    final: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
