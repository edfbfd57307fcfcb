"""Maps from an embedding to expression used to read out steered embeddings (no AnnData here)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


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
