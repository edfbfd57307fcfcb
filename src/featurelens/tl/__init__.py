"""Tools: learn dictionaries on embeddings and annotate their features."""

from ._concepts import FeatureMatch, concept_space, match_features, probe_concepts
from ._dge import high_vs_low
from ._dictionary import encode, icfl, reconstruct, sae
from ._enrich import enrich, gsea
from ._features import feature_stats, feature_types, selectivity
from ._probe import linear_probe

__all__ = [
    "FeatureMatch",
    "concept_space",
    "encode",
    "enrich",
    "feature_stats",
    "feature_types",
    "gsea",
    "high_vs_low",
    "icfl",
    "linear_probe",
    "match_features",
    "probe_concepts",
    "reconstruct",
    "sae",
    "selectivity",
]
