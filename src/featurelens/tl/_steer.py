"""Steering: set a feature in chosen cells, decode to expression, paired differential expression."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import check_choice, check_int, check_nonnegative, check_number, check_positive, check_positive_int
from .._core import (
    doc,
    expression,
    feature_column,
    get_entry,
    group_codes,
    lowest_value,
    one_feature,
    prepared_input,
    resolve_log1p,
    select_cells,
    stem,
    tool,
    tool_params,
)
from ..models.decoders import CallableDecoder, LinearMapDecoder, RidgeDecoder
from ..stats import PAIRED_METHODS, PairedResult, bh_adjust, paired_test
from ..stats._contrast import log2_fold_change
from ._scvi import check_scvi_model, scvi_effects

METHODS = ("effect", "posterior", *PAIRED_METHODS)
DECODERS = ("linear", "pca", "scvi")


def _subset_ctx(ctx: dict, idx: np.ndarray) -> dict:
    out = dict(ctx)
    for k in ("norms", "white_norms"):
        if out.get(k) is not None:
            out[k] = np.asarray(out[k])[idx]
    return out


def _steering_value(z_all: np.ndarray, value, scale, fname: str) -> float:
    """The value the feature is set to: its maximum in the data or a number, times ``scale``."""
    if isinstance(value, str):
        check_choice(value, "value", ("max",))
        v = float(z_all.max())
        if v <= 0:
            raise ValueError(f"Feature {fname!r} is never active, so value='max' is 0; pass a number.")
    elif isinstance(value, int | float | np.number) and not isinstance(value, bool):
        v = float(value)
    else:
        raise ValueError(f"`value` must be 'max' or a number, got {value!r}.")
    if scale is not None:
        v *= float(scale)
    if not np.isfinite(v):
        raise ValueError(f"The steering value must be finite, got {v}.")
    return v


def _steer_embedding(adata: AnnData, entry: dict, f: int, z: np.ndarray, idx: np.ndarray, v: float, use_rep):
    """Original and steered embeddings of the chosen cells: ``x' = x + inverse-preprocess(d_f (v - z_f))``."""
    rep, X, _, ctx, pre = prepared_input(adata, entry, use_rep, None)
    X = np.asarray(X, dtype=np.float64)
    direction = np.asarray(entry["decoder"], dtype=np.float64)[f]
    delta_model = ((v - z)[:, None] * direction[None, :]).astype(np.float32)
    delta = np.asarray(pre.inverse(delta_model, _subset_ctx(ctx, idx), linear=True), np.float64)
    X0 = X[idx]
    return rep, X, X0, X0 + delta


def _decoder(adata: AnnData, decoder, *, layer, rep, X, ridge_alpha, log1p, clip):
    """The expression decoder, whether its predictions are log1p values and whether they are clipped at 0."""
    if callable(decoder):
        dec = CallableDecoder(decoder, adata.n_vars)
        return dec, bool(log1p) if log1p is not None else False, bool(clip) if clip is not None else False
    check_choice(decoder, "decoder", DECODERS)
    E = expression(adata, layer)
    is_log = resolve_log1p(adata, E, layer, log1p)
    nonneg = min(lowest_value(E), 0.0) >= 0
    do_clip = bool(nonneg) if clip is None else bool(clip)
    if decoder == "linear":
        return RidgeDecoder.fit_heldout(X, E, alpha=ridge_alpha), is_log, do_clip
    if "PCs" not in adata.varm:
        raise ValueError(
            "decoder='pca' needs the PCA loadings in adata.varm['PCs'] (from `sc.pp.pca`); they are missing. "
            "Use decoder='linear' instead."
        )
    if adata.varm["PCs"].shape[1] != X.shape[1]:
        raise ValueError(
            f"adata.varm['PCs'] has {adata.varm['PCs'].shape[1]} components but the embedding {rep!r} has "
            f"{X.shape[1]} dimensions; decoder='pca' needs the dictionary to be trained on that PCA."
        )
    return LinearMapDecoder.from_pca(X, E, adata.varm["PCs"]), is_log, do_clip


