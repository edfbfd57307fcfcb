from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
from helpers import data_path, planted_dictionary


@pytest.fixture(scope="session")
def kang_pca() -> ad.AnnData:
    """Kang 2018 PBMCs, log-normalised, 30-PC PCA (computed once per session)."""
    import scanpy as sc

    import featurelens as fl

    adata = fl.datasets.kang2018()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=30, random_state=0)
    return adata


@pytest.fixture
def kang(kang_pca) -> ad.AnnData:
    """A fresh copy of the Kang object for tests that write to it."""
    return kang_pca.copy()


@pytest.fixture(scope="session")
def papalexi_pca() -> ad.AnnData:
    """Papalexi 2021 ECCITE-seq screen, log-normalised, 20-PC PCA."""
    import scanpy as sc

    adata = ad.read_h5ad(data_path("scrna", "papalexi2021_eccite_lowmoi_counts.h5ad"))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.pca(adata, n_comps=20, random_state=0)
    return adata


@pytest.fixture
def small_adata() -> ad.AnnData:
    """A small synthetic AnnData with a planted sparse embedding in obsm['X_emb']."""
    X, _, _ = planted_dictionary(n=400, d=16, m=32, s=2, seed=1)
    adata = ad.AnnData(np.zeros((X.shape[0], 3), dtype=np.float32))
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    adata.obs["group"] = np.where(np.arange(adata.n_obs) % 4 == 0, "ctrl", "pert")
    adata.obsm["X_emb"] = X
    return adata


@pytest.fixture(scope="session")
def kang_sae():
    """Kang 2018 on 2,000 HVGs, 30 PCs, a default TopK SAE with cell-type feature types."""
    import featurelens as fl

    adata = fl.datasets.kang2018(preprocess=True)  # the same steps: normalise, log1p, 2,000 HVGs, 30 PCs
    # 1,000 steps instead of the default 1,500: every assertion on what it learns holds (and is faster)
    fl.tl.sae(adata, "X_pca", n_steps=1000, progress=False)
    fl.tl.feature_types(adata, "sae", "cell_type")
    return adata


@pytest.fixture(scope="session")
def kang_dge(kang_sae):
    """kang_sae with within-cell-type high-vs-low DGE."""
    import featurelens as fl

    adata = kang_sae.copy()
    fl.tl.high_vs_low(adata, "sae", groupby="cell_type", progress=False)
    return adata


@pytest.fixture(scope="session")
def kang_enriched(kang_dge):
    """kang_dge with GO BP enrichment (binomial and MWU)."""
    import featurelens as fl

    adata = kang_dge.copy()
    fl.tl.enrich(adata, "sae", "GO_BP", progress=False)
    return adata
