"""SGD for big dense layers applied inside the backward pass (fast path, bf16, CUDA).

Why: the dense layers of D-GEX (256 M weights at 9000 x 3) and NT3's first dense layer (77 M)
are memory-bound at the papers' batch sizes; what costs is moving the weights, not the
arithmetic. :func:`genodl_core.kernels.sgd_update.sgd_update_` computes a layer's weight
gradient tile by tile and updates the weights while the tile is still in registers. The fp32
master weight is kept split in two 16-bit halves, the upper one being the bf16 weight that the
forward pass and the input gradient read. The gradient never exists as a tensor, autocast's
per-step weight cast disappears, and the bf16 copy costs no bytes of its own.

How it fits the training loops: :func:`sgd_with_backward_updates` swaps every ``nn.Linear``
of a network for an :class:`UpdatingLinear` that holds the *same* weight and bias parameters
(state dicts, best-epoch copies and evaluation are unchanged: they first write the split
master back into the parameter) and returns a torch SGD for the
remaining parameters (biases, convolutions). Both read one parameter group, so learning-rate
schedules that set ``group["lr"]`` steer both. The update of a layer runs when backward
reaches it, which is the moment ``optimizer.step()`` would apply the same rule to the same
gradient: the loss was already computed with the old weights, and the layer's input gradient
is computed from them before they change.

Limits: one forward per backward (the usual training step; a second forward before the
backward would read half-updated weights), SGD only (Adam keeps torch's optimizer), the
update happens even if the step is later abandoned (e.g. a non-finite loss stops the trial),
and code that reads a swapped layer's ``weight`` directly between training steps sees it as
of the last state dict or evaluation (:meth:`BackwardSGDState.write_master` updates it).
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.kernels.sgd_update import join_fp32_, sgd_update_, split_fp32_


class BackwardSGDState:
    """A master weight's split storage, momentum buffer and learning-rate tensor.

    The weight is ``[R, C]`` or, for the trials of a pack, ``[G, R, C]`` (group ``g`` is an
    independent matrix with its own learning rate). While training, the kernel updates the
    master weight in its split form (:func:`~genodl_core.kernels.sgd_update.split_fp32_`):
    ``shadow``, the bf16 weights the forward pass reads, and ``low``, the fp32 pattern's lower
    half. The fp32 parameter then falls behind; :meth:`write_master` brings it up to date
    (state dicts and evaluation of :class:`UpdatingLinear` call it, a pack calls it before
    writing its trials' weights back). With ``shadow_dtype`` fp32 there is no split: the
    kernel updates the parameter itself, which is then also the shadow (or, padded, an fp32
    copy of it).

    With ``pad_columns``, the split storage has a multiple of 8 columns (the extra ones zero):
    the kernel and cuBLAS then read aligned rows. D-GEX's first layer takes the 943 landmarks;
    unpadded, its rows start unaligned, the kernel reads them element by element and cuBLAS
    falls back to kernels of an older GPU generation. The layer's input is padded with zero
    columns to match, so the extra weights neither change the output nor receive a gradient.
    Only the input dimension can be padded this way: a pack's ``[G, in, out]`` layers keep
    their shape (their columns are outputs) and are only swapped when already aligned.

    The split is made again from the parameter whenever the parameter changes outside the
    kernel (``load_state_dict`` of a best epoch, initialisation, a new pack's weights):
    detected by torch's version counter, which in-place torch operations bump and the
    kernel's writes do not. A change to the parameter therefore wins over updates not yet
    written to it.

    ``group`` supplies ``momentum`` and ``weight_decay`` (and ``lr``, a float, unless ``lr``
    is given: a ``[G]`` tensor that its owner keeps current, as a pack's optimizer does).
    """

    def __init__(self, weight: nn.Parameter, group: dict[str, Any], *,
                 shadow_dtype: torch.dtype = torch.bfloat16,
                 momentum_dtype: torch.dtype = torch.float32,
                 lr: torch.Tensor | None = None, pad_columns: bool = False):
        if shadow_dtype not in (torch.bfloat16, weight.dtype) or weight.dtype != torch.float32:
            raise ValueError(f"in-backward SGD keeps an fp32 master weight (got "
                             f"{weight.dtype}) and reads it as bf16 or fp32 (got {shadow_dtype})")
        self.weight = weight
        self.group = group
        #: Extra zero columns of the storage (and of the input the layer multiplies).
        self.pad = -weight.shape[-1] % _COLUMN_MULTIPLE if pad_columns else 0
        shape = (*weight.shape[:-1], weight.shape[-1] + self.pad)
        split = shadow_dtype != weight.dtype
        new = lambda dtype: weight.new_empty(shape, dtype=dtype)  # noqa: E731
        #: Whether the kernel updates storage of its own rather than the parameter itself.
        self._own_storage = split or self.pad > 0
        self.shadow = new(shadow_dtype) if self._own_storage else weight.data
        self.low = new(torch.int16) if split else None
        self._shadow_version: int | None = None
        #: Whether the storage may hold updates the fp32 parameter does not.
        self._master_behind = False
        self.momentum_buf = (new(momentum_dtype).zero_()
                             if group.get("momentum", 0.0) else None)
        self._own_lr = lr is None
        self._lr = torch.empty(1, dtype=torch.float32, device=weight.device) if lr is None else lr
        self._lr_value: float | None = None

    def shadow_weight(self) -> torch.Tensor:
        """The bf16 weights the forward pass reads, brought up to date with the master weight
        and the group's learning rate (outside CUDA graphs: see :meth:`sync`)."""
        if not _capturing():
            self.sync()
        return self.shadow

    def sync(self) -> None:
        """Prepare a training step: split the parameter again if it changed, set the rate.

        Called by every eager training forward pass. Inside a captured graph these checks
        would be recorded once and never run again, so a graph's owner calls this before
        every replay.
        """
        if self.weight._version != self._shadow_version:
            master = self.padded(self.weight.detach())  # no copy when there is no padding
            if self.low is not None:
                split_fp32_(master, self.shadow, self.low)
            elif self.pad:
                self.shadow.copy_(master)
            self._shadow_version = self.weight._version
        # The step this prepares will update the storage (in a graph replay, unseen from here).
        self._master_behind = self._own_storage
        if self._own_lr:
            lr = float(self.group["lr"])
            if lr != self._lr_value:
                self._lr.fill_(lr)
                self._lr_value = lr

    def write_master(self) -> None:
        """Write the updates held in the storage into the fp32 parameter (exactly)."""
        if self._master_behind and self.weight._version == self._shadow_version:
            if self.low is None:  # an fp32 copy (padded)
                master = self.shadow
            else:  # joined in place, or into a padded temporary
                master = (torch.empty_like(self.shadow, dtype=torch.float32) if self.pad
                          else self.weight.data)
                join_fp32_(self.shadow, self.low, master)
            if self.pad:
                self.weight.data.copy_(master[..., :self.weight.shape[-1]])
            self._shadow_version = self.weight._version
        self._master_behind = False

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the zero columns that match the storage's extra ones."""
        return F.pad(x, (0, self.pad)) if self.pad else x

    def apply(self, p: torch.Tensor, q: torch.Tensor) -> None:
        """SGD step with the gradient ``p^T q`` summed over the batch (``[G, N, R]`` and
        ``[G, N, C]``; ``G`` = 1 for a 2-D weight), at the learning rate synced by this step's
        forward pass."""
        momentum = float(self.group.get("momentum", 0.0))
        if momentum and self.momentum_buf is None:
            raise RuntimeError(f"momentum is {momentum}, but the layer was prepared for "
                               f"momentum 0 (no buffer): create the optimizer with the "
                               f"momentum it will use")
        grouped = lambda t: t if t is None or t.dim() == 3 else t.unsqueeze(0)  # noqa: E731
        sgd_update_(p, q, grouped(self.shadow), grouped(self.low), grouped(self.momentum_buf),
                    self._lr, momentum=momentum,
                    weight_decay=float(self.group.get("weight_decay", 0.0)))
        self._master_behind = self._own_storage


#: Rows of the storage are padded to a multiple of this many weights (16 bytes in bf16).
_COLUMN_MULTIPLE = 8


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class _LinearUpdatedInBackward(torch.autograd.Function):
    """``x @ shadow.T + bias``; backward returns input and bias gradients and updates weights."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None,
                state: BackwardSGDState) -> torch.Tensor:
        shadow = state.shadow_weight()
        xs = state.padded(x.to(shadow.dtype))
        y = F.linear(xs, shadow, None if bias is None else bias.to(shadow.dtype))
        ctx.save_for_backward(xs)
        ctx.state = state
        ctx.x_dtype, ctx.x_shape = x.dtype, x.shape
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
            dx = (dy @ state.shadow[:, :ctx.x_shape[-1]]).view(ctx.x_shape).to(ctx.x_dtype)
        db = dy.float().sum(0) if ctx.needs_input_grad[1] else None
        state.apply(dy.unsqueeze(0), x2.unsqueeze(0))
        return dx, db, None


# The dense layers of a pack of trials (``[G, in, out]`` weights, batched matmuls) live inside a
# compiled forward pass. They are custom operators, opaque to the compiler, so the rest of the
# network still fuses as one graph; the operators receive a key and a layer index (constants to
# the compiler) rather than the state, so one compiled forward serves every pack of a worker
# while each pack brings its own state.
_KEYED_STATES: dict[int, dict[int, BackwardSGDState]] = {}
_keys = itertools.count()
#: Keys whose owner is gone: handed out again first, so that a module built for the next pack
#: of the same shape gets the key its predecessor's compiled forward was specialised on.
_free_keys: set[int] = set()


def keyed_states(owner: object) -> tuple[int, dict[int, BackwardSGDState]]:
    """A key and the (empty) dict of states, layer index -> state, that
    :func:`dense_updated_in_backward` finds under it until ``owner`` is gone or
    :func:`release_key` gives the key back."""
    key = min(_free_keys) if _free_keys else next(_keys)
    _free_keys.discard(key)
    states: dict[int, BackwardSGDState] = {}
    _KEYED_STATES[key] = states
    weakref.finalize(owner, release_key, key)
    return key, states


def release_key(key: int) -> None:
    """Forget the states under ``key`` and let the next owner take the key (idempotent)."""
    if _KEYED_STATES.pop(key, None) is not None:
        _free_keys.add(key)


@torch.library.custom_op("genodl::dense_sgd_in_backward", mutates_args=())
def dense_updated_in_backward(h: torch.Tensor, bias: torch.Tensor, key: int,
                              index: int) -> torch.Tensor:
    """``bias + h @ weight`` per group (``[G, N, in] @ [G, in, out]``) on the bf16 shadow of
    the weights; the backward pass returns the input and bias gradients and applies SGD to
    the weights (the state of layer ``index`` under ``key``, see :func:`keyed_states`)."""
    shadow = _KEYED_STATES[key][index].shadow_weight()
    return torch.baddbmm(bias.to(shadow.dtype), h.to(shadow.dtype), shadow)


@dense_updated_in_backward.register_fake
def _(h, bias, key, index):
    dtype = _KEYED_STATES[key][index].shadow.dtype
    return h.new_empty((*h.shape[:-1], bias.shape[-1]), dtype=dtype)


@torch.library.custom_op("genodl::dense_sgd_backward", mutates_args=())
def _dense_sgd_backward(h: torch.Tensor, dy: torch.Tensor, key: int, index: int,
                        need_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # Mutates the state's weights, which the compiler never sees (they are no operands).
    state = _KEYED_STATES[key][index]
    hs, dy = h.to(state.shadow.dtype), dy.to(state.shadow.dtype)
    dh = h.new_empty(0)
    if need_input:
        # From the weights of this step: before the update below overwrites the shadow.
        dh = torch.bmm(dy, state.shadow.transpose(1, 2)).to(h.dtype)
    db = dy.float().sum(1, keepdim=True)
    state.apply(hs, dy)
    return dh, db


@_dense_sgd_backward.register_fake
def _(h, dy, key, index, need_input):
    dh = h.new_empty(h.shape) if need_input else h.new_empty(0)
    return dh, dy.new_empty((dy.shape[0], 1, dy.shape[2]), dtype=torch.float32)


def _dense_setup_context(ctx, inputs, output):
    h, bias, key, index = inputs
    ctx.save_for_backward(h)
    ctx.key, ctx.index, ctx.bias_dtype = key, index, bias.dtype


def _dense_backward(ctx, dy):
    (h,) = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    dh, db = _dense_sgd_backward(h, dy, ctx.key, ctx.index, need_input)
    return (dh if need_input else None), db.to(ctx.bias_dtype), None, None


dense_updated_in_backward.register_autograd(_dense_backward, setup_context=_dense_setup_context)


class UpdatingLinear(nn.Module):
    """A linear layer whose training backward pass also applies SGD to its weight.

    Holds the original layer's ``weight`` and ``bias`` parameters under the same names, so
    state dicts are those of the ``nn.Linear`` it replaces. In eval mode or without gradients
    it is a plain linear layer (under autocast, on the master weights). The ``weight``
    parameter itself lags behind the training steps until a state dict, an evaluation or
    ``state.write_master()`` brings it up to date (see :class:`BackwardSGDState`).
    """

    def __init__(self, linear: nn.Linear, state: BackwardSGDState):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.state = state
        self.register_state_dict_pre_hook(_write_master_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return _LinearUpdatedInBackward.apply(x, self.bias, self.state)
        self.state.write_master()
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sgd in backward"


def _write_master_first(module: UpdatingLinear, prefix: str, keep_vars: bool) -> None:
    module.state.write_master()


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
        Only layers with at least this many weights are swapped (small ones gain nothing).
        Layers whose rows are not a multiple of 8 wide get padded storage (see
        :class:`BackwardSGDState`).

    Returns
    -------
    torch.optim.SGD
        Fused (one kernel) over the parameters left; its only parameter group is the one the
        swapped layers read, so setting ``param_groups[0]["lr"]`` changes every rate.
    """
    targets = [(name, module) for name, module in net.named_modules()
               if isinstance(module, nn.Linear) and module.weight.numel() >= min_weights]
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
                                 shadow_dtype=shadow_dtype, pad_columns=True)
        _set_submodule(net, name, UpdatingLinear(module, state))
    return optimizer


def _set_submodule(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, module)


__all__ = ["BackwardSGDState", "UpdatingLinear", "dense_updated_in_backward", "keyed_states",
           "release_key", "sgd_with_backward_updates"]
