"""Warnings that point at the user's line, not at featurelens internals."""

from __future__ import annotations

import inspect
import os
import warnings


def user_stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` that points at the first caller outside featurelens.

    Call it from the function that calls ``warnings.warn``.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None  # the function about to warn: level 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` with the stack level of the first caller outside featurelens."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
