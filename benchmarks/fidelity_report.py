"""Figures and the findings table of the NT3 fidelity study (docs/fidelity.md).

Reads a gathered run of ``jobs/examples/fidelity_nt3.toml`` (or any part of it) and writes

* ``fidelity_label_noise.png``: per label-noise kind, test accuracy against the noise level for
  the base model and, for the abstaining model under each controller, accuracy on the kept
  samples and the abstention fraction (beside the naive estimate ``1 - base accuracy``);
* ``fidelity_abstention_by_epoch.png``: validation abstention per epoch at the highest
  uncorrelated label-noise levels, one line per controller (mean and band over seeds);
* ``fidelity_feature_noise.png``: test accuracy under Gaussian and constant-percentage feature
  noise against the clean trials;

and prints the table of the paper's four findings x controller in Markdown, every number
computed from the summary (means over seeds; test split, untouched by training and tuning).

    python benchmarks/fidelity_report.py RUN_DIR [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from genodl_core.results import load

CONTROLLERS = ("genodl", "candle", "dac")
COLORS = {"base": "black", "genodl": "tab:blue", "candle": "tab:red", "dac": "tab:green"}
LABEL_KINDS = ("label_flip", "correlated_label_flip")
#: Abstention above this share counts as "virtually all" (the paper's wording at 50% noise).
VIRTUALLY_ALL = 0.9


def model_key(row: pd.Series) -> str:
    """'base' or the abstaining model's controller, read from the trial's setting."""
    if row.variant != "abstaining":
        return "base"
    for part in str(row.setting).split(", "):
        if part.startswith("model.controller="):
            return part.split("=", 1)[1]
    return "genodl"  # the default controller when the sweep did not vary it


def load_trials(run_dir: Path) -> pd.DataFrame:
    finals = load.finals(run_dir)
    done = finals[finals.state == "done"].copy()
    done["who"] = done.apply(model_key, axis=1)
    return done


def by_level(done: pd.DataFrame, kind: str, who: str, metric: str) -> pd.DataFrame:
    """Mean, std and count over seeds per level, with the clean trials as level 0."""
    rows = done[(done.who == who) & done.noise_kind.isin([kind, "none"])]
    rows = rows.assign(level=np.where(rows.noise_kind == "none", 0.0, rows.noise_level))
    return rows.groupby("level")[metric].agg(["mean", "std", "count"]).reset_index()


def _line(ax, table: pd.DataFrame, label: str, color: str, style: str = "-") -> None:
    ax.plot(table.level, table["mean"], style, marker="o", color=color, label=label)
    ax.fill_between(table.level, (table["mean"] - table["std"].fillna(0)).clip(0, 1),
                    (table["mean"] + table["std"].fillna(0)).clip(0, 1), color=color, alpha=0.12)


def figure_label_noise(done: pd.DataFrame, out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)
    for col, kind in enumerate(LABEL_KINDS):
        acc, abst = axes[0, col], axes[1, col]
        base = by_level(done, kind, "base", "test_accuracy")
        _line(acc, base, "base model", COLORS["base"])
        naive = base.assign(mean=1 - base["mean"], std=0.0)
        abst.plot(naive.level, naive["mean"], ":", color="grey", label="naive: 1 - base accuracy")
        for who in CONTROLLERS:
            _line(acc, by_level(done, kind, who, "test_abstention_accuracy"),
                  f"abstaining ({who}), on kept", COLORS[who], "--")
            _line(abst, by_level(done, kind, who, "test_abstention"),
                  f"abstaining ({who})", COLORS[who])
        acc.set(title=f"{kind}: test accuracy", xlabel="fraction of training labels flipped",
                ylabel="accuracy", ylim=(0, 1.02))
        abst.set(title=f"{kind}: test abstention", xlabel="fraction of training labels flipped",
                 ylabel="abstention fraction", ylim=(-0.02, 1.02))
        for ax in (acc, abst):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("NT3 under label noise: base model vs abstaining model per controller "
                 "(mean ± std over 3 seeds; level 0 = clean trials)")
    path = out / "fidelity_label_noise.png"
    fig.savefig(path, dpi=110)
    return path


def figure_abstention_by_epoch(run_dir: Path, done: pd.DataFrame, out: Path) -> Path:
    from matplotlib.figure import Figure

    curves = load.curves(run_dir, "val_abstention")
    levels = sorted(done[done.noise_kind == "label_flip"].noise_level.unique())[-3:]
    fig = Figure(figsize=(4.2 * len(levels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(levels), squeeze=False)[0]
    for ax, level in zip(axes, levels):
        for who in CONTROLLERS:
            ids = done[(done.who == who) & (done.noise_kind == "label_flip")
                       & np.isclose(done.noise_level, level)].index
            if len(ids) == 0:
                continue
            table = curves.loc[ids]
            mean, std = table.mean(), table.std().fillna(0)
            ax.plot(mean.index, mean, color=COLORS[who], label=who)
            ax.fill_between(mean.index, (mean - std).clip(0, 1), (mean + std).clip(0, 1),
                            color=COLORS[who], alpha=0.12)
        ax.set(title=f"label_flip {level:g}", xlabel="epoch", ylabel="validation abstention",
               ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="controller")
    fig.suptitle("Abstention by epoch (mean ± std over seeds)")
    path = out / "fidelity_abstention_by_epoch.png"
    fig.savefig(path, dpi=110)
    return path


def figure_feature_noise(done: pd.DataFrame, out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, ("gaussian", "constant_pct")):
        for who in ("base", *CONTROLLERS):
            metric = "test_accuracy" if who == "base" else "test_abstention_accuracy"
            _line(ax, by_level(done, kind, who, metric),
                  "base" if who == "base" else f"abstaining ({who}), on kept", COLORS[who])
        ax.set(title=f"{kind}: test accuracy", xlabel="std" if kind == "gaussian" else "r",
               ylabel="accuracy", ylim=(0.9, 1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("NT3 under feature noise (mean ± std over seeds; level 0 = clean trials)")
    path = out / "fidelity_feature_noise.png"
    fig.savefig(path, dpi=110)
    return path


def _mean(done: pd.DataFrame, who: str, kind: str, level: float, metric: str) -> float:
    rows = done[(done.who == who) & (done.noise_kind == kind) & np.isclose(done.noise_level, level)]
    return float(rows[metric].mean()) if len(rows) else float("nan")


def _clean(done: pd.DataFrame, who: str, metric: str) -> float:
    return float(done[(done.who == who) & (done.noise_kind == "none")][metric].mean())


def findings_table(done: pd.DataFrame) -> str:
    """The paper's four findings x controller, held or not, with the numbers behind each."""
    levels = sorted(done[done.noise_kind == "label_flip"].noise_level.unique())
    top = levels[-1]
    base_clean = _clean(done, "base", "test_accuracy")
    base_top = _mean(done, "base", "label_flip", top, "test_accuracy")
    finding1 = (f"held: base test accuracy {base_clean:.3f} clean -> {base_top:.3f} at {top:g}"
                if base_top < base_clean - 0.1 else
                f"not held: {base_clean:.3f} -> {base_top:.3f}")
    mid = [lv for lv in levels if 0 < lv <= 0.4]
    gauss = sorted(done[done.noise_kind == "gaussian"].noise_level.unique())
    const = sorted(done[done.noise_kind == "constant_pct"].noise_level.unique())
    lines = ["| finding (paper) | " + " | ".join(CONTROLLERS) + " |",
             "|---|" + "---|" * len(CONTROLLERS),
             "| 1. base accuracy falls with label noise (base model only) | "
             + " | ".join([finding1] * len(CONTROLLERS)) + " |"]
    cells2, cells4, cells_g, cells_c = [], [], [], []
    for who in CONTROLLERS:
        pairs = [(lv, _mean(done, who, "label_flip", lv, "test_abstention_accuracy"),
                  _mean(done, "base", "label_flip", lv, "test_accuracy")) for lv in mid]
        better = [lv for lv, kept, base in pairs if kept > base + 0.005]
        numbers = ", ".join(f"{lv:g}: {kept:.3f} vs {base:.3f}" for lv, kept, base in pairs)
        verdict = ("held" if len(better) == len(pairs) else
                   "partly" if better else "not held")
        cells2.append(f"{verdict} (kept vs base: {numbers})")
        abst = _mean(done, who, "label_flip", top, "test_abstention")
        cells4.append(("held" if abst >= VIRTUALLY_ALL else "not held")
                      + f": abstains on {abst:.2f} at {top:g}")
        if const:
            r = const[-1]
            diff = _mean(done, who, "constant_pct", r, "test_abstention_accuracy") - _clean(
                done, who, "test_abstention_accuracy")
            base_diff = _mean(done, "base", "constant_pct", r, "test_accuracy") - base_clean
            cells_c.append(("held" if abs(diff) < 0.01 and abs(base_diff) < 0.01 else "not held")
                           + f": change at r={r:g}: base {base_diff:+.3f}, abstaining {diff:+.3f}")
        if gauss:
            s = gauss[-1]
            base_g = _mean(done, "base", "gaussian", s, "test_accuracy")
            kept_g = _mean(done, who, "gaussian", s, "test_abstention_accuracy")
            abst_g = _mean(done, who, "gaussian", s, "test_abstention")
            held = base_g < base_clean - 0.01 and kept_g > base_g
            cells_g.append(("held" if held else "not held")
                           + f": std {s:g}: base {base_clean:.3f} -> {base_g:.3f}; abstaining "
                           f"{kept_g:.3f} on kept, abstains {abst_g:.2f}")
    lines.append("| 2. abstaining model more accurate on what it keeps (0 < noise <= 0.4) | "
                 + " | ".join(cells2) + " |")
    if cells_c:
        lines.append("| 3. constant-percentage feature noise has no effect | "
                     + " | ".join(cells_c) + " |")
    lines.append("| 4. at 50% label noise it abstains on virtually all data | "
                 + " | ".join(cells4) + " |")
    if cells_g:
        lines.append("| (Gaussian feature noise: base declines, abstaining improves) | "
                     + " | ".join(cells_g) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs")
    args = parser.parse_args(argv)
    out = args.out or args.run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    done = load_trials(args.run_dir)
    for path in (figure_label_noise(done, out), figure_abstention_by_epoch(args.run_dir, done, out),
                 figure_feature_noise(done, out)):
        print(f"wrote {path}")
    print(findings_table(done))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
