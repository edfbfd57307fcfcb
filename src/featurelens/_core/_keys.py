"""Names of results: one ``key_added`` stem -> the obsm / uns / obs / varm names, and their protection.

A tool that writes under a stem ``S`` uses ``adata.obsm[f"X_{S}"]`` and ``adata.uns[S]`` (the scanpy
convention). Before writing, :func:`claim` refuses names that hold something else (the tool's own
input, scanpy's ``uns["pca"]``, a whitening when a dictionary is written, ...). When a result is
recomputed, :func:`invalidate` removes everything that was derived from what it replaces, so no
table describes data that no longer exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from anndata import AnnData

from ._dictionary import is_dictionary, is_whitening
from ._warn import warn

#: kinds of entries featurelens writes under ``adata.uns[stem]`` and how to recognise them
_KIND_TESTS = {
    "dictionary": is_dictionary,
    "whitening": is_whitening,
    "autoencoder": lambda v: (
        isinstance(v, dict) and isinstance(v.get("params"), dict) and v["params"].get("method") == "autoencoder"
    ),
}


def stem(key_added, default: str, *, legacy_obsm: bool = False, what: str = "key_added") -> str:
    """Validate a ``key_added`` stem (``None`` -> ``default``).

    With ``legacy_obsm`` (tools whose ``key_added`` used to be a full obsm key), a name starting
    with ``"X_"`` still works for one release: the prefix is dropped with a FutureWarning.
    """
    if key_added is None:
        return default
    if not isinstance(key_added, str):
        raise TypeError(f"`{what}` must be a str (the stem of the result names), got {key_added!r}.")
    if key_added.startswith("X_"):
        if legacy_obsm:
            warn(
                f"`{what}` is now a stem: pass {key_added[2:]!r} to write adata.obsm[{key_added!r}]. A full obsm key "
                "still works in this release and will be an error in the next.",
                FutureWarning,
            )
            key_added = key_added[2:]
        else:
            raise ValueError(
                f"`{what}={key_added!r}` is a full obsm key, but `{what}` is a stem: pass {key_added[2:]!r} to write "
                f"adata.obsm[{key_added!r}] and adata.uns[{key_added[2:]!r}]."
            )
    if not key_added or key_added.strip() != key_added or "/" in key_added:
        raise ValueError(
            f"`{what}={key_added!r}` is not a usable name: it must be non-empty, without leading or trailing spaces "
            "and without '/' (h5ad groups cannot hold it)."
        )
    return key_added


def _used_as_input(adata: AnnData, obsm_key: str) -> list[str]:
    """Featurelens entries whose recorded input is ``adata.obsm[obsm_key]``."""
    out = []
    for k, v in adata.uns.items():
        p = v.get("params") if isinstance(v, dict) else None
        if isinstance(p, dict) and p.get("use_rep") == obsm_key and (is_dictionary(v) or is_whitening(v)):
            out.append(k)
    return out


def claim(
    adata: AnnData,
    name: str,
    *,
    kind: str | None,
    inputs: Iterable[str] = (),
    obsm: str | None = None,
    what: str = "key_added",
) -> None:
    """Refuse to write results under ``name`` when that would destroy something else.

    Parameters
    ----------
    adata
        The AnnData about to be written.
    name
        The stem (``adata.uns[name]``, unless ``kind`` is None).
    kind
        The kind of ``uns`` entry the tool writes (``"dictionary"``, ``"whitening"``,
        ``"autoencoder"``), or None for tools that write only ``obsm[obsm]``.
    inputs
        obsm keys the tool reads: never overwritten.
    obsm
        The obsm key the tool writes (default ``f"X_{name}"``).
    what
        The option named in errors.
    """
    obsm = f"X_{name}" if obsm is None else obsm
    if obsm in set(inputs):
        raise ValueError(f"`{what}={name!r}` would overwrite the input adata.obsm[{obsm!r}]; choose another `{what}`.")
    if kind is not None and name in adata.uns and not _KIND_TESTS[kind](adata.uns[name]):
        raise ValueError(
            f"`{what}={name!r}` would overwrite adata.uns[{name!r}], which holds something else (not a featurelens "
            f"{kind}; e.g. scanpy's parameters of adata.obsm[{obsm!r}]). Choose another `{what}`."
        )
    if obsm in adata.obsm:
        rerun = kind == "whitening" and is_whitening(adata.uns.get(name))  # dictionaries keep their own copy
        users = [] if rerun else [k for k in _used_as_input(adata, obsm) if k != name]
        foreign = kind is not None and name not in adata.uns
        if users or foreign:
            why = (
                f"it is the input of {', '.join(map(repr, users))}"
                if users
                else f"it was not written by featurelens (there is no adata.uns[{name!r}])"
            )
            raise ValueError(f"`{what}={name!r}` would overwrite adata.obsm[{obsm!r}]: {why}. Choose another `{what}`.")


# ---------------------------------------------------------------------- derived results of a dictionary
@dataclass(frozen=True)
class _Result:
    """What one tool writes for a dictionary ``key`` and what it is computed from."""

    entry: tuple[str, ...]
    after: str
    columns: tuple[str, ...] = ()
    column_prefix: str | None = None
    varm: tuple[str, ...] = ()
    obs: tuple[str, ...] = ()
    obsm: tuple[str, ...] = field(default=())


#: results stored with a dictionary; ``after`` is the result they are computed from
#: ("codes": the activations; "dictionary": the decoder alone). Names use ``{key}``.
RESULTS = {
    "feature_stats": _Result(
        entry=("mean_active_per_cell", "n_redundant"),
        after="codes",
        columns=("n_active", "frac_active", "mean_active", "max", "dead", "max_corr", "corr_partner", "redundant"),
    ),
    "feature_types": _Result(
        entry=("feature_types",),
        after="codes",
        columns=("type", "group", "n_groups_significant", "best_group", "best_alpha"),
    ),
    "selectivity": _Result(entry=("selectivity",), after="codes", columns=("selective_label", "max_avg_selectivity")),
    "probe": _Result(entry=("probe",), after="codes"),
    "reconstruction": _Result(entry=("reconstruction",), after="codes", obs=("{key}_recon_cosine",)),
    "dge": _Result(entry=("dge",), after="codes", varm=("{key}_log2fc",)),
    "steering": _Result(entry=("steering",), after="codes"),
    "token_scores": _Result(entry=("token_scores",), after="dictionary"),
    "enrichment": _Result(entry=("enrichment",), after="dge"),
    "concept_space": _Result(entry=("concept_space",), after="enrichment", columns=("category", "n_terms")),
    "concept_probes": _Result(entry=("concept_probes",), after="enrichment", column_prefix="concept_"),
}


def _descendants(changed: str) -> list[str]:
    """Results computed (directly or not) from ``changed``, in dependency order."""
    parents = {"codes": "dictionary"}
    parents.update({name: r.after for name, r in RESULTS.items()})

    def derived(name: str) -> bool:
        while name in parents:
            name = parents[name]
            if name == changed:
                return True
        return False

    return [name for name in RESULTS if derived(name)]


def _external_names(entry: dict, name: str, key: str) -> dict[str, list[str]]:
    """Obsm / obs names a result of ``entry`` wrote outside ``uns[key]`` (recorded or by convention)."""
    r = RESULTS[name]
    out = {
        "obs": [n.format(key=key) for n in r.obs],
        "varm": [n.format(key=key) for n in r.varm],
        "obsm": [n.format(key=key) for n in r.obsm],
    }
    if name == "reconstruction" and isinstance(entry.get("reconstruction"), dict):
        out["obsm"].append(str(entry["reconstruction"].get("obsm_key", f"X_{key}_recon")))
    if name == "token_scores":
        for run in (entry.get("token_scores") or {}).values():
            if isinstance(run, dict):
                out["obsm"].append(str(run.get("obsm_key", "")))
                out["obs"].append(str(run.get("obs_key", "")))
    return out


def _drop_external(adata: AnnData, entry: dict, name: str, key: str) -> list[str]:
    """Remove the obs / obsm / varm names a result wrote outside ``uns[key]``; returns what was removed."""
    removed = []
    for slot, names in _external_names(entry, name, key).items():
        for n in names:
            if slot == "obs" and n in adata.obs.columns:
                adata.obs.drop(columns=n, inplace=True)
            elif slot != "obs" and n and n in getattr(adata, slot):
                del getattr(adata, slot)[n]
            else:
                continue
            removed.append(f"adata.{slot}[{n!r}]")
    return removed


def _drop_columns(feats, r: _Result) -> None:
    """Remove a result's columns from the feature table."""
    if feats is None or not hasattr(feats, "columns"):
        return
    cols = [c for c in r.columns if c in feats.columns]
    if r.column_prefix:
        cols += [c for c in feats.columns if str(c).startswith(r.column_prefix)]
    if cols:
        feats.drop(columns=cols, inplace=True)


def invalidate(adata: AnnData, key: str, changed: str, *, keep: Iterable[str] = (), quiet: bool = False) -> list[str]:
    """Remove every result of dictionary ``key`` computed from ``changed``; returns what was removed.

    ``changed`` is ``"dictionary"`` (retrained: everything goes), ``"codes"`` (activations
    recomputed), or the name of a result in :data:`RESULTS` (e.g. ``"dge"``: the enrichment and the
    concept space computed from the previous DGE go). Results named in ``keep`` stay (the caller is
    about to replace them itself).
    """
    entry = adata.uns.get(key)
    if not isinstance(entry, dict):
        return []
    removed: list[str] = []
    for name in _descendants(changed):
        if name in keep:
            continue
        r = RESULTS[name]
        removed += _drop_external(adata, entry, name, key)
        present = [e for e in r.entry if e in entry]
        for e in present:
            del entry[e]
        removed += [f"adata.uns[{key!r}][{e!r}]" for e in present]
        _drop_columns(entry.get("features"), r)
    if removed and not quiet:
        warn(
            f"Removed results computed from the previous {changed} of {key!r}, which no longer match: "
            f"{', '.join(removed)}."
        )
    return removed
