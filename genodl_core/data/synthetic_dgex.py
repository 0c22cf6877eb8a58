"""A synthetic D-GEX-like data source: correlated landmark genes and nonlinear target genes.

Real GEO/GTEx matrices are not public downloads, so tests and examples need data with the
structure that makes the D-GEX comparison meaningful:

* landmark genes are correlated through a few shared latent factors (co-expression modules);
* every target gene is a mix of a linear function of the landmarks and *nonlinear* functions of
  a few shared "programs" (projections of the landmarks): squares, sines and pairwise products.
  A linear model cannot express the nonlinear part, a multi-task network can learn the shared
  programs once for all targets, so D-GEX measurably beats LR, as in the paper; KNN-GE, which
  averages a few similar landmark genes, is the weakest.

Everything is determined by the seed: the "gene world" (loadings, programs, coefficients) and
the samples come from separate numpy Generators, so changing the sample counts keeps the genes.
Samples are generated in chunks so that the paper-size option (943 -> 9,520 genes;
88,807 / 11,101 / 11,101 profiles) fits in memory as float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from genodl_core.data.types import Dataset, MAX_GENES, MAX_SAMPLES, check_cells
from genodl_core.registry import DATASETS
from genodl_core.typed import check_range

log = logging.getLogger(__name__)

#: Sizes (landmarks, targets, train, val, test) of the presets.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "small": (50, 200, 3000, 500, 500),
    "paper": (943, 9520, 88807, 11101, 11101),
}
_CHUNK = 8192


@dataclass(frozen=True)
class SyntheticDGEXParams:
    """Parameters of the ``synthetic_dgex`` source.

    Sizes left unset come from the ``size`` preset: ``small`` (50 -> 200 genes, 3000/500/500
    samples) or ``paper`` (943 -> 9,520 genes, 88,807/11,101/11,101 samples).
    ``nonlinearity`` is the share of each target's signal variance that is nonlinear (0 makes
    the task exactly linear, where LR is optimal). ``seed`` fixes the data; when unset the seed
    handed over by the trial runner (or 0) is used.
    """

    size: Literal["small", "paper"] = "small"
    n_landmarks: int | None = None
    n_targets: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    n_factors: int | None = None
    n_programs: int = 8
    nonlinearity: float = 0.6
    noise_std: float = 0.3
    seed: int | None = None
    scaling: Literal["standard", "none"] = "standard"
    scale_fit: Literal["train"] = "train"

    def sizes(self) -> tuple[int, int, int, int, int]:
        """(n_landmarks, n_targets, n_train, n_val, n_test) after applying the preset."""
        preset = SIZES[self.size]
        given = (self.n_landmarks, self.n_targets, self.n_train, self.n_val, self.n_test)
        n_l, n_t, n_tr, n_v, n_te = (p if g is None else g for g, p in zip(given, preset))
        return n_l, n_t, n_tr, n_v, n_te

    def n_features(self) -> int:
        return self.sizes()[0]

    def validate(self, where: str) -> None:
        for name in ("n_train", "n_val"):
            check_range(where, name, getattr(self, name), 1, MAX_SAMPLES)
        for name in ("n_landmarks", "n_targets"):
            check_range(where, name, getattr(self, name), 1, MAX_GENES)
        check_range(where, "n_test", self.n_test, 0, MAX_SAMPLES)
        n_landmarks, n_targets, n_train, n_val, n_test = self.sizes()
        check_cells(where, "n_train", n_train, n_train + n_val + n_test,
                    n_landmarks + n_targets)
        check_range(where, "n_factors", self.n_factors, 1)
        check_range(where, "n_programs", self.n_programs, 2)
        check_range(where, "nonlinearity", self.nonlinearity, 0, 1)
        check_range(where, "noise_std", self.noise_std, 0)
        check_range(where, "seed", self.seed, 0)


@dataclass(frozen=True)
class GeneWorld:
    """The fixed gene-level structure from which samples are drawn."""

    loadings: np.ndarray        # [n_factors, L]: landmark co-expression modules
    private_std: np.ndarray     # [L]: gene-specific noise of each landmark
    programs: np.ndarray        # [L, R]: shared projections (unit variance after scaling)
    program_kind: np.ndarray    # [R]: 0 square, 1 sine, 2 product with the next program
    linear: np.ndarray          # [L, T]: linear coefficients (unit variance after scaling)
    nonlinear: np.ndarray       # [R, T]: weights of the nonlinear program features
    nonlinearity: float
    noise_std: float


def make_world(n_landmarks: int, n_targets: int, *, n_factors: int, n_programs: int,
               nonlinearity: float, noise_std: float, rng: np.random.Generator) -> GeneWorld:
    """Draw the gene-level structure; all scales are set so that every target has unit signal."""
    loadings = rng.normal(size=(n_factors, n_landmarks)) / np.sqrt(n_factors)
    private_std = rng.uniform(0.3, 0.7, size=n_landmarks)
    cov = loadings.T @ loadings + np.diag(private_std ** 2)
    programs = rng.normal(size=(n_landmarks, n_programs))
    programs /= np.sqrt(np.einsum("lr,lk,kr->r", programs, cov, programs))
    kinds = np.arange(n_programs) % 3
    linear = rng.normal(size=(n_landmarks, n_targets))
    linear /= np.sqrt(np.einsum("lt,lk,kt->t", linear, cov, linear))
    # Each target uses a few programs, so targets share features but are not all alike.
    weights = rng.normal(size=(n_programs, n_targets)) * (rng.random((n_programs, n_targets)) < 0.5)
    weights[rng.integers(n_programs, size=n_targets), np.arange(n_targets)] += 1.0
    weights /= np.linalg.norm(weights, axis=0, keepdims=True)
    return GeneWorld(loadings, private_std, programs, kinds, linear, weights, nonlinearity,
                     noise_std)


def _program_features(p: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Unit-variance, zero-mean nonlinear features of standard-normal programs ``p``."""
    out = np.empty_like(p)
    nxt = np.roll(p, -1, axis=1)
    sq, sine, prod = kinds == 0, kinds == 1, kinds == 2
    out[:, sq] = (p[:, sq] ** 2 - 1.0) / np.sqrt(2.0)
    # E[sin(2p)^2] for p ~ N(0, 1) is (1 - e^-8) / 2.
    out[:, sine] = np.sin(2.0 * p[:, sine]) / np.sqrt((1.0 - np.exp(-8.0)) / 2.0)
    out[:, prod] = p[:, prod] * nxt[:, prod]
    return out


