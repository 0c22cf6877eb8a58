"""Detectors built on the training signals, and their scores in a trial's record.

Each detector turns a signal (:mod:`genodl_core.detection.signals`) into a suspicion score
(higher = more likely flipped) and a flagged set by a rule that needs no knowledge of the noise:

==================  =================================  ===================================
detector            score                              flagged when
==================  =================================  ===================================
loss                mean CE over the last epochs       CE > ln 2 (p(assigned label) < 1/2)
aum                 minus the area under the margin    AUM < 0 (another class wins on average)
abstain_final       abstained in the final epoch       abstained in the final epoch
abstain_fraction    share of epochs abstained          abstained in at least half the epochs
confident_learning  1 - out-of-sample p(assigned)      cleanlab's label issues (K folds)
==================  =================================  ===================================

:func:`attach` scores every detector whose signal a trial collected against the trial's true
flip mask (the union of its noise steps' ``flip_mask``, restricted to the samples a
resizing step such as ``drop_flagged`` kept) and adds ``detect_<detector>_<metric>`` finals,
``detect_<detector>_flagged`` arrays (what a cleaning trial drops) and a ``detection`` note.
For correlated flips the metrics are also given within the eligible samples
(``detect_<d>_eligible_<m>``) and the others (``detect_<d>_ineligible_<m>``). Multi-label
trials (``[n, T]`` signals and flip masks) are scored over every (sample, target) label and per
target (``detect_<d>_auroc_per_target``, and its mean over targets with flips,
``detect_<d>_target_mean_auroc``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from genodl_core.detection.scores import auroc, score_detector

#: detector -> (signal array, score from signal, flag rule on the signal or the name of the
#: array holding the flags).
DETECTORS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray],
                           Callable[[np.ndarray], np.ndarray] | str]] = {
    "loss": ("signal_loss", lambda s: s, lambda s: s > math.log(2.0)),
    "aum": ("signal_aum", lambda s: -s, lambda s: s < 0.0),
    "abstain_final": ("signal_abstain_final", lambda s: s, lambda s: s > 0.5),
    "abstain_fraction": ("signal_abstain_fraction", lambda s: s, lambda s: s >= 0.5),
    # Self-confidence ranking; flags: cleanlab's label issues (genodl_core.detection.folds).
    "confident_learning": ("signal_cl_self_confidence", lambda s: 1.0 - s, "signal_cl_issues"),
}

#: Metrics reported within the eligible / ineligible samples of correlated flips.
SUBSET_METRICS = ("auroc", "auprc", "precision", "recall", "flagged_share")


def true_masks(noise_records: Sequence[Mapping[str, Any]], n: int
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The flip mask and eligible mask (or None) of the ``n`` training samples a trial kept.

    Returns ``(None, None)`` when no noise step recorded a flip mask.
    """
    flips: np.ndarray | None = None
    eligible: np.ndarray | None = None
    for record in noise_records:
        if "flip_mask" in record:
            mask = np.asarray(record["flip_mask"], dtype=bool)
            flips = mask if flips is None else flips | mask
        if "eligible_mask" in record:
            mask = np.asarray(record["eligible_mask"], dtype=bool)
            eligible = mask if eligible is None else eligible | mask
        if "kept_mask" in record:
            kept = np.asarray(record["kept_mask"], dtype=bool)
            flips = None if flips is None else flips[kept]
            eligible = None if eligible is None else eligible[kept]
    if flips is not None and len(flips) != n:
        raise ValueError(f"the recorded flip mask covers {len(flips)} samples but training had "
                         f"{n}; a noise step changed the sample count without a kept_mask")
    return flips, eligible


def detector_scores(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """detector -> (suspicion scores, flagged mask) for every signal present in ``arrays``."""
    out = {}
    for name, (signal, score, flag) in DETECTORS.items():
        if signal in arrays:
            values = np.asarray(arrays[signal], dtype=np.float64)
            flags = (np.asarray(arrays[flag], dtype=bool) if isinstance(flag, str)
                     else flag(values))
            out[name] = (score(values), flags)
    return out


def attach(final: dict[str, float], arrays: dict[str, np.ndarray], extra: dict[str, Any],
           noise_records: Sequence[Mapping[str, Any]]) -> None:
    """Add the detection finals, flagged arrays and note of one trial (in place); nothing when
    the trial collected no signal."""
    detectors = detector_scores(arrays)
    if not detectors:
        return
    shape = next(iter(detectors.values()))[0].shape
    n = shape[0]
    flips, eligible = true_masks(noise_records, n)
    truth = np.zeros(shape, dtype=bool) if flips is None else flips
    if truth.shape != shape:
        raise ValueError(f"the recorded flip mask has shape {truth.shape} but the signals "
                         f"{shape}")
    note: dict[str, Any] = {"detectors": sorted(detectors), "n_flipped": int(truth.sum()),
                            "n_samples": n}
    if flips is None or not truth.any():
        note["note"] = ("no training label was flipped: the ranking and recall metrics are NaN; "
                        "precision is 0 for any flagged sample")
    for name, (scores, flagged) in detectors.items():
        arrays[f"detect_{name}_flagged"] = flagged
        # Multi-label ([n, T]): every (sample, target) label pooled, and each target alone.
        for metric, value in score_detector(scores.ravel(), flagged.ravel(),
                                            truth.ravel()).items():
            final[f"detect_{name}_{metric}"] = value
        if scores.ndim == 2:
            per_target = np.array([auroc(scores[:, t], truth[:, t])
                                   for t in range(scores.shape[1])])
            arrays[f"detect_{name}_auroc_per_target"] = per_target.astype(np.float32)
            defined = per_target[~np.isnan(per_target)]
            final[f"detect_{name}_target_mean_auroc"] = (float(defined.mean()) if defined.size
                                                         else float("nan"))
        if eligible is not None:
            for part, subset in (("eligible", eligible), ("ineligible", ~eligible)):
                if not subset.any():
                    continue
                values = score_detector(scores[subset], flagged[subset], truth[subset])
                for metric in SUBSET_METRICS:
                    final[f"detect_{name}_{part}_{metric}"] = values[metric]
    if eligible is not None:
        note["n_eligible"] = int(eligible.sum())
    extra["detection"] = note


__all__ = ["DETECTORS", "attach", "detector_scores", "true_masks"]
