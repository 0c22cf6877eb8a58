"""Histone figures: Pearson r against the noise level, and bars per held-out cell type."""

from __future__ import annotations

import pandas as pd
import pytest

from genodl_core.results.histone_plots import cell_type_table, plot_histone


def _done():
    rows = []
    for level in (0.0, 0.5):
        for seed in (1, 2):
            rows.append({"noise_kind": "tss_shift", "noise_level": level, "seed": seed,
                         "val_pearson": 0.8 - level / 2 + seed / 100,
                         "val_pearson_ct_A": 0.9 - level, "val_pearson_ct_B": 0.7 - level + seed,
                         "val_pearson_ct_mean": 0.0, "val_pearson_ct_min": 0.0})
    return pd.DataFrame(rows)


def test_cell_type_table_averages_seeds_and_skips_summaries():
    table = cell_type_table(_done())
    assert list(table.columns) == ["A", "B"]
    assert table.loc[("tss_shift", 0.5), "A"] == pytest.approx(0.4)
    assert table.loc[("tss_shift", 0.0), "B"] == pytest.approx(2.2)
    assert cell_type_table(_done().drop(columns=["val_pearson_ct_A", "val_pearson_ct_B"])).empty


def test_plot_histone_writes_both_figures(tmp_path):
    pytest.importorskip("matplotlib", reason="figures need matplotlib")
    done = _done()
    groups = done.groupby(["noise_kind", "noise_level"], as_index=False).agg(
        **{"val_pearson.mean": ("val_pearson", "mean"), "val_pearson.std": ("val_pearson", "std")})
    paths = plot_histone(groups, done, "histone", tmp_path)
    assert [p.name for p in paths] == ["pearson_vs_level_histone_tss_shift.png",
                                       "pearson_per_cell_type_histone.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
