"""Dictionary learning on ``adata.obsm``: :func:`sae`, :func:`icfl`, :func:`encode`, :func:`reconstruct`."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._blockwise import reduce_rows
from .._checks import check_bool, check_positive_int
from .._core import (
    activations,
    check_input_dim,
    claim,
    doc,
    embedding_source,
    feature_names,
    find_whitening,
    get_entry,
    invalidate,
    is_out_of_core,
    model_from_entry,
    n_features,
    prepared_input,
    preprocess_of,
    raw_embedding,
    reconstruction,
    resolve_device,
    resolve_input,
    stem,
    tool,
    tool_params,
    warn,
)
from ..models import ICFLConfig, SAEConfig, TrainConfig
from ..models.preprocess import Normalizer, Preprocess, Whitening
from ._store import StoreSink, open_store

#: training keeps the entry of these keys from the previous dictionary of the same name
_TRAINING_KEYS = ("params", "decoder", "decoder_bias", "pre_bias", "encoder", "encoder_bias", "threshold")


# ---------------------------------------------------------------------- encoding and quality
class _MemorySink:
    """Collects the codes of every batch; :meth:`result` joins them into one CSR matrix."""

    def __init__(self, n_features: int):
        self.n_features = n_features
        self.data, self.indices, self.counts = [], [], []

    def add(self, idx: np.ndarray, val: np.ndarray, counts: np.ndarray) -> None:
        self.data.append(val)
        self.indices.append(idx)
        self.counts.append(counts)

    def result(self) -> sp.csr_matrix:
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        indptr = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        data = np.concatenate(self.data) if self.data else np.zeros(0, np.float32)
        self.data = None  # one copy of the values at a time
        indices = np.concatenate(self.indices) if self.indices else np.zeros(0, np.int32)
        self.indices = None
        if indptr[-1] < np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)
        return sp.csr_matrix((data, indices, indptr), shape=(counts.size, self.n_features))


def _batch_codes(z) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """Column indices, values and per-row counts of the non-zeros of a batch of dense codes, and its sparse form."""
    import torch

    rows, cols = torch.nonzero(z, as_tuple=True)  # row-major order
    vals = z[rows, cols]
    zs = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, z.shape, is_coalesced=True, check_invariants=False)
    counts = torch.bincount(rows, minlength=z.shape[0]).cpu().numpy()
    return cols.cpu().numpy().astype(np.int32), vals.float().cpu().numpy(), counts, zs


def _sparse_reconstruction(model, zs):
    """``z W + b`` from the sparse codes of a batch (work proportional to the non-zeros)."""
    import torch

    from ..models import ICFL

    W, b = (model.W, model.b) if isinstance(model, ICFL) else (model.W_dec, model.b_dec)
    return torch.sparse.mm(zs.to(W.dtype), W.detach()) + b.detach()


def _encode_blocks(model, blocks, device, batch_size: int, progress: bool, total: int, sink=None):
    """Codes of blocks of rows (into ``sink``, CSR float32), squared reconstruction error and per-row cosine.

    Batches are moved to ``device`` one at a time and decoded from their sparse codes. Also
    returns the total sum of squares of the rows around their mean, from sums around the first
    block's mean (exact for one block up to rounding).
    """
    import torch
    from tqdm.auto import tqdm

    from ..models import ICFL
    from ..models._sparse import gram

    model = model.to(device).eval()
    sink = _MemorySink(model.n_features) if sink is None else sink
    G = gram(model.W.detach()) if isinstance(model, ICFL) else None
    cosines = []
    sse, shift, s, ss, n = 0.0, None, 0.0, 0.0, 0
    bar = tqdm(total=total, desc="encoding", disable=not progress, leave=False)
    with torch.no_grad():
        for Y in blocks:
            shift = Y[:batch_size].mean(0, dtype=np.float64) if shift is None else shift
            for start in range(0, Y.shape[0], batch_size):
                c = Y[start : start + batch_size] - shift  # float64, one batch
                s, ss, n = s + c.sum(0), ss + float((c * c).sum()), n + c.shape[0]
                x = torch.from_numpy(np.ascontiguousarray(Y[start : start + batch_size])).to(device)
                z = model.encode(x, G) if G is not None else model.encode(x)
                idx, val, counts, zs = _batch_codes(z)
                del z
                x_hat = _sparse_reconstruction(model, zs)
                sse += float((x - x_hat).double().pow(2).sum())
                cosines.append(torch.nn.functional.cosine_similarity(x, x_hat, dim=1, eps=1e-12).cpu().numpy())
                sink.add(idx, val.astype(np.float32, copy=False), counts)
                bar.update(x.shape[0])
    bar.close()
    codes = sink.result()
    cos = np.concatenate(cosines).astype(np.float64) if cosines else np.zeros(0)
    sst = ss - float(np.sum(np.asarray(s) ** 2)) / max(n, 1)
    return codes, sse, cos, sst


def _encode_rows(model, Y: np.ndarray, device, batch_size: int, progress: bool, sink=None):
    """Sparse codes of all rows of ``Y`` (CSR, float32), reconstruction FVU and per-row cosine."""
    codes, sse, cos, sst = _encode_blocks(model, [Y], device, batch_size, progress, Y.shape[0], sink)
    return codes, (sse / sst if sst > 0 else float("nan")), cos


def _encode_source(model, source, transform, device, progress: bool, batch_size: int = 4096, sink=None):
    """:func:`_encode_rows` for a :class:`~featurelens.models.data.RowSource`, one chunk at a time.

    ``transform`` maps a chunk of the raw embedding to the dictionary's input (its preprocessing).
    """
    blocks = (transform(b) for b in source.blocks())
    codes, sse, cos, sst = _encode_blocks(model, blocks, device, batch_size, progress, source.n_rows, sink)
    return codes, (sse / sst if sst > 0 else float("nan")), cos


class _Prepare:
    """The dictionary's preprocessing of a chunk of the raw embedding."""

    def __init__(self, pre, whiten: bool):
        self.pre, self.whiten = pre, whiten

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return self.pre.transform(block, whiten=self.whiten)[0]


