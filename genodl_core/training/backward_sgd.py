"""SGD for big dense layers applied inside the backward pass (fast path, bf16, CUDA).

Why: the dense layers of D-GEX (256 M weights at 9000 x 3) and NT3's first dense layer (77 M)
are memory-bound at the papers' batch sizes; what costs is moving the weights, not the
arithmetic. :func:`genodl_core.kernels.sgd_update.sgd_update_` computes a layer's weight
gradient tile by tile and updates the weights while the tile is still in registers, and keeps
the bf16 copy that the forward pass and the input gradient read. The gradient never exists as a
tensor, and autocast's per-step weight cast disappears.

How it fits the training loops: :func:`sgd_with_backward_updates` swaps every ``nn.Linear``
of a network for an :class:`UpdatingLinear` that holds the *same* weight and bias parameters
(state dicts, best-epoch copies and evaluation are unchanged) and returns a torch SGD for the
remaining parameters (biases, convolutions). Both read one parameter group, so learning-rate
schedules that set ``group["lr"]`` steer both. The update of a layer runs when backward
reaches it, which is the moment ``optimizer.step()`` would apply the same rule to the same
gradient: the loss was already computed with the old weights, and the layer's input gradient
is computed from them before they change.

Limits: one forward per backward (the usual training step; a second forward before the
backward would read half-updated weights), SGD only (Adam keeps torch's optimizer), and the
update happens even if the step is later abandoned (e.g. a non-finite loss stops the trial).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.kernels.sgd_update import efficient, sgd_update_


class BackwardSGDState:
    """A master weight's low-precision shadow, momentum buffer and learning-rate tensor.

    The shadow is refreshed from the master weight whenever the weight changes outside the
    kernel (``load_state_dict`` of a best epoch, initialisation): detected by torch's version
    counter, which in-place torch operations bump and the kernel's writes do not.
    """

    def __init__(self, weight: nn.Parameter, group: dict[str, Any], *,
                 shadow_dtype: torch.dtype = torch.bfloat16,
                 momentum_dtype: torch.dtype = torch.float32):
        self.weight = weight
        self.group = group
        self.shadow = torch.empty_like(weight, dtype=shadow_dtype)
        self._shadow_version: int | None = None
        self.momentum_buf = (torch.zeros_like(weight, dtype=momentum_dtype)
                             if group.get("momentum", 0.0) else None)
        self._lr = torch.empty(1, dtype=torch.float32, device=weight.device)
        self._lr_value: float | None = None

    def shadow_weight(self) -> torch.Tensor:
        """The bf16 weights the forward pass reads, brought up to date with the master weight
        and the group's learning rate (outside CUDA graphs: see :meth:`sync`)."""
        if not _capturing():
            self.sync()
        return self.shadow

    def sync(self) -> None:
        """Bring the shadow and the learning-rate tensor up to date.

        Called by every eager forward pass. Inside a captured graph these checks would be
        recorded once and never run again, so a graph's owner calls this before every replay.
        """
        if self.weight._version != self._shadow_version:
            with torch.no_grad():
                self.shadow.copy_(self.weight)
            self._shadow_version = self.weight._version
        lr = float(self.group["lr"])
        if lr != self._lr_value:
            self._lr.fill_(lr)
            self._lr_value = lr

    def apply(self, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
        """SGD step with the gradient ``grad_out^T @ inputs`` (``[N, out]``, ``[N, in]``), at
        the learning rate synced by this step's forward pass."""
        momentum = float(self.group.get("momentum", 0.0))
        if momentum and self.momentum_buf is None:
            raise RuntimeError(f"momentum is {momentum}, but the layer was prepared for "
                               f"momentum 0 (no buffer): create the optimizer with the "
                               f"momentum it will use")
        expand = lambda t: None if t is None else t.unsqueeze(0)  # noqa: E731
        sgd_update_(grad_out.unsqueeze(0), inputs.unsqueeze(0), expand(self.weight.data),
                    expand(self.shadow), expand(self.momentum_buf), self._lr,
                    momentum=momentum, weight_decay=float(self.group.get("weight_decay", 0.0)))


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class _LinearUpdatedInBackward(torch.autograd.Function):
    """``x @ shadow.T + bias``; backward returns input and bias gradients and updates weights."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None,
                state: BackwardSGDState) -> torch.Tensor:
        shadow = state.shadow_weight()
        xs = x.to(shadow.dtype)
        y = F.linear(xs, shadow, None if bias is None else bias.to(shadow.dtype))
        ctx.save_for_backward(xs)
        ctx.state = state
        ctx.x_dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (xs,) = ctx.saved_tensors
        state: BackwardSGDState = ctx.state
        dy = grad_y.to(xs.dtype).reshape(-1, grad_y.shape[-1])
        x2 = xs.reshape(-1, xs.shape[-1])
        dx = None
        if ctx.needs_input_grad[0]:
            # From the weights of this step: before the update below overwrites the shadow.
            dx = (dy @ state.shadow).view(xs.shape).to(ctx.x_dtype)
        db = dy.float().sum(0) if ctx.needs_input_grad[1] else None
        state.apply(dy, x2)
        return dx, db, None


class UpdatingLinear(nn.Module):
    """A linear layer whose training backward pass also applies SGD to its weight.

    Holds the original layer's ``weight`` and ``bias`` parameters under the same names, so
    state dicts are those of the ``nn.Linear`` it replaces. In eval mode or without gradients
    it is a plain linear layer (under autocast, on the master weights).
    """

    def __init__(self, linear: nn.Linear, state: BackwardSGDState):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return _LinearUpdatedInBackward.apply(x, self.bias, self.state)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sgd in backward"


def sgd_with_backward_updates(net: nn.Module, *, lr: float, momentum: float = 0.0,
                              weight_decay: float = 0.0,
                              momentum_dtype: torch.dtype = torch.float32,
                              shadow_dtype: torch.dtype = torch.bfloat16,
                              min_weights: int = 0) -> torch.optim.SGD:
    """Swap ``net``'s linear layers for :class:`UpdatingLinear`; SGD for everything else.

    Parameters
    ----------
    net
        The network, already on its (CUDA) device; modified in place.
    lr, momentum, weight_decay
        torch SGD's settings (dampening 0, no Nesterov); they apply to every parameter.
    momentum_dtype
        Storage of the momentum of the swapped layers (fp32 = torch's rule exactly).
    shadow_dtype
        The weights the forward pass multiplies (bf16, what autocast would cast them to).
    min_weights
        Only layers with at least this many weights are swapped (small ones gain nothing);
        layers whose rows the kernel cannot read efficiently are never swapped.

    Returns
    -------
    torch.optim.SGD
        Fused (one kernel) over the parameters left; its only parameter group is the one the
        swapped layers read, so setting ``param_groups[0]["lr"]`` changes every rate.
    """
    targets = [(name, module) for name, module in net.named_modules()
               if isinstance(module, nn.Linear) and module.weight.numel() >= min_weights
               and efficient(module.weight.shape)]
    swapped = {id(module.weight) for _, module in targets}
    rest = [p for p in net.parameters() if id(p) not in swapped]
    if not rest:
        # torch's optimizers need a parameter; a zero-size one keeps the group alive.
        rest = [nn.Parameter(torch.zeros(0, device=next(net.parameters()).device))]
    device_is_cuda = rest[0].is_cuda
    optimizer = torch.optim.SGD(rest, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                **({"fused": True} if device_is_cuda else {}))
    group = optimizer.param_groups[0]
    for name, module in targets:
        state = BackwardSGDState(module.weight, group, momentum_dtype=momentum_dtype,
                                 shadow_dtype=shadow_dtype)
        _set_submodule(net, name, UpdatingLinear(module, state))
    return optimizer


def _set_submodule(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, module)


__all__ = ["BackwardSGDState", "UpdatingLinear", "sgd_with_backward_updates"]
