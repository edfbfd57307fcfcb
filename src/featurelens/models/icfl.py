"""ICFL: a dictionary learned with a batched matching-pursuit encoder (torch, no AnnData).

Encoder (ICFL paper, Algorithm 1). With decoder rows ``w_m`` of unit norm and bias ``b``, start
from ``r = x - b``; for ``t = 1..J`` (``n_iter``) pick the ``L`` (``n_per_iter``) atoms with
the largest ``<w_m, r>`` (``selection="signed"``) or ``|<w_m, r>|`` (``"abs"``), solve least
squares for their coefficients against ``r`` and subtract their reconstruction. The code is
the sum of the per-iteration coefficients (an atom chosen twice accumulates). With
``orthogonal=True`` the least-squares problem is re-solved over *all* atoms chosen so far at
every iteration (batched orthogonal matching pursuit).

Everything runs in correlation space: with ``G = W W^T`` and ``c = W r``, the coefficients of
atoms ``S`` are ``solve(G_SS, c_S)`` and the update is ``c <- c - G_{:,S} a``, which costs
``L * M`` per sample instead of a full ``d * M`` correlation pass. Small ``L x L`` systems are
solved in batch by Cholesky with a tiny ridge; samples are processed in chunks that fit in
cache on the CPU.

The decoder (and ``b``) is learned by gradient descent on ``|x - W^T z - b|^2`` with the codes
held fixed; rows are kept at unit norm, and every ``reset_every`` steps one atom of every pair
with cosine similarity above ``reset_threshold`` is redrawn uniformly on the sphere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice
from ._pursuit_cpu import HAVE_NUMBA
from ._sparse import (
    dense_from_flat,
    gram,
    mean_rows,
    normalize_rows_,
    project_out_radial,
    random_unit_rows,
    sparse_decode,
    topk_indices,
)
from .train import TrainOutput

if HAVE_NUMBA:
    from ._pursuit_cpu import pursuit_kernel

SELECTIONS = ("signed", "abs")
BIAS_MODES = ("mean", "learned", "none")


def _solve_spd(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve the batch of small symmetric positive definite systems ``A a = rhs``."""
    if A.shape[-1] == 1:
        return rhs / A[..., 0]
    chol, info = torch.linalg.cholesky_ex(A)
    a = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        a[bad] = torch.linalg.lstsq(A[bad], rhs[bad].unsqueeze(-1)).solution.squeeze(-1)
    return a


