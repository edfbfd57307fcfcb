"""Accessors returning results stored in an AnnData (or MuData, with ``mod=``) as DataFrames or arrays.

Nothing here computes: every accessor reads what a tool of :mod:`featurelens.tl` stored and
returns a copy, with a clear error naming the tool to run when the result is missing.
"""

from ._get import (
    concept_adata,
    dge,
    dictionary,
    enrichment,
    feature_types,
    features,
    history,
    probe,
    recovery,
    selectivity,
    significant_terms,
    steering,
    token_scores,
)

__all__ = [
    "concept_adata",
    "dge",
    "dictionary",
    "enrichment",
    "feature_types",
    "features",
    "history",
    "probe",
    "recovery",
    "selectivity",
    "significant_terms",
    "steering",
    "token_scores",
]
