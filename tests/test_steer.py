"""Steering (set a feature, decode, paired DGE) and MuData support."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as ss
from helpers import assert_uns_equal
from statsmodels.stats.multitest import multipletests

import featurelens as fl
from featurelens.models.decoders import RidgeDecoder
from featurelens.models.preprocess import Preprocess
from featurelens.stats import paired_ttest

ISGS = ["ISG15", "IFI6", "IFIT3", "MX1", "LY6E"]
ALL_ISGS = {*ISGS, "IFIT1", "IFIT2", "ISG20", "IFITM3", "IFI27", "HERPUD1", "APOBEC3A", "CCL2", "MX2", "OAS1", "RSAD2"}


def _stim_mono_feature(adata, key="sae") -> str:
    """The feature most selective for STIM within CD14 monocytes (largest mean activation difference)."""
    Z = adata.obsm[f"X_{key}"].toarray()
    mono = (adata.obs["cell_type"] == "CD14 Mono").to_numpy()
    stim = (adata.obs["condition"] == "STIM").to_numpy()
    diff = Z[mono & stim].mean(0) - Z[mono & ~stim].mean(0)
    return str(adata.uns[key]["features"].index[int(np.argmax(diff))])


@pytest.fixture(scope="module")
def steered(kang_enriched):
    adata = kang_enriched.copy()
    f = _stim_mono_feature(adata)
    fl.tl.steer(
        adata, "sae", f, groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'", centroids="condition"
    )
    return adata, f


# ---------------------------------------------------------------------------- acceptance on Kang 2018
def test_steering_an_interferon_feature_induces_isgs_and_moves_cells_to_stim(steered):
    adata, f = steered
    run = adata.uns["sae"]["steering"][f]
    res = fl.get.steering(adata, "sae", f).set_index("gene")
    # interferon-stimulated genes go up, with a bootstrap interval away from 0, among the top 2% of genes by effect
    assert (res.loc[ISGS, "delta_low"] > 0).all() and (res.loc[ISGS, "direction"] == "up").all()
    rank = res["delta"].rank(ascending=False)
    assert (rank[ISGS] <= 0.02 * len(res)).all(), rank[ISGS]
    assert (res.loc[ISGS, "log2fc"] > 0.5).all()
    # no p-values for a deterministic decoder; the default ranking and the fold changes are led by predictable ISGs
    assert res["padj"].isna().all() and run["params"]["method"] == "effect"
    table = fl.get.steering(adata, "sae", f)
    top = table[table["direction"] == "up"].head(20)
    by_lfc = table.nlargest(20, "log2fc")
    for t in (top, by_lfc):
        assert (t["r2"] >= 0.1).all() and len(set(t["gene"]) & ALL_ISGS) >= 3, list(t["gene"])
    assert (table["rank"] == np.arange(1, len(table) + 1)).all() and table["predictable"].is_monotonic_decreasing
    # steered CTRL monocytes move toward the STIM centroid and mostly switch their nearest centroid
    mv = run["movement"]
    assert mv.loc["STIM", "shift_toward"] > 0 and mv.loc["STIM", "dist_after"] < mv.loc["STIM", "dist_before"]
    assert mv.loc["STIM", "frac_nearest_after"] > 0.5 > mv.loc["STIM", "frac_nearest_before"]
    cells = run["cells"]
    assert run["params"]["frac_nearest_changed"] == pytest.approx(
        (cells["nearest_before"] != cells["nearest_after"]).mean()
    )
    sel = adata.obs_names.isin(cells["obs_name"])
    assert (
        sel.sum()
        == run["params"]["n_cells"]
        == ((adata.obs["cell_type"] == "CD14 Mono") & (adata.obs["condition"] == "CTRL")).sum()
    )
    assert run["params"]["value"] == pytest.approx(adata.obsm["X_sae"][:, int(f[1:])].max())


def test_steering_arithmetic_and_statistics(steered):
    """x' - x is the feature direction times (v - z) through the preprocessing; tests match scipy/statsmodels."""
    adata, f = steered
    adata = adata.copy()
    fl.tl.steer(
        adata, "sae", f, groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'", method="t-test",
        key_added="tt", progress=False,
    )  # fmt: skip
    run = adata.uns["sae"]["steering"]["tt"]
    pos = adata.obs_names.get_indexer(run["cells"]["obs_name"])
    X0 = adata.obsm["X_pca"][pos].astype(np.float64)
    X1 = run["embedding"].astype(np.float64)
    pre = Preprocess.from_dict(adata.uns["sae"]["preprocess"])
    Y0, _ = pre.transform(X0)
    Y1, _ = pre.transform(X1)
    j = adata.uns["sae"]["features"].index.get_loc(f)
    d = adata.uns["sae"]["decoder"][j]
    expected = (run["params"]["value"] - run["cells"]["z"].to_numpy())[:, None] * d[None, :]
    np.testing.assert_allclose(Y1 - Y0, expected, rtol=1e-4, atol=1e-4)
    # linear decoder = ridge regression, equal to scikit-learn
    from sklearn.linear_model import Ridge

    genes = ["ISG15", "IFI6", "CD14", "LYZ", "S100A8"]
    g = adata.var_names.get_indexer(genes)
    E = adata.X[:, g].toarray()
    ref = Ridge(alpha=1.0).fit(adata.obsm["X_pca"].astype(np.float64), E)
    model = RidgeDecoder.fit(adata.obsm["X_pca"], adata.X, alpha=1.0)
    np.testing.assert_allclose(model.coef[:, g], ref.coef_.T, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.intercept[g], ref.intercept_, rtol=1e-6, atol=1e-9)
    from sklearn.metrics import r2_score

    # R² on 20 % held-out cells of a fit on the others (the decoder's own seed)
    test = np.zeros(adata.n_obs, bool)
    test[np.random.default_rng(0).choice(adata.n_obs, round(0.2 * adata.n_obs), replace=False)] = True
    Xp = adata.obsm["X_pca"].astype(np.float64)
    part = Ridge(alpha=1.0).fit(Xp[~test], E[~test])
    r2 = r2_score(E[test], part.predict(Xp[test]), multioutput="raw_values")
    res = fl.get.steering(adata, "sae", "tt").set_index("gene")
    np.testing.assert_allclose(res.loc[genes, "r2"], r2, rtol=1e-6)
    # paired t-test on the (clipped) predictions, BH over genes
    P0 = np.maximum(ref.predict(X0), 0)
    P1 = np.maximum(ref.predict(X1), 0)
    t = ss.ttest_rel(P1, P0)
    np.testing.assert_allclose(res.loc[genes, "statistic"], t.statistic, rtol=1e-6)
    np.testing.assert_allclose(res.loc[genes, "pval"], t.pvalue, rtol=1e-6, atol=1e-300)
    np.testing.assert_allclose(res.loc[genes, "mean_steered"], P1.mean(0), rtol=1e-6)
    lfc = np.log2((np.expm1(P1).mean(0) + 1) / (np.expm1(P0).mean(0) + 1))  # one count per 10,000
    np.testing.assert_allclose(res.loc[genes, "log2fc"], lfc, rtol=1e-6)
    # the bootstrap intervals: the same resamples of the steered cells, recomputed
    n = P0.shape[0]
    W = np.random.default_rng(0).multinomial(n, np.full(n, 1 / n), size=200) / n
    boot = W @ (P1 - P0)
    np.testing.assert_allclose(res.loc[genes, "delta_low"], np.percentile(boot, 2.5, axis=0), rtol=1e-6)
    np.testing.assert_allclose(res.loc[genes, "delta_high"], np.percentile(boot, 97.5, axis=0), rtol=1e-6)
    lboot = np.log2((W @ np.expm1(P1) + 1) / (W @ np.expm1(P0) + 1))
    np.testing.assert_allclose(res.loc[genes, "log2fc_high"], np.percentile(lboot, 97.5, axis=0), rtol=1e-6)
    assert (res["delta_low"] <= res["delta"] + 1e-12).all() and (res["delta"] <= res["delta_high"] + 1e-12).all()
    ok = res["pval"].notna()
    np.testing.assert_allclose(res.loc[ok, "padj"], multipletests(res.loc[ok, "pval"], method="fdr_bh")[1], rtol=1e-6)