def pursuit(
    c0: torch.Tensor,
    G: torch.Tensor,
    *,
    n_iter: int,
    n_per_iter: int,
    orthogonal: bool = False,
    selection: str = "signed",
    ridge: float = 1e-6,
    energy: torch.Tensor | None = None,
    tol: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched (orthogonal) matching pursuit in correlation space.

    Parameters
    ----------
    c0
        Correlations ``(B, M)`` of the residual at start with every atom, ``(x - b) W^T``.
    G
        Gram matrix ``W W^T`` of the unit-norm atoms, ``(M, M)``.
    n_iter, n_per_iter
        ``J`` iterations selecting ``L`` atoms each.
    orthogonal
        Re-solve least squares over all selected atoms at every iteration.
    selection
        ``"signed"`` (largest correlation) or ``"abs"`` (largest absolute correlation).
    ridge
        Added to the diagonal of every Gram sub-matrix.
    energy
        Squared norms of the starting residuals ``(B,)``; needed only with ``tol > 0``.
    tol
        Stop adding atoms to a sample once its residual energy falls to ``tol`` times the
        starting energy.

    Returns
    -------
    ``idx`` and ``val``, both ``(B, n_iter * n_per_iter)``: atom indices and coefficients in the
    order they were selected. Duplicates are possible (their coefficients add up).
    """
    check_choice(selection, "selection", SELECTIONS)
    B = c0.shape[0]
    J, L = int(n_iter), int(n_per_iter)
    idx = torch.zeros(B, J * L, dtype=torch.long, device=c0.device)
    val = torch.zeros(B, J * L, dtype=c0.dtype, device=c0.device)
    eye = torch.eye(L, dtype=c0.dtype, device=c0.device) * ridge
    c = c0.clone()
    track = tol > 0 and energy is not None
    if track:
        e = energy.to(c0.dtype).clone()
        floor = tol * e
        live = e > floor
    for t in range(J):
        score = c if selection == "signed" else c.abs()
        S = topk_indices(score, L)
        sl = slice(t * L, (t + 1) * L)
        idx[:, sl] = S
        if orthogonal:
            T = idx[:, : (t + 1) * L]
            n = T.shape[1]
            A = G[T.unsqueeze(2), T.unsqueeze(1)] + torch.eye(n, dtype=c0.dtype, device=c0.device) * ridge
            rhs = c0.gather(1, T)
            a = _solve_spd(A, rhs)
            if track:
                a = torch.where(live[:, None], a, val[:, : (t + 1) * L])
                val[:, : (t + 1) * L] = a
            else:
                val[:, : (t + 1) * L] = a
            c = c0 - F.embedding_bag(T, G, mode="sum", per_sample_weights=a)
            if track:
                e_new = energy - (a * rhs).sum(1)
                live = live & (e_new > floor)
        else:
            cS = c.gather(1, S)
            A = G[S.unsqueeze(2), S.unsqueeze(1)] + eye
            a = _solve_spd(A, cS)
            if track:
                a = a * live[:, None]
            val[:, sl] = a
            c.sub_(F.embedding_bag(S, G, mode="sum", per_sample_weights=a))
            if track:
                e = e - (a * cS).sum(1)
                live = live & (e > floor)
        if track and not bool(live.any()):
            break
    return idx, val


def distinct_per_row(idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """Number of distinct atoms with a non-zero coefficient in every row of pursuit codes."""
    key = torch.where(val != 0, idx, torch.full_like(idx, -1)).sort(dim=1).values
    valid = key >= 0
    new = torch.ones_like(valid)
    new[:, 1:] = key[:, 1:] != key[:, :-1]
    return (new & valid).sum(1)


class ICFL(nn.Module):
    """Dictionary with a batched matching-pursuit encoder.

    Parameters
    ----------
    n_inputs
        Dimension ``d`` of the (preprocessed) embedding.
    n_features
        Number of atoms ``M``.
    n_iter, n_per_iter
        Pursuit iterations ``J`` and atoms per iteration ``L``.
    orthogonal
        Batched orthogonal matching pursuit instead of ICFL's per-iteration least squares.
    selection
        ``"signed"`` or ``"abs"`` atom selection.
    reset_every, reset_threshold
        Every ``reset_every`` training steps, one atom of every pair with cosine similarity
        above ``reset_threshold`` (absolute cosine with ``selection="abs"``) is redrawn.
    bias
        ``"mean"`` (default): ``b`` is the mean of the training data and stays fixed;
        ``"learned"``: ``b`` starts at the mean and is trained with the decoder; ``"none"``:
        ``b = 0``. A learned bias has a flat direction (an atom used by every sample and the
        bias can grow together without changing the reconstruction) along which it drifts
        away from the data; with ``"mean"`` that cannot happen.
    ridge
        Ridge added to every least-squares system.
    tol
        Relative residual energy at which a sample stops taking atoms.
    chunk_size
        Samples per pursuit chunk on the CPU (default: about two million correlations per
        chunk, so a chunk stays in cache); all at once on other devices.
    generator
        Source of randomness for the initialisation and resets.
    """

    needs_dead_mask = False

    def __init__(
        self,
        n_inputs: int,
        n_features: int,
        *,
        n_iter: int = 20,
        n_per_iter: int = 5,
        orthogonal: bool = False,
        selection: str = "signed",
        reset_every: int = 100,
        reset_threshold: float = 0.9,
        bias: str = "mean",
        ridge: float = 1e-6,
        tol: float = 1e-6,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        check_choice(selection, "selection", SELECTIONS)
        self.n_inputs = int(n_inputs)
        self.n_features = int(n_features)
        self.n_iter = int(n_iter)
        self.n_per_iter = int(n_per_iter)
        self.orthogonal = bool(orthogonal)
        self.selection = selection
        self.reset_every = int(reset_every)
        self.reset_threshold = float(reset_threshold)
        check_choice(bias, "bias", BIAS_MODES)
        self.bias = bias
        self.ridge = float(ridge)
        self.tol = float(tol)
        self.chunk_size = max(256, (1 << 21) // self.n_features) if chunk_size is None else int(chunk_size)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.W = nn.Parameter(random_unit_rows(self.n_features, self.n_inputs, self.generator))
        self.b = nn.Parameter(torch.zeros(self.n_inputs), requires_grad=bias == "learned")
        self.n_resets = 0
        #: Use the fused numba kernel for the pursuit on the CPU (when numba is installed).
        self.use_kernel = True

    @torch.no_grad()
    def init_from_data(self, X: torch.Tensor, how: str = "mean") -> None:
        """Set the bias to the data mean (no-op with ``bias="none"``)."""
        if self.bias != "none":
            self.b.copy_(mean_rows(X).to(self.b.device))

    # ------------------------------------------------------------------ encoder
    @torch.no_grad()
    def codes(self, x: torch.Tensor, G: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pursuit codes of ``x``: ``(idx, val)`` of shape ``(B, n_iter * n_per_iter)``.

        On the CPU the non-orthogonal pursuit runs in a fused, multi-threaded numba kernel;
        elsewhere (GPU, orthogonal pursuit) in batched torch operations. Both give the same
        codes up to floating-point ties.
        """
        W = self.W.detach()
        r0 = x - self.b.detach()
        if self._use_kernel(x):
            return self._codes_kernel(r0, W, G)
        if G is None:
            G = gram(W)
        c0_all = r0 @ W.T
        energy_all = (r0 * r0).sum(1) if self.tol > 0 else None
        chunk = self.chunk_size if x.device.type == "cpu" else x.shape[0]
        out_i, out_v = [], []
        for s in range(0, x.shape[0], max(1, chunk)):
            i, v = pursuit(
                c0_all[s : s + chunk],
                G,
                n_iter=self.n_iter,
                n_per_iter=self.n_per_iter,
                orthogonal=self.orthogonal,
                selection=self.selection,
                ridge=self.ridge,
                energy=None if energy_all is None else energy_all[s : s + chunk],
                tol=self.tol,
            )
            out_i.append(i)
            out_v.append(v)
        return torch.cat(out_i), torch.cat(out_v)

    def _use_kernel(self, x: torch.Tensor) -> bool:
        return self.use_kernel and HAVE_NUMBA and x.device.type == "cpu" and not self.orthogonal

    def _codes_kernel(self, r0, W, G):
        B = r0.shape[0]
        width = self.n_iter * self.n_per_iter
        Wn = np.ascontiguousarray(W.float().numpy())
        Gk = (gram(W) if G is None else G).float().contiguous().numpy()
        c0 = np.ascontiguousarray((r0 @ W.T).float().numpy())
        energy = (r0.double() * r0.double()).sum(1).numpy()
        idx = np.zeros((B, width), dtype=np.int64)
        val = np.zeros((B, width), dtype=np.float32)
        pursuit_kernel(
            c0,
            Gk,
            Wn,
            self.n_iter,
            self.n_per_iter,
            self.selection == "signed",
            self.ridge,
            energy,
            self.tol,
            idx,
            val,
        )
        return torch.from_numpy(idx), torch.from_numpy(val)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, G: torch.Tensor | None = None) -> torch.Tensor:
        """Dense codes ``(B, M)``; coefficients of an atom selected more than once are summed."""
        idx, val = self.codes(x, G)
        n, w = idx.shape
        rows = torch.arange(n, device=x.device).repeat_interleave(w)
        return dense_from_flat(rows, idx.reshape(-1), val.reshape(-1), (n, self.n_features))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``z W + b``."""
        return torch.addmm(self.b.detach(), z, self.W.detach())

    # ------------------------------------------------------------------ training
    def training_output(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        """Loss of one batch with the pursuit codes held fixed."""
        n = x.shape[0]
        with torch.no_grad():
            idx, val = self.codes(x)
            width = idx.shape[1]
            rows = torch.arange(n, device=x.device).repeat_interleave(width)
            cols = idx.reshape(-1)
            vals = val.reshape(-1)
        x_hat = sparse_decode(rows, cols, vals, self.W, n) + self.b
        mse = (x_hat - x).pow(2).mean()
        with torch.no_grad():
            used = vals != 0
            fired = torch.bincount(cols[used], minlength=self.n_features)
            metrics = {
                "mse": mse.detach(),
                "l0": distinct_per_row(idx, val).float().mean(),
                "fvu": (x - x_hat.detach()).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12),
            }
        return TrainOutput(loss=mse, fired=fired, metrics=metrics)

    def before_optimizer_step(self) -> None:
        """Keep atoms on the unit sphere: drop the radial gradient component."""
        project_out_radial(self.W)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Renormalise atoms; every ``reset_every`` steps redraw near-duplicate atoms."""
        normalize_rows_(self.W)
        if self.reset_every > 0 and (step + 1) % self.reset_every == 0:
            self.reset_duplicates(optimizer)

    @torch.no_grad()
    def duplicate_atoms(self, G: torch.Tensor | None = None) -> torch.Tensor:
        """Indices of atoms that have an earlier atom with cosine above ``reset_threshold``."""
        W = self.W.detach()
        G = gram(W) if G is None else G
        S = G.abs() if self.selection == "abs" else G.clone()
        S = torch.triu(S, diagonal=1)  # S[i, j] for i < j
        return (S > self.reset_threshold).any(dim=0).nonzero().squeeze(1)

    @torch.no_grad()
    def reset_duplicates(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Redraw one atom of every near-duplicate pair uniformly on the sphere; returns the count."""
        dup = self.duplicate_atoms()
        n = int(dup.numel())
        if n:
            new = random_unit_rows(n, self.n_inputs, self.generator).to(self.W.device, self.W.dtype)
            self.W[dup] = new
            if optimizer is not None:
                state = optimizer.state.get(self.W, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][dup] = 0
            self.n_resets += n
        return n

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        """State outside the parameters that a resumed run needs: the reset generator and count."""
        return {"generator": self.generator.get_state(), "n_resets": int(self.n_resets)}

    def load_extra_state(self, state: dict) -> None:
        """Restore :meth:`extra_state`."""
        self.generator.set_state(state["generator"])
        self.n_resets = int(state["n_resets"])

    # ------------------------------------------------------------------ storage
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Weights as float32 arrays: ``decoder`` (M, d) and ``decoder_bias`` (d,)."""
        return {
            "decoder": self.W.detach().cpu().numpy().astype(np.float32),
            "decoder_bias": self.b.detach().cpu().numpy().astype(np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict, **kwargs) -> ICFL:
        """Rebuild from :meth:`to_arrays` output; ``kwargs`` are the constructor options."""
        dec = np.asarray(arrays["decoder"], dtype=np.float32)
        model = cls(dec.shape[1], dec.shape[0], **kwargs)
        with torch.no_grad():
            model.W.copy_(torch.from_numpy(dec))
            model.b.copy_(torch.from_numpy(np.asarray(arrays["decoder_bias"], dtype=np.float32)))
        return model
