"""Vectorised two-sample statistics for many contrasts at once (no AnnData).

- :func:`set_moments`: count, sum and sum of squares of every column of a (sparse) matrix over
  many sets of rows at once, as sparse-indicator x matrix products in bounded chunks.
- :func:`welch_ttest`: Welch's unequal-variance t-test from moments (as
  ``scipy.stats.ttest_ind(equal_var=False)``).
- :func:`bh_adjust`: Benjamini-Hochberg adjustment along an axis (as statsmodels'
  ``multipletests(method="fdr_bh")``), ignoring NaN.
- :func:`average_ranks`: row-wise average ranks with tie sizes (as ``scipy.stats.rankdata``).
- :func:`mannwhitney_sets`: Mann-Whitney U of every set of columns against the rest, for every
  row (as ``scipy.stats.mannwhitneyu(method="asymptotic")``).
- :func:`binomial_sets`: one-sided binomial over-representation of sets of columns among
  selected columns, for every row (as ``scipy.stats.binomtest(alternative="greater")``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import special

from . import _kernels as _k


# ---------------------------------------------------------------------------- moments over row sets
@dataclass
class SetMoments:
    """Moments of every column over every row set: arrays of shape ``(n_sets, n_columns)``."""

    n: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    sum_transformed: np.ndarray | None = None
    #: number of rows of the set with a value > 0 (with ``detected=True``)
    detected: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        """Column means per set."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.n[:, None]

    @property
    def var(self) -> np.ndarray:
        """Sample variances per set (``ddof=1``)."""
        n = self.n[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.clip(self.sumsq - self.sum**2 / n, 0, None) / (n - 1)


try:
    from numba import njit, prange

    _HAVE_NUMBA = True

    @njit(cache=True, nogil=True, parallel=True, boundscheck=False)
    def _sparse_set_sums(set_ptr, set_rows, x_ptr, x_cols, x_vals, t_vals, mode, out):
        """Sums over the non-zeros ``j = (r, g)`` of the rows ``r`` of every set ``s`` into ``out[s, g, :]``.

        Channels: value, squared value, transformed value (``mode`` 1: ``expm1`` of the value,
        2: ``t_vals[j]``, 0: not computed) and value > 0. Values are read in their stored dtype
        and summed in float64.
        """
        for s in prange(set_ptr.shape[0] - 1):
            for a in range(set_ptr[s], set_ptr[s + 1]):
                r = set_rows[a]
                for j in range(x_ptr[r], x_ptr[r + 1]):
                    g = x_cols[j]
                    v = np.float64(x_vals[j])
                    out[s, g, 0] += v
                    out[s, g, 1] += v * v
                    if mode == 1:
                        out[s, g, 2] += np.expm1(v)
                    elif mode == 2:
                        out[s, g, 2] += t_vals[j]
                    if v > 0:
                        out[s, g, 3] += 1.0

except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False


def _sparse_block_sums(blk: sp.csr_matrix, part: sp.csr_matrix, transform) -> np.ndarray:
    """The four channels of :func:`_sparse_set_sums` for one CSR block and its indicator rows."""
    out = np.zeros((part.shape[0], blk.shape[1], 4), dtype=np.float64)
    if part.nnz == 0 or blk.nnz == 0:
        return out
    if not _HAVE_NUMBA:  # pragma: no cover
        ones = sp.csr_matrix((np.ones(part.nnz), part.indices, part.indptr), shape=part.shape)
        b = sp.csr_matrix(blk, dtype=np.float64)
        chans = [b, b.multiply(b), b.copy(), b > 0]
        if transform is not None:
            chans[2].data = transform(chans[2].data)
        for c, m in enumerate(chans):
            out[:, :, c] = (ones @ sp.csr_matrix(m, dtype=np.float64)).toarray()
        return out
    mode = 0 if transform is None else (1 if transform is np.expm1 else 2)
    t_vals = np.asarray(transform(blk.data.astype(np.float64)), np.float64) if mode == 2 else np.zeros(1)
    data = blk.data if blk.data.dtype in (np.float32, np.float64) else blk.data.astype(np.float64)
    _sparse_set_sums(
        part.indptr.astype(np.int64),
        part.indices.astype(np.int64),
        blk.indptr.astype(np.int64),
        blk.indices.astype(np.int64),
        data,
        t_vals,
        mode,
        out,
    )
    return out


def _dense_block_sums(blk: np.ndarray, part: sp.csr_matrix, transform) -> np.ndarray:
    """The four channels for one dense block: sparse indicator x dense products of the used rows."""
    import torch

    out = np.zeros((part.shape[0], blk.shape[1], 4), dtype=np.float64)
    if part.nnz == 0:
        return out
    used = np.unique(part.indices)
    b = np.asarray(blk[used], dtype=np.float64)
    chans = [b, b * b, transform(b) if transform is not None else np.zeros_like(b), (b > 0).astype(np.float64)]
    sub = part[:, used].tocsr()
    t = torch.sparse_csr_tensor(
        torch.from_numpy(sub.indptr.astype(np.int64)),
        torch.from_numpy(sub.indices.astype(np.int64)),
        torch.from_numpy(np.ones(sub.nnz)),
        size=sub.shape,
        check_invariants=False,
    )
    prod = (t @ torch.from_numpy(np.concatenate(chans, axis=1))).numpy()
    return np.ascontiguousarray(prod.reshape(part.shape[0], 4, blk.shape[1]).transpose(0, 2, 1))


def _block_sums(start: int, stop: int, blk, part: sp.csr_matrix, transform=None) -> np.ndarray:
    if sp.issparse(blk):
        return _sparse_block_sums(sp.csr_matrix(blk), part, transform)
    return _dense_block_sums(blk, part, transform)


def set_moments(
    X,
    indicator: sp.csr_matrix,
    *,
    transform=None,
    row_chunk: int | None = None,
) -> SetMoments:
    """Sums and sums of squares of the columns of ``X`` over many sets of rows.

    Parameters
    ----------
    X
        Data, rows x columns (e.g. cells x genes): dense or sparse, in memory or on disk (h5py,
        zarr, a backed AnnData's sparse dataset, a dask array; see :mod:`featurelens._blockwise`).
    indicator
        Sparse ``n_sets x n_rows`` 0/1 matrix: row ``s`` marks the members of set ``s``.
    transform
        Optional element-wise function (with ``f(0) == 0``, e.g. :func:`numpy.expm1`) whose
        per-set column sums are returned as well.
    row_chunk
        Rows read at a time (default: all of a sparse matrix in memory, otherwise blocks of about
        256 MB of stored values).

    Returns
    -------
    :class:`SetMoments` in float64, with ``detected`` (rows with a value > 0). Every block of rows
    is read once, in its stored dtype, for all sets. A sparse block is summed row by row in a
    parallel compiled kernel (work proportional to the non-zeros of the selected rows); a dense
    one by sparse-indicator x block products of its selected rows. Memory: one block plus
    ``n_sets x n_columns x 4`` float64 sums (two of them for a dask ``X``, whose blocks are reduced
    by dask's scheduler).
    """
    import functools

    from .._blockwise import block_rows, is_lazy, is_sparse_like, reduce_rows

    ind = sp.csc_matrix(indicator)
    n_rows = ind.shape[1]
    if X.shape[0] != n_rows:
        raise ValueError(f"indicator has {n_rows} columns but X has {X.shape[0]} rows.")
    n = np.diff(sp.csr_matrix(indicator).indptr).astype(np.float64)
    if row_chunk is None:
        sparse = is_sparse_like(X)
        row_chunk = n_rows if sparse and not is_lazy(X) else block_rows(X, 2**28 if sparse else 2**24)
    fn = functools.partial(_block_sums, transform=transform)
    out = reduce_rows(fn, X, args=lambda s, e: (ind[:, s:e].tocsr(),), rows=row_chunk)
    return SetMoments(
        n=n,
        sum=np.ascontiguousarray(out[:, :, 0]),
        sumsq=np.ascontiguousarray(out[:, :, 1]),
        sum_transformed=np.ascontiguousarray(out[:, :, 2]) if transform is not None else None,
        detected=np.ascontiguousarray(out[:, :, 3]),
    )


# ---------------------------------------------------------------------------- Welch and BH
def welch_ttest(n1, mean1, var1, n2, mean2, var2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch's t-test (two-sided) from group sizes, means and sample variances.

    Broadcasts over arrays. Equal to ``scipy.stats.ttest_ind(a, b, equal_var=False)``:
    ``t = (m1 - m2) / sqrt(v1/n1 + v2/n2)`` with Welch-Satterthwaite degrees of freedom; NaN
    when both variances are zero and the means are equal, ``+-inf`` (p = 0) when they differ.

    Returns
    -------
    ``t``, ``df`` and the two-sided p-value.
    """
    n1 = np.asarray(n1, dtype=np.float64)
    n2 = np.asarray(n2, dtype=np.float64)
    a = np.asarray(var1, dtype=np.float64) / n1
    b = np.asarray(var2, dtype=np.float64) / n2
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt(a + b)
        t = (np.asarray(mean1, dtype=np.float64) - np.asarray(mean2, dtype=np.float64)) / denom
        df = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))
    shape = np.broadcast(t, df).shape
    p = 2.0 * _threaded(special.stdtr, *(np.broadcast_to(a, shape).ravel() for a in (df, -np.abs(t)))).reshape(shape)
    p = np.where(np.isinf(t), 0.0, p)
    p = np.where(np.isnan(t), np.nan, p)
    return t, df, np.clip(p, 0.0, 1.0)


def bh_adjust(p, *, axis: int = -1, n_tests: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values along ``axis``; NaN entries stay NaN and are not counted.

    Parameters
    ----------
    p
        p-values.
    axis
        Axis holding one family of tests.
    n_tests
        Size of every family when ``p`` holds only part of it (the missing tests having p = 1,
        which do not change the adjusted values of the others). Default: the number of
        non-NaN entries of each family.

    Returns
    -------
    Adjusted p-values, same shape as ``p``, equal to
    ``statsmodels.stats.multitest.multipletests(p, method="fdr_bh")[1]`` for each family.
    """
    p = np.asarray(p, dtype=np.float64)
    p = np.moveaxis(p, axis, -1)
    shape = p.shape
    p2 = p.reshape(-1, shape[-1])
    if _k.HAVE_NUMBA and p2.size:
        out = np.empty_like(p2)
        _k.bh_rows(np.ascontiguousarray(p2), out, -1 if n_tests is None else int(n_tests))
        return np.moveaxis(out.reshape(shape), -1, axis)
    nan = np.isnan(p2)
    filled = np.where(nan, np.inf, p2)
    order = np.argsort(filled, axis=1, kind="stable")
    sorted_p = np.take_along_axis(filled, order, axis=1)
    m = (~nan).sum(axis=1, keepdims=True).astype(np.float64) if n_tests is None else np.float64(n_tests)
    rank = np.arange(1, shape[-1] + 1, dtype=np.float64)[None, :]
    with np.errstate(invalid="ignore"):
        adj = sorted_p * m / rank
    adj = np.where(np.isinf(sorted_p), np.inf, adj)
    adj = np.minimum.accumulate(adj[:, ::-1], axis=1)[:, ::-1]
    adj = np.minimum(adj, 1.0)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=1)
    out[nan] = np.nan
    return np.moveaxis(out.reshape(shape), -1, axis)


def bh_adjust_grouped(p, groups, *, n_tests: int) -> np.ndarray:
    """Benjamini-Hochberg adjustment within groups of a flat array of p-values.

    Every group is a family of ``n_tests`` tests of which only the listed ones are given; the
    missing ones have p = 1 and do not change the adjusted values of the listed ones.
    """
    p = np.asarray(p, dtype=np.float64)
    groups = np.asarray(groups)
    if p.size == 0:
        return p.copy()
    if _k.HAVE_NUMBA and (np.diff(groups) >= 0).all():
        bounds = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1, groups.size].astype(np.int64)
        out = np.empty_like(p)
        _k.bh_segments(p, bounds, out, int(n_tests))
        return out
    order = np.lexsort((p, groups))
    g, ps = groups[order], p[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, g.size]))
    rank = np.arange(g.size) - first + 1
    adj = ps * n_tests / rank
    # cumulative minimum from the end of each group: reverse, then a running minimum per group
    rev = adj[::-1]
    grp_rev = g[::-1]
    out_rev = pd.Series(rev).groupby(grp_rev, sort=False).cummin().to_numpy()
    out = np.empty_like(p)
    out[order] = np.minimum(out_rev[::-1], 1.0)
    return out


