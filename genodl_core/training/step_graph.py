"""One full-batch training step (gather, forward, loss, backward) replayed as a CUDA graph.

Why: a D-GEX step at batch 200 is about sixty kernel launches. On a fast GPU the host needs
longer to queue them (Python, autograd, launch calls) than the GPU needs to run them, so the
GPU waits (measured: docs/performance.md). A captured step is queued with two calls: copy the
batch's sample indices into a static buffer, replay.

What is captured: ``body(indices) -> loss``, which gathers its batch from tensors that live for
the whole fit, runs forward and backward (gradients land in ``.grad`` buffers the graph owns;
layers that update themselves in backward do so inside the graph) and returns the loss. The
optimizer step for the other parameters stays outside, so learning-rate changes need no
recapture. Partial batches run eagerly on the same buffers.

Streams: the warm-up steps and the capture run on one side stream of the graph's own. Autograd
remembers the stream a parameter's gradient was first accumulated on; warmed up on the default
stream, the captured backward would have to synchronise with it, which a capture forbids
("operation would make the legacy stream depend on a capturing blocking stream").

Random numbers: generators used inside the step (dropout) are registered with the graph, which
then advances their offsets on every replay; the masks are seeded and reproducible, though not
bit-identical to those of an eager run.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger(__name__)


class StepGraph:
    """Capture ``body`` once after ``warmup`` eager steps; later full batches replay it.

    Parameters
    ----------
    body
        ``body(indices) -> loss``: one training step's work up to ``loss.backward()``.
    batch_size
        Size of the full batches that replay the graph.
    generators
        CUDA generators the step draws from (registered with the graph).
    warmup
        Eager full-batch steps before the capture (kernel tuning, lazy initialisation), run
        by :meth:`step` itself on the capture's stream.
    zero_grad
        Drops the gradients (``set_to_none``) before each warm-up step and before the
        capture, so that the graph allocates the gradient buffers it then rewrites.
    before_replay
        Called before every replay (e.g. to refresh state that the graph reads).
    """

    def __init__(self, body: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                 device: torch.device | str, *, generators: Sequence[torch.Generator] = (),
                 warmup: int = 2, zero_grad: Callable[[], None] = lambda: None,
                 before_replay: Callable[[], None] = lambda: None):
        self.body = body
        self.batch_size = batch_size
        self.generators = list(generators)
        self.warmup = warmup
        self.zero_grad = zero_grad
        self.before_replay = before_replay
        self.indices = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.failed = False
        self._eager_steps = 0
        self._stream: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def step(self, indices: torch.Tensor) -> torch.Tensor | None:
        """The loss of one step on the batch ``indices`` (a warm-up step or a replay), or None
        when the caller must run this batch eagerly: a partial batch, or no graph possible
        (the capture failed; logged once, and nothing of the batch was applied, since captured
        work is only recorded, not run).
        """
        if self.failed or indices.numel() != self.batch_size:
            return None
        self.indices.copy_(indices)
        self.before_replay()
        if self.graph is None and self._eager_steps < self.warmup:
            self._eager_steps += 1
            self.zero_grad()
            return self._on_side_stream(lambda: self.body(self.indices))
        if self.graph is None:
            try:
                self._capture()
            except RuntimeError as err:
                self.failed = True
                # A failed capture reports "invalidated"; the cause is the error before it.
                cause = err.__context__ or err.__cause__
                log.warning("training steps run without a CUDA graph: %s%s", err,
                            f" (after: {type(cause).__name__}: {cause})" if cause else "")
                return None
        self.graph.replay()
        return self.loss

    def run_eagerly(self, work: Callable[[], Any]) -> Any:
        """``work()`` (a step the graph does not take: a partial batch, or no graph) on the
        graph's stream, where autograd accumulates the gradients of the captured steps;
        elsewhere each accumulation would wait on that stream."""
        return self._on_side_stream(work)

    def _on_side_stream(self, work: Callable[[], Any]) -> Any:
        if not self.indices.is_cuda:
            return work()
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.indices.device)
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            out = work()
        torch.cuda.current_stream().wait_stream(self._stream)
        return out

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        register = getattr(graph, "register_generator_state", None)
        if self.generators and register is None:
            raise RuntimeError("this torch cannot capture steps that draw from own generators")
        for generator in self.generators:
            register(generator)
        self.zero_grad()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                self.loss = self.body(self.indices)
        except RuntimeError:
            # The capture registers the device's default generator as well.
            default = torch.cuda.default_generators[torch.cuda.current_device()]
            _leave_capture_mode([*self.generators, default])
            raise
        self.graph = graph


def eager_step(graph: StepGraph | None, zero_grad: Callable[..., None],
               work: Callable[[], Any]) -> Any:
    """A step ``graph`` does not take (no graph, a partial batch, a failed capture): zero the
    gradients and run ``work()``.

    Once a graph owns the gradient buffers they are zeroed in place, not dropped, and the work
    runs on the graph's stream, where autograd accumulates the captured steps' gradients.
    ``zero_grad`` takes ``set_to_none`` (an optimizer's or a module's).
    """
    zero_grad(set_to_none=graph is None or not graph.captured)
    return work() if graph is None else graph.run_eagerly(work)


def _leave_capture_mode(generators: Sequence[torch.Generator]) -> None:
    """Give generators registered with a failed capture a fresh state (same seed and offset).

    A capture that fails ends before torch takes the registered generators out of capture
    mode, and such a generator refuses every later eager draw.
    """
    for generator in generators:
        fresh = torch.Generator(device=generator.device)
        fresh.set_state(generator.get_state())
        generator.graphsafe_set_state(fresh.graphsafe_get_state())


__all__ = ["StepGraph", "eager_step"]
