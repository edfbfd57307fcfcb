"""Accessors returning results stored in an AnnData (or MuData, with ``mod=``) as DataFrames."""

from .._mudata import mudata_aware
from . import _get

concept_adata = mudata_aware(_get.concept_adata, writes=False)
dge = mudata_aware(_get.dge, writes=False)
dictionary = mudata_aware(_get.dictionary, writes=False)
enrichment = mudata_aware(_get.enrichment, writes=False)
features = mudata_aware(_get.features, writes=False)
history = mudata_aware(_get.history, writes=False)
steering = mudata_aware(_get.steering, writes=False)

__all__ = ["concept_adata", "dge", "dictionary", "enrichment", "features", "history", "steering"]