def _bootstrap_intervals(P0, P1, is_log: bool, pseudocount: float, n_boot: int, rng) -> dict[str, np.ndarray]:
    """95 % percentile intervals of the mean change and of the log2 fold change over resampled steered cells."""
    n = P0.shape[0]
    if n_boot == 0 or n < 2:
        nan = np.full(P0.shape[1], np.nan)
        return {"delta_low": nan, "delta_high": nan, "log2fc_low": nan, "log2fc_high": nan}
    W = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) / n  # (n_boot, cells)
    lin0, lin1 = (np.expm1(P0), np.expm1(P1)) if is_log else (P0, P1)
    deltas = W @ (P1 - P0)
    lfcs = log2_fold_change(W @ lin1, W @ lin0, pseudocount)
    lo, hi = np.percentile(deltas, [2.5, 97.5], axis=0)
    llo, lhi = np.percentile(lfcs, [2.5, 97.5], axis=0)
    return {"delta_low": lo, "delta_high": hi, "log2fc_low": llo, "log2fc_high": lhi}


def _gene_table(genes: pd.Index, P0, P1, is_log: bool, res, r2, opts: dict, rng) -> pd.DataFrame:
    """One row per gene with the effect, its interval and (for a test) p-values, in the default ranking.

    The ranking puts the genes the decoder predicts (R² >= ``r2_min``) first, by the size of the
    change of their expression; genes it cannot predict follow, so they never top the table.
    """
    lin0, lin1 = (np.expm1(P0), np.expm1(P1)) if is_log else (P0, P1)
    lfc = log2_fold_change(lin1.mean(0), lin0.mean(0), opts["pseudocount"])
    lfc = np.where(np.isnan(res.log2fc), lfc, res.log2fc)
    ok = np.isfinite(res.pval)
    padj = np.full(res.pval.shape, np.nan)
    if ok.any():
        padj[ok] = bh_adjust(res.pval[ok])
    d = res.mean_diff
    intervals = _bootstrap_intervals(P0, P1, is_log, opts["pseudocount"], opts["n_bootstrap"], rng)
    r2 = np.asarray(r2, dtype=np.float64)
    predictable = np.isnan(r2) | (r2 >= opts["r2_min"])
    table = pd.DataFrame(
        {
            "gene": genes,
            "mean_original": P0.mean(0),
            "mean_steered": P1.mean(0),
            "delta": d,
            "delta_low": intervals["delta_low"],
            "delta_high": intervals["delta_high"],
            "log2fc": lfc,
            "log2fc_low": intervals["log2fc_low"],
            "log2fc_high": intervals["log2fc_high"],
            "statistic": res.statistic,
            "pval": res.pval,
            "padj": padj,
            "direction": pd.Categorical(
                np.where(d > 0, "up", np.where(d < 0, "down", "none")), categories=["down", "none", "up"]
            ),
            "r2": r2,
            "predictable": predictable,
        }
    )
    order = np.lexsort((table["gene"].to_numpy().astype(str), -np.abs(d), ~predictable))
    table = table.iloc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table


