"""Several NT3 trials trained as one batched computation, each keeping its own record.

Why: one NT3 trial cannot fill a modern GPU (its 64-channel convolutions run far below the
tensor-core peak, and every step pays launch overheads). ``K`` trials of the same architecture
and training settings, differing in seed and noise, are trained together: their convolutions
become one grouped convolution (``groups=K``), their dense layers batched matmuls, and one
optimizer kernel per parameter updates all ``K`` models with per-trial learning rates. Each
trial keeps its own weights, initialisation, batch order, labels, features, plateau schedule
and abstention controller, so its curves equal those of a separate run within floating-point
tolerance (``tests/unit/test_batched.py`` checks that on CPU).

How: :func:`run_trials` runs each trial of a pack through the ordinary
:func:`~genodl_core.training.trial.run_trial` in its own thread, so records, data loading, noise
and failure handling are exactly those of a single trial. When a trial reaches the model fit,
NT3's ``fit`` hands its context to the pack's :class:`PackTrainer`, which waits until every
trial of the pack has arrived (or failed before), trains them together in one thread, and
returns each its own :class:`FitOutcome`.

Packable trials (:func:`pack_key`): NT3 with ordinary convolutions and no dropout (dropout masks
come from the global generator, which a batched computation cannot split per trial the way
separate runs draw them), and identical model, data, training, device and precision settings;
seed and noise may differ.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.errors import DataError, TrialTimeout
from genodl_core.kernels.relu_pool import MAX_POOL, relu_max_pool
from genodl_core.spec import TrialSpec, derive_seed
from genodl_core.training.context import FitContext, FitOutcome
from genodl_core.training.fast import (conv_channels_last, conv_in_kernel, cudnn_benchmark,
                                      fast_path_for)
from genodl_core.training.metrics import batch_sums, rates_from_sums
from genodl_core.training.precision import autocast, matmul_precision

log = logging.getLogger(__name__)

#: Seconds a pack waits for its last trial to reach the fit before giving up on it.
ARRIVAL_TIMEOUT_S = 3600.0
#: Dense layers with at least this many weights per trial apply SGD in the backward pass on
#: the fast path (NT3's first dense layer: 77 M; the 200 x 20 one stays with the optimizer).
PACK_UPDATE_MIN_WEIGHTS = 1 << 16


# --------------------------------------------------------------------------------------------
# which trials can share a computation
# --------------------------------------------------------------------------------------------

def pack_key(spec: TrialSpec) -> str | None:
    """A key equal for trials that can train as one batched computation, or None.

    Trials with equal keys differ at most in seed and noise steps.
    """
    if spec.model.name != "nt3":
        return None
    params = spec.model.params
    if params.locally_connected or params.dropout > 0:
        return None
    plain = spec.to_dict()
    plain.pop("seed")
    plain.pop("noise")
    return json.dumps(plain, sort_keys=True)


def group_packs(specs: Sequence[TrialSpec], pack_size: int) -> list[list[int]]:
    """Indices of ``specs`` grouped into packs of at most ``pack_size`` compatible trials.

    Unpackable trials form packs of one. Order within a group follows ``specs``.
    """
    groups: dict[str, list[int]] = {}
    packs: list[list[int]] = []
    for i, spec in enumerate(specs):
        key = pack_key(spec)
        if key is None or pack_size <= 1:
            packs.append([i])
            continue
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        packs += [members[j:j + pack_size] for j in range(0, len(members), pack_size)]
    return sorted(packs, key=lambda p: p[0])


# --------------------------------------------------------------------------------------------
# running a pack
# --------------------------------------------------------------------------------------------

_local = threading.local()


def current_pack() -> "PackTrainer | None":
    """The pack trainer of the trial running in this thread (None outside :func:`run_trials`)."""
    return getattr(_local, "pack", None)


def run_trials(specs: Sequence[TrialSpec | Mapping[str, Any]], out_dir: str | Path, *,
               pack_size: int = 8, raise_errors: bool = False) -> list:
    """Run trials, packing compatible ones into batched computations; one record per trial.

    Parameters
    ----------
    specs
        Trial specs (objects or plain mappings).
    out_dir
        Parent directory of the trial records (as for ``run_trial``).
    pack_size
        Most trials per batched computation (1 = every trial alone).
    raise_errors
        Re-raise the first failure after all records are written.

    Returns
    -------
    list of TrialResult
        In the order of ``specs``.
    """
    from genodl_core.training.trial import resolve_spec, run_trial

    resolved = [resolve_spec(s) for s in specs]
    results: list[Any] = [None] * len(resolved)
    for pack in group_packs(resolved, pack_size):
        if len(pack) == 1:
            results[pack[0]] = run_trial(resolved[pack[0]], out_dir, raise_errors=raise_errors)
            continue
        trainer = PackTrainer(len(pack))

        def one(i: int) -> Any:
            _local.pack = trainer
            try:
                return run_trial(resolved[i], out_dir)
            finally:
                _local.pack = None
                trainer.leave()

        with ThreadPoolExecutor(max_workers=len(pack), thread_name_prefix="genodl-pack") as ex:
            for i, result in zip(pack, ex.map(one, pack)):
                results[i] = result
    if raise_errors:
        from genodl_core.errors import GenodlError

        for result in results:
            if not result.ok:
                raise GenodlError(f"trial {result.trial_id} failed: {result.error_type}: "
                                  f"{result.error}")
    return results


class PackTrainer:
    """Rendezvous of the trials of one pack: the last to arrive trains them all.

    A trial that fails before its fit (bad noise parameters, say) leaves the pack; the others
    train without it.
    """

    def __init__(self, size: int):
        self.size = size
        self._cond = threading.Condition()
        self._waiting: list[tuple[FitContext, Callable[[], nn.Module], Any, int]] = []
        self._left = 0
        self._outcomes: dict[int, FitOutcome | BaseException] = {}
        self._started = False
        self._abandoned: TrialTimeout | None = None
        self._arrived: set[int] = set()

    def leave(self) -> None:
        """Called when a trial's thread finishes (arrived or not)."""
        with self._cond:
            ident = threading.get_ident()
            if ident not in self._arrived:
                self._left += 1
                self._cond.notify_all()

    def fit(self, ctx: FitContext, build_model: Callable[[], nn.Module], objective: Any,
            n_classes: int) -> FitOutcome:
        """Join the pack; returns this trial's outcome once the pack has trained.

        Raises
        ------
        TrialTimeout
            Waited longer than :data:`ARRIVAL_TIMEOUT_S` for the other trials.
        Exception
            Whatever training the pack raised (every trial of the pack fails with it).
        """
        ident = threading.get_ident()
        with self._cond:
            self._arrived.add(ident)
            if self._abandoned is not None:
                raise self._abandoned
            slot = len(self._waiting)
            self._waiting.append((ctx, build_model, objective, n_classes))
            self._cond.notify_all()
            deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
            while not self._started and len(self._waiting) + self._left < self.size:
                if not self._cond.wait(timeout=max(deadline - time.monotonic(), 0)):
                    # Give up as a pack: nobody trains the members already waiting, and any
                    # straggler fails at once instead of training on its own.
                    self._abandoned = TrialTimeout(
                        "the other trials of the batched pack never arrived")
                    self._started = True
                    self._outcomes = dict.fromkeys(range(len(self._waiting)), self._abandoned)
                    self._cond.notify_all()
                    raise self._abandoned
            leader = not self._started
            self._started = True
        if leader:
            members = list(self._waiting)
            try:
                outcomes: list[FitOutcome | BaseException] = list(fit_pack(members))
            except BaseException as err:  # noqa: BLE001 - every member fails with it
                outcomes = [err] * len(members)
            with self._cond:
                self._outcomes = dict(enumerate(outcomes))
                self._cond.notify_all()
        with self._cond:
            while slot not in self._outcomes:
                self._cond.wait()
            outcome = self._outcomes[slot]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


