"""Plots: image comparisons at low dpi on deterministic inputs, plus smoke tests."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import check_image, synthetic_dictionary

import featurelens as fl


@pytest.fixture
def typed():
    adata, _ = synthetic_dictionary(n_per_group=40, seed=3)
    fl.tl.feature_types(adata, "syn", "group")
    fl.tl.selectivity(adata, "syn", "group")
    return adata


def test_feature_heatmap_image(typed, tmp_path):
    fig = fl.pl.feature_heatmap(typed, "syn", "group", return_fig=True)
    check_image(fig, "feature_heatmap", tmp_path)


def test_selectivity_image(typed, tmp_path):
    fig = fl.pl.selectivity(typed, "syn", "group", return_fig=True)
    check_image(fig, "selectivity", tmp_path)


def test_feature_types_image(typed, tmp_path):
    fig = fl.pl.feature_types(typed, "syn", return_fig=True)
    check_image(fig, "feature_types", tmp_path)


def test_heatmap_puts_local_features_on_the_diagonal(typed):
    ax = fl.pl.feature_heatmap(typed, "syn", "group", show=False, standard_scale=None)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert set(labels[:2]) == {"f0", "f4"} and labels[2] == "f1"  # local to A (two), then local to B
    mat = ax.images[0].get_array()
    assert mat[0, 0] > mat[1, 0] and mat[1, 2] > mat[0, 2]
    plt.close("all")


def test_activations_smoke(typed):
    typed.obsm["X_umap"] = np.random.default_rng(0).normal(size=(typed.n_obs, 2))
    axes = fl.pl.activations(typed, "syn", ["f0", 1], basis="umap", show=False)
    assert len(axes) == 2 and axes[0].get_title() == "syn:f0"
    _, ax = plt.subplots()
    assert fl.pl.activations(typed, "syn", "f2", ax=ax, show=False) is ax
    fig = fl.pl.activations(typed, "syn", [0, 1, 2], return_fig=True)
    assert len([a for a in fig.axes if a.get_title()]) == 3
    with pytest.raises(ValueError, match="Unknown feature 'f99'"):
        fl.pl.activations(typed, "syn", "f99")
    with pytest.raises(ValueError, match="No embedding 'tsne'"):
        fl.pl.activations(typed, "syn", "f0", basis="tsne")
    assert "syn:f0" not in typed.obs  # nothing written
    plt.close("all")


def test_reconstruction_and_errors_smoke(kang_pca):
    adata = kang_pca.copy()
    fl.tl.sae(adata, "X_pca", n_steps=50, progress=False)
    ax = fl.pl.reconstruction(adata, "sae", groupby="condition", show=False)
    assert ax.get_title().startswith("FVU") and len(ax.patches) > 0
    with pytest.raises(ValueError, match=r"run `fl\.tl\.selectivity"):
        fl.pl.selectivity(adata, "sae", "condition")
    with pytest.raises(ValueError, match=r"run `fl\.tl\.feature_types"):
        fl.pl.feature_types(adata, "sae")
    plt.close("all")
