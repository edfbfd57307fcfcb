"""Preprocessing of embeddings: control-based whitening and normalisation (AnnData or MuData)."""

from ._whiten import apply_whitening, normalize_embedding, whiten

__all__ = ["apply_whitening", "normalize_embedding", "whiten"]