# --------------------------------------------------------------------------------------------
# the batched model
# --------------------------------------------------------------------------------------------

class BatchedNT3(nn.Module):
    """``K`` NT3 networks of one architecture as one module: ``[K, B, F] -> [K, B, outputs]``.

    Convolutions are grouped ``conv2d`` with ``1 x k`` kernels on ``[B, K * C, 1, L]`` tensors
    (channels-last on CUDA), so trial ``k`` owns channels ``k*C .. k*C + C - 1``; dense layers
    are batched matmuls with weights ``[K, in, out]``. Built from, and written back to,
    ordinary :class:`~genodl_core.models.nt3.NT3Net` instances.

    Dense layers prepared with :meth:`update_in_backward` apply SGD to their weights inside
    the backward pass (:mod:`genodl_core.training.backward_sgd`; an operator the compiled
    forward keeps as one node) and get no ``.grad``, so the pack's optimizer leaves them
    alone; forward passes, evaluation included, read their bf16 shadow, and their fp32
    parameters lag behind until :meth:`write_masters` (which :meth:`write_back` calls).

    With ``fuse_activations`` a ReLU after a convolution is applied by the convolution
    (inside genodl's kernel where it runs there) and a ReLU followed by max-pooling runs as
    :func:`~genodl_core.kernels.relu_pool.relu_max_pool`, which also adds the bias of a
    cuDNN convolution before it: the same values and gradients.
    """

    def __init__(self, nets: Sequence[nn.Module], conv_kernel: bool = False,
                 fuse_activations: bool = False):
        super().__init__()
        self.k = len(nets)
        #: Convolutions through genodl's Triton kernel (see FastPath.conv_kernel).
        self.conv_kernel = conv_kernel
        #: Dense layer index -> its in-backward SGD state (see :meth:`update_in_backward`);
        #: the key under which the layers' operator finds this dict.
        self._updates_key: int | None = None
        self.updates: dict[int, Any] = {}
        first = nets[0]
        self.plan: list[tuple[str, Any]] = []
        self.conv_w = nn.ParameterList()
        self.conv_b = nn.ParameterList()
        self.dense_w = nn.ParameterList()
        self.dense_b = nn.ParameterList()
        k = self.k
        # Made where the nets live, so loading their weights never crosses the PCIe bus twice.
        empty = functools.partial(torch.empty, device=next(first.parameters()).device)
        for layer in first.layers:
            if isinstance(layer, nn.Conv1d):
                out_c, in_c, width = layer.weight.shape
                self.conv_w.append(nn.Parameter(empty(k * out_c, in_c, 1, width)))
                self.conv_b.append(nn.Parameter(empty(k * out_c)))
                self.plan.append(("conv", (len(self.conv_w) - 1, layer.stride[0])))
            elif isinstance(layer, nn.MaxPool1d):
                self.plan.append(("pool", layer.kernel_size))
            elif isinstance(layer, nn.Flatten):
                self.plan.append(("flatten", None))
            elif isinstance(layer, nn.Linear):
                self.dense_w.append(nn.Parameter(empty(k, layer.in_features,
                                                             layer.out_features)))
                self.dense_b.append(nn.Parameter(empty(k, 1, layer.out_features)))
                self.plan.append(("dense", len(self.dense_w) - 1))
            elif type(layer) in _ACTIVATIONS:
                # Plain functions, not the nets' module objects: a compiled forward then
                # depends on no object of one pack and serves the next pack unchanged.
                self.plan.append(("act", _ACTIVATIONS[type(layer)]))
            else:
                raise TypeError(f"BatchedNT3 cannot batch a {type(layer).__name__} layer")
        #: What forward runs: the plan, with activations fused where asked for.
        self.steps = _forward_steps(self.plan, fuse_activations, self._in_kernel)
        self.load(nets)

    def _in_kernel(self, index: int, stride: int) -> bool:
        """Whether convolution ``index`` is one that genodl's kernel runs on a GPU."""
        return self.conv_kernel and conv_in_kernel(self.conv_w[index], self.k, stride)

    @staticmethod
    def signature(nets: Sequence[nn.Module]) -> tuple:
        """What a module built from ``nets`` depends on besides the weights' values."""
        layers = nets[0].layers
        return (len(nets),) + tuple(
            (type(layer).__name__, tuple(getattr(layer, "weight", torch.empty(0)).shape),
             getattr(layer, "stride", None), getattr(layer, "kernel_size", None))
            for layer in layers)

    @torch.no_grad()
    def load(self, nets: Sequence[nn.Module]) -> None:
        """Copy the ``K`` networks' weights in (used again for every pack of a worker)."""
        conv_i = dense_i = 0
        for i, layer in enumerate(nets[0].layers):
            if isinstance(layer, nn.Conv1d):
                self.conv_w[conv_i].copy_(torch.cat([n.layers[i].weight for n in nets])
                                          .unsqueeze(2))
                self.conv_b[conv_i].copy_(torch.cat([n.layers[i].bias for n in nets]))
                conv_i += 1
            elif isinstance(layer, nn.Linear):
                self.dense_w[dense_i].copy_(torch.stack([n.layers[i].weight.t() for n in nets]))
                self.dense_b[dense_i].copy_(torch.stack([n.layers[i].bias for n in nets])
                                            .unsqueeze(1))
                dense_i += 1
        for param in self.parameters():
            param.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, width = x.shape
        h = x.transpose(0, 1).reshape(b, k, 1, width)
        if h.is_cuda:
            h = h.contiguous(memory_format=torch.channels_last)
        for kind, arg in self.steps:
            if kind == "conv":
                index, stride, relu, with_bias = arg
                h = conv_channels_last(h, self.conv_w[index].squeeze(2),
                                       self.conv_b[index] if with_bias else None,
                                       stride=stride, groups=k, kernel=self.conv_kernel,
                                       relu=relu)
            elif kind == "relu_pool":
                pool, bias_of = arg
                h = relu_max_pool(h, pool, None if bias_of is None else self.conv_b[bias_of])
            elif kind == "pool":
                h = F.max_pool2d(h, (1, arg))
            elif kind == "flatten":
                # [B, K*C, 1, L] -> [K, B, C*L] in each trial's channel-major order.
                h = h.reshape(b, k, -1).transpose(0, 1)
            elif kind == "dense" and arg in self.updates:
                from genodl_core.training.backward_sgd import dense_updated_in_backward

                h = dense_updated_in_backward(h, self.dense_b[arg], self._updates_key, arg)
            elif kind == "dense":
                h = torch.baddbmm(self.dense_b[arg], h, self.dense_w[arg])
            else:
                h = arg(h)
        return h

    def update_in_backward(self, lr: torch.Tensor, *, momentum: float, weight_decay: float,
                           min_weights: int, shadow_dtype: torch.dtype = torch.bfloat16) -> int:
        """Have the big dense layers apply SGD in backward; returns how many do.

        ``lr`` is the ``[K]`` learning-rate tensor its owner keeps current. Layers with fewer
        than ``min_weights`` weights per trial, or rows the kernel cannot read efficiently,
        stay with the optimizer. Called once per pack: momentum buffers start at zero.
        """
        from genodl_core.kernels.sgd_update import efficient
        from genodl_core.training.backward_sgd import BackwardSGDState, keyed_states

        if self._updates_key is None:
            self._updates_key, self.updates = keyed_states(self)
        group = {"momentum": momentum, "weight_decay": weight_decay}
        self.updates.clear()  # in place: the operator reads this very dict
        self.updates.update({
            i: BackwardSGDState(w, group, lr=lr, shadow_dtype=shadow_dtype)
            for i, w in enumerate(self.dense_w)
            if w[0].numel() >= min_weights and efficient(tuple(w.shape))})
        return len(self.updates)

    def trial_groups(self) -> list[torch.Tensor]:
        """Every parameter, each viewable as ``[K, ...]`` with trial ``k`` in row ``k``."""
        return list(self.parameters())

    def write_masters(self) -> None:
        """Bring the fp32 weights of layers updated in backward up to date (they lag behind
        the training steps: see :class:`~genodl_core.training.backward_sgd.BackwardSGDState`)."""
        for state in self.updates.values():
            state.write_master()

    @torch.no_grad()
    def write_back(self, nets: Sequence[nn.Module]) -> None:
        """Copy each trial's trained weights into its ordinary network."""
        self.write_masters()
        conv_i = dense_i = 0
        for i, layer in enumerate(nets[0].layers):
            if isinstance(layer, nn.Conv1d):
                w = self.conv_w[conv_i].squeeze(2).view(self.k, *layer.weight.shape)
                bias = self.conv_b[conv_i].view(self.k, -1)
                for t, net in enumerate(nets):
                    net.layers[i].weight.copy_(w[t])
                    net.layers[i].bias.copy_(bias[t])
                conv_i += 1
            elif isinstance(layer, nn.Linear):
                for t, net in enumerate(nets):
                    net.layers[i].weight.copy_(self.dense_w[dense_i][t].t())
                    net.layers[i].bias.copy_(self.dense_b[dense_i][t, 0])
                dense_i += 1


