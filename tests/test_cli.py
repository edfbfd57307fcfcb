"""The featurelens command and the bundled Kang 2018 data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import data_path

import featurelens as fl
from featurelens.cli import UsageError, main, run_pipeline, validate_inputs


@pytest.mark.shared_data
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


# ---------------------------------------------------------------- user errors: one line, exit status 2, nothing done
@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory) -> Path:
    """300 Kang cells with a random 8-D embedding, a non-numeric and a NaN embedding and a counts layer."""
    adata = fl.datasets.kang2018()[:300].copy()
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 8)).astype(np.float32)
    adata.obsm["X_text"] = np.full((adata.n_obs, 2), "a")
    adata.obsm["X_nan"] = np.full((adata.n_obs, 2), np.nan)
    adata.layers["counts"] = adata.X.copy()
    path = tmp_path_factory.mktemp("cli") / "small.h5ad"
    adata.write_h5ad(path)
    return path


def _user_error(capsys, argv: list[str], *words: str) -> str:
    """Run the command, expect exit status 2, one ``error:`` line naming ``words``, no traceback, no training."""
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]
    assert "training" not in captured.out  # failed before the dictionary was trained
    return lines[0]


def _run_args(path, out, *extra: str) -> list[str]:
    return ["run", str(path), "--use-rep", "X_pca", "--out", str(out), "--quiet", "--n-steps", "20", *extra]


def test_cli_errors(small_h5ad, tmp_path, capsys):
    out = tmp_path / "o"
    _user_error(capsys, ["run", str(small_h5ad), "--use-rep", "X_umap", "--out", str(out)], "not in adata.obsm")
    args = ["run", str(small_h5ad), "--use-rep", "X_pca", "--groupby", "tissue", "--out", str(out)]
    _user_error(capsys, args, "--groupby 'tissue'", "not a column of adata.obs", "cell_type")
    _user_error(capsys, ["run", str(tmp_path / "missing.h5ad"), "--use-rep", "X_pca"], "does not exist")
    _user_error(capsys, ["run", str(small_h5ad)], "--use-rep", "featurelens run --help")  # --use-rep is required
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "content"), [("table.csv", "gene,a\nCD3E,1\n"), ("renamed.h5ad", "not an hdf5 file\n")]
)
def test_cli_input_that_is_not_h5ad(tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_text(content)
    _user_error(capsys, _run_args(path, tmp_path / "out"), name, "not an h5ad file")
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::anndata.OldFormatWarning")
def test_cli_input_that_is_an_hdf5_file_but_not_anndata(tmp_path, capsys):
    import h5py

    path = tmp_path / "plain.h5ad"
    with h5py.File(path, "w") as fh:
        fh["values"] = np.arange(3)
    _user_error(capsys, _run_args(path, tmp_path / "out"), "plain.h5ad", "cannot be read as h5ad")
    assert not (tmp_path / "out").exists()


def test_cli_input_that_is_a_directory(tmp_path, capsys):
    folder = tmp_path / "data.h5ad"
    folder.mkdir()
    _user_error(capsys, _run_args(folder, tmp_path / "out"), "data.h5ad", "is a folder")
    assert not (tmp_path / "out").exists()


def test_cli_command_prints_no_traceback(tmp_path):
    """The real process: a text file named .h5ad gives one error line and exit status 2."""
    path = tmp_path / "renamed.h5ad"
    path.write_text("not an hdf5 file\n")
    src = str(Path(fl.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "featurelens.cli", *_run_args(path, tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "renamed.h5ad" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_out_that_is_an_existing_file(small_h5ad, tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("keep me")
    _user_error(capsys, _run_args(small_h5ad, out), "--out", "existing file")
    assert out.read_text() == "keep me"


def test_cli_out_below_a_file(small_h5ad, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("keep me")
    _user_error(capsys, _run_args(small_h5ad, blocker / "run1"), "cannot be created", "is a file")
    assert blocker.read_text() == "keep me"


def test_cli_out_whose_parent_is_not_writable(small_h5ad, tmp_path, capsys):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):  # root ignores permissions (see test_cli_out_below_a_file)
            pytest.skip("permissions are not enforced for this user")
        _user_error(capsys, _run_args(small_h5ad, parent / "out"), "not writable")
        assert not (parent / "out").exists()
    finally:
        parent.chmod(0o755)


def test_cli_out_whose_parent_is_not_writable_for_the_check(small_h5ad, tmp_path, capsys, monkeypatch):
    """The same case for every user, root included: the check follows ``os.access``."""
    import featurelens.cli

    parent = tmp_path / "read_only"
    parent.mkdir()
    access = os.access
    monkeypatch.setattr(featurelens.cli.os, "access", lambda p, mode: access(p, mode) and Path(p) != parent)
    _user_error(capsys, _run_args(small_h5ad, parent / "out"), "cannot be created", "not writable")
    assert not (parent / "out").exists()


@pytest.mark.parametrize(
    ("gene_sets", "words"),
    [
        ("missing.gmt", ["missing.gmt", "neither GO_BP, GO_MF, GO_CC nor an existing GMT file"]),
        ("GO_XY", ["GO_XY", "neither GO_BP"]),
        ("bad.gmt", ["bad.gmt", "cannot be read as a GMT file", "line 1"]),
        ("folder", ["folder", "is a folder"]),
    ],
)
def test_cli_gene_sets_checked_before_training(small_h5ad, tmp_path, capsys, gene_sets, words):
    (tmp_path / "bad.gmt").write_text("T1\tonly a description\n")
    (tmp_path / "folder").mkdir()
    arg = str(tmp_path / gene_sets) if gene_sets != "GO_XY" else gene_sets
    _user_error(capsys, _run_args(small_h5ad, tmp_path / "out", "--gene-sets", arg), "--gene-sets", *words)
    assert not (tmp_path / "out").exists()


def test_cli_gene_sets_that_do_not_match_the_genes(small_h5ad, tmp_path, capsys):
    adata = ad.read_h5ad(small_h5ad)
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    path = tmp_path / "ensembl.h5ad"
    adata.write_h5ad(path)
    _user_error(capsys, _run_args(path, tmp_path / "out"), "--gene-sets 'GO_BP'", "Ensembl", "--gene-symbols")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--layer", "spliced"], ["--layer 'spliced'", "not in adata.layers", "'counts'"]),
        (["--gene-symbols", "symbol"], ["--gene-symbols 'symbol'", "not a column of adata.var"]),
        (["--groupby", "condition_x"], ["--groupby 'condition_x'", "not a column of adata.obs"]),
        (["--n-steps", "0"], ["--n-steps", "positive integer"]),
        (["--n-steps", "-3"], ["--n-steps", "positive integer"]),
        (["--n-steps", "many"], ["--n-steps", "invalid int value"]),
        (["--use-rep", "X_text"], ["--use-rep 'X_text'", "numeric"]),
        (["--use-rep", "X_nan"], ["--use-rep 'X_nan'", "NaN"]),
        (["--use-rep", "X_missing"], ["--use-rep 'X_missing'", "not in adata.obsm", "'X_pca'"]),
    ],
)
def test_cli_options_checked_before_any_work(small_h5ad, tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    _user_error(capsys, _run_args(small_h5ad, out, *extra), *words)
    assert not out.exists()  # the output folder is created only after every check passed


def test_cli_demo_checks_its_options_first(tmp_path, capsys):
    _user_error(capsys, ["demo", "--out", str(tmp_path / "out"), "--n-steps", "0"], "--n-steps")
    blocker = tmp_path / "file"
    blocker.write_text("")
    _user_error(capsys, ["demo", "--out", str(blocker)], "--out", "existing file")
    assert not (tmp_path / "out").exists()


def test_validate_inputs_accepts_valid_options_and_writes_nothing(small_h5ad, tmp_path):
    adata = ad.read_h5ad(small_h5ad)
    out = tmp_path / "out"
    validate_inputs(adata, use_rep="X_pca", out=out, groupby="cell_type", layer="counts", n_steps=5)
    assert not out.exists()
    with pytest.raises(UsageError, match=r"--layer 'spliced'"):
        run_pipeline(adata, use_rep="X_pca", out=out, layer="spliced")
    assert not out.exists() and "sae" not in adata.uns
