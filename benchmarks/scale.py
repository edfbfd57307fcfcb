"""Atlas scale: peak memory and speed of dictionary training in memory and streamed from disk.

Every run is a fresh process (so its peak RSS is its own). The embedding is synthetic (cells x d,
float32, sparse combinations of planted directions plus noise) and is either held in memory
(``obsm`` numpy array) or written once to a zarr store and read lazily
(``anndata.experimental.read_lazy``: ``obsm`` is a dask array, nothing is loaded up front).
Reported: peak RSS of the process, RSS beyond the embedding's own size (for the in-memory runs the
embedding itself is resident; streamed runs hold only buffers), training steps per second and
the time of the final encoding of every cell.

    python benchmarks/scale.py [--cells 250000 1000000] [--dim 512] [--features 2048] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_embedding(n: int, d: int, seed: int = 0, block: int = 8192):
    """Yield blocks of a synthetic embedding: 3-sparse combinations of 4 d planted unit directions + noise."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(4 * d, d)).astype(np.float32)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    for s in range(0, n, block):
        m = min(block, n - s)
        idx = rng.integers(0, W.shape[0], size=(m, 3))
        X = (W[idx] * rng.uniform(0.5, 1.5, size=(m, 3, 1)).astype(np.float32)).sum(1)
        yield (X + 0.05 * rng.normal(size=X.shape).astype(np.float32)).astype(np.float32)


def write_zarr(path: Path, n: int, d: int) -> None:
    import anndata as ad
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    adata = ad.AnnData(obs={"cell": np.arange(n).astype(str)})
    ad.io.write_elem(g, "obs", adata.obs)
    ad.io.write_elem(g, "var", adata.var)
    ad.io.write_elem(g, "obsm", {})
    arr = g["obsm"].create_array("X_emb", shape=(n, d), chunks=(16384, d), dtype="float32")
    arr.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    start = 0
    for X in make_embedding(n, d):
        arr[start : start + len(X)] = X
        start += len(X)
    for key in ("layers", "obsp", "varm", "varp", "uns"):
        ad.io.write_elem(g, key, {})
    g.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})


def child(args) -> None:
    """One training run in this process; prints a JSON line."""
    import anndata as ad

    import featurelens as fl

    n, d = args.n, args.dim
    if args.mode == "memory":
        adata = ad.AnnData(obs={"cell": np.arange(n).astype(str)})
        X = np.empty((n, d), dtype=np.float32)
        start = 0
        for block in make_embedding(n, d):
            X[start : start + len(block)] = block
            start += len(block)
        adata.obsm["X_emb"] = X
    else:
        from anndata.experimental import read_lazy

        adata = read_lazy(args.store)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    fl.tl.sae(adata, "X_emb", n_features=args.features, k=32, batch_size=4096, n_steps=args.steps, progress=False)
    total = time.perf_counter() - t0
    m = adata.uns["sae"]["metrics"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"mode": args.mode, "cells": n, "dim": d, "features": args.features, "steps": args.steps,
                      "peak_rss_gb": peak, "rss_before_gb": base, "embedding_gb": n * d * 4 / 2**30,
                      "steps_per_s": args.steps / m["train_seconds"], "total_s": total,
                      "other_s": total - m["train_seconds"], "fvu": m["fvu"]}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--modes", nargs="+", default=["memory", "zarr"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cells:
            store = Path(tmp) / f"emb_{n}.zarr"
            if "zarr" in args.modes:
                t0 = time.perf_counter()
                write_zarr(store, n, args.dim)
                print(f"wrote {store.name} ({n * args.dim * 4 / 2**30:.2f} GB) in {time.perf_counter() - t0:.0f} s")
            for mode in args.modes:
                opts = {"--mode": mode, "--n": n, "--store": store, "--dim": args.dim, "--features": args.features,
                        "--steps": args.steps}  # fmt: skip
                cmd = [sys.executable, __file__, "--child", *[str(x) for kv in opts.items() for x in kv]]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                rows.append(json.loads(out))
                r = rows[-1]
                print(f"{mode:>6} {n:>9,} cells: peak RSS {r['peak_rss_gb']:.2f} GB "
                      f"(embedding {r['embedding_gb']:.2f} GB), {r['steps_per_s']:.2f} steps/s, "
                      f"other {r['other_s']:.0f} s, FVU {r['fvu']:.3f}", flush=True)  # fmt: skip
    print()
    print("| input | cells | embedding (GB) | peak RSS (GB) | peak RSS - embedding in memory (GB) | steps/s | "
          "moments + encoding (s) | FVU |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        extra = r["peak_rss_gb"] - (r["embedding_gb"] if r["mode"] == "memory" else 0.0)
        print(f"| {r['mode']} | {r['cells']:,} | {r['embedding_gb']:.2f} | {r['peak_rss_gb']:.2f} | {extra:.2f} | "
              f"{r['steps_per_s']:.2f} | {r['other_s']:.0f} | {r['fvu']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
