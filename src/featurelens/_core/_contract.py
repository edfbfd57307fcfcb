"""The calling convention every public tool shares.

``@tool`` wraps a function ``f(adata, ...)`` that writes its results into ``adata`` and returns
None. The wrapper adds the keyword-only ``copy`` (``copy=True`` returns a new object and leaves the
input untouched, ``copy=False`` returns None) and ``mod`` (for a :class:`~mudata.MuData`), and turns
a view into an actual AnnData before anything is written (a view's ``uns`` shares its nested
objects with the parent, so writing into it would change the parent). ``@reader`` gives accessors
the MuData support without the writing part. ``@renamed`` keeps an old keyword working for one
release with a FutureWarning.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

from .._checks import check_bool
from ._mudata import as_anndata, is_mudata, write_back
from ._storage import check_adata
from ._warn import user_stacklevel

_KW = inspect.Parameter.KEYWORD_ONLY

_COPY_DOC = """    copy
        Return a new object with the results instead of writing to the one passed (which is then
        left untouched)."""
_MOD_DOC = """    mod
        Only for a :class:`~mudata.MuData`: the modality holding the expression (genes) this call
        reads; the embedding and the dictionary are read from the MuData itself. Gene-level results
        are stored in that modality's ``uns[key]`` / ``varm``."""


def _with_params(func: Callable, wrapper: Callable, extra: list[inspect.Parameter], docs: dict[str, str]) -> None:
    """Give ``wrapper`` the signature of ``func`` plus ``extra`` keyword-only parameters, and their docs."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    var_kw = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    have = {p.name for p in params}
    params += [p for p in extra if p.name not in have] + var_kw
    wrapper.__signature__ = sig.replace(parameters=params)
    doc = wrapper.__doc__ or ""
    marker = "\n    Returns\n    -------"
    for name, text in docs.items():
        if marker in doc and f"\n    {name}\n" not in doc:
            doc = doc.replace(marker, "\n" + text + "\n" + marker, 1)
    wrapper.__doc__ = doc


def _backed_error(adata, what: str) -> ValueError:
    mode = getattr(getattr(adata, "file", None), "_filemode", "r")
    return ValueError(
        f"{what} of an AnnData backed by {adata.filename} (mode {mode!r}): anndata cannot do that without loading "
        "the whole matrix. Pass the backed object itself with copy=False: featurelens reads the matrix on disk block "
        "by block and writes its results into the object's obs / obsm / uns in memory; save them with "
        "`adata.write_h5ad(new_path)`. Or load it first with `adata = adata.to_memory()` (a subset: "
        "`adata[mask].to_memory()`)."
    )


def _copy(adata):
    if adata.isbacked:
        raise _backed_error(adata, "copy=True asks for a copy")
    return adata.copy()


def _actual(adata):
    """``adata`` itself, turned from a view into an actual AnnData (as scanpy does, with a warning)."""
    if adata.is_view and adata.isbacked:
        raise _backed_error(adata, "Results cannot be written into a view")
    if adata.is_view:
        warnings.warn(
            "Received a view of an AnnData. Making a copy so results can be written to it.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        adata._init_as_actual(adata.copy())
    return adata


def tool(func: Callable) -> Callable:
    """Public wrapper of a tool that writes into ``adata`` (see the module docstring)."""

    @functools.wraps(func)
    def wrapper(data, *args, copy: bool = False, mod: str | None = None, **kwargs):
        check_bool(copy, "copy")
        if is_mudata(data):
            target = data.copy() if copy else data
            bridge = as_anndata(target, mod)
            func(bridge, *args, **kwargs)
            write_back(bridge, target, mod)
            return target if copy else None
        if mod is not None:
            raise ValueError("mod= is only used with a MuData; pass the AnnData of the modality instead.")
        check_adata(data)
        target = _copy(data) if copy else _actual(data)
        out = func(target, *args, **kwargs)
        if out is not None:  # pragma: no cover - a tool must not return what it stores
            raise RuntimeError(f"{func.__name__} returned a value; tools store their results and return None.")
        return target if copy else None

    _with_params(
        func,
        wrapper,
        [
            inspect.Parameter("copy", _KW, default=False, annotation="bool"),
            inspect.Parameter("mod", _KW, default=None, annotation="str | None"),
        ],
        {"copy": _COPY_DOC, "mod": _MOD_DOC},
    )
    wrapper.__featurelens_tool__ = True
    return wrapper


def reader(func: Callable) -> Callable:
    """Public wrapper of an accessor or comparison: MuData support (``mod=``), nothing written."""

    @functools.wraps(func)
    def wrapper(data, *args, mod: str | None = None, **kwargs):
        if is_mudata(data):
            return func(as_anndata(data, mod), *args, **kwargs)
        if mod is not None:
            raise ValueError("mod= is only used with a MuData; pass the AnnData of the modality instead.")
        check_adata(data)
        return func(data, *args, **kwargs)

    _with_params(
        func, wrapper, [inspect.Parameter("mod", _KW, default=None, annotation="str | None")], {"mod": _MOD_DOC}
    )
    return wrapper


def renamed(**mapping: str | Callable[[Any], dict[str, Any]]) -> Callable:
    """Keep old keyword names working for one release: ``@renamed(padj_threshold="pval_cutoff")``.

    A value may instead be a function of the old value returning the new keywords (when one old
    option became several, e.g. ``padj_threshold=x`` -> ``pval_cutoff=x, adjusted=True``).
    """

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for old, new in mapping.items():
                if old not in kwargs:
                    continue
                value = kwargs.pop(old)
                new_kwargs = {new: value} if isinstance(new, str) else new(value)
                clash = [k for k in new_kwargs if k in kwargs]
                if clash:
                    raise TypeError(f"Pass `{clash[0]}` only; `{old}` is its old name.")
                warnings.warn(
                    f"`{old}` is deprecated; use {', '.join(f'`{k}={v!r}`' for k, v in new_kwargs.items())} instead. "
                    "The old name works in this release and will be removed in the next.",
                    FutureWarning,
                    stacklevel=user_stacklevel(),
                )
                kwargs.update(new_kwargs)
            return func(*args, **kwargs)

        return wrapper

    return decorate
