"""A fused CPU kernel for ICFL's (non-orthogonal) batched pursuit, compiled with numba.

Per sample, the correlations ``c`` with all ``M`` atoms (one row, kept in the L1 cache) are
updated in place with ``L`` rows of the Gram matrix and the next ``L`` atoms are picked in one
scan, instead of separate full passes for update, group maxima and top-k. Reading the ``L``
Gram rows is the memory-bound part. The ``L x L`` least-squares systems are formed from the
float32 atoms and solved in float64.

The samples of a batch are processed in parallel threads.
"""

from __future__ import annotations

import numpy as np

try:  # numba ships with scanpy; without it the torch implementation is used
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

_GROUPS = 128
_FM = {"reassoc", "contract", "nsz", "arcp"}


if HAVE_NUMBA:

    @njit(cache=True, nogil=True, inline="always", fastmath=_FM)
    def _top_l(c, L, signed, S, best):
        for i in range(L):
            best[i] = -np.inf
            S[i] = 0
        mn = -np.inf
        mpos = 0
        for m in range(c.shape[0]):
            v = c[m] if signed else abs(c[m])
            if v > mn:
                best[mpos] = v
                S[mpos] = m
                mn = best[0]
                mpos = 0
                for i in range(1, L):
                    if best[i] < mn:
                        mn = best[i]
                        mpos = i

    @njit(cache=True, nogil=True, inline="always", fastmath=_FM)
    def _select(c, L, signed, S, best, gmax, gidx, work):
        """Top-``L`` entries of ``c`` (or ``|c|``).

        Entries are split into ``n_g`` interleaved groups (``m % n_g``); group maxima come from a
        vectorised element-wise maximum over rows, and only the ``L`` best groups are scanned.
        The top ``L`` entries always lie in the ``L`` groups with the largest maxima.
        """
        M = c.shape[0]
        n_g = gmax.shape[0]
        if n_g <= L or M < 2 * n_g:
            _top_l(c, L, signed, S, best)
            return
        if signed:
            src = c
        else:
            np.abs(c, work)
            src = work
        n_rows = M // n_g
        gmax[:] = src[:n_g]
        for r in range(1, n_rows):
            np.maximum(gmax, src[r * n_g : (r + 1) * n_g], gmax)
        for m in range(n_rows * n_g, M):
            j = m - n_rows * n_g
            if src[m] > gmax[j]:
                gmax[j] = src[m]
        _top_l(gmax, L, True, gidx, best)
        for i in range(L):
            best[i] = -np.inf
            S[i] = 0
        mn = -np.inf
        mpos = 0
        for q in range(L):
            m = gidx[q]
            while m < M:
                v = src[m]
                if v > mn:
                    best[mpos] = v
                    S[mpos] = m
                    mn = best[0]
                    mpos = 0
                    for i in range(1, L):
                        if best[i] < mn:
                            mn = best[i]
                            mpos = i
                m += n_g

    @njit(cache=True, nogil=True, inline="always", fastmath=_FM)
    def _solve_spd(A, rhs, a, L):
        """Cholesky solve of the small SPD system ``A a = rhs`` in place (A is overwritten)."""
        for j in range(L):
            s = A[j, j]
            for k in range(j):
                s -= A[j, k] * A[j, k]
            if s <= 0.0:
                return False
            s = np.sqrt(s)
            A[j, j] = s
            for i in range(j + 1, L):
                t = A[i, j]
                for k in range(j):
                    t -= A[i, k] * A[j, k]
                A[i, j] = t / s
        for i in range(L):
            t = rhs[i]
            for k in range(i):
                t -= A[i, k] * a[k]
            a[i] = t / A[i, i]
        for i in range(L - 1, -1, -1):
            t = a[i]
            for k in range(i + 1, L):
                t -= A[k, i] * a[k]
            a[i] = t / A[i, i]
        return True

    @njit(cache=True, nogil=True, parallel=True, fastmath=_FM)
    def pursuit_kernel(c0, G, W, n_iter, L, signed, ridge, energy, tol, out_idx, out_val):  # noqa: C901 (one fused loop nest, for speed)
        """Non-orthogonal ICFL pursuit for every row of ``c0`` (see :func:`featurelens.models.icfl.pursuit`)."""
        B, M = c0.shape
        d = W.shape[1]
        for b in prange(B):
            c = c0[b].copy()
            S = np.empty(L, np.int64)
            best = np.empty(L, np.float32)
            gmax = np.empty(min(_GROUPS, M), np.float32)
            gidx = np.empty(L, np.int64)
            work = np.empty(M if not signed else 1, np.float32)
            A = np.empty((L, L), np.float64)
            A0 = np.empty((L, L), np.float64)
            rhs = np.empty(L, np.float64)
            a = np.empty(L, np.float64)
            e = np.float64(energy[b])
            floor = tol * e
            if tol > 0.0 and e <= floor:
                continue
            _select(c, L, signed, S, best, gmax, gidx, work)
            for t in range(n_iter):
                for i in range(L):
                    rhs[i] = c[S[i]]
                    wi = W[S[i]]
                    for j in range(i + 1):
                        wj = W[S[j]]
                        s = 0.0
                        for k in range(d):
                            s += wi[k] * wj[k]
                        A0[i, j] = s
                        A0[j, i] = s
                    A0[i, i] += ridge
                extra = 0.0
                ok = False
                while not ok:
                    for i in range(L):
                        for j in range(L):
                            A[i, j] = A0[i, j]
                        A[i, i] += extra
                    ok = _solve_spd(A, rhs, a, L)
                    extra = 1e-6 if extra == 0.0 else extra * 10.0
                for i in range(L):
                    out_idx[b, t * L + i] = S[i]
                    out_val[b, t * L + i] = a[i]
                if tol > 0.0:
                    for i in range(L):
                        e -= a[i] * rhs[i]
                    if e <= floor:
                        break
                if t == n_iter - 1:
                    break
                for i in range(L):
                    ai = np.float32(a[i])
                    g = G[S[i]]
                    for m in range(M):
                        c[m] -= ai * g[m]
                _select(c, L, signed, S, best, gmax, gidx, work)
