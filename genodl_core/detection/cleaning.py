"""Cleaning (the DAC protocol): drop a detector's flagged samples and train the base model again.

A cleaning trial is an ordinary trial: its spec is the source trial's spec (same data, seed and
noise steps, so the same labels are flipped), with the plain base model and one more noise
step, ``drop_flagged``, that removes the training samples the source's detector flagged. The
step names the source trial, the detector, the source's ``arrays.npz`` and the SHA-256 of the
flagged mask, so the cleaning trial's id changes whenever the flags do, and a flag file that
changed after the cleaning trial was planned fails the trial rather than silently cleaning
with other flags.

The stage's result is the share of the accuracy the noise cost that cleaning recovered::

    recovered = (cleaned - noisy) / (clean - noisy)

with the clean model's accuracy (the same setting without label noise), the noisy source's and
the cleaned trial's (:func:`recovered_share`; NaN when the noise cost nothing).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from genodl_core.data.types import NoiseOutcome, TrainArrays
from genodl_core.errors import DataError, SpecError
from genodl_core.registry import NOISES

log = logging.getLogger(__name__)

#: Name of the cleaning noise step (trials holding it never train packed: sizes differ).
DROP_STEP = "drop_flagged"
#: Detectors a cleaning stage may name (those with a flag rule).
CLEANING_DETECTORS = ("loss", "aum", "abstain_final", "abstain_fraction",
                      "confident_learning")


@dataclass(frozen=True)
class DropFlaggedParams:
    """Parameters of ``drop_flagged``.

    Attributes
    ----------
    source_trial
        Id of the trial whose flags are used.
    detector
        Which of its detectors' flagged set to drop (one of :data:`CLEANING_DETECTORS`).
    flags
        Path of the source trial's ``arrays.npz``.
    flags_sha256
        SHA-256 of the flagged mask (as uint8 bytes) when the cleaning trial was planned.
    source_model
        The source trial's model variant (e.g. ``base`` or ``abstaining``): the flags of an
        abstaining model and of the base model are different experiments, though both
        cleaning trials retrain the same base model.
    """

    source_trial: str = ""
    detector: str = "loss"
    flags: str = ""
    flags_sha256: str = ""
    source_model: str = ""

    #: The summary's noise kind names the detector and the flagging model: cleaning by
    #: different detectors, or with the flags of different models, is never one group
    #: (:func:`genodl_core.results.summary.kind_label`).
    kind_fields: ClassVar[tuple[str, ...]] = ("detector", "source_model")

    def validate(self, where: str) -> None:
        if self.detector not in CLEANING_DETECTORS:
            raise SpecError(f"{where}.detector", self.detector, list(CLEANING_DETECTORS),
                            reason="unknown detector")
        for name in ("source_trial", "flags", "flags_sha256"):
            if not getattr(self, name):
                raise SpecError(f"{where}.{name}", getattr(self, name), "a non-empty string",
                                reason="missing (cleaning trials are planned by the sweep)")


def mask_sha256(mask: np.ndarray) -> str:
    """The fingerprint of a flagged mask: SHA-256 of its uint8 bytes."""
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def read_flags(path: str | Path, detector: str) -> np.ndarray:
    """The ``detect_<detector>_flagged`` mask of a trial's arrays file.

    Raises
    ------
    DataError
        The file is missing or holds no flags of that detector (the message lists those it has).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"drop_flagged: the flag file {path} does not exist (was the source "
                        "trial's record removed?)")
    key = f"detect_{detector}_flagged"
    with np.load(path, allow_pickle=False) as npz:
        if key not in npz.files:
            have = sorted(k[len("detect_"):-len("_flagged")] for k in npz.files
                          if k.startswith("detect_") and k.endswith("_flagged"))
            raise DataError(f"drop_flagged: {path} holds no flags of detector {detector!r}; "
                            f"it has {have}")
        return np.asarray(npz[key], dtype=bool)


