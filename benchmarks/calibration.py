"""Calibration of the feature statistics on the bundled Kang 2018 data (prints tables; see docs/benchmarks.md).

1. Null: "features" active in random cells (no biology): DEGs at padj < 0.05 per method and high-set size.
2. Power: the real SAE with ``groupby="cell_type"``: interferon features, ISGs among their top up genes and a
   virus / type I interferon GO term with padj < 1e-6 among their top 5 up terms.
3. Fold changes: the largest stored |log2FC|.
4. Steering with the linear decoder: p-values of the old default test, and the top genes by the default ranking
   and by log2FC with their decoder R².
5. Steering with an scVI decoder (``fl.tl.train_scvi`` on the counts of the 2,000 highly variable genes, an SAE
   on its latent space): training time, ISGs among the top 50 up genes and the spread of the posterior p-values.

    python benchmarks/calibration.py [--n-null 50] [--sizes 10 20 50 200] [--scvi-epochs 200]
"""

from __future__ import annotations

import argparse
import re
import time
import warnings

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

import featurelens as fl

METHODS = ("t-test_overestim_var", "t-test", "wilcoxon")
ISGS = {
    "ISG15", "IFI6", "IFIT3", "MX1", "LY6E", "IFIT1", "IFIT2", "ISG20", "IFITM3", "IFI27", "MX2", "OAS1", "CXCL10",
    "CXCL11", "CCL8", "CCL2", "GBP1", "APOBEC3A", "RSAD2", "HERPUD1",
}  # fmt: skip
INTERFERON = re.compile(r"virus|viral|type I interferon|interferon-alpha|interferon-beta", re.IGNORECASE)


