"""Concept space: features x GO terms, its UMAP, concept probing and matching two dictionaries."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_choice, check_choices, check_int, check_number, check_positive
from .._core import (
    TESTS,
    as_anndata,
    check_adata,
    doc,
    get_entry,
    input_space_directions,
    invalidate,
    is_mudata,
    significant_terms,
    tool,
    tool_params,
    warn,
)

CATEGORY_BY = ("level1", "slim")
UNASSIGNED = "unassigned"


def _binary(sel: pd.DataFrame, features: pd.Index, terms: pd.Index) -> sp.csr_matrix:
    rows = features.get_indexer(sel["feature"])
    cols = terms.get_indexer(sel["term"])
    data = np.ones(len(sel), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(features), len(terms)), dtype=np.float32)


def _term_categories(terms: pd.Index, by: str | None, dag) -> pd.DataFrame:
    """Long (term, category name) table; terms outside the GO graph get none."""
    if by is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("term", "category", "category_name")})
    if dag is None:
        from ..datasets import go_dag

        dag = go_dag()
    cats = dag.categories(terms, by=by)
    if len(terms) and cats.empty:
        warn(
            "None of the enriched terms is in the GO graph (are the gene sets GO terms?); every feature's "
            f"category is {UNASSIGNED!r}. Pass `dag=` a matching graph or `category=None`."
        )
    return cats


def _feature_categories(sel: pd.DataFrame, cats: pd.DataFrame, features: pd.Index) -> pd.Series:
    """Most common category among each feature's terms; ties go to the category rarer across all terms."""
    pairs = sel[["feature", "term"]].merge(cats, on="term", how="inner")
    out = pd.Series(UNASSIGNED, index=features, dtype=object)
    if pairs.empty:
        return out
    overall = cats["category_name"].value_counts()
    counts = pairs.groupby(["feature", "category_name"], observed=True).size().rename("n").reset_index()
    counts["overall"] = counts["category_name"].map(overall).to_numpy()
    counts = counts.sort_values(["feature", "n", "overall", "category_name"], ascending=[True, False, True, True])
    best = counts.drop_duplicates("feature").set_index("feature")["category_name"]
    out.loc[best.index] = best.to_numpy()
    return out


def _resolve_tests_params(entry: dict, test, pval_cutoff, adjusted, direction) -> dict:
    """Explicit values win; otherwise those of the stored concept space; otherwise the defaults."""
    stored = entry.get("concept_space", {}).get("params", {})
    test = test if test is not None else stored.get("test", "mwu")
    if isinstance(test, str) and "," in test:
        test = test.split(",")
    return {
        "test": test,
        "pval_cutoff": pval_cutoff if pval_cutoff is not None else stored.get("pval_cutoff", 0.01),
        "adjusted": adjusted if adjusted is not None else stored.get("adjusted", False),
        "direction": direction if direction is not None else (stored.get("direction") or None),
    }


# ----------------------------------------------------------------------------- concept space
def _annotated_features(index: pd.Index, sel: pd.DataFrame) -> pd.Index:
    """The features of ``index`` (as strings, in its order) that have a row in ``sel``, by one hash look-up each."""
    names = index.astype(str)
    return pd.Index(names[names.isin(pd.unique(sel["feature"]))], name="feature")


