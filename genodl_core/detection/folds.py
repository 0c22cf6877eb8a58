"""Confident learning: out-of-sample probabilities from K fold models trained inside a trial.

Confident learning (Northcutt et al. 2021, the optional ``cleanlab`` package) needs predicted
probabilities of every training sample from a model that did not train on it. With
``train.detect_folds = K`` (K >= 2) a trial splits its (noisy) training split into K seeded
folds and trains K plain models of its family, each on the other K - 1 folds, through the same
engine as the trial itself: folds of equal size train as one pack (stacked), so K fold models
usually cost about one training of K stacked trials. Each sample's probabilities come from the
model that held it out.

The detector ``confident_learning`` then scores a sample by ``1 - p(assigned label)`` (the
self-confidence ranking of the paper) and flags what ``cleanlab.filter.find_label_issues``
finds (``filter_by = "prune_by_noise_rate"``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from genodl_core.errors import GenodlError
from genodl_core.spec import TrialSpec, derive_seed

#: How cleanlab prunes (its default, and the reference figures' "prune by noise rate").
FILTER_BY = "prune_by_noise_rate"


def require_cleanlab() -> None:
    """Fail before training when a spec asks for confident learning without cleanlab.

    Raises
    ------
    GenodlError
        Naming the extra to install.
    """
    import importlib.util

    if importlib.util.find_spec("cleanlab") is None:
        raise GenodlError("train.detect_folds asks for confident learning, which needs the "
                          "cleanlab package: pip install 'genodl[detection]' (or set "
                          "train.detect_folds = 0)")


def fold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """K disjoint, seeded folds covering ``range(n)`` (sizes differ by at most one)."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, k)]


def fold_spec(spec: TrialSpec) -> TrialSpec:
    """A fold model's spec: the trial's plain model, no detection of its own."""
    model = spec.model.to_dict("name")
    if "variant" in model:
        model["variant"] = "base"
    train = {**spec.to_dict()["train"], "detect": "off", "detect_folds": 0}
    return spec.replace(model=model, train=train)


def out_of_sample_probabilities(family: Any, member: Any, plan_for: Any) -> np.ndarray:
    """``[n_train, n_classes]`` probabilities, each row from the fold model that held it out.

    ``plan_for(k)`` gives the execution plan of a pack of ``k`` fold models.
    """
    import torch

    from genodl_core.training import engine
    from genodl_core.training.family import Member

    spec, ds = member.spec, member.dataset
    k = spec.train.detect_folds
    folds = fold_indices(len(ds.y_train), k, derive_seed(spec.seed, "detect_folds"))
    probs = np.zeros((len(ds.y_train), int(ds.n_classes)), dtype=np.float32)
    fspec = fold_spec(spec)
    members = []
    for held in folds:
        keep = np.ones(len(ds.y_train), dtype=bool)
        keep[held] = False
        members.append(Member(spec=fspec, dataset=ds.replace(x_train=ds.x_train[keep],
                                                             y_train=ds.y_train[keep]),
                              log=member.log, deadline=member.deadline))
    for group in _equal_sizes(members):
        plan = plan_for(len(group))
        stack = family.stack([members[i] for i in group], plan)
        try:
            engine.train(stack, [members[i] for i in group], device=plan.device)
            logits = stack.logits_of(ds.x_train)
        finally:
            stack.close()
        p = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        for row, i in enumerate(group):
            probs[folds[i]] = p[row, folds[i], :probs.shape[1]]
        member.log.info("confident learning: %d fold model(s) trained", len(group))
    return probs


def _equal_sizes(members: Sequence[Any]) -> list[list[int]]:
    """Indices of members grouped by training-split size (a pack needs equal sizes)."""
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault(len(m.dataset.y_train), []).append(i)
    return list(groups.values())


def confident_learning_arrays(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The signal arrays of the ``confident_learning`` detector: the out-of-sample probability
    of the assigned label, and cleanlab's label issues."""
    from cleanlab.filter import find_label_issues

    labels = np.asarray(labels, dtype=np.int64)
    # n_jobs=1: cleanlab's process pool hands its inputs to children through module globals,
    # which only a fork inherits; a Parsl worker's children start otherwise (the trial then
    # failed with a NameError), and a trial's worker owns just its share of the cores anyway.
    issues = find_label_issues(labels, probs, filter_by=FILTER_BY, n_jobs=1)
    return {"signal_cl_self_confidence": probs[np.arange(len(labels)), labels],
            "signal_cl_issues": np.asarray(issues, dtype=bool),
            "cl_probabilities": probs}


__all__ = ["require_cleanlab", "fold_indices", "fold_spec", "out_of_sample_probabilities",
           "confident_learning_arrays", "FILTER_BY"]
