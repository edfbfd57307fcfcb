"""Tools: learn dictionaries on embeddings and annotate their features."""

from ._dictionary import encode, icfl, reconstruct, sae

__all__ = ["encode", "icfl", "reconstruct", "sae"]
