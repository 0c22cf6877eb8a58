"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's @jit functions read this when they are defined, i.e. at triton's first import,
    # which may come from any test module: set here, before pytest imports them. Without a GPU
    # the kernels then run in Triton's CPU interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _one_torch_thread():
    """One torch intra-op thread for the fixture's scope, then the previous setting again.

    Tiny networks gain nothing from intra-op threads, and on a busy machine the threads'
    spin-waiting makes them many times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: For one test.
torch_one_thread = pytest.fixture(_one_torch_thread, name="torch_one_thread")
#: For a module whose module-scoped fixtures train models (requested before them).
torch_one_thread_module = pytest.fixture(_one_torch_thread, scope="module",
                                         name="torch_one_thread_module")


@pytest.fixture(scope="session")
def islp_data():
    """Read a file of the ISLP wheel's data folder (real expression data sets), or skip.

    ``make test`` fetches the wheel once into ``GENODL_TEST_DATA`` (default ``.test-data/``)
    with ``tests/fetch_test_data.sh``; tests never touch the network themselves.
    """
    import os
    import zipfile
    from pathlib import Path

    folder = Path(os.environ.get("GENODL_TEST_DATA", Path(__file__).resolve().parents[2]
                                 / ".test-data"))
    wheels = sorted(folder.glob("[Ii][Ss][Ll][Pp]-*.whl"))
    if not wheels:
        pytest.skip(f"ISLP wheel not found in {folder}: run tests/fetch_test_data.sh (needs the "
                    "package index once)")

    def read(name: str) -> bytes:
        with zipfile.ZipFile(wheels[-1]) as wheel:
            return wheel.read(f"ISLP/data/{name}")

    return read


def capture_figures(monkeypatch, module) -> dict:
    """Figures by file name, captured as ``module._save`` writes them (read values back)."""
    drawn: dict = {}
    real_save = module._save

    def save(fig, path):
        drawn[path.name] = fig
        return real_save(fig, path)

    monkeypatch.setattr(module, "_save", save)
    return drawn


class Interrupt(Exception):
    """Stands for a crash in the middle of training (a killed worker, a walltime)."""


def interrupting_at(monkeypatch, epoch: int) -> None:
    """Make the trial runner's progress callback fail once, after ``epoch`` (0-based)."""
    from genodl_core.training import trial as trial_module

    original = trial_module._Progress.__call__
    fired = []

    def call(self, e, metrics):
        original(self, e, metrics)
        if e == epoch and not fired:
            fired.append(e)
            raise Interrupt(f"interrupted after epoch {e}")

    monkeypatch.setattr(trial_module._Progress, "__call__", call)