def draw_samples(world: GeneWorld, n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` profiles: landmarks ``[n, L]`` and targets ``[n, T]`` as float32."""
    n_factors, n_landmarks = world.loadings.shape
    n_targets = world.linear.shape[1]
    x_out = np.empty((n, n_landmarks), dtype=np.float32)
    y_out = np.empty((n, n_targets), dtype=np.float32)
    a, b = np.sqrt(1.0 - world.nonlinearity), np.sqrt(world.nonlinearity)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        z = rng.normal(size=(m, n_factors))
        x = z @ world.loadings + rng.normal(size=(m, n_landmarks)) * world.private_std
        phi = _program_features(x @ world.programs, world.program_kind)
        y = a * (x @ world.linear) + b * (phi @ world.nonlinear)
        y += world.noise_std * rng.normal(size=(m, n_targets))
        x_out[start:start + m] = x
        y_out[start:start + m] = y
    return x_out, y_out


def generate(params: SyntheticDGEXParams, seed: int | None = None) -> Dataset:
    """Build the dataset described by ``params`` (deterministic from the seed)."""
    n_landmarks, n_targets, n_train, n_val, n_test = params.sizes()
    data_seed = params.seed if params.seed is not None else (seed or 0)
    world = make_world(
        n_landmarks, n_targets,
        n_factors=params.n_factors or max(2, n_landmarks // 5),
        n_programs=params.n_programs, nonlinearity=params.nonlinearity,
        noise_std=params.noise_std, rng=np.random.default_rng([data_seed, 0]))
    rng = np.random.default_rng([data_seed, 1])
    x_train, y_train = draw_samples(world, n_train, rng)
    x_val, y_val = draw_samples(world, n_val, rng)
    x_test, y_test = draw_samples(world, n_test, rng) if n_test else (None, None)
    log.info("synthetic D-GEX data: %d landmarks -> %d targets, %d/%d/%d samples (seed %d)",
             n_landmarks, n_targets, n_train, n_val, n_test, data_seed)
    return Dataset(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        task="regression",
        feature_ids=np.array([f"LM{i:04d}" for i in range(n_landmarks)]),
        target_ids=np.array([f"TG{j:05d}" for j in range(n_targets)]),
        info={"generator": "synthetic_dgex", "seed": data_seed, "n_landmarks": n_landmarks,
              "n_targets": n_targets, "n_train": n_train, "n_val": n_val, "n_test": n_test,
              "nonlinearity": params.nonlinearity, "noise_std": params.noise_std})


@DATASETS.register("synthetic_dgex", params=SyntheticDGEXParams, task="regression")
def synthetic_dgex(params: SyntheticDGEXParams, seed: int | None = None) -> Dataset:
    """Registered entry point of the ``synthetic_dgex`` data source."""
    return generate(params, seed)
