"""Figures and report from a real (tiny) sweep: trials run by run_trial, gathered, plotted."""

from __future__ import annotations

import numpy as np
import pytest

from genodl_core.results import load
from genodl_core.results.plots import make_plots
from genodl_core.results.summary import gather

pytestmark = pytest.mark.timeout(240)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _nt3(variant: str, level: float, seed: int) -> dict:
    return {"seed": seed, "device": "cpu",
            "model": {"name": "nt3", "variant": variant, "conv": [[4, 5, 1], [4, 5, 1]],
                      "pool": [1, 2], "dense": [8]},
            "data": {"source": "synthetic_nt3", "n_train": 40, "n_test": 20, "n_features": 100},
            "noise": [{"kind": "label_flip", "fraction": level}] if level else [],
            "train": {"epochs": 3, "batch_size": 8}}


def _dgex(level: float, seed: int) -> dict:
    return {"seed": seed, "device": "cpu",
            "model": {"name": "dgex", "width": 16, "monitor_size": 20},
            "data": {"source": "synthetic_dgex", "n_landmarks": 10, "n_targets": 12,
                     "n_train": 60, "n_val": 20, "n_test": 20},
            "noise": [{"kind": "gaussian", "std": level}] if level else [],
            "train": {"epochs": 3, "batch_size": 16}}


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """12 trained trials: NT3 base/abstaining x {0, 0.3} label flips, D-GEX x {0, 0.5}, 2 seeds."""
    from genodl_core.training.trial import run_trial

    run = tmp_path_factory.mktemp("sweep")
    specs = [_nt3(v, lvl, s) for v in ("base", "abstaining") for lvl in (0.0, 0.3)
             for s in (0, 1)] + [_dgex(lvl, s) for lvl in (0.0, 0.5) for s in (0, 1)]
    results = [run_trial(spec, run / "trials") for spec in specs]
    assert all(r.ok for r in results), [(r.error_type, r.error) for r in results if not r.ok]
    return run, results


def test_gather_reads_real_trial_records(real_sweep):
    run, results = real_sweep
    path = gather(run)
    table = load.trials(path)
    assert len(table) == 12 and (table.state == "done").all()
    assert set(table.index) == {r.trial_id for r in results}
    flips = table[table.noise_kind == "label_flip"]
    assert len(flips) == 4 and (flips.noise_level == 0.3).all()
    # 30% of the 32 training rows left after the default validation carve (0.2 of 40), exact mode
    assert (flips["noise_record.0.n_flipped"] == round(0.3 * 32)).all()
    assert (table[table.noise_kind == "gaussian"].noise_level == 0.5).all()
    assert set(table.variant) == {"base", "abstaining", "default"}
    assert (table.n_epochs == 3).all() and (table.device == "cpu").all()
    fin = load.finals(path)
    for r in results:  # finals are the ones the trial returned, bit for bit
        for metric, value in r.final.items():
            assert fin.loc[r.trial_id, metric] == value
    # the abstaining trials' majority-class null on their kept samples (NaN if none kept)
    abstaining = table.index[table.variant == "abstaining"]
    assert (fin.loc[abstaining, "null_kept_accuracy"].isna()
            == (fin.loc[abstaining, "val_kept"] == 0)).all()
    assert fin.loc[table.variant == "base", "null_kept_accuracy"].isna().all()
    abst = load.curves(path, "val_abstention")
    assert abst.loc[table.variant == "abstaining"].notna().all().all()
    assert abst.loc[table.variant == "base"].isna().all().all()
    genes = load.gene_errors(path, "lr_val_mae_per_gene")
    assert genes.shape == (12, 12)
    dgex = table.index[table.model == "dgex"]
    assert genes.loc[dgex].notna().all().all()
    # the per-gene mean is the trial's own val_mae
    np.testing.assert_allclose(load.gene_errors(path).loc[dgex].mean(axis=1),
                               fin.loc[dgex, "val_mae"], rtol=1e-6)
    g = load.groups(path)
    assert len(g) == 6 and (g.n_done == 2).all()


def _check_png(path, min_bytes=8_000):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))
    img = imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 400
    # not a blank canvas: plenty of distinct colours
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20


def test_plots_from_a_real_gathered_sweep(real_sweep, tmp_path):
    run, _ = real_sweep
    gather(run)
    written = make_plots(run, tmp_path / "figs")
    names = sorted(p.name for p in written)
    assert names == sorted([
        "accuracy_abstention_nt3_label_flip.png",
        "detection_auroc_nt3_label_flip.png",  # label flips: the detectors are scored
        "loss_curves_nt3_base_label_flip.png",
        "loss_curves_nt3_abstaining_label_flip.png",
        "mae_vs_level_dgex_gaussian.png",
        "genewise_dgex_vs_lr.png",
        "loss_curves_dgex_default_gaussian.png",
        "by_epoch_nt3_base_label_flip.png",
        "by_epoch_nt3_abstaining_label_flip.png",
        "mae_vs_level_models_gaussian.png",  # one model, but its null predictors alongside
    ])
    for path in written:
        assert path.parent == tmp_path / "figs"
        _check_png(path)


def test_cli_gather_report_and_plot(real_sweep, tmp_path, capsys):
    import pandas as pd

    from workflows.cli import main

    run, _ = real_sweep
    assert main(["gather", str(run)]) == 0
    assert "12 trials (12 done, 0 failed" in capsys.readouterr().out
    csv = tmp_path / "groups.csv"
    assert main(["report", str(run), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "[nt3]" in out and "[dgex]" in out and "label_flip" in out
    assert "± " in out and "(n=2)" in out
    table = pd.read_csv(csv)
    assert len(table) == 6 and "val_accuracy.mean" in table and "val_mae.count" in table
    assert main(["report", str(run), "--metrics", "no_such_metric"]) == 2
    assert main(["plot", str(run), "--out", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 10  # with the detection figure


def test_closed_form_models_get_no_empty_loss_curve_figure(tmp_path):
    from genodl_core.training.trial import run_trial

    run = tmp_path / "lr"
    for level in (0.0, 0.5):
        spec = {**_dgex(level, 0), "model": {"name": "lr"}}
        spec.pop("train")
        assert run_trial(spec, run / "trials").ok
    assert run_trial(_dgex(0.5, 0), run / "trials").ok  # a model with curves in the same summary
    gather(run)
    names = {p.name for p in make_plots(run, tmp_path / "figs")}
    assert {"mae_vs_level_lr_gaussian.png", "loss_curves_dgex_default_gaussian.png"} <= names
    assert not any(name.startswith("loss_curves_lr") for name in names), names


def test_bands_of_shares_stay_within_zero_and_one():
    import pandas as pd
    from matplotlib.figure import Figure

    from genodl_core.results.plots import _mean_std_line

    groups = pd.DataFrame({"noise_level": [0.0, 0.2, 0.4],
                           "val_accuracy.mean": [0.95, 0.5, 0.05],
                           "val_accuracy.std": [0.3, 0.1, 0.3],
                           "val_loss.mean": [0.1, 0.5, 0.9], "val_loss.std": [0.3, 0.1, 0.3]})
    ax = Figure().subplots()
    _mean_std_line(ax, groups, "val_accuracy", "acc", "tab:blue")
    _mean_std_line(ax, groups, "val_loss", "loss", "tab:red")
    acc_band, loss_band = (c.get_paths()[0].vertices[:, 1] for c in ax.collections)
    assert acc_band.min() >= 0.0 and acc_band.max() <= 1.0
    assert loss_band.min() < 0.0  # other metrics keep their full band
