"""Plots: image comparisons at low dpi on deterministic inputs, plus smoke tests."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.testing.compare import compare_images
from matplotlib.testing.decorators import remove_ticks_and_titles
from test_features import _synthetic

import featurelens as fl

IMAGES = Path(__file__).parent / "_images"
DPI = 40
TOL = 15


def check_image(fig, name: str, tmp_path: Path) -> None:
    """Compare a figure, without text, against tests/_images/<name>.png."""
    remove_ticks_and_titles(fig)
    for ax in fig.axes:
        ax.set_xlabel("")
        ax.set_ylabel("")
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    actual = tmp_path / f"{name}.png"
    fig.savefig(actual, dpi=DPI)
    plt.close(fig)
    expected = IMAGES / f"{name}.png"
    assert expected.exists(), f"missing baseline {expected}; copy {actual} there after checking it by eye"
    result = compare_images(str(expected), str(actual), tol=TOL)
    assert result is None, result


@pytest.fixture
def typed():
    adata, _ = _synthetic(n_per_group=40, seed=3)
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
