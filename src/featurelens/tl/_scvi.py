"""scvi-tools as a generative decoder for steering.

A small SCVI trained on the counts, and steering effects tested on samples of its posterior.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import check_choice, check_positive_int
from .._core import check_adata, expression, resolve_device, stem, tool_params

#: Normalised expression is reported per this many counts (as ``sc.pp.normalize_total(target_sum=1e4)``).
LIBRARY_SIZE = 1e4
_MAX_BLOCK = 2e7  # posterior samples x cells x genes held at once


def import_scvi():
    """The scvi-tools module, or an ImportError that says how to install it."""
    try:
        import scvi
    except ImportError as err:  # pragma: no cover - scvi-tools is installed with the test extra
        raise ImportError(
            "decoder='scvi' and train_scvi need scvi-tools: `pip install scvi-tools` (pin torch in a "
            "constraints file, e.g. `pip install -c constraints.txt scvi-tools`, to keep your torch build)."
        ) from err
    return scvi


def model_genes(model) -> pd.Index:
    """The genes an scVI model was set up with, in its order."""
    return pd.Index(model.adata_manager.get_state_registry("X").column_names).astype(str)


def check_scvi_model(model, adata: AnnData) -> None:
    """Refuse a model that is not a trained SCVI with a Gaussian latent on the genes of ``adata``."""
    scvi = import_scvi()
    if not isinstance(model, scvi.model.SCVI):
        raise ValueError(
            f"decoder='scvi' needs `scvi_model`, a trained scvi.model.SCVI, got {type(model).__name__}. "
            "Train one with fl.tl.train_scvi(adata) or scvi-tools."
        )
    if not model.is_trained:
        raise ValueError("The scVI model is not trained; call model.train() (or use fl.tl.train_scvi) first.")
    if model.module.latent_distribution != "normal":
        raise ValueError(
            f"Steering adds a direction to the latent, which needs latent_distribution='normal'; this model "
            f"uses {model.module.latent_distribution!r}."
        )
    genes, ours = model_genes(model), adata.var_names.astype(str)
    if len(genes) != len(ours) or not (genes == ours).all():
        missing = ours.difference(genes)
        raise ValueError(
            f"The scVI model was trained on {len(genes)} genes and adata has {adata.n_vars}; they must be the "
            f"same genes in the same order ({len(missing)} of adata's genes are not in the model, e.g. "
            f"{list(missing[:3])}). Steer the AnnData the model was trained on, e.g. adata[:, model genes]."
        )


def _counts_of(adata: AnnData, layer: str | None):
    """The count matrix of ``layer``, refused when it does not hold non-negative integers."""
    X = expression(adata, layer)
    if sp.issparse(X):
        vals = X.data[:1_000_000]
    else:  # the first rows only: a matrix on disk is not read whole for the check
        vals = np.asarray(X[: max(1, 1_000_000 // max(X.shape[1], 1))]).ravel()
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if vals.size and (vals.min() < 0 or not np.array_equal(vals, np.round(vals))):
        raise ValueError(
            f"scVI models counts, but {where} holds non-integer or negative values (is it normalised or "
            "log-transformed?). Keep the raw counts in a layer, e.g. adata.layers['counts'] = adata.X.copy() "
            "before normalising, and pass layer='counts'."
        )
    return X


def _accelerator(device) -> tuple[str, object]:
    dev = resolve_device(device)
    if dev.type == "cuda":
        return "gpu", [dev.index or 0]
    return "cpu", "auto"


def train_scvi(
    adata: AnnData,
    *,
    layer: str | None = "counts",
    batch_key: str | None = None,
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    gene_likelihood: str = "nb",
    max_epochs: int | None = None,
    batch_size: int = 128,
    device: str = "auto",
    random_state: int = 0,
    progress: bool = True,
    key_added: str | None = None,
):
    """Train a small scVI model on the counts and store its latent space for a dictionary.

    A thin wrapper of :class:`scvi.model.SCVI` (Lopez et al. 2018) for the steering workflow:
    train the model, learn a dictionary on ``adata.obsm["X_scVI"]`` (:func:`sae` / :func:`icfl`) and
    steer with ``fl.tl.steer(..., decoder="scvi", scvi_model=model)``. The model is set up on a
    light AnnData that shares the count matrix, so scvi-tools writes none of its bookkeeping
    fields (``_scvi_batch``, ``_scvi_uuid``) into ``adata``.

    Parameters
    ----------
    adata
        Annotated data matrix (cells x genes). Not a view: the latent space is written into it.
    layer
        Layer with the raw counts (``None``: ``adata.X``).
    batch_key
        Column of ``adata.obs`` with the batch (sample) of every cell, corrected for by the model.
    n_latent, n_hidden, n_layers, gene_likelihood
        Size of the latent space and of the networks, and the count distribution (``"zinb"``, ``"nb"``
        or ``"poisson"``), as in :class:`scvi.model.SCVI`.
    max_epochs
        Training epochs (default: scvi-tools' rule, ``min(400, 400 * 20,000 / n_cells)``).
    batch_size
        Minibatch size.
    device
        ``"auto"`` (a GPU when there is one), ``"cpu"`` or ``"cuda[:N]"``.
    random_state
        Seed, set through ``scvi.settings.seed`` (which also seeds numpy's and torch's global generators).
    progress
        Show scvi-tools' progress bar.
    key_added
        Stem of the results (default ``"scVI"``).

    Returns
    -------
    The trained :class:`scvi.model.SCVI`.

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`numpy.ndarray`
        The latent means of every cell (cells x ``n_latent``, float32).
    ``adata.uns[key_added]["params"]`` : :class:`dict`
        The options, the epochs trained and the final training loss.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018()[:300, :200].copy()  # raw counts in X
    >>> model = fl.tl.train_scvi(adata, layer=None, max_epochs=2, progress=False)
    >>> adata.obsm["X_scVI"].shape
    (300, 10)
    """
    scvi = import_scvi()
    check_adata(adata)
    if adata.is_view:
        raise ValueError("train_scvi writes into adata, which is a view; pass a copy (adata[mask].copy()).")
    check_choice(gene_likelihood, "gene_likelihood", ("zinb", "nb", "poisson"))
    for name, value in (("n_latent", n_latent), ("n_hidden", n_hidden), ("n_layers", n_layers)):
        check_positive_int(value, name)
    check_positive_int(batch_size, "batch_size", minimum=2)
    if max_epochs is not None:
        check_positive_int(max_epochs, "max_epochs")
    name = stem(key_added, "scVI")
    counts = _counts_of(adata, layer)
    obs = pd.DataFrame(index=adata.obs_names.astype(str))
    if batch_key is not None:
        if batch_key not in adata.obs:
            raise KeyError(f"`batch_key` {batch_key!r} is not a column of adata.obs.")
        obs[batch_key] = adata.obs[batch_key].astype(str).to_numpy()
    var = pd.DataFrame(index=adata.var_names.astype(str))
    light = AnnData(X=counts, obs=obs, var=var) if layer is None else AnnData(obs=obs, var=var, layers={layer: counts})
    scvi.settings.seed = int(random_state)
    scvi.model.SCVI.setup_anndata(light, layer=layer, batch_key=batch_key)
    model = scvi.model.SCVI(light, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers,
                            gene_likelihood=gene_likelihood)  # fmt: skip
    accelerator, devices = _accelerator(device)
    model.train(max_epochs=max_epochs, batch_size=batch_size, accelerator=accelerator, devices=devices,
                enable_progress_bar=bool(progress))  # fmt: skip
    loss = model.history.get("elbo_train")
    adata.obsm[f"X_{name}"] = model.get_latent_representation().astype(np.float32)
    params = tool_params(
        layer=layer, batch_key=batch_key, n_latent=int(n_latent), n_hidden=int(n_hidden),
        n_layers=int(n_layers), gene_likelihood=gene_likelihood, batch_size=int(batch_size),
        max_epochs=int(loss.shape[0]) if loss is not None else max_epochs,
        elbo_train=float(loss.iloc[-1, 0]) if loss is not None else float("nan"),
        random_state=int(random_state), scvi_version=scvi.__version__,
    )  # fmt: skip
    adata.uns[name] = {"params": params}
    return model


def _posterior_blocks(model, sub: AnnData, shift: np.ndarray, n_samples: int, seed: int):
    """Yield, per block of cells, normalised expression decoded from ``z`` and ``z + shift``.

    ``z`` are posterior samples (samples x cells x latent); both arrays are samples x cells x genes.
    """
    import torch

    module = model.module
    n_genes = sub.n_vars
    block = int(max(1, min(256, _MAX_BLOCK // (n_samples * n_genes))))
    loader = model._make_data_loader(adata=sub, batch_size=block, shuffle=False)
    dev = next(module.parameters()).device
    start = 0
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.inference_mode():
        torch.manual_seed(seed)
        for tensors in loader:
            inf = module.inference(**module._get_inference_input(tensors), n_samples=n_samples)
            gen = module._get_generative_input(tensors, inf)
            b = inf["qz"].loc.shape[0]
            e0 = module.generative(**gen)["px"].scale
            gen["z"] = inf["z"] + torch.as_tensor(shift[start : start + b], dtype=inf["z"].dtype, device=dev)
            e1 = module.generative(**gen)["px"].scale
            yield (LIBRARY_SIZE * e0).cpu().numpy().astype(np.float64), (LIBRARY_SIZE * e1).cpu().numpy().astype(
                np.float64
            )
            start += b


def bayesian_fdr(proba_de: np.ndarray) -> np.ndarray:
    """Posterior expected false discovery rate of the genes ranked at or above each gene.

    Ranking genes by ``proba_de`` (descending), the expected FDR of the top ``k`` is the mean of
    ``1 - proba_de`` over them (Newton et al. 2004; scvi-tools' ``fdr_target`` rule). The value of a
    gene is that of the smallest set containing it, made monotone like a q-value.
    """
    p = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    efdr = np.cumsum(1.0 - p[order]) / np.arange(1, p.size + 1)
    efdr = np.minimum.accumulate(efdr[::-1])[::-1]
    out = np.empty_like(efdr)
    out[order] = efdr
    return np.clip(out, 0.0, 1.0)


def scvi_effects(model, adata: AnnData, idx: np.ndarray, X0: np.ndarray, X1: np.ndarray, opts: dict,
                 progress: bool = True) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Steering effects of every gene from posterior samples of an scVI model.

    For every steered cell, ``n_samples`` latent samples ``z ~ q(z | x)`` are decoded as they are and
    shifted by the steering ``X1 - X0``; the log2 fold change of every sample and cell is
    ``log2((e1 + c) / (e0 + c))`` on expression per 10,000 counts with pseudocount ``c``. As in
    scvi-tools' ``mode="change"``, ``proba_de`` is the fraction of samples and cells with
    ``|LFC| > lfc_threshold``; ``pval`` is ``1 - proba_de`` (the posterior probability of no change
    beyond the threshold, a local false discovery rate) and ``padj`` the posterior expected FDR.
    Intervals are 95 % posterior intervals of the cell-averaged ``delta`` and ``log2fc``.
    """
    S = int(opts["n_samples"])
    sub = _cells(adata, idx)
    try:
        acc, per_s_lfc, per_s_delta, mismatch = _accumulate(model, sub, X0, X1, opts, progress)
    finally:
        _forget(model, sub)
    n = float(idx.size)
    proba = acc["de"] / (n * S)
    delta = (acc["e1"] - acc["e0"]) / (n * S)
    lo_d, hi_d = np.percentile(per_s_delta / n, [2.5, 97.5], axis=0)
    lo_l, hi_l = np.percentile(per_s_lfc / n, [2.5, 97.5], axis=0)
    table = pd.DataFrame(
        {
            "gene": adata.var_names.astype(str), "mean_original": acc["e0"] / (n * S),
            "mean_steered": acc["e1"] / (n * S), "delta": delta, "delta_low": lo_d, "delta_high": hi_d,
            "log2fc": acc["lfc"] / (n * S), "log2fc_low": lo_l, "log2fc_high": hi_l, "proba_de": proba,
            "statistic": np.nan, "pval": 1.0 - proba, "padj": bayesian_fdr(proba),
            "direction": pd.Categorical(np.where(delta > 0, "up", np.where(delta < 0, "down", "none")),
                                        categories=["down", "none", "up"]),
            "r2": np.nan, "predictable": True,
        }
    )  # fmt: skip
    order = np.lexsort((table["gene"].to_numpy(), -np.abs(table["log2fc"].to_numpy()), table["padj"].to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    quality = {"latent_mismatch": mismatch, "n_samples": S, "lfc_threshold": float(opts["lfc_threshold"])}
    return table, quality


def _accumulate(model, sub: AnnData, X0: np.ndarray, X1: np.ndarray, opts: dict, progress: bool):
    """Sums over posterior samples and cells of the expression, the LFC and the changed indicator."""
    from tqdm.auto import tqdm

    S, G, pc = int(opts["n_samples"]), sub.n_vars, opts["pseudocount"]
    mismatch = _latent_mismatch(model.get_latent_representation(sub), X0)
    if mismatch > 0.05:
        raise ValueError(
            f"The dictionary's embedding is not this scVI model's latent space: adata.obsm differs from the "
            f"model's latent means of the steered cells by {mismatch:.0%} (median relative distance). Train the "
            "dictionary on model.get_latent_representation() (fl.tl.train_scvi stores it in obsm['X_scVI'])."
        )
    acc = {k: np.zeros(G) for k in ("e0", "e1", "lfc", "de")}
    per_s_lfc, per_s_delta = np.zeros((S, G)), np.zeros((S, G))
    bar = tqdm(total=sub.n_obs, desc="steering: scVI posterior", disable=not progress, leave=False)
    for e0, e1 in _posterior_blocks(model, sub, X1 - X0, S, opts["random_state"]):
        lfc = np.log2(e1 + pc) - np.log2(e0 + pc)
        acc["e0"] += e0.sum((0, 1))
        acc["e1"] += e1.sum((0, 1))
        acc["lfc"] += lfc.sum((0, 1))
        acc["de"] += (np.abs(lfc) > opts["lfc_threshold"]).sum((0, 1))
        per_s_lfc += lfc.sum(1)
        per_s_delta += (e1 - e0).sum(1)
        bar.update(e0.shape[1])
    bar.close()
    return acc, per_s_lfc, per_s_delta, mismatch


def _forget(model, sub: AnnData) -> None:
    """Drop the setup scvi-tools registered for the temporary AnnData, so repeated runs hold no memory."""
    uuid = sub.uns.get("_scvi_uuid")
    if uuid is None:  # pragma: no cover - nothing was registered
        return
    model._per_instance_manager_store.get(model.id, {}).pop(uuid, None)
    model._setup_adata_manager_store.pop(uuid, None)


def _cells(adata: AnnData, idx: np.ndarray) -> AnnData:
    """The expression matrices and obs of the chosen cells, as a new AnnData the model may annotate."""
    return AnnData(
        X=None if adata.X is None else adata.X[idx],
        obs=adata.obs.iloc[idx].copy(),
        var=pd.DataFrame(index=adata.var_names.astype(str)),
        layers={k: v[idx] for k, v in adata.layers.items()},
    )


def _latent_mismatch(loc: np.ndarray, X0: np.ndarray) -> float:
    """Median relative distance between stored embedding rows and the model's latent means."""
    num = np.linalg.norm(np.asarray(X0, np.float64) - loc, axis=1)
    den = np.maximum(np.linalg.norm(loc, axis=1), 1e-12)
    return float(np.median(num / den))
