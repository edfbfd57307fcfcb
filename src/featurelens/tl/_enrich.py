"""Gene-set enrichment of every feature: binomial over-representation, Mann-Whitney U, GSEA."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._blockwise import reduce_rows
from .._checks import check_bool, check_choices, check_int, check_nonnegative, check_positive_int, check_probability
from .._core import doc, expression, get_entry, invalidate, renamed, resolve_features, tool, tool_params, warn
from .._core._results import DIRECTIONS, TESTS
from ..stats import bh_adjust, bh_adjust_grouped, binomial_sets, mannwhitney_sets

METHODS = ("binomial", "mwu")
UP, DOWN = DIRECTIONS.index("up"), DIRECTIONS.index("down")
DIRECTION_OF = {"binomial": "both", "binomial_up": "up", "binomial_down": "down"}
RESULT_COLUMNS = [
    "feature",
    "term",
    "name",
    "test",
    "n_term",
    "n_deg",
    "hits",
    "expected",
    "fold_enrichment",
    "statistic",
    "z",
    "auc",
    "direction",
    "pval",
    "padj",
]


def gene_set_membership(
    gene_sets,
    genes: pd.Index,
    *,
    min_size: int = 20,
    max_size: int = 500,
) -> tuple[sp.csc_matrix, pd.DataFrame]:
    """Sparse genes x terms membership restricted to ``genes`` (the universe), with sizes filtered.

    Parameters
    ----------
    gene_sets
        Anything :func:`featurelens.io.read_gene_sets` accepts.
    genes
        Gene identifiers of the universe (same kind as in the gene sets, e.g. symbols).
    min_size, max_size
        Inclusive bounds on the number of universe genes in a term.

    Returns
    -------
    The membership matrix (universe genes x kept terms) and a table of the kept terms
    (``term``, ``name``, ``n_term``).

    Raises
    ------
    ValueError
        When too few universe genes appear in the gene sets (for example Ensembl ids against
        symbols), or no term is left after the size filter.
    """
    from ..io import read_gene_sets

    gs = read_gene_sets(gene_sets)
    genes = pd.Index(genes.astype(str))
    # every occurrence of a gene identifier in the universe is a member (identifiers may repeat)
    where = pd.DataFrame({"gene": genes.to_numpy(), "pos": np.arange(len(genes))})
    hits = gs[["term", "gene"]].merge(where, on="gene", how="inner", sort=False)
    n_overlap = int(hits["pos"].nunique())
    frac = n_overlap / max(len(genes), 1)
    if n_overlap < 50 or frac < 0.05:
        example = ", ".join(genes[:3])
        hint = (
            " The gene names look like Ensembl ids: pass `gene_symbols=` the adata.var column with gene symbols."
            if re.match(r"^ENS[A-Z]*G\d+", str(genes[0]) if len(genes) else "")
            else " If adata.var_names are not the identifiers used by the gene sets, pass `gene_symbols=` the "
            "adata.var column that holds them."
        )
        raise ValueError(
            f"Only {n_overlap} of {len(genes)} genes ({frac:.1%}) appear in the gene sets (genes look like: "
            f"{example}).{hint}"
        )
    codes, terms = pd.factorize(hits["term"], sort=False)
    sizes = np.bincount(codes, minlength=len(terms))
    keep = (sizes >= min_size) & (sizes <= max_size)
    if not keep.any():
        raise ValueError(
            f"No gene set has between {min_size} and {max_size} genes among the {len(genes)} measured genes; "
            "adjust `min_size`/`max_size`."
        )
    new_code = np.full(len(terms), -1)
    new_code[keep] = np.arange(int(keep.sum()))
    sel = new_code[codes] >= 0
    M = sp.csc_matrix(
        (np.ones(int(sel.sum())), (hits["pos"].to_numpy()[sel], new_code[codes][sel])),
        shape=(len(genes), int(keep.sum())),
    )
    names = gs.drop_duplicates("term").set_index("term")["name"]
    kept_terms = pd.Index(terms[keep])
    info = pd.DataFrame({"term": kept_terms, "name": names.loc[kept_terms].to_numpy(), "n_term": sizes[keep]})
    return M, info


_FLOAT32 = ("hits", "expected", "fold_enrichment", "statistic", "z", "auc")


def _tests_of(methods) -> list[str]:
    return (["binomial", "binomial_up", "binomial_down"] if "binomial" in methods else []) + (
        ["mwu"] if "mwu" in methods else []
    )


def _rows(*, feature, term, test, pval, padj, direction, n_term, **values) -> dict:
    """Columns of result rows in compact dtypes (codes for the categorical columns)."""
    n = np.asarray(pval).size
    out = {
        "feature": np.asarray(feature, dtype=np.int32),
        "term": np.asarray(term, dtype=np.int32),
        "test": np.full(n, TESTS.index(test), dtype=np.int8),
        "n_term": np.asarray(n_term, dtype=np.int32),
        "n_deg": np.asarray(values.get("n_deg", np.full(n, -1)), dtype=np.int32),
        "direction": np.asarray(direction, dtype=np.int8),
        "pval": np.asarray(pval, dtype=np.float64),
        "padj": np.asarray(padj, dtype=np.float64),
    }
    for c in _FLOAT32:
        out[c] = np.asarray(values[c], dtype=np.float32) if c in values else np.full(n, np.nan, dtype=np.float32)
    return out


def _assemble(tables: list[dict], features: pd.Index, term_ids, term_names) -> pd.DataFrame:
    """One long table from column dicts holding integer codes, sorted by feature, test, p and term."""
    if not tables or sum(t["pval"].size for t in tables) == 0:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=object if c in ("feature", "term", "name", "test", "direction") else float)
                for c in RESULT_COLUMNS
            }
        )
    keys = [np.concatenate([t[k] for t in tables]) for k in ("term", "pval", "test", "feature")]
    order = np.lexsort(keys)
    del keys
    name_codes, name_levels = pd.factorize(pd.Index(np.asarray(term_names).astype(str)))

    def col(k):
        return np.concatenate([t[k] for t in tables])[order]

    term = col("term")
    data = {
        "feature": pd.Categorical.from_codes(col("feature"), categories=pd.Index(features.astype(str))),
        "term": pd.Categorical.from_codes(term, categories=pd.Index(np.asarray(term_ids).astype(str))),
        "name": pd.Categorical.from_codes(name_codes[term], categories=name_levels),
        "test": pd.Categorical.from_codes(col("test"), categories=TESTS),
    }
    for k in ("n_term", "n_deg", *_FLOAT32):
        data[k] = col(k)
    data["direction"] = pd.Categorical.from_codes(col("direction"), categories=DIRECTIONS)
    data["pval"] = col("pval")
    data["padj"] = col("padj")
    tables.clear()
    out = pd.DataFrame(data, copy=False)[RESULT_COLUMNS]
    for c in ("feature", "term", "name", "test", "direction"):
        out[c] = out[c].cat.remove_unused_categories()
    return out


def _nonzero_per_column(start: int, stop: int, blk) -> np.ndarray:
    return np.asarray((blk != 0).sum(axis=0)).ravel().astype(np.int64)


def _universe(adata: AnnData, layer: str | None, gene_symbols: str | None) -> tuple[np.ndarray, pd.Index]:
    """Positions of measured genes (non-zero in at least one cell) and their identifiers."""
    X = expression(adata, layer)
    nz = reduce_rows(_nonzero_per_column, X)  # block by block: X may be on disk
    measured = np.flatnonzero(nz > 0)
    if gene_symbols is None:
        ids = adata.var_names
    else:
        if gene_symbols not in adata.var:
            cols = ", ".join(map(repr, adata.var.columns)) or "nothing"
            raise ValueError(f"`gene_symbols={gene_symbols!r}` is not a column of adata.var, which has {cols}.")
        ids = pd.Index(adata.var[gene_symbols].astype(str))
    return measured, pd.Index(ids.astype(str)[measured])


def _positions(col: pd.Series, index: pd.Index) -> np.ndarray:
    """Position of every value of ``col`` in the unique ``index`` (-1 if absent), via categorical codes."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cat_pos = index.get_indexer(col.cat.categories.astype(str))
        codes = col.cat.codes.to_numpy()
        return np.where(codes >= 0, cat_pos[codes], -1)
    return index.get_indexer(col.astype(str))


