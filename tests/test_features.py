"""Feature statistics, local/global types, selectivity, linear probing and reconstruction quality."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import assert_uns_equal, synthetic_dictionary

import featurelens as fl
from featurelens.stats import alpha_scores, group_moments, pearson_max_partner, selectivity_scores


# ---------------------------------------------------------------------------- stats, against direct loops
@pytest.fixture
def random_codes():
    rng = np.random.default_rng(0)
    n, m, g = 300, 12, 4
    X = rng.exponential(size=(n, m)) * (rng.random((n, m)) < 0.3)
    labels = rng.integers(0, g, n)
    return X, labels, g


@pytest.mark.parametrize("sparse", [False, True])
def test_group_moments_match_pandas(random_codes, sparse):
    X, labels, g = random_codes
    m = group_moments(sp.csr_matrix(X) if sparse else X, labels, g)
    df = pd.DataFrame(X).groupby(labels)
    np.testing.assert_allclose(m.means, df.mean().to_numpy())
    np.testing.assert_allclose(np.sqrt(m.variances(1)), df.std(ddof=1).to_numpy())
    np.testing.assert_allclose(m.n_active, (pd.DataFrame(X) > 0).groupby(labels).sum().to_numpy())
    r = m.rest()
    for k in range(g):
        np.testing.assert_allclose(r.means[k], X[labels != k].mean(0))
        np.testing.assert_allclose(np.sqrt(r.variances(1)[k]), X[labels != k].std(0, ddof=1))


def test_alpha_matches_a_direct_per_feature_computation(random_codes):
    X, labels, g = random_codes
    alpha = alpha_scores(group_moments(sp.csr_matrix(X), labels, g))
    for k in range(g):
        for f in range(X.shape[1]):
            a, b = X[labels == k, f], X[labels != k, f]
            ref = (a.mean() - b.mean()) - 1.96 * (a.std(ddof=1) / np.sqrt(a.size) + b.std(ddof=1) / np.sqrt(b.size))
            assert alpha[k, f] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_selectivity_matches_definition(random_codes):
    X, labels, g = random_codes
    p = np.stack([(X[labels == k] > 0).mean(0) for k in range(g)])
    avg, mx = selectivity_scores(p)
    for i in range(g):
        others = [j for j in range(g) if j != i]
        np.testing.assert_allclose(avg[i], p[i] - p[others].mean(0))
        np.testing.assert_allclose(mx[i], p[i] - p[others].max(0))


def test_pearson_partner_matches_corrcoef():
    rng = np.random.default_rng(1)
    X = rng.exponential(size=(400, 10)) * (rng.random((400, 10)) < 0.4)
    X[:, 7] = 2 * X[:, 2] + 0.01 * (X[:, 2] > 0)  # near-duplicate of feature 2
    X[:, 9] = 0  # dead
    best, partner = pearson_max_partner(sp.csr_matrix(X))
    C = np.corrcoef(X[:, :9], rowvar=False)
    np.fill_diagonal(C, -np.inf)
    np.testing.assert_allclose(best[:9], C.max(1), rtol=1e-9)
    np.testing.assert_array_equal(partner[:9], C.argmax(1))
    assert partner[2] == 7 and partner[7] == 2 and best[2] > 0.99
    assert np.isnan(best[9]) and partner[9] == -1


# ---------------------------------------------------------------------------- a dictionary with known activations
def test_feature_stats_on_known_activations(tmp_path):
    adata, Z = synthetic_dictionary()
    fl.tl.feature_stats(adata, "syn")
    f = adata.uns["syn"]["features"]
    np.testing.assert_array_equal(f["n_active"], (Z > 0).sum(0))
    np.testing.assert_allclose(f["frac_active"], (Z > 0).mean(0))
    np.testing.assert_allclose(f["max"], Z.max(0), rtol=1e-6)
    for i in range(6):
        act = Z[Z[:, i] > 0, i]
        assert f["mean_active"].iloc[i] == pytest.approx(act.mean() if act.size else 0.0, rel=1e-5)
    assert f["dead"].tolist() == [False, False, False, True, False, False]
    assert f.loc["f0", "corr_partner"] == "f4" and f.loc["f4", "corr_partner"] == "f0"
    assert f.loc["f0", "redundant"] and f.loc["f4", "redundant"] and not f.loc["f2", "redundant"]
    assert f.loc["f3", "corr_partner"] == "" and np.isnan(f.loc["f3", "max_corr"])
    assert adata.uns["syn"]["mean_active_per_cell"] == pytest.approx((Z > 0).sum(1).mean())
    assert adata.uns["syn"]["n_redundant"] == 2
    adata.write_h5ad(tmp_path / "s.h5ad")
    assert_uns_equal(adata.uns["syn"], ad.read_h5ad(tmp_path / "s.h5ad").uns["syn"])


def test_feature_types_on_known_activations(tmp_path):
    adata, _ = synthetic_dictionary()
    fl.tl.feature_types(adata, "syn", "group")
    f = adata.uns["syn"]["features"]
    assert f["type"].tolist() == ["local", "local", "global", "dead", "local", "global"]
    assert f["group"].astype(object).where(f["group"].notna(), None).tolist() == ["A", "B", None, None, "A", None]
    assert f["n_groups_significant"].tolist() == [1, 1, 0, 0, 1, 0]
    store = adata.uns["syn"]["feature_types"]["group"]
    assert list(store["alpha"].columns) == ["A", "B", "C"] and store["alpha"].shape == (6, 3)
    assert store["counts"]["n_local"].tolist() == [2, 1, 0]
    # the alpha of f2 (same distribution everywhere) is negative in every group
    assert (store["alpha"].loc["f2"] < 0.05).all()
    adata.write_h5ad(tmp_path / "t.h5ad")
    assert_uns_equal(adata.uns["syn"], ad.read_h5ad(tmp_path / "t.h5ad").uns["syn"])


def test_selectivity_on_known_activations(tmp_path):
    adata, _ = synthetic_dictionary()
    fl.tl.selectivity(adata, "syn", "group")
    s = adata.uns["syn"]["selectivity"]["group"]
    assert s["average"].loc["f0", "A"] == pytest.approx(1.0)
    assert s["max"].loc["f0", "A"] == pytest.approx(1.0)
    assert s["average"].loc["f0", "B"] == pytest.approx(-0.5)
    assert s["average"].loc["f2"].abs().max() == pytest.approx(0.0)
    assert s["summary"].loc["0.5", "n_average"] == 3 and s["summary"].loc["0.5", "n_max"] == 3
    f = adata.uns["syn"]["features"]
    assert f.loc["f1", "selective_label"] == "B" and f.loc["f1", "max_avg_selectivity"] == pytest.approx(1.0)
    adata.write_h5ad(tmp_path / "u.h5ad")
    assert_uns_equal(adata.uns["syn"], ad.read_h5ad(tmp_path / "u.h5ad").uns["syn"])


@pytest.mark.parametrize(
    ("edit", "call", "match"),
    [
        (None, lambda a: fl.tl.feature_types(a, "syn", "tissue"), r"`groupby='tissue'` is not a column of adata.obs"),
        (
            lambda a: a.obs.__setitem__("one", "x"),
            lambda a: fl.tl.feature_types(a, "syn", "one"),
            r"single group \('x'\)",
        ),
        (
            lambda a: a.obs.__setitem__("tiny", ["solo"] + ["rest"] * (a.n_obs - 1)),
            lambda a: fl.tl.feature_types(a, "syn", "tiny"),
            r"fewer than 2 cells: solo",
        ),
        (None, lambda a: fl.tl.selectivity(a, "nokey", "group"), r"No dictionary under adata.uns\['nokey'\]"),
        (
            lambda a: a.obsm.pop("X_syn"),
            lambda a: fl.tl.feature_stats(a, "syn"),
            r"adata.obsm\['X_syn'\] \(the activations of dictionary 'syn'\) is missing",
        ),
        (
            lambda a: a.obsm.__setitem__("X_syn", sp.csr_matrix((a.n_obs, 3))),
            lambda a: fl.tl.feature_stats(a, "syn"),
            r"has shape \(150, 3\), but dictionary 'syn' has 6 features",
        ),
        (
            lambda a: a.obs.__setitem__("gap", ["x", None] * (a.n_obs // 2)),
            lambda a: fl.tl.selectivity(a, "syn", "gap"),
            r"75 missing values",
        ),
    ],
)
def test_bad_input_is_reported(edit, call, match):
    adata, _ = synthetic_dictionary()
    if edit is not None:
        edit(adata)
    cols = list(adata.uns["syn"]["features"].columns)
    with pytest.raises(ValueError, match=match):
        call(adata)
    assert list(adata.uns["syn"]["features"].columns) == cols


# ---------------------------------------------------------------------------- reconstruction quality
def test_quality_on_training_and_held_out_cells(kang_pca):
    ref, held = kang_pca[:1500].copy(), kang_pca[1500:].copy()
    fl.tl.sae(ref, "X_pca", n_steps=300, progress=False)
    q = ref.uns["sae"]["quality"]
    assert q["fvu"] == pytest.approx(ref.uns["sae"]["metrics"]["fvu"]) and q["n_obs"] == 1500
    fl.tl.reconstruct(ref, "sae")
    X, R = ref.obsm["X_pca"], ref.obsm["X_sae_recon"]
    cos = (X * R).sum(1) / np.linalg.norm(X, axis=1) / np.linalg.norm(R, axis=1)
    # "scale" normalisation is one global factor: cosine in the model space equals the one in X_pca
    np.testing.assert_allclose(ref.obs["sae_cosine"], cos, atol=1e-4)
    np.testing.assert_allclose(ref.obs["sae_recon_cosine"], cos, atol=1e-5)
    assert ref.uns["sae"]["reconstruction"]["mean_cosine"] == pytest.approx(cos.mean(), rel=1e-5)
    fl.tl.encode(held, "sae", source=ref, progress=False)
    qh = held.uns["sae"]["quality"]
    assert qh["n_obs"] == 500 and "sae_cosine" in held.obs
    assert qh["fvu"] < 0.3 and qh["median_cosine"] > 0.9


# ---------------------------------------------------------------------------- acceptance on Kang 2018
@pytest.fixture(scope="module")
def kang_hvg(kang_sae):
    """Kang 2018 on HVGs with the shared default SAE and an ICFL dictionary on the same PCA."""
    adata = kang_sae.copy()
    fl.tl.icfl(adata, "X_pca", progress=False)
    return adata


@pytest.mark.parametrize("key", ["sae", "icfl"])
def test_kang_local_features_and_probe(kang_hvg, key):
    adata = kang_hvg.copy()
    fl.tl.feature_types(adata, key, "cell_type")
    f = adata.uns[key]["features"]
    local_groups = f.loc[f["type"] == "local", "group"].nunique()
    assert local_groups >= 5, f"local features for only {local_groups} cell types"
    local = set(f.loc[f["type"] == "local", "group"].astype(str))
    assert {"CD14 Mono", "NK"} <= local
    assert local & {"B", "B Activated"}, "no feature local to the B lineage"
    fl.tl.linear_probe(adata, "cell_type", key=key, split_key="condition")
    res = fl.get.probe(adata, "cell_type", key=key)
    assert set(res["test"]) == {"CTRL", "STIM"} and len(res) == 6
    acc = res.groupby("representation")["balanced_accuracy"].mean()
    assert acc["embedding"] > 0.6
    assert acc["reconstruction"] >= acc["embedding"] - 0.05
    assert acc["codes"] > 0.5
    summary = adata.uns[key]["probe"]["cell_type"]["summary"]
    assert summary.set_index("representation").loc["embedding", "mean"] == pytest.approx(acc["embedding"])


def test_kang_stim_selective_features(kang_hvg):
    adata = kang_hvg.copy()
    fl.pp.whiten(adata, "X_pca", control_key="condition", control_value="CTRL")
    # 60 features on the CTRL-whitened PCA; the best STIM feature reaches 0.70 with this seed
    # (0.71, 0.45, 0.56 with seeds 1-3: the strongest interferon feature is not always generic)
    fl.tl.sae(adata, "X_whitened", expansion=2, progress=False, key_added="white")
    fl.tl.selectivity(adata, "white", "condition")
    avg = adata.uns["white"]["selectivity"]["condition"]["average"]["STIM"]
    assert (avg > 0.5).sum() >= 1, avg.sort_values().tail()
    assert adata.uns["white"]["selectivity"]["condition"]["summary"].loc["0.5", "n_average"] >= 1


@pytest.mark.shared_data
def test_papalexi_perturbation_probe_split_by_replicate(papalexi_pca):
    adata = papalexi_pca.copy()
    fl.tl.sae(adata, "X_pca", n_steps=300, progress=False)
    fl.tl.linear_probe(adata, "perturbation", key="sae", split_key="bio_rep")
    res = fl.get.probe(adata, "perturbation", key="sae")
    assert set(res["test"]) == {"rep_1", "rep_2", "rep_3"}
    acc = res.groupby("representation")["balanced_accuracy"].mean()
    chance = 1 / adata.obs["perturbation"].nunique()
    assert acc["embedding"] > 2 * chance
    assert acc["reconstruction"] >= acc["embedding"] - 0.05


def test_probe_without_dictionary_and_random_split(kang_pca):
    adata = kang_pca.copy()
    with pytest.warns(UserWarning, match="No `split_key`"):
        fl.tl.linear_probe(adata, "cell_type", use_rep="X_pca")
    res = fl.get.probe(adata, "cell_type")
    assert res["representation"].tolist() == ["embedding"] and res["n_test"].iloc[0] == 400
    assert adata.uns["linear_probe"]["cell_type"]["results"]["balanced_accuracy"].iloc[0] > 0.6
    with pytest.raises(ValueError, match="Pass `use_rep=`"):
        fl.tl.linear_probe(adata, "cell_type")
