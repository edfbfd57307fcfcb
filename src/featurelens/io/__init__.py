"""Reading and writing gene sets and dictionaries."""

from ._gmt import read_gene_sets, read_gmt, write_gmt

__all__ = ["read_gene_sets", "read_gmt", "write_gmt"]