def _deg_sets(results: pd.DataFrame, feats: pd.Index, gene_pos: pd.Index, cutoff, lfc, fallback, adjusted=True):
    """Sparse up / down DEG indicators (features x universe genes) and the rule used per feature.

    ``gene_pos`` holds the ``var_names`` of the universe genes (the gene column of the DGE table);
    the cutoffs apply to ``padj`` (``adjusted``) or ``pval``.
    """
    f_pos = _positions(results["feature"], feats)
    g_pos = _positions(results["gene"], gene_pos)
    ok = (f_pos >= 0) & (g_pos >= 0)
    f_pos, g_pos = f_pos[ok], g_pos[ok]
    col = "padj" if adjusted else "pval"
    p = results[col].to_numpy()[ok]
    fc = results["log2fc"].to_numpy()[ok]
    strict_up = (p < cutoff) & (fc >= lfc)
    strict_dn = (p < cutoff) & (fc <= -lfc)
    has_strict = np.zeros(len(feats), bool)
    has_strict[f_pos[strict_up | strict_dn]] = True
    loose = ~has_strict[f_pos]
    up = np.where(loose, (p < fallback) & (fc > 0), strict_up)
    dn = np.where(loose, (p < fallback) & (fc < 0), strict_dn)
    shape = (len(feats), len(gene_pos))

    def mat(mask):
        return sp.csr_matrix((np.ones(int(mask.sum())), (f_pos[mask], g_pos[mask])), shape=shape)

    rule = np.where(has_strict, f"{col}<{cutoff:g} & |log2fc|>={lfc:g}", f"{col}<{fallback:g}")
    return mat(up), mat(dn), rule


