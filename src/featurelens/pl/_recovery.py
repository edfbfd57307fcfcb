"""Recovery of known generative variables across methods (the SAE paper's Table S5) as a bar chart."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .._core import doc
from ._training import PlotResult, _finish


def recovery_table(adata: AnnData, methods: Sequence[str] | None = None, *, key: str = "variable_recovery"):
    """Methods x variables table of ``mean_best_r`` from :func:`featurelens.tl.variable_recovery` results."""
    store = adata.uns.get(key)
    if not isinstance(store, dict) or not store:
        raise ValueError(
            f"No variable recovery results in adata.uns[{key!r}]; run `fl.tl.variable_recovery(adata, variables, "
            "key=...)` or `use_rep=...` for each method first."
        )
    names = list(store) if methods is None else list(methods)
    missing = [m for m in names if m not in store]
    if missing:
        raise ValueError(f"No recovery results for {missing}; stored: {sorted(store)}.")
    cols = {m: store[m]["summary"]["mean_best_r"] for m in names}
    return pd.DataFrame(cols).T


@doc
def recovery(
    adata: AnnData,
    methods: Sequence[str] | None = None,
    *,
    variables: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
    key: str = "variable_recovery",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Mean best correlation per variable for several methods, as grouped bars (Table S5 as a figure).

    Reads the summaries stored by :func:`featurelens.tl.variable_recovery` (one per dictionary key or
    representation) and draws, for every variable, one bar per method: the mean over the variable's
    dimensions of the highest correlation of any single feature with it. Only reads ``adata``.

    Parameters
    ----------
    adata
        Annotated data matrix with ``adata.uns[key][method]["summary"]`` entries.
    methods
        Names of the stored results, in drawing order (default: all).
    variables
        Variables to show, in order (default: all of the first method).
    labels
        Display names of the variables (e.g. ``{"X_programs_active": "X''"}``).
    key
        The ``uns`` key the results were stored under.
    {doc_ax}
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the Axes, or ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.simulate("large", n_obs=1_000, n_genes=200)
    >>> fl.tl.sae(adata, "X_programs", n_features=64, n_steps=100, progress=False)
    >>> fl.tl.variable_recovery(adata, ["X_programs", "X_programs_active"], key="sae")
    >>> fl.tl.variable_recovery(adata, ["X_programs", "X_programs_active"], use_rep="X_programs")
    >>> ax = fl.pl.recovery(adata, ["X_programs", "sae"], show=False)
    """
    table = recovery_table(adata, methods, key=key)
    if variables is not None:
        unknown = [v for v in variables if v not in table.columns]
        if unknown:
            raise ValueError(f"Unknown variable(s) {unknown}; stored: {list(table.columns)}.")
        table = table[list(variables)]
    labels = labels or {}
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * table.shape[1] * max(1, table.shape[0]) / 3, 3.2))
    else:
        fig = ax.figure
    n_m, n_v = table.shape
    width = 0.8 / n_m
    x = np.arange(n_v)
    for i, (method, row) in enumerate(table.iterrows()):
        bars = ax.bar(x - 0.4 + width * (i + 0.5), row.to_numpy(dtype=float), width, label=str(method))
        for b, v in zip(bars, row.to_numpy(dtype=float), strict=True):
            if np.isfinite(v):
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [labels.get(v, v) for v in table.columns])
    ax.set_ylabel("mean best correlation")
    ax.set_ylim(0, 1.08)
    ax.legend(frameon=False, fontsize="small", ncols=min(n_m, 4), loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, show, return_fig, ax)
