"""Plots of the results stored by :mod:`featurelens.tl` (read-only)."""

from ._features import activations, feature_heatmap, feature_types, reconstruction, selectivity
from ._training import history

__all__ = ["activations", "feature_heatmap", "feature_types", "history", "reconstruction", "selectivity"]
