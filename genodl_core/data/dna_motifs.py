"""Position weight matrices for planting motifs into synthetic DNA.

Two sets:

- ``"builtin"``: matrices derived in code from the consensus sites of well-known transcription
  factors (CTCF, AP-1, CREB, E-box, GATA, ETS, SP1, NF-kB, ...): the consensus base gets
  probability 0.91 and the three others 0.03 each; an IUPAC two-base letter splits 0.94 between
  its bases, N is uniform. When more motifs are asked for than the list holds, further matrices
  are derived from seeded random consensus sites (length 8-12) by the same rule, so any count
  is available without a database.
- ``"jaspar"``: JASPAR CORE vertebrate matrices, read offline from the ``pyjaspar`` package
  (optional extra ``dna``); counts are normalised per column with a pseudocount of 0.8 split
  over the bases (Biopython's default style), in matrix-id order.

``"auto"`` takes JASPAR when ``pyjaspar`` imports and the built-in set otherwise; the data's
``info["motifs"]`` records which set was used, so two trials on different machines can be told
apart.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from genodl_core.errors import DataError

MotifSet = Literal["auto", "builtin", "jaspar"]

#: (name, consensus) of the built-in set; IUPAC letters allowed.
CONSENSUS: tuple[tuple[str, str], ...] = (
    ("CTCF", "CCGCGNGGNGGCAG"), ("AP1", "TGASTCA"), ("CREB", "TGACGTCA"),
    ("EBOX", "CACGTG"), ("GATA", "WGATAR"), ("ETS", "CCGGAAGT"), ("SP1", "GGGGCGGGG"),
    ("NFKB", "GGGAATTTCC"), ("FOX", "TGTTTAC"), ("NRF1", "GCGCATGCGC"), ("YY1", "AAGATGGCGGC"),
    ("CEBP", "TTGCGCAAT"), ("SOX", "ACAAAGG"), ("TATA", "TATAAAAG"), ("NFY", "RRCCAATSR"),
    ("STAT", "TTCCNGGAA"), ("RUNX", "TGTGGTTT"), ("IRF", "AANTGAAA"), ("REST", "TTCAGCACCATGGACAG"),
    ("TP53", "RRRCATGYYY"), ("MEF2", "CTAWWWWTAG"), ("HNF1", "GTTAATNATTAAC"),
    ("NRSF_HALF", "GGACAGCG"), ("ZNF143", "TTCCCAGAATGC"), ("KLF", "GGGTGKGG"),
    ("ELK", "ACCGGAAGT"), ("MYB", "YAACKG"), ("PAX", "GTCACGC"), ("HOX", "TAATKR"),
    ("TEAD", "CATTCC"), ("SRF", "CCWWWWWWGG"), ("E2F", "TTTSGCGC"),
)

_IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "S": "CG", "W": "AT",
          "K": "GT", "M": "AC", "N": "ACGT"}
#: Probability of the consensus base in a consensus-derived matrix: a strong site (about 1.6
#: of 2 bits per position), so that small synthetic sets are learnable in seconds.
CONSENSUS_WEIGHT = 0.91
#: Longest motif planted: longer matrices (some JASPAR ones) are cut to their most informative
#: window, so that motifs fit the slots of the central bin.
MAX_MOTIF_LENGTH = 12


def consensus_pwm(consensus: str) -> np.ndarray:
    """A ``[len, 4]`` matrix (A, C, G, T) from an IUPAC consensus; see the module docstring."""
    rows = []
    for letter in consensus.upper():
        bases = _IUPAC.get(letter)
        if bases is None:
            raise DataError(f"consensus {consensus!r}: letter {letter!r}; allowed IUPAC letters "
                            f"{sorted(_IUPAC)}")
        if len(bases) == 4:
            row = np.full(4, 0.25)
        else:
            on = CONSENSUS_WEIGHT if len(bases) == 1 else 0.94 / len(bases)
            off = (1.0 - on * len(bases)) / (4 - len(bases))
            row = np.array([on if b in bases else off for b in "ACGT"])
        rows.append(row)
    return np.array(rows)


def _informative_window(pwm: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` consecutive columns of ``pwm`` with the most information (bits)."""
    if len(pwm) <= width:
        return pwm
    bits = 2.0 + (pwm * np.log2(np.clip(pwm, 1e-12, 1.0))).sum(axis=1)
    sums = np.convolve(bits, np.ones(width), mode="valid")
    start = int(np.argmax(sums))
    return pwm[start:start + width]


def builtin_motifs(count: int, seed: int) -> tuple[list[str], list[np.ndarray]]:
    """``count`` named matrices: the consensus list first, then seeded derived ones."""
    names, pwms = [], []
    for name, consensus in CONSENSUS[:count]:
        names.append(name)
        pwms.append(_informative_window(consensus_pwm(consensus), MAX_MOTIF_LENGTH))
    rng = np.random.default_rng(seed)
    while len(pwms) < count:
        length = int(rng.integers(8, 13))
        consensus = "".join(rng.choice(list("ACGT"), size=length))
        names.append(f"DERIVED{len(pwms) - len(CONSENSUS) + 1}_{consensus}")
        pwms.append(consensus_pwm(consensus))
    return names, pwms


def jaspar_motifs(count: int) -> tuple[list[str], list[np.ndarray]]:
    """The first ``count`` JASPAR CORE vertebrate matrices (by matrix id), normalised.

    Raises
    ------
    DataError
        ``pyjaspar`` is not installed (install the ``dna`` extra), or it holds fewer matrices.
    """
    try:
        from pyjaspar import jaspardb
    except ImportError:
        raise DataError("data.motifs='jaspar' needs the pyjaspar package (pip install "
                        "'genodl[dna]'); allowed without it: 'builtin'") from None
    motifs = jaspardb().fetch_motifs(collection="CORE", tax_group=["vertebrates"])
    motifs = sorted(motifs, key=lambda m: m.matrix_id)
    if len(motifs) < count:
        raise DataError(f"data.motifs='jaspar': {count} motifs asked for, JASPAR CORE "
                        f"vertebrates holds {len(motifs)}; allowed: at most {len(motifs)}")
    names, pwms = [], []
    for motif in motifs[:count]:
        counts = np.array([motif.counts[b] for b in "ACGT"], dtype=np.float64).T
        counts += 0.2
        pwm = counts / counts.sum(axis=1, keepdims=True)
        names.append(f"{motif.matrix_id}_{motif.name}")
        pwms.append(_informative_window(pwm, MAX_MOTIF_LENGTH))
    return names, pwms


def jaspar_available() -> bool:
    """Whether ``pyjaspar`` can be imported (what ``"auto"`` decides on)."""
    import importlib.util

    return importlib.util.find_spec("pyjaspar") is not None


def load_motifs(which: MotifSet, count: int, seed: int) -> tuple[str, list[str],
                                                                  list[np.ndarray]]:
    """The set actually used (``"builtin"`` or ``"jaspar"``), names and matrices."""
    if which == "auto":
        which = "jaspar" if jaspar_available() else "builtin"
    if which == "jaspar":
        return (which, *jaspar_motifs(count))
    return (which, *builtin_motifs(count, seed))


__all__ = ["MotifSet", "CONSENSUS", "MAX_MOTIF_LENGTH", "consensus_pwm", "builtin_motifs",
           "jaspar_motifs", "jaspar_available", "load_motifs"]
