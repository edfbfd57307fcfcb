"""Plot of a steering run: the steered cells in the embedding and the paired DGE volcano (read-only)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from .._core import doc, get_entry, raw_embedding, steering_run
from ._annotation import DOWN_COLOR, UP_COLOR, _label_points, _neglog10, _palette
from ._training import PlotResult, _finish

ORIGINAL_COLOR = "#252525"
STEERED_COLOR = "#e7298a"
BACKGROUND_COLOR = "0.85"
MAX_ARROWS = 200
PADJ_ZERO_FALLBACK = 300.0
RANDOM_STATE = 0


def _draw_background(ax, adata: AnnData, xy: np.ndarray, color: str | None, size: float, fig) -> list:
    """All cells, light grey or coloured by an obs column; legend handles for categories."""
    rasterized = len(xy) > 5000
    if color is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=BACKGROUND_COLOR, lw=0, rasterized=rasterized, zorder=1)
        return [Line2D([], [], ls="", marker="o", color=BACKGROUND_COLOR, label=f"all cells ({len(xy)})")]
    if color not in adata.obs:
        raise ValueError(
            f"color={color!r} is not a column of adata.obs (has {', '.join(map(repr, adata.obs.columns))})."
        )
    values = adata.obs[color]
    if pd.api.types.is_numeric_dtype(values.dtype) and not isinstance(values.dtype, pd.CategoricalDtype):
        v = values.to_numpy(dtype=np.float64)
        nan = np.isnan(v)
        if nan.any():
            ax.scatter(xy[nan, 0], xy[nan, 1], s=size, c=BACKGROUND_COLOR, lw=0, rasterized=rasterized, zorder=1)
        sc = ax.scatter(
            xy[~nan, 0], xy[~nan, 1], s=size, c=v[~nan], cmap="viridis", alpha=0.6, lw=0, rasterized=rasterized,
            zorder=1,
        )  # fmt: skip
        cb = fig.colorbar(sc, ax=ax, shrink=0.5, pad=0.02, aspect=15)
        cb.set_label(color, fontsize="small")
        return []
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in values.cat.categories]
    else:
        cats = sorted(values.dropna().astype(str).unique())
    stored = adata.uns.get(f"{color}_colors")
    pal = (
        dict(zip(cats, [str(c) for c in stored], strict=True))
        if stored is not None and len(stored) == len(cats)
        else _palette(cats, None)
    )  # scanpy's colours when stored for this column
    strv = np.array([None if pd.isna(s) else str(s) for s in values], dtype=object)
    handles = []
    for c in cats:
        m = strv == c
        if not m.any():
            continue
        ax.scatter(xy[m, 0], xy[m, 1], s=size, c=pal[c], alpha=0.45, lw=0, rasterized=rasterized, zorder=1)
        handles.append(Line2D([], [], ls="", marker="o", color=pal[c], alpha=0.45, label=f"{c} ({int(m.sum())})"))
    na = strv == None  # noqa: E711
    if na.any():
        ax.scatter(xy[na, 0], xy[na, 1], s=size, c=BACKGROUND_COLOR, lw=0, rasterized=rasterized, zorder=1)
        handles.append(Line2D([], [], ls="", marker="o", color=BACKGROUND_COLOR, label=f"NA ({int(na.sum())})"))
    return handles


def _volcano_values(res: pd.DataFrame, cutoff: float) -> tuple[np.ndarray, np.ndarray, str, str, np.ndarray]:
    """x, y, x label, y label and the significance mask of the paired-DGE volcano."""
    lfc = res["log2fc"].to_numpy(dtype=np.float64)
    if np.isfinite(lfc).all():
        x, xlabel = lfc, "log2 fold change (steered / original)"
    else:
        x, xlabel = res["delta"].to_numpy(dtype=np.float64), "delta (mean paired difference, steered - original)"
    padj = res["padj"].to_numpy(dtype=np.float64)
    tested = np.isfinite(padj)
    y = np.zeros(len(padj))
    positive = tested & (padj > 0)
    y[positive] = -np.log10(padj[positive])
    zero = tested & (padj <= 0)
    ylabel = "-log10(adjusted p)"
    if zero.any():
        cap = max(float(y[positive].max()), float(_neglog10(cutoff))) if positive.any() else PADJ_ZERO_FALLBACK
        y[zero] = cap
        ylabel += f"; padj = 0 drawn at {cap:.3g}"
    sig = tested & (np.nan_to_num(padj, nan=1.0) < cutoff)
    return x, y, xlabel, ylabel, sig


@doc
def steering(
    adata: AnnData,
    key: str,
    name: str | None = None,
    *,
    basis: str = "pca",
    color: str | None = None,
    n_labels: int = 10,
    pval_cutoff: float = 0.05,
    arrows: bool = True,
    size: float | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Where a steering run moved the cells, and which genes it changed.

    Reads what :func:`featurelens.tl.steer` stored in ``adata.uns[key]["steering"][name]``; the
    AnnData is only read, never modified. Two panels:

    1. **Cells.** The 2-D view :func:`featurelens.tl.steer` stored with the run (a 2-component
       PCA of the embedding it steered, ``adata.obsm[params["use_rep"]]``, of all cells): all cells
       are projected with it, and the stored view coordinates of the steered cells before and after
       steering and of the group centroids are drawn. All cells are drawn in
       light grey (or coloured by ``color``), the steered cells at their original positions in dark
       grey and at their steered positions in magenta, with thin arrows from one to the other (at most
       200, a fixed random subsample), and, when the run had ``centroids``, the centroid of every
       group (its mean embedding, projected) as a labelled cross.
    2. **Volcano** of the paired differential expression: x is the ``log2fc`` of every gene (or, when
       any gene's ``log2fc`` is not finite, e.g. for a decoder predicting negative values without
       clipping, the mean paired difference ``delta`` of all genes, as the axis label says), y is
       -log10 of the adjusted p; adjusted p of exactly 0 (underflow) are drawn at the largest finite
       value (at least the significance line), or at 300 when no adjusted p is positive, which the y
       label states. Genes with adjusted p below ``pval_cutoff`` are red (up) or blue (down), the others grey;
       genes without a test (NaN p) are drawn at 0. The ``n_labels`` significant genes with the largest
       ``|delta|`` are labelled. With linear decoders all genes often share one t statistic (the
       change is one factor times a fixed gene loading), so the effect size, not p, ranks them. Genes
       whose clipped prediction is 0 in every cell on one side get a very large ``|log2fc|``; limit the
       view with ``axes[1].set_xlim`` if needed.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.steer`.
    {doc_key}
    name
        Name of the steering run (the feature name unless ``key_added`` was given); may be omitted
        when there is only one.
    basis
        Only ``"pca"``. Steered cells are new points in the embedding, and a stored UMAP or t-SNE
        (``adata.obsm["X_umap"]``) holds coordinates of the existing cells only, without a model
        that could place new points; the run's PCA view projects any point linearly, so original and
        steered cells share one view.
    color
        Column of ``adata.obs`` that colours all cells (e.g. ``"condition"``): categories get a
        legend (scanpy's colours from ``adata.uns[f"{color}_colors"]`` when stored), numbers a colour
        bar. ``None``: light grey.
    n_labels
        Number of genes labelled in the volcano.
    pval_cutoff
        Adjusted p below which genes count as significant (coloured, dashed line).
    arrows
        Draw arrows from the original to the steered position.
    size
        Point size of all cells (the steered cells are drawn twice as large); default from the
        number of cells.
    ax
        Two Axes to draw into (cells, volcano).
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise an array of the two Axes (cells, volcano), or
    ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.steer(adata, "sae", "f0", groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'",
    ...             centroids="condition", progress=False)
    >>> axes = fl.pl.steering(adata, "sae", "f0", color="condition", show=False)
    """
    entry = get_entry(adata, key)
    run_name, run = steering_run(entry, key, name)
    if basis != "pca":
        raise ValueError(
            f"basis={basis!r} cannot place steered cells: the steered embedding is new points, and a stored "
            f"{basis.upper() if isinstance(basis, str) else basis} holds coordinates of the existing cells only "
            "(it cannot embed new points here). Use basis='pca', the PCA view the run stored."
        )
    params = run.get("params", {})
    if "view" not in run or "pc1_before" not in run["cells"]:
        raise ValueError(f"Steering run {run_name!r} has no stored 2-D view (an older version); rerun `fl.tl.steer`.")
    rep = str(params.get("use_rep"))
    X = np.asarray(raw_embedding(adata, rep), dtype=np.float64)
    missing = int((adata.obs_names.get_indexer(run["cells"]["obs_name"].astype(str)) < 0).sum())
    if missing:
        raise ValueError(
            f"{missing} steered cell(s) of run {run_name!r} are not in adata (was it subset after `fl.tl.steer`?)."
        )
    view = run["view"]
    if X.shape[1] != np.shape(view["components"])[1]:
        raise ValueError(
            f"adata.obsm[{rep!r}] has {X.shape[1]} dimensions but the run's view was fitted on "
            f"{np.shape(view['components'])[1]}; was the embedding recomputed after `fl.tl.steer`?"
        )
    if ax is not None:
        if isinstance(ax, Axes) or not isinstance(ax, Sequence | np.ndarray) or len(ax) != 2:
            raise ValueError("`ax=` needs two Axes: one for the cells, one for the volcano.")
        axes = np.asarray(list(ax), dtype=object)
        fig = axes[0].figure
    else:
        fig, axs = plt.subplots(1, 2, figsize=(10.5, 5.0), layout="constrained", width_ratios=[1.1, 1.0])
        axes = np.asarray(axs, dtype=object)
    xy = (X - np.asarray(view["mean"])) @ np.asarray(view["components"]).T
    _cells_panel(fig, axes[0], adata, run, run_name, xy, color=color, arrows=arrows, size=size)
    if np.isfinite(run["results"]["padj"].to_numpy(dtype=np.float64)).any():
        _volcano_panel(axes[1], run, run_name, n_labels, pval_cutoff)
    else:
        _effect_panel(axes[1], run, run_name, n_labels)
    return _finish(fig, show, return_fig, axes)


