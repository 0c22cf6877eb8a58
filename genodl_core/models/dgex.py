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

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from genodl_core.errors import SpecError
from genodl_core.models.baselines import evaluate_predictor, fit_least_squares
from genodl_core.registry import MODELS
from genodl_core.spec import derive_seed
from genodl_core.training.device_data import to_device
from genodl_core.training.family import Family, FitOutcome, Member, training_scope
from genodl_core.training.null_baselines import regression_nulls
from genodl_core.training.objectives import SumSquaredErrorObjective
from genodl_core.training.optim import TrialOptimizer
from genodl_core.training.plan import ExecutionPlan
from genodl_core.training.precision import (amp_without_cache, autocast, is_cuda,
                                            matmul_precision)
from genodl_core.training.regression import compare_with_reference
from genodl_core.training.schedules import RiseDecaySchedule
from genodl_core.training.step_graph import StepGraph, eager_step
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
        """The paper's initialisation, drawn from ``generator`` (on the weights' device)."""
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
    """One initialised network per target block, each from its own seed stream.

    The weights are drawn on ``device`` (a GPU draws D-GEX's 256 M weights far faster than a
    CPU; docs/performance.md): CPU runs are reproducible bit for bit, GPU runs per seed on one
    kind of GPU, and a GPU's initial weights differ from the CPU draw of the same seed.
    """
    blocks = np.array_split(np.arange(n_targets), p.n_parts)
    nets = []
    for i, block in enumerate(blocks):
        suffix = "" if p.n_parts == 1 else f"/part{i}"
        # Built on 'meta': torch's own initialisation would draw from the global generator only
        # to be replaced below.
        with torch.device("meta"):
            net = DGEXNet(n_landmarks, len(block), p.hidden_layers, p.width, p.dropout)
        net = net.to_empty(device=device)
        generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "init" + suffix))
        net.initialise(generator, p.output_init)
        net.seed_dropout(derive_seed(seed, "dropout" + suffix), device)
        nets.append(net)
    return nets


class DGEXFamily(Family):
    """D-GEX as a model family: one trial, its target blocks as rows of one stack.

    Each block (the paper's halves with ``n_parts=2``) is a separately trained network with its
    own batch order, learning-rate rule and selected epoch; the engine trains them in lockstep,
    one epoch each in turn, so the per-epoch curves describe all target genes at once.
    """

    single_switches = frozenset({"fused_optimizer", "fused_update", "step_graphs"})

    def check(self, member: Member) -> None:
        p: DGEXParams = member.spec.model.params
        n_targets = member.dataset.y_train.shape[1]
        if p.n_parts > n_targets:
            raise SpecError("model.n_parts", p.n_parts,
                            f"1 <= n_parts <= {n_targets} (target genes)",
                            reason="more parts than target genes")

    def stack(self, members: Sequence[Member], plan: ExecutionPlan) -> "DGEXStack":
        (member,) = members
        return DGEXStack(member, plan)


class _Part:
    """One separately trained network over a block of target columns."""

    def __init__(self, net: DGEXNet, columns: np.ndarray, shuffle_seed: int):
        self.net = net
        self.columns = columns
        self.shuffle = torch.Generator().manual_seed(shuffle_seed)
        self.optimizer: TrialOptimizer | None = None
        #: The block's columns of the training, monitor and validation targets (on the device).
        self.y_train = self.y_mon = self.y_val = None
        #: Full training batches replayed as a CUDA graph (plan switch step_graphs), or None.
        self.graph: StepGraph | None = None


