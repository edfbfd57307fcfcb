"""Dictionary entries (``adata.uns[key]``), their activations, models and the input they read.

A dictionary entry is the dict written by :func:`featurelens.tl.sae` / :func:`featurelens.tl.icfl`
(see the storage schema in the docs): ``params``, the decoder arrays, ``preprocess``, ``features``
and the results of later tools. The functions here find it, rebuild its torch model, find the
embedding it was trained on (whitening it on the fly when only the unwhitened source is present)
and read its activations ``adata.obsm[f"X_{key}"]``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._blockwise import is_lazy, row_blocks, to_memory
from ..models.preprocess import Preprocess
from ._storage import available_reps, embedding
from ._warn import warn

DICTIONARY_METHODS = ("sae", "icfl")
WHITEN_METHOD = "whiten"


def is_dictionary(value) -> bool:
    """Whether ``value`` is a featurelens dictionary entry."""
    return (
        isinstance(value, dict)
        and "decoder" in value
        and isinstance(value.get("params"), dict)
        and value["params"].get("method") in DICTIONARY_METHODS
    )


def is_whitening(value) -> bool:
    """Whether ``value`` is an entry written by :func:`featurelens.pp.whiten`."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("params"), dict)
        and value["params"].get("method") == WHITEN_METHOD
        and "components" in value
    )


def dictionary_keys(adata: AnnData) -> list[str]:
    """Keys of ``adata.uns`` that hold a dictionary."""
    return [k for k, v in adata.uns.items() if is_dictionary(v)]


def get_entry(adata: AnnData, key: str) -> dict:
    """The dictionary stored under ``adata.uns[key]`` or a ValueError naming the dictionaries present."""
    if not isinstance(key, str):
        raise TypeError(f"`key` must be the name of a dictionary in adata.uns (a str), got {key!r}.")
    if key not in adata.uns:
        have = ", ".join(map(repr, dictionary_keys(adata))) or "none"
        raise ValueError(
            f"No dictionary under adata.uns[{key!r}] (dictionaries present: {have}). "
            "Train one with `fl.tl.sae` or `fl.tl.icfl`, or pass `source=` the AnnData that holds it."
        )
    entry = adata.uns[key]
    if not isinstance(entry, dict) or "decoder" not in entry or "params" not in entry:
        raise ValueError(f"adata.uns[{key!r}] is not a featurelens dictionary (no 'decoder'/'params').")
    return in_memory(entry)


def in_memory(entry: dict) -> dict:
    """Read, in place, the values of an uns entry that an AnnData read lazily left on disk.

    ``anndata.experimental.read_lazy`` keeps arrays of ``uns`` as dask arrays and data frames as
    xarray-backed ``Dataset2D``; the per-feature results are small, so they are loaded (once) and
    the tools update them like those of any AnnData.
    """
    for k, v in list(entry.items()):
        if isinstance(v, dict):
            in_memory(v)
        elif is_lazy(v):
            entry[k] = v.to_memory() if hasattr(v, "to_memory") else to_memory(v)
    return entry


def n_features(entry: dict) -> int:
    """Number of features of a dictionary."""
    return int(np.shape(entry["decoder"])[0])


def activations(adata: AnnData, key: str) -> sp.csr_matrix:
    """The activations ``adata.obsm[f"X_{key}"]`` as CSR float32, checked against ``adata.uns[key]``."""
    entry = get_entry(adata, key)
    obsm_key = f"X_{key}"
    if obsm_key not in adata.obsm:
        raise ValueError(
            f"adata.obsm[{obsm_key!r}] (the activations of dictionary {key!r}) is missing; adata.obsm has "
            f"{available_reps(adata)}. Recompute it with `fl.tl.encode(adata, {key!r})`."
        )
    Z = adata.obsm[obsm_key]
    n_feat = n_features(entry)
    if Z.shape != (adata.n_obs, n_feat):
        raise ValueError(
            f"adata.obsm[{obsm_key!r}] has shape {Z.shape}, but dictionary {key!r} has {n_feat} features for "
            f"{adata.n_obs} cells; recompute it with `fl.tl.encode(adata, {key!r})`."
        )
    Z = _codes_in_memory(Z)
    if Z.nnz and not np.isfinite(Z.data).all():
        raise ValueError(f"adata.obsm[{obsm_key!r}] contains NaN or Inf; recompute it with `fl.tl.encode`.")
    return Z


