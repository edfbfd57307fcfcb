"""Image embeddings (pooled and per-token) as AnnData: :func:`from_embeddings` and :func:`aggregate`."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_choice
from .._core import check_adata, version

UNS_KEY = "microscopy"
TOKENS_KEY = "X_tokens"
POOLING = ("mean", "cls")
AGG_FUNCS = ("mean", "median")


# ---------------------------------------------------------------------- validation helpers
def _as_array(x: Any, name: str) -> np.ndarray:
    """A numeric numpy array from an array-like or a torch tensor (never a view that we write to)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    if isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    if sp.issparse(x):
        raise TypeError(f"`{name}` must be a dense array, got a sparse matrix; call `.toarray()` first.")
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"`{name}` must be a numeric array, got dtype {arr.dtype}.")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        if bad.any():
            first = ", ".join(map(str, np.flatnonzero(bad)[:3]))
            raise ValueError(
                f"{int(bad.sum())} of {arr.shape[0]} rows of `{name}` contain NaN or Inf values (first rows: {first}). "
                "Remove or impute those images before building the AnnData."
            )


def _float_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"`tokens_dtype` must be a numpy float dtype such as 'float32', got {dtype!r}.") from err
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"`tokens_dtype` must be a float dtype ('float16', 'float32' or 'float64'), got {dt}.")
    return dt


def resolve_grid(n_tokens: int, grid: Any) -> tuple[int, int]:
    """Validate ``grid`` (``(h, w)`` with ``h * w == n_tokens``) or infer a square grid."""
    if grid is None:
        side = math.isqrt(int(n_tokens))
        if side * side != n_tokens:
            raise ValueError(
                f"Cannot infer the token grid: {n_tokens} patch tokens is not a perfect square. Pass `grid=(h, w)` "
                f"with h * w == {n_tokens} (and `cls_token=True` if the first token is a class token)."
            )
        return side, side
    if isinstance(grid, str) or not isinstance(grid, Sequence | np.ndarray) or len(grid) != 2:
        raise TypeError(f"`grid` must be a pair (h, w) of positive integers, got {grid!r}.")
    h, w = grid
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise TypeError(f"`grid` must be a pair (h, w) of positive integers, got {grid!r}.")
    if int(h) * int(w) != n_tokens:
        hint = " (with `cls_token=True` the first token is removed first)" if int(h) * int(w) == n_tokens - 1 else ""
        raise ValueError(
            f"`grid={tuple(int(v) for v in grid)}` has {int(h) * int(w)} cells but there are {n_tokens} patch tokens"
            f"{hint}. Pass a grid with h * w == {n_tokens}."
        )
    return int(h), int(w)


def _prepare_obs(obs: Any, n: int) -> pd.DataFrame:
    """A copy of ``obs`` with ``n`` rows and a unique string index."""
    if obs is None:
        return pd.DataFrame(index=pd.Index([str(i) for i in range(n)]))
    if isinstance(obs, pd.DataFrame):
        df = obs.copy()
    elif isinstance(obs, Mapping):
        try:
            df = pd.DataFrame({str(k): (list(v) if isinstance(v, pd.Series) else v) for k, v in obs.items()})
        except ValueError as err:
            lengths = {str(k): (len(v) if hasattr(v, "__len__") else "scalar") for k, v in obs.items()}
            raise ValueError(f"The columns of `obs` must all have length {n}; got lengths {lengths}.") from err
    else:
        raise TypeError(f"`obs` must be a pandas DataFrame, a dict of columns or None, got {type(obs).__name__}.")
    if df.shape[0] != n:
        raise ValueError(f"`obs` has {df.shape[0]} rows but there are {n} embeddings; pass one row per image.")
    if isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1:
        df.index = pd.Index([str(i) for i in range(n)])
    else:
        if not df.index.is_unique:
            dup = df.index[df.index.duplicated()].unique()[:3]
            raise ValueError(
                f"The index of `obs` has duplicate names ({', '.join(map(str, dup))}); observation names must be "
                "unique. Use `obs.reset_index()` (keeps the names as a column) or make them unique first."
            )
        names = pd.Index(df.index.map(str), dtype=object)
        if not names.is_unique:
            raise ValueError(
                "The index of `obs` becomes non-unique when converted to strings (e.g. 1 and '1'); make it unique "
                "as strings or use `obs.reset_index()`."
            )
        df.index = names
    df.columns = [str(c) for c in df.columns]
    return df