# ---------------------------------------------------------------------------- ranks and MWU
def average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise average ranks (1-based) and the tie term ``sum(t^3 - t)`` of every row.

    Equal to ``scipy.stats.rankdata(values, axis=1)`` (method "average").
    """
    v = np.asarray(values)
    n_rows, n = v.shape
    if _k.HAVE_NUMBA and v.size:
        ranks = np.empty((n_rows, n), dtype=np.float64)
        tie = np.empty(n_rows, dtype=np.float64)
        _k.rank_rows(np.ascontiguousarray(v, dtype=np.float64), ranks, tie)
        return ranks, tie
    order = np.argsort(v, axis=1, kind="stable")
    sv = np.take_along_axis(v, order, axis=1)
    new = np.ones((n_rows, n), dtype=bool)
    new[:, 1:] = sv[:, 1:] != sv[:, :-1]
    last = np.ones((n_rows, n), dtype=bool)
    last[:, :-1] = new[:, 1:]
    pos = np.broadcast_to(np.arange(n), (n_rows, n))
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n_rows, n), dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=1)
    size = (end - start + 1).astype(np.float64)
    tie = np.where(new, size**3 - size, 0.0).sum(axis=1)
    return ranks, tie


@dataclass
class MWUResult:
    """Mann-Whitney U of every (row, set) pair; arrays of shape ``(n_rows, n_sets)``."""

    n_in: np.ndarray
    u: np.ndarray
    z: np.ndarray
    pval: np.ndarray
    auc: np.ndarray


def mannwhitney_sets(values: np.ndarray, membership: sp.spmatrix) -> MWUResult:
    """Mann-Whitney U test of the values of each column set against all other columns, per row.

    Parameters
    ----------
    values
        ``n_rows x n_columns`` (e.g. features x genes, log fold changes), no NaN.
    membership
        Sparse ``n_columns x n_sets`` 0/1 matrix (e.g. genes x terms).

    Returns
    -------
    :class:`MWUResult`: ``u`` is the statistic of the set (``U1``), ``z`` the normal score with
    tie and continuity corrections, ``pval`` two-sided, ``auc = U1 / (n1 n2)``. Equal to
    ``scipy.stats.mannwhitneyu(in_set, out_set, method="asymptotic")`` for every pair; sets
    with no member or no non-member get NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    M = sp.csc_matrix(membership, dtype=np.float64)
    n = values.shape[1]
    if M.shape[0] != n:
        raise ValueError(f"membership has {M.shape[0]} rows but values have {n} columns.")
    ranks, tie = average_ranks(values)
    rank_sum = np.asarray((M.T @ ranks.T).T)  # rows x sets
    n1 = np.asarray(M.sum(axis=0)).ravel()[None, :]
    n2 = n - n1
    u1 = rank_sum - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie[:, None] / (n * (n - 1))))
        u = np.maximum(u1, n1 * n2 - u1)
        z_abs = (u - mu - 0.5) / s
        p = np.clip(2.0 * special.ndtr(-z_abs), 0.0, 1.0)
        z = (u1 - mu - 0.5 * np.sign(u1 - mu)) / s
        auc = u1 / (n1 * n2)
    bad = (n1 == 0) | (n2 == 0)
    for a in (p, z, auc):
        a[np.broadcast_to(bad, a.shape)] = np.nan
    return MWUResult(n_in=np.broadcast_to(n1, u1.shape).astype(np.int64), u=u1, z=z, pval=p, auc=auc)


