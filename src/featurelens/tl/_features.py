"""Characterise the features of a dictionary: statistics, local/global types, selectivity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._utils import check_adata, plain_params, version
from ..stats import alpha_scores, group_moments, pearson_max_partner, selectivity_scores
from ._dictionary import _get_entry


def activations(adata: AnnData, key: str) -> sp.csr_matrix:
    """The activations ``adata.obsm[f"X_{key}"]`` as CSR, checked against ``adata.uns[key]``."""
    entry = _get_entry(adata, key)
    obsm_key = f"X_{key}"
    if obsm_key not in adata.obsm:
        raise ValueError(
            f"adata.obsm[{obsm_key!r}] (the activations of dictionary {key!r}) is missing; "
            f"recompute it with `fl.tl.encode(adata, {key!r})`."
        )
    Z = adata.obsm[obsm_key]
    n_feat = np.asarray(entry["decoder"]).shape[0]
    if Z.shape != (adata.n_obs, n_feat):
        raise ValueError(
            f"adata.obsm[{obsm_key!r}] has shape {Z.shape}, but dictionary {key!r} has {n_feat} features for "
            f"{adata.n_obs} cells; recompute it with `fl.tl.encode(adata, {key!r})`."
        )
    return sp.csr_matrix(Z, dtype=np.float32) if not sp.isspmatrix_csr(Z) else Z


def group_codes(adata: AnnData, groupby: str, *, min_size: int = 2) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and category names of ``adata.obs[groupby]``, validated.

    Raises
    ------
    ValueError
        For a missing column, missing values, fewer than two groups or groups smaller than
        ``min_size``.
    """
    if not isinstance(groupby, str) or groupby not in adata.obs:
        cols = ", ".join(map(repr, adata.obs.columns)) or "nothing"
        raise ValueError(f"`groupby={groupby!r}` is not a column of adata.obs, which has {cols}.")
    col = adata.obs[groupby]
    if col.isna().any():
        raise ValueError(
            f"adata.obs[{groupby!r}] has {int(col.isna().sum())} missing values; fill them or subset the cells first."
        )
    cat = col.astype("category").cat.remove_unused_categories()
    cats = cat.cat.categories
    if len(cats) < 2:
        raise ValueError(
            f"adata.obs[{groupby!r}] has a single group ({cats[0]!r}); comparing groups needs at least two."
        )
    codes = cat.cat.codes.to_numpy().astype(np.int64)
    sizes = np.bincount(codes, minlength=len(cats))
    small = [str(c) for c, n in zip(cats, sizes, strict=True) if n < min_size]
    if small:
        raise ValueError(
            f"Groups of adata.obs[{groupby!r}] with fewer than {min_size} cells: {', '.join(small)}. "
            "A standard deviation needs at least two cells; remove or merge these groups first."
        )
    return codes, pd.Index(cats.astype(str))


