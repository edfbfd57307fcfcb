"""Bad and unusual input found by probing the tools as a new user would; each test pins one defect down."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import assert_uns_equal

import featurelens as fl


@pytest.fixture(scope="module")
def kang_small() -> ad.AnnData:
    """1,000 bundled Kang cells, log-normalised, 20-PC PCA, a 32-feature SAE (the probes' set-up)."""
    import scanpy as sc

    adata = fl.datasets.kang2018()
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 1000, replace=False)].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    fl.tl.sae(adata, "X_pca", n_features=32, k=8, n_steps=200, progress=False)
    return adata


@pytest.fixture
def kang(kang_small) -> ad.AnnData:
    return kang_small.copy()


def _tested(adata, key="sae") -> list[str]:
    summ = adata.uns[key]["dge"]["summary"]
    return list(summ.index[summ["skipped"] == ""])


# ------------------------------------------------------------------------------------------ views
VIEW_TOOLS = {
    "feature_types": lambda a: fl.tl.feature_types(a, "sae", "condition"),
    "feature_stats": lambda a: fl.tl.feature_stats(a, "sae"),
    "selectivity": lambda a: fl.tl.selectivity(a, "sae", "condition"),
    "steer": lambda a: fl.tl.steer(a, "sae", "f0", value=1.0, progress=False),
    "linear_probe": lambda a: fl.tl.linear_probe(a, "condition", key="sae", split_key="cell_type"),
    "high_vs_low": lambda a: fl.tl.high_vs_low(a, "sae", features=["f0", "f1"], min_high=3, progress=False),
}


@pytest.mark.parametrize("tool", sorted(VIEW_TOOLS))
def test_a_tool_called_on_a_view_leaves_the_parent_unchanged(kang, tool):
    parent_uns = copy.deepcopy(dict(kang.uns))
    mask = np.arange(kang.n_obs) % 2 == 0
    view = kang[mask]
    with pytest.warns(UserWarning, match="Received a view"):
        VIEW_TOOLS[tool](view)
    assert_uns_equal(parent_uns, dict(kang.uns))
    assert not view.is_view and view.n_obs == int(mask.sum())
    if tool == "high_vs_low":
        assert view.uns["sae"]["dge"]["high_cells"].shape[1] == view.n_obs


# ------------------------------------------------------------------------------------------ per grouping
def test_high_vs_low_reads_the_feature_types_of_its_own_groupby(kang):
    fl.tl.feature_types(kang, "sae", "cell_type")
    by_type = fl.get.feature_types(kang, "sae", "cell_type")
    fl.tl.feature_types(kang, "sae", "condition")  # the latest grouping is another one
    fl.tl.high_vs_low(kang, "sae", groupby="cell_type", progress=False)
    summ = kang.uns["sae"]["dge"]["summary"]
    local = by_type.index[by_type["type"] == "local"]
    assert len(local)
    np.testing.assert_array_equal(summ.loc[local, "group"].astype(str), by_type.loc[local, "group"].astype(str))
    assert set(summ["group"].astype(str)) <= set(kang.obs["cell_type"].astype(str))
    # both groupings stay readable
    assert fl.get.feature_types(kang, "sae", "condition")["group"].dropna().isin(["CTRL", "STIM"]).all()


