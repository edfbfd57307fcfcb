"""Count data with known generative variables (Schuster 2025, section 4 and A.2.1)."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_positive_int
from .._core import plain_params, version

#: defaults of the two simulations of the paper
_DEFAULTS = {
    "large": {"n_obs": 100_000, "n_genes": 20_000, "n_programs": 100, "n_cell_types": 40, "validation_fraction": 0.1},
    "small": {"n_obs": 12_000, "n_genes": 5, "n_programs": 3, "n_cell_types": None, "validation_fraction": 1 / 6},
}
#: Bernoulli probabilities of the three programs of the "small" simulation
_SMALL_P = (0.5, 0.1, 0.9)


def simulate(
    kind: Literal["large", "small"] = "small",
    *,
    n_obs: int | None = None,
    n_genes: int | None = None,
    n_programs: int | None = None,
    n_cell_types: int | None = None,
    n_batches: int = 3,
    connectivity: float = 0.1,
    type_activity: float = 0.3,
    validation_fraction: float | None = None,
    counts: Literal["expected", "poisson"] = "expected",
    chunk_size: int = 2_000,
    random_state: int = 0,
) -> AnnData:
    """Simulated expression with ground-truth generative variables (Schuster 2025, A.2.1).

    ``kind="large"`` (the paper's main simulation), for cell ``c``:

    - programs ``x_j ~ Poisson(1.1 j)``, ``j = 1..n_programs`` (independent per cell);
    - batch: the cell gets batch ``g ~ Cat(1/n_batches)`` (``g = 1..n_batches``) and a batch value
      ``b_c ~ Normal(g, 0.1)``, drawn per cell. ``b_c`` is a **scalar added to every program**:
      ``x' = x + b_c`` (our reading of "x' = x + b_c");
    - cell type: a type activity matrix ``A`` (``n_cell_types x n_programs``) of Bernoulli(0.3)
      entries (``type_activity``) is drawn once; the cell gets a type ``t ~ Cat(1/n_cell_types)`` and its row
      ``a_c = A[t]``: ``x'' = x' * a_c`` (element-wise, so inactive programs are 0);
    - observables: a connectivity matrix ``M`` (``n_genes x n_programs``) of Bernoulli(0.1) entries
      (``connectivity``) is drawn once, and ``y = M x''`` (``y_i = sum_j M_ij x''_j``).

    ``y`` is not an integer (``b_c`` is continuous). With ``counts="expected"`` (default) ``adata.X``
    holds ``y`` itself, so the generative model is exact (``X == x'' @ M.T``); with
    ``counts="poisson"`` ``adata.X`` holds counts ``Poisson(y)`` and ``y`` goes to
    ``adata.layers["expected"]``.

    ``kind="small"`` (3 programs, 5 genes), our reading of the paper's toy model: ``x_j ~
    Bernoulli(p_j)`` (a Binomial with one trial) with ``p = (0.5, 0.1, 0.9)``, a per-cell, per-program
    activity ``a_j ~ Poisson(2)``, ``x' = x * a`` and ``y = M x'`` with ``M ~ Bernoulli(0.1)``. With so
    few entries a Bernoulli(0.1) ``M`` would usually leave genes without a parent (always zero) and
    programs without a gene, so ``M`` is redrawn until every gene has a parent and every program a
    gene (Bernoulli(0.1) conditioned on that). It has no batches and no cell types.

    At the paper's size (``kind="large"`` with the default sizes) ``y`` is about 95 % non-zero, so
    ``X`` holds about 1.9 billion values (roughly 15 GB); pass smaller ``n_obs`` / ``n_genes`` to
    explore (a warning is shown above 4 GB). ``kind`` defaults to the cheap ``"small"`` simulation.

    Cells are independent, so the first ``(1 - validation_fraction) * n_obs`` cells are the training
    split and the rest the validation split (90,000 + 10,000 for "large", 10,000 + 2,000 for "small").

    Parameters
    ----------
    kind
        ``"large"`` or ``"small"``.
    n_obs
        Number of cells, both splits together (100,000 / 12,000).
    n_genes
        Number of observables (20,000 / 5).
    n_programs
        Number of latent programs (100 / 3). For "small", at most 3 (the first ``n_programs``
        probabilities are used).
    n_cell_types
        Number of cell types of "large" (40).
    n_batches
        Number of batches of "large" (3).
    connectivity
        Probability of a gene-program edge in ``M`` (0.1).
    type_activity
        Probability that a program is active in a cell type, the entries of ``A`` (0.3).
    validation_fraction
        Fraction of cells in the validation split (0.1 / 1/6).
    counts
        ``"expected"`` (``X = y``) or ``"poisson"`` (``X ~ Poisson(y)``), see above.
    chunk_size
        Cells per block when ``y`` is computed (bounds the dense memory used).
    random_state
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same data.

    Returns
    -------
    A new :class:`~anndata.AnnData` (cells x genes) with

    ``X`` : :class:`scipy.sparse.csr_matrix`, float32
        The observables ``y`` (or Poisson counts, see ``counts``).
    ``obs["split"]`` : categorical
        ``"train"`` / ``"validation"``.
    ``obs["cell_type"]``, ``obs["batch"]`` : categorical
        ``"type1".."typeT"`` and ``"batch1".."batchG"`` ("large" only).
    ``obsm["X_programs"]`` : ndarray, float32, cells x programs
        The programs ``x``.
    ``obsm["X_programs_batch"]`` : ndarray, float32
        ``x'`` = ``x + b_c`` ("large" only).
    ``obsm["X_programs_active"]`` : ndarray, float32
        ``x''`` ("large") or ``x'`` = ``x * a`` ("small"): the direct parents of ``y``.
    ``obsm["activity"]`` : ndarray, float32, cells x programs
        The cell's type activity row ``a_c`` ("large") or its Poisson activity ``a`` ("small").
    ``obsm["batch_value"]`` : ndarray, float32, cells x 1
        ``b_c`` ("large" only).
    ``var["n_parents"]`` : int
        Number of programs connected to each gene (row sums of ``M``).
    ``uns["simulation"]`` : :class:`dict`
        ``"connectivity"`` (``M``, genes x programs, CSR), ``"type_activity"`` (``A``, cell types x
        programs, "large"), ``"rates"`` (Poisson rates ``1.1 j``, "large") or ``"p"`` ("small"),
        ``"batch_means"`` ("large") and ``"params"``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.simulate("large", n_obs=1_000, n_genes=200)
    >>> adata.obsm["X_programs_active"].shape
    (1000, 100)
    >>> fl.datasets.simulate("small", n_obs=300).n_obs
    300
    """
    n_obs, n_genes, n_programs, chunk_size, vf = _check_arguments(
        kind, counts, n_obs, n_genes, n_programs, chunk_size, validation_fraction, connectivity, type_activity
    )
    d = _DEFAULTS[kind]
    if kind == "large":  # before drawing anything, so that a too large request is cheap to stop
        _warn_if_large(n_obs, n_genes, n_programs, connectivity, type_activity, counts)
    rng = np.random.default_rng(random_state)
    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_obs)]))
    if kind == "large":
        n_cell_types = check_positive_int(d["n_cell_types"] if n_cell_types is None else n_cell_types, "n_cell_types")
        n_batches = check_positive_int(n_batches, "n_batches")
        parents, M, obsm, info = _draw_large(
            rng, obs, n_obs, n_genes, n_programs, n_cell_types, n_batches, connectivity, type_activity
        )
    else:
        _check_small(n_cell_types, n_programs, n_genes)
        parents, M, obsm, info = _draw_small(rng, n_obs, n_genes, n_programs, connectivity)
    obsm["X_programs_active"] = parents.astype(np.float32)
    obs["split"] = _split(n_obs, vf)

    X, expected = _observables(parents, M, counts, chunk_size, rng)
    var = pd.DataFrame(index=pd.Index([f"gene{i}" for i in range(n_genes)]))
    var["n_parents"] = np.asarray(M.sum(axis=1)).ravel().astype(np.int64)
    adata = AnnData(X=X, obs=obs, var=var, obsm=obsm)
    if counts == "poisson":
        adata.layers["expected"] = expected
    large = kind == "large"
    params = {
        "kind": kind,
        "n_obs": n_obs,
        "n_genes": n_genes,
        "n_programs": n_programs,
        "n_cell_types": n_cell_types if large else None,
        "n_batches": n_batches if large else None,
        "connectivity": float(connectivity),
        "type_activity": float(type_activity) if large else None,
        "validation_fraction": vf,
        "counts": counts,
        "random_state": random_state,
        "featurelens_version": version(),
    }
    adata.uns["simulation"] = {"connectivity": M, **info, "params": plain_params(params)}
    return adata


def _check_arguments(
    kind, counts, n_obs, n_genes, n_programs, chunk_size, validation_fraction, connectivity, type_activity
) -> tuple[int, int, int, int, float]:
    """Validated ``(n_obs, n_genes, n_programs, chunk_size, validation_fraction)``; ``None`` gives the default."""
    if kind not in _DEFAULTS:
        raise ValueError(f"`kind` must be 'large' or 'small', got {kind!r}.")
    if counts not in ("expected", "poisson"):
        raise ValueError(f"`counts` must be 'expected' or 'poisson', got {counts!r}.")
    d = _DEFAULTS[kind]
    n_obs = check_positive_int(d["n_obs"] if n_obs is None else n_obs, "n_obs", minimum=2)
    n_genes = check_positive_int(d["n_genes"] if n_genes is None else n_genes, "n_genes")
    n_programs = check_positive_int(d["n_programs"] if n_programs is None else n_programs, "n_programs")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    vf = d["validation_fraction"] if validation_fraction is None else float(validation_fraction)
    if not 0 <= vf < 1:
        raise ValueError(f"`validation_fraction` must be in [0, 1), got {vf}.")
    for name, p in (("connectivity", connectivity), ("type_activity", type_activity)):
        if not 0 < float(p) <= 1:
            raise ValueError(f"`{name}` must be a probability in (0, 1], got {p}.")
    return n_obs, n_genes, n_programs, chunk_size, vf


def _warn_if_large(n_obs, n_genes, n_programs, connectivity, type_activity, counts) -> None:
    """Warn when the expression of the "large" simulation would take more than 4 GB."""
    p_nonzero = 1 - (1 - connectivity * type_activity) ** n_programs
    gb = n_obs * n_genes * p_nonzero * 8 / 1e9 * (2 if counts == "poisson" else 1)
    if gb > 4:
        warnings.warn(
            f"This simulation's expression takes about {gb:.0f} GB of memory; pass smaller `n_obs` / `n_genes` "
            "to explore.",
            UserWarning,
            stacklevel=3,
        )


def _draw_large(rng, obs, n_obs, n_genes, n_programs, n_cell_types, n_batches, connectivity, type_activity):
    """Programs, batches and cell types of the "large" simulation; adds ``cell_type`` and ``batch`` to ``obs``.

    Returns the direct parents ``x''`` of the observables, the connectivity ``M``, the ``obsm`` arrays and the
    ``uns["simulation"]`` entries.
    """
    rates = 1.1 * np.arange(1, n_programs + 1)
    x = rng.poisson(rates, size=(n_obs, n_programs)).astype(np.float64)
    batch = rng.integers(0, n_batches, n_obs)
    b = rng.normal(batch + 1.0, 0.1)[:, None]
    A = (rng.random((n_cell_types, n_programs)) < type_activity).astype(np.float64)
    ctype = rng.integers(0, n_cell_types, n_obs)
    a = A[ctype]
    x1 = x + b
    parents = x1 * a
    M = sp.csr_matrix(rng.random((n_genes, n_programs)) < connectivity, dtype=np.float32)
    obs["cell_type"] = pd.Categorical.from_codes(ctype, [f"type{t + 1}" for t in range(n_cell_types)])
    obs["batch"] = pd.Categorical.from_codes(batch, [f"batch{g + 1}" for g in range(n_batches)])
    obsm = {
        "X_programs": x.astype(np.float32),
        "X_programs_batch": x1.astype(np.float32),
        "activity": a.astype(np.float32),
        "batch_value": b.astype(np.float32),
    }
    info = {"type_activity": A.astype(np.float32), "rates": rates, "batch_means": np.arange(1.0, n_batches + 1)}
    return parents, M, obsm, info


def _check_small(n_cell_types, n_programs: int, n_genes: int) -> None:
    if n_cell_types is not None:
        raise ValueError("The 'small' simulation has no cell types; leave `n_cell_types=None`.")
    if n_programs > len(_SMALL_P):
        raise ValueError(f"The 'small' simulation has at most {len(_SMALL_P)} programs, got n_programs={n_programs}.")
    if n_genes < n_programs:
        raise ValueError(
            f"The 'small' simulation gives every program a gene, so it needs n_genes >= n_programs "
            f"({n_genes} < {n_programs})."
        )


def _draw_small(rng, n_obs: int, n_genes: int, n_programs: int, connectivity: float):
    """Programs and activities of the "small" simulation and a connectivity that leaves no gene or program alone.

    Returns the direct parents ``x'`` of the observables, the connectivity ``M``, the ``obsm`` arrays and the
    ``uns["simulation"]`` entries.
    """
    p = np.asarray(_SMALL_P[:n_programs])
    x = (rng.random((n_obs, n_programs)) < p).astype(np.float64)
    a = rng.poisson(2.0, size=(n_obs, n_programs)).astype(np.float64)
    parents = x * a
    for _ in range(100_000):
        Md = rng.random((n_genes, n_programs)) < connectivity
        if Md.any(axis=1).all() and Md.any(axis=0).all():
            break
    else:  # pragma: no cover - only for absurdly small connectivity
        raise ValueError(f"Could not draw a connectivity with every gene connected at connectivity={connectivity}.")
    M = sp.csr_matrix(Md, dtype=np.float32)
    obsm = {"X_programs": x.astype(np.float32), "activity": a.astype(np.float32)}
    return parents, M, obsm, {"p": p}


def _split(n_obs: int, validation_fraction: float) -> pd.Categorical:
    """The first cells are the training split, the last ``round(validation_fraction * n_obs)`` the validation split."""
    n_val = round(validation_fraction * n_obs)
    split = np.zeros(n_obs, np.int64)
    split[n_obs - n_val :] = 1
    return pd.Categorical.from_codes(split, ["train", "validation"])


def _observables(parents: np.ndarray, M: sp.csr_matrix, counts: str, chunk_size: int, rng):
    """``X`` (``y = M x``, or Poisson counts of it) in blocks of ``chunk_size`` cells, and ``y`` for Poisson counts."""
    Mt = M.T.toarray().astype(np.float64)  # programs x genes
    blocks, expected = [], []
    for start in range(0, parents.shape[0], chunk_size):
        y = parents[start : start + chunk_size] @ Mt
        if counts == "poisson":
            expected.append(sp.csr_matrix(y.astype(np.float32)))
            y = rng.poisson(y)
        blocks.append(sp.csr_matrix(y.astype(np.float32)))
    X = sp.vstack(blocks, format="csr")
    return X, (sp.vstack(expected, format="csr") if counts == "poisson" else None)