def _codes_in_memory(Z) -> sp.csr_matrix:
    """Activations as CSR float32; codes on disk or in a dask array are read block by block.

    The codes are sparse (a few active features per cell), so they are held in memory: one
    float32 value and one int32 index per non-zero, whatever the storage.
    """
    if sp.isspmatrix_csr(Z) and Z.dtype == np.float32:
        return Z
    if not is_lazy(Z):
        return sp.csr_matrix(Z, dtype=np.float32)
    parts = []
    for _, _, blk in row_blocks(Z):
        blk = sp.csr_matrix(blk, dtype=np.float32)
        blk.eliminate_zeros()
        parts.append(blk)
    return sp.vstack(parts, format="csr", dtype=np.float32) if len(parts) > 1 else parts[0]


def feature_column(adata: AnnData, key: str, j: int) -> np.ndarray:
    """Activations of feature ``j`` in every cell (float64, dense)."""
    Z = activations(adata, key)
    return np.asarray(Z[:, j].toarray(), dtype=np.float64).ravel()


# ---------------------------------------------------------------------- models and preprocessing
def model_from_entry(entry: dict):
    """The torch model of a stored dictionary (CPU, eval mode not set)."""
    from ..models import ICFL, ICFLConfig, SAEConfig, SparseAutoencoder

    p = entry["params"]
    if p.get("method") == "sae":
        return SparseAutoencoder.from_arrays(entry, **SAEConfig.from_dict(p).model_kwargs())
    if p.get("method") == "icfl":
        return ICFL.from_arrays(entry, **ICFLConfig.from_dict(p).model_kwargs())
    raise ValueError(f"uns entry has an unknown method {p.get('method')!r}; expected 'sae' or 'icfl'.")


def preprocess_of(entry: dict) -> Preprocess:
    """The preprocessing (normalisation, whitening) a dictionary applies to its input."""
    return Preprocess.from_dict(entry["preprocess"])


def find_whitening(adata: AnnData, obsm_key: str) -> tuple[str, dict] | None:
    """The ``uns`` entry written by :func:`featurelens.pp.whiten` that produced ``adata.obsm[obsm_key]``."""
    for key, entry in adata.uns.items():
        if is_whitening(entry) and entry["params"].get("obsm_key") == obsm_key:
            return key, entry
    return None


def _stale_whitening(adata: AnnData, entry: dict) -> bool:
    """Whether the whitened embedding the dictionary was trained on has been recomputed since.

    The dictionary keeps a copy of its whitening; when ``adata.uns`` now holds a different
    whitening under the same key, ``adata.obsm[params["use_rep"]]`` is no longer its input.
    """
    w = entry.get("preprocess", {}).get("whiten")
    if not isinstance(w, dict):
        return False
    current = adata.uns.get(w.get("key"))
    if not is_whitening(current) or current["params"].get("obsm_key") != entry["params"].get("use_rep"):
        return False
    same = all(np.array_equal(np.asarray(current[k]), np.asarray(w[k])) for k in ("mean", "components", "variances"))
    return not same


