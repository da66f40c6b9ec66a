"""numba kernels of the live statistics: the hit map and the time-of-flight histogram.

They add one chunk in one pass over the records, without the temporaries (field copies,
masks, a sort for ``np.histogram`` with explicit edges) that made the statistics cost as
much as a processing stage. The numpy twins are ``np.add.at`` and ``np.histogram``.
"""
from __future__ import annotations

import numba as nb

__all__ = ["add_hit_map", "add_histogram"]


@nb.njit(cache=True, nogil=True)
def add_hit_map(pixels, hit_map):
    """``hit_map[y, x] += 1`` for every record of ``pixels`` inside the map; returns how many
    were outside it."""
    rows, cols = hit_map.shape
    outside = 0
    for i in range(pixels.shape[0]):
        x = pixels[i].x
        y = pixels[i].y
        if x < cols and y < rows:
            hit_map[y, x] += 1
        else:
            outside += 1
    return outside


@nb.njit(cache=True, nogil=True)
def add_histogram(values, edges, counts):
    """``counts += np.histogram(values, bins=edges)[0]`` for equally spaced ``edges``.

    Same bins as numpy: ``[edges[i], edges[i + 1])``, the last one closed; a value's bin
    is computed and then checked against the edges themselves, so rounding never moves
    a value across an edge.
    """
    n_bins = edges.shape[0] - 1
    lo = edges[0]
    hi = edges[n_bins]
    scale = n_bins / (hi - lo)
    for i in range(values.shape[0]):
        v = values[i]
        if not (v >= lo and v <= hi):       # also false for NaN
            continue
        k = int((v - lo) * scale)
        if k >= n_bins:
            k = n_bins - 1
        while k > 0 and v < edges[k]:
            k -= 1
        while k < n_bins - 1 and v >= edges[k + 1]:
            k += 1
        counts[k] += 1
