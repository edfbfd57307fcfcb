"""A small MLP autoencoder with early stopping (the SAE paper's representation of simulated counts, A.2.2)."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp


def fit_autoencoder(
    X,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    latent_dim: int,
    hidden: tuple[int, ...],
    n_epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    device,
    random_state: int,
    progress: bool,
):
    """Train an MLP autoencoder on the rows of ``X`` (CSR or ndarray, already transformed); no AnnData.

    Returns the best model (lowest validation loss), the history rows and the best epoch.
    """
    import torch
    from tqdm.auto import tqdm

    model = _build_model(X.shape[1], latent_dim, hidden, random_state, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = np.random.default_rng(random_state)
    stopper = _EarlyStopping(patience)
    history = []
    bar = tqdm(range(n_epochs), desc="autoencoder", disable=not progress, leave=False)
    try:
        for epoch in bar:
            perm = gen.permutation(train_idx)
            train_loss = _train_epoch(model, opt, X, perm, batch_size, device, epoch=epoch, lr=lr)
            vl = _validation_loss(model, X, val_idx, device)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": vl})
            bar.set_postfix(train=f"{train_loss:.4g}", val=f"{vl:.4g}", refresh=False)
            if stopper.should_stop(vl, epoch, model):
                break
    finally:
        bar.close()
    model.load_state_dict(stopper.best_state)
    model.eval()
    return model, history, stopper.best_epoch


def _mlp(sizes):
    """Linear layers between consecutive ``sizes`` with ReLUs in between (none after the last)."""
    from torch import nn

    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _build_model(n_in: int, latent_dim: int, hidden: tuple[int, ...], random_state: int, device):
    """Encoder + mirrored decoder, initialised from ``random_state`` without touching the global torch stream."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(random_state))
        encoder = _mlp([n_in, *hidden, latent_dim])
        decoder = _mlp([latent_dim, *hidden[::-1], n_in])
    return nn.Sequential(encoder, decoder).to(device)


def _rows(X, idx: np.ndarray, device):
    """Rows ``idx`` of ``X`` as a dense float32 tensor on ``device``."""
    import torch

    block = X[idx]
    block = block.toarray() if sp.issparse(block) else block
    return torch.as_tensor(np.asarray(block, dtype=np.float32), device=device)


def _validation_loss(model, X, val_idx: np.ndarray, device) -> float:
    """Mean squared reconstruction error per row of the validation rows (in eval mode, without gradients)."""
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, val_idx.size, 4096):
            xb = _rows(X, val_idx[s : s + 4096], device)
            total += float(((model(xb) - xb) ** 2).mean(dim=1).sum())
    model.train()
    return total / val_idx.size


def _train_epoch(model, opt, X, perm: np.ndarray, batch_size: int, device, *, epoch: int, lr: float) -> float:
    """One pass over the training rows in the order ``perm``; the mean training loss per row."""
    import torch

    total = 0.0
    for s in range(0, perm.size, batch_size):
        xb = _rows(X, perm[s : s + batch_size], device)
        loss = ((model(xb) - xb) ** 2).mean()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"Autoencoder training diverged in epoch {epoch} (loss {float(loss)}); lower `lr` (lr={lr:g})."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * xb.shape[0]
    return total / perm.size


class _EarlyStopping:
    """Keeps the weights of the epoch with the lowest validation loss; stops after ``patience`` epochs without one."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = np.inf
        self.best_epoch = -1
        self.best_state = None
        self.wait = 0

    def should_stop(self, val_loss: float, epoch: int, model) -> bool:
        if val_loss < self.best:
            self.best, self.best_epoch, self.wait = val_loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.wait += 1
        return self.wait >= self.patience
