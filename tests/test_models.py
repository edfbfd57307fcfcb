"""The torch learners and their numerical building blocks, against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import planted_dictionary
from sklearn.linear_model import orthogonal_mp

from featurelens.models import (
    ICFL,
    DeadTracker,
    Normalizer,
    Preprocess,
    SparseAutoencoder,
    TrainingDivergedError,
    fit,
    fit_whitening,
    geometric_median,
    pursuit,
)
from featurelens.models._pursuit_cpu import HAVE_NUMBA
from featurelens.models._sparse import gather_preact, sparse_decode, topk_indices
from featurelens.models.sae import _select_batch_topk


def _unit_rows(m, d, seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, d))
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def _dense_codes(idx, val, m):
    idx, val = np.asarray(idx), np.asarray(val)
    z = np.zeros((idx.shape[0], m))
    np.add.at(z, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), idx.ravel()), val.ravel())
    return z


# ---------------------------------------------------------------------------- sparse ops
@pytest.mark.parametrize(("n", "m", "k"), [(64, 240, 7), (32, 4096, 5), (16, 8192, 32)])
def test_topk_indices_matches_torch_topk(n, m, k):
    score = torch.randn(n, m, generator=torch.Generator().manual_seed(0))
    got = topk_indices(score, k).sort(dim=1).values
    want = torch.topk(score, k, dim=1).indices.sort(dim=1).values
    assert torch.equal(got, want)


def test_gather_preact_gradients_match_dense_autograd():
    g = torch.Generator().manual_seed(0)
    n, d, m = 20, 6, 40
    x = torch.randn(n, d, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(m, d, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(m, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(m, generator=g)[:4] for _ in range(n)])
    rows = torch.arange(n).repeat_interleave(4)
    cols = idx.reshape(-1)
    w = torch.randn(rows.numel(), dtype=torch.float64, generator=g)
    with torch.no_grad():
        pre = x @ W.T + b
    (gather_preact(x, W, b, rows, cols, pre) * w).sum().backward()
    got = [t.grad.clone() for t in (x, W, b)]
    for t in (x, W, b):
        t.grad = None
    ((x @ W.T + b)[rows, cols] * w).sum().backward()
    for a, t in zip(got, (x, W, b), strict=True):
        torch.testing.assert_close(a, t.grad)


@pytest.mark.parametrize("m", [50, 4096])
def test_sparse_decode_matches_dense_product(m):
    g = torch.Generator().manual_seed(1)
    n, d = 12, 5
    W = torch.randn(m, d, dtype=torch.float64, generator=g, requires_grad=True)
    rows = torch.arange(n).repeat_interleave(3)
    cols = torch.randint(0, m, (rows.numel(),), generator=g)
    vals = torch.randn(rows.numel(), dtype=torch.float64, generator=g, requires_grad=True)
    gout = torch.randn(n, d, dtype=torch.float64, generator=g)
    out = sparse_decode(rows, cols, vals, W, n)
    (out * gout).sum().backward()
    gw, gv = W.grad.clone(), vals.grad.clone()
    W.grad, vals.grad = None, None
    z = torch.zeros(n, m, dtype=torch.float64).index_put((rows, cols), vals, accumulate=True)
    ref = z @ W
    (ref * gout).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gw, W.grad)
    torch.testing.assert_close(gv, vals.grad)


@pytest.mark.parametrize("shape", [(64, 100), (512, 4096)])
def test_batch_topk_selection_is_exact(shape):
    act = torch.relu(torch.randn(*shape, generator=torch.Generator().manual_seed(2)))
    n_keep = 8 * shape[0]
    got = _select_batch_topk(act, n_keep)
    want = torch.sort(torch.topk(act.reshape(-1), n_keep).indices).values
    assert torch.equal(got, want)


# ---------------------------------------------------------------------------- preprocessing
def test_whitening_gives_identity_covariance_on_controls():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(8, 8))
    X = rng.normal(size=(3000, 8)) @ A + 5.0
    controls = np.arange(3000) < 1000
    w = fit_whitening(X, controls, eps=0.0)
    Y = w.transform(X)[controls].astype(np.float64)
    np.testing.assert_allclose(Y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.cov(Y, rowvar=False), np.eye(8), atol=1e-4)
    # matches an independent PCA of the controls (scikit-learn), up to component signs
    from sklearn.decomposition import PCA

    pca = PCA(whiten=True).fit(X[controls])
    ref = pca.transform(X)
    got = w.transform(X)
    signs = np.sign((ref * got).sum(0))
    np.testing.assert_allclose(got * signs, ref, rtol=1e-4, atol=1e-4)


def test_whitening_n_comps_and_unit_norm():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 10))
    w = fit_whitening(X, np.ones(500, bool), n_comps=4, unit_norm=True)
    Y = w.transform(X)
    assert Y.shape == (500, 4)
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1, rtol=1e-5)
    assert np.all(np.diff(w.variances) <= 0)


@pytest.mark.parametrize("method", ["none", "center", "scale", "standardize", "unit"])
def test_normalizer_round_trip(method):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 7)) * 4 + 2
    norm = Normalizer.fit(X, method)
    Y, norms = norm.transform(X)
    np.testing.assert_allclose(norm.inverse(Y, norms), X, rtol=1e-5, atol=1e-5)
    if method == "scale":
        assert np.isclose(((Y - Y.mean(0)) ** 2).sum(1).mean(), 7, rtol=1e-4)
        np.testing.assert_allclose(norm.mean, 0)
    if method == "standardize":
        np.testing.assert_allclose(Y.std(0), 1, rtol=1e-4)
    if method == "unit":
        np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1, rtol=1e-5)


def test_preprocess_chain_inverts_whitening_and_unit_norm():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 1
    w = fit_whitening(X, np.arange(300) < 100, unit_norm=True)
    pre = Preprocess(Normalizer.fit(w.transform(X), "unit"), w)
    Y, ctx = pre.transform(X)
    np.testing.assert_allclose(pre.inverse(Y, ctx), X, rtol=1e-4, atol=1e-4)
    again = Preprocess.from_dict(pre.to_dict())
    np.testing.assert_allclose(again.transform(X)[0], Y, atol=1e-5)  # stored as float32


def test_geometric_median_matches_scipy_minimiser():
    from scipy.optimize import minimize

    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(size=(50, 3)), rng.normal(size=(5, 3)) + 30])
    ref = minimize(
        lambda y: np.linalg.norm(X - y, axis=1).sum(),
        X.mean(0),
        method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000},
    ).x
    got = geometric_median(torch.tensor(X, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-3)


# ---------------------------------------------------------------------------- pursuit
def test_orthogonal_pursuit_equals_sklearn_omp():
    d, m, n, J = 32, 64, 40, 6
    W = _unit_rows(m, d, 0)
    X = np.random.default_rng(1).normal(size=(n, d))
    ref = orthogonal_mp(W.T, X.T, n_nonzero_coefs=J).T  # (n, m)
    Wt = torch.tensor(W, dtype=torch.float64)
    idx, val = pursuit(
        torch.tensor(X) @ Wt.T, Wt @ Wt.T, n_iter=J, n_per_iter=1, orthogonal=True, selection="abs", ridge=0.0
    )
    np.testing.assert_allclose(_dense_codes(idx, val, m), ref, atol=1e-8)


def test_icfl_model_orthogonal_encoder_equals_sklearn_omp():
    d, m, n, J = 24, 96, 30, 8
    W = _unit_rows(m, d, 2)
    X = np.random.default_rng(3).normal(size=(n, d)).astype(np.float32)
    model = ICFL.from_arrays(
        {"decoder": W.astype(np.float32), "decoder_bias": np.zeros(d, np.float32)},
        n_iter=J,
        n_per_iter=1,
        orthogonal=True,
        selection="abs",
        bias="none",
        tol=0.0,
    )
    z = model.encode(torch.from_numpy(X)).numpy()
    ref = orthogonal_mp(W.T.astype(np.float32), X.T, n_nonzero_coefs=J).T
    np.testing.assert_allclose(z, ref, atol=2e-4)
    assert (np.count_nonzero(z, axis=1) == J).all()


def test_icfl_pursuit_residual_is_orthogonal_to_each_iterations_atoms():
    """ICFL's per-iteration least squares: the residual after step t is orthogonal to the atoms of step t."""
    d, m, L = 20, 80, 4
    W = torch.tensor(_unit_rows(m, d, 4))
    x = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    idx, val = pursuit(x @ W.T, W @ W.T, n_iter=3, n_per_iter=L, ridge=0.0)
    r = x.clone()
    for t in range(3):
        S, a = idx[:, t * L : (t + 1) * L], val[:, t * L : (t + 1) * L]
        r = r - torch.einsum("bl,bld->bd", a, W[S])
        torch.testing.assert_close(torch.einsum("bd,bld->bl", r, W[S]), torch.zeros(5, L, dtype=torch.float64))
        if t < 2:  # the next iteration takes the L atoms most correlated with this residual
            nxt = idx[:, (t + 1) * L : (t + 2) * L].sort(1).values
            torch.testing.assert_close(nxt, torch.topk(r @ W.T, L, dim=1).indices.sort(1).values)
    assert (val != 0).all()


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("selection", ["signed", "abs"])
@pytest.mark.parametrize("m", [96, 4096])
def test_cpu_kernel_equals_torch_pursuit(selection, m):
    d, n = 48, 64
    W = torch.tensor(_unit_rows(m, d, 5), dtype=torch.float32)
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    X = X / X.norm(dim=1, keepdim=True)
    model = ICFL.from_arrays(
        {"decoder": W.numpy(), "decoder_bias": np.zeros(d, np.float32)},
        n_iter=4,
        n_per_iter=3,
        selection=selection,
        bias="none",
    )
    i1, v1 = model.codes(X)
    model.use_kernel = False
    i2, v2 = model.codes(X)
    np.testing.assert_allclose(_dense_codes(i1, v1, m), _dense_codes(i2, v2, m), atol=1e-5)


