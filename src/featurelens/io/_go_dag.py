"""The Gene Ontology as a directed acyclic graph: ancestors, level-1 categories, GO-slim ancestors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from os import PathLike

import numpy as np
import pandas as pd

from .._checks import check_choice

__all__ = ["GODag", "read_go_dag"]

ROOTS = {"BP": "GO:0008150", "MF": "GO:0003674", "CC": "GO:0005575"}
#: relation names as spelled in the edge files -> canonical names
_RELATION_ALIASES = {
    "isa": "is_a",
    "is a": "is_a",
    "is_a": "is_a",
    "part of": "part_of",
    "partof": "part_of",
    "part_of": "part_of",
    "regulates": "regulates",
    "negatively regulates": "negatively_regulates",
    "negatively_regulates": "negatively_regulates",
    "positively regulates": "positively_regulates",
    "positively_regulates": "positively_regulates",
}
DEFAULT_RELATIONS = ("is_a", "part_of")


def _table(src, what: str, required: Sequence[str]) -> pd.DataFrame:
    if isinstance(src, pd.DataFrame):
        df = src
    elif isinstance(src, str | PathLike):
        df = pd.read_csv(src, sep="\t", dtype=str, keep_default_na=False)
    else:
        raise TypeError(f"{what} must be a path or a pandas DataFrame, got {type(src).__name__}.")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"The GO {what} table lacks the column(s) {missing}; it has {list(df.columns)}.")
    return df


class GODag:
    """The Gene Ontology graph with fast ancestor queries.

    Build it with :func:`featurelens.io.read_go_dag` or take the bundled release with
    :func:`featurelens.datasets.go_dag`. Ancestors follow ``is_a`` and ``part_of`` edges by default
    (the relations along which GO annotations propagate); ``relations=`` chooses others.

    Parameters
    ----------
    terms
        Table with columns ``go_id``, ``name``, ``namespace`` (``BP``, ``MF``, ``CC``).
    edges
        Table with columns ``child``, ``parent``, ``relationship`` (``is_a``/``isa``, ``part_of``/``part of``,
        ``regulates``, ``negatively regulates``, ``positively regulates``).
    slim
        Optional table with columns ``go_id`` and ``goslim_generic_ancestors`` (``;``-separated GO ids): each
        term's GO-slim ancestors.

    Examples
    --------
    >>> import featurelens as fl
    >>> dag = fl.datasets.go_dag()
    >>> dag.level1("GO:0051607")  # defense response to virus
    ['GO:0044419', 'GO:0050896']
    """

    def __init__(self, terms: pd.DataFrame, edges: pd.DataFrame, slim: pd.DataFrame | None = None):
        terms = _table(terms, "terms", ("go_id", "name", "namespace"))
        edges = _table(edges, "edges", ("child", "parent", "relationship"))
        ids = pd.Index(terms["go_id"].astype(str))
        if ids.has_duplicates:
            raise ValueError(f"The GO terms table repeats ids, e.g. {ids[ids.duplicated()][0]!r}.")
        self.terms = pd.DataFrame(
            {"name": terms["name"].astype(str).to_numpy(), "namespace": terms["namespace"].astype(str).to_numpy()},
            index=ids.rename("go_id"),
        )
        # GO.db links the three namespace roots to a meta-root "all" that is not a GO term
        edges = edges[edges["parent"].astype(str) != "all"]
        rel = edges["relationship"].astype(str).str.strip().str.lower()
        unknown = sorted(set(rel) - set(_RELATION_ALIASES))
        if unknown:
            raise ValueError(f"Unknown GO relationship(s) {unknown}; known: {sorted(set(_RELATION_ALIASES.values()))}.")
        rel = rel.map(_RELATION_ALIASES)
        child = ids.get_indexer(edges["child"].astype(str))
        parent = ids.get_indexer(edges["parent"].astype(str))
        bad = (child < 0) | (parent < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{int(bad.sum())} GO edge(s) name terms missing from the terms table, e.g. "
                f"{edges['child'].iloc[i]!r} -> {edges['parent'].iloc[i]!r}."
            )
        self._ids = ids
        self._pos = {t: i for i, t in enumerate(ids)}
        self._edges = pd.DataFrame({"child": child, "parent": parent, "relationship": rel.to_numpy()})
        self._cache: dict[tuple[str, ...], dict[int, frozenset[int]]] = {}
        self._parents: dict[tuple[str, ...], list[np.ndarray]] = {}
        self.roots = {ns: r for ns, r in ROOTS.items() if r in self._pos}
        is_a = self._edges[self._edges["relationship"] == "is_a"]
        root_pos = {self._pos[r] for r in self.roots.values()}
        self._level1 = frozenset(is_a.loc[is_a["parent"].isin(root_pos), "child"].tolist())
        self._slim: dict[str, tuple[str, ...]] | None = None
        if slim is not None:
            slim = _table(slim, "slim", ("go_id", "goslim_generic_ancestors"))
            anc = slim["goslim_generic_ancestors"].fillna("").astype(str)
            self._slim = {
                t: tuple(a for a in s.split(";") if a) for t, s in zip(slim["go_id"].astype(str), anc, strict=True)
            }

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, term) -> bool:
        return str(term) in self._pos

    def __repr__(self) -> str:
        counts = self.terms["namespace"].value_counts()
        ns = ", ".join(f"{k} {counts.get(k, 0):,}" for k in ROOTS)
        slim = ", GO-slim mapping" if self._slim is not None else ""
        return f"GODag with {len(self):,} terms ({ns}) and {len(self._edges):,} edges{slim}"

    def _index(self, term) -> int:
        try:
            return self._pos[str(term)]
        except KeyError:
            raise KeyError(f"{term!r} is not a term of this GO graph ({len(self):,} terms).") from None

    def name(self, term) -> str:
        """Name of a term."""
        return str(self.terms["name"].iat[self._index(term)])

    def namespace(self, term) -> str:
        """Namespace (``BP``, ``MF`` or ``CC``) of a term."""
        return str(self.terms["namespace"].iat[self._index(term)])

    @property
    def level1_terms(self) -> list[str]:
        """The level-1 terms: ``is_a`` children of the three namespace roots."""
        return sorted(self._ids[list(self._level1)])

    # ------------------------------------------------------------------ graph walks
    def _relations(self, relations) -> tuple[str, ...]:
        if isinstance(relations, str):
            relations = (relations,)
        rels = []
        for r in relations:
            c = _RELATION_ALIASES.get(str(r).strip().lower())
            if c is None:
                raise ValueError(f"Unknown relation {r!r}; choose from {sorted(set(_RELATION_ALIASES.values()))}.")
            rels.append(c)
        return tuple(sorted(set(rels)))

    def _parent_lists(self, rels: tuple[str, ...]) -> list[np.ndarray]:
        if rels not in self._parents:
            e = self._edges[self._edges["relationship"].isin(rels)]
            order = np.argsort(e["child"].to_numpy(), kind="stable")
            child = e["child"].to_numpy()[order]
            parent = e["parent"].to_numpy()[order]
            bounds = np.searchsorted(child, np.arange(len(self) + 1))
            self._parents[rels] = [parent[bounds[i] : bounds[i + 1]] for i in range(len(self))]
        return self._parents[rels]

    def _ancestor_set(self, i: int, rels: tuple[str, ...]) -> frozenset[int]:
        """Ancestors (positions, excluding the term) by a memoised iterative depth-first walk."""
        memo = self._cache.setdefault(rels, {})
        if i in memo:
            return memo[i]
        parents = self._parent_lists(rels)
        stack = [i]
        while stack:
            j = stack[-1]
            pending = [p for p in parents[j] if p not in memo]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if j not in memo:
                acc = set()
                for p in parents[j]:
                    acc.add(int(p))
                    acc |= memo[p]
                memo[j] = frozenset(acc)
        return memo[i]

    def parents(self, term, relations: str | Sequence[str] = DEFAULT_RELATIONS) -> list[str]:
        """Direct parents of a term along the given relations (sorted)."""
        rels = self._relations(relations)
        return sorted(self._ids[self._parent_lists(rels)[self._index(term)]])

    def children(self, term, relations: str | Sequence[str] = DEFAULT_RELATIONS) -> list[str]:
        """Direct children of a term along the given relations (sorted)."""
        rels = self._relations(relations)
        e = self._edges
        sel = (e["parent"].to_numpy() == self._index(term)) & e["relationship"].isin(rels).to_numpy()
        return sorted(self._ids[e["child"].to_numpy()[sel]])

    def ancestors(
        self, term, relations: str | Sequence[str] = DEFAULT_RELATIONS, *, include_self: bool = False
    ) -> list[str]:
        """All ancestors of a term (transitively, along ``relations``), sorted.

        Parameters
        ----------
        term
            A GO id.
        relations
            Edge types to follow; default ``("is_a", "part_of")``.
        include_self
            Include the term itself.

        Returns
        -------
        Sorted list of GO ids.

        Examples
        --------
        >>> import featurelens as fl
        >>> "GO:0008150" in fl.datasets.go_dag().ancestors("GO:0051607")
        True
        """
        i = self._index(term)
        anc = set(self._ancestor_set(i, self._relations(relations)))
        if include_self:
            anc.add(i)
        return sorted(self._ids[list(anc)])

    def level1(self, term, relations: str | Sequence[str] = DEFAULT_RELATIONS) -> list[str]:
        """The level-1 ancestors of a term: its ancestors (or itself) that are children of a namespace root.

        A root has none. Sorted list of GO ids.
        """
        i = self._index(term)
        anc = self._ancestor_set(i, self._relations(relations)) | {i}
        return sorted(self._ids[list(anc & self._level1)])

    def slim(self, term) -> list[str]:
        """The GO-slim-generic ancestors of a term (from the mapping given as ``slim``), sorted."""
        if self._slim is None:
            raise ValueError("This GO graph has no GO-slim mapping; build it with `read_go_dag(..., slim=...)`.")
        self._index(term)
        return sorted(self._slim.get(str(term), ()))

    def categories(
        self, terms: Iterable, *, by: str = "level1", relations: str | Sequence[str] = DEFAULT_RELATIONS
    ) -> pd.DataFrame:
        """Long table of the categories of many terms.

        Parameters
        ----------
        terms
            GO ids; ids that are not in the graph get no rows.
        by
            ``"level1"`` (children of the namespace roots) or ``"slim"`` (GO-slim generic).
        relations
            Edge types followed for ``"level1"``.

        Returns
        -------
        DataFrame with columns ``term``, ``category`` (GO id) and ``category_name``, one row per
        (term, category) pair.

        Examples
        --------
        >>> import featurelens as fl
        >>> fl.datasets.go_dag().categories(["GO:0051607", "GO:0006412"])["category"].tolist()
        ['GO:0044419', 'GO:0050896', 'GO:0008152', 'GO:0009987']
        """
        check_choice(by, "by", ("level1", "slim"))
        rows_t, rows_c = [], []
        for t in dict.fromkeys(str(t) for t in terms):
            if t not in self._pos:
                continue
            cats = self.level1(t, relations) if by == "level1" else self.slim(t)
            rows_t.extend([t] * len(cats))
            rows_c.extend(cats)
        names = self.terms["name"].reindex(rows_c).to_numpy() if rows_c else np.zeros(0, dtype=object)
        return pd.DataFrame({"term": rows_t, "category": rows_c, "category_name": names}, dtype=object)


def read_go_dag(
    terms: str | PathLike | pd.DataFrame,
    edges: str | PathLike | pd.DataFrame,
    slim: str | PathLike | pd.DataFrame | None = None,
) -> GODag:
    """Read the Gene Ontology graph from term and edge tables.

    Parameters
    ----------
    terms
        Path to a tab-separated file (plain or ``.gz``) or a DataFrame with columns ``go_id``, ``name``,
        ``namespace``.
    edges
        Path or DataFrame with columns ``child``, ``parent``, ``relationship``.
    slim
        Optional path or DataFrame with columns ``go_id`` and ``goslim_generic_ancestors``
        (``;``-separated), giving each term's GO-slim-generic ancestors.

    Returns
    -------
    A :class:`~featurelens.io.GODag`.

    Examples
    --------
    >>> from importlib import resources
    >>> import featurelens as fl
    >>> data = resources.files("featurelens") / "datasets" / "data"
    >>> dag = fl.io.read_go_dag(data / "go_terms_2022-07-01.tsv.gz", data / "go_edges_2022-07-01.tsv.gz")
    >>> dag.level1("GO:0051607")
    ['GO:0044419', 'GO:0050896']
    """
    return GODag(terms, edges, slim)
