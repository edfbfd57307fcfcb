"""Training from disk: dask, backed, lazily read and memory-mapped embeddings stream through a shuffle buffer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from helpers import planted_dictionary

import featurelens as fl
from featurelens.models import SparseAutoencoder
from featurelens.models import data as data_mod
from featurelens.models.data import RowSource, ShuffleBuffer

da = pytest.importorskip("dask.array")  # installed with the test extra


@pytest.fixture(scope="module")
def planted():
    X, W, _ = planted_dictionary(n=3000, d=32, m=64, s=3, seed=0)
    adata = ad.AnnData(np.zeros((X.shape[0], 1), dtype=np.float32))
    adata.obsm["X_emb"] = X
    return adata, W


def _small_chunks(monkeypatch, chunk_rows: int, chunks_per_buffer: int, d: int) -> None:
    monkeypatch.setattr(data_mod, "CHUNK_BYTES", chunk_rows * 4 * d)
    monkeypatch.setattr(data_mod, "BUFFER_BYTES", chunks_per_buffer * chunk_rows * 4 * d)


def _recovered(decoder: np.ndarray, W: np.ndarray) -> float:
    """Share of planted atoms with a learned feature at cosine > 0.9."""
    D = decoder / np.linalg.norm(decoder, axis=1, keepdims=True)
    return float(((W @ D.T).max(axis=1) > 0.9).mean())


def test_one_chunk_streams_exactly_like_memory(planted):
    adata, _ = planted
    mem = adata.copy()
    fl.tl.sae(mem, "X_emb", n_features=64, n_steps=300, progress=False)
    lazy = adata.copy()
    lazy.obsm["X_emb"] = da.from_array(adata.obsm["X_emb"], chunks=(500, 32))  # one read chunk: all 3,000 rows
    fl.tl.sae(lazy, "X_emb", n_features=64, n_steps=300, progress=False)
    assert lazy.uns["sae"]["params"]["streamed"] and lazy.uns["sae"]["params"]["chunk_rows"] == 3000
    np.testing.assert_allclose(lazy.uns["sae"]["decoder"], mem.uns["sae"]["decoder"], rtol=1e-5, atol=1e-6)
    assert lazy.uns["sae"]["metrics"]["fvu"] == pytest.approx(mem.uns["sae"]["metrics"]["fvu"], rel=1e-5)


@pytest.mark.parametrize("tool", ["sae", "icfl"])
def test_many_chunks_learn_the_planted_dictionary(planted, monkeypatch, tool):
    adata, W = planted
    _small_chunks(monkeypatch, chunk_rows=100, chunks_per_buffer=5, d=32)
    common = {"n_features": 128, "n_steps": 600, "batch_size": 256, "lr": 3e-3}  # as in test_dictionary
    kw = {**common, "k": 3} if tool == "sae" else {**common, "n_iter": 3, "n_per_iter": 1}
    mem = adata.copy()
    getattr(fl.tl, tool)(mem, "X_emb", progress=False, **kw)
    lazy = adata.copy()
    lazy.obsm["X_emb"] = da.from_array(adata.obsm["X_emb"], chunks=(100, 32))
    getattr(fl.tl, tool)(lazy, "X_emb", progress=False, **kw)
    p = lazy.uns[tool]["params"]
    assert p["chunk_rows"] == 100 and p["buffer_rows"] == 100 * -(-max(500, p["batch_size"]) // 100)
    assert lazy.obsm[f"X_{tool}"].shape == (3000, kw["n_features"])
    got, ref = _recovered(lazy.uns[tool]["decoder"], W), _recovered(mem.uns[tool]["decoder"], W)
    assert got >= 0.9 and got >= ref - 0.05, (got, ref)
    assert lazy.uns[tool]["metrics"]["fvu"] < 1.5 * mem.uns[tool]["metrics"]["fvu"] + 0.01


def test_shuffle_buffer_visits_every_row_once_per_epoch():
    X = np.arange(1000, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    buf = ShuffleBuffer(RowSource(X, chunk_rows=50), lambda r: r, buffer_rows=200,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    rows = torch.cat([buf.batch(50) for _ in range(20)])[:, 0].numpy()  # 1,000 rows: one epoch
    np.testing.assert_array_equal(np.sort(rows), np.arange(1000))
    assert not np.array_equal(rows, np.arange(1000))  # shuffled
    first = rows[:200]  # the first buffer holds 4 whole chunks
    assert len(np.unique(first // 50)) == 4


def test_backed_and_lazy_files_train_like_memory(planted, tmp_path):
    adata, _ = planted
    emb = ad.AnnData(adata.obsm["X_emb"].copy())
    emb.write_h5ad(tmp_path / "emb.h5ad")
    emb.write_zarr(tmp_path / "emb.zarr")
    mem = emb.copy()
    fl.tl.sae(mem, "X", n_features=32, n_steps=200, progress=False)
    backed = ad.read_h5ad(tmp_path / "emb.h5ad", backed="r")
    fl.tl.sae(backed, "X", n_features=32, n_steps=200, progress=False)
    np.testing.assert_allclose(backed.uns["sae"]["decoder"], mem.uns["sae"]["decoder"], rtol=1e-5, atol=1e-6)
    from anndata.experimental import read_lazy

    lazy = read_lazy(tmp_path / "emb.zarr")
    assert type(lazy.X).__module__.startswith("dask")
    out = fl.tl.sae(lazy, "X", n_features=32, n_steps=200, progress=False, copy=True)
    np.testing.assert_allclose(out.uns["sae"]["decoder"], mem.uns["sae"]["decoder"], rtol=1e-5, atol=1e-6)


def test_memmap_streams(planted, tmp_path):
    adata, _ = planted
    path = tmp_path / "emb.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=adata.obsm["X_emb"].shape)
    mm[:] = adata.obsm["X_emb"]
    mm.flush()
    b = adata.copy()
    b.obsm["X_emb"] = np.memmap(path, dtype=np.float32, mode="r", shape=adata.obsm["X_emb"].shape)
    fl.tl.icfl(b, "X_emb", n_features=32, n_steps=50, progress=False)
    assert b.uns["icfl"]["params"]["streamed"] and b.obsm["X_icfl"].shape == (3000, 32)


def test_nan_rows_in_a_dask_embedding_are_named(planted):
    adata, _ = planted
    X = adata.obsm["X_emb"].copy()
    X[[10, 2500, 2501]] = np.nan
    bad = adata.copy()
    bad.obsm["X_emb"] = da.from_array(X, chunks=(1000, 32))
    with pytest.raises(ValueError, match=r"has 3 of 3000 rows with NaN or Inf values \(the first is row 10\)"):
        fl.tl.sae(bad, "X_emb", n_steps=10, progress=False)
    assert "sae" not in bad.uns and "X_sae" not in bad.obsm


def test_streamed_run_resumes_bit_for_bit(planted, monkeypatch, tmp_path):
    adata, _ = planted
    _small_chunks(monkeypatch, chunk_rows=100, chunks_per_buffer=3, d=32)
    lazy = adata.copy()
    lazy.obsm["X_emb"] = da.from_array(adata.obsm["X_emb"], chunks=(100, 32))
    full = lazy.copy()
    fl.tl.sae(full, "X_emb", n_features=64, n_steps=300, batch_size=128, progress=False)
    original = SparseAutoencoder.after_optimizer_step

    def hook(self, step, optimizer):
        if step == 170:
            raise KeyboardInterrupt
        return original(self, step, optimizer)

    path = tmp_path / "run.pt"
    with monkeypatch.context() as m:
        m.setattr(SparseAutoencoder, "after_optimizer_step", hook)
        with pytest.raises(KeyboardInterrupt):
            fl.tl.sae(lazy, "X_emb", n_features=64, n_steps=300, batch_size=128, checkpoint=path, checkpoint_every=45,
                      progress=False)  # fmt: skip
    assert torch.load(path, weights_only=True)["step"] == 135  # inside a buffer: its chunks are read again
    fl.tl.sae(lazy, "X_emb", n_features=64, n_steps=300, batch_size=128, checkpoint=path, checkpoint_every=45,
              resume=True, progress=False)  # fmt: skip
    np.testing.assert_array_equal(lazy.uns["sae"]["decoder"], full.uns["sae"]["decoder"])


def test_memory_sampler_moves_batches_not_the_data_to_the_device():
    from featurelens.models.data import MemorySampler

    X = torch.arange(60, dtype=torch.float32).reshape(20, 3)
    same = MemorySampler(X, torch.Generator().manual_seed(0))
    moved = MemorySampler(X, torch.Generator().manual_seed(0), device="meta")
    a, b = same.batch(5), moved.batch(5)
    assert a.device.type == "cpu" and b.device.type == "meta" and b.shape == (5, 3)
    assert moved.X.device.type == "cpu"  # the data stays in host memory
    np.testing.assert_array_equal(same.state_dict()["perm"], moved.state_dict()["perm"])  # same batch order