class BatchedOptimizer:
    """SGD (momentum, L2) or Adam over ``[K, ...]`` parameters with one learning rate per trial.

    The update rules are torch's ``SGD`` (dampening 0, no Nesterov) and ``Adam`` (no amsgrad,
    L2 weight decay), as :func:`genodl_core.training.loop.make_optimizer` configures them, so a
    trial's weights follow the same trajectory as under its own optimizer.
    """

    def __init__(self, params: Sequence[nn.Parameter], k: int, *, kind: str, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, betas=(0.9, 0.999),
                 eps: float = 1e-7):
        self.params = list(params)
        self.k = k
        self.kind, self.momentum, self.weight_decay = kind, momentum, weight_decay
        self.betas, self.eps = betas, eps
        device = self.params[0].device
        self.lr = torch.full((k,), float(lr), dtype=torch.float32, device=device)
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def set_lr(self, lrs: Sequence[float]) -> None:
        self.lr.copy_(torch.tensor([float(v) for v in lrs], dtype=torch.float32))

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            w = p.view(self.k, -1)
            g = p.grad.reshape(self.k, -1)
            if self.weight_decay:
                g = g.add(w, alpha=self.weight_decay)
            lr = self.lr.view(self.k, 1)
            if self.kind == "sgd":
                if self.momentum:
                    if "buf" not in state:
                        state["buf"] = g.clone()
                    else:
                        state["buf"].mul_(self.momentum).add_(g)
                    g = state["buf"]
                w.sub_(lr * g)
                continue
            b1, b2 = self.betas
            if "m" not in state:
                state["m"] = torch.zeros_like(w)
                state["v"] = torch.zeros_like(w)
            m, v = state["m"], state["v"]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bias1 = 1 - b1 ** self.steps
            bias2 = 1 - b2 ** self.steps
            denom = (v.sqrt() / math.sqrt(bias2)).add_(self.eps)
            w.sub_((lr / bias1) * m / denom)


