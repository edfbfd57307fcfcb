"""Bundled example data."""

from ._go import go_dag, go_gene_sets

__all__ = ["go_dag", "go_gene_sets"]
