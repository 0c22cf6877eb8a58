"""The fast GPU path of the classification loop: layout, fused optimizer, CUDA graphs.

A plain PyTorch port of NT3 leaves most of a modern GPU idle: ``Conv1d`` picks slow cuDNN
kernels for NT3's long sequences, every training step pays Python and kernel-launch costs of a
dozen layers, validation runs at the small training batch, and the optimizer walks the 77
million weights of the first dense layer in several passes. :class:`FastPath` lists the remedies
that measured faster on an H100 (see ``docs/performance.md``); :func:`fast_path_for` picks them
for a device.

Every switch here only changes *how* the same computation runs, never which one: the weights,
batches, loss and update rule stay those of :mod:`genodl_core.training.loop`. On CPU the fast
path is off, so CPU runs stay bit-for-bit what they were.

- ``channels_last``: each ``Conv1d`` runs as a ``conv2d`` with a ``1 x k`` kernel on
  channels-last (NHWC) tensors, for which cuDNN has much faster kernels (~1.5x on NT3's second
  convolution). The parameters are the ``Conv1d`` ones, so state dicts are unchanged.
- ``fused_optimizer``: one fused kernel per optimizer step instead of a loop over tensors.
- ``eval_batch_size``: validation at a large batch (it needs no gradients).
- ``cudnn_benchmark``: let cuDNN time its algorithms once per shape (scoped, then restored).
- ``cuda_graphs``: the forward and backward passes of a full training batch are captured once
  (:func:`torch.cuda.make_graphed_callables`) and replayed, so a step costs a few launches.
- ``compile``: :func:`torch.compile` the forward pass (exclusive with ``cuda_graphs``).
- ``bf16_inputs``: with bf16 autocast, keep the resident features in bf16 (autocast would
  cast them to bf16 anyway before the first convolution; this halves their memory and copies).
- ``conv_kernel``: in packs of trials, the first convolution (one input channel) runs
  genodl's implicit-GEMM Triton kernel (:mod:`genodl_core.kernels.conv1d`) instead of
  cuDNN's grouped kernel (3.9x faster on that convolution); bf16 only, and only where Triton
  is installed (it comes with CUDA builds of torch).
- ``fused_update``: the weights of big dense layers are updated by SGD inside the backward
  pass, one Triton kernel per layer computing the weight gradient and applying the update
  (:mod:`genodl_core.training.backward_sgd`): D-GEX's hidden layers and, in packs of NT3
  trials, the first dense layer; bf16 only, SGD only, where Triton is installed.
- ``fused_activations``: in packs of NT3 trials, the ReLU after a convolution that runs in
  genodl's kernel is applied in that kernel (forward) and in its weight-gradient kernel
  (backward), and ReLU + max-pooling (with the preceding convolution's bias) run as one
  operation that keeps one byte per pooled output for its backward
  (:mod:`genodl_core.kernels.relu_pool`): each saves passes over ~1 GB of activations per
  step (a pack step 16.3 -> 12.5 ms on an H100). Single trials keep torch's operations:
  there the fused pool measured slower (0.273 against 0.251 s/epoch).
- ``step_graphs``: D-GEX's full-batch training steps replay a captured CUDA graph
  (:mod:`genodl_core.training.step_graph`): its small-batch steps are host-bound otherwise.
  (NT3's steps are GPU-bound: ``cuda_graphs`` measured no gain for one trial, graphs of a
  pack's steps 1.6%, not kept.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from genodl_core.errors import SpecError
from genodl_core.kernels import interpreting, triton_available
from genodl_core.training.precision import is_cuda

log = logging.getLogger(__name__)

#: Environment variable that turns the fast path off ('off') for every trial of a process.
FAST_PATH_ENV = "GENODL_FAST_PATH"
#: Environment variable that keeps the fast path but runs convolutions through cuDNN ('off').
CONV_KERNEL_ENV = "GENODL_CONV_KERNEL"
#: Environment variable that keeps the fast path but leaves every update to torch's optimizer.
FUSED_UPDATE_ENV = "GENODL_FUSED_UPDATE"
#: Environment variable that keeps the fast path but runs ReLU and max-pooling as torch's ops.
FUSED_ACTIVATIONS_ENV = "GENODL_FUSED_ACTIVATIONS"
#: Environment variable that keeps the fast path but runs D-GEX steps without CUDA graphs.
STEP_GRAPHS_ENV = "GENODL_STEP_GRAPHS"


@dataclass(frozen=True)
class FastPath:
    """Which speed-ups the classification loop applies (all off = the plain port)."""

    channels_last: bool = False
    fused_optimizer: bool = False
    #: Batch size of validation passes; None = the training batch size.
    eval_batch_size: int | None = None
    cudnn_benchmark: bool = False
    cuda_graphs: bool = False
    compile: bool = False
    bf16_inputs: bool = False
    conv_kernel: bool = False
    fused_update: bool = False
    fused_activations: bool = False
    step_graphs: bool = False

    @classmethod
    def plain(cls) -> "FastPath":
        """The plain PyTorch port: every speed-up off."""
        return cls()

    @property
    def enabled(self) -> bool:
        return self != FastPath.plain()

    def label(self) -> str:
        """Short description for logs and benchmark tables (e.g. 'nhwc+fused+graphs')."""
        names = {"channels_last": "nhwc", "fused_optimizer": "fused", "cudnn_benchmark": "bench",
                 "cuda_graphs": "graphs", "compile": "compile", "bf16_inputs": "bf16in",
                 "conv_kernel": "convk", "fused_update": "bwdsgd", "fused_activations": "fusedact",
                 "step_graphs": "stepgraph"}
        parts = [short for name, short in names.items() if getattr(self, name)]
        if self.eval_batch_size:
            parts.append(f"eval{self.eval_batch_size}")
        return "+".join(parts) or "plain"

    def replace(self, **changes) -> "FastPath":
        return dataclasses.replace(self, **changes)


#: The default fast path on CUDA (what measured fastest for a single trial; see the docs).
#: On an H100 (paper-size NT3, bf16): compile 0.234 s/epoch against 0.354-0.358 for the same
#: path with or without CUDA graphs (the step is GPU-bound, so graphs gain nothing), and
#: torch.compile's in-process cache brings the compile cost of later trials under a second.
CUDA_DEFAULT = FastPath(channels_last=True, fused_optimizer=True, eval_batch_size=256,
                        cudnn_benchmark=True, cuda_graphs=False, compile=True, bf16_inputs=True,
                        conv_kernel=True, fused_update=True, fused_activations=True,
                        step_graphs=True)

_override = threading.local()


@contextlib.contextmanager
def use_fast_path(fast: FastPath | None) -> Iterator[None]:
    """Force ``fast`` (None = back to the default) for trials run in this thread in the block.

    The benchmark uses it to run the plain port and the fast path through the same trial
    runner; a user can turn the fast path off with ``GENODL_FAST_PATH=off`` instead.
    """
    previous = getattr(_override, "value", None)
    _override.value = fast
    try:
        yield
    finally:
        _override.value = previous


def fast_path_for(device: str, precision: str) -> FastPath:
    """The speed-ups for a trial on ``device`` at the resolved ``precision``.

    CPU: none (bit-for-bit reproducible runs). CUDA: :data:`CUDA_DEFAULT` (``bf16_inputs``,
    ``conv_kernel`` and ``fused_update`` only with bf16 precision, the last two only with
    Triton), unless :func:`use_fast_path`, ``GENODL_FAST_PATH=off``,
    ``GENODL_CONV_KERNEL=off``, ``GENODL_FUSED_UPDATE=off``, ``GENODL_FUSED_ACTIVATIONS=off``
    or ``GENODL_STEP_GRAPHS=off`` say otherwise.

    Raises
    ------
    SpecError
        One of those environment variables holds something other than 'on', 'off' or empty.
    """
    forced = getattr(_override, "value", None)
    if forced is not None:
        return forced
    setting = _switch(FAST_PATH_ENV)
    if not is_cuda(device) or setting == "off":
        return FastPath.plain()
    bf16 = precision == "bf16"
    kernels = bf16 and triton_available()
    return CUDA_DEFAULT.replace(
        bf16_inputs=bf16, conv_kernel=kernels and _switch(CONV_KERNEL_ENV) != "off",
        fused_update=kernels and _switch(FUSED_UPDATE_ENV) != "off",
        fused_activations=_switch(FUSED_ACTIVATIONS_ENV) != "off",
        step_graphs=_switch(STEP_GRAPHS_ENV) != "off")


def _switch(name: str) -> str:
    """An on/off environment switch ('' when unset); SpecError for anything else."""
    setting = os.environ.get(name, "").strip().lower()
    if setting not in ("", "on", "off"):
        raise SpecError(name, setting, ["on", "off"],
                        reason="environment variable with an unknown value")
    return setting


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Set ``torch.backends.cudnn.benchmark`` for the block and restore it afterwards.

    Scoped because a persistent worker runs many trials, possibly with other settings.
    """
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or saved
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


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

    def __init__(self, net: nn.Module):
        super().__init__()
        if not supports_channels_last(net):
            raise TypeError("ChannelsLastNT3 needs an NT3 network of Conv1d/MaxPool1d layers")
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], 1, 1, x.shape[1])
        if h.is_cuda:
            h = h.contiguous(memory_format=torch.channels_last)
        for layer in self.net.layers:
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
# forward runners
# --------------------------------------------------------------------------------------------

