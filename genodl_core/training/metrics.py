"""Classification metrics, with and without an abstention class.

The loop accumulates per-batch *sums* on the device (one small tensor per batch, no host
synchronisation per step) and turns them into rates once per epoch with
:func:`rates_from_sums`. Definitions follow the abstaining-classifier literature (DAC):

- ``accuracy``: share of samples whose argmax is the true class. For an abstaining model an
  abstention is never the true class, so abstentions count as wrong.
- ``abstention``: share of samples whose argmax is the abstention class (index ``k``).
- ``abstention_accuracy``: accuracy over the samples NOT abstained on; NaN when every sample
  was abstained on (an accuracy over no samples is undefined; CANDLE reports 1.0 there).
- ``kept``: how many samples were NOT abstained on, so that a NaN accuracy (and an accuracy
  over a handful of samples) can be told apart from a measured one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Layout of the sums vector produced by :func:`batch_sums`.
SUM_FIELDS = ("loss", "correct", "abstained")


def batch_sums(per_sample_loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
               abstain_class: int | None) -> torch.Tensor:
    """Sums over one batch: ``[sum of losses, correct predictions, abstentions]`` (float64).

    Parameters
    ----------
    per_sample_loss
        ``[batch]`` loss of every sample (any float dtype).
    logits
        ``[batch, outputs]`` model outputs; only their argmax is used.
    y
        ``[batch]`` int64 true classes in ``range(k)``.
    abstain_class
        Index ``k`` of the abstention output, or ``None`` for a plain classifier.
    """
    pred = logits.argmax(dim=1)
    correct = (pred == y).sum()
    if abstain_class is None:
        abstained = torch.zeros((), dtype=torch.int64, device=logits.device)
    else:
        abstained = (pred == abstain_class).sum()
    return torch.stack([per_sample_loss.detach().double().sum(), correct.double(),
                        abstained.double()])


def row_batch_sums(per_sample_loss: torch.Tensor, logits: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """:func:`batch_sums` of K plain classifiers at once: ``[K, B]`` losses, ``[K, B, C]``
    logits and ``[K, B]`` labels give ``[K, 3]`` sums (no abstention class), in a few kernels
    instead of a few per trial."""
    correct = (logits.argmax(dim=-1) == y).sum(dim=-1).double()
    return torch.stack([per_sample_loss.detach().double().sum(dim=-1), correct,
                        torch.zeros_like(correct)], dim=-1)


def rates_from_sums(sums: torch.Tensor | np.ndarray, n_samples: int,
                    abstaining: bool) -> dict[str, float]:
    """Turn accumulated :func:`batch_sums` into the per-epoch metrics.

    Returns ``loss`` and ``accuracy``; for an abstaining model also ``abstention``,
    ``abstention_accuracy`` (NaN when nothing was kept) and ``kept`` (a count).

    Raises
    ------
    ValueError
        ``n_samples`` is not positive (an empty split has no metrics).
    """
    if n_samples <= 0:
        raise ValueError(f"cannot compute metrics over {n_samples} samples")
    loss, correct, abstained = (float(v) for v in np.asarray(
        sums.detach().cpu() if isinstance(sums, torch.Tensor) else sums, dtype=np.float64))
    out = {"loss": loss / n_samples, "accuracy": correct / n_samples}
    if abstaining:
        out["abstention"] = abstained / n_samples
        out["abstention_accuracy"] = abstention_accuracy(correct, abstained, n_samples)
        out["kept"] = float(n_samples - abstained)
    return out


def abstention_accuracy(correct: float, abstained: float, n_samples: int) -> float:
    """Accuracy over the non-abstained samples; NaN when all were abstained on.

    Nothing attempted is not the same as nothing wrong: reporting 1.0 there (as CANDLE does)
    would make a model that abstains on everything look perfect in every average.
    """
    attempted = n_samples - abstained
    return math.nan if attempted <= 0 else correct / attempted


def predicted_classes(logits: torch.Tensor, abstain_class: int | None) -> torch.Tensor:
    """The distinct real classes that ``logits``' argmax predicts (abstentions left out)."""
    pred = logits.argmax(dim=-1).flatten()
    if abstain_class is not None:
        pred = pred[pred != abstain_class]
    return torch.unique(pred)


def collapsed_class(logits: torch.Tensor, abstain_class: int | None) -> int | None:
    """The one real class predicted for EVERY sample, or None.

    A classifier that answers one class whatever the input (a failure mode of training on
    noisy or unlearnable data) can still reach the majority-class accuracy, which is easy to
    mistake for learning. A model that abstains on some samples has not collapsed.
    """
    pred = logits.argmax(dim=-1).flatten()
    if pred.numel() == 0:
        return None
    first = int(pred[0])
    if first == abstain_class or not bool((pred == first).all()):
        return None
    return first


def classification_metrics(logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
                           abstain_class: int | None = None) -> dict[str, float]:
    """Accuracy (and abstention metrics) of a whole set of predictions, without a loss.

    A convenience for analysis code holding saved outputs; the loop uses :func:`batch_sums`.
    """
    logits_t = torch.as_tensor(logits)
    y_t = torch.as_tensor(y)
    sums = batch_sums(torch.zeros(len(y_t)), logits_t, y_t, abstain_class)
    rates = rates_from_sums(sums, len(y_t), abstain_class is not None)
    rates.pop("loss")
    return rates


__all__ = ["SUM_FIELDS", "batch_sums", "row_batch_sums", "rates_from_sums", "abstention_accuracy",
           "predicted_classes", "collapsed_class", "classification_metrics"]