def _quality(fvu: float, cos: np.ndarray) -> dict:
    return {
        "fvu": float(fvu),
        "mean_cosine": float(np.mean(cos)),
        "median_cosine": float(np.median(cos)),
        "n_obs": int(cos.shape[0]),
    }


def _training_features(n: int, rate: np.ndarray) -> pd.DataFrame:
    from ..models.train import DEAD_RATE

    return pd.DataFrame(
        {"train_fire_rate": rate.astype(np.float64), "dead_training": rate < DEAD_RATE},
        index=feature_names(n),
    )


# ---------------------------------------------------------------------- the shared trainer
def _constant_error(use_rep: str) -> ValueError:
    return ValueError(
        f"adata.obsm[{use_rep!r}] is constant (every cell has the same embedding), so there is nothing for a "
        "dictionary to learn. Check that the embedding was computed (e.g. `sc.pp.pca`) on the right data."
    )


def _check_learnable(X: np.ndarray, use_rep: str) -> None:
    if X.shape[0] >= 2 and np.all(X == X[0]):
        raise _constant_error(use_rep)


def _training_data(X, use_rep: str, train_cfg: TrainConfig, g_batch, dev):
    """The normaliser, the training data, rows to initialise the model from, a checksum, streaming info.

    In memory: the normalised array. From a :class:`~featurelens.models.data.RowSource`: one pass for
    the moments (refusing NaN / Inf rows and constant data), then a shuffle buffer of whole chunks;
    the model starts from up to four random chunks.
    """
    from ..models.data import BUFFER_BYTES, RowSource, ShuffleBuffer
    from ..models.preprocess import block_moments

    if not isinstance(X, RowSource):
        _check_learnable(X, use_rep)
        normalizer = Normalizer.fit(X, train_cfg.normalize)
        Y, _ = normalizer.transform(X)
        return normalizer, Y, Y, float(Y.sum(dtype=np.float64)), {}
    m = block_moments(X.blocks())
    if m.n_bad:
        raise ValueError(
            f"{X.name} has {m.n_bad} of {X.n_rows} rows with NaN or Inf values (the first is row {m.first_bad}). "
            "Remove or impute those cells first."
        )
    if X.n_rows >= 2 and not (m.var > 0).any():
        raise _constant_error(use_rep)
    normalizer = Normalizer.from_moments(train_cfg.normalize, m.mean, m.var)

    def transform(rows: np.ndarray) -> np.ndarray:
        return normalizer.transform(rows)[0]

    buffer_rows = max(BUFFER_BYTES // (4 * X.n_cols), train_cfg.batch_size, X.chunk_rows)
    data = ShuffleBuffer(X, transform, buffer_rows=buffer_rows, generator=g_batch, device=dev)
    pick = np.random.default_rng(train_cfg.random_state).permutation(X.n_chunks)[:4]
    sample = transform(np.concatenate([X.chunk(int(i)) for i in np.sort(pick)]))
    buffer_rows = int(min(data.chunks_per_buffer * X.chunk_rows, X.n_rows))
    stream = {"streamed": True, "chunk_rows": int(X.chunk_rows), "buffer_rows": buffer_rows}
    return normalizer, data, sample, float(m.total), stream


def _whitening_info(adata: AnnData, use_rep: str) -> dict | None:
    """The whitening that produced ``use_rep`` (a copy the dictionary keeps), if any."""
    found = find_whitening(adata, use_rep)
    if found is None:
        return None
    wkey, wentry = found
    return dict(Whitening.from_dict(wentry).to_dict(), use_rep=wentry["params"]["use_rep"], key=wkey)


def _fit(model, Y: np.ndarray, train_cfg: TrainConfig, dev, g_batch, progress: bool, desc: str, ckpt: dict):
    import torch

    from ..models.train import TrainingDivergedError, fit

    # an array (kept in host memory, batches go to the device one at a time) or a sampler of streamed rows
    Xt = torch.from_numpy(Y) if isinstance(Y, np.ndarray) else Y
    try:
        return fit(
            model,
            Xt,
            n_steps=train_cfg.n_steps,
            batch_size=train_cfg.batch_size,
            lr=train_cfg.lr,
            generator=g_batch,
            dead_window=train_cfg.dead_window,
            log_every=train_cfg.log_every or 0,
            progress=progress,
            desc=desc,
            checkpoint=ckpt["checkpoint"],
            checkpoint_every=ckpt["checkpoint_every"],
            resume=ckpt["resume"],
            run=ckpt.get("run"),
        )
    except TrainingDivergedError as err:
        err.model = model
        raise


def _nnz(codes) -> int:
    """Stored values of activations in memory or on disk."""
    if sp.issparse(codes):
        return int(codes.nnz)
    return int(reduce_rows(lambda s, e, blk: np.int64(blk.nnz), codes))


def _warn_unconverged(fvu: float, nnz: int, lr: float) -> bool:
    """Warn when training finished with finite weights that reconstruct nothing; returns convergence."""
    if not np.isfinite(fvu) or fvu > 1.0:
        warn(
            f"Training did not converge: the reconstruction error exceeds the variance of the data (FVU = {fvu:.3g} "
            f"> 1, worse than predicting the mean for every cell). Lower the learning rate (lr={lr:g}) or check the "
            "scale of the embedding (normalize=...)."
        )
        return False
    if nnz == 0:
        warn("Every feature is dead: no cell activates any feature. Lower the learning rate or change the options.")
        return False
    return True


def _learn(
    adata: AnnData, X: np.ndarray, *, use_rep, method, model_cfg, train_cfg, device, key, progress, ckpt, out=None
) -> None:
    import torch

    from ..models.train import DEAD_RATE, history_frame

    dev = resolve_device(device)
    g_init = torch.Generator().manual_seed(train_cfg.random_state)
    g_batch = torch.Generator().manual_seed(train_cfg.random_state + 1)
    whitening = _whitening_info(adata, use_rep)
    sink = None if out is None else StoreSink(open_store(out, adata), f"obsm/X_{key}", model_cfg.n_features)
    normalizer, data, sample, checksum, stream = _training_data(X, use_rep, train_cfg, g_batch, dev)
    model = model_cfg.build(g_init)
    model.init_from_data(torch.from_numpy(sample), getattr(model_cfg, "pre_bias_init", "mean"))
    model = model.to(dev)
    t0 = time.perf_counter()
    desc = f"{method} ({model_cfg.architecture})"
    ckpt = dict(ckpt, run={"method": method, "use_rep": use_rep, **model_cfg.to_dict(), **train_cfg.to_dict(),
                           "n_inputs": int(X.shape[1]), "data_checksum": checksum, **stream})  # fmt: skip
    history, tracker = _fit(model, data, train_cfg, dev, g_batch, progress, desc, ckpt)
    seconds = time.perf_counter() - t0
    if stream:
        codes, fvu, cos = _encode_source(model, X, lambda b: normalizer.transform(b)[0], dev, progress, sink=sink)
    else:
        codes, fvu, cos = _encode_rows(model, data, dev, batch_size=4096, progress=progress, sink=sink)
    rate = tracker.rate().cpu().numpy()
    nnz = _nnz(codes)
    converged = _warn_unconverged(fvu, nnz, train_cfg.lr)
    preprocess = Preprocess(normalizer=normalizer).to_dict()
    if whitening is not None:
        preprocess["whiten"] = whitening
    params = {
        "method": method,
        "use_rep": use_rep,
        **model_cfg.to_dict(),
        **train_cfg.to_dict(),
        "n_obs_train": int(X.shape[0]),
        "device": str(dev),
        **stream,
    }
    metrics = {
        "fvu": float(fvu),
        "l0": nnz / max(codes.shape[0], 1),
        "n_dead_training": int((rate < DEAD_RATE).sum()),
        "dead_fraction_training": float((rate < DEAD_RATE).mean()),
        "train_seconds": float(seconds),
        "converged": bool(converged),
    }
    if method == "icfl":
        metrics["n_resets"] = int(model.n_resets)
    entry = {
        "params": tool_params(**params),
        **model.to_arrays(),
        "preprocess": preprocess,
        "history": history_frame(history),
        "features": _training_features(model_cfg.n_features, rate),
        "quality": _quality(fvu, cos),
        "metrics": metrics,
    }
    invalidate(adata, key, "dictionary", quiet=True)
    adata.obsm[f"X_{key}"] = codes
    adata.obs[f"{key}_cosine"] = cos.astype(np.float32)
    adata.uns[key] = entry


def _checkpoint_options(checkpoint, checkpoint_every, resume) -> dict:
    """Validated checkpoint options (the path is checked before any work)."""
    from ..models.train import check_checkpoint_path

    check_bool(resume, "resume")
    check_positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint is None:
        if resume:
            raise ValueError("resume=True needs `checkpoint=`, the file the interrupted run wrote.")
        return {"checkpoint": None, "checkpoint_every": int(checkpoint_every), "resume": False}
    if not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(f"`checkpoint` must be a file path (str or os.PathLike), got {type(checkpoint).__name__}.")
    check_checkpoint_path(checkpoint, resume=resume)
    return {"checkpoint": os.fspath(checkpoint), "checkpoint_every": int(checkpoint_every), "resume": bool(resume)}


# ---------------------------------------------------------------------- public API
@tool
@doc
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
    pre_bias_init: str = "mean",
    lr: float | None = None,
    batch_size: int | None = None,
    n_steps: int | None = None,
    normalize: str | None = "scale",
    dead_window: int | None = None,
    log_every: int | None = None,
    device: Any = "auto",
    random_state: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    key_added: str | None = None,
) -> None:
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

    Every value used is recorded in ``adata.uns[key_added]["params"]`` (the options are validated
    once, as a :class:`~featurelens.models.SAEConfig` and a :class:`~featurelens.models.TrainConfig`).
    Training that finishes with a reconstruction worse than the mean (FVU > 1) or with every
    feature dead warns and records ``metrics["converged"] = False``.

    Parameters
    ----------
    {doc_adata}
    use_rep
        Embedding in ``adata.obsm`` to learn from (``"X"`` uses ``adata.X``).
    architecture
        ``"vanilla"``, ``"relu"``, ``"topk"`` or ``"batchtopk"``.
    {doc_n_features}
    {doc_expansion}
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
        AuxK weight (1/32), at least 0.
    pre_bias_init
        ``"mean"`` or ``"median"`` (geometric median) start of the decoder bias.
    lr
        Peak Adam learning rate (default ``3e-3 * min(1, sqrt(32 / d))``: 3e-3 up to 32
        dimensions, 7.5e-4 at 512; linear warm-up, linear decay over the last 20%).
    {doc_batch_size}
    {doc_n_steps}
    normalize
        Input normalisation: ``"scale"`` (default: one global factor giving average
        per-dimension variance 1, geometry unchanged), ``"center"``, ``"standardize"``,
        ``"unit"`` or ``None``. Recorded and repeated by :func:`encode`.
    {doc_dead_window}
    {doc_log_every}
    {doc_device}
    {doc_train_random_state}
    {doc_checkpoint}
    {doc_codes_out}
    {doc_progress}
    key_added
        Stem of the result names (default ``"sae"``): ``adata.obsm[f"X_{key_added}"]`` and
        ``adata.uns[key_added]``. Names that hold something else (the input, scanpy's
        ``uns["pca"]``, a whitening) are refused; retraining under a key removes what was derived
        from the previous dictionary.

    Returns
    -------
    {doc_returns_tool}

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
        One row per logged step: loss, mse, aux_loss, fvu, l0, dead_fraction, n_dead, lr, seconds.
    ``adata.uns[key_added]["features"]`` : :class:`pandas.DataFrame`
        One row per feature (``f0``, ``f1``, ...): ``train_fire_rate`` and ``dead_training``.
    ``adata.uns[key_added]["metrics"]`` : :class:`dict`
        FVU and mean L0 on all cells, number of dead features, training time, ``converged``.
    ``adata.uns[key_added]["quality"]`` : :class:`dict`
        Reconstruction quality on these cells: ``fvu`` (squared error over the total variance
        about the per-dimension mean), ``mean_cosine``, ``median_cosine``, ``n_obs``, computed in
        the dictionary's (normalised) input space.
    ``adata.obs[f"{key_added}_cosine"]`` : float
        Cosine similarity between every cell's embedding and its reconstruction.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, k=8, n_steps=300, progress=False)
    >>> adata.obsm["X_sae"].shape
    (2000, 64)
    """
    key = stem(key_added, "sae")
    X = embedding_source(adata, use_rep)
    claim(adata, key, kind="dictionary", inputs=[use_rep])
    model_cfg = SAEConfig.resolve(
        X.shape[1],
        architecture=architecture,
        n_features=n_features,
        expansion=expansion,
        k=k,
        l1_coef=l1_coef,
        auxk=auxk,
        k_aux=k_aux,
        auxk_coef=auxk_coef,
        pre_bias_init=pre_bias_init,
    )
    train_cfg = TrainConfig.resolve(
        X.shape[0],
        default_lr=model_cfg.default_lr(),
        lr=lr,
        batch_size=batch_size,
        n_steps=n_steps,
        normalize=normalize,
        dead_window=dead_window,
        log_every=log_every,
        random_state=random_state,
    )
    _learn(
        adata, X, use_rep=use_rep, method="sae", model_cfg=model_cfg, train_cfg=train_cfg, device=device, key=key,
        progress=progress, ckpt=_checkpoint_options(checkpoint, checkpoint_every, resume), out=out,
    )  # fmt: skip


@tool
@doc
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
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    key_added: str | None = None,
) -> None:
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
    about 100 epochs. The options are validated once, as a :class:`~featurelens.models.ICFLConfig`
    and a :class:`~featurelens.models.TrainConfig`.

    Parameters
    ----------
    {doc_adata}
    use_rep
        Embedding in ``adata.obsm`` to learn from (``"X"`` uses ``adata.X``).
    {doc_n_features}
    {doc_expansion}
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
    {doc_batch_size}
    {doc_n_steps}
    normalize
        Input normalisation (default ``"unit"``); see :func:`sae`.
    {doc_dead_window}
    {doc_log_every}
    {doc_device}
    {doc_train_random_state}
    {doc_checkpoint}
    {doc_codes_out}
    {doc_progress}
    key_added
        Stem of the result names (default ``"icfl"``); see :func:`sae`.

    Returns
    -------
    {doc_returns_tool}

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
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.pp.whiten(adata, "X_pca", control_key="condition", control_value="CTRL")
    >>> fl.tl.icfl(adata, "X_whitened", n_features=64, n_steps=200, progress=False)
    >>> adata.uns["icfl"]["preprocess"]["whiten"]["key"]
    'whitened'
    """
    key = stem(key_added, "icfl")
    X = embedding_source(adata, use_rep)
    claim(adata, key, kind="dictionary", inputs=[use_rep])
    model_cfg = ICFLConfig.resolve(
        X.shape[1],
        n_features=n_features,
        expansion=expansion,
        n_iter=n_iter,
        n_per_iter=n_per_iter,
        orthogonal=orthogonal,
        selection=selection,
        bias=bias,
        reset_every=reset_every,
        reset_threshold=reset_threshold,
        tol=tol,
    )
    train_cfg = TrainConfig.resolve(
        X.shape[0],
        default_lr=model_cfg.default_lr(),
        lr=lr,
        batch_size=batch_size,
        n_steps=n_steps,
        normalize=normalize,
        dead_window=dead_window,
        log_every=log_every,
        random_state=random_state,
    )
    _learn(
        adata, X, use_rep=use_rep, method="icfl", model_cfg=model_cfg, train_cfg=train_cfg, device=device, key=key,
        progress=progress, ckpt=_checkpoint_options(checkpoint, checkpoint_every, resume), out=out,
    )  # fmt: skip


