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


def pearson_max_partner(X) -> tuple[np.ndarray, np.ndarray]:
    """For every column of ``X``, the largest Pearson correlation with another column and its index.

    Works on a sparse ``X`` without forming a dense cells x features matrix: two columns can
    only correlate strongly when they are non-zero in the same cells, so only the non-zero
    entries of ``X^T X`` are examined (a pair that is never co-active has a correlation of at
    most zero). Columns with zero variance get NaN and partner -1.
    """
    X = sp.csc_matrix(X, dtype=np.float64) if sp.issparse(X) else sp.csc_matrix(np.asarray(X, dtype=np.float64))
    n = X.shape[0]
    mean = np.asarray(X.mean(axis=0)).ravel()
    sq = X.copy()
    sq.data **= 2
    var = (np.asarray(sq.sum(axis=0)).ravel() - n * mean**2) / max(n - 1, 1)
    sd = np.sqrt(np.clip(var, 0, None))
    S = (X.T @ X).tocoo()
    off = S.row != S.col
    i, j, s = S.row[off], S.col[off], S.data[off]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (s - n * mean[i] * mean[j]) / ((n - 1) * sd[i] * sd[j])
    r[~np.isfinite(r)] = np.nan
    m = X.shape[1]
    best = np.full(m, -np.inf)
    partner = np.full(m, -1, dtype=np.int64)
    if r.size:
        ok = np.isfinite(r)
        i, j, r = i[ok], j[ok], r[ok]
        order = np.lexsort((j, -r, i))  # per row: largest r first, ties by smaller partner index
        i, j, r = i[order], j[order], r[order]
        first = np.r_[True, i[1:] != i[:-1]]
        best[i[first]] = r[first]
        partner[i[first]] = j[first]
    # columns never co-active with another: their best correlation is at most 0 (not computed)
    best[~np.isfinite(best)] = np.nan
    best[sd == 0] = np.nan
    partner[sd == 0] = -1
    return best, partner