def _effect_panel(ax, run: dict, run_name: str, n_labels: int) -> None:
    """Effects of a run without p-values: log2 fold change against the size of the change in expression."""
    params, res = run["params"], run["results"]
    x = res["log2fc"].to_numpy(dtype=np.float64)
    y = np.abs(res["delta"].to_numpy(dtype=np.float64))
    pred = res["predictable"].to_numpy(dtype=bool) if "predictable" in res else np.ones(len(res), bool)
    direction = res["direction"].astype(str).to_numpy()
    r2_min = params.get("r2_min", 0.1)
    groups = [
        (~pred, "0.82", f"decoder R² < {r2_min:g}"),
        (pred & (direction == "down"), DOWN_COLOR, "down"),
        (pred & (direction == "up"), UP_COLOR, "up"),
        (pred & (direction == "none"), "0.6", "no change"),
    ]
    for mask, c, label in groups:
        if mask.any():
            n = int(mask.sum())
            ax.scatter(x[mask], y[mask], s=6, c=c, lw=0, rasterized=n > 5000, label=f"{label} ({n})")
    ax.axvline(0, color="0.7", lw=0.6)
    ax.set_xlabel("log2 fold change (steered / original)")
    ax.set_ylabel("|mean change of expression|")
    feature = params.get("feature", run_name)
    ax.set_title(f"{feature}: effect of steering ({params.get('decoder', '?')} decoder)", fontsize="medium")
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, frameon=False, fontsize="x-small", markerscale=2,
        handletextpad=0.2, columnspacing=1.0,
    )  # fmt: skip
    order = np.flatnonzero(pred)[: max(n_labels, 0)]  # the table is in its default ranking
    if order.size:
        _label_points(ax, x[order], y[order], list(res["gene"].astype(str).to_numpy()[order]), "x-small", offset=8)


