"""Dictionary learning on ``adata.obsm``: :func:`sae`, :func:`icfl`, :func:`encode`, :func:`reconstruct`."""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._utils import (
    check_adata,
    check_positive_int,
    feature_names,
    get_rep,
    plain_params,
    resolve_device,
    version,
    view_to_actual,
)
from ..models.preprocess import NORMALIZE_OPTIONS, Normalizer, Preprocess, Whitening
from ..pp._whiten import find_whitening

ARCHITECTURES = ("vanilla", "relu", "topk", "batchtopk")
SELECTIONS = ("signed", "abs")
ICFL_BIAS = ("mean", "learned", "none")


def _default_lr(name: str, d: int) -> float:
    """Peak Adam learning rate: 3e-3 * min(1, sqrt(32 / d)) for SAEs, 1e-3 for ICFL."""
    if name == "icfl":
        return 1e-3
    return float(3e-3 * min(1.0, np.sqrt(32.0 / d)))


# ---------------------------------------------------------------------- defaults and checks
def _default_batch_size(n_obs: int) -> int:
    return int(min(n_obs, 1024))


def _default_n_steps(n_obs: int, batch_size: int) -> int:
    """About 100 epochs, at least 1,500 and at most 20,000 steps."""
    return int(np.clip(np.ceil(100 * n_obs / batch_size), 1500, 20000))


