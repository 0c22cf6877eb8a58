"""Training loop of D-GEX networks and the regression metrics shared with the baselines.

The loop follows the D-GEX paper: SGD with momentum on mini-batches, loss = sum over target
genes of the per-gene mean squared error, and a learning-rate rule driven by the training error
on a fixed monitor subset (multiply by ``lr_decay`` whenever it rose, never below
``min_learning_rate``). The epoch with the best validation MAE is kept (model selection).

Targets may be split into parts trained as separate networks (the paper's two halves). Parts
are trained in lockstep, one epoch each in turn, so that the per-epoch curves describe all
target genes at once; each part keeps its own best epoch, as separately trained networks would.

Metrics are per target gene (MAE over samples), summarised as the mean and the standard
deviation over genes, and compared gene by gene with a reference (LR).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from genodl_core.training.fast import FastPath, amp_without_cache, fast_path_for
from genodl_core.training.precision import autocast as _autocast
from genodl_core.training.precision import is_cuda, matmul_precision
from genodl_core.training.step_graph import StepGraph

log = logging.getLogger(__name__)

_EVAL_BATCH = 4096


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

def per_gene_mae(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean absolute error of every target gene over samples, float64 ``[n_targets]``.

    Raises
    ------
    ValueError
        If the two arrays differ in shape (a programming error, not a user one).
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(f"prediction shape {y_pred.shape} != target shape {y_true.shape}")
    return np.mean(np.abs(np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64)), axis=0)


def summarise_mae(per_gene: np.ndarray) -> tuple[float, float]:
    """The paper's overall error: mean over genes, and its '±' (std over genes)."""
    return float(np.mean(per_gene)), float(np.std(per_gene))


def compare_with_reference(model_mae: np.ndarray, reference_mae: np.ndarray) -> dict[str, float]:
    """Relative improvement over a reference and the share of genes where the model is better.

    ``relative_improvement = (MAE_ref - MAE_model) / MAE_ref`` on the overall (mean) errors, and
    ``share_genes_better`` = fraction of target genes whose MAE is strictly lower than the
    reference's, the paper's gene-wise comparison.
    """
    ref = float(np.mean(reference_mae))
    model = float(np.mean(model_mae))
    return {
        "relative_improvement": (ref - model) / ref if ref > 0 else float("nan"),
        "share_genes_better": float(np.mean(model_mae < reference_mae)),
    }


def mae_metrics(prefix: str, y_true: np.ndarray,
                y_pred: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """``{prefix_mae, prefix_mae_std}`` and the per-gene MAE array."""
    per_gene = per_gene_mae(y_true, y_pred)
    mean, std = summarise_mae(per_gene)
    return {f"{prefix}_mae": mean, f"{prefix}_mae_std": std}, per_gene


# --------------------------------------------------------------------------------------------
# training loop
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SGDSettings:
    """Optimisation settings of one D-GEX fit (from the trial's TrainSpec and DGEXParams)."""

    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float = 0.5
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    lr_decay: float = 0.9
    min_learning_rate: float = 1e-5
    monitor_size: int = 5000


@dataclass
class PartState:
    """One separately trained network over a block of target columns."""

    net: nn.Module
    columns: np.ndarray
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator
    learning_rate: float
    previous_monitor_error: float = float("inf")
    best_val_mae: float = float("inf")
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Full training batches replayed as a CUDA graph (fast path), or None.
    graph: StepGraph | None = None


@dataclass
class FitResult:
    """What :func:`train_parts` returns: curves, selected epochs and the selected predictors."""

    curves: dict[str, list[float]]
    best_epochs: list[int]
    epochs_run: int
    predict: Callable[[np.ndarray], np.ndarray]


#: Dense layers with at least this many weights are updated inside the backward pass on the
#: fast path (all of D-GEX's at paper size); smaller ones gain nothing and would each cost a
#: kernel tuning run.
BACKWARD_UPDATE_MIN_WEIGHTS = 1 << 16
#: Storage of those layers' momentum. bf16 moves 4 fewer bytes per weight and step (the update
#: is memory-bound: 0.47 against 0.63 ms per 9000 x 9000 layer on an H100). Its rounding
#: (relative 2^-9 per step) does not build up: the paper's momentum of 0.5 halves every past
#: contribution each step, so the buffer's relative error stays within ~2^-8.
BACKWARD_UPDATE_MOMENTUM_DTYPE = torch.bfloat16


def _make_optimizer(net: nn.Module, s: SGDSettings, fast: FastPath) -> torch.optim.Optimizer:
    """torch's SGD/Adam; on the fast path SGD runs fused, the big layers' part in backward.

    A fused optimizer updates D-GEX's ~10^8 weights in one pass over memory instead of one
    pass per elementary operation (the update is memory-bound at batch 200); with
    ``fused_update`` the weight gradient is never written at all
    (:mod:`genodl_core.training.backward_sgd`). Same update rule either way.
    """
    if s.optimizer == "sgd" and fast.fused_update:
        from genodl_core.training.backward_sgd import sgd_with_backward_updates

        return sgd_with_backward_updates(net, lr=s.learning_rate, momentum=s.momentum,
                                         weight_decay=s.weight_decay,
                                         momentum_dtype=BACKWARD_UPDATE_MOMENTUM_DTYPE,
                                         min_weights=BACKWARD_UPDATE_MIN_WEIGHTS)
    options = {"fused": True} if fast.fused_optimizer else {}
    if s.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay,
                                **options)
    return torch.optim.SGD(net.parameters(), lr=s.learning_rate, momentum=s.momentum,
                           weight_decay=s.weight_decay, **options)


