"""How well a representation or a dictionary recovers known generative variables (Schuster 2025, A.2.3-A.2.5)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_choice, check_number, check_positive, check_positive_int, check_probability
from .._core import (
    available_reps,
    check_finite,
    claim,
    doc,
    embedding,
    expression,
    plain_params,
    raw_embedding,
    renamed,
    resolve_device,
    stem,
    tool,
    version,
)
from ..models.autoencoder import fit_autoencoder

#: columns of a variable loaded densely at a time (bounds memory for variables with many dimensions, e.g. genes)
_CHUNK = 2048


# ---------------------------------------------------------------------------- variables
def _as_list(variables, what: str = "variables") -> list[str]:
    if isinstance(variables, str):
        variables = [variables]
    variables = list(variables)
    if not variables:
        raise ValueError(f"`{what}` is empty; pass one or more keys of adata.obsm (or 'X' for adata.X).")
    bad = [v for v in variables if not isinstance(v, str)]
    if bad:
        raise TypeError(f"`{what}` must be keys of adata.obsm (str), got {bad!r}.")
    if len(set(variables)) != len(variables):
        raise ValueError(f"`{what}` contains duplicates: {variables!r}.")
    return variables


def _variable(adata: AnnData, name: str):
    """The matrix of variable ``name`` (``adata.obsm[name]``, or ``adata.X`` for ``"X"``) and its dimension names."""
    if name != "X" and name not in adata.obsm:
        raise ValueError(
            f"The variable {name!r} is not in adata.obsm, which has {available_reps(adata)}. "
            "Pass `variables=` keys of adata.obsm (or 'X' for adata.X), e.g. those of `fl.datasets.simulate()`."
        )
    V = raw_embedding(adata, name, what="variables")
    dims = pd.Index(adata.var_names.astype(str)) if name == "X" else None
    if isinstance(V, pd.DataFrame):
        dims = pd.Index(V.columns.astype(str))
        V = V.to_numpy()
    if V.ndim == 1:
        V = V.reshape(-1, 1)
    if V.ndim != 2 or V.shape[0] != adata.n_obs:
        raise ValueError(f"The variable {name!r} must be a cells x dimensions matrix, got shape {V.shape}.")
    if not np.issubdtype(V.dtype, np.number):
        raise ValueError(f"The variable {name!r} must be numeric, got dtype {V.dtype}.")
    if dims is None:
        dims = pd.Index([str(i) for i in range(V.shape[1])])
    return V, dims


def _column_blocks(V, rows=None) -> Iterator[tuple[int, np.ndarray]]:
    """Dense float64 blocks of columns of ``V`` (optionally restricted to ``rows``), checked for NaN/Inf."""
    for start in range(0, V.shape[1], _CHUNK):
        block = V[:, start : start + _CHUNK]
        if rows is not None:
            block = block[rows]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = block.astype(np.float64)
        if not np.isfinite(block).all():
            raise ValueError("A variable contains NaN or Inf values; remove or impute them first.")
        yield start, block


def _split(adata: AnnData, split_key: str | None, train: str, test: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Boolean masks of the fitting and the evaluation cells, and whether a split was used."""
    all_cells = np.ones(adata.n_obs, bool)
    if split_key is None or (split_key == "split" and split_key not in adata.obs):
        return all_cells, all_cells, False
    if split_key not in adata.obs:
        raise ValueError(
            f"`split_key={split_key!r}` is not a column of adata.obs; pass `split_key=None` to use all cells."
        )
    col = adata.obs[split_key].astype(str).to_numpy()
    tr, te = col == train, col == test
    for label, mask in ((train, tr), (test, te)):
        if mask.sum() < 2:
            raise ValueError(
                f"adata.obs[{split_key!r}] has {int(mask.sum())} cells labelled {label!r}; fitting and evaluating "
                f"need at least two each (values: {sorted(set(col))}). Pass `train=`/`test=` or `split_key=None`."
            )
    return tr, te, True


