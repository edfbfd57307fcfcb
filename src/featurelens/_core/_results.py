"""Stored results of later tools: significant enrichment terms, steering runs, per-grouping tables."""

from __future__ import annotations

import pandas as pd

from .._checks import check_choice, check_choices, check_probability

#: tests of the long enrichment table (``fl.tl.enrich``, ``fl.tl.gsea``)
TESTS = ["binomial", "binomial_down", "binomial_up", "gsea", "mwu"]
#: directions of the long enrichment table
DIRECTIONS = ["both", "down", "up"]


def stored(entry: dict, key: str, sub: str, tool: str, what: str | None = None) -> dict:
    """``entry[sub]`` (a result of ``fl.tl.<tool>``) or a ValueError naming the tool to run first."""
    if not isinstance(entry.get(sub), dict):
        raise ValueError(f"No {what or sub} for {key!r}; run `fl.tl.{tool}(adata, {key!r})` first.")
    return entry[sub]


def by_grouping(entry: dict, key: str, sub: str, groupby: str | None, tool: str) -> tuple[str, dict]:
    """The result of ``fl.tl.<tool>`` stored for ``groupby`` (the latest one when None)."""
    store = entry.get(sub) or {}
    if not store:
        raise ValueError(f"No {sub} for {key!r}; run `fl.tl.{tool}(adata, {key!r}, groupby)` first.")
    groupby = list(store)[-1] if groupby is None else groupby
    if groupby not in store:
        raise ValueError(
            f"No {sub} of {key!r} for groupby={groupby!r}; computed for {sorted(store)}. Run "
            f"`fl.tl.{tool}(adata, {key!r}, {groupby!r})`."
        )
    return groupby, store[groupby]


def significant_terms(
    entry: dict,
    key: str,
    *,
    test="mwu",
    pval_cutoff: float = 0.01,
    adjusted: bool = False,
    direction: str | None = None,
) -> pd.DataFrame:
    """Rows ``(feature, term, name)`` of the stored enrichment table that pass the cut (unique pairs)."""
    store = stored(entry, key, "enrichment", "enrich", "enrichment results")
    tests = list(check_choices(test, "test", TESTS))
    check_probability(pval_cutoff, "pval_cutoff")
    check_choice(direction, "direction", ("up", "down"), none=True)
    kept = store["params"].get("store_pval", 1.0)
    if pval_cutoff > kept:
        raise ValueError(
            f"The enrichment table holds rows with p < {kept:g} only, so pval_cutoff={pval_cutoff:g} cannot be "
            f"applied; rerun `fl.tl.enrich(adata, {key!r}, store_pval={pval_cutoff:g})` or lower pval_cutoff."
        )
    res = store["results"]
    have = set(res["test"].astype(str))
    if not have & set(tests):
        raise ValueError(
            f"The enrichment results of {key!r} hold no {tests} rows (tests present: {sorted(have)}); "
            "pass test= one of those or rerun `fl.tl.enrich` with the method."
        )
    p = res["padj"] if adjusted else res["pval"]
    keep = res["test"].astype(str).isin(tests).to_numpy() & (p.to_numpy() < pval_cutoff)
    if direction is not None:
        keep &= res["direction"].astype(str).to_numpy() == direction
    sel = res.loc[keep, ["feature", "term", "name"]].astype(str)
    return sel.drop_duplicates(["feature", "term"]).reset_index(drop=True)


def steering_run(entry: dict, key: str, name: str | None) -> tuple[str, dict]:
    """The stored steering run ``name`` (the only one when ``None``), or a ValueError listing the runs."""
    runs = entry.get("steering") or {}
    if not runs:
        raise ValueError(f"No steering results for {key!r}; run `fl.tl.steer(adata, {key!r}, feature)` first.")
    if name is None:
        if len(runs) > 1:
            raise ValueError(f"Several steering runs are stored ({sorted(runs)}); pass name= one of them.")
        name = next(iter(runs))
    if name not in runs:
        raise ValueError(f"No steering run {name!r} for {key!r}; stored runs: {sorted(runs)}.")
    return str(name), runs[name]
