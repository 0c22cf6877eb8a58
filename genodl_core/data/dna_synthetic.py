"""DeepSEA-like synthetic DNA: random background, planted motifs, targets of the central bin.

The embedded default data of the DNA families, deterministic from one seed:

* **sequence**: i.i.d. background bases (GC share ``gc_content``), ``length`` long, as uint8
  codes (:mod:`genodl_core.data.dna_codes`).
* **motifs**: ``n_motifs`` position weight matrices (:mod:`genodl_core.data.dna_motifs`; the
  built-in consensus-derived set, or JASPAR with ``pyjaspar``). Each sample receives motif ``m``
  in its central bin (``central_bin`` bases around the middle) with probability ``p_m``
  (seeded, between 7.5 % and 20 %), each instance drawn base by base from the matrix, in
  non-overlapping slots; and, as decoys, in the flanks with probability ``decoy_rate``, where
  they must not count (DeepSEA labels describe the central 200 bp only).
* **targets**, in three groups that mimic DeepSEA's:
  ``tf`` (one motif present; when single motifs run out, one present and another absent),
  ``dnase`` (either of two motifs: open chromatin, the most
  frequent), ``histone`` (both of two motifs: combinations, the rarest). Targets sharing a motif
  are correlated. Rules are drawn (seeded) among those whose prevalence lies between
  ``min_prevalence`` and ``max_prevalence`` (0.5 % - 20 % by default).
* **labels**: a target whose rule holds is labelled positive with probability
  ``label_purity``; one whose rule fails with probability ``background_rate`` (peaks no motif
  explains). Labels follow what was actually planted (a motif that found no free slot is absent).

**Known ceiling.** Given the planting, the label no longer depends on the sequence, so no model
of the sequence can beat the oracle that scores each sample by its rule: that oracle's per-target
ROC/PR AUC on each split is recorded (``info["ceiling"]``: means, and per target in
``info["ceiling_val_roc_auc"]``); with the defaults its mean ROC AUC is about 0.98.

Small (tests, laptops): the defaults, 200 bp and 8 targets. DeepSEA-sized: ``length = 1000``,
``central_bin = 200``, ``n_targets = 919``, as many samples as memory allows (1 byte per base).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from genodl_core.data.dna_motifs import MotifSet, load_motifs
from genodl_core.data.types import MAX_SAMPLES, Dataset
from genodl_core.errors import DataError, SpecError
from genodl_core.registry import DATASETS
from genodl_core.typed import check_range

#: Version of the generating procedure, recorded with the data; bump on any change of output.
GENERATOR_VERSION = "synthetic_dna/1"
#: Target groups, in the order their counts are filled.
GROUPS = ("tf", "dnase", "histone")
#: Share of each group among the targets (the rest of a small count goes to ``tf``).
GROUP_SHARES = {"dnase": 0.25, "histone": 0.25}
#: Range of the per-motif planting probability in the central bin.
MOTIF_RATE = (0.075, 0.2)
#: Rows generated per block (bounds the float temporaries of large sets).
BLOCK_ROWS = 8192


@dataclass(frozen=True)
class SyntheticDNAParams:
    """Parameters of ``synthetic_dna`` (see the module docstring)."""

    n_train: int = 4000
    n_val: int = 1000
    n_test: int = 1000
    length: int = 200
    central_bin: int = 100
    n_targets: int = 8
    #: Motif count; 0 = the fewest giving enough distinct rules for ``n_targets``.
    n_motifs: int = 0
    motifs: MotifSet = "builtin"
    decoy_rate: float = 0.1
    label_purity: float = 0.95
    background_rate: float = 0.002
    gc_content: float = 0.42
    min_prevalence: float = 0.005
    max_prevalence: float = 0.2
    seed: int = 0

    def validate(self, where: str) -> None:
        check_range(where, "n_train", self.n_train, 1, MAX_SAMPLES)
        check_range(where, "n_val", self.n_val, 1, MAX_SAMPLES)
        check_range(where, "n_test", self.n_test, 0, MAX_SAMPLES)
        check_range(where, "length", self.length, 16, 100_000)
        check_range(where, "central_bin", self.central_bin, 12, self.length)
        check_range(where, "n_targets", self.n_targets, 1, 10_000)
        check_range(where, "n_motifs", self.n_motifs, 0, 2_000)
        for name in ("decoy_rate", "label_purity", "background_rate", "min_prevalence",
                     "max_prevalence"):
            check_range(where, name, getattr(self, name), 0.0, 1.0)
        check_range(where, "gc_content", self.gc_content, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.min_prevalence >= self.max_prevalence:
            raise SpecError(f"{where}.min_prevalence", self.min_prevalence,
                            f"min_prevalence < max_prevalence ({self.max_prevalence})",
                            reason="empty prevalence range")
        check_range(where, "seed", self.seed, 0, 2**63 - 1)

    def n_features(self) -> int:
        return self.length


@dataclass(frozen=True)
class Rule:
    """A target: its group and motifs (``tf``: the first present and the second, if any,
    absent, as a factor blocked by a repressor; ``dnase``: either; ``histone``: both)."""

    group: str
    motifs: tuple[int, ...]

    def holds(self, present: np.ndarray) -> np.ndarray:
        cols = present[:, list(self.motifs)]
        if self.group == "tf":
            return cols[:, 0] & ~cols[:, 1:].any(axis=1)
        return cols.any(axis=1) if self.group == "dnase" else cols.all(axis=1)

    def prevalence(self, rates: np.ndarray) -> float:
        p = rates[list(self.motifs)]
        if self.group == "tf":
            return float(p[0] * np.prod(1 - p[1:]))
        return float(1 - np.prod(1 - p)) if self.group == "dnase" else float(np.prod(p))

    def describe(self, names: list[str]) -> str:
        words = [names[i] for i in self.motifs]
        if self.group == "tf":
            return "tf:" + " & not ".join(words)
        return f"{self.group}:" + (" | " if self.group == "dnase" else " & ").join(words)


def group_counts(n_targets: int) -> dict[str, int]:
    counts = {g: int(round(n_targets * share)) for g, share in GROUP_SHARES.items()}
    counts["tf"] = n_targets - sum(counts.values())
    return {g: counts[g] for g in GROUPS}


def reachable_prevalence(group: str) -> tuple[float, float]:
    """Lowest and highest prevalence a rule of ``group`` can have with motif rates in
    :data:`MOTIF_RATE` (more motifs never widen it)."""
    r_lo, r_hi = MOTIF_RATE
    return {"tf": (r_lo * (1 - r_hi), r_hi),
            "dnase": (1 - (1 - r_lo) ** 2, 1 - (1 - r_hi) ** 2),
            "histone": (r_lo ** 2, r_hi ** 2)}[group]


def check_prevalence_range(n_targets: int, lo: float, hi: float) -> None:
    """Fail at once when a group of targets cannot have rules in ``[lo, hi]``: the search over
    ever more motifs would otherwise run up to its limit (quadratic in the motifs) in vain.

    Raises
    ------
    DataError
        Naming the group and the range its rules can reach.
    """
    for group, count in group_counts(n_targets).items():
        g_lo, g_hi = reachable_prevalence(group)
        if count and (hi < g_lo or lo > g_hi):
            raise DataError(f"data.min_prevalence={lo}, data.max_prevalence={hi}: no {group} "
                            f"target can have such a prevalence; allowed: a range that meets "
                            f"[{g_lo:.4g}, {g_hi:.4g}] (the {group} rules' reach)")


def choose_rules(n_targets: int, rates: np.ndarray, lo: float, hi: float,
                 rng: np.random.Generator) -> list[Rule] | None:
    """Seeded distinct rules within the prevalence range, per :func:`group_counts`; None when
    the motifs do not give enough of them."""
    m = len(rates)
    candidates: dict[str, list[Rule]] = {
        "tf": [Rule("tf", (a,)) for a in range(m)] + [
            Rule("tf", (a, b)) for a in range(m) for b in range(m) if a != b],
        "dnase": [Rule("dnase", (a, b)) for a in range(m) for b in range(a + 1, m)],
        "histone": [Rule("histone", (a, b)) for a in range(m) for b in range(a + 1, m)]}
    rules = []
    for group, count in group_counts(n_targets).items():
        fitting = [r for r in candidates[group] if lo <= r.prevalence(rates) <= hi]
        if len(fitting) < count:
            return None
        # Simple rules first (a tf target is one motif while motifs last), then seeded others.
        simple = [r for r in fitting if len(r.motifs) == 1][:count]
        rest = [r for r in fitting if len(r.motifs) > 1]
        picked = np.sort(rng.choice(len(rest), count - len(simple), replace=False))
        rules += simple + [rest[i] for i in picked]
    return rules


def _sample_instances(pwm: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    cum = np.cumsum(pwm, axis=1)[:, :3]
    u = rng.random((k, len(pwm)))
    return (u[:, :, None] > cum[None]).sum(axis=2).astype(np.uint8)


def _plant(x: np.ndarray, wanted: np.ndarray, slot_starts: np.ndarray, slot_width: int,
           pwms: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Write motif instances into distinct random slots; which motifs were planted ``[n, M]``."""
    n, m = wanted.shape
    n_slots = len(slot_starts)
    if n_slots == 0:
        return np.zeros_like(wanted)
    # Motifs wanted beyond the free slots are dropped in a random order per sample.
    priority = np.where(wanted, rng.random((n, m)), np.inf)
    rank = np.argsort(np.argsort(priority, axis=1), axis=1)
    planted = wanted & (rank < n_slots)
    slots = np.argsort(rng.random((n, n_slots)), axis=1)
    for j, pwm in enumerate(pwms):
        rows = np.flatnonzero(planted[:, j])
        if rows.size == 0:
            continue
        slot = slots[rows, rank[rows, j]]
        jitter = rng.integers(0, slot_width - len(pwm) + 1, size=rows.size)
        pos = slot_starts[slot] + jitter
        x[rows[:, None], pos[:, None] + np.arange(len(pwm))] = _sample_instances(
            pwm, rows.size, rng)
    return planted