# ---------------------------------------------------------------------------- superposition
@tool
@doc
def superposition(
    adata: AnnData,
    use_rep: str,
    variables: str | Sequence[str],
    *,
    split_key: str | None = "split",
    train: str = "train",
    test: str = "validation",
    key_added: str | None = None,
) -> None:
    """How linearly a representation encodes each generative variable (Schuster 2025, A.2.3, Fig. 1C).

    For every dimension of every variable, an ordinary least-squares regression with intercept from
    the representation to that dimension is fitted on the training cells and its coefficient of
    determination ``R2 = 1 - SS_res / SS_tot`` is computed on the evaluation cells. With a column
    ``adata.obs[split_key]`` (``"split"`` of :func:`featurelens.datasets.simulate`) the regression is
    fitted on the ``train`` cells and evaluated on the ``test`` cells; without it (or with
    ``split_key=None``) it is fitted and evaluated on all cells (in-sample R2).

    Parameters
    ----------
    adata
        Annotated data matrix.
    use_rep
        Key of ``adata.obsm`` with the representation (e.g. ``"X_ae"``, ``"X_pca"``).
    variables
        Keys of ``adata.obsm`` with the variables (e.g. ``"X_programs"``, ``"X_programs_active"``), or
        ``"X"`` for ``adata.X`` (the observables).
    split_key
        Column of ``adata.obs`` with the split; ``None`` to use all cells.
    train, test
        Labels of the fitting and the evaluation cells in ``adata.obs[split_key]``.
    key_added
        Key of ``adata.uns`` to write to (``"superposition"``).

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key_added][use_rep]`` : :class:`dict`
        ``"summary"``: DataFrame indexed by variable with ``mean_r2`` (mean over the variable's
        non-constant dimensions), ``median_r2`` and ``n_dims``; ``"per_dimension"``: DataFrame with
        one row per variable dimension (``variable``, ``dimension``, ``r2``; ``r2`` is NaN for a
        dimension constant on the evaluation cells); ``"params"``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.simulate("large", n_obs=1_000, n_genes=200)
    >>> fl.tl.autoencoder(adata, 8, n_epochs=3, progress=False)
    >>> fl.tl.superposition(adata, "X_ae", ["X_programs", "X_programs_active"])
    >>> fl.get.recovery(adata, "superposition", "X_ae").index.tolist()
    ['X_programs', 'X_programs_active']
    """
    variables = _as_list(variables)
    store_key = stem(key_added, "superposition")
    Z = embedding(adata, use_rep).astype(np.float64)
    tr, te, used_split = _split(adata, split_key, train, test)
    mu = Z[tr].mean(axis=0)
    Zc = Z[tr] - mu
    Ze = Z[te] - mu
    # least squares for every target column at once through the pseudo-inverse of the centred training design
    # (minimum-norm solution, so a rank-deficient representation is fine)
    pinv = np.linalg.pinv(Zc)
    rows, summary = [], {}
    for name in variables:
        V, dims = _variable(adata, name)
        r2_all = np.full(V.shape[1], np.nan)
        for (start, Yt), (_, Ye) in zip(_column_blocks(V, tr), _column_blocks(V, te), strict=True):
            ymu = Yt.mean(axis=0)
            pred = Ze @ (pinv @ (Yt - ymu)) + ymu
            ss_res = ((Ye - pred) ** 2).sum(axis=0)
            ss_tot = ((Ye - Ye.mean(axis=0)) ** 2).sum(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
            r2_all[start : start + Yt.shape[1]] = r2
        rows.append(pd.DataFrame({"variable": name, "dimension": dims.to_numpy(), "r2": r2_all}))
        ok = r2_all[np.isfinite(r2_all)]
        summary[name] = {
            "mean_r2": float(ok.mean()) if ok.size else np.nan,
            "median_r2": float(np.median(ok)) if ok.size else np.nan,
            "n_dims": int(ok.size),
        }
    per_dim = pd.concat(rows, ignore_index=True)
    per_dim.index = (per_dim["variable"] + ":" + per_dim["dimension"].astype(str)).to_numpy()
    summ = pd.DataFrame.from_dict(summary, orient="index")
    summ.index.name = "variable"
    params = {
        "use_rep": use_rep,
        "variables": variables,
        "split_key": split_key if used_split else None,
        "train": train if used_split else None,
        "test": test if used_split else None,
        "n_train": int(tr.sum()),
        "n_test": int(te.sum()),
        "featurelens_version": version(),
    }
    store = adata.uns.setdefault(store_key, {})
    store[use_rep] = {"summary": summ, "per_dimension": per_dim, "params": plain_params(params)}


# ---------------------------------------------------------------------------- variable recovery
def _standardised_columns(X) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population standard deviations of a dense or sparse matrix, in float64."""
    n = X.shape[0]
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        mean = np.asarray(X.sum(axis=0)).ravel() / n
        sq = np.asarray(X.multiply(X).sum(axis=0)).ravel() / n
        var = np.maximum(sq - mean**2, 0.0)
    else:
        mean = X.mean(axis=0)
        var = X.var(axis=0)
    return mean, np.sqrt(var)


def correlate(Z, V: np.ndarray) -> np.ndarray:
    """Pearson correlations between every column of ``Z`` (dense or sparse) and every column of ``V``.

    Computed as one matrix product of ``Z`` with the standardised ``V``, so a sparse ``Z`` stays
    sparse. Columns that are constant give NaN.

    Returns
    -------
    ndarray (``Z.shape[1] x V.shape[1]``).
    """
    n = Z.shape[0]
    vm, vs = _standardised_columns(V)
    with np.errstate(divide="ignore", invalid="ignore"):
        Vs = np.where(vs > 0, (V - vm) / np.where(vs > 0, vs, 1.0), 0.0)
    zm, zs = _standardised_columns(Z)
    if sp.issparse(Z):
        cross = np.asarray(sp.csr_matrix(Z, dtype=np.float64).T @ Vs)
    else:
        cross = np.asarray(Z, dtype=np.float64).T @ Vs
    cross -= np.outer(zm, Vs.sum(axis=0))  # ~0 for standardised V; removes its rounding error
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cross / (n * zs[:, None])
    r[~(zs > 0), :] = np.nan
    r[:, ~(vs > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _dictionary_activations(adata: AnnData, key: str):
    """The activations ``adata.obsm[f"X_{key}"]`` (CSR or float64 ndarray) and the feature names."""
    obsm_key = f"X_{key}"
    if obsm_key not in adata.obsm:
        raise ValueError(
            f"adata.obsm[{obsm_key!r}] (the activations of dictionary {key!r}) is missing; adata.obsm has "
            f"{available_reps(adata)}. Train a dictionary (`fl.tl.sae(adata, key_added={key!r})`) or "
            f"recompute the activations (`fl.tl.encode(adata, {key!r})`)."
        )
    Z = adata.obsm[obsm_key]  # a dictionary's activations, or any features stored under that name
    Z = sp.csr_matrix(Z, dtype=np.float64) if sp.issparse(Z) else np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] != adata.n_obs:
        raise ValueError(f"adata.obsm[{obsm_key!r}] must be cells x features, got shape {Z.shape}.")
    if sp.issparse(Z):
        check_finite(np.atleast_2d(Z.data), obsm_key)
    else:
        check_finite(Z, obsm_key, adata.obs_names)
    entry = adata.uns.get(key)
    feats = entry.get("features") if isinstance(entry, dict) else None
    if isinstance(feats, pd.DataFrame) and len(feats) == Z.shape[1]:
        names = pd.Index(feats.index.astype(str))
    else:
        names = pd.Index([f"f{i}" for i in range(Z.shape[1])])
    return Z, names


@tool
@doc
def variable_recovery(
    adata: AnnData,
    variables: str | Sequence[str],
    *,
    key: str | None = None,
    use_rep: str | None = None,
    threshold: float = 0.95,
    absolute: bool | None = None,
    key_added: str | None = None,
) -> None:
    """How well single features recover each generative variable (Schuster 2025, A.2.4, Table S5).

    For dictionary features (``key``: activations ``adata.obsm[f"X_{key}"]``) or the dimensions of
    any representation (``use_rep``: e.g. PCA, ICA or SVD baselines), the Pearson correlation over
    all cells of every feature with every dimension of every variable is computed. For a variable
    dimension the best feature is the one with the highest correlation; a dimension is recovered
    when it reaches ``threshold``. A feature matches a variable when its best correlation with any
    of the variable's dimensions reaches ``threshold``; matched features beyond the first per
    dimension (several features whose best dimension is the same) are redundant.

    Signed or absolute correlation: dictionary features are non-negative activations, so a feature
    recovers a variable only when it rises with it, and the signed ``r`` is used. The sign of a
    PCA/ICA/SVD component is arbitrary, so for ``use_rep`` ``|r|`` is used; both defaults can be
    changed with ``absolute``. Constant features (dead) and constant dimensions (e.g. genes without
    a parent) have no correlation: they are never best, and a constant dimension is left out of the
    summary.

    Parameters
    ----------
    adata
        Annotated data matrix.
    variables
        Keys of ``adata.obsm`` with the variables, or ``"X"`` for ``adata.X`` (the observables).
    key
        Key of a dictionary: its activations ``adata.obsm[f"X_{key}"]`` are the features.
    use_rep
        Key of ``adata.obsm`` whose columns are the features (instead of ``key``).
    threshold
        Correlation at which a dimension counts as recovered (0.95 as in the paper).
    absolute
        Use ``|r|``; by default ``False`` for ``key`` and ``True`` for ``use_rep`` (see above).
    key_added
        Key of ``adata.uns`` to write to (``"variable_recovery"``).

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key_added][key or use_rep]`` : :class:`dict`
        ``"summary"``: DataFrame indexed by variable with ``mean_best_r`` (mean over the variable's
        non-constant dimensions of the best correlation, the number of Table S5), ``median_best_r``,
        ``n_dims``, ``n_dims_recovered`` (best correlation >= ``threshold``),
        ``n_features_matched`` (features with correlation >= ``threshold`` with some dimension) and
        ``n_redundant`` (matched features minus the distinct dimensions they match best);
        ``"per_dimension"``: one row per variable dimension with ``variable``, ``dimension``,
        ``best_r``, ``best_feature`` and ``n_features_above`` (features with correlation >=
        ``threshold``); ``"features"``: DataFrame indexed by feature with, per variable,
        ``{variable}_best_r`` and ``{variable}_best_dimension``; ``"params"``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.simulate("large", n_obs=1_000, n_genes=200)
    >>> fl.tl.sae(adata, "X_programs", n_features=64, n_steps=100, progress=False)
    >>> fl.tl.variable_recovery(adata, ["X_programs", "X_programs_active"], key="sae")
    >>> fl.tl.variable_recovery(adata, ["X_programs_active"], use_rep="X_programs")
    >>> fl.get.recovery(adata, "variable_recovery", "sae")["n_dims"].to_dict()
    {'X_programs': 100, 'X_programs_active': 100}
    """
    variables = _as_list(variables)
    if (key is None) == (use_rep is None):
        raise ValueError("Pass exactly one of `key=` (a dictionary) and `use_rep=` (a representation in adata.obsm).")
    check_number(threshold, "threshold", minimum=-1.0, maximum=1.0)
    store_key = stem(key_added, "variable_recovery")
    if key is not None:
        Z, names = _dictionary_activations(adata, key)
        name = key
    else:
        Z = embedding(adata, use_rep).astype(np.float64)
        names = pd.Index([str(i) for i in range(Z.shape[1])])
        name = use_rep
    absolute = key is None if absolute is None else bool(absolute)
    rows, summary, feat_cols = [], {}, {}
    for var in variables:
        V, dims = _variable(adata, var)
        per_dim, summary[var], cols = _recover_variable(Z, V, dims, names, threshold, absolute)
        rows.append(per_dim.assign(variable=var)[["variable", *per_dim.columns]])
        feat_cols.update({f"{var}_{c}": v for c, v in cols.items()})
    per_dim = pd.concat(rows, ignore_index=True)
    per_dim.index = (per_dim["variable"] + ":" + per_dim["dimension"].astype(str)).to_numpy()
    summ = pd.DataFrame.from_dict(summary, orient="index")
    summ.index.name = "variable"
    params = {
        "key": key,
        "use_rep": use_rep,
        "variables": variables,
        "threshold": float(threshold),
        "absolute": bool(absolute),
        "featurelens_version": version(),
    }
    store = adata.uns.setdefault(store_key, {})
    store[name] = {
        "summary": summ,
        "per_dimension": per_dim,
        "features": pd.DataFrame(feat_cols, index=names),
        "params": plain_params(params),
    }


def _recover_variable(Z, V, dims: pd.Index, names: pd.Index, threshold: float, absolute: bool):
    """Best feature per dimension of one variable and best dimension per feature, in column blocks."""
    n_feat = Z.shape[1]
    best_r = np.full(V.shape[1], np.nan)
    best_f = np.full(V.shape[1], -1, np.int64)
    n_above = np.zeros(V.shape[1], np.int64)
    f_best = np.full(n_feat, -np.inf)
    f_dim = np.full(n_feat, -1, np.int64)
    for start, block in _column_blocks(V):
        r = correlate(Z, block)
        r = np.nan_to_num(np.abs(r) if absolute else r, nan=-np.inf)
        stop = start + block.shape[1]
        arg = r.argmax(axis=0)
        mx = r[arg, np.arange(r.shape[1])]
        best_r[start:stop] = np.where(np.isfinite(mx), mx, np.nan)
        best_f[start:stop] = np.where(np.isfinite(mx), arg, -1)
        n_above[start:stop] = (r >= threshold).sum(axis=0)
        farg = r.argmax(axis=1)
        fmx = r[np.arange(n_feat), farg]
        better = fmx > f_best
        f_best[better] = fmx[better]
        f_dim[better] = farg[better] + start
    per_dim = pd.DataFrame(
        {
            "dimension": dims.to_numpy(),
            "best_r": best_r,
            "best_feature": np.where(best_f >= 0, names.to_numpy()[np.clip(best_f, 0, None)], ""),
            "n_features_above": n_above,
        }
    )
    matched = np.isfinite(f_best) & (f_best >= threshold)
    ok = best_r[np.isfinite(best_r)]
    summary = {
        "mean_best_r": float(ok.mean()) if ok.size else np.nan,
        "median_best_r": float(np.median(ok)) if ok.size else np.nan,
        "n_dims": int(ok.size),
        "n_dims_recovered": int((ok >= threshold).sum()),
        "n_features_matched": int(matched.sum()),
        "n_redundant": int(matched.sum() - np.unique(f_dim[matched]).size),
    }
    cols = {
        "best_r": np.where(np.isfinite(f_best), f_best, np.nan),
        "best_dimension": np.where(f_dim >= 0, dims.to_numpy()[np.clip(f_dim, 0, None)], ""),
    }
    return per_dim, summary, cols


# ---------------------------------------------------------------------------- structure recovery
@tool
@renamed(alpha="pval_cutoff")
@doc
def structure_recovery(
    adata: AnnData,
    key: str,
    *,
    percentiles: Sequence[float] = (20, 30, 40, 50, 60, 70),
    layer: str | None = None,
    connectivity=None,
    similarity: Literal["cosine", "pearson"] = "cosine",
    pval_cutoff: float | None = None,
    key_added: str | None = None,
) -> None:
    """How well dictionary features recover the gene-program connectivity ``M`` (Schuster 2025, A.2.5).

    1. The cosine similarity (or, with ``similarity="pearson"``, the Pearson correlation) over cells
       between every feature's activations and every observable (gene) is computed.
    2. For each percentile ``q``, a gene is connected to a feature when its similarity is above the
       ``q``-th percentile of that feature's similarities over all genes (a per-feature threshold,
       so features of different scale are treated alike): a pseudo connectivity matrix
       (features x genes).
    3. Each feature's connected genes are tested against the children of every program (the
       columns of ``M``) with a one-sided binomial test (``P(X >= overlap)``, ``X ~ Binomial(n
       connected genes, children / genes)``); p-values are Benjamini-Hochberg adjusted over all
       feature x program pairs of the percentile. A feature's best match is its program with the
       smallest p-value (ties: the largest overlap). By default (``pval_cutoff=None``) every
       feature with at least one gene shared with its best program counts as matched, as in the
       paper; with ``pval_cutoff`` only those whose adjusted p-value is below it.
    4. For every program, the union of the genes connected to the features that match it is its
       recovered children; the fraction of ``M``'s entries (edges) recovered is the number of true
       children among them over the number of entries of ``M`` (the paper reports 75 to 95 % over
       percentiles 20 to 70).

    Lower percentiles connect more genes, so they recover more edges at a lower precision, and the
    binomial test has little power (at percentile 20 a feature connects 80 % of the genes); look at
    ``precision`` next to ``frac_recovered``. Features are compared with the observables directly
    (no decoder is needed); dead features connect to no gene.

    Caveats. The p-values assume independent genes, but genes sharing a parent are correlated, so
    even random features reach small p-values: use them to rank a feature's programs, not as
    calibrated evidence. The cosine of non-negative vectors favours genes with a large mean
    relative to their spread, whatever the feature; ``similarity="pearson"`` removes that bias but
    not the correlation through shared parents (nor the batch value shared by all programs). In the
    simulation, programs active in the same cell types are hard to tell apart (for high rates
    ``x''_j`` is mostly its activity pattern), so even the true ``x''`` as features does not match
    every program to itself; with independent programs (one cell type active in all programs) it
    does at percentiles >= 70.

    Parameters
    ----------
    adata
        Annotated data matrix with the observables in ``adata.X`` (or ``layer``) and the activations
        ``adata.obsm[f"X_{key}"]``, e.g. from :func:`featurelens.datasets.simulate`.
    {doc_key}
    percentiles
        Percentiles (0-100) of each feature's similarities used as thresholds.
    layer
        Layer with the observables instead of ``adata.X``.
    connectivity
        Genes x programs 0/1 matrix ``M``; default ``adata.uns["simulation"]["connectivity"]``.
    similarity
        ``"cosine"`` (the paper's choice) or ``"pearson"`` (centred cosine).
    pval_cutoff
        If given, a feature matches its best program only when the adjusted p-value is below it
        (``alpha`` is its old name).
    key_added
        Key of ``adata.uns`` to write to (``"structure_recovery"``).

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key_added][key]`` : :class:`dict`
        ``"summary"``: DataFrame indexed by percentile (str) with ``n_features_matched``,
        ``n_programs_matched``, ``frac_recovered`` (true edges recovered / edges of ``M``),
        ``frac_recovered_matched`` (the same over the edges of matched programs only) and
        ``precision`` (true edges / pseudo edges of the matched features); ``"features"``: one row
        per feature and percentile with ``feature``, ``percentile``, ``best_program`` (column index
        of ``M`` as str), ``n_genes`` (connected genes), ``overlap``, ``pval``, ``pval_adj`` and
        ``matched``; ``"params"``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.simulate("large", n_obs=1_000, n_genes=200)
    >>> fl.tl.sae(adata, "X_programs", n_features=64, n_steps=100, progress=False)
    >>> fl.tl.structure_recovery(adata, "sae", percentiles=(50, 70))
    >>> fl.get.recovery(adata, "structure_recovery", "sae").index.tolist()
    ['50', '70']
    """
    check_choice(similarity, "similarity", ("cosine", "pearson"))
    pct = [float(q) for q in percentiles]
    if not pct or any(not 0 <= q < 100 for q in pct):
        raise ValueError(f"`percentiles` must be numbers in [0, 100), got {percentiles!r}.")
    if pval_cutoff is not None:
        check_probability(pval_cutoff, "pval_cutoff")
    store_key = stem(key_added, "structure_recovery")
    Z, names = _dictionary_activations(adata, key)
    Y = expression(adata, layer)
    M = _connectivity(adata, connectivity)
    S = _feature_gene_similarity(Z, Y, similarity)
    summary, rows = {}, []
    for q in pct:
        summary[f"{q:g}"], table = _match_at_percentile(S, M, q, pval_cutoff)
        rows.append(table.assign(feature=names.to_numpy())[["feature", *table.columns]])
    feats = pd.concat(rows, ignore_index=True)
    feats.index = (feats["feature"] + ":" + feats["percentile"].map("{:g}".format)).to_numpy()
    summ = pd.DataFrame.from_dict(summary, orient="index")
    summ.index.name = "percentile"
    params = {
        "key": key,
        "percentiles": pct,
        "layer": layer,
        "similarity": similarity,
        "pval_cutoff": None if pval_cutoff is None else float(pval_cutoff),
        "n_programs": int(M.shape[1]),
        "featurelens_version": version(),
    }
    store = adata.uns.setdefault(store_key, {})
    store[key] = {"summary": summ, "features": feats, "params": plain_params(params)}


def _connectivity(adata: AnnData, connectivity) -> sp.csc_matrix:
    """The genes x programs 0/1 matrix (default: that of ``fl.datasets.simulate``)."""
    if connectivity is None:
        sim = adata.uns.get("simulation")
        if not isinstance(sim, dict) or "connectivity" not in sim:
            raise ValueError(
                "No connectivity: adata.uns['simulation']['connectivity'] is missing (it is set by "
                "`fl.datasets.simulate()`); pass `connectivity=` a genes x programs 0/1 matrix."
            )
        connectivity = sim["connectivity"]
    M = sp.csc_matrix(connectivity, dtype=np.float64)
    if M.shape[0] != adata.n_vars:
        raise ValueError(
            f"`connectivity` has {M.shape[0]} rows but adata has {adata.n_vars} genes (rows must be genes)."
        )
    M.data = (M.data != 0).astype(np.float64)
    M.eliminate_zeros()
    return M


def _feature_gene_similarity(Z, Y, similarity: str) -> np.ndarray:
    """Cosine (or Pearson) similarity over cells of every feature with every gene: features x genes."""
    Zs = sp.csr_matrix(Z, dtype=np.float64) if sp.issparse(Z) else np.asarray(Z, dtype=np.float64)
    Ys = sp.csr_matrix(Y, dtype=np.float64) if sp.issparse(Y) else np.asarray(Y, dtype=np.float64)
    if similarity == "pearson":
        return np.concatenate([np.nan_to_num(correlate(Zs, block)) for _, block in _column_blocks(Ys)], axis=1)
    cross = Zs.T @ Ys
    cross = cross.toarray() if sp.issparse(cross) else np.asarray(cross)
    zn = np.sqrt(np.asarray(Zs.multiply(Zs).sum(axis=0)).ravel() if sp.issparse(Zs) else (Zs**2).sum(axis=0))
    yn = np.sqrt(np.asarray(Ys.multiply(Ys).sum(axis=0)).ravel() if sp.issparse(Ys) else (Ys**2).sum(axis=0))
    denom = np.outer(zn, yn)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), 0.0)


def _match_at_percentile(S: np.ndarray, M: sp.csc_matrix, q: float, pval_cutoff: float | None):
    """Pseudo connectivity at percentile ``q``, binomial matches to programs and the recovered edges."""
    from ..stats import bh_adjust, binomial_sets

    n_feat, n_prog = S.shape[0], M.shape[1]
    children = np.asarray(M.sum(axis=0)).ravel()
    n_edges = float(children.sum())
    Md = M.toarray().astype(bool)
    # pseudo connectivity: genes above the feature's q-th percentile
    C = S > np.percentile(S, q, axis=1)[:, None]
    # binomial test of every feature against every program
    res = binomial_sets(sp.csr_matrix(C), M)
    pval = np.ones((n_feat, n_prog))
    hits = np.zeros((n_feat, n_prog), np.int64)
    pval[res.rows, res.sets] = res.pval
    hits[res.rows, res.sets] = res.hits
    padj = bh_adjust(pval.ravel()).reshape(pval.shape)
    best = np.lexsort((-hits, pval), axis=-1)[:, 0]  # smallest p-value, ties: largest overlap
    rows = np.arange(n_feat)
    matched = hits[rows, best] > 0
    if pval_cutoff is not None:
        matched &= padj[rows, best] < pval_cutoff
    # recovered edges: per program, the union of the genes of the features that match it
    rec = np.zeros_like(Md)
    for f in np.flatnonzero(matched):
        rec[:, best[f]] |= C[f]
    tp = float((rec & Md).sum())
    progs = np.unique(best[matched])
    edges_matched = float(children[progs].sum())
    summary = {
        "n_features_matched": int(matched.sum()),
        "n_programs_matched": int(progs.size),
        "frac_recovered": tp / n_edges if n_edges else np.nan,
        "frac_recovered_matched": tp / edges_matched if edges_matched else np.nan,
        "precision": tp / float(rec.sum()) if rec.sum() else np.nan,
    }
    table = pd.DataFrame(
        {
            "percentile": q,
            "best_program": np.where(hits[rows, best] > 0, best.astype(str), ""),
            "n_genes": C.sum(axis=1).astype(np.int64),
            "overlap": hits[rows, best],
            "pval": pval[rows, best],
            "pval_adj": padj[rows, best],
            "matched": matched,
        }
    )
    return summary, table


# ---------------------------------------------------------------------------- a small autoencoder (A.2.2)
@tool
@doc
def autoencoder(
    adata: AnnData,
    latent_dim: int,
    *,
    layer: str | None = None,
    hidden: Sequence[int] = (256,),
    n_epochs: int = 50,
    batch_size: int = 256,
    lr: float = 1e-3,
    patience: int = 5,
    log1p: bool = True,
    split_key: str | None = "split",
    train: str = "train",
    test: str = "validation",
    validation_fraction: float = 0.1,
    device: str = "auto",
    random_state: int = 0,
    progress: bool = True,
    key_added: str | None = None,
) -> None:
    """A small MLP autoencoder of the expression, with early stopping (Schuster 2025, A.2.2).

    The input is ``log1p`` of the counts (``adata.X`` or ``layer``); encoder ``genes -> hidden ->
    latent_dim`` and the mirrored decoder use ReLU between linear layers (the embedding itself is
    linear). It minimises the mean squared reconstruction error with Adam over mini-batches. After
    every epoch the loss on the validation cells is computed; training stops after ``patience``
    epochs without improvement and the weights of the best epoch are kept. The validation cells
    are the ``test`` cells of ``adata.obs[split_key]`` (the ``"split"`` of
    :func:`featurelens.datasets.simulate`); without that column a random ``validation_fraction`` of
    the cells (seeded by ``random_state``) is held out. The embedding of every cell is stored.

    Parameters
    ----------
    adata
        Annotated data matrix with counts.
    latent_dim
        Dimension of the embedding.
    layer
        Layer with the counts instead of ``adata.X``.
    hidden
        Widths of the hidden layers of the encoder (mirrored in the decoder); ``()`` for a linear
        autoencoder.
    n_epochs
        Maximum number of passes over the training cells.
    batch_size
        Cells per step.
    lr
        Adam learning rate.
    patience
        Epochs without a better validation loss before stopping.
    log1p
        Apply ``log1p`` to the counts first (the input must then be non-negative).
    split_key, train, test
        Column of ``adata.obs`` with the split and its training and validation labels.
    validation_fraction
        Fraction of cells held out for early stopping when there is no split column.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    random_state
        Seed of the initialisation, the batch order and the hold-out.
    key_added
        Name of the result: ``adata.obsm[f"X_{key_added}"]`` and ``adata.uns[key_added]``
        (``"ae"``).
    progress
        Show a progress bar over epochs.

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : ndarray, float32, cells x ``latent_dim``
        The embedding.
    ``adata.uns[key_added]`` : :class:`dict`
        ``"history"`` (DataFrame: ``epoch``, ``train_loss``, ``val_loss``), ``"best_epoch"``,
        ``"best_val_loss"`` and ``"params"``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.simulate("large", n_obs=1_000, n_genes=200)
    >>> fl.tl.autoencoder(adata, 8, n_epochs=3, progress=False)
    >>> adata.obsm["X_ae"].shape
    (1000, 8)
    """
    latent_dim = check_positive_int(latent_dim, "latent_dim")
    n_epochs = check_positive_int(n_epochs, "n_epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    patience = check_positive_int(patience, "patience")
    hidden = tuple(check_positive_int(h, "hidden") for h in hidden)
    lr = check_positive(lr, "lr")
    key = stem(key_added, "ae")
    claim(adata, key, kind="autoencoder")
    X = _autoencoder_input(adata, layer, log1p)
    tr, te, used = _holdout(adata, split_key, train, test, validation_fraction, random_state)
    dev = resolve_device(device)
    model, history, best_epoch = fit_autoencoder(
        X, np.flatnonzero(tr), np.flatnonzero(te), latent_dim=latent_dim, hidden=hidden, n_epochs=n_epochs,
        batch_size=batch_size, lr=lr, patience=patience, device=dev, random_state=random_state, progress=progress,
    )  # fmt: skip
    hist = pd.DataFrame(history)
    hist["epoch"] = hist["epoch"].astype(np.int64)
    params = {
        "method": "autoencoder",
        "latent_dim": latent_dim,
        "layer": layer,
        "hidden": list(hidden),
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "patience": patience,
        "log1p": log1p,
        "split_key": used,
        "validation_fraction": None if used else float(validation_fraction),
        "n_train": int(tr.sum()),
        "n_validation": int(te.sum()),
        "device": str(dev),
        "random_state": random_state,
        "featurelens_version": version(),
    }
    adata.obsm[f"X_{key}"] = _embed(model[0], X, dev, latent_dim)
    adata.uns[key] = {
        "history": hist,
        "best_epoch": int(best_epoch),
        "best_val_loss": float(hist["val_loss"].iloc[best_epoch]),
        "params": plain_params(params),
    }


def _autoencoder_input(adata: AnnData, layer: str | None, log1p: bool):
    """Float32 expression (``log1p`` of the counts), dense when small enough to densify once."""
    X = expression(adata, layer)
    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    if log1p:
        values = X.data if sp.issparse(X) else X
        if (values < 0).any():
            raise ValueError("`log1p=True` needs non-negative counts; pass `log1p=False` for transformed data.")
        X = X.log1p() if sp.issparse(X) else np.log1p(X)
    if sp.issparse(X) and X.shape[0] * X.shape[1] <= 50_000_000:
        X = X.toarray()  # small enough: densify once instead of per batch
    return X


def _holdout(adata: AnnData, split_key, train, test, validation_fraction, random_state):
    """Training and validation masks: the split column, or a random fraction of the cells."""
    if split_key is not None and split_key in adata.obs:
        tr, te, _ = _split(adata, split_key, train, test)
        return tr, te, split_key
    if split_key not in (None, "split"):
        raise ValueError(
            f"`split_key={split_key!r}` is not a column of adata.obs; pass `split_key=None` to hold out "
            "a random `validation_fraction` of the cells."
        )
    check_number(validation_fraction, "validation_fraction", minimum=0.0, maximum=1.0, low_open=True, high_open=True)
    n_val = max(1, round(validation_fraction * adata.n_obs))
    if adata.n_obs - n_val < 1:
        raise ValueError("Too few cells to hold out a validation set.")
    te = np.zeros(adata.n_obs, bool)
    te[np.random.default_rng(random_state).choice(adata.n_obs, n_val, replace=False)] = True
    return ~te, te, None


def _embed(encoder, X, dev, latent_dim: int) -> np.ndarray:
    """The encoder's embedding of every row, in blocks."""
    import torch

    out = np.empty((X.shape[0], latent_dim), np.float32)
    with torch.no_grad():
        for s in range(0, X.shape[0], 4096):
            block = X[s : s + 4096]
            block = block.toarray() if sp.issparse(block) else block
            out[s : s + 4096] = encoder(torch.as_tensor(block, device=dev)).cpu().numpy()
    return out