def _copy_entry(entry: dict) -> dict:
    """Copy of a dictionary entry without data-specific results (keeps training information)."""
    out = {k: (entry[k].copy() if hasattr(entry[k], "copy") else entry[k]) for k in _TRAINING_KEYS if k in entry}
    out["preprocess"] = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in entry["preprocess"].items()}
    if "history" in entry:
        out["history"] = entry["history"].copy()
    if "metrics" in entry:
        out["metrics"] = dict(entry["metrics"])
    feats = entry.get("features")
    if isinstance(feats, pd.DataFrame) and {"train_fire_rate", "dead_training"} <= set(feats.columns):
        out["features"] = feats[["train_fire_rate", "dead_training"]].copy()
    else:
        out["features"] = pd.DataFrame(index=feature_names(n_features(entry)))
    return out


def _same_codes(old, new: sp.csr_matrix) -> bool:
    """Whether ``old`` activations equal ``new`` up to float32 rounding of the stored preprocessing."""
    if old is None or not sp.issparse(old) or not sp.issparse(new) or old.shape != new.shape:
        return False
    diff = abs(sp.csr_matrix(old, dtype=np.float32) - new)
    return diff.nnz == 0 or float(diff.max()) <= 1e-4 * max(float(abs(new).max()) if new.nnz else 0.0, 1e-12)


