"""When a training step goes through the CUDA graph and when the loop must run it eagerly.

Capturing needs a GPU (the GPU tests train D-GEX through graphs); these checks cover the
decisions around it, which run on any machine.
"""

import logging

import pytest
import torch

from genodl_core.training.step_graph import StepGraph


def _graph(calls):
    def body(indices):
        calls.append("body")
        return indices.sum()

    return StepGraph(body, batch_size=4, device="cpu", warmup=2,
                     zero_grad=lambda: calls.append("zero_grad"))


def test_partial_batches_run_by_the_caller_warmup_steps_by_the_graph():
    calls = []
    graph = _graph(calls)
    assert graph.step(torch.arange(3)) is None           # partial: never counts as warm-up
    assert calls == []
    assert graph.step(torch.arange(4)) == 6              # warm-up 1, on the graph's buffer
    assert graph.step(torch.arange(1, 5)) == 10          # warm-up 2
    assert graph._eager_steps == 2 and not graph.captured and not graph.failed
    assert calls == ["zero_grad", "body"] * 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where CUDA is missing")
def test_failed_capture_falls_back_to_eager_steps_once(caplog):
    calls = []
    graph = _graph(calls)
    for _ in range(2):
        graph.step(torch.arange(4))
    with caplog.at_level(logging.WARNING, logger="genodl_core.training.step_graph"):
        assert graph.step(torch.arange(4)) is None       # no CUDA here: capture fails
        assert graph.step(torch.arange(4)) is None       # and is not tried again
    assert graph.failed and not graph.captured
    assert len([r for r in caplog.records if "without a CUDA graph" in r.message]) == 1
    assert calls == ["zero_grad", "body"] * 2             # the failed capture ran nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captures on a GPU")
def test_failed_capture_leaves_registered_generators_usable(caplog):
    gen = torch.Generator(device="cuda").manual_seed(0)
    ref = torch.Generator(device="cuda").manual_seed(0)

    def body(indices):
        noise = torch.rand(4, generator=gen, device="cuda")
        if torch.cuda.is_current_stream_capturing():
            noise.sum().item()                           # a host sync: the capture fails
        return (indices + noise).sum()

    graph = StepGraph(body, batch_size=4, device="cuda", generators=[gen], warmup=0)
    with caplog.at_level(logging.WARNING, logger="genodl_core.training.step_graph"):
        assert graph.step(torch.arange(4, device="cuda")) is None
    assert graph.failed and "without a CUDA graph" in caplog.text
    # Eager draws work again and continue from where the generator stood before the capture.
    torch.testing.assert_close(torch.rand(4, generator=gen, device="cuda"),
                               torch.rand(4, generator=ref, device="cuda"))
    assert torch.rand(4, device="cuda").shape == (4,)  # and so does the default generator