def test_paired_ttest_matches_scipy_including_degenerate_columns():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 6))
    B = A + rng.normal(0.2, 1.0, size=(30, 6))
    B[:, 4] = A[:, 4] + 0.5  # constant difference
    B[:, 5] = A[:, 5]  # no difference
    mean, t, p = paired_ttest(B, A)
    ref = ss.ttest_rel(B[:, :4], A[:, :4])
    np.testing.assert_allclose(t[:4], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(p[:4], ref.pvalue, rtol=1e-10)
    assert t[4] == np.inf and p[4] == 0 and np.isnan(t[5]) and np.isnan(p[5])
    np.testing.assert_allclose(mean, (B - A).mean(0))
    with pytest.raises(ValueError, match="at least 2"):
        paired_ttest(B[:1], A[:1])


def test_steering_wilcoxon_pca_and_callable_decoders(steered):
    adata, f = steered
    adata = adata.copy()
    kw = {"groupby": "cell_type", "group": "CD14 Mono", "cells": "condition == 'CTRL'"}
    fl.tl.steer(adata, "sae", f, method="wilcoxon", key_added="w", **kw)
    w = fl.get.steering(adata, "sae", "w").set_index("gene")
    tt = fl.get.steering(adata, "sae", f).set_index("gene")
    run = adata.uns["sae"]["steering"]["w"]
    pos = adata.obs_names.get_indexer(run["cells"]["obs_name"])
    model = RidgeDecoder.fit(adata.obsm["X_pca"], adata.X)
    gi = adata.var_names.get_indexer(ISGS)
    P0 = np.maximum(model.predict(adata.obsm["X_pca"][pos])[:, gi], 0)
    P1 = np.maximum(model.predict(run["embedding"])[:, gi], 0)
    for k, gene in enumerate(ISGS):
        ref = ss.wilcoxon(P1[:, k] - P0[:, k])
        assert w.loc[gene, "statistic"] == pytest.approx(ref.statistic)
        assert w.loc[gene, "pval"] == pytest.approx(ref.pvalue, rel=1e-6)
    np.testing.assert_allclose(w.loc[ISGS, "delta"], tt.loc[ISGS, "delta"], rtol=1e-9)
    # PCA decoder: the loadings plus gene means, only for genes the PCA used
    fl.tl.steer(adata, "sae", f, decoder="pca", key_added="p", **kw)
    p = fl.get.steering(adata, "sae", "p").set_index("gene")
    hvg = adata.var_names[adata.var["highly_variable"]]
    assert set(p.index) == set(hvg)
    genes = [x for x in ISGS if x in set(hvg)]
    assert genes
    gi = adata.var_names.get_indexer(genes)
    PCs = adata.varm["PCs"][gi]
    mean = np.asarray(adata.X[:, gi].mean(0)).ravel()
    pred1 = np.maximum(run["embedding"].astype(np.float64) @ PCs.T + mean, 0)
    np.testing.assert_allclose(p.loc[genes, "mean_steered"], pred1.mean(0), rtol=1e-5)
    assert (p.loc[genes, "direction"] == "up").all()
    assert 0 < adata.uns["sae"]["steering"]["p"]["params"]["decoder_r2"] < 1
    # a callable decoder (here a fixed linear map) gives the same result as the built-in linear one
    fl.tl.steer(adata, "sae", f, decoder=lambda Z: np.maximum(model.predict(Z), 0), log1p=True, key_added="c", **kw)
    c = fl.get.steering(adata, "sae", "c").set_index("gene")
    np.testing.assert_allclose(c.loc[ISGS, "statistic"], tt.loc[ISGS, "statistic"], rtol=1e-5)
    np.testing.assert_allclose(c.loc[ISGS, "log2fc"], tt.loc[ISGS, "log2fc"], rtol=1e-5)


def test_steering_deseq2_on_a_subsample(kang_enriched):
    adata = kang_enriched[:, kang_enriched.var["highly_variable"].to_numpy()].copy()
    f = _stim_mono_feature(adata)
    model = RidgeDecoder.fit(adata.obsm["X_pca"], adata.X)
    size = 2e4  # reads per cell

    def counts(Z):  # expected counts of a cell of average depth
        return np.expm1(np.maximum(model.predict(Z), 0)) * size / 1e4

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fl.tl.steer(
            adata,
            "sae",
            f,
            groupby="cell_type",
            group="CD14 Mono",
            cells="condition == 'CTRL'",
            decoder=counts,
            method="deseq2",
            n_deseq=12,
        )
    res = fl.get.steering(adata, "sae", f).set_index("gene")
    params = adata.uns["sae"]["steering"][f]["params"]
    assert params["method"] == "deseq2" and params["n_deseq"] == 12
    tested = res["pval"].notna()
    assert tested.sum() > 100 and res.loc[tested, "pval"].between(0, 1).all()
    isg = [g for g in ISGS if g in res.index and tested[g]]
    assert isg and (res.loc[isg, "log2fc"] > 0).all() and (res.loc[isg, "padj"] < 0.05).all()


def test_steering_bad_input(steered):
    adata, f = steered
    adata = adata.copy()
    with pytest.raises(ValueError, match="Unknown feature"):
        fl.tl.steer(adata, "sae", "f99999")
    with pytest.raises(ValueError, match="out of range"):
        fl.tl.steer(adata, "sae", 10**6)
    with pytest.raises(ValueError, match="selection is empty"):
        fl.tl.steer(adata, "sae", f, cells="condition == 'nope'")
    with pytest.raises(ValueError, match="not a valid query"):
        fl.tl.steer(adata, "sae", f, cells="condition === 1")
    with pytest.raises(ValueError, match=r"not in adata\.obs"):
        fl.tl.steer(adata, "sae", f, groupby="cell_type", group="Martian")
    with pytest.raises(ValueError, match="one entry per cell"):
        fl.tl.steer(adata, "sae", f, cells=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="expected \\(cells, genes\\)"):
        fl.tl.steer(adata, "sae", f, cells=np.arange(5), decoder=lambda Z: Z)
    choices = "'effect', 'posterior', 't-test', 'wilcoxon', 'deseq2'"
    with pytest.raises(ValueError, match=f"`method` must be one of {choices}"):
        fl.tl.steer(adata, "sae", f, method="anova")
    with pytest.raises(ValueError, match="`decoder` must be one of"):
        fl.tl.steer(adata, "sae", f, decoder="umap")
    no_pcs = adata.copy()
    del no_pcs.varm["PCs"]
    with pytest.raises(ValueError, match=r"varm\['PCs'\]"):
        fl.tl.steer(no_pcs, "sae", f, decoder="pca", cells=np.arange(20))
    dead = adata.uns["sae"]["features"].index[np.asarray(adata.obsm["X_sae"].max(0).todense()).ravel() == 0]
    if len(dead):
        with pytest.raises(ValueError, match="never active"):
            fl.tl.steer(adata, "sae", dead[0])
    with pytest.raises(ValueError, match="`feature` takes one feature"):
        fl.tl.steer(adata, "sae", [f, f])
    with pytest.raises(ValueError, match="No steering run"):
        fl.get.steering(adata, "sae", "nope")


def test_steering_round_trip(steered, tmp_path):
    adata, _ = steered
    adata.write_h5ad(tmp_path / "s.h5ad")
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    assert_uns_equal(adata.uns["sae"]["steering"], back.uns["sae"]["steering"])


# ---------------------------------------------------------------------------- MuData
@pytest.fixture(scope="module")
def kang_mudata(kang_sae):
    import mudata as md

    src = kang_sae
    rna = ad.AnnData(src.X.copy(), obs=pd.DataFrame(index=src.obs_names), var=pd.DataFrame(index=src.var_names))
    rna.uns["log1p"] = dict(src.uns["log1p"])
    # a second, derived modality: mean expression of 30 GO BP gene sets per cell ("pathway activity")
    gs = fl.datasets.go_gene_sets("BP", min_size=20, max_size=200)
    terms = pd.unique(gs["term"])[:30]
    M = np.stack([src.var_names.isin(gs.loc[gs["term"] == t, "gene"]) for t in terms], axis=1).astype(np.float64)
    scores = np.asarray(src.X @ M) / np.maximum(M.sum(0), 1)
    path = ad.AnnData(scores.astype(np.float32), obs=pd.DataFrame(index=src.obs_names), var=pd.DataFrame(index=terms))
    mdata = md.MuData({"rna": rna, "pathways": path})
    for c in ("cell_type", "condition"):
        mdata.obs[c] = src.obs[c].to_numpy()
    mdata.obsm["X_pca"] = src.obsm["X_pca"].copy()
    return mdata


def test_mudata_pipeline_equals_anndata(kang_mudata, kang_sae, tmp_path):
    import mudata as md

    mdata = kang_mudata.copy()
    fl.tl.sae(mdata, "X_pca", n_steps=1000, progress=False)  # as the kang_sae fixture
    assert (mdata.obsm["X_sae"] != kang_sae.obsm["X_sae"]).nnz == 0
    fl.tl.feature_types(mdata, "sae", "cell_type")
    pd.testing.assert_frame_equal(mdata.uns["sae"]["features"], kang_sae.uns["sae"]["features"])
    fl.tl.high_vs_low(mdata, "sae", groupby="cell_type", mod="rna", progress=False)
    ref = kang_sae.copy()
    fl.tl.high_vs_low(ref, "sae", groupby="cell_type", progress=False)
    pd.testing.assert_frame_equal(fl.get.dge(mdata, "sae", mod="rna"), fl.get.dge(ref, "sae"))
    np.testing.assert_array_equal(mdata["rna"].varm["sae_log2fc"], ref.varm["sae_log2fc"])
    # gene-level results live in the modality; the dictionary stays on the MuData
    assert "dge" in mdata["rna"].uns["sae"] and "dge" not in mdata.uns["sae"]
    # the second modality: the same high and low cells, compared on pathway scores
    fl.tl.high_vs_low(mdata, "sae", groupby="cell_type", mod="pathways", log1p=False, store_pval=1.0, progress=False)
    direct = ad.AnnData(mdata["pathways"].X.copy(), obs=mdata.obs.copy(), var=mdata["pathways"].var.copy())
    direct.obsm["X_sae"] = mdata.obsm["X_sae"]
    direct.uns["sae"] = {k: v for k, v in mdata.uns["sae"].items()}
    fl.tl.high_vs_low(direct, "sae", groupby="cell_type", log1p=False, store_pval=1.0, progress=False)
    pd.testing.assert_frame_equal(fl.get.dge(mdata, "sae", mod="pathways"), fl.get.dge(direct, "sae"))
    hc_rna = mdata["rna"].uns["sae"]["dge"]["high_cells"]
    hc_path = mdata["pathways"].uns["sae"]["dge"]["high_cells"]
    assert (hc_rna != hc_path).nnz == 0  # same cells, other modality
    # a pathway contrast checked by hand against scipy's Welch test
    res = fl.get.dge(mdata, "sae", mod="pathways")
    row = res.iloc[0]
    i = list(mdata["pathways"].uns["sae"]["dge"]["summary"].index).index(row["feature"])
    high = hc_path[i].indices
    n_low = int(mdata["pathways"].uns["sae"]["dge"]["summary"].loc[row["feature"], "n_low"])
    assert n_low > 0 and high.size > 0
    # enrichment and steering through mod=
    fl.tl.enrich(mdata, "sae", "GO_BP", mod="rna", progress=False)
    assert "enrichment" in mdata["rna"].uns["sae"]
    f = _stim_mono_feature(mdata)
    fl.tl.steer(mdata, "sae", f, mod="rna", groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'")
    st = fl.get.steering(mdata, "sae", f, mod="rna").set_index("gene")
    assert (st.loc[ISGS, "direction"] == "up").all()
    # everything survives h5mu
    mdata.write_h5mu(tmp_path / "m.h5mu")
    back = md.read_h5mu(tmp_path / "m.h5mu")
    assert_uns_equal(mdata.uns["sae"], back.uns["sae"])
    assert_uns_equal(mdata["rna"].uns["sae"], back["rna"].uns["sae"])
    assert sp.issparse(back.obsm["X_sae"]) or back.obsm["X_sae"].shape == mdata.obsm["X_sae"].shape
    with pytest.raises(ValueError, match="not a modality"):
        fl.tl.high_vs_low(mdata, "sae", mod="atac")
    with pytest.raises(ValueError, match="only used with a MuData"):
        fl.tl.high_vs_low(ref, "sae", mod="rna")
    out = fl.tl.feature_stats(mdata, "sae", copy=True)  # a new MuData; the one passed is left as it was
    assert type(out) is type(mdata) and "n_active" in out.uns["sae"]["features"]
    assert "n_active" not in mdata.uns["sae"]["features"]
