"""The D-GEX multi-task network: landmark genes -> all target genes.

Architecture (Chen et al., D-GEX): ``hidden_layers`` (1-3 in the paper) fully connected layers
of equal ``width`` with tanh, dropout on every hidden layer's output (never on the input), and a
linear output unit per target gene. Hidden weights are drawn from U(+-sqrt(6/(fan_in+fan_out)))
(normalised initialisation), output weights from the much narrower U(+-``output_init``), biases
are zero. Dropout masks come from a seeded torch Generator rather than torch's global RNG, so a
trial is reproducible whatever else ran in the process.

Training (see :mod:`genodl_core.training.regression`): SGD with momentum, the paper's
learning-rate rule and best-validation-epoch selection. With ``lr_reference`` the fit also
solves least squares on the same scaled, noised training data and reports the relative
improvement and the share of genes where D-GEX beats LR.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genodl_core.errors import SpecError
from genodl_core.models.baselines import evaluate_predictor, fit_least_squares
from genodl_core.registry import MODELS
from genodl_core.spec import derive_seed
from genodl_core.training.context import FitContext, FitOutcome
from genodl_core.training.regression import SGDSettings, compare_with_reference, train_parts
from genodl_core.typed import check_range


@dataclass(frozen=True)
class DGEXParams:
    """D-GEX architecture and the paper's training rule (optimiser basics are in ``[train]``).

    ``n_parts`` > 1 splits the target genes into that many contiguous blocks, each trained as a
    separate network (the paper used 2 halves for GPU memory reasons). ``monitor_size`` samples
    of the training set form the fixed subset whose error drives the learning-rate decay.
    """

    hidden_layers: int = 1
    width: int = 3000
    dropout: float = 0.1
    n_parts: int = 1
    output_init: float = 1e-4
    monitor_size: int = 5000
    lr_decay: float = 0.9
    min_learning_rate: float = 1e-5
    lr_reference: bool = True

    def validate(self, where: str) -> None:
        check_range(where, "hidden_layers", self.hidden_layers, 1)
        check_range(where, "width", self.width, 1)
        check_range(where, "dropout", self.dropout, 0, 1, hi_open=True)
        check_range(where, "n_parts", self.n_parts, 1)
        check_range(where, "output_init", self.output_init, 0)
        check_range(where, "monitor_size", self.monitor_size, 1)
        check_range(where, "lr_decay", self.lr_decay, 0, 1, lo_open=True)
        check_range(where, "min_learning_rate", self.min_learning_rate, 0)


class SeededDropout(nn.Module):
    """Inverted dropout whose masks come from an explicit generator (not torch's global RNG)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return h
        if self.generator is None:
            raise RuntimeError("SeededDropout needs a generator: call DGEXNet.seed_dropout first")
        keep = 1.0 - self.p
        mask = torch.rand(h.shape, generator=self.generator, device=h.device) < keep
        return h * mask.to(h.dtype) / keep


class DGEXNet(nn.Module):
    """Landmarks ``[n, L]`` -> targets ``[n, T]``: (Linear, tanh, dropout) x layers, Linear."""

    def __init__(self, n_landmarks: int, n_targets: int, hidden_layers: int, width: int,
                 dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = n_landmarks
        for _ in range(hidden_layers):
            layers += [nn.Linear(fan_in, width), nn.Tanh(), SeededDropout(dropout)]
            fan_in = width
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(fan_in, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(x))

    @torch.no_grad()
    def initialise(self, generator: torch.Generator, output_init: float = 1e-4) -> "DGEXNet":
        """The paper's initialisation, drawn from ``generator`` (a CPU generator)."""
        for module in self.hidden:
            if isinstance(module, nn.Linear):
                bound = float(np.sqrt(6.0 / (module.in_features + module.out_features)))
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.zero_()
        self.output.weight.uniform_(-output_init, output_init, generator=generator)
        self.output.bias.zero_()
        return self

    def seed_dropout(self, seed: int, device: str) -> "DGEXNet":
        """Give every dropout layer one shared generator on ``device`` seeded with ``seed``."""
        generator = torch.Generator(device=device).manual_seed(seed)
        for module in self.hidden:
            if isinstance(module, SeededDropout):
                module.generator = generator
        return self

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_networks(n_landmarks: int, n_targets: int, p: DGEXParams, seed: int,
                   device: str) -> list[DGEXNet]:
    """One initialised network per target block, each from its own seed stream."""
    blocks = np.array_split(np.arange(n_targets), p.n_parts)
    nets = []
    for i, block in enumerate(blocks):
        suffix = "" if p.n_parts == 1 else f"/part{i}"
        net = DGEXNet(n_landmarks, len(block), p.hidden_layers, p.width, p.dropout)
        net.initialise(torch.Generator().manual_seed(derive_seed(seed, "init" + suffix)),
                       p.output_init)
        net.seed_dropout(derive_seed(seed, "dropout" + suffix), device)
        nets.append(net)
    return nets


@MODELS.register("dgex", params=DGEXParams, task="regression")
def fit_dgex(ctx: FitContext) -> FitOutcome:
    """Train D-GEX on the trial's (scaled, noised) data and evaluate the selected epoch.

    Raises
    ------
    SpecError
        If ``n_parts`` exceeds the number of target genes.
    TrialTimeout
        When the trial's time budget runs out between epochs.
    """
    started = time.perf_counter()
    ds = ctx.dataset
    p: DGEXParams = ctx.spec.model.params
    t = ctx.spec.train
    n_targets = ds.y_train.shape[1]
    if p.n_parts > n_targets:
        raise SpecError("model.n_parts", p.n_parts, f"1 <= n_parts <= {n_targets} (target genes)",
                        reason="more parts than target genes")
    nets = build_networks(ds.x_train.shape[1], n_targets, p, ctx.spec.seed, ctx.device)
    suffixes = [""] if p.n_parts == 1 else [f"/part{i}" for i in range(p.n_parts)]
    settings = SGDSettings(
        epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
        momentum=t.momentum, weight_decay=t.weight_decay, optimizer=t.optimizer,
        lr_decay=p.lr_decay, min_learning_rate=p.min_learning_rate, monitor_size=p.monitor_size)
    ctx.log.info("dgex: %d landmarks -> %d targets, %d x %d tanh, dropout %.2f, %d part(s), "
                 "%d parameters", ds.x_train.shape[1], n_targets, p.hidden_layers, p.width,
                 p.dropout, p.n_parts, sum(n.n_parameters for n in nets))
    fit = train_parts(
        nets, ds.x_train, ds.y_train, ds.x_val, ds.y_val, settings=settings, device=ctx.device,
        precision=ctx.precision,
        shuffle_seeds=[derive_seed(ctx.spec.seed, "shuffle" + s) for s in suffixes],
        monitor_seed=derive_seed(ctx.spec.seed, "monitor"),
        check_deadline=ctx.check_deadline, on_epoch=ctx.on_epoch)
    final, arrays = evaluate_predictor(ds, fit.predict)
    final.update({
        "best_epoch": float(max(fit.best_epochs)),
        "epochs_run": float(fit.epochs_run),
        "n_parameters": float(sum(n.n_parameters for n in nets)),
    })
    if p.lr_reference:
        final.update(_lr_reference(ds, arrays))
    final["train_seconds"] = time.perf_counter() - started
    return FitOutcome(curves=fit.curves, final=final, arrays=arrays,
                      extra={"best_epoch_per_part": fit.best_epochs})


def _lr_reference(ds, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Fit LR on the same training data; add its errors and the gene-wise comparison."""
    lr = fit_least_squares(ds.x_train, ds.y_train)
    lr_final, lr_arrays = evaluate_predictor(ds, lr.predict)
    out = {"lr_val_mae": lr_final["val_mae"], "lr_val_mae_std": lr_final["val_mae_std"]}
    arrays["lr_val_mae_per_gene"] = lr_arrays["val_mae_per_gene"]
    cmp = compare_with_reference(arrays["val_mae_per_gene"], lr_arrays["val_mae_per_gene"])
    out["relative_improvement"] = cmp["relative_improvement"]
    out["share_genes_better_than_lr"] = cmp["share_genes_better"]
    if "test_mae_per_gene" in lr_arrays:
        arrays["lr_test_mae_per_gene"] = lr_arrays["test_mae_per_gene"]
        out["lr_test_mae"] = lr_final["test_mae"]
        test_cmp = compare_with_reference(arrays["test_mae_per_gene"],
                                          lr_arrays["test_mae_per_gene"])
        out["test_relative_improvement"] = test_cmp["relative_improvement"]
        out["test_share_genes_better_than_lr"] = test_cmp["share_genes_better"]
    return out


__all__ = ["DGEXParams", "DGEXNet", "SeededDropout", "build_networks", "fit_dgex"]