def null_dictionary(adata, size: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    Z = np.zeros((adata.n_obs, n), np.float32)
    for j in range(n):
        Z[rng.choice(adata.n_obs, size, replace=False), j] = rng.uniform(0.5, 1.5, size)
    out = adata.copy()
    out.obsm["X_null"] = sp.csr_matrix(Z)
    out.uns["null"] = {
        "params": {"method": "sae", "architecture": "topk", "use_rep": "X_pca", "n_inputs": 30, "n_features": n},
        "decoder": np.zeros((n, 30), np.float32),
        "features": pd.DataFrame(index=[f"f{i}" for i in range(n)]),
        "preprocess": {"normalize": "none", "mean": np.zeros(30), "scale": np.ones(30), "unit_norm": False},
    }
    return out


def null_table(adata, sizes, n_null: int) -> pd.DataFrame:
    rows = []
    for size in sizes:
        data = null_dictionary(adata, size, n_null, seed=size)
        for method in METHODS:
            t0 = time.perf_counter()
            fl.tl.high_vs_low(data, "null", method=method, high_quantile=1e-9, min_high=min(size, 30), progress=False)
            summ = data.uns["null"]["dge"]["summary"]
            degs = summ["n_up"] + summ["n_down"]
            rows.append(
                {
                    "high cells": size,
                    "method": method,
                    "median DEGs": float(np.median(degs)),
                    "features with a DEG": f"{(degs > 0).mean():.0%}",
                    "max DEGs": int(degs.max()),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
    return pd.DataFrame(rows)


def interferon_features(adata, key="sae"):
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


def power_table(adata) -> tuple[pd.DataFrame, dict]:
    rows, kept = [], {}
    for method in METHODS:
        data = adata.copy()
        fl.tl.high_vs_low(data, "sae", groupby="cell_type", method=method, progress=False)
        fl.tl.enrich(data, "sae", "GO_BP", progress=False)
        feats = interferon_features(data)
        dge = fl.get.dge(data, "sae")
        isg = []
        for f in feats:
            up = dge[(dge["feature"] == f) & (dge["direction"] == "up")].nsmallest(30, "padj")
            isg.append(len(set(up["gene"].astype(str)) & ISGS))
        summ = data.uns["sae"]["dge"]["summary"]
        rows.append(
            {
                "method": method,
                "features tested": int((summ["skipped"] == "").sum()),
                "interferon features": len(feats),
                "ISGs in their top 30 up (median)": float(np.median(isg)) if isg else 0.0,
                "max |log2FC|": round(float(np.nanmax(np.abs(data.varm["sae_log2fc"]))), 2),
            }
        )
        kept[method] = data
    return pd.DataFrame(rows), kept


def steering_table(data) -> pd.DataFrame:
    """The interferon feature of STIM CD14 Mono steered in CTRL CD14 Mono with the linear decoder."""
    Z = data.obsm["X_sae"]
    mono = (data.obs["cell_type"] == "CD14 Mono").to_numpy()
    stim = (data.obs["condition"] == "STIM").to_numpy()
    diff = np.asarray(Z[mono & stim].mean(0)).ravel() - np.asarray(Z[mono & ~stim].mean(0)).ravel()
    f = str(data.uns["sae"]["features"].index[int(np.argmax(diff))])
    rows = []
    for method in ("effect", "t-test"):
        fl.tl.steer(data, "sae", f, groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'",
                    method=method, key_added=method, progress=False)  # fmt: skip
        res = fl.get.steering(data, "sae", method)
        up = res[res["direction"] == "up"]
        for order, top in (("default ranking", up.head(20)), ("log2FC", res.nlargest(20, "log2fc"))):
            rows.append(
                {
                    "method": method,
                    "top 20 up by": order,
                    "ISGs": len(set(top["gene"].astype(str)) & ISGS),
                    "min decoder R²": round(float(top["r2"].min()), 3),
                    "genes with padj = 0": int((res["padj"] == 0).sum()),
                    "first genes": ", ".join(top["gene"].astype(str)[:6]),
                }
            )
    return pd.DataFrame(rows)


def _ifn_feature(data, key="sae") -> tuple[str, float]:
    """The feature most specific to STIM CD14 Mono and its mean activation there."""
    Z = data.obsm[f"X_{key}"]
    Z = Z.toarray() if sp.issparse(Z) else np.asarray(Z)
    mono = (data.obs["cell_type"] == "CD14 Mono").to_numpy()
    stim = (data.obs["condition"] == "STIM").to_numpy()
    i = int(np.argmax(Z[mono & stim].mean(0) - Z[mono & ~stim].mean(0)))
    return str(data.uns[key]["features"].index[i]), float(Z[mono & stim, i].mean())


def _observed_contrast(data) -> tuple[np.ndarray, np.ndarray]:
    """Observed mean expression per 10,000 counts of CTRL CD14 Mono, and log2FC STIM vs CTRL (pseudocount 1)."""
    C = sp.csr_matrix(data.layers["counts"], dtype=np.float64)
    C = sp.diags(1e4 / np.maximum(np.asarray(C.sum(1)).ravel(), 1)) @ C
    mono = (data.obs["cell_type"] == "CD14 Mono").to_numpy()
    stim = (data.obs["condition"] == "STIM").to_numpy()
    e1, e0 = (np.asarray(C[mono & m].mean(0)).ravel() for m in (stim, ~stim))
    return e0, np.log2(e1 + 1) - np.log2(e0 + 1)


def scvi_table(epochs: int, likelihood: str = "nb") -> pd.DataFrame:
    """Steering the interferon feature of an SAE on the scVI latent, with the scVI and the linear decoder."""
    pre = fl.datasets.kang2018(preprocess=True)
    data = fl.datasets.kang2018()[:, pre.var_names[pre.var["highly_variable"]]].copy()
    data.layers["counts"] = data.X.copy()
    sc.pp.normalize_total(data, target_sum=1e4)
    sc.pp.log1p(data)
    t0 = time.perf_counter()
    model = fl.tl.train_scvi(data, n_latent=10, max_epochs=epochs, batch_size=256, gene_likelihood=likelihood,
                             progress=False)  # fmt: skip
    t_train = time.perf_counter() - t0
    fl.tl.sae(data, "X_scVI", progress=False)
    f, v = _ifn_feature(data)
    e0, lfc_obs = _observed_contrast(data)
    changed_obs = float((np.abs(lfc_obs) > 0.25).mean())
    rows = []
    for decoder in ("scvi", "linear"):
        t0 = time.perf_counter()
        fl.tl.steer(data, "sae", f, groupby="cell_type", group="CD14 Mono", cells="condition == 'CTRL'", value=v,
                    decoder=decoder, scvi_model=model if decoder == "scvi" else None, key_added=decoder,
                    progress=False)  # fmt: skip
        res = fl.get.steering(data, "sae", decoder)
        up = res[res["direction"] == "up"].head(50)
        by_gene = res.set_index("gene").loc[data.var_names]
        rows.append(
            {
                "decoder": decoder,
                "scVI training (s)": round(t_train, 1) if decoder == "scvi" else None,
                "steering (s)": round(time.perf_counter() - t0, 1),
                "ISGs in top 50 up": len(set(up["gene"].astype(str)) & ISGS),
                "genes with p = 0": int((res["pval"] == 0).sum()),
                "p-value quartiles": " / ".join(f"{q:.3g}" for q in np.nanpercentile(res["pval"], [25, 50, 75]))
                if res["pval"].notna().any() else "-",
                "padj < 0.05": int((res["padj"] < 0.05).sum()),
                "|LFC| > 0.25 (observed)": f"{(by_gene['log2fc'].abs() > 0.25).mean():.0%} ({changed_obs:.0%})",
                "mean / observed (median)": round(float(np.median(by_gene["mean_original"] / np.maximum(e0, 1e-3))), 2)
                if decoder == "scvi" else None,
                "first genes": ", ".join(up["gene"].astype(str)[:8]),
            }
        )
    print(f"(scVI: {likelihood}, {epochs} epochs, n_latent 10, 2,000 HVGs; SAE on X_scVI, feature {f} set to {v:.3g})")
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-null", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50, 200])
    parser.add_argument("--scvi-epochs", type=int, default=200)
    parser.add_argument("--scvi-likelihood", default="nb", choices=["nb", "zinb"])
    parser.add_argument("--only-scvi", action="store_true", help="run only the scVI steering table")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    adata = fl.datasets.kang2018(preprocess=True)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 80):
        if args.only_scvi:
            print(scvi_table(args.scvi_epochs, args.scvi_likelihood).to_string(index=False))
            return
        print(f"## Null: {args.n_null} features of random cells per size (bundled Kang, 2,000 cells x 13,215 genes)")
        print(null_table(adata, args.sizes, args.n_null).to_string(index=False))
        fl.tl.sae(adata, "X_pca", progress=False)
        fl.tl.feature_types(adata, "sae", "cell_type")
        print("\n## Power: the default TopK SAE, within-cell-type contrasts")
        table, kept = power_table(adata)
        print(table.to_string(index=False))
        print("\n## Steering the STIM CD14 Mono feature in CTRL CD14 Mono (linear decoder)")
        print(steering_table(kept["t-test_overestim_var"]).to_string(index=False))
        print("\n## Steering with the scVI decoder (posterior samples) and the linear decoder, SAE on the scVI latent")
        print(scvi_table(args.scvi_epochs, args.scvi_likelihood).to_string(index=False))


if __name__ == "__main__":
    main()
