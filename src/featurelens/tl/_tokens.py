"""Where in an image a feature fires: :func:`token_scores` (microscopy token embeddings)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import check_positive_int
from .._core import alignment, claim, doc, get_entry, one_feature, stem, token_info, token_maps, tool, tool_params


@tool
@doc
def token_scores(
    adata: AnnData,
    key: str,
    feature,
    *,
    use_rep: str | None = None,
    whiten: bool | None = None,
    batch_tokens: int = 65536,
    key_added: str | None = None,
) -> None:
    """Score every patch token and every pooled embedding against a dictionary feature.

    Tokens live in the space of the pooled embedding the dictionary was trained on (the pooled
    embedding is their mean). Every token is preprocessed exactly as the dictionary preprocessed
    that embedding: the control whitening first, when the dictionary was trained on the output of
    :func:`featurelens.pp.whiten` applied to the pooled embedding (the stored whitening is applied
    to the tokens), then the dictionary's normalisation (centring, scaling or unit norm). The
    score of a token is the cosine between the result and the feature's decoder direction; tokens
    that map to zero score 0 (as in Figs. 5, 6D and 10E of the ICFL paper). The same cosine of
    every observation's pooled embedding (its *alignment*) is stored too; it is defined for every
    observation, also where the sparse activation is 0, and needs no token embeddings.
    :func:`featurelens.pl.token_heatmap` and :func:`featurelens.pl.top_images` draw these scores.

    Parameters
    ----------
    adata
        AnnData from :func:`featurelens.microscopy.extract_embeddings` /
        :func:`featurelens.microscopy.from_embeddings`, holding dictionary ``key`` (trained on the
        pooled embedding or its whitened version). Without token embeddings only the alignment
        is computed.
    {doc_key}
    {doc_feature}
    use_rep
        Space of the tokens (default: the pooled embedding ``uns["microscopy"]["use_rep"]``).
    whiten
        Force (``True``) or skip (``False``) the dictionary's stored whitening; by default it is
        applied exactly when the dictionary was trained on the whitened version of ``use_rep``.
    batch_tokens
        Tokens transformed at once (memory bound).
    key_added
        Stem of the result names (default ``f"{key}_{feature name}"``).

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.obsm[f"{key_added}_token_scores"]`` : :class:`numpy.ndarray` (n_obs, h * w), float32
        Token score maps, row-major over the token grid ``adata.uns["microscopy"]["grid"]``
        (``fl.get.token_scores`` returns them as ``(n_obs, h, w)``); only with token embeddings.
    ``adata.obs[f"{key_added}_alignment"]`` : float
        Cosine between every observation's preprocessed pooled embedding and the feature direction.
    ``adata.uns[key]["token_scores"][key_added]`` : :class:`dict`
        The names of both and the ``params`` (with the feature's name), one entry per run.

    Examples
    --------
    >>> import numpy as np, featurelens as fl
    >>> rng = np.random.default_rng(0)
    >>> adata = fl.microscopy.from_embeddings(rng.normal(size=(40, 16, 8)).astype(np.float32), grid=(4, 4))
    >>> fl.tl.icfl(adata, "X_emb", n_features=16, n_steps=100, progress=False)
    >>> fl.tl.token_scores(adata, "icfl", "f3")
    >>> fl.get.token_scores(adata, "icfl", "f3").shape
    (40, 4, 4)
    """
    check_positive_int(batch_tokens, "batch_tokens")
    entry = get_entry(adata, key)
    j, fname = one_feature(entry, feature)
    name = stem(key_added, f"{key}_{fname}")
    obsm_key, obs_key = f"{name}_token_scores", f"{name}_alignment"
    claim(adata, name, kind=None, obsm=obsm_key, inputs=[entry["params"].get("use_rep")])
    try:
        token_info(adata)
        has_tokens = True
    except ValueError:
        if use_rep is not None or whiten is not None:
            raise
        has_tokens = False
    maps = None
    if has_tokens:
        maps = token_maps(adata, entry, j, key=key, use_rep=use_rep, whiten=whiten, batch_tokens=batch_tokens)
    align = alignment(adata, entry, j)
    runs = entry.setdefault("token_scores", {})
    old = runs.get(name, {})
    if old.get("obsm_key") and old["obsm_key"] in adata.obsm and maps is None:
        del adata.obsm[old["obsm_key"]]  # a rerun without tokens must not leave the earlier maps behind
    if maps is not None:
        adata.obsm[obsm_key] = maps.reshape(adata.n_obs, -1)
    with warnings.catch_warnings():  # one column per scored feature: pandas warns about many inserts
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        adata.obs[obs_key] = align.astype(np.float64)
    runs[name] = {
        "obsm_key": obsm_key if maps is not None else "",
        "obs_key": obs_key,
        "params": tool_params(feature=fname, use_rep=use_rep, whiten=whiten, has_tokens=has_tokens),
    }
