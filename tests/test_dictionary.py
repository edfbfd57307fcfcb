"""fl.tl.sae / fl.tl.icfl / fl.tl.encode / fl.tl.reconstruct on AnnData, with real data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import assert_uns_equal, planted_dictionary

import featurelens as fl
from featurelens.models import TrainingDivergedError

FAST = {"n_steps": 600, "batch_size": 512, "progress": False}

# FVU bounds on Kang 2018 (30-PC PCA, 240 features) after 600 steps; measured values are about
# vanilla 0.030, relu 0.043, topk 0.046, batchtopk 0.055, icfl 0.024.
FVU_BOUND = {"vanilla": 0.06, "relu": 0.08, "topk": 0.08, "batchtopk": 0.10, "icfl": 0.05}


def _train(adata, method, **kw):
    if method == "icfl":
        fl.tl.icfl(adata, "X_pca", **{**FAST, **kw})
        return "icfl"
    fl.tl.sae(adata, "X_pca", architecture=method, **{**FAST, **kw})
    return "sae"


@pytest.mark.parametrize("method", ["vanilla", "relu", "topk", "batchtopk", "icfl"])
def test_each_learner_trains_and_reconstructs_kang(kang, method):
    key = _train(kang, method)
    Z = kang.obsm[f"X_{key}"]
    entry = kang.uns[key]
    assert sp.isspmatrix_csr(Z) and Z.dtype == np.float32 and Z.shape == (2000, 240)
    assert entry["metrics"]["fvu"] < FVU_BOUND[method]
    dec = entry["decoder"]
    assert dec.shape == (240, 30)
    np.testing.assert_allclose(np.linalg.norm(dec, axis=1), 1, rtol=1e-4)
    nnz = Z.getnnz(axis=1)
    if method == "topk":
        assert nnz.max() <= 15 and nnz.mean() > 14  # k = min(32, d // 2) = 15
        assert entry["params"]["k"] == 15
    if method == "icfl":
        assert nnz.max() <= 15  # n_iter * n_per_iter = 3 * 5
        assert entry["params"]["n_iter"] == 3
    if method in ("vanilla", "relu", "topk", "batchtopk"):
        assert Z.min() >= 0
    # reconstruction in the space of X_pca agrees with the stored training metric
    fl.tl.reconstruct(kang, key)
    rec = kang.uns[key]["reconstruction"]
    X = kang.obsm["X_pca"]
    fvu = ((X - kang.obsm[f"X_{key}_recon"]) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()
    assert rec["fvu"] == pytest.approx(fvu, rel=1e-4)
    if method != "icfl":  # a global scale factor leaves the FVU unchanged
        assert rec["fvu"] == pytest.approx(entry["metrics"]["fvu"], rel=1e-3)
    hist = entry["history"]
    assert {"step", "samples_seen", "loss", "mse", "fvu", "l0", "dead_fraction", "n_dead", "lr"} <= set(hist.columns)
    assert hist["step"].iloc[-1] == 599 and hist["fvu"].iloc[-1] < hist["fvu"].iloc[0]
    feats = entry["features"]
    assert list(feats.index[:3]) == ["f0", "f1", "f2"] and feats.shape[0] == 240
    assert feats["dead_training"].sum() == entry["metrics"]["n_dead_training"] == hist["n_dead"].iloc[-1]


def test_params_record_every_resolved_option(kang):
    fl.tl.sae(kang, "X_pca", **FAST)
    p = kang.uns["sae"]["params"]
    for name in (
        "use_rep",
        "architecture",
        "n_features",
        "k",
        "k_aux",
        "lr",
        "batch_size",
        "n_steps",
        "normalize",
        "dead_window",
        "random_state",
        "device",
        "featurelens_version",
        "auxk",
    ):
        assert name in p, name
    assert p["use_rep"] == "X_pca" and p["architecture"] == "topk" and p["device"] == "cpu"
    assert p["lr"] == 3e-3 and p["n_features"] == 240 and p["dead_window"] == 15360
    for v in p.values():
        assert v is None or isinstance(v, str | int | float | bool)


@pytest.mark.parametrize("method", ["topk", "icfl"])
def test_planted_atoms_are_recovered(method):
    X, W, _ = planted_dictionary(n=3000, d=32, m=64, s=3, noise=0.01, seed=0)
    adata = ad.AnnData(np.zeros((X.shape[0], 1), np.float32))
    adata.obsm["X_emb"] = X
    if method == "topk":
        fl.tl.sae(adata, "X_emb", k=3, n_features=128, n_steps=600, batch_size=256, lr=3e-3, progress=False)
        dec = adata.uns["sae"]["decoder"]
    else:
        fl.tl.icfl(
            adata, "X_emb", n_iter=3, n_per_iter=1, n_features=128, n_steps=600, batch_size=256, lr=3e-3, progress=False
        )
        dec = adata.uns["icfl"]["decoder"]
    best = (W @ dec.T).max(axis=1)
    assert (best > 0.95).mean() >= 0.9


@pytest.mark.parametrize("method", ["topk", "batchtopk", "icfl"])
def test_h5ad_round_trip_and_encode_reproduces_obsm(kang, method, tmp_path):
    key = _train(kang, method, n_steps=200)
    kang.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert_uns_equal(kang.uns[key], back.uns[key])
    assert sp.issparse(back.obsm[f"X_{key}"])
    fl.tl.encode(back, key, key_added="again", progress=False)
    a, b = kang.obsm[f"X_{key}"], back.obsm["X_again"]
    np.testing.assert_allclose(b.toarray(), a.toarray(), atol=1e-6)
    np.testing.assert_array_equal(a.getnnz(axis=1), b.getnnz(axis=1))
    assert_uns_equal(kang.uns[key]["features"][["train_fire_rate", "dead_training"]], back.uns["again"]["features"])


def test_encode_other_dataset_with_source(kang):
    ref, query = kang[:1200].copy(), kang[1200:].copy()
    fl.tl.sae(ref, "X_pca", **FAST)
    fl.tl.encode(query, "sae", source=ref, progress=False)
    assert "sae" in query.uns and query.obsm["X_sae"].shape == (800, 240)
    # identical to encoding the same rows inside the reference object
    both = kang.copy()
    both.uns["sae"] = ref.uns["sae"]
    fl.tl.encode(both, "sae", progress=False)
    np.testing.assert_allclose(query.obsm["X_sae"].toarray(), both.obsm["X_sae"][1200:].toarray(), atol=1e-5)
    # and to applying the stored math by hand: TopK(ReLU(W_enc (x / s - b_pre) + b_enc))
    e = ref.uns["sae"]
    x = query.obsm["X_pca"] / e["preprocess"]["scale"]
    pre = (x - e["pre_bias"]) @ e["encoder"].T + e["encoder_bias"]
    thr = np.sort(pre, axis=1)[:, -15][:, None]
    manual = np.where(pre >= thr, np.maximum(pre, 0), 0)
    np.testing.assert_allclose(query.obsm["X_sae"].toarray(), manual, atol=1e-4)


def test_dictionary_on_whitened_embedding_encodes_the_raw_one(kang):
    fl.pp.whiten(kang, "X_pca", control_key="condition", control_value="CTRL")
    fl.tl.icfl(kang, "X_whitened", **FAST)
    pre = kang.uns["icfl"]["preprocess"]
    assert pre["whiten"]["use_rep"] == "X_pca" and pre["whiten"]["key"] == "whitened"
    # a new object that only has X_pca: encode whitens on the fly
    new = ad.AnnData(np.zeros((kang.n_obs, 1), np.float32), obs=kang.obs.copy())
    new.obsm["X_pca"] = kang.obsm["X_pca"].copy()
    fl.tl.encode(new, "icfl", source=kang, progress=False)
    np.testing.assert_allclose(new.obsm["X_icfl"].toarray(), kang.obsm["X_icfl"].toarray(), atol=1e-4)
    # explicit choices
    fl.tl.encode(kang, "icfl", use_rep="X_pca", key_added="via_raw", progress=False)
    np.testing.assert_allclose(kang.obsm["X_via_raw"].toarray(), kang.obsm["X_icfl"].toarray(), atol=1e-4)
    kang.obsm["X_other"] = kang.obsm["X_pca"]
    with pytest.raises(ValueError, match="Pass `whiten=True`"):
        fl.tl.encode(kang, "icfl", use_rep="X_other")
    # reconstruction back in X_pca space
    fl.tl.reconstruct(kang, "icfl", use_rep="X_pca")
    assert kang.obsm["X_icfl_recon"].shape == kang.obsm["X_pca"].shape
    assert kang.uns["icfl"]["reconstruction"]["fvu"] < 0.1


def test_cpu_training_is_deterministic(kang):
    a, b, c = kang.copy(), kang.copy(), kang.copy()
    for adata, seed in ((a, 0), (b, 0), (c, 1)):
        fl.tl.sae(adata, "X_pca", n_steps=150, batch_size=256, random_state=seed, progress=False)
        fl.tl.icfl(adata, "X_pca", n_steps=150, batch_size=256, random_state=seed, progress=False)
    for key in ("sae", "icfl"):
        np.testing.assert_array_equal(a.uns[key]["decoder"], b.uns[key]["decoder"])
        assert (a.obsm[f"X_{key}"] != b.obsm[f"X_{key}"]).nnz == 0
        assert not np.allclose(a.uns[key]["decoder"], c.uns[key]["decoder"])


def test_copy_and_view_semantics(kang):
    out = fl.tl.sae(kang, "X_pca", n_steps=50, copy=True, progress=False)
    assert "X_sae" in out.obsm and "X_sae" not in kang.obsm and "sae" not in kang.uns
    view = kang[:300]
    with pytest.warns(UserWarning, match="view of an AnnData"):
        fl.tl.icfl(view, "X_pca", n_steps=50, progress=False)
    assert not view.is_view and view.obsm["X_icfl"].shape[0] == 300
    assert "X_icfl" not in kang.obsm


def _unchanged(adata, before):
    assert set(adata.obsm.keys()) == before[0] and set(adata.uns.keys()) == before[1]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda a: fl.tl.sae(a, "X_scvi"),
            r"`use_rep='X_scvi'` is not in adata.obsm, which has 'X_pca_2d', 'X_umap_2d', 'X_pca'",
        ),
        (lambda a: fl.tl.sae(a, "X_pca", n_features=0), r"`n_features` must be at least 1, got 0"),
        (lambda a: fl.tl.sae(a, "X_pca", n_features=16, k=16), r"`k=16` must be smaller than `n_features=16`"),
        (lambda a: fl.tl.sae(a, "X_pca", architecture="gated"), r"`architecture` must be one of .*, got 'gated'"),
        (lambda a: fl.tl.sae(a, "X_pca", normalize="l2"), r"`normalize` must be one of 'none', .*, got 'l2'"),
        (
            lambda a: fl.tl.icfl(a, "X_pca", n_features=20, n_iter=5, n_per_iter=5),
            r"`n_iter \* n_per_iter` = 5 \* 5 = 25 exceeds `n_features=20`",
        ),
        (lambda a: fl.tl.icfl(a, "X_pca", selection="max"), r"`selection` must be one of"),
        (lambda a: fl.tl.sae(a, "X_pca", device="cuda:0"), r"CUDA is not available"),
        (lambda a: fl.tl.encode(a, "nothing"), r"No dictionary under adata.uns\['nothing'\]"),
        (lambda a: fl.tl.reconstruct(a, "nothing"), r"No dictionary under adata.uns\['nothing'\]"),
    ],
)
def test_bad_input_gives_clear_error_and_leaves_adata_unchanged(kang, call, match):
    import torch

    if "cuda" in match and torch.cuda.is_available():
        pytest.skip("CUDA present")
    before = (set(kang.obsm.keys()), set(kang.uns.keys()))
    with pytest.raises((ValueError, TypeError), match=match):
        call(kang)
    _unchanged(kang, before)


def test_nan_rows_are_counted(kang):
    kang.obsm["X_pca"][[3, 10, 11]] = np.nan
    before = (set(kang.obsm.keys()), set(kang.uns.keys()))
    with pytest.raises(ValueError, match=r"3 of 2000 rows of 'X_pca' contain NaN or Inf values"):
        fl.tl.icfl(kang, "X_pca")
    _unchanged(kang, before)


def test_empty_anndata_is_rejected():
    empty = ad.AnnData(np.zeros((0, 3), np.float32))
    empty.obsm["X_pca"] = np.zeros((0, 4), np.float32)
    with pytest.raises(ValueError, match="no observations"):
        fl.tl.sae(empty, "X_pca")


def test_encode_checks_dimensions(kang):
    fl.tl.sae(kang, "X_pca", n_steps=50, progress=False)
    other = ad.AnnData(np.zeros((5, 1), np.float32))
    other.obsm["X_pca"] = np.zeros((5, 10), np.float32)
    with pytest.raises(ValueError, match="has 10 dimensions but the dictionary expects 30"):
        fl.tl.encode(other, "sae", source=kang)
    assert "X_sae" not in other.obsm


def test_divergence_leaves_adata_unchanged(kang):
    before = (set(kang.obsm.keys()), set(kang.uns.keys()))
    with pytest.raises(TrainingDivergedError, match="diverged") as info:
        fl.tl.sae(kang, "X_pca", architecture="vanilla", lr=1e30, n_steps=100, progress=False)
    _unchanged(kang, before)
    assert all(np.isfinite(p.detach().numpy()).all() for p in info.value.model.parameters())


def test_progress_bar_is_shown_and_can_be_turned_off(kang, capsys):
    fl.tl.sae(kang, "X_pca", n_steps=30, progress=False)
    assert capsys.readouterr().err == ""
    fl.tl.sae(kang, "X_pca", n_steps=30, progress=True)
    assert "sae (topk)" in capsys.readouterr().err  # the bar is drawn from its first step


def test_get_accessors_and_history_plot(kang):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fl.tl.sae(kang, "X_pca", n_steps=60, log_every=10, progress=False)
    feats = fl.get.features(kang, "sae")
    feats["new"] = 1
    assert "new" not in kang.uns["sae"]["features"]  # a copy
    hist = fl.get.history(kang, "sae")
    assert hist["step"].tolist() == [0, 10, 20, 30, 40, 50, 59]
    dic = fl.get.dictionary(kang, "sae")
    assert isinstance(dic, pd.DataFrame) and dic.shape == (240, 30) and dic.index[0] == "f0"
    np.testing.assert_array_equal(dic.to_numpy(), kang.uns["sae"]["decoder"])
    fig = fl.pl.history(kang, "sae", return_fig=True)
    assert len(fig.axes) == 4
    _, ax = plt.subplots()
    out = fl.pl.history(kang, "sae", "fvu", ax=ax, show=False)
    assert out is ax and ax.get_title() == "fvu" and len(ax.lines) == 1
    with pytest.raises(ValueError, match="None of"):
        fl.pl.history(kang, "sae", "accuracy")
    plt.close("all")