# --------------------------------------------------------------------------------------------
# the batched training loop
# --------------------------------------------------------------------------------------------

def fit_pack(members: Sequence[tuple[FitContext, Callable[[], nn.Module], Any, int]]
             ) -> list[FitOutcome]:
    """Train the pack's trials together; one :class:`FitOutcome` per member, in order.

    The loop mirrors :func:`genodl_core.training.loop.fit_classifier` step for step (same
    batches per trial, loss, metrics, plateau rule, objective hooks and curves).

    Raises
    ------
    DataError
        Members whose training splits differ in size, or bad labels.
    TrialTimeout
        The earliest deadline of the members ran out.
    """
    from genodl_core.training.loop import PlateauSchedule, check_split

    ctxs = [m[0] for m in members]
    objectives = [m[2] for m in members]
    n_classes = members[0][3]
    first = ctxs[0]
    train, device, precision = first.spec.train, first.device, first.precision
    k = len(members)
    sizes = {len(c.dataset.x_train) for c in ctxs}
    if len(sizes) != 1:
        raise DataError(f"trials of one pack have training splits of sizes {sorted(sizes)}")
    fast = fast_path_for(device, precision)
    feature_dtype = torch.bfloat16 if fast.bf16_inputs and precision == "bf16" else torch.float32
    for c in ctxs:  # the checks a single trial's DeviceData makes, without its copies
        for split, x, y in (("train", c.dataset.x_train, c.dataset.y_train),
                            ("val", c.dataset.x_val, c.dataset.y_val)):
            check_split(split, x, y, n_classes, f"data source {c.spec.data.name!r}")
    x_train = _stack_shared([c.dataset.x_train for c in ctxs], device, feature_dtype)
    y_train = torch.stack([torch.as_tensor(c.dataset.y_train, dtype=torch.int64)
                           for c in ctxs]).to(device)
    x_val = torch.as_tensor(np.ascontiguousarray(first.dataset.x_val)).to(device, feature_dtype)
    y_val = torch.as_tensor(first.dataset.y_val, dtype=torch.int64).to(device)
    # Each validation batch runs K trials' samples through every convolution: K x batch is
    # held at a single trial's validation batch, or 8 trials x 256 samples would make each
    # paper-size activation 15.8 GB (measured no slower: docs/performance.md).
    eval_bs = max(train.batch_size, (fast.eval_batch_size or 0) // k)
    deadline = min((c.deadline for c in ctxs if c.deadline is not None), default=None)

    def amp() -> contextlib.AbstractContextManager:
        return autocast(device, precision)

    abstaining = objectives[0].abstain_class is not None
    curves: list[dict[str, list[float]]] = [{} for _ in ctxs]
    t_start = time.perf_counter()
    with matmul_precision(device, precision), cudnn_benchmark(fast.cudnn_benchmark), \
            contextlib.ExitStack() as cleanup:
        nets = [m[1]() for m in members]
        n_parameters = sum(p.numel() for p in nets[0].parameters())
        model, forward, release = _batched_model(nets, device, fast.compile, fast.conv_kernel,
                                                 fast.fused_activations)
        cleanup.callback(release)
        optimizer = BatchedOptimizer(model.trial_groups(), k, kind=train.optimizer,
                                     lr=train.learning_rate, momentum=train.momentum,
                                     weight_decay=train.weight_decay)
        if fast.fused_update and train.optimizer == "sgd" and precision == "bf16":
            model.update_in_backward(optimizer.lr, momentum=train.momentum,
                                     weight_decay=train.weight_decay,
                                     min_weights=PACK_UPDATE_MIN_WEIGHTS)
        else:  # a worker's cached module may come from a pack that updated in backward
            model.updates.clear()
        lr_holders = [types.SimpleNamespace(param_groups=[{"lr": train.learning_rate}])
                      for _ in ctxs]
        plateaus = [PlateauSchedule(h, train.plateau_factor, train.plateau_patience,
                                    train.plateau_min_delta, train.min_learning_rate)
                    for h in lr_holders]
        shuffles = [torch.Generator().manual_seed(derive_seed(c.spec.seed, "shuffle"))
                    for c in ctxs]
        n = x_train.shape[-2]
        rows = torch.arange(k, device=device).view(k, 1)
        for ctx in ctxs:
            ctx.log.info("training batched with %d trials: %d parameters each on %d samples, "
                         "%d epochs, batch %d, %s %s", k, n_parameters, n, train.epochs,
                         train.batch_size, device, precision)
        val_logits = torch.empty(0)
        for epoch in range(train.epochs):
            t_epoch = time.perf_counter()
            lrs = [p.lr for p in plateaus]
            optimizer.set_lr(lrs)
            model.train()
            order = torch.stack([torch.randperm(n, generator=g) for g in shuffles]).to(device)
            sums = torch.zeros(k, 3, dtype=torch.float64, device=device)
            for start in range(0, n, train.batch_size):
                if deadline is not None and time.monotonic() > deadline:
                    raise TrialTimeout(f"train.timeout_s={train.timeout_s} exceeded in a batched "
                                       "pack; raise it or train fewer epochs")
                idx = order[:, start:start + train.batch_size]
                xb = x_train[idx] if x_train.dim() == 2 else x_train[rows, idx]
                sums += pack_train_step(forward, optimizer, objectives, xb, y_train[rows, idx],
                                        amp)
            val_sums, val_logits = _evaluate(model, forward, objectives, x_val, y_val, eval_bs,
                                             amp)
            seconds = time.perf_counter() - t_epoch
            for t, (ctx, obj) in enumerate(zip(ctxs, objectives)):
                metrics = rates_from_sums(sums[t], n, abstaining)
                val = rates_from_sums(val_sums[t], len(y_val), abstaining)
                metrics.update({f"val_{key}": v for key, v in val.items()})
                metrics.update(obj.end_epoch(epoch, val))
                metrics["learning_rate"] = lrs[t]
                if train.reduce_lr_on_plateau:
                    plateaus[t].step(metrics["val_loss"])
                metrics["epoch_seconds"] = seconds
                for key, value in metrics.items():
                    curves[t].setdefault(key, []).append(float(value))
                if not math.isfinite(metrics["loss"]):
                    ctx.log.warning("epoch %d: training loss is %s", epoch, metrics["loss"])
                ctx.on_epoch(epoch, dict(metrics))
        model.write_back(nets)
    train_seconds = time.perf_counter() - t_start
    outcomes = []
    for t, obj in enumerate(objectives):
        final = {key: values[-1] for key, values in curves[t].items()}
        final.update(epochs_run=float(train.epochs), train_seconds=train_seconds,
                     n_parameters=float(n_parameters))
        probabilities = torch.softmax(val_logits[t], dim=1).cpu().numpy().astype(np.float32)
        outcomes.append(FitOutcome(curves=curves[t], final=final,
                                   arrays={"val_probabilities": probabilities},
                                   extra={**obj.extra(), "n_parameters": int(n_parameters),
                                          "batched_trials": k}))
    return outcomes


def pack_train_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: BatchedOptimizer,
                    objectives: Sequence[Any], xb: torch.Tensor, yb: torch.Tensor,
                    amp: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """One step of every trial of a pack on its batch (``xb [K, B, F]``, ``yb [K, B]``).

    Each trial's loss is its own batch mean, so the sum's gradient is each trial's gradient.
    Returns the per-trial metric sums ``[K, 3]``, on the device.
    """
    optimizer.zero_grad()
    with amp():
        logits = forward(xb)
    losses = [obj.per_sample_loss(logits[t], yb[t]) for t, obj in enumerate(objectives)]
    torch.stack([loss.mean() for loss in losses]).sum().backward()
    optimizer.step()
    return torch.stack([batch_sums(loss, logits[t].detach(), yb[t], obj.abstain_class)
                        for t, (loss, obj) in enumerate(zip(losses, objectives))])


_ACTIVATIONS: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: F.relu, nn.ELU: F.elu, nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid}


