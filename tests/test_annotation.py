"""High-vs-low DGE and gene-set enrichment, against scipy / statsmodels / gseapy on real data."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as ss
from helpers import assert_uns_equal, interferon_features
from statsmodels.stats.multitest import multipletests

import featurelens as fl
from featurelens.stats import (
    average_ranks,
    bh_adjust,
    bh_adjust_grouped,
    binomial_sets,
    mannwhitney_sets,
    set_moments,
    welch_ttest,
)


# ---------------------------------------------------------------------------- statistics vs references
def test_welch_matches_scipy_including_degenerate_genes():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 6))
    b = rng.normal(0.5, 2.0, size=(30, 6))
    a[:, 4], b[:, 4] = 1.0, 1.0  # constant and equal: NaN
    a[:, 5], b[:, 5] = 1.0, 2.0  # constant and different: -inf, p = 0
    t, _, p = welch_ttest(12, a.mean(0), a.var(0, ddof=1), 30, b.mean(0), b.var(0, ddof=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ss.ttest_ind(a, b, equal_var=False)
    np.testing.assert_allclose(t, ref.statistic, rtol=1e-12)
    np.testing.assert_allclose(p, ref.pvalue, rtol=1e-10)


def test_bh_matches_statsmodels_with_nan_and_partial_families():
    rng = np.random.default_rng(1)
    P = rng.random((4, 60)) ** 3
    P[1, [3, 8]] = np.nan
    adj = bh_adjust(P, axis=1)
    for i in range(4):
        ok = ~np.isnan(P[i])
        np.testing.assert_allclose(adj[i, ok], multipletests(P[i, ok], method="fdr_bh")[1], rtol=1e-12)
    assert np.isnan(adj[1, [3, 8]]).all()
    groups = rng.integers(0, 5, 40)
    p = rng.random(40) ** 4
    got = bh_adjust_grouped(p, groups, n_tests=100)
    for g in range(5):
        sel = groups == g
        full = np.r_[p[sel], np.ones(100 - sel.sum())]
        np.testing.assert_allclose(got[sel], multipletests(full, method="fdr_bh")[1][: sel.sum()], rtol=1e-12)


def test_average_ranks_match_rankdata():
    v = np.round(np.random.default_rng(2).normal(size=(5, 200)), 1)
    ranks, tie = average_ranks(v)
    np.testing.assert_array_equal(ranks, ss.rankdata(v, axis=1))
    for i in range(5):
        _, counts = np.unique(v[i], return_counts=True)
        assert tie[i] == pytest.approx((counts**3 - counts).sum())


def test_mannwhitney_sets_match_scipy():
    rng = np.random.default_rng(3)
    v = np.round(rng.normal(size=(4, 300)), 1)  # many ties
    M = sp.random(300, 12, density=0.1, format="csc", random_state=4)
    M.data[:] = 1
    res = mannwhitney_sets(v, M)
    for i in range(4):
        for j in range(12):
            inside = M[:, j].toarray().ravel() > 0
            ref = ss.mannwhitneyu(v[i, inside], v[i, ~inside], method="asymptotic")
            assert res.u[i, j] == pytest.approx(ref.statistic)
            assert res.pval[i, j] == pytest.approx(ref.pvalue, rel=1e-10)
            assert res.auc[i, j] == pytest.approx(ref.statistic / (inside.sum() * (~inside).sum()))


def test_binomial_sets_match_binomtest():
    rng = np.random.default_rng(5)
    S = sp.csr_matrix((rng.random((6, 400)) < 0.05).astype(float))
    M = sp.random(400, 30, density=0.08, format="csc", random_state=6)
    M.data[:] = 1
    res = binomial_sets(S, M, universe=500)
    assert len(res.rows) > 20
    for r, c, k, n, pv, exp in zip(res.rows, res.sets, res.hits, res.n_selected, res.pval, res.expected, strict=True):
        p = M[:, c].sum() / 500
        assert pv == pytest.approx(ss.binomtest(int(k), int(n), p, alternative="greater").pvalue, rel=1e-9)
        assert exp == pytest.approx(n * p)
        assert k == (S[r].toarray().ravel() * M[:, c].toarray().ravel()).sum()


@pytest.mark.parametrize("sparse", [True, False])
def test_set_moments_match_direct_sums(sparse):
    rng = np.random.default_rng(7)
    X = rng.exponential(size=(80, 30)) * (rng.random((80, 30)) < 0.4)
    sets = [rng.choice(80, 15, replace=False) for _ in range(5)]
    rows = np.repeat(np.arange(5), 15)
    ind = sp.csr_matrix((np.ones(75), (rows, np.concatenate(sets))), shape=(5, 80))
    m = set_moments(sp.csr_matrix(X) if sparse else X, ind, transform=np.expm1)
    for s, idx in enumerate(sets):
        np.testing.assert_allclose(m.sum[s], X[idx].sum(0))
        np.testing.assert_allclose(m.var[s], X[idx].var(0, ddof=1), atol=1e-12)
        np.testing.assert_allclose(m.sum_transformed[s], np.expm1(X[idx]).sum(0))


# Kang 2018 fixtures (kang_sae, kang_dge, kang_enriched) live in conftest.py


def _high_low(adata, f, groupby=None):
    """High and low cells of feature position f, recomputed from the definition."""
    summ = adata.uns["sae"]["dge"]["summary"]
    name = f"f{f}"
    z = adata.obsm["X_sae"][:, f].toarray().ravel()
    pool = np.arange(adata.n_obs)
    if groupby is not None:
        pool = np.flatnonzero((adata.obs[groupby] == summ.loc[name, "group"]).to_numpy())
    zp = z[pool]
    high = pool[(zp >= np.quantile(zp, 0.99)) & (zp > 0)]
    if high.size < 10:
        high = np.sort(pool[np.argsort(-zp, kind="stable")[:10]])
    zero = pool[zp == 0]
    rng = np.random.default_rng([0, f])
    low = np.sort(rng.choice(zero, 1000, replace=False)) if zero.size > 1000 else zero
    return high, low


@pytest.mark.parametrize("groupby", [None, "cell_type"])
def test_high_vs_low_equals_scipy_and_statsmodels(kang_sae, groupby):
    adata = kang_sae.copy()
    feats = ["f0", "f5", "f9", "f17"]
    # the SAE paper's Welch test with its fold change; tests/test_calibration.py covers the other methods
    fl.tl.high_vs_low(
        adata, "sae", groupby=groupby, features=feats, method="t-test", min_high=10, min_detection=0.0,
        pseudocount=1e-9, progress=False,
    )  # fmt: skip
    summ = adata.uns["sae"]["dge"]["summary"]
    assert list(summ.index) == feats
    X = adata.X.toarray().astype(np.float64)
    checked = 0
    for name in feats:
        if summ.loc[name, "skipped"]:
            continue
        f = int(name[1:])
        high, low = _high_low(adata, f, groupby)
        np.testing.assert_array_equal(adata.uns["sae"]["dge"]["high_cells"][feats.index(name)].indices, high)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ss.ttest_ind(X[high], X[low], equal_var=False)
        ok = ~np.isnan(ref.pvalue)
        padj = np.full(ref.pvalue.shape, np.nan)
        padj[ok] = multipletests(ref.pvalue[ok], method="fdr_bh")[1]
        res = fl.get.dge(adata, "sae", name).set_index("gene")
        g = adata.var_names.get_indexer(res.index)
        assert len(res) == int((np.nan_to_num(padj, nan=1) < 0.05).sum())
        np.testing.assert_allclose(res["t"], ref.statistic[g], rtol=1e-6)
        np.testing.assert_allclose(res["pval"], ref.pvalue[g], rtol=1e-6)
        np.testing.assert_allclose(res["padj"], padj[g], rtol=1e-6)
        lfc = np.log2((np.expm1(X[high]).mean(0) + 1e-9) / (np.expm1(X[low]).mean(0) + 1e-9))
        np.testing.assert_allclose(adata.varm["sae_log2fc"][:, f], lfc, rtol=1e-5, atol=1e-5)
        assert summ.loc[name, "n_high"] == high.size and summ.loc[name, "n_low"] == low.size
        checked += 1
    assert checked >= 3


def test_high_vs_low_summary_skips_and_reproducibility(kang_dge, tmp_path):
    adata = kang_dge
    summ = adata.uns["sae"]["dge"]["summary"]
    assert {"n_high", "n_low", "group", "n_up", "n_down", "high_rule", "skipped"} <= set(summ.columns)
    skipped = summ[summ["skipped"] != ""]
    assert skipped["skipped"].str.contains(r"fewer than min_(?:high|low)|never active").all()
    assert (summ.loc[summ["skipped"] == "", "n_high"] >= 10).all()
    # results do not depend on which features are requested together
    sub = adata.copy()
    fl.tl.high_vs_low(sub, "sae", groupby="cell_type", features=["f9"], progress=False)
    a = fl.get.dge(adata, "sae", "f9").reset_index(drop=True)
    b = fl.get.dge(sub, "sae", "f9").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_categorical=False)
    adata.write_h5ad(tmp_path / "dge.h5ad")
    back = ad.read_h5ad(tmp_path / "dge.h5ad")
    assert_uns_equal(adata.uns["sae"]["dge"]["params"], back.uns["sae"]["dge"]["params"])
    pd.testing.assert_frame_equal(adata.uns["sae"]["dge"]["summary"], back.uns["sae"]["dge"]["summary"])
    np.testing.assert_array_equal(adata.varm["sae_log2fc"], back.varm["sae_log2fc"])
    assert (adata.uns["sae"]["dge"]["high_cells"] != back.uns["sae"]["dge"]["high_cells"]).nnz == 0


def test_high_vs_low_bad_input(kang_sae):
    adata = kang_sae.copy()
    with pytest.raises(ValueError, match=r"`layer='counts'` is not in adata.layers"):
        fl.tl.high_vs_low(adata, "sae", layer="counts")
    with pytest.raises(ValueError, match=r"`groupby='tissue'` is not a column"):
        fl.tl.high_vs_low(adata, "sae", groupby="tissue")
    with pytest.raises(ValueError, match="Unknown feature 'x1'"):
        fl.tl.high_vs_low(adata, "sae", features=["x1"])
    with pytest.raises(ValueError, match=r"`high_quantile` must lie in \(0.0, 1.0\)"):
        fl.tl.high_vs_low(adata, "sae", high_quantile=99)
    with pytest.raises(ValueError, match=r"run `fl\.tl\.high_vs_low"):
        fl.tl.enrich(adata, "sae")
    assert "dge" not in adata.uns["sae"]


# ---------------------------------------------------------------------------- enrichment
def _membership_for(adata, gene_sets="GO_BP"):
    from featurelens.tl._enrich import _universe, gene_set_membership

    measured, ids = _universe(adata, None, None)
    M, terms = gene_set_membership(gene_sets, ids, min_size=20, max_size=500)
    return measured, ids, M, terms


def test_enrichment_matches_scipy_per_term(kang_enriched):
    adata = kang_enriched
    res = adata.uns["sae"]["enrichment"]["results"]
    params = adata.uns["sae"]["enrichment"]["params"]
    measured, ids, M, terms = _membership_for(adata)
    assert params["n_terms"] == len(terms) and params["n_universe"] == len(ids)
    term_pos = {t: j for j, t in enumerate(terms["term"])}
    feat = res.loc[res["test"] == "binomial_up", "feature"].astype(str).value_counts().index[0]
    f = int(feat[1:])
    # MWU on the stored log2 fold changes, and BH over all terms of this feature
    lfc = adata.varm["sae_log2fc"][measured, f].astype(np.float64)
    rows = res[(res["feature"] == feat) & (res["test"] == "mwu")]
    pvals = []
    for j in range(len(terms)):
        inside = M[:, j].toarray().ravel() > 0
        pvals.append(ss.mannwhitneyu(lfc[inside], lfc[~inside], method="asymptotic").pvalue)
    pvals = np.asarray(pvals)
    padj = multipletests(pvals, method="fdr_bh")[1]
    idx = [term_pos[t] for t in rows["term"].astype(str)]
    assert len(rows) == int((pvals < 0.05).sum())
    np.testing.assert_allclose(rows["pval"], pvals[idx], rtol=1e-6)
    np.testing.assert_allclose(rows["padj"], padj[idx], rtol=1e-6)
    # binomial on the DEG list of this feature
    dge = fl.get.dge(adata, "sae", feat)
    up = dge[(dge["padj"] < 1e-5) & (dge["log2fc"] >= 1)]["gene"].astype(str)
    if len(up) == 0:
        up = dge[(dge["padj"] < 0.05) & (dge["log2fc"] > 0)]["gene"].astype(str)
    up_mask = ids.isin(set(up))
    rows = res[(res["feature"] == feat) & (res["test"] == "binomial_up")]
    for _, row in rows.head(20).iterrows():
        inside = M[:, term_pos[str(row["term"])]].toarray().ravel() > 0
        k, n = int((inside & up_mask).sum()), int(up_mask.sum())
        ref = ss.binomtest(k, n, inside.sum() / len(ids), alternative="greater").pvalue
        assert row["hits"] == k and row["n_deg"] == n
        assert row["pval"] == pytest.approx(ref, rel=1e-6)
        assert row["fold_enrichment"] == pytest.approx(k / (n * inside.sum() / len(ids)))


def test_interferon_feature_is_annotated_with_virus_terms(kang_enriched):
    """Acceptance: a feature whose high cells are >= 90% STIM has a virus / type I IFN term in its top 5."""
    hits = interferon_features(kang_enriched)
    assert hits, "no STIM feature with a virus / type I interferon term among its 5 best up-regulated terms"


def test_enrichment_agrees_with_gseapy_enrich(kang_enriched):
    import gseapy

    adata = kang_enriched
    _, ids, M, terms = _membership_for(adata)
    res = adata.uns["sae"]["enrichment"]["results"]
    summary = adata.uns["sae"]["enrichment"]["summary"]
    strict = summary.index[summary["deg_rule"].astype(str).str.contains("log2fc")].astype(str)
    up_terms = res.loc[(res["test"] == "binomial_up") & res["feature"].astype(str).isin(strict), "feature"]
    feat = up_terms.astype(str).value_counts().index[0]  # the feature with most terms, by the strict DEG rule
    dge = fl.get.dge(adata, "sae", feat)
    up = sorted(set(dge[(dge["padj"] < 1e-5) & (dge["log2fc"] >= 1)]["gene"].astype(str)) & set(ids))
    assert len(up) >= 10
    sets = {t: ids[M[:, j].indices].tolist() for j, t in enumerate(terms["term"])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enr = gseapy.enrich(gene_list=up, gene_sets=sets, background=list(ids), outdir=None, cutoff=1.0)
    theirs = enr.results.sort_values("P-value")["Term"].astype(str).tolist()[:5]
    ours = res[(res["feature"] == feat) & (res["test"] == "binomial_up")].nsmallest(5, "pval")["term"].astype(str)
    assert len(set(theirs) & set(ours)) >= 4, (theirs, list(ours))


def test_gsea_rows_join_the_table(kang_enriched):
    adata = kang_enriched.copy()
    res = adata.uns["sae"]["enrichment"]["results"]
    feat = res.loc[res["test"] == "binomial_up", "feature"].astype(str).value_counts().index[0]
    # GSEA is slow: 200 terms best by the rank test and 200 others keep the test short
    mwu = res[(res["feature"] == feat) & (res["test"] == "mwu")].nsmallest(200, "pval")["term"].astype(str)
    go = fl.datasets.go_gene_sets("BP")
    others = go.loc[~go["term"].isin(set(mwu)), "term"].drop_duplicates().sample(200, random_state=0)
    small = go[go["term"].isin(set(mwu) | set(others))]
    fl.tl.gsea(adata, "sae", [feat], small, permutation_num=100)
    new = fl.get.enrichment(adata, "sae", feat, test="gsea")
    assert len(new) > 0 and (new["test"] == "gsea").all()
    table = fl.get.enrichment(adata, "sae", feat)
    assert (table["test"] == "gsea").sum() == len(new)
    # the strongest GSEA terms (largest NES: up) overlap the strongest up terms of the rank test
    mwu_up = table[(table["test"] == "mwu") & (table["direction"] == "up")]
    mwu_top = set(mwu_up.nsmallest(30, "pval")["term"].astype(str))
    gsea_top = set(new.nlargest(30, "statistic")["term"].astype(str))
    assert len(mwu_top & gsea_top) >= 5
    fl.tl.gsea(adata, "sae", [feat], small, permutation_num=100)  # replaces, does not duplicate
    assert (fl.get.enrichment(adata, "sae", feat)["test"] == "gsea").sum() == len(new)


def test_gene_set_inputs_and_identifier_errors(kang_dge, tmp_path):
    adata = kang_dge.copy()
    feats = adata.uns["sae"]["dge"]["summary"].index[adata.uns["sae"]["dge"]["summary"]["skipped"] == ""][:5]
    go = fl.datasets.go_gene_sets("BP")
    small = go[go["term"].isin(go["term"].drop_duplicates().iloc[:3000])]
    as_dict = {t: g["gene"].tolist() for t, g in small.groupby("term", sort=False)}
    path = tmp_path / "bp.gmt.gz"
    fl.io.write_gmt(small, path)
    tables = []
    for gs in (small, as_dict, path):
        fl.tl.enrich(adata, "sae", gs, features=list(feats), progress=False)
        tables.append(fl.get.enrichment(adata, "sae")[["feature", "term", "test", "pval"]].astype(str))
    pd.testing.assert_frame_equal(tables[0], tables[2])
    pd.testing.assert_frame_equal(tables[0].drop(columns="term"), tables[1].drop(columns="term"))
    # Ensembl ids against symbols: a clear error that suggests gene_symbols=
    ens = kang_dge.copy()
    ens.var["symbol"] = ens.var_names
    ens.var_names = [f"ENSG{i:011d}" for i in range(ens.n_vars)]
    fl.tl.high_vs_low(ens, "sae", groupby="cell_type", progress=False)  # DGE tables keyed by the new ids
    with pytest.raises(ValueError, match=r"look like Ensembl ids: pass `gene_symbols=`"):
        fl.tl.enrich(ens, "sae", small, features=list(feats), progress=False)
    fl.tl.enrich(ens, "sae", small, gene_symbols="symbol", features=list(feats), progress=False)
    pd.testing.assert_frame_equal(
        fl.get.enrichment(ens, "sae")[["feature", "term", "test", "pval"]].astype(str), tables[0]
    )
    with pytest.raises(ValueError, match=r"`gene_symbols='gene_name'` is not a column of adata.var"):
        fl.tl.enrich(ens, "sae", small, gene_symbols="gene_name")
    with pytest.raises(ValueError, match="`methods` must be one or several of 'binomial', 'mwu'"):
        fl.tl.enrich(adata, "sae", small, methods=("fisher",))


def test_enrichment_survives_h5ad(kang_enriched, tmp_path):
    kang_enriched.write_h5ad(tmp_path / "e.h5ad")
    back = ad.read_h5ad(tmp_path / "e.h5ad")
    a = kang_enriched.uns["sae"]["enrichment"]
    b = back.uns["sae"]["enrichment"]
    pd.testing.assert_frame_equal(a["results"], b["results"])
    pd.testing.assert_frame_equal(a["summary"], b["summary"])
    assert_uns_equal(a["params"], b["params"])


@pytest.mark.parametrize("compiled", [True, False])
def test_compiled_and_numpy_paths_agree(monkeypatch, compiled):
    """The numba kernels and their NumPy fallbacks give the references' results."""
    from featurelens.stats import _kernels

    if not compiled:
        monkeypatch.setattr(_kernels, "HAVE_NUMBA", False)
    rng = np.random.default_rng(8)
    v = np.round(rng.normal(size=(3, 120)), 1)
    ranks, tie = average_ranks(v)
    np.testing.assert_array_equal(ranks, ss.rankdata(v, axis=1))
    assert tie[0] == pytest.approx(sum(c**3 - c for c in np.unique(v[0], return_counts=True)[1]))
    P = rng.random((3, 70)) ** 2
    P[2, 5] = np.nan
    adj = bh_adjust(P, axis=1)
    for i in range(3):
        ok = ~np.isnan(P[i])
        np.testing.assert_allclose(adj[i, ok], multipletests(P[i, ok], method="fdr_bh")[1], rtol=1e-12)
    groups = np.sort(rng.integers(0, 4, 50))  # sorted groups: the segmented path
    p = rng.random(50) ** 3
    got = bh_adjust_grouped(p, groups, n_tests=80)
    for g in range(4):
        sel = groups == g
        full = np.r_[p[sel], np.ones(80 - sel.sum())]
        np.testing.assert_allclose(got[sel], multipletests(full, method="fdr_bh")[1][: sel.sum()], rtol=1e-12)
