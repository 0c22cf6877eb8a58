"""NEPDF images of gene pairs: CNNC's input, computed for many pairs at once.

For a pair (A, B) over ``n`` cells, CNNC (Yuan & Bar-Joseph, 2019) takes ``log10(x + 0.01)``
of each gene, a ``bins x bins`` 2-D histogram of the cells over (log A, log B) with numpy's
``histogram2d`` rules (each axis spans that pair's own minimum to maximum; a value on the top
edge goes in the last bin), transposed so that rows are B's bins and columns A's, and scaled as
``(log10(H / n + 1e-4) + 4) / 4``: an empty bin is 0, a bin holding every cell 1. The order of
the pair matters (the image of (B, A) is the transpose), which is what lets a 3-class model
tell A -> B from B -> A.

``sigma > 0`` smooths the cell density ``H / n`` with a Gaussian of that many bins before the
scaling, as seed 001's heat maps did; numpy only, truncated at 4 sigma, borders mirrored
(scipy.ndimage's default 'reflect'). 0 is CNNC exactly.

Vectorised: a chunk of pairs is binned with one comparison against each pair's bin edges and
counted with one ``bincount``; edges are computed with the very operations ``np.linspace`` uses,
so the counts equal ``np.histogram2d``'s bit for bit (tested).
"""

from __future__ import annotations

import numpy as np

from genodl_core.errors import DataError

#: CNNC's pseudo-count before the log of expression, and the floor inside the log of a density.
PSEUDO_COUNT = 1e-2
DENSITY_FLOOR = 1e-4
#: Pairs binned per chunk: bounds the [pairs, cells, bins + 1] comparison temporaries.
CHUNK_CELLS = 1 << 22


def log_expression(x: np.ndarray) -> np.ndarray:
    """CNNC's per-gene transform ``log10(x + 0.01)`` in float64 (as the reference computes)."""
    return np.log10(np.asarray(x, dtype=np.float64) + PSEUDO_COUNT)


def _edges(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Each row's bin edges ``[P, bins + 1]`` exactly as ``np.histogram2d`` makes them.

    ``histogramdd`` widens an empty range by 0.5 each side, then calls ``np.linspace``, which
    computes ``arange * step + start`` and sets the last edge to ``stop``.
    """
    lo, hi = lo.copy(), hi.copy()
    flat = lo == hi
    lo[flat] -= 0.5
    hi[flat] += 0.5
    step = (hi - lo) / bins
    edges = np.arange(bins + 1, dtype=np.float64)[None, :] * step[:, None] + lo[:, None]
    edges[:, -1] = hi
    return edges


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of every value ``[P, n]`` as ``histogramdd``: ``searchsorted(side='right') - 1``,
    a value equal to the last edge counted in the last bin."""
    idx = (values[:, :, None] >= edges[:, None, :]).sum(axis=2) - 1
    on_edge = values == edges[:, -1:]
    idx[on_edge] -= 1
    return idx


def pair_histograms(log_a: np.ndarray, log_b: np.ndarray, bins: int = 32) -> np.ndarray:
    """Cell counts ``[P, bins, bins]`` of each pair's 2-D histogram, transposed as CNNC does
    (``[p, i, j]``: cells in B's bin ``i`` and A's bin ``j``).

    Raises
    ------
    DataError
        When the arrays differ in shape, are not ``[pairs, cells]`` or hold no cell, or hold a
        non-finite value (naming the first such pair).
    """
    if log_a.shape != log_b.shape or log_a.ndim != 2:
        raise DataError(f"pair expression arrays must both be [pairs, cells]; got {log_a.shape} "
                        f"and {log_b.shape}")
    p, n = log_a.shape
    if n == 0:
        raise DataError("pair expression has no cells; NEPDF images need at least one cell")
    bad = ~(np.isfinite(log_a).all(axis=1) & np.isfinite(log_b).all(axis=1))
    if bad.any():
        raise DataError(f"pair {int(np.flatnonzero(bad)[0])} has a non-finite expression "
                        "value; expression must be finite and >= 0")
    out = np.zeros((p, bins, bins), dtype=np.float64)
    chunk = max(1, CHUNK_CELLS // (n * (bins + 1)))
    for start in range(0, p, chunk):
        a, b = log_a[start:start + chunk], log_b[start:start + chunk]
        ia = _bin_index(a, _edges(a.min(axis=1), a.max(axis=1), bins))
        ib = _bin_index(b, _edges(b.min(axis=1), b.max(axis=1), bins))
        rows = np.arange(len(a))[:, None] * (bins * bins)
        flat = (rows + ib * bins + ia).ravel()
        out[start:start + len(a)] = np.bincount(
            flat, minlength=len(a) * bins * bins).reshape(len(a), bins, bins)
    return out


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights over ``[-4 sigma, 4 sigma]`` (scipy's truncate 4)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def smooth(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``[P, H, W]`` along both image axes, mirrored borders."""
    if sigma <= 0:
        return images
    w = gaussian_kernel(sigma)
    r = len(w) // 2
    out = images
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="symmetric")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for i, weight in enumerate(w):
            acc += weight * np.take(padded, np.arange(i, i + size), axis=axis)
        out = acc
    return out


def scale_density(density: np.ndarray) -> np.ndarray:
    """CNNC's scaling of a cell density (counts / cells): ``(log10(d + 1e-4) + 4) / 4``."""
    return (np.log10(density + DENSITY_FLOOR) + 4.0) / 4.0


def counts_from_images(images: np.ndarray, n_cells: int) -> np.ndarray:
    """The cell counts behind unsmoothed NEPDF images (the inverse of the scaling), rounded.

    Noise steps that act on cells (down-sampling, dropout) use it; exact up to float32 rounding
    for images built with ``sigma = 0``.
    """
    density = 10.0 ** (np.asarray(images, np.float64) * 4.0 - 4.0) - DENSITY_FLOOR
    return np.rint(np.clip(density, 0.0, None) * n_cells)


def nepdf(a: np.ndarray, b: np.ndarray, *, bins: int = 32, sigma: float = 0.0) -> np.ndarray:
    """NEPDF images ``[P, bins * bins]`` (float32, row-major ``[B bin, A bin]``) of pairs whose
    raw expression over the same cells is ``a [P, n]`` and ``b [P, n]``.

    Raises
    ------
    DataError
        See :func:`pair_histograms`; also for negative expression.
    """
    a, b = np.asarray(a), np.asarray(b)
    for name, arr in (("gene_a", a), ("gene_b", b)):
        if arr.size and np.nanmin(arr) < 0:
            raise DataError(f"{name} expression has negative values (min {np.nanmin(arr)}); "
                            "NEPDF images take counts or normalised expression >= 0")
    return nepdf_from_log(log_expression(a), log_expression(b), bins=bins, sigma=sigma)


def nepdf_from_log(log_a: np.ndarray, log_b: np.ndarray, *, bins: int = 32,
                   sigma: float = 0.0) -> np.ndarray:
    """:func:`nepdf` of expression already transformed by :func:`log_expression` (noise on log
    expression is added between the two)."""
    n = log_a.shape[-1]
    counts = pair_histograms(log_a, log_b, bins)
    images = scale_density(smooth(counts / n, sigma))
    return images.reshape(len(images), bins * bins).astype(np.float32)


__all__ = ["PSEUDO_COUNT", "DENSITY_FLOOR", "log_expression", "pair_histograms",
           "gaussian_kernel", "smooth", "scale_density", "counts_from_images", "nepdf",
           "nepdf_from_log"]
