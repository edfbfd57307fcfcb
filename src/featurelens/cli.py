"""The ``featurelens`` command: the whole pipeline on the bundled Kang 2018 data or on a user's h5ad file."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

METHODS = ("sae", "icfl")


def _say(msg: str) -> None:
    print(f"[featurelens] {msg}", flush=True)


def summary_table(adata, key: str, n: int = 20) -> pd.DataFrame:
    """The most interpretable features: the best up-regulated GO term of each annotated feature.

    Parameters
    ----------
    adata
        An :class:`~anndata.AnnData` with a dictionary, high-vs-low DGE and enrichment results under ``key``.
    key
        The dictionary's key in ``adata.uns`` (``"sae"`` or ``"icfl"``).
    n
        Number of rows to keep.

    Returns
    -------
    One row per feature with type, group, number of significant terms, the best term by
    ``binomial_up`` adjusted p (MWU when no binomial results exist) and the top up-regulated genes,
    sorted by that adjusted p; empty when no feature has an enriched term.
    """
    import featurelens as fl

    feats = fl.get.features(adata, key)
    res = fl.get.enrichment(adata, key)
    test = "binomial_up" if (res["test"] == "binomial_up").any() else "mwu"
    best = res[res["test"] == test]
    if test == "mwu":
        best = best[best["direction"] == "up"]
    best = best.sort_values("padj").drop_duplicates("feature").set_index("feature")
    dge = fl.get.dge(adata, key)
    dge_group = (
        adata.uns[key]["dge"]["summary"]["group"].astype(str) if "group" in adata.uns[key]["dge"]["summary"] else None
    )
    up = dge[dge["direction"] == "up"].sort_values(["feature", "padj"])
    top_genes = up.groupby("feature", observed=True)["gene"].apply(lambda g: ", ".join(map(str, g.head(8))))
    rows = []
    for f, r in best.iterrows():
        f = str(f)
        rows.append(
            {
                "feature": f,
                "type": str(feats.loc[f, "type"]) if "type" in feats else "",
                "group": _group(feats, dge_group, f),
                "n_terms": int(feats.loc[f, "n_terms"]) if "n_terms" in feats else np.nan,
                "category": str(feats.loc[f, "category"]) if "category" in feats else "",
                "best_term": str(r["name"]),
                "term_id": str(r["term"]),
                "test": test,
                "padj": float(r["padj"]),
                "top_up_genes": top_genes.get(f, ""),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("padj").head(n).reset_index(drop=True)


def _group(feats: pd.DataFrame, dge_group, f: str) -> str:
    """The feature's local group, else the group its high-vs-low contrast was run in."""
    g = feats.loc[f, "group"] if "group" in feats else None
    if g is not None and not pd.isna(g) and str(g) not in ("", "nan"):
        return str(g)
    if dge_group is not None and f in dge_group.index and dge_group[f] not in ("", "nan", "None"):
        return f"({dge_group[f]})"
    return ""


