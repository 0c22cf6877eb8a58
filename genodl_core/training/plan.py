"""The execution plan of a trial: how its numbers are computed, decided once before training.

A trial's *spec* says what is computed (model, data, noise, optimiser, seed); its *plan* says how:
on which device, at which precision, alone or stacked with other trials, and with which of the
fast path's switches. :func:`choose_plan` makes every one of those decisions in one place, from
the spec, the model family and the :class:`RunSettings` (the only reader of genodl's
environment variables). The engine and the model families then follow the plan and never look
anything up themselves, and the plan is written into every trial's ``provenance.json`` (key
``engine``) and carried into ``summary.h5``, so that two trials computed differently can always
be told apart. Why the plan is not part of the trial id is explained in docs/models.md.

The switches (each only changes how the same computation runs; their measured effect is in
docs/performance.md):

- ``channels_last``: convolutions run as ``conv2d`` with ``1 x k`` kernels on channels-last
  tensors, for which cuDNN (and, on CPU, oneDNN) has faster kernels.
- ``conv_blocks`` (CPU): each convolution + ReLU + max-pooling of a single trial runs as one
  block in one memory layout, with the weight gradient as batched matmuls
  (:mod:`genodl_core.kernels.conv_block_cpu`). With ``channels_last`` the CPU fast path
  (:data:`CPU_SWITCHES`); both keep fp32 results bit-for-bit reproducible for a thread count.
- ``fused_optimizer``: torch's single-kernel optimizer step.
- ``eval_batch_size``: validation at a larger batch (it needs no gradients).
- ``cudnn_benchmark``: cuDNN times its algorithms once per shape (scoped, then restored).
- ``compile``: :func:`torch.compile` of the forward pass.
- ``bf16_inputs``: with bf16 autocast, the resident features are kept in bf16 (autocast casts
  them before the first layer anyway; this halves their memory and copies).
- ``conv_kernel``: in packs, convolutions with one input channel run genodl's implicit-GEMM
  Triton kernel (:mod:`genodl_core.kernels.conv1d`) instead of cuDNN's grouped kernel.
- ``fused_update``: big dense layers apply SGD inside the backward pass
  (:mod:`genodl_core.training.backward_sgd`): the weight gradient is never written.
- ``fused_activations``: in packs, ReLU is applied by the convolution before it and ReLU +
  max-pooling run as one operation (:mod:`genodl_core.kernels.relu_pool`).
- ``step_graphs``: full training batches replay a captured CUDA graph
  (:mod:`genodl_core.training.step_graph`); for models whose small steps are host-bound.

A model family declares which switches it can use (:attr:`Family.switches`); the others are
off in its plans, so a plan lists only what really ran.

On CPU the plan also fixes the intra-op threads of the trial (``cpu_threads``: the worker's
share of the cores, see :mod:`genodl_core.training.cpu`), in the plain port as on the fast path.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from genodl_core.errors import SpecError

Mode = Literal["plain", "fast", "packed"]

#: Environment variables read by :meth:`RunSettings.from_env` (and nowhere else): each takes
#: 'on', 'off' or nothing (the default, on).
FAST_PATH_ENV = "GENODL_FAST_PATH"
CONV_KERNEL_ENV = "GENODL_CONV_KERNEL"
FUSED_UPDATE_ENV = "GENODL_FUSED_UPDATE"
FUSED_ACTIVATIONS_ENV = "GENODL_FUSED_ACTIVATIONS"
STEP_GRAPHS_ENV = "GENODL_STEP_GRAPHS"
#: Seconds between checkpoints of a trial or pack ('off' or 0: none).
CHECKPOINT_ENV = "GENODL_CHECKPOINT_INTERVAL_S"

#: Default checkpoint interval: a trial that trains longer than this writes checkpoints.
DEFAULT_CHECKPOINT_INTERVAL_S = 300.0


@dataclass(frozen=True)
class Switches:
    """Which speed-ups a trial runs with (all off = the plain PyTorch port)."""

    channels_last: bool = False
    fused_optimizer: bool = False
    #: Batch size of validation passes; None = the training batch size.
    eval_batch_size: int | None = None
    cudnn_benchmark: bool = False
    compile: bool = False
    bf16_inputs: bool = False
    conv_kernel: bool = False
    fused_update: bool = False
    fused_activations: bool = False
    step_graphs: bool = False
    conv_blocks: bool = False

    @property
    def enabled(self) -> bool:
        return self != Switches()

    def label(self) -> str:
        """Short description for logs, records and benchmark tables (e.g. 'nhwc+fused')."""
        parts = [short for name, short in _SHORT.items() if getattr(self, name)]
        if self.eval_batch_size:
            parts.append(f"eval{self.eval_batch_size}")
        return "+".join(parts) or "plain"

    def keep(self, names: frozenset[str]) -> "Switches":
        """These switches with every one not in ``names`` turned off."""
        off = {f.name: f.default for f in dataclasses.fields(self) if f.name not in names}
        return dataclasses.replace(self, **off)

    def replace(self, **changes: Any) -> "Switches":
        return dataclasses.replace(self, **changes)


_SHORT = {"channels_last": "nhwc", "fused_optimizer": "fused", "cudnn_benchmark": "bench",
          "compile": "compile", "bf16_inputs": "bf16in", "conv_kernel": "convk",
          "fused_update": "bwdsgd", "fused_activations": "fusedact", "step_graphs": "stepgraph",
          "conv_blocks": "convblk"}

#: Every switch on, as on a CUDA device with bf16 and Triton (see :func:`choose_plan`).
CUDA_SWITCHES = Switches(channels_last=True, fused_optimizer=True, eval_batch_size=256,
                         cudnn_benchmark=True, compile=True, bf16_inputs=True, conv_kernel=True,
                         fused_update=True, fused_activations=True, step_graphs=True)

#: The CPU fast path: oneDNN's channels-last convolutions, run as convolution blocks. Measured
#: and left off on CPU: ``compile`` (see docs/performance.md), the CUDA-only switches.
CPU_SWITCHES = Switches(channels_last=True, conv_blocks=True)


@dataclass(frozen=True)
class RunSettings:
    """How the runner may execute trials: what a user or a benchmark chooses per run.

    None of it changes what a trial computes, so none of it is in the trial spec; what it
    leads to is recorded in each trial's plan.
    """

    #: 'auto': the fast path on CUDA; 'off': the plain port everywhere.
    fast_path: Literal["auto", "off"] = "auto"
    #: Individual fast-path switches that may be turned off (on = used where they apply).
    conv_kernel: bool = True
    fused_update: bool = True
    fused_activations: bool = True
    step_graphs: bool = True
    #: Seconds of training between checkpoints (None: no checkpoints).
    checkpoint_interval_s: float | None = DEFAULT_CHECKPOINT_INTERVAL_S
    #: Keep the last checkpoint of a completed trial (default: removed).
    keep_checkpoints: bool = False
    #: Intra-op threads of a CPU trial (None: :func:`~genodl_core.training.cpu.worker_threads`).
    cpu_threads: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RunSettings":
        """Settings from genodl's environment variables (unset ones keep their default).

        Raises
        ------
        SpecError
            A variable holds something other than 'on', 'off' or nothing (or, for the
            checkpoint interval, a number of seconds or 'off').
        """
        from genodl_core.training.cpu import CPU_THREADS_ENV, worker_threads

        env = os.environ if env is None else env
        # Unset: decided when a trial is planned (torch's thread setting may change till then).
        threads = worker_threads(env) if env.get(CPU_THREADS_ENV, "").strip() else None
        interval: float | None = DEFAULT_CHECKPOINT_INTERVAL_S
        raw = env.get(CHECKPOINT_ENV, "").strip().lower()
        if raw in ("off", "0"):
            interval = None
        elif raw:
            try:
                interval = float(raw)
            except ValueError:
                raise SpecError(CHECKPOINT_ENV, raw, "seconds > 0 or 'off'",
                                reason="environment variable with an unknown value") from None
            if not interval > 0:
                raise SpecError(CHECKPOINT_ENV, raw, "seconds > 0 or 'off'",
                                reason="environment variable out of range")
        return cls(fast_path="off" if _switch(env, FAST_PATH_ENV) == "off" else "auto",
                   conv_kernel=_switch(env, CONV_KERNEL_ENV) != "off",
                   fused_update=_switch(env, FUSED_UPDATE_ENV) != "off",
                   fused_activations=_switch(env, FUSED_ACTIVATIONS_ENV) != "off",
                   step_graphs=_switch(env, STEP_GRAPHS_ENV) != "off",
                   checkpoint_interval_s=interval, cpu_threads=threads)

    def replace(self, **changes: Any) -> "RunSettings":
        return dataclasses.replace(self, **changes)


def _switch(env: Mapping[str, str], name: str) -> str:
    setting = env.get(name, "").strip().lower()
    if setting not in ("", "on", "off"):
        raise SpecError(name, setting, ["on", "off"],
                        reason="environment variable with an unknown value")
    return setting


@dataclass(frozen=True)
class ExecutionPlan:
    """How a trial (or a pack of ``pack_size`` trials) is trained; see the module docstring."""

    device: str
    precision: str
    switches: Switches = Switches()
    pack_size: int = 1
    checkpoint_interval_s: float | None = None
    keep_checkpoints: bool = False
    #: Intra-op threads the trial runs with on CPU (None on CUDA).
    cpu_threads: int | None = None

    @property
    def mode(self) -> Mode:
        if self.pack_size > 1:
            return "packed"
        return "fast" if self.switches.enabled else "plain"

    @property
    def label(self) -> str:
        return self.switches.label()

    def to_dict(self) -> dict[str, Any]:
        """What ``provenance.json`` records under ``engine`` (see docs/summary-schema.md)."""
        cpu = {} if self.cpu_threads is None else {"cpu_threads": self.cpu_threads}
        return {**cpu, "mode": self.mode, "device": self.device, "precision": self.precision,
                "pack_size": self.pack_size, "switches": dataclasses.asdict(self.switches),
                "label": self.label, "checkpoint_interval_s": self.checkpoint_interval_s}


def choose_plan(device: str, precision: str, switches_used: frozenset[str], *,
                pack_size: int = 1, settings: RunSettings | None = None,
                triton: bool | None = None) -> ExecutionPlan:
    """Every decision about how a trial runs, made once.

    Parameters
    ----------
    device, precision
        The resolved device ('cpu', 'cuda') and precision ('fp32', 'tf32', 'bf16').
    switches_used
        The switches the trial's model family can apply (for its pack size).
    pack_size
        How many trials train together (1 = alone).
    settings
        The run's settings (default: :meth:`RunSettings.from_env`).
    triton
        Whether Triton kernels can run (default: detected).

    CPU: :data:`CPU_SWITCHES` (fp32 stays bit-for-bit reproducible for a thread count) and
    ``cpu_threads`` from ``settings`` (the worker's share of the cores). CUDA:
    :data:`CUDA_SWITCHES`, with ``bf16_inputs``, ``conv_kernel`` and ``fused_update`` only at
    bf16 (the last two only with Triton), minus what ``settings`` turns off, minus what the
    family cannot use.
    """
    settings = RunSettings.from_env() if settings is None else settings
    switches = Switches()
    if device == "cuda" and settings.fast_path != "off":
        if triton is None:
            from genodl_core.kernels import triton_available

            triton = triton_available()
        bf16 = precision == "bf16"
        kernels = bf16 and triton
        switches = CUDA_SWITCHES.replace(
            bf16_inputs=bf16, conv_kernel=kernels and settings.conv_kernel,
            fused_update=kernels and settings.fused_update,
            fused_activations=settings.fused_activations,
            step_graphs=settings.step_graphs).keep(switches_used)
    threads = None
    if device == "cpu":
        from genodl_core.training.cpu import worker_threads

        threads = settings.cpu_threads or worker_threads()
        if settings.fast_path != "off":
            # GENODL_FUSED_ACTIVATIONS=off also turns the CPU's fused blocks off (A/B runs).
            switches = CPU_SWITCHES.replace(
                conv_blocks=settings.fused_activations).keep(switches_used)
    return ExecutionPlan(device=device, precision=precision, switches=switches,
                         pack_size=pack_size,
                         checkpoint_interval_s=settings.checkpoint_interval_s,
                         keep_checkpoints=settings.keep_checkpoints, cpu_threads=threads)


__all__ = ["Mode", "Switches", "CUDA_SWITCHES", "CPU_SWITCHES", "RunSettings",
           "ExecutionPlan", "choose_plan",
           "FAST_PATH_ENV", "CONV_KERNEL_ENV", "FUSED_UPDATE_ENV", "FUSED_ACTIVATIONS_ENV",
           "STEP_GRAPHS_ENV", "CHECKPOINT_ENV", "DEFAULT_CHECKPOINT_INTERVAL_S"]
