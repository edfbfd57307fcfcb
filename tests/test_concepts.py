"""GO graph, concept space, concept probing and feature matching."""

from __future__ import annotations

import gzip
import itertools
from collections import Counter

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import INTERFERON, assert_uns_equal, bundled_path, interferon_features

import featurelens as fl


# ---------------------------------------------------------------------------- GO graph
@pytest.fixture(scope="module")
def raw_go():
    terms = pd.read_csv(bundled_path("go_terms_2022-07-01.tsv.gz"), sep="\t", dtype=str)
    edges = pd.read_csv(bundled_path("go_edges_2022-07-01.tsv.gz"), sep="\t", dtype=str)
    slim = pd.read_csv(bundled_path("go2goslim_generic_2022DAG.tsv.gz"), sep="\t", dtype=str, keep_default_na=False)
    return terms, edges, slim


def _parent_map(edges: pd.DataFrame, relations=("isa", "part of")) -> dict[str, list[str]]:
    e = edges[edges["relationship"].isin(relations) & (edges["parent"] != "all")]
    return e.groupby("child")["parent"].apply(list).to_dict()


def _reference_ancestors(parents: dict[str, list[str]], term: str) -> set[str]:
    """Breadth-first walk over the raw edge table (an independent implementation)."""
    seen, frontier = set(), [term]
    while frontier:
        nxt = []
        for t in frontier:
            for p in parents.get(t, []):
                if p not in seen:
                    seen.add(p)
                    nxt.append(p)
        frontier = nxt
    return seen


def test_bundled_dag_matches_the_raw_files(raw_go):
    terms, edges, slim = raw_go
    dag = fl.datasets.go_dag()
    assert len(dag) == len(terms) == 43558
    assert dag.roots == {"BP": "GO:0008150", "MF": "GO:0003674", "CC": "GO:0005575"}
    assert dag.name("GO:0051607") == "defense response to virus" and dag.namespace("GO:0051607") == "BP"
    # level-1 terms: the is_a children of the three roots
    is_a = edges[edges["relationship"] == "isa"]
    expected = sorted(is_a.loc[is_a["parent"].isin(dag.roots.values()), "child"])
    assert dag.level1_terms == expected
    rng = np.random.default_rng(0)
    both, is_a_only = _parent_map(edges), _parent_map(edges, ("isa",))
    for t in rng.choice(terms["go_id"].to_numpy(), 40, replace=False):
        ref = _reference_ancestors(both, t)
        assert set(dag.ancestors(t)) == ref, t
        assert set(dag.level1(t)) == (ref | {t}) & set(expected), t
        assert set(dag.ancestors(t, "is_a")) == _reference_ancestors(is_a_only, t), t
        row = slim.loc[slim["go_id"] == t, "goslim_generic_ancestors"].iloc[0]
        assert dag.slim(t) == sorted(a for a in row.split(";") if a), t
    assert dag.ancestors("GO:0008150") == [] and dag.level1("GO:0008150") == []
    assert dag.level1("GO:0002376") == ["GO:0002376"]  # a level-1 term is its own level-1 ancestor
    assert dag.parents("GO:0051607") == sorted(
        edges.loc[(edges["child"] == "GO:0051607") & edges["relationship"].isin(["isa", "part of"]), "parent"]
    )
    cats = dag.categories(["GO:0051607", "GO:0006412", "not-a-term"])
    assert set(cats["term"]) == {"GO:0051607", "GO:0006412"}
    assert list(cats.loc[cats["term"] == "GO:0051607", "category"]) == dag.level1("GO:0051607")
    assert (cats["category_name"] == [dag.name(c) for c in cats["category"]]).all()


def test_propagated_gene_sets_are_consistent_with_the_dag():
    """Propagated annotations: every gene of a term is annotated to each of its is_a parents."""
    dag = fl.datasets.go_dag()
    gs = fl.datasets.go_gene_sets("BP")
    genes = gs.groupby("term")["gene"].apply(frozenset).to_dict()
    rng = np.random.default_rng(1)
    checked = 0
    for t in rng.choice(sorted(genes), 60, replace=False):
        for p in dag.parents(t, "is_a"):
            if p in genes:
                assert genes[t] <= genes[p], (t, p)
                checked += 1
    assert checked > 30


