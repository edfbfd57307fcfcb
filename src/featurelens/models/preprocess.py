"""Numeric transforms applied to an embedding before a dictionary sees it.

Nothing here knows about AnnData: the transforms take and return arrays and serialise
themselves to plain dictionaries of arrays and scalars, which :mod:`featurelens.tl`
stores in ``adata.uns``. Two stages exist and are applied in this order:

1. :class:`Whitening` (optional): PCA whitening fitted on control samples,
   ``T(x) = Lambda^{-1/2} V^T (x - mu_c)`` (optionally followed by unit-norm scaling), where
   ``V`` and ``Lambda`` come from the empirical or a shrunk control covariance
   (:func:`control_covariance`).
2. :class:`Normalizer`: one of ``"none"``, ``"center"``, ``"scale"``, ``"standardize"``,
   ``"unit"``.

:class:`Preprocess` chains them and can undo their linear part, so reconstructions and
steered embeddings can be mapped back into the space the user started from.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np

from .._checks import check_choice, check_number

NORMALIZE_OPTIONS = ("none", "center", "scale", "standardize", "unit")

#: named estimators of the control covariance (``None`` and numbers in [0, 1] are accepted too)
SHRINKAGE_OPTIONS = ("auto", "ledoit-wolf", "oas")
#: ``shrinkage="auto"`` uses Ledoit-Wolf below this many controls per embedding dimension
AUTO_CONTROLS_PER_DIM = 10

_TINY = 1e-12


def _row_norms(X: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))


_ROWS = 65536  # rows per block of the normalisation


def _safe_unit(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale rows to unit L2 norm; rows of norm zero stay zero. Returns (scaled, norms)."""
    norms = _row_norms(X)
    div = np.where(norms > _TINY, norms, 1.0)
    return (X / div[:, None]).astype(np.float32, copy=False), norms


