"""Blockwise best-partner search of ``pearson_max_partner`` against the features x features reference."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import featurelens as fl
from featurelens.stats import pearson_max_partner


def reference_pearson_max_partner(X) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation: the sparse product ``X.T @ X`` of all features at once.

    Two columns can only correlate strongly when they are non-zero in the same cells, so only the
    non-zero entries of ``X^T X`` are examined (a pair that is never co-active has a correlation
    of at most zero). Columns with zero variance get NaN and partner -1.
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


def assert_same(X, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    want_best, want_partner = reference_pearson_max_partner(X)
    best, partner = pearson_max_partner(X, **kwargs)
    assert best.dtype == np.float64 and partner.dtype == np.int64
    np.testing.assert_array_equal(partner, want_partner)
    np.testing.assert_array_equal(np.isnan(best), np.isnan(want_best))
    np.testing.assert_allclose(best, want_best, rtol=1e-12, atol=0, equal_nan=True)
    return best, partner


def random_codes(rng, n, m, density, *, ties=False, signed=False):
    X = rng.exponential(size=(n, m)) * (rng.random((n, m)) < density)
    if ties:  # few distinct values: many equal correlations
        X = np.ceil(X)
    if m > 3:
        X[:, 1] = X[:, 0]  # a duplicate: equal correlations with every other feature
        X[:, 2] = 0  # dead
    if m > 5:
        X[:, 5] = np.where(X[:, 4] > 0, 1.0, 0.0)  # constant where active
    if signed:
        X = X - 0.5 * (X != 0)
    return X


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_blockwise_equals_the_reference_on_random_sparse_matrices(seed, dtype, fmt):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(2, 300)), int(rng.integers(1, 60))
    X = random_codes(rng, n, m, density=[0.02, 0.1, 0.4, 1.0][seed % 4], ties=seed % 2 == 0, signed=seed == 5)
    X = X.astype(dtype)
    Xs = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[fmt](X)
    for block in (None, 1, 7, m):
        assert_same(Xs, block_size=block)


def test_ties_go_to_the_smaller_partner_and_duplicates_pair_up():
    rng = np.random.default_rng(3)
    base = rng.exponential(size=(200, 1)) * (rng.random((200, 1)) < 0.3)
    other = rng.exponential(size=(200, 2))
    X = np.hstack([base, other[:, :1], base, other[:, 1:], base])  # 0, 2 and 4 are the same feature
    best, partner = assert_same(sp.csr_matrix(X), block_size=2)
    np.testing.assert_array_equal(partner[[0, 2, 4]], [2, 0, 0])
    np.testing.assert_allclose(best[[0, 2, 4]], 1.0, rtol=1e-12)
    C = np.corrcoef(X[:, [1, 3]], X, rowvar=False)[:2, 2:]  # the others: any co-active feature
    np.testing.assert_allclose(best[[1, 3]], [np.max(np.delete(C[0], 1)), np.max(np.delete(C[1], 3))], rtol=1e-12)


def test_pairs_that_are_never_coactive_are_not_candidates():
    # f0 and f1 never fire in the same cell (their correlation is negative but not examined);
    # f2 and f3 fire together in two cells with products +1 and -1: the co-activation sum is 0
    X = np.array([[1.0, 0, 1, 1], [2, 0, 1, -1], [0, 1, 0, 0], [0, 3, 0, 0], [0, 0, 0, 2]])
    best, partner = assert_same(sp.csr_matrix(X), block_size=1)
    assert np.isfinite(best[[0, 2]]).all() and partner[0] == 2 and partner[2] == 0
    assert np.isnan(best[1]) and partner[1] == -1  # f1 is co-active with nothing
    assert partner[3] == 0  # f3's only candidate is f0 (f2 has a zero co-activation sum)


def test_zero_columns_constant_columns_and_a_single_cell():
    X = np.zeros((50, 4))
    X[::2, 0] = 1.0  # constant where active: has variance
    X[:, 1] = 2.0  # constant everywhere: zero variance
    X[::3, 2] = np.arange(17)
    best, partner = assert_same(sp.csr_matrix(X))
    assert np.isnan(best[1]) and partner[1] == -1 and np.isnan(best[3]) and partner[3] == -1
    # one cell: every column has zero variance
    one = sp.csr_matrix(np.array([[1.0, 0.0, 2.0, 3.0]], dtype=np.float32))
    best, partner = pearson_max_partner(one)
    assert np.isnan(best).all() and (partner == -1).all()
    assert_same(sp.csr_matrix(np.array([[0.0, 4.0, 0.0]])))
    # no features
    for shape in ((5, 0),):
        best, partner = pearson_max_partner(sp.csr_matrix(shape, dtype=np.float32))
        assert best.shape == partner.shape == (shape[1],) and (partner == -1).all()


def test_products_are_formed_in_float64_from_float32_input():
    rng = np.random.default_rng(0)
    X = random_codes(rng, 3000, 40, 0.2).astype(np.float32)
    assert_same(sp.csr_matrix(X), block_size=5)
    import featurelens.stats._groups as groups

    old = groups._CHUNK
    groups._CHUNK = 64  # many small chunks of products per block
    try:
        assert_same(sp.csr_matrix(X), block_size=5)
    finally:
        groups._CHUNK = old


def test_dense_case_matches_numpy_corrcoef():
    rng = np.random.default_rng(1)
    X = rng.exponential(size=(500, 12)) + 0.1  # every pair co-active
    X[:, 7] = 2 * X[:, 2] + rng.normal(scale=0.05, size=500)
    best, partner = pearson_max_partner(X, block_size=5)
    C = np.corrcoef(X, rowvar=False)
    np.fill_diagonal(C, -np.inf)
    np.testing.assert_allclose(best, C.max(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(partner, C.argmax(axis=1))
    assert partner[2] == 7 and partner[7] == 2


def test_memory_grows_linearly_with_the_features_for_a_fixed_block():
    rng = np.random.default_rng(2)
    n, k, block = 2000, 8, 64
    peaks = {}
    for m in (1000, 2000, 4000):
        cols = rng.integers(0, m, size=(n, k))
        X = sp.csr_matrix((rng.exponential(size=n * k).astype(np.float32), cols.ravel(), np.arange(0, n * k + 1, k)),
                          shape=(n, m))  # fmt: skip
        X.sum_duplicates()
        tracemalloc.start()
        pearson_max_partner(X, block_size=block)
        peaks[m] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # two features x block float64 matrices, bounded per-block work and the two compressed copies
        assert peaks[m] < 3 * block * m * 8 + 40 * X.nnz * 8 + 2**20, (m, peaks[m])
        assert peaks[m] < m * m * 8 / 2  # far from a features x features matrix
    assert peaks[4000] / peaks[1000] < 4.5  # linear (features x features would be 16)


def test_bundled_data_and_feature_stats_agree_with_the_reference():
    adata = fl.datasets.kang2018(preprocess=True)
    fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    Z = adata.obsm["X_sae"]
    best, partner = assert_same(Z)
    assert_same(Z, block_size=5)
    fl.tl.feature_stats(adata, "sae")
    f = fl.get.features(adata, "sae")
    names = np.asarray(f.index.astype(str))
    np.testing.assert_allclose(f["max_corr"].to_numpy(), best, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(f["corr_partner"].to_numpy(), np.where(partner >= 0, names[partner], ""))
    assert (f["redundant"].to_numpy() == (np.nan_to_num(best, nan=-np.inf) >= 0.95)).all()