def resolve_input(adata: AnnData, entry: dict, use_rep: str | None, whiten: bool | None) -> tuple[str, bool]:
    """Which obsm entry to read and whether the dictionary's stored whitening must be applied to it."""
    params = entry["params"]
    trained = params["use_rep"]
    w = entry.get("preprocess", {}).get("whiten")
    source = w.get("use_rep") if isinstance(w, dict) else None
    present = set(adata.obsm.keys()) | {"X"}
    if whiten and w is None:
        raise ValueError("`whiten=True` but this dictionary was not trained on a whitened embedding.")
    stale = _stale_whitening(adata, entry)
    if use_rep is None:
        if whiten is not True and trained in present and not stale:
            return trained, False
        if source is not None and source in present and whiten is not False:
            if stale:
                warn(
                    f"adata.obsm[{trained!r}] was recomputed by a later `fl.pp.whiten` after this dictionary was "
                    f"trained; encoding adata.obsm[{source!r}] with the dictionary's own whitening instead.",
                )
            return source, True
        if stale:
            raise ValueError(
                f"adata.obsm[{trained!r}] was recomputed by a later `fl.pp.whiten` after this dictionary was trained, "
                f"and the unwhitened embedding {source!r} is not present to whiten with the dictionary's own "
                f"whitening. Add adata.obsm[{source!r}] or pass `use_rep=` with `whiten=False` to use it as it is."
            )
        want = repr(trained) + (f" or {source!r} (whitened on the fly)" if source else "")
        raise ValueError(
            f"The dictionary was trained on adata.obsm[{trained!r}]; this AnnData has neither {want}. "
            f"It has {available_reps(adata)}. Pass `use_rep=`."
        )
    if whiten is not None:
        return use_rep, bool(whiten)
    if use_rep == trained:
        if stale:
            raise ValueError(
                f"adata.obsm[{trained!r}] was recomputed by a later `fl.pp.whiten` after this dictionary was trained. "
                f"Pass `use_rep={source!r}` (whitened with the dictionary's own whitening), or `whiten=False` to use "
                f"adata.obsm[{trained!r}] as it is."
            )
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


def input_dim(entry: dict, whitened: bool) -> int:
    """Dimension of the embedding the dictionary reads (before whitening when ``whitened``)."""
    pre = preprocess_of(entry)
    if whitened and pre.whitening is not None:
        return int(pre.whitening.mean.shape[0])
    return int(np.shape(entry["decoder"])[1])


def prepared_input(adata: AnnData, entry: dict, use_rep: str | None, whiten: bool | None):
    """The input embedding, preprocessed as in training.

    Returns
    -------
    ``(rep, X, Y, ctx, pre)``: the obsm key read, the raw embedding (float32), the preprocessed
    one, the context needed to invert the preprocessing and the :class:`Preprocess`.
    """
    rep, apply_white = resolve_input(adata, entry, use_rep, whiten)
    X = embedding(adata, rep)
    pre = preprocess_of(entry)
    check_input_dim(X.shape[1], entry, rep, apply_white)
    Y, ctx = pre.transform(X, whiten=apply_white)
    return rep, X, Y, ctx, pre


def check_input_dim(n_cols: int, entry: dict, rep: str, whitened: bool) -> None:
    """Raise a clear error unless an embedding of ``n_cols`` dimensions fits the dictionary."""
    n_in = input_dim(entry, whitened)
    if n_cols != n_in:
        raise ValueError(
            f"adata.obsm[{rep!r}] has {n_cols} dimensions but the dictionary expects {n_in}"
            f"{' (before whitening)' if whitened else ''}. Use the embedding the dictionary was trained on."
        )


def decode_codes(model, Z, batch_size: int = 8192) -> np.ndarray:
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


def reconstruction(adata: AnnData, entry: dict, codes, use_rep: str | None, whiten: bool | None):
    """Input embedding and its reconstruction from ``codes``, in the space of the input."""
    rep, X, _, ctx, pre = prepared_input(adata, entry, use_rep, whiten)
    Yhat = decode_codes(model_from_entry(entry), codes)
    return rep, X, pre.inverse(Yhat, ctx), ctx, pre


def input_space_directions(entry: dict) -> np.ndarray:
    """Unit feature directions in the space the dictionary's input embedding lives in.

    The stored decoder rows live in the dictionary's own (normalised, possibly whitened) space:
    per-dimension scales are undone (a per-row or global scale does not change a direction), then
    the whitening by its linear inverse.
    """
    pre = preprocess_of(entry)
    D = np.asarray(entry["decoder"], dtype=np.float64) * np.asarray(pre.normalizer.scale, dtype=np.float64)
    if pre.whitening is not None:
        D = np.asarray(pre.whitening.inverse_linear(D), dtype=np.float64)
    norms = np.linalg.norm(D, axis=1, keepdims=True)
    return D / np.where(norms > 0, norms, 1.0)