def _split(n: int, p: SyntheticDNAParams, pwms: list[np.ndarray], rates: np.ndarray,
           rules: list[Rule], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Codes ``[n, L]``, labels ``[n, T]`` (uint8) and rule indicators ``[n, T]`` (bool)."""
    slot_width = max(len(w) for w in pwms)
    start = (p.length - p.central_bin) // 2
    centre = start + np.arange(p.central_bin // slot_width) * slot_width
    flanks = np.concatenate([np.arange(start // slot_width) * slot_width,
                             start + p.central_bin
                             + np.arange((p.length - start - p.central_bin) // slot_width)
                             * slot_width])
    gc = p.gc_content / 2
    cut = np.array([(1 - p.gc_content) / 2, 0.5, 0.5 + gc], dtype=np.float32)  # A | C | G | T
    x = np.empty((n, p.length), dtype=np.uint8)
    rule_on = np.zeros((n, len(rules)), dtype=bool)
    for lo in range(0, n, BLOCK_ROWS):
        hi = min(n, lo + BLOCK_ROWS)
        u = rng.random((hi - lo, p.length), dtype=np.float32)
        block = np.searchsorted(cut, u, side="right").astype(np.uint8)
        wanted = rng.random((hi - lo, len(pwms))) < rates
        present = _plant(block, wanted, centre, slot_width, pwms, rng)
        decoys = rng.random((hi - lo, len(pwms))) < p.decoy_rate
        _plant(block, decoys, flanks, slot_width, pwms, rng)
        x[lo:hi] = block
        for t, rule in enumerate(rules):
            rule_on[lo:hi, t] = rule.holds(present)
    u = rng.random(rule_on.shape)
    y = np.where(rule_on, u < p.label_purity, u < p.background_rate).astype(np.uint8)
    return x, y, rule_on


def generate(p: SyntheticDNAParams) -> Dataset:
    """The dataset described by ``p`` (train, validation and test splits; see the module).

    Raises
    ------
    DataError
        When no set of motifs up to 2,000 gives ``n_targets`` distinct rules in the
        prevalence range (widen it).
    """
    from genodl_core.training.multilabel_metrics import per_target_auc  # torch, only here
    import torch

    root = np.random.default_rng(p.seed)
    s_rules, s_train, s_val, s_test = root.spawn(4)
    m = p.n_motifs or 4
    check_prevalence_range(p.n_targets, p.min_prevalence, p.max_prevalence)
    while True:
        rates = np.random.default_rng([p.seed, m]).uniform(*MOTIF_RATE, size=m)
        rules = choose_rules(p.n_targets, rates, p.min_prevalence, p.max_prevalence, s_rules)
        if rules is not None:
            break
        if p.n_motifs or m >= 2000:
            raise DataError(f"data.n_motifs={m}: too few motifs for {p.n_targets} distinct "
                            f"targets with prevalence in [{p.min_prevalence}, "
                            f"{p.max_prevalence}]; allowed: more motifs (or 0 = automatic) or "
                            "a wider prevalence range")
        m += 1
    used, names, pwms = load_motifs(p.motifs, m, p.seed)
    splits = {name: _split(n, p, pwms, rates, rules, rng) for name, n, rng in
              (("train", p.n_train, s_train), ("val", p.n_val, s_val),
               ("test", p.n_test, s_test))}
    info: dict[str, Any] = {
        "generator": GENERATOR_VERSION, "seed": p.seed, "motifs": used,
        "motif_names": names, "motif_rates": rates.round(5).tolist(),
        "target_rules": [r.describe(names) for r in rules],
        "prevalence_train": splits["train"][1].mean(axis=0).round(5).tolist(),
        "ceiling": {}}
    for split in ("val", "test"):
        _, y, rule_on = splits[split]
        if len(y) == 0:
            continue
        roc, pr = per_target_auc(torch.as_tensor(rule_on, dtype=torch.float32),
                                 torch.as_tensor(y))
        roc, pr = roc.numpy(), pr.numpy()
        info["ceiling"][f"{split}_roc_auc"] = float(np.nanmean(roc)) if np.isfinite(
            roc).any() else float("nan")
        info["ceiling"][f"{split}_pr_auc"] = float(np.nanmean(pr)) if np.isfinite(
            pr).any() else float("nan")
        info[f"ceiling_{split}_roc_auc"] = [None if not np.isfinite(v) else round(float(v), 5)
                                            for v in roc]
    target_ids = np.array([f"{r.group}_{t}" for t, r in enumerate(rules)])
    x_test, y_test = (splits["test"][0], splits["test"][1]) if p.n_test else (None, None)
    return Dataset(x_train=splits["train"][0], y_train=splits["train"][1],
                   x_val=splits["val"][0], y_val=splits["val"][1], task="multilabel",
                   x_test=x_test, y_test=y_test, target_ids=target_ids, info=info)


def target_groups(target_ids: np.ndarray | None) -> list[str] | None:
    """Group of each target from ids named ``<group>_<index>`` with a group of :data:`GROUPS`
    (None otherwise: no grouping known)."""
    if target_ids is None:
        return None
    groups = [str(t).split("_", 1)[0] for t in target_ids]
    return groups if set(groups) <= set(GROUPS) else None


@DATASETS.register("synthetic_dna", params=SyntheticDNAParams, task="multilabel")
def synthetic_dna(params: SyntheticDNAParams, seed: int | None = None) -> Dataset:
    """Registered entry point of the ``synthetic_dna`` data source."""
    return generate(params)


__all__ = ["SyntheticDNAParams", "Rule", "GENERATOR_VERSION", "GROUPS", "generate",
           "choose_rules", "group_counts", "target_groups"]
