"""Per-token feature maps: :func:`token_scores`."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from .._utils import check_adata
from ..tl._dictionary import _get_entry, _preprocess_of, _resolve_input
from ._embeddings import TOKENS_KEY, UNS_KEY

_TINY = 1e-12


def token_info(adata: AnnData) -> tuple[str, tuple[int, int], str]:
    """Tokens key, grid ``(h, w)`` and pooled-embedding key recorded by :func:`from_embeddings`."""
    info = adata.uns.get(UNS_KEY)
    if not isinstance(info, dict) or "grid" not in info:
        raise ValueError(
            "This AnnData has no token embeddings (adata.uns['microscopy']['grid'] is missing). Build it with "
            "`fl.microscopy.extract_embeddings(...)` or `fl.microscopy.from_embeddings(tokens, ...)` with "
            "(n, T, d) token embeddings; aggregated (well-level) objects have no tokens."
        )
    tokens_key = str(info.get("tokens_key", TOKENS_KEY))
    if tokens_key not in adata.obsm:
        raise ValueError(f"adata.obsm[{tokens_key!r}] (the token embeddings) is missing.")
    h, w = (int(v) for v in np.asarray(info["grid"]).ravel())
    return tokens_key, (h, w), str(info.get("use_rep", "X_emb"))


def feature_index(entry: dict, feature: Any) -> int:
    """Row of the decoder for a feature given by name (``"f3"``) or position (``3``)."""
    n = int(np.asarray(entry["decoder"]).shape[0])
    if isinstance(feature, bool):
        raise TypeError(f"`feature` must be a feature name (str) or position (int), got {feature!r}.")
    if isinstance(feature, int | np.integer):
        if not 0 <= int(feature) < n:
            raise ValueError(f"`feature={int(feature)}` is out of range; the dictionary has {n} features (0..{n - 1}).")
        return int(feature)
    if isinstance(feature, str):
        names = entry["features"].index if "features" in entry else None
        if names is not None and feature in names:
            return int(names.get_loc(feature))
        shown = ", ".join(map(str, list(names[:5]) if names is not None else []))
        raise ValueError(f"Unknown feature {feature!r}; features are named like {shown} ... (or pass a position).")
    raise TypeError(f"`feature` must be a feature name (str) or position (int), got {type(feature).__name__}.")


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

    Tokens live in the space of the pooled embedding the dictionary was trained on (the pooled
    embedding is their mean). Every token is preprocessed exactly as the dictionary
    preprocessed that embedding: the control whitening first, when the dictionary was
    trained on the output of :func:`featurelens.pp.whiten` applied to the pooled embedding (the
    stored whitening is applied to the tokens), then the dictionary's normalisation (centring,
    scaling or unit norm). The score of a token is the cosine between the result and the
    feature's decoder direction; tokens that map to zero score 0.

    Parameters
    ----------
    adata
        AnnData from :func:`extract_embeddings` / :func:`from_embeddings` with token
        embeddings, holding dictionary ``key`` (trained on the pooled embedding or its whitened
        version).
    key
        Key of the dictionary in ``adata.uns``.
    feature
        Feature name (``"f3"``) or position (``3``).
    use_rep
        Space of the tokens (default: the pooled embedding ``uns["microscopy"]["use_rep"]``).
    whiten
        Force (``True``) or skip (``False``) the dictionary's stored whitening; by default it is
        applied exactly when the dictionary was trained on the whitened version of ``use_rep``.
    batch_tokens
        Tokens transformed at once (memory bound).

    Returns
    -------
    :class:`numpy.ndarray` of shape ``(n_obs, h, w)``, float32, values in ``[-1, 1]``, with
    ``(h, w)`` the token grid ``adata.uns["microscopy"]["grid"]``. Nothing is written to ``adata``.

    Examples
    --------
    >>> adata = fl.microscopy.extract_embeddings(cnn, crops, layer="features.6")
    >>> fl.pp.whiten(adata, "X_emb", control_key="perturbation", control_value="DMSO")
    >>> fl.tl.icfl(adata, "X_whitened")
    >>> maps = fl.microscopy.token_scores(adata, "icfl", "f3")  # (n_crops, h, w)
    """
    check_adata(adata)
    entry = _get_entry(adata, key)
    tokens_key, (h, w), pooled_rep = token_info(adata)
    rep = pooled_rep if use_rep is None else use_rep
    j = feature_index(entry, feature)
    tokens = adata.obsm[tokens_key]
    if np.ndim(tokens) != 3 or tokens.shape[1] != h * w:
        raise ValueError(
            f"adata.obsm[{tokens_key!r}] has shape {np.shape(tokens)}; expected (n_obs, {h * w}, d) "
            f"for the grid {(h, w)}."
        )
    _, apply_white = _resolve_input(adata, entry, rep, whiten)
    pre = _preprocess_of(entry)
    d_in = pre.whitening.mean.shape[0] if apply_white and pre.whitening is not None else np.shape(entry["decoder"])[1]
    n, T, d = tokens.shape
    if d != d_in:
        trained = entry["params"].get("use_rep")
        raise ValueError(
            f"The tokens have {d} dimensions but dictionary {key!r} (trained on adata.obsm[{trained!r}]) expects {d_in}"
            f"{' before whitening' if apply_white else ''}. Token maps need a dictionary trained on the pooled "
            f"embedding {rep!r} or on its whitened version (fl.pp.whiten(adata, {rep!r}, ...))."
        )
    direction = np.asarray(entry["decoder"], dtype=np.float64)[j]
    dnorm = float(np.linalg.norm(direction))
    out = np.zeros(n * T, dtype=np.float32)
    rows = max(1, int(batch_tokens) // T)
    for s in range(0, n, rows):
        block = np.asarray(tokens[s : s + rows], dtype=np.float64).reshape(-1, d)
        if not np.isfinite(block).all():
            raise ValueError(f"adata.obsm[{tokens_key!r}] contains NaN or Inf values.")
        Y, _ = pre.transform(block, whiten=apply_white)
        Y = np.asarray(Y, dtype=np.float64)
        norms = np.linalg.norm(Y, axis=1) * dnorm
        cos = np.where(norms > _TINY, (Y @ direction) / np.where(norms > _TINY, norms, 1.0), 0.0)
        out[s * T : s * T + block.shape[0]] = cos
    return out.reshape(n, h, w)
