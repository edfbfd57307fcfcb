"""High-vs-low differential expression for every feature of a dictionary."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._utils import check_adata, plain_params, version
from ..stats import bh_adjust, set_moments, welch_ttest
from ._features import activations, group_codes


def expression_matrix(adata: AnnData, layer: str | None):
    """``adata.X`` or a layer, as CSR (sparse) or a dense array, validated."""
    if layer is None:
        X = adata.X
        if X is None:
            raise ValueError("adata.X is empty; pass `layer=` with the expression values.")
    else:
        if layer not in adata.layers:
            have = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise ValueError(f"`layer={layer!r}` is not in adata.layers (layers present: {have}).")
        X = adata.layers[layer]
    if sp.issparse(X):
        return sp.csr_matrix(X)
    return np.asarray(X)


def _looks_log1p(adata: AnnData, X, layer: str | None) -> bool:
    if layer is None and "log1p" in adata.uns:
        return True
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    sample = data[: min(data.size, 200000)]
    if sample.size == 0:
        return False
    integer = np.all(np.equal(np.mod(sample, 1), 0))
    return bool(not integer and sample.max() < 50)


def resolve_features(entry: dict, features) -> np.ndarray:
    """Positions of the requested features (names like ``"f3"`` or integer positions)."""
    names = entry["features"].index.astype(str)
    if features is None:
        return np.arange(len(names))
    items = [features] if isinstance(features, str | int | np.integer) else list(features)
    lookup = {n: i for i, n in enumerate(names)}
    out = []
    for f in items:
        if isinstance(f, int | np.integer) and not isinstance(f, bool):
            if not 0 <= f < len(names):
                raise ValueError(f"Feature {f} is out of range: the dictionary has {len(names)} features.")
            out.append(int(f))
        elif str(f) in lookup:
            out.append(lookup[str(f)])
        else:
            raise ValueError(f"Unknown feature {f!r}; features are named {names[0]!r} ... {names[-1]!r}.")
    return np.asarray(out, dtype=np.int64)


def _feature_groups(entry, Zc, codes, groups, feat_idx, groupby, min_high, min_low) -> np.ndarray:
    """The group of every feature: its local group when typed with this groupby, else where it is most active.

    "Most active" is the highest mean activation among the groups with at least ``min_high``
    active and ``min_low`` inactive cells (among all groups when none qualifies).
    """
    n_groups = len(groups)
    out = np.empty(len(feat_idx), dtype=np.int64)
    feats = entry["features"]
    typed = (
        "type" in feats
        and "group" in feats
        and groupby in entry.get("feature_types", {})
        and entry["feature_types"][groupby]["params"].get("groupby") == groupby
    )
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    for j, f in enumerate(feat_idx):
        if typed and feats["type"].iloc[f] == "local":
            out[j] = groups.get_loc(str(feats["group"].iloc[f]))
            continue
        lo, hi = Zc.indptr[f], Zc.indptr[f + 1]
        rows, vals = Zc.indices[lo:hi], Zc.data[lo:hi]
        sums = np.bincount(codes[rows], weights=vals, minlength=n_groups)
        n_act = np.bincount(codes[rows[vals > 0]], minlength=n_groups)
        means = sums / np.maximum(counts, 1)
        ok = (n_act >= min_high) & (counts - n_act >= min_low)
        out[j] = int(np.argmax(np.where(ok, means, -np.inf))) if ok.any() else int(np.argmax(means))
    return out


def _cell_sets(Zc, f, pool, high_quantile, n_low, min_high, min_low, rng):
    """High and low cells of feature ``f`` within ``pool`` (cell indices), or a skip reason."""
    lo, hi = Zc.indptr[f], Zc.indptr[f + 1]
    z = np.zeros(Zc.shape[0], dtype=np.float64)
    z[Zc.indices[lo:hi]] = Zc.data[lo:hi]
    zp = z[pool]
    if not (zp > 0).any():
        return None, None, "never active in its cells", ""
    thr = np.quantile(zp, high_quantile)
    high = pool[(zp >= thr) & (zp > 0)]
    rule = "quantile"
    if high.size < min_high:
        n_active = int((zp > 0).sum())
        if n_active < min_high:
            return None, None, f"{n_active} active cells (fewer than min_high={min_high})", ""
        # too few cells above the quantile: the min_high most active cells instead
        top = np.argsort(-zp, kind="stable")[:min_high]
        high = np.sort(pool[top])
        rule = f"top {min_high}"
    zero = pool[zp == 0]
    if zero.size < min_low:
        return None, None, f"{zero.size} cells with zero activation (fewer than min_low={min_low})", ""
    low = np.sort(rng.choice(zero, size=n_low, replace=False)) if zero.size > n_low else zero
    return high, low, "", rule


def _categorical(codes: np.ndarray, labels: pd.Index) -> pd.Categorical:
    """Categorical of ``labels[codes]`` without going through strings (labels may repeat)."""
    codes = codes.astype(np.int64)
    if labels.is_unique:
        return pd.Categorical.from_codes(codes, categories=labels).remove_unused_categories()
    return pd.Categorical(np.asarray(labels)[codes])


def _assemble_dge(tables: list[dict], names: pd.Index, genes: pd.Index) -> pd.DataFrame:
    """Long DGE table (sorted by feature, adjusted p and gene) from integer-coded columns."""
    keys = ["feature", "gene", "log2fc", "t", "pval", "padj", "mean_high", "mean_low"]
    cols = {k: np.concatenate([t[k] for t in tables]) if tables else np.zeros(0) for k in keys}
    order = np.lexsort((cols["gene"], cols["padj"], cols["feature"]))
    cols = {k: v[order] for k, v in cols.items()}
    lfc = cols["log2fc"]
    return pd.DataFrame(
        {
            "feature": pd.Categorical.from_codes(
                cols["feature"].astype(np.int32), categories=names
            ).remove_unused_categories(),
            "gene": pd.Categorical.from_codes(
                cols["gene"].astype(np.int32), categories=genes
            ).remove_unused_categories(),
            **{k: cols[k].astype(np.float64) for k in keys[2:]},
            "direction": pd.Categorical.from_codes((lfc > 0).astype(np.int8), categories=["down", "up"]),
        }
    )


def high_vs_low(
    adata: AnnData,
    key: str = "sae",
    *,
    layer: str | None = None,
    groupby: str | None = None,
    features=None,
    high_quantile: float = 0.99,
    n_low: int = 1000,
    min_high: int = 10,
    min_low: int = 10,
    log1p: bool | None = None,
    pseudocount: float = 1e-9,
    store_pval: float = 0.05,
    chunk_size: int = 256,
    random_state: int = 0,
    progress: bool = True,
) -> None:
    """Differential expression between the cells where a feature is high and where it is off.

    For every feature (Schuster 2025, A.3.2-A.3.7): *high* cells have an activation at or above
    the ``high_quantile`` quantile of the feature (and above zero); *low* cells have an
    activation of exactly zero (at most ``n_low`` of them, drawn at random with
    ``random_state``). Every gene is compared with Welch's t-test, p-values are
    Benjamini-Hochberg adjusted over genes, and the log2 fold change is that of the mean
    expression on the linear scale (``expm1`` is undone first when the values are log1p
    transformed): ``log2((mean_high + pseudocount) / (mean_low + pseudocount))``.

    With ``groupby`` the contrast stays inside the feature's own group: its local group from
    :func:`~featurelens.tl.feature_types` with the same ``groupby``, otherwise the group where
    its mean activation is highest among groups with enough active and inactive cells. Both
    the quantile and the zero cells are taken within that group, which removes differences
    between groups from the comparison.

    All features are processed together in chunks: high and low cells become sparse indicator
    matrices that multiply the expression matrix, so memory stays bounded.

    Parameters
    ----------
    adata
        Annotated data matrix with the activations ``adata.obsm[f"X_{key}"]`` and expression in
        ``adata.X`` or a layer (cells x genes).
    key
        Key of the dictionary.
    layer
        Layer with the expression values (default ``adata.X``), log-normalised as by
        ``sc.pp.normalize_total`` + ``sc.pp.log1p``.
    groupby
        Column of ``adata.obs``; contrast within each feature's group.
    features
        Features to test (names or positions; default: all).
    high_quantile
        Quantile of the activation that defines high cells.
    n_low
        Maximum number of zero-activation cells.
    min_high, min_low
        Minimum group sizes. When fewer than ``min_high`` cells reach the quantile (small data or
        a small group), the ``min_high`` most active cells are the high cells instead
        (``high_rule`` records which); features with fewer active or zero cells than these
        minima are skipped with the reason recorded.
    log1p
        Whether the values are ``log1p`` transformed (default: detected from ``adata.uns["log1p"]``
        or non-integer values).
    pseudocount
        Added to both means before the fold change.
    store_pval
        Genes with adjusted p below this are kept in the long result table.
    chunk_size
        Features per chunk.
    random_state
        Seed of the sampling of low cells (each feature has its own stream, so results do not
        depend on ``features`` or ``chunk_size``).
    progress
        Show a progress bar.

    Returns
    -------
    ``None``.

    Sets the following fields:

    ``adata.uns[key]["dge"]["summary"]`` : :class:`pandas.DataFrame`
        One row per requested feature: ``n_high``, ``n_low``, ``group`` (with ``groupby``),
        ``n_up`` / ``n_down`` (genes with adjusted p < 0.05 and positive / negative fold
        change), ``high_rule`` (``"quantile"`` or ``"top <min_high>"``), ``skipped`` (the
        reason, ``""`` when tested).
    ``adata.uns[key]["dge"]["results"]`` : :class:`pandas.DataFrame`
        Long table of genes with ``padj < store_pval``: ``feature``, ``gene``, ``log2fc``, ``t``,
        ``pval``, ``padj``, ``mean_high``, ``mean_low`` (linear scale), ``direction``.
    ``adata.uns[key]["dge"]["high_cells"]`` : :class:`scipy.sparse.csr_matrix` (features x cells)
        Which cells were the high cells of each feature (rows in the order of the summary).
    ``adata.uns[key]["dge"]["params"]`` : :class:`dict`
        The options used.
    ``adata.varm[f"{key}_log2fc"]`` : :class:`numpy.ndarray` (n_vars, n_features), float32
        Log2 fold changes of every gene (NaN for features not tested), used by
        :func:`~featurelens.tl.enrich` for the rank-based test.

    Examples
    --------
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> fl.tl.high_vs_low(adata, "sae", groupby="cell_type")
    >>> fl.get.dge(adata, "sae", "f12").head()
    """
    from tqdm.auto import tqdm

    check_adata(adata)
    Z = activations(adata, key)
    entry = adata.uns[key]
    X = expression_matrix(adata, layer)
    if not 0 < high_quantile < 1:
        raise ValueError(f"`high_quantile` must be between 0 and 1, got {high_quantile}.")
    for name, v in (("n_low", n_low), ("min_high", min_high), ("min_low", min_low), ("chunk_size", chunk_size)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
    if min_high < 2 or min_low < 2:
        raise ValueError("`min_high` and `min_low` must be at least 2 (a variance needs two cells).")
    feat_idx = resolve_features(entry, features)
    if groupby is not None:
        codes, groups = group_codes(adata, groupby, min_size=1)
    log1p = _looks_log1p(adata, X, layer) if log1p is None else bool(log1p)
    transform = np.expm1 if log1p else None

    Zc = Z.tocsc()
    names = entry["features"].index.astype(str)
    fgroups = (
        _feature_groups(entry, Zc, codes, groups, feat_idx, groupby, min_high, min_low) if groupby is not None else None
    )
    all_cells = np.arange(adata.n_obs)
    genes = adata.var_names.astype(str)
    lfc_all = np.full((adata.n_vars, len(names)), np.nan, dtype=np.float32)
    summary: dict[str, list[Any]] = {
        "n_high": [],
        "n_low": [],
        "n_up": [],
        "n_down": [],
        "high_rule": [],
        "skipped": [],
    }
    if groupby is not None:
        summary["group"] = []
    tables = []
    high_rows: list[np.ndarray] = []
    high_cols: list[np.ndarray] = []
    bar = tqdm(total=len(feat_idx), desc="high vs low", disable=not progress, leave=False)
    for start in range(0, len(feat_idx), chunk_size):
        chunk = feat_idx[start : start + chunk_size]
        highs, lows, tested = [], [], []
        for j, f in enumerate(chunk):
            pool = all_cells if fgroups is None else np.flatnonzero(codes == fgroups[start + j])
            rng = np.random.default_rng([int(random_state), int(f)])
            high, low, reason, rule = _cell_sets(Zc, f, pool, high_quantile, n_low, min_high, min_low, rng)
            summary["skipped"].append(reason)
            summary["high_rule"].append(rule)
            summary["n_high"].append(0 if high is None else int(high.size))
            summary["n_low"].append(0 if low is None else int(low.size))
            if fgroups is not None:
                summary["group"].append(str(groups[fgroups[start + j]]))
            if high is not None:
                high_rows.append(np.full(high.size, start + j))
                high_cols.append(high)
                highs.append(high)
                lows.append(low)
                tested.append(j)
        n_up = np.zeros(len(chunk), dtype=np.int64)
        n_down = np.zeros(len(chunk), dtype=np.int64)
        if tested:
            sets = highs + lows
            rows = np.repeat(np.arange(len(sets)), [s.size for s in sets])
            ind = sp.csr_matrix((np.ones(rows.size), (rows, np.concatenate(sets))), shape=(len(sets), adata.n_obs))
            mom = set_moments(X, ind, transform=transform)
            k = len(tested)
            nh, nl = mom.n[:k, None], mom.n[k:, None]
            t, _, p = welch_ttest(nh, mom.mean[:k], mom.var[:k], nl, mom.mean[k:], mom.var[k:])
            padj = bh_adjust(p, axis=1)
            lin = mom.sum_transformed if transform is not None else mom.sum
            mh, ml = lin[:k] / nh, lin[k:] / nl
            lfc = np.log2((mh + pseudocount) / (ml + pseudocount))
            f_tested = chunk[np.asarray(tested)]
            lfc_all[:, f_tested] = lfc.T.astype(np.float32)
            sig = padj < 0.05
            n_up[tested] = (sig & (lfc > 0)).sum(axis=1)
            n_down[tested] = (sig & (lfc < 0)).sum(axis=1)
            keep = np.nan_to_num(padj, nan=1.0) < store_pval
            r, c = np.nonzero(keep)
            if r.size:
                tables.append(
                    {
                        "feature": f_tested[r].astype(np.int32),
                        "gene": c.astype(np.int32),
                        "log2fc": lfc[r, c],
                        "t": t[r, c],
                        "pval": p[r, c],
                        "padj": padj[r, c],
                        "mean_high": mh[r, c],
                        "mean_low": ml[r, c],
                    }
                )
        summary["n_up"].extend(n_up.tolist())
        summary["n_down"].extend(n_down.tolist())
        bar.update(len(chunk))
    bar.close()
    results = _assemble_dge(tables, names, genes)
    summ = pd.DataFrame(summary, index=pd.Index(names[feat_idx], name=None))
    if groupby is not None:
        summ = summ[["n_high", "n_low", "group", "n_up", "n_down", "high_rule", "skipped"]]
        summ["group"] = summ["group"].astype("category")
    n_skipped = int((summ["skipped"] != "").sum())
    if n_skipped == len(summ):
        warnings.warn("Every feature was skipped (see the 'skipped' column of the summary).", UserWarning, stacklevel=2)
    hr = np.concatenate(high_rows) if high_rows else np.zeros(0, np.int64)
    hc = np.concatenate(high_cols) if high_cols else np.zeros(0, np.int64)
    high_cells = sp.csr_matrix((np.ones(hr.size, dtype=np.int8), (hr, hc)), shape=(len(feat_idx), adata.n_obs))
    entry["dge"] = {
        "summary": summ,
        "high_cells": high_cells,
        "results": results,
        "params": plain_params(
            {
                "layer": layer,
                "groupby": groupby,
                "high_quantile": high_quantile,
                "n_low": n_low,
                "min_high": min_high,
                "min_low": min_low,
                "log1p": log1p,
                "pseudocount": pseudocount,
                "store_pval": store_pval,
                "random_state": random_state,
                "n_features_tested": len(summ) - n_skipped,
                "featurelens_version": version(),
            }
        ),
    }
    adata.varm[f"{key}_log2fc"] = lfc_all