# ------------------------------------------------------------------------------------------ result keys
def test_a_result_key_cannot_destroy_input(kang):
    pca = kang.obsm["X_pca"].copy()
    before = copy.deepcopy(dict(kang.uns))
    with pytest.raises(ValueError, match=r"would overwrite the input adata\.obsm"):
        fl.tl.sae(kang, "X_pca", key_added="pca", n_steps=5, progress=False)
    kang.obsm["X_other"] = pca.copy()
    with pytest.raises(ValueError, match=r"adata.uns\['pca'\], which holds something else"):
        fl.tl.sae(kang, "X_other", key_added="pca", n_steps=5, progress=False)
    fl.pp.whiten(kang, "X_pca", control_key="condition", control_value="CTRL")
    whitened = kang.obsm["X_whitened"].copy()
    with pytest.raises(ValueError, match="not a featurelens dictionary"):
        fl.tl.sae(kang, "X_pca", key_added="whitened", n_steps=5, progress=False)
    with pytest.raises(ValueError, match="would overwrite the input"):
        fl.pp.whiten(kang, "X_whitened", control_key="condition", control_value="CTRL", key_added="whitened")
    with pytest.warns(FutureWarning, match="now a stem"), pytest.raises(ValueError, match="input"):
        fl.tl.reconstruct(kang, "sae", key_added="X_pca")
    with pytest.warns(FutureWarning, match="now a stem"), pytest.raises(ValueError, match="input"):
        fl.pp.normalize_embedding(kang, "X_pca", key_added="X_pca")
    with pytest.raises(ValueError, match="is the input of 'sae', 'whitened'"):
        fl.pp.normalize_embedding(kang, "X_whitened", key_added="pca")
    for bad in ("", " sae", "a/b"):
        with pytest.raises(ValueError, match="not a usable name"):
            fl.tl.sae(kang, "X_pca", key_added=bad, n_steps=5, progress=False)
    with pytest.raises(ValueError, match="is a stem"):
        fl.tl.sae(kang, "X_pca", key_added="X_sae2", n_steps=5, progress=False)
    np.testing.assert_array_equal(kang.obsm["X_pca"], pca)
    np.testing.assert_array_equal(kang.obsm["X_whitened"], whitened)
    assert_uns_equal(before["pca"], kang.uns["pca"])
    assert "" not in kang.uns


def test_reconstruct_accepts_the_old_full_obsm_key_for_one_release(kang):
    with pytest.warns(FutureWarning, match="now a stem"):
        fl.tl.reconstruct(kang, "sae", key_added="X_rec")
    assert "X_rec" in kang.obsm and kang.uns["sae"]["reconstruction"]["obsm_key"] == "X_rec"
    fl.tl.reconstruct(kang, "sae")
    assert "X_rec" not in kang.obsm and "X_sae_recon" in kang.obsm  # the earlier reconstruction is replaced


# ------------------------------------------------------------------------------------------ stale results
def test_recomputing_dge_removes_what_was_derived_from_the_old_one(kang):
    fl.tl.high_vs_low(kang, "sae", progress=False)
    fl.tl.enrich(kang, "sae", "GO_BP", methods="mwu", progress=False)
    assert "enrichment" in kang.uns["sae"]
    two = _tested(kang)[:2]
    with pytest.warns(UserWarning, match=r"Removed results computed from the previous dge.*'enrichment'"):
        fl.tl.high_vs_low(kang, "sae", features=two, progress=False)
    assert "enrichment" not in kang.uns["sae"]
    assert list(kang.uns["sae"]["dge"]["summary"].index) == two
    lfc = kang.varm["sae_log2fc"]
    tested = np.isfinite(lfc).any(axis=0)
    assert set(np.asarray(kang.uns["sae"]["features"].index)[tested]) == set(two)  # fold changes match the table
    with pytest.raises(ValueError, match="`features` is empty"):
        fl.tl.high_vs_low(kang, "sae", features=[], progress=False)
    assert list(kang.uns["sae"]["dge"]["summary"].index) == two  # the stored DGE is kept


def test_retraining_under_a_key_removes_the_results_of_the_old_dictionary(kang):
    fl.tl.reconstruct(kang, "sae")
    fl.tl.high_vs_low(kang, "sae", features=["f0", "f1"], min_high=3, progress=False)
    assert {"X_sae_recon"} <= set(kang.obsm) and "sae_log2fc" in kang.varm and "sae_recon_cosine" in kang.obs
    fl.tl.sae(kang, "X_pca", n_features=16, k=4, n_steps=20, progress=False)
    assert "X_sae_recon" not in kang.obsm
    assert "sae_log2fc" not in kang.varm
    assert "sae_recon_cosine" not in kang.obs
    assert "dge" not in kang.uns["sae"] and kang.obsm["X_sae"].shape[1] == 16


