"""Microscopy adapter: image embeddings, token maps and Cell Painting profiles as AnnData.

- :func:`from_embeddings`: pooled or token embeddings (plus metadata) -> AnnData;
- :func:`extract_embeddings`: run images through a torch model and hook one layer;
- :func:`aggregate`: crops / sites -> wells;
- :func:`read_profiles`: CellProfiler / pycytominer profiles -> AnnData;
- :func:`token_scores`: cosine of every patch token with a dictionary feature, as maps.

Storage: the pooled embedding goes to ``adata.obsm["X_emb"]`` (``adata.X`` stays empty), patch
tokens to ``adata.obsm["X_tokens"]`` with shape ``(n, T, d)`` and the token grid to
``adata.uns["microscopy"]`` (``"grid"``, ``"token_dim"``, ``"cls_token"``, ``"tokens_key"``).
"""

from ._embeddings import aggregate, from_embeddings
from ._extract import extract_embeddings
from ._profiles import read_profiles
from ._tokens import token_scores

__all__ = ["aggregate", "extract_embeddings", "from_embeddings", "read_profiles", "token_scores"]
