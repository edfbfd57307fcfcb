"""MuData support: run AnnData tools on a MuData through a light AnnData bridge.

The dictionary (``obsm[f"X_{key}"]``, ``uns[key]``) lives on the MuData; expression comes from the
modality named by ``mod=``. Results that belong to a modality's genes (differential expression,
enrichment, steering, concept space) are written to that modality's ``uns[key]`` (and ``varm``), so
analyses of two modalities do not overwrite each other; everything else goes to the MuData.
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData

#: sub-keys of ``uns[key]`` that describe one modality's genes
MODALITY_RESULTS = frozenset({"dge", "enrichment", "steering", "concept_space", "concept_probes"})


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
        return _record(AnnData(obs=mdata.obs.copy(), obsm=obsm, uns=uns))
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
    return _record(bridge)


def _record(bridge: AnnData) -> AnnData:
    """Remember which names the bridge started with, so removals can be written back."""
    bridge._featurelens_names = {
        "obsm": list(bridge.obsm.keys()),
        "obs": list(bridge.obs.columns),
        "varm": list(bridge.varm.keys()),
    }
    return bridge


def _sync(source, target, keys_before) -> None:
    """Make the mapping ``target`` hold what ``source`` holds, deleting what the tool removed."""
    for k, v in source.items():
        if k not in target or target[k] is not v:
            target[k] = v
    for k in set(keys_before) - set(source.keys()):
        if k in target:
            del target[k]


def write_back(bridge: AnnData, mdata, mod: str | None) -> None:
    """Copy what a tool wrote into (or removed from) the bridge back to the MuData (and the modality)."""
    before = getattr(bridge, "_featurelens_names", {})
    _sync(bridge.obsm, mdata.obsm, before.get("obsm", ()))
    for c in bridge.obs.columns:
        if c not in mdata.obs.columns or not bridge.obs[c].equals(mdata.obs[c]):
            mdata.obs[c] = bridge.obs[c].values
    gone = [c for c in before.get("obs", ()) if c not in bridge.obs.columns and c in mdata.obs.columns]
    if gone:
        mdata.obs = mdata.obs.drop(columns=gone)
    m = mdata.mod[mod] if mod is not None else None
    for k, v in bridge.uns.items():
        if m is not None and k in m.uns and k not in mdata.uns:
            continue  # read from the modality for this call (e.g. "log1p")
        if _is_dictionary(v) and m is not None:
            target = mdata.uns.setdefault(k, {})
            mod_entry = m.uns.setdefault(k, {})
            for sub, val in v.items():
                (mod_entry if sub in MODALITY_RESULTS else target)[sub] = val
            for sub in [s for s in target if s not in v]:
                del target[sub]
            for sub in [s for s in mod_entry if s in MODALITY_RESULTS and s not in v]:
                del mod_entry[sub]
        else:
            mdata.uns[k] = v
    if m is not None:
        _sync(bridge.varm, m.varm, before.get("varm", ()))
