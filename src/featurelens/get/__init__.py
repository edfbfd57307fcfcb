"""Accessors returning results stored in an AnnData as DataFrames."""

from ._get import concept_adata, dge, dictionary, enrichment, features, history

__all__ = ["concept_adata", "dge", "dictionary", "enrichment", "features", "history"]