def test_read_go_dag_from_files_and_errors(tmp_path):
    terms = pd.DataFrame(
        {"go_id": ["GO:0008150", "GO:1", "GO:2", "GO:3"], "name": ["bp", "a", "b", "c"], "namespace": ["BP"] * 4}
    )
    edges = pd.DataFrame(
        {
            "child": ["GO:1", "GO:2", "GO:3", "GO:3"],
            "parent": ["GO:0008150", "GO:1", "GO:2", "GO:1"],
            "relationship": ["isa", "part of", "regulates", "is_a"],
        }
    )
    path_t, path_e = tmp_path / "t.tsv.gz", tmp_path / "e.tsv"
    with gzip.open(path_t, "wt") as fh:
        terms.to_csv(fh, sep="\t", index=False)
    edges.to_csv(path_e, sep="\t", index=False)
    dag = fl.io.read_go_dag(path_t, path_e)
    assert "GO:2" in dag and "GO:9" not in dag and len(dag) == 4
    assert dag.ancestors("GO:3") == ["GO:0008150", "GO:1"]  # regulates is not followed by default
    assert dag.ancestors("GO:3", ["is_a", "part_of", "regulates"]) == ["GO:0008150", "GO:1", "GO:2"]
    assert dag.level1("GO:2") == ["GO:1"] and dag.children("GO:1") == ["GO:2", "GO:3"]
    with pytest.raises(ValueError, match="no GO-slim mapping"):
        dag.slim("GO:1")
    with pytest.raises(KeyError, match="not a term"):
        dag.ancestors("GO:9")
    with pytest.raises(ValueError, match="lacks the column"):
        fl.io.read_go_dag(terms.drop(columns="namespace"), edges)
    with pytest.raises(ValueError, match="Unknown GO relationship"):
        fl.io.read_go_dag(terms, edges.assign(relationship="sibling"))
    with pytest.raises(ValueError, match="missing from the terms table"):
        fl.io.read_go_dag(terms, pd.concat([edges, pd.DataFrame([["GO:7", "GO:1", "isa"]], columns=edges.columns)]))
    with pytest.raises(ValueError, match="Unknown relation"):
        dag.ancestors("GO:3", "likes")


# ---------------------------------------------------------------------------- concept space on Kang 2018
@pytest.fixture(scope="module")
def kang_concepts(kang_enriched):
    adata = kang_enriched.copy()
    fl.tl.concept_space(adata, "sae")
    return adata


def _significant(adata, key="sae", tests=("mwu",), cutoff=0.01, col="pval"):
    res = fl.get.enrichment(adata, key)
    res = res[res["test"].astype(str).isin(tests) & (res[col] < cutoff)]
    return res.astype({"feature": str, "term": str}).drop_duplicates(["feature", "term"])


def test_concept_space_matrix_categories_and_umap(kang_concepts):
    import umap

    adata = kang_concepts
    cs = adata.uns["sae"]["concept_space"]
    sig = _significant(adata)
    feats = [f for f in adata.uns["sae"]["features"].index if f in set(sig["feature"])]
    assert list(cs["obs"].index) == feats and len(feats) >= 20
    terms = sorted(sig["term"].unique())
    assert list(cs["terms"].index) == terms
    ref = pd.crosstab(sig["feature"], sig["term"]).reindex(index=feats, columns=terms)
    np.testing.assert_array_equal(cs["matrix"].toarray(), ref.to_numpy() > 0)
    assert sp.issparse(cs["matrix"]) and cs["matrix"].dtype == np.float32
    np.testing.assert_array_equal(cs["obs"]["n_terms"], ref.sum(1).to_numpy())
    np.testing.assert_array_equal(cs["terms"]["n_features"], ref.sum(0).to_numpy())
    # coordinates: finite, and exactly what umap-learn gives with the paper's settings
    xy = cs["obs"][["umap1", "umap2"]].to_numpy()
    assert np.isfinite(xy).all()
    with np.errstate(all="ignore"):
        expected = umap.UMAP(n_neighbors=10, min_dist=1.0, spread=10.0, random_state=0).fit_transform(cs["matrix"])
    np.testing.assert_allclose(xy, expected, rtol=1e-5, atol=1e-4)
    # category: the most common level-1 GO ancestor over the feature's terms, from the real DAG
    dag = fl.datasets.go_dag()
    level1 = {t: dag.level1(t) for t in terms}
    overall = Counter(c for t in terms for c in level1[t])
    for f in feats[:25]:
        counts = Counter(c for t in sig.loc[sig["feature"] == f, "term"] for c in level1[t])
        best = min(counts, key=lambda c: (-counts[c], overall[c], dag.name(c)))
        assert cs["obs"].loc[f, "category"] == dag.name(best), f
    assert set(cs["obs"]["category"]) <= {dag.name(t) for t in dag.level1_terms}
    # mirrored into the feature table
    table = adata.uns["sae"]["features"]
    assert table.loc[feats, "category"].astype(str).tolist() == cs["obs"]["category"].astype(str).tolist()
    others = table.index.difference(feats)
    assert table.loc[others, "category"].isna().all() and (table.loc[others, "n_terms"] == 0).all()
    assert cs["params"]["n_features"] == len(feats) and cs["params"]["test"] == "mwu"