def test_rewhitening_does_not_let_encode_use_a_foreign_whitening(kang):
    fl.pp.whiten(kang, "X_pca", control_key="condition", control_value="CTRL")
    fl.tl.icfl(kang, "X_whitened", n_features=32, n_steps=50, progress=False)
    codes = kang.obsm["X_icfl"].copy()
    with pytest.warns(UserWarning, match="input of dictionaries 'icfl'"):
        fl.pp.whiten(kang, "X_pca", control_key="condition", control_value="STIM")
    with pytest.warns(UserWarning, match="recomputed by a later `fl.pp.whiten`"):
        fl.tl.encode(kang, "icfl", progress=False)
    diff = abs(kang.obsm["X_icfl"] - codes)
    assert diff.nnz == 0 or diff.max() < 1e-4  # the dictionary's own whitening, applied to X_pca
    with pytest.raises(ValueError, match="recomputed by a later"):
        fl.tl.encode(kang, "icfl", use_rep="X_whitened", progress=False)


def test_re_encoding_to_other_activations_drops_their_statistics(kang):
    fl.tl.feature_stats(kang, "sae")
    fl.tl.encode(kang, "sae", progress=False)  # the same cells: identical activations, statistics kept
    assert "n_active" in kang.uns["sae"]["features"]
    kang.obsm["X_pca"] = kang.obsm["X_pca"][::-1].copy()
    with pytest.warns(UserWarning, match="previous codes"):
        fl.tl.encode(kang, "sae", progress=False)
    assert "n_active" not in kang.uns["sae"]["features"]


# ------------------------------------------------------------------------------------------ expression
def test_expression_is_checked_before_any_work(kang):
    nan = kang.copy()
    X = nan.X.tocsr(copy=True)
    X.data[0] = np.nan
    nan.X = X
    with pytest.raises(ValueError, match="1 NaN or Inf values; expression must be finite"):
        fl.tl.high_vs_low(nan, "sae", progress=False)
    assert "dge" not in nan.uns["sae"]
    scaled = kang.copy()
    scaled.X = (scaled.X.toarray() - 0.5).astype(np.float32)
    with pytest.raises(ValueError, match=r"negative values.*sc.pp.scale"):
        fl.tl.high_vs_low(scaled, "sae", progress=False)
    with pytest.raises(ValueError, match=r"negative values.*adata.uns\['log1p'\] is set"):
        fl.tl.steer(scaled, "sae", "f0", value=1.0, progress=False)
    dup = kang.copy()
    dup.var_names = ["G"] * 2 + list(dup.var_names[2:])
    with pytest.raises(ValueError, match="var_names_make_unique"):
        fl.tl.high_vs_low(dup, "sae", progress=False)


def test_steer_with_nan_expression_names_the_expression_not_the_decoder(kang):
    X = kang.X.tocsr(copy=True)
    X.data[:5] = np.nan
    kang.X = X
    with pytest.raises(ValueError, match=r"adata.X holds 5 NaN") as err:
        fl.tl.steer(kang, "sae", "f0", value=1.0, progress=False)
    assert "decoder" not in str(err.value)


# ------------------------------------------------------------------------------------------ training
def test_training_that_diverges_but_stays_finite_warns(kang):
    with pytest.warns(UserWarning, match=r"did not converge.*FVU = .* > 1.*lr=1e\+06"):
        fl.tl.sae(kang, "X_pca", n_features=16, k=4, lr=1e6, n_steps=50, key_added="wild", progress=False)
    assert kang.uns["wild"]["metrics"]["converged"] is False
    assert kang.uns["sae"]["metrics"]["converged"] is True


def test_a_constant_embedding_is_refused(kang):
    kang.obsm["X_const"] = np.ones((kang.n_obs, 5), np.float32)
    with pytest.raises(ValueError, match="is constant"):
        fl.tl.sae(kang, "X_const", n_steps=5, progress=False)
    with pytest.raises(ValueError, match="is constant"):
        fl.tl.icfl(kang, "X_const", n_steps=5, progress=False)
    assert "sae" in kang.uns and "icfl" not in kang.uns


# ------------------------------------------------------------------------------------------ small things
def test_small_option_errors(kang):
    with pytest.raises(ValueError, match="`expansion` must be a positive finite number, got nan"):
        fl.tl.sae(kang, "X_pca", expansion=float("nan"), n_steps=5, progress=False)
    with pytest.raises(ValueError, match="`auxk_coef` must lie in"):
        fl.tl.sae(kang, "X_pca", auxk_coef=-0.1, n_steps=5, progress=False)
    with pytest.raises(TypeError, match="`copy` must be True or False"):
        fl.tl.feature_stats(kang, "sae", copy="yes")
    fl.tl.high_vs_low(kang, "sae", features=["f0", "f1"], min_high=3, progress=False)
    with pytest.raises(ValueError, match="`features` is empty"):
        fl.tl.enrich(kang, "sae", features=[], progress=False)


