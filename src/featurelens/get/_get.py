"""Read the results stored by :mod:`featurelens.tl` out of an AnnData (copies; nothing is computed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_choice, check_choices
from .._core import (
    TESTS,
    by_grouping,
    doc,
    get_entry,
    one_feature,
    reader,
    resolve_features,
    steering_run,
    stored,
    token_info,
)
from .._core import significant_terms as _significant_terms


@reader
@doc
def features(adata: AnnData, key: str) -> pd.DataFrame:
    """Per-feature table of a dictionary (a copy of ``adata.uns[key]["features"]``).

    Parameters
    ----------
    {doc_adata}
    {doc_key}

    Returns
    -------
    One row per feature (``f0``, ``f1``, ...), with the columns the tools have added.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.get.features(adata, "sae").columns.tolist()
    ['train_fire_rate', 'dead_training']
    """
    return get_entry(adata, key)["features"].copy()


@reader
@doc
def history(adata: AnnData, key: str) -> pd.DataFrame:
    """Training history of a dictionary (one row per logged step).

    Parameters
    ----------
    {doc_adata}
    {doc_key}

    Returns
    -------
    Columns ``step``, ``samples_seen``, ``loss``, ``mse``, ``fvu``, ``l0``, ``dead_fraction``,
    ``lr`` (and ``aux_loss`` / ``l1`` where the learner has them).

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> int(fl.get.history(adata, "sae")["step"].iloc[-1])
    199
    """
    return get_entry(adata, key)["history"].copy()


@reader
@doc
def dictionary(adata: AnnData, key: str, *, names: list[str] | None = None) -> pd.DataFrame:
    """Decoder directions as a features x dimensions DataFrame.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    names
        Column names for the embedding dimensions (default ``dim0, dim1, ...``).

    Returns
    -------
    The unit-norm decoder rows, in the dictionary's (preprocessed) input space.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.get.dictionary(adata, "sae").shape
    (64, 30)
    """
    entry = get_entry(adata, key)
    dec = np.asarray(entry["decoder"])
    cols = [f"dim{i}" for i in range(dec.shape[1])] if names is None else list(names)
    if len(cols) != dec.shape[1]:
        raise ValueError(f"`names` has {len(cols)} entries but the decoder has {dec.shape[1]} dimensions.")
    return pd.DataFrame(dec, index=entry["features"].index.astype(str), columns=cols)


def _long_table(adata: AnnData, key: str, sub: str, feature, tool: str) -> pd.DataFrame:
    entry = get_entry(adata, key)
    res = stored(entry, key, sub, tool, f"{sub} results")["results"]
    if feature is None:
        return res.copy()
    names = entry["features"].index.astype(str)
    feats = [str(names[i]) for i in resolve_features(entry, feature, what="feature")]
    out = res[res["feature"].astype(str).isin(feats)].copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].cat.remove_unused_categories()
    return out.reset_index(drop=True)


@reader
@doc
def dge(adata: AnnData, key: str, feature=None) -> pd.DataFrame:
    """High-vs-low differential expression results of :func:`featurelens.tl.high_vs_low`.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    feature
        A feature name (``"f3"``), position or list of them; default: all features.

    Returns
    -------
    Long table, one row per (feature, gene) with adjusted p below the stored ``store_pval``,
    sorted by feature and adjusted p.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", features=["f0"], progress=False)
    >>> set(fl.get.dge(adata, "sae", "f0")["feature"]) <= {"f0"}
    True
    """
    return _long_table(adata, key, "dge", feature, "high_vs_low")


@reader
@doc
def enrichment(adata: AnnData, key: str, feature=None, *, test=None) -> pd.DataFrame:
    """Gene-set enrichment results of :func:`featurelens.tl.enrich` and :func:`featurelens.tl.gsea`.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    feature
        A feature name, position or list of them; default: all features.
    test
        Only rows of this test (or these tests): ``"binomial"``, ``"binomial_up"``,
        ``"binomial_down"``, ``"mwu"``, ``"gsea"``.

    Returns
    -------
    Long table, one row per (feature, term, test) with p below the stored ``store_pval``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", features=["f0", "f1"], progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", progress=False)
    >>> set(fl.get.enrichment(adata, "sae", test="mwu")["test"]) <= {"mwu"}
    True
    """
    out = _long_table(adata, key, "enrichment", feature, "enrich")
    if test is not None:
        tests = check_choices(test, "test", TESTS)
        out = out[out["test"].astype(str).isin(tests)].reset_index(drop=True)
    return out


@reader
@doc
def significant_terms(
    adata: AnnData,
    key: str,
    *,
    test="mwu",
    pval_cutoff: float = 0.01,
    adjusted: bool = False,
    direction: str | None = None,
) -> pd.DataFrame:
    """The (feature, term) pairs of the enrichment table that pass a significance cut.

    The same selection :func:`featurelens.tl.concept_space`, :func:`featurelens.tl.probe_concepts`,
    :func:`featurelens.tl.match_features` and :func:`featurelens.pl.term_counts` use.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    test
        Test(s) whose rows count (union): ``"mwu"``, ``"binomial"``, ``"binomial_up"``,
        ``"binomial_down"``, ``"gsea"``.
    {doc_pval_cutoff}
    {doc_adjusted}
    direction
        Only ``"up"`` or ``"down"`` rows (default: both).

    Returns
    -------
    One row per unique (feature, term) pair: ``feature``, ``term``, ``name``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", features=["f0", "f1"], progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", progress=False)
    >>> fl.get.significant_terms(adata, "sae", test="mwu").columns.tolist()
    ['feature', 'term', 'name']
    """
    entry = get_entry(adata, key)
    return _significant_terms(entry, key, test=test, pval_cutoff=pval_cutoff, adjusted=adjusted, direction=direction)


@reader
@doc
def feature_types(adata: AnnData, key: str, groupby: str | None = None) -> pd.DataFrame:
    """The local / global / dead types of :func:`featurelens.tl.feature_types` for one grouping.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    groupby
        The grouping (default: the latest one computed).

    Returns
    -------
    One row per feature: ``type``, ``group``, ``n_groups_significant``, ``best_group``, ``best_alpha``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> fl.get.feature_types(adata, "sae", "cell_type").columns.tolist()[:2]
    ['type', 'group']
    """
    _, res = by_grouping(get_entry(adata, key), key, "feature_types", groupby, "feature_types")
    if "table" not in res:
        raise ValueError(f"The feature types of {key!r} were stored by an older version; rerun `fl.tl.feature_types`.")
    return res["table"].copy()


@reader
@doc
def selectivity(adata: AnnData, key: str, groupby: str | None = None, *, kind: str = "average") -> pd.DataFrame:
    """Selectivity of every feature for every label, from :func:`featurelens.tl.selectivity`.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    groupby
        The grouping (default: the latest one computed).
    kind
        ``"average"``, ``"max"``, ``"frac_active"`` (the fraction of active cells per label) or
        ``"summary"`` (numbers of selective features per threshold).

    Returns
    -------
    Features x labels (``"summary"``: thresholds x counts).

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.selectivity(adata, "sae", "condition")
    >>> fl.get.selectivity(adata, "sae", "condition", kind="summary").columns.tolist()
    ['n_average', 'n_max']
    """
    check_choice(kind, "kind", ("average", "max", "frac_active", "summary"))
    _, res = by_grouping(get_entry(adata, key), key, "selectivity", groupby, "selectivity")
    return res[kind].copy()


@reader
@doc
def probe(adata: AnnData, groupby: str, *, key: str | None = None, summary: bool = False) -> pd.DataFrame:
    """Balanced accuracies of :func:`featurelens.tl.linear_probe`.

    Parameters
    ----------
    {doc_adata}
    groupby
        The labels that were predicted.
    key
        The dictionary passed to the probe (``None``: the probe of an embedding alone).
    summary
        Return the mean, sd, min and max per representation instead of one row per held-out part.

    Returns
    -------
    One row per representation and held-out part: ``representation``, ``test``,
    ``balanced_accuracy``, ``n_train``, ``n_test``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.linear_probe(adata, "cell_type", use_rep="X_pca", split_key="condition")
    >>> fl.get.probe(adata, "cell_type")["test"].tolist()
    ['CTRL', 'STIM']
    """
    store = get_entry(adata, key).get("probe", {}) if key is not None else adata.uns.get("linear_probe", {})
    if groupby not in store:
        where = f"dictionary {key!r}" if key is not None else "embeddings (no key)"
        raise ValueError(
            f"No linear probe of {groupby!r} for {where}; run `fl.tl.linear_probe(adata, {groupby!r}, ...)` first "
            f"(probes stored: {sorted(store)})."
        )
    return store[groupby]["summary" if summary else "results"].copy()


_RECOVERY = ("superposition", "variable_recovery", "structure_recovery")


@reader
@doc
def recovery(
    adata: AnnData, kind: str, name: str, *, table: str = "summary", key_added: str | None = None
) -> pd.DataFrame:
    """Results of :func:`featurelens.tl.superposition`, ``variable_recovery`` or ``structure_recovery``.

    Parameters
    ----------
    {doc_adata}
    kind
        ``"superposition"``, ``"variable_recovery"`` or ``"structure_recovery"``.
    name
        What was evaluated: the representation (``use_rep``) or dictionary (``key``).
    table
        ``"summary"``, ``"per_dimension"`` or ``"features"`` (where the tool stores it).
    key_added
        The ``key_added`` the tool was called with (default: ``kind``).

    Returns
    -------
    A copy of the stored table.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.simulate("small", n_obs=300, random_state=0)
    >>> fl.tl.superposition(adata, "X_programs", ["X_programs_active"], split_key=None)
    >>> fl.get.recovery(adata, "superposition", "X_programs").columns.tolist()
    ['mean_r2', 'median_r2', 'n_dims']
    """
    check_choice(kind, "kind", _RECOVERY)
    store = adata.uns.get(key_added or kind)
    if not isinstance(store, dict) or name not in store:
        have = sorted(store) if isinstance(store, dict) else []
        raise ValueError(
            f"No {kind} results for {name!r} in adata.uns[{key_added or kind!r}] (stored: {have}); "
            f"run `fl.tl.{kind}` first."
        )
    res = store[name]
    check_choice(table, "table", [t for t in res if t != "params"])
    return res[table].copy()


@reader
@doc
def concept_adata(adata: AnnData, key: str) -> AnnData:
    """The concept space of :func:`featurelens.tl.concept_space` as an AnnData of features.

    One row per annotated feature, the binary feature x term matrix as ``X`` (sparse), the UMAP
    coordinates in ``obsm["X_umap"]``, and as ``obs`` the concept-space columns (``category``,
    ``n_terms``) joined with the feature table (``type``, ``group``, probe columns, ...), so scanpy's
    plots work as they are.

    Parameters
    ----------
    {doc_adata}
    {doc_key}

    Returns
    -------
    A new :class:`~anndata.AnnData` (features x GO terms); ``var`` holds each term's ``name``,
    ``category`` and ``n_features``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=32, n_steps=200, progress=False)
    >>> fl.tl.high_vs_low(adata, "sae", progress=False)
    >>> fl.tl.enrich(adata, "sae", "GO_BP", methods="mwu", progress=False)
    >>> fl.tl.concept_space(adata, "sae", progress=False)
    >>> fdata = fl.get.concept_adata(adata, "sae")
    >>> fdata.n_vars == adata.uns["sae"]["concept_space"]["params"]["n_terms"]
    True
    """
    entry = get_entry(adata, key)
    cs = stored(entry, key, "concept_space", "concept_space", "concept space")
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


@reader
@doc
def steering(adata: AnnData, key: str, name: str | None = None) -> pd.DataFrame:
    """Paired differential expression of a steering run of :func:`featurelens.tl.steer`.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    name
        Name of the steering run (the feature name unless ``key_added`` was given); may be omitted
        when there is only one.

    Returns
    -------
    One row per gene (a copy), sorted by adjusted p.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.steer(adata, "sae", "f0", groupby="cell_type", group="CD14 Mono", progress=False)
    >>> len(fl.get.steering(adata, "sae", "f0")) == adata.n_vars
    True
    """
    _, run = steering_run(get_entry(adata, key), key, name)
    return run["results"].copy()


@reader
@doc
def token_scores(adata: AnnData, key: str, feature, *, key_added: str | None = None) -> np.ndarray:
    """Token score maps of :func:`featurelens.tl.token_scores` as an ``(n_obs, h, w)`` array.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    {doc_feature}
    key_added
        The ``key_added`` of the run (default: that of the tool, ``f"{key}_{feature name}"``).

    Returns
    -------
    :class:`numpy.ndarray` ``(n_obs, h, w)``, float32, values in ``[-1, 1]`` (a copy).

    Examples
    --------
    >>> import numpy as np, featurelens as fl
    >>> rng = np.random.default_rng(0)
    >>> adata = fl.microscopy.from_embeddings(rng.normal(size=(40, 16, 8)).astype(np.float32), grid=(4, 4))
    >>> fl.tl.icfl(adata, "X_emb", n_features=16, n_steps=100, progress=False)
    >>> fl.tl.token_scores(adata, "icfl", 3)
    >>> fl.get.token_scores(adata, "icfl", "f3").shape
    (40, 4, 4)
    """
    entry = get_entry(adata, key)
    _, fname = one_feature(entry, feature)
    run = (entry.get("token_scores") or {}).get(key_added or f"{key}_{fname}")
    if run is None or not run.get("obsm_key") or run["obsm_key"] not in adata.obsm:
        raise ValueError(
            f"No token scores of {key!r}:{fname} in this AnnData; run `fl.tl.token_scores(adata, {key!r}, {fname!r})` "
            "first (it needs token embeddings)."
        )
    _, (h, w), _ = token_info(adata)
    return np.asarray(adata.obsm[run["obsm_key"]], dtype=np.float32).reshape(adata.n_obs, h, w).copy()