def _forward_steps(plan: list[tuple[str, Any]], fuse: bool,
                   in_kernel: Callable[[int, int], bool]) -> list[tuple[str, Any]]:
    """What :meth:`BatchedNT3.forward` runs: ``plan``, with (``fuse``) each ReLU merged into
    the step before or after it.

    Convolution steps get ``(index, stride, relu, with_bias)``. Fused, convolution + ReLU +
    max-pooling become one ``relu_pool`` step that activates and pools (argument ``(pool,
    index of the convolution whose bias it adds, or None)``); the bias moves into it unless
    the convolution runs in genodl's kernel (``in_kernel(index, stride)``), which adds it for
    free. Any other ReLU right after a convolution becomes that convolution's ``relu`` flag.
    """
    steps: list[tuple[str, Any]] = []
    i = 0
    while i < len(plan):
        kind, arg = plan[i]
        relu_next = fuse and i + 1 < len(plan) and plan[i + 1] == ("act", F.relu)
        pool_after = (relu_next and i + 2 < len(plan) and plan[i + 2][0] == "pool"
                      and plan[i + 2][1] <= MAX_POOL)
        if kind == "conv" and pool_after:
            keep_bias = in_kernel(*arg)
            steps += [("conv", (*arg, False, keep_bias)),
                      ("relu_pool", (plan[i + 2][1], None if keep_bias else arg[0]))]
            i += 3
        elif kind == "conv" and relu_next:
            steps.append(("conv", (*arg, True, True)))
            i += 2
        else:
            steps.append(("conv", (*arg, False, True)) if kind == "conv" else (kind, arg))
            i += 1
    return steps


