"""One training loop for every learner (torch, no AnnData).

A learner is an ``nn.Module`` with

- ``training_output(x, dead_mask) -> TrainOutput`` (loss, per-feature firing counts, metrics),
- ``before_optimizer_step()`` and ``after_optimizer_step(step, optimizer)`` hooks,
- ``needs_dead_mask`` (whether it wants the latents that have been silent for a window),
- ``n_features``.

:func:`fit` samples batches without replacement epoch by epoch, runs Adam with a short linear
warm-up and a linear decay over the last fifth of training, tracks dead features, logs a
history, shows a progress bar and refuses to apply a non-finite update. With ``checkpoint=``
it writes the whole training state (weights, optimiser and schedule, step, batch order, random
generators, dead-feature counts, history) every ``checkpoint_every`` steps, and ``resume=True``
continues from it: on the CPU the resumed run ends with the same weights as an uninterrupted one.
A learner may add state of its own through ``extra_state()`` / ``load_extra_state(state)``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import MemorySampler

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


CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, or that belongs to another run."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("featurelens")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def check_checkpoint_path(path, *, resume: bool) -> Path:
    """Refuse a checkpoint path that cannot be written (or, with ``resume``, that does not exist).

    Parameters
    ----------
    path
        The checkpoint file.
    resume
        Whether the run resumes from it (it must then exist).

    Returns
    -------
    The path, with ``~`` expanded.

    Examples
    --------
    >>> import tempfile
    >>> check_checkpoint_path(tempfile.gettempdir() + "/run.pt", resume=False).name
    'run.pt'
    """
    path = Path(path).expanduser()
    if path.is_dir():
        example = str(path / "run.pt")
        raise CheckpointError(f"`checkpoint` {str(path)!r} is a directory; pass a file path, e.g. {example!r}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"The folder of `checkpoint` {str(path)!r} does not exist; create {str(parent)!r} first.")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CheckpointError(f"`checkpoint` {str(path)!r} is not writable; pass a path in a folder you can write to.")
    if resume and not path.is_file():
        raise CheckpointError(
            f"resume=True but there is no checkpoint at {str(path)!r}; pass resume=False to start a new run there."
        )
    return path


@dataclass
class _LoopState:
    step: int
    seen: int
    history: list[dict]


def _save_checkpoint(path: Path, loop: _LoopState, model, optimizer, scheduler, tracker, sampler, generator,
                     run: dict) -> None:  # fmt: skip
    """Write the training state atomically (a file next to it, then renamed over it)."""
    extra = model.extra_state() if hasattr(model, "extra_state") else {}
    state = {
        "format": CHECKPOINT_FORMAT,
        "featurelens_version": _version(),
        "run": dict(run),
        "step": int(loop.step),
        "seen": int(loop.seen),
        "sampler": sampler.state_dict(),
        "history": [dict(r) for r in loop.history],
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "tracker": {
            "since": tracker.since.cpu(),
            "count": tracker.count.cpu(),
            "seen": int(tracker.seen),
            "last_rate": None if tracker.last_rate is None else tracker.last_rate.cpu(),
        },
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "extra": extra,
    }
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, run: dict) -> dict:
    """Read a training checkpoint written by :func:`fit` and check that it belongs to ``run``.

    Parameters
    ----------
    path
        The checkpoint file.
    run
        Values that identify the run (e.g. ``{"n_steps": 1000}``); every one must equal the value the
        checkpoint recorded.

    Returns
    -------
    The checkpoint: ``step`` (steps done), ``run``, ``history``, ``model`` (the state dict), ``optimizer``,
    ``scheduler``, ``tracker``, the generator states and ``featurelens_version``. It is read with
    ``torch.load(..., weights_only=True)``: tensors and plain types only.

    Raises
    ------
    CheckpointError
        When the file is not a readable checkpoint, was written by another featurelens version, or
        records other values for a key of ``run`` (the message lists them).

    Examples
    --------
    >>> import os, tempfile
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
    >>> fl.tl.sae(adata, "X_pca", n_features=32, n_steps=20, checkpoint=path, progress=False)
    >>> load_checkpoint(path, {"n_steps": 20, "n_features": 32})["step"]
    20
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same message
        raise CheckpointError(f"Cannot read the checkpoint {str(path)!r} ({type(err).__name__}: {err}).") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a featurelens training checkpoint (format {CHECKPOINT_FORMAT}).")
    if state.get("featurelens_version") != _version():
        raise CheckpointError(
            f"The checkpoint {str(path)!r} was written by featurelens {state.get('featurelens_version')}, this is "
            f"{_version()}; resume with that version, or pass resume=False to train anew."
        )
    theirs = state.get("run", {})
    diff = {k: (theirs.get(k), v) for k, v in run.items() if theirs.get(k) != v}
    if diff:
        what = ", ".join(f"{k} {a!r} in the checkpoint vs {b!r} here" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"The checkpoint {str(path)!r} belongs to another run ({what}). Pass the same options to resume it, or "
            "resume=False to train anew (the checkpoint is then overwritten)."
        )
    return state


