"""Control-based PCA whitening and embedding normalisation of ``adata.obsm`` entries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import check_bool, check_choice, check_nonnegative
from .._core import (
    available,
    claim,
    dictionary_keys,
    doc,
    embedding,
    is_whitening,
    plain,
    stem,
    tool,
    tool_params,
    warn,
)
from .._core._dictionary import WHITEN_METHOD
from ..models.preprocess import (
    NORMALIZE_OPTIONS,
    Normalizer,
    Whitening,
    check_shrinkage,
    fit_whitening,
    resolve_shrinkage,
)


def _mask_from_controls(adata: AnnData, controls: Any) -> np.ndarray:
    """A boolean mask given as an array, a Series or the name of a boolean obs column."""
    if isinstance(controls, str):
        if controls not in adata.obs:
            raise ValueError(f"`controls={controls!r}` is not a column of adata.obs.")
        controls = adata.obs[controls]
    if isinstance(controls, pd.Series):
        if not controls.index.equals(adata.obs_names):
            controls = controls.reindex(adata.obs_names)
        controls = controls.to_numpy()
    mask = np.asarray(controls)
    if mask.dtype != bool:
        if mask.dtype == object and all(isinstance(v, bool | np.bool_) for v in mask):
            mask = mask.astype(bool)
        else:
            raise TypeError(f"`controls` must be a boolean mask over cells, got dtype {mask.dtype}.")
    if mask.shape != (adata.n_obs,):
        raise ValueError(f"`controls` has shape {mask.shape}, expected ({adata.n_obs},) (one entry per cell).")
    return mask


def _control_mask(adata: AnnData, control_key: str | None, control_value: Any, controls: Any) -> np.ndarray:
    if controls is not None:
        if control_key is not None or control_value is not None:
            raise ValueError("Pass either `controls=` (a boolean mask) or `control_key=`/`control_value=`, not both.")
        return _mask_from_controls(adata, controls)
    if control_key is None:
        raise ValueError(
            "Say which cells are the controls: `control_key=` (an obs column) with `control_value=`, "
            "or `controls=` (a boolean mask)."
        )
    if control_key not in adata.obs:
        raise ValueError(
            f"`control_key={control_key!r}` is not a column of adata.obs, which has {available(adata.obs.columns)}."
        )
    if control_value is None:
        raise ValueError(f"Pass `control_value=` (the value(s) of adata.obs[{control_key!r}] that mark controls).")
    col = adata.obs[control_key]
    values = (
        list(control_value)
        if isinstance(control_value, Sequence | np.ndarray | pd.Index) and not isinstance(control_value, str)
        else [control_value]
    )
    mask = col.isin(values).to_numpy()
    if not mask.any():
        present = pd.unique(col.astype(str))[:10]
        raise ValueError(
            f"No cell has adata.obs[{control_key!r}] in {values!r}. Values present include: {', '.join(present)}."
        )
    return mask


def _stale_dictionaries(adata: AnnData, obsm_key: str) -> list[str]:
    """Dictionaries trained on ``adata.obsm[obsm_key]`` (about to be recomputed)."""
    return [k for k in dictionary_keys(adata) if adata.uns[k]["params"].get("use_rep") == obsm_key]


def _whitening_params(use_rep, obsm_key, control_key, control_value, n_ctrl, white, shrinkage) -> dict:
    value = (
        json.dumps([plain(v) for v in control_value])
        if isinstance(control_value, list | tuple | np.ndarray | pd.Index)
        else plain(control_value)
    )
    return tool_params(
        method=WHITEN_METHOD, use_rep=use_rep, obsm_key=obsm_key, control_key=control_key, control_value=value,
        n_controls=n_ctrl, n_comps=white.n_comps, eps=white.eps, unit_norm=white.unit_norm, shrinkage=shrinkage,
        covariance=white.covariance, shrinkage_intensity=white.shrinkage_intensity,
    )  # fmt: skip


def _check_controls(n_ctrl: int, d: int, n_comps, eps: float, shrunk: bool) -> int:
    """The number of components kept; warns when the controls cannot support them.

    ``shrunk``: the covariance is shrunk towards a multiple of the identity, so it has full rank
    even with fewer controls than dimensions.
    """
    if n_ctrl < 2:
        raise ValueError(
            f"Whitening needs at least 2 control cells, found {n_ctrl}. Check `control_key`/`control_value`."
        )
    if n_comps is not None and not (isinstance(n_comps, int | np.integer) and 1 <= int(n_comps) <= d):
        raise ValueError(f"`n_comps` must be between 1 and the embedding dimension {d}, got {n_comps!r}.")
    kept = d if n_comps is None else int(n_comps)
    rank = n_ctrl - 1
    if shrunk:
        return kept
    if kept > rank and eps == 0:
        raise ValueError(
            "With eps=0 and fewer controls than dimensions the whitening is singular; set eps > 0 or shrink the "
            "covariance (shrinkage='ledoit-wolf')."
        )
    if kept > rank:
        warn(
            f"Only {n_ctrl} control cells for {d} dimensions: the control covariance has rank at most {rank}, so "
            f"{kept - rank} of the {kept} whitened directions have no control variance and are regularised with "
            f"eps={eps:g} (which amplifies them by up to {1 / np.sqrt(eps):.3g}x). "
            f"Pass n_comps<={rank} to drop them, a larger eps, or shrinkage='ledoit-wolf'."
        )
    return kept


@tool
@doc
def whiten(
    adata: AnnData,
    use_rep: str = "X_pca",
    *,
    control_key: str | None = None,
    control_value: Any = None,
    controls: Any = None,
    n_comps: int | None = None,
    eps: float = 1e-6,
    shrinkage: str | float | None = "auto",
    unit_norm: bool = False,
    key_added: str | None = None,
) -> None:
    """Whiten an embedding on control cells (PCA whitening fitted on the controls).

    Every row is centred on the mean of the control cells ``mu_c`` and mapped with
    ``T(x) = Lambda^{-1/2} V^T (x - mu_c)``, where ``V`` and ``Lambda`` are the eigenvectors and
    eigenvalues of the control covariance (``eps`` is added to every eigenvalue). The controls
    then have zero mean and (with the empirical covariance) identity covariance, so directions
    in which perturbations differ from controls stand out. Optionally rows are scaled to unit
    norm afterwards. This is the preprocessing of the ICFL paper (Donhauser et al. 2025, sec. 4.1).

    With few controls the empirical covariance is noisy: its smallest eigenvalues are too small,
    and whitening amplifies exactly those directions. By default (``shrinkage="auto"``) the
    covariance is therefore shrunk towards a multiple of the identity (Ledoit-Wolf) when there
    are fewer than 10 controls per dimension. This changes the result compared with earlier
    versions, which always used the empirical covariance; pass ``shrinkage=None`` to get that.

    Re-whitening under a key that dictionaries were trained on replaces the whitened embedding;
    those dictionaries keep their own copy of the previous whitening, which
    :func:`featurelens.tl.encode` applies to the unwhitened embedding from then on.

    Parameters
    ----------
    {doc_adata}
    use_rep
        Key of the embedding in ``adata.obsm`` (``"X"`` for ``adata.X``).
    control_key
        Column of ``adata.obs`` that marks the controls ...
    control_value
        ... together with the value (or list of values) that means "control".
    controls
        Alternatively, a boolean mask over cells (array, Series or the name of a boolean obs column).
    n_comps
        Number of principal components to keep (default: all dimensions). With fewer controls
        than dimensions, keep at most ``n_controls - 1``: the other directions have no control
        variance and are only held finite by ``eps``.
    eps
        Regulariser added to every eigenvalue before the inverse square root (``0`` only when the
        controls vary along every kept direction).
    shrinkage
        Estimator of the control covariance:

        - ``"auto"`` (default): ``"ledoit-wolf"`` when the number of controls ``n`` is below
          ``10 * d`` (``d`` the embedding dimension), otherwise the empirical covariance.
        - ``"ledoit-wolf"`` / ``"oas"``: :class:`sklearn.covariance.LedoitWolf` /
          :class:`sklearn.covariance.OAS`, shrinkage intensity chosen from the data.
        - a number ``alpha`` in [0, 1]: :class:`sklearn.covariance.ShrunkCovariance` with
          ``shrinkage=alpha``.
        - ``None``: the empirical covariance (:func:`numpy.cov`, ``ddof=1``), the only estimator
          of earlier versions.

        The shrunk estimates are scikit-learn's, ``(1 - alpha) S + alpha (tr(S) / d) I`` with
        ``S`` the maximum-likelihood covariance (``ddof=0``) around the control mean. With a
        shrunk covariance the whitened controls have zero mean but not exactly identity
        covariance, and fewer controls than dimensions need no ``n_comps`` or ``eps`` cap.
    unit_norm
        Scale whitened rows to unit L2 norm.
    key_added
        Stem of the result names: ``adata.obsm[f"X_{key_added}"]`` and ``adata.uns[key_added]``
        (default ``"whitened"``).

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`numpy.ndarray` (n_obs, n_comps), float32
        The whitened embedding.
    ``adata.uns[key_added]`` : :class:`dict`
        ``"params"`` (options, number of controls; ``"shrinkage"`` as requested, ``"covariance"``
        the estimator used: ``"empirical"``, ``"ledoit-wolf"``, ``"oas"`` or ``"shrunk"``, and
        ``"shrinkage_intensity"`` its intensity, 0.0 for empirical), ``"mean"`` (control mean, d),
        ``"components"`` (n_comps x d), ``"variances"`` (eigenvalues of the estimated covariance)
        and ``"scales"`` (n_comps), ``"covariance"`` and ``"shrinkage_intensity"`` again.
        :func:`featurelens.pp.apply_whitening` applies the same map to new data, and the
        dictionary learners record it so :func:`featurelens.tl.encode` can repeat it.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.pp.whiten(adata, "X_pca", control_key="condition", control_value="CTRL")
    >>> ctrl = adata.obsm["X_whitened"][(adata.obs["condition"] == "CTRL").to_numpy()]
    >>> bool(abs(ctrl.mean(0)).max() < 1e-3)
    True
    >>> adata.uns["whitened"]["params"]["covariance"]  # about 1,000 controls for 30 PCs
    'empirical'
    >>> fl.pp.whiten(adata, "X_pca", control_key="condition", control_value="CTRL", shrinkage="oas", key_added="oas")
    >>> 0 < adata.uns["oas"]["params"]["shrinkage_intensity"] < 1
    True
    """
    key = stem(key_added, "whitened")
    obsm_key = f"X_{key}"
    check_nonnegative(eps, "eps")
    check_bool(unit_norm, "unit_norm")
    shrinkage = check_shrinkage(shrinkage)
    X = embedding(adata, use_rep)
    claim(adata, key, kind="whitening", inputs=[use_rep])
    mask = _control_mask(adata, control_key, control_value, controls)
    n_ctrl = int(mask.sum())
    method = resolve_shrinkage(shrinkage, n_ctrl, X.shape[1])
    _check_controls(n_ctrl, X.shape[1], n_comps, eps, shrunk=method is not None and method != 0.0)
    white = fit_whitening(X, mask, n_comps=n_comps, eps=eps, unit_norm=unit_norm, shrinkage=shrinkage)
    Y = white.transform(X)
    stale = [k for k in _stale_dictionaries(adata, obsm_key) if is_whitening(adata.uns.get(key))]
    if stale:
        warn(
            f"Replacing adata.obsm[{obsm_key!r}], the input of dictionaries {', '.join(map(repr, stale))}. They keep "
            "the previous whitening and apply it to the unwhitened embedding when they encode."
        )
    adata.obsm[obsm_key] = Y
    entry = white.to_dict()
    entry["params"] = _whitening_params(use_rep, obsm_key, control_key, control_value, n_ctrl, white, shrinkage)
    adata.uns[key] = entry


@tool
@doc
def apply_whitening(
    adata: AnnData,
    key: str,
    *,
    source: AnnData | None = None,
    use_rep: str | None = None,
    key_added: str | None = None,
) -> None:
    """Apply a whitening fitted by :func:`whiten` to (new) data.

    Parameters
    ----------
    adata
        Annotated data matrix to transform.
    key
        Key of the whitening in ``source.uns``.
    source
        AnnData holding the whitening (default: ``adata`` itself).
    use_rep
        Embedding to transform (default: the one the whitening was fitted on).
    key_added
        Stem of the result names (default: ``key``).

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`numpy.ndarray`
        The whitened embedding.
    ``adata.uns[key_added]`` : :class:`dict`
        A copy of the whitening (when ``source`` is another object).

    Examples
    --------
    >>> import featurelens as fl
    >>> ref = fl.datasets.kang2018(preprocess=True)
    >>> query = ref[:100].copy()
    >>> fl.pp.whiten(ref, "X_pca", control_key="condition", control_value="CTRL")
    >>> fl.pp.apply_whitening(query, "whitened", source=ref)
    >>> bool(abs(query.obsm["X_whitened"] - ref.obsm["X_whitened"][:100]).max() < 1e-4)
    True
    """
    src = adata if source is None else source
    if not is_whitening(src.uns.get(key)):
        raise ValueError(f"No whitening stored under uns[{key!r}]; run `fl.pp.whiten(..., key_added={key!r})` first.")
    entry = src.uns[key]
    use_rep = entry["params"].get("use_rep", "X_pca") if use_rep is None else use_rep
    key_added = stem(key_added, key)
    X = embedding(adata, use_rep)
    white = Whitening.from_dict(entry)
    if X.shape[1] != white.mean.shape[0]:
        raise ValueError(
            f"adata.obsm[{use_rep!r}] has {X.shape[1]} dimensions but the whitening was fitted on "
            f"{white.mean.shape[0]}; use the same embedding (e.g. project with the same PCA)."
        )
    copy_entry = src is not adata or key_added != key
    if copy_entry:
        claim(adata, key_added, kind="whitening", inputs=[use_rep])
    adata.obsm[f"X_{key_added}"] = white.transform(X)
    if copy_entry:
        new = {k: (v.copy() if isinstance(v, np.ndarray | dict) else v) for k, v in entry.items()}
        new["params"] = dict(entry.get("params", {}), use_rep=use_rep, obsm_key=f"X_{key_added}")
        adata.uns[key_added] = new


@tool
@doc
def normalize_embedding(
    adata: AnnData,
    use_rep: str = "X_pca",
    *,
    method: str = "unit",
    key_added: str | None = None,
) -> None:
    """Normalise an embedding: centre, scale, standardise or scale rows to unit norm.

    The dictionary learners apply the same normalisations internally (``normalize=``) and
    record them; use this function to inspect or reuse a normalised embedding.

    Parameters
    ----------
    {doc_adata}
    use_rep
        Key of the embedding in ``adata.obsm``.
    method
        ``"center"``, ``"scale"`` (one global factor giving average per-dimension variance 1),
        ``"standardize"`` (per-dimension z-scores) or ``"unit"`` (rows to unit L2 norm).
    key_added
        Stem of the result: ``adata.obsm[f"X_{key_added}"]`` (default: ``use_rep`` without its
        ``"X_"`` prefix, then ``f"_{method}"``, e.g. ``X_pca_unit``). A full obsm key (``"X_..."``)
        still works in this release, with a FutureWarning.

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`numpy.ndarray`, float32
        The normalised embedding.

    Examples
    --------
    >>> import numpy as np, featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.pp.normalize_embedding(adata, "X_pca", method="unit")
    >>> bool(np.allclose(np.linalg.norm(adata.obsm["X_pca_unit"], axis=1), 1, atol=1e-5))
    True
    """
    check_choice(method, "method", [m for m in NORMALIZE_OPTIONS if m != "none"])
    base = use_rep[2:] if use_rep.startswith("X_") else "" if use_rep == "X" else f"{use_rep}_"
    default = f"{base}_{method}" if use_rep.startswith("X_") else f"{base}{method}"
    name = stem(key_added, default, legacy_obsm=True)
    X = embedding(adata, use_rep)
    claim(adata, name, kind=None, inputs=[use_rep])
    Y, _ = Normalizer.fit(X, method).transform(X)
    adata.obsm[f"X_{name}"] = Y
