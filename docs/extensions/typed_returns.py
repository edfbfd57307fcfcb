"""Render numpydoc "Returns" sections as prose.

featurelens docstrings describe what a function returns in sentences, often followed by a
"Sets the following fields:" definition list (``name : type`` lines with an indented
description), as scanpy does. Napoleon would read the first line of such a section as a
return *type*. This extension makes napoleon keep the section as reStructuredText under a
``:returns:`` field; a line of the form ``name : dotted.type`` becomes ``name (type)`` with
the type cross-referenced. The return type itself comes from the annotation
(sphinx-autodoc-typehints).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from sphinx.application import Sphinx
from sphinx.ext.napoleon import NumpyDocstring

_NAME_TYPE = re.compile(r"(?P<name>\w+)\s+:\s+(?P<type>[\w.]+)")


def _process_return(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        m = _NAME_TYPE.fullmatch(line)
        yield f"{m['name']} (:class:`~{m['type']}`)" if m else line


def _parse_returns_section(self: NumpyDocstring, section: str) -> list[str]:
    lines_raw = self._dedent(self._consume_to_next_section())
    if lines_raw and lines_raw[0] == ":":
        del lines_raw[0]
    lines = self._format_block(":returns: ", list(_process_return(lines_raw)))
    if lines and lines[-1]:
        lines.append("")
    return lines


def setup(app: Sphinx) -> dict[str, bool]:
    NumpyDocstring._parse_returns_section = _parse_returns_section
    return {"parallel_read_safe": True, "parallel_write_safe": True}
