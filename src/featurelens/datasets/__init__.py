"""Bundled example data."""

from ._go import go_dag, go_gene_sets
from ._kang import kang2018
from ._simulate import simulate

__all__ = ["go_dag", "go_gene_sets", "kang2018", "simulate"]