def test_concept_space_options(kang_enriched):
    adata = kang_enriched.copy()
    fl.tl.concept_space(adata, "sae", test=("binomial_up", "mwu"), pval_cutoff=1e-3, adjusted=True, category="slim")
    cs = adata.uns["sae"]["concept_space"]
    sig = _significant(adata, tests=("binomial_up", "mwu"), cutoff=1e-3, col="padj")
    assert set(cs["obs"].index) == set(sig["feature"])
    assert cs["params"]["test"] == "binomial_up,mwu" and cs["params"]["adjusted"] is True
    dag = fl.datasets.go_dag()
    slim_names = {dag.name(s) for t in cs["terms"].index for s in dag.slim(t)} | {"unassigned"}
    assert set(cs["obs"]["category"]) <= slim_names
    fl.tl.concept_space(adata, "sae", exclude_categories=["cellular process", "GO:0065007"])
    cats = set(adata.uns["sae"]["concept_space"]["obs"]["category"])
    assert not cats & {"cellular process", "biological regulation"}
    fl.tl.concept_space(adata, "sae", category=None)
    assert set(adata.uns["sae"]["concept_space"]["obs"]["category"]) == {"unassigned"}


def test_concept_space_errors(kang_enriched, kang_dge):
    adata = kang_enriched.copy()
    with pytest.raises(ValueError, match=r"holds rows with p < 0\.05 only"):
        fl.tl.concept_space(adata, "sae", pval_cutoff=0.1)
    with pytest.raises(ValueError, match="`test` must be one or several of 'binomial'"):
        fl.tl.concept_space(adata, "sae", test="fisher")
    with pytest.raises(ValueError, match="hold no"):
        fl.tl.concept_space(adata, "sae", test="gsea")
    with pytest.raises(ValueError, match="at least 4"):
        fl.tl.concept_space(adata, "sae", pval_cutoff=1e-300, adjusted=True)
    with pytest.raises(ValueError, match=r"run `fl\.tl\.enrich"):
        fl.tl.concept_space(kang_dge.copy(), "sae")
    with pytest.raises(ValueError, match="No concept space"):
        fl.get.concept_adata(adata, "sae")
    assert "concept_space" not in adata.uns["sae"]


