"""Speed and dead-feature benchmarks of the dictionary learners.

Run from the repository root::

    python benchmarks/learners.py            # everything (about 10 minutes on 2 CPU cores)
    python benchmarks/learners.py --only encoder step dead

Prints Markdown tables; the numbers in docs/benchmarks.md come from this script.

1. ICFL encoder vs ``sklearn.decomposition.sparse_encode(algorithm="omp")`` at the same number
   of non-zeros (d = 512, M = 4096, 1024 samples, 100 non-zeros). Both times include the Gram
   matrix of the dictionary, which both methods compute.
2. Training step time at d = 512, M = 8192, batch 4096 for TopK (k = 32) and ICFL (J = 20,
   L = 5), as a ratio to three dense (4096 x 512) @ (512 x 8192) matmuls timed in the same run.
   Reference rows: a plain dense-autograd TopK step and a naive ICFL pursuit (J full correlation
   passes).
3. Dead features after training on the Kang 2018 PCA embedding: ICFL vs TopK without AuxK vs
   TopK with AuxK.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import numpy as np
import torch

from featurelens.models import ICFL, SparseAutoencoder


def timed(fn, repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def unit_rows(m: int, d: int, seed: int) -> torch.Tensor:
    w = torch.randn(m, d, generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------- 1. encoder
def bench_encoder(repeat: int) -> list[str]:
    from sklearn.decomposition import sparse_encode

    d, m, n, nnz = 512, 4096, 1024, 100
    W = unit_rows(m, d, 0)
    # signals that really are sparse in the dictionary, plus noise
    g = torch.Generator().manual_seed(1)
    Z = torch.zeros(n, m)
    for i in range(n):
        Z[i, torch.randperm(m, generator=g)[:nnz]] = torch.rand(nnz, generator=g) + 0.5
    X = Z @ W + 0.01 * torch.randn(n, d, generator=g)
    Xn, Wn = X.numpy().astype(np.float64), W.numpy().astype(np.float64)

    t_sk = timed(lambda: sparse_encode(Xn, Wn, algorithm="omp", n_nonzero_coefs=nnz), repeat=1, warmup=0)
    rows = [
        "| encoder (1024 samples, d=512, M=4096, 100 non-zeros) | seconds | speed-up vs sklearn OMP |",
        "|---|---:|---:|",
        f"| sklearn `sparse_encode(algorithm='omp')` (float64) | {t_sk:.3f} | 1.0x |",
    ]
    variants = [
        ("ICFL pursuit, J=20, L=5 (CPU kernel)", {"n_iter": 20, "n_per_iter": 5}),
        ("ICFL pursuit, J=20, L=5 (torch, batched)", {"n_iter": 20, "n_per_iter": 5, "kernel": False}),
        ("batched OMP, J=20, L=5 (orthogonal=True)", {"n_iter": 20, "n_per_iter": 5, "orthogonal": True}),
        (
            "batched OMP, J=100, L=1 (same algorithm as sklearn)",
            {"n_iter": 100, "n_per_iter": 1, "orthogonal": True, "selection": "abs"},
        ),
    ]
    for name, kw in variants:
        use_kernel = kw.pop("kernel", True)
        model = ICFL.from_arrays(
            {"decoder": W.numpy(), "decoder_bias": np.zeros(d, np.float32)}, bias="none", tol=0.0, **kw
        )
        model.use_kernel = use_kernel
        t = timed(lambda model=model: model.codes(X), repeat=repeat)
        rows.append(f"| {name} | {t:.3f} | {t_sk / t:.1f}x |")
    # agreement of the J=100, L=1 batched OMP with sklearn
    model = ICFL.from_arrays(
        {"decoder": W.numpy(), "decoder_bias": np.zeros(d, np.float32)},
        bias="none",
        tol=0.0,
        n_iter=100,
        n_per_iter=1,
        orthogonal=True,
        selection="abs",
    )
    z = model.encode(X[:64]).numpy()
    ref = sparse_encode(Xn[:64], Wn, algorithm="omp", n_nonzero_coefs=nnz)
    rows.append("")
    rows.append(
        f"Batched OMP (J=100, L=1) vs sklearn OMP on 64 samples: max |difference| of the codes "
        f"{np.abs(z - ref).max():.2e}, same support in {((z != 0) == (ref != 0)).all(1).mean():.0%} of rows."
    )
    return rows


# --------------------------------------------------------------------------- 2. training step
def _step_fn(model, X, dead=None):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        out = model.training_output(X, dead)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        model.before_optimizer_step()
        opt.step()
        model.after_optimizer_step(1, opt)

    return step


def _dense_topk_step(X, m, k):
    """The usual dense implementation: dense pre-activations with autograd, dense codes, dense decoder."""
    d = X.shape[1]
    W_enc = torch.nn.Parameter(unit_rows(m, d, 3).clone())
    W_dec = torch.nn.Parameter(unit_rows(m, d, 3).clone())
    b_enc = torch.nn.Parameter(torch.zeros(m))
    b_dec = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=1e-4)

    def step():
        pre = (X - b_dec) @ W_enc.T + b_enc
        top = torch.topk(pre, k, dim=1)
        z = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
        loss = (z @ W_dec + b_dec - X).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    return step


def _naive_icfl_step(X, m, J, L):
    """ICFL with a naive pursuit: J full correlation passes r @ W.T and a dense decoder."""
    d = X.shape[1]
    W = torch.nn.Parameter(unit_rows(m, d, 4).clone())
    opt = torch.optim.Adam([W], lr=1e-4)
    eye = torch.eye(L) * 1e-6

    def step():
        with torch.no_grad():
            Wd = W.detach()
            r = X.clone()
            z = torch.zeros(X.shape[0], m)
            for _ in range(J):
                S = torch.topk(r @ Wd.T, L, dim=1).indices
                WS = Wd[S]
                a = torch.linalg.solve(WS @ WS.transpose(1, 2) + eye, (WS @ r.unsqueeze(2))).squeeze(2)
                r -= (a.unsqueeze(2) * WS).sum(1)
                z.scatter_add_(1, S, a)
        loss = (z @ W - X).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_step(repeat: int) -> list[str]:
    d, m, b = 512, 8192, 4096
    X = torch.randn(b, d, generator=torch.Generator().manual_seed(0))
    X = X / X.norm(dim=1, keepdim=True)
    A = torch.randn(b, d)
    B = torch.randn(d, m)
    bound = timed(lambda: [A @ B for _ in range(3)], repeat=repeat)

    topk = SparseAutoencoder(d, m, architecture="topk", k=32, generator=torch.Generator().manual_seed(0))
    topk.init_from_data(X)
    t_topk = timed(_step_fn(topk, X), repeat=repeat)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[: m // 20] = True
    t_topk_aux = timed(_step_fn(topk, X, dead), repeat=repeat)
    t_dense = timed(_dense_topk_step(X, m, 32), repeat=repeat)

    icfl = ICFL(d, m, n_iter=20, n_per_iter=5, generator=torch.Generator().manual_seed(0))
    icfl.init_from_data(X)
    t_icfl = timed(_step_fn(icfl, X), repeat=repeat)
    icfl.use_kernel = False
    t_icfl_torch = timed(_step_fn(icfl, X), repeat=max(1, repeat // 2))
    t_naive = timed(_naive_icfl_step(X, m, 20, 5), repeat=1)

    rows = [
        "| training step (d=512, M=8192, batch 4096, CPU) | seconds | / 3 dense matmuls | / TopK step |",
        "|---|---:|---:|---:|",
        f"| bound: 3 x (4096x512)@(512x8192) | {bound:.3f} | 1.00x | |",
    ]
    for name, t in [
        ("TopK k=32, sparse backward (no dead latents, AuxK idle)", t_topk),
        ("TopK k=32, AuxK active (5% dead latents, k_aux=256)", t_topk_aux),
        ("reference: dense-autograd TopK step", t_dense),
        ("ICFL J=20 L=5 (fused CPU kernel; default)", t_icfl),
        ("ICFL J=20 L=5 (torch batched pursuit, float32)", t_icfl_torch),
        ("reference: naive ICFL pursuit (J full correlation passes)", t_naive),
    ]:
        rows.append(f"| {name} | {t:.3f} | {t / bound:.2f}x | {t / t_topk:.2f}x |")
    return rows


# --------------------------------------------------------------------------- 3. dead features
def bench_dead(n_features_list: list[int]) -> list[str]:
    import scanpy as sc

    import featurelens as fl

    adata = fl.datasets.kang2018()  # the bundled 2,000 PBMCs (counts)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=30, random_state=0)
    rows = [
        "| Kang 2018, 30-PC PCA (2000 cells), default steps | features | dead in training | never active | FVU | L0 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in n_features_list:
        for name, call in [
            ("ICFL (J=3, L=5)", lambda a, m=m: fl.tl.icfl(a, "X_pca", n_features=m, progress=False)),
            ("TopK k=15, no AuxK", lambda a, m=m: fl.tl.sae(a, "X_pca", n_features=m, auxk=False, progress=False)),
            ("TopK k=15, AuxK", lambda a, m=m: fl.tl.sae(a, "X_pca", n_features=m, progress=False)),
        ]:
            a = adata.copy()
            call(a)
            key = "icfl" if name.startswith("ICFL") else "sae"
            met = a.uns[key]["metrics"]
            never = int((a.obsm[f"X_{key}"].getnnz(axis=0) == 0).sum())
            rows.append(f"| {name} | {m} | {met['n_dead_training']} | {never} | {met['fvu']:.3f} | {met['l0']:.1f} |")
    return rows


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["encoder", "step", "dead"], choices=["encoder", "step", "dead"])
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--dead-features", type=int, nargs="*", default=[240, 2048])
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, numpy {np.__version__}\n"
    )
    if "encoder" in args.only:
        print("\n".join(bench_encoder(args.repeat)), "\n")
    if "step" in args.only:
        print("\n".join(bench_step(args.repeat)), "\n")
    if "dead" in args.only:
        print("\n".join(bench_dead(args.dead_features)), "\n")


if __name__ == "__main__":
    main()
