"""Plots of the results stored by :mod:`featurelens.tl` (read-only)."""

from ._annotation import concept_space, dge, enrichment, term_counts
from ._features import activations, feature_heatmap, feature_types, reconstruction, selectivity
from ._microscopy import token_heatmap, top_images
from ._recovery import recovery
from ._steering import steering
from ._training import history

__all__ = [
    "activations",
    "concept_space",
    "dge",
    "enrichment",
    "feature_heatmap",
    "feature_types",
    "history",
    "reconstruction",
    "recovery",
    "selectivity",
    "steering",
    "term_counts",
    "token_heatmap",
    "top_images",
]
