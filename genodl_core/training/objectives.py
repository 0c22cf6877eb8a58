"""Training objectives: the loss of a step and the metrics of an epoch, per row of a stack.

An objective turns a row's outputs into per-sample losses, accumulates a batch's metric sums on
the device (one small tensor per step, no host synchronisation), turns an epoch's sums into
metrics, and may adapt itself after validation (:meth:`end_epoch`, e.g. the abstaining
classifier's alpha controller in :mod:`genodl_core.training.abstention`). Its ``selection``
names the metric whose best epoch is kept (None: the last epoch).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genodl_core.training.metrics import batch_sums, rates_from_sums


class StatelessObjective:
    """Defaults of an objective without per-epoch adaptation or state of its own."""

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        return {}

    def extra(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class CrossEntropyObjective(StatelessObjective):
    """Categorical cross-entropy over ``k`` softmax outputs; accuracy metrics."""

    abstain_class: int | None = None
    selection: str | None = None
    fail_on_divergence = False

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        work = logits if logits.dtype == torch.float64 else logits.float()
        return F.cross_entropy(work, y, reduction="none")

    def batch_sums(self, losses: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
        return batch_sums(losses, logits.detach(), y, self.abstain_class)

    def train_metrics(self, sums: torch.Tensor, n: int) -> dict[str, float]:
        return rates_from_sums(sums, n, self.abstain_class is not None)


class SumSquaredErrorObjective(StatelessObjective):
    """D-GEX's loss: the sum over target genes of the per-gene mean squared error.

    Per sample that is the sum of squared errors over genes; the step's loss is their mean.
    The epoch's ``loss`` is the sample-weighted mean of the steps' losses. The epoch with the
    lowest ``val_mae`` is kept; a non-finite training loss fails the trial (it diverged).
    """

    abstain_class: int | None = None
    selection: str | None = "val_mae"
    fail_on_divergence = True

    def per_sample_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (pred.float() - y).pow(2).sum(dim=1)

    def batch_sums(self, losses: torch.Tensor, loss: torch.Tensor, pred: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
        return (loss.detach().double() * losses.shape[0]).reshape(1)

    def train_metrics(self, sums: torch.Tensor, n: int) -> dict[str, float]:
        return {"loss": float(sums[0]) / max(n, 1)}


__all__ = ["StatelessObjective", "CrossEntropyObjective", "SumSquaredErrorObjective"]
