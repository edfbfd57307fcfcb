"""Sparse autoencoders: vanilla, ReLU with pre-bias, TopK and BatchTopK (torch, no AnnData).

All four share one parameterisation. With ``pre_bias`` the decoder bias is subtracted before
encoding (Bricken et al. 2023); the vanilla architecture has no pre-bias::

    z     = act(W_enc (x - b_pre) + b_enc)
    x_hat = W_dec^T z + b_dec                (b_pre = b_dec, or 0 for "vanilla")

- ``vanilla`` / ``relu``: ``act = ReLU``, loss = MSE + ``l1_coef`` * sum_m z_m.
- ``topk``: ``act = ReLU o TopK_k`` (Gao et al. 2024), with the AuxK loss: the ``k_aux``
  largest pre-activations of *dead* latents (no activation for ``dead_window`` samples),
  taken without ReLU so that latents with only negative pre-activations still receive a
  gradient, reconstruct the residual ``x - x_hat``; its normalised MSE is added with
  ``auxk_coef``.
- ``batchtopk``: in training the ``k * B`` largest activations over the whole batch are kept
  (Bussmann et al. 2024); inference keeps activations above a threshold estimated during
  training (an exponential moving average of the smallest kept activation per batch).

Decoder rows are kept at unit norm for every architecture (the gradient component along
each row is removed before the optimiser step and rows are renormalised after it), the
encoder starts as the decoder's transpose and the biases at the data mean (or geometric
median). The TopK/BatchTopK paths never form dense ``B x M`` gradients: see
:mod:`featurelens.models._sparse`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._checks import check_choice
from ._sparse import (
    gather_preact,
    mean_rows,
    normalize_rows_,
    project_out_radial,
    random_unit_rows,
    sparse_decode,
    topk_indices,
)
from .train import TrainOutput

ARCHITECTURES = ("vanilla", "relu", "topk", "batchtopk")


def geometric_median(X: torch.Tensor, n_iter: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Geometric median of the rows of ``X`` (Weiszfeld iterations)."""
    X = X.double()
    y = X.mean(0)
    for _ in range(n_iter):
        dist = (X - y).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        y_new = (w[:, None] * X).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * (1.0 + y.norm()):
            y = y_new
            break
        y = y_new
    return y.float()


