"""Plots of the results stored by :mod:`featurelens.tl` (read-only)."""

from ._training import history

__all__ = ["history"]
