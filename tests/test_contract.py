"""The calling convention every public writer shares, and the layout rules of the code base."""

from __future__ import annotations

import ast
import copy as _copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import assert_uns_equal

import featurelens as fl

SRC = Path(fl.__file__).parent


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def annotated() -> ad.AnnData:
    """Kang 2018 (bundled), a small SAE with feature types, high-vs-low DGE, enrichment and one steering run."""
    adata = fl.datasets.kang2018(preprocess=True)
    fl.tl.sae(adata, "X_pca", n_features=32, k=8, n_steps=150, progress=False)
    fl.tl.feature_types(adata, "sae", "cell_type")
    fl.tl.high_vs_low(adata, "sae", groupby="cell_type", progress=False)
    fl.tl.enrich(adata, "sae", "GO_BP", progress=False)
    return adata


@pytest.fixture(scope="module")
def tokens() -> ad.AnnData:
    """Random token embeddings on a 4 x 4 grid with an ICFL dictionary."""
    rng = np.random.default_rng(0)
    adata = fl.microscopy.from_embeddings(rng.normal(size=(60, 16, 8)).astype(np.float32), grid=(4, 4))
    adata.obs["group"] = np.where(np.arange(60) % 3 == 0, "ctrl", "pert")
    fl.tl.icfl(adata, "X_emb", n_features=16, n_steps=60, progress=False)
    return adata


@pytest.fixture(scope="module")
def simulated() -> ad.AnnData:
    adata = fl.datasets.simulate("small", n_obs=300, random_state=0)
    fl.tl.sae(adata, "X_programs", n_features=16, k=4, n_steps=60, progress=False)
    return adata


# ---------------------------------------------------------------------------------------------- the writers
@dataclass
class Case:
    """One public writer: how to call it on which fixture, and one invalid choice."""

    func: object
    fixture: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    positional: tuple = ()
    choice: tuple | None = None  # (option, invalid value, text of the allowed values)

    @property
    def name(self) -> str:
        return f"{self.func.__module__.split('.')[1]}.{self.func.__name__}"


def _steer_feature(adata) -> str:
    summ = adata.uns["sae"]["dge"]["summary"]
    return str(summ.index[summ["skipped"] == ""][0])


CASES = [
    Case(fl.pp.whiten, "annotated", ("X_pca",), {"control_key": "condition", "control_value": "CTRL"}, ("use_rep",)),
    Case(fl.pp.apply_whitening, "tokens", ("wh",), {"key_added": "wh2"}, ("key",)),
    Case(
        fl.pp.normalize_embedding, "annotated", ("X_pca",), {}, ("use_rep",), ("method", "cosine", "'center', 'scale'")
    ),
    Case(
        fl.tl.sae,
        "annotated",
        ("X_pca",),
        {"n_features": 16, "k": 4, "n_steps": 20, "progress": False, "key_added": "sae2"},
        ("use_rep",),
        ("architecture", "gated", "'vanilla', 'relu', 'topk', 'batchtopk'"),
    ),
    Case(
        fl.tl.icfl,
        "annotated",
        ("X_pca",),
        {"n_features": 16, "n_steps": 20, "progress": False, "key_added": "ic2"},
        ("use_rep",),
        ("selection", "largest", "'signed', 'abs'"),
    ),
    Case(fl.tl.encode, "annotated", ("sae",), {"key_added": "sae_again", "progress": False}, ("key",)),
    Case(fl.tl.reconstruct, "annotated", ("sae",), {}, ("key",)),
    Case(fl.tl.feature_stats, "annotated", ("sae",), {}, ("key",)),
    Case(fl.tl.feature_types, "annotated", ("sae", "condition"), {}, ("key", "groupby")),
    Case(fl.tl.selectivity, "annotated", ("sae", "condition"), {}, ("key", "groupby")),
    Case(fl.tl.linear_probe, "annotated", ("condition",), {"use_rep": "X_pca", "split_key": "cell_type"}, ("groupby",)),
    Case(fl.tl.high_vs_low, "annotated", ("sae",), {"features": ["f0", "f1"], "progress": False}, ("key",)),
    Case(
        fl.tl.enrich,
        "annotated",
        ("sae", "GO_BP"),
        {"methods": "mwu", "progress": False},
        ("key", "gene_sets"),
        ("methods", "fisher", "'binomial', 'mwu'"),
    ),
    Case(
        fl.tl.gsea,
        "annotated",
        ("sae", None, "GO_BP"),
        {"permutation_num": 10, "max_size": 25, "progress": False},
        ("key", "features", "gene_sets"),
    ),
    Case(
        fl.tl.steer,
        "annotated",
        ("sae", None),
        {"groupby": "cell_type", "group": "CD14 Mono", "progress": False},
        ("key", "feature"),
        ("method", "anova", "'effect', 'posterior', 't-test', 'wilcoxon', 'deseq2'"),
    ),
    Case(
        fl.tl.concept_space,
        "annotated",
        ("sae",),
        {"pval_cutoff": 0.05, "progress": False},
        ("key",),
        ("category", "level2", "'level1', 'slim'"),
    ),
    Case(
        fl.tl.probe_concepts,
        "annotated",
        ("sae", ["virus"]),
        {"pval_cutoff": 0.05},
        ("key", "words"),
        ("direction", "sideways", "'up', 'down'"),
    ),
    Case(
        fl.tl.autoencoder,
        "simulated",
        (4,),
        {"n_epochs": 2, "hidden": (), "progress": False, "split_key": None},
        ("latent_dim",),
    ),
    Case(
        fl.tl.superposition,
        "simulated",
        ("X_programs", ["X_programs_active"]),
        {"split_key": None},
        ("use_rep", "variables"),
    ),
    Case(fl.tl.variable_recovery, "simulated", (["X_programs_active"],), {"key": "sae"}, ("variables",)),
    Case(
        fl.tl.structure_recovery,
        "simulated",
        ("sae",),
        {"percentiles": (50,)},
        ("key",),
        ("similarity", "spearman", "'cosine', 'pearson'"),
    ),
    Case(fl.tl.token_scores, "tokens", ("icfl", "f1"), {}, ("key", "feature")),
]


