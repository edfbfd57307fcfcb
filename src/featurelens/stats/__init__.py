"""Vectorised statistics over many features at once (no AnnData)."""

from ._groups import GroupMoments, alpha_scores, group_moments, pearson_max_partner, selectivity_scores

__all__ = ["GroupMoments", "alpha_scores", "group_moments", "pearson_max_partner", "selectivity_scores"]
