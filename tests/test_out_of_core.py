"""Statistics on expression and activations that stay on disk: backed h5ad, lazily read zarr, dask arrays.

Every tool gives the results of the in-memory path (to rel 1e-6) on a 20,000-cell case, on dask's
default scheduler and on a ``dask.distributed`` client.
"""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import featurelens as fl
from featurelens._blockwise import block_rows, reduce_rows, row_blocks, take_rows
from featurelens.stats import set_moments

da = pytest.importorskip("dask.array")
read_lazy = pytest.importorskip("anndata.experimental").read_lazy

N_CELLS, N_GENES = 20_000, 150


def _simulated(seed: int = 0) -> ad.AnnData:
    """Counts from four cell types and an interferon-like program in half of the cells, log-normalised."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 4, N_CELLS)
    stim = rng.random(N_CELLS) < 0.5
    base = rng.gamma(0.3, 1.0, (4, N_GENES))
    rate = base[types] * rng.gamma(5.0, 0.2, (N_CELLS, 1))
    rate[:, :10] += 2.0 * stim[:, None] * (types[:, None] == 0)
    counts = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    lib = np.asarray(counts.sum(1)).ravel()
    X = sp.csr_matrix(sp.diags(1e4 / np.maximum(lib, 1)) @ counts, dtype=np.float32)
    X.data = np.log1p(X.data)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.array(["A", "B", "C", "D"])[types]),
            "condition": pd.Categorical(np.where(stim, "STIM", "CTRL")),
            "sample": pd.Categorical(rng.integers(0, 4, N_CELLS).astype(str)),
        },
        index=[f"c{i}" for i in range(N_CELLS)],
    )
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))
    dense = X.toarray()
    dense -= dense.mean(0)
    _, _, vt = np.linalg.svd(dense[:4000], full_matrices=False)
    adata.obsm["X_pca"] = (dense @ vt[:12].T).astype(np.float32)
    adata.layers["dense"] = X.toarray()
    return adata


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The in-memory AnnData with a trained dictionary, and its h5ad and zarr copies."""
    adata = _simulated()
    fl.tl.sae(adata, "X_pca", n_features=24, k=4, n_steps=150, random_state=0, progress=False)
    root = tmp_path_factory.mktemp("ooc")
    adata.write_h5ad(root / "a.h5ad")
    adata.write_zarr(root / "a.zarr")
    return adata, root


def _run_all(adata) -> ad.AnnData:
    fl.tl.feature_stats(adata, "sae")
    fl.tl.feature_types(adata, "sae", "cell_type")
    fl.tl.selectivity(adata, "sae", "condition")
    fl.tl.high_vs_low(adata, "sae", groupby="cell_type", progress=False)
    return adata


def _assert_same(ref: ad.AnnData, other: ad.AnnData) -> None:
    a, b = fl.get.features(ref, "sae"), fl.get.features(other, "sae")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)
    pd.testing.assert_frame_equal(
        fl.get.feature_types(ref, "sae", "cell_type"), fl.get.feature_types(other, "sae", "cell_type"), rtol=1e-6
    )
    pd.testing.assert_frame_equal(
        fl.get.selectivity(ref, "sae", "condition"), fl.get.selectivity(other, "sae", "condition"), rtol=1e-6
    )
    ra, rb = ref.uns["sae"]["dge"]["results"], other.uns["sae"]["dge"]["results"]
    assert len(ra) > 100  # real signal: the interferon-like program in type A
    pd.testing.assert_frame_equal(ra, rb, check_exact=False, rtol=1e-6)
    pd.testing.assert_frame_equal(ref.uns["sae"]["dge"]["summary"], other.uns["sae"]["dge"]["summary"])
    np.testing.assert_allclose(ref.varm["sae_log2fc"], np.asarray(other.varm["sae_log2fc"]), rtol=1e-6)


@pytest.fixture(scope="module")
def reference(stores):
    adata, _ = stores
    return _run_all(adata.copy())


def test_backed_h5ad_gives_the_in_memory_results(stores, reference):
    _, root = stores
    backed = ad.read_h5ad(root / "a.h5ad", backed="r")
    assert type(backed.X).__module__.startswith("anndata")  # X stays on disk
    _assert_same(reference, _run_all(backed))
    backed.file.close()


def test_lazy_zarr_gives_the_in_memory_results(stores, reference):
    _, root = stores
    lazy = read_lazy(root / "a.zarr")
    assert type(lazy.X).__module__.startswith("dask")
    assert type(lazy.obsm["X_sae"]).__module__.startswith("dask")  # activations on disk too
    _assert_same(reference, _run_all(lazy))


def test_dask_arrays_in_memory_object_give_the_same_results(stores, reference):
    adata, _ = stores
    other = adata.copy()
    other.X = da.from_array(adata.layers["dense"], chunks=(3000, 50))  # dense chunks, several column chunks
    other.obsm["X_sae"] = da.from_array(adata.obsm["X_sae"].toarray(), chunks=(7000, -1))
    _assert_same(reference, _run_all(other))