@tool
@doc
def encode(
    adata: AnnData,
    key: str,
    *,
    use_rep: str | None = None,
    whiten: bool | None = None,
    source: AnnData | None = None,
    batch_size: int = 4096,
    out=None,
    device: Any = "auto",
    progress: bool = True,
    key_added: str | None = None,
) -> None:
    """Apply a stored dictionary (with its preprocessing) to an AnnData.

    The embedding is normalised (and whitened, when the dictionary was trained on a whitened
    embedding and ``use_rep`` is the unwhitened one) exactly as in training, then encoded.
    When the whitened embedding the dictionary was trained on has been recomputed by a later
    :func:`featurelens.pp.whiten`, the unwhitened embedding is whitened with the dictionary's own
    whitening instead (with a warning). Re-encoding under an existing key replaces its activations
    and removes the results computed from the previous ones (feature statistics, DGE, ...).

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
    batch_size
        Cells per encoding batch.
    {doc_codes_out}
    {doc_device}
    {doc_progress}
    key_added
        Stem of the result names (default ``key``).

    Notes
    -----
    An embedding on disk (a dask array in ``obsm``, a backed or lazily read AnnData) is read,
    preprocessed and encoded one chunk at a time; with ``out=`` memory is bounded by a chunk and
    a batch whatever the number of cells. Batches go to ``device`` one at a time.

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`scipy.sparse.csr_matrix`, float32
        Feature activations (with ``out=``: the stored ones, read lazily).
    ``adata.uns[key_added]`` : :class:`dict`
        A copy of the dictionary, when it came from ``source`` or ``key_added != key``.
    ``adata.uns[key_added]["quality"]`` : :class:`dict`
        Reconstruction quality on these cells (held-out cells, for a new dataset): ``fvu``,
        ``mean_cosine``, ``median_cosine``, ``n_obs``.
    ``adata.obs[f"{key_added}_cosine"]`` : float
        Cosine similarity between every cell's embedding and its reconstruction.

    Examples
    --------
    >>> import featurelens as fl
    >>> ref = fl.datasets.kang2018(preprocess=True)
    >>> query = ref[ref.obs["condition"] == "STIM"].copy()
    >>> fl.tl.sae(ref, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.encode(query, "sae", source=ref, progress=False)
    >>> query.obsm["X_sae"].shape
    (1000, 64)
    """
    src = adata if source is None else source
    entry = get_entry(src, key)
    key_added = stem(key_added, key)
    check_positive_int(batch_size, "batch_size")
    sink = None
    if out is not None:
        sink = StoreSink(open_store(out, adata), f"obsm/X_{key_added}", n_features(entry))
    model, dev = model_from_entry(entry), resolve_device(device)
    rep, apply_white = resolve_input(adata, entry, use_rep, whiten)
    raw = raw_embedding(adata, rep)
    in_place = src is adata and key_added == key
    if is_out_of_core(raw) and not sp.issparse(raw):
        source = embedding_source(adata, rep)
        pre = preprocess_of(entry)
        check_input_dim(source.n_cols, entry, rep, apply_white)
        if not in_place:
            claim(adata, key_added, kind="dictionary", inputs=[rep])
        codes, fvu, cos = _encode_source(model, source, _Prepare(pre, apply_white), dev, progress, batch_size, sink)
    else:
        rep, _, Y, _, _ = prepared_input(adata, entry, use_rep, whiten)
        if not in_place:
            claim(adata, key_added, kind="dictionary", inputs=[rep])
        codes, fvu, cos = _encode_rows(model, Y, dev, batch_size, progress, sink)
    if in_place:
        if not _same_codes(adata.obsm.get(f"X_{key}"), codes):
            invalidate(adata, key, "codes")  # re-encoding to the same activations keeps what was computed from them
    else:
        new_entry = _copy_entry(entry)
        invalidate(adata, key_added, "dictionary", quiet=True)
        adata.uns[key_added] = new_entry
    adata.obsm[f"X_{key_added}"] = codes
    adata.obs[f"{key_added}_cosine"] = cos.astype(np.float32)
    adata.uns[key_added]["quality"] = _quality(fvu, cos)