def _default_dead_window(n_steps: int, batch_size: int) -> int:
    return int(max(batch_size, min(10_000_000, n_steps * batch_size // 20)))


def _check_common(n_obs, d, n_features, expansion, lr, batch_size, n_steps, normalize, dead_window, log_every):
    if n_obs < 2:
        raise ValueError(f"Dictionary learning needs at least 2 observations, got {n_obs}.")
    if n_features is None:
        if not np.isscalar(expansion) or expansion <= 0:
            raise ValueError(f"`expansion` must be a positive number, got {expansion!r}.")
        n_features = max(1, round(expansion * d))
    elif isinstance(n_features, bool) or not isinstance(n_features, int | np.integer):
        raise TypeError(f"`n_features` must be an integer, got {n_features!r}.")
    if n_features < 1:
        raise ValueError(f"`n_features` must be at least 1, got {n_features}.")
    if lr is not None and not (np.isscalar(lr) and lr > 0 and np.isfinite(lr)):
        raise ValueError(f"`lr` must be a positive number, got {lr!r}.")
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    if n_steps is not None:
        check_positive_int(n_steps, "n_steps")
    if dead_window is not None:
        check_positive_int(dead_window, "dead_window")
    if log_every is not None:
        check_positive_int(log_every, "log_every")
    if normalize is not None and normalize not in NORMALIZE_OPTIONS:
        raise ValueError(f"Unknown normalize={normalize!r}; choose one of {NORMALIZE_OPTIONS} or None.")
    return int(n_features)


def _seeded_generators(random_state: int):
    import torch

    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer):
        raise TypeError(f"`random_state` must be an integer, got {random_state!r}.")
    g_init = torch.Generator().manual_seed(int(random_state))
    g_batch = torch.Generator().manual_seed(int(random_state) + 1)
    return g_init, g_batch


# ---------------------------------------------------------------------- model <-> uns
def _model_from_entry(entry: dict):
    from ..models.icfl import ICFL
    from ..models.sae import SparseAutoencoder

    p = entry["params"]
    if p.get("method") == "sae":
        return SparseAutoencoder.from_arrays(
            entry,
            architecture=p["architecture"],
            k=p["k"] if p.get("k") is not None else 1,
            l1_coef=p.get("l1_coef") or 0.0,
        )
    if p.get("method") == "icfl":
        return ICFL.from_arrays(
            entry,
            n_iter=p["n_iter"],
            n_per_iter=p["n_per_iter"],
            orthogonal=p["orthogonal"],
            selection=p["selection"],
            bias=p["bias"],
            ridge=p.get("ridge", 1e-6),
            tol=p.get("tol", 1e-6),
        )
    raise ValueError(f"uns entry has an unknown method {p.get('method')!r}; expected 'sae' or 'icfl'.")


def _get_entry(adata: AnnData, key: str) -> dict:
    if key not in adata.uns:
        dicts = [
            k
            for k, v in adata.uns.items()
            if isinstance(v, dict) and v.get("params", {}).get("method") in ("sae", "icfl")
        ]
        have = ", ".join(map(repr, dicts)) or "none"
        raise ValueError(
            f"No dictionary under adata.uns[{key!r}] (dictionaries present: {have}). "
            "Train one with `fl.tl.sae` or `fl.tl.icfl`, or pass `source=` the AnnData that holds it."
        )
    entry = adata.uns[key]
    if not isinstance(entry, dict) or "decoder" not in entry or "params" not in entry:
        raise ValueError(f"adata.uns[{key!r}] is not a featurelens dictionary (no 'decoder'/'params').")
    return entry


def _encode_rows(model, Y: np.ndarray, device, batch_size: int, progress: bool):
    """Sparse codes of all rows of ``Y`` (CSR, float32), reconstruction FVU and per-row cosine."""
    import torch
    from tqdm.auto import tqdm

    from ..models._sparse import gram
    from ..models.icfl import ICFL

    model = model.to(device).eval()
    G = gram(model.W.detach()) if isinstance(model, ICFL) else None
    blocks = []
    cosines = []
    sse = 0.0
    mean = Y.mean(0, dtype=np.float64)
    sst = float(((Y - mean) ** 2).sum(dtype=np.float64))
    with torch.no_grad():
        for s in tqdm(range(0, Y.shape[0], batch_size), desc="encoding", disable=not progress, leave=False):
            x = torch.from_numpy(Y[s : s + batch_size]).to(device)
            z = model.encode(x, G) if G is not None else model.encode(x)
            x_hat = model.decode(z)
            sse += float((x - x_hat).double().pow(2).sum())
            cosines.append(torch.nn.functional.cosine_similarity(x, x_hat, dim=1, eps=1e-12).cpu().numpy())
            blocks.append(sp.csr_matrix(z.float().cpu().numpy()))
    codes = sp.vstack(blocks, format="csr").astype(np.float32)
    codes.eliminate_zeros()
    codes.sort_indices()
    cos = np.concatenate(cosines).astype(np.float64) if cosines else np.zeros(0)
    return codes, (sse / sst if sst > 0 else float("nan")), cos


def _quality(fvu: float, cos: np.ndarray) -> dict:
    return {
        "fvu": float(fvu),
        "mean_cosine": float(np.mean(cos)),
        "median_cosine": float(np.median(cos)),
        "n_obs": int(cos.shape[0]),
    }


def _resolve_input(adata: AnnData, entry: dict, use_rep: str | None, whiten: bool | None) -> tuple[str, bool]:
    """Which obsm entry to read and whether the stored whitening must be applied to it."""
    params = entry["params"]
    trained = params["use_rep"]
    w = entry.get("preprocess", {}).get("whiten")
    source = w.get("use_rep") if isinstance(w, dict) else None
    present = set(adata.obsm.keys()) | {"X"}
    if whiten and w is None:
        raise ValueError("`whiten=True` but this dictionary was not trained on a whitened embedding.")
    if use_rep is None:
        if whiten is not True and trained in present:
            return trained, False
        if source is not None and source in present and whiten is not False:
            return source, True
        want = repr(trained) + (f" or {source!r} (whitened on the fly)" if source else "")
        raise ValueError(
            f"The dictionary was trained on adata.obsm[{trained!r}]; this AnnData has neither {want}. "
            f"It has {', '.join(map(repr, adata.obsm.keys())) or 'nothing'}. Pass `use_rep=`."
        )
    if whiten is not None:
        return use_rep, bool(whiten)
    if use_rep == trained:
        return use_rep, False
    if source is not None and use_rep == source:
        return use_rep, True
    if w is not None:
        raise ValueError(
            f"`use_rep={use_rep!r}` is neither the embedding the dictionary was trained on ({trained!r}) nor the "
            f"one its whitening was fitted on ({source!r}). Pass `whiten=True` if {use_rep!r} is in the unwhitened "
            "space or `whiten=False` if it is already whitened."
        )
    return use_rep, False


def _preprocess_of(entry: dict) -> Preprocess:
    return Preprocess.from_dict(entry["preprocess"])


def _training_features(n_features: int, rate: np.ndarray) -> pd.DataFrame:
    from ..models.train import DEAD_RATE

    return pd.DataFrame(
        {"train_fire_rate": rate.astype(np.float64), "dead_training": rate < DEAD_RATE},
        index=feature_names(n_features),
    )


# ---------------------------------------------------------------------- the shared trainer
def _learn(
    adata: AnnData,
    X: np.ndarray,
    *,
    use_rep: str,
    method: str,
    build_model,
    params: dict[str, Any],
    normalize: str | None,
    n_features: int,
    lr: float,
    batch_size: int,
    n_steps: int,
    dead_window: int,
    log_every: int | None,
    device,
    random_state: int,
    progress: bool,
    key: str,
    copy: bool,
    init: str = "mean",
):
    import torch

    from ..models.train import DEAD_RATE, TrainingDivergedError, fit, history_frame

    dev = resolve_device(device)
    g_init, g_batch = _seeded_generators(random_state)
    found = find_whitening(adata, use_rep)
    whitening_info = None
    if found is not None:
        wkey, wentry = found
        whitening_info = dict(Whitening.from_dict(wentry).to_dict(), use_rep=wentry["params"]["use_rep"], key=wkey)
    normalizer = Normalizer.fit(X, normalize)
    Y, _ = normalizer.transform(X)
    model = build_model(Y.shape[1], n_features, g_init)
    Xt = torch.from_numpy(Y).to(dev)
    model.init_from_data(Xt, init)
    model = model.to(dev)
    t0 = time.perf_counter()
    try:
        history, tracker = fit(
            model,
            Xt,
            n_steps=n_steps,
            batch_size=batch_size,
            lr=lr,
            generator=g_batch,
            dead_window=dead_window,
            log_every=log_every or 0,
            progress=progress,
            desc=f"{method} ({params.get('architecture', method)})",
        )
    except TrainingDivergedError as err:
        err.model = model
        raise
    seconds = time.perf_counter() - t0
    codes, fvu, cos = _encode_rows(model, Y, dev, batch_size=4096, progress=progress)
    rate = tracker.rate().cpu().numpy()

    preprocess = Preprocess(normalizer=normalizer).to_dict()
    if whitening_info is not None:
        preprocess["whiten"] = whitening_info
    arrays = model.to_arrays()
    all_params = {
        "method": method,
        "use_rep": use_rep,
        **params,
        "n_features": n_features,
        "n_inputs": int(X.shape[1]),
        "n_obs_train": int(X.shape[0]),
        "normalize": normalize if normalize is not None else "none",
        "lr": lr,
        "batch_size": batch_size,
        "n_steps": n_steps,
        "dead_window": dead_window,
        "device": str(dev),
        "random_state": random_state,
        "featurelens_version": version(),
    }
    entry = {
        "params": plain_params(all_params),
        **arrays,
        "preprocess": preprocess,
        "history": history_frame(history),
        "features": _training_features(n_features, rate),
        "quality": _quality(fvu, cos),
        "metrics": {
            "fvu": float(fvu),
            "l0": float(codes.getnnz(axis=1).mean()),
            "n_dead_training": int((rate < DEAD_RATE).sum()),
            "dead_fraction_training": float((rate < DEAD_RATE).mean()),
            "train_seconds": float(seconds),
        },
    }
    if method == "icfl":
        entry["metrics"]["n_resets"] = int(model.n_resets)

    adata = adata.copy() if copy else adata
    view_to_actual(adata)
    adata.obsm[f"X_{key}"] = codes
    adata.obs[f"{key}_cosine"] = cos.astype(np.float32)
    adata.uns[key] = entry
    return adata if copy else None


def _resolve_training_options(
    X, n_features, expansion, lr, batch_size, n_steps, normalize, dead_window, log_every, name
):
    n_obs, d = X.shape
    n_features = _check_common(
        n_obs, d, n_features, expansion, lr, batch_size, n_steps, normalize, dead_window, log_every
    )
    batch_size = _default_batch_size(n_obs) if batch_size is None else min(int(batch_size), n_obs)
    n_steps = _default_n_steps(n_obs, batch_size) if n_steps is None else int(n_steps)
    dead_window = _default_dead_window(n_steps, batch_size) if dead_window is None else int(dead_window)
    lr = _default_lr(name, d) if lr is None else float(lr)
    return n_features, batch_size, n_steps, dead_window, lr


# ---------------------------------------------------------------------- public API
def sae(
    adata: AnnData,
    use_rep: str = "X_pca",
    *,
    architecture: str = "topk",
    n_features: int | None = None,
    expansion: float = 8,
    k: int | None = None,
    l1_coef: float = 1e-2,
    auxk: bool = True,
    k_aux: int | None = None,
    auxk_coef: float = 1.0 / 32.0,
    lr: float | None = None,
    batch_size: int | None = None,
    n_steps: int | None = None,
    normalize: str | None = "scale",
    pre_bias_init: str = "mean",
    dead_window: int | None = None,
    log_every: int | None = None,
    device: Any = "auto",
    random_state: int = 0,
    progress: bool = True,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Train a sparse autoencoder on an embedding.

    The SAE maps every row ``x`` of ``adata.obsm[use_rep]`` to sparse non-negative feature
    activations ``z`` and back, ``x_hat = W_dec^T z + b_dec``, with decoder rows (the feature
    directions) of unit norm:

    - ``"vanilla"``: ``z = ReLU(W_enc x + b_enc)``, loss = MSE + ``l1_coef`` * sum(z);
    - ``"relu"``: as vanilla with a learned pre-bias subtracted before encoding and added
      back after decoding (Bricken et al. 2023);
    - ``"topk"``: ``z = TopK_k(ReLU(W_enc (x - b_pre) + b_enc))`` with the AuxK loss for dead
      latents (Gao et al. 2024), encoder initialised as the decoder transpose and ``b_pre`` at
      the data mean (or geometric median);
    - ``"batchtopk"``: the ``k * batch_size`` largest activations of a training batch are kept;
      inference keeps activations above a threshold estimated during training (Bussmann et al.
      2024).

    Defaults suit data from hundreds to about a million cells on a CPU; every value used is
    recorded in ``adata.uns[key_added]["params"]``. Training is deterministic on the CPU for a
    fixed ``random_state``.

    Parameters
    ----------
    adata
        Annotated data matrix.
    use_rep
        Embedding in ``adata.obsm`` to learn from (``"X"`` uses ``adata.X``).
    architecture
        ``"vanilla"``, ``"relu"``, ``"topk"`` or ``"batchtopk"``.
    n_features
        Number of features (default ``expansion * d``).
    expansion
        Features per embedding dimension when ``n_features`` is not given.
    k
        Active features per cell for TopK/BatchTopK (default ``min(32, d // 2, n_features - 1)``, at least 1).
    l1_coef
        Weight of the L1 penalty for vanilla/ReLU: loss = mean squared error per input
        dimension + ``l1_coef`` * (sum of activations per cell). With the default normalisation
        (average per-dimension variance 1), 1e-2 gives about a quarter of the features active
        per cell on a 30-dimensional PCA; raise it for sparser codes.
    auxk
        Use the AuxK loss (TopK/BatchTopK).
    k_aux
        Dead latents used by AuxK (default ``d // 2``).
    auxk_coef
        AuxK weight (1/32).
    lr
        Peak Adam learning rate (default ``3e-3 * min(1, sqrt(32 / d))``: 3e-3 up to 32
        dimensions, 7.5e-4 at 512; linear warm-up, linear decay over the last 20%).
    batch_size
        Cells per step (default ``min(n_obs, 1024)``).
    n_steps
        Optimiser steps (default about 100 epochs, between 1,500 and 20,000).
    normalize
        Input normalisation: ``"scale"`` (default: one global factor giving average
        per-dimension variance 1, geometry unchanged), ``"center"``, ``"standardize"``,
        ``"unit"`` or ``None``. Recorded and repeated by :func:`encode`.
    pre_bias_init
        ``"mean"`` or ``"median"`` (geometric median) start of the decoder bias.
    dead_window
        Samples per dead-feature window (default: a twentieth of training, at most 10 million).
        A feature is dead when it fired on fewer than 1e-5 of the samples of the last window;
        AuxK uses features silent for a whole window.
    log_every
        Steps between history rows (default: about 100 rows).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a :class:`torch.device`.
    random_state
        Seed of the initialisation and the batch order.
    progress
        Show progress bars.
    key_added
        Name of the result (default ``"sae"``).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``.

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`scipy.sparse.csr_matrix` (n_obs, n_features), float32
        Feature activations.
    ``adata.uns[key_added]["params"]`` : :class:`dict`
        Every option used, resolved defaults included.
    ``adata.uns[key_added]["decoder"]``, ``["encoder"]`` : :class:`numpy.ndarray` (n_features, d)
        Decoder rows (feature directions, unit norm, in the normalised input space) and encoder rows.
    ``adata.uns[key_added]["decoder_bias"]``, ``["pre_bias"]``, ``["encoder_bias"]`` : :class:`numpy.ndarray`
        Biases (``pre_bias`` is zero for ``"vanilla"``); ``["threshold"]`` for BatchTopK.
    ``adata.uns[key_added]["preprocess"]`` : :class:`dict`
        Normalisation (and whitening, when ``use_rep`` came from :func:`featurelens.pp.whiten`).
    ``adata.uns[key_added]["history"]`` : :class:`pandas.DataFrame`
        One row per logged step: loss, mse, aux_loss, fvu, l0, dead_fraction, n_dead, lr.
    ``adata.uns[key_added]["features"]`` : :class:`pandas.DataFrame`
        One row per feature (``f0``, ``f1``, ...): ``train_fire_rate`` and ``dead_training``.
    ``adata.uns[key_added]["metrics"]`` : :class:`dict`
        FVU and mean L0 on all cells, number of dead features, training time.
    ``adata.uns[key_added]["quality"]`` : :class:`dict`
        Reconstruction quality on these cells: ``fvu`` (squared error over the total variance
        about the per-dimension mean), ``mean_cosine``, ``median_cosine``, ``n_obs``, computed in
        the dictionary's (normalised) input space.
    ``adata.obs[f"{key_added}_cosine"]`` : float
        Cosine similarity between every cell's embedding and its reconstruction.

    Examples
    --------
    >>> import scanpy as sc, featurelens as fl
    >>> adata = sc.datasets.pbmc3k_processed()
    >>> sc.pp.pca(adata, n_comps=30)
    >>> fl.tl.sae(adata, use_rep="X_pca", architecture="topk")
    >>> adata.obsm["X_sae"]
    """
    from ..models.sae import SparseAutoencoder

    check_adata(adata)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}; choose one of {ARCHITECTURES}.")
    if pre_bias_init not in ("mean", "median"):
        raise ValueError(f"`pre_bias_init` must be 'mean' or 'median', got {pre_bias_init!r}.")
    X = get_rep(adata, use_rep)
    d = X.shape[1]
    n_features, batch_size, n_steps, dead_window, lr = _resolve_training_options(
        X, n_features, expansion, lr, batch_size, n_steps, normalize, dead_window, log_every, architecture
    )
    sparse_arch = architecture in ("topk", "batchtopk")
    if sparse_arch:
        k = min(32, max(1, d // 2), max(1, n_features - 1)) if k is None else check_positive_int(k, "k")
        if k >= n_features:
            raise ValueError(
                f"`k={k}` must be smaller than `n_features={n_features}`: with k >= n_features nothing is sparse. "
                "Lower k or raise n_features/expansion."
            )
        k_aux = max(1, d // 2) if k_aux is None else check_positive_int(k_aux, "k_aux")
    else:
        k = None
        k_aux = None
    if l1_coef < 0:
        raise ValueError(f"`l1_coef` must be non-negative, got {l1_coef}.")
    key = "sae" if key_added is None else str(key_added)

    def build(n_in, n_feat, gen):
        return SparseAutoencoder(
            n_in,
            n_feat,
            architecture=architecture,
            k=k if k is not None else 1,
            l1_coef=l1_coef,
            auxk=auxk,
            k_aux=k_aux,
            auxk_coef=auxk_coef,
            generator=gen,
        )

    params = {
        "architecture": architecture,
        "expansion": expansion,
        "k": k,
        "l1_coef": l1_coef if not sparse_arch else None,
        "auxk": bool(auxk) if sparse_arch else False,
        "k_aux": k_aux,
        "auxk_coef": auxk_coef if sparse_arch else None,
        "pre_bias_init": pre_bias_init,
    }
    return _learn(
        adata,
        X,
        use_rep=use_rep,
        method="sae",
        build_model=build,
        params=params,
        normalize=normalize,
        n_features=n_features,
        lr=lr,
        batch_size=batch_size,
        n_steps=n_steps,
        dead_window=dead_window,
        log_every=log_every,
        device=device,
        random_state=random_state,
        progress=progress,
        key=key,
        copy=copy,
        init=pre_bias_init,
    )


def icfl(
    adata: AnnData,
    use_rep: str = "X_pca",
    *,
    n_features: int | None = None,
    expansion: float = 8,
    n_iter: int | None = None,
    n_per_iter: int = 5,
    orthogonal: bool = False,
    selection: str = "signed",
    bias: str = "mean",
    reset_every: int = 100,
    reset_threshold: float = 0.9,
    tol: float = 1e-6,
    lr: float | None = None,
    batch_size: int | None = None,
    n_steps: int | None = None,
    normalize: str | None = "unit",
    dead_window: int | None = None,
    log_every: int | None = None,
    device: Any = "auto",
    random_state: int = 0,
    progress: bool = True,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Learn an ICFL dictionary (batched matching pursuit encoder) on an embedding.

    ICFL (Donhauser et al. 2025, Algorithm 1) encodes a row ``x`` greedily: from the residual
    ``r = x - b`` it picks, ``n_iter`` times, the ``n_per_iter`` atoms with the largest
    correlation ``<w_m, r>`` (``selection="signed"``; ``"abs"`` uses ``|<w_m, r>|``), fits their
    coefficients to ``r`` by least squares and subtracts their reconstruction; the code is the
    sum over iterations (at most ``n_iter * n_per_iter`` non-zeros; an atom chosen twice
    accumulates, and coefficients can be negative). The atoms are learned by gradient descent
    on ``|x - W^T z - b|^2`` with the codes held fixed; every ``reset_every`` steps one atom of
    every pair with cosine similarity above ``reset_threshold`` is redrawn uniformly on the
    unit sphere. Inputs are scaled to unit norm first (``normalize="unit"``), after control
    whitening when ``use_rep`` came from :func:`featurelens.pp.whiten`.

    The paper trains ``n_features=8192``, ``n_iter=20``, ``n_per_iter=5``, batch 8,192,
    learning rate 5e-5 and 300,000 steps on 40 million tokens (GPU scale). The defaults here
    are for a laptop: ``expansion * d`` atoms, ``n_iter = min(20, d // (2 * n_per_iter))``
    (at most about ``d / 2`` non-zeros), batch ``min(n_obs, 1024)``, learning rate 1e-3 and
    about 100 epochs.

    Parameters
    ----------
    adata
        Annotated data matrix.
    use_rep
        Embedding in ``adata.obsm`` to learn from (``"X"`` uses ``adata.X``).
    n_features
        Number of atoms (default ``expansion * d``).
    expansion
        Atoms per embedding dimension when ``n_features`` is not given.
    n_iter
        Pursuit iterations ``J`` (default ``min(20, max(1, d // (2 * n_per_iter)))``).
    n_per_iter
        Atoms selected per iteration ``L``.
    orthogonal
        Re-solve least squares over all atoms selected so far at every iteration (batched
        orthogonal matching pursuit); with ``n_per_iter=1``, ``selection="abs"`` and
        ``bias="none"`` this is orthogonal matching pursuit.
    selection
        ``"signed"`` or ``"abs"``.
    bias
        ``"mean"`` (default: ``b`` fixed at the mean of the normalised training data),
        ``"learned"`` (trained with the atoms; it can drift along a flat direction of the
        loss), or ``"none"``.
    reset_every
        Steps between near-duplicate resets (0 disables them).
    reset_threshold
        Cosine similarity above which two atoms count as duplicates.
    tol
        A cell stops taking atoms once its residual energy is below ``tol`` times its start.
    lr
        Peak Adam learning rate (default 1e-3).
    batch_size
        Cells per step (default ``min(n_obs, 1024)``).
    n_steps
        Optimiser steps (default about 100 epochs, between 1,500 and 20,000).
    normalize
        Input normalisation (default ``"unit"``); see :func:`sae`.
    dead_window
        Samples per dead-feature window (see :func:`sae`).
    log_every
        Steps between history rows.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a :class:`torch.device`.
    random_state
        Seed of the initialisation, the resets and the batch order.
    progress
        Show progress bars.
    key_added
        Name of the result (default ``"icfl"``).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``.

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`scipy.sparse.csr_matrix` (n_obs, n_features), float32
        Codes (summed coefficients per atom).
    ``adata.uns[key_added]`` : :class:`dict`
        ``"params"``, ``"decoder"`` (atoms, n_features x d, unit norm), ``"decoder_bias"``,
        ``"preprocess"``, ``"history"``, ``"features"``, ``"metrics"`` and ``"quality"`` as for
        :func:`sae` (``metrics["n_resets"]`` counts redrawn atoms).
    ``adata.obs[f"{key_added}_cosine"]`` : float
        Cosine similarity between every cell's embedding and its reconstruction.

    Examples
    --------
    >>> fl.pp.whiten(adata, "X_pca", control_key="condition", control_value="CTRL")
    >>> fl.tl.icfl(adata, use_rep="X_whitened")
    """
    from ..models.icfl import ICFL

    check_adata(adata)
    if selection not in SELECTIONS:
        raise ValueError(f"`selection` must be one of {SELECTIONS}, got {selection!r}.")
    if bias not in ICFL_BIAS:
        raise ValueError(f"`bias` must be one of {ICFL_BIAS}, got {bias!r}.")
    if not 0 < reset_threshold <= 1:
        raise ValueError(f"`reset_threshold` must be in (0, 1], got {reset_threshold}.")
    if isinstance(reset_every, bool) or not isinstance(reset_every, int | np.integer) or reset_every < 0:
        raise ValueError(f"`reset_every` must be a non-negative integer, got {reset_every!r}.")
    if tol < 0:
        raise ValueError(f"`tol` must be non-negative, got {tol}.")
    X = get_rep(adata, use_rep)
    d = X.shape[1]
    n_features, batch_size, n_steps, dead_window, lr = _resolve_training_options(
        X, n_features, expansion, lr, batch_size, n_steps, normalize, dead_window, log_every, "icfl"
    )
    n_per_iter = check_positive_int(n_per_iter, "n_per_iter")
    n_iter = max(1, min(20, d // (2 * n_per_iter))) if n_iter is None else check_positive_int(n_iter, "n_iter")
    if n_iter * n_per_iter > n_features:
        raise ValueError(
            f"`n_iter * n_per_iter` = {n_iter} * {n_per_iter} = {n_iter * n_per_iter} exceeds "
            f"`n_features={n_features}`: a code cannot use more atoms than the dictionary has. "
            "Lower n_iter/n_per_iter or raise n_features."
        )
    if n_per_iter > n_features:
        raise ValueError(f"`n_per_iter={n_per_iter}` exceeds `n_features={n_features}`.")
    key = "icfl" if key_added is None else str(key_added)

    def build(n_in, n_feat, gen):
        return ICFL(
            n_in,
            n_feat,
            n_iter=n_iter,
            n_per_iter=n_per_iter,
            orthogonal=orthogonal,
            selection=selection,
            reset_every=reset_every,
            reset_threshold=reset_threshold,
            bias=bias,
            tol=tol,
            generator=gen,
        )

    params = {
        "architecture": "icfl",
        "expansion": expansion,
        "n_iter": n_iter,
        "n_per_iter": n_per_iter,
        "orthogonal": bool(orthogonal),
        "selection": selection,
        "bias": bias,
        "reset_every": int(reset_every),
        "reset_threshold": float(reset_threshold),
        "ridge": 1e-6,
        "tol": float(tol),
    }
    return _learn(
        adata,
        X,
        use_rep=use_rep,
        method="icfl",
        build_model=build,
        params=params,
        normalize=normalize,
        n_features=n_features,
        lr=lr,
        batch_size=batch_size,
        n_steps=n_steps,
        dead_window=dead_window,
        log_every=log_every,
        device=device,
        random_state=random_state,
        progress=progress,
        key=key,
        copy=copy,
    )


def _copy_entry(entry: dict) -> dict:
    """Copy of a dictionary entry without data-specific results (keeps training information)."""
    keep = ("params", "decoder", "decoder_bias", "pre_bias", "encoder", "encoder_bias", "threshold")
    out = {k: (entry[k].copy() if hasattr(entry[k], "copy") else entry[k]) for k in keep if k in entry}
    out["preprocess"] = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in entry["preprocess"].items()}
    if "history" in entry:
        out["history"] = entry["history"].copy()
    if "metrics" in entry:
        out["metrics"] = dict(entry["metrics"])
    feats = entry.get("features")
    n = np.asarray(entry["decoder"]).shape[0]
    if isinstance(feats, pd.DataFrame) and {"train_fire_rate", "dead_training"} <= set(feats.columns):
        out["features"] = feats[["train_fire_rate", "dead_training"]].copy()
    else:
        out["features"] = pd.DataFrame(index=feature_names(n))
    return out


def _prepared_input(adata, entry, use_rep, whiten):
    rep, apply_white = _resolve_input(adata, entry, use_rep, whiten)
    X = get_rep(adata, rep)
    pre = _preprocess_of(entry)
    n_in = (
        pre.whitening.mean.shape[0]
        if apply_white and pre.whitening is not None
        else np.asarray(entry["decoder"]).shape[1]
    )
    if X.shape[1] != n_in:
        raise ValueError(
            f"adata.obsm[{rep!r}] has {X.shape[1]} dimensions but the dictionary expects {n_in}"
            f"{' (before whitening)' if apply_white else ''}. Use the embedding the dictionary was trained on."
        )
    Y, ctx = pre.transform(X, whiten=apply_white)
    return rep, X, Y, ctx, pre


def _decode_codes(model, Z, batch_size: int = 8192) -> np.ndarray:
    """Decode activations (dense or sparse, cells x features) in batches of rows."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, Z.shape[0], batch_size):
            blk = Z[s : s + batch_size]
            blk = blk.toarray() if sp.issparse(blk) else np.asarray(blk)
            out.append(model.decode(torch.from_numpy(np.ascontiguousarray(blk, dtype=np.float32))).numpy())
    d = np.asarray(model.to_arrays()["decoder"]).shape[1]
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)


def _reconstruction(adata, entry, codes, use_rep, whiten):
    """Input embedding and its reconstruction from ``codes``, in the space of the input."""
    rep, X, _, ctx, pre = _prepared_input(adata, entry, use_rep, whiten)
    Yhat = _decode_codes(_model_from_entry(entry), codes)
    return rep, X, pre.inverse(Yhat, ctx), ctx, pre


def encode(
    adata: AnnData,
    key: str,
    *,
    use_rep: str | None = None,
    whiten: bool | None = None,
    source: AnnData | None = None,
    key_added: str | None = None,
    batch_size: int = 4096,
    device: Any = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Apply a stored dictionary (with its preprocessing) to an AnnData.

    The embedding is normalised (and whitened, when the dictionary was trained on a whitened
    embedding and ``use_rep`` is the unwhitened one) exactly as in training, then encoded.

    Parameters
    ----------
    adata
        Annotated data matrix to encode (can be a different dataset from the training one).
    key
        Key of the dictionary in ``source.uns``.
    use_rep
        Embedding to encode. Default: the training embedding if present, else the embedding the
        stored whitening was fitted on (whitened on the fly).
    whiten
        Force (``True``) or skip (``False``) the stored whitening; by default it is applied
        exactly when ``use_rep`` is the unwhitened embedding.
    source
        AnnData holding the dictionary (default: ``adata``). Its dictionary is copied into
        ``adata.uns[key_added]`` (training results only).
    key_added
        Name of the result (default ``key``).
    batch_size
        Cells per encoding batch.
    device
        Torch device (``"auto"``: CUDA when available).
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``.

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`scipy.sparse.csr_matrix`, float32
        Feature activations.
    ``adata.uns[key_added]`` : :class:`dict`
        A copy of the dictionary, when it came from ``source`` or ``key_added != key``.
    ``adata.uns[key_added]["quality"]`` : :class:`dict`
        Reconstruction quality on these cells (held-out cells, for a new dataset): ``fvu``,
        ``mean_cosine``, ``median_cosine``, ``n_obs``.
    ``adata.obs[f"{key_added}_cosine"]`` : float
        Cosine similarity between every cell's embedding and its reconstruction.

    Examples
    --------
    >>> fl.tl.sae(ref, use_rep="X_pca")
    >>> fl.tl.encode(query, "sae", source=ref)
    """
    check_adata(adata)
    src = adata if source is None else source
    entry = _get_entry(src, key)
    check_positive_int(batch_size, "batch_size")
    key_added = key if key_added is None else str(key_added)
    _, _, Y, _, _ = _prepared_input(adata, entry, use_rep, whiten)
    model = _model_from_entry(entry)
    codes, fvu, cos = _encode_rows(model, Y, resolve_device(device), batch_size=batch_size, progress=progress)
    new_entry = _copy_entry(entry) if (src is not adata or key_added != key) else None
    adata = adata.copy() if copy else adata
    view_to_actual(adata)
    adata.obsm[f"X_{key_added}"] = codes
    adata.obs[f"{key_added}_cosine"] = cos.astype(np.float32)
    if new_entry is not None:
        adata.uns[key_added] = new_entry
    adata.uns[key_added]["quality"] = _quality(fvu, cos)
    return adata if copy else None


def reconstruct(
    adata: AnnData,
    key: str,
    *,
    use_rep: str | None = None,
    whiten: bool | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Reconstruct the embedding from the stored feature activations.

    Decodes ``adata.obsm[f"X_{key}"]`` and undoes the dictionary's preprocessing, so the
    result lives in the same space as ``adata.obsm[use_rep]`` (for a dictionary trained on a
    whitened embedding and ``use_rep`` the unwhitened one, the whitening is undone as well).

    Parameters
    ----------
    adata
        Annotated data matrix with ``adata.obsm[f"X_{key}"]`` and ``adata.uns[key]``.
    key
        Key of the dictionary.
    use_rep
        Embedding to reconstruct (default: the training embedding); needed for row norms when
        the dictionary normalised rows to unit norm.
    whiten
        See :func:`encode`.
    key_added
        Obsm key of the result (default ``f"X_{key}_recon"``).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``.

    Sets the following fields:

    ``adata.obsm[key_added]`` : :class:`numpy.ndarray` (n_obs, d), float32
        The reconstruction.
    ``adata.uns[key]["reconstruction"]`` : :class:`dict`
        ``use_rep``, ``obsm_key``, ``fvu`` (squared error over the total variance of ``use_rep``
        about its per-dimension mean), ``mean_cosine`` and ``median_cosine``.
    ``adata.obs[f"{key}_recon_cosine"]`` : float
        Cosine similarity between every cell's embedding and its reconstruction.

    Examples
    --------
    >>> fl.tl.reconstruct(adata, "sae")
    >>> adata.uns["sae"]["reconstruction"]["fvu"]
    """
    check_adata(adata)
    entry = _get_entry(adata, key)
    obsm_codes = f"X_{key}"
    if obsm_codes not in adata.obsm:
        raise ValueError(f"adata.obsm[{obsm_codes!r}] is missing; run `fl.tl.encode(adata, {key!r})` first.")
    codes = adata.obsm[obsm_codes]
    n_feat = np.asarray(entry["decoder"]).shape[0]
    if codes.shape != (adata.n_obs, n_feat):
        raise ValueError(f"adata.obsm[{obsm_codes!r}] has shape {codes.shape}, expected ({adata.n_obs}, {n_feat}).")
    rep, X, Xhat, ctx, pre = _reconstruction(adata, entry, codes, use_rep, whiten)
    if ctx.get("whitened") and pre.whitening is not None and pre.whitening.n_comps < X.shape[1]:
        warnings.warn(
            f"The whitening kept {pre.whitening.n_comps} of {X.shape[1]} components: the reconstruction lies in "
            "that subspace.",
            UserWarning,
            stacklevel=2,
        )
    sst = float(((X - X.mean(0)) ** 2).sum(dtype=np.float64))
    fvu = float(((X - Xhat) ** 2).sum(dtype=np.float64) / sst) if sst > 0 else float("nan")
    key_added = f"X_{key}_recon" if key_added is None else str(key_added)
    adata = adata.copy() if copy else adata
    view_to_actual(adata)
    num = np.einsum("ij,ij->i", X, Xhat, dtype=np.float64)
    den = np.linalg.norm(X, axis=1) * np.linalg.norm(Xhat, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    adata.obsm[key_added] = Xhat.astype(np.float32)
    adata.obs[f"{key}_recon_cosine"] = cos.astype(np.float32)
    adata.uns[key]["reconstruction"] = {
        "use_rep": rep,
        "obsm_key": key_added,
        "fvu": fvu,
        "mean_cosine": float(cos.mean()),
        "median_cosine": float(np.median(cos)),
    }
    return adata if copy else None
