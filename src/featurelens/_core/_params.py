"""Plain values for ``uns[...]["params"]``, feature names and the package version."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def version() -> str:
    """The installed featurelens version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("featurelens")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
        return "0.0.0+unknown"


def plain(value: Any) -> Any:
    """Convert a value to a plain str/int/float/bool/None for ``uns[...]["params"]``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, list | tuple | np.ndarray | pd.Index | pd.Series):
        return json.dumps([plain(v) for v in list(value)])
    return str(value)


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Apply :func:`plain` to every value."""
    return {str(k): plain(v) for k, v in params.items()}


def tool_params(**params: Any) -> dict[str, Any]:
    """``plain_params`` with the featurelens version added (what every tool records)."""
    return plain_params({**params, "featurelens_version": version()})


def feature_names(n: int) -> pd.Index:
    """Names of ``n`` dictionary features: ``f0, f1, ...``."""
    return pd.Index([f"f{i}" for i in range(n)], dtype=object)
