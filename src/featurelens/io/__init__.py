"""Reading and writing gene sets, the GO graph and dictionaries."""

from ._gmt import read_gene_sets, read_gmt, write_gmt
from ._go_dag import GODag, read_go_dag

__all__ = ["GODag", "read_gene_sets", "read_gmt", "read_go_dag", "write_gmt"]
