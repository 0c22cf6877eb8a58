"""Synthetic single-cell counts with planted gene-pair relations: CNNC's embedded default data.

Every labelled pair gets its own two genes over the same ``n_cells`` cells (which share a
per-cell library size ``s ~ LogNormal(0, 0.3)``). Per pair, latent log rates are drawn as:

* **none** (label 0): ``lA = mA + zA``, ``lB = mB + zB`` with independent ``z ~ N(0, 1)``;
* **drive** (A -> B): ``lA = mA + zA``, ``lB = mB + coupling * 2 * tanh(1.5 * zA) + e`` with
  ``e ~ N(0, noise_std)``: B follows A through a saturating (nonlinear) response;
* **co-regulation**: a shared factor ``h ~ N(0, 1)``: ``lA = mA + coupling * h + e``,
  ``lB = mB + coupling * h * sign + e'`` (sign +-1: activated or repressed together).

Gene means ``m ~ U(-1, 1.5)``. Counts are ``Poisson(s * exp(l))``, then each gene loses a share
``~ U(0.5, 1.5) * dropout`` of its values to zeros (zero inflation, the technical dropout of
single-cell data).

Binary (``n_classes = 2``): positives (label 1) are drives with probability ``drive_share``,
else co-regulations. Three classes (CNNC's directional task): 1 = A -> B, 2 = B -> A (a drive
with the genes swapped); none = 0. ``positive_fraction`` sets the class balance (seed 001's data
were about 2% positive; CNNC's balanced). Pairs are split at random into train / val / test
(``val_fraction``, ``test_fraction``), the labels stratified.

Deterministic from ``seed``: pairs are generated in fixed chunks, each from its own stream
``[seed, chunk]``, so the data do not depend on memory or process. Small (tests, laptops): the
defaults, 2,000 pairs x 300 cells. GPU scale: ``n_pairs = 50000, n_cells = 1000`` (images
50,000 x 1,024 float32: 200 MB; generated chunk by chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from genodl_core.data.cnnc_images import log_expression, nepdf, nepdf_from_log
from genodl_core.data.types import MAX_CELLS, Dataset
from genodl_core.errors import SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import check_range

#: Version of the generating procedure, recorded with the data; bump on any change of output.
GENERATOR_VERSION = "synthetic_cnnc/1"
#: Pairs generated from one random stream (fixed: the data must not depend on it changing).
CHUNK_PAIRS = 1024

Balance = Literal["none", "downsample"]


@dataclass(frozen=True)
class SyntheticCNNCParams:
    """Parameters of ``synthetic_cnnc`` (see the module docstring).

    ``bins`` and ``sigma`` are the NEPDF image's (:mod:`genodl_core.data.cnnc_images`);
    ``train_balance = "downsample"`` keeps, in the training split only, as many pairs of each
    class as the rarest class has (seed 001's balanced down-sampling; seeded, validation and
    test untouched).
    """

    n_pairs: int = 2000
    n_cells: int = 300
    n_classes: int = 2
    positive_fraction: float = 0.5
    drive_share: float = 0.5
    coupling: float = 1.0
    noise_std: float = 0.5
    dropout: float = 0.3
    bins: int = 32
    sigma: float = 0.0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    train_balance: Balance = "none"
    #: Share of the training split's negative pairs that are in truth related (drawn as
    #: positives, labelled 0): negatives sampled from pairs no database lists yet.
    unlisted_negatives: float = 0.0
    #: Expression noise of the training pairs only, before their images are built: each
    #: pair keeps a random share ``train_cell_keep`` of the cells (a shallower experiment), and
    #: gets ``N(0, train_log_noise_std)`` added to its log10 expression.
    train_cell_keep: float = 1.0
    train_log_noise_std: float = 0.0
    seed: int = 0
    scaling: str = "none"

    def validate(self, where: str) -> None:
        check_range(where, "n_pairs", self.n_pairs, 10)
        check_range(where, "n_cells", self.n_cells, 2)
        if self.n_classes not in (2, 3):
            raise SpecError(f"{where}.n_classes", self.n_classes, [2, 3],
                            reason="pairs are related / unrelated (2) or A->B / B->A / none (3)")
        check_range(where, "positive_fraction", self.positive_fraction, 0, 1, lo_open=True,
                    hi_open=True)
        check_range(where, "drive_share", self.drive_share, 0, 1)
        check_range(where, "coupling", self.coupling, 0)
        check_range(where, "noise_std", self.noise_std, 0)
        check_range(where, "dropout", self.dropout, 0, 0.66)
        check_range(where, "bins", self.bins, 2, 256)
        check_range(where, "sigma", self.sigma, 0, 16)
        check_range(where, "val_fraction", self.val_fraction, 0, 0.5, lo_open=True)
        check_range(where, "test_fraction", self.test_fraction, 0, 0.5)
        check_range(where, "unlisted_negatives", self.unlisted_negatives, 0, 1)
        check_range(where, "train_cell_keep", self.train_cell_keep, 0, 1, lo_open=True)
        check_range(where, "train_log_noise_std", self.train_log_noise_std, 0)
        check_range(where, "seed", self.seed, 0)
        if self.scaling != "none":
            raise SpecError(f"{where}.scaling", self.scaling, ["none"],
                            reason="NEPDF images are already scaled to [0, 1]")
        if self.n_pairs * self.bins * self.bins > MAX_CELLS:
            raise SpecError(f"{where}.n_pairs", self.n_pairs,
                            f"at most {MAX_CELLS // (self.bins * self.bins):,} pairs of "
                            f"{self.bins}x{self.bins} images", reason="images would not fit")


def pair_labels(p: SyntheticCNNCParams) -> np.ndarray:
    """Every pair's label ``[n_pairs]``: exactly ``round(positive_fraction * n)`` related pairs
    (split evenly between the two directions with 3 classes), in a seeded order."""
    rng = np.random.default_rng([p.seed, 0])
    n_pos = int(np.clip(np.floor(p.positive_fraction * p.n_pairs + 0.5), 1, p.n_pairs - 1))
    labels = np.zeros(p.n_pairs, dtype=np.int64)
    labels[:n_pos] = 1
    if p.n_classes == 3:
        labels[n_pos // 2:n_pos] = 2
    return labels[rng.permutation(p.n_pairs)]


def simulate_pairs(p: SyntheticCNNCParams, labels: np.ndarray, chunk: int, stream: int = 1
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of gene A and B ``[pairs, cells]`` (float32) of one chunk of pairs, and each
    pair's relation kind (0 none, 1 drive, 2 co-regulation); ``stream`` 1 is the listed
    pairs', 5 the unlisted related pairs'."""
    rng = np.random.default_rng([p.seed, stream, chunk])
    lab = labels[chunk * CHUNK_PAIRS:(chunk + 1) * CHUNK_PAIRS]
    m, n = len(lab), p.n_cells
    size = np.random.default_rng([p.seed, 2]).lognormal(0.0, 0.3, size=n)   # shared by pairs
    mean_a, mean_b = rng.uniform(-1.0, 1.5, size=(2, m, 1))
    z_a, z_b, h, e_a, e_b = rng.normal(size=(5, m, n))
    sign = np.where(rng.random((m, 1)) < 0.5, 1.0, -1.0)
    if p.n_classes == 2:
        kind = np.where(lab == 0, 0, np.where(rng.random(m) < p.drive_share, 1, 2))
    else:
        kind = np.where(lab == 0, 0, 1)
    k = kind[:, None]
    c, s = p.coupling, p.noise_std
    log_a = np.where(k == 2, mean_a + c * h + s * e_a, mean_a + z_a)
    log_b = np.select([k == 1, k == 2],
                      [mean_b + c * 2.0 * np.tanh(1.5 * z_a) + s * e_b,
                       mean_b + c * sign * h + s * e_b],
                      mean_b + z_b)
    counts = rng.poisson(size[None, :, None] * np.exp(np.stack([log_a, log_b], axis=2)))
    rate = p.dropout * rng.uniform(0.5, 1.5, size=(m, 1, 2))
    counts = np.where(rng.random(counts.shape) < rate, 0, counts).astype(np.float32)
    a, b = counts[:, :, 0], counts[:, :, 1]
    if p.n_classes == 3:  # B -> A: the same relation with the genes swapped
        swap = (lab == 2)[:, None]
        a, b = np.where(swap, b, a), np.where(swap, a, b)
    return a, b, kind