def test_concept_adata_and_round_trip(kang_concepts, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    adata = kang_concepts.copy()
    fl.tl.probe_concepts(adata, "sae", ["virus", "ribosom"])
    fdata = fl.get.concept_adata(adata, "sae")
    cs = adata.uns["sae"]["concept_space"]
    assert fdata.shape == cs["matrix"].shape and sp.issparse(fdata.X)
    assert list(fdata.obs_names) == list(cs["obs"].index) and list(fdata.var_names) == list(cs["terms"].index)
    assert {"type", "group", "category", "n_terms", "concept_virus"} <= set(fdata.obs.columns)
    np.testing.assert_allclose(fdata.obsm["X_umap"], cs["obs"][["umap1", "umap2"]].to_numpy(), rtol=1e-6)
    table = adata.uns["sae"]["features"]
    assert (fdata.obs["type"].astype(str) == table.loc[fdata.obs_names, "type"].astype(str)).all()
    sc.pl.umap(fdata, color=["category", "type", "concept_virus"], show=False)
    # everything written survives h5ad
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert_uns_equal(adata.uns["sae"]["concept_space"], back.uns["sae"]["concept_space"])
    assert_uns_equal(adata.uns["sae"]["concept_probes"], back.uns["sae"]["concept_probes"])
    pd.testing.assert_frame_equal(table, back.uns["sae"]["features"], check_dtype=False)
    fdata.write_h5ad(tmp_path / "f.h5ad")
    fback = ad.read_h5ad(tmp_path / "f.h5ad")
    assert (fback.X != fdata.X).nnz == 0
    pd.testing.assert_frame_equal(fback.obs, fdata.obs, check_dtype=False)


def test_probe_concepts_marks_the_interferon_features(kang_concepts):
    adata = kang_concepts.copy()
    ifn = interferon_features(adata)
    assert ifn
    fl.tl.probe_concepts(adata, "sae", ["virus", "Cell Cycle"])
    table = adata.uns["sae"]["features"]
    sig = _significant(adata)
    for word in ("virus", "Cell Cycle"):
        hit = sig["name"].str.contains(word, case=False, regex=False)
        expected = table.index.isin(set(sig.loc[hit, "feature"]))
        np.testing.assert_array_equal(table[f"concept_{word}"].to_numpy(), expected)
        assert adata.uns["sae"]["concept_probes"].loc[word, "n_features"] == expected.sum()
    # MWU alone (the concept-space default) marks most of them; adding the binomial test marks all
    assert table.loc[ifn, "concept_virus"].mean() >= 0.8
    fl.tl.probe_concepts(adata, "sae", "virus", test=["binomial_up", "mwu"])
    assert table.loc[ifn, "concept_virus"].all()
    assert table["concept_virus"].sum() < len(table)
    # regular expressions and case
    fl.tl.probe_concepts(adata, "sae", r"type I interferon|viral", regex=True)
    col = table[r"concept_type I interferon|viral"]
    sig_names = sig.groupby("feature")["name"].apply(lambda s: any(INTERFERON.search(n) for n in s))
    assert col.sum() > 0 and col.loc[sig_names[sig_names].index].mean() > 0.5
    fl.tl.probe_concepts(adata, "sae", "VIRUS", case=True)
    assert not table["concept_VIRUS"].any()
    with pytest.raises(ValueError, match="non-empty"):
        fl.tl.probe_concepts(adata, "sae", [])


# ---------------------------------------------------------------------------- matching
def test_match_features_with_itself_and_across_seeds(kang_enriched, kang_sae):
    adata = kang_enriched
    pairs, score = fl.tl.match_features(adata, "sae", adata, "sae")
    assert score == pytest.approx(1.0)
    assert (pairs["feature_a"] == pairs["feature_b"]).all() or (pairs["similarity"] == 1).all()
    res = fl.tl.match_features(adata, "sae", adata, "sae", by="decoder")
    assert res.score == pytest.approx(1.0) and (res.pairs["feature_a"] == res.pairs["feature_b"]).all()

    other = kang_sae.copy()
    fl.tl.sae(other, "X_pca", random_state=1, n_steps=600, progress=False)
    fl.tl.feature_stats(other, "sae")
    fl.tl.high_vs_low(other, "sae", groupby="cell_type", progress=False)
    fl.tl.enrich(other, "sae", "GO_BP", progress=False)
    pairs, score = fl.tl.match_features(adata, "sae", other, "sae")
    assert 0 < score < 1
    assert pairs["feature_a"].is_unique and pairs["feature_b"].is_unique
    # Jaccard from the term sets, recomputed independently
    sa = _significant(adata).groupby("feature")["term"].apply(set)
    sb = _significant(other).groupby("feature")["term"].apply(set)
    assert len(pairs) == min(len(sa), len(sb))
    for _, r in pairs.head(20).iterrows():
        a, b = sa[r["feature_a"]], sb[r["feature_b"]]
        assert r["similarity"] == pytest.approx(len(a & b) / len(a | b))
        assert (r["n_terms_a"], r["n_terms_b"], r["n_shared"]) == (len(a), len(b), len(a & b))
    assert score == pytest.approx(pairs["similarity"].mean())
    # the optimal assignment is at least as good as matching each feature greedily
    J = np.array([[len(a & b) / len(a | b) for b in sb] for a in sa])
    greedy, used = [], set()
    for i in np.argsort(-J.max(1)):
        j = max((j for j in range(J.shape[1]) if j not in used), key=lambda j: J[i, j], default=None)
        if j is not None:
            used.add(j)
            greedy.append(J[i, j])
    assert score >= np.mean(greedy) - 1e-12


def test_match_features_by_decoder_recovers_seeds_on_planted_atoms():
    """Two seeds of a TopK SAE on data with planted atoms learn the same directions; random ones do not."""
    from helpers import planted_dictionary
    from scipy.optimize import linear_sum_assignment

    X, W, _ = planted_dictionary(n=2000, d=32, m=48, s=3, seed=2)
    adata = ad.AnnData(np.zeros((X.shape[0], 1), dtype=np.float32))
    adata.obsm["X_emb"] = X
    for seed in (0, 1):
        fl.tl.sae(
            adata, "X_emb", n_features=48, k=3, n_steps=800, random_state=seed, key_added=f"s{seed}", progress=False
        )
    pairs, score = fl.tl.match_features(adata, "s0", adata, "s1", by="decoder")
    rng = np.random.default_rng(0)
    R = rng.normal(size=(48, 32))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    C = R @ W.T
    chance = C[linear_sum_assignment(C, maximize=True)].mean()
    assert score > 0.85 > chance + 0.3
    assert (pairs["similarity"] > 0.9).sum() >= 36 and 44 <= len(pairs) <= 48  # dead features are left out
    D0 = adata.uns["s0"]["decoder"] / np.linalg.norm(adata.uns["s0"]["decoder"], axis=1, keepdims=True)
    D1 = adata.uns["s1"]["decoder"] / np.linalg.norm(adata.uns["s1"]["decoder"], axis=1, keepdims=True)
    i = adata.uns["s0"]["features"].index.get_indexer(pairs["feature_a"])
    j = adata.uns["s1"]["features"].index.get_indexer(pairs["feature_b"])
    np.testing.assert_allclose(pairs["similarity"], (D0[i] * D1[j]).sum(1), atol=1e-6)


def _toy(term_sets: dict[str, set[str]], n_features: int) -> ad.AnnData:
    """A dictionary entry holding only what term matching reads (enrichment rows with p = 0.001)."""
    rows = [(f, t, t) for f, ts in term_sets.items() for t in ts]
    res = pd.DataFrame(rows, columns=["feature", "term", "name"])
    res["test"], res["direction"], res["pval"], res["padj"] = "mwu", "up", 1e-3, 1e-2
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns["toy"] = {
        "params": {"method": "sae", "use_rep": "X"},
        "decoder": np.eye(n_features, 4),
        "preprocess": {"normalize": "none", "mean": np.zeros(4), "scale": np.ones(4), "unit_norm": False},
        "features": pd.DataFrame(index=[f"f{i}" for i in range(n_features)]),
        "enrichment": {"results": res, "params": {"store_pval": 0.05}},
    }
    return adata


def test_match_features_is_the_optimal_assignment():
    rng = np.random.default_rng(3)
    vocab = [f"T{i}" for i in range(8)]
    for trial in range(5):
        A = {f"f{i}": set(rng.choice(vocab, rng.integers(1, 5), replace=False)) for i in range(5)}
        B = {f"f{i}": set(rng.choice(vocab, rng.integers(1, 5), replace=False)) for i in range(4)}
        _, score = fl.tl.match_features(_toy(A, 5), "toy", _toy(B, 4), "toy")
        J = np.array([[len(a & b) / len(a | b) for b in B.values()] for a in A.values()])
        best = max(
            np.mean([J[i, j] for i, j in zip(rows, range(4), strict=False)])
            for rows in itertools.permutations(range(5), 4)
        )
        assert score == pytest.approx(best), trial


def test_match_features_errors(kang_enriched):
    adata = kang_enriched
    small = _toy({"f0": {"T1"}}, 2)
    small.uns["toy"]["decoder"] = np.eye(2, 3)
    small.uns["toy"]["preprocess"].update(mean=np.zeros(3), scale=np.ones(3))
    with pytest.raises(ValueError, match="different dimension"):
        fl.tl.match_features(adata, "sae", small, "toy", by="decoder")
    with pytest.raises(ValueError, match="`by` must be one of 'terms', 'decoder'"):
        fl.tl.match_features(adata, "sae", adata, "sae", by="genes")
    with pytest.raises(ValueError, match="No feature of"):
        fl.tl.match_features(adata, "sae", adata, "sae", pval_cutoff=1e-300, adjusted=True)
