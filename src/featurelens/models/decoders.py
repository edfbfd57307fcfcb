"""Maps from an embedding to expression used to read out steered embeddings (no AnnData here).

Every decoder follows one protocol, :class:`ExpressionDecoder`: ``predict(X)`` maps embedding rows
to expression of the genes ``genes`` (positions), with the decoder's R² per gene in ``r2`` and a
``quality`` summary; steering uses whichever decoder the user chose through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from .._blockwise import reduce_rows


class ExpressionDecoder(Protocol):
    """What steering needs of a decoder."""

    name: str

    @property
    def genes(self) -> np.ndarray:
        """Positions of the genes the decoder predicts."""

    @property
    def r2(self) -> np.ndarray:
        """R² of every predicted gene (NaN where unknown)."""

    @property
    def quality(self) -> dict:
        """Scalars describing the fit (recorded with the steering run)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Expression (rows x ``len(genes)``) of embedding rows ``X``."""


@dataclass
class RidgeDecoder:
    """Ridge regression ``expression ~ embedding`` with an intercept, fitted in closed form.

    Fitting works on sparse or dense targets without densifying them: only the ``d x genes`` cross
    products are formed. ``r2`` holds the in-sample coefficient of determination per gene (NaN for
    constant genes) and ``r2_total`` the variance-weighted overall one.
    """

    coef: np.ndarray  # (d, genes)
    intercept: np.ndarray  # (genes,)
    alpha: float
    r2: np.ndarray
    r2_total: float
    name: str = "linear"

    @property
    def genes(self) -> np.ndarray:
        """Every gene is predicted."""
        return np.arange(self.coef.shape[1])

    @property
    def quality(self) -> dict:
        """Overall R² and the ridge penalty."""
        return {"r2": self.r2_total, "ridge_alpha": self.alpha}

    @classmethod
    def fit(cls, X: np.ndarray, Y, alpha: float = 1.0, *, rows: np.ndarray | None = None) -> RidgeDecoder:
        """Fit on embedding ``X`` (n x d) and expression ``Y`` (n x genes, sparse or dense, in memory or on disk).

        With ``rows`` (a boolean mask), only those rows are used. ``Y`` is read once, block by block.
        """
        X = np.asarray(X, dtype=np.float64)
        if Y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}.")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        keep = np.ones(X.shape[0], bool) if rows is None else np.asarray(rows, bool)
        Xk = X[keep]
        n, d = Xk.shape
        mx = Xk.mean(0)
        Xc = Xk - mx
        XtY, sum_y, sq = reduce_rows(_cross_sums, Y, args=_row_args(X, keep, mx), rows=_block(Y.shape[1]))
        my = sum_y / n  # sum_i (x_i - mx) y_i: the centring of Y drops out
        G = Xc.T @ Xc
        coef = np.linalg.solve(G + alpha * np.eye(d), XtY)
        ss_tot = sq - n * my**2
        # residual sum of squares of the centred fit: ss_tot - 2 w'X'y + w'X'X w
        ss_res = ss_tot - 2 * np.einsum("dg,dg->g", coef, XtY) + np.einsum("dg,dg->g", coef, G @ coef)
        ss_res = np.maximum(ss_res, 0.0)
        r2, total = _r2(ss_res, ss_tot)
        return cls(coef=coef, intercept=my - mx @ coef, alpha=float(alpha), r2=r2, r2_total=total)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted expression of rows of ``X``."""
        return np.asarray(X, dtype=np.float64) @ self.coef + self.intercept

    @classmethod
    def fit_heldout(cls, X: np.ndarray, Y, alpha: float = 1.0, *, holdout: float = 0.2, random_state: int = 0):
        """Fit on all rows, with ``r2`` measured on a held-out ``holdout`` fraction by a fit on the others.

        The R² of a gene says how well the embedding predicts it on cells the regression has not
        seen; genes the decoder cannot predict get a low (or negative) held-out R². ``Y`` is read
        block by block, three times (the two fits and the held-out residuals).
        """
        n = X.shape[0]
        rng = np.random.default_rng(random_state)
        test = np.zeros(n, bool)
        test[rng.choice(n, max(1, round(holdout * n)), replace=False)] = True
        part = cls.fit(X, Y, alpha=alpha, rows=~test)
        r2, total = r2_per_gene(part.predict, X, Y, rows=test)
        full = cls.fit(X, Y, alpha=alpha)
        return cls(coef=full.coef, intercept=full.intercept, alpha=full.alpha, r2=r2, r2_total=total)


def _row_args(X: np.ndarray, keep: np.ndarray, shift: np.ndarray | None = None):
    """Per-block inputs of a reduction over ``Y``: the kept rows of ``X`` (minus ``shift``) and the row mask."""

    def args(s: int, e: int):
        k = keep[s:e]
        xb = X[s:e][k]
        return (xb - shift if shift is not None else xb), k

    return args


