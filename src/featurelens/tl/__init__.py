"""Tools: learn dictionaries on embeddings and annotate their features.

Every tool takes an AnnData or a MuData (embedding and dictionary on the MuData, expression in the
modality chosen with ``mod=``).
"""

from .._mudata import mudata_aware
from . import _concepts, _dge, _dictionary, _enrich, _features, _probe, _recovery, _steer
from ._concepts import FeatureMatch, match_features

concept_space = mudata_aware(_concepts.concept_space)
probe_concepts = mudata_aware(_concepts.probe_concepts)
high_vs_low = mudata_aware(_dge.high_vs_low)
encode = mudata_aware(_dictionary.encode)
icfl = mudata_aware(_dictionary.icfl)
reconstruct = mudata_aware(_dictionary.reconstruct)
sae = mudata_aware(_dictionary.sae)
enrich = mudata_aware(_enrich.enrich)
gsea = mudata_aware(_enrich.gsea)
feature_stats = mudata_aware(_features.feature_stats)
feature_types = mudata_aware(_features.feature_types)
selectivity = mudata_aware(_features.selectivity)
linear_probe = mudata_aware(_probe.linear_probe)
steer = mudata_aware(_steer.steer)
autoencoder = mudata_aware(_recovery.autoencoder)
superposition = mudata_aware(_recovery.superposition)
structure_recovery = mudata_aware(_recovery.structure_recovery)
variable_recovery = mudata_aware(_recovery.variable_recovery)

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
    "variable_recovery",
]
