"""CNNC figures: AUC against the noise level per variant, and example images of each class."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("matplotlib", reason="figures need the plots extra (matplotlib)")

from genodl_core.data.cnnc_synthetic import SyntheticCNNCParams, synthetic_cnnc  # noqa: E402
from genodl_core.results.cnnc_plots import plot_auc_vs_level, plot_class_examples  # noqa: E402


def test_auc_figure_has_one_line_per_variant(tmp_path):
    groups = pd.DataFrame({
        "noise_kind": ["class_conditional_flip"] * 4, "noise_level": [0.0, 0.4, 0.0, 0.4],
        "variant": ["base", "base", "abstaining", "abstaining"],
        "val_roc_auc.mean": [0.9, 0.7, 0.92, 0.75], "val_roc_auc.std": [0.01] * 4,
        "val_pr_auc.mean": [0.8, 0.5, 0.85, 0.55], "val_pr_auc.std": [0.02] * 4})
    path = plot_auc_vs_level(groups, "class_conditional_flip", "cnnc", tmp_path)
    assert path.is_file() and path.stat().st_size > 1000
    assert plot_auc_vs_level(groups.drop(columns=["val_roc_auc.mean", "val_pr_auc.mean"]),
                             "class_conditional_flip", "cnnc", tmp_path) is None


def test_class_examples_show_every_class(tmp_path):
    ds = synthetic_cnnc(SyntheticCNNCParams(n_pairs=40, n_cells=40, bins=8, n_classes=3))
    path = plot_class_examples(ds.x_train, ds.y_train, tmp_path / "examples.png", per_class=3)
    assert path.is_file() and path.stat().st_size > 1000
