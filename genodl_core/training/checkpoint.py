"""Atomic training checkpoints, so that a retried or resumed trial continues where it stopped.

The engine saves, every ``interval_s`` seconds of training (at the end of an epoch), everything
the rest of the run depends on: weights, optimizer and schedule states, objective (alpha
controller) state, every random generator (batch orders, dropout), the epoch reached, the curves
so far and the kept best-epoch weights. On CPU a trial resumed from its checkpoint ends bit for
bit as an uninterrupted run would. The file is written to a temporary name and renamed into
place, so a kill at any instant leaves the previous checkpoint or the new one, never a torn one.

A pack's checkpoint lives in the record directory of its first member and names every member;
it is used only by the same pack again (the same trials, in the same order, same plan).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from genodl_core.records import atomic_write_bytes
from genodl_core.stop import stop_requested

CHECKPOINT_FILE = "checkpoint.pt"
#: Bumped when what a checkpoint holds changes; older checkpoints are then ignored.
FORMAT = 1


class Checkpoint:
    """The checkpoint file of one trial or pack and when to write it next."""

    def __init__(self, path: str | Path, *, members: Sequence[str], plan: dict[str, Any],
                 interval_s: float | None, keep: bool = False):
        self.path = Path(path)
        self.members = list(members)
        self.plan = plan
        self.interval_s = interval_s
        self.keep = keep
        self.loaded_epoch: int | None = None
        self._last = time.monotonic()

    def due(self) -> bool:
        """Whether the interval has passed since the last save (or the start), or the run was
        asked to stop (the trial then saves what it has before it stops)."""
        if stop_requested():
            return True
        return self.interval_s is not None and time.monotonic() - self._last >= self.interval_s

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "members": self.members, "plan": self.plan,
                    "saved_at": time.time(), **state}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())
        self._last = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none this run can use.

        A checkpoint of other members, another plan or another format is not used (and is
        replaced by the next save).
        """
        if not self.path.is_file():
            return None
        # Tensors, numbers, strings and containers only: loading runs no pickled code.
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if (state.get("format") != FORMAT or state.get("members") != self.members
                or state.get("plan") != self.plan):
            return None
        self.loaded_epoch = int(state["epoch"])
        return state

    def finish(self) -> None:
        """Training completed: remove the checkpoint unless asked to keep it."""
        if not self.keep:
            self.path.unlink(missing_ok=True)


__all__ = ["CHECKPOINT_FILE", "Checkpoint"]