class GraphedForward(nn.Module):
    """A model whose full-batch training forward/backward replays captured CUDA graphs.

    Built by :func:`prepare_forward`. Calls in eval mode or with another batch size (the last,
    partial batch of an epoch) run the eager module, which shares the parameters.
    """

    def __init__(self, module: nn.Module, graphed: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int):
        super().__init__()
        self.module = module
        self._graphed = graphed
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == self.batch_size:
            return self._graphed(x)
        return self.module(x)


def prepare_forward(net: nn.Module, fast: FastPath, *, sample: torch.Tensor,
                    amp: Callable[[], contextlib.AbstractContextManager]) -> nn.Module:
    """The module the loop calls: ``net`` itself, its channels-last form, graphed or compiled.

    Parameters
    ----------
    net
        The model, on its device, in training mode.
    fast
        Which speed-ups to apply (those that do not fit the model are skipped with a log line).
    sample
        A training batch of the loop's batch size (shape and dtype of the graph's input); only
        read, during warm-up passes whose gradients are discarded.
    amp
        The autocast scope of the training step (graphs are captured inside it).
    """
    module = net
    if fast.channels_last:
        if supports_channels_last(net):
            module = ChannelsLastNT3(net)
        else:
            log.info("fast path: channels-last layout skipped (layers it cannot run)")
    if fast.compile:
        return torch.compile(module, dynamic=False)
    if fast.cuda_graphs and sample.is_cuda:
        module.train()
        with amp_without_cache(amp):
            graphed = torch.cuda.make_graphed_callables(module, (sample.detach(),))
        return GraphedForward(module, graphed, int(sample.shape[0]))
    return module


@contextlib.contextmanager
def amp_without_cache(amp: Callable[[], contextlib.AbstractContextManager]) -> Iterator[None]:
    """``amp()`` with autocast's weight cache off, as graph capture requires.

    The cache keeps bf16 copies of weights across calls within one autocast region; inside a
    captured graph those copies would be stale after the optimizer step.
    """
    scope = amp()
    if isinstance(scope, torch.autocast):
        scope = torch.autocast(device_type=scope.device, dtype=scope.fast_dtype,
                               cache_enabled=False)
    with scope:
        yield


__all__ = ["FastPath", "CUDA_DEFAULT", "FAST_PATH_ENV", "CONV_KERNEL_ENV", "FUSED_UPDATE_ENV",
           "FUSED_ACTIVATIONS_ENV", "STEP_GRAPHS_ENV", "use_fast_path", "fast_path_for",
           "cudnn_benchmark", "conv_in_kernel", "conv_channels_last", "conv1d_as_conv2d",
           "ChannelsLastNT3", "supports_channels_last", "GraphedForward", "prepare_forward",
           "amp_without_cache"]
