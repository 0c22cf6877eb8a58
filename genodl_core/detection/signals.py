"""Per-sample training signals gathered during training, for noisy-label detection.

A classifier stack calls :meth:`SignalCollector.collect` once per training step with the
step's logits and sample indices; the hot path is one indexed write of the (detached) logits into
a preallocated ``[K, n_train, outputs]`` buffer on the device, in the logits' own dtype (every
sample is seen exactly once per epoch, so a write, not an accumulation, is exact). At the end of
each epoch (:meth:`end_epoch`, called from the stack's validation) the signals of all samples are
computed from the buffer and the labels at once and folded into running sums. Nothing
synchronises with the host until training is over (:meth:`arrays`). The logits are those of the
step's forward pass, before its update: what the model thought of the sample when it trained on
it.

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

from genodl_core.registry import NOISES
from genodl_core.spec import TrialSpec

#: Noise steps whose record carries a ``flip_mask``: "auto" detection runs for these
#: (multi-label steps flip per sample and target: a ``[n, T]`` mask). A new step that flips
#: labels joins them by registering with ``flips_labels=True``.
FLIP_NOISES = ("label_flip", "correlated_label_flip", "class_conditional_flip", "missed_peaks",
               "spurious_peaks")
#: Largest ``n_train x targets`` a multi-label trial gathers signals for (its buffers hold
#: four values per element: 1 GB at this size); larger trials train without detection.
MAX_MULTILABEL_ELEMENTS = 64_000_000


def flips_labels(kind: str) -> bool:
    """Whether the noise step ``kind`` flips labels (and records a flip mask)."""
    return kind in FLIP_NOISES or (kind in NOISES and bool(NOISES.get(kind).meta.get(
        "flips_labels")))


def wanted(spec: TrialSpec) -> bool:
    """Whether a classifier trial collects detection signals (``train.detect``)."""
    mode = spec.train.detect
    if mode == "auto":
        return any(flips_labels(step.name) for step in spec.noise)
    return mode == "on"


class SignalCollector:
    """Device buffers of the per-sample signals of K stacked trials; see the module docstring.

    Parameters
    ----------
    labels
        ``[K, n]`` (or ``[n]``, shared) int64 training labels, on the stack's device.
    n_classes
        Real classes; an abstention output, when present, is column ``n_classes``.
    abstaining
        Whether the model has the abstention output.
    epochs, last_epochs
        Total epochs of training, and how many final ones the loss signal averages.
    """

    def __init__(self, labels: torch.Tensor, k: int, n_classes: int, *, abstaining: bool,
                 epochs: int, last_epochs: int):
        self.labels = labels.expand(k, -1) if labels.dim() == 1 else labels
        self.k, self.n = k, self.labels.shape[1]
        self.c = n_classes
        self.abstaining = abstaining
        self.epochs = epochs
        self.last_epochs = min(last_epochs, epochs)
        self.epoch = 0
        device = labels.device
        self.rows = torch.arange(k, device=device).view(k, 1)
        self.logits: torch.Tensor | None = None
        self.loss_sum = torch.zeros(k, self.n, dtype=torch.float64, device=device)
        self.margin_sum = torch.zeros(k, self.n, dtype=torch.float64, device=device)
        self.abstain_count = torch.zeros(k, self.n, device=device)
        self.abstain_last = torch.zeros(k, self.n, device=device)

    @torch.no_grad()
    def collect(self, idx: torch.Tensor, logits: torch.Tensor) -> None:
        """Record one step: ``idx`` ``[K, B]`` sample indices, ``logits`` ``[K, B, outputs]``."""
        if self.logits is None or self.logits.dtype != logits.dtype:
            self.logits = logits.new_zeros(self.k, self.n, logits.shape[-1])
        self.logits[self.rows, idx] = logits.detach()

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Compute the finished epoch's signals of every sample and fold them into the sums."""
        if self.logits is None:
            return
        y = self.labels.unsqueeze(-1)
        real = self.logits[..., :self.c].float()
        assigned = real.gather(-1, y).squeeze(-1)
        if self.epoch >= self.epochs - self.last_epochs:
            self.loss_sum += real.logsumexp(-1) - assigned
        self.margin_sum += assigned - real.scatter(-1, y, float("-inf")).amax(-1)
        if self.abstaining:
            self.abstain_last = (self.logits.argmax(-1) == self.c).float()
            self.abstain_count += self.abstain_last
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
            out["signal_abstain_final"] = self.abstain_last[row]
            out["signal_abstain_fraction"] = self.abstain_count[row] / self.epoch
        return {key: v.float().cpu().numpy() for key, v in out.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loss_sum": self.loss_sum, "margin_sum": self.margin_sum,
                "abstain_count": self.abstain_count, "abstain_last": self.abstain_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        for key in ("loss_sum", "margin_sum", "abstain_count", "abstain_last"):
            getattr(self, key).copy_(state[key])


class MultiLabelSignals:
    """The signals of one multi-label trial, per training sample and target (``[n, T]``).

    With one sigmoid output per target, the two-class logits are ``(0, z)``: the margin of
    the assigned label is ``z`` for a positive label and ``-z`` for a negative one, and the
    loss is the binary cross-entropy. As :class:`SignalCollector`, a step writes its logits
    into a device buffer (one indexed write) and an epoch's end computes the signals.
    """

    def __init__(self, labels: torch.Tensor, *, epochs: int, last_epochs: int):
        self.labels = labels.float()
        self.epochs = epochs
        self.last_epochs = min(last_epochs, epochs)
        self.epoch = 0
        self.logits: torch.Tensor | None = None
        self.loss_sum = torch.zeros_like(self.labels)
        self.margin_sum = torch.zeros_like(self.labels)

    @torch.no_grad()
    def collect(self, idx: torch.Tensor, logits: torch.Tensor) -> None:
        """Record one step: ``idx`` ``[B]`` sample indices, ``logits`` ``[B, T]``."""
        if self.logits is None or self.logits.dtype != logits.dtype:
            self.logits = logits.new_zeros(self.labels.shape)
        self.logits[idx] = logits.detach()

    @torch.no_grad()
    def end_epoch(self) -> None:
        if self.logits is None:
            return
        z = self.logits.float()
        if self.epoch >= self.epochs - self.last_epochs:
            self.loss_sum += torch.nn.functional.binary_cross_entropy_with_logits(
                z, self.labels, reduction="none")
        self.margin_sum += z * (2 * self.labels - 1)
        self.epoch += 1

    def arrays(self) -> dict[str, np.ndarray]:
        if self.epoch == 0:
            return {}
        loss_epochs = max(1, self.epoch - max(self.epochs - self.last_epochs, 0))
        return {"signal_loss": (self.loss_sum / loss_epochs).cpu().numpy(),
                "signal_aum": (self.margin_sum / self.epoch).cpu().numpy()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loss_sum": self.loss_sum, "margin_sum": self.margin_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.loss_sum.copy_(state["loss_sum"])
        self.margin_sum.copy_(state["margin_sum"])


__all__ = ["SignalCollector", "MultiLabelSignals", "FLIP_NOISES", "flips_labels",
           "MAX_MULTILABEL_ELEMENTS", "wanted"]
