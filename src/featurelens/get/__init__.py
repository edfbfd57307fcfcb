"""Accessors returning results stored in an AnnData as DataFrames."""

from ._get import dge, dictionary, enrichment, features, history

__all__ = ["dge", "dictionary", "enrichment", "features", "history"]
