"""Control-based PCA whitening and embedding normalisation of ``adata.obsm`` entries."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._utils import check_adata, get_rep, plain, plain_params, version, view_to_actual
from ..models.preprocess import Normalizer, Whitening, fit_whitening

WHITEN_METHOD = "whiten"


def _control_mask(
    adata: AnnData,
    control_key: str | None,
    control_value: Any,
    controls: Any,
) -> np.ndarray:
    if controls is not None:
        if control_key is not None or control_value is not None:
            raise ValueError("Pass either `controls=` (a boolean mask) or `control_key=`/`control_value=`, not both.")
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
    if control_key is None:
        raise ValueError(
            "Say which cells are the controls: `control_key=` (an obs column) with `control_value=`, "
            "or `controls=` (a boolean mask)."
        )
    if control_key not in adata.obs:
        cols = ", ".join(map(repr, adata.obs.columns)) or "nothing"
        raise ValueError(f"`control_key={control_key!r}` is not a column of adata.obs, which has {cols}.")
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


def find_whitening(adata: AnnData, obsm_key: str) -> tuple[str, dict] | None:
    """The ``uns`` entry written by :func:`whiten` that produced ``adata.obsm[obsm_key]``, if any."""
    for key, entry in adata.uns.items():
        if not isinstance(entry, dict):
            continue
        params = entry.get("params")
        if isinstance(params, dict) and params.get("method") == WHITEN_METHOD and params.get("obsm_key") == obsm_key:
            return key, entry
    return None


def whiten(
    adata: AnnData,
    use_rep: str = "X_pca",
    *,
    control_key: str | None = None,
    control_value: Any = None,
    controls: Any = None,
    n_comps: int | None = None,
    eps: float = 1e-6,
    unit_norm: bool = False,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Whiten an embedding on control cells (PCA whitening fitted on the controls).

    Every row is centred on the mean of the control cells ``mu_c`` and mapped with
    ``T(x) = Lambda^{-1/2} V^T (x - mu_c)``, where ``V`` and ``Lambda`` are the eigenvectors and
    eigenvalues of the control covariance (``eps`` is added to every eigenvalue). The controls
    then have zero mean and identity covariance, so directions in which perturbations differ
    from controls stand out. Optionally rows are scaled to unit norm afterwards. This is the
    preprocessing of the ICFL paper (Donhauser et al. 2025, sec. 4.1).

    Parameters
    ----------
    adata
        Annotated data matrix.
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
        Regulariser added to every eigenvalue before the inverse square root.
    unit_norm
        Scale whitened rows to unit L2 norm.
    key_added
        Name of the result: ``adata.obsm[f"X_{key_added}"]`` and ``adata.uns[key_added]``
        (default ``"whitened"``).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``.

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`numpy.ndarray` (n_obs, n_comps), float32
        The whitened embedding.
    ``adata.uns[key_added]`` : :class:`dict`
        ``"params"`` (options, number of controls), ``"mean"`` (control mean, d),
        ``"components"`` (n_comps x d), ``"variances"`` and ``"scales"`` (n_comps).
        :func:`featurelens.pp.apply_whitening` applies the same map to new data, and the
        dictionary learners record it so :func:`featurelens.tl.encode` can repeat it.

    Examples
    --------
    >>> import featurelens as fl, scanpy as sc
    >>> fl.pp.whiten(adata, "X_pca", control_key="perturbation", control_value="control")
    >>> fl.tl.icfl(adata, use_rep="X_whitened")
    """
    check_adata(adata)
    key_added = "whitened" if key_added is None else str(key_added)
    obsm_key = f"X_{key_added}"
    if obsm_key == use_rep:
        raise ValueError(
            f"`key_added={key_added!r}` would overwrite the input adata.obsm[{use_rep!r}]; choose another."
        )
    X = get_rep(adata, use_rep)
    mask = _control_mask(adata, control_key, control_value, controls)
    n_ctrl = int(mask.sum())
    d = X.shape[1]
    if n_ctrl < 2:
        raise ValueError(
            f"Whitening needs at least 2 control cells, found {n_ctrl}. Check `control_key`/`control_value`."
        )
    if n_comps is not None and not 1 <= int(n_comps) <= d:
        raise ValueError(f"`n_comps` must be between 1 and the embedding dimension {d}, got {n_comps}.")
    if eps < 0:
        raise ValueError(f"`eps` must be non-negative, got {eps}.")
    kept = d if n_comps is None else int(n_comps)
    rank = n_ctrl - 1
    if kept > rank:
        warnings.warn(
            f"Only {n_ctrl} control cells for {d} dimensions: the control covariance has rank at most {rank}, so "
            f"{kept - rank} of the {kept} whitened directions have no control variance and are regularised with "
            f"eps={eps:g} (which amplifies them by up to {1 / np.sqrt(eps) if eps > 0 else np.inf:.3g}x). "
            f"Pass n_comps<={rank} to drop them, or a larger eps.",
            UserWarning,
            stacklevel=2,
        )
    if eps == 0 and kept > rank:
        raise ValueError("With eps=0 and fewer controls than dimensions the whitening is singular; set eps > 0.")

    white = fit_whitening(X, mask, n_comps=n_comps, eps=eps, unit_norm=unit_norm)
    Y = white.transform(X)

    adata = adata.copy() if copy else adata
    view_to_actual(adata)
    adata.obsm[obsm_key] = Y
    entry = white.to_dict()
    entry["params"] = plain_params(
        {
            "method": WHITEN_METHOD,
            "use_rep": use_rep,
            "obsm_key": obsm_key,
            "control_key": control_key,
            "control_value": (
                json.dumps([plain(v) for v in control_value])
                if isinstance(control_value, list | tuple | np.ndarray | pd.Index)
                else plain(control_value)
            ),
            "n_controls": n_ctrl,
            "n_comps": white.n_comps,
            "eps": eps,
            "unit_norm": unit_norm,
            "featurelens_version": version(),
        }
    )
    adata.uns[key_added] = entry
    return adata if copy else None