def test_distributed_client_gives_the_same_results(stores, reference):
    distributed = pytest.importorskip("distributed")
    _, root = stores
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        lazy = read_lazy(root / "a.zarr")
        with distributed.get_task_stream(client) as stream:
            out = _run_all(lazy)
    names = {t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in stream.data}
    assert any("_dask_task" in str(n) for n in names)  # the block sums ran on the client's worker
    _assert_same(reference, out)


def test_wilcoxon_and_pseudobulk_read_rows_from_disk(stores):
    adata, root = stores
    lazy = read_lazy(root / "a.zarr")
    for method, extra in (("wilcoxon", {}), ("pseudobulk", {"sample_key": "sample"})):
        kw = dict(features=["f0", "f1", "f2"], method=method, progress=False, **extra)
        ref = adata.copy()
        fl.tl.high_vs_low(ref, "sae", **kw)
        fl.tl.high_vs_low(lazy, "sae", **kw)
        pd.testing.assert_frame_equal(
            ref.uns["sae"]["dge"]["results"], lazy.uns["sae"]["dge"]["results"], check_exact=False, rtol=1e-6
        )


def test_steer_with_expression_on_disk(stores):
    adata, root = stores
    kw = dict(groupby="cell_type", group="A", value=2.0, n_bootstrap=20, progress=False)
    ref = adata.copy()
    fl.tl.steer(ref, "sae", "f0", **kw)
    backed = ad.read_h5ad(root / "a.h5ad", backed="r")
    fl.tl.steer(backed, "sae", "f0", **kw)
    a, b = fl.get.steering(ref, "sae"), fl.get.steering(backed, "sae")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-9)
    assert np.isfinite(a["r2"]).mean() > 0.5
    backed.file.close()


# ---------------------------------------------------------------------- the block layer itself
def test_set_moments_blockwise_equals_direct_sums_for_every_storage():
    rng = np.random.default_rng(1)
    X = sp.random(3000, 40, density=0.2, format="csr", random_state=2, dtype=np.float32)
    X.data = rng.integers(1, 6, X.nnz).astype(np.float32)
    sets = [rng.choice(3000, size, replace=False) for size in (5, 300, 2900)]
    ind = sp.csr_matrix(
        (np.ones(sum(map(len, sets))), (np.repeat(np.arange(3), [len(s) for s in sets]), np.concatenate(sets))),
        shape=(3, 3000),
    )
    dense = X.toarray().astype(np.float64)
    want_sum = np.stack([dense[s].sum(0) for s in sets])
    want_sq = np.stack([(dense[s] ** 2).sum(0) for s in sets])
    want_t = np.stack([np.expm1(dense[s]).sum(0) for s in sets])
    want_det = np.stack([(dense[s] > 0).sum(0) for s in sets])
    for source in (X, X.toarray(), da.from_array(X.toarray(), chunks=(700, 15))):
        for rows in (None, 512):
            m = set_moments(source, ind, transform=np.expm1, row_chunk=rows)
            np.testing.assert_allclose(m.sum, want_sum, rtol=1e-12)
            np.testing.assert_allclose(m.sumsq, want_sq, rtol=1e-12)
            np.testing.assert_allclose(m.sum_transformed, want_t, rtol=1e-12)
            np.testing.assert_array_equal(m.detected, want_det)
            np.testing.assert_array_equal(m.n, [5, 300, 2900])
    # a transform the kernel does not know is applied per block
    m = set_moments(X, ind, transform=np.sqrt, row_chunk=1000)
    np.testing.assert_allclose(m.sum_transformed, np.stack([np.sqrt(dense[s]).sum(0) for s in sets]), rtol=1e-12)


def test_row_blocks_cover_every_row_once_and_take_rows_keeps_order(tmp_path):
    X = sp.random(1000, 30, density=0.1, format="csr", random_state=3, dtype=np.float32)
    a = ad.AnnData(X)
    a.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    for source in (X, backed.X, da.from_array(X.toarray(), chunks=(128, 30))):
        starts = [(s, e) for s, e, _ in row_blocks(source, rows=300)]
        assert starts[0][0] == 0 and starts[-1][1] == 1000
        assert all(a[1] == b[0] for a, b in itertools.pairwise(starts))
        total = reduce_rows(lambda s, e, blk: np.asarray(blk.sum(0)).ravel(), source, rows=300)
        np.testing.assert_allclose(total, np.asarray(X.sum(0)).ravel(), rtol=1e-5)
        rows = np.array([999, 3, 3, 500, 0])
        got = take_rows(source, rows)
        got = got.toarray() if sp.issparse(got) else got
        np.testing.assert_array_equal(got, X.toarray()[rows])
    assert block_rows(X, 4096) == 256  # never fewer than 256 rows
    backed.file.close()


