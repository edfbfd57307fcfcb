"""Reading matrices out of an AnnData: embeddings (``obsm``), expression (``X`` / layers), obs columns.

Every tool, accessor and plot reads through these functions, so checks (missing keys, shapes,
NaN / Inf, duplicate names, negative values where a method needs counts) are written once and
word their errors the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._blockwise import is_lazy, row_blocks, to_memory

#: rows checked at a time for NaN / Inf in a dense matrix (bounds the temporary boolean array)
_ROWS = 4096


def check_adata(adata: Any) -> None:
    """Raise a clear error unless ``adata`` is a non-empty AnnData."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData object, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError("The AnnData object has no observations (n_obs == 0); there is nothing to learn from.")


def available_reps(adata: AnnData) -> str:
    """Human-readable list of obsm keys."""
    keys = list(adata.obsm.keys())
    return ", ".join(repr(k) for k in keys) if keys else "nothing"


def available(columns, what: str = "nothing") -> str:
    """Human-readable list of names (obs columns, layers, ...)."""
    names = [repr(str(c)) for c in columns]
    return ", ".join(names) if names else what


# ---------------------------------------------------------------------- embeddings
def raw_embedding(adata: AnnData, use_rep: str, *, what: str = "use_rep"):
    """``adata.obsm[use_rep]`` (``"X"`` reads ``adata.X``) as stored, with a clear error when absent."""
    if not isinstance(use_rep, str):
        raise TypeError(f"`{what}` must be the name of an entry of adata.obsm (a str), got {type(use_rep).__name__}.")
    if use_rep == "X":
        if adata.X is None:
            raise ValueError(f"`{what}='X'` but adata.X is empty.")
        return adata.X
    if use_rep not in adata.obsm:
        hint = " Run `sc.pp.pca(adata)` first." if use_rep == "X_pca" else ""
        raise ValueError(
            f"`{what}={use_rep!r}` is not in adata.obsm, which has {available_reps(adata)}.{hint} "
            f"Pass `{what}=` the key of the embedding to use."
        )
    return adata.obsm[use_rep]


def embedding(adata: AnnData, use_rep: str, *, what: str = "use_rep", copy: bool = True) -> np.ndarray:
    """Dense float32 copy of ``adata.obsm[use_rep]`` (``"X"`` reads ``adata.X``), validated.

    With ``copy=False`` a float32 array in memory is returned as it is (the caller must not modify it).

    Raises
    ------
    ValueError
        When the representation is missing, not two-dimensional, not numeric, or has NaN/Inf rows.
    """
    X = raw_embedding(adata, use_rep, what=what)
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
    X = X.astype(np.float32, copy=copy)
    check_finite(X, use_rep, adata.obs_names)
    return X


def is_out_of_core(X) -> bool:
    """Whether ``X`` is read from disk or computed lazily (dask, h5py, zarr, a backed AnnData, memmap)."""
    return is_lazy(X)


def embedding_source(adata: AnnData, use_rep: str, *, what: str = "use_rep"):
    """The embedding for training: in memory, or read chunk by chunk from disk.

    A validated float32 array when the embedding is in memory, otherwise a
    :class:`~featurelens.models.data.RowSource` that reads it chunk by chunk (dask arrays in ``obsm``,
    backed or lazily read AnnData, memmaps).
    """
    from ..models.data import RowSource

    X = raw_embedding(adata, use_rep, what=what)
    if not is_out_of_core(X):
        return embedding(adata, use_rep, what=what, copy=False)  # read only: the learners never modify it
    if sp.issparse(X) or "sparse" in type(X).__name__.lower():
        raise ValueError(f"{_where(use_rep)} is a sparse matrix on disk; dictionaries are trained on dense embeddings.")
    return RowSource(X, name=_where(use_rep))


def _where(use_rep: str) -> str:
    return "adata.X" if use_rep == "X" else f"adata.obsm[{use_rep!r}]"


def check_finite(X: np.ndarray, name: str, obs_names=None) -> None:
    """Raise a clear error naming how many rows of ``X`` contain NaN or Inf."""
    rows = 65536  # by blocks: no cells x dimensions boolean matrix
    bad = np.concatenate([~np.isfinite(X[s : s + rows]).all(axis=1) for s in range(0, X.shape[0], rows)] or [[]])
    bad = bad.astype(bool)
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


# ---------------------------------------------------------------------- expression
def _layer_name(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def expression(adata: AnnData, layer: str | None = None, *, nonnegative: bool = False):
    """``adata.X`` or a layer (cells x genes) as CSR or a dense array, checked up front.

    Checks that the matrix exists, that ``adata.var_names`` are unique, that every value is
    finite and, with ``nonnegative``, that no value is negative; each error says how to fix it.
    """
    if layer is None:
        X = adata.X
        if X is None:
            raise ValueError("adata.X is empty; pass `layer=` with the expression values.")
    else:
        if not isinstance(layer, str) or layer not in adata.layers:
            raise ValueError(
                f"`layer={layer!r}` is not in adata.layers (layers present: {available(adata.layers, 'none')})."
            )
        X = adata.layers[layer]
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()][:3]
        raise ValueError(
            f"adata.var_names are not unique ({adata.var_names.duplicated().sum()} duplicates, e.g. "
            f"{', '.join(map(repr, dup))}); call `adata.var_names_make_unique()` first."
        )
    if not is_lazy(X):
        X = sp.csr_matrix(X) if sp.issparse(X) and not sp.isspmatrix_csr(X) else X
        X = X if sp.issparse(X) else np.asarray(X)
    if X.shape != (adata.n_obs, adata.n_vars):
        raise ValueError(f"{_layer_name(layer)} has shape {X.shape}, expected (n_obs, n_vars) = {adata.shape}.")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{_layer_name(layer)} must be numeric, got dtype {X.dtype}.")
    _check_expression_values(X, layer, nonnegative)
    return X


