"""Checkpoint and resume of the learners: an interrupted run continues bit for bit on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featurelens as fl
from featurelens.models import ICFL, CheckpointError, SparseAutoencoder
from featurelens.models import train as train_mod


@pytest.fixture(scope="module")
def kang():
    return fl.datasets.kang2018(preprocess=True)


def _interrupt_at(monkeypatch, cls, at: int) -> None:
    """Make ``cls`` raise KeyboardInterrupt (as Ctrl-C would) inside training step ``at``."""
    original = cls.after_optimizer_step

    def hook(self, step, optimizer):
        if step == at:
            raise KeyboardInterrupt
        return original(self, step, optimizer)

    monkeypatch.setattr(cls, "after_optimizer_step", hook)


CASES = [
    ("sae", SparseAutoencoder, {"architecture": "topk", "n_features": 64, "n_steps": 1000}, 500),
    ("sae", SparseAutoencoder, {"architecture": "batchtopk", "n_features": 64, "n_steps": 300}, 150),
    ("icfl", ICFL, {"n_features": 48, "n_steps": 200, "reset_every": 30, "reset_threshold": 0.4}, 100),
]


@pytest.mark.parametrize(("tool", "cls", "kw", "at"), CASES, ids=["topk", "batchtopk", "icfl"])
def test_interrupted_run_resumes_to_the_same_dictionary(kang, tmp_path, monkeypatch, tool, cls, kw, at):
    learn = getattr(fl.tl, tool)
    full = kang.copy()
    learn(full, "X_pca", progress=False, **kw)

    path = tmp_path / "run.pt"
    adata = kang.copy()
    with monkeypatch.context() as m:
        _interrupt_at(m, cls, at)
        with pytest.raises(KeyboardInterrupt):
            learn(adata, "X_pca", checkpoint=path, checkpoint_every=50, progress=False, **kw)
    assert "X_sae" not in adata.obsm and "sae" not in adata.uns and "icfl" not in adata.uns  # unchanged
    state = torch.load(path, weights_only=True)
    assert state["step"] == at and not (tmp_path / "run.pt.partial").exists()

    learn(adata, "X_pca", checkpoint=path, checkpoint_every=50, resume=True, progress=False, **kw)
    key = tool
    np.testing.assert_array_equal(adata.uns[key]["decoder"], full.uns[key]["decoder"])
    np.testing.assert_array_equal(adata.uns[key]["decoder_bias"], full.uns[key]["decoder_bias"])
    assert (adata.obsm[f"X_{key}"] != full.obsm[f"X_{key}"]).nnz == 0
    h, hf = adata.uns[key]["history"], full.uns[key]["history"]
    np.testing.assert_array_equal(h["step"], hf["step"])
    np.testing.assert_allclose(h["loss"], hf["loss"], rtol=0, atol=0)
    if tool == "icfl":
        assert adata.uns[key]["metrics"]["n_resets"] == full.uns[key]["metrics"]["n_resets"] > 0
    assert torch.load(path, weights_only=True)["step"] == kw["n_steps"]


def test_checkpoint_of_another_run_is_refused(kang, tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    adata = kang.copy()
    fl.tl.sae(adata, "X_pca", n_features=32, n_steps=20, checkpoint=path, progress=False)
    before = adata.uns["sae"]["decoder"].copy()
    with pytest.raises(CheckpointError, match="n_features 32 in the checkpoint vs 64 here"):
        fl.tl.sae(adata, "X_pca", n_features=64, n_steps=20, checkpoint=path, resume=True, progress=False)
    np.testing.assert_array_equal(adata.uns["sae"]["decoder"], before)  # unchanged
    other = adata.copy()
    other.obsm["X_pca"] = other.obsm["X_pca"][::-1].copy()
    with pytest.raises(CheckpointError, match="n_obs 2000 in the checkpoint vs 1500 here"):
        fl.tl.sae(other[:1500].copy(), "X_pca", n_features=32, n_steps=20, checkpoint=path, resume=True,
                  progress=False)  # fmt: skip
    monkeypatch.setattr(train_mod, "_version", lambda: "99.0")
    with pytest.raises(CheckpointError, match=r"written by featurelens .* this is 99\.0"):
        fl.tl.sae(adata, "X_pca", n_features=32, n_steps=20, checkpoint=path, resume=True, progress=False)


def test_bad_checkpoint_paths(kang, tmp_path):
    adata = kang.copy()
    with pytest.raises(CheckpointError, match="does not exist; create"):
        fl.tl.sae(adata, "X_pca", n_steps=5, checkpoint=tmp_path / "missing" / "run.pt", progress=False)
    with pytest.raises(CheckpointError, match="is a directory"):
        fl.tl.sae(adata, "X_pca", n_steps=5, checkpoint=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        fl.tl.icfl(adata, "X_pca", n_steps=5, checkpoint=tmp_path / "none.pt", resume=True, progress=False)
    with pytest.raises(ValueError, match="resume=True needs `checkpoint=`"):
        fl.tl.sae(adata, "X_pca", n_steps=5, resume=True, progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Cannot read the checkpoint"):
        fl.tl.sae(adata, "X_pca", n_steps=5, checkpoint=tmp_path / "junk.pt", resume=True, progress=False)
    with pytest.raises(ValueError, match="`checkpoint_every`"):
        fl.tl.sae(adata, "X_pca", n_steps=5, checkpoint=tmp_path / "a.pt", checkpoint_every=0, progress=False)
    assert "sae" not in adata.uns and "X_sae" not in adata.obsm
