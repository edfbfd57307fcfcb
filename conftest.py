"""Settings shared by the test suite and the doctests of ``src/featurelens`` (collected with --doctest-modules)."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure a test or a doctest opened."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
