"""NT3's fast layouts: channels-last convolutions and K trials stacked into one module.

Why: a plain ``Conv1d`` picks slow cuDNN kernels for NT3's long sequences, and one NT3 trial
cannot fill a modern GPU (its 64-channel convolutions run far below the tensor-core peak, and
every step pays launch overheads). :class:`ChannelsLastNT3` runs one network's convolutions as
``1 x k`` ``conv2d`` on channels-last tensors; :class:`BatchedNT3` stacks K networks of one
architecture: their convolutions become one grouped convolution (``groups=K``), their dense
layers batched matmuls. Each trial keeps its own weights, so its curves equal those of a
separate run within floating-point tolerance (``tests/unit/test_batched.py`` checks that on
CPU). The execution plan decides which of these run (:mod:`genodl_core.training.plan`);
measured effects are in docs/performance.md.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.kernels import interpreting
from genodl_core.kernels.relu_pool import MAX_POOL, relu_max_pool


# --------------------------------------------------------------------------------------------
# channels-last convolution stack
# --------------------------------------------------------------------------------------------

def conv_in_kernel(weight: torch.Tensor, groups: int, stride: int) -> bool:
    """Whether a convolution with the Conv1d ``weight`` ``[G*CO, C, k]`` (any trailing shape)
    belongs in genodl's kernel: stride 1 and sizes for which it measured faster
    (:func:`genodl_core.kernels.conv1d.preferred`)."""
    if stride != 1:
        return False
    from genodl_core.kernels import conv1d

    return conv1d.preferred(weight.shape[1], weight.shape[0] // groups, groups)


def conv_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                       stride: int = 1, groups: int = 1, kernel: bool = False,
                       relu: bool = False) -> torch.Tensor:
    """A (grouped) Conv1d on ``x`` ``[B, G*C, 1, L]`` (channels-last) -> ``[B, G*CO, 1, L']``.

    ``weight`` is the Conv1d one, ``[G*CO, C, k]``. With ``kernel`` (CUDA, and where
    :func:`conv_in_kernel` says so) genodl's Triton implicit-GEMM kernel runs on the
    ``[B, L, G*C]`` memory of ``x``; otherwise
    cuDNN's ``conv2d`` with a ``1 x k`` kernel. Either way the result is channels-last.
    ``relu``: return ``relu(conv(x))`` (inside the kernel when it runs there).
    """
    if (kernel and bias is not None and (x.is_cuda or interpreting())
            and conv_in_kernel(weight, groups, stride)):
        from genodl_core.kernels import conv1d

        b, gc, _, length = x.shape
        y = conv1d.conv1d_nlc(x.permute(0, 2, 3, 1).reshape(b, length, gc), weight, bias,
                              groups, relu)
        return y.view(b, 1, y.shape[1], y.shape[2]).permute(0, 3, 1, 2)
    weight = weight.unsqueeze(2)
    if x.is_cuda:
        weight = weight.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, weight, bias, stride=(1, stride), groups=groups)
    return F.relu(y) if relu else y


def conv1d_as_conv2d(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv(x)`` for ``x`` shaped ``[B, C, 1, L]`` (channels-last), using ``conv``'s weights.

    Output ``[B, filters, 1, L_out]`` in channels-last layout (see :func:`conv_channels_last`).
    """
    return conv_channels_last(x, conv.weight, conv.bias, stride=conv.stride[0])


class ChannelsLastNT3(nn.Module):
    """Runs an NT3 network's layers on ``[B, C, 1, L]`` channels-last tensors.

    Holds the network itself (so parameters, ``train()``/``eval()`` and state dicts are
    shared) and maps ``[batch, features]`` to the same logits as ``net(x)``.

    Raises
    ------
    TypeError
        The network has a layer this layout does not know (e.g. locally connected layers;
        :func:`supports_channels_last` says beforehand).
    """

    def __init__(self, net: nn.Module, blocks: bool = False):
        super().__init__()
        if not supports_channels_last(net):
            raise TypeError("ChannelsLastNT3 needs an NT3 network of Conv1d/MaxPool1d layers")
        self.net = net
        #: With ``blocks`` (the CPU plan's ``conv_blocks``): each convolution + ReLU (+ pool)
        #: runs as one :class:`~genodl_core.kernels.conv_block_cpu.ConvReluPool`.
        self.blocks = conv_blocks(net) if blocks else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The blocks write their own fp32 backward; under CPU autocast (bf16) the network
        # runs layer by layer.
        if self.blocks is not None and not x.is_cuda and not torch.is_autocast_enabled("cpu"):
            return self._forward_blocks(x)
        h = x.reshape(x.shape[0], 1, 1, x.shape[1])
        if h.is_cuda:
            h = h.contiguous(memory_format=torch.channels_last)
        return run_channels_last(self.net.layers, h)


    def _forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        from genodl_core.kernels.conv_block_cpu import conv_relu_pool

        assert self.blocks is not None
        h = x.reshape(x.shape[0], x.shape[1], 1)  # [B, L, C = 1]
        for conv, pool in self.blocks[0]:
            h = conv_relu_pool(h, conv.weight, conv.bias, pool)
        # The dense layers take the Conv1d network's channel-major order ([B, C, L] flattened).
        h = h.transpose(1, 2).reshape(h.shape[0], -1)
        for layer in self.blocks[1]:
            h = layer(h)
        return h


def run_channels_last(layers: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
    """Run a Conv1d network's ``layers`` on ``h`` ``[B, C, 1, L]`` (channels-last): each
    ``Conv1d`` as a ``1 x k`` conv2d, each ``MaxPool1d`` as a ``1 x k`` pooling, the rest as
    they are. Shared by NT3 and DeepSEA."""
    for layer in layers:
        if isinstance(layer, nn.Conv1d):
            h = conv1d_as_conv2d(h, layer)
        elif isinstance(layer, nn.MaxPool1d):
            h = F.max_pool2d(h, (1, layer.kernel_size), (1, layer.stride))
        elif isinstance(layer, nn.Flatten):
            # [B, C, 1, L] flattens channel-major whatever its memory layout: the same
            # feature order as the Conv1d network's [B, C, L].
            h = h.flatten(1)
        else:
            h = layer(h)
    return h


def conv_blocks(net: nn.Module) -> tuple[list[tuple[nn.Conv1d, int]], list[nn.Module]] | None:
    """``net``'s layers as (convolution, pool) blocks and the layers after ``Flatten``, or
    None where a layer does not fit a block (a stride, another activation, an overlapping
    pool): the network then runs layer by layer."""
    layers = list(getattr(net, "layers", []))
    blocks: list[tuple[nn.Conv1d, int]] = []
    i = 0
    while i < len(layers) and isinstance(layers[i], nn.Conv1d):
        conv = layers[i]
        if conv.stride != (1,) or not (i + 1 < len(layers) and isinstance(layers[i + 1],
                                                                            nn.ReLU)):
            return None
        i += 2
        pool = 1
        if i < len(layers) and isinstance(layers[i], nn.MaxPool1d):
            mp = layers[i]
            if (mp.stride not in (mp.kernel_size, None) or mp.padding != 0
                    or mp.dilation != 1 or mp.ceil_mode):
                return None
            pool = int(mp.kernel_size)
            i += 1
        blocks.append((conv, pool))
    if not blocks or i >= len(layers) or not isinstance(layers[i], nn.Flatten):
        return None
    return blocks, layers[i + 1:]


def supports_channels_last(net: nn.Module) -> bool:
    """Whether :class:`ChannelsLastNT3` can run ``net`` (plain convolutions and pools only)."""
    layers = getattr(net, "layers", None)
    if not isinstance(layers, nn.Sequential):
        return False
    allowed = (nn.Conv1d, nn.MaxPool1d, nn.Flatten, nn.Linear, nn.Dropout, nn.ReLU, nn.ELU,
               nn.Tanh, nn.Sigmoid)
    for layer in layers:
        if not isinstance(layer, allowed):
            return False
        if isinstance(layer, nn.Conv1d) and (layer.padding != (0,) or layer.dilation != (1,)
                                             or layer.groups != 1):
            return False
    return True



# --------------------------------------------------------------------------------------------
# K trials as one module
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
        #: Convolutions through genodl's Triton kernel (the plan's ``conv_kernel`` switch).
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

    def release(self) -> None:
        """Give back the key of the in-backward updates (the pack is done with this module)."""
        if self._updates_key is not None:
            from genodl_core.training.backward_sgd import release_key

            release_key(self._updates_key)
            self._updates_key, self.updates = None, {}

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




__all__ = ["conv_in_kernel", "conv_channels_last", "conv1d_as_conv2d", "ChannelsLastNT3", "conv_blocks",
           "run_channels_last",
           "supports_channels_last", "BatchedNT3"]
