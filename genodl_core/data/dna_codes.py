"""DNA sequences as integer codes: the compact form every DNA source, noise step and model shares.

A sequence of length L is stored as ``uint8`` codes ``[L]`` (A=0, C=1, G=2, T=3, N=4): one byte
per base instead of the 16 of a float32 one-hot column, so the 4.4 M x 1,000 bp DeepSEA training
set fits in 4.4 GB (and on one GPU). Models expand codes on the device, either to one-hot
(:func:`one_hot`; an N becomes 0.25 in every channel, DeepSEA's convention) or through an
embedding (the seed's transformer model).
"""

from __future__ import annotations

import numpy as np

from genodl_core.errors import DataError

#: Letters in code order; code 4 is an unknown base.
ALPHABET = "ACGTN"
N_CODE = 4
#: Byte value -> code (255: not a DNA letter). Lower case (soft-masked repeats) reads the same.
_LOOKUP = np.full(256, 255, dtype=np.uint8)
for _code, _letter in enumerate(ALPHABET):
    _LOOKUP[ord(_letter)] = _code
    _LOOKUP[ord(_letter.lower())] = _code


def encode(sequences: list[str] | tuple[str, ...], length: int | None = None,
           where: str = "sequences") -> np.ndarray:
    """Letters -> ``uint8`` codes ``[n, L]``.

    Raises
    ------
    DataError
        A letter other than A, C, G, T, N (either case), naming the sequence, position and
        letter; or sequences of differing lengths (or not ``length`` long), naming the first.
    """
    n = len(sequences)
    if n == 0:
        return np.zeros((0, length or 0), dtype=np.uint8)
    width = len(sequences[0]) if length is None else length
    out = np.empty((n, width), dtype=np.uint8)
    for i, seq in enumerate(sequences):
        if len(seq) != width:
            raise DataError(f"{where}: sequence {i} has length {len(seq)}, expected {width} "
                            "(every sequence must have the same length)")
        try:
            raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:
            raise DataError(f"{where}: sequence {i} holds non-ASCII characters; allowed "
                            f"letters: {list(ALPHABET)}") from None
        codes = _LOOKUP[raw]
        bad = np.flatnonzero(codes == 255)
        if bad.size:
            p = int(bad[0])
            raise DataError(f"{where}: sequence {i}, position {p}: letter {seq[p]!r} is not a "
                            f"DNA letter; allowed: {list(ALPHABET)} (either case)")
        out[i] = codes
    return out


def decode(codes: np.ndarray) -> list[str]:
    """``uint8`` codes ``[n, L]`` -> letters (for files and debugging)."""
    letters = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)[np.asarray(codes)]
    return [row.tobytes().decode() for row in np.atleast_2d(letters)]


def from_one_hot(x: np.ndarray, layout: str = "NLC", where: str = "sequences") -> np.ndarray:
    """One-hot ``[n, L, 4]`` (``layout='NLC'``) or ``[n, 4, L]`` (``'NCL'``) -> codes ``[n, L]``.

    A position without a single 1 (all zeros, or DeepSEA's 0.25 everywhere) becomes N.

    Raises
    ------
    DataError
        Not three-dimensional, or no axis of size 4 where the layout puts the bases.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise DataError(f"{where}: one-hot sequences must be 3-D ([n, L, 4] or [n, 4, L]), "
                        f"got shape {x.shape}")
    if layout == "NCL":
        x = np.swapaxes(x, 1, 2)
    elif layout != "NLC":
        raise DataError(f"{where}: layout {layout!r}; allowed: ['NLC', 'NCL']")
    if x.shape[2] != 4:
        raise DataError(f"{where}: the base axis has size {x.shape[2]}, expected 4 (A, C, G, T) "
                        f"in layout {layout}")
    codes = np.argmax(x, axis=2).astype(np.uint8)
    hot = (x == 1).sum(axis=2) == 1
    codes[~hot] = N_CODE
    return codes


def check_codes(codes: np.ndarray, where: str) -> None:
    """Integer-coded sequences must be 2-D with every code in 0..4.

    Raises
    ------
    DataError
        Naming the first bad row, position and value.
    """
    if codes.ndim != 2:
        raise DataError(f"{where}: integer-coded sequences must be 2-D [n, L], got shape "
                        f"{codes.shape}")
    bad = np.argwhere((codes < 0) | (codes > N_CODE))
    if bad.size:
        r, p = (int(v) for v in bad[0])
        raise DataError(f"{where}: row {r}, position {p} has code {int(codes[r, p])}; allowed codes "
                        f"0..4 for {list(ALPHABET)}")


__all__ = ["ALPHABET", "N_CODE", "encode", "decode", "from_one_hot", "check_codes"]
