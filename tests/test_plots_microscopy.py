"""Microscopy plots: token maps over the most active nuclei crops and the most / least aligned crops, checked
against token_scores, the activations and an independently computed cosine."""

from __future__ import annotations

import copy

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import assert_uns_equal, check_image, small_cnn, tiles
from scipy.ndimage import zoom

import featurelens as fl

KEY = "sae"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def nuclei():
    """64 raw 64 x 64 crops (uint16) of the stardist nuclei image, their CNN tokens (8 x 8 grid) and an SAE on the
    pooled embedding (standardised, so the cosine has both signs), plus the feature active in the most crops."""
    raw = tiles(fl.datasets.nuclei_image()[0], 64)
    img = raw.astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.8])
    obs = pd.DataFrame({"row": np.repeat(np.arange(8), 8), "col": np.tile(np.arange(8), 8)})
    obs.index = [f"crop_{r}_{c}" for r, c in zip(obs["row"], obs["col"], strict=True)]
    adata = fl.microscopy.extract_embeddings(
        small_cnn(), np.clip((img - lo) / (hi - lo), 0, 1), layer="pool3", obs=obs, progress=False
    )
    fl.tl.sae(adata, "X_emb", n_features=16, k=4, n_steps=60, normalize="standardize", progress=False)
    nnz = np.diff(sp.csc_matrix(adata.obsm["X_sae"]).indptr)
    feature = int(np.argmax(nnz))
    assert 8 <= nnz[feature] < 64  # a feature with a real top and zeros below
    fl.tl.token_scores(adata, KEY, feature)  # the plots draw what the tool stored
    return adata, raw, feature


def _activation(adata, feature):
    return np.asarray(adata.obsm[f"X_{KEY}"][:, feature].toarray()).ravel()


def _snapshot(adata):
    return (
        copy.deepcopy(dict(adata.uns)),
        adata.obs.copy(),
        {k: np.array(v.toarray() if sp.issparse(v) else v) for k, v in adata.obsm.items()},
    )


def _assert_unchanged(adata, before):
    uns, obs, obsm = before
    assert_uns_equal(uns, dict(adata.uns))
    pd.testing.assert_frame_equal(obs, adata.obs)
    assert set(obsm) == set(adata.obsm.keys())
    for k, v in obsm.items():
        got = adata.obsm[k]
        np.testing.assert_array_equal(v, got.toarray() if sp.issparse(got) else got, err_msg=k)


def _layers(ax):
    """(image array or None, overlay array) of one token_heatmap panel."""
    by = {im.get_label(): im for im in ax.images}
    image = by.get("image")
    return (None if image is None else np.asarray(image.get_array())), np.asarray(by["token scores"].get_array())


def _cosine_rows(Y, w):
    cos = (Y @ w) / (np.linalg.norm(Y, axis=1) * np.linalg.norm(w))
    return np.argsort(-cos, kind="stable"), np.argsort(cos, kind="stable"), cos


# ----------------------------------------------------------------------------- token_heatmap
def test_token_heatmap_top_crops_with_upsampled_token_scores(nuclei):
    adata, raw, feature = nuclei
    before = _snapshot(adata)
    act = _activation(adata, feature)
    scores = fl.get.token_scores(adata, KEY, feature)  # (64, 8, 8)
    axes = fl.pl.token_heatmap(adata, KEY, feature, raw, n=5, show=False)
    top = np.argsort(-act, kind="stable")[:5]
    assert len(axes) == 5
    name = str(adata.uns[KEY]["features"].index[feature])
    for ax, i in zip(axes, top, strict=True):
        image, overlay = _layers(ax)
        np.testing.assert_array_equal(image, raw[i])
        np.testing.assert_array_equal(overlay, np.kron(scores[i], np.ones((8, 8))))  # nearest: 8 x 8 blocks
        assert ax.get_title() == f"{adata.obs_names[i]}\n{name} = {act[i]:.3g}"
    # one shared colour scale (smallest to largest score shown) and one colour bar
    shown = scores[top]
    for ax in axes:
        im = ax.images[-1]
        assert (im.norm.vmin, im.norm.vmax) == pytest.approx((shown.min(), shown.max()))
        assert im.get_alpha() == 0.5
    fig = axes[0].figure
    assert len(fig.axes) == 6 and "cosine(token" in fig.axes[-1].get_ylabel()
    # all gray images share one display range: the 0.5 / 99.5 percentiles of the pixels shown
    lo, hi = np.percentile(raw[top].astype(np.float64), [0.5, 99.5])
    for ax in axes:
        assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == pytest.approx((lo, hi))

    # bottom of the ranking, bilinear resampling, fixed colour limits, the feature by name
    axes = fl.pl.token_heatmap(
        adata, KEY, name, list(raw), n=3, order="bottom", upsample="bilinear", vmin=-1, vmax=1, show=False
    )
    low = np.argsort(act, kind="stable")[:3]
    for ax, i in zip(axes, low, strict=True):
        ref = zoom(scores[i].astype(np.float64), 8, order=1, grid_mode=True, mode="nearest")
        np.testing.assert_allclose(_layers(ax)[1], ref, atol=1e-6)
        assert (ax.images[-1].norm.vmin, ax.images[-1].norm.vmax) == (-1, 1)
    _assert_unchanged(adata, before)


