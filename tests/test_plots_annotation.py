"""Annotation plots (enrichment, volcano, term counts, concept space) checked against the stored results."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import check_image
from matplotlib import colors as mcolors

import featurelens as fl


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _neglog10(p):
    return -np.log10(np.maximum(np.asarray(p, dtype=float), np.finfo(float).tiny))


def _best(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    return rows.sort_values(["padj", "pval"], kind="stable").head(n)


def _snapshot(adata):
    entry = adata.uns["sae"]
    return (
        sorted(adata.uns.keys()),
        sorted(entry.keys()),
        list(entry["features"].columns),
        {k: (v["results"].shape if isinstance(v, dict) and "results" in v else None) for k, v in entry.items()},
        sorted(adata.varm.keys()),
        list(adata.obs.columns),
    )


def _feature_with(res: pd.DataFrame, masks: dict[str, np.ndarray], n: int) -> str:
    """The first feature with at least ``n`` rows under every mask."""
    counts = pd.DataFrame(
        {k: pd.Series(m).groupby(res["feature"].astype(str).to_numpy()).sum() for k, m in masks.items()}
    )
    ok = counts.index[(counts >= n).all(axis=1)]
    assert len(ok), f"no feature with {n} rows in each of {list(masks)}"
    return str(ok[0])


def _tick_labels(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


# ----------------------------------------------------------------------------- enrichment
def test_enrichment_dot_shows_best_terms_per_direction(kang_enriched):
    before = _snapshot(kang_enriched)
    res = fl.get.enrichment(kang_enriched, "sae")
    test, direction = res["test"].astype(str).to_numpy(), res["direction"].astype(str).to_numpy()
    feat = _feature_with(
        res, {"up": (test == "mwu") & (direction == "up"), "down": (test == "mwu") & (direction == "down")}, 6
    )
    ax = fl.pl.enrichment(kang_enriched, "sae", feat, 6, max_label=None, show=False)  # test=None -> mwu
    rows = fl.get.enrichment(kang_enriched, "sae", feat)
    mwu = rows[rows["test"].astype(str) == "mwu"]
    up = _best(mwu[mwu["direction"].astype(str) == "up"], 6)
    down = _best(mwu[mwu["direction"].astype(str) == "down"], 6)
    expected = pd.concat([up, down])
    assert _tick_labels(ax) == list(expected["name"].astype(str))
    assert ax.get_title() == f"{feat}: mwu"
    # up block (red labels) above the down block; dots at -log10(padj), coloured by AUC
    colors = [t.get_color() for t in ax.get_yticklabels()]
    assert len(set(colors[:6])) == 1 and len(set(colors[6:])) == 1 and colors[0] != colors[-1]
    dots = ax.collections[-1]
    np.testing.assert_allclose(dots.get_offsets()[:, 0], _neglog10(expected["padj"]))
    np.testing.assert_allclose(dots.get_array(), expected["auc"].to_numpy(dtype=float))
    assert (dots.get_array()[:6] > 0.5).all() and (dots.get_array()[6:] < 0.5).all()
    ticks = ax.get_yticks()
    assert np.all(np.diff(ticks) > 0) and ax.get_ylim()[0] > ax.get_ylim()[1]  # best on top
    # the same feature by position; nothing written
    pos = list(kang_enriched.uns["sae"]["features"].index.astype(str)).index(feat)
    ax2 = fl.pl.enrichment(kang_enriched, "sae", pos, 6, max_label=None, show=False)
    assert _tick_labels(ax2) == _tick_labels(ax)
    assert _snapshot(kang_enriched) == before


def test_enrichment_binomial_bars_and_options(kang_enriched):
    res = fl.get.enrichment(kang_enriched, "sae")
    test = res["test"].astype(str).to_numpy()
    feat = _feature_with(res, {"up": test == "binomial_up", "down": test == "binomial_down"}, 4)
    rows = fl.get.enrichment(kang_enriched, "sae", feat)
    up = _best(rows[rows["test"].astype(str) == "binomial_up"], 4)
    down = _best(rows[rows["test"].astype(str) == "binomial_down"], 4)
    _, ax = plt.subplots()
    out = fl.pl.enrichment(
        kang_enriched, "sae", feat, 4, test="binomial", kind="bar", max_label=None, ax=ax, show=False
    )
    assert out is ax
    assert _tick_labels(ax) == list(up["name"].astype(str)) + list(down["name"].astype(str))
    widths = [p.get_width() for p in ax.patches if p.get_height() == pytest.approx(0.7)]
    np.testing.assert_allclose(widths, _neglog10(pd.concat([up, down])["padj"]))
    # one direction only, dot sizes from the DEG hits, colour = fold enrichment
    ax = fl.pl.enrichment(kang_enriched, "sae", feat, 4, test="binomial", direction="down", max_label=None, show=False)
    assert _tick_labels(ax) == list(down["name"].astype(str))
    np.testing.assert_allclose(ax.collections[-1].get_array(), down["fold_enrichment"].to_numpy(dtype=float))
    # long names shortened to max_label characters, keeping their beginning
    ax = fl.pl.enrichment(kang_enriched, "sae", feat, 4, test="binomial_down", max_label=20, show=False)
    for label, name in zip(_tick_labels(ax), down["name"].astype(str), strict=True):
        assert len(label) <= 20
        assert label == name or (label.endswith("…") and name.startswith(label[:-1]))
    fig = fl.pl.enrichment(kang_enriched, "sae", feat, 4, return_fig=True)
    assert isinstance(fig, plt.Figure)
    # a tested feature without up-regulated binomial terms: said so instead of an empty block
    tested = kang_enriched.uns["sae"]["enrichment"]["summary"].index.astype(str)
    rows_of = res["feature"].astype(str).to_numpy()
    no_up = next(
        f
        for f in tested
        if not ((rows_of == f) & (test == "binomial_up")).any() and ((rows_of == f) & (test == "binomial_down")).any()
    )
    ax = fl.pl.enrichment(kang_enriched, "sae", no_up, test="binomial", show=False)
    assert ax.get_title() == f"{no_up}: binomial (no up terms stored)"
    ax = fl.pl.enrichment(kang_enriched, "sae", no_up, test="binomial_up", show=False)
    assert _tick_labels(ax) == [] and ax.texts[0].get_text() == f"no binomial_up terms stored for {no_up}"


def test_enrichment_errors(kang_dge, kang_enriched):
    with pytest.raises(ValueError, match=r"run `fl\.tl\.enrich\(adata, 'sae'\)` first"):
        fl.pl.enrichment(kang_dge, "sae", "f0")
    with pytest.raises(ValueError, match=r"run `fl\.tl\.enrich\(adata, 'sae'\)` first"):
        fl.pl.term_counts(kang_dge, "sae")
    with pytest.raises(ValueError, match="Unknown feature 'f9999'"):
        fl.pl.enrichment(kang_enriched, "sae", "f9999")
    with pytest.raises(ValueError, match="out of range"):
        fl.pl.enrichment(kang_enriched, "sae", 10**6)
    with pytest.raises(ValueError, match="`feature` takes one feature"):
        fl.pl.enrichment(kang_enriched, "sae", ["f0", "f1"])
    untested = kang_enriched.uns["sae"]["dge"]["summary"].query("skipped != ''").index[0]
    with pytest.raises(ValueError, match=f"Feature '{untested}' has no enrichment results"):
        fl.pl.enrichment(kang_enriched, "sae", untested)
    with pytest.raises(ValueError, match=r"No 'gsea' results .* \['binomial', 'binomial_down', 'binomial_up', 'mwu'\]"):
        fl.pl.enrichment(kang_enriched, "sae", "f0", test="gsea")
    with pytest.raises(ValueError, match=r"`test` must be one of 'mwu', .*, got 'fisher'"):
        fl.pl.enrichment(kang_enriched, "sae", "f0", test="fisher")
    with pytest.raises(ValueError, match="`kind` must be one of 'dot', 'bar'"):
        fl.pl.enrichment(kang_enriched, "sae", "f0", kind="pie")


# ----------------------------------------------------------------------------- volcano
def test_dge_volcano_one_point_per_gene_and_top_labels(kang_enriched):
    before = _snapshot(kang_enriched)
    summary = kang_enriched.uns["sae"]["dge"]["summary"]
    dge_all = fl.get.dge(kang_enriched, "sae")
    n_sig = (dge_all["padj"] < 0.05).groupby(dge_all["feature"].astype(str).to_numpy()).sum()
    feat = str(n_sig[n_sig >= 20].index[0])
    ax = fl.pl.dge(kang_enriched, "sae", feat, n_labels=8, show=False)
    pos = list(kang_enriched.uns["sae"]["features"].index.astype(str)).index(feat)
    lfc = np.asarray(kang_enriched.varm["sae_log2fc"][:, pos], dtype=float)
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(offsets) == kang_enriched.n_vars == np.isfinite(lfc).sum()
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(lfc))
    # stored genes at -log10(padj), the others grey at 0 and named so in the legend
    rows = fl.get.dge(kang_enriched, "sae", feat)
    y = np.zeros(kang_enriched.n_vars)
    y[kang_enriched.var_names.get_indexer(rows["gene"].astype(str))] = _neglog10(rows["padj"])
    order = np.lexsort((lfc, y))
    got = offsets[np.lexsort((offsets[:, 0], offsets[:, 1]))]
    np.testing.assert_allclose(got, np.column_stack([lfc, y])[order])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    n_not = kang_enriched.n_vars - len(rows)
    assert f"not stored (padj ≥ 0.05), drawn at 0 ({n_not})" in legend
    grey = next(c for c in ax.collections if len(c.get_offsets()) == n_not)
    assert (grey.get_offsets()[:, 1] == 0).all()
    n_up = int(((rows["padj"] < 0.05) & (rows["log2fc"] > 0)).sum())
    assert f"up ({n_up})" in legend
    # labels: the 8 genes with the smallest adjusted p, at their points
    top = _best(rows[rows["padj"] < 0.05], 8)
    assert [t.get_text() for t in ax.texts] == list(top["gene"].astype(str))
    for t, (_, r) in zip(ax.texts, top.iterrows(), strict=True):
        gi = kang_enriched.var_names.get_loc(str(r["gene"]))
        assert t.xy == pytest.approx((lfc[gi], _neglog10(r["padj"])))
    assert ax.get_title().startswith(f"{feat}: high vs low within {summary.loc[feat, 'group']}")
    assert not fl.pl.dge(kang_enriched, "sae", feat, n_labels=0, show=False).texts
    assert _snapshot(kang_enriched) == before


def test_dge_errors(kang_sae, kang_enriched):
    with pytest.raises(ValueError, match=r"run `fl\.tl\.high_vs_low\(adata, 'sae'\)` first"):
        fl.pl.dge(kang_sae, "sae", "f0")
    skipped = kang_enriched.uns["sae"]["dge"]["summary"].query("skipped != ''")
    with pytest.raises(ValueError, match=f"'{skipped.index[0]}' was skipped by high_vs_low"):
        fl.pl.dge(kang_enriched, "sae", skipped.index[0])
    with pytest.raises(ValueError, match="Unknown feature 'gene1'"):
        fl.pl.dge(kang_enriched, "sae", "gene1")
    with pytest.raises(ValueError, match=r"No dictionary under adata\.uns\['icfl'\]"):
        fl.pl.dge(kang_enriched, "icfl", "f0")


# ----------------------------------------------------------------------------- term counts
def _expected_counts(res, tests, cutoff, adjusted, n):
    col = "padj" if adjusted else "pval"
    sig = res[res["test"].astype(str).isin(tests) & (res[col] < cutoff)]
    sig = sig.assign(term=sig["term"].astype(str), name=sig["name"].astype(str), feature=sig["feature"].astype(str))
    per_term = sig.groupby(["term", "name"])["feature"].nunique().rename("n").reset_index()
    per_term = per_term.sort_values(["n", "name"], ascending=[False, True]).head(n)
    per_feature = sig.groupby("feature")["term"].nunique()
    return per_term, per_feature


def test_term_counts_match_pandas(kang_enriched):
    res = fl.get.enrichment(kang_enriched, "sae")
    axes = fl.pl.term_counts(kang_enriched, "sae", 15, max_label=None, show=False)
    assert len(axes) == 2
    per_term, per_feature = _expected_counts(res, ["mwu"], 0.01, False, 15)
    assert _tick_labels(axes[0]) == list(per_term["name"])
    assert [p.get_width() for p in axes[0].patches] == list(per_term["n"])
    tested = kang_enriched.uns["sae"]["enrichment"]["summary"].index.astype(str)
    counts = per_feature.reindex(tested, fill_value=0).to_numpy()
    heights = np.array([p.get_height() for p in axes[1].patches])
    assert heights.sum() == len(tested)
    np.testing.assert_array_equal(heights, np.histogram(counts, bins=30)[0])
    # several tests, adjusted p, one panel on a given axes
    _, ax = plt.subplots()
    tests = ("binomial_up", "binomial_down")
    out = fl.pl.term_counts(kang_enriched, "sae", 10, test=tests, pval_cutoff=0.05, adjusted=True, kind="terms", ax=ax)
    assert out is ax
    per_term, _ = _expected_counts(res, tests, 0.05, True, 10)
    assert [p.get_width() for p in ax.patches] == list(per_term["n"])
    assert "padj < 0.05, binomial_up/binomial_down" in ax.get_title()
    ax = fl.pl.term_counts(kang_enriched, "sae", kind="features", bins=np.arange(0, 2000, 50), show=False)
    assert sum(p.get_height() for p in ax.patches) == len(tested)


def test_term_counts_errors(kang_enriched):
    with pytest.raises(ValueError, match=r"No \['gsea'\] results"):
        fl.pl.term_counts(kang_enriched, "sae", test="gsea")
    with pytest.raises(ValueError, match="`ax=` needs kind='terms' or kind='features'"):
        fl.pl.term_counts(kang_enriched, "sae", ax=plt.subplots()[1])
    with pytest.raises(ValueError, match="`kind` must be"):
        fl.pl.term_counts(kang_enriched, "sae", kind="genes")


# ----------------------------------------------------------------------------- concept space
@pytest.fixture(scope="module")
def kang_concepts(kang_enriched):
    adata = kang_enriched.copy()
    fl.tl.concept_space(adata, "sae")
    fl.tl.probe_concepts(adata, "sae", ["virus"])
    return adata


def _rgba(c):
    return tuple(np.round(mcolors.to_rgba(c), 4))


def test_concept_space_points_colours_and_highlight(kang_concepts):
    before = _snapshot(kang_concepts)
    obs = kang_concepts.uns["sae"]["concept_space"]["obs"]
    hl = [str(obs.index[3]), str(obs.index[10])]
    hl_pos = list(kang_concepts.uns["sae"]["features"].index.astype(str)).index(hl[1])
    ax = fl.pl.concept_space(kang_concepts, "sae", highlight=[hl[0], hl_pos], show=False)
    points = ax.collections[0]
    np.testing.assert_allclose(points.get_offsets(), obs[["umap1", "umap2"]].to_numpy())
    # one colour per category, the legend lists the categories present
    colours = [_rgba(c) for c in points.get_facecolors()]
    cats = obs["category"].astype(str).to_numpy()
    by_cat = {c: {colours[i] for i in np.flatnonzero(cats == c)} for c in set(cats)}
    assert all(len(v) == 1 for v in by_cat.values()) and len({next(iter(v)) for v in by_cat.values()}) == len(by_cat)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == sorted(set(cats))
    # highlighted features: labelled with their names, rings at their coordinates
    assert [t.get_text() for t in ax.texts] == hl
    rings = np.concatenate([c.get_offsets() for c in ax.collections[1:]])
    np.testing.assert_allclose(rings, obs.loc[hl, ["umap1", "umap2"]].to_numpy())
    assert _snapshot(kang_concepts) == before


def test_concept_space_colour_sources(kang_concepts):
    obs = kang_concepts.uns["sae"]["concept_space"]["obs"]
    feats = kang_concepts.uns["sae"]["features"]
    # a probed word: True drawn last (on top) in the highlight colour
    ax = fl.pl.concept_space(kang_concepts, "sae", "virus", show=False)
    on = feats["concept_virus"].reindex(obs.index.astype(str)).to_numpy(dtype=bool)
    assert 0 < on.sum() < len(on)
    off_pts, on_pts = ax.collections[0], ax.collections[1]
    np.testing.assert_allclose(on_pts.get_offsets(), obs.loc[on, ["umap1", "umap2"]].to_numpy())
    np.testing.assert_allclose(off_pts.get_offsets(), obs.loc[~on, ["umap1", "umap2"]].to_numpy())
    assert on_pts.get_zorder() > off_pts.get_zorder()
    assert _rgba(on_pts.get_facecolors()[0]) == _rgba("#d62728")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"virus ({on.sum()})", f"other ({(~on).sum()})"]
    # a numeric column with a colour bar
    fig = fl.pl.concept_space(kang_concepts, "sae", "n_terms", return_fig=True)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_array(), obs["n_terms"].to_numpy())
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "n_terms"
    # a categorical column of the feature table, with an explicit palette
    pal = {"local": "black", "global": "orange", "dead": "blue"}
    ax = fl.pl.concept_space(kang_concepts, "sae", "type", palette=pal, show=False)
    types = feats["type"].reindex(obs.index.astype(str)).astype(str).to_numpy()
    assert [_rgba(c) for c in ax.collections[0].get_facecolors()] == [_rgba(pal[t]) for t in types]


def test_concept_space_errors(kang_enriched, kang_concepts):
    with pytest.raises(ValueError, match=r"run `fl\.tl\.concept_space\(adata, 'sae'\)` first"):
        fl.pl.concept_space(kang_enriched, "sae")
    with pytest.raises(ValueError, match=r"Unknown color 'interferon'.*'category'.*'type'.*'virus'"):
        fl.pl.concept_space(kang_concepts, "sae", "interferon")
    absent = next(
        f
        for f in kang_concepts.uns["sae"]["features"].index
        if f not in set(kang_concepts.uns["sae"]["concept_space"]["obs"].index)
    )
    with pytest.raises(ValueError, match=f"\\['{absent}'\\] are not in the concept space"):
        fl.pl.concept_space(kang_concepts, "sae", highlight=[absent])
    with pytest.raises(ValueError, match="Unknown feature 'f9999'"):
        fl.pl.concept_space(kang_concepts, "sae", highlight="f9999")


# ----------------------------------------------------------------------------- images on small hand-made results
@pytest.fixture
def toy():
    """A four-feature dictionary with hand-written enrichment and concept-space tables."""
    names = [f"f{i}" for i in range(4)]
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    rows = []
    for i, (term, direction, padj, auc, size) in enumerate(
        [
            ("response to virus", "up", 1e-8, 0.80, 300),
            ("defense response", "up", 1e-5, 0.72, 120),
            ("cytoplasmic translation", "up", 1e-3, 0.65, 60),
            ("ribosome biogenesis", "down", 1e-6, 0.25, 200),
            ("rRNA processing", "down", 1e-2, 0.38, 40),
        ]
    ):
        rows.append(
            {
                "feature": "f1",
                "term": f"GO:{i:07d}",
                "name": term,
                "test": "mwu",
                "n_term": size,
                "auc": auc,
                "direction": direction,
                "pval": padj / 10,
                "padj": padj,
            }
        )
    results = pd.DataFrame(rows).astype({c: "category" for c in ("feature", "term", "name", "test", "direction")})
    obs = pd.DataFrame(
        {
            "umap1": [0.0, 1.0, 2.0, 3.0],
            "umap2": [0.0, 2.0, 1.0, 3.0],
            "category": pd.Categorical(["immune", "metabolic", "immune", "signalling"]),
            "n_terms": [3, 5, 2, 8],
        },
        index=names,
    )
    adata.uns["toy"] = {
        "params": {"method": "sae"},
        "decoder": np.eye(4, dtype=np.float32),
        "features": pd.DataFrame({"type": pd.Categorical(["local", "global", "local", "global"])}, index=names),
        "enrichment": {"results": results, "summary": pd.DataFrame(index=names[:2]), "params": {"store_pval": 0.05}},
        "concept_space": {"obs": obs, "terms": pd.DataFrame(), "matrix": sp.csr_matrix((4, 1)), "params": {}},
    }
    return adata


def test_enrichment_image(toy, tmp_path):
    ax = fl.pl.enrichment(toy, "toy", "f1", show=False)
    assert _tick_labels(ax) == [
        "response to virus", "defense response", "cytoplasmic translation", "ribosome biogenesis", "rRNA processing",
    ]  # fmt: skip
    check_image(ax.figure, "annotation_enrichment", tmp_path)


def test_concept_space_image(toy, tmp_path):
    fig = fl.pl.concept_space(toy, "toy", highlight=["f1"], size=80, return_fig=True)
    assert [t.get_text() for t in fig.axes[0].texts] == ["f1"]
    check_image(fig, "annotation_concept_space", tmp_path)
