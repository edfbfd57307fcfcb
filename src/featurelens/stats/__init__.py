"""Vectorised statistics over many features at once (no AnnData)."""

from ._groups import GroupMoments, alpha_scores, group_moments, pearson_max_partner, selectivity_scores
from ._paired import PAIRED_METHODS, PairedResult, paired_deseq2, paired_test, paired_wilcoxon
from ._tests import (
    BinomialResult,
    MWUResult,
    SetMoments,
    average_ranks,
    bh_adjust,
    bh_adjust_grouped,
    binomial_sets,
    mannwhitney_sets,
    paired_ttest,
    set_moments,
    welch_ttest,
)

__all__ = [
    "PAIRED_METHODS",
    "BinomialResult",
    "GroupMoments",
    "MWUResult",
    "PairedResult",
    "SetMoments",
    "alpha_scores",
    "average_ranks",
    "bh_adjust",
    "bh_adjust_grouped",
    "binomial_sets",
    "group_moments",
    "mannwhitney_sets",
    "paired_deseq2",
    "paired_test",
    "paired_ttest",
    "paired_wilcoxon",
    "pearson_max_partner",
    "selectivity_scores",
    "set_moments",
    "welch_ttest",
]
