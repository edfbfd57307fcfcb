"""Validation of option values with one wording for every tool (no AnnData, no torch).

Every public function validates its options with these helpers, so a user sees the same kind of
message everywhere: the option's name in backticks, what is allowed and what was passed. Invalid
choices and out-of-range values raise :class:`ValueError`; values of the wrong type raise
:class:`TypeError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any


def _allowed(allowed: Iterable[Any]) -> str:
    return ", ".join(repr(a) for a in allowed)


def _same(value: Any, allowed: Any) -> bool:
    """Equality that does not confuse ``True`` with ``1`` or a string with another type."""
    if isinstance(allowed, str):
        return isinstance(value, str) and value == allowed
    if isinstance(allowed, bool) or type(value).__name__ in ("bool", "bool_"):
        return type(value).__name__ in ("bool", "bool_") and isinstance(allowed, bool) and bool(value) == allowed
    try:
        return bool(value == allowed)
    except (TypeError, ValueError):
        return False


def check_choice(value: Any, name: str, allowed: Iterable[Any], *, none: bool = False) -> Any:
    """Return ``value`` when it is one of ``allowed`` (or ``None`` with ``none=True``).

    Raises
    ------
    ValueError
        ``"`name` must be one of 'a', 'b', got 'c'."``
    """
    allowed = tuple(allowed)
    if value is None and none:
        return None
    if not any(_same(value, a) for a in allowed):
        extra = " or None" if none else ""
        raise ValueError(f"`{name}` must be one of {_allowed(allowed)}{extra}, got {value!r}.")
    return value


def check_choices(values: Any, name: str, allowed: Iterable[Any]) -> tuple:
    """A non-empty tuple of distinct choices (a single string counts as one choice)."""
    allowed = tuple(allowed)
    items = (values,) if isinstance(values, str) else tuple(values) if values is not None else ()
    bad = [v for v in items if not any(_same(v, a) for a in allowed)]
    if bad or not items:
        raise ValueError(f"`{name}` must be one or several of {_allowed(allowed)}, got {values!r}.")
    return tuple(dict.fromkeys(items))


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be at most {maximum}, got {value}.")
    return int(value)


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """An integer of at least ``minimum`` (1 by default)."""
    return check_int(value, name, minimum=minimum)


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (not a bool) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    value = float(value)
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    span = f"{lo}{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}{hi}"
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number in {span}, got {value}.")
    too_low = minimum is not None and (value <= minimum if low_open else value < minimum)
    too_high = maximum is not None and (value >= maximum if high_open else value > maximum)
    if too_low or too_high:
        raise ValueError(f"`{name}` must lie in {span}, got {value:g}.")
    return value


def check_positive(value: Any, name: str) -> float:
    """A finite number > 0."""
    return check_number(value, name, minimum=0.0, low_open=True)


def check_nonnegative(value: Any, name: str) -> float:
    """A finite number >= 0."""
    return check_number(value, name, minimum=0.0)


def check_probability(value: Any, name: str, *, zero: bool = False, one: bool = True) -> float:
    """A p-value cutoff or fraction in (0, 1] (``zero`` / ``one`` include or exclude the ends)."""
    return check_number(value, name, minimum=0.0, maximum=1.0, low_open=not zero, high_open=not one)


def check_bool(value: Any, name: str) -> bool:
    """A bool (numpy bools included)."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)