#: One batched module (and its compiled forward) per worker process, reused by every pack of
#: the same shape: compiling costs ~10 s per pack on a GPU, loading new weights microseconds.
_model_cache: dict[tuple, tuple[BatchedNT3, Callable, threading.Lock]] = {}
_model_cache_lock = threading.Lock()


def _batched_model(nets: Sequence[nn.Module], device: str, compile_forward: bool,
                   conv_kernel: bool = False, fuse_activations: bool = False
                   ) -> tuple[BatchedNT3, Callable, Callable[[], None]]:
    """The pack's module with the nets' weights loaded, its forward, and a release function.

    A cached module busy with another pack of the same process (thread executors) is not
    shared: that pack gets a fresh, uncached module.
    """
    key = (BatchedNT3.signature(nets), str(device), compile_forward, conv_kernel,
           fuse_activations)
    with _model_cache_lock:
        cached = _model_cache.get(key)
        if cached is not None and cached[2].acquire(blocking=False):
            model, forward, lock = cached
            model.load(nets)
            return model, forward, lock.release
        model = BatchedNT3(nets, conv_kernel=conv_kernel,
                           fuse_activations=fuse_activations).to(device)
        forward = torch.compile(model, dynamic=False) if compile_forward else model
        if cached is not None:               # busy: this pack's module stays private
            return model, forward, lambda: None
        if len(_model_cache) >= 2:
            _model_cache.pop(next(iter(_model_cache)))
        lock = threading.Lock()
        lock.acquire()
        _model_cache[key] = (model, forward, lock)
        return model, forward, lock.release


