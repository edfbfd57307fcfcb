"""High-vs-low DGE: every method against its reference, size on null features, honest fold changes."""

from __future__ import annotations

import copy
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
from featurelens.stats._contrast import ranksum_test


def _null_dictionary(adata: ad.AnnData, size: int, n: int = 20, seed: int = 0) -> ad.AnnData:
    """``n`` "features" active in ``size`` random cells each: no biology at all."""
    rng = np.random.default_rng(seed)
    Z = np.zeros((adata.n_obs, n), np.float32)
    for j in range(n):
        Z[rng.choice(adata.n_obs, size, replace=False), j] = rng.uniform(0.5, 1.5, size)
    out = adata.copy()
    out.obsm["X_null"] = sp.csr_matrix(Z)
    out.uns["null"] = {
        "params": {"method": "sae", "architecture": "topk", "use_rep": "X_pca", "n_inputs": 30, "n_features": n},
        "decoder": np.zeros((n, 30), np.float32),
        "features": pd.DataFrame(index=[f"f{i}" for i in range(n)]),
        "preprocess": {"normalize": "none", "mean": np.zeros(30), "scale": np.ones(30), "unit_norm": False},
    }
    return out


@pytest.fixture(scope="module")
def kang_log():
    return fl.datasets.kang2018(preprocess=True)


def test_ranksum_kernel_equals_scipy_with_ties_and_zeros():
    rng = np.random.default_rng(0)
    X = rng.poisson(0.4, size=(300, 120)).astype(float) * (rng.random((300, 120)) < 0.6)
    X[:, 3] = 0.0
    X[:, 4] = 2.5
    X[:40, 5] = 1.0  # present only in the first group
    for n1 in (1, 7, 40, 299):
        U, z, p = ranksum_test(sp.csr_matrix(X), n1)
        for g in range(X.shape[1]):
            if np.ptp(X[:, g]) == 0:
                assert p[g] == 1.0 and z[g] == 0.0
                continue
            ref = ss.mannwhitneyu(X[:n1, g], X[n1:, g], method="asymptotic")
            assert U[g] == pytest.approx(ref.statistic, rel=1e-12)
            assert p[g] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    with pytest.raises(ValueError, match="non-negative"):
        ranksum_test(sp.csr_matrix(-X), 5)


@pytest.mark.parametrize("method", ["wilcoxon", "t-test_overestim_var"])
def test_methods_equal_their_references(kang_sae, method):
    adata = kang_sae.copy()
    feats = ["f0", "f9"]
    fl.tl.high_vs_low(adata, "sae", groupby="cell_type", features=feats, method=method, progress=False)
    summ = adata.uns["sae"]["dge"]["summary"]
    X = adata.X.toarray().astype(np.float64)
    for i, name in enumerate(feats):
        if summ.loc[name, "skipped"]:
            continue
        high = adata.uns["sae"]["dge"]["high_cells"][i].indices
        assert high.size >= 30 and summ.loc[name, "n_high"] == high.size  # min_high 30 by default
        res = fl.get.dge(adata, "sae", name).set_index("gene")
        low = _low_cells(adata, name, summ.loc[name, "group"])
        det = np.maximum((X[high] > 0).mean(0), (X[low] > 0).mean(0)) >= 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == "wilcoxon":
                ref = ss.mannwhitneyu(X[high], X[low], method="asymptotic", axis=0)
                stat = (ref.statistic - high.size * low.size / 2) / 1.0  # U; compared through the p-value below
            else:  # scanpy's t-test_overestim_var: the rest's variance over the group's size
                ref = ss.ttest_ind_from_stats(
                    X[high].mean(0), X[high].std(0, ddof=1), high.size, X[low].mean(0), X[low].std(0, ddof=1),
                    high.size, equal_var=False,
                )  # fmt: skip
                stat = ref.statistic
        pval = np.where(det, ref.pvalue, np.nan)
        padj = np.full(pval.shape, np.nan)
        ok = np.isfinite(pval)
        padj[ok] = multipletests(pval[ok], method="fdr_bh")[1]
        g = adata.var_names.get_indexer(res.index)
        assert len(res) == int((np.nan_to_num(padj, nan=1) < 0.05).sum())
        np.testing.assert_allclose(res["pval"], pval[g], rtol=1e-6)
        np.testing.assert_allclose(res["padj"], padj[g], rtol=1e-6)
        if method != "wilcoxon":
            np.testing.assert_allclose(res["t"], stat[g], rtol=1e-6)
        # fold changes on the linear scale with one count per 10,000 as pseudocount
        lfc = np.log2((np.expm1(X[high]).mean(0) + 1) / (np.expm1(X[low]).mean(0) + 1))
        np.testing.assert_allclose(adata.varm["sae_log2fc"][:, int(name[1:])], lfc, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res["frac_high"], (X[high] > 0).mean(0)[g], rtol=1e-12)
    assert adata.uns["sae"]["dge"]["params"]["pseudocount"] == 1.0
    assert adata.uns["sae"]["dge"]["params"]["method"] == method


def _low_cells(adata, name: str, group) -> np.ndarray:
    """The low cells of a feature, recomputed from the definition (zero activation, 1,000 drawn)."""
    f = int(name[1:])
    z = adata.obsm["X_sae"][:, f].toarray().ravel()
    pool = np.flatnonzero((adata.obs["cell_type"] == group).to_numpy())
    zero = pool[z[pool] == 0]
    rng = np.random.default_rng([0, f])
    return np.sort(rng.choice(zero, 1000, replace=False)) if zero.size > 1000 else zero


