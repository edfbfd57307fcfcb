"""Steering plot: steered cells in a PCA of the embedding and the paired-DGE volcano, checked against the run."""

from __future__ import annotations

import copy

import matplotlib

matplotlib.use("Agg")
import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from helpers import assert_uns_equal, check_image
from matplotlib.quiver import Quiver
from sklearn.decomposition import PCA

import featurelens as fl


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def steered(kang_enriched):
    """A copy of kang_enriched with one steering run: CTRL CD14 monocytes pushed along the feature that most
    separates STIM from CTRL in CD14 Mono (f9 for the session's SAE)."""
    adata = kang_enriched.copy()
    Z = adata.obsm["X_sae"]
    mono = (adata.obs["cell_type"] == "CD14 Mono").to_numpy()
    cond = adata.obs["condition"].to_numpy()
    stim, ctrl = mono & (cond == "STIM"), mono & (cond == "CTRL")
    diff = np.asarray(Z[stim].mean(0)).ravel() - np.asarray(Z[ctrl].mean(0)).ravel()
    feature = str(adata.uns["sae"]["features"].index[int(np.argmax(diff))])
    cells = "condition == 'CTRL'"
    fl.tl.steer(
        adata,
        "sae",
        feature,
        groupby="cell_type",
        group="CD14 Mono",
        cells=cells,
        centroids="condition",
        method="t-test",
        progress=False,
    )  # fmt: skip: the volcano needs p-values; the default effect table is drawn by test_steering_effect_panel
    return adata


def _run(adata):
    return next(iter(adata.uns["sae"]["steering"].values()))


def _snapshot(adata):
    return (
        copy.deepcopy(adata.uns["sae"].get("steering")),
        sorted(adata.uns.keys()),
        sorted(adata.uns["sae"].keys()),
        list(adata.obs.columns),
        sorted(adata.obsm.keys()),
    )


def _assert_unchanged(adata, before):
    after = _snapshot(adata)
    assert_uns_equal(before[0], after[0], "steering")
    assert before[1:] == after[1:]


def _pca(adata):
    return PCA(n_components=2, random_state=0).fit(np.asarray(adata.obsm["X_pca"], dtype=np.float64))


def _by_label(ax, prefix):
    return next(c for c in ax.collections if c.get_label().startswith(prefix))


def _neglog10(p):
    return -np.log10(np.asarray(p, dtype=float))


def _expected_volcano(res: pd.DataFrame, n_labels: int):
    """x, y (padj = 0 at the largest finite -log10 or 300) and the labelled genes, computed with pandas."""
    lfc = res["log2fc"].to_numpy(dtype=float)
    x = lfc if np.isfinite(lfc).all() else res["delta"].to_numpy(dtype=float)
    padj = res["padj"].to_numpy(dtype=float)
    pos = padj > 0
    cap = max(_neglog10(padj[pos]).max(), _neglog10(0.05)) if pos.any() else 300.0
    y = np.where(np.isnan(padj), 0.0, np.where(padj == 0, cap, _neglog10(np.where(pos, padj, 1.0))))
    sig = res.loc[res["padj"] < 0.05]
    top = sig.loc[sig["delta"].abs().sort_values(ascending=False, kind="stable").index].head(n_labels)
    return x, y, cap, top


