"""Linear probing of embeddings, reconstructions and sparse codes."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_number, check_positive_int
from .._core import activations, doc, embedding, get_entry, group_codes, reconstruction, tool, tool_params, warn


def _probe_split(X, y, train, test, random_state, max_iter):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(
        StandardScaler(with_mean=not sp.issparse(X)),
        LogisticRegression(class_weight="balanced", max_iter=max_iter, random_state=random_state),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        warnings.filterwarnings("ignore", message=".*y_pred contains classes not in y_true.*")
        clf.fit(X[train], y[train])
        return float(balanced_accuracy_score(y[test], clf.predict(X[test])))


def _representations(adata: AnnData, key: str | None, use_rep: str | None) -> tuple[str, dict]:
    """The representations to probe: the embedding, and with ``key`` its reconstruction and codes."""
    if key is None:
        if use_rep is None:
            raise ValueError("Pass `use_rep=` (an embedding in adata.obsm) or `key=` (a dictionary).")
        return use_rep, {"embedding": embedding(adata, use_rep)}
    entry = get_entry(adata, key)
    Z = activations(adata, key)
    rep, X, Xhat, _, _ = reconstruction(adata, entry, Z, use_rep, None)
    return rep, {"embedding": X, "reconstruction": Xhat, "codes": Z}


def _folds(adata: AnnData, codes_y: np.ndarray, split_key: str | None, test_size: float, random_state: int):
    """``(name, train mask, test mask)`` of every held-out part."""
    if split_key is not None:
        split_codes, splits = group_codes(adata, split_key, min_size=1, what="split_key")
        return [(str(s), split_codes != i, split_codes == i) for i, s in enumerate(splits)]
    from sklearn.model_selection import train_test_split

    check_number(test_size, "test_size", minimum=0.0, maximum=1.0, low_open=True, high_open=True)
    counts = np.bincount(codes_y)
    strat = codes_y if counts.min() >= 2 else None
    tr, _ = train_test_split(np.arange(adata.n_obs), test_size=test_size, random_state=random_state, stratify=strat)
    train = np.zeros(adata.n_obs, bool)
    train[tr] = True
    warn(
        "No `split_key`: train and test cells come from the same experiments, so batch effects can inflate "
        "the accuracy. Pass split_key= (e.g. a batch or replicate column) for a held-out-experiment test."
    )
    return [("random", train, ~train)]


@tool
@doc
def linear_probe(
    adata: AnnData,
    groupby: str,
    *,
    use_rep: str | None = None,
    key: str | None = None,
    split_key: str | None = None,
    test_size: float = 0.2,
    max_iter: int = 1000,
    random_state: int = 0,
) -> None:
    """Balanced accuracy of a linear classifier predicting ``groupby`` from representations.

    A logistic regression with class-balanced cross-entropy (``class_weight="balanced"``) on
    standardised inputs is trained on one part of the cells and scored by balanced accuracy on
    the rest (Donhauser et al. 2025, sec. 5). With ``split_key`` the parts are mutually
    exclusive experiments: each value of ``adata.obs[split_key]`` (a batch, run or replicate)
    is held out in turn and the classifier is trained on the others, so batch effects cannot
    leak from training into testing. Without it, a stratified random split is used.

    With ``key`` (a dictionary), three representations are compared: the embedding the
    dictionary was trained on, its reconstruction from the sparse codes (mapped back into the
    embedding's space) and the sparse codes themselves.

    Parameters
    ----------
    {doc_adata}
    groupby
        Column of ``adata.obs`` with the labels to predict.
    use_rep
        Embedding to probe (default: the dictionary's training embedding; required without
        ``key``).
    key
        Dictionary whose reconstruction and codes are probed too.
    split_key
        Column of ``adata.obs`` defining mutually exclusive train/test experiments.
    test_size
        Fraction of cells held out when ``split_key`` is not given.
    max_iter
        Iterations of the logistic-regression solver.
    random_state
        Seed of the split and the solver.

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key]["probe"][groupby]`` : :class:`dict` (or ``adata.uns["linear_probe"][groupby]`` without ``key``)
        ``"results"`` (one row per representation and held-out part: ``representation``, ``test``,
        ``balanced_accuracy``, ``n_train``, ``n_test``; read it with :func:`featurelens.get.probe`),
        ``"summary"`` (mean balanced accuracy per representation) and ``"params"``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.linear_probe(adata, "cell_type", key="sae", split_key="condition")
    >>> fl.get.probe(adata, "cell_type", key="sae")["representation"].unique().tolist()
    ['embedding', 'reconstruction', 'codes']
    """
    check_positive_int(max_iter, "max_iter")
    codes_y, labels = group_codes(adata, groupby, min_size=1)
    rep, reps = _representations(adata, key, use_rep)
    folds = _folds(adata, codes_y, split_key, test_size, random_state)
    rows = []
    for name, X in reps.items():
        for test_name, train, test in folds:
            if np.unique(codes_y[train]).size < 2:
                raise ValueError(
                    f"Holding out {split_key}={test_name!r} leaves fewer than two labels of {groupby!r} for training."
                )
            acc = _probe_split(X, codes_y, train, test, random_state, max_iter)
            rows.append(
                {"representation": name, "test": test_name, "balanced_accuracy": acc, "n_train": int(train.sum()),
                 "n_test": int(test.sum())}
            )  # fmt: skip
    results = pd.DataFrame(rows)
    summary = results.groupby("representation", sort=False)["balanced_accuracy"].agg(["mean", "std", "min", "max"])
    summary.index = summary.index.astype(str)
    store = adata.uns[key].setdefault("probe", {}) if key is not None else adata.uns.setdefault("linear_probe", {})
    params = tool_params(
        groupby=groupby, use_rep=rep, split_key=split_key, test_size=test_size if split_key is None else None,
        n_labels=len(labels), random_state=random_state,
    )  # fmt: skip
    store[groupby] = {"results": results, "summary": summary.reset_index(), "params": params}
