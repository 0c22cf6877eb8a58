"""Synthetic histone-mark data: Poisson read counts around the TSS with a planted expression rule.

The embedded default data of the histone families, deterministic from one seed:

* every (cell type, gene) pair has a latent activity ``z = u_gene + v_cell + w_pair``
  (``u ~ N(0, 1)``, cell-type effect ``v ~ N(0, cell_type_std)``, cell-type-specific activity
  ``w ~ N(0, interaction_std)``);
* each mark's level is ``exp(s_m * beta_m * z + eps)`` with ``s_m = +1`` for the activating
  marks (H3K4me3, H3K4me1, H3K36me3) and ``-1`` for the repressive ones (H3K9me3, H3K27me3),
  ``beta_m ~ U(0.5, 1)`` and ``eps ~ N(0, mark_noise_std)``; the read counts of its bins are
  Poisson with a mark-specific shape around the TSS (a sharp promoter peak for H3K4me3,
  flanking enhancer peaks for H3K4me1, a gene-body ramp for H3K36me3, broad domains for the
  repressive marks) scaled by ``reads_per_mark`` and a per-cell-type sequencing depth in
  ``[0.5, 1.5]`` (the model must see past it);
* log expression is ``z + N(0, expression_noise_std)``.

**Known achievable r.** No model of the marks can beat the oracle that knows ``z``: its Pearson
r with the expression (and, for labels, its AUROC) is recorded per split in
``info["oracle"]``; with the defaults the oracle r is about 0.8.

Sizes (``size``; a size given explicitly wins over the preset): ``small`` (tests, laptops),
10 cell types x 1,000 genes; ``seed``, 56 cell types x 17,447 genes with 6 cell types and
1,447 genes held out, as seed 002 (float32 counts take 56 x 17,447 x 500 x 4 bytes, 2 GB).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from genodl_core.data.histone import (ACTIVATING, MARKS, Holdout, HistoneTask, HistoneTensor,
                                      median_labels, split_indices, split_tensor)
from genodl_core.data.histone_metrics import auroc, pearson
from genodl_core.data.types import MAX_CELLS, Dataset
from genodl_core.errors import SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import check_range

#: Sizes of the presets: ``small`` for tests and laptops, ``seed`` as seed 002's data (56 cell
#: types x 17,447 genes; 3 + 3 cell types and 724 + 723 genes held out, 1,447 as the seed's).
SIZES = {
    "small": {"n_cell_types": 10, "n_genes": 1000, "n_val_cell_types": 2,
              "n_test_cell_types": 2, "val_gene_fraction": 0.2, "test_gene_fraction": 0.2},
    "seed": {"n_cell_types": 56, "n_genes": 17447, "n_val_cell_types": 3,
             "n_test_cell_types": 3, "val_gene_fraction": 724 / 17447,
             "test_gene_fraction": 723 / 17447},
}
#: Version of the generating procedure, recorded with the data; bump on any change of output.
GENERATOR_VERSION = "synthetic_histone/1"


@dataclass(frozen=True)
class SyntheticHistoneParams:
    """Parameters of ``synthetic_histone`` / ``synthetic_histone_labels`` (module docstring).

    ``holdout``, the held-out cell-type counts and gene fractions define the splits
    (:func:`genodl_core.data.histone.split_tensor`); ``seed`` fixes data and splits.
    """

    size: Literal["small", "seed"] = "small"
    n_cell_types: int | None = None
    n_genes: int | None = None
    n_marks: int = 5
    n_bins: int = 100
    reads_per_mark: float = 300.0
    cell_type_std: float = 0.3
    interaction_std: float = 0.5
    mark_noise_std: float = 0.3
    expression_noise_std: float = 0.8
    holdout: Holdout = "both"
    n_val_cell_types: int | None = None
    n_test_cell_types: int | None = None
    val_gene_fraction: float | None = None
    test_gene_fraction: float | None = None
    seed: int = 0
    scaling: str = "none"

    def n_features(self) -> int:
        return self.n_marks * self.n_bins

    def resolved(self) -> "SyntheticHistoneParams":
        """The parameters with every size left unset taken from the ``size`` preset."""
        preset = SIZES[self.size]
        return dataclasses.replace(self, **{k: v for k, v in preset.items()
                                            if getattr(self, k) is None})

    def validate(self, where: str) -> None:
        if any(getattr(self, k) is None for k in SIZES[self.size]):
            self.resolved().validate(where)
            return
        check_range(where, "n_cell_types", self.n_cell_types, 1)
        check_range(where, "n_genes", self.n_genes, 2)
        check_range(where, "n_marks", self.n_marks, 1, len(MARKS))
        check_range(where, "n_bins", self.n_bins, 1)
        for name in ("reads_per_mark",):
            check_range(where, name, getattr(self, name), 0, lo_open=True)
        for name in ("cell_type_std", "interaction_std", "mark_noise_std",
                     "expression_noise_std"):
            check_range(where, name, getattr(self, name), 0)
        check_range(where, "n_val_cell_types", self.n_val_cell_types, 0)
        check_range(where, "n_test_cell_types", self.n_test_cell_types, 0)
        check_range(where, "val_gene_fraction", self.val_gene_fraction, 0, 1, hi_open=True)
        check_range(where, "test_gene_fraction", self.test_gene_fraction, 0, 1, hi_open=True)
        check_range(where, "seed", self.seed, 0)
        if self.scaling != "none":
            raise SpecError(f"{where}.scaling", self.scaling, ["none"],
                            reason="histone models take log1p of the raw counts themselves")
        # The held-out sets must fit now, not after minutes of generating data.
        split_indices(self.n_cell_types, self.n_genes, holdout=self.holdout,
                      n_val_cell_types=self.n_val_cell_types,
                      n_test_cell_types=self.n_test_cell_types,
                      val_gene_fraction=self.val_gene_fraction,
                      test_gene_fraction=self.test_gene_fraction, seed=self.seed)
        cells = self.n_cell_types * self.n_genes * self.n_features()
        if cells > MAX_CELLS:
            raise SpecError(f"{where}.n_genes", self.n_genes,
                            f"sizes giving at most {MAX_CELLS:,} count cells",
                            reason=f"{cells:,} cells would not fit in memory")


def mark_shapes(marks: tuple[str, ...], n_bins: int) -> np.ndarray:
    """Each mark's expected share of reads per bin ``[marks, bins]`` (rows sum to 1); the TSS
    is the middle bin and positions run from -1 (upstream edge) to +1 (downstream)."""
    pos = np.linspace(-1.0, 1.0, n_bins)
    shapes = {
        "H3K4me3": np.exp(-0.5 * (pos / 0.06) ** 2),
        "H3K4me1": np.exp(-0.5 * ((np.abs(pos) - 0.25) / 0.08) ** 2),
        "H3K36me3": 1.0 / (1.0 + np.exp(-(pos - 0.2) / 0.08)),
        "H3K9me3": 0.8 + 0.2 * np.cos(np.pi * pos),
        "H3K27me3": np.exp(-0.5 * (pos / 0.5) ** 2),
    }
    out = np.stack([shapes[m] + 1e-3 for m in marks])
    return out / out.sum(axis=1, keepdims=True)


def generate_tensor(p: SyntheticHistoneParams) -> tuple[HistoneTensor, np.ndarray]:
    """The tensor described by ``p`` and the latent activity ``z [C, G]`` (the oracle)."""
    p = p.resolved()
    marks = MARKS[:p.n_marks]
    world = np.random.default_rng([p.seed, 0])
    c, g = p.n_cell_types, p.n_genes
    u = world.normal(size=(1, g))
    v = world.normal(0.0, p.cell_type_std, size=(c, 1))
    depth = world.uniform(0.5, 1.5, size=c)
    beta = world.uniform(0.5, 1.0, size=len(marks))
    sign = np.array([1.0 if m in ACTIVATING else -1.0 for m in marks])
    shapes = mark_shapes(marks, p.n_bins)
    draws = np.random.default_rng([p.seed, 1])
    z = u + v + draws.normal(0.0, p.interaction_std, size=(c, g))
    counts = np.empty((c, g, len(marks), p.n_bins), dtype=np.float32)
    for ci in range(c):  # one cell type at a time bounds the float64 temporaries
        eps = draws.normal(0.0, p.mark_noise_std, size=(g, len(marks)))
        level = np.exp(sign * beta * z[ci][:, None] + eps)                    # [G, M]
        rate = p.reads_per_mark * depth[ci] * level[:, :, None] * shapes[None]
        counts[ci] = draws.poisson(rate)
    expression = (z + draws.normal(0.0, p.expression_noise_std, size=(c, g))).astype(np.float32)
    tensor = HistoneTensor(counts=counts, expression=expression,
                           cell_types=tuple(f"CT{i:02d}" for i in range(c)),
                           gene_ids=tuple(f"G{j:05d}" for j in range(g)), marks=marks,
                           source="synthetic_histone")
    return tensor, z


def generate(p: SyntheticHistoneParams, task: HistoneTask) -> Dataset:
    """The dataset of ``p`` for ``task``, with the oracle's r (and AUROC) per split in info."""
    p = p.resolved()
    tensor, z = generate_tensor(p)
    index = split_indices(p.n_cell_types, p.n_genes, holdout=p.holdout,
                          n_val_cell_types=p.n_val_cell_types,
                          n_test_cell_types=p.n_test_cell_types,
                          val_gene_fraction=p.val_gene_fraction,
                          test_gene_fraction=p.test_gene_fraction, seed=p.seed)
    info = {"generator": GENERATOR_VERSION, "seed": p.seed, "task": task, "holdout": p.holdout,
            "reads_per_mark": p.reads_per_mark, "expression_noise_std": p.expression_noise_std,
            "oracle": oracle(tensor, z, index)}
    return split_tensor(tensor, index, task=task, info=info)