def _prepared(case: Case, request) -> tuple[ad.AnnData, tuple]:
    adata = request.getfixturevalue(case.fixture).copy()
    args = case.args
    if case.func is fl.pp.apply_whitening:
        fl.pp.whiten(adata, "X_emb", control_key="group", control_value="ctrl", key_added="wh")
    if case.func in (fl.tl.steer, fl.tl.gsea):
        f = _steer_feature(adata)
        args = tuple(([f] if case.func is fl.tl.gsea else f) if a is None else a for a in args)
    return adata, args


def _snapshot(adata: ad.AnnData) -> dict:
    return {
        "obs": adata.obs.copy(),
        "obsm": {k: (v.copy() if hasattr(v, "copy") else v) for k, v in adata.obsm.items()},
        "varm": {k: np.asarray(v).copy() for k, v in adata.varm.items()},
        "uns": _copy.deepcopy(dict(adata.uns)),
        "X": adata.X.copy() if adata.X is not None else None,
    }


def _assert_unchanged(adata: ad.AnnData, snap: dict) -> None:
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    assert set(adata.obsm.keys()) == set(snap["obsm"])
    for k, v in snap["obsm"].items():
        w = adata.obsm[k]
        assert (abs(w - v).max() == 0) if sp.issparse(v) else np.array_equal(np.asarray(w), np.asarray(v)), k
    assert set(adata.varm.keys()) == set(snap["varm"])
    for k, v in snap["varm"].items():
        np.testing.assert_array_equal(np.asarray(adata.varm[k]), v)
    assert_uns_equal(snap["uns"], dict(adata.uns))


