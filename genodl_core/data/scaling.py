"""Per-feature scaling of a :class:`~genodl_core.data.types.Dataset`, fitted on training data.

Two methods are offered, one per model family of the project:

``"maxabs"`` (NT3)
    Every column is divided by its largest absolute value, so non-negative expression values
    land in ``[0, 1]`` and exact zeros stay zero (the sparsity that correlated label noise keys
    on survives). A column that is zero everywhere keeps scale 1 instead of dividing by zero.
``"standard"`` (D-GEX)
    Every column becomes ``(x - mean) / std`` (population std). A constant column keeps scale 1,
    so it becomes all zeros rather than NaN. Regression targets are standardised the same way,
    each target gene with its own statistics.
``"none"``
    The arrays are passed through untouched (useful for data that is already normalised).

Where the statistics come from (``fit_on``):

``"train"`` (default)
    Only the training split. Validation and test data never influence the scale, so a model's
    validation score is not flattered by information from the data it is judged on.
``"train+test"``
    Every split the dataset holds (train, validation and, when present, test) pooled. This
    reproduces CANDLE's NT3 preprocessing, which fits its MaxAbs scaler on the train and test
    files together; offered only to compare with published numbers.

Scaling never modifies its input: new float32 arrays are returned and the dataset's ``info``
gains a ``"scaling"`` entry describing what was done. The fitted statistics themselves are
available through :func:`fit_dataset_scalers` (e.g. to map standardised predictions back).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from genodl_core.data.types import Dataset
from genodl_core.errors import SpecError

log = logging.getLogger(__name__)

Method = Literal["maxabs", "standard", "none"]
FitOn = Literal["train", "train+test"]

METHODS: tuple[str, ...] = ("maxabs", "standard", "none")
FIT_ON: tuple[str, ...] = ("train", "train+test")

#: Cells per block when computing statistics (float64: 32 MiB), bounding temporary memory.
_BLOCK_CELLS = 1 << 22


@dataclass(frozen=True)
class Scaler:
    """Fitted per-column statistics: ``transform(x) = (x - offset) / scale``.

    ``offset`` and ``scale`` are float32 vectors with one entry per column; ``scale`` is never
    zero. ``n_fit_rows`` is how many rows the statistics were computed from, and
    ``n_constant_columns`` how many columns had no spread (scale forced to 1).
    """

    method: Method
    offset: np.ndarray
    scale: np.ndarray
    n_fit_rows: int
    n_constant_columns: int

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Return a new float32 array ``(x - offset) / scale``; ``x`` is not modified.

        Raises
        ------
        ValueError
            If ``x`` does not have one column per fitted column (a programming error: the
            statistics belong to a different matrix).
        """
        x = _as_2d(x)
        if x.shape[1] != self.scale.shape[0]:
            raise ValueError(f"scaler was fitted on {self.scale.shape[0]} columns, got {x.shape[1]}")
        out = np.array(x, dtype=np.float32, copy=True)
        if self.method == "standard":
            out -= self.offset
        out /= self.scale
        return out

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Map scaled values back to the original units (new float32 array)."""
        x = _as_2d(x)
        out = np.array(x, dtype=np.float32, copy=True)
        out *= self.scale
        if self.method == "standard":
            out += self.offset
        return out


@dataclass(frozen=True)
class DatasetScalers:
    """The scalers fitted for one dataset: features always, targets only for regression."""

    method: Method
    fit_on: FitOn
    x: Scaler | None
    y: Scaler | None = None


def fit_scaler(blocks: list[np.ndarray], method: Method) -> Scaler:
    """Fit per-column statistics over the rows of all ``blocks`` taken together.

    Statistics are accumulated in float64 over row blocks, so a wide float32 matrix (e.g. a
    memory-mapped 1,120 x 60,483 NT3 file) is never copied whole.

    Parameters
    ----------
    blocks
        One or more 2-D arrays with the same number of columns (e.g. train, or train and test).
    method
        ``"maxabs"`` or ``"standard"``.

    Raises
    ------
    SpecError
        If ``method`` is not a fittable method.
    ValueError
        If the blocks are empty or disagree on their number of columns.
    """
    if method not in ("maxabs", "standard"):
        raise SpecError("data.scaling", method, ["maxabs", "standard"], reason="not a fittable method")
    blocks = [_as_2d(b) for b in blocks]
    if not blocks:
        raise ValueError("no data to fit a scaler on")
    n_cols = blocks[0].shape[1]
    if any(b.shape[1] != n_cols for b in blocks):
        raise ValueError(f"blocks disagree on column count: {[b.shape[1] for b in blocks]}")
    n_rows = sum(b.shape[0] for b in blocks)
    if n_rows == 0:
        raise ValueError("cannot fit a scaler on zero rows")

    if method == "maxabs":
        peak = np.zeros(n_cols, dtype=np.float64)
        for chunk in _row_chunks(blocks):
            np.maximum(peak, np.abs(chunk).max(axis=0), out=peak)
        constant = peak == 0
        scale = np.where(constant, 1.0, peak)
        offset = np.zeros(n_cols, dtype=np.float64)
    else:
        total = np.zeros(n_cols, dtype=np.float64)
        for chunk in _row_chunks(blocks):
            total += chunk.sum(axis=0, dtype=np.float64)
        mean = total / n_rows
        # Two passes (sum of squared deviations) rather than E[x^2]-E[x]^2: no cancellation.
        sq_dev = np.zeros(n_cols, dtype=np.float64)
        for chunk in _row_chunks(blocks):
            dev = chunk.astype(np.float64) - mean
            sq_dev += np.einsum("ij,ij->j", dev, dev)
        std = np.sqrt(sq_dev / n_rows)
        # float32 transform: a spread below float32 resolution of the mean is no spread at all.
        constant = std <= np.abs(mean) * np.finfo(np.float32).eps
        scale = np.where(constant, 1.0, std)
        offset = mean
    return Scaler(
        method=method,
        offset=offset.astype(np.float32),
        scale=scale.astype(np.float32),
        n_fit_rows=int(n_rows),
        n_constant_columns=int(constant.sum()),
    )


def fit_dataset_scalers(ds: Dataset, method: str, fit_on: str = "train", *,
                        scale_y: bool | None = None) -> DatasetScalers:
    """Fit the scalers for ``ds`` without transforming anything.

    Parameters
    ----------
    ds
        The raw dataset.
    method
        ``"maxabs"``, ``"standard"`` or ``"none"``.
    fit_on
        ``"train"`` or ``"train+test"`` (every split pooled; CANDLE's leaky behaviour).
    scale_y
        Whether to standardise regression targets too. ``None`` (default) means: yes for a
        regression dataset scaled with ``"standard"`` (D-GEX standardises every gene, inputs and
        targets alike), otherwise no. Class labels are never scaled.

    Raises
    ------
    SpecError
        If ``method`` or ``fit_on`` is unknown, or targets are to be scaled on a
        classification dataset.
    """
    if method not in METHODS:
        raise SpecError("data.scaling", method, list(METHODS), reason="unknown scaling method")
    if fit_on not in FIT_ON:
        raise SpecError("data.scale_fit", fit_on, list(FIT_ON), reason="unknown choice")
    if scale_y is None:
        scale_y = ds.task == "regression" and method == "standard"
    if scale_y and ds.task != "regression":
        raise SpecError("scale_y", scale_y, [False], reason="class labels cannot be scaled")
    if method == "none":
        return DatasetScalers(method="none", fit_on=fit_on, x=None, y=None)

    def pooled(train: np.ndarray, val: np.ndarray, test: np.ndarray | None) -> list[np.ndarray]:
        if fit_on == "train":
            return [train]
        return [train, val] + ([test] if test is not None else [])

    x_scaler = fit_scaler(pooled(ds.x_train, ds.x_val, ds.x_test), method)
    y_scaler = None
    if scale_y:
        y_scaler = fit_scaler(pooled(ds.y_train, ds.y_val, ds.y_test), method)
    return DatasetScalers(method=method, fit_on=fit_on, x=x_scaler, y=y_scaler)


def apply_scalers(ds: Dataset, scalers: DatasetScalers) -> Dataset:
    """Return a new dataset with every split transformed by ``scalers`` (``ds`` is untouched)."""
    facts: dict[str, object] = {"method": scalers.method, "fit_on": scalers.fit_on}
    changes: dict[str, object] = {}
    if scalers.x is not None:
        changes.update(x_train=scalers.x.transform(ds.x_train), x_val=scalers.x.transform(ds.x_val))
        if ds.x_test is not None:
            changes["x_test"] = scalers.x.transform(ds.x_test)
        facts.update(n_fit_rows=scalers.x.n_fit_rows,
                     n_constant_columns=scalers.x.n_constant_columns)
    facts["scaled_targets"] = scalers.y is not None
    if scalers.y is not None:
        was_1d = ds.y_train.ndim == 1
        def ty(y: np.ndarray) -> np.ndarray:
            out = scalers.y.transform(y)
            return out[:, 0] if was_1d else out
        changes.update(y_train=ty(ds.y_train), y_val=ty(ds.y_val))
        if ds.y_test is not None:
            changes["y_test"] = ty(ds.y_test)
        facts["n_constant_targets"] = scalers.y.n_constant_columns
    if scalers.fit_on == "train+test" and scalers.method != "none":
        log.warning("scaling statistics fitted on train AND validation/test data (CANDLE's "
                    "behaviour): validation scores are not independent of the scale")
    return ds.replace(info={**ds.info, "scaling": facts}, **changes)


def scale_dataset(ds: Dataset, method: str, fit_on: str = "train", *,
                  scale_y: bool | None = None) -> Dataset:
    """Fit scalers on ``ds`` and return a new, scaled dataset.

    This is what the trial runner calls with a data source's ``scaling`` and ``scale_fit``
    parameters, after the source returned raw values.

    Parameters
    ----------
    ds
        Raw dataset; never modified (memory-mapped, read-only arrays are fine).
    method
        ``"maxabs"`` (NT3), ``"standard"`` (D-GEX) or ``"none"``.
    fit_on
        ``"train"`` (default) or ``"train+test"`` (CANDLE's leak, for comparison only).
    scale_y
        See :func:`fit_dataset_scalers`.

    Returns
    -------
    Dataset
        New float32 arrays (for ``"none"``: the same arrays) and ``info["scaling"]`` holding
        method, fit_on, number of rows the statistics came from and constant columns.

    Raises
    ------
    SpecError
        If ``method`` or ``fit_on`` is not one of the allowed values.
    """
    return apply_scalers(ds, fit_dataset_scalers(ds, method, fit_on, scale_y=scale_y))


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(-1, 1) if a.ndim == 1 else a


def _row_chunks(blocks: list[np.ndarray]):
    for block in blocks:
        rows = max(1, _BLOCK_CELLS // max(1, block.shape[1]))
        for start in range(0, block.shape[0], rows):
            yield block[start:start + rows]


__all__ = ["Scaler", "DatasetScalers", "fit_scaler", "fit_dataset_scalers", "apply_scalers",
           "scale_dataset", "METHODS", "FIT_ON"]
