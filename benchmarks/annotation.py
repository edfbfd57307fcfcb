"""Speed and memory of the annotation engine (high-vs-low DGE and gene-set enrichment).

Run from the repository root::

    python benchmarks/annotation.py                 # all three (about 10 minutes on 2 cores)
    python benchmarks/annotation.py --only reference scale dge

Prints Markdown tables; the numbers in docs/benchmarks.md come from this script.

1. ``reference``: the per-feature loop of the paper's tool (``scipy.stats.ttest_ind`` over genes,
   then ``binomtest`` and ``mannwhitneyu`` for every term) against featurelens on identical
   inputs (Kang 2018, an SAE on the HVG PCA, GO BP terms of 20-500 measured genes): agreement
   of the p-values and the time per feature.
2. ``scale``: enrichment of 10,000 features x GO BP terms (5-500 genes) x 13,000 genes
   (binomial up/down/both + Mann-Whitney U) on synthetic fold changes: wall time and peak
   memory (run in a child process).
3. ``dge``: ``fl.tl.high_vs_low`` for 2,000 features on 50,000 cells x 13,215 genes (Kang
   tiled 25 times with noise on the expression values).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp


def kang():
    import scanpy as sc

    import featurelens as fl

    adata = fl.datasets.kang2018()  # the bundled 2,000 PBMCs (counts)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


# --------------------------------------------------------------------------- 1. reference loop
def bench_reference(n_ref: int) -> list[str]:
    import scanpy as sc
    import scipy.stats as ss
    from statsmodels.stats.multitest import multipletests

    import featurelens as fl
    from featurelens.tl._enrich import _universe, gene_set_membership

    adata = kang()
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    sc.pp.pca(adata, n_comps=30, mask_var="highly_variable", random_state=0)
    fl.tl.sae(adata, "X_pca", progress=False)
    fl.datasets.go_gene_sets("BP")  # file reading is not part of the per-feature work
    t0 = time.perf_counter()
    fl.tl.high_vs_low(adata, "sae", progress=False)
    t_dge = time.perf_counter() - t0
    t0 = time.perf_counter()
    fl.tl.enrich(adata, "sae", "GO_BP", progress=False)
    t_enr = time.perf_counter() - t0
    summ = adata.uns["sae"]["dge"]["summary"]
    tested = summ.index[summ["skipped"] == ""]
    ours_per_feature = (t_dge + t_enr) / len(tested)

    measured, ids = _universe(adata, None, None)
    M, terms = gene_set_membership("GO_BP", ids, min_size=20, max_size=500)
    X = adata.X.tocsr()
    high_cells = adata.uns["sae"]["dge"]["high_cells"]
    res = adata.uns["sae"]["enrichment"]["results"]
    dmax = {"t-test p": 0.0, "binomial p": 0.0, "MWU p": 0.0}
    t_ref = []
    rng_feats = [f for f in tested[:n_ref]]
    for name in rng_feats:
        i = list(summ.index).index(name)
        f = int(name[1:])
        t0 = time.perf_counter()
        # --- the reference loop for one feature
        high = high_cells[i].indices
        z = adata.obsm["X_sae"][:, f].toarray().ravel()
        zero = np.flatnonzero(z == 0)
        low = np.sort(np.random.default_rng([0, f]).choice(zero, 1000, replace=False)) if zero.size > 1000 else zero
        Xh = X[high].toarray().astype(np.float64)
        Xl = X[low].toarray().astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tt = ss.ttest_ind(Xh, Xl, equal_var=False)
        ok = ~np.isnan(tt.pvalue)
        padj = np.ones_like(tt.pvalue)
        padj[ok] = multipletests(tt.pvalue[ok], method="fdr_bh")[1]
        lfc = np.log2((np.expm1(Xh).mean(0) + 1e-9) / (np.expm1(Xl).mean(0) + 1e-9))[measured]
        # identical inputs for the rank test: the fold changes as stored (float32) by featurelens
        lfc_stored = adata.varm["sae_log2fc"][measured, f].astype(np.float64)
        padj = padj[measured]
        up = (padj < 1e-5) & (lfc >= 1)
        if not (up | ((padj < 1e-5) & (lfc <= -1))).any():
            up = (padj < 0.05) & (lfc > 0)
        n_up = int(up.sum())
        p_binom, p_mwu = [], []
        for j in range(M.shape[1]):
            inside = np.zeros(len(ids), bool)
            inside[M[:, j].indices] = True
            k = int((inside & up).sum())
            p_binom.append(ss.binomtest(k, n_up, inside.sum() / len(ids), alternative="greater").pvalue)
            p_mwu.append(ss.mannwhitneyu(lfc_stored[inside], lfc_stored[~inside], method="asymptotic").pvalue)
        t_ref.append(time.perf_counter() - t0)
        # --- agreement with featurelens
        ours = fl.get.dge(adata, "sae", name).set_index("gene")
        g = adata.var_names.get_indexer(ours.index)
        dmax["t-test p"] = max(dmax["t-test p"], float(np.max(np.abs(ours["pval"] / tt.pvalue[g] - 1))))
        term_pos = {t: j for j, t in enumerate(terms["term"])}
        for test, ref in (("binomial_up", p_binom), ("mwu", p_mwu)):
            rows = res[(res["feature"] == name) & (res["test"] == test)]
            if len(rows):
                r = np.asarray(ref)[[term_pos[t] for t in rows["term"].astype(str)]]
                key = "binomial p" if test.startswith("binomial") else "MWU p"
                dmax[key] = max(dmax[key], float(np.max(np.abs(rows["pval"].to_numpy() / r - 1))))
    ref_per_feature = float(np.mean(t_ref))
    return [
        f"| reference loop vs featurelens (Kang 2018, {len(tested)} features, {M.shape[1]} GO BP terms, "
        f"{len(ids)} genes) | seconds per feature |",
        "|---|---:|",
        f"| reference: scipy ttest_ind + binomtest + mannwhitneyu per term (mean of {len(t_ref)} features) "
        f"| {ref_per_feature:.2f} |",
        f"| featurelens: high_vs_low ({t_dge:.1f} s) + enrich ({t_enr:.1f} s) over all features | "
        f"{ours_per_feature:.4f} |",
        f"| **speed-up** | **{ref_per_feature / ours_per_feature:.0f}x** |",
        "",
        "Largest relative difference of the p-values (featurelens vs reference): "
        + ", ".join(f"{k} {v:.1e}" for k, v in dmax.items()),
    ]


# --------------------------------------------------------------------------- 2. scale (child process)
def _scale_child(n_features: int, n_genes: int) -> dict:
    import resource

    import anndata as ad

    import featurelens as fl

    go = fl.datasets.go_gene_sets("BP")
    counts = go["gene"].value_counts()
    genes = counts.index[:n_genes].astype(str)
    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(np.ones((2, n_genes), dtype=np.float32)))
    adata.var_names = genes
    lfc = rng.normal(0, 0.5, size=(n_genes, n_features)).astype(np.float32)
    # DEGs: about 150 per feature, with large fold changes
    n_deg = 150
    rows = np.repeat(np.arange(n_features), n_deg)
    cols = np.concatenate([rng.choice(n_genes, n_deg, replace=False) for _ in range(n_features)])
    sign = rng.choice([-1.0, 1.0], rows.size)
    lfc[cols, rows] = sign * rng.uniform(1.5, 4, rows.size)
    names = np.asarray([f"f{i}" for i in range(n_features)])
    results = pd.DataFrame(
        {
            "feature": pd.Categorical(names[rows]),
            "gene": pd.Categorical(genes[cols]),
            "log2fc": lfc[cols, rows],
            "padj": rng.uniform(0, 1e-6, rows.size),
        }
    )
    adata.varm["bench_log2fc"] = lfc
    summary = pd.DataFrame({"skipped": [""] * n_features}, index=names)
    adata.uns["bench"] = {
        "params": {"method": "sae", "architecture": "topk", "k": 1, "use_rep": "X"},
        "decoder": np.zeros((n_features, 1), np.float32),
        "features": pd.DataFrame(index=names),
        "dge": {"summary": summary, "results": results, "params": {"layer": None, "store_pval": 0.05}},
    }
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fl.tl.enrich(adata, "bench", "GO_BP", min_size=5, max_size=500, progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p = adata.uns["bench"]["enrichment"]["params"]
    return {
        "seconds": seconds,
        "peak_gb": peak / 1024**2,
        "before_gb": base / 1024**2,
        "n_terms": p["n_terms"],
        "n_genes": p["n_universe"],
        "rows": len(adata.uns["bench"]["enrichment"]["results"]),
    }


def bench_scale(n_features: int, n_genes: int) -> list[str]:
    out = subprocess.run(
        [sys.executable, __file__, "--child-scale", str(n_features), str(n_genes)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return [
        "| enrichment at scale (binomial up/down/both + MWU) | value |",
        "|---|---:|",
        f"| features x terms x genes | {n_features:,} x {r['n_terms']:,} x {r['n_genes']:,} |",
        f"| wall time | {r['seconds']:.1f} s |",
        f"| peak resident memory of the process | {r['peak_gb']:.2f} GB "
        f"(of which {r['before_gb']:.2f} GB before the call) |",
        f"| result rows (p < 0.05) | {r['rows']:,} |",
    ]


# --------------------------------------------------------------------------- 3. DGE at scale
def bench_dge(n_features: int, tiles: int) -> list[str]:
    import anndata as ad

    import featurelens as fl

    base = kang()
    rng = np.random.default_rng(0)
    blocks = []
    for _ in range(tiles):
        b = base.X.tocsr().copy()
        b.data = np.maximum(b.data * rng.normal(1.0, 0.05, b.data.size).astype(np.float32), 1e-3)
        blocks.append(b)
    X = sp.vstack(blocks, format="csr")
    n = X.shape[0]
    adata = ad.AnnData(X)
    adata.var_names = base.var_names
    adata.uns["log1p"] = {"base": None}
    # activations: each feature active in 2-8% of cells
    dens = rng.uniform(0.02, 0.08, n_features)
    cols, rows, vals = [], [], []
    for f in range(n_features):
        cells = rng.choice(n, int(dens[f] * n), replace=False)
        rows.append(cells)
        cols.append(np.full(cells.size, f))
        vals.append(rng.exponential(1.0, cells.size).astype(np.float32))
    Z = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n_features))
    adata.obsm["X_bench"] = Z
    adata.uns["bench"] = {
        "params": {"method": "sae", "architecture": "topk", "k": 1, "use_rep": "X"},
        "decoder": np.zeros((n_features, 1), np.float32),
        "features": pd.DataFrame(index=[f"f{i}" for i in range(n_features)]),
    }
    fl.tl.high_vs_low(adata, "bench", features=[0], progress=False)  # compile kernels
    t0 = time.perf_counter()
    fl.tl.high_vs_low(adata, "bench", progress=False)
    seconds = time.perf_counter() - t0
    s = adata.uns["bench"]["dge"]["summary"]
    return [
        "| high_vs_low at scale | value |",
        "|---|---:|",
        f"| features x cells x genes | {n_features:,} x {n:,} x {X.shape[1]:,} ({X.nnz / n:.0f} non-zeros per cell) |",
        f"| high / low cells per feature (median) | {int(s['n_high'].median())} / {int(s['n_low'].median())} |",
        f"| wall time | {seconds:.1f} s |",
    ]


def main() -> None:
    warnings.filterwarnings("ignore")
    if len(sys.argv) > 1 and sys.argv[1] == "--child-scale":
        print(json.dumps(_scale_child(int(sys.argv[2]), int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="*", default=["reference", "scale", "dge"], choices=["reference", "scale", "dge"]
    )
    parser.add_argument("--n-reference", type=int, default=3, help="features run through the reference loop")
    parser.add_argument("--scale-features", type=int, default=10000)
    parser.add_argument("--scale-genes", type=int, default=13000)
    parser.add_argument("--dge-features", type=int, default=2000)
    parser.add_argument("--dge-tiles", type=int, default=25)
    args = parser.parse_args()
    if "reference" in args.only:
        print("\n".join(bench_reference(args.n_reference)), "\n", flush=True)
    if "scale" in args.only:
        print("\n".join(bench_scale(args.scale_features, args.scale_genes)), "\n", flush=True)
    if "dge" in args.only:
        print("\n".join(bench_dge(args.dge_features, args.dge_tiles)), "\n", flush=True)


if __name__ == "__main__":
    main()
