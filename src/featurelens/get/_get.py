"""Read dictionary results out of ``adata.uns``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
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


def _long_table(adata: AnnData, key: str, sub: str, feature, tool: str) -> pd.DataFrame:
    entry = _get_entry(adata, key)
    if sub not in entry:
        raise ValueError(f"No {sub} results for {key!r}; run `fl.tl.{tool}(adata, {key!r})` first.")
    res = entry[sub]["results"]
    if feature is None:
        return res.copy()
    names = entry["features"].index.astype(str)
    if isinstance(feature, int | np.integer) and not isinstance(feature, bool):
        feature = names[int(feature)]
    feats = [str(feature)] if isinstance(feature, str | np.str_) else [str(f) for f in feature]
    unknown = [f for f in feats if f not in set(names)]
    if unknown:
        raise ValueError(f"Unknown feature(s) {unknown}; features are named {names[0]!r} ... {names[-1]!r}.")
    out = res[res["feature"].astype(str).isin(feats)].copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].cat.remove_unused_categories()
    return out.reset_index(drop=True)


def dge(adata: AnnData, key: str = "sae", feature=None) -> pd.DataFrame:
    """High-vs-low differential expression results of :func:`featurelens.tl.high_vs_low`.

    Parameters
    ----------
    adata
        Annotated data matrix holding the results.
    key
        Key of the dictionary.
    feature
        A feature name (``"f3"``), position or list of them; default: all features.

    Returns
    -------
    Long table, one row per (feature, gene) with adjusted p below the stored ``store_pval``,
    sorted by feature and adjusted p.

    Examples
    --------
    >>> fl.get.dge(adata, "sae", "f12").query("direction == 'up'").head(20)
    """
    return _long_table(adata, key, "dge", feature, "high_vs_low")


def enrichment(adata: AnnData, key: str = "sae", feature=None) -> pd.DataFrame:
    """Gene-set enrichment results of :func:`featurelens.tl.enrich` and :func:`featurelens.tl.gsea`.

    Parameters
    ----------
    adata
        Annotated data matrix holding the results.
    key
        Key of the dictionary.
    feature
        A feature name, position or list of them; default: all features.

    Returns
    -------
    Long table, one row per (feature, term, test) with p below the stored ``store_pval``.

    Examples
    --------
    >>> fl.get.enrichment(adata, "sae", "f12").query("test == 'binomial_up'").nsmallest(5, "padj")
    """
    return _long_table(adata, key, "enrichment", feature, "enrich")


def concept_adata(adata: AnnData, key: str = "sae") -> AnnData:
    """The concept space of :func:`featurelens.tl.concept_space` as an AnnData of features.

    One row per annotated feature, the binary feature x term matrix as ``X`` (sparse), the UMAP
    coordinates in ``obsm["X_umap"]``, and as ``obs`` the concept-space columns (``category``,
    ``n_terms``) joined with the feature table (``type``, ``group``, probe columns, ...), so scanpy's
    plots work as they are.

    Parameters
    ----------
    adata
        Annotated data matrix holding the concept space.
    key
        Key of the dictionary.

    Returns
    -------
    A new :class:`~anndata.AnnData` (features x GO terms); ``var`` holds each term's ``name``,
    ``category`` and ``n_features``.

    Examples
    --------
    >>> fdata = fl.get.concept_adata(adata, "sae")
    >>> sc.pl.umap(fdata, color=["category", "type"])
    """
    entry = _get_entry(adata, key)
    if "concept_space" not in entry:
        raise ValueError(f"No concept space for {key!r}; run `fl.tl.concept_space(adata, {key!r})` first.")
    cs = entry["concept_space"]
    obs = cs["obs"].copy()
    obs.index = obs.index.astype(str)
    feats = entry["features"]
    feats = feats.set_axis(feats.index.astype(str)).reindex(obs.index)
    extra = [c for c in feats.columns if c not in obs.columns]
    obs = obs.join(feats[extra])
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype("category")
    X = sp.csr_matrix(cs["matrix"], dtype=np.float32)
    var = cs["terms"].copy()
    var.index = var.index.astype(str)
    out = AnnData(X=X, obs=obs.drop(columns=["umap1", "umap2"]), var=var)
    out.obsm["X_umap"] = obs[["umap1", "umap2"]].to_numpy(dtype=np.float32)
    out.uns["concept_space"] = {"params": dict(cs["params"])}
    return out


def steering(adata: AnnData, key: str = "sae", name: str | None = None) -> pd.DataFrame:
    """Paired differential expression of a steering run of :func:`featurelens.tl.steer`.

    Parameters
    ----------
    adata
        Annotated data matrix holding the results.
    key
        Key of the dictionary.
    name
        Name of the steering run (the feature name unless ``key_added`` was given); may be omitted
        when there is only one.

    Returns
    -------
    One row per gene (a copy), sorted by adjusted p.

    Examples
    --------
    >>> fl.get.steering(adata, "sae", "f12").query("padj < 0.05 and direction == 'up'").head(20)
    """
    from ..tl._steer import steering_run

    _, run = steering_run(_get_entry(adata, key), key, name)
    return run["results"].copy()
