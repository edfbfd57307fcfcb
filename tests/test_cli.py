"""The featurelens command and the bundled Kang 2018 data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import data_path

import featurelens as fl
from featurelens.cli import main


def test_bundled_kang_equals_the_shared_file():
    bundled = fl.datasets.kang2018()
    ref = ad.read_h5ad(data_path("scrna", "kang2018_ifnb_sub2000_counts.h5ad"))
    assert bundled.shape == (2000, 13215)
    assert (bundled.X != ref.X).nnz == 0
    pd.testing.assert_frame_equal(bundled.obs, ref.obs)
    np.testing.assert_array_equal(np.asarray(bundled.X.sum(1)).ravel(), bundled.obs["nCount_RNA"].to_numpy())
    bundled.obs["x"] = 1  # a new object every call
    assert "x" not in fl.datasets.kang2018().obs


def test_cli_run_writes_the_annotated_file_plots_and_summary(kang_sae, tmp_path):
    src = kang_sae.copy()
    del src.uns["sae"], src.obsm["X_sae"]
    path = tmp_path / "kang.h5ad"
    src.write_h5ad(path)
    out = tmp_path / "out"
    args = ["run", str(path), "--use-rep", "X_pca", "--groupby", "cell_type", "--out", str(out), "--quiet"]
    rc = main([*args, "--n-steps", "400"])
    assert rc == 0
    adata = ad.read_h5ad(out / "kang_featurelens.h5ad")
    assert {"dge", "enrichment", "concept_space", "features"} <= set(adata.uns["sae"])
    assert {"training.png", "feature_types.png", "concept_space.png"} <= {p.name for p in out.iterdir()}
    table = pd.read_csv(out / "top_features.tsv", sep="\t")
    assert 0 < len(table) <= 20 and table["padj"].is_monotonic_increasing
    # the summary's best term is the feature's smallest-padj binomial_up term
    res = fl.get.enrichment(adata, "sae")
    first = table.iloc[0]
    best = res[(res["feature"] == first["feature"]) & (res["test"] == "binomial_up")].nsmallest(1, "padj")
    assert best["name"].iloc[0] == first["best_term"]
    assert first["padj"] == pytest.approx(best["padj"].iloc[0])
    assert (out / f"enrichment_{first['feature']}.png").exists()


def test_cli_errors(kang_sae, tmp_path, capsys):
    path = tmp_path / "k.h5ad"
    kang_sae.write_h5ad(path)
    with pytest.raises(SystemExit, match=r"not in adata\.obsm"):
        main(["run", str(path), "--use-rep", "X_umap", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match=r"not a column of adata\.obs"):
        main(["run", str(path), "--use-rep", "X_pca", "--groupby", "tissue", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["run", str(tmp_path / "missing.h5ad"), "--use-rep", "X_pca"])
    with pytest.raises(SystemExit):
        main(["run", str(path)])  # --use-rep is required
    assert "--use-rep" in capsys.readouterr().err