@tool
@doc
def reconstruct(
    adata: AnnData,
    key: str,
    *,
    use_rep: str | None = None,
    whiten: bool | None = None,
    key_added: str | None = None,
) -> None:
    """Reconstruct the embedding from the stored feature activations.

    Decodes ``adata.obsm[f"X_{key}"]`` and undoes the dictionary's preprocessing, so the
    result lives in the same space as ``adata.obsm[use_rep]`` (for a dictionary trained on a
    whitened embedding and ``use_rep`` the unwhitened one, the whitening is undone as well).

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    use_rep
        Embedding to reconstruct (default: the training embedding); needed for row norms when
        the dictionary normalised rows to unit norm.
    whiten
        See :func:`encode`.
    key_added
        Stem of the result (default ``f"{key}_recon"``): ``adata.obsm[f"X_{key_added}"]``. A full
        obsm key (``"X_..."``) still works in this release, with a FutureWarning.

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.obsm[f"X_{key_added}"]`` : :class:`numpy.ndarray` (n_obs, d), float32
        The reconstruction.
    ``adata.uns[key]["reconstruction"]`` : :class:`dict`
        ``use_rep``, ``obsm_key``, ``fvu`` (squared error over the total variance of ``use_rep``
        about its per-dimension mean), ``mean_cosine`` and ``median_cosine``.
    ``adata.obs[f"{key}_recon_cosine"]`` : float
        Cosine similarity between every cell's embedding and its reconstruction.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.reconstruct(adata, "sae")
    >>> adata.obsm["X_sae_recon"].shape
    (2000, 30)
    """
    entry = get_entry(adata, key)
    codes = activations(adata, key)
    name = stem(key_added, f"{key}_recon", legacy_obsm=True)
    rep, X, Xhat, ctx, pre = reconstruction(adata, entry, codes, use_rep, whiten)
    obsm_key = f"X_{name}"
    claim(adata, name, kind=None, inputs=[rep, f"X_{key}"], obsm=obsm_key)
    if ctx.get("whitened") and pre.whitening is not None and pre.whitening.n_comps < X.shape[1]:
        warn(
            f"The whitening kept {pre.whitening.n_comps} of {X.shape[1]} components: the reconstruction lies in "
            "that subspace."
        )
    sst = float(((X - X.mean(0)) ** 2).sum(dtype=np.float64))
    fvu = float(((X - Xhat) ** 2).sum(dtype=np.float64) / sst) if sst > 0 else float("nan")
    num = np.einsum("ij,ij->i", X, Xhat, dtype=np.float64)
    den = np.linalg.norm(X, axis=1) * np.linalg.norm(Xhat, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    old = entry.get("reconstruction", {}).get("obsm_key")
    if old is not None and old != obsm_key and old in adata.obsm:
        del adata.obsm[old]
    adata.obsm[obsm_key] = Xhat.astype(np.float32)
    adata.obs[f"{key}_recon_cosine"] = cos.astype(np.float32)
    entry["reconstruction"] = {
        "use_rep": rep,
        "obsm_key": obsm_key,
        "fvu": fvu,
        "mean_cosine": float(cos.mean()),
        "median_cosine": float(np.median(cos)),
    }
