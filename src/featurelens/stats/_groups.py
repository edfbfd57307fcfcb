"""Per-group statistics of many features at once, for dense or sparse (CSR) activations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def _indicator(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Sparse ``n_groups x n_cells`` indicator matrix of integer group codes."""
    n = codes.shape[0]
    return sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_groups, n))


@dataclass
class GroupMoments:
    """Counts, sums, sums of squares and non-zero counts of every feature in every group.

    Attributes have shape ``(n_groups, n_features)`` except ``counts`` ``(n_groups,)``.
    """

    counts: np.ndarray
    sums: np.ndarray
    sumsq: np.ndarray
    n_active: np.ndarray

    @property
    def means(self) -> np.ndarray:
        """Mean per group (NaN for empty groups)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[:, None]

    def variances(self, ddof: int = 1) -> np.ndarray:
        """Variance per group with ``ddof`` (NaN where a group has ``<= ddof`` members)."""
        n = self.counts[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            ss = self.sumsq - self.sums**2 / n
            var = np.clip(ss, 0, None) / (n - ddof)
        var[np.broadcast_to(n <= ddof, var.shape)] = np.nan
        return var

    def rest(self) -> GroupMoments:
        """Moments of the complement of every group (all other cells)."""
        tot = lambda a: a.sum(axis=0, keepdims=True) - a  # noqa: E731
        return GroupMoments(
            counts=self.counts.sum() - self.counts,
            sums=tot(self.sums),
            sumsq=tot(self.sumsq),
            n_active=tot(self.n_active),
        )


def group_moments(X, codes: np.ndarray, n_groups: int) -> GroupMoments:
    """Per-group moments of the columns of ``X`` (cells x features, dense or sparse).

    Parameters
    ----------
    X
        Activations, cells x features.
    codes
        Integer group of every cell, ``0 .. n_groups - 1``.
    n_groups
        Number of groups.

    Returns
    -------
    The :class:`GroupMoments`; ``n_active`` counts entries ``> 0``.
    """
    codes = np.asarray(codes)
    ind = _indicator(codes, n_groups)
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        sums = np.asarray((ind @ X).todense())
        sq = X.copy()
        sq.data **= 2
        sumsq = np.asarray((ind @ sq).todense())
        pos = X.copy()
        pos.data = (pos.data > 0).astype(np.float64)
        n_active = np.asarray((ind @ pos).todense())
    else:
        X = np.asarray(X, dtype=np.float64)
        sums = ind @ X
        sumsq = ind @ (X * X)
        n_active = ind @ (X > 0).astype(np.float64)
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    return GroupMoments(counts=counts, sums=sums, sumsq=sumsq, n_active=n_active)


def alpha_scores(m: GroupMoments, z: float = 1.96) -> np.ndarray:
    """Conservative difference of means between every group and all other cells.

    ``alpha = (mu_g - mu_rest) - z * (sigma_g / sqrt(N_g) + sigma_rest / sqrt(N_rest))`` (Schuster
    2025, eq. 8), with sample standard deviations (``ddof=1``). Shape ``(n_groups, n_features)``.
    """
    r = m.rest()
    se_g = np.sqrt(m.variances(1) / m.counts[:, None])
    se_r = np.sqrt(r.variances(1) / r.counts[:, None])
    return (m.means - r.means) - z * (se_g + se_r)


def selectivity_scores(frac_active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average and max selectivity from the fraction of active samples per label.

    ``frac_active`` has shape ``(n_labels, n_features)``. For label ``i``: average selectivity
    ``p_i - mean_{j != i} p_j`` and max selectivity ``p_i - max_{j != i} p_j`` (Donhauser et al.
    2025, sec. 6.1). Both returned with the input's shape.
    """
    p = np.asarray(frac_active, dtype=np.float64)
    n = p.shape[0]
    if n < 2:
        raise ValueError("Selectivity needs at least two labels.")
    avg = p - (p.sum(axis=0, keepdims=True) - p) / (n - 1)
    order = np.argsort(-p, axis=0, kind="stable")
    first = np.take_along_axis(p, order[:1], axis=0)
    second = np.take_along_axis(p, order[1:2], axis=0)
    is_first = np.zeros_like(p, dtype=bool)
    np.put_along_axis(is_first, order[:1], True, axis=0)
    best_other = np.where(is_first, second, first)
    return avg, p - best_other


_BLOCK_ENTRIES = 2**23  # float64 entries of one features x block matrix (64 MiB)
_CHUNK = 2**20  # stored values converted, or (cell, feature, feature) products formed, at a time


def _chunks(bounds: np.ndarray, budget: int):
    """Consecutive ranges ``[a, b)`` of segments with ``bounds[b] - bounds[a] <= budget`` (at least one segment)."""
    bounds = np.asarray(bounds, dtype=np.int64)
    n = len(bounds) - 1
    a = 0
    while a < n:
        b = int(np.searchsorted(bounds, bounds[a] + budget, side="right")) - 1
        b = min(max(b, a + 1), n)
        yield a, b
        a = b


