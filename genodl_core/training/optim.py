"""The one optimizer factory: SGD or Adam as ``[train]`` says, for one trial or a pack.

Defaults that follow Keras/CANDLE rather than torch are stated here and in docs/models.md:
Adam's epsilon is Keras' 1e-7 (torch's default is 1e-8) for every family, so that NT3 matches
CANDLE's runs. Weight decay is plain L2 for both optimizers.

What the plan decides: ``fused_optimizer`` picks torch's single-kernel step; ``fused_update``
(SGD at bf16 on CUDA) lets big dense layers apply SGD inside the backward pass
(:mod:`genodl_core.training.backward_sgd`), the rest staying with the optimizer. A pack of K
trials gets :class:`BatchedOptimizer`, which updates ``[K, ...]`` parameters with one learning
rate per trial by the same rules, so each trial follows the trajectory it would alone.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from genodl_core.spec import TrainSpec
from genodl_core.training.plan import ExecutionPlan

#: Adam's epsilon: Keras' default, which CANDLE's NT3 ran with.
ADAM_EPS = 1e-7
#: Dense layers with at least this many weights (per trial) apply SGD in the backward pass when
#: the plan says ``fused_update``; smaller ones gain nothing and would each cost a kernel tuning.
BACKWARD_UPDATE_MIN_WEIGHTS = 1 << 16
#: Storage of those layers' momentum. bf16 moves fewer bytes per weight and step; its rounding
#: (relative 2^-9 per step) does not build up with a momentum below 1 (the buffer's relative
#: error stays within ~2^-8 at D-GEX's 0.5).
BACKWARD_UPDATE_MOMENTUM_DTYPE = torch.bfloat16


class TrialOptimizer:
    """torch's SGD/Adam over one trial's module, with the plan's options.

    Its only learning rate is set by :meth:`set_lrs` (one row); layers updated in backward
    read the same parameter group.
    """

    def __init__(self, module: nn.Module, train: TrainSpec, plan: ExecutionPlan,
                 nesterov: bool = False):
        fused = {"fused": True} if plan.switches.fused_optimizer else {}
        self.backward_states: list[Any] = []
        if train.optimizer == "sgd" and plan.switches.fused_update:
            from genodl_core.training.backward_sgd import UpdatingLinear, sgd_with_backward_updates

            self.torch = sgd_with_backward_updates(
                module, lr=train.learning_rate, momentum=train.momentum,
                weight_decay=train.weight_decay, momentum_dtype=BACKWARD_UPDATE_MOMENTUM_DTYPE,
                min_weights=BACKWARD_UPDATE_MIN_WEIGHTS)
            self.backward_states = [m.state for m in module.modules()
                                    if isinstance(m, UpdatingLinear)]
        elif train.optimizer == "sgd":
            self.torch = torch.optim.SGD(module.parameters(), lr=train.learning_rate,
                                         momentum=train.momentum, nesterov=nesterov,
                                         weight_decay=train.weight_decay, **fused)
        else:
            self.torch = torch.optim.Adam(module.parameters(), lr=train.learning_rate,
                                          weight_decay=train.weight_decay, eps=ADAM_EPS, **fused)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        for group in self.torch.param_groups:
            group["lr"] = lrs[0]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.torch.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.torch.step()

    def state_dict(self) -> dict[str, Any]:
        return {"torch": self.torch.state_dict(),
                "backward": [_buffer(s) for s in self.backward_states]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.torch.load_state_dict(state["torch"])
        for s, buf in zip(self.backward_states, state["backward"]):
            _load_buffer(s, buf)


class BatchedOptimizer:
    """SGD (momentum, L2) or Adam over ``[K, ...]`` parameters with one learning rate per trial.

    The update rules are torch's ``SGD`` (dampening 0, Nesterov optional) and ``Adam`` (no
    amsgrad, L2 weight decay), as :class:`TrialOptimizer` configures them, so a trial's weights
    follow the same trajectory as under its own optimizer.
    """

    def __init__(self, params: Sequence[nn.Parameter], k: int, *, kind: str, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, betas=(0.9, 0.999),
                 eps: float = ADAM_EPS, nesterov: bool = False):
        self.params = list(params)
        self.nesterov = nesterov
        self.k = k
        self.kind, self.momentum, self.weight_decay = kind, momentum, weight_decay
        self.betas, self.eps = betas, eps
        device = self.params[0].device
        self.lr = torch.full((k,), float(lr), dtype=torch.float32, device=device)
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        self.steps = 0
        #: In-backward update states of the module's big dense layers (see make_optimizer).
        self.backward_states: list[Any] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def set_lrs(self, lrs: Sequence[float]) -> None:
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
                    g = (g.add(state["buf"], alpha=self.momentum) if self.nesterov
                         else state["buf"])
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

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state, "steps": self.steps, "lr": self.lr.clone(),
                "backward": [_buffer(s) for s in self.backward_states]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.lr.device
        self.state = [{key: v.to(device) for key, v in s.items()} for s in state["state"]]
        self.steps = state["steps"]
        self.lr.copy_(state["lr"])
        for s, buf in zip(self.backward_states, state["backward"]):
            _load_buffer(s, buf)


def _buffer(state: Any) -> torch.Tensor | None:
    return None if state.momentum_buf is None else state.momentum_buf.detach().clone()


def _load_buffer(state: Any, buf: torch.Tensor | None) -> None:
    if buf is not None and state.momentum_buf is not None:
        state.momentum_buf.copy_(buf)


def make_optimizer(module: nn.Module, train: TrainSpec, plan: ExecutionPlan,
                   k: int = 1, *, nesterov: bool = False) -> TrialOptimizer | BatchedOptimizer:
    """The optimizer of ``k`` stacked trials of ``module`` (k = 1: torch's own).

    ``nesterov`` (SGD with momentum; CNNC's reference optimizer) is a family's option rather
    than a ``[train]`` key; in-backward updates (``fused_update``) do not implement it, so
    a family asking for it must not offer that switch.

    A stacked module that can update big dense layers in backward (``update_in_backward``)
    does so when the plan says ``fused_update`` and the optimizer is SGD.
    """
    if k == 1:
        return TrialOptimizer(module, train, plan, nesterov=nesterov)
    optimizer = BatchedOptimizer(list(module.parameters()), k, kind=train.optimizer,
                                 lr=train.learning_rate, momentum=train.momentum,
                                 weight_decay=train.weight_decay, nesterov=nesterov)
    if (plan.switches.fused_update and train.optimizer == "sgd"
            and hasattr(module, "update_in_backward")):
        module.update_in_backward(optimizer.lr, momentum=train.momentum,
                                  weight_decay=train.weight_decay,
                                  min_weights=BACKWARD_UPDATE_MIN_WEIGHTS)
        optimizer.backward_states = list(module.updates.values())
    return optimizer


__all__ = ["ADAM_EPS", "BACKWARD_UPDATE_MIN_WEIGHTS", "TrialOptimizer", "BatchedOptimizer",
           "make_optimizer"]
