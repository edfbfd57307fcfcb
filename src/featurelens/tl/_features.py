"""Characterise the features of a dictionary: statistics, local/global types, selectivity."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import check_number, check_positive
from .._core import activations, doc, get_entry, group_codes, tool, tool_params
from ..stats import alpha_scores, group_moments, pearson_max_partner, selectivity_scores


@tool
@doc
def feature_stats(adata: AnnData, key: str, *, redundancy_r: float = 0.95) -> None:
    """Per-feature activity statistics and redundancy.

    A feature is active in a cell when its activation is > 0.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    redundancy_r
        Two features are redundant when their activations over cells have Pearson correlation
        at least this (0.95 as in Schuster 2025, A.2.4).

    Returns
    -------
    {doc_returns_tool}

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
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.feature_stats(adata, "sae")
    >>> int(fl.get.features(adata, "sae")["n_active"].sum()) == adata.obsm["X_sae"].nnz
    True
    """
    check_number(redundancy_r, "redundancy_r", minimum=-1.0, maximum=1.0)
    Z = activations(adata, key)
    entry = get_entry(adata, key)
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


@tool
@doc
def feature_types(
    adata: AnnData,
    key: str,
    groupby: str,
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
    {doc_adata}
    {doc_key}
    groupby
        Column of ``adata.obs`` with the groups (e.g. cell types); at least two groups of at
        least two cells.
    min_diff
        Threshold on ``alpha``, in activation units.
    z
        Normal quantile of the confidence margin (1.96).

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key]["feature_types"][groupby]`` : :class:`dict`
        ``"table"`` (one row per feature: ``type`` (``"local"``, ``"global"``, ``"dead"``),
        ``group`` (the group of a local feature, missing otherwise), ``n_groups_significant``,
        ``best_group`` (largest alpha) and ``best_alpha``), ``"alpha"`` (features x groups),
        ``"means"`` (mean activation, features x groups), ``"counts"`` (local features per group)
        and ``"params"``. Results of several groupings are kept side by side, and tools that use
        the types of a grouping (:func:`high_vs_low` with ``groupby``) read that grouping's table.
    ``adata.uns[key]["features"]`` : new columns
        The columns of ``"table"`` for the latest ``groupby`` (``fl.get.feature_types`` reads any).

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> sorted(fl.get.feature_types(adata, "sae", "cell_type")["type"].unique())
    ['global', 'local']
    """
    check_number(min_diff, "min_diff")
    check_positive(z, "z")
    Z = activations(adata, key)
    codes, groups = group_codes(adata, groupby)
    m = group_moments(Z, codes, len(groups))
    alpha = alpha_scores(m, z=z).T  # features x groups
    alpha = np.nan_to_num(alpha, nan=-np.inf)
    sig = alpha >= min_diff
    n_sig = sig.sum(axis=1)
    n_active = np.asarray((Z > 0).sum(axis=0)).ravel()
    kind = np.where(n_active == 0, "dead", np.where(n_sig == 1, "local", "global"))
    local_group = np.where(n_sig == 1, groups.to_numpy()[sig.argmax(axis=1)], None)
    best = alpha.argmax(axis=1)
    entry = get_entry(adata, key)
    feats = entry["features"]
    table = pd.DataFrame(
        {
            "type": pd.Categorical(kind, categories=["local", "global", "dead"]),
            "group": pd.Categorical(np.where(kind == "local", local_group, None), categories=list(groups)),
            "n_groups_significant": n_sig.astype(np.int64),
            "best_group": pd.Categorical(groups.to_numpy()[best], categories=list(groups)),
            "best_alpha": alpha[np.arange(alpha.shape[0]), best],
        },
        index=feats.index,
    )
    for c in table.columns:
        feats[c] = table[c]
    counts = table.loc[table["type"] == "local", "group"].value_counts().reindex(groups, fill_value=0)
    store = entry.setdefault("feature_types", {})
    store.pop(groupby, None)  # the latest grouping comes last
    store[groupby] = {
        "table": table,
        "alpha": pd.DataFrame(np.where(np.isfinite(alpha), alpha, np.nan), index=feats.index, columns=groups),
        "means": pd.DataFrame(m.means.T, index=feats.index, columns=groups),
        "counts": pd.DataFrame({"n_local": counts.to_numpy().astype(np.int64)}, index=groups),
        "params": tool_params(groupby=groupby, min_diff=min_diff, z=z),
    }


@tool
@doc
def selectivity(adata: AnnData, key: str, groupby: str, *, thresholds=(0.5, 0.2)) -> None:
    """Average and max selectivity of every feature for every label.

    With ``p_i`` the fraction of cells of label ``i`` in which the feature is active
    (activation > 0), average selectivity is ``p_i - mean_{j != i} p_j`` and max selectivity
    ``p_i - max_{j != i} p_j`` (Donhauser et al. 2025, sec. 6.1).

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    groupby
        Column of ``adata.obs`` with the labels (at least two).
    thresholds
        Thresholds of the summary (the ICFL paper reports 0.5 and 0.2).

    Returns
    -------
    {doc_returns_tool}

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
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.selectivity(adata, "sae", "condition")
    >>> fl.get.selectivity(adata, "sae", "condition").columns.tolist()
    ['CTRL', 'STIM']
    """
    thr = [check_number(t, "thresholds", minimum=-1.0, maximum=1.0) for t in np.atleast_1d(thresholds).tolist()]
    Z = activations(adata, key)
    codes, labels = group_codes(adata, groupby, min_size=1)
    m = group_moments(Z, codes, len(labels))
    p = m.n_active / m.counts[:, None]
    avg, mx = selectivity_scores(p)
    entry = get_entry(adata, key)
    feats = entry["features"]
    idx = feats.index
    avg_df = pd.DataFrame(avg.T, index=idx, columns=labels)
    max_df = pd.DataFrame(mx.T, index=idx, columns=labels)
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
        "params": tool_params(groupby=groupby, thresholds=thr),
    }
