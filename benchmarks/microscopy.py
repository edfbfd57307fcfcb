"""Cell Painting: does whitening on DMSO controls raise selectivity, and how many features die?

Run from the repository root::

    python benchmarks/microscopy.py            # seeds 0-4, about 4 minutes on 2 cores
    python benchmarks/microscopy.py --seeds 0 1 2

Prints a Markdown table; the numbers in docs/benchmarks.md come from this script.

Data: one Cell Painting plate (A549, LINCS compounds; 384 wells x 454 normalised CellProfiler
features, 24 DMSO wells), bundled as ``fl.datasets.cellpainting_plate()``. Embedding: a 20-component PCA of the
profiles. For ICFL and a TopK SAE (160 features each, expansion 8, default training length), without
whitening and with whitening on the DMSO wells (``fl.pp.whiten``) using three estimates of the 20 x 20
control covariance (empirical, ``shrinkage=None``; Ledoit-Wolf; OAS), and for several seeds, the script
reports:

- the number of features whose average selectivity for some mechanism of action (``Metadata_moa``,
  342 annotated wells, 50 MoAs) exceeds 0.2 and 0.5 (the ICFL paper's measure, ``fl.tl.selectivity``),
- the same count above 0.5 with the MoA labels permuted across wells (chance level),
- dead features (never active on the plate) and the fraction of variance unexplained.

The selectivity counts are given as mean ± sd over seeds (the whitening itself does not depend on the
seed; the seed sets the dictionary's initialisation and batches and the permutation of the labels).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

#: whitening on the DMSO wells: label -> ``shrinkage=`` of fl.pp.whiten (the covariance estimator)
WHITENINGS = {"empirical": None, "Ledoit-Wolf": "ledoit-wolf", "OAS": "oas"}


def _whiten(adata, fl) -> dict[str, str]:
    """Whiten X_pca on the DMSO wells with every estimator; returns label -> obsm key ("none": X_pca)."""
    reps = {"none": "X_pca"}
    for label, shrinkage in WHITENINGS.items():
        key = f"white_{label.lower().replace('-', '_')}"
        fl.pp.whiten(
            adata, "X_pca", control_key="Metadata_broad_sample", control_value="DMSO", shrinkage=shrinkage,
            key_added=key,
        )  # fmt: skip
        p = adata.uns[key]["params"]
        print(
            f"whitening {label}: {p['n_controls']} DMSO wells, covariance {p['covariance']}, "
            f"shrinkage intensity {p['shrinkage_intensity']:.3f}",
            flush=True,
        )
        reps[label] = f"X_{key}"
    return reps


def run(seeds: list[int]) -> pd.DataFrame:
    import scanpy as sc

    import featurelens as fl

    adata = fl.datasets.cellpainting_plate()  # read with fl.microscopy.read_profiles
    sc.pp.pca(adata, n_comps=20, random_state=0)
    reps = _whiten(adata, fl)
    annotated = adata.obs["Metadata_moa"].notna().to_numpy()
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(adata.obs.loc[annotated, "Metadata_moa"].to_numpy())
        for method in ("icfl", "topk"):
            for white, rep in reps.items():
                key = f"{method}_{white.lower().replace('-', '_')}_{seed}"
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
                        "sel>0.5": int(real["0.5"]),
                        "sel>0.5 shuffled": int(null["0.5"]),
                        "sel>0.2": int(real["0.2"]),
                        "dead": int((active == 0).sum()),
                        "fvu": float(adata.uns[key]["quality"]["fvu"]),
                        "train_s": secs,
                    }
                )
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per learner and whitening: counts as "mean ± sd" over seeds, dead as "mean, max"."""
    out = []
    for (method, white), g in df.groupby(["method", "whitening"], sort=False):
        row = {"method": method, "whitening": white}
        for col in ("sel>0.5", "sel>0.5 shuffled", "sel>0.2"):
            row[f"{col} (mean ± sd)"] = f"{g[col].mean():.1f} ± {g[col].std():.1f}"
        row["dead (mean, max)"] = f"{g['dead'].mean():.1f}, {g['dead'].max()}"
        row["FVU"] = f"{g['fvu'].mean():.3f}"
        row["train (s)"] = f"{g['train_s'].mean():.1f}"
        out.append(row)
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A Markdown table (text left-aligned, numbers right-aligned) without optional dependencies."""
    cells = [[format(v, floatfmt) if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(False)]
    numeric = [all(c[:1].isdigit() or c[:1] == "-" for c in col) for col in zip(*cells, strict=True)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |"]
    lines.append("|" + "|".join("---:" if num else ":---" for num in numeric) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    df = run(args.seeds)
    print("\nPer run:\n")
    print(markdown(df))
    print(f"\nOver seeds {args.seeds} (160 features, 384 wells):\n")
    print(markdown(summary(df)))


if __name__ == "__main__":
    main()
