"""The Gene Ontology graph shipped inside the package, read once per session (gene sets: ``_gmt.bundled_go``)."""

from __future__ import annotations

from functools import lru_cache

from .._core import data_file

GO_RELEASE = "2022-07-01"
ONTOLOGIES = ("BP", "MF", "CC")


@lru_cache(maxsize=1)
def bundled_go_dag():
    """The bundled GO graph (terms, edges, GO-slim mapping)."""
    from ._go_dag import read_go_dag

    files = (f"go_terms_{GO_RELEASE}.tsv.gz", f"go_edges_{GO_RELEASE}.tsv.gz", "go2goslim_generic_2022DAG.tsv.gz")
    with data_file(files[0]) as t, data_file(files[1]) as e, data_file(files[2]) as s:
        return read_go_dag(t, e, s)
