"""Synthetic trial records and the gather benchmark.

:func:`write_synthetic_sweep` writes records in exactly the on-disk format of a real trial
(through :mod:`genodl_core.records`), with curves shaped like the NT3 noise study (accuracy
falls and abstention rises with the noise level) and D-GEX per-gene errors. Tests use it to
check the gather without training anything; the benchmark times the gather of a large sweep::

    python -m genodl_core.results.bench_gather --trials 1000 --epochs 100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from genodl_core import records


Task = Literal["nt3", "dgex", "both"]

NT3_KINDS = {"label_flip": "fraction", "correlated_label_flip": "fraction", "gaussian": "std"}
NT3_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DGEX_LEVELS = (0.0, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class SyntheticTrial:
    """One synthetic trial: its resolved spec (plain dict) and the outcome to record."""

    spec: dict[str, Any]
    state: Literal["done", "failed", "running"]

    @property
    def trial_id(self) -> str:
        canonical = json.dumps(self.spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def synthetic_specs(n_trials: int, *, task: Task = "nt3", n_seeds: int = 3,
                    epochs: int = 20) -> Iterator[dict[str, Any]]:
    """Resolved-spec dicts over a grid (variant x noise kind x level x seed), ``n_trials`` long.

    The grid repeats with new seeds when ``n_trials`` exceeds it, so every spec is distinct.
    """
    grid: list[tuple[str, str, str, float]] = []
    if task in ("nt3", "both"):
        for variant in ("base", "abstaining"):
            grid.append(("nt3", variant, "none", 0.0))
            grid += [("nt3", variant, k, lvl) for k in NT3_KINDS for lvl in NT3_LEVELS if lvl]
    if task in ("dgex", "both"):
        grid.append(("dgex", "default", "none", 0.0))
        grid += [("dgex", "default", "gaussian", lvl) for lvl in DGEX_LEVELS if lvl]
    count = 0
    for round_ in range(math.ceil(n_trials / (len(grid) * n_seeds)) + 1):
        for model, variant, kind, level in grid:
            for s in range(n_seeds):
                if count == n_trials:
                    return
                seed = round_ * n_seeds + s
                yield _spec(model, variant, kind, level, seed, epochs)
                count += 1


def _spec(model: str, variant: str, kind: str, level: float, seed: int,
          epochs: int) -> dict[str, Any]:
    noise = [] if kind == "none" else [{"kind": kind, NT3_KINDS[kind]: level}]
    if model == "nt3":
        model_part = {"name": "nt3", "variant": variant, "conv": [[64, 20, 1], [64, 10, 1]],
                      "dense": [200, 20], "dropout": 0.1}
        data = {"source": "synthetic_nt3", "n_train": 200, "n_features": 500}
    else:
        model_part = {"name": "dgex", "hidden": [300], "dropout": 0.1}
        data = {"source": "synthetic_dgex", "n_landmarks": 40, "n_targets": 60}
    return {"seed": seed, "device": "cpu", "precision": "fp32", "model": model_part,
            "data": data, "noise": noise,
            "train": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.002}}


def write_synthetic_sweep(run_dir: str | Path, n_trials: int, *, epochs: int = 20,
                          task: Task = "nt3", seed: int = 0, n_seeds: int = 3,
                          failed_every: int = 0, n_genes: int = 60,
                          write_sweep_json: bool = True) -> list[SyntheticTrial]:
    """Write ``n_trials`` synthetic trial records under ``run_dir/trials/``.

    Parameters
    ----------
    run_dir
        Run directory to create or extend.
    n_trials
        Number of records to write.
    epochs
        Length of every curve.
    task
        'nt3' (base and abstaining models under three noise kinds), 'dgex' or 'both'.
    seed
        Seed of the numpy Generator that draws the metric values (same seed, same records).
    n_seeds
        Trials per (variant, kind, level) before the grid repeats.
    failed_every
        Every this-many-th trial is recorded as failed (0: none fail).
    n_genes
        Number of target genes of D-GEX trials.
    write_sweep_json
        Also write a small ``sweep.json`` describing the grid.

    Returns
    -------
    list of SyntheticTrial
        What was written, in order.
    """
    run_dir = Path(run_dir)
    trials_dir = run_dir / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prov = records.provenance({"device": "cpu"})
    written = []
    for i, spec in enumerate(synthetic_specs(n_trials, task=task, n_seeds=n_seeds, epochs=epochs)):
        state = "failed" if failed_every and (i + 1) % failed_every == 0 else "done"
        trial = SyntheticTrial(spec, state)
        write_trial(trials_dir / trial.trial_id, trial, rng, provenance=prov, n_genes=n_genes)
        written.append(trial)
    if write_sweep_json:
        records.atomic_write_json(run_dir / "sweep.json", {
            "name": "synthetic", "task": task, "n_trials": n_trials, "epochs": epochs})
    return written


def write_trial(trial_dir: Path, trial: SyntheticTrial, rng: np.random.Generator, *,
                provenance: dict[str, Any] | None = None, n_genes: int = 60,
                wall_s: float | None = None) -> None:
    """Write one record (spec, provenance, result, status) in the real on-disk format."""
    spec = trial.spec
    trial_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(trial_dir / records.SPEC_FILE,
                              {"trial_id": trial.trial_id, **spec})
    records.atomic_write_json(trial_dir / records.PROVENANCE_FILE,
                              provenance or records.provenance({"device": "cpu"}))
    wall = float(rng.uniform(5, 50)) if wall_s is None else wall_s
    if trial.state == "failed":
        records.write_status(trial_dir, records.FAILED, trial_id=trial.trial_id, attempt=1,
                             wall_s=wall, error_type="FloatingPointError",
                             error="loss is NaN at epoch 3",
                             traceback="Traceback (most recent call last):\n  ...\n"
                                       "FloatingPointError: loss is NaN at epoch 3\n")
        return
    if trial.state == "running":
        records.write_status(trial_dir, records.RUNNING, trial_id=trial.trial_id, attempt=1)
        return
    level = _level(spec)
    epochs = spec["train"]["epochs"]
    if spec["model"]["name"] == "nt3":
        result, arrays = _nt3_result(spec, level, epochs, rng)
    else:
        result, arrays = _dgex_result(level, epochs, n_genes, rng)
    result["trial_id"] = trial.trial_id
    records.write_result(trial_dir, result, arrays)
    records.write_status(trial_dir, records.DONE, trial_id=trial.trial_id, attempt=1,
                         wall_s=wall, device="cpu", gpu=None)


def _level(spec: dict[str, Any]) -> float:
    for step in spec["noise"]:
        return float(step.get("fraction", step.get("std", 0.0)))
    return 0.0


def _nt3_result(spec: dict[str, Any], level: float, epochs: int,
                rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    t = np.arange(1, epochs + 1)
    rise = 1 - np.exp(-t / max(epochs / 4, 1))
    final_acc = 0.98 - 0.9 * level + rng.normal(0, 0.01)
    acc = 0.5 + (final_acc - 0.5) * rise + rng.normal(0, 0.005, epochs)
    val_acc = acc - 0.01 + rng.normal(0, 0.005, epochs)
    loss = 0.7 * np.exp(-t / max(epochs / 3, 1)) + level + rng.normal(0, 0.01, epochs)
    curves = {"loss": loss, "accuracy": acc, "val_loss": loss + 0.05, "val_accuracy": val_acc,
              "learning_rate": np.full(epochs, spec["train"]["learning_rate"]),
              "epoch_seconds": rng.uniform(0.2, 0.4, epochs)}
    if spec["model"]["variant"] == "abstaining":
        abst = np.clip(2 * level * rise + rng.normal(0, 0.01, epochs), 0, 1)
        curves.update(abstention=abst, abstention_accuracy=np.clip(val_acc + abst, 0, 1),
                      val_abstention=abst, val_abstention_accuracy=np.clip(val_acc + abst, 0, 1),
                      alpha=np.linspace(0.3, 0.6, epochs))
    final = {name: float(values[-1]) for name, values in curves.items()
             if name not in ("learning_rate", "epoch_seconds")}
    noise = [{"kind": spec["noise"][0]["kind"], "realised_level": level,
              "n_changed": int(round(level * 200)),
              "mask": (rng.random(200) < level)}] if spec["noise"] else []
    result = {"final": final, "curves": {k: v.tolist() for k, v in curves.items()},
              "noise": noise, "timings": {"fit_s": float(rng.uniform(5, 50))},
              "device": {"device": "cpu"}, "precision": "fp32"}
    return result, {}


def _dgex_result(level: float, epochs: int, n_genes: int,
                 rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    t = np.arange(1, epochs + 1)
    val_mae = 0.3 + 0.3 * level + 0.4 * np.exp(-t / max(epochs / 4, 1))
    lr_gene = rng.uniform(0.35, 0.6, n_genes) * (1 + 0.5 * level)
    dgex_gene = lr_gene * rng.uniform(0.8, 1.05, n_genes)
    final = {"val_mae": float(dgex_gene.mean()), "val_mae_std": float(dgex_gene.std()),
             "lr_val_mae": float(lr_gene.mean()),
             "relative_improvement": float((lr_gene.mean() - dgex_gene.mean()) / lr_gene.mean()),
             "share_genes_better_than_lr": float(np.mean(dgex_gene < lr_gene))}
    curves = {"loss": (val_mae ** 2).tolist(), "mae": (val_mae - 0.02).tolist(),
              "val_mae": val_mae.tolist(), "learning_rate": [3e-4] * epochs,
              "epoch_seconds": rng.uniform(0.1, 0.2, epochs).tolist()}
    arrays = {"val_mae_per_gene": dgex_gene, "lr_val_mae_per_gene": lr_gene,
              "target_ids": np.array([f"GENE{j:05d}" for j in range(n_genes)])}
    result = {"final": final, "curves": curves, "noise": [], "device": {"device": "cpu"},
              "precision": "fp32"}
    return result, arrays


def run_benchmark(n_trials: int = 1000, epochs: int = 100, *, directory: str | Path | None = None,
                  keep: bool = False, task: Task = "nt3") -> dict[str, float]:
    """Time the gather of a synthetic sweep: from scratch, and again with nothing changed.

    Returns
    -------
    dict
        ``write_s`` (writing the records), ``gather_s`` (from scratch), ``regather_s``
        (incremental, nothing changed), ``summary_mb`` and ``peak_rss_mb`` of this process.
    """
    from genodl_core.results.summary import gather

    base = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="genodl-bench-"))
    run_dir = base / "run"
    try:
        t0 = time.perf_counter()
        write_synthetic_sweep(run_dir, n_trials, epochs=epochs, task=task, failed_every=50)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = gather(run_dir, incremental=False)
        gather_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gather(run_dir)
        regather_s = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {"trials": n_trials, "epochs": epochs, "write_s": write_s, "gather_s": gather_s,
                "regather_s": regather_s, "summary_mb": path.stat().st_size / 2**20,
                "peak_rss_mb": rss}
    finally:
        if not keep and not directory:
            shutil.rmtree(base, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=1000, help="number of records (1000)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs per curve (100)")
    parser.add_argument("--task", choices=["nt3", "dgex", "both"], default="nt3")
    parser.add_argument("--dir", default=None,
                        help="write the records here and keep them (default: a temporary folder)")


def report(figures: dict[str, float]) -> str:
    return (f"gather {figures['trials']} trials x {figures['epochs']} epochs: "
            f"{figures['gather_s']:.2f} s from scratch, {figures['regather_s']:.2f} s "
            f"incremental (unchanged); summary {figures['summary_mb']:.1f} MiB; "
            f"peak RSS {figures['peak_rss_mb']:.0f} MiB; writing the records took "
            f"{figures['write_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time gathering a synthetic sweep.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures = run_benchmark(args.trials, args.epochs, directory=args.dir, task=args.task)
    print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
