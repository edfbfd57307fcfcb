"""Plots of feature activations, types and selectivity (read-only)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .._checks import check_choice
from .._core import activations as _activations
from .._core import available_reps, by_grouping, doc, feature_names_of, get_entry, group_codes
from .._core import resolve_features as _resolve_features
from ._training import PlotResult, _finish


def _feature_index(entry: dict, features) -> tuple[list[int], list[str]]:
    """Positions and names of features given by name (``"f3"``) or position (``3``)."""
    pos = [int(i) for i in _resolve_features(entry, features)]
    names = feature_names_of(entry)
    return pos, [str(names[i]) for i in pos]


@doc
def activations(
    adata: AnnData,
    key: str,
    features,
    *,
    basis: str = "umap",
    ncols: int = 4,
    cmap: str = "viridis",
    size: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> PlotResult:
    """Feature activations on a 2-D embedding (UMAP, t-SNE, PCA, ...).

    ``sc.pl.embedding`` cannot colour by columns of a sparse ``obsm`` entry; this reads the
    requested features from ``adata.obsm[f"X_{key}"]`` and draws them with
    :func:`scanpy.pl.embedding` on a lightweight copy (``adata`` is not modified).

    Parameters
    ----------
    adata
        Annotated data matrix with the activations and ``adata.obsm[f"X_{basis}"]``.
    {doc_key}
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
    {doc_show}
    {doc_return_fig}
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes (a list for several features), or
    ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> axes = fl.pl.activations(adata, "sae", ["f3", "f17"], basis="umap_2d", show=False)
    """
    import scanpy as sc

    entry = get_entry(adata, key)
    Z = _activations(adata, key)
    pos, names = _feature_index(entry, features)
    obsm_key = basis if basis in adata.obsm else f"X_{basis}"
    if obsm_key not in adata.obsm:
        raise ValueError(
            f"No embedding {basis!r} in adata.obsm (has {available_reps(adata)}); "
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


def _group_means(entry: dict, key: str, groupby: str) -> pd.DataFrame:
    """Mean activation per group, as stored by :func:`featurelens.tl.feature_types` (features x groups)."""
    _, stored = by_grouping(entry, key, "feature_types", groupby, "feature_types")
    if "means" not in stored:
        raise ValueError(
            f"The feature types of {key!r} for {groupby!r} hold no group means (stored by an older version); "
            f"rerun `fl.tl.feature_types(adata, {key!r}, {groupby!r})`."
        )
    return stored["means"]


@doc
def feature_heatmap(
    adata: AnnData,
    key: str,
    groupby: str,
    *,
    features=None,
    n_per_group: int = 3,
    standard_scale: str | None = "var",
    cmap: str = "Reds",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Mean activation per group for the top features, ordered into a diagonal.

    Reads the group means stored by :func:`featurelens.tl.feature_types` for ``groupby``. By
    default the features are, for every group in turn, the ``n_per_group`` features that are local
    to it or, when no feature is local, the features whose mean activation is highest in it
    relative to the others. Rows are groups, columns features, so local features form a diagonal
    (Schuster 2025, Fig. S15).

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.feature_types`.
    {doc_key}
    groupby
        The ``groupby`` of :func:`featurelens.tl.feature_types`.
    features
        Explicit features (names or positions) instead of the automatic choice.
    n_per_group
        Features per group in the automatic choice.
    standard_scale
        ``"var"``: scale every feature (column) to 0..1; ``None``: raw means.
    cmap
        Colour map.
    {doc_ax}
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> ax = fl.pl.feature_heatmap(adata, "sae", "cell_type", show=False)
    """
    check_choice(standard_scale, "standard_scale", ("var",), none=True)
    entry = get_entry(adata, key)
    means = _group_means(entry, key, groupby)
    table = entry["feature_types"][groupby]["table"]
    if features is not None:
        _, names = _feature_index(entry, features)
        cols = names
    else:
        rel = means.div(means.sum(axis=1).replace(0, np.nan), axis=0).fillna(0)
        local = (table["type"] == "local").to_numpy()
        cols = []
        for g in means.columns:
            if local.any():
                cand = table.index[local & (table["group"].astype(str) == g).to_numpy()]
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


@doc
def selectivity(
    adata: AnnData,
    key: str,
    groupby: str,
    *,
    kinds: Sequence[str] = ("average", "max"),
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Best selectivity per label, in descending order (Donhauser et al. 2025, Fig. 8).

    For every label, the highest selectivity of any feature; one line per kind.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.selectivity`.
    {doc_key}
    groupby
        The ``groupby`` passed to :func:`featurelens.tl.selectivity`.
    kinds
        ``"average"`` and/or ``"max"``.
    {doc_ax}
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.cellpainting_plate()
    >>> adata = adata[adata.obs["Metadata_moa"].notna()].copy()
    >>> fl.tl.icfl(adata, "X_profiles", n_features=128, n_steps=200, progress=False)
    >>> fl.tl.selectivity(adata, "icfl", "Metadata_moa")
    >>> ax = fl.pl.selectivity(adata, "icfl", "Metadata_moa", show=False)
    """
    entry = get_entry(adata, key)
    _, stored = by_grouping(entry, key, "selectivity", groupby, "selectivity")
    kinds = [check_choice(k, "kinds", ("average", "max")) for k in ([kinds] if isinstance(kinds, str) else kinds)]
    own_fig = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 3.0))
    else:
        fig = ax.figure
    for kind in kinds:
        best = stored[kind].max(axis=0).sort_values(ascending=False)
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


@doc
def feature_types(
    adata: AnnData,
    key: str,
    groupby: str | None = None,
    *,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Number of local features per group (Schuster 2025, Fig. S17).

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.feature_types`.
    {doc_key}
    groupby
        Which :func:`~featurelens.tl.feature_types` result to show (default: the latest).
    {doc_ax}
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> ax = fl.pl.feature_types(adata, "sae", "cell_type", show=False)
    """
    entry = get_entry(adata, key)
    groupby, stored = by_grouping(entry, key, "feature_types", groupby, "feature_types")
    counts = stored["counts"]["n_local"].sort_values(ascending=False)
    table = stored.get("table", entry["features"])
    types = table["type"].value_counts() if "type" in table else pd.Series(dtype=int)
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


@doc
def reconstruction(
    adata: AnnData,
    key: str,
    *,
    groupby: str | None = None,
    bins: int = 40,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Distribution of the per-cell cosine similarity between embedding and reconstruction.

    Parameters
    ----------
    adata
        Annotated data matrix with ``adata.obs[f"{key}_cosine"]`` (written by the learners and
        :func:`featurelens.tl.encode`).
    {doc_key}
    groupby
        Draw one histogram per group of this obs column (e.g. a train/held-out split).
    bins
        Histogram bins.
    {doc_ax}
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> ax = fl.pl.reconstruction(adata, "sae", groupby="condition", show=False)
    """
    entry = get_entry(adata, key)
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
    ax.set_title(
        f"FVU {q.get('fvu', np.nan):.3f}, median cosine {q.get('median_cosine', np.nan):.3f}", fontsize="medium"
    )
    ax.set_xlabel("cosine(embedding, reconstruction)")
    ax.set_ylabel("cells")
    if own_fig:
        fig.tight_layout()
    return _finish(fig, show, return_fig, ax)
