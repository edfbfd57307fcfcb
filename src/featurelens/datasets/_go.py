"""The bundled human Gene Ontology gene sets (release 2022-07-01)."""

from __future__ import annotations

from numbers import Integral

import pandas as pd

from ..io._bundled import ONTOLOGIES, bundled_go_dag
from ..io._gmt import bundled_go

__all__ = ["go_dag", "go_gene_sets"]


def _check_size(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{what} must be an integer or None, got {value!r}.")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}.")
    return int(value)


def go_gene_sets(ontology: str = "BP", *, min_size: int | None = None, max_size: int | None = None) -> pd.DataFrame:
    """Human Gene Ontology gene sets bundled with featurelens.

    Gene Ontology release 2022-07-01 (CC BY 4.0, http://geneontology.org): human annotations with gene
    symbols, propagated to all ancestor terms, derived from the Bioconductor GO.db / org.Hs.eg.db 3.16
    packages. The files hold 15,975 BP, 4,964 MF and 2,024 CC terms.

    Parameters
    ----------
    ontology
        ``"BP"`` (biological process), ``"MF"`` (molecular function) or ``"CC"`` (cellular component);
        case-insensitive.
    min_size
        Keep only terms with at least this many genes (inclusive); ``None`` for no lower bound.
    max_size
        Keep only terms with at most this many genes (inclusive); ``None`` for no upper bound.

    Returns
    -------
    A long :class:`~pandas.DataFrame` with the string columns ``term`` (GO id), ``name`` (term name) and
    ``gene`` (gene symbol), one row per (term, gene) pair, in file order. The file is read once per
    session; every call returns a new frame that the caller may modify.

    Raises
    ------
    ValueError
        If ``ontology`` is not one of BP, MF, CC, a size is negative or ``min_size > max_size``.
    TypeError
        If a size is not an integer.

    Examples
    --------
    >>> import featurelens as fl
    >>> bp = fl.datasets.go_gene_sets("BP", min_size=5, max_size=500)
    >>> bp["term"].nunique()
    9006
    >>> bp.columns.tolist()
    ['term', 'name', 'gene']
    >>> fl.datasets.go_gene_sets("cc")["term"].nunique()
    2024
    """
    key = ontology.upper() if isinstance(ontology, str) else None
    if key not in ONTOLOGIES:
        raise ValueError(f"ontology must be one of {', '.join(ONTOLOGIES)} (case-insensitive), got {ontology!r}.")
    min_size = _check_size(min_size, "min_size")
    max_size = _check_size(max_size, "max_size")
    if min_size is not None and max_size is not None and min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size}).")
    df = bundled_go(key)
    if min_size is not None or max_size is not None:
        sizes = df.groupby("term", sort=False)["term"].transform("size")
        keep = pd.Series(True, index=df.index)
        if min_size is not None:
            keep &= sizes >= min_size
        if max_size is not None:
            keep &= sizes <= max_size
        df = df.loc[keep].reset_index(drop=True)
    return df.copy(deep=True)


def go_dag():
    """The Gene Ontology graph bundled with featurelens (release 2022-07-01).

    43,558 terms (BP, MF, CC) and 85,716 child-parent edges (``is_a``, ``part_of``, ``regulates``,
    ``negatively_regulates``, ``positively_regulates``), with each term's GO-slim-generic ancestors; derived
    from the Bioconductor GO.db 3.16 package (CC BY 4.0, http://geneontology.org). The same release as
    :func:`go_gene_sets`. Read once per session (the graph is not modified by its methods).

    Returns
    -------
    A :class:`featurelens.io.GODag`.

    Examples
    --------
    >>> import featurelens as fl
    >>> dag = fl.datasets.go_dag()
    >>> dag.name("GO:0051607")
    'defense response to virus'
    >>> [dag.name(t) for t in dag.level1("GO:0051607")]
    ['biological process involved in interspecies interaction between organisms', 'response to stimulus']
    """
    return bundled_go_dag()
