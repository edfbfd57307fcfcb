"""Files shipped inside the package (``featurelens/datasets/data``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path


@contextlib.contextmanager
def data_file(name: str) -> Iterator[Path]:
    """A filesystem path of the bundled data file ``name`` for the duration of the ``with`` block."""
    resource = resources.files("featurelens").joinpath("datasets", "data", name)
    with resources.as_file(resource) as path:
        yield Path(path)
