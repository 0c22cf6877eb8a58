"""In-memory data containers passed between the loading, noise and training stages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Task = Literal["classification", "regression", "multilabel"]

#: Upper bounds of the sizes a generating source accepts: far above any real data set (NT3 has
#: 1,400 samples x 60,483 genes, the D-GEX paper 111,009 x 10,463), far below what would only
#: end in running out of memory after minutes.
MAX_SAMPLES = 10_000_000
MAX_GENES = 1_000_000
#: Cells (samples x columns) of all splits together: 2**32 float32 values are 16 GiB.
MAX_CELLS = 2**32


def check_cells(where: str, name: str, value: int, n_rows: int, n_columns: int) -> None:
    """Refuse sizes whose matrix would not fit any sensible memory, naming the field.

    Raises
    ------
    SpecError
        When ``n_rows x n_columns`` exceeds :data:`MAX_CELLS`, naming ``name`` (the size to
        reduce), the cell count and the memory it would take.
    """
    cells = n_rows * n_columns
    if cells > MAX_CELLS:
        from genodl_core.errors import SpecError

        path = f"{where}.{name}" if where else name
        raise SpecError(path, value, f"sizes giving at most {MAX_CELLS:,} matrix cells",
                        reason=f"{n_rows:,} samples x {n_columns:,} columns are {cells:,} cells "
                               f"({cells * 4 / 2**30:,.0f} GiB of float32)")


@dataclass(frozen=True)
class Dataset:
    """A train/validation(/test) split ready for one trial.

    ``x_*`` are float32 ``[n_samples, n_features]``. For classification ``y_*`` are int64 class
    indices ``[n_samples]`` in ``range(n_classes)``; for regression float32 ``[n_samples,
    n_targets]``. A source returns its own splits; NT3 sources have none beyond their training
    and test files and hand the test file over as ``x_val`` (``x_test`` None). The trial's
    ``data.validation`` rule (:mod:`genodl_core.data.validation`) then chooses the validation
    split before scaling: by default it carves one from the training rows and the former
    ``x_val`` becomes ``x_test``, an untouched test split; with ``"test"`` the test file stays
    the validation split, as in CANDLE. ``info["validation"]`` records what was done.
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