def _dge_of(adata: AnnData, key: str) -> tuple[dict, dict]:
    """The dictionary entry and its stored DGE (with the fold changes), or a clear error."""
    entry = get_entry(adata, key)
    if "dge" not in entry or f"{key}_log2fc" not in adata.varm:
        raise ValueError(f"No differential expression for {key!r}; run `fl.tl.high_vs_low(adata, {key!r})` first.")
    return entry, entry["dge"]


def _tested_features(entry: dict, dge: dict, features) -> pd.Index:
    """Features with high-vs-low results (all, or the requested ones)."""
    summary = dge["summary"]
    tested = summary.index[summary["skipped"].astype(str) == ""].astype(str)
    if features is not None:
        req = entry["features"].index.astype(str)[resolve_features(entry, features)]
        have = set(tested)
        missing = [f for f in req if f not in have]
        if missing:
            raise ValueError(f"Features without high-vs-low results: {missing[:5]}; run high_vs_low on them first.")
        tested = pd.Index(req)
    if len(tested) == 0:
        raise ValueError("No feature has high-vs-low results to test (all were skipped).")
    return tested


class _Enrichment:
    """One :func:`enrich` call: DEG sets and fold changes of the tested features against all terms, in chunks."""

    def __init__(self, adata: AnnData, key: str, gene_sets, o: dict):
        self.entry, dge = _dge_of(adata, key)
        self.o = o
        self.tested = _tested_features(self.entry, dge, o["features"])
        self.measured, ids = _universe(adata, dge["params"].get("layer"), o["gene_symbols"])
        self.M, self.terms = gene_set_membership(gene_sets, ids, min_size=o["min_size"], max_size=o["max_size"])
        self.n_univ = len(ids)
        self.f_idx = self.entry["features"].index.astype(str).get_indexer(self.tested)
        self.lfc = adata.varm[f"{key}_log2fc"]
        univ_names = pd.Index(adata.var_names.astype(str)[self.measured])
        self.up, self.dn, self.rule = _deg_sets(
            dge["results"], self.tested, univ_names, o["deg_pval_cutoff"], o["deg_log2fc"], o["fallback_pval_cutoff"],
            o["adjusted"],
        )  # fmt: skip
        self.both = (self.up + self.dn).tocsr()
        self.both.data[:] = 1.0
        self.n_term = self.terms["n_term"].to_numpy().astype(np.int32)
        self.n_sig = {t: np.zeros(len(self.tested), dtype=np.int64) for t in _tests_of(o["methods"])}
        self.tables: list[dict] = []

    def _significant(self, pval, padj) -> np.ndarray:
        return (padj if self.o["adjusted"] else pval) < self.o["pval_cutoff"]

    def _binomial(self, s: int, sl: slice) -> None:
        for test, S in (("binomial", self.both), ("binomial_up", self.up), ("binomial_down", self.dn)):
            r = binomial_sets(S[sl], self.M, universe=self.n_univ)
            # BH per feature over all terms: terms without hits have p = 1 and are not listed
            padj = bh_adjust_grouped(r.pval, r.rows, n_tests=len(self.terms))
            sig = self._significant(r.pval, padj)
            self.n_sig[test][sl] = np.bincount(r.rows[sig], minlength=len(self.tested))[: S[sl].shape[0]]
            keep = r.pval < self.o["store_pval"]
            self.tables.append(
                _rows(
                    feature=s + r.rows[keep], term=r.sets[keep], test=test, n_term=self.n_term[r.sets[keep]],
                    n_deg=r.n_selected[keep], hits=r.hits[keep], expected=r.expected[keep],
                    fold_enrichment=r.fold[keep], pval=r.pval[keep], padj=padj[keep],
                    direction=np.full(int(keep.sum()), DIRECTIONS.index(DIRECTION_OF[test]), dtype=np.int8),
                )
            )  # fmt: skip

    def _mwu(self, s: int, sl: slice) -> None:
        lfc = np.take(self.lfc, self.f_idx[sl], axis=1)[self.measured].T.astype(np.float64)
        res = mannwhitney_sets(np.nan_to_num(lfc, nan=0.0), self.M)
        del lfc
        padj = bh_adjust(res.pval, axis=1)
        self.n_sig["mwu"][sl] = self._significant(res.pval, padj).sum(axis=1)
        rr, cc = np.nonzero(np.nan_to_num(res.pval, nan=1.0) < self.o["store_pval"])
        auc = res.auc[rr, cc]
        self.tables.append(
            _rows(
                feature=s + rr, term=cc, test="mwu", n_term=res.n_in[rr, cc], statistic=res.u[rr, cc],
                z=res.z[rr, cc], auc=auc, direction=np.where(auc > 0.5, UP, DOWN).astype(np.int8),
                pval=res.pval[rr, cc], padj=padj[rr, cc],
            )
        )  # fmt: skip

    def run(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        size = self.o["chunk_size"]
        with tqdm(total=len(self.tested), desc="enrichment", disable=not progress, leave=False) as bar:
            for s in range(0, len(self.tested), size):
                sl = slice(s, s + size)
                if "binomial" in self.o["methods"]:
                    self._binomial(s, sl)
                if "mwu" in self.o["methods"]:
                    self._mwu(s, sl)
                bar.update(min(size, len(self.tested) - s))

    def result(self, gene_sets) -> dict:
        results = _assemble(self.tables, self.tested, self.terms["term"].to_numpy(), self.terms["name"].to_numpy())
        summ = pd.DataFrame(
            {
                "n_up": np.diff(self.up.indptr),
                "n_down": np.diff(self.dn.indptr),
                "deg_rule": self.rule,
                **{f"n_sig_{t}": v for t, v in self.n_sig.items()},
            },
            index=self.tested,
        )
        o = {k: v for k, v in self.o.items() if k not in ("features", "chunk_size")}
        o["methods"] = list(o["methods"])
        name = gene_sets if isinstance(gene_sets, str) else type(gene_sets).__name__
        params = tool_params(gene_sets=name, **o, n_terms=len(self.terms), n_universe=self.n_univ)
        return {"results": results, "summary": summ, "params": params}


def _check_enrich_options(dge: dict, o: dict) -> None:
    o["methods"] = check_choices(o["methods"], "methods", METHODS)
    check_positive_int(o["min_size"], "min_size")
    check_int(o["max_size"], "max_size", minimum=o["min_size"])
    for name in ("deg_pval_cutoff", "fallback_pval_cutoff", "pval_cutoff", "store_pval"):
        check_probability(o[name], name)
    check_nonnegative(o["deg_log2fc"], "deg_log2fc")
    check_bool(o["adjusted"], "adjusted")
    check_positive_int(o["chunk_size"], "chunk_size")
    stored = dge["params"].get("store_pval", 1.0)
    if stored < max(o["deg_pval_cutoff"], o["fallback_pval_cutoff"]):
        warn(
            f"high_vs_low kept genes with padj < {stored:g} only, less than the DEG thresholds "
            f"(deg_pval_cutoff={o['deg_pval_cutoff']:g}, fallback_pval_cutoff={o['fallback_pval_cutoff']:g}); "
            "DEG sets are limited to the kept genes."
        )


def _deg_renamed(name: str):
    return lambda v: {name: v, "adjusted": True}


@tool
@renamed(deg_padj=_deg_renamed("deg_pval_cutoff"), fallback_padj=_deg_renamed("fallback_pval_cutoff"))
@doc
def enrich(
    adata: AnnData,
    key: str,
    gene_sets="GO_BP",
    *,
    methods=METHODS,
    min_size: int = 20,
    max_size: int = 500,
    gene_symbols: str | None = None,
    features=None,
    deg_pval_cutoff: float = 1e-5,
    deg_log2fc: float = 1.0,
    fallback_pval_cutoff: float = 0.05,
    pval_cutoff: float = 0.05,
    adjusted: bool = True,
    store_pval: float = 0.05,
    chunk_size: int = 500,
    progress: bool = True,
) -> None:
    """Gene-set enrichment of every feature's high-vs-low differential expression.

    Needs :func:`~featurelens.tl.high_vs_low` first. Two tests (Schuster 2025, A.3.7):

    - ``"binomial"`` (PANTHER-style over-representation): the DEGs of a feature are the genes
      with adjusted p < ``deg_pval_cutoff`` and fold change >= 2 (or <= 0.5; ``deg_log2fc=1``);
      when that selects nothing, adjusted p < ``fallback_pval_cutoff`` without a fold-change cut.
      With ``n`` DEGs, ``k`` of them in a term of ``|T|`` universe genes and
      ``p = |T| / |universe|``: expected ``n p``, fold enrichment ``k / (n p)`` and the one-sided
      ``P(X >= k)``, ``X ~ Binomial(n, p)``. Run for up-regulated (``binomial_up``),
      down-regulated (``binomial_down``) and all DEGs (``binomial``).
    - ``"mwu"``: the log2 fold changes of all universe genes are ranked (average ranks for
      ties) and the term's genes are compared with all others by a two-sided Mann-Whitney U
      test with tie and continuity corrections; ``auc = U / (n_in n_out)`` > 0.5 means the
      term's genes go up with the feature.

    The universe is the genes measured (non-zero in at least one cell); term sizes are counted
    inside it and filtered by ``min_size``/``max_size`` (the paper: 20 to 500). p-values are
    Benjamini-Hochberg adjusted across terms within each feature and test. Everything is
    vectorised: one rank matrix (features x genes) and one DEG matrix times a sparse membership
    matrix (genes x terms), in chunks of features. A new call replaces the stored results and
    removes the concept space computed from the previous ones.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`~featurelens.tl.high_vs_low`.
    {doc_key}
    gene_sets
        ``"GO_BP"``, ``"GO_MF"``, ``"GO_CC"`` (bundled human GO, 2022-07-01), a GMT path, a dict
        term -> genes or a long DataFrame with ``term`` and ``gene`` columns.
    methods
        Any of ``"binomial"`` and ``"mwu"``.
    min_size, max_size
        Inclusive bounds on the number of universe genes per term.
    gene_symbols
        Column of ``adata.var`` with the gene identifiers used by the gene sets (e.g. symbols
        when ``var_names`` are Ensembl ids).
    features
        Features to test (default: all with high-vs-low results).
    deg_pval_cutoff, deg_log2fc, fallback_pval_cutoff
        DEG selection for the binomial test (see above); ``deg_padj`` / ``fallback_padj`` are the
        old names of the cutoffs.
    pval_cutoff
        Terms below this (adjusted) p are counted as significant in the summary.
    adjusted
        The p-value cutoffs apply to adjusted p-values (default) rather than raw ones.
    store_pval
        Rows with p below this are kept.
    chunk_size
        Features per chunk.
    {doc_progress}

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key]["enrichment"]["results"]`` : :class:`pandas.DataFrame`
        One row per (feature, term, test) with ``pval < store_pval``: ``feature``, ``term``,
        ``name``, ``test`` (``binomial``, ``binomial_up``, ``binomial_down``, ``mwu``), ``n_term``,
        ``n_deg``, ``hits``, ``expected``, ``fold_enrichment`` (binomial), ``statistic`` (U),
        ``z``, ``auc`` (MWU), ``direction``, ``pval``, ``padj``.
    ``adata.uns[key]["enrichment"]["summary"]`` : :class:`pandas.DataFrame`
        Per feature: DEG counts, the DEG rule used, and the number of terms with (adjusted) p
        below ``pval_cutoff`` per test.
    ``adata.uns[key]["enrichment"]["params"]`` : :class:`dict`
        The options used, the number of terms and the universe size.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", features=["f0", "f1"], progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", progress=False)
    >>> sorted(fl.get.enrichment(adata, "sae")["test"].unique())
    ['binomial', 'binomial_down', 'binomial_up', 'mwu']
    """
    entry, dge = _dge_of(adata, key)
    o = {
        "methods": methods,
        "min_size": min_size,
        "max_size": max_size,
        "gene_symbols": gene_symbols,
        "features": features,
        "deg_pval_cutoff": deg_pval_cutoff,
        "deg_log2fc": deg_log2fc,
        "fallback_pval_cutoff": fallback_pval_cutoff,
        "pval_cutoff": pval_cutoff,
        "adjusted": adjusted,
        "store_pval": store_pval,
        "chunk_size": chunk_size,
    }
    _check_enrich_options(dge, o)
    run = _Enrichment(adata, key, gene_sets, o)
    run.run(progress)
    result = run.result(gene_sets)
    invalidate(adata, key, "enrichment")
    entry["enrichment"] = result


def _gsea_rows(res: pd.DataFrame, feature: str, M, terms: pd.DataFrame, store_pval: float) -> list[dict]:
    """Rows of the long table from gseapy's ``res2d`` of one feature."""
    term_name = dict(zip(terms["term"], terms["name"], strict=True))
    size = dict(zip(terms["term"], np.diff(M.indptr) if sp.isspmatrix_csc(M) else M.getnnz(axis=0), strict=True))
    rows = []
    for _, row in res.iterrows():
        p = float(row["NOM p-val"])
        if p >= store_pval:
            continue
        t, nes = str(row["Term"]), float(row["NES"])
        rows.append(
            {
                "feature": feature, "term": t, "name": term_name.get(t, t), "test": "gsea",
                "n_term": int(size.get(t, -1)), "n_deg": -1, "hits": np.nan, "expected": np.nan,
                "fold_enrichment": np.nan, "statistic": nes, "z": np.nan, "auc": np.nan,
                "direction": "up" if nes > 0 else "down", "pval": p, "padj": float(row["FDR q-val"]),
            }
        )  # fmt: skip
    return rows


def _merge_gsea(entry: dict, new: pd.DataFrame, features: list[str]) -> None:
    """Replace earlier GSEA rows of ``features`` in the stored table by ``new``."""
    store = entry.setdefault("enrichment", {"params": tool_params()})
    old = store.get("results", pd.DataFrame(columns=RESULT_COLUMNS))
    if len(old):
        drop = (old["test"].astype(str) == "gsea") & old["feature"].astype(str).isin(set(features))
        old = old.loc[~drop]
    cats = ("feature", "term", "name", "test", "direction")
    merged = pd.concat([old.astype(dict.fromkeys(cats, str)), new], ignore_index=True)
    for c in cats:
        merged[c] = merged[c].astype(str).astype("category")
    store["results"] = merged.reset_index(drop=True)


@tool
@doc
def gsea(
    adata: AnnData,
    key: str,
    features,
    gene_sets="GO_BP",
    *,
    min_size: int = 20,
    max_size: int = 500,
    gene_symbols: str | None = None,
    permutation_num: int = 1000,
    random_state: int = 0,
    threads: int = 1,
    store_pval: float = 0.05,
    progress: bool = True,
) -> None:
    """Preranked GSEA (gseapy ``prerank``) on the high-vs-low log2 fold changes of chosen features.

    For the classic running-sum view of a few features; :func:`enrich` is the fast test for all
    of them. Results join the long enrichment table with ``test="gsea"`` (``statistic`` = NES,
    ``pval`` = nominal p, ``padj`` = FDR q-value), replacing earlier GSEA rows of the same
    features; read them with ``fl.get.enrichment(adata, key, test="gsea")``.

    Parameters
    ----------
    adata
        Annotated data matrix after :func:`~featurelens.tl.high_vs_low`.
    {doc_key}
    features
        Feature names or positions.
    gene_sets
        As for :func:`enrich`.
    min_size, max_size
        Inclusive bounds on the number of universe genes per term.
    gene_symbols
        Column of ``adata.var`` with the identifiers used by the gene sets.
    permutation_num
        Gene-set permutations.
    random_state
        Seed of the permutations.
    threads
        Threads for gseapy.
    store_pval
        Rows with nominal p below this are kept.
    {doc_progress}

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key]["enrichment"]["results"]`` : :class:`pandas.DataFrame`
        Rows with ``test == "gsea"`` added.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", features=["f0"], progress=False)
    >>> fl.tl.gsea(adata, "sae", ["f0"], permutation_num=20, max_size=30, progress=False)
    >>> set(fl.get.enrichment(adata, "sae", test="gsea")["test"]) <= {"gsea"}
    True
    """
    import gseapy
    from tqdm.auto import tqdm

    entry, dge = _dge_of(adata, key)
    check_positive_int(permutation_num, "permutation_num")
    check_probability(store_pval, "store_pval")
    names = entry["features"].index.astype(str)
    f_idx = resolve_features(entry, features)
    measured, ids = _universe(adata, dge["params"].get("layer"), gene_symbols)
    M, terms = gene_set_membership(gene_sets, ids, min_size=min_size, max_size=max_size)
    sets = {t: ids[M[:, j].indices].tolist() for j, t in enumerate(terms["term"])}
    lfc_all = np.asarray(adata.varm[f"{key}_log2fc"])
    rows = []
    for f in tqdm(f_idx, desc="gsea", disable=not progress, leave=False):
        lfc = lfc_all[measured, f].astype(np.float64)
        if np.isnan(lfc).all():
            raise ValueError(f"Feature {names[f]} has no high-vs-low results (skipped); choose tested features.")
        rnk = pd.Series(np.nan_to_num(lfc), index=ids).groupby(level=0).mean().sort_values(ascending=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pre = gseapy.prerank(
                rnk=rnk, gene_sets=sets, min_size=min_size, max_size=max_size, permutation_num=permutation_num,
                seed=random_state, threads=threads, outdir=None, verbose=False,
            )  # fmt: skip
        rows += _gsea_rows(pre.res2d, names[f], M, terms, store_pval)
    _merge_gsea(entry, pd.DataFrame(rows, columns=RESULT_COLUMNS), list(names[f_idx]))
    cs = entry.get("concept_space", {}).get("params", {})
    if "gsea" in str(cs.get("test", "")):
        invalidate(adata, key, "enrichment")
