"""Resolving features of a dictionary and selecting cells, with one wording for every tool and plot."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ._dictionary import n_features
from ._storage import obs_column


def feature_names_of(entry: dict) -> pd.Index:
    """Feature names of a dictionary (``f0, f1, ...``)."""
    feats = entry.get("features")
    if isinstance(feats, pd.DataFrame) and len(feats) == n_features(entry):
        return pd.Index(feats.index.astype(str))
    return pd.Index([f"f{i}" for i in range(n_features(entry))])


def _position(f, names: pd.Index, lookup: dict) -> int:
    if isinstance(f, bool | np.bool_):
        raise TypeError(f"A feature is a name (str) or a position (int), got {f!r}.")
    if isinstance(f, int | np.integer):
        if not 0 <= int(f) < len(names):
            raise ValueError(
                f"Feature {int(f)} is out of range: the dictionary has {len(names)} features (0..{len(names) - 1})."
            )
        return int(f)
    if isinstance(f, str) and f in lookup:
        return lookup[f]
    if isinstance(f, str):
        raise ValueError(f"Unknown feature {f!r}; features are named {names[0]!r} ... {names[-1]!r}.")
    raise TypeError(f"A feature is a name (str) or a position (int), got {type(f).__name__}.")


def resolve_features(entry: dict, features, *, what: str = "features") -> np.ndarray:
    """Positions of the requested features (names like ``"f3"`` or integer positions; ``None``: all).

    Raises
    ------
    ValueError
        For an empty selection, an unknown name or a position out of range.
    """
    names = feature_names_of(entry)
    if features is None:
        return np.arange(len(names))
    items = [features] if isinstance(features, str | int | np.integer) else list(features)
    if not items:
        raise ValueError(f"`{what}` is empty; pass feature names or positions, or None for all features.")
    lookup = {n: i for i, n in enumerate(names)}
    return np.asarray([_position(f, names, lookup) for f in items], dtype=np.int64)


def one_feature(entry: dict, feature, *, what: str = "feature") -> tuple[int, str]:
    """Position and name of a single feature."""
    if isinstance(feature, list | tuple | np.ndarray | pd.Index):
        raise ValueError(f"`{what}` takes one feature (a name like 'f12' or a position), got {feature!r}.")
    names = feature_names_of(entry)
    j = _position(feature, names, {n: i for i, n in enumerate(names)})
    return j, str(names[j])


def _mask_from_array(adata: AnnData, cells) -> np.ndarray:
    n = adata.n_obs
    arr = np.asarray(cells.to_numpy() if isinstance(cells, pd.Series) else cells)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"A boolean cells mask must have one entry per cell ({n}), got shape {arr.shape}.")
        return arr
    m = np.zeros(n, dtype=bool)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise ValueError(f"cells positions must lie in [0, {n}).")
        m[arr] = True
        return m
    pos = adata.obs_names.get_indexer(arr.astype(str))
    if (pos < 0).any():
        raise ValueError(f"Unknown cell name(s), e.g. {arr[pos < 0][0]!r}.")
    m[pos] = True
    return m


def select_cells(adata: AnnData, cells=None, groupby: str | None = None, group=None) -> np.ndarray:
    """Boolean mask of the cells chosen by a mask, an obs query, obs names or positions, and/or a group."""
    mask = np.ones(adata.n_obs, dtype=bool)
    if isinstance(cells, str):
        try:
            hit = adata.obs.query(cells).index
        except Exception as err:  # pandas raises many types for a bad expression
            raise ValueError(f"cells={cells!r} is not a valid query of adata.obs: {err}") from err
        mask &= adata.obs_names.isin(hit)
    elif cells is not None:
        mask &= _mask_from_array(adata, cells)
    if groupby is not None or group is not None:
        if groupby is None or group is None:
            raise ValueError("Pass both groupby= (an obs column) and group= (one or several of its values).")
        col = obs_column(adata, groupby).astype(str)
        groups = [group] if isinstance(group, str) or not isinstance(group, Sequence) else list(group)
        missing = [g for g in groups if str(g) not in set(col)]
        if missing:
            raise ValueError(f"Group(s) {missing} are not in adata.obs[{groupby!r}].")
        mask &= col.isin([str(g) for g in groups]).to_numpy()
    if not mask.any():
        raise ValueError("The cell selection is empty; check cells= / groupby= / group=.")
    return mask


def cell_positions(adata: AnnData, cells) -> np.ndarray:
    """Row positions of ``cells`` given by observation name (str) or position (int), in the order given."""
    items = [cells] if isinstance(cells, str | int | np.integer) else list(cells)
    if not items:
        raise ValueError("`cells=` is empty; pass observation names or positions.")
    pos = []
    for c in items:
        if isinstance(c, bool | np.bool_):
            raise TypeError("`cells=` takes observation names or positions, not booleans.")
        if isinstance(c, int | np.integer):
            if not -adata.n_obs <= int(c) < adata.n_obs:
                raise ValueError(f"Cell position {int(c)} is out of range (adata has {adata.n_obs} observations).")
            pos.append(int(c) % adata.n_obs)
        else:
            i = adata.obs_names.get_indexer([str(c)])[0]
            if i < 0:
                raise ValueError(f"{c!r} is not an observation name of adata (names look like {adata.obs_names[0]!r}).")
            pos.append(int(i))
    return np.asarray(pos, dtype=np.int64)
