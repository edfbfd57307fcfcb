"""Two-group tests of every gene for one contrast (high vs low cells), for sparse non-negative data (no AnnData).

- :func:`ranksum_test`: Wilcoxon rank-sum / Mann-Whitney U with tie and continuity corrections, as
  ``scipy.stats.mannwhitneyu(method="asymptotic")``, computed from the non-zero entries only: every
  zero shares one average rank below all positive values, so a gene costs work proportional to its
  non-zeros in the two groups.
- :func:`welch_overestim_var`: Welch's t with the variance of the second group divided by the size
  of the first (``scanpy``'s ``t-test_overestim_var``), which keeps a small first group with no
  variance from producing huge statistics.
- :func:`log2_fold_change`: ``log2((mean_1 + c) / (mean_2 + c))`` on the linear scale of the data.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import special

try:
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False


def _ranksum_numpy(indptr, rows, vals, n1, n):
    """Rank sum of the first ``n1`` rows and the tie term of every column (reference implementation)."""
    n_cols = indptr.shape[0] - 1
    r1 = np.zeros(n_cols)
    tie = np.zeros(n_cols)
    for g in range(n_cols):
        lo, hi = indptr[g], indptr[g + 1]
        v, r = vals[lo:hi], rows[lo:hi]
        nz = hi - lo
        n0 = n - nz
        n0_first = n1 - int((r < n1).sum())
        total = n0_first * (n0 + 1) / 2.0
        t = float(n0) ** 3 - n0
        if nz:
            order = np.argsort(v, kind="mergesort")
            sv = v[order]
            a = 0
            while a < nz:
                b = a
                while b + 1 < nz and sv[b + 1] == sv[a]:
                    b += 1
                rank = n0 + (a + b) / 2.0 + 1.0
                total += rank * float((r[order[a : b + 1]] < n1).sum())
                size = b - a + 1.0
                t += size**3 - size
                a = b + 1
        r1[g] = total
        tie[g] = t
    return r1, tie


if _HAVE_NUMBA:

    @njit(cache=True, nogil=True, parallel=True)
    def _ranksum_kernel(indptr, rows, vals, n1, n, r1, tie):  # pragma: no cover - compiled
        for g in prange(indptr.shape[0] - 1):
            lo = indptr[g]
            hi = indptr[g + 1]
            nz = hi - lo
            n0 = n - nz
            n0_first = n1
            for q in range(lo, hi):
                if rows[q] < n1:
                    n0_first -= 1
            total = n0_first * (n0 + 1) / 2.0
            t = float(n0) * n0 * n0 - n0
            if nz > 0:
                v = vals[lo:hi]
                r = rows[lo:hi]
                order = np.argsort(v, kind="mergesort")
                a = 0
                while a < nz:
                    b = a
                    while b + 1 < nz and v[order[b + 1]] == v[order[a]]:
                        b += 1
                    rank = n0 + (a + b) / 2.0 + 1.0
                    for q in range(a, b + 1):
                        if r[order[q]] < n1:
                            total += rank
                    size = b - a + 1.0
                    t += size * size * size - size
                    a = b + 1
            r1[g] = total
            tie[g] = t


def ranksum_test(X, n1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-sided Wilcoxon rank-sum test of the first ``n1`` rows of ``X`` against the others, per column.

    Parameters
    ----------
    X
        Non-negative data (sparse or dense), rows = the cells of both groups (first group first).
    n1
        Size of the first group (``1 <= n1 < X.shape[0]``).

    Returns
    -------
    ``(U, z, pval)`` per column: the Mann-Whitney U of the first group, the normal statistic with
    continuity correction and its two-sided p-value (tie-corrected variance), equal to
    ``scipy.stats.mannwhitneyu(x1, x2, method="asymptotic")``; columns without any variation get
    ``z = 0, p = 1``.
    """
    X = sp.csc_matrix(X, dtype=np.float64)
    X.sum_duplicates()
    n = X.shape[0]
    n2 = n - n1
    if not 1 <= n1 < n:
        raise ValueError(f"The first group must hold between 1 and {n - 1} rows, got {n1}.")
    if X.nnz and X.data.min() < 0:
        raise ValueError("ranksum_test needs non-negative data (all zeros share the lowest rank).")
    indptr = X.indptr.astype(np.int64)
    rows = X.indices.astype(np.int64)
    vals = X.data
    r1 = np.zeros(X.shape[1])
    tie = np.zeros(X.shape[1])
    if _HAVE_NUMBA:
        _ranksum_kernel(indptr, rows, vals, int(n1), int(n), r1, tie)
    else:  # pragma: no cover
        r1, tie = _ranksum_numpy(indptr, rows, vals, int(n1), int(n))
    U = r1 - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = U - mu
        z = (d - 0.5 * np.sign(d)) / np.sqrt(var)
    flat = ~(var > 0)
    z[flat] = 0.0
    p = np.minimum(1.0, 2.0 * special.ndtr(-np.abs(z)))
    p[flat] = 1.0
    return U, z, p


def welch_overestim_var(n1, mean1, var1, n2, mean2, var2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch's t with ``var2 / n1`` in place of ``var2 / n2`` (scanpy's ``t-test_overestim_var``).

    The second group's variance is divided by the (small) first group's size, which overestimates
    the variance of the difference and so protects a small first group without variance (e.g. a
    gene that is zero in every high cell) from an arbitrarily large statistic. Returns ``(t, df,
    pval)`` with Welch-Satterthwaite degrees of freedom of the same variances.
    """
    from ._tests import welch_ttest

    return welch_ttest(n1, mean1, var1, n1, mean2, var2)  # as scipy's ttest_ind_from_stats with nobs2 = n1


def log2_fold_change(mean1: np.ndarray, mean2: np.ndarray, pseudocount: float) -> np.ndarray:
    """``log2((mean1 + c) / (mean2 + c))``: bounded by ``log2(max mean / c + 1)`` for non-negative means."""
    return np.log2((np.asarray(mean1, np.float64) + pseudocount) / (np.asarray(mean2, np.float64) + pseudocount))
