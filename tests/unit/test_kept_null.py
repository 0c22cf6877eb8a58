"""An abstaining model is compared with the majority-class null on the samples it kept."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genodl_core.training.null_baselines import kept_null_accuracy

pytestmark = pytest.mark.timeout(120)


def test_the_null_is_scored_on_the_kept_samples_only():
    y = np.array([0, 0, 0, 1, 1, 1])
    # class 2 is the abstention: the model kept samples 0, 3 and 4
    predicted = np.array([0, 2, 2, 1, 1, 2])
    assert kept_null_accuracy(predicted, y, majority=1, abstain_class=2) == pytest.approx(2 / 3)
    assert kept_null_accuracy(predicted, y, majority=0, abstain_class=2) == pytest.approx(1 / 3)
    assert math.isnan(kept_null_accuracy(np.full(6, 2), y, majority=0, abstain_class=2))


def test_an_abstaining_trial_records_its_kept_null_and_a_base_trial_none(tmp_path):
    from genodl_core.training.trial import run_trial

    def spec(variant):
        return {"seed": 3, "device": "cpu",
                "model": {"name": "nt3", "variant": variant, "conv": [[2, 5, 1]], "pool": [4],
                          "dense": [], "alpha": 0.05},
                "data": {"source": "synthetic_nt3", "n_train": 60, "n_test": 30,
                         "n_features": 60},
                "train": {"epochs": 2}}

    abst = run_trial(spec("abstaining"), tmp_path, raise_errors=True).final
    for split, null in (("val", "null_kept_accuracy"), ("test", "test_null_kept_accuracy")):
        kept = abst[f"{split}_kept"]
        if kept == 0:
            assert math.isnan(abst[null])
        else:  # a share of the kept samples: a multiple of 1 / kept
            assert 0.0 <= abst[null] <= 1.0
            assert abst[null] * kept == pytest.approx(round(abst[null] * kept))
    base = run_trial(spec("base"), tmp_path, raise_errors=True).final
    assert "null_kept_accuracy" not in base and "null_accuracy" in base


def test_report_judges_an_abstaining_model_on_its_kept_samples(tmp_path):
    from genodl_core.results.report import report
    from genodl_core.results.summary import gather
    from tests.unit.test_gather import _write_done

    for seed in (0, 1):
        _write_done(tmp_path, {"seed": seed, "model": {"name": "nt3", "variant": "abstaining"},
                               "data": {"source": "synthetic_nt3"}},
                    {"val_accuracy": 0.3, "null_accuracy": 0.5, "val_abstention": 0.6,
                     "val_abstention_accuracy": 0.75, "null_kept_accuracy": 0.8}, {})
        _write_done(tmp_path, {"seed": seed, "model": {"name": "nt3", "variant": "base"},
                               "data": {"source": "synthetic_nt3"}},
                    {"val_accuracy": 0.4, "null_accuracy": 0.5}, {})
    text = report(gather(tmp_path))
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("  nt3")}
    # abstentions count as wrong in val_accuracy: no verdict against the all-samples null...
    assert "0.3000 ± 0.0000 (n=2) [null 0.5000] " in rows["abstaining"]
    # ...the verdict is on the kept samples, where the majority class does better here
    assert "0.7500 ± 0.0000 (n=2) [null 0.8000: null better]" in rows["abstaining"]
    assert "0.4000 ± 0.0000 (n=2) [null 0.5000: null better]" in rows["base"]
    assert ("note: always predicting the majority class on the samples the model kept "
            "(null_kept_accuracy) beats the model's val_abstention_accuracy in 1 of 2") in text
    assert "(null_accuracy) beats the model's val_accuracy in 1 of 2 group(s)" in text
    assert "judged against the null on the samples it kept" in text