class DGEXStack:
    """The trainable state of one D-GEX trial (see :class:`DGEXFamily`).

    The learning-rate rule follows the paper: the training error of a fixed monitor subset
    (``monitor_size`` samples) drives it (:class:`~genodl_core.training.schedules.RiseDecaySchedule`),
    and the epoch with the best validation MAE is kept per block.
    """

    def __init__(self, member: Member, plan: ExecutionPlan):
        self.t0 = time.perf_counter()
        self.member, self.plan = member, plan
        ds, spec = member.dataset, member.spec
        p: DGEXParams = spec.model.params
        t = spec.train
        n_targets = ds.y_train.shape[1]
        nets = build_networks(ds.x_train.shape[1], n_targets, p, spec.seed, plan.device)
        blocks = np.array_split(np.arange(n_targets), p.n_parts)
        suffixes = [""] if p.n_parts == 1 else [f"/part{i}" for i in range(p.n_parts)]
        self.parts = [_Part(net, cols, derive_seed(spec.seed, "shuffle" + sfx))
                      for net, cols, sfx in zip(nets, blocks, suffixes)]
        self.n_targets = n_targets
        self.n_parameters = sum(n.n_parameters for n in nets)
        self.objectives = [SumSquaredErrorObjective() for _ in self.parts]
        self.schedules = [RiseDecaySchedule(t.learning_rate, p.lr_decay, p.min_learning_rate)
                          for _ in self.parts]
        self.trial_rows = [list(range(len(self.parts)))]
        self.step_groups = [[i] for i in range(len(self.parts))]
        self.shuffles = [part.shuffle for part in self.parts]
        self.n_train = ds.x_train.shape[0]
        self.batch_size = t.batch_size
        member.log.info("dgex: %d landmarks -> %d targets, %d x %d tanh, dropout %.2f, %d "
                        "part(s), %d parameters; %s", ds.x_train.shape[1], n_targets,
                        p.hidden_layers, p.width, p.dropout, p.n_parts, self.n_parameters,
                        plan.label)

    def scope(self) -> contextlib.AbstractContextManager:
        return training_scope([matmul_precision(self.plan.device, self.plan.precision)],
                              self._build)

    def _build(self) -> None:
        if hasattr(self, "xt"):
            return
        ds, device = self.member.dataset, self.plan.device
        self.xt, yt, self.xv, yv = (to_device(a, device, torch.float32)
                                    for a in (ds.x_train, ds.y_train, ds.x_val, ds.y_val))
        p: DGEXParams = self.member.spec.model.params
        monitor = np.random.default_rng(derive_seed(self.member.spec.seed, "monitor")).permutation(
            self.n_train)[:min(p.monitor_size, self.n_train)]
        monitor_t = torch.as_tensor(np.sort(monitor), device=device)
        self.x_mon, y_mon = self.xt[monitor_t], yt[monitor_t]
        train = self.member.spec.train
        for part in self.parts:
            part.net.to(device)
            part.y_train, part.y_mon, part.y_val = (_columns(y, part.columns)
                                                    for y in (yt, y_mon, yv))
            part.optimizer = TrialOptimizer(part.net, train, self.plan)
            if self.plan.switches.step_graphs and is_cuda(device):
                part.graph = self._step_graph(part)

    def amp(self) -> contextlib.AbstractContextManager:
        return autocast(self.plan.device, self.plan.precision)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        for part, lr in zip(self.parts, lrs):
            part.optimizer.set_lrs([lr])

    def step(self, group: Sequence[int], idx: torch.Tensor) -> torch.Tensor:
        part = self.parts[group[0]]
        if not part.net.training:
            part.net.train()
        i = idx[0]
        graph = part.graph
        loss = graph.step(i) if graph is not None else None
        if loss is None:
            loss = eager_step(graph, part.optimizer.zero_grad,
                              lambda: self._loss_and_backward(part, i, self.amp))
        part.optimizer.step()
        # The loss stays on the device: reading it back every step would stall the GPU queue.
        return (loss.detach().double() * i.numel()).reshape(1, 1)

    def _loss_and_backward(self, part: _Part, idx: torch.Tensor,
                           amp: Callable[[], Any]) -> torch.Tensor:
        with amp():
            pred = part.net(self.xt[idx])
        loss = self.objectives[0].per_sample_loss(pred, part.y_train[idx]).mean()
        loss.backward()
        return loss

    def _step_graph(self, part: _Part) -> StepGraph:
        """The part's full-batch step as a CUDA graph (host-bound otherwise: see step_graph)."""
        from genodl_core.training.backward_sgd import UpdatingLinear

        net = part.net
        states = [m.state for m in net.modules() if isinstance(m, UpdatingLinear)]
        generators = list({id(g): g for m in net.modules()
                           if isinstance(g := getattr(m, "generator", None), torch.Generator)
                           and g.device.type == "cuda"}.values())

        def body(indices: torch.Tensor) -> torch.Tensor:
            # autocast's weight cache must stay off inside a graph (stale copies after updates)
            return self._loss_and_backward(part, indices, lambda: amp_without_cache(self.amp))

        def before_replay() -> None:
            for state in states:
                state.sync()

        # Gradients must be allocated inside the graph, which then rewrites them every replay.
        return StepGraph(body, self.batch_size, self.plan.device, generators=generators,
                         zero_grad=lambda: net.zero_grad(set_to_none=True),
                         before_replay=before_replay)

    def _predict(self, net: DGEXNet, x: torch.Tensor) -> torch.Tensor:
        return predict_batched(net, x, self.plan.device, self.plan.precision)

    def validate(self) -> list[dict[str, Any]]:
        rows = []
        for part in self.parts:
            mon = _mae_per_gene(self._predict(part.net, self.x_mon), part.y_mon)
            val = _mae_per_gene(self._predict(part.net, self.xv), part.y_val)
            rows.append({"mae": float(mon.mean()), "val_mae": float(val.mean()),
                         "mae_per_gene": mon, "val_mae_per_gene": val})
        return rows

    def combine(self, trial: int, rows: list[dict[str, Any]]) -> dict[str, float]:
        mon, val = np.empty(self.n_targets), np.empty(self.n_targets)
        for part, row in zip(self.parts, rows):
            mon[part.columns] = row["mae_per_gene"]
            val[part.columns] = row["val_mae_per_gene"]
        metrics = {"loss": sum(row["loss"] for row in rows), "mae": float(mon.mean()),
                   "val_mae": float(val.mean()), "learning_rate": rows[0]["learning_rate"]}
        if len(rows) > 1:
            metrics.update({f"learning_rate_part{i}": row["learning_rate"]
                            for i, row in enumerate(rows)})
        return metrics

    def snapshot(self, row: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.parts[row].net.state_dict().items()}

    def restore(self, row: int, state: dict[str, torch.Tensor]) -> None:
        self.parts[row].net.load_state_dict(state)

    def outcome(self, trial: int, curves: dict[str, list[float]],
                selected: list[int | None]) -> FitOutcome:
        for part in self.parts:
            part.graph = None  # frees the graph's memory pool
        ds = self.member.dataset
        best_epochs = [0 if epoch is None else epoch + 1 for epoch in selected]
        final, arrays = evaluate_predictor(ds, self.predict)
        # Finals only: the nulls' per-gene arrays are cheap to recompute and would double the
        # per-gene arrays every summary carries.
        final.update(regression_nulls(ds.y_train, ds.y_val, ds.y_test, arrays)[0])
        final.update({"best_epoch": float(max(best_epochs)),
                      "epochs_run": float(len(curves.get("loss", []))),
                      "n_parameters": float(self.n_parameters)})
        if self.member.spec.model.params.lr_reference:
            final.update(_lr_reference(ds, arrays))
        final["train_seconds"] = time.perf_counter() - self.t0
        return FitOutcome(curves=curves, final=final, arrays=arrays,
                          extra={"best_epoch_per_part": best_epochs})

    def close(self) -> None:
        for part in self.parts:
            part.graph = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions of every block's kept network, ``[n, targets]``."""
        xs = torch.as_tensor(x, dtype=torch.float32, device=self.plan.device)
        out = np.empty((x.shape[0], self.n_targets), dtype=np.float32)
        with matmul_precision(self.plan.device, self.plan.precision):
            for part in self.parts:
                out[:, part.columns] = self._predict(part.net, xs).cpu().numpy()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [{"net": p.net.state_dict(), "optimizer": p.optimizer.state_dict(),
                           "dropout": _dropout_generator(p.net).get_state()
                           if _dropout_generator(p.net) is not None else None}
                          for p in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, saved in zip(self.parts, state["parts"]):
            part.net.load_state_dict(saved["net"])
            part.optimizer.load_state_dict(saved["optimizer"])
            generator = _dropout_generator(part.net)
            if generator is not None and saved["dropout"] is not None:
                generator.set_state(saved["dropout"])


def _dropout_generator(net: DGEXNet) -> torch.Generator | None:
    for module in net.modules():
        if isinstance(module, SeededDropout) and module.generator is not None:
            return module.generator
    return None


def _columns(y: torch.Tensor, cols: np.ndarray) -> torch.Tensor:
    """The block's target columns of ``y``: a view (no copy) when they are one contiguous run.

    Blocks are consecutive, so at paper size this saves copying gigabytes of targets.
    """
    if cols.size == y.shape[1]:
        return y
    if cols.size and np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size)):
        return y.narrow(1, int(cols[0]), int(cols.size))
    return y[:, torch.as_tensor(cols, device=y.device)]


#: Validation batch size of D-GEX (bounds the memory of a prediction).
EVAL_BATCH = 4096


@torch.no_grad()
def predict_batched(net: nn.Module, x: torch.Tensor, device: str, precision: str) -> torch.Tensor:
    """Predictions of ``net`` in eval mode (no dropout), in batches to bound memory."""
    net.eval()
    out = []
    for start in range(0, x.shape[0], EVAL_BATCH):
        with autocast(device, precision):
            out.append(net(x[start:start + EVAL_BATCH]).float())
    return torch.cat(out) if out else torch.empty(0)


def _mae_per_gene(pred: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return (pred.double() - y.double()).abs().mean(dim=0).cpu().numpy()


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


MODELS.register("dgex", params=DGEXParams, task="regression")(DGEXFamily())


__all__ = ["DGEXParams", "DGEXNet", "DGEXFamily", "SeededDropout", "build_networks",
           "predict_batched"]
