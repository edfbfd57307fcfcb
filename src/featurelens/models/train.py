"""One training loop for every learner (torch, no AnnData).

A learner is an ``nn.Module`` with

- ``training_output(x, dead_mask) -> TrainOutput`` (loss, per-feature firing counts, metrics),
- ``before_optimizer_step()`` and ``after_optimizer_step(step, optimizer)`` hooks,
- ``needs_dead_mask`` (whether it wants the latents that have been silent for a window),
- ``n_features``.

:func:`fit` samples batches without replacement epoch by epoch, runs Adam with a short linear
warm-up and a linear decay over the last fifth of training, tracks dead features, logs a
history, shows a progress bar and refuses to apply a non-finite update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

DEAD_RATE = 1e-5
"""A feature is dead when it fired on fewer than this fraction of the samples of a window."""


@dataclass
class TrainOutput:
    """What a learner returns for one batch."""

    loss: torch.Tensor
    fired: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class TrainingDivergedError(FloatingPointError):
    """Raised when the loss or a gradient stops being finite; the model keeps its last finite weights."""

    def __init__(self, message: str, *, step: int, history: list[dict]):
        super().__init__(message)
        self.step = step
        self.history = history


class DeadTracker:
    """Counts how often every feature fires.

    Two notions are kept:

    - per consecutive window of ``window`` samples, the firing rate of every feature; a feature
      is *dead* when its rate in the last completed window is below :data:`DEAD_RATE` (the
      ICFL paper's definition);
    - the number of samples since each feature last fired; features silent for at least
      ``window`` samples are passed to the learner (AuxK uses them).
    """

    def __init__(self, n_features: int, window: int, device: torch.device):
        self.window = int(window)
        self.since = torch.zeros(n_features, dtype=torch.long, device=device)
        self.count = torch.zeros(n_features, dtype=torch.long, device=device)
        self.seen = 0
        self.last_rate: torch.Tensor | None = None

    def update(self, fired: torch.Tensor, n_samples: int) -> None:
        """Record one batch: ``fired`` holds per-feature counts of non-zero codes."""
        self.since += n_samples
        self.since[fired > 0] = 0
        self.count += fired
        self.seen += n_samples
        if self.seen >= self.window:
            self.last_rate = self.count.double() / self.seen
            self.count.zero_()
            self.seen = 0

    def silent_mask(self) -> torch.Tensor:
        """Features that have not fired in the last ``window`` samples."""
        return self.since >= self.window

    def rate(self) -> torch.Tensor:
        """Firing rate in the last completed window (the current partial one before that)."""
        if self.last_rate is not None:
            return self.last_rate
        return self.count.double() / max(self.seen, 1)

    def n_dead(self) -> int:
        """Number of dead features by the windowed rate."""
        return int((self.rate() < DEAD_RATE).sum())

    def dead_fraction(self) -> float:
        """Fraction of dead features by the windowed rate."""
        return float((self.rate() < DEAD_RATE).double().mean())


def _lr_lambda(n_steps: int, warmup: int):
    decay_start = int(0.8 * n_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step >= decay_start and n_steps > decay_start:
            return max(0.0, (n_steps - step) / (n_steps - decay_start))
        return 1.0

    return f


def fit(
    model: torch.nn.Module,
    X: torch.Tensor,
    *,
    n_steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    dead_window: int,
    log_every: int = 0,
    progress: bool = True,
    desc: str = "training",
) -> tuple[list[dict], DeadTracker]:
    """Train ``model`` on the rows of ``X`` (already on the model's device).

    Parameters
    ----------
    model
        A learner (see the module docstring).
    X
        Training data ``(n, d)``, float32.
    n_steps
        Optimiser steps.
    batch_size
        Samples per step (capped at ``n``).
    lr
        Peak learning rate of Adam.
    generator
        CPU generator for the batch order.
    dead_window
        Samples per dead-feature window.
    log_every
        Log a history row every ``log_every`` steps (default: about 100 rows).
    progress
        Show a tqdm progress bar.
    desc
        Progress-bar label.

    Returns
    -------
    The history (one dict per logged step) and the dead-feature tracker.

    Raises
    ------
    TrainingDivergedError
        When the loss or a gradient is NaN or infinite. The offending update is not applied,
        so the model keeps the last finite weights.
    """
    n = X.shape[0]
    batch_size = int(min(batch_size, n))
    log_every = int(log_every) if log_every else max(1, n_steps // 100)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    warmup = max(1, min(200, n_steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(n_steps, warmup))
    tracker = DeadTracker(model.n_features, dead_window, X.device)
    history: list[dict] = []
    perm = torch.randperm(n, generator=generator)
    pos = 0
    seen = 0
    bar = tqdm(total=n_steps, desc=desc, disable=not progress, leave=False)
    try:
        for step in range(n_steps):
            if pos + batch_size > n:
                perm = torch.randperm(n, generator=generator)
                pos = 0
            batch_idx = perm[pos : pos + batch_size].to(X.device)
            pos += batch_size
            xb = X[batch_idx]
            dead_mask = tracker.silent_mask() if getattr(model, "needs_dead_mask", False) else None
            out = model.training_output(xb, dead_mask)
            loss = out.loss
            if not bool(torch.isfinite(loss)):
                raise TrainingDivergedError(
                    f"Training diverged at step {step}: the loss is {float(loss.detach())}. The model keeps the "
                    f"weights it had before this step. Lower the learning rate (lr={lr:g}) or check the scale of the "
                    "input (normalize=...).",
                    step=step,
                    history=history,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
                raise TrainingDivergedError(
                    f"Training diverged at step {step}: a gradient is NaN or infinite. The model keeps the "
                    f"weights it had before this step. Lower the learning rate (lr={lr:g}).",
                    step=step,
                    history=history,
                )
            model.before_optimizer_step()
            optimizer.step()
            scheduler.step()
            model.after_optimizer_step(step, optimizer)
            tracker.update(out.fired, xb.shape[0])
            seen += xb.shape[0]
            if step % log_every == 0 or step == n_steps - 1:
                row = {"step": step, "samples_seen": seen, "loss": float(loss.detach())}
                row.update({k: float(v) for k, v in out.metrics.items()})
                row["dead_fraction"] = tracker.dead_fraction()
                row["n_dead"] = tracker.n_dead()
                row["lr"] = float(scheduler.get_last_lr()[0])
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4g}", fvu=f"{row.get('fvu', math.nan):.3f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    return history, tracker


def history_frame(history: list[dict]):
    """History rows as a DataFrame with one column per logged quantity."""
    import pandas as pd

    df = pd.DataFrame(history)
    if len(df):
        df["step"] = df["step"].astype(np.int64)
        df["samples_seen"] = df["samples_seen"].astype(np.int64)
    return df
