"""Cell Painting: does whitening on DMSO controls raise selectivity, and how many features die?

Run from the repository root::

    python benchmarks/microscopy.py            # about 3 minutes on 2 cores
    python benchmarks/microscopy.py --seeds 0 1 2 3 4

Prints a Markdown table; the numbers in docs/benchmarks.md come from this script.

Data: one Cell Painting plate (A549, LINCS compounds; 384 wells x 454 normalised CellProfiler
features, 24 DMSO wells), bundled as ``fl.datasets.cellpainting_plate()``. Embedding: a 20-component PCA of the
profiles. For ICFL and a TopK SAE (160 features each, expansion 8, default training length), with and
without whitening on the DMSO wells (``fl.pp.whiten``), and for several seeds, the script reports:

- the number of features whose average selectivity for some mechanism of action (``Metadata_moa``,
  342 annotated wells, 50 MoAs) exceeds 0.2 and 0.5 (the ICFL paper's measure, ``fl.tl.selectivity``),
- the same count above 0.5 with the MoA labels permuted across wells (chance level),
- dead features (never active on the plate) and the fraction of variance unexplained.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd


def run(seeds: list[int]) -> pd.DataFrame:
    import scanpy as sc

    import featurelens as fl

    adata = fl.datasets.cellpainting_plate()  # read with fl.microscopy.read_profiles
    sc.pp.pca(adata, n_comps=20, random_state=0)
    fl.pp.whiten(adata, "X_pca", control_key="Metadata_broad_sample", control_value="DMSO")
    annotated = adata.obs["Metadata_moa"].notna().to_numpy()
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(adata.obs.loc[annotated, "Metadata_moa"].to_numpy())
        for method in ("icfl", "topk"):
            for rep, white in (("X_pca", "none"), ("X_whitened", "DMSO")):
                key = f"{method}_{white}_{seed}"
                t0 = time.perf_counter()
                if method == "icfl":
                    fl.tl.icfl(adata, rep, n_features=160, random_state=seed, key_added=key, progress=False)
                else:
                    fl.tl.sae(adata, rep, n_features=160, random_state=seed, key_added=key, progress=False)
                secs = time.perf_counter() - t0
                sub = adata[annotated].copy()
                sub.obs["shuffled"] = shuffled
                fl.tl.selectivity(sub, key, "Metadata_moa", thresholds=(0.5, 0.2))
                fl.tl.selectivity(sub, key, "shuffled", thresholds=(0.5, 0.2))
                real = fl.get.selectivity(sub, key, "Metadata_moa", kind="summary")["n_average"]
                null = fl.get.selectivity(sub, key, "shuffled", kind="summary")["n_average"]
                active = np.asarray((adata.obsm[f"X_{key}"] != 0).sum(0)).ravel()
                rows.append(
                    {
                        "method": "ICFL" if method == "icfl" else "TopK SAE",
                        "whitening": white,
                        "seed": seed,
                        "sel>0.2": int(real["0.2"]),
                        "sel>0.5": int(real["0.5"]),
                        "sel>0.5 shuffled": int(null["0.5"]),
                        "dead": int((active == 0).sum()),
                        "fvu": float(adata.uns[key]["quality"]["fvu"]),
                        "train_s": secs,
                    }
                )
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    df = run(args.seeds)
    print("\nPer run:\n")
    print(df.to_markdown(index=False, floatfmt=".3f"))
    agg = df.groupby(["method", "whitening"], sort=False).agg(
        {
            "sel>0.2": ["mean", "std"],
            "sel>0.5": ["mean", "std"],
            "sel>0.5 shuffled": "mean",
            "dead": ["mean", "max"],
            "fvu": "mean",
            "train_s": "mean",
        }
    )
    agg.columns = [" ".join(c) for c in agg.columns]
    print(f"\nMean over seeds {args.seeds} (160 features, 384 wells):\n")
    print(agg.reset_index().to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