def apply_whitening(
    adata: AnnData,
    key: str = "whitened",
    *,
    source: AnnData | None = None,
    use_rep: str | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
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
        Name of the result (default: ``key``).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``.

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`numpy.ndarray`
        The whitened embedding.
    ``adata.uns[key_added]`` : :class:`dict`
        A copy of the whitening (when ``source`` is another object).

    Examples
    --------
    >>> fl.pp.whiten(ref, "X_pca", control_key="perturbation", control_value="control")
    >>> fl.pp.apply_whitening(query, "whitened", source=ref)
    """
    check_adata(adata)
    src = adata if source is None else source
    if key not in src.uns or not isinstance(src.uns[key], dict) or "components" not in src.uns[key]:
        raise ValueError(f"No whitening stored under uns[{key!r}]; run `fl.pp.whiten(..., key_added={key!r})` first.")
    entry = src.uns[key]
    params = entry.get("params", {})
    use_rep = params.get("use_rep", "X_pca") if use_rep is None else use_rep
    key_added = key if key_added is None else key_added
    X = get_rep(adata, use_rep)
    white = Whitening.from_dict(entry)
    if X.shape[1] != white.mean.shape[0]:
        raise ValueError(
            f"adata.obsm[{use_rep!r}] has {X.shape[1]} dimensions but the whitening was fitted on "
            f"{white.mean.shape[0]}; use the same embedding (e.g. project with the same PCA)."
        )
    Y = white.transform(X)
    adata = adata.copy() if copy else adata
    view_to_actual(adata)
    adata.obsm[f"X_{key_added}"] = Y
    if src is not adata or key_added != key:
        new = {k: (v.copy() if isinstance(v, np.ndarray | dict) else v) for k, v in entry.items()}
        new["params"] = dict(entry.get("params", {}), use_rep=use_rep, obsm_key=f"X_{key_added}")
        adata.uns[key_added] = new
    return adata if copy else None


def normalize_embedding(
    adata: AnnData,
    use_rep: str = "X_pca",
    *,
    method: str = "unit",
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Normalise an embedding: centre, scale, standardise or scale rows to unit norm.

    The dictionary learners apply the same normalisations internally (``normalize=``) and
    record them; use this function to inspect or reuse a normalised embedding.

    Parameters
    ----------
    adata
        Annotated data matrix.
    use_rep
        Key of the embedding in ``adata.obsm``.
    method
        ``"center"``, ``"scale"`` (one global factor giving average per-dimension variance 1),
        ``"standardize"`` (per-dimension z-scores) or ``"unit"`` (rows to unit L2 norm).
    key_added
        The result goes to ``adata.obsm[key_added]`` (default ``f"{use_rep}_{method}"``).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``.

    Sets the following fields:

    ``adata.obsm[key_added]`` : :class:`numpy.ndarray`, float32
        The normalised embedding.

    Examples
    --------
    >>> fl.pp.normalize_embedding(adata, "X_pca", method="unit")
    """
    check_adata(adata)
    X = get_rep(adata, use_rep)
    if method in (None, "none"):
        raise ValueError("`method='none'` does nothing; choose 'center', 'scale', 'standardize' or 'unit'.")
    Y, _ = Normalizer.fit(X, method).transform(X)
    adata = adata.copy() if copy else adata
    view_to_actual(adata)
    adata.obsm[key_added or f"{use_rep}_{method}"] = Y
    return adata if copy else None