# ---------------------------------------------------------------------- public API
def from_embeddings(
    embeddings: Any,
    obs: pd.DataFrame | Mapping | None = None,
    *,
    tokens: Any = None,
    grid: tuple[int, int] | None = None,
    cls_token: bool = False,
    pool: str = "mean",
    tokens_dtype: Any = "float32",
    use_rep: str = "X_emb",
) -> AnnData:
    """Build an AnnData from image embeddings, one row per image, crop or well.

    ``embeddings`` is either one vector per image, shape ``(n, d)``, or token embeddings,
    shape ``(n, T, d)`` (a ViT's output tokens, or a CNN feature map flattened to ``H * W``
    tokens). Token embeddings are pooled into one vector per image by averaging the patch
    tokens (the class token, when ``cls_token=True``, is excluded; ``pool="cls"`` uses it
    instead). The patch tokens are kept so :func:`token_scores` can map dictionary features
    back onto the image.

    The pooled embedding is stored in ``adata.obsm[use_rep]`` so the dictionary tools apply
    unchanged (``fl.tl.icfl(adata, "X_emb")``); ``adata.X`` is left empty (``n_vars == 0``).
    Set ``adata.X = adata.obsm["X_emb"]`` yourself if a tool needs it there.

    Parameters
    ----------
    embeddings
        Array or torch tensor, ``(n, d)`` pooled embeddings or ``(n, T, d)`` token embeddings.
    obs
        Metadata, one row per image (plate, well, site, crop, perturbation, cell type, image
        path, ...): a :class:`pandas.DataFrame` or a dict of columns. A non-default index
        becomes the observation names and must be unique; a default ``RangeIndex`` gives
        ``"0", "1", ...``. The input is copied, never modified.
    tokens
        Token embeddings ``(n, T, d)`` to store next to ``(n, d)`` pooled ``embeddings`` (e.g. a
        ViT's class token as the embedding and its patch tokens here). Must live in the same
        ``d``-dimensional space as the embeddings.
    grid
        ``(h, w)`` layout of the patch tokens, row-major, with ``h * w == T`` (``T`` counted
        without the class token). Default: a square grid when ``T`` is a perfect square.
    cls_token
        Whether the first token is a class token; it is removed from the stored tokens and
        (with ``pool="mean"``) from the average.
    pool
        ``"mean"`` (average of the patch tokens) or ``"cls"`` (the class token; needs
        ``cls_token=True``). Only used for 3-D ``embeddings``.
    tokens_dtype
        Float dtype of the stored tokens (``"float16"`` halves their memory). The pooled
        embedding is computed in float64 and stored as float32.
    use_rep
        Key of the pooled embedding in ``adata.obsm``.

    Returns
    -------
    A new :class:`anndata.AnnData` with ``n`` observations and no variables.

    Sets the following fields:

    ``adata.obsm[use_rep]`` : :class:`numpy.ndarray` (n, d), float32
        The (pooled) embedding.
    ``adata.obsm["X_tokens"]`` : :class:`numpy.ndarray` (n, T, d)
        Patch tokens in row-major grid order (only when token embeddings were given).
        AnnData keeps 3-D ``obsm`` arrays through subsetting, ``concat`` and h5ad files.
    ``adata.uns["microscopy"]`` : :class:`dict`
        ``"kind"`` (``"embeddings"``), ``"use_rep"``, ``"embedding_dim"``, ``"pool"``,
        ``"featurelens_version"`` and, with tokens, ``"grid"`` (``np.array([h, w])``),
        ``"n_tokens"``, ``"token_dim"``, ``"cls_token"`` and ``"tokens_key"`` (``"X_tokens"``).

    Examples
    --------
    >>> import numpy as np, featurelens as fl
    >>> tok = np.random.default_rng(0).normal(size=(10, 1 + 14 * 14, 384))  # ViT-S/16 tokens with CLS
    >>> adata = fl.microscopy.from_embeddings(tok, {"well": [f"A{i:02d}" for i in range(10)]}, cls_token=True)
    >>> adata.obsm["X_emb"].shape, adata.obsm["X_tokens"].shape, adata.uns["microscopy"]["grid"]
    ((10, 384), (10, 196, 384), array([14, 14]))
    """
    _check_options(use_rep, pool, cls_token)
    dt = _float_dtype(tokens_dtype)
    emb = _check_embeddings(embeddings)
    n = emb.shape[0]
    tok = _token_embeddings(emb, tokens, grid, cls_token)

    info: dict[str, Any] = {"kind": "embeddings", "use_rep": use_rep}
    patches = None
    if tok is not None:
        pooled, patches, token_info = _pooled_with_patches(emb, tok, grid, cls_token, pool)
        info.update(token_info)
    else:
        pooled = emb
    info["pool"] = pool if emb.ndim == 3 else "given"
    info["embedding_dim"] = int(pooled.shape[1])
    info["featurelens_version"] = version()

    adata = AnnData(obs=_prepare_obs(obs, n))
    adata.obsm[use_rep] = np.array(pooled, dtype=np.float32)
    if patches is not None:
        adata.obsm[TOKENS_KEY] = np.array(patches, dtype=dt)  # always a copy, C-contiguous
    adata.uns[UNS_KEY] = info
    return adata


