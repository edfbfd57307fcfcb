"""Steering with an scVI model as the decoder: posterior-sample effects against scvi-tools itself."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import featurelens as fl
from featurelens.tl._scvi import bayesian_fdr

scvi = pytest.importorskip("scvi")  # installed with the test extra; never skipped on CI

ISGS = {"ISG15", "IFIT1", "IFIT3", "IFITM3", "CXCL10", "IFI6", "MX1", "LY6E", "ISG20", "APOBEC3A", "CCL8", "IFI27"}
CTRL_MONO = {"groupby": "cell_type", "group": "CD14 Mono", "cells": "condition == 'CTRL'"}


@pytest.fixture(scope="module")
def kang_scvi():
    """Kang 2018 on its 400 most variable genes: counts layer, scVI latent, a 24-feature SAE on it."""
    pre = fl.datasets.kang2018(preprocess=True)
    genes = pre.var["dispersions_norm"].sort_values(ascending=False).index[:400]
    adata = fl.datasets.kang2018()[:, genes].copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    model = fl.tl.train_scvi(adata, n_latent=10, max_epochs=80, batch_size=256, progress=False)
    fl.tl.sae(adata, "X_scVI", n_features=24, n_steps=1500, progress=False)
    Z = adata.obsm["X_sae"]
    Z = np.asarray(Z.todense() if hasattr(Z, "todense") else Z)
    mono = (adata.obs["cell_type"] == "CD14 Mono").to_numpy()
    stim = (adata.obs["condition"] == "STIM").to_numpy()
    f = int(np.argmax(Z[mono & stim].mean(0) - Z[mono & ~stim].mean(0)))
    return adata, model, f, float(Z[mono & stim, f].mean())


def test_train_scvi_stores_the_latent_and_nothing_of_scvi(kang_scvi):
    adata, model, _, _ = kang_scvi
    np.testing.assert_allclose(adata.obsm["X_scVI"], model.get_latent_representation(), rtol=1e-5, atol=1e-6)
    assert adata.obsm["X_scVI"].dtype == np.float32
    assert not [c for c in adata.obs.columns if c.startswith("_scvi")]
    assert not [k for k in adata.uns if k.startswith("_scvi")]
    p = adata.uns["scVI"]["params"]
    assert p["n_latent"] == 10 and p["max_epochs"] == 80 and p["gene_likelihood"] == "nb"
    assert np.isfinite(p["elbo_train"])


def test_bayesian_fdr_matches_scvi_rule():
    from scvi.model.base._de_core import _fdr_de_prediction

    rng = np.random.default_rng(0)
    proba = np.concatenate([rng.uniform(0.9, 1, 40), rng.uniform(0, 1, 200)])
    efdr = bayesian_fdr(proba)
    for target in (0.01, 0.05, 0.2):
        expected = _fdr_de_prediction(pd.Series(proba), fdr=target).to_numpy()
        np.testing.assert_array_equal(efdr <= target, expected)
    # by definition: the mean of 1 - p over the genes at least as probable
    i = 17
    assert efdr[i] == pytest.approx(np.mean(1 - proba[proba >= proba[i]]))


def test_steer_scvi_finds_the_interferon_response(kang_scvi):
    adata, model, f, v = kang_scvi
    adata = adata.copy()
    n_managers = len(model._per_instance_manager_store[model.id])
    fl.tl.steer(adata, "sae", f"f{f}", **CTRL_MONO, value=v, decoder="scvi", scvi_model=model, progress=False)
    assert len(model._per_instance_manager_store[model.id]) == n_managers  # no setup left behind
    table = fl.get.steering(adata, "sae", f"f{f}")
    params = adata.uns["sae"]["steering"][f"f{f}"]["params"]
    assert params["method"] == "posterior" and params["decoder"] == "scvi" and params["n_samples"] == 100
    up = table[table["direction"] == "up"]
    assert len(ISGS & set(up["gene"].head(20))) >= 4, up["gene"].head(20).tolist()
    # p-values carry information: between 0 and 1, neither all 0 nor all significant
    assert ((table["pval"] >= 0) & (table["pval"] <= 1)).all()
    assert (table["pval"] > 0).all() and (table["pval"] > 0.5).sum() > 50
    assert 0 < (table["padj"] < 0.05).sum() < len(table) / 2
    np.testing.assert_allclose(table["pval"], 1 - table["proba_de"])
    assert table["padj"].is_monotonic_increasing  # the table is ranked by the expected FDR
    assert ((table["log2fc_low"] <= table["log2fc"]) & (table["log2fc"] <= table["log2fc_high"])).mean() > 0.95
    assert table["log2fc"].abs().max() <= np.log2(1e4 + 1)


def test_posterior_means_equal_scvi_normalized_expression(kang_scvi):
    adata, model, f, v = kang_scvi
    adata = adata.copy()
    fl.tl.steer(adata, "sae", f"f{f}", **CTRL_MONO, value=v, decoder="scvi", scvi_model=model, n_samples=200,
                progress=False)  # fmt: skip
    table = fl.get.steering(adata, "sae", f"f{f}").set_index("gene").loc[adata.var_names]
    cells = ((adata.obs["cell_type"] == "CD14 Mono") & (adata.obs["condition"] == "CTRL")).to_numpy()
    ref = model.get_normalized_expression(
        adata[cells].copy(), library_size=1e4, n_samples=200, return_mean=True, return_numpy=True
    ).mean(0)
    expressed = ref > 1.0
    np.testing.assert_allclose(table["mean_original"].to_numpy()[expressed], ref[expressed], rtol=0.03)


def test_no_shift_no_change(kang_scvi):
    """Null: cells where the feature is off, set to 0, do not move; nothing is called changed."""
    adata, model, f, _ = kang_scvi
    adata = adata.copy()
    Z = adata.obsm["X_sae"]
    z = np.asarray(Z[:, f].todense()).ravel() if hasattr(Z, "todense") else np.asarray(Z[:, f])
    off = np.flatnonzero(z == 0)[:80]
    fl.tl.steer(adata, "sae", f"f{f}", cells=off, value=0.0, decoder="scvi", scvi_model=model, progress=False)
    table = fl.get.steering(adata, "sae", f"f{f}")
    np.testing.assert_array_equal(table["log2fc"], 0.0)
    assert (table["proba_de"] == 0).all() and (table["pval"] == 1).all() and (table["padj"] == 1).all()


def test_scvi_steering_survives_h5ad(kang_scvi, tmp_path):
    adata, model, f, v = kang_scvi
    adata = adata.copy()
    fl.tl.steer(adata, "sae", f"f{f}", **CTRL_MONO, value=v, decoder="scvi", scvi_model=model, n_samples=10,
                progress=False)  # fmt: skip
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_frame_equal(
        fl.get.steering(back, "sae", f"f{f}"), fl.get.steering(adata, "sae", f"f{f}"), check_categorical=False
    )


def _steer_error(adata, f, **kw):
    before = set(adata.uns["sae"].get("steering", {}))
    kw = {"decoder": "scvi", **kw}
    with pytest.raises(ValueError) as err:
        fl.tl.steer(adata, "sae", f"f{f}", **CTRL_MONO, progress=False, **kw)
    assert set(adata.uns["sae"].get("steering", {})) == before
    return str(err.value)


def test_bad_scvi_input(kang_scvi):
    adata, model, f, _ = kang_scvi
    adata = adata.copy()
    assert "trained on 400 genes and adata has 399" in _steer_error(adata[:, 1:].copy(), f, scvi_model=model)
    assert "needs `scvi_model`" in _steer_error(adata, f)
    assert "use method='posterior'" in _steer_error(adata, f, scvi_model=model, method="t-test")
    assert "only used with decoder='scvi'" in _steer_error(adata, f, decoder="linear", scvi_model=model)
    other = adata.copy()
    other.obsm["X_other"] = other.obsm["X_scVI"][::-1].copy()
    fl.tl.sae(other, "X_other", n_features=8, n_steps=50, progress=False)
    with pytest.raises(ValueError, match="not this scVI model's latent space"):
        fl.tl.steer(other, "sae", "f0", **CTRL_MONO, decoder="scvi", scvi_model=model, progress=False)


def test_train_scvi_bad_input(kang_scvi):
    adata = kang_scvi[0]
    with pytest.raises(ValueError, match="holds non-integer or negative values"):
        fl.tl.train_scvi(adata, layer=None, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="is a view"):
        fl.tl.train_scvi(adata[:10], max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="`gene_likelihood` must be one of"):
        fl.tl.train_scvi(adata, gene_likelihood="gaussian", progress=False)
    with pytest.raises(KeyError, match="batch_key"):
        fl.tl.train_scvi(adata, batch_key="nope", progress=False)