# ---------------------------------------------------------------------------- binomial
def _threaded(ufunc, *arrays, min_size: int = 200_000) -> np.ndarray:
    """Apply an element-wise ufunc in parallel threads (NumPy ufuncs release the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    n = arrays[0].size
    workers = min(os.cpu_count() or 1, 8)
    if n < min_size or workers < 2:
        return ufunc(*arrays)
    out = np.empty(n, dtype=np.float64)
    bounds = np.linspace(0, n, workers + 1).astype(int)

    def run(i):
        sl = slice(bounds[i], bounds[i + 1])
        out[sl] = ufunc(*(a[sl] for a in arrays))

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(run, range(workers)))
    return out


@dataclass
class BinomialResult:
    """Over-representation of sets among selected columns; sparse over (row, set) pairs with hits."""

    rows: np.ndarray
    sets: np.ndarray
    hits: np.ndarray
    n_selected: np.ndarray
    expected: np.ndarray
    fold: np.ndarray
    pval: np.ndarray


def binomial_sets(selected: sp.spmatrix, membership: sp.spmatrix, *, universe: int | None = None) -> BinomialResult:
    """One-sided binomial test of every set's hits among the selected columns of every row.

    With ``n`` columns selected in a row (e.g. the DEGs of a feature), ``k`` of them in a set of
    size ``|S|`` and ``p = |S| / |universe|``: expected ``n p``, fold enrichment ``k / (n p)`` and
    ``P(X >= k)`` for ``X ~ Binomial(n, p)`` (PANTHER's test; equal to
    ``scipy.stats.binomtest(k, n, p, alternative="greater").pvalue``). Only pairs with at least
    one hit are returned: all others have p = 1.

    Parameters
    ----------
    selected
        Sparse ``n_rows x n_columns`` 0/1 matrix of selected columns.
    membership
        Sparse ``n_columns x n_sets`` 0/1 matrix.
    universe
        Number of columns in the universe (default: ``n_columns``).
    """
    S = sp.csr_matrix(selected, dtype=np.float64)
    M = sp.csc_matrix(membership, dtype=np.float64)
    universe = S.shape[1] if universe is None else int(universe)
    hits = (S @ M).tocsr().tocoo()  # row-major: entries of a row are contiguous
    keep = hits.data > 0
    r, c, k = hits.row[keep], hits.col[keep], np.rint(hits.data[keep])
    n_sel = np.asarray(S.sum(axis=1)).ravel()[r]
    size = np.asarray(M.sum(axis=0)).ravel()[c]
    prob = size / universe
    expected = n_sel * prob
    # P(X >= k) = I_p(k, n - k + 1), the regularised incomplete beta function; 1 - (1 - p)^n for k = 1
    pval = np.empty_like(prob)
    one = k == 1
    pval[one] = -np.expm1(n_sel[one] * np.log1p(-prob[one]))
    many = ~one
    pval[many] = _threaded(special.betainc, k[many], np.maximum(n_sel[many] - k[many] + 1, 1e-300), prob[many])
    pval[k > n_sel] = 0.0
    return BinomialResult(
        rows=r.astype(np.int64),
        sets=c.astype(np.int64),
        hits=k.astype(np.int64),
        n_selected=n_sel.astype(np.int64),
        expected=expected,
        fold=k / expected,
        pval=np.clip(pval, 0.0, 1.0),
    )


def paired_ttest(after: np.ndarray, before: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired t-test of every column (``scipy.stats.ttest_rel(after, before)`` vectorised).

    Returns the mean difference, the t statistic and the two-sided p-value per column. Columns with
    no variation in the differences get ``t = +-inf, p = 0`` when the mean difference is non-zero and
    NaN when every difference is zero.
    """
    from scipy import stats

    D = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    n = D.shape[0]
    if n < 2:
        raise ValueError(f"A paired t-test needs at least 2 pairs, got {n}.")
    mean = D.mean(0)
    sd = D.std(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / np.sqrt(n))
        degenerate = np.where(mean == 0, np.nan, np.where(mean > 0, np.inf, -np.inf))
    t = np.where(sd > 1e-12 * np.maximum(np.abs(mean), 1e-300), t, degenerate)
    p = 2 * stats.t.sf(np.abs(t), n - 1)
    return mean, t, p
