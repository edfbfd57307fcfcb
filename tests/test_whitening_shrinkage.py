"""Control whitening with a shrunk covariance (``shrinkage=``): estimators, the automatic choice, storage."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from helpers import assert_uns_equal
from sklearn.covariance import OAS, LedoitWolf, ShrunkCovariance

import featurelens as fl
from featurelens.models.preprocess import control_covariance, fit_whitening


def _covariance_of(w) -> np.ndarray:
    """The covariance a fitted whitening was built from: ``V^T diag(variances) V``."""
    return (w.components.T * w.variances) @ w.components


def _old_fit(X: np.ndarray, controls: np.ndarray):
    """fit_whitening as it was before ``shrinkage`` existed (empirical covariance, ddof=1)."""
    Xc = X[controls]
    mean = Xc.mean(axis=0)
    cov = np.cov(Xc - mean, rowvar=False, ddof=1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals = np.clip(evals[order], 0.0, None)
    comps = evecs[:, order].T
    flip = np.sign(comps[np.arange(len(order)), np.abs(comps).argmax(axis=1)])
    comps *= np.where(flip == 0, 1.0, flip)[:, None]
    return mean, comps, evals


def _controls_data(n_ctrl: int, d: int, seed: int = 0, n_other: int = 100):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) * np.geomspace(3.0, 0.1, d)[:, None]
    X = rng.normal(size=(n_ctrl + n_other, d)) @ A + 2.0
    return X, np.arange(n_ctrl + n_other) < n_ctrl


def _true_covariance(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (Q * np.geomspace(4.0, 0.25, d)) @ Q.T


# ------------------------------------------------------------------------------------ the estimators
@pytest.mark.parametrize(
    ("shrinkage", "reference", "used"),
    [
        ("ledoit-wolf", LedoitWolf(), "ledoit-wolf"),
        ("oas", OAS(), "oas"),
        (0.3, ShrunkCovariance(shrinkage=0.3), "shrunk"),
        (0.0, ShrunkCovariance(shrinkage=0.0), "shrunk"),
        (1.0, ShrunkCovariance(shrinkage=1.0), "shrunk"),
    ],
)
def test_covariance_equals_scikit_learn(shrinkage, reference, used):
    X, controls = _controls_data(40, 20)
    w = fit_whitening(X, controls, shrinkage=shrinkage, eps=0.0)
    ref = reference.fit(X[controls])
    np.testing.assert_allclose(_covariance_of(w), ref.covariance_, rtol=1e-10, atol=1e-10 * abs(ref.covariance_).max())
    np.testing.assert_allclose(w.mean, ref.location_, rtol=1e-12)
    assert w.covariance == used
    assert w.shrinkage_intensity == pytest.approx(ref.shrinkage_ if used != "shrunk" else shrinkage, rel=1e-12)
    assert isinstance(w.shrinkage_intensity, float)


def test_none_reproduces_the_empirical_whitening_of_earlier_versions():
    X, controls = _controls_data(50, 12, seed=3)
    w = fit_whitening(X, controls, shrinkage=None)
    mean, comps, evals = _old_fit(X, controls)
    np.testing.assert_array_equal(w.mean, mean)
    np.testing.assert_array_equal(w.components, comps)
    np.testing.assert_array_equal(w.variances, evals)
    assert (w.covariance, w.shrinkage_intensity) == ("empirical", 0.0)
    np.testing.assert_allclose(_covariance_of(w), np.cov(X[controls], rowvar=False), rtol=1e-10)


def test_empirical_whitening_gives_controls_identity_covariance():
    X, controls = _controls_data(400, 8, seed=4)
    w = fit_whitening(X, controls, shrinkage=None, eps=0.0)
    Y = w.transform(X)[controls].astype(np.float64)
    np.testing.assert_allclose(Y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.cov(Y, rowvar=False), np.eye(8), atol=1e-5)


def test_shrunk_whitening_centres_controls_and_leaves_their_spread_below_one_on_weak_axes():
    X, controls = _controls_data(30, 20, seed=5)
    w = fit_whitening(X, controls, shrinkage="ledoit-wolf", eps=0.0)
    Y = w.transform(X)[controls].astype(np.float64)
    np.testing.assert_allclose(Y.mean(0), 0, atol=1e-4)
    # shrinking towards mu * I keeps the eigenvectors; the eigenvalues become (1 - a) l + a mu, so the
    # whitened control variances are l / ((1 - a) l + a mu): above 1 on the strong axes, below on the weak
    lam = np.linalg.eigvalsh(np.cov(X[controls], rowvar=False, ddof=0))[::-1]
    a, mu = w.shrinkage_intensity, lam.mean()
    var = np.cov(Y, rowvar=False, ddof=0).diagonal()
    np.testing.assert_allclose(var, lam / ((1 - a) * lam + a * mu), rtol=1e-4)
    assert var[0] > 1 > var[-1]


# ------------------------------------------------------------------------------------ the automatic choice
@pytest.mark.parametrize(("n_ctrl", "used"), [(30, "ledoit-wolf"), (199, "ledoit-wolf"), (200, "empirical")])
def test_auto_uses_ledoit_wolf_below_ten_controls_per_dimension(n_ctrl, used):
    X, controls = _controls_data(n_ctrl, 20, seed=6)
    w = fit_whitening(X, controls)  # the default is "auto"
    assert w.covariance == used
    expected = LedoitWolf().fit(X[controls]).covariance_ if used == "ledoit-wolf" else np.cov(X[controls], rowvar=False)
    np.testing.assert_allclose(_covariance_of(w), expected, rtol=1e-10, atol=1e-10 * abs(expected).max())
    assert (w.shrinkage_intensity > 0) == (used == "ledoit-wolf")


def test_auto_counts_the_embedding_dimension_not_n_comps():
    X, controls = _controls_data(100, 20, seed=7)  # 100 < 10 x 20, although 100 >= 10 x 5
    assert fit_whitening(X, controls, n_comps=5).covariance == "ledoit-wolf"


def test_whiten_records_requested_and_used_estimator(small_adata):
    # 100 controls for 16 dimensions (< 160): "auto" shrinks
    fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value="ctrl")
    params = small_adata.uns["whitened"]["params"]
    assert params["shrinkage"] == "auto" and params["covariance"] == "ledoit-wolf"
    Xc = small_adata.obsm["X_emb"][(small_adata.obs["group"] == "ctrl").to_numpy()].astype(np.float64)
    assert params["shrinkage_intensity"] == pytest.approx(LedoitWolf().fit(Xc).shrinkage_, rel=1e-12)
    fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value="ctrl", shrinkage=0.25, key_added="s")
    params = small_adata.uns["s"]["params"]
    assert (params["shrinkage"], params["covariance"], params["shrinkage_intensity"]) == (0.25, "shrunk", 0.25)
    fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value="ctrl", shrinkage=None, key_added="e")
    params = small_adata.uns["e"]["params"]
    assert (params["shrinkage"], params["covariance"], params["shrinkage_intensity"]) == (None, "empirical", 0.0)
    ctrl = (small_adata.obs["group"] == "ctrl").to_numpy()
    evals = _old_fit(small_adata.obsm["X_emb"].astype(np.float64), ctrl)[2]
    np.testing.assert_allclose(small_adata.uns["e"]["variances"], evals, rtol=1e-6)  # stored as float32


def test_shrinkage_needs_no_component_cap_with_fewer_controls_than_dimensions(small_adata):
    import warnings

    mask = np.zeros(small_adata.n_obs, bool)
    mask[:8] = True  # 8 controls for 16 dimensions: the empirical covariance is singular
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fl.pp.whiten(small_adata, "X_emb", controls=mask, eps=0.0)
    assert small_adata.uns["whitened"]["params"]["covariance"] == "ledoit-wolf"
    assert np.isfinite(small_adata.obsm["X_whitened"]).all()
    with pytest.raises(ValueError, match="eps=0 and fewer controls than dimensions"):
        fl.pp.whiten(small_adata, "X_emb", controls=mask, eps=0.0, shrinkage=None, key_added="e")


# ------------------------------------------------------------------------------------ storage and reuse
def test_shrunk_whitening_survives_h5ad_and_is_applied_identically(small_adata, tmp_path):
    fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value="ctrl", shrinkage="oas")
    fl.tl.icfl(small_adata, "X_whitened", n_features=32, n_steps=100, progress=False)
    entry = small_adata.uns["whitened"]
    assert entry["params"]["covariance"] == "oas" and 0 < entry["params"]["shrinkage_intensity"] < 1
    kept = small_adata.uns["icfl"]["preprocess"]["whiten"]  # the dictionary's own copy records the estimator
    assert kept["covariance"] == "oas" and kept["shrinkage_intensity"] == entry["shrinkage_intensity"]
    small_adata.write_h5ad(tmp_path / "w.h5ad")
    back = ad.read_h5ad(tmp_path / "w.h5ad")
    assert_uns_equal(small_adata.uns["whitened"], back.uns["whitened"])
    assert_uns_equal(small_adata.uns["icfl"]["preprocess"], back.uns["icfl"]["preprocess"])
    assert back.uns["whitened"]["params"]["shrinkage"] == "oas"
    # apply_whitening uses the stored mean, components and scales: the same map
    fl.pp.apply_whitening(back, "whitened", key_added="again")
    np.testing.assert_allclose(back.obsm["X_again"], small_adata.obsm["X_whitened"], rtol=1e-5, atol=1e-5)
    # a new object with only the raw embedding: encode whitens it on the fly with the dictionary's copy
    new = ad.AnnData(np.zeros((back.n_obs, 1), np.float32))
    new.obsm["X_emb"] = back.obsm["X_emb"].copy()
    fl.tl.encode(new, "icfl", source=back, progress=False)
    np.testing.assert_allclose(new.obsm["X_icfl"].toarray(), small_adata.obsm["X_icfl"].toarray(), atol=1e-4)


def test_none_survives_h5ad(small_adata, tmp_path):
    fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value="ctrl", shrinkage=None)
    small_adata.write_h5ad(tmp_path / "w.h5ad")
    back = ad.read_h5ad(tmp_path / "w.h5ad")
    assert back.uns["whitened"]["params"]["shrinkage"] is None
    assert_uns_equal(small_adata.uns["whitened"], back.uns["whitened"])


def test_entries_without_the_estimator_read_as_empirical():
    X, controls = _controls_data(50, 6)
    stored = fit_whitening(X, controls).to_dict()
    del stored["covariance"], stored["shrinkage_intensity"]
    w = fl.models.Whitening.from_dict(stored)
    assert (w.covariance, w.shrinkage_intensity) == ("empirical", 0.0)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("lw", r"`shrinkage` must be one of 'auto', 'ledoit-wolf', 'oas' or None, got 'lw'"),
        ("Ledoit-Wolf", r"`shrinkage` must be one of 'auto', 'ledoit-wolf', 'oas' or None, got 'Ledoit-Wolf'"),
        (True, r"`shrinkage` must be one of .*, got True"),
        ([0.1], r"`shrinkage` must be one of .*, got \[0.1\]"),
        (1.5, r"`shrinkage` must lie in \[0.0, 1.0\], got 1.5"),
        (-0.1, r"`shrinkage` must lie in \[0.0, 1.0\], got -0.1"),
        (float("nan"), r"`shrinkage` must be a finite number in \[0.0, 1.0\]"),
    ],
)
def test_invalid_shrinkage_raises_and_leaves_adata_unchanged(small_adata, bad, match):
    before = (set(small_adata.obsm), set(small_adata.uns))
    with pytest.raises(ValueError, match=match):
        fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value="ctrl", shrinkage=bad)
    assert (set(small_adata.obsm), set(small_adata.uns)) == before
    X, controls = _controls_data(30, 4)
    with pytest.raises(ValueError, match=match):
        fit_whitening(X, controls, shrinkage=bad)
    with pytest.raises(ValueError, match=match):
        control_covariance(X[controls], bad)


def test_control_covariance_needs_two_controls():
    with pytest.raises(ValueError, match="at least 2 control samples, got 1"):
        control_covariance(np.ones((1, 3)), "ledoit-wolf")


# ------------------------------------------------------------------------------------ ground truth
def test_shrinkage_estimates_the_true_whitening_better_with_few_controls():
    """30 controls in 20 dimensions drawn from a known covariance: compare with its inverse square root."""
    d, n, reps = 20, 30, 20
    errors = {"empirical": [], "ledoit-wolf": [], "oas": []}
    for rep in range(reps):
        sigma = _true_covariance(d, seed=rep)
        lam, Q = np.linalg.eigh(sigma)
        target = (Q * lam**-0.5) @ Q.T  # Sigma^{-1/2}
        rng = np.random.default_rng(100 + rep)
        X = rng.multivariate_normal(np.zeros(d), sigma, size=n)
        controls = np.ones(n, bool)
        for shrinkage, name in ((None, "empirical"), ("ledoit-wolf", "ledoit-wolf"), ("oas", "oas")):
            w = fit_whitening(X, controls, shrinkage=shrinkage, eps=0.0)
            estimate = (w.components.T * w.scales) @ w.components  # the symmetric form of the same whitening
            errors[name].append(np.linalg.norm(estimate - target) / np.linalg.norm(target))
    err = {k: np.asarray(v) for k, v in errors.items()}
    # the empirical inverse square root overshoots badly along the smallest eigenvalues
    assert err["ledoit-wolf"].mean() < 0.6 * err["empirical"].mean()
    assert err["oas"].mean() < 0.6 * err["empirical"].mean()
    assert (err["ledoit-wolf"] < err["empirical"]).all()
    # with plenty of controls the empirical estimate is accurate and "auto" keeps it
    sigma = _true_covariance(d, seed=0)
    X = np.random.default_rng(1).multivariate_normal(np.zeros(d), sigma, size=10 * d)
    assert fit_whitening(X, np.ones(10 * d, bool)).covariance == "empirical"
