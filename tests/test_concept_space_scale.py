"""The concept space's feature selection by hash look-ups gives the stored tables of the per-feature scan."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featurelens as fl
import featurelens.tl._concepts as concepts
from featurelens._core import significant_terms


def reference_annotated_features(index: pd.Index, sel: pd.DataFrame) -> pd.Index:
    """Reference implementation: the features of ``index`` with a row in ``sel``, one scan of ``sel`` each."""
    return pd.Index([f for f in index.astype(str) if f in set(sel["feature"])], name="feature")


OPTIONS = [
    {"test": ["mwu"], "pval_cutoff": 0.01, "adjusted": False, "direction": None},
    {"test": ["binomial_up", "mwu"], "pval_cutoff": 1e-3, "adjusted": True, "direction": None},
    {"test": ["binomial"], "pval_cutoff": 0.05, "adjusted": False, "direction": "down"},
    {"test": ["mwu"], "pval_cutoff": 1e-12, "adjusted": True, "direction": "up"},
]


@pytest.mark.parametrize("opts", OPTIONS)
def test_annotated_features_equal_the_reference_on_enrichment_results(kang_enriched, opts):
    entry = kang_enriched.uns["sae"]
    sel = significant_terms(entry, "sae", **opts)
    want = reference_annotated_features(entry["features"].index, sel)
    got = concepts._annotated_features(entry["features"].index, sel)
    pd.testing.assert_index_equal(got, want, exact=True)
    # and both are the features with a significant term, in the order of the feature table
    names = entry["features"].index.astype(str)
    assert list(got) == [f for f in names if f in set(sel["feature"].tolist())]
    assert set(got) == set(sel["feature"])


def test_annotated_features_on_a_large_shuffled_table():
    rng = np.random.default_rng(0)
    n = 3000
    index = pd.Index(rng.permutation([f"f{i}" for i in range(n)]))
    chosen = rng.choice(index.to_numpy(), 900, replace=False)
    sel = pd.DataFrame({"feature": rng.choice(chosen, 20_000), "term": rng.integers(0, 500, 20_000).astype(str)})
    sel = sel.drop_duplicates(["feature", "term"])
    got = concepts._annotated_features(index, sel)
    pd.testing.assert_index_equal(got, reference_annotated_features(index, sel), exact=True)
    keep = set(sel["feature"])
    assert list(got) == [f for f in index if f in keep]
    # integer feature names are matched as strings, as the stored tables name them
    as_int = pd.Index(np.arange(50))
    sel_int = pd.DataFrame({"feature": ["3", "7", "7", "49"], "term": ["a", "a", "b", "c"]})
    pd.testing.assert_index_equal(
        concepts._annotated_features(as_int, sel_int), reference_annotated_features(as_int, sel_int), exact=True
    )


def _assert_spaces_identical(a: dict, b: dict) -> None:
    pd.testing.assert_frame_equal(a["obs"], b["obs"], check_exact=True)
    pd.testing.assert_frame_equal(a["terms"], b["terms"], check_exact=True)
    ma, mb = a["matrix"], b["matrix"]
    assert ma.dtype == mb.dtype == np.float32 and ma.shape == mb.shape and ma.format == mb.format == "csr"
    np.testing.assert_array_equal(ma.indptr, mb.indptr)
    np.testing.assert_array_equal(ma.indices, mb.indices)
    np.testing.assert_array_equal(ma.data, mb.data)
    assert a["params"] == b["params"]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"test": ("binomial_up", "mwu"), "pval_cutoff": 1e-3, "adjusted": True, "category": "slim"}],
)
def test_concept_space_stores_the_same_tables_as_with_the_reference_selection(kang_enriched, monkeypatch, kwargs):
    before = kang_enriched.copy()
    with monkeypatch.context() as m:
        m.setattr(concepts, "_annotated_features", reference_annotated_features)
        fl.tl.concept_space(before, "sae", progress=False, **kwargs)
    after = kang_enriched.copy()
    fl.tl.concept_space(after, "sae", progress=False, **kwargs)
    a, b = before.uns["sae"], after.uns["sae"]
    _assert_spaces_identical(a["concept_space"], b["concept_space"])
    pd.testing.assert_frame_equal(a["features"], b["features"], check_exact=True)
    assert len(b["concept_space"]["obs"]) >= 4