class UsageError(ValueError):
    """A mistake in the command line or in the input data, found before any work starts.

    :func:`main` reports it as one line ``error: <message>`` on stderr and exits with status 2,
    like :meth:`argparse.ArgumentParser.error`.
    """


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UsageError` (one ``error:`` line, status 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help').")


def _names(keys) -> str:
    """``'a', 'b'`` for a list of keys, ``none`` for an empty one."""
    return ", ".join(map(repr, keys)) or "none"


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on a single line, without a leading ``error:``."""
    msg = " ".join(str(err.args[0] if isinstance(err, KeyError) and err.args else err).split())
    return msg.removeprefix("error:").strip() or type(err).__name__


def check_out(out: str | Path) -> Path:
    """Check that the output folder exists and is writable, or can be created; create nothing.

    Parameters
    ----------
    out
        The output folder (``--out``).

    Returns
    -------
    ``out`` as a :class:`~pathlib.Path`.

    Raises
    ------
    UsageError
        If ``out`` is an existing file, is below a file, or its nearest existing folder is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is an existing file, not a folder; pass a new or existing folder.")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"--out {str(out)!r} cannot be created: {str(base)!r} is a file, not a folder.")
    if not os.access(base, os.W_OK | os.X_OK):
        what = "is not writable" if base == out else f"cannot be created: {str(base)!r} is not writable"
        raise UsageError(f"--out {str(out)!r} {what}; pass a folder you can write to.")
    return out


def check_gene_sets(gene_sets) -> pd.DataFrame:
    """Check and read ``--gene-sets``: a bundled GO collection or a readable GMT file.

    Parameters
    ----------
    gene_sets
        ``"GO_BP"``, ``"GO_MF"``, ``"GO_CC"`` (any case) or the path of a ``.gmt`` / ``.gmt.gz`` file.

    Returns
    -------
    The gene sets as returned by :func:`featurelens.io.read_gene_sets`.

    Raises
    ------
    UsageError
        If ``gene_sets`` is neither a bundled name nor an existing, readable GMT file.
    """
    from featurelens.io import read_gene_sets
    from featurelens.io._gmt import BUNDLED

    if not (isinstance(gene_sets, str) and gene_sets.upper() in BUNDLED):
        path = Path(gene_sets)
        if not path.exists():
            raise UsageError(
                f"--gene-sets {str(gene_sets)!r} is neither GO_BP, GO_MF, GO_CC nor an existing GMT file; "
                "pass one of those names or the path of a .gmt file."
            )
        if not path.is_file():
            raise UsageError(f"--gene-sets {str(gene_sets)!r} is a folder; pass the path of a .gmt file.")
    try:
        return read_gene_sets(gene_sets)
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(f"--gene-sets {str(gene_sets)!r} cannot be read as a GMT file: {_one_line(err)}") from err


def read_input(path: str | Path):
    """Read the input h5ad file of ``featurelens run``, with a clear error for anything that is not one.

    Parameters
    ----------
    path
        Path of an ``.h5ad`` file.

    Returns
    -------
    The :class:`~anndata.AnnData` read from ``path``.

    Raises
    ------
    UsageError
        If ``path`` does not exist, is a folder, cannot be read, or is not an h5ad (HDF5) file.
    """
    import anndata as ad
    import h5py

    path = Path(path)
    if not path.exists():
        raise UsageError(f"input file {str(path)!r} does not exist.")
    if path.is_dir():
        raise UsageError(f"input {str(path)!r} is a folder; pass an .h5ad file.")
    if not os.access(path, os.R_OK):
        raise UsageError(f"input file {str(path)!r} is not readable; check its permissions.")
    hint = "pass an .h5ad file written by AnnData (for a table: anndata.read_csv(...).write_h5ad(...))"
    if not h5py.is_hdf5(path):
        raise UsageError(f"input file {str(path)!r} is not an h5ad file (not HDF5); {hint}.")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # whatever fails while reading the user's file is about that file
        raise UsageError(f"input file {str(path)!r} cannot be read as h5ad ({_one_line(err)}); {hint}.") from err


def _check_options(*, out, method: str, n_steps) -> Path:
    """The checks that need no data: method, number of steps and output folder."""
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}.")
    if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1):
        raise UsageError(f"--n-steps must be a positive integer, got {n_steps!r}.")
    return check_out(out)


def _check_embedding(adata, use_rep: str) -> None:
    """``use_rep`` is a 2-D, numeric, finite embedding in ``adata.obsm`` of at least two cells."""
    from featurelens._core import embedding

    if use_rep not in adata.obsm:
        raise UsageError(
            f"--use-rep {use_rep!r} is not in adata.obsm (present: {_names(adata.obsm)}); pass an embedding's key."
        )
    if adata.n_obs < 2:
        raise UsageError(f"the input has {adata.n_obs} cell(s); learning a dictionary needs at least 2.")
    try:
        embedding(adata, use_rep)
    except ValueError as err:
        raise UsageError(f"--use-rep {use_rep!r}: {_one_line(err)}") from err


def validate_inputs(
    adata,
    *,
    use_rep: str,
    out: str | Path,
    method: str = "sae",
    groupby: str | None = None,
    gene_sets: str = "GO_BP",
    gene_symbols: str | None = None,
    layer: str | None = None,
    n_steps: int | None = None,
) -> None:
    """Check every option of :func:`run_pipeline` against ``adata``; nothing is trained or written.

    Parameters
    ----------
    adata
        The :class:`~anndata.AnnData` to analyse.
    use_rep, out, method, groupby, gene_sets, gene_symbols, layer, n_steps
        As in :func:`run_pipeline`.

    Raises
    ------
    UsageError
        For the first problem found, e.g. an embedding that is not in ``adata.obsm``, a column that is not in
        ``adata.obs`` / ``adata.var``, a missing layer, unreadable gene sets or gene sets that share too few
        genes with the data, a non-positive ``n_steps`` or an output folder that cannot be written.
    """
    from featurelens._core import group_codes
    from featurelens.tl._enrich import _universe, gene_set_membership

    _check_options(out=out, method=method, n_steps=n_steps)
    _check_embedding(adata, use_rep)
    if groupby is not None:
        if groupby not in adata.obs:
            raise UsageError(f"--groupby {groupby!r} is not a column of adata.obs (columns: {_names(adata.obs)}).")
        try:
            group_codes(adata, groupby)
        except ValueError as err:
            raise UsageError(f"--groupby {groupby!r}: {_one_line(err)}") from err
    if gene_symbols is not None and gene_symbols not in adata.var:
        cols = _names(adata.var)
        raise UsageError(f"--gene-symbols {gene_symbols!r} is not a column of adata.var (columns: {cols}).")
    if layer is not None and layer not in adata.layers:
        have = _names(adata.layers)
        raise UsageError(f"--layer {layer!r} is not in adata.layers (present: {have}); omit it to use adata.X.")
    if layer is None and adata.X is None:
        raise UsageError("adata.X is empty; pass --layer with the expression values.")
    sets = check_gene_sets(gene_sets)
    try:
        gene_set_membership(sets, _universe(adata, layer, gene_symbols)[1])
    except ValueError as err:
        msg = _one_line(err).replace("pass `gene_symbols=`", "pass --gene-symbols")
        raise UsageError(f"--gene-sets {str(gene_sets)!r} does not fit the data: {msg}") from err


def run_pipeline(
    adata,
    *,
    use_rep: str,
    out: Path,
    method: str = "sae",
    groupby: str | None = None,
    gene_sets: str = "GO_BP",
    gene_symbols: str | None = None,
    layer: str | None = None,
    n_steps: int | None = None,
    progress: bool = True,
    name: str = "featurelens",
) -> pd.DataFrame:
    """Dictionary, feature types, high-vs-low DGE, enrichment, concept space; writes h5ad, plots and a summary.

    Every option is checked first (:func:`validate_inputs`); the output folder is created only when all
    checks pass.

    Parameters
    ----------
    adata
        Log-normalised expression with an embedding in ``adata.obsm``; annotated in place.
    use_rep
        Key of the embedding in ``adata.obsm``.
    out
        Output folder, created if needed.
    method
        ``"sae"`` or ``"icfl"``.
    groupby
        Optional ``adata.obs`` column with cell types (feature types, DGE within group).
    gene_sets
        ``"GO_BP"``, ``"GO_MF"``, ``"GO_CC"`` or the path of a GMT file.
    gene_symbols
        Optional ``adata.var`` column with the gene identifiers used by the gene sets.
    layer
        Optional expression layer (default: ``adata.X``).
    n_steps
        Training steps (default: automatic).
    progress
        Show progress bars.
    name
        Stem of the written h5ad file.

    Returns
    -------
    The :func:`summary_table` of the trained dictionary.

    Raises
    ------
    UsageError
        If an option does not fit ``adata`` (nothing is trained or written then).
    """
    kwargs = {"use_rep": use_rep, "method": method, "groupby": groupby, "gene_sets": gene_sets}
    kwargs |= {"gene_symbols": gene_symbols, "layer": layer, "n_steps": n_steps}
    validate_inputs(adata, out=out, **kwargs)
    return _work(adata, out=Path(out), progress=progress, name=name, **kwargs)


def _work(adata, *, use_rep, out: Path, method, groupby, gene_sets, gene_symbols, layer, n_steps, progress, name):
    """The pipeline itself, on validated inputs."""
    import featurelens as fl

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {str(out)!r} cannot be created: {_one_line(err)}") from err
    t0 = time.perf_counter()
    key = method
    _say(
        f"training a {method.upper()} dictionary on {use_rep} ({adata.n_obs:,} cells x {adata.obsm[use_rep].shape[1]})"
    )
    train = fl.tl.sae if method == "sae" else fl.tl.icfl
    train(adata, use_rep, n_steps=n_steps, progress=progress)
    fl.tl.feature_stats(adata, key)
    if groupby is not None:
        _say(f"feature types by {groupby!r}")
        fl.tl.feature_types(adata, key, groupby)
    _say("high-vs-low differential expression")
    fl.tl.high_vs_low(adata, key, groupby=groupby, layer=layer, progress=progress)
    _say(f"gene-set enrichment ({gene_sets})")
    fl.tl.enrich(adata, key, gene_sets, gene_symbols=gene_symbols, progress=progress)
    try:
        _say("concept space")
        fl.tl.concept_space(adata, key, progress=progress)
        fl.tl.probe_concepts(adata, key, ["virus", "interferon", "ribosom", "cell cycle"])
    except ValueError as err:  # e.g. too few annotated features
        _say(f"concept space skipped: {err}")
    table = summary_table(adata, key)
    table.to_csv(out / "top_features.tsv", sep="\t", index=False)
    h5ad = out / f"{name}.h5ad"
    adata.write_h5ad(h5ad)
    _save_plots(adata, key, table, out, groupby is not None)
    _say(f"done in {time.perf_counter() - t0:.0f} s; wrote {h5ad}, plots and top_features.tsv to {out}")
    return table


def _save_plots(adata, key: str, table: pd.DataFrame, out: Path, feature_types: bool) -> None:
    """Training history, feature types, concept space and the best feature's enrichment and DGE plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import featurelens as fl

    def save(fig, fname):
        fig.savefig(out / fname, dpi=110, bbox_inches="tight")
        plt.close(fig)

    save(fl.pl.history(adata, key, return_fig=True), "training.png")
    if feature_types:
        save(fl.pl.feature_types(adata, key, return_fig=True), "feature_types.png")
    if "concept_space" in adata.uns[key]:
        save(fl.pl.concept_space(adata, key, return_fig=True), "concept_space.png")
    if not table.empty:
        best = table["feature"].iloc[0]
        save(fl.pl.enrichment(adata, key, best, return_fig=True), f"enrichment_{best}.png")
        save(fl.pl.dge(adata, key, best, return_fig=True), f"dge_{best}.png")


def _demo(args) -> int:
    import scanpy as sc

    import featurelens as fl

    _check_options(out=args.out, method=args.method, n_steps=args.n_steps)
    _say("loading the bundled Kang 2018 PBMCs (2,000 cells, CTRL vs interferon-beta STIM)")
    adata = fl.datasets.kang2018()
    _say("normalise, log1p, 2,000 highly variable genes, 30-component PCA")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    sc.pp.pca(adata, n_comps=30, mask_var="highly_variable", random_state=0)
    table = run_pipeline(
        adata,
        use_rep="X_pca",
        out=Path(args.out),
        method=args.method,
        groupby="cell_type",
        gene_sets="GO_BP",
        n_steps=args.n_steps,
        progress=not args.quiet,
        name="kang2018_featurelens",
    )
    _print_table(table)
    return 0


def _run(args) -> int:
    path = Path(args.input)
    # cheap checks first, so a typo is reported before a large file is read
    _check_options(out=args.out, method=args.method, n_steps=args.n_steps)
    check_gene_sets(args.gene_sets)
    adata = read_input(path)
    table = run_pipeline(
        adata,
        use_rep=args.use_rep,
        out=Path(args.out),
        method=args.method,
        groupby=args.groupby,
        gene_sets=args.gene_sets,
        gene_symbols=args.gene_symbols,
        layer=args.layer,
        n_steps=args.n_steps,
        progress=not args.quiet,
        name=path.stem + "_featurelens",
    )
    _print_table(table)
    return 0


def _print_table(table: pd.DataFrame) -> None:
    if table.empty:
        _say("no feature has an enriched term")
        return
    cols = ["feature", "type", "group", "best_term", "padj"]
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(table[cols].head(10).to_string(index=False))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="featurelens", description="Interpretable features in embeddings of single-cell data.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="featurelens_out", help="output folder (default: featurelens_out)")
    common.add_argument("--method", choices=METHODS, default="sae", help="dictionary learner")
    common.add_argument("--n-steps", type=int, default=None, help="training steps, at least 1 (default: automatic)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("demo", parents=[common], help="the whole pipeline on the bundled Kang 2018 PBMCs")
    run = sub.add_parser("run", parents=[common], help="the whole pipeline on an h5ad file")
    run.add_argument("input", help="an .h5ad file with log-normalised expression and an embedding in obsm")
    run.add_argument("--use-rep", required=True, help="obsm key of the embedding, e.g. X_pca")
    run.add_argument("--groupby", default=None, help="obs column with cell types (local features, DGE within group)")
    run.add_argument("--gene-sets", default="GO_BP", help="GO_BP, GO_MF, GO_CC or a .gmt file")
    run.add_argument("--gene-symbols", default=None, help="var column with gene symbols (when var_names are ids)")
    run.add_argument("--layer", default=None, help="expression layer (default: X)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``featurelens`` command.

    Every option and the input are checked before any work; a problem is reported as one line
    ``error: <message>`` on stderr.

    Parameters
    ----------
    argv
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    0 on success, 2 for a usage or input error (as :meth:`argparse.ArgumentParser.error`).
    """
    try:
        args = _parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return _demo(args) if args.command == "demo" else _run(args)
    except (ValueError, KeyError) as err:  # UsageError, or a problem with the data found while working
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
