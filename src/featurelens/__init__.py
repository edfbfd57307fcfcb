"""featurelens: interpretable concepts in the embeddings of biological foundation models."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, get, io, microscopy, pl, pp, tl

try:
    __version__ = version("featurelens")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "datasets", "get", "io", "microscopy", "pl", "pp", "tl"]
