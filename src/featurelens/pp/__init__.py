"""Preprocessing of embeddings: control-based whitening and normalisation (AnnData or MuData)."""

from .._mudata import mudata_aware
from . import _whiten

apply_whitening = mudata_aware(_whiten.apply_whitening)
normalize_embedding = mudata_aware(_whiten.normalize_embedding)
whiten = mudata_aware(_whiten.whiten)

__all__ = ["apply_whitening", "normalize_embedding", "whiten"]