@NOISES.register(DROP_STEP, params=DropFlaggedParams, tasks=("classification",),
                 resizes=True)
def drop_flagged(arrays: TrainArrays, params: DropFlaggedParams,
                 rng: np.random.Generator) -> NoiseOutcome:
    """Remove the training samples a source trial's detector flagged (no randomness).

    Raises
    ------
    DataError
        The flags changed since the trial was planned, or cover another number of samples.
    """
    flags = read_flags(params.flags, params.detector)
    if mask_sha256(flags) != params.flags_sha256:
        raise DataError(f"drop_flagged: the {params.detector} flags in {params.flags} changed "
                        f"since this cleaning trial was planned (sha256 {mask_sha256(flags)}, "
                        f"expected {params.flags_sha256}); plan the cleaning stage again")
    if flags.shape != (len(arrays.y),):
        raise DataError(f"drop_flagged: {flags.size} flags for {len(arrays.y)} training samples; "
                        "the source trial trained on other data")
    kept = ~flags
    if not kept.any():
        raise DataError(f"drop_flagged: detector {params.detector!r} flagged every training "
                        "sample; nothing is left to train on")
    record = {"source_trial": params.source_trial, "detector": params.detector,
              "n_dropped": int(flags.sum()), "kept_mask": kept}
    log.info("drop_flagged: dropped %d of %d samples flagged by %s in trial %s",
             int(flags.sum()), flags.size, params.detector, params.source_trial)
    return NoiseOutcome(TrainArrays(arrays.x[kept], arrays.y[kept], arrays.n_classes), record)


def cleaning_spec(source: Mapping[str, Any], trial_dir: str | Path, detector: str,
                  arrays_file: str = "arrays.npz") -> dict[str, Any]:
    """The spec of the cleaning trial of one source trial and detector.

    The source's model becomes its plain variant (:func:`as_base_model`: DAC retrains a plain
    cross-entropy model) and trains no confident-learning fold models; everything else is kept.
    """
    path = Path(trial_dir) / arrays_file
    model = source.get("model", {})
    spec = as_base_model(source)
    if spec.get("train", {}).get("detect_folds"):
        # The retrained model is judged by its test accuracy; its own fold models would only
        # double the stage's cost (and fail where the flags emptied a class of a fold).
        spec["train"]["detect_folds"] = 0
    spec["noise"] = list(spec.get("noise", [])) + [{
        "kind": DROP_STEP, "source_trial": Path(trial_dir).name, "detector": detector,
        "flags": str(path.resolve()), "flags_sha256": mask_sha256(read_flags(path, detector)),
        "source_model": str(model.get("variant", model.get("name", "")))}]
    return spec


def as_base_model(source: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a resolved spec whose model is the plain variant, with the abstention-only
    parameters at their defaults: an abstaining source under any controller maps to the very
    spec (and trial id) of the sweep's base model, which the cleaning table compares with."""
    from genodl_core.training.abstention import AbstentionParams

    spec = copy.deepcopy(dict(source))
    spec.pop("trial_id", None)
    model = spec.get("model", {})
    if "variant" in model:
        for field in dataclasses.fields(AbstentionParams):
            if field.name in model:
                model[field.name] = field.default
        model["variant"] = "base"
    return spec


def recovered_share(clean: float, noisy: float, cleaned: float) -> float:
    """``(cleaned - noisy) / (clean - noisy)``: 1 = all the accuracy the noise cost is back,
    0 = none, negative = cleaning made it worse; NaN when the noise cost nothing."""
    cost = clean - noisy
    if not math.isfinite(cost) or cost <= 0 or not math.isfinite(cleaned):
        return math.nan
    return (cleaned - noisy) / cost


__all__ = ["DROP_STEP", "CLEANING_DETECTORS", "DropFlaggedParams", "drop_flagged",
           "cleaning_spec", "as_base_model", "mask_sha256", "read_flags", "recovered_share"]