def _check_options(use_rep: Any, pool: str, cls_token: bool) -> None:
    if not isinstance(use_rep, str) or not use_rep or use_rep == TOKENS_KEY:
        raise ValueError(f"`use_rep` must be a non-empty obsm key other than {TOKENS_KEY!r}, got {use_rep!r}.")
    check_choice(pool, "pool", POOLING)
    if pool == "cls" and not cls_token:
        raise ValueError("`pool='cls'` uses the class token; pass `cls_token=True` (the first token is the CLS token).")


def _check_embeddings(embeddings: Any) -> np.ndarray:
    """``embeddings`` as a finite, non-empty ``(n, d)`` or ``(n, T, d)`` array."""
    emb = _as_array(embeddings, "embeddings")
    if emb.ndim not in (2, 3):
        raise ValueError(
            f"`embeddings` must have shape (n, d) or (n, T, d) (tokens), got shape {emb.shape}. "
            "Flatten extra axes first, e.g. a CNN map (n, C, H, W) -> `x.reshape(n, C, -1).transpose(0, 2, 1)`."
        )
    if emb.shape[0] == 0:
        raise ValueError("`embeddings` is empty (0 images).")
    _check_finite(emb, "embeddings")
    return emb


def _token_embeddings(emb: np.ndarray, tokens: Any, grid: Any, cls_token: bool) -> np.ndarray | None:
    """The token embeddings ``(n, T, d)``: 3-D ``embeddings`` or ``tokens`` checked against them; ``None`` if none."""
    if emb.ndim == 3:
        if tokens is not None:
            raise ValueError("Pass token embeddings either as 3-D `embeddings` or as `tokens=`, not both.")
        return emb
    if tokens is None:
        if grid is not None or cls_token:
            raise ValueError("`grid=` and `cls_token=` describe token embeddings; pass `tokens=` or 3-D `embeddings`.")
        return None
    n = emb.shape[0]
    tok = _as_array(tokens, "tokens")
    if tok.ndim != 3:
        raise ValueError(f"`tokens` must have shape (n, T, d), got shape {tok.shape}.")
    if tok.shape[0] != n:
        raise ValueError(f"`tokens` has {tok.shape[0]} images but `embeddings` has {n}.")
    if tok.shape[2] != emb.shape[1]:
        raise ValueError(
            f"`tokens` have {tok.shape[2]} dimensions but `embeddings` {emb.shape[1]}; tokens must live in the "
            "space of the pooled embedding so dictionary features can be scored on them."
        )
    _check_finite(tok, "tokens")
    return tok