@torch.no_grad()
def predict_batched(net: nn.Module, x: torch.Tensor, device: str, precision: str) -> torch.Tensor:
    """Predictions of ``net`` in eval mode (no dropout), in batches to bound memory."""
    net.eval()
    out = []
    for start in range(0, x.shape[0], _EVAL_BATCH):
        with _autocast(device, precision):
            out.append(net(x[start:start + _EVAL_BATCH]).float())
    return torch.cat(out) if out else torch.empty(0)


def _mae_per_gene(pred: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return (pred.double() - y.double()).abs().mean(dim=0).cpu().numpy()


def train_parts(
    nets: list[nn.Module],
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
    *, settings: SGDSettings, device: str, precision: str, shuffle_seeds: list[int],
    monitor_seed: int, check_deadline: Callable[[], None] = lambda: None,
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None,
) -> FitResult:
    """Train one network per target block (``nets[i]`` predicts block ``i``) in lockstep.

    Parameters
    ----------
    nets
        Initialised networks; block ``i`` is ``np.array_split(range(T), len(nets))[i]``.
    x_train, y_train, x_val, y_val
        Scaled float32 arrays; never modified.
    settings
        Optimiser and learning-rate rule settings.
    shuffle_seeds
        One seed per network for its mini-batch order (a CPU ``torch.Generator``).
    monitor_seed
        Seed of the fixed training subset whose error drives the learning-rate rule.
    check_deadline, on_epoch
        Called after every epoch: the first raises when the time budget is spent.

    Returns
    -------
    FitResult
        Per-epoch curves (``loss``, ``mae``, ``val_mae``, ``learning_rate``, ``epoch_seconds``,
        and ``learning_rate_part{i}`` when there are several parts), the selected epoch of each
        part, and ``predict(x) -> y`` using every part's best state.

    Raises
    ------
    TrialTimeout
        From ``check_deadline`` when the trial's time budget is exceeded.
    FloatingPointError
        If the training loss becomes non-finite (diverged; lower the learning rate).
    """
    n_targets = y_train.shape[1]
    blocks = np.array_split(np.arange(n_targets), len(nets))
    xt = torch.as_tensor(x_train, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y_train, dtype=torch.float32, device=device)
    xv = torch.as_tensor(x_val, dtype=torch.float32, device=device)
    yv = torch.as_tensor(y_val, dtype=torch.float32, device=device)
    n = xt.shape[0]
    monitor = np.random.default_rng(monitor_seed).permutation(n)[:min(settings.monitor_size, n)]
    monitor_t = torch.as_tensor(np.sort(monitor), device=device)
    x_mon, y_mon = xt[monitor_t], yt[monitor_t]

    fast = fast_path_for(device, precision)
    log.info("dgex: %s on %s, fast path %s", precision, device, fast.label())
    parts = []
    for net, cols, seed in zip(nets, blocks, shuffle_seeds):
        net.to(device)
        part = PartState(net, cols, _make_optimizer(net, settings, fast),
                         torch.Generator().manual_seed(seed), settings.learning_rate)
        if fast.step_graphs and is_cuda(device):
            part.graph = _step_graph(part, xt, _part_of(yt, part), settings.batch_size, device,
                                     precision, fast)
        parts.append(part)
    curves: dict[str, list[float]] = {k: [] for k in
                                      ("loss", "mae", "val_mae", "learning_rate", "epoch_seconds")}
    if len(parts) > 1:
        curves.update({f"learning_rate_part{i}": [] for i in range(len(parts))})

    with matmul_precision(device, precision):
        epochs_run = _run_epochs(parts, xt, yt, xv, yv, x_mon, y_mon, n_targets, settings,
                                 device, precision, curves, check_deadline, on_epoch)
    for part in parts:
        part.graph = None  # frees the graph's memory pool
        # Without a finite validation error there is no best epoch: keep the last state.
        if part.best_state:
            part.net.load_state_dict(part.best_state)

    def predict(x: np.ndarray) -> np.ndarray:
        xs = torch.as_tensor(x, dtype=torch.float32, device=device)
        out = np.empty((x.shape[0], n_targets), dtype=np.float32)
        with matmul_precision(device, precision):
            for part in parts:
                pred = predict_batched(part.net, xs, device, precision)
                out[:, part.columns] = pred.cpu().numpy()
        return out

    return FitResult(curves, [p.best_epoch for p in parts], epochs_run, predict)


def _run_epochs(parts: list[PartState], xt, yt, xv, yv, x_mon, y_mon, n_targets: int,
                settings: SGDSettings, device: str, precision: str,
                curves: dict[str, list[float]], check_deadline: Callable[[], None],
                on_epoch: Callable[[int, dict[str, float]], None]) -> int:
    """The epoch loop of :func:`train_parts`; returns the number of epochs run."""
    epochs_run = 0
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        lrs = [p.learning_rate for p in parts]
        total_loss = 0.0
        for part in parts:
            total_loss += _train_one_epoch(part, xt, yt, settings.batch_size, device, precision)
        if not np.isfinite(total_loss):
            raise FloatingPointError(
                f"training loss became {total_loss} at epoch {epoch}; lower train.learning_rate "
                f"(now {settings.learning_rate})")
        mon_mae = np.empty(n_targets)
        val_mae = np.empty(n_targets)
        for part in parts:
            mon_mae[part.columns] = _mae_per_gene(
                predict_batched(part.net, x_mon, device, precision), _part_of(y_mon, part))
            part_val = _mae_per_gene(predict_batched(part.net, xv, device, precision),
                                     _part_of(yv, part))
            val_mae[part.columns] = part_val
            _select_and_decay(part, epoch, float(mon_mae[part.columns].mean()),
                              float(part_val.mean()), settings)
        epochs_run = epoch
        metrics = {"loss": total_loss, "mae": float(mon_mae.mean()),
                   "val_mae": float(val_mae.mean()), "learning_rate": lrs[0],
                   "epoch_seconds": time.perf_counter() - started}
        if len(parts) > 1:
            metrics.update({f"learning_rate_part{i}": lr for i, lr in enumerate(lrs)})
        for key, value in metrics.items():
            curves[key].append(float(value))
        # The runner's progress callback counts epochs from 0, like the other training loops.
        on_epoch(epoch - 1, metrics)
        check_deadline()
    return epochs_run


def _part_of(y: torch.Tensor, part: PartState) -> torch.Tensor:
    """The part's target columns of ``y``: a view (no copy) when they are one contiguous run.

    Parts come from splitting the targets into consecutive blocks, so at paper size this saves
    copying gigabytes of targets every epoch.
    """
    cols = np.asarray(part.columns)
    if cols.size == y.shape[1]:
        return y
    if cols.size and np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size)):
        return y.narrow(1, int(cols[0]), int(cols.size))
    return y[:, torch.as_tensor(cols, device=y.device)]