# ----------------------------------------------------------------------------- cells panel
def test_steering_cells_match_own_pca_projection(steered):
    before = _snapshot(steered)
    run = _run(steered)
    params, cells = run["params"], run["cells"]
    n = params["n_cells"]
    axes = fl.pl.steering(steered, "sae", color="condition", show=False)  # the only run: name=None
    assert len(axes) == 2
    ax = axes[0]
    pca = _pca(steered)
    idx = steered.obs_names.get_indexer(cells["obs_name"])
    xy0 = pca.transform(np.asarray(steered.obsm["X_pca"], dtype=np.float64)[idx])
    xy1 = pca.transform(np.asarray(run["embedding"], dtype=np.float64))
    # originals at the projection of X_pca of the steered cells, steered cells at that of the stored embedding
    np.testing.assert_allclose(_by_label(ax, "original").get_offsets(), xy0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_by_label(ax, "steered").get_offsets(), xy1, rtol=1e-6, atol=1e-6)
    assert n == len(cells) > 200
    # 200 arrows (subsampled), each from one cell's original to its steered position
    (quiver,) = [c for c in ax.collections if isinstance(c, Quiver)]
    starts = np.column_stack([quiver.X, quiver.Y])
    ends = starts + np.column_stack([np.asarray(quiver.U), np.asarray(quiver.V)])
    assert len(starts) == 200
    which = np.array([np.argmin(np.abs(xy0 - s).sum(1)) for s in starts])
    assert len(np.unique(which)) == 200
    np.testing.assert_allclose(starts, xy0[which], atol=1e-6)
    np.testing.assert_allclose(ends, xy1[which], atol=1e-5)
    # background coloured by condition; centroids of the run's `centroids` column, labelled
    cond = steered.obs["condition"].astype(str).to_numpy()
    background = ax.collections[:2]
    X = np.asarray(steered.obsm["X_pca"], dtype=np.float64)
    for coll, group in zip(background, ["CTRL", "STIM"], strict=True):
        np.testing.assert_allclose(coll.get_offsets(), pca.transform(X[cond == group]), rtol=1e-6, atol=1e-6)
    assert [t.get_text() for t in ax.texts] == ["CTRL", "STIM"]
    centres = pca.transform(np.stack([X[cond == g].mean(0) for g in ["CTRL", "STIM"]]))
    np.testing.assert_allclose([t.xy for t in ax.texts], centres, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_by_label(ax, "centroids of condition").get_offsets(), centres, rtol=1e-6, atol=1e-6)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    n_ctrl = int((cond == "CTRL").sum())
    assert legend == [
        f"CTRL ({n_ctrl})", f"STIM ({len(cond) - n_ctrl})", f"original ({n})", f"steered ({n})",
        "centroid of condition",
    ]  # fmt: skip
    assert ax.get_xlabel() == f"PC1 of X_pca ({pca.explained_variance_ratio_[0]:.0%})"
    assert ax.get_title() == (
        f"{params['feature']} set to {params['value']:.3g} in {n} cells\n"
        f"nearest condition centroid changed for {params['frac_nearest_changed']:.0%}"
    )
    # without arrows or colour: one grey background collection, no quiver
    ax = fl.pl.steering(steered, "sae", params["feature"], arrows=False, show=False)[0]
    assert not [c for c in ax.collections if isinstance(c, Quiver)]
    assert len(ax.collections[0].get_offsets()) == steered.n_obs
    _assert_unchanged(steered, before)


# ----------------------------------------------------------------------------- volcano panel
def test_steering_volcano_points_and_top_labels(steered):
    before = _snapshot(steered)
    res = _run(steered)["results"]
    ax = fl.pl.steering(steered, "sae", n_labels=8, arrows=False, show=False)[1]
    x, y, cap, top = _expected_volcano(res, 8)
    assert (res["padj"] == 0).any()  # underflow: drawn at the cap, as the label says
    assert ax.get_ylabel() == f"-log10(adjusted p); padj = 0 drawn at {cap:.3g}"
    assert ax.get_xlabel() == "log2 fold change (steered / original)"
    pts = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(pts) == len(res)
    got = pts[np.lexsort((pts[:, 0], pts[:, 1]))]
    np.testing.assert_allclose(got, np.column_stack([x, y])[np.lexsort((x, y))])
    # coloured by direction among the significant genes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    sig = res["padj"] < 0.05
    for d in ("up", "down"):
        assert f"{d} ({int((sig & (res['direction'] == d)).sum())})" in legend
    # labels: the 8 significant genes with the largest |delta|, at their points
    assert [t.get_text() for t in ax.texts] == list(top["gene"].astype(str))
    rows = top.index.to_numpy()
    np.testing.assert_allclose([t.xy for t in ax.texts], np.column_stack([x[rows], y[rows]]))
    assert not fl.pl.steering(steered, "sae", n_labels=0, show=False)[1].texts
    _assert_unchanged(steered, before)