def _umap(M: sp.csr_matrix, *, n_neighbors, min_dist, spread, metric, random_state) -> np.ndarray:
    """2-D UMAP coordinates of the rows of the binary feature x term matrix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportWarning)  # ParametricUMAP needs tensorflow; not used here
        import umap

    n = M.shape[0]
    reducer = umap.UMAP(
        n_neighbors=int(min(n_neighbors, n - 1)),
        min_dist=min_dist,
        spread=spread,
        metric=metric,
        random_state=int(random_state),
        n_components=2,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*gradient function is not yet implemented.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        # umap's fit of its a/b curve for a large spread evaluates x ** (2 b) at x = 0
        with np.errstate(divide="ignore", over="ignore"):
            coords = reducer.fit_transform(M)
    if not np.isfinite(coords).all():
        raise RuntimeError("UMAP returned non-finite coordinates; try another metric or random_state.")
    return coords


def _concept_tables(sel, features, terms, names, M, feat_cat, term_cat, coords):
    """The ``obs`` (features) and ``terms`` tables of the concept space."""
    n_terms = np.asarray(M.sum(1)).ravel().astype(np.int64)
    levels = sorted(set(feat_cat))
    obs = pd.DataFrame(
        {
            "umap1": coords[:, 0].astype(np.float64),
            "umap2": coords[:, 1].astype(np.float64),
            "category": pd.Categorical(feat_cat.to_numpy(), categories=levels),
            "n_terms": n_terms,
        },
        index=features,
    )
    obs.index.name = None
    term_table = pd.DataFrame(
        {
            "name": names.reindex(terms).astype(str).to_numpy(),
            "category": term_cat.astype(str).to_numpy(),
            "n_features": np.asarray(M.sum(0)).ravel().astype(np.int64),
        },
        index=pd.Index(terms.astype(str), name=None),
    )
    return obs, term_table


def _mirror_into_features(table: pd.DataFrame, obs: pd.DataFrame) -> None:
    """The category and the number of terms of every feature (missing / 0 outside the space)."""
    pos = pd.Index(table.index.astype(str)).get_indexer(obs.index)
    levels = list(obs["category"].cat.categories)
    codes = np.full(len(table), -1, dtype=np.int64)
    codes[pos] = obs["category"].cat.codes.to_numpy()
    table["category"] = pd.Categorical.from_codes(codes, categories=levels)
    nt = np.zeros(len(table), dtype=np.int64)
    nt[pos] = obs["n_terms"].to_numpy()
    table["n_terms"] = nt


def _check_concept_options(n_neighbors, random_state, category, min_dist, spread) -> None:
    check_int(n_neighbors, "n_neighbors", minimum=2)
    check_int(random_state, "random_state")
    check_choice(category, "category", CATEGORY_BY, none=True)
    check_number(min_dist, "min_dist", minimum=0.0)
    check_positive(spread, "spread")


@tool
@doc
def concept_space(
    adata: AnnData,
    key: str,
    *,
    test: str | tuple[str, ...] = "mwu",
    pval_cutoff: float = 0.01,
    adjusted: bool = False,
    direction: str | None = None,
    category: str | None = "level1",
    exclude_categories=(),
    dag=None,
    n_neighbors: int = 10,
    min_dist: float = 1.0,
    spread: float = 10.0,
    metric: str = "euclidean",
    random_state: int = 0,
    progress: bool = True,
) -> None:
    """Map features into a concept space: their significant GO terms, embedded with UMAP.

    Each feature with at least one significant term becomes a binary vector over the unique terms
    (1 where the term passed the cut for that feature), and the feature x term matrix is embedded
    with UMAP, as in the SAE paper's Figure 3 (p < 0.01, 10 neighbours, ``min_dist=1``,
    ``spread=10``, seed 0). Each feature is coloured by the most common level-1 GO ancestor (a child of
    the BP, MF or CC root) over all its terms; every level-1 ancestor of every term counts once per
    term, and a tie goes to the category that is rarer among all terms of the space (the more specific
    one), then alphabetically.

    Every step is linear in the number of significant (feature, term) rows and of features, except
    UMAP's neighbour search. Memory held: the significant rows (feature, term and name as strings),
    the sparse binary feature x term matrix, the per-term categories and UMAP's sparse neighbour
    graph and layout (a fixed number of neighbours per feature); no features x features matrix
    is formed.

    Parameters
    ----------
    adata
        Annotated data matrix with enrichment results (:func:`featurelens.tl.enrich`).
    {doc_key}
    test
        Enrichment test(s) whose terms count: ``"mwu"``, ``"binomial"``, ``"binomial_up"``,
        ``"binomial_down"``, ``"gsea"``, or several (union).
    {doc_pval_cutoff}
    {doc_adjusted}
    direction
        Keep only ``"up"`` or ``"down"`` terms (default: both).
    category
        ``"level1"`` (children of the namespace roots), ``"slim"`` (GO-slim generic ancestors) or ``None``.
    exclude_categories
        Category GO ids or names not to count (e.g. ``["cellular process", "biological regulation"]``,
        the two level-1 BP terms that most terms descend from); a feature whose terms have no other
        category is ``"unassigned"``.
    dag
        A :class:`featurelens.io.GODag`; default the bundled release (:func:`featurelens.datasets.go_dag`).
    n_neighbors, min_dist, spread, metric
        Passed to :class:`umap.UMAP` (``n_neighbors`` is capped at the number of features minus one).
    random_state
        Seed of the UMAP layout.
    {doc_progress}

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key]["concept_space"]["obs"]`` : :class:`pandas.DataFrame`
        One row per annotated feature: ``umap1``, ``umap2``, ``category``, ``n_terms``.
    ``adata.uns[key]["concept_space"]["terms"]`` : :class:`pandas.DataFrame`
        One row per term (GO id): ``name``, ``category`` (its categories, ``"; "``-joined) and
        ``n_features``.
    ``adata.uns[key]["concept_space"]["matrix"]`` : :class:`scipy.sparse.csr_matrix`
        The binary feature x term matrix (float32).
    ``adata.uns[key]["concept_space"]["params"]`` : :class:`dict`
        The options used.
    ``adata.uns[key]["features"]["category"]``, ``["n_terms"]``
        The category (missing for features without terms) and the number of significant terms.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=32, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", methods="mwu", progress=False)
    >>> fl.tl.concept_space(adata, "sae", progress=False)
    >>> fl.get.concept_adata(adata, "sae").obsm["X_umap"].shape[1]
    2
    """
    from tqdm.auto import tqdm

    _check_concept_options(n_neighbors, random_state, category, min_dist, spread)
    entry = get_entry(adata, key)
    tests = list(check_choices(test, "test", TESTS))
    bar = tqdm(total=3, desc="concept space: terms", disable=not progress, leave=False)
    sel = significant_terms(entry, key, test=tests, pval_cutoff=pval_cutoff, adjusted=adjusted, direction=direction)
    features = _annotated_features(entry["features"].index, sel)
    if len(features) < 4:
        raise ValueError(
            f"Only {len(features)} feature(s) have a term with {'padj' if adjusted else 'p'} < {pval_cutoff:g} "
            f"in test {test!r}; a concept space needs at least 4. Relax pval_cutoff, set adjusted=False or use "
            "more tests."
        )
    names = sel.drop_duplicates("term").set_index("term")["name"]
    terms = pd.Index(sorted(names.index), name="term")
    M = _binary(sel, features, terms)
    bar.update(1)
    bar.set_description("concept space: categories")
    cats = _term_categories(terms, category, dag)
    excluded = {exclude_categories} if isinstance(exclude_categories, str) else set(exclude_categories)
    if excluded:
        cats = cats[~(cats["category"].isin(excluded) | cats["category_name"].isin(excluded))]
    feat_cat = _feature_categories(sel, cats, features)
    term_cat = cats.groupby("term")["category_name"].agg("; ".join).reindex(terms).fillna(UNASSIGNED)
    bar.update(1)
    bar.set_description("concept space: UMAP")
    coords = _umap(
        M, n_neighbors=n_neighbors, min_dist=min_dist, spread=spread, metric=metric, random_state=random_state
    )
    bar.update(1)
    bar.close()
    obs, term_table = _concept_tables(sel, features, terms, names, M, feat_cat, term_cat, coords)
    params = tool_params(
        test=",".join(tests), pval_cutoff=float(pval_cutoff), adjusted=bool(adjusted), direction=direction or "",
        category=category or "", exclude_categories=",".join(sorted(excluded)), n_neighbors=int(n_neighbors),
        min_dist=float(min_dist), spread=float(spread), metric=str(metric), random_state=int(random_state),
        n_features=len(features), n_terms=len(terms),
    )  # fmt: skip
    invalidate(adata, key, "concept_space")
    entry["concept_space"] = {
        "obs": obs,
        "terms": term_table,
        "matrix": M,
        "params": params,
    }
    _mirror_into_features(entry["features"], obs)


# ----------------------------------------------------------------------------- probing words
@tool
@doc
def probe_concepts(
    adata: AnnData,
    key: str,
    words,
    *,
    test=None,
    pval_cutoff: float | None = None,
    adjusted: bool | None = None,
    direction: str | None = None,
    regex: bool = False,
    case: bool = False,
) -> None:
    """Mark the features that have a significant term whose name contains a word.

    For each word (e.g. ``"interferon"``, ``"ribosom"``, ``"cell cycle"``) a boolean column says which
    features have at least one significant term whose name contains it (the SAE paper's Fig. 3B / S25).
    Significance follows :func:`concept_space`: explicit options win, otherwise those stored by the last
    :func:`concept_space` call, otherwise MWU with p < 0.01.

    Parameters
    ----------
    adata
        Annotated data matrix with enrichment results.
    {doc_key}
    words
        A word or a list of words (substrings of term names).
    test, pval_cutoff, adjusted, direction
        Which terms count as significant (see :func:`concept_space`).
    regex
        Treat the words as regular expressions.
    case
        Case-sensitive matching.

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key]["features"][f"concept_{word}"]`` : bool column per word
        Whether the feature has a matching significant term.
    ``adata.uns[key]["concept_probes"]`` : :class:`pandas.DataFrame`
        One row per word: ``n_features`` marked, ``n_terms`` matching term names among the
        significant terms, and the options used.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=32, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", methods="mwu", progress=False)
    >>> fl.tl.probe_concepts(adata, "sae", ["interferon", "ribosom"])
    >>> fl.get.features(adata, "sae")["concept_interferon"].dtype
    dtype('bool')
    """
    entry = get_entry(adata, key)
    words = [words] if isinstance(words, str) else list(words)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"words must be a non-empty string or list of non-empty strings, got {words!r}.")
    opts = _resolve_tests_params(entry, test, pval_cutoff, adjusted, direction)
    sel = significant_terms(entry, key, **opts)
    table = entry["features"]
    names = table.index.astype(str)
    rows = []
    for w in words:
        hit = sel["name"].str.contains(w, case=case, regex=regex).to_numpy()
        feats = set(sel.loc[hit, "feature"])
        table[f"concept_{w}"] = names.isin(feats)
        rows.append({"word": w, "n_features": len(feats), "n_terms": int(sel.loc[hit, "term"].nunique())})
    probes = pd.DataFrame(rows).set_index("word")
    probes.index.name = None
    probes["test"] = ",".join(check_choices(opts["test"], "test", TESTS))
    probes["pval_cutoff"] = float(opts["pval_cutoff"])
    probes["adjusted"] = bool(opts["adjusted"])
    old = entry.get("concept_probes")
    if isinstance(old, pd.DataFrame):
        probes = pd.concat([old.drop(index=[w for w in probes.index if w in old.index]), probes])
    entry["concept_probes"] = probes


# ----------------------------------------------------------------------------- matching two dictionaries
class FeatureMatch(NamedTuple):
    """Result of :func:`match_features`: the matched pairs and the overall similarity."""

    pairs: pd.DataFrame
    score: float


def match_features(
    adata_a: AnnData,
    key_a: str,
    adata_b: AnnData,
    key_b: str,
    *,
    by: str = "terms",
    test="mwu",
    pval_cutoff: float = 0.01,
    adjusted: bool = False,
    direction: str | None = None,
    live_only: bool = True,
    mod: str | None = None,
) -> FeatureMatch:
    """Match the features of two dictionaries one to one and score their agreement.

    ``by="terms"`` (SAE paper, A.3.8): the Jaccard similarity between the sets of significant GO terms
    of every pair of annotated features, an optimal one-to-one assignment with the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`) maximising the total similarity, and the overall
    similarity = mean Jaccard over the matched pairs (min(n_a, n_b) pairs). This compares dictionaries
    trained on different embeddings of the same cells. ``by="decoder"``: the cosine between feature
    directions, for two dictionaries of the same embedding space (for example two random seeds); whitening
    is undone first so dictionaries with different preprocessing are comparable.

    Parameters
    ----------
    adata_a, key_a
        The first AnnData and dictionary key.
    adata_b, key_b
        The second (may be the same AnnData with another key, or the same key).
    by
        ``"terms"`` or ``"decoder"``.
    test, pval_cutoff, adjusted, direction
        Which terms count as significant (``by="terms"``; see :func:`concept_space`).
    mod
        For MuData inputs: the modality whose enrichment results are read.
    live_only
        ``by="decoder"``: match only features that are active in at least one cell
        (``n_active > 0`` from :func:`featurelens.tl.feature_stats`, else the training fire rate).

    Returns
    -------
    A :class:`FeatureMatch` named tuple ``(pairs, score)``: ``pairs`` has one row per matched pair,
    sorted by decreasing similarity, with ``feature_a``, ``feature_b``, ``similarity`` and, for
    ``by="terms"``, ``n_terms_a``, ``n_terms_b``, ``n_shared``; ``score`` is the mean similarity.

    Sets the following fields:

    None; neither AnnData is modified.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=32, n_steps=200, progress=False)
    >>> fl.tl.sae(adata, "X_pca", n_features=32, n_steps=200, random_state=1, key_added="sae_seed1", progress=False)
    >>> pairs, score = fl.tl.match_features(adata, "sae", adata, "sae_seed1", by="decoder")
    >>> len(pairs) <= 32 and 0 < score <= 1
    True
    """
    from scipy.optimize import linear_sum_assignment

    adata_a = as_anndata(adata_a, mod) if is_mudata(adata_a) else adata_a
    adata_b = as_anndata(adata_b, mod) if is_mudata(adata_b) else adata_b
    check_adata(adata_a)
    check_adata(adata_b)
    ea, eb = get_entry(adata_a, key_a), get_entry(adata_b, key_b)
    check_choice(by, "by", ("terms", "decoder"))
    if by == "terms":
        sa = significant_terms(ea, key_a, test=test, pval_cutoff=pval_cutoff, adjusted=adjusted, direction=direction)
        sb = significant_terms(eb, key_b, test=test, pval_cutoff=pval_cutoff, adjusted=adjusted, direction=direction)
        for s, k in ((sa, key_a), (sb, key_b)):
            if s.empty:
                raise ValueError(f"No feature of {k!r} has a significant term; relax pval_cutoff or change test.")
        fa = pd.Index(pd.unique(sa["feature"]))
        fb = pd.Index(pd.unique(sb["feature"]))
        terms = pd.Index(sorted(set(sa["term"]) | set(sb["term"])))
        A, B = _binary(sa, fa, terms), _binary(sb, fb, terms)
        shared = np.asarray((A @ B.T).todense())
        na = np.asarray(A.sum(1)).ravel()
        nb = np.asarray(B.sum(1)).ravel()
        sim = shared / (na[:, None] + nb[None, :] - shared)
        extra = {"na": na, "nb": nb, "shared": shared}
    elif by == "decoder":
        Da, Db = input_space_directions(ea), input_space_directions(eb)
        if Da.shape[1] != Db.shape[1]:
            raise ValueError(
                f"The decoders live in spaces of different dimension ({Da.shape[1]} vs {Db.shape[1]}); "
                "by='decoder' needs two dictionaries of the same embedding. Use by='terms'."
            )
        ra, rb = ea["params"].get("use_rep"), eb["params"].get("use_rep")
        if ra != rb:
            warn(
                f"The dictionaries were trained on different embeddings ({ra!r} vs {rb!r}); decoder cosines "
                "are only meaningful when these are the same space."
            )
        fa, fb = ea["features"].index.astype(str), eb["features"].index.astype(str)
        if live_only:
            la, lb = _live(ea), _live(eb)
            Da, Db, fa, fb = Da[la], Db[lb], fa[la], fb[lb]
            if len(fa) == 0 or len(fb) == 0:
                raise ValueError("One of the dictionaries has no live feature; pass live_only=False.")
        sim = Da @ Db.T
        extra = None
    else:
        raise ValueError(f"by must be 'terms' or 'decoder', got {by!r}.")
    rows, cols = linear_sum_assignment(sim, maximize=True)
    pairs = pd.DataFrame({"feature_a": fa[rows], "feature_b": fb[cols], "similarity": sim[rows, cols]})
    if extra is not None:
        pairs["n_terms_a"] = extra["na"][rows].astype(np.int64)
        pairs["n_terms_b"] = extra["nb"][cols].astype(np.int64)
        pairs["n_shared"] = extra["shared"][rows, cols].astype(np.int64)
    pairs = pairs.sort_values(["similarity", "feature_a"], ascending=[False, True], kind="stable")
    return FeatureMatch(pairs.reset_index(drop=True), float(sim[rows, cols].mean()))


def _live(entry: dict) -> np.ndarray:
    f = entry["features"]
    if "n_active" in f:
        return f["n_active"].to_numpy() > 0
    if "dead_training" in f:
        return ~f["dead_training"].to_numpy(dtype=bool)
    return np.ones(len(f), dtype=bool)
