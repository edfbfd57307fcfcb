"""CellProfiler / pycytominer well profiles as AnnData: :func:`read_profiles`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core import version
from ._embeddings import UNS_KEY

PROFILES_KEY = "X_profiles"
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz")
_TSV_SUFFIXES = (".tsv", ".tsv.gz", ".txt", ".txt.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parquet.gz")


def _read_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise ImportError(
                f"Reading {path.name} needs a Parquet engine; install one with `pip install pyarrow`."
            ) from err
    if name.endswith(_TSV_SUFFIXES):
        return pd.read_csv(path, sep="\t", low_memory=False)
    if name.endswith(_CSV_SUFFIXES):
        return pd.read_csv(path, low_memory=False)
    raise ValueError(
        f"Cannot tell the format of {path.name!r}: expected a file ending in .csv, .csv.gz, .tsv or .parquet. "
        "Read it with pandas and pass the DataFrame instead."
    )


def _find_column(columns: list[str], prefix: str, field: str) -> str | None:
    """``{prefix}{field}`` (case-insensitive), e.g. ``Metadata_Plate``."""
    want = f"{prefix}{field}".lower()
    for c in columns:
        if c.lower() == want:
            return c
    return None


def _metadata_obs(meta: pd.DataFrame) -> pd.DataFrame:
    """Metadata columns: numbers stay numeric, everything else becomes a categorical of strings."""
    obs = pd.DataFrame(index=meta.index)
    for col in meta.columns:
        s = meta[col]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            obs[col] = s.to_numpy()
        else:
            strings = s.where(s.isna(), s.astype(str))
            obs[col] = pd.Categorical(strings.to_numpy(dtype=object))
    return obs


def _obs_names(meta: pd.DataFrame, prefix: str) -> pd.Index:
    cols = list(meta.columns)
    parts = [_find_column(cols, prefix, f) for f in ("Plate", "Well", "Site")]
    parts = [p for p in parts if p is not None]
    if parts and not meta[parts].isna().any(axis=None):
        names = pd.Index(meta[parts].astype(str).agg("_".join, axis=1).to_numpy(), dtype=object)
        if names.is_unique:
            return names
        from anndata.utils import make_index_unique

        return make_index_unique(names)
    return pd.Index([str(i) for i in range(meta.shape[0])], dtype=object)


def read_profiles(path: str | os.PathLike | pd.DataFrame, *, metadata_prefix: str = "Metadata_") -> AnnData:
    """Read CellProfiler / pycytominer profiles (one row per well or cell) into an AnnData.

    Columns whose name starts with ``metadata_prefix`` become ``adata.obs`` (numbers stay
    numeric, text becomes categorical); every other column is a feature and must be numeric
    and complete. The features go to ``adata.X`` and, so the dictionary tools can use them
    as an embedding (``use_rep="X_profiles"``), to ``adata.obsm["X_profiles"]`` as well.

    Parameters
    ----------
    path
        A ``.csv``, ``.csv.gz``, ``.tsv`` or ``.parquet`` file (Parquet needs ``pyarrow``), or a
        :class:`pandas.DataFrame` already in memory (it is not modified).
    metadata_prefix
        Prefix of the metadata columns (pycytominer writes ``"Metadata_"``).

    Returns
    -------
    A new :class:`anndata.AnnData`, observations x features.

    Sets the following fields (on the returned object):

    ``X`` : :class:`numpy.ndarray` (n_obs, n_features), float32
        The profile features; ``var_names`` are the feature names.
    ``obs``
        The metadata columns, names unchanged. Observation names are
        ``{Plate}_{Well}[_{Site}]`` when these metadata columns exist (made unique if needed),
        else ``"0", "1", ...``.
    ``obsm["X_profiles"]`` : :class:`numpy.ndarray`, float32
        A copy of ``X``.
    ``uns["microscopy"]`` : :class:`dict`
        ``"kind"`` (``"profiles"``), ``"use_rep"`` (``"X_profiles"``), ``"source"`` (file name),
        ``"metadata_prefix"``, ``"n_metadata"``, ``"featurelens_version"``.

    Examples
    --------
    >>> from importlib import resources
    >>> import featurelens as fl
    >>> path = resources.files("featurelens") / "datasets" / "data" / "SQ00015054_normalized_feature_select.csv.gz"
    >>> adata = fl.microscopy.read_profiles(path)
    >>> adata.shape
    (384, 454)
    """
    if not isinstance(metadata_prefix, str):
        raise TypeError(f"`metadata_prefix` must be a str, got {type(metadata_prefix).__name__}.")
    if isinstance(path, pd.DataFrame):
        df = path
        source = "DataFrame"
    elif isinstance(path, str | os.PathLike):
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"Profile file {str(p)!r} does not exist.")
        if p.is_dir():
            raise ValueError(f"{str(p)!r} is a directory; pass the path of a .csv(.gz) or .parquet profile file.")
        df = _read_table(p)
        source = p.name
    else:
        raise TypeError(f"`path` must be a file path or a pandas DataFrame, got {type(path).__name__}.")

    columns = [str(c) for c in df.columns]
    if len(set(columns)) != len(columns):
        dup = pd.Index(columns)[pd.Index(columns).duplicated()].unique()[:3]
        raise ValueError(f"The profile table has duplicate column names: {', '.join(dup)}.")
    is_meta = np.array([bool(metadata_prefix) and c.startswith(metadata_prefix) for c in columns], dtype=bool)
    meta = df.loc[:, is_meta]
    feats = df.loc[:, ~is_meta]
    meta.columns = [c for c, m in zip(columns, is_meta, strict=True) if m]
    feats.columns = [c for c, m in zip(columns, is_meta, strict=True) if not m]
    if df.shape[0] == 0:
        raise ValueError("The profile table has no rows.")
    if feats.shape[1] == 0:
        raise ValueError(
            f"No feature columns: all {len(columns)} columns start with {metadata_prefix!r}. Check `metadata_prefix`."
        )
    non_numeric = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    if non_numeric:
        shown = ", ".join(map(repr, non_numeric[:5])) + (" ..." if len(non_numeric) > 5 else "")
        raise ValueError(
            f"{len(non_numeric)} feature columns are not numeric: {shown}. Metadata columns must start with "
            f"{metadata_prefix!r} (or set `metadata_prefix=`); otherwise drop or rename these columns."
        )
    X = feats.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        bad_cols = feats.columns[bad.any(axis=0)]
        shown = ", ".join(map(repr, bad_cols[:5])) + (" ..." if len(bad_cols) > 5 else "")
        raise ValueError(
            f"{int(bad.sum())} feature values are NaN or infinite, in {len(bad_cols)} feature columns ({shown}) and "
            f"{int(bad.any(axis=1).sum())} rows. Drop those features (e.g. `df.dropna(axis=1)`, or pycytominer's "
            "feature_select with 'drop_na_columns') or impute them, then pass the DataFrame to `read_profiles`."
        )

    obs = _metadata_obs(meta.reset_index(drop=True))
    obs.index = _obs_names(meta.reset_index(drop=True), metadata_prefix)
    var = pd.DataFrame(index=pd.Index(list(feats.columns), dtype=object))
    X32 = X.astype(np.float32)
    adata = AnnData(X=X32, obs=obs, var=var)
    adata.obsm[PROFILES_KEY] = X32.copy()
    adata.uns[UNS_KEY] = {
        "kind": "profiles",
        "use_rep": PROFILES_KEY,
        "source": source,
        "metadata_prefix": metadata_prefix,
        "n_metadata": int(meta.shape[1]),
        "featurelens_version": version(),
    }
    return adata