def oracle(tensor: HistoneTensor, z: np.ndarray,
           index: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Pearson r of the latent activity with the expression, and its AUROC for the median
    labels, on every split: what no model of the marks can beat in expectation (on a finite
    split, sampling noise moves either by about ``1 / sqrt(rows)``)."""
    labels = median_labels(tensor.expression)
    out = {}
    for split, (ci, gi) in index.items():
        sel = np.ix_(ci, gi)
        out[f"{split}_pearson"] = pearson(z[sel], tensor.expression[sel])
        out[f"{split}_auroc"] = auroc(z[sel], labels[sel])
    return out


@DATASETS.register("synthetic_histone", params=SyntheticHistoneParams, task="regression")
def synthetic_histone(params: SyntheticHistoneParams) -> Dataset:
    """Synthetic histone marks -> log expression (regression)."""
    return generate(params, "regression")


@DATASETS.register("synthetic_histone_labels", params=SyntheticHistoneParams,
                   task="classification")
def synthetic_histone_labels(params: SyntheticHistoneParams) -> Dataset:
    """Synthetic histone marks -> above / below the cell type's median expression."""
    return generate(params, "classification")


__all__ = ["SyntheticHistoneParams", "GENERATOR_VERSION", "generate", "generate_tensor",
           "mark_shapes", "oracle"]
