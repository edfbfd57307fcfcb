"""Shared test helpers: real-data paths, a planted dictionary, deep comparison of uns entries."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import featurelens as fl

#: data that does not ship with the package (``FEATURELENS_SHARED_DATA`` overrides the location)
DATA = Path(os.environ.get("FEATURELENS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
#: the files shipped inside the package
BUNDLED = Path(str(resources.files("featurelens") / "datasets" / "data"))


def data_path(*parts: str) -> Path:
    """Path inside ../shared/data (data not shipped with the package); skips the test with the reason when absent.

    Tests that use it are marked ``shared_data``.
    """
    if not DATA.is_dir():
        pytest.skip(f"needs the data folder {DATA}, which is not shipped with the package and is missing here")
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


def bundled_path(name: str) -> Path:
    """Path of a file shipped inside the package."""
    path = BUNDLED / name
    assert path.exists(), path
    return path


def planted_dictionary(n=3000, d=32, m=64, s=3, noise=0.01, seed=0):
    """x = z W* + noise with unit-norm atoms W* (m x d) and s-sparse positive codes z."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    Z = np.zeros((n, m))
    for i in range(n):
        j = rng.choice(m, s, replace=False)
        Z[i, j] = rng.uniform(0.5, 1.5, s)
    X = Z @ W + noise * rng.normal(size=(n, d))
    return X.astype(np.float32), W, Z


def assert_uns_equal(a, b, path="uns"):
    """Recursive equality of uns-like structures (dicts, arrays, DataFrames, scalars)."""
    import pandas as pd
    import scipy.sparse as sp

    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)} differ"
        for k in a:
            assert_uns_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_dtype=False, check_index_type=False, obj=path)
    elif sp.issparse(a):
        assert sp.issparse(b) and a.shape == b.shape, path
        assert (a != b).nnz == 0, path
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, np.asarray(b), err_msg=path)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ------------------------------------------------------------------ shared between test modules
INTERFERON = re.compile(r"virus|viral|type I interferon|interferon-alpha|interferon-beta", re.IGNORECASE)


def interferon_features(adata, key="sae") -> list[str]:
    """Features whose high cells are >= 90% STIM with a virus / type I IFN term (padj < 1e-6) in their top 5."""
    dge = adata.uns[key]["dge"]
    stim = (adata.obs["condition"] == "STIM").to_numpy()
    res = fl.get.enrichment(adata, key)
    hits = []
    for i, name in enumerate(dge["summary"].index):
        cells = dge["high_cells"][i].indices
        if cells.size == 0 or stim[cells].mean() < 0.9:
            continue
        top = res[(res["feature"] == name) & (res["test"] == "binomial_up")].nsmallest(5, "padj")
        if any(INTERFERON.search(str(n)) and p < 1e-6 for n, p in zip(top["name"], top["padj"], strict=True)):
            hits.append(name)
    return hits


def synthetic_dictionary(n_per_group=50, seed=0):
    """Activations with planted structure: f0 local to A, f1 local to B, f2 global, f3 dead, f4 == 2*f0."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(["A", "B", "C"], n_per_group)
    n = groups.size
    Z = np.zeros((n, 6), np.float32)
    Z[groups == "A", 0] = rng.uniform(1, 2, n_per_group)
    Z[groups == "B", 1] = rng.uniform(1, 2, n_per_group)
    Z[:, 2] = rng.uniform(0.5, 1.5, n)
    Z[:, 4] = 2 * Z[:, 0]
    Z[rng.random(n) < 0.2, 5] = 0.3
    adata = ad.AnnData(np.zeros((n, 2), np.float32))
    adata.obs["group"] = pd.Categorical(groups)
    adata.obs["batch"] = np.tile(["b1", "b2"], n // 2 + 1)[:n]
    adata.obsm["X_syn"] = sp.csr_matrix(Z)
    dec = np.eye(6, 8, dtype=np.float32)
    adata.uns["syn"] = {
        "params": {"method": "sae", "architecture": "topk", "k": 3, "use_rep": "X_emb"},
        "decoder": dec,
        "features": pd.DataFrame(index=[f"f{i}" for i in range(6)]),
    }
    return adata, Z


def small_cnn(in_ch=1, seed=0):
    """Random CNN: three conv-ReLU-maxpool stages (64 px -> 8 x 8 map) and a head."""
    from collections import OrderedDict

    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_ch, 16, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(32, 32, 3, padding=1),
            relu3=nn.ReLU(),
            pool3=nn.MaxPool2d(2),
            conv4=nn.Conv2d(32, 32, 3, padding=1),
            relu4=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(32, 4),
        )
    )


def tiles(x, size):
    h, w = x.shape
    return x.reshape(h // size, size, w // size, size).swapaxes(1, 2).reshape(-1, size, size)


IMAGES = Path(__file__).parent / "_images"
DPI = 40
TOL = 15


def check_image(fig, name: str, tmp_path: Path) -> None:
    """Compare a figure, without text, against tests/_images/<name>.png."""
    import matplotlib.pyplot as plt
    from matplotlib.testing.compare import compare_images
    from matplotlib.testing.decorators import remove_ticks_and_titles

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