def test_every_public_writer_is_covered():
    tools = {
        f"{mod.__name__.split('.')[1]}.{name}"
        for mod in (fl.pp, fl.tl)
        for name in mod.__all__
        if getattr(getattr(mod, name), "__featurelens_tool__", False)
    }
    others = {f"tl.{n}" for n in fl.tl.__all__} | {f"pp.{n}" for n in fl.pp.__all__}
    # they return results and write nothing (train_scvi returns the model it trained)
    assert others - tools == {"tl.FeatureMatch", "tl.match_features", "tl.train_scvi"}
    assert tools == {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_writer_signature(case: Case):
    params = inspect.signature(case.func).parameters
    names = list(params)
    assert names[0] == "adata"
    pos = [n for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD][1:]
    assert tuple(pos) == case.positional, "only adata and the data it reads are positional"
    for n, p in params.items():
        if n != "adata" and n not in case.positional:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{n} must be keyword-only"
    assert params["copy"].default is False and params["mod"].default is None
    assert names[-2:] == ["copy", "mod"]
    if "random_state" in params:
        assert params["random_state"].default == 0
    if "progress" in params:
        assert params["progress"].default is True
    for required in ("key", "feature", "groupby"):
        if required in case.positional:
            assert params[required].default is inspect.Parameter.empty, f"{required} has no default"
    assert inspect.signature(case.func).return_annotation in (None, "None")
    doc = case.func.__doc__
    assert "Sets the following fields" in doc and "Examples\n    --------" in doc and "{doc_" not in doc
    for n in names[1:]:
        assert f"\n    {n}\n" in doc or any(f"{n}," in line or f", {n}" in line for line in doc.splitlines()), n


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_writer_copy_semantics(case: Case, request):
    adata, args = _prepared(case, request)
    before = _snapshot(adata)
    out = case.func(adata, *args, **case.kwargs, copy=True)
    assert isinstance(out, ad.AnnData) and out is not adata
    _assert_unchanged(adata, before)
    with pytest.raises(AssertionError):
        _assert_unchanged(out, before)  # the copy holds the results
    assert case.func(adata, *args, **case.kwargs) is None
    assert set(adata.uns.keys()) == set(out.uns.keys())
    assert set(adata.obsm.keys()) == set(out.obsm.keys())
    assert list(adata.obs.columns) == list(out.obs.columns)


@pytest.mark.parametrize("case", [c for c in CASES if c.choice], ids=lambda c: c.name)
def test_invalid_choice_raises_value_error_naming_the_choices(case: Case, request):
    adata, args = _prepared(case, request)
    before = _snapshot(adata)
    option, bad, allowed = case.choice
    with pytest.raises(ValueError, match=f"`{option}` must be one (?:or several )?of {allowed}") as err:
        case.func(adata, *args, **{**case.kwargs, option: bad})
    assert repr(bad) in str(err.value)
    _assert_unchanged(adata, before)


def test_mudata_copy_returns_a_new_mudata(annotated):
    mu = pytest.importorskip("mudata")
    a = annotated.copy()
    mdata = mu.MuData({"rna": a})
    mdata.obsm["X_pca"] = a.obsm["X_pca"]
    out = fl.tl.sae(mdata, "X_pca", n_features=8, k=2, n_steps=10, progress=False, copy=True)
    assert isinstance(out, mu.MuData) and "sae" in out.uns and "sae" not in mdata.uns


# ---------------------------------------------------------------------------------------------- learners
def test_sae_and_icfl_share_their_common_keywords():
    sae = inspect.signature(fl.tl.sae).parameters
    icfl = inspect.signature(fl.tl.icfl).parameters
    shared = [n for n in sae if n in icfl]
    assert shared == [n for n in icfl if n in sae], "shared keywords come in the same order"
    assert {"use_rep", "n_features", "expansion", "lr", "batch_size", "n_steps", "normalize", "device"} <= set(shared)
    for n in shared:
        a, b = sae[n], icfl[n]
        assert (a.kind, a.annotation) == (b.kind, b.annotation), n
        if n != "normalize":  # DESIGN: SAEs scale ("scale"), ICFL works on unit-norm rows ("unit")
            assert a.default == b.default, n
    tail = ["lr", "batch_size", "n_steps", "normalize", "dead_window", "log_every", "device", "random_state",
            "checkpoint", "checkpoint_every", "resume", "out", "progress", "key_added", "copy", "mod"]  # fmt: skip
    assert list(sae)[-len(tail) :] == tail and list(icfl)[-len(tail) :] == tail


def test_learner_configs_round_trip_and_validate():
    from featurelens.models import ICFLConfig, SAEConfig, TrainConfig

    cfg = SAEConfig.resolve(30, architecture="batchtopk", expansion=2)
    assert (cfg.n_features, cfg.k, cfg.k_aux, cfg.l1_coef) == (60, 15, 15, None)
    assert SAEConfig.from_dict({**cfg.to_dict(), "other": 1}) == cfg
    icfg = ICFLConfig.resolve(30, n_features=64)
    assert (icfg.n_iter, icfg.n_per_iter) == (3, 5)
    assert ICFLConfig.from_dict(icfg.to_dict()) == icfg
    tcfg = TrainConfig.resolve(5000, default_lr=1e-3)
    assert (tcfg.batch_size, tcfg.n_steps, tcfg.normalize) == (1024, 1500, "scale")
    assert TrainConfig.from_dict(tcfg.to_dict()) == tcfg
    assert SAEConfig.resolve(30).l1_coef is None and SAEConfig.resolve(30, architecture="vanilla").l1_coef == 1e-2
    from featurelens.models import SparseAutoencoder

    assert inspect.signature(SparseAutoencoder).parameters["l1_coef"].default == 1e-2  # one default everywhere
    with pytest.raises(ValueError, match="`normalize` must be one of"):
        TrainConfig.resolve(10, default_lr=1e-3, normalize="l2")


# ---------------------------------------------------------------------------------------------- code layout
def _code_lines(lines: list[str], node: ast.AST) -> int:
    body = node.body
    doc = None
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        doc = (body[0].lineno, body[0].end_lineno)
    n = 0
    for i in range(node.lineno, node.end_lineno + 1):
        s = lines[i - 1].strip()
        if (doc and doc[0] <= i <= doc[1]) or not s or s.startswith("#"):
            continue
        n += 1
    return n


def test_no_function_is_longer_than_80_lines_of_code():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(lines, node) > 80:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({_code_lines(lines, node)})")
    assert not long, long


def test_plots_and_accessors_import_no_tool():
    for sub in ("pl", "get"):
        for path in (SRC / sub).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    mod = ("." * node.level) + (node.module or "")
                    assert not mod.startswith(("..tl", "featurelens.tl")), f"{path.name} imports {mod}"


def test_learner_keywords_default_to_their_config():
    from featurelens.models import ICFLConfig, SAEConfig, TrainConfig

    for tool, cfg in ((fl.tl.sae, SAEConfig), (fl.tl.icfl, ICFLConfig)):
        flat = inspect.signature(tool).parameters
        for resolve in (cfg.resolve, TrainConfig.resolve):
            for name, p in inspect.signature(resolve).parameters.items():
                if name in flat and p.default is not inspect.Parameter.empty and name != "normalize":
                    assert flat[name].default == p.default, (tool.__name__, name)
    assert inspect.signature(TrainConfig.resolve).parameters["normalize"].default == "scale"
