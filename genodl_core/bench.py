"""Benchmark: the plain PyTorch port against genodl's default fast path, from one run.

Every figure comes from the same process on the same device, so their ratios are meaningful:

- a dense matmul (bf16 on CUDA, fp32 on CPU) gives the device's practical peak, TFLOP/s;
- each *mode* (plain fp32 port, default fast path, optionally other precisions or the batched
  multi-trial path) trains synthetic trials through :func:`~genodl_core.training.trial.run_trial`
  (the same runner a sweep uses): a first, cold trial and a second, warm one, as a persistent
  worker would run them. Seconds per epoch are the median of the warm trial's epochs after its
  first; per-trial overhead is the warm trial's wall time minus ``epochs x`` that steady rate,
  so it counts the runner, data, warm-up (graph capture, autotuning) and the record;
- trials per GPU-hour are for a trial of ``trial_epochs`` (100, the paper's) epochs;
- achieved TFLOP/s counts the model's analytic FLOPs (training = 3x the forward pass, plus the
  validation forward) over the steady epoch time.

``quick`` uses small shapes so that the whole benchmark runs in seconds on a CPU (CI).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from genodl_core.errors import SpecError
from genodl_core.spec import TrialSpec, spec_from_dict
from genodl_core.training.plan import RunSettings

log = logging.getLogger(__name__)

BenchModel = Literal["nt3", "dgex", "histone", "deepsea", "danq", "deepsea_transformer",
                     "cnnc"]

#: Modes the benchmark knows: (label, trial precision, fast path setting).
MODES = {
    "plain": ("plain fp32 port", "fp32", "off"),
    "plain-tf32": ("plain port, TF32", "tf32", "off"),
    "plain-bf16": ("plain port, bf16 autocast", "bf16", "off"),
    "fast": ("default fast path", "auto", "default"),
    "fast-bf16": ("fast path, bf16 autocast (CPU: explicit)", "bf16", "default"),
    "batched": ("fast path, trials batched", "auto", "batched"),
    "fast-cudnn": ("fast path, cuDNN convolutions", "auto", "default"),
    "batched-cudnn": ("batched, cuDNN convolutions", "auto", "batched"),
    "fast-torchsgd": ("fast path, torch's fused SGD step", "auto", "default"),
    "batched-torchsgd": ("batched, torch's SGD step", "auto", "batched"),
    "fast-eager": ("fast path, D-GEX steps without CUDA graphs", "auto", "default"),
    "fast-torchsgd-eager": ("fast path, torch's SGD step, no CUDA graphs", "auto", "default"),
    "batched-unfused": ("batched, ReLU and max-pool as torch's ops", "auto", "batched"),
    "fast-streamed": ("fast path, DNA batches streamed from host memory", "auto", "default"),
    "fast-streamed-inline": ("fast path, DNA batches streamed, read in the step (no reader "
                             "thread)", "auto", "default"),
}

#: Ablation suffixes of modes: the run setting each one turns off.
_ABLATIONS = {"-cudnn": "conv_kernel", "-torchsgd": "fused_update", "-eager": "step_graphs",
              "-unfused": "fused_activations"}


def default_modes(device: str) -> tuple[str, ...]:
    """The modes ``genodl bench`` compares by default: on CPU also bf16 where the CPU has it.

    Why: on CPU fp32 is the default precision and bf16 an explicit choice (refused on CPUs
    without native bf16), so the CPU table shows both beside the plain port.
    """
    if device != "cpu":
        return ("plain", "fast")
    from genodl_core.training.cpu import bf16_supported

    return ("plain", "fast", "fast-bf16") if bf16_supported() else ("plain", "fast")


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark: model, sizes, epochs, modes."""

    model: BenchModel = "nt3"
    quick: bool = False
    device: str = "auto"
    epochs: int | None = None
    modes: tuple[str, ...] = ("plain", "fast")
    #: Trials trained as one computation in the 'batched' mode.
    pack: int = 4
    #: Epochs of the trial that 'trials per GPU-hour' describes.
    trial_epochs: int = 100

    def validate(self) -> None:
        """Raises SpecError for an unknown mode or a non-positive count."""
        for mode in self.modes:
            if mode not in MODES:
                raise SpecError("--modes", mode, sorted(MODES), reason="unknown mode")
        if self.epochs is not None and self.epochs < 2:
            raise SpecError("--epochs", self.epochs, "at least 2",
                            reason="the steady rate excludes the first epoch")
        if self.pack < 1:
            raise SpecError("--pack", self.pack, "at least 1", reason="non-positive")


