"""Bundled example data."""

from ._go import go_dag, go_gene_sets
from ._kang import kang2018
from ._microscopy import cellpainting_plate, nuclei_image
from ._simulate import simulate

__all__ = ["cellpainting_plate", "go_dag", "go_gene_sets", "kang2018", "nuclei_image", "simulate"]