def _cells_panel(fig, ax, adata: AnnData, run: dict, run_name: str, xy, *, color, arrows, size) -> None:
    """All cells in the run's 2-D view, the steered cells before and after, arrows and centroids."""
    params, cells = run["params"], run["cells"]
    xy0 = cells[["pc1_before", "pc2_before"]].to_numpy(dtype=np.float64)
    xy1 = cells[["pc1_after", "pc2_after"]].to_numpy(dtype=np.float64)
    size = float(np.clip(20000.0 / max(adata.n_obs, 1), 1.0, 20.0)) if size is None else float(size)
    handles = _draw_background(ax, adata, xy, color, size, fig)
    n = len(xy0)
    ax.scatter(
        xy0[:, 0], xy0[:, 1], s=2 * size, c=ORIGINAL_COLOR, edgecolors="white", linewidths=0.2, zorder=2,
        label=f"original ({n})",
    )  # fmt: skip
    if arrows and n:
        take = np.arange(n)
        if n > MAX_ARROWS:
            take = np.sort(np.random.default_rng(RANDOM_STATE).choice(n, MAX_ARROWS, replace=False))
        d = xy1[take] - xy0[take]
        ax.quiver(
            xy0[take, 0], xy0[take, 1], d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1, color="0.35",
            alpha=0.6, width=0.002, headwidth=5, headlength=6, headaxislength=5.5, zorder=3,
        )  # fmt: skip
    ax.scatter(
        xy1[:, 0], xy1[:, 1], s=2 * size, c=STEERED_COLOR, edgecolors="white", linewidths=0.2, zorder=4,
        label=f"steered ({n})",
    )  # fmt: skip
    handles += [
        Line2D([], [], ls="", marker="o", color=ORIGINAL_COLOR, label=f"original ({n})"),
        Line2D([], [], ls="", marker="o", color=STEERED_COLOR, label=f"steered ({n})"),
    ]
    col = params.get("centroids")
    if col is not None and "movement" in run:
        C = run["movement"][["pc1", "pc2"]].to_numpy(dtype=np.float64)
        ax.scatter(
            C[:, 0], C[:, 1], s=90, marker="X", c="black", edgecolors="white", linewidths=1.0, zorder=5,
            label=f"centroids of {col}",
        )  # fmt: skip
        for g, (cx, cy) in zip(run["movement"].index.astype(str), C, strict=True):
            ax.annotate(
                g, (cx, cy), xytext=(6, 6), textcoords="offset points", fontsize="small", weight="bold", zorder=6,
                path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")],
            )  # fmt: skip
        handles.append(Line2D([], [], ls="", marker="X", color="black", mec="white", label=f"centroid of {col}"))
    evr = np.asarray(run["view"]["explained_variance_ratio"])
    rep = params.get("use_rep")
    ax.set_xlabel(f"PC1 of {rep} ({evr[0]:.0%})")
    ax.set_ylabel(f"PC2 of {rep} ({evr[1]:.0%})" if evr.size > 1 else "")
    ax.set_xticks([])
    ax.set_yticks([])
    title = f"{params.get('feature', run_name)} set to {float(params.get('value', np.nan)):.3g} in {n} cells"
    frac = params.get("frac_nearest_changed", np.nan)
    if col is not None and frac is not None and np.isfinite(float(frac)):
        title += f"\nnearest {col} centroid changed for {float(frac):.0%}"
    ax.set_title(title, fontsize="medium")
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=2, frameon=False, fontsize="x-small",
        markerscale=1.5, handletextpad=0.2, columnspacing=1.0,
    )  # fmt: skip