@dataclass
class ModeResult:
    """Figures of one mode."""

    mode: str
    label: str
    precision: str
    fast_path: str
    seconds_per_epoch: float
    seconds_per_trial_epoch: float
    overhead_s: float
    cold_overhead_s: float
    trials_per_gpu_hour: float
    tflops: float
    share_of_matmul: float
    val_accuracy: float | None
    val_metric: str
    val_value: float
    trials: int


@dataclass
class BenchReport:
    """All figures of one benchmark run."""

    device: str
    device_name: str
    torch_version: str
    model: str
    shape: dict[str, Any]
    matmul_dtype: str
    matmul_tflops: float
    epochs: int
    modes: list[ModeResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# matmul reference
# --------------------------------------------------------------------------------------------

def matmul_tflops(device: str, *, size: int | None = None, repeats: int = 20) -> tuple[float, str]:
    """Dense matmul throughput in TFLOP/s: bf16 on CUDA (tensor cores), fp32 on CPU."""
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    n = size or (8192 if cuda else 512)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    return 2.0 * n ** 3 / seconds / 1e12, str(dtype).removeprefix("torch.")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# trial specs and FLOP counts
# --------------------------------------------------------------------------------------------

def trial_spec(cfg: BenchConfig, *, seed: int, precision: str, epochs: int,
               device: str) -> TrialSpec:
    """A synthetic trial of the benchmarked model: paper size, or small with ``quick``."""
    if cfg.model == "nt3":
        model: dict[str, Any] = {"name": "nt3"}
        data: dict[str, Any] = {"source": "synthetic_nt3"}
        train: dict[str, Any] = {"epochs": epochs, "batch_size": 16}
        if cfg.quick:
            model.update(conv=[[8, 5, 1], [8, 5, 1]], pool=[1, 4], dense=[16])
            data.update(n_train=128, n_test=64, n_features=400)
    elif cfg.model in DNA_MODELS:
        # DeepSEA-sized synthetic DNA (1,000 bp, 919 targets); the published architectures.
        model = {"name": cfg.model}
        data = {"source": "synthetic_dna", "length": 1000, "central_bin": 200,
                "n_targets": 919, "n_train": 20000, "n_val": 2000, "n_test": 0}
        train = {"epochs": epochs, "batch_size": 128, "optimizer": "adam",
                 "learning_rate": 1e-4}
        if cfg.quick:
            model.update(DNA_QUICK_MODELS[cfg.model])
            data.update(length=120, central_bin=48, n_targets=6, n_train=128, n_val=64)
    elif cfg.model == "histone":
        # Seed 002's network and training on synthetic marks (20 cell types x 2,000 genes)
        from genodl_core.models.histone import SEED_TRAIN

        model = {"name": "histone"}
        data = {"source": "synthetic_histone", "n_cell_types": 20, "n_genes": 2000}
        train = {**SEED_TRAIN, "epochs": epochs}
        if cfg.quick:
            data.update(n_cell_types=6, n_genes=100)
    elif cfg.model == "cnnc":
        # The reference network and optimizer on 50,000 synthetic pairs of 1,000 cells.
        from genodl_core.models.cnnc import REFERENCE_TRAIN

        model = {"name": "cnnc", "nesterov": True}
        data = {"source": "synthetic_cnnc", "n_pairs": 50000, "n_cells": 1000}
        train = {**REFERENCE_TRAIN, "epochs": epochs}
        if cfg.quick:
            model.update(filters=[4, 8], dense=[16])
            data.update(n_pairs=200, n_cells=100, bins=16)
            train.update(batch_size=32)
    else:
        model = {"name": "dgex", "hidden_layers": 3, "width": 9000, "lr_reference": False}
        data = {"source": "synthetic_dgex", "size": "paper", "n_val": 4000, "n_test": 1000}
        train = {"epochs": epochs, "batch_size": 200, "learning_rate": 5e-4, "momentum": 0.5}
        if cfg.quick:
            model.update(hidden_layers=1, width=64, monitor_size=200)
            data.update(n_landmarks=40, n_targets=60, n_train=800, n_val=200, n_test=100)
    return spec_from_dict({"seed": seed, "device": device, "precision": precision,
                           "model": model, "data": data, "train": train})


def forward_flops(spec: TrialSpec, n_features: int, n_outputs: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one sample's forward pass."""
    params = spec.model.params
    if spec.model.name in DNA_MODELS:
        return dna_forward_flops(spec.model.name, params, n_features, n_outputs)
    if spec.model.name == "nt3":
        from genodl_core.models.nt3 import nt3_widths

        flops, channels = 0.0, 1
        widths = nt3_widths(params, n_features)
        for (filters, kernel, _), (conv_out, _) in zip(params.conv, widths):
            flops += 2.0 * channels * kernel * filters * conv_out
            channels = filters
        width = channels * widths[-1][1]
        for units in (*params.dense, params.n_outputs(n_outputs)):
            flops += 2.0 * width * units
            width = units
        return flops
    if spec.model.name == "cnnc":
        from genodl_core.models.cnnc import cnnc_forward_flops

        return cnnc_forward_flops(params, n_features, n_outputs)
    if spec.model.name == "histone":
        lay = params.layout()
        n_bins = spec.data.params.n_bins
        flops, channels, length = 0.0, n_features // n_bins, n_bins
        for (filters, width, _), pool in zip(lay.conv, lay.pool):
            flops += 2.0 * channels * width * filters * length
            channels, length = filters, length // pool
        fan_in = channels * length
        for units in (*lay.dense, lay.n_outputs):
            flops += 2.0 * fan_in * units
            fan_in = units
        return flops
    widths = [n_features] + [params.width] * params.hidden_layers + [n_outputs]
    return sum(2.0 * a * b for a, b in zip(widths[:-1], widths[1:]))


#: The multi-label DNA families and the small shapes of their ``quick`` runs.
DNA_MODELS = ("deepsea", "danq", "deepsea_transformer")
DNA_QUICK_MODELS: dict[str, dict[str, Any]] = {
    "deepsea": {"conv": [8, 8, 8], "kernel": 6, "pool": 3, "dense": 16},
    "danq": {"filters": 8, "kernel": 10, "pool": 5, "lstm": 8, "dense": 16},
    "deepsea_transformer": {"embedding": 8, "blocks": [16, 16], "expansion": 4, "layers": 1,
                            "heads": 2, "head_dim": 4, "inner": 16, "hidden": 16},
}


def dna_forward_flops(name: str, params: Any, length: int, n_targets: int) -> float:
    """FLOPs of one sequence's forward pass, counted by torch on the 'meta' device (no memory,
    no arithmetic): convolutions, the LSTM's matmuls and attention alike."""
    from torch.utils.flop_counter import FlopCounterMode

    from genodl_core.models.deepsea import ARCHITECTURES

    with torch.device("meta"):
        net = ARCHITECTURES[name][1](params, length, n_targets).eval()
        codes = torch.zeros(1, length, dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        net(codes)
    return float(counter.get_total_flops())


def streamed(spec: TrialSpec, inline: bool = False) -> TrialSpec:
    """The DNA trial with its training batches copied from host memory at every step (read
    ahead on a background thread, or with ``inline`` in the step itself)."""
    extra = {"prefetch": 0} if inline else {}
    return spec.replace(model={**spec.model.to_dict("name"), "resident": "no", **extra})


def epoch_flops(spec: TrialSpec, n_train: int, n_val: int, n_features: int,
                n_outputs: int) -> float:
    """FLOPs of one epoch: 3x forward per training sample (forward + backward) + validation.

    D-GEX also evaluates its monitor subset every epoch.
    """
    per_sample = forward_flops(spec, n_features, n_outputs)
    evaluated = n_val
    if spec.model.name == "dgex":
        evaluated += min(spec.model.params.monitor_size, n_train)
    return per_sample * (3 * n_train + evaluated)


# --------------------------------------------------------------------------------------------
# running modes
# --------------------------------------------------------------------------------------------

def run_benchmark(cfg: BenchConfig, out_dir: str | Path | None = None) -> BenchReport:
    """Run every mode of ``cfg`` and return the figures (see the module docstring).

    Raises
    ------
    SpecError
        An unknown mode or invalid count in ``cfg``.
    GenodlError
        A benchmark trial failed (the error of its record).
    """
    from genodl_core.training.device import device_info, resolve_device

    cfg.validate()
    device = resolve_device(cfg.device)
    epochs = cfg.epochs or (3 if cfg.quick else (6 if cfg.model == "nt3" else 4))
    matmul, matmul_dtype = matmul_tflops(device)
    info = device_info(device)
    report = BenchReport(device=device, device_name=info.get("gpu_name", "cpu"),
                         torch_version=torch.__version__, model=cfg.model, shape={},
                         matmul_dtype=matmul_dtype, matmul_tflops=matmul, epochs=epochs)
    log.info("bench %s on %s: dense %s matmul %.1f TFLOP/s", cfg.model, report.device_name,
             matmul_dtype, matmul)
    with tempfile.TemporaryDirectory(prefix="genodl-bench-") as tmp:
        root = Path(out_dir or tmp)
        for mode in cfg.modes:
            result = _run_mode(cfg, mode, device, epochs, root / mode, report)
            report.modes.append(result)
            log.info("bench %s: %.4f s/trial-epoch, overhead %.2f s, %.1f TFLOP/s", mode,
                     result.seconds_per_trial_epoch, result.overhead_s, result.tflops)
    return report


def _run_mode(cfg: BenchConfig, mode: str, device: str, epochs: int, out: Path,
              report: BenchReport, settings: RunSettings | None = None) -> ModeResult:
    from genodl_core.training.trial import run_trial

    label, precision, fast_setting = MODES[mode]
    settings = settings or RunSettings(checkpoint_interval_s=None)
    for suffix, switch in _ABLATIONS.items():
        if mode.endswith(suffix):
            result = _run_mode(cfg, mode.removesuffix(suffix), device, epochs, out, report,
                               settings.replace(**{switch: False}))
            return dataclasses.replace(result, mode=mode, label=label)
    if fast_setting == "off":
        settings = settings.replace(fast_path="off")
    specs = [trial_spec(cfg, seed=seed, precision=precision, epochs=epochs, device=device)
             for seed in (1, 2)]
    if mode.endswith(("-streamed", "-streamed-inline")):
        specs = [streamed(spec, inline=mode.endswith("-inline")) for spec in specs]
    if fast_setting == "batched":
        return _run_batched(cfg, mode, label, specs, device, epochs, out, report, settings)
    records = []
    for spec in specs:
        result = run_trial(spec, out, raise_errors=True, settings=settings)
        records.append(_load(result.path))
    return _summarise(cfg, mode, label, specs[0], records, epochs, report, trials=1,
                      fast_label=records[-1]["engine"]["label"])


def _run_batched(cfg: BenchConfig, mode: str, label: str, specs: list[TrialSpec], device: str,
                 epochs: int, out: Path, report: BenchReport,
                 settings: RunSettings) -> ModeResult:
    from genodl_core.training.trial import run_trials

    records: list[dict[str, Any]] = []
    walls = []
    for round_ in range(2):
        pack = [specs[round_].replace(seed=100 * round_ + i) for i in range(cfg.pack)]
        t0 = time.monotonic()
        results = run_trials(pack, out, pack_size=cfg.pack, raise_errors=True,
                             settings=settings)
        walls.append(time.monotonic() - t0)
        records.append(_load(results[0].path))
        records[-1]["pack_wall_s"] = walls[-1]
    engine = records[-1]["engine"]
    return _summarise(cfg, mode, label, specs[0], records, epochs, report, trials=cfg.pack,
                      fast_label=f"{engine['mode']} x{engine['pack_size']} ({engine['label']})")


def _load(path: Path) -> dict[str, Any]:
    from genodl_core import records

    return records.load_record(path).result


def _summarise(cfg: BenchConfig, mode: str, label: str, spec: TrialSpec,
               results: list[dict[str, Any]], epochs: int, report: BenchReport, *, trials: int,
               fast_label: str) -> ModeResult:
    cold, warm = results
    steady = statistics.median(warm["curves"]["epoch_seconds"][1:])
    wall = warm.get("pack_wall_s", warm["timings"]["total_s"])
    cold_wall = cold.get("pack_wall_s", cold["timings"]["total_s"])
    data = warm["data"]
    n_train, n_val, n_features, n_outputs = _shape(spec, warm)
    report.shape = {"n_train": n_train, "n_val": n_val, "n_features": n_features,
                    "n_outputs": n_outputs, "batch_size": spec.train.batch_size}
    flops = epoch_flops(spec, n_train, n_val, n_features, n_outputs) * trials
    per_trial_epoch = steady / trials
    overhead = max(wall - epochs * steady, 0.0) / trials
    cold_overhead = max(cold_wall - epochs * steady, 0.0) / trials
    # A histone trial is seed 002's 15 epochs, a CNNC trial the reference's 20, not NT3's 100.
    trial_epochs = {"histone": 15, "cnnc": 20}.get(spec.model.name, cfg.trial_epochs)
    trial_seconds = trial_epochs * per_trial_epoch + overhead
    final = warm["final"]
    metric = next(m for m in ("val_accuracy", "val_roc_auc", "val_pearson", "val_mae")
                  if m in final)
    del data
    return ModeResult(
        mode=mode, label=label, precision=warm["precision"], fast_path=fast_label,
        seconds_per_epoch=steady, seconds_per_trial_epoch=per_trial_epoch,
        overhead_s=overhead, cold_overhead_s=cold_overhead,
        trials_per_gpu_hour=3600.0 / trial_seconds, tflops=flops / steady / 1e12,
        share_of_matmul=flops / steady / 1e12 / report.matmul_tflops,
        val_accuracy=final.get("val_accuracy"), val_metric=metric, val_value=final[metric],
        trials=trials)


def _shape(spec: TrialSpec, result: dict[str, Any]) -> tuple[int, int, int, int]:
    params = spec.data.params
    if spec.model.name == "nt3":
        return params.n_train, params.n_test, params.n_features, params.n_classes
    if spec.model.name in DNA_MODELS:
        return params.n_train, params.n_val, params.length, params.n_targets
    if spec.model.name == "cnnc":
        rows = result["data"]["n_pairs"]
        return rows["train"], rows["val"], params.bins ** 2, params.n_classes
    if spec.model.name == "histone":
        splits = result["data"]["splits"]
        rows = {k: len(v["cell_types"]) * v["n_genes"] for k, v in splits.items()}
        return rows["train"], rows["val"], params.n_features(), 1
    n_landmarks, n_targets, n_train, n_val, _ = params.sizes()
    return n_train, n_val, n_landmarks, n_targets


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------

def format_report(report: BenchReport) -> str:
    """The side-by-side table the ``genodl bench`` command prints."""
    # A CPU reaches tens to hundreds of GFLOP/s: TFLOP/s would print as 0.0.
    scale, unit = (1e3, "GFLOP/s") if report.device == "cpu" else (1.0, "TFLOP/s")
    lines = [f"genodl bench: {report.model} on {report.device_name} ({report.device}), "
             f"torch {report.torch_version}",
             f"shape: {report.shape}; {report.epochs} epochs per trial, 2 trials per mode",
             f"dense {report.matmul_dtype} matmul: {report.matmul_tflops * scale:.1f} {unit}",
             ""]
    header = (f"{'mode':<11} {'precision':<9} {'s/epoch':>9} {'s/trial-ep':>10} "
              f"{'trials/GPU-h':>12} {unit:>8} {'of matmul':>9} {'overhead s':>10} "
              f"{'cold ovh s':>10} {'val':>8}  fast path")
    lines += [header, "-" * len(header)]
    for m in report.modes:
        lines.append(f"{m.mode:<11} {m.precision:<9} {m.seconds_per_epoch:>9.4f} "
                     f"{m.seconds_per_trial_epoch:>10.4f} {m.trials_per_gpu_hour:>12.1f} "
                     f"{m.tflops * scale:>8.2f} {m.share_of_matmul:>9.1%} {m.overhead_s:>10.2f} "
                     f"{m.cold_overhead_s:>10.2f} {m.val_value:>8.4f}  {m.fast_path}")
    if len(report.modes) >= 2:
        base = report.modes[0]
        lines.append("")
        for m in report.modes[1:]:
            lines.append(f"{m.mode} vs {base.mode}: "
                         f"{base.seconds_per_trial_epoch / m.seconds_per_trial_epoch:.2f}x per "
                         f"trial-epoch; {m.val_metric} {m.val_value:.4f} vs {base.val_value:.4f}")
    return "\n".join(lines)


__all__ = ["BenchConfig", "BenchReport", "ModeResult", "MODES", "default_modes", "matmul_tflops", "trial_spec",
           "forward_flops", "epoch_flops", "run_benchmark", "format_report"]