def test_steering_volcano_grey_untested_delta_and_cap(steered):
    adata = steered.copy()
    run = _run(adata)
    res = run["results"].copy()
    res.loc[5:24, "padj"] = 0.5  # not significant: grey
    res.loc[30, ["pval", "padj"]] = np.nan  # not tested: at 0
    res.loc[40, "log2fc"] = np.nan  # one non-finite log2fc: x is delta for all genes
    run["results"] = res
    ax = fl.pl.steering(adata, "sae", n_labels=5, arrows=False, show=False)[1]
    x, y, _, top = _expected_volcano(res, 5)
    assert ax.get_xlabel() == "delta (mean paired difference, steered - original)"
    pts = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_allclose(pts[np.lexsort((pts[:, 0], pts[:, 1]))], np.column_stack([x, y])[np.lexsort((x, y))])
    grey = _by_label(ax, "padj ≥ 0.05")
    assert grey.get_label() == "padj ≥ 0.05 (20)"
    np.testing.assert_allclose(grey.get_offsets(), np.column_stack([x[5:25], _neglog10(np.full(20, 0.5))]))
    untested = _by_label(ax, "not tested")
    np.testing.assert_allclose(untested.get_offsets(), [[x[30], 0.0]])
    assert [t.get_text() for t in ax.texts] == list(top["gene"].astype(str))
    # every adjusted p 0: drawn at 300
    run["results"] = res.assign(padj=0.0)
    ax = fl.pl.steering(adata, "sae", n_labels=0, arrows=False, show=False)[1]
    assert ax.get_ylabel() == "-log10(adjusted p); padj = 0 drawn at 300"
    assert (np.concatenate([c.get_offsets() for c in ax.collections])[:, 1] == 300).all()
    # all positive: no cap in the label
    run["results"] = res.assign(padj=0.01)
    assert fl.pl.steering(adata, "sae", n_labels=0, arrows=False, show=False)[1].get_ylabel() == "-log10(adjusted p)"


def test_steering_effect_panel(steered):
    """A run without p-values (the default, method="effect"): log2 fold change vs |change|, the unpredictable grey."""
    adata = steered.copy()
    run = _run(adata)
    feature = run["params"]["feature"]
    fl.tl.steer(adata, "sae", feature, groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'",
                key_added="effect", progress=False)  # fmt: skip
    res = adata.uns["sae"]["steering"]["effect"]["results"]
    ax = fl.pl.steering(adata, "sae", "effect", n_labels=6, arrows=False, show=False)[1]
    assert ax.get_ylabel() == "|mean change of expression|"
    pts = np.concatenate([c.get_offsets() for c in ax.collections])
    x, y = res["log2fc"].to_numpy(), res["delta"].abs().to_numpy()
    np.testing.assert_allclose(pts[np.lexsort((pts[:, 0], pts[:, 1]))], np.column_stack([x, y])[np.lexsort((x, y))])
    grey = _by_label(ax, "decoder R² < 0.1")
    assert grey.get_label() == f"decoder R² < 0.1 ({int((~res['predictable']).sum())})"
    assert [t.get_text() for t in ax.texts] == list(res["gene"].astype(str)[:6])  # the default ranking


# ----------------------------------------------------------------------------- options and errors
def test_steering_axes_figure_and_errors(kang_enriched, steered):
    fig, axs = plt.subplots(1, 2)
    out = fl.pl.steering(steered, "sae", n_labels=0, arrows=False, ax=axs, show=False)
    assert out[0] is axs[0] and out[1] is axs[1]
    fig = fl.pl.steering(steered, "sae", n_labels=0, arrows=False, return_fig=True)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 2
    with pytest.raises(
        ValueError, match=r"No steering results for 'sae'; run `fl\.tl\.steer\(adata, 'sae', feature\)`"
    ):
        fl.pl.steering(kang_enriched, "sae")
    name = next(iter(steered.uns["sae"]["steering"]))
    with pytest.raises(ValueError, match=rf"No steering run 'f0' for 'sae'; stored runs: \['{name}'\]"):
        fl.pl.steering(steered, "sae", "f0")
    with pytest.raises(ValueError, match=r"basis='umap' cannot place steered cells.*Use basis='pca'"):
        fl.pl.steering(steered, "sae", basis="umap")
    with pytest.raises(ValueError, match=r"color='donor' is not a column of adata\.obs"):
        fl.pl.steering(steered, "sae", color="donor")
    with pytest.raises(ValueError, match="`ax=` needs two Axes"):
        fl.pl.steering(steered, "sae", ax=axs[0])
    with pytest.raises(ValueError, match=r"No dictionary under adata\.uns\['icfl'\]"):
        fl.pl.steering(steered, "icfl")
    two = steered.copy()
    two.uns["sae"]["steering"]["other"] = _run(two)
    with pytest.raises(ValueError, match=rf"Several steering runs are stored \(\['{name}', 'other'\]\); pass name="):
        fl.pl.steering(two, "sae")
    assert fl.pl.steering(two, "sae", "other", n_labels=0, show=False)[0].get_title().startswith(name)
    sub = steered[steered.obs["condition"] == "STIM"].copy()
    with pytest.raises(ValueError, match=r"steered cell.*are not in adata"):
        fl.pl.steering(sub, "sae")