@dataclass
class Whitening:
    """PCA whitening fitted on control samples.

    Attributes
    ----------
    mean
        Mean of the control samples, shape ``(d,)``.
    components
        Principal axes of the control covariance as rows, shape ``(n_comps, d)``, sorted by
        decreasing variance.
    variances
        Eigenvalues of the control covariance, shape ``(n_comps,)``.
    eps
        Added to every variance before taking the inverse square root.
    unit_norm
        Whether whitened rows are scaled to unit L2 norm afterwards.
    covariance
        Estimator of the control covariance: ``"empirical"`` (``ddof=1``), ``"ledoit-wolf"``,
        ``"oas"`` or ``"shrunk"`` (a fixed shrinkage); see :func:`control_covariance`.
    shrinkage_intensity
        Shrinkage intensity ``alpha`` of that estimate (``0.0`` for ``"empirical"``).
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    eps: float = 1e-6
    unit_norm: bool = False
    covariance: str = "empirical"
    shrinkage_intensity: float = 0.0

    @property
    def scales(self) -> np.ndarray:
        """Per-component factors ``1 / sqrt(variance + eps)``."""
        return 1.0 / np.sqrt(self.variances + self.eps)

    @property
    def n_comps(self) -> int:
        """Number of whitened output dimensions."""
        return int(self.components.shape[0])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Whiten the rows of ``X`` (shape ``(n, d)``) into shape ``(n, n_comps)``."""
        X = np.asarray(X, dtype=np.float64)
        Y = ((X - self.mean) @ self.components.T) * self.scales
        if self.unit_norm:
            Y, _ = _safe_unit(Y)
        return Y.astype(np.float32, copy=False)

    def inverse_linear(self, Y: np.ndarray) -> np.ndarray:
        """Map whitened *differences* back to the input space (no mean, no unit-norm undo).

        For ``n_comps == d`` this inverts the linear part exactly; with fewer components it
        returns the least-squares pre-image inside the kept principal subspace.
        """
        Y = np.asarray(Y, dtype=np.float64)
        return ((Y / self.scales) @ self.components).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        """Plain-array representation, as stored in ``adata.uns``."""
        return {
            "mean": self.mean.astype(np.float32),
            "components": self.components.astype(np.float32),
            "variances": self.variances.astype(np.float32),
            "scales": self.scales.astype(np.float32),
            "eps": float(self.eps),
            "unit_norm": bool(self.unit_norm),
            "covariance": str(self.covariance),
            "shrinkage_intensity": float(self.shrinkage_intensity),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Whitening:
        """Rebuild from :meth:`to_dict` output (extra keys are ignored).

        Entries written before the covariance was recorded were all fitted on the empirical one.
        """
        return cls(
            mean=np.asarray(d["mean"], dtype=np.float64),
            components=np.asarray(d["components"], dtype=np.float64),
            variances=np.asarray(d["variances"], dtype=np.float64),
            eps=float(d["eps"]),
            unit_norm=bool(d["unit_norm"]),
            covariance=str(d.get("covariance", "empirical")),
            shrinkage_intensity=float(d.get("shrinkage_intensity", 0.0)),
        )


def check_shrinkage(shrinkage) -> str | float | None:
    """Validate a ``shrinkage=`` option: one of :data:`SHRINKAGE_OPTIONS`, ``None`` or a number in [0, 1].

    Returns the option, numbers as :class:`float`.

    Raises
    ------
    ValueError
        For any other value (``bool`` included), and for numbers outside [0, 1].
    """
    if isinstance(shrinkage, Real) and not isinstance(shrinkage, bool):
        return check_number(shrinkage, "shrinkage", minimum=0.0, maximum=1.0)
    try:
        return check_choice(shrinkage, "shrinkage", SHRINKAGE_OPTIONS, none=True)
    except ValueError as err:
        raise ValueError(f"{err} A number in [0, 1] (a fixed shrinkage intensity) is accepted too.") from None


def resolve_shrinkage(shrinkage, n: int, d: int) -> str | float | None:
    """The estimator ``shrinkage`` stands for with ``n`` controls in ``d`` dimensions.

    ``"auto"`` becomes ``"ledoit-wolf"`` when ``n < AUTO_CONTROLS_PER_DIM * d`` and ``None``
    (the empirical covariance) otherwise; every other valid value is returned as it is.
    """
    shrinkage = check_shrinkage(shrinkage)
    if shrinkage == "auto":
        return "ledoit-wolf" if n < AUTO_CONTROLS_PER_DIM * d else None
    return shrinkage


def control_covariance(Xc: np.ndarray, shrinkage="auto") -> tuple[np.ndarray, str, float]:
    """Estimate the covariance of the control rows ``Xc`` (samples x dimensions).

    Parameters
    ----------
    Xc
        The control samples, at least two rows (not centred: every estimator centres on their mean).
    shrinkage
        ``None``: the empirical covariance with ``ddof=1`` (:func:`numpy.cov`).
        ``"ledoit-wolf"`` / ``"oas"``: :class:`sklearn.covariance.LedoitWolf` /
        :class:`sklearn.covariance.OAS`, which choose the intensity ``alpha`` from the data.
        A number ``alpha`` in [0, 1]: :class:`sklearn.covariance.ShrunkCovariance` with
        ``shrinkage=alpha``. ``"auto"``: Ledoit-Wolf when there are fewer than 10 controls per
        dimension, otherwise empirical (:func:`resolve_shrinkage`).

        The shrunk estimates are scikit-learn's, unchanged: ``(1 - alpha) S + alpha (tr(S) / d) I``
        with ``S`` the maximum-likelihood covariance (``ddof=0``) around the control mean
        (``assume_centered=False``). So ``shrinkage=0.0`` is ``S`` and differs from ``None``
        (``ddof=1``) by the factor ``(n - 1) / n``.

    Returns
    -------
    The ``(d, d)`` covariance, the estimator used (``"empirical"``, ``"ledoit-wolf"``, ``"oas"`` or
    ``"shrunk"``) and the shrinkage intensity ``alpha`` (``0.0`` for ``"empirical"``).

    Examples
    --------
    >>> import numpy as np
    >>> from featurelens.models.preprocess import control_covariance
    >>> Xc = np.random.default_rng(0).normal(size=(24, 20))
    >>> cov, used, alpha = control_covariance(Xc)  # 24 controls < 10 x 20 dimensions
    >>> used, cov.shape, bool(0 < alpha < 1)
    ('ledoit-wolf', (20, 20), True)
    """
    Xc = np.asarray(Xc, dtype=np.float64)
    n, d = Xc.shape
    if n < 2:
        raise ValueError(f"A control covariance needs at least 2 control samples, got {n}.")
    method = resolve_shrinkage(shrinkage, n, d)
    if method is None:
        return np.cov(Xc - Xc.mean(axis=0), rowvar=False, ddof=1).reshape(d, d), "empirical", 0.0
    from sklearn.covariance import OAS, LedoitWolf, ShrunkCovariance

    opts = {"store_precision": False, "assume_centered": False}
    if isinstance(method, float):
        est, used = ShrunkCovariance(shrinkage=method, **opts), "shrunk"
    else:
        est, used = (LedoitWolf if method == "ledoit-wolf" else OAS)(**opts), method
    est.fit(Xc)
    alpha = method if used == "shrunk" else float(est.shrinkage_)
    return np.asarray(est.covariance_, dtype=np.float64).reshape(d, d), used, alpha


def fit_whitening(
    X: np.ndarray,
    controls: np.ndarray,
    *,
    n_comps: int | None = None,
    eps: float = 1e-6,
    unit_norm: bool = False,
    shrinkage: str | float | None = "auto",
) -> Whitening:
    """Fit PCA whitening on the control rows of ``X``.

    Parameters
    ----------
    X
        Samples x dimensions.
    controls
        Boolean mask of the control rows (at least two).
    n_comps
        Number of principal components to keep (default: all ``d``).
    eps
        Regulariser added to every eigenvalue.
    unit_norm
        Scale whitened rows to unit norm.
    shrinkage
        Estimator of the control covariance (see :func:`control_covariance`): ``"auto"``
        (default: Ledoit-Wolf with fewer than ``10 * d`` controls, else empirical),
        ``"ledoit-wolf"``, ``"oas"``, a fixed intensity in [0, 1], or ``None`` for the empirical
        covariance (``ddof=1``, the only estimator before ``shrinkage`` existed). With few
        controls the default therefore gives a different whitening than earlier versions.

    Returns
    -------
    The fitted :class:`Whitening`, with the estimator used and its shrinkage intensity in
    ``covariance`` and ``shrinkage_intensity``. Eigenvector signs are fixed so that the largest
    absolute loading of every component is positive, which makes the result reproducible.

    Examples
    --------
    >>> import numpy as np
    >>> from featurelens.models.preprocess import fit_whitening
    >>> X = np.random.default_rng(0).normal(size=(300, 20))
    >>> controls = np.arange(300) < 30
    >>> w = fit_whitening(X, controls)  # 30 controls for 20 dimensions: Ledoit-Wolf
    >>> w.covariance, w.transform(X).shape
    ('ledoit-wolf', (300, 20))
    >>> fit_whitening(X, controls, shrinkage=None).covariance
    'empirical'
    """
    X = np.asarray(X, dtype=np.float64)
    controls = np.asarray(controls, dtype=bool)
    Xc = X[controls]
    if Xc.shape[0] < 2:
        raise ValueError(f"Whitening needs at least 2 control samples, got {Xc.shape[0]}.")
    d = X.shape[1]
    n_comps = d if n_comps is None else int(n_comps)
    if not 1 <= n_comps <= d:
        raise ValueError(f"`n_comps` must be between 1 and the embedding dimension {d}, got {n_comps}.")
    mean = Xc.mean(axis=0)
    cov, used, alpha = control_covariance(Xc, shrinkage)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:n_comps]
    evals = np.clip(evals[order], 0.0, None)
    flat = evals <= 1e-12 * max(float(evals.max(initial=0.0)), 1e-300)
    if eps <= 0 and flat.any():
        raise ValueError(
            f"The controls have no variance along {int(flat.sum())} of the {n_comps} kept directions (e.g. a "
            "dimension that is constant in every control), so whitening with eps=0 divides by zero. Pass eps > 0 "
            f"or keep fewer components (n_comps <= {int((~flat).sum())})."
        )
    comps = evecs[:, order].T
    flip = np.sign(comps[np.arange(n_comps), np.abs(comps).argmax(axis=1)])
    comps *= np.where(flip == 0, 1.0, flip)[:, None]
    return Whitening(
        mean=mean, components=comps, variances=evals, eps=float(eps), unit_norm=bool(unit_norm),
        covariance=used, shrinkage_intensity=alpha,
    )  # fmt: skip


