"""Shared test helpers: real-data paths, a planted dictionary, deep comparison of uns entries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """Path inside ../shared/data; skips the test (with the reason) when the folder is missing."""
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} is missing")
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


def planted_dictionary(n=3000, d=32, m=64, s=3, noise=0.01, seed=0):
    """x = z W* + noise with unit-norm atoms W* (m x d) and s-sparse positive codes z."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    Z = np.zeros((n, m))
    for i in range(n):
        j = rng.choice(m, s, replace=False)
        Z[i, j] = rng.uniform(0.5, 1.5, s)
    X = Z @ W + noise * rng.normal(size=(n, d))
    return X.astype(np.float32), W, Z


def assert_uns_equal(a, b, path="uns"):
    """Recursive equality of uns-like structures (dicts, arrays, DataFrames, scalars)."""
    import pandas as pd
    import scipy.sparse as sp

    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)} differ"
        for k in a:
            assert_uns_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_dtype=False, check_index_type=False, obj=path)
    elif sp.issparse(a):
        assert sp.issparse(b) and a.shape == b.shape, path
        assert (a != b).nnz == 0, path
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, np.asarray(b), err_msg=path)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
