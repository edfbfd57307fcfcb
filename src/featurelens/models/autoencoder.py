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
    from torch import nn
    from tqdm.auto import tqdm

    n_in = X.shape[1]

    def mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(random_state))
        encoder = mlp([n_in, *hidden, latent_dim])
        decoder = mlp([latent_dim, *hidden[::-1], n_in])
    model = nn.Sequential(encoder, decoder).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = np.random.default_rng(random_state)

    def rows(idx):
        block = X[idx]
        block = block.toarray() if sp.issparse(block) else block
        return torch.as_tensor(np.asarray(block, dtype=np.float32), device=device)

    def val_loss():
        model.eval()
        total = 0.0
        with torch.no_grad():
            for s in range(0, val_idx.size, 4096):
                xb = rows(val_idx[s : s + 4096])
                total += float(((model(xb) - xb) ** 2).mean(dim=1).sum())
        model.train()
        return total / val_idx.size

    history, best, best_epoch, best_state, wait = [], np.inf, -1, None, 0
    bar = tqdm(range(n_epochs), desc="autoencoder", disable=not progress, leave=False)
    try:
        for epoch in bar:
            perm = gen.permutation(train_idx)
            total = 0.0
            for s in range(0, perm.size, batch_size):
                xb = rows(perm[s : s + batch_size])
                loss = ((model(xb) - xb) ** 2).mean()
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(
                        f"Autoencoder training diverged in epoch {epoch} (loss {float(loss)}); lower `lr` (lr={lr:g})."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * xb.shape[0]
            vl = val_loss()
            history.append({"epoch": epoch, "train_loss": total / perm.size, "val_loss": vl})
            bar.set_postfix(train=f"{total / perm.size:.4g}", val=f"{vl:.4g}", refresh=False)
            if vl < best:
                best, best_epoch, wait = vl, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                wait += 1
                if wait >= patience:
                    break
    finally:
        bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return model, history, best_epoch
