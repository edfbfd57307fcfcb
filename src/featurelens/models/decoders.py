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
    def fit(cls, X: np.ndarray, Y, alpha: float = 1.0) -> RidgeDecoder:
        """Fit on embedding ``X`` (n x d) and expression ``Y`` (n x genes, sparse or dense)."""
        X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        if Y.shape[0] != n:
            raise ValueError(f"X has {n} rows but Y has {Y.shape[0]}.")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        mx = X.mean(0)
        Xc = X - mx
        if sp.issparse(Y):
            Y = sp.csr_matrix(Y, dtype=np.float64)
            my = np.asarray(Y.mean(0)).ravel()
            XtY = np.asarray((Y.T @ Xc).T)  # sum_i (x_i - mx) y_i; the centring of Y drops out
            sq = np.asarray(Y.multiply(Y).sum(0)).ravel()
        else:
            Y = np.asarray(Y, dtype=np.float64)
            my = Y.mean(0)
            XtY = Xc.T @ Y
            sq = np.einsum("ij,ij->j", Y, Y)
        G = Xc.T @ Xc
        coef = np.linalg.solve(G + alpha * np.eye(d), XtY)
        ss_tot = sq - n * my**2
        # residual sum of squares of the centred fit: ss_tot - 2 w'X'y + w'X'X w
        ss_res = ss_tot - 2 * np.einsum("dg,dg->g", coef, XtY) + np.einsum("dg,dg->g", coef, G @ coef)
        ss_res = np.maximum(ss_res, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(ss_tot > 1e-12 * max(1.0, float(ss_tot.max(initial=0.0))), 1 - ss_res / ss_tot, np.nan)
        total = float(1 - ss_res.sum() / ss_tot.sum()) if ss_tot.sum() > 0 else float("nan")
        return cls(coef=coef, intercept=my - mx @ coef, alpha=float(alpha), r2=r2, r2_total=total)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted expression of rows of ``X``."""
        return np.asarray(X, dtype=np.float64) @ self.coef + self.intercept

    @classmethod
    def fit_heldout(cls, X: np.ndarray, Y, alpha: float = 1.0, *, holdout: float = 0.2, random_state: int = 0):
        """Fit on all rows, with ``r2`` measured on a held-out ``holdout`` fraction by a fit on the others.

        The R² of a gene says how well the embedding predicts it on cells the regression has not
        seen; genes the decoder cannot predict get a low (or negative) held-out R².
        """
        n = X.shape[0]
        rng = np.random.default_rng(random_state)
        test = np.zeros(n, bool)
        test[rng.choice(n, max(1, round(holdout * n)), replace=False)] = True
        part = cls.fit(np.asarray(X)[~test], Y[np.flatnonzero(~test)], alpha=alpha)
        r2, total = r2_per_gene(part.predict, np.asarray(X)[test], Y[np.flatnonzero(test)])
        full = cls.fit(X, Y, alpha=alpha)
        return cls(coef=full.coef, intercept=full.intercept, alpha=full.alpha, r2=r2, r2_total=total)


def r2_per_gene(predict, X: np.ndarray, Y, *, chunk_size: int = 4096) -> tuple[np.ndarray, float]:
    """R2 per gene and overall of ``predict(X)`` against ``Y`` (sparse or dense), accumulated in row chunks."""
    n = X.shape[0]
    ss_res = None
    for s in range(0, n, chunk_size):
        P = np.asarray(predict(X[s : s + chunk_size]), dtype=np.float64)
        blk = Y[s : s + chunk_size]
        blk = blk.toarray() if sp.issparse(blk) else np.asarray(blk, dtype=np.float64)
        part = ((blk - P) ** 2).sum(0)
        ss_res = part if ss_res is None else ss_res + part
    if sp.issparse(Y):
        Yc = sp.csr_matrix(Y, dtype=np.float64)
        my = np.asarray(Yc.mean(0)).ravel()
        ss_tot = np.asarray(Yc.multiply(Yc).sum(0)).ravel() - n * my**2
    else:
        Yd = np.asarray(Y, dtype=np.float64)
        ss_tot = ((Yd - Yd.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 1e-12 * max(1.0, float(ss_tot.max(initial=0.0))), 1 - ss_res / ss_tot, np.nan)
    total = float(1 - ss_res.sum() / ss_tot.sum()) if ss_tot.sum() > 0 else float("nan")
    return r2, total


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
        Eg = E[:, genes]
        mean = np.asarray(Eg.mean(0)).ravel()
        load = PCs[genes].T
        r2, total = r2_per_gene(lambda Z: np.asarray(Z, dtype=np.float64) @ load + mean, X, Eg)
        return cls(loadings=load, mean=mean, gene_idx=genes, r2=r2, r2_total=total)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted expression of rows of ``X``."""
        return np.asarray(X, dtype=np.float64) @ self.loadings + self.mean


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
