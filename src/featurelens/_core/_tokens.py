"""The token grid of microscopy AnnData objects (``adata.uns["microscopy"]``)."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

UNS_KEY = "microscopy"
TOKENS_KEY = "X_tokens"


def token_info(adata: AnnData) -> tuple[str, tuple[int, int], str]:
    """Tokens key, grid ``(h, w)`` and pooled-embedding key recorded by ``fl.microscopy.from_embeddings``."""
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


_TINY = 1e-12


def _cosine(Y: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Cosine of every row of ``Y`` with ``direction`` (0 for rows that map to zero)."""
    norms = np.linalg.norm(Y, axis=1) * float(np.linalg.norm(direction))
    return np.where(norms > _TINY, (Y @ direction) / np.where(norms > _TINY, norms, 1.0), 0.0)


def token_maps(
    adata: AnnData,
    entry: dict,
    j: int,
    *,
    key: str,
    use_rep: str | None = None,
    whiten: bool | None = None,
    batch_tokens: int = 65536,
) -> np.ndarray:
    """Cosine of every patch token, preprocessed like the dictionary's input, with decoder row ``j``.

    Returns an ``(n_obs, h, w)`` float32 array (the token grid of ``adata.uns["microscopy"]``).
    """
    from ._dictionary import input_dim, preprocess_of, resolve_input

    tokens_key, (h, w), pooled_rep = token_info(adata)
    rep = pooled_rep if use_rep is None else use_rep
    tokens = adata.obsm[tokens_key]
    if np.ndim(tokens) != 3 or tokens.shape[1] != h * w:
        raise ValueError(
            f"adata.obsm[{tokens_key!r}] has shape {np.shape(tokens)}; expected (n_obs, {h * w}, d) "
            f"for the grid {(h, w)}."
        )
    _, apply_white = resolve_input(adata, entry, rep, whiten)
    pre = preprocess_of(entry)
    d_in = input_dim(entry, apply_white)
    n, T, d = tokens.shape
    if d != d_in:
        trained = entry["params"].get("use_rep")
        raise ValueError(
            f"The tokens have {d} dimensions but dictionary {key!r} (trained on adata.obsm[{trained!r}]) expects {d_in}"
            f"{' before whitening' if apply_white else ''}. Token maps need a dictionary trained on the pooled "
            f"embedding {rep!r} or on its whitened version (fl.pp.whiten(adata, {rep!r}, ...))."
        )
    direction = np.asarray(entry["decoder"], dtype=np.float64)[j]
    out = np.zeros(n * T, dtype=np.float32)
    rows = max(1, int(batch_tokens) // T)
    for s in range(0, n, rows):
        block = np.asarray(tokens[s : s + rows], dtype=np.float64).reshape(-1, d)
        if not np.isfinite(block).all():
            raise ValueError(f"adata.obsm[{tokens_key!r}] contains NaN or Inf values.")
        Y, _ = pre.transform(block, whiten=apply_white)
        out[s * T : s * T + block.shape[0]] = _cosine(np.asarray(Y, dtype=np.float64), direction)
    return out.reshape(n, h, w)


def alignment(adata: AnnData, entry: dict, j: int) -> np.ndarray:
    """Cosine between every observation's preprocessed (pooled) embedding and decoder row ``j``.

    The embedding is the dictionary's input exactly as ``fl.tl.encode`` prepares it; it is the
    score a single token would get from :func:`token_maps`, applied to the pooled embedding.
    """
    from ._dictionary import prepared_input

    _, _, Y, _, _ = prepared_input(adata, entry, None, None)
    return _cosine(np.asarray(Y, dtype=np.float64), np.asarray(entry["decoder"], dtype=np.float64)[j])