@dataclass
class Moments:
    """Row count, per-dimension mean and variance (``ddof=0``), and the rows with NaN / Inf."""

    n: int
    mean: np.ndarray
    var: np.ndarray
    n_bad: int
    first_bad: int | None
    total: float


def block_moments(blocks) -> Moments:
    """Per-dimension moments of rows given block by block, in float64 per block only.

    Sums are taken around the first block's mean (a shift that keeps the variance exact when
    the mean is large); rows with NaN or Inf are counted and left out.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(5, 2, size=(100, 3))
    >>> m = block_moments([X[:30], X[30:]])
    >>> bool(np.allclose(m.mean, X.mean(0)) and np.allclose(m.var, X.var(0)))
    True
    """
    n, shift, s, ss, n_bad, first_bad, total, start = 0, None, None, None, 0, None, 0.0, 0
    for block in blocks:
        b = np.asarray(block, dtype=np.float64)
        ok = np.isfinite(b).all(axis=1)
        if not ok.all():
            if first_bad is None:
                first_bad = start + int(np.flatnonzero(~ok)[0])
            n_bad += int((~ok).sum())
            b = b[ok]
        start += len(ok)
        if b.shape[0] == 0:
            continue
        if shift is None:
            shift = b.mean(axis=0)
            s, ss = np.zeros_like(shift), np.zeros_like(shift)
        c = b - shift
        s += c.sum(axis=0)
        ss += (c * c).sum(axis=0)
        total += float(b.sum())
        n += b.shape[0]
    if n == 0:
        return Moments(0, np.zeros(0), np.zeros(0), n_bad, first_bad, total)
    m = s / n
    return Moments(n, shift + m, np.clip(ss / n - m * m, 0.0, None), n_bad, first_bad, total)