# ----------------------------------------------------------------------------- image on a small hand-made run
@pytest.fixture
def toy():
    """30 cells in a 3-D embedding, two groups; 6 of group a moved toward group b; a 6-gene result table."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.3, (15, 3)), rng.normal([3, 1, 0], 0.3, (15, 3))]).astype(np.float32)
    adata = ad.AnnData(np.zeros((30, 6), dtype=np.float32))
    adata.obs_names = [f"c{i}" for i in range(30)]
    adata.var_names = [f"g{i}" for i in range(6)]
    adata.obs["group"] = pd.Categorical(["a"] * 15 + ["b"] * 15)
    adata.obsm["X_emb"] = X
    res = pd.DataFrame(
        {
            "gene": adata.var_names,
            "delta": [1.0, 0.5, -0.8, 0.1, -0.05, 0.0],
            "log2fc": [2.0, 1.0, -1.5, 0.2, -0.1, 0.0],
            "padj": [0.0, 1e-6, 1e-4, 0.2, 0.6, np.nan],
            "direction": pd.Categorical(["up", "up", "down", "up", "down", "none"], categories=["down", "none", "up"]),
        }
    )
    adata.uns["toy"] = {
        "params": {"method": "sae"},
        "decoder": np.eye(3, dtype=np.float32),
        "features": pd.DataFrame(index=["f0", "f1", "f2"]),
        "steering": {
            "f1": {
                "results": res,
                "cells": pd.DataFrame({"obs_name": [f"c{i}" for i in range(6)], "z": 0.0}),
                "embedding": X[:6] + np.array([2.5, 0.8, 0.0], dtype=np.float32),
                "params": {"feature": "f1", "value": 2.0, "n_cells": 6, "use_rep": "X_emb", "centroids": "group",
                           "method": "t-test", "decoder": "linear", "frac_nearest_changed": 1.0},
            }
        },
    }  # fmt: skip
    _add_view(adata.uns["toy"]["steering"]["f1"], X, adata.obs["group"].astype(str).to_numpy())
    return adata


def _add_view(run, X, groups):
    """What fl.tl.steer stores for the plot: a 2-component PCA of the embedding, the cells and centroids in it."""
    pca = PCA(n_components=2, random_state=0).fit(X.astype(np.float64))
    run["view"] = {
        "mean": pca.mean_,
        "components": pca.components_,
        "explained_variance_ratio": pca.explained_variance_ratio_,
    }
    before = pca.transform(X[:6].astype(np.float64))
    after = pca.transform(run["embedding"].astype(np.float64))
    for i in range(2):
        run["cells"][f"pc{i + 1}_before"] = before[:, i]
        run["cells"][f"pc{i + 1}_after"] = after[:, i]
    cats = sorted(set(groups))
    C = pca.transform(np.stack([X[groups == g].astype(np.float64).mean(0) for g in cats]))
    run["movement"] = pd.DataFrame({"pc1": C[:, 0], "pc2": C[:, 1]}, index=cats)


def test_steering_image(toy, tmp_path):
    fig = fl.pl.steering(toy, "toy", color="group", size=20, return_fig=True)
    assert [t.get_text() for t in fig.axes[0].texts] == ["a", "b"]
    assert [t.get_text() for t in fig.axes[1].texts] == ["g0", "g2", "g1"]
    assert fig.axes[1].get_ylabel() == "-log10(adjusted p); padj = 0 drawn at 6"
    check_image(fig, "steering", tmp_path)