def test_token_heatmap_explicit_cells_channels_and_no_images(nuclei):
    adata, raw, feature = nuclei
    before = _snapshot(adata)
    scores = fl.get.token_scores(adata, KEY, feature)
    cells = ["crop_3_4", 0, -1, "crop_3_4"]
    rows = [28, 0, 63, 28]
    # (n, C, H, W) images with three channels are drawn as RGB (H, W, 3), rescaled together to [0, 1]
    rgb = np.stack([raw, raw // 2, raw // 4], axis=1).astype(np.float32)
    axes = fl.pl.token_heatmap(adata, KEY, feature, rgb, cells=cells, ncols=2, show=False)
    lo, hi = rgb[rows].min(), rgb[rows].max()
    assert [ax.get_title().split("\n")[0] for ax in axes] == [adata.obs_names[i] for i in rows]
    for ax, i in zip(axes, rows, strict=True):
        image, overlay = _layers(ax)
        np.testing.assert_allclose(image, (np.moveaxis(rgb[i], 0, -1) - lo) / (hi - lo), rtol=1e-6)
        np.testing.assert_array_equal(overlay, np.kron(scores[i], np.ones((8, 8))))
    assert axes[0].figure.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 2)
    # images of other sizes: the maps follow every image's own size
    odd = [np.asarray(r[:60, :50]) for r in raw]
    (ax,) = fl.pl.token_heatmap(adata, KEY, feature, odd, cells=[5], show=False)
    ref = zoom(scores[5], (60 / 8, 50 / 8), order=0, grid_mode=True, mode="nearest")
    np.testing.assert_array_equal(_layers(ax)[1], ref)
    # without images: the token maps alone, at the grid's resolution and opaque
    axes = fl.pl.token_heatmap(adata, KEY, feature, n=4, show=False)
    top = np.argsort(-_activation(adata, feature), kind="stable")[:4]
    for ax, i in zip(axes, top, strict=True):
        image, overlay = _layers(ax)
        assert image is None and len(ax.images) == 1 and ax.images[0].get_alpha() == 1.0
        np.testing.assert_array_equal(overlay, scores[i])
    _assert_unchanged(adata, before)


def test_token_heatmap_reads_images_from_a_path_column(nuclei, tmp_path):
    import tifffile

    adata, raw, feature = nuclei
    adata = adata.copy()
    top = np.argsort(-_activation(adata, feature), kind="stable")[:3]
    paths = [str(tmp_path / f"missing_{i}.tif") for i in range(adata.n_obs)]  # only the shown images are read
    for i in top[:2]:
        paths[i] = str(tmp_path / f"crop_{i}.tif")
        tifffile.imwrite(paths[i], raw[i])
    # an RGB png, read by matplotlib (float RGBA in [0, 1]; the alpha channel is dropped)
    rgb = np.stack([raw[top[2]] >> 8, np.zeros_like(raw[top[2]]), 255 - (raw[top[2]] >> 8)], -1).astype(np.uint8)
    paths[top[2]] = str(tmp_path / "crop.png")
    mpimg.imsave(paths[top[2]], rgb)
    adata.obs["path"] = paths
    before = _snapshot(adata)
    axes = fl.pl.token_heatmap(adata, KEY, feature, n=3, image_key="path", show=False)
    np.testing.assert_array_equal(_layers(axes[0])[0], raw[top[0]])
    np.testing.assert_array_equal(_layers(axes[1])[0], raw[top[1]])
    np.testing.assert_allclose(_layers(axes[2])[0], rgb / 255.0, atol=1e-6)
    _assert_unchanged(adata, before)
    with pytest.raises(FileNotFoundError, match=r"missing_"):
        fl.pl.token_heatmap(adata, KEY, feature, n=4, image_key="path", show=False)
    # a multi-page (C, H, W) tif with three channels is shown as RGB
    paths[top[0]] = str(tmp_path / "chw.tif")
    chw = np.stack([raw[top[0]] >> 8, raw[top[0]] >> 9, raw[top[0]] >> 10]).astype(np.uint8)
    tifffile.imwrite(paths[top[0]], chw, photometric="minisblack")
    adata.obs["path"] = paths
    (ax,) = fl.pl.token_heatmap(adata, KEY, feature, cells=[int(top[0])], image_key="path", show=False)
    np.testing.assert_array_equal(_layers(ax)[0], np.moveaxis(chw, 0, -1))


def test_token_heatmap_errors(nuclei):
    adata, raw, feature = nuclei
    with pytest.raises(ValueError, match=r"Unknown feature 'f99'"):
        fl.pl.token_heatmap(adata, KEY, "f99", raw)
    with pytest.raises(ValueError, match=r"out of range.*16 features"):
        fl.pl.token_heatmap(adata, KEY, 16, raw)
    with pytest.raises(ValueError, match=r"No dictionary under"):
        fl.pl.token_heatmap(adata, "icfl", 0, raw)
    with pytest.raises(ValueError, match=r"holds 63 images but adata has 64"):
        fl.pl.token_heatmap(adata, KEY, feature, raw[:63])
    with pytest.raises(ValueError, match=r"\(n_obs, H, W\)"):
        fl.pl.token_heatmap(adata, KEY, feature, raw[0])
    with pytest.raises(ValueError, match=r"C = 1, 3 or 4.*\[0, 1, 2\]"):
        fl.pl.token_heatmap(adata, KEY, feature, np.repeat(raw[..., None], 5, axis=-1))
    with pytest.raises(ValueError, match=r"image_key='path'` is not a column of adata.obs.*'row'"):
        fl.pl.token_heatmap(adata, KEY, feature, image_key="path")
    with pytest.raises(ValueError, match=r"not both"):
        fl.pl.token_heatmap(adata, KEY, feature, raw, image_key="row")
    with pytest.raises(ValueError, match=r"order"):
        fl.pl.token_heatmap(adata, KEY, feature, raw, order="middle")
    with pytest.raises(ValueError, match=r"upsample"):
        fl.pl.token_heatmap(adata, KEY, feature, raw, upsample="cubic")
    with pytest.raises(ValueError, match=r"`n` must be at least 1"):
        fl.pl.token_heatmap(adata, KEY, feature, raw, n=0)
    with pytest.raises(ValueError, match=r"'crop_9_9' is not an observation name"):
        fl.pl.token_heatmap(adata, KEY, feature, raw, cells=["crop_9_9"])
    with pytest.raises(ValueError, match=r"position 64 is out of range"):
        fl.pl.token_heatmap(adata, KEY, feature, raw, cells=[64])
    _, axs = plt.subplots(1, 2)
    with pytest.raises(ValueError, match=r"needs 3 Axes"):
        fl.pl.token_heatmap(adata, KEY, feature, raw, n=3, ax=axs)
    # no token embeddings: aggregated crops (one row per image row of the tiling)
    rows = fl.microscopy.aggregate(adata, "row")
    fl.tl.encode(rows, KEY, progress=False)
    with pytest.raises(ValueError, match=r"no token embeddings"):
        fl.pl.token_heatmap(rows, KEY, feature, raw[:8])


# ----------------------------------------------------------------------------- top_images
def test_top_images_rows_are_the_extremes_of_the_cosine(nuclei):
    adata, raw, feature = nuclei
    before = _snapshot(adata)
    pre = adata.uns[KEY]["preprocess"]
    Y = (adata.obsm["X_emb"].astype(np.float64) - pre["mean"]) / pre["scale"]  # the SAE's standardisation
    pos, neg, cos = _cosine_rows(Y, adata.uns[KEY]["decoder"][feature].astype(np.float64))
    assert cos.min() < 0 < cos.max()
    axes = fl.pl.top_images(adata, KEY, feature, raw, n=4, show=False)
    assert axes.shape == (2, 4)
    for row, want in zip(axes, (pos[:4], neg[:4]), strict=True):
        assert [ax.get_title().split("\n")[0] for ax in row] == [adata.obs_names[i] for i in want]
        for ax, i in zip(row, want, strict=True):
            np.testing.assert_array_equal(ax.images[0].get_array(), raw[i])
            assert ax.get_title().split("\n")[1] == f"cos {cos[i]:+.3f}"
    assert "largest" in axes[0, 0].get_ylabel() and "smallest" in axes[1, 0].get_ylabel()
    # the token map of a single token equal to the pooled embedding has the same score
    single = fl.microscopy.from_embeddings(adata.obsm["X_emb"][:, None, :].astype(np.float64))
    single.uns[KEY] = copy.deepcopy(adata.uns[KEY])
    fl.tl.token_scores(single, KEY, feature)
    np.testing.assert_allclose(fl.get.token_scores(single, KEY, feature).ravel(), cos, atol=1e-5)
    # drawing into given Axes
    _, axs = plt.subplots(2, 3)
    out = fl.pl.top_images(adata, KEY, feature, raw, n=3, ax=axs, show=False)
    assert out[1, 2] is axs[1, 2] and axs[1, 2].get_title().startswith(adata.obs_names[neg[2]])
    with pytest.raises(ValueError, match=r"needs the images"):
        fl.pl.top_images(adata, KEY, feature)
    with pytest.raises(ValueError, match=r"holds 2 images"):
        fl.pl.top_images(adata, KEY, feature, raw[:2])
    with pytest.raises(ValueError, match=r"Unknown feature"):
        fl.pl.top_images(adata, KEY, "nope", raw)
    with pytest.raises(ValueError, match=r"image_key='file'` is not a column"):
        fl.pl.top_images(adata, KEY, feature, image_key="file")
    _assert_unchanged(adata, before)


def test_top_images_apply_the_control_whitening_and_need_no_tokens(tmp_path):
    """Synthetic tokens (as in test_microscopy), DMSO-style whitening and an SAE on the whitened embedding; images
    are tif files named in obs. The same rows come out whether the whitened embedding is stored or only its source."""
    import tifffile

    rng = np.random.default_rng(4)
    n, T, d = 40, 4, 6
    tok = rng.normal(size=(n, 1, d)) + np.array([3.0, 0, 0, 0, 0, 1.0]) + 0.5 * rng.normal(size=(n, T, d))
    images = rng.integers(0, 4000, size=(n, 12, 12)).astype(np.uint16)
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"img{i}.tiff"))
        tifffile.imwrite(paths[-1], images[i])
    obs = pd.DataFrame({"condition": np.where(np.arange(n) < 15, "ctrl", "drug"), "file": paths})
    adata = fl.microscopy.from_embeddings(tok, obs)
    fl.pp.whiten(adata, "X_emb", control_key="condition", control_value="ctrl")
    fl.tl.sae(adata, "X_whitened", n_features=8, k=2, n_steps=10, progress=False)
    W = adata.uns["whitened"]
    Yw = ((adata.obsm["X_emb"].astype(np.float64) - W["mean"]) @ W["components"].T.astype(np.float64)) * W["scales"]
    pre = adata.uns[KEY]["preprocess"]  # the default "scale" normalisation: stored mean (zeros) and global scale
    Yw = (Yw - pre["mean"]) / pre["scale"]
    pos, neg, _ = _cosine_rows(Yw, adata.uns[KEY]["decoder"][3].astype(np.float64))
    for data in (adata, _without(adata, "X_whitened", "X_tokens")):
        fl.tl.token_scores(data, KEY, "f3")
        before = _snapshot(data)
        axes = fl.pl.top_images(data, KEY, "f3", n=5, image_key="file", show=False)
        for row, want in zip(axes, (pos[:5], neg[:5]), strict=True):
            assert [ax.get_title().split("\n")[0] for ax in row] == [str(i) for i in want]
            for ax, i in zip(row, want, strict=True):
                np.testing.assert_array_equal(ax.images[0].get_array(), images[i])
        _assert_unchanged(data, before)