def test_pursuit_tol_stops_when_residual_vanishes():
    d, m = 8, 32
    W = torch.tensor(_unit_rows(m, d, 7))
    z = torch.zeros(1, m, dtype=torch.float64)
    z[0, [3, 9]] = torch.tensor([1.0, 0.7], dtype=torch.float64)
    x = z @ W
    idx, val = pursuit(
        x @ W.T,
        W @ W.T,
        n_iter=6,
        n_per_iter=1,
        orthogonal=True,
        selection="abs",
        ridge=0.0,
        energy=(x * x).sum(1),
        tol=1e-10,
    )
    assert set(idx[0, val[0] != 0].tolist()) == {3, 9}
    np.testing.assert_allclose(_dense_codes(idx, val, m), z.numpy(), atol=1e-8)


# ---------------------------------------------------------------------------- learners
def _recovered(W_true, W_learned, thr=0.95):
    return float(((W_true @ W_learned.T).max(axis=1) > thr).mean())


def test_topk_sae_forward_matches_definition():
    g = torch.Generator().manual_seed(0)
    model = SparseAutoencoder(6, 20, architecture="topk", k=3, generator=g)
    with torch.no_grad():
        model.b_enc.normal_(generator=g)
        model.b_dec.normal_(generator=g)
    x = torch.randn(10, 6, generator=g)
    pre = (x - model.b_dec) @ model.W_enc.T + model.b_enc
    ref = torch.zeros_like(pre)
    top = torch.topk(pre, 3, dim=1)
    ref.scatter_(1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(model.encode(x), ref)
    torch.testing.assert_close(model.decode(ref), ref @ model.W_dec + model.b_dec)


def test_dead_tracker_windows():
    tr = DeadTracker(3, window=10, device=torch.device("cpu"))
    tr.update(torch.tensor([1, 0, 0]), 5)
    assert tr.silent_mask().tolist() == [False, False, False]
    tr.update(torch.tensor([0, 0, 2]), 5)  # window of 10 completes
    assert tr.rate().tolist() == [0.1, 0.0, 0.2]
    assert tr.dead_fraction() == pytest.approx(1 / 3)
    tr.update(torch.tensor([0, 0, 0]), 5)
    assert tr.silent_mask().tolist() == [True, True, False]  # f0 last fired 10 samples ago


def test_divergence_raises_and_keeps_finite_weights():
    X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    model = SparseAutoencoder(4, 16, architecture="vanilla", generator=torch.Generator().manual_seed(0))
    with pytest.raises(TrainingDivergedError, match="diverged"):
        fit(
            model,
            X,
            n_steps=200,
            batch_size=32,
            lr=1e30,
            generator=torch.Generator().manual_seed(1),
            dead_window=64,
            progress=False,
        )
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_topk_learners_recover_planted_atoms_model_level(arch):
    X, W, _ = planted_dictionary(n=2000, seed=3)
    Xt = torch.from_numpy(X / X.std())
    model = SparseAutoencoder(32, 128, architecture=arch, k=3, generator=torch.Generator().manual_seed(0))
    model.init_from_data(Xt)
    fit(
        model,
        Xt,
        n_steps=700,
        batch_size=256,
        lr=3e-3,
        generator=torch.Generator().manual_seed(1),
        dead_window=20000,
        progress=False,
    )
    assert _recovered(W, model.W_dec.detach().numpy()) >= 0.9
    if arch == "batchtopk":
        assert np.isfinite(float(model.threshold)) and float(model.threshold) > 0
        l0 = (model.encode(Xt) > 0).sum(1).float().mean()
        assert 1.5 < float(l0) < 6


def test_icfl_reset_redraws_duplicates():
    model = ICFL(8, 10, n_iter=1, n_per_iter=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.W[5] = model.W[2]
        model.W[7] = -model.W[2]
    assert model.duplicate_atoms().tolist() == [5]
    model.selection = "abs"
    assert model.duplicate_atoms().tolist() == [5, 7]
    assert model.reset_duplicates() == 2
    G = (model.W @ model.W.T).detach().abs().fill_diagonal_(0)
    assert float(G.max()) < 0.9
    torch.testing.assert_close(model.W.norm(dim=1), torch.ones(10))
