"""Plots of feature activations, types and selectivity (read-only)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

from ..tl._dictionary import _get_entry
from ..tl._features import activations as _activations
from ..tl._features import group_codes
from ._training import _finish


def _feature_index(entry: dict, features) -> tuple[list[int], list[str]]:
    """Positions and names of features given by name (``"f3"``) or position (``3``)."""
    names = entry["features"].index.astype(str)
    lookup = {n: i for i, n in enumerate(names)}
    items = [features] if isinstance(features, str | int | np.integer) else list(features)
    pos = []
    for f in items:
        if isinstance(f, int | np.integer) and not isinstance(f, bool):
            if not 0 <= f < len(names):
                raise ValueError(f"Feature {f} is out of range (the dictionary has {len(names)} features).")
            pos.append(int(f))
        elif str(f) in lookup:
            pos.append(lookup[str(f)])
        else:
            raise ValueError(f"Unknown feature {f!r}; features are named {names[0]!r} ... {names[-1]!r}.")
    return pos, [names[i] for i in pos]


def activations(
    adata: AnnData,
    key: str,
    features,
    *,
    basis: str = "umap",
    ncols: int = 4,
    cmap: str = "viridis",
    size: float | None = None,
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
):
    """Feature activations on a 2-D embedding (UMAP, t-SNE, PCA, ...).

    ``sc.pl.embedding`` cannot colour by columns of a sparse ``obsm`` entry; this reads the
    requested features from ``adata.obsm[f"X_{key}"]`` and draws them with
    :func:`scanpy.pl.embedding` on a lightweight copy (``adata`` is not modified).

    Parameters
    ----------
    adata
        Annotated data matrix with the activations and ``adata.obsm[f"X_{basis}"]``.
    key
        Key of the dictionary.
    features
        Feature names (``"f12"``) or positions (``12``), one or several.
    basis
        Embedding to draw on: ``adata.obsm[f"X_{basis}"]`` (or ``adata.obsm[basis]``).
    ncols
        Panels per row.
    cmap
        Colour map.
    size
        Point size (scanpy's default when ``None``).
    ax
        Axes to draw into (one feature only).
    show
        Show the figure (default: when matplotlib is interactive).
    return_fig
        Return the figure.
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes (a list for several features), or
    ``None`` when shown.

    Examples
    --------
    >>> fl.pl.activations(adata, "sae", ["f3", "f17"], basis="umap")
    """
    import scanpy as sc

    entry = _get_entry(adata, key)
    Z = _activations(adata, key)
    pos, names = _feature_index(entry, features)
    obsm_key = basis if basis in adata.obsm else f"X_{basis}"
    if obsm_key not in adata.obsm:
        raise ValueError(
            f"No embedding {basis!r} in adata.obsm (has {', '.join(map(repr, adata.obsm.keys()))}); "
            "compute one, e.g. `sc.tl.umap(adata)`, or pass `basis=`."
        )
    if ax is not None and len(pos) != 1:
        raise ValueError("`ax=` needs a single feature.")
    obs = pd.DataFrame(Z[:, pos].toarray(), index=adata.obs_names, columns=[f"{key}:{n}" for n in names])
    tmp = AnnData(obs=obs)
    name = obsm_key[2:] if obsm_key.startswith("X_") else obsm_key
    tmp.obsm[f"X_{name}"] = np.asarray(adata.obsm[obsm_key])[:, :2]
    out = sc.pl.embedding(
        tmp,
        name,
        color=list(obs.columns),
        ncols=ncols,
        cmap=cmap,
        size=size,
        ax=ax,
        show=False,
        return_fig=return_fig,
        **kwargs,
    )
    if return_fig:
        return out
    fig = (out[0] if isinstance(out, list) else out).figure
    return _finish(fig, show, False, out)


def _group_means(adata: AnnData, key: str, groupby: str) -> pd.DataFrame:
    from ..stats import group_moments

    Z = _activations(adata, key)
    codes, groups = group_codes(adata, groupby, min_size=1)
    m = group_moments(Z, codes, len(groups))
    return pd.DataFrame(m.means.T, index=_get_entry(adata, key)["features"].index.astype(str), columns=groups)


def feature_heatmap(
    adata: AnnData,
    key: str,
    groupby: str,
    *,
    features=None,
    n_per_group: int = 3,
    standard_scale: str | None = "var",
    cmap: str = "Reds",
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Mean activation per group for the top features, ordered into a diagonal.

    By default the features are, for every group in turn, the ``n_per_group`` features that are
    local to it (after :func:`featurelens.tl.feature_types`) or, without types, the features
    whose mean activation is highest in it relative to the others. Rows are groups, columns
    features, so local features form a diagonal (Schuster 2025, Fig. S15).

    Parameters
    ----------
    adata
        Annotated data matrix with the activations.
    key
        Key of the dictionary.
    groupby
        Column of ``adata.obs`` with the groups.
    features
        Explicit features (names or positions) instead of the automatic choice.
    n_per_group
        Features per group in the automatic choice.
    standard_scale
        ``"var"``: scale every feature (column) to 0..1; ``None``: raw means.
    cmap
        Colour map.
    ax
        Axes to draw into.
    show
        Show the figure (default: when matplotlib is interactive).
    return_fig
        Return the figure.

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> fl.pl.feature_heatmap(adata, "sae", "cell_type")
    """
    entry = _get_entry(adata, key)
    means = _group_means(adata, key, groupby)
    if features is not None:
        _, names = _feature_index(entry, features)
        cols = names
    else:
        feats = entry["features"]
        rel = means.div(means.sum(axis=1).replace(0, np.nan), axis=0).fillna(0)
        cols = []
        for g in means.columns:
            if "type" in feats and "group" in feats and (feats["type"] == "local").any():
                cand = feats.index[(feats["type"] == "local").to_numpy() & (feats["group"].astype(str) == g).to_numpy()]
                order = means.loc[cand, g].sort_values(ascending=False).index
            else:
                best = rel.idxmax(axis=1)
                order = rel.loc[best[best == g].index, g].sort_values(ascending=False).index
            cols.extend([c for c in order[:n_per_group] if c not in cols])
        if not cols:
            raise ValueError("No feature is specific to any group; pass `features=` explicitly.")
    mat = means.loc[cols].T  # groups x features
    if standard_scale == "var":
        lo, hi = mat.min(axis=0), mat.max(axis=0)
        mat = (mat - lo) / (hi - lo).replace(0, 1)
    elif standard_scale is not None:
        raise ValueError(f"`standard_scale` must be 'var' or None, got {standard_scale!r}.")
    own_fig = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.0, 0.25 * mat.shape[1] + 2), max(2.5, 0.3 * mat.shape[0] + 1)))
    else:
        fig = ax.figure
    im = ax.imshow(mat.to_numpy(), aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(mat.shape[0]), mat.index)
    ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=90)
    ax.set_xlabel("feature")
    ax.set_ylabel(groupby)
    fig.colorbar(im, ax=ax, label="scaled mean activation" if standard_scale else "mean activation")
    if own_fig:
        fig.tight_layout()
    return _finish(fig, show, return_fig, ax)