def expression_noise(p: SyntheticCNNCParams) -> bool:
    """Whether ``p`` asks for expression noise of the training pairs."""
    return p.train_cell_keep < 1.0 or p.train_log_noise_std > 0.0


def noisy_images(a: np.ndarray, b: np.ndarray, p: SyntheticCNNCParams,
                 rng: np.random.Generator) -> np.ndarray:
    """NEPDF images of pairs ``a, b [P, cells]`` after the training expression noise of ``p``:
    a random subset of ``round(train_cell_keep * cells)`` cells per pair (at least 2), then
    Gaussian noise on the log expression; the bins follow the noised values."""
    if p.train_cell_keep < 1.0:
        m = max(2, int(np.floor(p.train_cell_keep * a.shape[1] + 0.5)))
        keep = np.argsort(rng.random(a.shape), axis=1)[:, :m]
        a, b = np.take_along_axis(a, keep, axis=1), np.take_along_axis(b, keep, axis=1)
    log_a, log_b = log_expression(a), log_expression(b)
    if p.train_log_noise_std > 0:
        log_a = log_a + rng.normal(0.0, p.train_log_noise_std, log_a.shape)
        log_b = log_b + rng.normal(0.0, p.train_log_noise_std, log_b.shape)
    return nepdf_from_log(log_a, log_b, bins=p.bins, sigma=p.sigma)


