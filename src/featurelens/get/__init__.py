"""Accessors returning results stored in an AnnData as DataFrames."""

from ._get import dictionary, features, history

__all__ = ["dictionary", "features", "history"]