def _without(adata, *keys):
    out = adata.copy()
    for k in keys:
        del out.obsm[k]
    out.uns["microscopy"] = {k: v for k, v in out.uns["microscopy"].items() if k != "grid"}
    return out


# ----------------------------------------------------------------------------- image comparison
def test_token_heatmap_image(nuclei, tmp_path):
    """Four crops with a fixed decoder direction, so the picture depends on the data and numpy only: the mean
    standardised token on nuclei minus that on background (stardist's mask), which lights up the nuclei."""

    adata, raw, _ = nuclei
    adata = adata.copy()
    entry = adata.uns[KEY]
    pre = entry["preprocess"]
    tok = (adata.obsm["X_tokens"].reshape(-1, 32).astype(np.float64) - pre["mean"]) / pre["scale"]
    mask = fl.datasets.nuclei_image()[1] > 0
    nuclear = tiles(mask.astype(np.float32), 64).reshape(64, 8, 8, 8, 8).mean(axis=(2, 4)).ravel() > 0.5
    direction = tok[nuclear].mean(0) - tok[~nuclear].mean(0)
    entry["decoder"] = np.tile(direction.astype(np.float32), (16, 1))
    adata.obsm[f"X_{KEY}"] = sp.csr_matrix(np.outer(np.arange(64) % 7, np.ones(16)).astype(np.float32))
    fl.tl.token_scores(adata, KEY, 0)
    fig = fl.pl.token_heatmap(adata, KEY, 0, raw, n=4, ncols=2, return_fig=True)
    check_image(fig, "microscopy_token_heatmap", tmp_path)
