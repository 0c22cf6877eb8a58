"""In-memory data containers passed between the loading, noise and training stages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Dataset:
    """A train/validation(/test) split ready for one trial.

    ``x_*`` are float32 ``[n_samples, n_features]``. For classification ``y_*`` are int64 class
    indices ``[n_samples]`` in ``range(n_classes)``; for regression float32 ``[n_samples,
    n_targets]``. NT3 has no separate test split: CANDLE validates on its test file, so we do too.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: Task
    n_classes: int | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    feature_ids: np.ndarray | None = None
    target_ids: np.ndarray | None = None
    #: Provenance of the data (file paths, sizes, cache keys, generator seed); goes in the record.
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def replace(self, **changes: Any) -> "Dataset":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainArrays:
    """The training split as seen by noise steps (which never touch validation or test data)."""

    x: np.ndarray
    y: np.ndarray
    n_classes: int | None = None


@dataclass(frozen=True)
class NoiseOutcome:
    """What a noise step returns: NEW arrays and a record of what it did.

    ``record`` holds JSON-ready scalars (e.g. ``realised_fraction``) and numpy arrays (e.g. the
    ``flip_mask``); arrays are stored beside the trial result, scalars inside it.
    """

    arrays: TrainArrays
    record: dict[str, Any]