def selectivity(
    adata: AnnData,
    key: str,
    groupby: str,
    *,
    kinds: Sequence[str] = ("average", "max"),
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Best selectivity per label, in descending order (Donhauser et al. 2025, Fig. 8).

    For every label, the highest selectivity of any feature; one line per kind.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.selectivity`.
    key
        Key of the dictionary.
    groupby
        The ``groupby`` passed to :func:`featurelens.tl.selectivity`.
    kinds
        ``"average"`` and/or ``"max"``.
    ax
        Axes to draw into.
    show
        Show the figure (default: when matplotlib is interactive).
    return_fig
        Return the figure.

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> fl.tl.selectivity(adata, "icfl", "perturbation")
    >>> fl.pl.selectivity(adata, "icfl", "perturbation")
    """
    entry = _get_entry(adata, key)
    store = entry.get("selectivity", {})
    if groupby not in store:
        raise ValueError(f"No selectivity for {groupby!r}; run `fl.tl.selectivity(adata, {key!r}, {groupby!r})` first.")
    own_fig = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 3.0))
    else:
        fig = ax.figure
    for kind in kinds:
        if kind not in ("average", "max"):
            raise ValueError(f"Unknown selectivity kind {kind!r}; use 'average' or 'max'.")
        best = store[groupby][kind].max(axis=0).sort_values(ascending=False)
        ax.plot(np.arange(1, len(best) + 1), best.to_numpy(), marker="o", ms=3, lw=1.2, label=kind)
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax.axhline(0.2, color="0.8", lw=0.8, ls=":")
    ax.set_xlabel(f"{groupby} labels (sorted)")
    ax.set_ylabel("best selectivity")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(frameon=False)
    if own_fig:
        fig.tight_layout()
    return _finish(fig, show, return_fig, ax)


def feature_types(
    adata: AnnData,
    key: str,
    groupby: str | None = None,
    *,
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Number of local features per group (Schuster 2025, Fig. S17).

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.feature_types`.
    key
        Key of the dictionary.
    groupby
        Which :func:`~featurelens.tl.feature_types` result to show (default: the latest).
    ax
        Axes to draw into.
    show
        Show the figure (default: when matplotlib is interactive).
    return_fig
        Return the figure.

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> fl.pl.feature_types(adata, "sae")
    """
    entry = _get_entry(adata, key)
    store = entry.get("feature_types", {})
    if not store:
        raise ValueError(f"No feature types; run `fl.tl.feature_types(adata, {key!r}, groupby)` first.")
    groupby = list(store)[-1] if groupby is None else groupby
    if groupby not in store:
        raise ValueError(f"No feature types for {groupby!r}; computed for {list(store)}.")
    counts = store[groupby]["counts"]["n_local"].sort_values(ascending=False)
    types = entry["features"]["type"].value_counts() if "type" in entry["features"] else pd.Series(dtype=int)
    own_fig = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.0, 0.35 * len(counts) + 1), 3.0))
    else:
        fig = ax.figure
    ax.bar(np.arange(len(counts)), counts.to_numpy(), color="C0")
    ax.set_xticks(np.arange(len(counts)), counts.index, rotation=90)
    ax.set_ylabel("local features")
    ax.set_title(
        f"local {int(types.get('local', 0))}, global {int(types.get('global', 0))}, dead {int(types.get('dead', 0))}",
        fontsize="medium",
    )
    if own_fig:
        fig.tight_layout()
    return _finish(fig, show, return_fig, ax)


def reconstruction(
    adata: AnnData,
    key: str,
    *,
    groupby: str | None = None,
    bins: int = 40,
    ax=None,
    show: bool | None = None,
    return_fig: bool = False,
):
    """Distribution of the per-cell cosine similarity between embedding and reconstruction.

    Parameters
    ----------
    adata
        Annotated data matrix with ``adata.obs[f"{key}_cosine"]`` (written by the learners and
        :func:`featurelens.tl.encode`).
    key
        Key of the dictionary.
    groupby
        Draw one histogram per group of this obs column (e.g. a train/held-out split).
    bins
        Histogram bins.
    ax
        Axes to draw into.
    show
        Show the figure (default: when matplotlib is interactive).
    return_fig
        Return the figure.

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> fl.pl.reconstruction(adata, "sae")
    """
    entry = _get_entry(adata, key)
    col = f"{key}_cosine"
    if col not in adata.obs:
        raise ValueError(f"adata.obs[{col!r}] is missing; run `fl.tl.encode(adata, {key!r})`.")
    cos = adata.obs[col].to_numpy(dtype=float)
    own_fig = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.0, 3.0))
    else:
        fig = ax.figure
    edges = np.linspace(min(cos.min(), 0.0), 1.0, bins + 1)
    if groupby is None:
        ax.hist(cos, bins=edges, color="C0")
    else:
        codes, groups = group_codes(adata, groupby, min_size=1)
        for i, g in enumerate(groups):
            ax.hist(cos[codes == i], bins=edges, histtype="step", lw=1.2, label=str(g))
        ax.legend(frameon=False, fontsize="small")
    q = entry.get("quality", {})
    ax.set_title(f"FVU {q.get('fvu', np.nan):.3f}, median cosine {np.median(cos):.3f}", fontsize="medium")
    ax.set_xlabel("cosine(embedding, reconstruction)")
    ax.set_ylabel("cells")
    if own_fig:
        fig.tight_layout()
    return _finish(fig, show, return_fig, ax)
