"""Control whitening and embedding normalisation on AnnData (real ECCITE-seq screen)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from helpers import assert_uns_equal

import featurelens as fl


def _snapshot(adata):
    return set(adata.obsm.keys()), set(adata.uns.keys()), adata.obs.copy()


@pytest.mark.shared_data
def test_whitened_controls_have_zero_mean_and_identity_covariance(papalexi_pca):
    adata = papalexi_pca.copy()
    fl.pp.whiten(adata, "X_pca", control_key="perturbation", control_value="control")
    Y = adata.obsm["X_whitened"]
    assert Y.dtype == np.float32 and Y.shape == (adata.n_obs, 20)
    ctrl = (adata.obs["perturbation"] == "control").to_numpy()
    Yc = Y[ctrl].astype(np.float64)
    np.testing.assert_allclose(Yc.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(Yc, rowvar=False), np.eye(20), atol=1e-3)
    # perturbed cells are not white: knock-outs of the IFN-gamma pathway move away from controls
    assert np.linalg.norm(Y[~ctrl].mean(0)) > 0.1
    entry = adata.uns["whitened"]
    assert entry["params"]["n_controls"] == int(ctrl.sum()) == 2386
    assert entry["params"]["use_rep"] == "X_pca" and entry["params"]["obsm_key"] == "X_whitened"
    assert entry["components"].shape == (20, 20) and entry["scales"].shape == (20,)
    np.testing.assert_allclose(entry["scales"], 1 / np.sqrt(entry["variances"] + 1e-6), rtol=1e-5)


@pytest.mark.shared_data
def test_whitening_matches_explicit_formula(papalexi_pca):
    adata = papalexi_pca.copy()
    fl.pp.whiten(adata, "X_pca", control_key="perturbation", control_value="control", eps=0.0)
    X = adata.obsm["X_pca"].astype(np.float64)
    ctrl = (adata.obs["perturbation"] == "control").to_numpy()
    mu = X[ctrl].mean(0)
    lam, V = np.linalg.eigh(np.cov(X[ctrl], rowvar=False))
    ref = (X - mu) @ V @ np.diag(lam**-0.5)  # T(x) = Lambda^-1/2 V^T (x - mu_c), columns in ascending order
    got = adata.obsm["X_whitened"][:, ::-1]
    signs = np.sign((ref * got).sum(0))
    np.testing.assert_allclose(got * signs, ref, rtol=1e-3, atol=1e-3)


def test_control_selection_variants_agree(small_adata):
    a1 = fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value="ctrl", copy=True)
    a2 = fl.pp.whiten(small_adata, "X_emb", controls=(small_adata.obs["group"] == "ctrl").to_numpy(), copy=True)
    a3 = fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value=["ctrl"], copy=True)
    small_adata.obs["is_ctrl"] = small_adata.obs["group"] == "ctrl"
    a4 = fl.pp.whiten(small_adata, "X_emb", controls="is_ctrl", copy=True)
    for other in (a2, a3, a4):
        np.testing.assert_array_equal(a1.obsm["X_whitened"], other.obsm["X_whitened"])
    assert "X_whitened" not in small_adata.obsm  # copy=True leaves the input alone


def test_n_comps_and_unit_norm(small_adata):
    fl.pp.whiten(
        small_adata, "X_emb", control_key="group", control_value="ctrl", n_comps=5, unit_norm=True, key_added="w5"
    )
    Y = small_adata.obsm["X_w5"]
    assert Y.shape == (small_adata.n_obs, 5)
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1, rtol=1e-5)
    assert small_adata.uns["w5"]["params"]["n_comps"] == 5


def test_fewer_controls_than_dimensions_warns_and_regularises(small_adata):
    mask = np.zeros(small_adata.n_obs, bool)
    mask[:8] = True  # 8 controls for 16 dimensions; the empirical covariance has rank 7
    with pytest.warns(UserWarning, match=r"Only 8 control cells for 16 dimensions.*n_comps<=7"):
        fl.pp.whiten(small_adata, "X_emb", controls=mask, shrinkage=None)
    assert np.isfinite(small_adata.obsm["X_whitened"]).all()
    with warnings_none():
        fl.pp.whiten(small_adata, "X_emb", controls=mask, n_comps=7, key_added="w7", shrinkage=None)
    Yc = small_adata.obsm["X_w7"][mask].astype(np.float64)
    np.testing.assert_allclose(np.cov(Yc, rowvar=False), np.eye(7), atol=1e-3)


class warnings_none:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"control_key": "nope", "control_value": "ctrl"}, r"not a column of adata.obs, which has 'group'"),
        ({"control_key": "group", "control_value": "DMSO"}, r"No cell has .*Values present include: ctrl, pert"),
        ({}, r"Say which cells are the controls"),
        ({"control_key": "group"}, r"Pass `control_value=`"),
        ({"controls": np.ones(3, bool)}, r"one entry per cell"),
        ({"controls": np.arange(400) == 0}, r"at least 2 control cells, found 1"),
        ({"control_key": "group", "control_value": "ctrl", "controls": np.ones(400, bool)}, r"not both"),
        ({"control_key": "group", "control_value": "ctrl", "n_comps": 99}, r"between 1 and the embedding dimension 16"),
    ],
)
def test_bad_input_is_reported_and_leaves_adata_unchanged(small_adata, kwargs, match):
    before = _snapshot(small_adata)
    with pytest.raises(ValueError, match=match):
        fl.pp.whiten(small_adata, "X_emb", **kwargs)
    after = _snapshot(small_adata)
    assert before[:2] == after[:2]


def test_missing_rep_lists_what_obsm_has(small_adata):
    with pytest.raises(ValueError, match=r"`use_rep='X_pca'` is not in adata.obsm, which has 'X_emb'"):
        fl.pp.whiten(small_adata, "X_pca", control_key="group", control_value="ctrl")


@pytest.mark.shared_data
def test_apply_whitening_to_new_data(papalexi_pca):
    adata = papalexi_pca
    ref = adata[:15000].copy()
    query = adata[15000:].copy()
    fl.pp.whiten(ref, "X_pca", control_key="perturbation", control_value="control")
    fl.pp.apply_whitening(query, "whitened", source=ref)
    both = adata.copy()
    fl.pp.whiten(
        both, "X_pca", controls=np.r_[(ref.obs["perturbation"] == "control").to_numpy(), np.zeros(query.n_obs, bool)]
    )
    np.testing.assert_allclose(query.obsm["X_whitened"], both.obsm["X_whitened"][15000:], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(query.uns["whitened"]["components"], ref.uns["whitened"]["components"])
    bad = ad.AnnData(np.zeros((3, 1), np.float32))
    bad.obsm["X_pca"] = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="has 5 dimensions but the whitening was fitted on 20"):
        fl.pp.apply_whitening(bad, "whitened", source=ref)


def test_whitening_survives_h5ad(small_adata, tmp_path):
    fl.pp.whiten(small_adata, "X_emb", control_key="group", control_value=["ctrl"])
    small_adata.write_h5ad(tmp_path / "w.h5ad")
    back = ad.read_h5ad(tmp_path / "w.h5ad")
    assert_uns_equal(small_adata.uns["whitened"], back.uns["whitened"])
    np.testing.assert_array_equal(small_adata.obsm["X_whitened"], back.obsm["X_whitened"])
    fl.pp.apply_whitening(back, "whitened", key_added="again")
    np.testing.assert_allclose(back.obsm["X_again"], small_adata.obsm["X_whitened"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["center", "scale", "standardize", "unit"])
def test_normalize_embedding(small_adata, method):
    fl.pp.normalize_embedding(small_adata, "X_emb", method=method)
    Y = small_adata.obsm[f"X_emb_{method}"]
    X = small_adata.obsm["X_emb"].astype(np.float64)
    if method == "center":
        np.testing.assert_allclose(Y, X - X.mean(0), atol=1e-5)
    elif method == "standardize":
        from sklearn.preprocessing import StandardScaler

        np.testing.assert_allclose(Y, StandardScaler().fit_transform(X), atol=1e-4)
    elif method == "unit":
        from sklearn.preprocessing import normalize

        np.testing.assert_allclose(Y, normalize(X), atol=1e-6)
    else:
        np.testing.assert_allclose(Y * (X / Y)[0, 0], X, rtol=1e-5)
        assert np.isclose(((Y - Y.mean(0)) ** 2).sum(1).mean(), X.shape[1], rtol=1e-4)


def test_view_is_made_actual(small_adata):
    view = small_adata[:200]
    with pytest.warns(UserWarning, match="view of an AnnData"):
        fl.pp.whiten(view, "X_emb", control_key="group", control_value="ctrl")
    assert not view.is_view and "X_whitened" in view.obsm
    assert "X_whitened" not in small_adata.obsm
