"""A classifier that predicts one class for every validation (and test) sample is flagged."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from genodl_core.training.classifier import ClassifierStack


def stub_stack(val_logits, test_logits=None, abstain=None):
    stack = ClassifierStack.__new__(ClassifierStack)
    stack.val_logits = val_logits
    stack.test_logits = test_logits
    stack.objectives = [SimpleNamespace(abstain_class=abstain)]
    stack.members = [SimpleNamespace(log=logging.getLogger("genodl.test.collapse"))]
    return stack


def test_collapse_is_flagged_with_the_class_and_a_warning(caplog):
    always_one = torch.tensor([[[0.0, 2.0], [0.1, 0.3], [-1.0, 1.0]]])
    extra = {}
    with caplog.at_level(logging.WARNING, logger="genodl.test.collapse"):
        n, collapsed = stub_stack(always_one, always_one[:, :2])._collapse_check(0, extra)
    assert (n, collapsed) == (1.0, True)
    assert extra == {"collapsed_class": 1, "collapsed_splits": ["test", "val"]}
    assert "predicts class 1 for every sample" in caplog.text


def test_no_collapse_when_the_splits_disagree_or_classes_vary():
    always_one = torch.tensor([[[0.0, 2.0], [0.1, 0.3]]])
    always_zero = torch.tensor([[[2.0, 0.0], [1.0, 0.3]]])
    mixed = torch.tensor([[[2.0, 0.0], [0.1, 0.3]]])
    assert stub_stack(always_one, always_zero)._collapse_check(0, {}) == (1.0, False)
    assert stub_stack(mixed)._collapse_check(0, {}) == (2.0, False)


def test_a_trial_records_predicted_classes_and_its_collapse_flag(tmp_path):
    from genodl_core import records
    from genodl_core.spec import spec_from_dict
    from genodl_core.training.trial import run_trial
    spec = spec_from_dict({
        "seed": 1, "device": "cpu",
        "model": {"name": "nt3", "conv": [[2, 5, 1]], "pool": [4], "dense": [8]},
        "data": {"source": "synthetic_nt3", "n_train": 48, "n_test": 24, "n_features": 60},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 0.01}})
    result = records.load_record(run_trial(spec, tmp_path, raise_errors=True).path).result
    assert result["final"]["predicted_classes"] in (1.0, 2.0)
    assert isinstance(result["extra"]["collapsed"], bool)
    if result["extra"]["collapsed"]:
        assert result["final"]["predicted_classes"] == 1.0
        assert "predicts class" in (tmp_path / spec.trial_id / records.LOG_FILE).read_text()
