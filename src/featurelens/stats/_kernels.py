"""Row-parallel compiled kernels (numba) for ranking and Benjamini-Hochberg adjustment.

Each row (or row segment) is independent, so rows are spread over threads. Every kernel has a
NumPy fallback in :mod:`featurelens.stats._tests` with identical results.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @njit(cache=True, nogil=True, parallel=True)
    def rank_rows(values, ranks, tie):
        """Average ranks (1-based) of every row and its tie term ``sum(t^3 - t)``."""
        n_rows, n = values.shape
        for i in prange(n_rows):
            row = values[i]
            order = np.argsort(row, kind="mergesort")
            t_sum = 0.0
            a = 0
            while a < n:
                b = a
                v = row[order[a]]
                while b + 1 < n and row[order[b + 1]] == v:
                    b += 1
                r = (a + b) / 2.0 + 1.0
                for q in range(a, b + 1):
                    ranks[i, order[q]] = r
                size = b - a + 1.0
                t_sum += size * size * size - size
                a = b + 1
            tie[i] = t_sum

    @njit(cache=True, nogil=True, inline="always")
    def _bh_segment(p, out, lo, hi, m):
        seg = p[lo:hi]
        order = np.argsort(seg, kind="mergesort")
        k = hi - lo
        # NaN sort last; they are not adjusted (and not counted when m < 0)
        n_valid = 0
        for q in range(k):
            if not np.isnan(seg[order[q]]):
                n_valid += 1
        mm = float(n_valid) if m < 0 else float(m)
        running = np.inf
        for q in range(k - 1, -1, -1):
            idx = order[q]
            v = seg[idx]
            if np.isnan(v):
                out[lo + idx] = np.nan
                continue
            adj = v * mm / (q + 1.0)
            if adj < running:
                running = adj
            out[lo + idx] = min(running, 1.0)

    @njit(cache=True, nogil=True, parallel=True)
    def bh_rows(p, out, m):
        """BH within every row of a 2-D array (``m < 0``: the number of non-NaN entries of the row)."""
        n_rows = p.shape[0]
        for i in prange(n_rows):
            _bh_segment(p[i], out[i], 0, p.shape[1], m)

    @njit(cache=True, nogil=True, parallel=True)
    def bh_segments(p, indptr, out, m):
        """BH within every segment ``indptr[s]:indptr[s+1]`` of a flat array, families of size ``m``."""
        for s in prange(indptr.shape[0] - 1):
            _bh_segment(p, out, indptr[s], indptr[s + 1], m)
