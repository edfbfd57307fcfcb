"""Helpers shared by the AnnData-facing modules."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData


def version() -> str:
    """The installed featurelens version."""
    from . import __version__

    return __version__


def check_adata(adata: Any) -> None:
    """Raise a clear error unless ``adata`` is a non-empty AnnData."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData object, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError("The AnnData object has no observations (n_obs == 0); there is nothing to learn from.")


def view_to_actual(adata: AnnData) -> None:
    """Turn a view into an actual AnnData in place (as scanpy does), with a warning."""
    if adata.is_view:
        warnings.warn(
            "Received a view of an AnnData. Making a copy so results can be written to it.",
            UserWarning,
            stacklevel=3,
        )
        adata._init_as_actual(adata.copy())


def available_reps(adata: AnnData) -> str:
    """Human-readable list of obsm keys."""
    keys = list(adata.obsm.keys())
    return ", ".join(repr(k) for k in keys) if keys else "nothing"


def get_rep(adata: AnnData, use_rep: str, *, what: str = "use_rep") -> np.ndarray:
    """Dense float32 copy of ``adata.obsm[use_rep]`` (``"X"`` reads ``adata.X``), validated.

    Raises
    ------
    ValueError
        When the representation is missing, not two-dimensional, or has NaN/Inf rows.
    """
    if not isinstance(use_rep, str):
        raise TypeError(f"`{what}` must be the name of an entry of adata.obsm (a str), got {type(use_rep).__name__}.")
    if use_rep == "X":
        X = adata.X
        if X is None:
            raise ValueError("`use_rep='X'` but adata.X is empty.")
    elif use_rep in adata.obsm:
        X = adata.obsm[use_rep]
    else:
        hint = " Run `sc.pp.pca(adata)` first." if use_rep == "X_pca" else ""
        raise ValueError(
            f"`{what}={use_rep!r}` is not in adata.obsm, which has {available_reps(adata)}.{hint} "
            f"Pass `{what}=` the key of the embedding to use."
        )
    if isinstance(X, pd.DataFrame):
        X = X.to_numpy()
    if sp.issparse(X):
        X = X.toarray()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"adata.obsm[{use_rep!r}] must be two-dimensional (cells x dimensions), got shape {X.shape}.")
    if X.shape[1] < 1:
        raise ValueError(f"adata.obsm[{use_rep!r}] has no columns.")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"adata.obsm[{use_rep!r}] must be numeric, got dtype {X.dtype}.")
    X = X.astype(np.float32, copy=True)
    check_finite(X, use_rep, adata.obs_names)
    return X


def check_finite(X: np.ndarray, name: str, obs_names=None) -> None:
    """Raise a clear error naming how many rows of ``X`` contain NaN or Inf."""
    bad = ~np.isfinite(X).all(axis=1)
    n_bad = int(bad.sum())
    if n_bad:
        first = ""
        if obs_names is not None:
            names = list(np.asarray(obs_names)[bad][:3])
            first = f" (first: {', '.join(map(str, names))})"
        raise ValueError(
            f"{n_bad} of {X.shape[0]} rows of {name!r} contain NaN or Inf values{first}. Remove or impute them, "
            f"for example `adata = adata[np.isfinite(adata.obsm[{name!r}]).all(axis=1)].copy()`."
        )


def resolve_device(device: Any = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use device='auto' or 'cpu'.")
    return dev


def plain(value: Any) -> Any:
    """Convert a value to a plain str/int/float/bool/None for ``uns[...]["params"]``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, list | tuple | np.ndarray | pd.Index | pd.Series):
        return json.dumps([plain(v) for v in list(value)])
    return str(value)


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Apply :func:`plain` to every value."""
    return {str(k): plain(v) for k, v in params.items()}


def feature_names(n: int) -> pd.Index:
    """Names of ``n`` dictionary features: ``f0, f1, ...``."""
    return pd.Index([f"f{i}" for i in range(n)], dtype=object)


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Validate an integer option."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    return int(value)
