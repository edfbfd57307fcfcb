"""``fl.microscopy.token_scores``: the token maps of a feature as an array (kept for one release)."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from .._core import check_adata, get_entry, one_feature, token_maps, warn


def token_scores(
    adata: AnnData,
    key: str,
    feature: str | int,
    *,
    use_rep: str | None = None,
    whiten: bool | None = None,
    batch_tokens: int = 65536,
) -> np.ndarray:
    """Cosine similarity of every patch token with a dictionary feature, as an image-shaped map.

    Deprecated: use :func:`featurelens.tl.token_scores`, which stores the maps (and the alignment
    of the pooled embeddings) in the AnnData for :func:`featurelens.pl.token_heatmap`, and
    :func:`featurelens.get.token_scores` to read them. This function computes the same maps and
    returns them without writing anything; it works in this release, with a FutureWarning.

    Parameters
    ----------
    adata
        AnnData from :func:`extract_embeddings` / :func:`from_embeddings` with token embeddings,
        holding dictionary ``key``.
    key
        Key of the dictionary in ``adata.uns``.
    feature
        Feature name (``"f3"``) or position (``3``).
    use_rep
        Space of the tokens (default: the pooled embedding ``uns["microscopy"]["use_rep"]``).
    whiten
        Force (``True``) or skip (``False``) the dictionary's stored whitening.
    batch_tokens
        Tokens transformed at once (memory bound).

    Returns
    -------
    :class:`numpy.ndarray` of shape ``(n_obs, h, w)``, float32, values in ``[-1, 1]``.

    Sets the following fields:

    Nothing; ``adata`` is not modified.

    Examples
    --------
    >>> import warnings, numpy as np, featurelens as fl
    >>> rng = np.random.default_rng(0)
    >>> adata = fl.microscopy.from_embeddings(rng.normal(size=(40, 16, 8)).astype(np.float32), grid=(4, 4))
    >>> fl.tl.icfl(adata, "X_emb", n_features=16, n_steps=100, progress=False)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", FutureWarning)
    ...     maps = fl.microscopy.token_scores(adata, "icfl", "f3")
    >>> maps.shape
    (40, 4, 4)
    """
    warn(
        "fl.microscopy.token_scores is deprecated: run `fl.tl.token_scores(adata, key, feature)`, which stores the "
        "maps, and read them with `fl.get.token_scores(adata, key, feature)`.",
        FutureWarning,
    )
    check_adata(adata)
    entry = get_entry(adata, key)
    j, _ = one_feature(entry, feature)
    return token_maps(adata, entry, j, key=key, use_rep=use_rep, whiten=whiten, batch_tokens=batch_tokens)