def test_whiten_with_eps_zero_and_a_flat_control_dimension_is_refused(kang):
    kang.obsm["X_flat"] = np.concatenate([kang.obsm["X_pca"][:, :5], np.zeros((kang.n_obs, 1), np.float32)], 1)
    kang.obsm["X_flat"][(kang.obs["condition"] == "STIM").to_numpy(), 5] = 1.0  # varies, but not in the controls
    with pytest.raises(ValueError, match="no variance along 1 of the 6 kept directions"):
        fl.pp.whiten(kang, "X_flat", control_key="condition", control_value="CTRL", eps=0)
    assert "whitened" not in kang.uns
    fl.pp.whiten(kang, "X_flat", control_key="condition", control_value="CTRL", eps=1e-6)
    assert np.isfinite(kang.obsm["X_whitened"]).all()


def test_invalid_choices_share_one_wording(kang):
    calls = [
        (lambda: fl.tl.sae(kang, "X_pca", architecture="gated"), "architecture"),
        (lambda: fl.tl.sae(kang, "X_pca", normalize="l2"), "normalize"),
        (lambda: fl.tl.icfl(kang, "X_pca", bias="auto"), "bias"),
        (lambda: fl.tl.steer(kang, "sae", "f0", decoder="mlp"), "decoder"),
        (lambda: fl.tl.steer(kang, "sae", "f0", value="min"), "value"),
        (lambda: fl.pp.normalize_embedding(kang, "X_pca", method="l2"), "method"),
        (lambda: fl.tl.match_features(kang, "sae", kang, "sae", by="jaccard"), "by"),
    ]
    for call, option in calls:
        with pytest.raises(ValueError, match=rf"^`{option}` must be one of '"):
            call()


def test_sparse_activations_survive_the_round_trip_of_every_new_field(kang, tmp_path):
    fl.tl.feature_types(kang, "sae", "cell_type")
    fl.tl.steer(kang, "sae", "f0", value=1.0, centroids="condition", progress=False)
    kang.write_h5ad(tmp_path / "k.h5ad")
    back = ad.read_h5ad(tmp_path / "k.h5ad")
    assert_uns_equal(dict(kang.uns["sae"]), dict(back.uns["sae"]))
    assert sp.issparse(back.obsm["X_sae"])
    pcs = back.uns["sae"]["steering"]["f0"]["cells"][["pc1_before", "pc2_before"]].to_numpy()
    view = back.uns["sae"]["steering"]["f0"]["view"]
    X0 = back.obsm["X_pca"][back.obs_names.get_indexer(back.uns["sae"]["steering"]["f0"]["cells"]["obs_name"])]
    np.testing.assert_allclose((X0 - view["mean"]) @ view["components"].T, pcs, rtol=1e-5, atol=1e-5)


def test_token_score_runs_are_kept_apart_and_removed_with_their_dictionary():
    rng = np.random.default_rng(0)
    adata = fl.microscopy.from_embeddings(rng.normal(size=(30, 16, 6)).astype(np.float32), grid=(4, 4))
    fl.tl.icfl(adata, "X_emb", n_features=12, n_iter=2, n_per_iter=2, n_steps=20, progress=False)
    fl.tl.token_scores(adata, "icfl", "f3")
    fl.tl.token_scores(adata, "icfl", "f3", key_added="again", whiten=None)
    assert {"icfl_f3_token_scores", "again_token_scores"} <= set(adata.obsm)
    np.testing.assert_array_equal(
        fl.get.token_scores(adata, "icfl", 3, key_added="again"), fl.get.token_scores(adata, "icfl", 3)
    )
    fl.tl.icfl(adata, "X_emb", n_features=12, n_iter=2, n_per_iter=2, n_steps=20, random_state=1, progress=False)
    assert not {"icfl_f3_token_scores", "again_token_scores"} & set(adata.obsm)
    assert not {"icfl_f3_alignment", "again_alignment"} & set(adata.obs.columns)