@dataclass
class Normalizer:
    """Per-embedding normalisation applied right before the dictionary.

    ``y = (x - mean) / scale`` followed, for ``"unit"``, by scaling every row to unit norm.

    - ``"none"``: identity.
    - ``"center"``: subtract the mean.
    - ``"scale"``: divide by one global factor so the mean squared distance of a row to the
      data mean equals the dimension (average per-dimension variance 1). The mean is *not*
      subtracted (an SAE pre-bias learns it), so the geometry is unchanged.
    - ``"standardize"``: subtract the mean and divide every dimension by its standard deviation.
    - ``"unit"``: scale every row to unit L2 norm (ICFL's default).
    """

    method: str
    mean: np.ndarray
    scale: np.ndarray

    @property
    def unit_norm(self) -> bool:
        """Whether rows are scaled to unit norm."""
        return self.method == "unit"

    @classmethod
    def fit(cls, X: np.ndarray, method: str | None) -> Normalizer:
        """Estimate the normalisation of ``X`` for ``method``.

        The moments are summed over blocks of rows (:func:`block_moments`), so memory beyond ``X`` is
        one block in float64, never a float64 copy of the whole embedding.
        """
        method = "none" if method is None else str(method)
        check_choice(method, "normalize", NORMALIZE_OPTIONS, none=True)
        d = X.shape[1]
        if method in ("none", "unit"):
            return cls(method=method, mean=np.zeros(d), scale=np.ones(d))
        m = block_moments(X[s : s + _ROWS] for s in range(0, X.shape[0], _ROWS))
        return cls.from_moments(method, m.mean, m.var)

    @classmethod
    def from_moments(cls, method: str | None, mean: np.ndarray, var: np.ndarray) -> Normalizer:
        """The normalisation of data with per-dimension ``mean`` and ``var`` (``ddof=0``).

        For moments from :func:`block_moments` over data read in chunks; equals :meth:`fit` up to rounding.
        """
        method = "none" if method is None else str(method)
        check_choice(method, "normalize", NORMALIZE_OPTIONS, none=True)
        mean, var = np.asarray(mean, np.float64), np.clip(np.asarray(var, np.float64), 0.0, None)
        d = mean.shape[0]
        center = mean if method in ("center", "standardize") else np.zeros(d)
        scale = np.ones(d)
        if method == "scale":
            ms = float(var.sum() / d)
            scale = np.full(d, np.sqrt(ms) if ms > _TINY else 1.0)
        elif method == "standardize":
            sd = np.sqrt(var)
            scale = np.where(sd > _TINY, sd, 1.0)
        return cls(method=method, mean=center, scale=scale)

    def transform(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Return the normalised rows (float32) and, for ``"unit"``, the row norms that were removed.

        Rows are processed in blocks (float64 inside a block only), written into one float32 result.
        """
        n, d = X.shape
        Y = np.empty((n, d), dtype=np.float32)
        norms = np.empty(n, dtype=np.float64) if self.unit_norm else None
        for s in range(0, n, _ROWS):
            block = (np.asarray(X[s : s + _ROWS], dtype=np.float64) - self.mean) / self.scale
            if self.unit_norm:
                Y[s : s + _ROWS], norms[s : s + _ROWS] = _safe_unit(block)
            else:
                Y[s : s + _ROWS] = block
        return Y, norms

    def inverse(self, Y: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
        """Undo :meth:`transform`; ``norms`` are the row norms it returned (needed for ``"unit"``)."""
        Y = np.asarray(Y, dtype=np.float64)
        if self.unit_norm:
            if norms is None:
                raise ValueError("Undoing unit-norm scaling needs the original row norms.")
            Y = Y * np.asarray(norms, dtype=np.float64)[:, None]
        return (Y * self.scale + self.mean).astype(np.float32, copy=False)

    def inverse_linear(self, Y: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
        """Undo the linear part only (for differences between embeddings)."""
        Y = np.asarray(Y, dtype=np.float64)
        if self.unit_norm:
            if norms is None:
                raise ValueError("Undoing unit-norm scaling needs the original row norms.")
            Y = Y * np.asarray(norms, dtype=np.float64)[:, None]
        return (Y * self.scale).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        """Plain-array representation, as stored in ``adata.uns``."""
        return {
            "normalize": self.method,
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            "unit_norm": self.unit_norm,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            method=str(d["normalize"]),
            mean=np.asarray(d["mean"], dtype=np.float64),
            scale=np.asarray(d["scale"], dtype=np.float64),
        )


@dataclass
class Preprocess:
    """Optional whitening followed by a :class:`Normalizer`.

    Stored as ``uns[key]["preprocess"]``: the normaliser's fields at the top level and the
    whitening, when one was applied, under ``"whiten"``.
    """

    normalizer: Normalizer
    whitening: Whitening | None = None

    def transform(self, X: np.ndarray, *, whiten: bool = True) -> tuple[np.ndarray, dict]:
        """Apply the chain; ``whiten=False`` skips whitening (input already whitened).

        Returns the transformed rows and a context holding the row norms removed by unit-norm
        steps, which :meth:`inverse` needs.
        """
        ctx: dict = {"whitened": False}
        if whiten and self.whitening is not None:
            w = self.whitening
            X = ((np.asarray(X, dtype=np.float64) - w.mean) @ w.components.T) * w.scales
            if w.unit_norm:
                X, ctx["white_norms"] = _safe_unit(X)
            ctx["whitened"] = True
        Y, ctx["norms"] = self.normalizer.transform(X)
        return Y, ctx

    def inverse(self, Y: np.ndarray, ctx: dict, *, linear: bool = False) -> np.ndarray:
        """Map rows from dictionary space back to the space :meth:`transform` started from.

        With ``linear=True`` means are not added back (for differences between embeddings).
        Undoing a whitening that dropped components returns the least-squares pre-image inside
        the kept principal subspace.
        """
        norm = self.normalizer
        X = norm.inverse_linear(Y, ctx.get("norms")) if linear else norm.inverse(Y, ctx.get("norms"))
        if ctx.get("whitened"):
            w = self.whitening
            if w.unit_norm:
                X = X * np.asarray(ctx["white_norms"], dtype=np.float32)[:, None]
            X = w.inverse_linear(X)
            if not linear:
                X = X + w.mean.astype(np.float32)
        return X

    def to_dict(self) -> dict:
        """Plain representation, as stored in ``adata.uns``."""
        out = self.normalizer.to_dict()
        if self.whitening is not None:
            out["whiten"] = self.whitening.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Rebuild from :meth:`to_dict` output."""
        w = d.get("whiten")
        return cls(normalizer=Normalizer.from_dict(d), whitening=None if w is None else Whitening.from_dict(w))
