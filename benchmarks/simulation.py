"""Recovery of known generative variables on the simulation (the SAE paper's Table S5 at reduced size).

Run from the repository root::

    python benchmarks/simulation.py                       # about 5 minutes on 2 cores
    python benchmarks/simulation.py --n-obs 50000 --n-genes 5000

Prints Markdown tables; the numbers in docs/benchmarks.md come from this script.

Steps: ``fl.datasets.simulate("large")`` at reduced size (100 programs, 40 cell types, 3 batches as in
the paper; fewer cells and genes); an MLP autoencoder (``fl.tl.autoencoder``, 50 latent dimensions,
early stopping on the validation split) gives the embedding; a ReLU SAE with 8x expansion is trained on
it; PCA, ICA and truncated SVD with 50 components of the log1p observables are the baselines. For every
method ``fl.tl.variable_recovery`` gives the mean over a variable's dimensions of the best correlation
of any single feature (Table S5); ``fl.tl.superposition`` gives the linear decodability of each
variable from the AE embedding (Fig. 1C); ``fl.tl.structure_recovery`` the fraction of the
gene-program connectivity recovered from the SAE features.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

VARIABLES = {"X": "observables", "X_programs": "X", "X_programs_batch": "X'", "X_programs_active": "X''"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-obs", type=int, default=20_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--latent", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    import scipy.sparse as sp
    import torch
    from sklearn.decomposition import PCA, FastICA, TruncatedSVD

    import featurelens as fl

    torch.set_num_threads(2)
    times = {}
    t = time.perf_counter()
    adata = fl.datasets.simulate("large", n_obs=args.n_obs, n_genes=args.n_genes, random_state=args.seed)
    times["simulate"] = time.perf_counter() - t
    print(adata, flush=True)

    t = time.perf_counter()
    fl.tl.autoencoder(adata, args.latent, random_state=args.seed, progress=False)
    times["autoencoder"] = time.perf_counter() - t
    print(f"autoencoder: best epoch {adata.uns['ae']['best_epoch']}, {times['autoencoder']:.0f} s", flush=True)

    t = time.perf_counter()
    fl.tl.sae(adata, "X_ae", architecture="relu", expansion=8, random_state=args.seed, progress=False)
    times["sae"] = time.perf_counter() - t

    logx = adata.X.copy()
    logx.data = np.log1p(logx.data)
    dense = logx.toarray() if sp.issparse(logx) else np.asarray(logx)
    t = time.perf_counter()
    adata.obsm["X_pca_obs"] = PCA(args.latent, random_state=args.seed).fit_transform(dense)
    adata.obsm["X_ica_obs"] = FastICA(args.latent, random_state=args.seed, max_iter=500).fit_transform(dense)
    adata.obsm["X_svd_obs"] = TruncatedSVD(args.latent, random_state=args.seed).fit_transform(logx)
    times["baselines"] = time.perf_counter() - t
    del dense

    variables = list(VARIABLES)
    methods = {"PCA": "X_pca_obs", "ICA": "X_ica_obs", "SVD": "X_svd_obs", "AE units": "X_ae", "SAE": "sae"}
    t = time.perf_counter()
    for rep in methods.values():
        if rep == "sae":
            fl.tl.variable_recovery(adata, variables, key="sae")
        else:
            fl.tl.variable_recovery(adata, variables, use_rep=rep)
    times["recovery"] = time.perf_counter() - t
    table = pd.DataFrame(
        {name: fl.get.recovery(adata, "variable_recovery", rep)["mean_best_r"] for name, rep in methods.items()}
    ).T
    table.columns = [VARIABLES[c] for c in table.columns]
    print("\nMean best correlation of a single feature with each variable (Table S5):\n")
    print(table.to_markdown(floatfmt=".2f"))

    fl.tl.superposition(adata, "X_ae", variables)
    sup = fl.get.recovery(adata, "superposition", "X_ae")
    sup.index = [VARIABLES[v] for v in sup.index]
    print("\nLinear decodability from the AE embedding (validation R2, Fig. 1C):\n")
    print(sup[["mean_r2", "median_r2"]].to_markdown(floatfmt=".2f"))

    t = time.perf_counter()
    fl.tl.structure_recovery(adata, "sae")
    times["structure"] = time.perf_counter() - t
    st = fl.get.recovery(adata, "structure_recovery", "sae")
    print("\nGene-program connectivity recovered from SAE features (A.2.5):\n")
    print(st.to_markdown(floatfmt=".2f"))
    print("\nTimes (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