def _blocks(X):
    """The stored values of a sparse matrix, or row blocks of a dense one (read block by block from disk)."""
    if sp.issparse(X):
        yield X.data
        return
    if is_lazy(X):
        for _, _, blk in row_blocks(X):
            yield blk.data if sp.issparse(blk) else blk
        return
    for s in range(0, X.shape[0], _ROWS):
        yield X[s : s + _ROWS]


def _check_expression_values(X, layer: str | None, nonnegative: bool) -> None:
    name = _layer_name(layer)
    n_bad, lowest = 0, np.inf
    for block in _blocks(X):
        if block.size:
            n_bad += int(block.size - np.count_nonzero(np.isfinite(block)))
            lowest = min(lowest, float(np.nanmin(block)) if np.isfinite(block).any() else np.inf)
    if n_bad:
        raise ValueError(
            f"{name} holds {n_bad} NaN or Inf values; expression must be finite. Impute or drop the affected cells "
            "or genes first (e.g. `adata = adata[:, np.isfinite(adata.X.toarray()).all(0)].copy()`)."
        )
    if nonnegative and lowest < 0:
        raise ValueError(
            f"{name} has negative values (minimum {lowest:.3g}), but this method needs non-negative expression "
            "(counts or log-normalised values). It looks scaled (e.g. by `sc.pp.scale`): pass `layer=` a layer with "
            "the log-normalised values, e.g. saved with `adata.layers['log1p'] = adata.X.copy()` before scaling."
        )


def lowest_value(X) -> float:
    """The smallest value of ``X`` (0 for an empty matrix; implicit zeros of a sparse one do not count)."""
    return min((float(b.min()) for b in _blocks(X) if b.size), default=0.0)


def looks_log1p(adata: AnnData, X, layer: str | None) -> bool:
    """Whether expression looks ``log1p``-transformed: ``uns["log1p"]`` for ``X``, else non-integer values < 50."""
    if layer is None and "log1p" in adata.uns:
        return True
    if is_lazy(X):  # the first block of rows
        X = to_memory(X[: min(X.shape[0], 4096)])
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    sample = data[: min(data.size, 200000)]
    if sample.size == 0:
        return False
    integer = np.all(np.equal(np.mod(sample, 1), 0))
    return bool(not integer and sample.max() < 50)


def resolve_log1p(
    adata: AnnData, X, layer: str | None, log1p: bool | None, *, nonnegative_checked: bool = False
) -> bool:
    """``log1p`` or its detected value; a log1p matrix must not hold negative values.

    ``nonnegative_checked`` says that :func:`expression` has already checked (skips a pass over ``X``).
    """
    is_log = looks_log1p(adata, X, layer) if log1p is None else bool(log1p)
    if is_log and not nonnegative_checked:
        lowest = lowest_value(X)
        if lowest < 0:
            source = (
                "adata.uns['log1p'] is set"
                if log1p is None and layer is None and "log1p" in adata.uns
                else ("log1p=True was given" if log1p else "the values look log-transformed")
            )
            raise ValueError(
                f"{_layer_name(layer)} has negative values (minimum {lowest:.3g}) although {source}: it looks scaled "
                "(e.g. by `sc.pp.scale`), and expm1 of a scaled value is not an expression level. Pass `layer=` a "
                "layer with the log-normalised values, or `log1p=False` if the values are on a linear scale."
            )
    return is_log


# ---------------------------------------------------------------------- obs columns
def obs_column(adata: AnnData, column: str, *, what: str = "groupby") -> pd.Series:
    """``adata.obs[column]`` or a clear error naming the columns present."""
    if not isinstance(column, str) or column not in adata.obs:
        raise ValueError(f"`{what}={column!r}` is not a column of adata.obs, which has {available(adata.obs.columns)}.")
    col = adata.obs[column]
    if not isinstance(col, pd.Series):  # an AnnData read lazily holds obs as an xarray dataset
        col = col.to_pandas() if hasattr(col, "to_pandas") else pd.Series(np.asarray(col), index=adata.obs_names)
    return col


def group_codes(
    adata: AnnData, groupby: str, *, min_size: int = 2, what: str = "groupby", min_groups: int = 2
) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and category names of ``adata.obs[groupby]``, validated.

    Raises
    ------
    ValueError
        For a missing column, missing values, fewer than ``min_groups`` groups or groups smaller
        than ``min_size``.
    """
    col = obs_column(adata, groupby, what=what)
    if col.isna().any():
        raise ValueError(
            f"adata.obs[{groupby!r}] has {int(col.isna().sum())} missing values; fill them or subset the cells first."
        )
    cat = col.astype("category").cat.remove_unused_categories()
    cats = cat.cat.categories
    if len(cats) < min_groups:
        raise ValueError(
            f"adata.obs[{groupby!r}] has a single group ({cats[0]!r}); comparing groups needs at least two."
        )
    codes = cat.cat.codes.to_numpy().astype(np.int64)
    sizes = np.bincount(codes, minlength=len(cats))
    small = [str(c) for c, n in zip(cats, sizes, strict=True) if n < min_size]
    if small:
        raise ValueError(
            f"Groups of adata.obs[{groupby!r}] with fewer than {min_size} cells: {', '.join(small)}. "
            "A standard deviation needs at least two cells; remove or merge these groups first."
        )
    return codes, pd.Index(cats.astype(str))
