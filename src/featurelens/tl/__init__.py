"""Tools: learn dictionaries on embeddings and annotate their features.

Every tool takes an AnnData (or a MuData: the embedding and the dictionary on the MuData, the
expression in the modality chosen with ``mod=``) and the key of what it reads as its first
arguments, takes its options as keywords, writes its results into the object and returns None
(with ``copy=True``: a new object holding the results, leaving the input untouched). Results are
read back with :mod:`featurelens.get`.
"""

from ._concepts import FeatureMatch, concept_space, match_features, probe_concepts
from ._dge import high_vs_low
from ._dictionary import encode, icfl, reconstruct, sae
from ._enrich import enrich, gsea
from ._features import feature_stats, feature_types, selectivity
from ._probe import linear_probe
from ._recovery import autoencoder, structure_recovery, superposition, variable_recovery
from ._scvi import train_scvi
from ._steer import steer
from ._tokens import token_scores

__all__ = [
    "FeatureMatch",
    "autoencoder",
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
    "steer",
    "structure_recovery",
    "superposition",
    "token_scores",
    "train_scvi",
    "variable_recovery",
]