def _select_batch_topk(act: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Flat indices of the ``n_keep`` largest positive entries of ``act`` (sorted ascending)."""
    flat = act.reshape(-1)
    n_keep = min(n_keep, flat.numel())
    if flat.numel() <= 1 << 20:
        idx = torch.topk(flat, n_keep, sorted=False).indices
    else:
        # Bracket the threshold from a strided sample, then select exactly among the candidates.
        stride = max(1, flat.numel() // 65536)
        sample = flat[::stride].float()
        q = 1.0 - n_keep / flat.numel()
        idx = None
        for margin in (0.5, 2.0, 8.0):
            lo = max(0.0, 1.0 - (1.0 - q) * (1.0 + margin) - 1e-3)
            t_lo = torch.quantile(sample, lo) if lo > 0 else -math.inf
            cand = (flat >= t_lo).nonzero().squeeze(1) if t_lo != -math.inf else None
            if cand is not None and cand.numel() >= n_keep:
                idx = cand[torch.topk(flat[cand], n_keep, sorted=False).indices]
                break
        if idx is None:
            idx = torch.topk(flat, n_keep, sorted=False).indices
    idx = idx[flat[idx] > 0]
    return torch.sort(idx).values


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder with decoder rows of unit norm.

    Parameters
    ----------
    n_inputs
        Dimension ``d`` of the (preprocessed) embedding.
    n_features
        Number of latents ``M``.
    architecture
        ``"vanilla"``, ``"relu"``, ``"topk"`` or ``"batchtopk"``.
    k
        Active latents per sample (TopK) or on average per sample (BatchTopK).
    l1_coef
        Weight of the L1 penalty (vanilla, ReLU).
    auxk
        Use the AuxK loss for dead latents (TopK, BatchTopK).
    k_aux
        Dead latents used by AuxK (default ``d // 2``).
    auxk_coef
        Weight of the AuxK loss (1/32 as in Gao et al. 2024).
    threshold_decay
        Decay of the moving average giving the BatchTopK inference threshold.
    generator
        Source of randomness for the initialisation.
    """

    needs_dead_mask = True

    def __init__(
        self,
        n_inputs: int,
        n_features: int,
        *,
        architecture: str = "topk",
        k: int = 32,
        l1_coef: float = 1e-2,
        auxk: bool = True,
        k_aux: int | None = None,
        auxk_coef: float = 1.0 / 32.0,
        threshold_decay: float = 0.99,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        check_choice(architecture, "architecture", ARCHITECTURES)
        self.n_inputs = int(n_inputs)
        self.n_features = int(n_features)
        self.architecture = architecture
        self.k = int(k)
        self.l1_coef = float(l1_coef)
        self.auxk = bool(auxk) and architecture in ("topk", "batchtopk")
        self.k_aux = int(k_aux) if k_aux is not None else max(1, self.n_inputs // 2)
        self.auxk_coef = float(auxk_coef)
        self.threshold_decay = float(threshold_decay)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        w = random_unit_rows(self.n_features, self.n_inputs, generator)
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.clone())
        self.b_enc = nn.Parameter(torch.zeros(self.n_features))
        self.b_dec = nn.Parameter(torch.zeros(self.n_inputs))
        self.register_buffer("threshold", torch.tensor(float("nan")))

    # ------------------------------------------------------------------ helpers
    @property
    def uses_pre_bias(self) -> bool:
        """Whether the decoder bias is subtracted before encoding."""
        return self.architecture != "vanilla"

    @property
    def is_sparse(self) -> bool:
        """Whether training uses the sparse (TopK-style) path."""
        return self.architecture in ("topk", "batchtopk")

    @torch.no_grad()
    def init_from_data(self, X: torch.Tensor, how: str = "mean") -> None:
        """Initialise the decoder bias (pre-bias) at the mean or geometric median of ``X``."""
        if how == "mean":
            center = mean_rows(X)
        elif how == "median":
            sub = X[: min(len(X), 20000)]
            center = geometric_median(sub)
        else:
            raise ValueError(f"pre_bias_init must be 'mean' or 'median', got {how!r}.")
        self.b_dec.copy_(center.to(self.b_dec.device))

    def _centered(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.b_dec if self.uses_pre_bias else x

    def preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc (x - b_pre) + b_enc`` for a batch ``x`` of shape ``(B, d)``."""
        return torch.addmm(self.b_enc, self._centered(x), self.W_enc.T)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes ``(B, M)`` at inference."""
        pre = self.preactivations(x)
        if self.architecture == "topk":
            idx = topk_indices(pre, self.k)
            z = torch.zeros_like(pre)
            z.scatter_(1, idx, pre.gather(1, idx).clamp_min_(0))
            return z
        z = pre.clamp_min_(0)
        if self.architecture == "batchtopk":
            thr = float(self.threshold)
            if math.isfinite(thr):
                z.masked_fill_(pre <= thr, 0.0)
        return z

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``z W_dec + b_dec``."""
        return torch.addmm(self.b_dec, z, self.W_dec)

    # ------------------------------------------------------------------ training
    def training_output(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        """Loss and statistics of one training batch."""
        if not self.is_sparse:
            return self._dense_output(x)
        return self._sparse_output(x, dead_mask)

    def _dense_output(self, x: torch.Tensor) -> TrainOutput:
        z = torch.relu(self.preactivations(x))
        x_hat = torch.addmm(self.b_dec, z, self.W_dec)
        mse = (x_hat - x).pow(2).mean()
        l1 = z.sum(dim=1).mean()
        loss = mse + self.l1_coef * l1
        with torch.no_grad():
            active = z > 0
            fired = active.sum(0)
            metrics = {"mse": mse.detach(), "l1": l1.detach(), "l0": active.sum(1).float().mean()}
            metrics["fvu"] = _fvu(x, x_hat.detach())
        return TrainOutput(loss=loss, fired=fired, metrics=metrics)

    def _sparse_output(self, x: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOutput:
        n = x.shape[0]
        xc = self._centered(x)
        # Wide dictionaries on the CPU: dense pre-activations without gradient, and a sparse
        # backward through the selected entries only. Otherwise plain dense autograd is faster.
        sparse_grad = self.n_features >= 2048 and x.device.type == "cpu"
        if sparse_grad:
            with torch.no_grad():
                pre = torch.addmm(self.b_enc, xc, self.W_enc.T)

            def gather(rows, cols):
                return gather_preact(xc, self.W_enc, self.b_enc, rows, cols, pre)
        else:
            pre_g = torch.addmm(self.b_enc, xc, self.W_enc.T)
            pre = pre_g.detach()

            def gather(rows, cols):
                return pre_g[rows, cols]

        use_aux = self.auxk and dead_mask is not None and bool(dead_mask.any())
        if self.architecture == "topk":
            idx = topk_indices(pre, self.k)
            if use_aux:
                aux_idx = self._aux_indices(pre, dead_mask)
                idx = torch.cat([idx, aux_idx], dim=1)
            width = idx.shape[1]
            rows = torch.arange(n, device=x.device).repeat_interleave(width)
            vals = gather(rows, idx.reshape(-1)).view(n, width)
            main_v = torch.relu(vals[:, : self.k]).reshape(-1)
            main_r = torch.arange(n, device=x.device).repeat_interleave(self.k)
            main_c = idx[:, : self.k].reshape(-1)
            aux_v = vals[:, self.k :].reshape(-1) if use_aux else None
            aux_c = idx[:, self.k :].reshape(-1) if use_aux else None
            aux_r = torch.arange(n, device=x.device).repeat_interleave(width - self.k) if use_aux else None
        else:
            with torch.no_grad():
                flat = _select_batch_topk(torch.relu(pre), self.k * n)
                main_r, main_c = flat // self.n_features, flat % self.n_features
            main_v = torch.relu(gather(main_r, main_c))
            if main_v.numel():
                with torch.no_grad():
                    smallest = main_v.min()
                    thr = self.threshold
                    new = (
                        smallest
                        if torch.isnan(thr)
                        else self.threshold_decay * thr + (1 - self.threshold_decay) * smallest
                    )
                    self.threshold.copy_(new)
            if use_aux:
                aux_idx = self._aux_indices(pre, dead_mask)
                width = aux_idx.shape[1]
                aux_r = torch.arange(n, device=x.device).repeat_interleave(width)
                aux_c = aux_idx.reshape(-1)
                aux_v = gather(aux_r, aux_c)
        x_hat = sparse_decode(main_r, main_c, main_v, self.W_dec, n) + self.b_dec
        mse = (x_hat - x).pow(2).mean()
        loss = mse
        metrics = {"mse": mse.detach()}
        if use_aux:
            resid = (x - x_hat).detach()
            e_hat = sparse_decode(aux_r, aux_c, aux_v, self.W_dec, n)
            denom = (resid - resid.mean(0)).pow(2).sum().clamp_min(1e-12)
            aux_loss = (e_hat - resid).pow(2).sum() / denom
            loss = loss + self.auxk_coef * aux_loss
            metrics["aux_loss"] = aux_loss.detach()
        with torch.no_grad():
            on = main_v > 0
            fired = torch.bincount(main_c[on], minlength=self.n_features)
            metrics["l0"] = on.sum().float() / n
            metrics["fvu"] = _fvu(x, x_hat.detach())
        return TrainOutput(loss=loss, fired=fired, metrics=metrics)

    def _aux_indices(self, pre: torch.Tensor, dead_mask: torch.Tensor) -> torch.Tensor:
        dead = dead_mask.nonzero().squeeze(1)
        k_aux = min(self.k_aux, dead.numel())
        local = torch.topk(pre[:, dead], k_aux, dim=1, sorted=False).indices
        return dead[local]

    def before_optimizer_step(self) -> None:
        """Keep decoder rows on the unit sphere: drop the radial gradient component."""
        project_out_radial(self.W_dec)

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Renormalise decoder rows."""
        normalize_rows_(self.W_dec)

    # ------------------------------------------------------------------ storage
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Weights as float32 arrays: ``decoder`` (M, d), ``encoder`` (M, d), biases."""
        out = {
            "decoder": self.W_dec.detach().cpu().numpy().astype(np.float32),
            "decoder_bias": self.b_dec.detach().cpu().numpy().astype(np.float32),
            "pre_bias": (
                self.b_dec.detach().cpu().numpy().astype(np.float32)
                if self.uses_pre_bias
                else np.zeros(self.n_inputs, dtype=np.float32)
            ),
            "encoder": self.W_enc.detach().cpu().numpy().astype(np.float32),
            "encoder_bias": self.b_enc.detach().cpu().numpy().astype(np.float32),
        }
        if self.architecture == "batchtopk":
            out["threshold"] = float(self.threshold)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, **kwargs) -> SparseAutoencoder:
        """Rebuild from :meth:`to_arrays` output; ``kwargs`` are the constructor options."""
        dec = np.asarray(arrays["decoder"], dtype=np.float32)
        model = cls(dec.shape[1], dec.shape[0], **kwargs)
        with torch.no_grad():
            model.W_dec.copy_(torch.from_numpy(dec))
            model.W_enc.copy_(torch.from_numpy(np.asarray(arrays["encoder"], dtype=np.float32)))
            model.b_enc.copy_(torch.from_numpy(np.asarray(arrays["encoder_bias"], dtype=np.float32)))
            model.b_dec.copy_(torch.from_numpy(np.asarray(arrays["decoder_bias"], dtype=np.float32)))
            if "threshold" in arrays and arrays["threshold"] is not None:
                model.threshold.fill_(float(arrays["threshold"]))
        return model


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained of a batch."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