def _pooled_with_patches(
    emb: np.ndarray, tok: np.ndarray, grid: Any, cls_token: bool, pool: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(pooled embedding, patch tokens, token fields of uns["microscopy"])``; 2-D ``emb`` is the pooled one."""
    if tok.shape[1] < 1 + int(bool(cls_token)):
        raise ValueError(f"Token embeddings of shape {tok.shape} have no patch tokens.")
    patches = tok[:, 1:] if cls_token else tok
    h, w = resolve_grid(patches.shape[1], grid)
    if emb.ndim == 3:
        pooled = tok[:, 0] if pool == "cls" else patches.mean(axis=1, dtype=np.float64)
    else:
        pooled = emb
    info = {
        "grid": np.array([h, w], dtype=np.int64),
        "n_tokens": int(h * w),
        "token_dim": int(tok.shape[2]),
        "cls_token": bool(cls_token),
        "tokens_key": TOKENS_KEY,
    }
    return pooled, patches, info


def _group_codes(obs: pd.DataFrame, by: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Group index of every row (groups ordered as ``DataFrame.groupby(by, sort=True)``) and each group's first row."""
    codes = obs[by].groupby(by, sort=True, observed=True).ngroup().to_numpy().astype(np.int64)
    n_groups = int(codes.max()) + 1
    first = np.full(n_groups, codes.size, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(codes.size))
    return codes, first


def _group_reduce(X: Any, codes: np.ndarray, n_groups: int, func: str) -> np.ndarray | sp.spmatrix:
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    if func == "mean":
        ind = sp.csr_matrix(
            (1.0 / counts[codes], (codes, np.arange(codes.size))), shape=(n_groups, codes.size), dtype=np.float64
        )
        if sp.issparse(X):
            return sp.csr_matrix(ind @ X.astype(np.float64)).astype(np.float32)
        return np.asarray(ind @ np.asarray(X, dtype=np.float64), dtype=np.float32)
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    out = np.stack([np.median(dense[codes == g], axis=0) for g in range(n_groups)])
    return out.astype(np.float32)


def aggregate(
    adata: AnnData,
    by: str | Sequence[str] = ("plate", "well"),
    *,
    use_rep: str | Sequence[str] | None = "X_emb",
    func: str = "mean",
) -> AnnData:
    """Aggregate crop- or site-level rows into one row per group (e.g. per well).

    The ICFL paper averages the embeddings of the 36 crops of every well. Rows with the same
    values in the ``by`` columns are combined with ``func``: the embeddings named in
    ``use_rep`` and ``adata.X`` (when it has variables, e.g. CellProfiler features). Token
    embeddings are dropped (a well has no single image grid), as are other ``obsm`` entries,
    ``layers``, ``obsp`` and ``varm``.

    Parameters
    ----------
    adata
        Annotated data matrix with one row per crop / site / image.
    by
        Column(s) of ``adata.obs`` that define a group.
    use_rep
        Key or keys of ``adata.obsm`` to aggregate (``None``: only ``adata.X``).
    func
        ``"mean"`` or ``"median"``.

    Returns
    -------
    A new :class:`anndata.AnnData` with one row per group, ordered like
    ``adata.obs.groupby(by, sort=True)``; ``adata`` itself is not modified.

    Sets the following fields (on the returned object):

    ``obs``
        The ``by`` columns, every other column that is constant within each group, and
        ``n_aggregated`` (rows per group). Names join the ``by`` values with ``"_"``.
    ``X``, ``var``
        Group means (or medians) of ``adata.X`` (float32; sparse stays sparse for means), and
        a copy of ``var``.
    ``obsm[key]`` for every ``key`` in ``use_rep`` : :class:`numpy.ndarray`, float32
        Group means (or medians).
    ``uns``
        A copy of ``adata.uns``; ``uns["microscopy"]`` loses its token fields and gains
        ``"aggregated_by"`` (JSON list of the ``by`` columns) and ``"aggregate_func"``.

    Examples
    --------
    >>> import numpy as np, featurelens as fl
    >>> emb = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    >>> obs = {"plate": ["P1"] * 12, "well": ["A01"] * 6 + ["A02"] * 6, "site": list(range(6)) * 2}
    >>> crops = fl.microscopy.from_embeddings(emb, obs)
    >>> wells = fl.microscopy.aggregate(crops, ("plate", "well"))
    >>> wells.n_obs
    2
    """
    check_adata(adata)
    by_list = _by_columns(adata, by)
    check_choice(func, "func", AGG_FUNCS)
    _check_complete(adata.obs, by_list)
    reps = _obsm_keys(adata, use_rep)

    codes, first = _group_codes(adata.obs, by_list)
    n_groups = first.size
    new_obs = _group_obs(adata.obs, by_list, codes, first)
    X = _group_reduce(adata.X, codes, n_groups, func) if adata.n_vars > 0 and adata.X is not None else None
    out = AnnData(X=X, obs=new_obs, var=adata.var.copy())
    for rep in reps:
        M = adata.obsm[rep]
        if isinstance(M, pd.DataFrame):
            M = M.to_numpy()
        red = _group_reduce(M, codes, n_groups, func)
        out.obsm[rep] = red.toarray().astype(np.float32) if sp.issparse(red) else red
    out.uns = copy.deepcopy(dict(adata.uns))
    out.uns[UNS_KEY] = _aggregated_info(out.uns.get(UNS_KEY, {}), by_list, func)
    return out


def _by_columns(adata: AnnData, by: str | Sequence[str]) -> list[str]:
    """``by`` as a non-empty list of columns of ``adata.obs``."""
    by_list = [by] if isinstance(by, str) else list(by)
    if not by_list:
        raise ValueError("`by` must name at least one column of adata.obs.")
    missing = [c for c in by_list if c not in adata.obs.columns]
    if missing:
        cols = ", ".join(map(repr, adata.obs.columns)) or "nothing"
        raise ValueError(f"`by` columns {missing} are not in adata.obs, which has {cols}.")
    return by_list


def _check_complete(obs: pd.DataFrame, by_list: list[str]) -> None:
    na = obs[by_list].isna().any(axis=1)
    if na.any():
        raise ValueError(
            f"{int(na.sum())} rows have missing values in the `by` columns {by_list}; fill them or drop those rows."
        )


def _obsm_keys(adata: AnnData, use_rep: str | Sequence[str] | None) -> list[str]:
    """``use_rep`` as a list of keys of 2-D arrays in ``adata.obsm`` (empty for ``None``)."""
    reps = [] if use_rep is None else ([use_rep] if isinstance(use_rep, str) else list(use_rep))
    for rep in reps:
        if rep not in adata.obsm:
            have = ", ".join(map(repr, adata.obsm.keys())) or "nothing"
            raise ValueError(f"`use_rep={rep!r}` is not in adata.obsm, which has {have}. Pass `use_rep=` (or None).")
        if np.ndim(adata.obsm[rep]) != 2:
            raise ValueError(
                f"adata.obsm[{rep!r}] is not 2-D (shape {np.shape(adata.obsm[rep])}); it cannot be pooled."
            )
    return reps


def _group_obs(obs: pd.DataFrame, by_list: list[str], codes: np.ndarray, first: np.ndarray) -> pd.DataFrame:
    """One row per group: the columns constant within every group (NaN counts as a value) and ``n_aggregated``.

    Rows are named by joining the ``by`` values with ``"_"`` (made unique if needed).
    """
    n_groups = first.size
    counts = np.bincount(codes, minlength=n_groups)
    keys = obs[by_list].iloc[first]
    new_obs = pd.DataFrame(index=pd.RangeIndex(n_groups))
    for col in obs.columns:
        if col == "n_aggregated":
            continue
        s = obs[col]
        constant = col in by_list or bool((s.groupby(codes).nunique(dropna=False) <= 1).all())
        if constant:
            vals = s.iloc[first].reset_index(drop=True)
            if isinstance(vals.dtype, pd.CategoricalDtype):
                vals = vals.cat.remove_unused_categories()
            new_obs[col] = vals
    new_obs["n_aggregated"] = counts.astype(np.int64)
    names = pd.Index(
        ["_".join(str(v) for v in row) for row in keys.itertuples(index=False, name=None)],
        dtype=object,
    )
    if not names.is_unique:
        from anndata.utils import make_index_unique

        names = make_index_unique(names)
    new_obs.index = names
    return new_obs


def _aggregated_info(info: Mapping, by_list: list[str], func: str) -> dict:
    """``uns["microscopy"]`` of the aggregate: without the token fields, with the grouping recorded."""
    info = dict(info)
    for k in ("grid", "n_tokens", "token_dim", "cls_token", "tokens_key"):
        info.pop(k, None)
    info["aggregated_by"] = json.dumps(by_list)
    info["aggregate_func"] = func
    return info