def test_pseudobulk_equals_a_paired_t_test_over_samples(kang_log):
    adata = _null_dictionary(kang_log, 400, n=2, seed=3)
    adata.obs["donor"] = pd.Categorical(np.random.default_rng(1).choice(["d1", "d2", "d3", "d4"], adata.n_obs))
    fl.tl.high_vs_low(
        adata, "null", method="pseudobulk", sample_key="donor", high_quantile=1e-9, min_detection=0.0,
        store_pval=1.0, progress=False,
    )  # fmt: skip
    res = fl.get.dge(adata, "null", "f0").set_index("gene")
    high = adata.uns["null"]["dge"]["high_cells"][0].indices
    zero = np.setdiff1d(np.arange(adata.n_obs), np.flatnonzero(adata.obsm["X_null"][:, 0].toarray()))
    low = np.sort(np.random.default_rng([0, 0]).choice(zero, 1000, replace=False))
    E = np.expm1(adata.X.toarray().astype(np.float64))
    d = adata.obs["donor"].to_numpy()
    a, b = [], []
    for s in ["d1", "d2", "d3", "d4"]:
        for cells, out in ((high, a), (low, b)):
            bulk = E[cells[d[cells] == s]].sum(0)
            out.append(np.log2(bulk / bulk.sum() * 1e6 + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ss.ttest_rel(np.array(a), np.array(b))
    g = adata.var_names.get_indexer(res.index)
    tested = np.isfinite(ref.pvalue)
    np.testing.assert_allclose(res["pval"], ref.pvalue[g], rtol=1e-6)
    assert len(res) == int(tested.sum())


def test_default_method_holds_its_size_on_null_features(kang_log):
    """20 features of random cells: the default gives no DEG; Welch's t-test gives hundreds (the old default)."""
    for size in (10, 50):
        adata = _null_dictionary(kang_log, size)
        fl.tl.high_vs_low(adata, "null", high_quantile=1e-9, min_high=min(size, 30), progress=False)
        summ = adata.uns["null"]["dge"]["summary"]
        assert (summ["n_high"] == size).all()
        assert (summ["n_up"] + summ["n_down"]).max() == 0, summ
        fl.tl.high_vs_low(adata, "null", method="t-test", high_quantile=1e-9, min_high=min(size, 30), progress=False)
        welch = adata.uns["null"]["dge"]["summary"]
        assert ((welch["n_up"] + welch["n_down"]) > 0).mean() > 0.9  # the miscalibration the default removes


def test_fold_changes_are_bounded_by_the_pseudocount(kang_dge):
    lfc = kang_dge.varm["sae_log2fc"]
    assert np.nanmax(np.abs(lfc)) < 15
    res = fl.get.dge(kang_dge, "sae")
    bound = np.log2(np.maximum(res["mean_high"], res["mean_low"]) + 1)
    assert (np.abs(res["log2fc"]) <= bound + 1e-9).all()
    assert (res["frac_high"].between(0, 1) & res["frac_low"].between(0, 1)).all()


def test_calibrated_dge_still_finds_the_interferon_response(kang_enriched):
    from helpers import interferon_features

    feats = interferon_features(kang_enriched)
    assert feats, "no interferon feature with a virus / type I IFN term among its top 5 (padj < 1e-6)"
    isgs = {"ISG15", "IFI6", "IFIT3", "MX1", "LY6E", "IFIT1", "ISG20", "IFITM3"}
    dge = fl.get.dge(kang_enriched, "sae", feats[0])
    top = set(dge[dge["direction"] == "up"].nsmallest(30, "padj")["gene"].astype(str))
    assert len(top & isgs) >= 4, top


def test_bad_dge_options_give_clear_errors(kang_log):
    adata = _null_dictionary(kang_log, 50, n=2)
    before = copy.deepcopy(dict(adata.uns))
    with pytest.raises(ValueError, match="`method` must be one of 't-test_overestim_var', 't-test', 'wilcoxon'"):
        fl.tl.high_vs_low(adata, "null", method="anova")
    with pytest.raises(ValueError, match=r"`min_high=1995` plus `min_low=10` exceeds the 2000 cells"):
        fl.tl.high_vs_low(adata, "null", min_high=1995)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    with pytest.raises(ValueError, match=r"exceeds the 643 cells of the largest group of adata.obs\['cell_type'\]"):
        fl.tl.high_vs_low(adata, "null", groupby="cell_type", min_high=700)
    adata.obs["one"] = "donor1"
    with pytest.raises(ValueError, match=r"adata.obs\['one'\] has a single group"):
        fl.tl.high_vs_low(adata, "null", method="pseudobulk", sample_key="one")
    with pytest.raises(ValueError, match="needs `sample_key=`"):
        fl.tl.high_vs_low(adata, "null", method="pseudobulk")
    with pytest.raises(ValueError, match="only used by it"):
        fl.tl.high_vs_low(adata, "null", sample_key="one")
    with pytest.raises(ValueError, match="`min_detection` must lie in"):
        fl.tl.high_vs_low(adata, "null", min_detection=1.5)
    assert_uns_equal(before, dict(adata.uns))
