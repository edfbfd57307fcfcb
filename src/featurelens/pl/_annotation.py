"""Plots of the biological annotation of features: DGE, enrichment, term counts, concept space (read-only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import colors as mcolors
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text

from .._checks import check_choice, check_choices
from .._core import TESTS, doc, get_entry, one_feature, renamed, significant_terms, stored
from ._features import _feature_index
from ._training import PlotResult, _finish

UP_COLOR = "#d6604d"
DOWN_COLOR = "#4393c3"
ENRICH_TESTS = ("mwu", "binomial", "binomial_up", "binomial_down", "gsea")  # the order of the choices
_TINY = np.finfo(np.float64).tiny


def _truncate(name: str, max_len: int | None) -> str:
    """Shorten a label to ``max_len`` characters, cutting at a word boundary where one is near."""
    name = str(name)
    if max_len is None or len(name) <= max_len:
        return name
    cut = name[: max_len - 1]
    space = cut.rfind(" ")
    if space >= 0.6 * max_len:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def _neglog10(p) -> np.ndarray:
    return -np.log10(np.maximum(np.asarray(p, dtype=np.float64), _TINY))


def _axes(ax, figsize):
    """A new figure with constrained layout (legends and colour bars in the margin fit), or ``ax``'s."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def _label_points(ax, x, y, labels, fontsize, *, offset: float = 5) -> None:
    """Label points next to them, moving labels up or down (with a leader line) so they do not overlap.

    Only the text boxes must be free (not the leader lines), so that many points at one height (e.g.
    adjusted p of 0 drawn at a cap) still get readable labels.
    """
    fig = ax.figure
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed = []

    def text_box(t):
        t.update_positions(renderer)
        return Text.get_window_extent(t, renderer)

    for xi, yi, lab in zip(x, y, labels, strict=True):
        px, _ = ax.transData.transform((xi, yi))
        right = px < box.x0 + 0.5 * box.width
        dx = offset if right else -offset
        t = ax.annotate(
            lab, (xi, yi), xytext=(dx, 0), textcoords="offset points", ha="left" if right else "right",
            va="center", fontsize=fontsize, annotation_clip=False,
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.4", "shrinkA": 0, "shrinkB": 1.5},
        )  # fmt: skip
        t.set_in_layout(False)
        bb = text_box(t)
        step = bb.height * 72 / fig.dpi * 1.1  # one line, in points
        for k in range(200):
            dy = step * ((k + 1) // 2) * (1 if k % 2 else -1) if k else 0.0
            t.xyann = (dx, dy)
            bb = text_box(t)
            inside = bb.y0 >= box.y0 and bb.y1 <= box.y1
            if inside and not any(bb.overlaps(o) for o in placed):
                break
        else:
            t.xyann = (dx, 0.0)
            bb = text_box(t)
        placed.append(bb)


def _best(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` rows with the smallest adjusted p (ties: smaller p, then stored order)."""
    return rows.sort_values(["padj", "pval"], kind="stable").head(n)


def _test_rows(res: pd.DataFrame, feature: str, test: str, direction: str) -> dict[str, pd.DataFrame]:
    """Rows of one feature and test, split into ``{"up": ..., "down": ...}``."""
    rows = res.loc[res["feature"].astype(str).to_numpy() == feature]
    tests = rows["test"].astype(str).to_numpy()
    dirs = rows["direction"].astype(str).to_numpy()
    if test == "binomial":
        blocks = {"up": rows.loc[tests == "binomial_up"], "down": rows.loc[tests == "binomial_down"]}
    elif test in ("binomial_up", "binomial_down"):
        blocks = {test.split("_")[1]: rows.loc[tests == test]}
    else:
        sel = tests == test
        blocks = {"up": rows.loc[sel & (dirs == "up")], "down": rows.loc[sel & (dirs == "down")]}
    if direction not in ("both", "up", "down"):
        raise ValueError(f"`direction` must be 'both', 'up' or 'down', got {direction!r}.")
    return {d: b for d, b in blocks.items() if direction in ("both", d)}


@renamed(padj_threshold="pval_cutoff")
@doc
def enrichment(
    adata: AnnData,
    key: str,
    feature,
    n_terms: int = 10,
    *,
    test: str | None = None,
    kind: str = "dot",
    direction: str = "both",
    pval_cutoff: float | None = 0.05,
    adjusted: bool = True,
    max_label: int | None = 50,
    cmap: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """The best enriched terms of one feature, up- and down-regulated terms in separate blocks.

    Reads the table written by :func:`featurelens.tl.enrich` (or :func:`featurelens.tl.gsea`); the
    AnnData is only read, never modified. Terms whose genes go up with the feature form the upper
    block (red labels), terms whose genes go down the lower block (blue labels); within a block
    the best term (smallest adjusted p) is on top. The direction is the ``direction`` column for
    ``"mwu"`` (AUC above or below 0.5) and ``"gsea"`` (sign of the NES), and the test itself for the
    binomial tests: ``test="binomial"`` shows ``binomial_up`` above ``binomial_down`` (the
    undirected ``binomial`` rows are in :func:`featurelens.get.enrichment`).

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.enrich`.
    {doc_key}
    {doc_feature}
    n_terms
        Terms per block (direction).
    test
        ``"mwu"``, ``"binomial"``, ``"binomial_up"``, ``"binomial_down"`` or ``"gsea"``; default
        ``"mwu"`` when the table has it, otherwise ``"binomial"``.
    kind
        ``"dot"``: x = -log10(adjusted p), dot area = term size (``n_term``; for the binomial tests
        the number of DEGs in the term, ``hits``), colour = AUC (MWU), fold enrichment (binomial)
        or NES (GSEA). ``"bar"``: bars of -log10(adjusted p) coloured by direction. With
        ``adjusted=False`` the raw p is drawn instead.
    direction
        ``"both"``, ``"up"`` or ``"down"``: which blocks to draw.
    pval_cutoff
        Draw a dashed line at this (adjusted) p (``None``: no line). Terms are not filtered; the
        table holds terms with p below the ``store_pval`` of :func:`~featurelens.tl.enrich`.
        ``padj_threshold`` is its old name.
    adjusted
        Draw (and cut) the adjusted p (default) or the raw p.
    max_label
        Term names longer than this are shortened (``None``: full names).
    cmap
        Colour map of the dots (default: ``"RdBu_r"`` centred on AUC 0.5 / NES 0, ``"YlOrRd"`` for
        fold enrichment).
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
    >>> fl.tl.high_vs_low(adata, "sae", features=["f0"], progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", progress=False)
    >>> ax = fl.pl.enrichment(adata, "sae", "f0", n_terms=8, show=False)
    >>> ax = fl.pl.enrichment(adata, "sae", 0, test="binomial", kind="bar", show=False)
    """
    check_choice(kind, "kind", ("dot", "bar"))
    check_choice(direction, "direction", ("both", "up", "down"))
    entry = get_entry(adata, key)
    store = stored(entry, key, "enrichment", "enrich", "enrichment results")
    _, name = one_feature(entry, feature)
    res = store["results"]
    summary = store.get("summary")
    if summary is not None and name not in set(summary.index.astype(str)):
        raise ValueError(
            f"Feature {name!r} has no enrichment results (it was not tested; features without high-vs-low "
            f"results are skipped); run `fl.tl.enrich(adata, {key!r}, features=[{name!r}])` after high_vs_low."
        )
    test = _enrichment_test(res, key, test)
    pcol = "padj" if adjusted else "pval"
    blocks = {d: _best(b, n_terms) for d, b in _test_rows(res, name, test, direction).items()}
    layout = _stack_blocks(blocks, max_label)
    fig, ax = _axes(ax, (6.5, 0.26 * layout["n_rows"] + 1.4))
    empty = [d for d, b in blocks.items() if len(b) == 0]
    note = f" (no {' or '.join(empty)} terms stored)" if empty and len(empty) < len(blocks) else ""
    ax.set_title(f"{name}: {test}{note}", fontsize="medium")
    ax.set_xlabel(f"-log10({'adjusted p' if adjusted else 'p'})")
    if not layout["rows"]:
        ax.text(0.5, 0.5, f"no {test} terms stored for {name}", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return _finish(fig, show, return_fig, ax)
    y, table = layout["y"], layout["table"]
    x = _neglog10(table[pcol])
    for d, (lo, hi) in layout["spans"].items():
        ax.axhspan(lo, hi, color=UP_COLOR if d == "up" else DOWN_COLOR, alpha=0.07, lw=0)
        ax.text(
            0.995, (lo + hi) / 2, d, transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize="small",
            color=UP_COLOR if d == "up" else DOWN_COLOR,
        )  # fmt: skip
    if kind == "bar":
        ax.barh(y, x, color=layout["colors"], height=0.7)
        ax.legend(
            handles=[Patch(color=UP_COLOR, label="up"), Patch(color=DOWN_COLOR, label="down")],
            loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small",
        )  # fmt: skip
    else:
        _enrichment_dots(fig, ax, table, x, y, test, cmap)
    if pval_cutoff is not None:
        ax.axvline(_neglog10(pval_cutoff), color="0.5", lw=0.8, ls="--", zorder=1)
    ax.set_yticks(y, layout["labels"])
    for t, c in zip(ax.get_yticklabels(), layout["colors"], strict=True):
        t.set_color(c)
    ax.set_ylim(layout["n_rows"] - 0.5, -0.5)
    ax.set_xlim(0, max(float(np.nanmax(x)) * 1.15, _neglog10(pval_cutoff or 1.0) * 1.1, 1.0))
    return _finish(fig, show, return_fig, ax)


def _enrichment_test(res: pd.DataFrame, key: str, test: str | None) -> str:
    """The test to draw (default: MWU, else the binomial tests, else GSEA), checked against the table."""
    have = set(res["test"].astype(str).unique())
    have_simple = have | ({"binomial"} if {"binomial_up", "binomial_down"} <= have else set())
    if test is None:
        test = "mwu" if "mwu" in have else "binomial" if "binomial" in have_simple else "gsea"
    check_choice(test, "test", ENRICH_TESTS)
    if test not in have_simple:
        raise ValueError(
            f"No {test!r} results for {key!r} (the table has {sorted(have) or 'no rows'}); "
            f"run `fl.tl.enrich(adata, {key!r}, methods=...)` with that test."
        )
    return test


def _stack_blocks(blocks: dict[str, pd.DataFrame], max_label) -> dict:
    """The y positions of the up and down blocks, stacked top to bottom with one empty row between them."""
    ys, labels, colors, rows, spans, y0 = [], [], [], [], {}, 0
    for d in ("up", "down"):
        if d not in blocks or len(blocks[d]) == 0:
            continue
        if rows:
            y0 += 1
        b = blocks[d]
        y = y0 + np.arange(len(b))
        spans[d] = (y[0] - 0.5, y[-1] + 0.5)
        ys.append(y)
        labels += [_truncate(t, max_label) for t in b["name"].astype(str)]
        colors += [UP_COLOR if d == "up" else DOWN_COLOR] * len(b)
        rows.append(b)
        y0 = y[-1] + 1
    return {
        "n_rows": max(y0, 1),
        "rows": rows,
        "y": np.concatenate(ys) if ys else np.zeros(0),
        "table": pd.concat(rows) if rows else None,
        "labels": labels,
        "colors": colors,
        "spans": spans,
    }


def _enrichment_dots(fig, ax, table: pd.DataFrame, x, y, test: str, cmap) -> None:
    """Dots sized by term size (or DEGs in the term) and coloured by AUC / fold enrichment / NES."""
    binom = test.startswith("binomial")
    sizes = table["hits" if binom else "n_term"].to_numpy(dtype=float)
    smax = np.nanmax(sizes) if np.isfinite(sizes).any() and np.nanmax(sizes) > 0 else 1.0

    def area(v):
        return 15 + 185 * np.asarray(v, dtype=float) / smax

    if binom:
        cval, clabel = table["fold_enrichment"].to_numpy(dtype=float), "fold enrichment"
        norm = mcolors.Normalize(vmin=np.nanmin(cval), vmax=max(np.nanmax(cval), np.nanmin(cval) + 1e-9))
        cmap = cmap or "YlOrRd"
    else:
        col, centre, clabel = ("auc", 0.5, "AUC") if test == "mwu" else ("statistic", 0.0, "NES")
        cval = table[col].to_numpy(dtype=float)
        half = max(np.nanmax(np.abs(cval - centre)) if np.isfinite(cval).any() else 0.0, 1e-6)
        norm = mcolors.Normalize(vmin=centre - half, vmax=centre + half)
        cmap = cmap or "RdBu_r"
    sc = ax.scatter(x, y, s=area(sizes), c=cval, cmap=cmap, norm=norm, edgecolors="0.3", linewidths=0.4, zorder=3)
    cb = fig.colorbar(sc, ax=ax, shrink=0.45, anchor=(0.0, 0.0), pad=0.02, aspect=12)
    cb.set_label(clabel, fontsize="small")
    cb.ax.tick_params(labelsize="small")
    finite = sizes[np.isfinite(sizes)]
    ref = np.unique(np.round(np.quantile(finite, [0.0, 0.5, 1.0]))) if finite.size else []
    handles = [
        Line2D([], [], ls="", marker="o", markersize=np.sqrt(area(v)), mfc="0.6", mec="0.3", label=f"{v:g}")
        for v in ref
    ]
    cb.ax.legend(
        handles=handles, title="DEGs in term" if binom else "term size", loc="lower left",
        bbox_to_anchor=(-0.5, 1.08), frameon=False, fontsize="small", title_fontsize="small", labelspacing=0.8,
        borderaxespad=0,
    )  # fmt: skip


@renamed(padj_threshold="pval_cutoff")
@doc
def dge(
    adata: AnnData,
    key: str,
    feature,
    *,
    n_labels: int = 10,
    pval_cutoff: float = 0.05,
    adjusted: bool = True,
    size: float = 6.0,
    fontsize: float | str = "x-small",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Volcano plot of one feature's high-vs-low differential expression.

    Reads what :func:`featurelens.tl.high_vs_low` stored; the AnnData is only read, never
    modified. Every gene is one point: x is its log2 fold change (high / low cells) from
    ``adata.varm[f"{key}_log2fc"]``, y is -log10 of its adjusted p (``adjusted=False``: its p) from
    the long result table.
    The table keeps only genes with adjusted p below the ``store_pval`` of
    :func:`~featurelens.tl.high_vs_low`; the other genes are drawn in light grey at y = 0, as the
    legend says. Genes with (adjusted) p below ``pval_cutoff`` are red (up) or blue (down), and
    the ``n_labels`` most significant of them are labelled with their names. Genes never seen in
    either group get a fold change of 0, genes seen in one group only get a very large one (set
    by the ``pseudocount``); limit the view with ``ax.set_xlim`` if needed.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.high_vs_low`.
    {doc_key}
    {doc_feature}
    n_labels
        Number of genes to label (the smallest adjusted p among the significant genes).
    pval_cutoff
        (Adjusted) p below which genes count as significant (coloured, dashed line);
        ``padj_threshold`` is its old name.
    adjusted
        Draw and cut the adjusted p (default) or the raw p.
    size
        Point size.
    fontsize
        Size of the gene labels.
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
    >>> fl.tl.high_vs_low(adata, "sae", features=["f0"], progress=False)
    >>> ax = fl.pl.dge(adata, "sae", "f0", n_labels=15, show=False)
    """
    entry = get_entry(adata, key)
    store = stored(entry, key, "dge", "high_vs_low", "differential expression")
    pos, name = one_feature(entry, feature)
    pcol, plabel = ("padj", "adjusted p") if adjusted else ("pval", "p")
    lfc_key = f"{key}_log2fc"
    if lfc_key not in adata.varm:
        raise ValueError(f"adata.varm[{lfc_key!r}] is missing; rerun `fl.tl.high_vs_low(adata, {key!r})`.")
    group = _dge_group(store, key, name)
    lfc = np.asarray(adata.varm[lfc_key][:, pos], dtype=np.float64)
    res = store["results"]
    rows = res.loc[res["feature"].astype(str).to_numpy() == name]
    g_idx = adata.var_names.get_indexer(rows["gene"].astype(str))
    ok = g_idx >= 0
    rows, g_idx = rows.loc[ok], g_idx[ok]
    padj = np.full(adata.n_vars, np.nan)
    padj[g_idx] = rows[pcol].to_numpy(dtype=np.float64)
    kept = ~np.isnan(padj)
    y = np.where(kept, _neglog10(np.where(kept, padj, 1.0)), 0.0)
    drawn = np.isfinite(lfc)
    sig = kept & (np.nan_to_num(padj, nan=1.0) < pval_cutoff)
    store_pval = store.get("params", {}).get("store_pval", np.nan)
    groups = [
        (drawn & ~kept, "0.82", f"not stored (padj ≥ {store_pval:g}), drawn at 0"),
        (drawn & kept & ~sig, "0.45", f"{pcol} ≥ {pval_cutoff:g}"),
        (drawn & sig & (lfc < 0), DOWN_COLOR, "down"),
        (drawn & sig & (lfc > 0), UP_COLOR, "up"),
        (drawn & sig & (lfc == 0), "0.2", f"{pcol} < {pval_cutoff:g}, log2fc 0"),
    ]
    fig, ax = _axes(ax, (4.8, 4.8))
    for mask, color, label in groups:
        if mask.any():
            ax.scatter(
                lfc[mask], y[mask], s=size, c=color, lw=0, rasterized=mask.sum() > 5000,
                label=f"{label} ({int(mask.sum())})",
            )  # fmt: skip
    ax.axhline(_neglog10(pval_cutoff), color="0.5", lw=0.8, ls="--")
    ax.axvline(0, color="0.7", lw=0.6)
    span = np.nanmax(np.abs(lfc[drawn])) if drawn.any() else 1.0
    ymax = max(float(y.max()) if y.size else 0.0, _neglog10(pval_cutoff))
    ax.set_xlim(-1.08 * span - 0.5, 1.08 * span + 0.5)
    ax.set_ylim(-0.04 * ymax - 0.1, 1.06 * ymax + 0.1)
    ax.set_xlabel("log2 fold change (high / low)")
    ax.set_ylabel(f"-log10({plabel})")
    title = f"{name}: high vs low" + (f" within {group}" if group is not None and str(group) != "nan" else "")
    ax.set_title(title, fontsize="medium")
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False, fontsize="x-small", markerscale=2,
        handletextpad=0.2, columnspacing=1.0,
    )  # fmt: skip
    best = _best(rows.loc[rows[pcol].to_numpy() < pval_cutoff], n_labels) if n_labels > 0 else rows.iloc[:0]
    if len(best):
        gi = adata.var_names.get_indexer(best["gene"].astype(str))
        _label_points(ax, lfc[gi], y[gi], list(best["gene"].astype(str)), fontsize)
    return _finish(fig, show, return_fig, ax)


def _dge_group(store: dict, key: str, name: str):
    """The group a feature's contrast was run in (None without ``groupby``); errors for untested features."""
    summary = store.get("summary")
    if summary is None:
        return None
    if name not in set(summary.index.astype(str)):
        raise ValueError(
            f"Feature {name!r} has no high-vs-low results; run "
            f"`fl.tl.high_vs_low(adata, {key!r}, features=[{name!r}])`."
        )
    row = summary.loc[name]
    skipped = str(row.get("skipped", ""))
    if skipped and skipped != "nan":
        raise ValueError(f"Feature {name!r} was skipped by high_vs_low ({skipped}); choose a tested feature.")
    return row.get("group")


@doc
def term_counts(
    adata: AnnData,
    key: str,
    n_terms: int = 20,
    *,
    test: str | Sequence[str] = "mwu",
    pval_cutoff: float = 0.01,
    adjusted: bool = False,
    kind: str = "both",
    bins: int | Sequence[float] = 30,
    max_label: int | None = 50,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """How many features each term is significant for, and how many terms each feature has.

    Counted from the table of :func:`featurelens.tl.enrich` (Schuster 2025, Fig. S23); the AnnData is
    only read, never modified. A (feature, term) pair is significant when its p (or adjusted p
    with ``adjusted=True``) is below ``pval_cutoff`` in any of the tests in ``test``. The left
    panel shows the ``n_terms`` terms significant for the most features (ties in alphabetical
    order); the right panel the distribution of significant terms per feature over all features
    that were tested (features without any significant term count as 0).

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.enrich`.
    {doc_key}
    n_terms
        Terms in the bar chart.
    test
        A test name or several (``"mwu"``, ``"binomial"``, ``"binomial_up"``, ``"binomial_down"``,
        ``"gsea"``).
    pval_cutoff
        Significance cutoff. The table only holds p below the ``store_pval`` of
        :func:`~featurelens.tl.enrich`, so larger cutoffs count nothing more.
    adjusted
        Use the adjusted p (``padj``) instead of the raw p.
    kind
        ``"terms"`` (bar chart), ``"features"`` (histogram) or ``"both"``.
    bins
        Bins of the histogram.
    max_label
        Term names longer than this are shortened (``None``: full names).
    ax
        Axes to draw into (only with ``kind="terms"`` or ``"features"``).
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes (an array of two with ``kind="both"``),
    or ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", features=["f0", "f1"], progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", progress=False)
    >>> axes = fl.pl.term_counts(adata, "sae", 25, test=("binomial_up", "binomial_down"), adjusted=True, show=False)
    """
    check_choice(kind, "kind", ("terms", "features", "both"))
    entry = get_entry(adata, key)
    store = stored(entry, key, "enrichment", "enrich", "enrichment results")
    res = store["results"]
    tests = check_choices(test, "test", TESTS)
    have = set(res["test"].astype(str).unique())
    missing = [t for t in tests if t not in have]
    if missing or not tests:
        raise ValueError(
            f"No {missing or 'test'} results for {key!r}; the table has {sorted(have) or 'no rows'}. "
            f"Run `fl.tl.enrich(adata, {key!r}, methods=...)` with that test, or choose one of those."
        )
    sig = significant_terms(entry, key, test=tests, pval_cutoff=pval_cutoff, adjusted=adjusted)
    per_term = (
        sig.groupby("term", observed=True)
        .agg(name=("name", "first"), n_features=("feature", "size"))
        .reset_index()
        .assign(name=lambda d: d["name"].astype(str))
        .sort_values(["n_features", "name"], ascending=[False, True], kind="stable")
        .head(n_terms)
    )
    tested = store["summary"].index.astype(str) if "summary" in store else pd.Index(res["feature"].astype(str).unique())
    per_feature = sig["feature"].astype(str).value_counts().reindex(tested, fill_value=0)
    what = f"{'padj' if adjusted else 'p'} < {pval_cutoff:g}, {'/'.join(tests)}"

    kinds = ["terms", "features"] if kind == "both" else [kind]
    if ax is not None:
        if len(kinds) != 1:
            raise ValueError("`ax=` needs kind='terms' or kind='features'.")
        fig, axes = ax.figure, [ax]
    else:
        height = max(2.8, 0.22 * len(per_term) + 1.2) if "terms" in kinds else 3.0
        width_ratios = [1.6, 1.0] if len(kinds) == 2 else [1.0]
        fig, axs = plt.subplots(
            1, len(kinds), figsize=(4.8 * len(kinds) + 1.5, height), squeeze=False, layout="constrained",
            gridspec_kw={"width_ratios": width_ratios},
        )  # fmt: skip
        axes = list(axs[0])
    for a, k in zip(axes, kinds, strict=True):
        if k == "terms":
            y = np.arange(len(per_term))
            a.barh(y, per_term["n_features"].to_numpy(), color="C0", height=0.7)
            a.set_yticks(y, [_truncate(n, max_label) for n in per_term["name"]])
            a.set_ylim(len(per_term) - 0.5 if len(per_term) else 0.5, -0.5)
            a.set_xlabel("features")
            a.set_title(f"terms by number of features ({what})", fontsize="medium")
            if not len(per_term):
                a.text(0.5, 0.5, "no significant terms", ha="center", va="center", transform=a.transAxes)
        else:
            a.hist(per_feature.to_numpy(), bins=bins, color="C1")
            a.set_xlabel("significant terms per feature")
            a.set_ylabel("features")
            n0 = int((per_feature == 0).sum())
            a.set_title(f"{n0} of {len(per_feature)} features have none", fontsize="medium")
    return _finish(fig, show, return_fig, axes[0] if len(axes) == 1 else np.asarray(axes, dtype=object))


def _palette(categories: Sequence[str], palette) -> dict[str, str]:
    """Colour of every category from a dict, a list of colours, a colour map name or scanpy's defaults."""
    n = len(categories)
    if isinstance(palette, Mapping):
        return {c: palette.get(c) for c in categories}
    if palette is None:
        from scanpy.plotting import palettes

        colors = (
            palettes.default_20 if n <= 20 else palettes.default_28 if n <= 28 else palettes.default_102
        )  # scanpy's
        if n > len(colors):
            colors = [mcolors.to_hex(plt.get_cmap("turbo")(i / max(n - 1, 1))) for i in range(n)]
    elif isinstance(palette, str) and palette in plt.colormaps():
        cm = plt.get_cmap(palette)
        colors = [mcolors.to_hex(cm(i)) for i in range(cm.N)] if cm.N <= 30 else None
        if colors is None or n > len(colors):
            colors = [mcolors.to_hex(cm(i / max(n - 1, 1))) for i in range(n)]
    elif isinstance(palette, str):
        colors = [palette]
    else:
        colors = list(palette)
    return {c: colors[i % len(colors)] for i, c in enumerate(categories)}


def _color_values(entry: dict, key: str, obs: pd.DataFrame, color: str) -> tuple[pd.Series, str]:
    """Values of ``color`` for the concept-space features and the label to show."""
    feats = entry["features"]
    feats = feats.set_axis(feats.index.astype(str))
    if color in obs.columns:
        return obs[color], color
    if color in feats.columns:
        return feats[color].reindex(obs.index), color
    if f"concept_{color}" in feats.columns:
        return feats[f"concept_{color}"].reindex(obs.index), color
    words = [c[len("concept_") :] for c in feats.columns if str(c).startswith("concept_")]
    other = [c for c in feats.columns if not str(c).startswith("concept_")]
    raise ValueError(
        f"Unknown color {color!r}. Choose a column of the concept space ({', '.join(map(repr, obs.columns))}), "
        f"a column of adata.uns[{key!r}]['features'] ({', '.join(map(repr, other)) or 'none'}), or a probed word "
        f"({', '.join(map(repr, words)) or 'none yet: add words with fl.tl.probe_concepts(adata, key, [...])'})."
    )


def _is_bool(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values.dtype):
        return True
    if values.dtype == object:
        vals = set(values.dropna().unique())
        return len(vals) > 0 and vals <= {True, False}
    return False


def _draw_points(fig, ax, xy, values, label, legend_loc, style) -> tuple[list, dict]:
    """Scatter the features coloured by ``values`` (one colour, booleans, numbers or categories)."""
    size, na_color = style["size"], style["na_color"]
    handles: list = []
    cats_pos: dict[str, np.ndarray] = {}
    if values is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c="C0", lw=0)
    elif _is_bool(values):
        on = values.fillna(False).astype(bool).to_numpy()
        ax.scatter(xy[~on, 0], xy[~on, 1], s=size, c=na_color, lw=0)
        ax.scatter(xy[on, 0], xy[on, 1], s=size, c=style["highlight_color"], lw=0, zorder=2)
        handles = [
            Line2D([], [], ls="", marker="o", color=style["highlight_color"], label=f"{label} ({int(on.sum())})"),
            Line2D([], [], ls="", marker="o", color=na_color, label=f"other ({int((~on).sum())})"),
        ]
    elif pd.api.types.is_numeric_dtype(values.dtype) and not isinstance(values.dtype, pd.CategoricalDtype):
        v = values.to_numpy(dtype=np.float64)
        nan = np.isnan(v)
        if nan.any():
            ax.scatter(xy[nan, 0], xy[nan, 1], s=size, c=na_color, lw=0)
        sc = ax.scatter(xy[~nan, 0], xy[~nan, 1], s=size, c=v[~nan], cmap=style["cmap"], lw=0)
        if legend_loc is not None:
            fig.colorbar(sc, ax=ax, shrink=0.7, pad=0.02, label=label)
    else:
        cats = (
            [str(c) for c in values.cat.categories]
            if isinstance(values.dtype, pd.CategoricalDtype)
            else sorted(values.dropna().astype(str).unique())
        )
        strv = values.astype(object).where(values.notna(), None)
        strv = np.array([None if s is None else str(s) for s in strv], dtype=object)
        pal = _palette(cats, style["palette"])  # colours fixed by the full category list, as in scanpy
        cats = [c for c in cats if (strv == c).any()]
        missing = [c for c in cats if pal[c] is None]
        if missing:
            raise ValueError(f"`palette` has no colour for {missing[:5]}.")
        point_colors = np.array([pal[s] if s is not None else na_color for s in strv], dtype=object)
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=list(point_colors), lw=0)
        for c in cats:
            cats_pos[c] = np.median(xy[strv == c], axis=0)
            handles.append(Line2D([], [], ls="", marker="o", color=pal[c], label=c))
        if (strv == None).any():  # noqa: E711
            handles.append(Line2D([], [], ls="", marker="o", color=na_color, label="NA"))
    return handles, cats_pos


def _legend(ax, handles, cats_pos, legend_loc, fontsize) -> None:
    if legend_loc == "right margin":
        ax.legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
            fontsize=fontsize, ncols=1 if len(handles) <= 14 else 2 if len(handles) <= 30 else 3,
        )  # fmt: skip
    elif legend_loc == "on data" and cats_pos:
        for c, (cx, cy) in cats_pos.items():
            ax.text(
                cx, cy, c, ha="center", va="center", fontsize=fontsize, weight="bold",
                path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")],
            )  # fmt: skip
    elif legend_loc == "on data":
        ax.legend(handles=handles, loc="best", frameon=False, fontsize=fontsize)
    else:
        ax.legend(handles=handles, loc=legend_loc, frameon=False, fontsize=fontsize)


