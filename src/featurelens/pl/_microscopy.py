"""Microscopy plots: token maps of a feature on its most active images, and the most aligned images (read-only)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from .._checks import check_choice, check_number, check_positive_int
from .._core import cell_positions, doc, feature_column, get_entry, one_feature, token_info
from ..get import token_scores as _stored_token_scores
from ._training import PlotResult, _finish

ORDERS = ("top", "bottom")
UPSAMPLING = ("nearest", "bilinear")
TIFF_SUFFIXES = (".tif", ".tiff")
GRAY_PERCENTILES = (0.5, 99.5)


# ---------------------------------------------------------------------- helpers
def _feature(adata: AnnData, key: str, feature) -> tuple[dict, int, str]:
    """The dictionary entry, the feature's position and its name."""
    entry = get_entry(adata, key)
    j, name = one_feature(entry, feature)
    return entry, j, name


def _check_images(adata: AnnData, images, image_key: str | None) -> None:
    """Validate the image source before anything is computed."""
    if images is not None and image_key is not None:
        raise ValueError("Pass the images either as `images=` (an array) or as `image_key=` (a path column), not both.")
    if image_key is not None and image_key not in adata.obs:
        cols = ", ".join(map(repr, adata.obs.columns)) or "nothing"
        raise ValueError(f"`image_key={image_key!r}` is not a column of adata.obs, which has {cols}.")
    if images is None:
        return
    if isinstance(images, str | os.PathLike):
        raise TypeError("`images=` takes an array of images; for file paths in adata.obs use `image_key=`.")
    if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
        raise ValueError(
            f"`images` has shape {images.shape}; expected one image per observation: (n_obs, H, W), "
            "(n_obs, H, W, C) or (n_obs, C, H, W)."
        )
    if len(images) != adata.n_obs:
        raise ValueError(
            f"`images` holds {len(images)} images but adata has {adata.n_obs} observations; pass one image per "
            "observation, in the order of adata.obs_names."
        )