def _restore(state: dict, model, optimizer, scheduler, tracker, sampler, generator) -> _LoopState:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    dev = tracker.since.device
    tr = state["tracker"]
    tracker.since, tracker.count, tracker.seen = tr["since"].to(dev), tr["count"].to(dev), int(tr["seen"])
    tracker.last_rate = None if tr["last_rate"] is None else tr["last_rate"].to(dev)
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    sampler.load_state_dict(state["sampler"])
    if hasattr(model, "load_extra_state"):
        model.load_extra_state(state["extra"])
    return _LoopState(int(state["step"]), int(state["seen"]), list(state["history"]))


def _backward(model, optimizer, xb, dead_mask, *, step: int, lr: float, history: list[dict]) -> TrainOutput:
    """Loss and gradients of one batch; raises before any update when either is not finite."""
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
    return out


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
    X,
    *,
    n_steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    dead_window: int,
    log_every: int = 0,
    progress: bool = True,
    desc: str = "training",
    checkpoint=None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    run: dict | None = None,
) -> tuple[list[dict], DeadTracker]:
    """Train ``model`` on the rows of ``X`` (batches are moved to the model's device one at a time).

    Parameters
    ----------
    model
        A learner (see the module docstring).
    X
        Training data: a float32 tensor ``(n, d)`` (on any device), or a sampler with
        ``n_rows``, ``device``, ``batch(size)`` and ``state_dict()`` / ``load_state_dict()`` such as
        :class:`~featurelens.models.data.ShuffleBuffer` (data streamed from disk).
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
    checkpoint
        File to write the training state to every ``checkpoint_every`` steps and at the end
        (``torch.save`` of tensors and plain types, replaced atomically); ``None``: no checkpoint.
    checkpoint_every
        Steps between checkpoints.
    resume
        Continue from ``checkpoint`` (which must exist and belong to the same ``run``).
    run
        Plain values that identify the run (shapes and options); a checkpoint with other values is
        refused on resume.

    Returns
    -------
    The history (one dict per logged step) and the dead-feature tracker.

    Raises
    ------
    TrainingDivergedError
        When the loss or a gradient is NaN or infinite. The offending update is not applied,
        so the model keeps the last finite weights.
    """
    sampler = X if hasattr(X, "batch") else MemorySampler(X, generator, device=_model_device(model))
    n = sampler.n_rows
    batch_size = int(min(batch_size, n))
    log_every = int(log_every) if log_every else max(1, n_steps // 100)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    warmup = max(1, min(200, n_steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(n_steps, warmup))
    tracker = DeadTracker(model.n_features, dead_window, sampler.device)
    run = dict(run or {}, n_obs=int(n), n_steps=int(n_steps), batch_size=batch_size, lr=float(lr))
    path = None if checkpoint is None else check_checkpoint_path(checkpoint, resume=resume)
    if path is not None and resume:
        loop = _restore(load_checkpoint(path, run), model, optimizer, scheduler, tracker, sampler, generator)
    else:
        loop = _LoopState(0, 0, [])
    history = loop.history
    every = max(1, int(checkpoint_every))
    bar = tqdm(total=n_steps, initial=loop.step, desc=desc, disable=not progress, leave=False)
    t0 = time.perf_counter()
    try:
        for step in range(loop.step, n_steps):
            xb = sampler.batch(batch_size)
            dead_mask = tracker.silent_mask() if getattr(model, "needs_dead_mask", False) else None
            out = _backward(model, optimizer, xb, dead_mask, step=step, lr=lr, history=history)
            loss = out.loss
            model.before_optimizer_step()
            optimizer.step()
            scheduler.step()
            model.after_optimizer_step(step, optimizer)
            tracker.update(out.fired, xb.shape[0])
            loop.seen += xb.shape[0]
            if step % log_every == 0 or step == n_steps - 1:
                row = {"step": step, "samples_seen": loop.seen, "loss": float(loss.detach())}
                row.update({k: float(v) for k, v in out.metrics.items()})
                row["dead_fraction"] = tracker.dead_fraction()
                row["n_dead"] = tracker.n_dead()
                row["lr"] = float(scheduler.get_last_lr()[0])
                row["seconds"] = time.perf_counter() - t0  # wall time of this call's steps so far
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4g}", fvu=f"{row.get('fvu', math.nan):.3f}", refresh=False)
            bar.update(1)
            loop.step = step + 1
            if path is not None and (loop.step % every == 0 or loop.step == n_steps):
                _save_checkpoint(path, loop, model, optimizer, scheduler, tracker, sampler, generator, run)
    finally:
        bar.close()
    return history, tracker


def _model_device(model) -> torch.device:
    """The device of the model's parameters (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def history_frame(history: list[dict]):
    """History rows as a DataFrame with one column per logged quantity."""
    import pandas as pd

    df = pd.DataFrame(history)
    if len(df):
        df["step"] = df["step"].astype(np.int64)
        df["samples_seen"] = df["samples_seen"].astype(np.int64)
    return df