@doc
def concept_space(
    adata: AnnData,
    key: str,
    color: str | None = "category",
    *,
    highlight=None,
    size: float | None = None,
    palette=None,
    cmap: str = "viridis",
    legend_loc: str | None = "right margin",
    legend_fontsize: float | str = "small",
    highlight_color: str = "#d62728",
    na_color: str = "lightgray",
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Features in the concept-space UMAP, coloured by a category, a feature column or a concept.

    Reads ``adata.uns[key]["concept_space"]`` written by :func:`featurelens.tl.concept_space`
    (one point per annotated feature); the AnnData is only read, never modified.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`featurelens.tl.concept_space`.
    {doc_key}
    color
        What colours the points: a column of the concept-space table (``"category"``, the
        feature's most common level-1 GO ancestor, or ``"n_terms"``), a column of
        ``adata.uns[key]["features"]`` (e.g. ``"type"``, ``"group"``, a numeric column) or a word
        probed by :func:`featurelens.tl.probe_concepts` (``"virus"`` reads the column
        ``"concept_virus"``). Categories get a legend, booleans are drawn with ``True`` on top in
        ``highlight_color``, numbers get a colour bar. ``None``: one colour.
    highlight
        Features (names or positions) drawn enlarged and labelled with their names.
    size
        Point size (default: from the number of features).
    palette
        Colours of the categories: a dict category -> colour, a list of colours, a matplotlib
        colour map name (default: scanpy's palettes).
    cmap
        Colour map for numeric values.
    legend_loc
        ``"right margin"``, ``"on data"`` (category names at their medians), ``None`` (no legend)
        or a matplotlib legend location such as ``"best"``.
    legend_fontsize
        Font size of the legend.
    highlight_color
        Colour of ``True`` for boolean colours.
    na_color
        Colour of missing values (and of ``False``).
    title
        Title (default: ``color``).
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
    >>> fl.tl.sae(adata, "X_pca", n_features=32, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", methods="mwu", progress=False)
    >>> fl.tl.concept_space(adata, "sae", progress=False)
    >>> ax = fl.pl.concept_space(adata, "sae", "category", show=False)
    >>> fl.tl.probe_concepts(adata, "sae", ["virus", "interferon"])
    >>> ax = fl.pl.concept_space(adata, "sae", "virus", show=False)
    """
    entry = get_entry(adata, key)
    obs = stored(entry, key, "concept_space", "concept_space", "concept space")["obs"]
    obs = obs.set_axis(obs.index.astype(str))
    xy = obs[["umap1", "umap2"]].to_numpy(dtype=np.float64)
    n = len(obs)
    size = float(np.clip(6000.0 / max(n, 1), 8.0, 60.0)) if size is None else float(size)
    hl_names: list[str] = []
    if highlight is not None:
        _, hl_names = _feature_index(entry, highlight)
        absent = [h for h in hl_names if h not in obs.index]
        if absent:
            raise ValueError(
                f"Feature(s) {absent} are not in the concept space (no term passed the cutoff of "
                "fl.tl.concept_space); highlight annotated features."
            )
    values, label = (None, None) if color is None else _color_values(entry, key, obs, color)
    fig, ax = _axes(ax, (5.0, 4.2) if legend_loc == "right margin" else (4.2, 4.2))
    style = {"size": size, "na_color": na_color, "highlight_color": highlight_color, "cmap": cmap, "palette": palette}
    handles, cats_pos = _draw_points(fig, ax, xy, values, label, legend_loc, style)
    if handles and legend_loc is not None:
        _legend(ax, handles, cats_pos, legend_loc, legend_fontsize)
    for h in hl_names:
        hx, hy = xy[obs.index.get_loc(h)]
        ax.scatter([hx], [hy], s=size * 4, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
        ax.annotate(h, (hx, hy), xytext=(5, 5), textcoords="offset points", fontsize="small", zorder=5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    ax.set_title(title if title is not None else (label or "concept space"), fontsize="medium")
    return _finish(fig, show, return_fig, ax)