def _stack_shared(arrays: Sequence[np.ndarray], device: str, dtype: torch.dtype) -> torch.Tensor:
    """``[n, F]`` once when every trial trains on the same features, else ``[K, n, F]``.

    Label-noise trials share the (cached, never modified) feature array, so the pack keeps a
    single device copy of it.
    """
    def put(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    if all(a is arrays[0] for a in arrays[1:]):  # identity: comparing values costs a pass
        return put(arrays[0])
    return torch.stack([put(a) for a in arrays])


@torch.no_grad()
def _evaluate(model: BatchedNT3, forward: Callable[[torch.Tensor], torch.Tensor],
              objectives: Sequence[Any], x: torch.Tensor, y: torch.Tensor, batch_size: int,
              amp: Callable[[], contextlib.AbstractContextManager]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trial metric sums ``[K, 3]`` and fp32 logits ``[K, n, outputs]`` of the shared split.

    ``forward`` is ``model`` itself or its compiled form.
    """
    model.eval()
    k = model.k
    sums = torch.zeros(k, 3, dtype=torch.float64, device=x.device)
    outputs = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].unsqueeze(0).expand(k, -1, -1)
        yb = y[start:start + batch_size]
        with amp():
            logits = forward(xb)
        logits = logits.float()
        sums += torch.stack([batch_sums(obj.per_sample_loss(logits[t], yb), logits[t], yb,
                                        obj.abstain_class) for t, obj in enumerate(objectives)])
        outputs.append(logits)
    return sums, torch.cat(outputs, dim=1)


__all__ = ["pack_key", "group_packs", "run_trials", "current_pack", "PackTrainer", "BatchedNT3",
           "BatchedOptimizer", "fit_pack", "pack_train_step", "ARRIVAL_TIMEOUT_S",
           "PACK_UPDATE_MIN_WEIGHTS"]
