"""Shared docstring text: ``{doc_<name>}`` in a docstring is replaced by the snippet ``<name>``.

Only tokens of the form ``{doc_<name>}`` are touched (other braces, e.g. ``f"X_{key}"``, stay as
they are); an unknown token raises at import, so a typo cannot reach the rendered docs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_TOKEN = re.compile(r"\{doc_(\w+)\}")

#: parameter entries (the name line is indented by the docstring, the description by 8 spaces)
SNIPPETS: dict[str, str] = {
    "adata": "adata\n        Annotated data matrix.",
    "key": (
        "key\n        Key of the dictionary: ``adata.uns[key]``, with its activations in\n"
        '        ``adata.obsm[f"X_{key}"]`` (from :func:`~featurelens.tl.sae`, :func:`~featurelens.tl.icfl` or\n'
        "        :func:`~featurelens.tl.encode`)."
    ),
    "use_rep": 'use_rep\n        Embedding in ``adata.obsm`` to read (``"X"`` reads ``adata.X``).',
    "layer": "layer\n        Layer with the expression values (default ``adata.X``), cells x genes.",
    "feature": 'feature\n        One feature, by name (``"f3"``) or position (``3``).',
    "features": 'features\n        Features by name (``"f3"``) or position (``3``); default: all.',
    "random_state": "random_state\n        Seed of the random number generator; the same seed gives the same result.",
    "progress": "progress\n        Show a progress bar (tqdm).",
    "device": (
        'device\n        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a\n'
        "        :class:`torch.device`."
    ),
    "pval_cutoff": (
        "pval_cutoff\n        Significance cutoff: a p-value (or, with ``adjusted``, an adjusted p-value) below it\n"
        "        counts."
    ),
    "adjusted": (
        "adjusted\n        Apply ``pval_cutoff`` to the Benjamini-Hochberg adjusted p-value instead of the raw one."
    ),
    "codes_out": (
        "out\n"
        "        Write the activations into an on-disk store instead of memory: a path (``.h5`` / ``.h5ad`` for\n"
        "        HDF5, anything else for zarr) or an open zarr / h5py group, opened for writing. They are stored,\n"
        "        as they are computed, as the sparse (CSR) element ``obsm/X_{key_added}`` of the store, and\n"
        "        ``adata.obsm`` receives them read lazily (a dask array) which every featurelens tool reads block\n"
        '        by block. The path of the h5ad file a backed AnnData was opened from (``backed="r+"``) makes\n'
        "        them part of that file. Memory then no longer grows with the number of cells."
    ),
    "checkpoint": (
        "checkpoint, checkpoint_every, resume\n"
        "        Write the whole training state (weights, optimiser, step, batch order, random generators,\n"
        "        dead-feature counts, history; ``torch.save`` of tensors and plain types, read back with\n"
        "        ``weights_only=True``) to the file ``checkpoint`` every ``checkpoint_every`` steps and at the\n"
        "        end, replacing it atomically, so an interrupted run (Ctrl-C, a killed job) leaves a usable\n"
        "        checkpoint and ``adata`` unchanged. Call again with the same options and ``resume=True`` to\n"
        "        continue from it: on the CPU the result equals that of an uninterrupted run. A checkpoint of\n"
        "        another run (options, data shape or featurelens version) is refused with the difference."
    ),
    "ax": "ax\n        Axes to draw into (default: a new figure).",
    "show": "show\n        Show the figure (default: when matplotlib is interactive).",
    "return_fig": "return_fig\n        Return the figure instead of the Axes.",
    # ---- dictionary learners
    "n_features": (
        "n_features\n        Number of features (default ``round(expansion * d)`` for a ``d``-dimensional embedding)."
    ),
    "expansion": "expansion\n        Features per embedding dimension when ``n_features`` is not given.",
    "batch_size": "batch_size\n        Cells per optimiser step (default ``min(n_obs, 1024)``).",
    "n_steps": "n_steps\n        Optimiser steps (default about 100 epochs, between 1,500 and 20,000).",
    "dead_window": (
        "dead_window\n        Samples per dead-feature window (default: a twentieth of training, at most 10 million).\n"
        "        A feature is dead when it fired on fewer than 1e-5 of the samples of the last window;\n"
        "        AuxK uses features silent for a whole window."
    ),
    "log_every": "log_every\n        Steps between history rows (default: about 100 rows).",
    "train_random_state": (
        "random_state\n        Seed of the initialisation, the batch order (and ICFL's resets); training on the CPU\n"
        "        is deterministic for a fixed seed."
    ),
    # ---- whole sections (the line before the token is the section header)
    "returns_tool": "``None``; with ``copy=True`` a new object holding the results (the input is left untouched).",
    "returns_plot": (
        "The :class:`~matplotlib.figure.Figure` with ``return_fig=True``; otherwise the Axes, or ``None`` when\n"
        "    shown."
    ),
}


def _replace(match: re.Match) -> str:
    name = match.group(1)
    if name not in SNIPPETS:
        raise KeyError(f"Unknown docstring snippet {{doc_{name}}}; known: {sorted(SNIPPETS)}.")
    return SNIPPETS[name]


def doc(func: Callable) -> Callable:
    """Fill the ``{doc_<name>}`` tokens of ``func``'s docstring (apply it innermost, before other decorators)."""
    if func.__doc__:
        func.__doc__ = _TOKEN.sub(_replace, func.__doc__)
    return func
