"""Steering: set a feature in chosen cells, decode to expression, paired differential expression."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._utils import check_adata, plain_params, version
from ..models.decoders import RidgeDecoder, r2_per_gene
from ..stats import bh_adjust, paired_ttest
from ._dge import _looks_log1p, expression_matrix, resolve_features
from ._dictionary import _get_entry, _prepared_input
from ._features import activations

METHODS = ("t-test", "wilcoxon", "deseq2")
DECODERS = ("linear", "pca")


def select_cells(adata: AnnData, cells=None, groupby: str | None = None, group=None) -> np.ndarray:
    """Boolean mask of the cells chosen by a mask, an obs query, obs names or positions, and/or a group."""
    n = adata.n_obs
    mask = np.ones(n, dtype=bool)
    if cells is not None:
        if isinstance(cells, str):
            try:
                hit = adata.obs.query(cells).index
            except Exception as err:  # pandas raises many types for a bad expression
                raise ValueError(f"cells={cells!r} is not a valid query of adata.obs: {err}") from err
            mask &= adata.obs_names.isin(hit)
        else:
            arr = np.asarray(cells.to_numpy() if isinstance(cells, pd.Series) else cells)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise ValueError(f"A boolean cells mask must have one entry per cell ({n}), got shape {arr.shape}.")
                mask &= arr
            elif np.issubdtype(arr.dtype, np.integer):
                if arr.size and (arr.min() < -n or arr.max() >= n):
                    raise ValueError(f"cells positions must lie in [0, {n}).")
                m = np.zeros(n, dtype=bool)
                m[arr] = True
                mask &= m
            else:
                pos = adata.obs_names.get_indexer(arr.astype(str))
                if (pos < 0).any():
                    raise ValueError(f"Unknown cell name(s), e.g. {arr[pos < 0][0]!r}.")
                m = np.zeros(n, dtype=bool)
                m[pos] = True
                mask &= m
    if groupby is not None or group is not None:
        if groupby is None or group is None:
            raise ValueError("Pass both groupby= (an obs column) and group= (one or several of its values).")
        if groupby not in adata.obs:
            raise ValueError(f"groupby={groupby!r} is not a column of adata.obs.")
        groups = [group] if isinstance(group, str) or not isinstance(group, Sequence) else list(group)
        col = adata.obs[groupby].astype(str)
        missing = [g for g in groups if g not in set(col)]
        if missing:
            raise ValueError(f"Group(s) {missing} are not in adata.obs[{groupby!r}].")
        mask &= col.isin([str(g) for g in groups]).to_numpy()
    if not mask.any():
        raise ValueError("The cell selection is empty; check cells= / groupby= / group=.")
    return mask


def _subset_ctx(ctx: dict, idx: np.ndarray) -> dict:
    out = dict(ctx)
    for k in ("norms", "white_norms"):
        if out.get(k) is not None:
            out[k] = np.asarray(out[k])[idx]
    return out


def _pca_decoder(adata: AnnData, rep: str, X: np.ndarray, E):
    if "PCs" not in adata.varm:
        raise ValueError(
            "decoder='pca' needs the PCA loadings in adata.varm['PCs'] (from `sc.pp.pca`); they are missing. "
            "Use decoder='linear' instead."
        )
    PCs = np.asarray(adata.varm["PCs"], dtype=np.float64)
    if PCs.shape[1] != X.shape[1]:
        raise ValueError(
            f"adata.varm['PCs'] has {PCs.shape[1]} components but the embedding {rep!r} has {X.shape[1]} "
            "dimensions; decoder='pca' needs the dictionary to be trained on that PCA."
        )
    genes = np.flatnonzero(np.abs(PCs).sum(1) > 0)
    Eg = E[:, genes]
    mean = np.asarray(Eg.mean(0)).ravel()
    load = PCs[genes].T

    def predict(Z):
        return np.asarray(Z, dtype=np.float64) @ load + mean

    return genes, predict, Eg


def steer(
    adata: AnnData,
    key: str,
    feature,
    *,
    cells=None,
    groupby: str | None = None,
    group=None,
    value="max",
    scale: float | None = None,
    decoder: str | Callable = "linear",
    layer: str | None = None,
    method: str = "t-test",
    use_rep: str | None = None,
    centroids: str | None = None,
    ridge_alpha: float = 1.0,
    log1p: bool | None = None,
    clip: bool | None = None,
    n_deseq: int = 50,
    random_state: int = 0,
    key_added: str | None = None,
) -> None:
    """Set one feature in chosen cells, decode to expression and test which genes move.

    The chosen cells are encoded (their activations ``z`` are read from ``adata.obsm[f"X_{key}"]``) and
    the feature is set to ``v``, keeping each cell's own reconstruction error so that only the feature's
    contribution changes: ``y' = y + d_f (v - z_f)`` in the dictionary's space, mapped back through the
    stored preprocessing (normalisation and whitening) to the original embedding, ``x' = x + Δ``. Original
    and steered embeddings are mapped to expression with a decoder and compared cell by cell (paired).

    With the linear decoders the change of every gene is ``(v - z_f)`` times a fixed gene loading, so the
    paired statistic measures how consistently genes move across cells, and the effect size (``delta`` and
    ``log2fc``) ranks them; predictions of non-negative data are clipped at zero (``clip``).

    Parameters
    ----------
    adata
        Annotated data matrix with the dictionary and its activations.
    key
        Key of the dictionary.
    feature
        Feature name (``"f12"``) or position.
    cells
        A boolean mask, an ``adata.obs.query`` string, obs names or positions; default all cells.
    groupby, group
        Restrict to cells whose ``adata.obs[groupby]`` is ``group`` (or one of several).
    value
        ``"max"`` (the largest activation of the feature in the data) or a number.
    scale
        Multiply the value by this (e.g. ``2`` for twice the maximum).
    decoder
        ``"linear"``: ridge regression from the embedding to the expression ``layer`` (fitted on all cells;
        its R² per gene is reported); ``"pca"``: ``adata.varm["PCs"]`` plus the gene means (when the
        embedding is scanpy's PCA); or a callable mapping an embedding array (cells x d) to expression
        (cells x ``adata.n_vars``), e.g. the generative output of a scvi-tools model::

            def decode(Z):
                return model.module.generative(torch.tensor(Z), ...)["px"].mean.numpy()
    layer
        Expression layer for the linear/PCA decoder and the gene names (default ``adata.X``).
    method
        ``"t-test"`` (paired t-test), ``"wilcoxon"`` (signed-rank) or ``"deseq2"`` (pydeseq2 on
        ``n_deseq`` random cells with the cell in the design, ``~ cell + condition``; needs a decoder
        that predicts counts, which are rounded).
    use_rep
        Embedding the dictionary reads (default: the one it was trained on).
    centroids
        Column of ``adata.obs``: report how the steered cells moved relative to each group's centroid
        in the embedding (default ``groupby`` when given).
    ridge_alpha
        Ridge penalty of the linear decoder.
    log1p
        Whether predictions are log1p values (fold changes are then taken after ``expm1``); default:
        detected from the layer for the linear/PCA decoders, ``False`` for a callable.
    clip
        Clip predictions at zero (default: when the layer is non-negative).
    n_deseq
        Cells used by ``method="deseq2"``.
    random_state
        Seed for the DESeq2 subsample.
    key_added
        Name of the result (default: the feature name).

    Returns
    -------
    ``None``.

    Sets the following fields:

    ``adata.uns[key]["steering"][name]["results"]`` : :class:`pandas.DataFrame`
        One row per gene: ``gene``, ``mean_original``, ``mean_steered``, ``delta`` (mean paired
        difference), ``log2fc``, ``statistic``, ``pval``, ``padj`` (BH over genes), ``direction``
        and the decoder's ``r2`` for the gene; sorted by adjusted p then effect size.
    ``adata.uns[key]["steering"][name]["cells"]`` : :class:`pandas.DataFrame`
        Per steered cell: ``obs_name``, activation before (``z``), and with ``centroids`` the nearest
        group before and after.
    ``adata.uns[key]["steering"][name]["embedding"]`` : :class:`numpy.ndarray`
        The steered embedding of those cells (cells x d).
    ``adata.uns[key]["steering"][name]["movement"]`` : :class:`pandas.DataFrame`
        With ``centroids``: per group, the mean distance of the steered cells to its centroid before and
        after and the shift toward it (positive = closer), and the fraction of cells whose nearest
        centroid changed (``params["frac_nearest_changed"]``).
    ``adata.uns[key]["steering"][name]["params"]`` : :class:`dict`
        Options, the value ``v`` used, the number of cells and the decoder quality (``r2``).

    Examples
    --------
    >>> fl.tl.steer(adata, "sae", "f12", groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'",
    ...             centroids="condition")
    >>> fl.get.steering(adata, "sae", "f12").query("padj < 0.05").nlargest(20, "log2fc")
    """
    check_adata(adata)
    entry = _get_entry(adata, key)
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")
    if isinstance(feature, list | tuple | np.ndarray):
        raise ValueError("Steer one feature at a time (pass a name like 'f12' or a position).")
    f = int(resolve_features(entry, feature)[0])
    fname = str(entry["features"].index[f])
    mask = select_cells(adata, cells, groupby, group)
    idx = np.flatnonzero(mask)
    if method != "deseq2" and idx.size < 2:
        raise ValueError(f"Steering needs at least 2 cells for a paired test; the selection has {idx.size}.")

    Z = activations(adata, key)
    zf_all = np.asarray(Z[:, f].toarray()).ravel().astype(np.float64)
    if isinstance(value, str):
        if value != "max":
            raise ValueError(f"value must be 'max' or a number, got {value!r}.")
        v = float(zf_all.max())
        if v <= 0:
            raise ValueError(f"Feature {fname!r} is never active, so value='max' is 0; pass a number.")
    elif isinstance(value, int | float | np.number) and not isinstance(value, bool):
        v = float(value)
    else:
        raise ValueError(f"value must be 'max' or a number, got {value!r}.")
    if scale is not None:
        v *= float(scale)
    if not np.isfinite(v):
        raise ValueError(f"The steering value must be finite, got {v}.")

    rep, X, _, ctx, pre = _prepared_input(adata, entry, use_rep, None)
    X = np.asarray(X, dtype=np.float64)
    z = zf_all[idx]
    direction = np.asarray(entry["decoder"], dtype=np.float64)[f]
    delta_model = (v - z)[:, None] * direction[None, :]
    delta = np.asarray(pre.inverse(delta_model.astype(np.float32), _subset_ctx(ctx, idx), linear=True), np.float64)
    X0 = X[idx]
    X1 = X0 + delta

    genes = adata.var_names.astype(str)
    quality: dict = {}
    r2 = np.full(len(genes), np.nan)
    if callable(decoder):
        P0 = np.asarray(decoder(X0.astype(np.float32)), dtype=np.float64)
        P1 = np.asarray(decoder(X1.astype(np.float32)), dtype=np.float64)
        for P in (P0, P1):
            if P.shape != (idx.size, adata.n_vars):
                raise ValueError(
                    f"The decoder returned shape {P.shape}; expected (cells, genes) = ({idx.size}, {adata.n_vars}) "
                    "matching adata.var_names."
                )
        dec_name = getattr(decoder, "__name__", type(decoder).__name__)
        is_log = bool(log1p) if log1p is not None else False
        gene_idx = np.arange(len(genes))
        do_clip = bool(clip) if clip is not None else False
    elif decoder in DECODERS:
        E = expression_matrix(adata, layer)
        is_log = _looks_log1p(adata, E, layer) if log1p is None else bool(log1p)
        nonneg = (E.data.min(initial=0.0) if sp.issparse(E) else np.min(E, initial=0.0)) >= 0
        do_clip = nonneg if clip is None else bool(clip)
        if decoder == "linear":
            model = RidgeDecoder.fit(X, E, alpha=ridge_alpha)
            gene_idx = np.arange(len(genes))
            r2[:] = model.r2
            quality = {"r2": model.r2_total, "ridge_alpha": float(ridge_alpha)}
            predict = model.predict
        else:
            gene_idx, predict, Eg = _pca_decoder(adata, rep, X, E)
            r2_g, total = r2_per_gene(predict, X, Eg)
            r2[gene_idx] = r2_g
            quality = {"r2": total}
        P0, P1 = predict(X0), predict(X1)
        dec_name = decoder
    else:
        raise ValueError(f"decoder must be one of {DECODERS} or a callable, got {decoder!r}.")
    if do_clip:
        P0, P1 = np.maximum(P0, 0.0), np.maximum(P1, 0.0)
    if not (np.isfinite(P0).all() and np.isfinite(P1).all()):
        raise ValueError("The decoder produced non-finite expression values.")

    tested = genes[gene_idx]
    lin0, lin1 = (np.expm1(P0), np.expm1(P1)) if is_log else (P0, P1)
    m0, m1 = lin0.mean(0), lin1.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2((m1 + 1e-9) / (m0 + 1e-9))
    if method == "t-test":
        mean_diff, stat, pval = paired_ttest(P1, P0)
    elif method == "wilcoxon":
        mean_diff, stat, pval = _wilcoxon(P1, P0)
    else:
        mean_diff = (P1 - P0).mean(0)
        stat, pval, lfc_deseq = _deseq2(P0, P1, tested, n_deseq, random_state)
        lfc = np.where(np.isnan(lfc_deseq), lfc, lfc_deseq)
    ok = np.isfinite(pval)
    padj = np.full(pval.shape, np.nan)
    if ok.any():
        padj[ok] = bh_adjust(pval[ok])
    res = pd.DataFrame(
        {
            "gene": tested,
            "mean_original": P0.mean(0),
            "mean_steered": P1.mean(0),
            "delta": mean_diff,
            "log2fc": lfc,
            "statistic": stat,
            "pval": pval,
            "padj": padj,
            "direction": pd.Categorical(
                np.where(mean_diff > 0, "up", np.where(mean_diff < 0, "down", "none")),
                categories=["down", "none", "up"],
            ),
            "r2": r2[gene_idx],
        }
    )
    res = res.sort_values(["padj", "delta"], key=lambda s: s.abs() if s.name == "delta" else s, ascending=[True, False])
    res = res.reset_index(drop=True)

    cell_table = pd.DataFrame({"obs_name": adata.obs_names[idx].astype(str), "z": z})
    centroids = centroids if centroids is not None else groupby
    movement = None
    frac_changed = float("nan")
    if centroids is not None:
        movement, near0, near1 = _movement(adata, centroids, X, X0, X1)
        cell_table["nearest_before"] = near0
        cell_table["nearest_after"] = near1
        frac_changed = float((near0 != near1).mean())
    name = key_added or fname
    out = {
        "results": res,
        "cells": cell_table,
        "embedding": X1.astype(np.float32),
        "params": plain_params(
            {
                "feature": fname,
                "value": v,
                "value_rule": value if isinstance(value, str) else "number",
                "scale": scale,
                "n_cells": int(idx.size),
                "decoder": dec_name,
                "layer": layer,
                "method": method,
                "use_rep": rep,
                "log1p": is_log,
                "clip": do_clip,
                "centroids": centroids,
                "frac_nearest_changed": frac_changed,
                "n_deseq": int(n_deseq) if method == "deseq2" else None,
                "random_state": int(random_state),
                "featurelens_version": version(),
                **{f"decoder_{k}": val for k, val in quality.items()},
            }
        ),
    }
    if movement is not None:
        out["movement"] = movement
    entry.setdefault("steering", {})[name] = out


def _movement(adata: AnnData, col: str, X: np.ndarray, X0: np.ndarray, X1: np.ndarray):
    if col not in adata.obs:
        raise ValueError(f"centroids={col!r} is not a column of adata.obs.")
    labels = adata.obs[col]
    if labels.isna().any():
        raise ValueError(f"adata.obs[{col!r}] has missing values; fill or drop them first.")
    cats = pd.Index(pd.unique(labels.astype(str))).sort_values()
    codes = cats.get_indexer(labels.astype(str))
    C = np.stack([X[codes == g].mean(0) for g in range(len(cats))])
    d0 = np.sqrt(((X0[:, None, :] - C[None]) ** 2).sum(-1))
    d1 = np.sqrt(((X1[:, None, :] - C[None]) ** 2).sum(-1))
    movement = pd.DataFrame(
        {
            "dist_before": d0.mean(0),
            "dist_after": d1.mean(0),
            "shift_toward": (d0 - d1).mean(0),
            "frac_nearest_before": np.bincount(d0.argmin(1), minlength=len(cats)) / len(X0),
            "frac_nearest_after": np.bincount(d1.argmin(1), minlength=len(cats)) / len(X0),
        },
        index=pd.Index(cats.astype(str), name=None),
    )
    return movement, np.asarray(cats[d0.argmin(1)]), np.asarray(cats[d1.argmin(1)])


def _wilcoxon(P1: np.ndarray, P0: np.ndarray):
    """Wilcoxon signed-rank per gene (``scipy.stats.wilcoxon``); genes without any difference get NaN."""
    from scipy import stats

    D = P1 - P0
    mean = D.mean(0)
    stat = np.full(D.shape[1], np.nan)
    p = np.full(D.shape[1], np.nan)
    ok = np.flatnonzero((D != 0).any(0))
    if ok.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = stats.wilcoxon(D[:, ok], axis=0, zero_method="wilcox")
        stat[ok], p[ok] = r.statistic, r.pvalue
    return mean, stat, p


def _deseq2(P0: np.ndarray, P1: np.ndarray, genes: pd.Index, n_cells: int, random_state: int):
    """pydeseq2 Wald test steered vs original on rounded predicted counts, paired by cell in the design."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats

    if (P0 < 0).any() or (P1 < 0).any():
        raise ValueError("method='deseq2' needs a decoder that predicts counts (non-negative values).")
    rng = np.random.default_rng(random_state)
    n = P0.shape[0]
    take = np.sort(rng.choice(n, size=min(n_cells, n), replace=False))
    if take.size < 2:
        raise ValueError("method='deseq2' needs at least 2 cells.")
    C0, C1 = np.rint(P0[take]), np.rint(P1[take])
    keep = np.flatnonzero((C0 + C1).sum(0) > 0)
    counts = pd.DataFrame(
        np.vstack([C0[:, keep], C1[:, keep]]).astype(np.int64),
        index=[f"c{i}_{s}" for s in ("original", "steered") for i in range(take.size)],
        columns=np.asarray(genes)[keep],
    )
    meta = pd.DataFrame(
        {
            "cell": [f"c{i}" for i in range(take.size)] * 2,
            "condition": ["original"] * take.size + ["steered"] * take.size,
        },
        index=counts.index,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=meta, design="~cell + condition", quiet=True, n_cpus=1)
        dds.deseq2()
        ds = DeseqStats(dds, contrast=["condition", "steered", "original"], quiet=True, n_cpus=1)
        ds.summary()
    r = ds.results_df
    stat = np.full(len(genes), np.nan)
    p = np.full(len(genes), np.nan)
    lfc = np.full(len(genes), np.nan)
    stat[keep], p[keep], lfc[keep] = r["stat"].to_numpy(), r["pvalue"].to_numpy(), r["log2FoldChange"].to_numpy()
    return stat, p, lfc


def steering_run(entry: dict, key: str, name: str | None) -> tuple[str, dict]:
    """The stored run ``name`` (the only one when ``None``), or a ValueError listing the runs."""
    runs = entry.get("steering") or {}
    if not runs:
        raise ValueError(f"No steering results for {key!r}; run `fl.tl.steer(adata, {key!r}, feature)` first.")
    if name is None:
        if len(runs) > 1:
            raise ValueError(f"Several steering runs are stored ({sorted(runs)}); pass name= one of them.")
        name = next(iter(runs))
    if name not in runs:
        raise ValueError(f"No steering run {name!r} for {key!r}; stored runs: {sorted(runs)}.")
    return str(name), runs[name]
