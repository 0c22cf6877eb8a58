"""Per-sample training signals gathered during training, for noisy-label detection.

A classifier stack calls :meth:`SignalCollector.collect` once per training step with the
step's logits, labels and sample indices; everything stays on the device: the step's three
signals (cross-entropy over the real classes, margin, abstained) are written into a
preallocated ``[3, K, n_train]`` epoch buffer with one indexed write (every sample is seen
exactly once per epoch, so a write, not an accumulation, is exact). At the end of each epoch
(:meth:`end_epoch`, called from the stack's validation) the epoch buffer is folded into the
running sums. Nothing synchronises with the host until training is over (:meth:`arrays`).

Signals per trial row and training sample (see docs/detection.md):

- ``loss``: cross-entropy of the assigned label over the real classes, averaged over the last
  ``last_epochs`` epochs (large = suspect; co-teaching's small-loss rule);
- ``aum``: area under the margin, the assigned label's logit minus the largest other real
  logit, averaged over all epochs (small = suspect; Pleiss et al. 2020);
- ``abstain_final`` / ``abstain_fraction``: whether the abstaining model abstained on the sample
  in the final epoch, and in what share of the epochs (abstaining models only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genodl_core.spec import TrialSpec

#: Noise steps whose record carries a ``flip_mask``: "auto" detection runs for these.
FLIP_NOISES = ("label_flip", "correlated_label_flip")


def wanted(spec: TrialSpec) -> bool:
    """Whether a classifier trial collects detection signals (``train.detect``)."""
    mode = spec.train.detect
    if mode == "auto":
        return any(step.name in FLIP_NOISES for step in spec.noise)
    return mode == "on"


class SignalCollector:
    """Device buffers of the per-sample signals of K stacked trials; see the module docstring.

    Parameters
    ----------
    k, n
        Trial rows and training samples.
    n_classes
        Real classes; an abstention output, when present, is column ``n_classes``.
    abstaining
        Whether the model has the abstention output.
    epochs, last_epochs
        Total epochs of training, and how many final ones the loss signal averages.
    device
        Where the buffers live (the stack's device).
    """

    def __init__(self, k: int, n: int, n_classes: int, *, abstaining: bool, epochs: int,
                 last_epochs: int, device: str | torch.device):
        self.k, self.n, self.c = k, n, n_classes
        self.abstaining = abstaining
        self.epochs = epochs
        self.last_epochs = min(last_epochs, epochs)
        self.epoch = 0
        self.rows = torch.arange(k, device=device).view(k, 1)
        self.current = torch.zeros(3, k, n, device=device)
        self.loss_sum = torch.zeros(k, n, dtype=torch.float64, device=device)
        self.margin_sum = torch.zeros(k, n, dtype=torch.float64, device=device)
        self.abstain_count = torch.zeros(k, n, device=device)

    @torch.no_grad()
    def collect(self, idx: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Record one step: ``idx`` and ``y`` ``[K, B]``, ``logits`` ``[K, B, outputs]``."""
        real = logits[..., :self.c].float()
        assigned = real.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        loss = real.logsumexp(-1) - assigned
        others = real.scatter(-1, y.unsqueeze(-1), float("-inf")).amax(-1)
        if self.abstaining:
            abstained = (logits.argmax(-1) == self.c).float()
        else:
            abstained = torch.zeros_like(loss)
        self.current[:, self.rows, idx] = torch.stack([loss, assigned - others, abstained])

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Fold the finished epoch's signals into the sums."""
        if self.epoch >= self.epochs - self.last_epochs:
            self.loss_sum += self.current[0]
        self.margin_sum += self.current[1]
        self.abstain_count += self.current[2]
        self.epoch += 1

    def arrays(self, row: int) -> dict[str, np.ndarray]:
        """One row's signals as float32 arrays ``[n]`` named ``signal_<name>`` (at most the
        epochs that ran are averaged: a trial stopped early still gets its signals)."""
        if self.epoch == 0:
            return {}
        loss_epochs = max(1, self.epoch - max(self.epochs - self.last_epochs, 0))
        out = {"signal_loss": self.loss_sum[row] / loss_epochs,
               "signal_aum": self.margin_sum[row] / self.epoch}
        if self.abstaining:
            out["signal_abstain_final"] = self.current[2, row]
            out["signal_abstain_fraction"] = self.abstain_count[row] / self.epoch
        return {key: v.float().cpu().numpy() for key, v in out.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "current": self.current, "loss_sum": self.loss_sum,
                "margin_sum": self.margin_sum, "abstain_count": self.abstain_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        for key in ("current", "loss_sum", "margin_sum", "abstain_count"):
            getattr(self, key).copy_(state[key])


__all__ = ["SignalCollector", "FLIP_NOISES", "wanted"]