def feature_stats(adata: AnnData, key: str = "sae", *, redundancy_r: float = 0.95) -> None:
    """Per-feature activity statistics and redundancy.

    A feature is active in a cell when its activation is > 0.

    Parameters
    ----------
    adata
        Annotated data matrix with ``adata.obsm[f"X_{key}"]`` and ``adata.uns[key]``.
    key
        Key of the dictionary.
    redundancy_r
        Two features are redundant when their activations over cells have Pearson correlation
        at least this (0.95 as in Schuster 2025, A.2.4).

    Returns
    -------
    ``None``.

    Sets the following fields:

    ``adata.uns[key]["features"]`` : new columns
        ``n_active``, ``frac_active``, ``mean_active`` (mean over active cells), ``max``,
        ``dead`` (never active on these cells), ``max_corr`` (largest Pearson correlation with
        another feature that fires in some of the same cells; NaN if none does),
        ``corr_partner`` (that feature's name, ``""`` if none) and ``redundant``
        (``max_corr >= redundancy_r``).
    ``adata.uns[key]["mean_active_per_cell"]`` : float
        Mean number of active features per cell.
    ``adata.uns[key]["n_redundant"]`` : int
        Number of redundant features.

    Examples
    --------
    >>> fl.tl.feature_stats(adata, "sae")
    >>> fl.get.features(adata, "sae").sort_values("frac_active")
    """
    check_adata(adata)
    Z = activations(adata, key)
    entry = adata.uns[key]
    feats = entry["features"]
    pos = Z.copy()
    pos.data = (pos.data > 0).astype(np.float32)
    n_active = np.asarray(pos.sum(axis=0)).ravel().astype(np.int64)
    zpos = Z.maximum(0) if Z.nnz else Z
    sum_pos = np.asarray(zpos.sum(axis=0)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_active = np.where(n_active > 0, sum_pos / np.maximum(n_active, 1), 0.0)
    mx = np.asarray(Z.max(axis=0).todense()).ravel() if Z.nnz else np.zeros(Z.shape[1])
    best, partner = pearson_max_partner(Z)
    names = np.asarray(feats.index.astype(str))
    feats["n_active"] = n_active
    feats["frac_active"] = n_active / adata.n_obs
    feats["mean_active"] = mean_active.astype(np.float64)
    feats["max"] = mx.astype(np.float64)
    feats["dead"] = n_active == 0
    feats["max_corr"] = best
    feats["corr_partner"] = np.where(partner >= 0, names[np.clip(partner, 0, None)], "")
    feats["redundant"] = np.nan_to_num(best, nan=-np.inf) >= redundancy_r
    entry["mean_active_per_cell"] = float(pos.sum() / adata.n_obs)
    entry["n_redundant"] = int(feats["redundant"].sum())


def feature_types(
    adata: AnnData,
    key: str = "sae",
    groupby: str = "cell_type",
    *,
    min_diff: float = 0.05,
    z: float = 1.96,
) -> None:
    """Classify features as local (one group), global or dead.

    For a feature and a group ``g``, with means ``mu``, sample standard deviations ``sigma``
    and counts ``N`` of its activations in ``g`` and in all other cells (Schuster 2025, A.3.6,
    eq. 8)::

        alpha = (mu_g - mu_rest) - z * (sigma_g / sqrt(N_g) + sigma_rest / sqrt(N_rest))

    The feature is significantly higher in ``g`` when ``alpha >= min_diff``. It is ``local``
    when significant in exactly one group (that group is recorded), ``global`` when active
    but not local, ``dead`` when never active.

    Parameters
    ----------
    adata
        Annotated data matrix with ``adata.obsm[f"X_{key}"]`` and ``adata.uns[key]``.
    key
        Key of the dictionary.
    groupby
        Column of ``adata.obs`` with the groups (e.g. cell types); at least two groups of at
        least two cells.
    min_diff
        Threshold on ``alpha``, in activation units.
    z
        Normal quantile of the confidence margin (1.96).

    Returns
    -------
    ``None``.

    Sets the following fields:

    ``adata.uns[key]["features"]`` : new columns
        ``type`` (``"local"``, ``"global"``, ``"dead"``), ``group`` (the group of a local
        feature, missing otherwise), ``n_groups_significant``, ``best_group`` (largest alpha)
        and ``best_alpha``.
    ``adata.uns[key]["feature_types"][groupby]`` : :class:`dict`
        ``"alpha"`` (features x groups DataFrame), ``"counts"`` (local features per group) and
        ``"params"``.

    Examples
    --------
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> fl.get.features(adata, "sae")["type"].value_counts()
    """
    check_adata(adata)
    Z = activations(adata, key)
    codes, groups = group_codes(adata, groupby)
    if not np.isfinite(min_diff):
        raise ValueError(f"`min_diff` must be finite, got {min_diff}.")
    m = group_moments(Z, codes, len(groups))
    alpha = alpha_scores(m, z=z).T  # features x groups
    alpha = np.nan_to_num(alpha, nan=-np.inf)
    sig = alpha >= min_diff
    n_sig = sig.sum(axis=1)
    n_active = np.asarray((Z > 0).sum(axis=0)).ravel()
    kind = np.where(n_active == 0, "dead", np.where(n_sig == 1, "local", "global"))
    local_group = np.where(n_sig == 1, groups.to_numpy()[sig.argmax(axis=1)], None)
    best = alpha.argmax(axis=1)
    entry = adata.uns[key]
    feats = entry["features"]
    feats["type"] = pd.Categorical(kind, categories=["local", "global", "dead"])
    feats["group"] = pd.Categorical(np.where(kind == "local", local_group, None), categories=list(groups))
    feats["n_groups_significant"] = n_sig.astype(np.int64)
    feats["best_group"] = pd.Categorical(groups.to_numpy()[best], categories=list(groups))
    feats["best_alpha"] = alpha[np.arange(alpha.shape[0]), best]
    counts = feats.loc[feats["type"] == "local", "group"].value_counts().reindex(groups, fill_value=0)
    store = entry.setdefault("feature_types", {})
    store[groupby] = {
        "alpha": pd.DataFrame(np.where(np.isfinite(alpha), alpha, np.nan), index=feats.index, columns=groups),
        "counts": pd.DataFrame({"n_local": counts.to_numpy().astype(np.int64)}, index=groups),
        "params": plain_params({"groupby": groupby, "min_diff": min_diff, "z": z, "featurelens_version": version()}),
    }


def selectivity(adata: AnnData, key: str = "sae", groupby: str = "cell_type", *, thresholds=(0.5, 0.2)) -> None:
    """Average and max selectivity of every feature for every label.

    With ``p_i`` the fraction of cells of label ``i`` in which the feature is active
    (activation > 0), average selectivity is ``p_i - mean_{j != i} p_j`` and max selectivity
    ``p_i - max_{j != i} p_j`` (Donhauser et al. 2025, sec. 6.1).

    Parameters
    ----------
    adata
        Annotated data matrix with ``adata.obsm[f"X_{key}"]`` and ``adata.uns[key]``.
    key
        Key of the dictionary.
    groupby
        Column of ``adata.obs`` with the labels (at least two).
    thresholds
        Thresholds of the summary (the ICFL paper reports 0.5 and 0.2).

    Returns
    -------
    ``None``.

    Sets the following fields:

    ``adata.uns[key]["selectivity"][groupby]`` : :class:`dict`
        ``"average"`` and ``"max"`` (features x labels DataFrames), ``"frac_active"`` (the
        ``p`` matrix), ``"summary"`` (per threshold: number of features whose average / max
        selectivity exceeds it for at least one label) and ``"params"``.
    ``adata.uns[key]["features"]`` : new columns
        ``selective_label`` and ``max_avg_selectivity``: the label with the highest average
        selectivity and that value (for the latest ``groupby``).

    Examples
    --------
    >>> fl.tl.selectivity(adata, "icfl", "perturbation")
    >>> adata.uns["icfl"]["selectivity"]["perturbation"]["summary"]
    """
    check_adata(adata)
    Z = activations(adata, key)
    codes, labels = group_codes(adata, groupby, min_size=1)
    m = group_moments(Z, codes, len(labels))
    p = m.n_active / m.counts[:, None]
    avg, mx = selectivity_scores(p)
    entry = adata.uns[key]
    feats = entry["features"]
    idx = feats.index
    avg_df = pd.DataFrame(avg.T, index=idx, columns=labels)
    max_df = pd.DataFrame(mx.T, index=idx, columns=labels)
    thr = [float(t) for t in thresholds]
    summary = pd.DataFrame(
        {
            "n_average": [int((avg_df.max(axis=1) > t).sum()) for t in thr],
            "n_max": [int((max_df.max(axis=1) > t).sum()) for t in thr],
        },
        index=pd.Index([str(t) for t in thr], name="threshold"),
    )
    feats["selective_label"] = pd.Categorical(labels.to_numpy()[avg.argmax(axis=0)], categories=list(labels))
    feats["max_avg_selectivity"] = avg.max(axis=0)
    entry.setdefault("selectivity", {})[groupby] = {
        "average": avg_df,
        "max": max_df,
        "frac_active": pd.DataFrame(p.T, index=idx, columns=labels),
        "summary": summary,
        "params": plain_params({"groupby": groupby, "featurelens_version": version()}),
    }
