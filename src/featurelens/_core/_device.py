"""Torch device selection."""

from __future__ import annotations

from typing import Any


def resolve_device(device: Any = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}."
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use device='auto' or 'cpu'.")
    return dev