def _column_moments(Xc: sp.csc_matrix, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 mean and sample standard deviation of every column, converting ``chunk`` values at a time."""
    n, m = Xc.shape
    mean = np.empty(m)
    sumsq = np.empty(m)
    for a, b in _chunks(Xc.indptr, chunk):
        sub = Xc[:, a:b].astype(np.float64)
        mean[a:b] = np.asarray(sub.mean(axis=0)).ravel()
        sub.data **= 2
        sumsq[a:b] = np.asarray(sub.sum(axis=0)).ravel()
    var = (sumsq - n * mean**2) / max(n - 1, 1)
    return mean, np.sqrt(np.clip(var, 0, None))


def _coactivation(Xc: sp.csc_matrix, Xr: sp.csr_matrix, lo: int, hi: int, out: np.ndarray, chunk: int) -> None:
    """``out[q - lo, p] = sum_k X[k, q] X[k, p]`` (float64) over the cells where both are stored, ``lo <= q < hi``.

    Every sum adds its products one cell after the other in increasing cell order, the order of
    scipy's sparse product ``X.T @ X``, so both give the same bits. At most ``chunk`` stored values
    of the block and ``chunk`` products are held at a time.
    """
    m = Xr.shape[1]
    out.fill(0.0)
    flat_out = out.reshape(-1)
    col_bounds = Xc.indptr[lo : hi + 1].astype(np.int64)
    for e0 in range(int(col_bounds[0]), int(col_bounds[-1]), chunk):
        e1 = min(e0 + chunk, int(col_bounds[-1]))
        cells = Xc.indices[e0:e1]
        vals = Xc.data[e0:e1].astype(np.float64)
        cols = (np.searchsorted(col_bounds, np.arange(e0, e1), side="right") - 1) * m
        starts = Xr.indptr[cells].astype(np.int64)
        lens = Xr.indptr[cells + 1].astype(np.int64) - starts
        bounds = np.concatenate([[0], np.cumsum(lens)])
        for a, b in _chunks(bounds, chunk):
            n_e = lens[a:b]
            pos = np.arange(bounds[b] - bounds[a]) + np.repeat(starts[a:b] - (bounds[a:b] - bounds[a]), n_e)
            flat = np.repeat(cols[a:b], n_e) + Xr.indices[pos]
            np.add.at(flat_out, flat, np.repeat(vals[a:b], n_e) * Xr.data[pos])


def _block_best(S: np.ndarray, tmp: np.ndarray, lo: int, n: int, mean: np.ndarray, sd: np.ndarray):
    """Best partner of every row of the co-activation block ``S`` (overwritten by the correlations)."""
    b = S.shape[0]
    q = slice(lo, lo + b)
    candidate = S != 0  # pairs that are never co-active are not candidates
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        np.multiply((n * mean[q])[:, None], mean[None, :], out=tmp)
        np.subtract(S, tmp, out=S)
        np.multiply(((n - 1) * sd[q])[:, None], sd[None, :], out=tmp)
        np.divide(S, tmp, out=S)
    candidate &= np.isfinite(S)
    candidate[np.arange(b), np.arange(lo, lo + b)] = False
    np.copyto(S, -np.inf, where=~candidate)
    partner = S.argmax(axis=1)  # the first of equal maxima: ties go to the smaller partner index
    best = S[np.arange(b), partner]
    return best, np.where(np.isfinite(best), partner, -1)


def pearson_max_partner(X, *, block_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every column of ``X``, the largest Pearson correlation with another column and its index.

    Two columns can only correlate strongly when they are non-zero in the same cells, so the
    candidates of a column are the columns that are non-zero in at least one of its cells (a
    pair that is never co-active has a correlation of at most zero and is not examined). Ties go
    to the smaller partner index. Columns with zero variance get NaN and partner -1; columns
    without any candidate get NaN (and partner -1).

    The columns are processed in blocks: for a block, the co-activation sums of its columns with
    every column (a dense features x block float64 matrix) come from the sparse entries of the
    cells where the block's columns are non-zero, and are turned into correlations. Memory held:
    ``X`` once in compressed-column and once in compressed-row form, in its own dtype (the input
    itself when it is already CSR or CSC), the float64 mean and standard deviation of every column,
    two features x block float64 matrices, and buffers of a fixed number of stored values and
    products (about 2**20 each); it grows linearly with the number of features for a fixed block.
    No features x features matrix and no float64 copy of ``X`` is formed.

    Parameters
    ----------
    X
        Activations, cells x features (dense or sparse).
    block_size
        Columns per block; default as many as keep one features x block float64 matrix at
        about 64 MiB.

    Returns
    -------
    The best correlation (float64, NaN where none) and the partner index (int64, -1 where none)
    of every column.
    """
    if sp.issparse(X):
        Xc = X if X.format == "csc" else sp.csc_matrix(X)
        Xr = X if X.format == "csr" else Xc.tocsr()
    else:
        Xc = sp.csc_matrix(np.asarray(X))
        Xr = Xc.tocsr()
    n, m = Xc.shape
    mean, sd = _column_moments(Xc, _CHUNK)
    best = np.full(m, np.nan)
    partner = np.full(m, -1, dtype=np.int64)
    if block_size is None:
        block_size = _BLOCK_ENTRIES // max(m, 1)
    block_size = int(min(max(block_size, 1), max(m, 1)))
    S = np.empty((block_size, m))
    tmp = np.empty((block_size, m))
    for lo in range(0, m, block_size):
        hi = min(lo + block_size, m)
        _coactivation(Xc, Xr, lo, hi, S[: hi - lo], _CHUNK)
        best[lo:hi], partner[lo:hi] = _block_best(S[: hi - lo], tmp[: hi - lo], lo, n, mean, sd)
    best[~np.isfinite(best)] = np.nan
    best[sd == 0] = np.nan
    partner[sd == 0] = -1
    return best, partner