def _volcano_panel(ax, run: dict, run_name: str, n_labels: int, cutoff: float) -> None:
    """Volcano of the paired DGE of the run."""
    params, res = run["params"], run["results"]
    x, y, xlabel, ylabel, sig = _volcano_values(res, cutoff)
    direction = res["direction"].astype(str).to_numpy()
    tested = np.isfinite(res["padj"].to_numpy(dtype=np.float64))
    drawn = np.isfinite(x)
    groups_v = [
        (drawn & ~tested, "0.82", "not tested, drawn at 0"),
        (drawn & tested & ~sig, "0.6", f"padj ≥ {cutoff:g}"),
        (drawn & sig & (direction == "down"), DOWN_COLOR, "down"),
        (drawn & sig & (direction == "up"), UP_COLOR, "up"),
        (drawn & sig & (direction == "none"), "0.2", f"padj < {cutoff:g}, no change"),
    ]
    for mask, c, label in groups_v:
        if mask.any():
            n = int(mask.sum())
            ax.scatter(x[mask], y[mask], s=6, c=c, lw=0, rasterized=n > 5000, label=f"{label} ({n})")
    ax.axhline(_neglog10(cutoff), color="0.5", lw=0.8, ls="--")
    ax.axvline(0, color="0.7", lw=0.6)
    span = float(np.abs(x[drawn]).max()) if drawn.any() else 1.0
    span = span if span > 0 else 1.0
    ymax = max(float(y.max()) if y.size else 0.0, float(_neglog10(cutoff)))
    ax.set_xlim(-1.08 * span, 1.08 * span)
    ax.set_ylim(-0.04 * ymax - 0.1, 1.06 * ymax + 0.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    feature = params.get("feature", run_name)
    ax.set_title(
        f"{feature}: steered vs original ({params.get('method', '?')}, {params.get('decoder', '?')} decoder)",
        fontsize="medium",
    )
    if len(ax.collections):
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, frameon=False, fontsize="x-small",
            markerscale=2, handletextpad=0.2, columnspacing=1.0,
        )  # fmt: skip
    if n_labels > 0:
        cand = np.flatnonzero(sig & drawn)
        order = cand[np.argsort(-np.abs(res["delta"].to_numpy(dtype=np.float64)[cand]), kind="stable")][:n_labels]
        if order.size:
            genes = list(res["gene"].astype(str).to_numpy()[order])
            _label_points(ax, x[order], y[order], genes, "x-small", offset=8)
