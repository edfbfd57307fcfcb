"""The ground-truth simulation (Schuster 2025, A.2.1) and the recovery metrics (A.2.3-A.2.5)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import assert_uns_equal

import featurelens as fl
from featurelens.tl._recovery import correlate


@pytest.fixture(scope="module")
def sim_large() -> ad.AnnData:
    """A reduced "large" simulation: 4,000 cells, 300 genes, 30 programs, 10 cell types."""
    return fl.datasets.simulate("large", n_obs=4000, n_genes=300, n_programs=30, n_cell_types=10, random_state=1)


# ---------------------------------------------------------------------------- the simulation matches its definition
def test_large_programs_follow_their_poisson_rates(sim_large):
    x = sim_large.obsm["X_programs"].astype(np.float64)
    n, P = x.shape
    assert P == 30 and n == 4000
    lam = 1.1 * np.arange(1, P + 1)
    np.testing.assert_allclose(sim_large.uns["simulation"]["rates"], lam)
    np.testing.assert_array_equal(x, np.round(x))  # integer counts
    se = np.sqrt(lam / n)
    assert (np.abs(x.mean(0) - lam) < 4.5 * se).all()
    # Poisson: variance equals the mean (relative tolerance of a sample variance with 4,000 cells)
    np.testing.assert_allclose(x.var(0, ddof=1), lam, rtol=0.15)


def test_large_batch_type_and_connectivity(sim_large):
    a = sim_large
    sim = a.uns["simulation"]
    x, x1, x2 = (a.obsm[k].astype(np.float64) for k in ("X_programs", "X_programs_batch", "X_programs_active"))
    b = a.obsm["batch_value"].astype(np.float64)
    assert b.shape == (a.n_obs, 1)
    # x' = x + b_c, the batch value added to every program
    np.testing.assert_allclose(x1, x + b, atol=1e-4)
    # batch values: Normal(g, 0.1) for batch g, each batch ~1/3 of the cells
    batch = a.obs["batch"]
    assert list(batch.cat.categories) == ["batch1", "batch2", "batch3"]
    for g, name in enumerate(batch.cat.categories, start=1):
        v = b[(batch == name).to_numpy(), 0]
        assert v.mean() == pytest.approx(g, abs=0.02)
        assert v.std(ddof=1) == pytest.approx(0.1, rel=0.1)
    freq = batch.value_counts(normalize=True)
    assert (np.abs(freq - 1 / 3) < 0.03).all()
    # cell types: the cell's activity row is the row of A of its type; x'' = x' * a
    A = sim["type_activity"]
    assert A.shape == (10, 30)
    codes = a.obs["cell_type"].cat.codes.to_numpy()
    np.testing.assert_array_equal(a.obsm["activity"], A[codes])
    np.testing.assert_allclose(x2, x1 * A[codes], atol=1e-4)
    assert set(np.unique(A)) <= {0.0, 1.0}
    assert (np.abs(a.obs["cell_type"].value_counts(normalize=True) - 0.1) < 0.03).all()
    # connectivity M (genes x programs, sparse), Bernoulli(0.1); a gene's parent count is its row sum
    M = sim["connectivity"]
    assert sp.issparse(M) and M.shape == (300, 30)
    np.testing.assert_array_equal(a.var["n_parents"].to_numpy(), np.asarray(M.sum(1)).ravel())
    assert M.mean() == pytest.approx(0.1, abs=0.015)
    # observables: y = M x'' exactly, stored as sparse float32
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    np.testing.assert_allclose(a.X.toarray(), x2 @ M.T.toarray(), rtol=1e-5, atol=1e-3)
    # split: 90 % train, 10 % validation
    assert a.obs["split"].value_counts().to_dict() == {"train": 3600, "validation": 400}


def test_type_activity_density_and_batch_count():
    a = fl.datasets.simulate("large", n_obs=500, n_genes=50, n_programs=100, n_cell_types=40, n_batches=2)
    assert a.uns["simulation"]["type_activity"].mean() == pytest.approx(0.3, abs=0.03)
    assert a.obs["batch"].nunique() == 2
    assert a.uns["simulation"]["params"]["n_cell_types"] == 40


def test_simulation_is_reproducible_and_survives_h5ad(tmp_path):
    kw = {"n_obs": 300, "n_genes": 40, "n_programs": 8, "n_cell_types": 4}
    a, b = fl.datasets.simulate("large", **kw), fl.datasets.simulate("large", **kw)
    c = fl.datasets.simulate("large", **kw, random_state=1)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["X_programs"], b.obsm["X_programs"])
    assert not np.array_equal(a.obsm["X_programs"], c.obsm["X_programs"])
    a.write_h5ad(tmp_path / "sim.h5ad")
    r = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert_uns_equal(a.uns["simulation"], r.uns["simulation"])
    for k in a.obsm:
        np.testing.assert_array_equal(a.obsm[k], r.obsm[k])
    pd.testing.assert_frame_equal(a.obs, r.obs)


def test_small_simulation_matches_its_definition():
    a = fl.datasets.simulate()  # "small" is the default (the paper-size "large" needs ~15 GB)
    assert a.uns["simulation"]["params"]["kind"] == "small"
    assert a.shape == (12_000, 5)
    assert a.obs["split"].value_counts().to_dict() == {"train": 10_000, "validation": 2_000}
    x, act, x1 = (a.obsm[k].astype(np.float64) for k in ("X_programs", "activity", "X_programs_active"))
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_allclose(x.mean(0), [0.5, 0.1, 0.9], atol=0.015)
    np.testing.assert_allclose(act.mean(0), 2.0, atol=0.05)
    np.testing.assert_allclose(act.var(0), 2.0, rtol=0.08)
    np.testing.assert_array_equal(x1, x * act)
    M = a.uns["simulation"]["connectivity"].toarray()
    assert M.shape == (5, 3)
    assert (M.sum(1) >= 1).all() and (M.sum(0) >= 1).all()  # every gene a parent, every program a gene
    np.testing.assert_array_equal(a.X.toarray(), x1 @ M.T)
    np.testing.assert_array_equal(a.var["n_parents"], M.sum(1))
    assert "X_programs_batch" not in a.obsm and "cell_type" not in a.obs


def test_poisson_counts():
    a = fl.datasets.simulate("large", n_obs=2000, n_genes=30, n_programs=5, n_cell_types=3, counts="poisson")
    X = a.X.toarray()
    np.testing.assert_array_equal(X, np.round(X))
    y = a.obsm["X_programs_active"].astype(np.float64) @ a.uns["simulation"]["connectivity"].T.toarray()
    np.testing.assert_allclose(a.layers["expected"].toarray(), y, rtol=1e-5)
    nz = y.mean(0) > 0
    np.testing.assert_allclose(X.mean(0)[nz], y.mean(0)[nz], rtol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "medium"}, "'large' or 'small'"),
        ({"kind": "small", "n_programs": 4}, "at most 3 programs"),
        ({"kind": "small", "n_cell_types": 3}, "no cell types"),
        ({"kind": "large", "n_obs": 10, "validation_fraction": 1.0}, "validation_fraction"),
        ({"kind": "large", "n_obs": 10, "connectivity": 0}, "connectivity"),
        ({"kind": "large", "n_obs": 10, "counts": "nb"}, "counts"),
    ],
)
def test_simulate_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fl.datasets.simulate(**kwargs)


def test_simulate_warns_before_a_huge_simulation():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning comes before anything is drawn: stop there
        with pytest.raises(UserWarning, match="15 GB"):
            fl.datasets.simulate("large")


# ---------------------------------------------------------------------------- correlation and recovery, by hand
def test_correlate_matches_corrcoef():
    rng = np.random.default_rng(0)
    Z = rng.exponential(size=(200, 7)) * (rng.random((200, 7)) < 0.4)
    Z[:, 3] = 0  # dead feature
    V = rng.normal(size=(200, 4)) + Z[:, :4]
    V[:, 2] = 5.0  # constant dimension
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(Z, V, rowvar=False)[:7, 7:]
    for z in (Z, sp.csr_matrix(Z)):
        r = correlate(z, V)
        ok = np.isfinite(ref)
        np.testing.assert_allclose(r[ok], ref[ok], rtol=1e-10, atol=1e-12)
        assert np.isnan(r[3]).all() and np.isnan(r[:, 2]).all()


def _planted(seed=0):
    """Features with planted matches: f0 = v0 (r = 1), f1 ~ v0 too (redundant), f2 = -v1, f3 dead."""
    rng = np.random.default_rng(seed)
    n = 500
    V = rng.exponential(size=(n, 3))
    Z = np.zeros((n, 5))
    Z[:, 0] = 2 * V[:, 0]
    Z[:, 1] = V[:, 0] + 0.05 * rng.exponential(size=n)
    Z[:, 2] = V[:, 1].max() - V[:, 1]
    Z[:, 4] = rng.exponential(size=n)
    adata = ad.AnnData(np.zeros((n, 2), np.float32))
    adata.obsm["var"] = V
    adata.obsm["X_dict"] = sp.csr_matrix(Z)
    adata.uns["dict"] = {"features": pd.DataFrame(index=[f"feat{i}" for i in range(5)])}
    adata.obsm["X_rep"] = Z
    return adata, Z, V


@pytest.mark.parametrize("source", ["key", "use_rep"])
def test_variable_recovery_matches_a_direct_computation(source, tmp_path):
    adata, Z, V = _planted()
    kw = {"key": "dict"} if source == "key" else {"use_rep": "X_rep"}
    fl.tl.variable_recovery(adata, ["var"], threshold=0.95, **kw)
    summ = fl.get.recovery(adata, "variable_recovery", kw.get("key") or kw.get("use_rep"))
    name = kw.get("key") or kw.get("use_rep")
    res = adata.uns["variable_recovery"][name]
    with np.errstate(invalid="ignore", divide="ignore"):
        C = np.corrcoef(Z, V, rowvar=False)[:5, 5:]
    C[3] = np.nan
    if source == "use_rep":  # baselines: |r|; dictionaries: signed r
        C = np.abs(C)
    Cn = np.nan_to_num(C, nan=-np.inf)
    pd_ = res["per_dimension"]
    np.testing.assert_allclose(pd_["best_r"], Cn.max(0), rtol=1e-6)  # use_rep is read as float32
    names = ["feat0", "feat1", "feat2", "feat3", "feat4"] if source == "key" else ["0", "1", "2", "3", "4"]
    assert pd_["best_feature"].tolist() == [names[i] for i in Cn.argmax(0)]
    np.testing.assert_array_equal(pd_["n_features_above"], (Cn >= 0.95).sum(0))
    assert summ.loc["var", "mean_best_r"] == pytest.approx(Cn.max(0).mean(), rel=1e-6)
    # f0 and f1 both match v0 -> one redundant; f2 = -v1 matches only with |r|
    matched = 3 if source == "use_rep" else 2
    assert summ.loc["var", "n_features_matched"] == matched
    assert summ.loc["var", "n_redundant"] == 1
    assert summ.loc["var", "n_dims_recovered"] == matched - 1
    feats = res["features"]
    assert feats.index.tolist() == names
    np.testing.assert_allclose(feats["var_best_r"].to_numpy()[[0, 1, 2, 4]], Cn.max(1)[[0, 1, 2, 4]], rtol=1e-6)
    assert np.isnan(feats["var_best_r"].iloc[3]) and feats["var_best_dimension"].iloc[3] == ""
    assert res["params"]["absolute"] is (source == "use_rep")
    adata.write_h5ad(tmp_path / "r.h5ad")
    assert_uns_equal(adata.uns["variable_recovery"], ad.read_h5ad(tmp_path / "r.h5ad").uns["variable_recovery"])


def test_variable_recovery_errors():
    adata, _, _ = _planted()
    with pytest.raises(ValueError, match="exactly one"):
        fl.tl.variable_recovery(adata, "var")
    with pytest.raises(ValueError, match="exactly one"):
        fl.tl.variable_recovery(adata, "var", key="dict", use_rep="X_rep")
    with pytest.raises(ValueError, match=r"'nope' is not in adata\.obsm"):
        fl.tl.variable_recovery(adata, ["nope"], key="dict")
    with pytest.raises(ValueError, match="X_missing"):
        fl.tl.variable_recovery(adata, ["var"], key="missing")


def test_superposition_matches_sklearn(tmp_path):
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    n = 400
    rep = rng.normal(size=(n, 6))
    V = np.column_stack([rep @ rng.normal(size=6) + 0.5 * rng.normal(size=n), rng.normal(size=n), np.ones(n)])
    adata = ad.AnnData(sp.csr_matrix(np.abs(rep[:, :3])).astype(np.float32))
    adata.obsm["X_emb"] = rep
    adata.obsm["var"] = V
    split = np.where(rng.random(n) < 0.75, "train", "validation")
    adata.obs["split"] = pd.Categorical(split)
    fl.tl.superposition(adata, "X_emb", ["var", "X"])
    summ = fl.get.recovery(adata, "superposition", "X_emb")
    res = adata.uns["superposition"]["X_emb"]
    tr, te = split == "train", split == "validation"
    for name, Y in (("var", V[:, :2]), ("X", np.abs(rep[:, :3]).astype(np.float32))):
        lr = LinearRegression().fit(rep[tr], Y[tr])
        ref = r2_score(Y[te], lr.predict(rep[te]), multioutput="raw_values")
        got = res["per_dimension"].loc[res["per_dimension"]["variable"] == name, "r2"].to_numpy()[: Y.shape[1]]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    assert np.isnan(res["per_dimension"].loc["var:2", "r2"])  # constant dimension
    assert summ.loc["var", "n_dims"] == 2
    assert summ.loc["var", "mean_r2"] == pytest.approx(res["per_dimension"]["r2"].iloc[:2].mean())
    assert res["params"]["n_train"] == tr.sum() and res["params"]["split_key"] == "split"
    adata.write_h5ad(tmp_path / "s.h5ad")
    assert_uns_equal(adata.uns["superposition"], ad.read_h5ad(tmp_path / "s.h5ad").uns["superposition"])
    # without a split: in-sample R2
    del adata.obs["split"]
    fl.tl.superposition(adata, "X_emb", "var", key_added="sp_all")
    ref = r2_score(V[:, 0], LinearRegression().fit(rep, V[:, 0]).predict(rep))
    assert adata.uns["sp_all"]["X_emb"]["per_dimension"]["r2"].iloc[0] == pytest.approx(ref, rel=1e-6)
    assert adata.uns["sp_all"]["X_emb"]["params"]["split_key"] is None
    with pytest.raises(ValueError, match=r"not a column of adata\.obs"):
        fl.tl.superposition(adata, "X_emb", "var", split_key="fold")
    with pytest.raises(ValueError, match="X_nope"):
        fl.tl.superposition(adata, "X_nope", "var")


# ---------------------------------------------------------------------------- the paper's finding, on the simulation
def test_pca_recovers_observables_and_active_programs_better_than_programs(sim_large):
    from sklearn.decomposition import PCA

    a = sim_large.copy()
    a.obsm["X_pca"] = PCA(30, random_state=0).fit_transform(np.log1p(a.X.toarray()))
    variables = ["X", "X_programs", "X_programs_active"]
    fl.tl.variable_recovery(a, variables, use_rep="X_pca")
    rec = fl.get.recovery(a, "variable_recovery", "X_pca")
    # the paper (Table S5, PCA): X'' 0.72, X 0.35
    assert rec.loc["X_programs_active", "mean_best_r"] > rec.loc["X_programs", "mean_best_r"] + 0.25
    assert rec.loc["X", "mean_best_r"] > rec.loc["X_programs", "mean_best_r"] + 0.25
    fl.tl.superposition(a, "X_pca", variables)
    sup = fl.get.recovery(a, "superposition", "X_pca")
    assert sup.loc["X_programs_active", "mean_r2"] > 0.9
    assert sup.loc["X", "mean_r2"] > 0.9
    assert sup.loc["X_programs", "mean_r2"] < 0.5


# ---------------------------------------------------------------------------- structure recovery
@pytest.fixture(scope="module")
def sim_independent() -> ad.AnnData:
    """One cell type active in every program: the programs are independent, so they can be told apart."""
    a = fl.datasets.simulate(
        "large", n_obs=1500, n_genes=200, n_programs=12, n_cell_types=1, type_activity=1.0, random_state=2
    )
    a.obsm["X_true"] = sp.csr_matrix(a.obsm["X_programs_active"])
    return a


def test_structure_recovery_matches_a_direct_computation(sim_independent, tmp_path):
    from scipy.stats import binomtest

    a = sim_independent.copy()
    fl.tl.structure_recovery(a, "true", percentiles=(50, 70, 90))
    summ = fl.get.recovery(a, "structure_recovery", "true")
    res = a.uns["structure_recovery"]["true"]
    Z = a.obsm["X_programs_active"].astype(np.float64)
    Y = a.X.toarray().astype(np.float64)
    M = a.uns["simulation"]["connectivity"].toarray().astype(bool)
    norms = np.outer(np.linalg.norm(Z, axis=0), np.linalg.norm(Y, axis=0))
    S = np.divide(Z.T @ Y, norms, out=np.zeros_like(norms), where=norms > 0)
    for q in (70, 90):
        C = S > np.percentile(S, q, axis=1)[:, None]
        f = res["features"][res["features"]["percentile"] == q]
        np.testing.assert_array_equal(f["n_genes"], C.sum(1))
        # true programs as features: each matches its own program
        assert f["best_program"].tolist() == [str(j) for j in range(12)]
        for j in (0, 5, 11):
            k, n = int((C[j] & M[:, j]).sum()), int(C[j].sum())
            ref = binomtest(k, n, M[:, j].mean(), alternative="greater").pvalue
            assert f["overlap"].iloc[j] == k
            assert f["pval"].iloc[j] == pytest.approx(ref, rel=1e-6)
        recovered = (C.T & M).sum() / M.sum()
        assert summ.loc[f"{q:g}", "frac_recovered"] == pytest.approx(recovered)
        assert summ.loc[f"{q:g}", "precision"] == pytest.approx((C.T & M).sum() / C.sum())
        assert summ.loc[f"{q:g}", "n_programs_matched"] == 12
    assert summ.loc["70", "frac_recovered"] > 0.95  # the paper: 75 to 95 % over percentiles 20 to 70
    assert (res["features"]["pval_adj"] >= res["features"]["pval"] - 1e-15).all()
    a.write_h5ad(tmp_path / "st.h5ad")
    assert_uns_equal(a.uns["structure_recovery"], ad.read_h5ad(tmp_path / "st.h5ad").uns["structure_recovery"])


def test_structure_recovery_options_and_errors(sim_independent):
    a = sim_independent.copy()
    rng = np.random.default_rng(0)
    a.obsm["X_noise"] = sp.csr_matrix(rng.exponential(size=(a.n_obs, 12)))
    # random features recover far fewer edges than the true programs
    fl.tl.structure_recovery(a, "noise", percentiles=(70,))
    noise = fl.get.recovery(a, "structure_recovery", "noise")
    fl.tl.structure_recovery(a, "true", percentiles=(70,))
    true = fl.get.recovery(a, "structure_recovery", "true")
    assert true.loc["70", "frac_recovered"] > noise.loc["70", "frac_recovered"] + 0.5
    assert true.loc["70", "n_programs_matched"] > noise.loc["70", "n_programs_matched"] + 5
    # Pearson similarity: the pseudo connectivity follows np.corrcoef (jitter: genes with the same parents tie)
    a.X.data += rng.uniform(0, 1e-3, a.X.nnz).astype(np.float32)
    with pytest.warns(FutureWarning, match="`alpha` is deprecated; use `pval_cutoff=0.001`"):  # the old name
        fl.tl.structure_recovery(a, "true", percentiles=(60,), similarity="pearson", alpha=1e-3, key_added="sr_p")
    res = a.uns["sr_p"]["true"]
    assert res["params"]["similarity"] == "pearson" and res["params"]["pval_cutoff"] == 1e-3
    with np.errstate(invalid="ignore", divide="ignore"):
        R = np.corrcoef(a.obsm["X_programs_active"], a.X.toarray(), rowvar=False)[:12, 12:]
    R = np.nan_to_num(R)  # genes without a parent are constant
    np.testing.assert_array_equal(res["features"]["n_genes"], (R > np.percentile(R, 60, axis=1)[:, None]).sum(1))
    assert (res["features"]["matched"] == (res["features"]["pval_adj"] < 1e-3)).all()
    with pytest.raises(ValueError, match="percentiles"):
        fl.tl.structure_recovery(a, "true", percentiles=(120,))
    with pytest.raises(ValueError, match="similarity"):
        fl.tl.structure_recovery(a, "true", similarity="dot")
    del a.uns["simulation"]
    with pytest.raises(ValueError, match="connectivity"):
        fl.tl.structure_recovery(a, "true")


# ---------------------------------------------------------------------------- autoencoder
@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks: one torch thread is faster, and much faster on shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sim_ae(one_thread) -> ad.AnnData:
    a = fl.datasets.simulate("large", n_obs=1200, n_genes=120, n_programs=10, n_cell_types=5, random_state=3)
    fl.tl.autoencoder(a, 10, hidden=(64,), n_epochs=25, batch_size=128, lr=3e-3, device="cpu", progress=False)
    return a


def test_autoencoder_learns_the_active_programs(sim_ae, tmp_path):
    a = sim_ae.copy()
    emb = a.obsm["X_ae"]
    assert emb.shape == (1200, 10) and emb.dtype == np.float32 and np.isfinite(emb).all()
    entry = a.uns["ae"]
    hist = entry["history"]
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss"]
    assert entry["best_epoch"] == int(hist["val_loss"].to_numpy().argmin())
    assert entry["best_val_loss"] == pytest.approx(hist["val_loss"].min())
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0] / 5
    assert entry["params"]["split_key"] == "split" and entry["params"]["n_validation"] == 120
    # the embedding encodes the observables and x'' linearly, much better than x (paper Fig. 1C)
    fl.tl.superposition(a, "X_ae", ["X", "X_programs", "X_programs_active"])
    sup = fl.get.recovery(a, "superposition", "X_ae")
    assert sup.loc["X_programs_active", "mean_r2"] > 0.8
    assert sup.loc["X_programs_active", "mean_r2"] > sup.loc["X_programs", "mean_r2"] + 0.4
    a.write_h5ad(tmp_path / "ae.h5ad")
    assert_uns_equal(a.uns["ae"], ad.read_h5ad(tmp_path / "ae.h5ad").uns["ae"])


def test_autoencoder_is_reproducible_and_stops_early(sim_ae):
    a = sim_ae[np.r_[0:340, 1140:1200]].copy()  # 340 training and 60 validation cells
    kw = {"hidden": (16,), "batch_size": 64, "device": "cpu", "progress": False}
    fl.tl.autoencoder(a, 4, n_epochs=3, key_added="r1", **kw)
    fl.tl.autoencoder(a, 4, n_epochs=3, key_added="r2", **kw)
    np.testing.assert_array_equal(a.obsm["X_r1"], a.obsm["X_r2"])
    fl.tl.autoencoder(a, 4, n_epochs=3, key_added="r3", random_state=1, **kw)
    assert not np.array_equal(a.obsm["X_r1"], a.obsm["X_r3"])
    # a large learning rate makes the validation loss bounce: training stops `patience` epochs after the best
    fl.tl.autoencoder(a, 4, n_epochs=200, lr=0.05, patience=2, key_added="es", **kw)
    hist = a.uns["es"]["history"]
    assert len(hist) < 200
    assert a.uns["es"]["best_epoch"] == len(hist) - 1 - 2
    # without a split column a random 10 % is held out
    del a.obs["split"]
    fl.tl.autoencoder(a, 4, n_epochs=2, key_added="nosplit", **kw)
    p = a.uns["nosplit"]["params"]
    assert p["split_key"] is None and p["n_validation"] == 40 and p["n_train"] == 360
    assert a.uns["r1"]["params"]["n_validation"] == 60
    with pytest.raises(ValueError, match="not a column"):
        fl.tl.autoencoder(a, 4, split_key="fold", **kw)
    a.X = -a.X
    with pytest.raises(ValueError, match="non-negative"):
        fl.tl.autoencoder(a, 4, **kw)


def test_sae_features_on_the_simulation(sim_ae):
    """The whole section-4 workflow: AE embedding -> SAE -> recovery of the generative variables."""
    a = sim_ae.copy()
    fl.tl.sae(a, "X_ae", architecture="relu", expansion=4, n_steps=1000, device="cpu", progress=False)
    variables = ["X", "X_programs", "X_programs_active"]
    fl.tl.variable_recovery(a, variables, key="sae")
    rec = fl.get.recovery(a, "variable_recovery", "sae")
    res = a.uns["variable_recovery"]["sae"]
    assert res["features"].index.equals(a.uns["sae"]["features"].index)
    assert res["params"]["absolute"] is False
    assert rec.loc["X_programs_active", "mean_best_r"] > rec.loc["X_programs", "mean_best_r"] + 0.3
    assert rec.loc["X", "mean_best_r"] > rec.loc["X_programs", "mean_best_r"] + 0.3
    fl.tl.structure_recovery(a, "sae")
    st = fl.get.recovery(a, "structure_recovery", "sae")
    assert list(st.index) == ["20", "30", "40", "50", "60", "70"]
    assert ((st["frac_recovered"] >= 0) & (st["frac_recovered"] <= 1)).all()


def test_recovery_plot_draws_the_stored_table(sim_ae):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    a = sim_ae.copy()
    a.obsm["X_pca_ae"] = PCA(10, random_state=0).fit_transform(a.obsm["X_ae"])
    variables = ["X", "X_programs", "X_programs_active"]
    for rep in ("X_ae", "X_pca_ae"):
        fl.tl.variable_recovery(a, variables, use_rep=rep)
    before = {k: v["summary"].copy() for k, v in a.uns["variable_recovery"].items()}
    fig = fl.pl.recovery(a, ["X_pca_ae", "X_ae"], labels={"X_programs_active": "X''"}, return_fig=True)
    ax = fig.axes[0]
    heights = np.array([b.get_height() for b in ax.patches]).reshape(2, 3)
    for i, rep in enumerate(("X_pca_ae", "X_ae")):
        np.testing.assert_allclose(heights[i], a.uns["variable_recovery"][rep]["summary"].loc[variables, "mean_best_r"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["X", "X_programs", "X''"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["X_pca_ae", "X_ae"]
    plt.close(fig)
    for k, v in before.items():
        pd.testing.assert_frame_equal(v, a.uns["variable_recovery"][k]["summary"])
    with pytest.raises(ValueError, match="No recovery results"):
        fl.pl.recovery(a, ["X_ica"])
    with pytest.raises(ValueError, match="Unknown variable"):
        fl.pl.recovery(a, variables=["Y"])
    with pytest.raises(ValueError, match="No variable recovery results"):
        fl.pl.recovery(fl.datasets.simulate("small", n_obs=50))
