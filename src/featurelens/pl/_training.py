"""Training curves of a dictionary."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._core import doc
from ..get import history as get_history

#: what a plot returns: the figure (``return_fig=True``), its Axes (one, or an array), or None when shown
PlotResult = Figure | Axes | np.ndarray | None


def _finish(fig, show: bool | None, return_fig: bool, axes):
    if return_fig:
        return fig
    if show is None:
        show = plt.isinteractive()
    if show:
        plt.show()
        return None
    return axes


@doc
def history(
    adata: AnnData,
    key: str,
    metrics: str | Sequence[str] = ("loss", "fvu", "l0", "dead_fraction"),
    *,
    x: str = "step",
    logy: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> PlotResult:
    """Plot the training history of a dictionary.

    Parameters
    ----------
    adata
        Annotated data matrix holding the dictionary.
    {doc_key}
    metrics
        Columns of the history to plot, one panel each (missing ones are skipped).
    x
        ``"step"`` or ``"samples_seen"``.
    logy
        Logarithmic y axes.
    ax
        Axes to draw into (only with a single metric).
    {doc_show}
    {doc_return_fig}

    Returns
    -------
    The figure with ``return_fig=True``; otherwise the axes, or ``None`` when shown.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> axes = fl.pl.history(adata, "sae", ["fvu", "dead_fraction"], show=False)
    """
    hist = get_history(adata, key)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    present = [m for m in metrics if m in hist.columns]
    if not present:
        raise ValueError(f"None of {metrics} is in the history; it has {list(hist.columns)}.")
    if x not in hist.columns:
        raise ValueError(f"`x={x!r}` is not a history column; use 'step' or 'samples_seen'.")
    if ax is not None:
        if len(present) != 1:
            raise ValueError("`ax=` needs a single metric.")
        axes = np.array([ax])
        fig = ax.figure
    else:
        fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.8), squeeze=False)
        axes = axes[0]
    for a, m in zip(axes, present, strict=True):
        a.plot(hist[x].to_numpy(), hist[m].to_numpy(), lw=1.2)
        a.set_xlabel(x.replace("_", " "))
        a.set_title(m)
        if logy:
            a.set_yscale("log")
    if ax is None:
        fig.tight_layout()
    return _finish(fig, show, return_fig, axes if len(axes) > 1 else axes[0])
