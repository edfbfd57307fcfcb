"""Read dictionary results out of ``adata.uns``."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ..tl._dictionary import _get_entry


def features(adata: AnnData, key: str = "sae") -> pd.DataFrame:
    """Per-feature table of a dictionary (a copy of ``adata.uns[key]["features"]``).

    Parameters
    ----------
    adata
        Annotated data matrix holding the dictionary.
    key
        Key of the dictionary.

    Returns
    -------
    One row per feature (``f0``, ``f1``, ...), with the columns the tools have added.

    Examples
    --------
    >>> fl.get.features(adata, "sae").sort_values("train_fire_rate")
    """
    return _get_entry(adata, key)["features"].copy()


def history(adata: AnnData, key: str = "sae") -> pd.DataFrame:
    """Training history of a dictionary (one row per logged step).

    Parameters
    ----------
    adata
        Annotated data matrix holding the dictionary.
    key
        Key of the dictionary.

    Returns
    -------
    Columns ``step``, ``samples_seen``, ``loss``, ``mse``, ``fvu``, ``l0``, ``dead_fraction``,
    ``lr`` (and ``aux_loss`` / ``l1`` where the learner has them).

    Examples
    --------
    >>> fl.get.history(adata, "sae").plot(x="step", y="fvu")
    """
    return _get_entry(adata, key)["history"].copy()


def dictionary(adata: AnnData, key: str = "sae", *, names: list[str] | None = None) -> pd.DataFrame:
    """Decoder directions as a features x dimensions DataFrame.

    Parameters
    ----------
    adata
        Annotated data matrix holding the dictionary.
    key
        Key of the dictionary.
    names
        Column names for the embedding dimensions (default ``dim0, dim1, ...``).

    Returns
    -------
    The unit-norm decoder rows, in the dictionary's (preprocessed) input space.

    Examples
    --------
    >>> fl.get.dictionary(adata, "icfl").loc["f3"]
    """
    entry = _get_entry(adata, key)
    dec = np.asarray(entry["decoder"])
    cols = [f"dim{i}" for i in range(dec.shape[1])] if names is None else list(names)
    return pd.DataFrame(dec, index=entry["features"].index.astype(str), columns=cols)