def _read_image(path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist.")
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        return np.asarray(tifffile.imread(path))
    import matplotlib.image as mpimg

    return np.asarray(mpimg.imread(path))


def _raw_image(adata: AnnData, i: int, images, image_key: str | None) -> np.ndarray:
    """Image of row ``i``, as stored or read from disk (no rescaling)."""
    if image_key is not None:
        value = adata.obs[image_key].iloc[i]
        if value is None or (not isinstance(value, str | os.PathLike) and pd.isna(value)):
            raise ValueError(f"adata.obs[{image_key!r}] has no path for observation {adata.obs_names[i]!r}.")
        return _read_image(value)
    img = images[i]
    if hasattr(img, "detach") and hasattr(img, "cpu"):  # torch.Tensor
        img = img.detach().cpu().numpy()
    return np.asarray(img)


def _channels_last(img: np.ndarray, name: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` (RGB) from ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in 1, 3 or 4."""
    if img.dtype == object or not (np.issubdtype(img.dtype, np.number) or img.dtype == bool):
        raise TypeError(f"The image of {name} is not numeric (dtype {img.dtype}).")
    if img.ndim == 2:
        return img
    if img.ndim == 3:
        if img.shape[-1] in (1, 3, 4):
            out = img
        elif img.shape[0] in (1, 3, 4):
            out = np.moveaxis(img, 0, -1)
        else:
            out = None
        if out is not None:
            return out[..., 0] if out.shape[-1] == 1 else out[..., :3]  # gray, or RGB without alpha
    raise ValueError(
        f"The image of {name} has shape {img.shape}; expected (H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4. "
        "For more channels pick one or three, e.g. `images[..., [0, 1, 2]]`."
    )


def _load_images(adata: AnnData, rows: np.ndarray, images, image_key: str | None) -> list[np.ndarray] | None:
    """Display-ready images of ``rows``: 2-D grayscale (raw values) or RGB.

    RGB images are kept when ``uint8`` or all inside [0, 1]; otherwise all RGB images shown are
    rescaled together to [0, 1] (one minimum and maximum over them), so brightness stays comparable.
    """
    if images is None and image_key is None:
        return None
    out = [_channels_last(_raw_image(adata, int(i), images, image_key), repr(str(adata.obs_names[i]))) for i in rows]
    rgb = [k for k, img in enumerate(out) if img.ndim == 3 and img.dtype != np.uint8]
    if rgb:
        lo = min(float(np.nanmin(out[k])) for k in rgb)
        hi = max(float(np.nanmax(out[k])) for k in rgb)
        if lo < 0.0 or hi > 1.0:
            for k in rgb:
                x = out[k].astype(np.float64)
                out[k] = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return out


def _gray_limits(shown: list[np.ndarray] | None) -> tuple[float, float]:
    """One display range for all grayscale images shown: the 0.5 and 99.5 percentiles of their pixels."""
    gray = [img.astype(np.float64).ravel() for img in shown or [] if img.ndim == 2]
    if not gray:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.nanpercentile(np.concatenate(gray), GRAY_PERCENTILES))
    return lo, (hi if hi > lo else lo + 1.0)


def _upsample(scores: np.ndarray, shape: tuple[int, int], method: str) -> np.ndarray:
    """A token map ``(h, w)`` resampled to ``shape`` (pixel centres mapped onto token centres).

    ``"nearest"``: every pixel takes the score of the token it falls in (``np.kron`` with a
    block of ones when the image size is a multiple of the grid). ``"bilinear"``: linear
    interpolation between token centres, constant beyond the outer ones.
    """
    h, w = scores.shape
    H, W = int(shape[0]), int(shape[1])
    if method == "nearest":
        r = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
        c = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
        return scores[np.ix_(r, c)]
    from scipy.ndimage import map_coordinates

    r = (np.arange(H) + 0.5) * h / H - 0.5
    c = (np.arange(W) + 0.5) * w / W - 0.5
    rr, cc = np.meshgrid(r, c, indexing="ij")
    return map_coordinates(scores.astype(np.float64), [rr, cc], order=1, mode="nearest").astype(scores.dtype)


def _show_image(ax, img: np.ndarray, limits: tuple[float, float]):
    if img.ndim == 2:
        return ax.imshow(img, cmap="gray", vmin=limits[0], vmax=limits[1], interpolation="nearest", label="image")
    return ax.imshow(img, interpolation="nearest", label="image")


def _axes(ax, n_panels: int, shape: tuple[int, int], figsize: tuple[float, float], what: str):
    """The figure, a ``shape`` array of Axes (new ones, or the first of the given ``ax``) and whether it is new."""
    if ax is not None:
        flat = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        if len(flat) < n_panels or not all(isinstance(a, Axes) for a in flat):
            raise ValueError(f"`ax=` needs {n_panels} Axes ({what}); got {len(flat)}.")
        return flat[0].figure, np.asarray(flat[:n_panels], dtype=object).reshape(shape), False
    fig, axs = plt.subplots(*shape, figsize=figsize, layout="constrained", squeeze=False)
    return fig, np.asarray(axs, dtype=object), True


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------- token_heatmap
def token_heatmap(
    adata: AnnData,
    key: str,
    feature: str | int,
    images=None,
    n: int = 5,
    *,
    cells=None,
    image_key: str | None = None,
    order: str = "top",
    upsample: str = "nearest",
    alpha: float = 0.5,
    cmap: str = "magma",
    vmin: float | None = None,
    vmax: float | None = None,
    ncols: int = 5,
    ax: Sequence[Axes] | Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Where in the image a feature fires: token score maps on its most active images.

    For the ``n`` images (observations) with the highest activation of ``feature``
    (``adata.obsm[f"X_{key}"]``, ties broken by position; ``order="bottom"``: the lowest), or for
    the explicit ``cells``, every panel shows the image with the feature's token score map stored
    by :func:`featurelens.tl.token_scores` (run it first: the cosine of every patch token,
    preprocessed like the dictionary's input, with the feature's decoder direction) resampled to the image
    size and laid over it semi-transparently, as in Figs. 5, 6D and 10E of the ICFL paper. All
    panels share one colour scale and colour bar; titles give the observation name and its
    activation. Without images the token maps are drawn alone, at the token grid's resolution.
    The AnnData is only read, never modified.

    Parameters
    ----------
    adata
        AnnData with token embeddings (from :func:`featurelens.microscopy.extract_embeddings` or
        :func:`featurelens.microscopy.from_embeddings`) and dictionary ``key`` with its
        activations ``adata.obsm[f"X_{key}"]``.
    {doc_key}
    feature
        Feature name (``"f3"``) or position (``3``).
    images
        One image per observation, in the order of ``adata.obs_names``: an array
        ``(n_obs, H, W)`` (grayscale), ``(n_obs, H, W, C)`` or ``(n_obs, C, H, W)`` with C = 1, 3
        or 4 (a 4th channel is dropped), or a list of such images (sizes may differ). All
        grayscale images shown share one gray scale, from the 0.5 to the 99.5 percentile of
        their pixels together (brightness stays comparable between panels); RGB images are drawn
        as they are when ``uint8`` or inside [0, 1], else rescaled together to [0, 1] (one
        minimum and maximum over the RGB images shown).
    n
        Number of images (ignored with ``cells=``; at most ``adata.n_obs``).
    cells
        Observation names (``str``) or positions (``int``) to show instead of the ranking, in
        this order.
    image_key
        Column of ``adata.obs`` holding one image file path per observation, instead of
        ``images``; ``.tif``/``.tiff`` files are read with :func:`tifffile.imread`, others with
        :func:`matplotlib.image.imread`. Only the shown images are read.
    order
        ``"top"`` (highest activations first) or ``"bottom"`` (lowest first).
    upsample
        ``"nearest"`` (every pixel gets the score of the token it lies in: blocks, equal to
        ``np.kron(scores, np.ones((H // h, W // w)))`` when the image size is a multiple of the
        token grid ``(h, w)``) or ``"bilinear"`` (linear between token centres).
    alpha
        Opacity of the score map over the image (maps without images are opaque).
    cmap
        Colour map of the scores.
    vmin, vmax
        Limits of the shared colour scale (default: the smallest and largest score shown).
    ncols
        Panels per row.
    ax
        Axes to draw into, one per shown image (a list or array; the colour bar takes space
        from them).
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise a 1-D array of the Axes of the shown images
    (in ranking order), or ``None`` when shown. In every panel the image (when given) is the
    first :class:`~matplotlib.image.AxesImage` (label ``"image"``) and the score map the last
    (label ``"token scores"``).

    Examples
    --------
    >>> import numpy as np, featurelens as fl
    >>> rng = np.random.default_rng(0)
    >>> images = rng.random((40, 32, 32))
    >>> adata = fl.microscopy.from_embeddings(rng.normal(size=(40, 16, 8)).astype(np.float32), grid=(4, 4))
    >>> fl.tl.icfl(adata, "X_emb", n_features=16, n_steps=100, progress=False)
    >>> fl.tl.token_scores(adata, "icfl", "f3")
    >>> axes = fl.pl.token_heatmap(adata, "icfl", "f3", images, n=4, show=False)
    """
    _, j, fname = _feature(adata, key, feature)
    check_choice(order, "order", ORDERS)
    check_choice(upsample, "upsample", UPSAMPLING)
    check_positive_int(ncols, "ncols")
    check_number(alpha, "alpha", minimum=0.0, maximum=1.0)
    token_info(adata)  # clear error when there are no tokens
    _check_images(adata, images, image_key)
    all_maps = _stored_token_scores(adata, key, fname)
    act = feature_column(adata, key, j)
    if cells is not None:
        rows = cell_positions(adata, cells)
    else:
        k = min(check_positive_int(n, "n"), adata.n_obs)
        rows = np.argsort(-act if order == "top" else act, kind="stable")[:k]
    maps = all_maps[rows]
    shown = _load_images(adata, rows, images, image_key)
    limits = _gray_limits(shown)
    if shown is None:
        overlays = list(maps)
    else:
        overlays = [_upsample(m, img.shape[:2], upsample) for m, img in zip(maps, shown, strict=True)]

    lo = float(min(o.min() for o in overlays)) if vmin is None else float(vmin)
    hi = float(max(o.max() for o in overlays)) if vmax is None else float(vmax)
    if hi <= lo:
        lo, hi = (lo - 0.5, hi + 0.5) if vmin is None and vmax is None else (lo, lo + 1e-6)
    norm = Normalize(lo, hi)
    k = len(rows)
    nc = min(int(ncols), k)
    nr = math.ceil(k / nc)
    fig, grid, _ = _axes(ax, k, (k,) if ax is not None else (nr, nc), (2.3 * nc + 0.8, 2.5 * nr), "one per image")
    for a in grid.ravel()[k:]:
        a.set_axis_off()
    axes = grid.ravel()[:k]
    for a, i, o, img in zip(axes, rows, overlays, shown or [None] * k, strict=True):
        if img is not None:
            _show_image(a, img, limits)
        a.imshow(
            o, cmap=cmap, norm=norm, alpha=float(alpha) if img is not None else 1.0, interpolation="nearest",
            label="token scores",
        )  # fmt: skip
        a.set_title(f"{adata.obs_names[i]}\n{fname} = {act[i]:.3g}", fontsize="small")
        _clean(a)
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.8, aspect=25, pad=0.02)
    cb.set_label(f"cosine(token, {key}:{fname})", fontsize="small")
    return _finish(fig, show, return_fig, axes)


# ---------------------------------------------------------------------- top_images
def _alignment(adata: AnnData, key: str, fname: str) -> np.ndarray:
    """The alignment stored by :func:`featurelens.tl.token_scores` for a feature."""
    run = (get_entry(adata, key).get("token_scores") or {}).get(f"{key}_{fname}")
    col = run.get("obs_key") if isinstance(run, dict) else None
    if col is None or col not in adata.obs:
        raise ValueError(
            f"No alignment of {key!r}:{fname} in adata.obs; run `fl.tl.token_scores(adata, {key!r}, {fname!r})` first."
        )
    return adata.obs[col].to_numpy(dtype=np.float64)


@doc
def top_images(
    adata: AnnData,
    key: str,
    feature: str | int,
    images=None,
    n: int = 6,
    *,
    image_key: str | None = None,
    ax: Sequence[Axes] | Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """The images most and least aligned with a feature, side by side (Figs. 1D and 11 of the ICFL paper).

    Alignment, stored by :func:`featurelens.tl.token_scores` (run it first), is the cosine between
    every observation's pooled embedding, preprocessed exactly
    as the dictionary's input (``adata.obsm[params["use_rep"]]`` as :func:`featurelens.tl.encode`
    reads it: the stored control whitening applied when only the unwhitened source is present,
    then the dictionary's centring / scaling / unit norm), and the feature's decoder direction
    ``adata.uns[key]["decoder"][feature]``; it is the score a single token gets, applied to the
    pooled embedding. It is signed and defined for every observation, also where the (sparse)
    activation is 0, and needs no token embeddings (well-level objects work). The top row shows
    the ``n`` observations with the largest cosine (most positively aligned, largest first), the
    bottom row the ``n`` with the smallest (most negatively aligned, smallest first); ties are
    broken by position. With fewer than ``2 n`` observations the rows can share images. The
    AnnData is only read, never modified.

    Parameters
    ----------
    adata
        Annotated data matrix holding dictionary ``key`` and the embedding it was trained on.
    {doc_key}
    feature
        Feature name (``"f3"``) or position (``3``).
    images
        One image per observation, as for :func:`token_heatmap`: ``(n_obs, H, W)``,
        ``(n_obs, H, W, C)``, ``(n_obs, C, H, W)`` or a list of images.
    n
        Images per row (at most ``adata.n_obs``).
    image_key
        Column of ``adata.obs`` with one image file path per observation, instead of ``images``
        (``.tif``/``.tiff`` read with :mod:`tifffile`, others with :func:`matplotlib.image.imread`).
    ax
        ``2 x n`` Axes to draw into (first row: positive, second row: negative).
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise a ``(2, n)`` array of Axes (row 0: most
    positively aligned, row 1: most negatively aligned), or ``None`` when shown.

    Examples
    --------
    >>> import numpy as np, featurelens as fl
    >>> rng = np.random.default_rng(0)
    >>> images = rng.random((40, 32, 32))
    >>> adata = fl.microscopy.from_embeddings(rng.normal(size=(40, 8)).astype(np.float32))
    >>> fl.tl.icfl(adata, "X_emb", n_features=16, n_steps=100, progress=False)
    >>> fl.tl.token_scores(adata, "icfl", "f3")
    >>> axes = fl.pl.top_images(adata, "icfl", "f3", images, n=4, show=False)
    """
    _, _, fname = _feature(adata, key, feature)
    if images is None and image_key is None:
        raise ValueError("top_images needs the images: pass `images=` (an array) or `image_key=` (a path column).")
    _check_images(adata, images, image_key)
    k = min(check_positive_int(n, "n"), adata.n_obs)
    cos = _alignment(adata, key, fname)
    rows = np.stack([np.argsort(-cos, kind="stable")[:k], np.argsort(cos, kind="stable")[:k]])
    shown = _load_images(adata, rows.ravel(), images, image_key)
    limits = _gray_limits(shown)
    fig, axes, own = _axes(ax, 2 * k, (2, k), (2.1 * k + 0.6, 4.9), "two rows of n images")
    for a, i, img in zip(axes.ravel(), rows.ravel(), shown, strict=True):
        _show_image(a, img, limits)
        a.set_title(f"{adata.obs_names[i]}\ncos {cos[i]:+.3f}", fontsize="small")
        _clean(a)
    axes[0, 0].set_ylabel(f"largest cosine\nwith {fname}")
    axes[1, 0].set_ylabel(f"smallest cosine\nwith {fname}")
    if own:
        fig.suptitle(f"{key}:{fname}, cosine(preprocessed embedding, decoder direction)", fontsize="medium")
    return _finish(fig, show, return_fig, axes)