def generate_images(p: SyntheticCNNCParams, train: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NEPDF images ``[n_pairs, bins * bins]``, labels and relation kinds of all pairs; the
    pairs marked in ``train`` get the training expression noise (from their own stream, so
    the other images are those of clean data)."""
    labels = pair_labels(p)
    images = np.empty((p.n_pairs, p.bins * p.bins), dtype=np.float32)
    kinds = np.empty(p.n_pairs, dtype=np.int64)
    for chunk in range((p.n_pairs + CHUNK_PAIRS - 1) // CHUNK_PAIRS):
        a, b, kind = simulate_pairs(p, labels, chunk)
        rows = slice(chunk * CHUNK_PAIRS, chunk * CHUNK_PAIRS + len(a))
        images[rows] = nepdf(a, b, bins=p.bins, sigma=p.sigma)
        if train is not None and expression_noise(p):
            noisy = train[rows]
            if noisy.any():
                block = images[rows]  # a view: writing it writes the images
                block[noisy] = noisy_images(a[noisy], b[noisy], p,
                                            np.random.default_rng([p.seed, 7, chunk]))
        kinds[rows] = kind
    return images, labels, kinds


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Row indices of train / val / test, each class split in the same proportions."""
    rng = np.random.default_rng([seed, 3])
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(np.floor(val_fraction * len(rows) + 0.5))
        n_test = int(np.floor(test_fraction * len(rows) + 0.5))
        parts["val"].append(rows[:n_val])
        parts["test"].append(rows[n_val:n_val + n_test])
        parts["train"].append(rows[n_val + n_test:])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def downsample_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """Sorted rows keeping as many of each class as the rarest class has (seeded)."""
    rng = np.random.default_rng([seed, 4])
    classes, counts = np.unique(labels, return_counts=True)
    keep = [rng.choice(np.flatnonzero(labels == c), size=counts.min(), replace=False)
            for c in classes]
    return np.sort(np.concatenate(keep))


def split_pairs(images: np.ndarray, labels: np.ndarray, *, n_classes: int, val_fraction: float,
                test_fraction: float, train_balance: Balance, seed: int,
                info: dict) -> Dataset:
    """A :class:`Dataset` of pair images split as the parameters say (shared by the sources)."""
    index = stratified_split(labels, val_fraction, test_fraction, seed)
    train = index["train"]
    if train_balance == "downsample":
        train = train[downsample_rows(labels[train], seed)]
    info = {**info, "n_pairs": {k: int(len(v)) for k, v in {**index, "train": train}.items()},
            "positive_share": float(np.mean(labels > 0)), "train_balance": train_balance}
    test = index["test"]
    return Dataset(x_train=images[train], y_train=labels[train], x_val=images[index["val"]],
                   y_val=labels[index["val"]], task="classification", n_classes=n_classes,
                   x_test=images[test] if len(test) else None,
                   y_test=labels[test] if len(test) else None, info=info)


@DATASETS.register("synthetic_cnnc", params=SyntheticCNNCParams, task="classification")
def synthetic_cnnc(params: SyntheticCNNCParams) -> Dataset:
    """Synthetic gene pairs as NEPDF images with planted relations (module docstring)."""
    train = np.zeros(params.n_pairs, dtype=bool)
    train[stratified_split(pair_labels(params), params.val_fraction, params.test_fraction,
                           params.seed)["train"]] = True
    images, labels, kinds = generate_images(params, train)
    info = {"generator": GENERATOR_VERSION, "seed": params.seed, "bins": params.bins,
            "sigma": params.sigma, "n_cells": params.n_cells,
            "relation_counts": {name: int((kinds == i).sum())
                                for i, name in enumerate(("none", "drive", "coregulation"))}}
    ds = split_pairs(images, labels, n_classes=params.n_classes,
                     val_fraction=params.val_fraction, test_fraction=params.test_fraction,
                     train_balance=params.train_balance, seed=params.seed, info=info)
    return with_unlisted_negatives(ds, params) if params.unlisted_negatives > 0 else ds


def with_unlisted_negatives(ds: Dataset, p: SyntheticCNNCParams) -> Dataset:
    """The dataset with a share ``p.unlisted_negatives`` of its training negatives replaced by
    related pairs labelled 0 (validation and test untouched); the count goes in the info."""
    negatives = np.flatnonzero(ds.y_train == 0)
    rng = np.random.default_rng([p.seed, 6])
    n = int(np.floor(p.unlisted_negatives * len(negatives) + 0.5))
    rows = np.sort(rng.choice(negatives, size=n, replace=False))
    x = np.array(ds.x_train, copy=True)
    ones = np.ones(n, dtype=np.int64)
    for chunk in range((n + CHUNK_PAIRS - 1) // CHUNK_PAIRS):
        a, b, _ = simulate_pairs(p, ones, chunk, stream=5)
        x[rows[chunk * CHUNK_PAIRS:chunk * CHUNK_PAIRS + len(a)]] = (
            noisy_images(a, b, p, np.random.default_rng([p.seed, 8, chunk]))
            if expression_noise(p) else nepdf(a, b, bins=p.bins, sigma=p.sigma))
    return ds.replace(x_train=x, info={**ds.info, "unlisted_negatives": n})


__all__ = ["SyntheticCNNCParams", "GENERATOR_VERSION", "pair_labels", "simulate_pairs",
           "generate_images", "stratified_split", "downsample_rows", "split_pairs",
           "with_unlisted_negatives"]
