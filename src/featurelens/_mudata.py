"""MuData support: run AnnData tools on a MuData through a light AnnData bridge.

The dictionary (``obsm[f"X_{key}"]``, ``uns[key]``) lives on the MuData; expression comes from the
modality named by ``mod=``. Results that belong to a modality's genes (differential expression,
enrichment, steering, concept space) are written to that modality's ``uns[key]`` (and ``varm``), so
analyses of two modalities do not overwrite each other; everything else goes to the MuData.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
from anndata import AnnData

#: sub-keys of ``uns[key]`` that describe one modality's genes
MODALITY_RESULTS = frozenset({"dge", "enrichment", "steering", "concept_space", "concept_probes"})

_MOD_DOC = """    mod
        Only for a :class:`~mudata.MuData`: the modality holding the expression (genes) this call
        reads; the embedding and the dictionary are read from the MuData itself. Gene-level results
        are stored in that modality's ``uns[key]`` / ``varm``.
"""


def is_mudata(data) -> bool:
    """Whether ``data`` is a MuData (without importing mudata when it is not installed)."""
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def _is_dictionary(v) -> bool:
    return isinstance(v, dict) and "decoder" in v and "params" in v


def as_anndata(mdata, mod: str | None) -> AnnData:
    """An AnnData sharing the MuData's obs/obsm/uns and, with ``mod``, that modality's expression."""
    if mod is not None and mod not in mdata.mod:
        raise ValueError(f"mod={mod!r} is not a modality of the MuData (modalities: {list(mdata.mod)}).")
    obsm = {k: v for k, v in mdata.obsm.items()}
    # dictionaries are copied one level deep so that results the tool adds can be routed on write-back
    uns = {k: (dict(v) if _is_dictionary(v) else v) for k, v in mdata.uns.items()}
    if mod is None:
        bridge = AnnData(obs=mdata.obs.copy(), obsm=obsm, uns=uns)
        return bridge
    m = mdata.mod[mod]
    pos = m.obs_names.get_indexer(mdata.obs_names)
    if (pos < 0).any():
        raise ValueError(
            f"Modality {mod!r} lacks {int((pos < 0).sum())} of the MuData's cells; featurelens needs every cell "
            "in the modality. Subset the MuData to the shared cells first (`mu.pp.intersect_obs(mdata)`)."
        )
    same = np.array_equal(pos, np.arange(m.n_obs))
    X = m.X if same else (m.X[pos] if m.X is not None else None)
    layers = {k: (v if same else v[pos]) for k, v in m.layers.items()}
    for k, v in m.uns.items():
        if k in uns and _is_dictionary(uns[k]) and isinstance(v, dict):
            uns[k] = {**uns[k], **{s: r for s, r in v.items() if s in MODALITY_RESULTS}}
        elif k not in uns:
            uns[k] = v
    bridge = AnnData(X=X, obs=mdata.obs.copy(), var=m.var.copy(), obsm=obsm, layers=layers, uns=uns)
    for k, v in m.varm.items():
        bridge.varm[k] = v
    return bridge


def write_back(bridge: AnnData, mdata, mod: str | None) -> None:
    """Copy what a tool wrote into the bridge back to the MuData (and the modality)."""
    for k, v in bridge.obsm.items():
        if k not in mdata.obsm or mdata.obsm[k] is not v:
            mdata.obsm[k] = v
    for c in bridge.obs.columns:
        if c not in mdata.obs.columns or not bridge.obs[c].equals(mdata.obs[c]):
            mdata.obs[c] = bridge.obs[c].values
    m = mdata.mod[mod] if mod is not None else None
    for k, v in bridge.uns.items():
        if m is not None and k in m.uns and k not in mdata.uns:
            continue  # read from the modality for this call (e.g. "log1p")
        if _is_dictionary(v) and m is not None:
            target = mdata.uns.setdefault(k, {})
            mod_entry = m.uns.setdefault(k, {})
            for sub, val in v.items():
                if sub in MODALITY_RESULTS:
                    mod_entry[sub] = val
                else:
                    target[sub] = val
        else:
            mdata.uns[k] = v
    if m is not None:
        for k, v in bridge.varm.items():
            m.varm[k] = v


def mudata_aware(func=None, *, writes: bool = True):
    """Let a tool taking an AnnData first also take a MuData, with ``mod=`` choosing the expression."""
    if func is None:
        return functools.partial(mudata_aware, writes=writes)

    @functools.wraps(func)
    def wrapper(data, *args, mod: str | None = None, **kwargs):
        if not is_mudata(data):
            if mod is not None:
                raise ValueError("mod= is only used with a MuData; pass the AnnData of the modality instead.")
            return func(data, *args, **kwargs)
        if kwargs.get("copy"):
            raise ValueError("copy=True is not supported for a MuData; copy the MuData (`mdata.copy()`) first.")
        bridge = as_anndata(data, mod)
        out = func(bridge, *args, **kwargs)
        if writes:
            write_back(bridge, data, mod)
        return out

    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    if "mod" not in sig.parameters:
        extra = inspect.Parameter("mod", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")
        var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD] + [extra] + var_kw
        wrapper.__signature__ = sig.replace(parameters=params)
    doc = func.__doc__ or ""
    marker = "\n    Returns\n    -------"
    if marker in doc and "\n    mod\n" not in doc:
        wrapper.__doc__ = doc.replace(marker, "\n" + _MOD_DOC.rstrip("\n") + "\n" + marker, 1)
    return wrapper
