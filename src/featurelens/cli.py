"""The ``featurelens`` command: the whole pipeline on the bundled Kang 2018 data or on a user's h5ad file."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def _say(msg: str) -> None:
    print(f"[featurelens] {msg}", flush=True)


def summary_table(adata, key: str, n: int = 20) -> pd.DataFrame:
    """The most interpretable features: the best up-regulated GO term of each annotated feature.

    One row per feature with type, group, number of significant terms, the best term by
    ``binomial_up`` adjusted p (MWU when no binomial results exist) and the top up-regulated genes,
    sorted by that adjusted p.
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
    """Dictionary, feature types, high-vs-low DGE, enrichment, concept space; writes h5ad, plots and a summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import featurelens as fl

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if use_rep not in adata.obsm:
        have = ", ".join(map(repr, adata.obsm.keys())) or "nothing"
        raise SystemExit(f"error: --use-rep {use_rep!r} is not in adata.obsm (present: {have}).")
    if groupby is not None and groupby not in adata.obs:
        raise SystemExit(f"error: --groupby {groupby!r} is not a column of adata.obs (columns: {list(adata.obs)}).")
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
        fl.tl.concept_space(adata, key)
        fl.tl.probe_concepts(adata, key, ["virus", "interferon", "ribosom", "cell cycle"])
    except ValueError as err:  # e.g. too few annotated features
        _say(f"concept space skipped: {err}")
    table = summary_table(adata, key)
    table.to_csv(out / "top_features.tsv", sep="\t", index=False)
    h5ad = out / f"{name}.h5ad"
    adata.write_h5ad(h5ad)

    def save(fig, fname):
        fig.savefig(out / fname, dpi=110, bbox_inches="tight")
        plt.close(fig)

    save(fl.pl.history(adata, key, return_fig=True), "training.png")
    if groupby is not None:
        save(fl.pl.feature_types(adata, key, return_fig=True), "feature_types.png")
    if "concept_space" in adata.uns[key]:
        save(fl.pl.concept_space(adata, key, return_fig=True), "concept_space.png")
    if not table.empty:
        best = table["feature"].iloc[0]
        save(fl.pl.enrichment(adata, key, best, return_fig=True), f"enrichment_{best}.png")
        save(fl.pl.dge(adata, key, best, return_fig=True), f"dge_{best}.png")
    _say(f"done in {time.perf_counter() - t0:.0f} s; wrote {h5ad}, plots and top_features.tsv to {out}")
    return table


def _demo(args) -> int:
    import scanpy as sc

    import featurelens as fl

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
    import anndata as ad

    path = Path(args.input)
    if not path.exists():
        raise SystemExit(f"error: input file {path} does not exist.")
    adata = ad.read_h5ad(path)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``featurelens`` command."""
    parser = argparse.ArgumentParser(
        prog="featurelens", description="Interpretable features in embeddings of single-cell data."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="featurelens_out", help="output folder (default: featurelens_out)")
    common.add_argument("--method", choices=("sae", "icfl"), default="sae", help="dictionary learner")
    common.add_argument("--n-steps", type=int, default=None, help="training steps (default: automatic)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("demo", parents=[common], help="the whole pipeline on the bundled Kang 2018 PBMCs")
    run = sub.add_parser("run", parents=[common], help="the whole pipeline on an h5ad file")
    run.add_argument("input", help="an .h5ad file with log-normalised expression and an embedding in obsm")
    run.add_argument("--use-rep", required=True, help="obsm key of the embedding, e.g. X_pca")
    run.add_argument("--groupby", default=None, help="obs column with cell types (local features, DGE within group)")
    run.add_argument("--gene-sets", default="GO_BP", help="GO_BP, GO_MF, GO_CC or a .gmt file")
    run.add_argument("--gene-symbols", default=None, help="var column with gene symbols (when var_names are ids)")
    run.add_argument("--layer", default=None, help="expression layer (default: X)")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return _demo(args) if args.command == "demo" else _run(args)
        except (ValueError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