# ---------------------------------------------------------------------- encoding out of core
@pytest.mark.parametrize("store", ["codes.zarr", "codes.h5"])
def test_encode_streams_an_embedding_on_disk_into_a_store(stores, tmp_path, store):
    adata, root = stores
    lazy = read_lazy(root / "a.zarr")
    assert type(lazy.obsm["X_pca"]).__module__.startswith("dask")
    fl.tl.encode(lazy, "sae", out=tmp_path / store, batch_size=1000, progress=False)
    codes = lazy.obsm["X_sae"]
    assert type(codes).__module__.startswith("dask")  # on disk, read lazily
    got = codes.compute()
    want = adata.obsm["X_sae"]
    assert got.shape == want.shape and got.nnz == want.nnz
    np.testing.assert_allclose(got.toarray(), want.toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy.obs["sae_cosine"].to_numpy(), adata.obs["sae_cosine"].to_numpy(), rtol=1e-5)
    assert lazy.uns["sae"]["quality"]["fvu"] == pytest.approx(adata.uns["sae"]["quality"]["fvu"], rel=1e-4)
    # the stored element is a regular sparse element of the store
    reread = ad.io.read_elem(_group(tmp_path / store)["obsm/X_sae"])
    np.testing.assert_array_equal(reread.indptr, want.indptr)
    # and the tools read it block by block
    fl.tl.feature_stats(lazy, "sae")
    ref = adata.copy()
    fl.tl.feature_stats(ref, "sae")
    pd.testing.assert_frame_equal(fl.get.features(ref, "sae"), fl.get.features(lazy, "sae"), rtol=1e-5)


def _group(path):
    if str(path).endswith(".h5"):
        import h5py

        return h5py.File(path, "r")
    import zarr

    return zarr.open_group(str(path), mode="r")


def test_encode_into_the_backed_file_itself_and_read_only_errors(stores, tmp_path):
    adata, root = stores
    import shutil

    path = tmp_path / "copy.h5ad"
    shutil.copy(root / "a.h5ad", path)
    ro = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match=r"open read-only.*backed='r\+'"):
        fl.tl.encode(ro, "sae", out=path, progress=False)
    assert sp.issparse(ro.obsm["X_sae"])  # unchanged
    ro.file.close()
    rw = ad.read_h5ad(path, backed="r+")
    fl.tl.encode(rw, "sae", out=path, progress=False)
    rw.file.close()
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.obsm["X_sae"].toarray(), adata.obsm["X_sae"].toarray(), rtol=1e-5, atol=1e-6)
    import h5py

    with h5py.File(path, "r") as f, pytest.raises(ValueError, match="open read-only"):
        fl.tl.encode(adata.copy(), "sae", out=f, progress=False)
    with pytest.raises(ValueError, match="folder does not exist"):
        fl.tl.encode(adata.copy(), "sae", out=tmp_path / "missing" / "codes.zarr", progress=False)


def test_lazy_codes_survive_write_h5ad(stores, tmp_path):
    adata, _ = stores
    a = adata.copy()
    fl.tl.encode(a, "sae", out=tmp_path / "c.zarr", progress=False)
    a.write_h5ad(tmp_path / "round.h5ad")
    back = ad.read_h5ad(tmp_path / "round.h5ad")
    np.testing.assert_allclose(back.obsm["X_sae"].toarray(), adata.obsm["X_sae"].toarray(), rtol=1e-5, atol=1e-6)


def test_copy_and_views_of_a_backed_anndata_say_how_to_write_results(stores):
    _, root = stores
    backed = ad.read_h5ad(root / "a.h5ad", backed="r")
    before = set(backed.uns["sae"])
    with pytest.raises(ValueError, match=r"copy=True.*backed by .*write_h5ad\(new_path\).*to_memory"):
        fl.tl.feature_stats(backed, "sae", copy=True)
    with pytest.raises(ValueError, match=r"view of an AnnData backed by .*adata\[mask\]\.to_memory\(\)"):
        fl.tl.feature_stats(backed[:100], "sae")
    assert set(backed.uns["sae"]) == before  # nothing written
    backed.file.close()


def test_training_streamed_from_disk_writes_its_codes_into_a_store(stores, tmp_path):
    _, root = stores
    lazy = read_lazy(root / "a.zarr")
    kw = dict(n_features=16, k=3, n_steps=40, random_state=1, progress=False, key_added="s2")
    fl.tl.sae(lazy, "X_pca", out=tmp_path / "train_codes.zarr", **kw)
    codes = lazy.obsm["X_s2"]
    assert type(codes).__module__.startswith("dask")
    mem = lazy.uns["s2"]
    again = read_lazy(root / "a.zarr")
    fl.tl.sae(again, "X_pca", **kw)  # the same run with the codes in memory
    np.testing.assert_array_equal(mem["decoder"], again.uns["s2"]["decoder"])
    got, want = codes.compute(), again.obsm["X_s2"]
    assert (got != want).nnz == 0
    assert mem["metrics"]["l0"] == pytest.approx(want.nnz / N_CELLS)
    assert mem["metrics"]["l0"] <= 3


def test_enrichment_universe_is_counted_block_by_block(stores):
    from featurelens.tl._enrich import _universe

    adata, root = stores
    lazy = read_lazy(root / "a.zarr")
    want_pos, want_ids = _universe(adata, None, None)
    got_pos, got_ids = _universe(lazy, None, None)
    np.testing.assert_array_equal(got_pos, want_pos)
    assert list(got_ids) == list(want_ids) and 0 < len(want_pos) <= N_GENES