def _view(X: np.ndarray) -> tuple[dict, Callable]:
    """A 2-component PCA of the embedding (fixed seed): the 2-D view the steered cells are shown in."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(2, X.shape[1]), random_state=0).fit(X)
    view = {
        "mean": pca.mean_.astype(np.float64),
        "components": pca.components_.astype(np.float64),
        "explained_variance_ratio": pca.explained_variance_ratio_.astype(np.float64),
    }
    return view, pca.transform


def _movement(adata: AnnData, col: str, X: np.ndarray, X0: np.ndarray, X1: np.ndarray, project: Callable):
    """Distances of the steered cells to every group centroid before and after, and the nearest groups."""
    codes, cats = group_codes(adata, col, min_size=1, what="centroids", min_groups=1)
    order = np.argsort(cats.to_numpy().astype(str), kind="stable")
    cats = cats[order]
    codes = np.argsort(order)[codes]
    C = np.stack([X[codes == g].mean(0) for g in range(len(cats))])
    d0 = np.sqrt(((X0[:, None, :] - C[None]) ** 2).sum(-1))
    d1 = np.sqrt(((X1[:, None, :] - C[None]) ** 2).sum(-1))
    xy = project(C)
    movement = pd.DataFrame(
        {
            "dist_before": d0.mean(0),
            "dist_after": d1.mean(0),
            "shift_toward": (d0 - d1).mean(0),
            "frac_nearest_before": np.bincount(d0.argmin(1), minlength=len(cats)) / len(X0),
            "frac_nearest_after": np.bincount(d1.argmin(1), minlength=len(cats)) / len(X0),
            "pc1": xy[:, 0],
            "pc2": xy[:, 1] if xy.shape[1] > 1 else 0.0,
        },
        index=pd.Index(cats.astype(str), name=None),
    )
    return movement, np.asarray(cats[d0.argmin(1)]), np.asarray(cats[d1.argmin(1)])


def _cell_table(adata, idx, z, X0, X1, project) -> pd.DataFrame:
    a, b = project(X0), project(X1)
    table = pd.DataFrame({"obs_name": adata.obs_names[idx].astype(str), "z": z})
    for i in range(a.shape[1]):
        table[f"pc{i + 1}_before"] = a[:, i]
        table[f"pc{i + 1}_after"] = b[:, i]
    return table


def _check_steer_options(adata, decoder, method, scvi_model, n_deseq, ridge_alpha, opts) -> str:
    """Validate the options and return the method (``None``: posterior for scVI, effect otherwise)."""
    is_scvi = isinstance(decoder, str) and decoder == "scvi"
    if method is None:
        method = "posterior" if is_scvi else "effect"
    check_choice(method, "method", METHODS)
    check_positive_int(n_deseq, "n_deseq")
    check_int(opts["n_bootstrap"], "n_bootstrap", minimum=0)
    check_number(opts["r2_min"], "r2_min", maximum=1.0)
    if opts["pseudocount"] != "auto":
        check_positive(opts["pseudocount"], "pseudocount")
    check_nonnegative(ridge_alpha, "ridge_alpha")
    if is_scvi:
        check_scvi_model(scvi_model, adata)
        check_positive_int(opts["n_samples"], "n_samples", minimum=2)
        check_positive(opts["lfc_threshold"], "lfc_threshold")
    elif scvi_model is not None:
        raise ValueError(f"`scvi_model` is only used with decoder='scvi', got decoder={decoder!r}.")
    if is_scvi != (method == "posterior"):
        raise ValueError(
            "decoder='scvi' is tested on posterior samples: use method='posterior' (the default with it); "
            f"method='posterior' needs decoder='scvi'. Got decoder={decoder!r}, method={method!r}."
        )
    return method


def _deterministic_effects(adata, decoder, X, X0, X1, method, opts) -> tuple[pd.DataFrame, object, bool, bool]:
    """Decode the original and steered embeddings and build the gene table (linear, PCA or callable)."""
    dec, is_log, do_clip = _decoder(
        adata, decoder, layer=opts["layer"], rep=opts["rep"], X=X, ridge_alpha=opts["ridge_alpha"],
        log1p=opts["log1p"], clip=opts["clip"],
    )  # fmt: skip
    P0, P1 = dec.predict(X0), dec.predict(X1)
    if do_clip:
        P0, P1 = np.maximum(P0, 0.0), np.maximum(P1, 0.0)
    if not (np.isfinite(P0).all() and np.isfinite(P1).all()):
        raise ValueError(f"The decoder {dec.name!r} produced non-finite expression values.")
    genes = adata.var_names.astype(str).rename(None)[dec.genes]
    if method == "effect":
        none = np.full(P0.shape[1], np.nan)
        res = PairedResult((P1 - P0).mean(0), none, none, none)
    else:
        res = paired_test(P0, P1, method, genes=genes, n_deseq=opts["n_deseq"], random_state=opts["random_state"])
    table = _gene_table(genes, P0, P1, is_log, res, dec.r2, opts, np.random.default_rng(opts["random_state"]))
    return table, dec, is_log, do_clip


@tool
@doc
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
    method: str | None = None,
    scvi_model=None,
    use_rep: str | None = None,
    centroids: str | None = None,
    ridge_alpha: float = 1.0,
    log1p: bool | None = None,
    clip: bool | None = None,
    n_deseq: int = 50,
    n_bootstrap: int = 200,
    r2_min: float = 0.1,
    pseudocount: float | str = "auto",
    n_samples: int = 100,
    lfc_threshold: float = 0.25,
    random_state: int = 0,
    progress: bool = True,
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
    ``log2fc``) ranks them; predictions of non-negative data are clipped at zero (``clip``). The run also
    stores the 2-D view (a PCA of the embedding) that :func:`featurelens.pl.steering` draws.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    {doc_feature}
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
        its R² per gene on 20 % held-out cells, from a fit on the others, is reported);
        ``"pca"``: ``adata.varm["PCs"]`` plus the gene means (when the
        embedding is scanpy's PCA); or a callable mapping an embedding array (cells x d) to expression
        (cells x ``adata.n_vars``), e.g. the generative output of a scvi-tools model::

            def decode(Z):
                return model.module.generative(torch.tensor(Z), ...)["px"].mean.numpy()
    layer
        Expression layer for the linear/PCA decoder and the gene names (default ``adata.X``).
    method
        ``"effect"`` (default): the effect of every gene with a bootstrap interval over the steered
        cells and no p-value. A deterministic decoder moves every gene by a fixed amount per cell, so a
        per-gene test rejects for every gene and its p-values carry no information. Available for
        comparison: ``"t-test"`` (paired t-test), ``"wilcoxon"`` (signed-rank) or ``"deseq2"``
        (pydeseq2 on ``n_deseq`` random cells with the cell in the design, ``~ cell + condition``; needs
        a decoder that predicts counts, which are rounded). With ``decoder="scvi"``: ``"posterior"``
        (its default and only method), see ``scvi_model``.
    scvi_model
        A trained :class:`scvi.model.SCVI` on the genes of ``adata`` (e.g. from :func:`train_scvi`),
        for ``decoder="scvi"``. For every steered cell, ``n_samples`` latent samples ``z ~ q(z | x)``
        are decoded as they are and shifted by the steering; the log2 fold change of every sample and
        cell is taken on expression per 10,000 counts with ``pseudocount``. As in scvi-tools'
        ``mode="change"``, ``proba_de`` is the fraction with ``|LFC| > lfc_threshold``, ``pval`` is
        ``1 - proba_de`` (the posterior probability of no change beyond the threshold, a local false
        discovery rate) and ``padj`` the posterior expected FDR of the genes ranked at or above the gene
        by ``proba_de``; the intervals are 95 % posterior intervals of the cell-averaged effects and the
        table is sorted by ``padj``, then ``|log2fc|``.
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
    n_bootstrap
        Resamples of the steered cells for the 95 % intervals of ``delta`` and ``log2fc`` (0: none).
    r2_min
        Genes whose decoder R² (held out, for the linear decoder) is below this are flagged
        ``predictable=False`` and ranked after all others.
    pseudocount
        Added to both mean expressions (linear scale) before the fold change (``"auto"``: 1, one count
        per 10,000 after ``sc.pp.normalize_total(target_sum=1e4)``), as in :func:`high_vs_low`.
    n_samples
        Posterior samples per cell with ``decoder="scvi"``.
    lfc_threshold
        ``|log2 fold change|`` a gene must exceed to count as changed with ``decoder="scvi"``
        (scvi-tools' ``delta``).
    random_state
        Seed of the bootstrap, the DESeq2 subsample and the posterior samples.
    {doc_progress}
    key_added
        Name of the run (default: the feature name).

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key]["steering"][name]["results"]`` : :class:`pandas.DataFrame`
        One row per gene: ``gene``, ``mean_original``, ``mean_steered``, ``delta`` (mean paired
        difference) with its interval ``delta_low`` / ``delta_high``, ``log2fc`` (of the linear means,
        with ``pseudocount``) with ``log2fc_low`` / ``log2fc_high``, ``statistic``, ``pval``, ``padj``
        (BH over genes; NaN for ``method="effect"``; with ``decoder="scvi"`` see ``scvi_model``, which also
        adds ``proba_de``), ``direction``, the decoder's ``r2``,
        ``predictable`` (``r2 >= r2_min``) and ``rank``: the table is sorted predictable genes first,
        then by ``|delta|``.
    ``adata.uns[key]["steering"][name]["cells"]`` : :class:`pandas.DataFrame`
        Per steered cell: ``obs_name``, activation before (``z``), the 2-D view coordinates before and
        after (``pc1_before``, ``pc2_before``, ``pc1_after``, ``pc2_after``) and, with ``centroids``,
        the nearest group before and after.
    ``adata.uns[key]["steering"][name]["embedding"]`` : :class:`numpy.ndarray`
        The steered embedding of those cells (cells x d).
    ``adata.uns[key]["steering"][name]["view"]`` : :class:`dict`
        The 2-D view: a PCA of the embedding of all cells (``mean``, ``components``,
        ``explained_variance_ratio``).
    ``adata.uns[key]["steering"][name]["movement"]`` : :class:`pandas.DataFrame`
        With ``centroids``: per group, the mean distance of the steered cells to its centroid before and
        after, the shift toward it (positive = closer), the fraction of cells nearest to it and its
        position in the view (``pc1``, ``pc2``); ``params["frac_nearest_changed"]`` is the fraction of
        cells whose nearest centroid changed.
    ``adata.uns[key]["steering"][name]["params"]`` : :class:`dict`
        Options, the value ``v`` used, the number of cells and the decoder quality (``r2``).

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.steer(adata, "sae", "f0", groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'",
    ...             centroids="condition", progress=False)
    >>> fl.get.steering(adata, "sae", "f0").columns[:3].tolist()
    ['gene', 'mean_original', 'mean_steered']
    """
    from tqdm.auto import tqdm

    opts = {
        "n_bootstrap": n_bootstrap, "r2_min": r2_min, "pseudocount": pseudocount, "n_samples": n_samples,
        "lfc_threshold": lfc_threshold, "layer": layer, "ridge_alpha": ridge_alpha, "log1p": log1p, "clip": clip,
        "n_deseq": n_deseq, "random_state": random_state,
    }  # fmt: skip
    method = _check_steer_options(adata, decoder, method, scvi_model, n_deseq, ridge_alpha, opts)
    opts["pseudocount"] = 1.0 if pseudocount == "auto" else float(pseudocount)
    entry = get_entry(adata, key)
    f, fname = one_feature(entry, feature)
    name = stem(key_added, fname)
    idx = np.flatnonzero(select_cells(adata, cells, groupby, group))
    if method != "deseq2" and idx.size < 2:
        raise ValueError(f"Steering needs at least 2 cells for a paired test; the selection has {idx.size}.")
    bar = tqdm(total=3, desc="steering: decoder", disable=not progress, leave=False)
    z_all = feature_column(adata, key, f)
    v = _steering_value(z_all, value, scale, fname)
    rep, X, X0, X1 = _steer_embedding(adata, entry, f, z_all[idx], idx, v, use_rep)
    opts["rep"] = rep
    bar.update(1)
    bar.set_description(f"steering: {method}")
    if method == "posterior":
        table, quality = scvi_effects(scvi_model, adata, idx, X0, X1, opts, progress=progress)
        dec_name, is_log, do_clip = "scvi", False, False
    else:
        table, dec, is_log, do_clip = _deterministic_effects(adata, decoder, X, X0, X1, method, opts)
        dec_name, quality = dec.name, dec.quality
    bar.update(1)
    bar.set_description("steering: view")
    view, project = _view(X)
    cell_table = _cell_table(adata, idx, z_all[idx], X0, X1, project)
    centroids = centroids if centroids is not None else groupby
    out = {"results": table, "cells": cell_table, "embedding": X1.astype(np.float32), "view": view}
    frac_changed = float("nan")
    if centroids is not None:
        out["movement"], near0, near1 = _movement(adata, centroids, X, X0, X1, project)
        cell_table["nearest_before"], cell_table["nearest_after"] = near0, near1
        frac_changed = float((near0 != near1).mean())
    bar.update(1)
    bar.close()
    out["params"] = tool_params(
        feature=fname, value=v, value_rule=value if isinstance(value, str) else "number", scale=scale,
        n_cells=int(idx.size), decoder=dec_name, layer=layer, method=method, use_rep=rep, log1p=is_log,
        clip=do_clip, centroids=centroids, frac_nearest_changed=frac_changed, n_bootstrap=int(n_bootstrap),
        r2_min=float(r2_min), pseudocount=opts["pseudocount"],
        n_deseq=int(n_deseq) if method == "deseq2" else None, random_state=int(random_state),
        n_samples=int(n_samples) if method == "posterior" else None,
        lfc_threshold=float(lfc_threshold) if method == "posterior" else None,
        **{f"decoder_{k}": val for k, val in quality.items()},
    )  # fmt: skip
    entry.setdefault("steering", {})[name] = out