def _block(n_genes: int) -> int:
    """Rows per block so that a dense float64 block of ``n_genes`` columns holds about 32 MB."""
    return max(256, min(65536, int(2**25 // (8 * max(n_genes, 1)))))


def _as_float(blk):
    return sp.csr_matrix(blk, dtype=np.float64) if sp.issparse(blk) else np.asarray(blk, dtype=np.float64)


def _cross_sums(s: int, e: int, blk, xc: np.ndarray, keep: np.ndarray):
    """``xc' y``, the sums and the sums of squares of the kept rows of one block of ``Y``."""
    y = _as_float(blk[np.flatnonzero(keep)])
    if sp.issparse(y):
        return np.asarray((y.T @ xc).T), np.asarray(y.sum(0)).ravel(), np.asarray(y.multiply(y).sum(0)).ravel()
    return xc.T @ y, y.sum(0), np.einsum("ij,ij->j", y, y)


def _r2(ss_res: np.ndarray, ss_tot: np.ndarray) -> tuple[np.ndarray, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 1e-12 * max(1.0, float(ss_tot.max(initial=0.0))), 1 - ss_res / ss_tot, np.nan)
    total = float(1 - ss_res.sum() / ss_tot.sum()) if ss_tot.sum() > 0 else float("nan")
    return r2, total


def _residual_sums(s: int, e: int, blk, x: np.ndarray, keep: np.ndarray, predict, genes):
    """Residual sums of squares, sums and sums of squares of the kept rows of one block of ``Y``."""
    y = blk[np.flatnonzero(keep)]
    if genes is not None:
        y = y[:, genes]
    y = _as_float(y)
    y = y.toarray() if sp.issparse(y) else y
    P = np.asarray(predict(x), dtype=np.float64)
    return ((y - P) ** 2).sum(0), y.sum(0), np.einsum("ij,ij->j", y, y)


def r2_per_gene(predict, X: np.ndarray, Y, *, rows: np.ndarray | None = None, genes=None) -> tuple[np.ndarray, float]:
    """R2 per gene and overall of ``predict(X)`` against ``Y`` (or its columns ``genes``), block by block.

    ``Y`` may be sparse or dense, in memory or on disk; with ``rows`` (a boolean mask) only those
    rows count. Each block is densified on its own (bounded memory).
    """
    import functools

    keep = np.ones(X.shape[0], bool) if rows is None else np.asarray(rows, bool)
    n = int(keep.sum())
    fn = functools.partial(_residual_sums, predict=predict, genes=genes)
    n_genes = Y.shape[1] if genes is None else len(genes)
    ss_res, sum_y, sq = reduce_rows(fn, Y, args=_row_args(X, keep), rows=_block(n_genes))
    ss_tot = sq - sum_y**2 / max(n, 1)
    return _r2(ss_res, ss_tot)


@dataclass
class LinearMapDecoder:
    """``expression = X @ loadings + mean`` for the genes with a non-zero loading (e.g. scanpy's PCA).

    :meth:`from_pca` builds it from ``adata.varm["PCs"]`` (genes x components) and the expression,
    whose gene means are added back; ``r2`` is computed on the data it was built from.
    """

    loadings: np.ndarray  # (d, len(genes))
    mean: np.ndarray
    gene_idx: np.ndarray
    r2: np.ndarray
    r2_total: float
    name: str = "pca"

    @property
    def genes(self) -> np.ndarray:
        """Positions of the genes with a loading."""
        return self.gene_idx

    @property
    def quality(self) -> dict:
        """Overall R²."""
        return {"r2": self.r2_total}

    @classmethod
    def from_pca(cls, X: np.ndarray, E, PCs: np.ndarray) -> LinearMapDecoder:
        """From the PCA loadings ``PCs`` (genes x d), the embedding ``X`` and the expression ``E``."""
        PCs = np.asarray(PCs, dtype=np.float64)
        genes = np.flatnonzero(np.abs(PCs).sum(1) > 0)
        mean = reduce_rows(_column_sums, E, args=lambda s, e: (genes,)) / E.shape[0]
        load = PCs[genes].T
        r2, total = r2_per_gene(lambda Z: np.asarray(Z, dtype=np.float64) @ load + mean, X, E, genes=genes)
        return cls(loadings=load, mean=mean, gene_idx=genes, r2=r2, r2_total=total)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted expression of rows of ``X``."""
        return np.asarray(X, dtype=np.float64) @ self.loadings + self.mean


def _column_sums(s: int, e: int, blk, genes: np.ndarray) -> np.ndarray:
    return np.asarray(_as_float(blk[:, genes]).sum(0)).ravel()


@dataclass
class CallableDecoder:
    """A user's function from embedding rows to expression of all ``n_genes`` genes (R² unknown)."""

    fn: Callable[[np.ndarray], np.ndarray]
    n_genes: int
    name: str = field(default="")

    def __post_init__(self):
        self.name = self.name or getattr(self.fn, "__name__", type(self.fn).__name__)

    @property
    def genes(self) -> np.ndarray:
        """Every gene is predicted."""
        return np.arange(self.n_genes)

    @property
    def r2(self) -> np.ndarray:
        """Unknown for a user's decoder."""
        return np.full(self.n_genes, np.nan)

    @property
    def quality(self) -> dict:
        """Nothing is known about the fit."""
        return {}

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The function's output, checked to be (rows x genes)."""
        P = np.asarray(self.fn(np.asarray(X, dtype=np.float32)), dtype=np.float64)
        if P.shape != (X.shape[0], self.n_genes):
            raise ValueError(
                f"The decoder returned shape {P.shape}; expected (cells, genes) = ({X.shape[0]}, {self.n_genes}) "
                "matching adata.var_names."
            )
        return P