def _train_one_epoch(part: PartState, xt: torch.Tensor, yt: torch.Tensor, batch_size: int,
                     device: str, precision: str) -> float:
    """One pass over the training data; returns the sample-weighted mean loss."""
    part.net.train()
    y_part = _part_of(yt, part)
    order = torch.randperm(xt.shape[0], generator=part.shuffle).to(device)
    # The loss is summed on the device: reading it back every step would stall the GPU queue.
    total = torch.zeros((), dtype=torch.float64, device=xt.device)
    count = 0
    graph = part.graph
    for start in range(0, xt.shape[0], batch_size):
        idx = order[start:start + batch_size]
        loss = graph.step(idx) if graph is not None else None
        if loss is None:
            # Once a graph owns the gradient buffers they are zeroed, not dropped.
            part.optimizer.zero_grad(set_to_none=graph is None or not graph.captured)
            loss = _loss_and_backward(part.net, xt, y_part, idx,
                                      lambda: _autocast(device, precision))
        part.optimizer.step()
        total += loss.detach().double() * idx.numel()
        count += idx.numel()
    return float(total) / max(count, 1)


def _loss_and_backward(net: nn.Module, xt: torch.Tensor, y_part: torch.Tensor,
                       idx: torch.Tensor, amp: Callable[[], Any]) -> torch.Tensor:
    """Forward (in the ``amp()`` scope), the paper's loss, backward; returns the loss.

    The loss is the sum over target genes of the per-gene mean squared error.
    """
    with amp():
        pred = net(xt[idx])
    loss = (pred.float() - y_part[idx]).pow(2).sum(dim=1).mean()
    loss.backward()
    return loss


