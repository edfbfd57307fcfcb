"""Temporary re-exports (being removed): use featurelens._core and featurelens._checks."""

from ._checks import check_positive_int
from ._core import check_adata, plain_params, resolve_device, version

__all__ = ["check_adata", "check_positive_int", "plain_params", "resolve_device", "version"]
