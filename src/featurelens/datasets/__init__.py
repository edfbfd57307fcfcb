"""Bundled example data."""

from ._go import go_gene_sets

__all__ = ["go_gene_sets"]