def _step_graph(part: PartState, xt: torch.Tensor, y_part: torch.Tensor, batch_size: int,
                device: str, precision: str, fast: FastPath) -> StepGraph:
    """The part's full-batch step as a CUDA graph (host-bound otherwise: see step_graph)."""
    net = part.net
    states = []
    if fast.fused_update:
        from genodl_core.training.backward_sgd import UpdatingLinear

        states = [m.state for m in net.modules() if isinstance(m, UpdatingLinear)]
    generators = list({id(g): g for m in net.modules()
                       if isinstance(g := getattr(m, "generator", None), torch.Generator)
                       and g.device.type == "cuda"}.values())

    def body(indices: torch.Tensor) -> torch.Tensor:
        # autocast's weight cache must stay off inside a graph (stale copies after updates)
        return _loss_and_backward(net, xt, y_part, indices,
                                  lambda: amp_without_cache(lambda: _autocast(device, precision)))

    def before_replay() -> None:
        for state in states:
            state.sync()

    # Gradients must be allocated inside the graph, which then rewrites them every replay.
    return StepGraph(body, batch_size, device, generators=generators,
                     zero_grad=lambda: net.zero_grad(set_to_none=True),
                     before_replay=before_replay)


def _select_and_decay(part: PartState, epoch: int, monitor_error: float, val_mae: float,
                      s: SGDSettings) -> None:
    if val_mae < part.best_val_mae:
        part.best_val_mae = val_mae
        part.best_epoch = epoch
        part.best_state = {k: v.detach().clone() for k, v in part.net.state_dict().items()}
    if monitor_error > part.previous_monitor_error:
        # The floor never raises a learning rate that started below it.
        part.learning_rate = max(part.learning_rate * s.lr_decay,
                                 min(s.min_learning_rate, part.learning_rate))
        for group in part.optimizer.param_groups:
            group["lr"] = part.learning_rate
        log.debug("epoch %d: monitored training MAE rose to %.5f; learning rate now %.3g",
                  epoch, monitor_error, part.learning_rate)
    part.previous_monitor_error = monitor_error


__all__ = ["per_gene_mae", "summarise_mae", "compare_with_reference", "mae_metrics",
           "SGDSettings", "FitResult", "train_parts", "predict_batched"]
