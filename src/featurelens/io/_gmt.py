"""Gene sets: reading and writing GMT files, and normalising every accepted gene-set input."""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["read_gene_sets", "read_gmt", "write_gmt"]

COLUMNS = ["term", "name", "gene"]
_GZIP_MAGIC = b"\x1f\x8b"
#: Names of the bundled gene-set collections accepted by :func:`read_gene_sets`, mapped to the GO ontology.
BUNDLED = {"GO_BP": "BP", "GO_MF": "MF", "GO_CC": "CC"}
_ACCEPTED = (
    "a bundled collection name ('GO_BP', 'GO_MF', 'GO_CC'), a path (str or pathlib.Path) to a .gmt or .gmt.gz file, "
    "a dict mapping term -> iterable of genes, or a long pandas.DataFrame with columns 'term' and 'gene' "
    "(and optionally 'name')"
)


def _is_gzip(path: Path) -> bool:
    if path.suffix.lower() == ".gz":
        return True
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame({col: pd.Series([], dtype=object) for col in COLUMNS})


def _frame(terms: list[str], names: list[str], genes: list[list[str]]) -> pd.DataFrame:
    """Long frame from parallel per-term lists (genes already de-duplicated)."""
    if not terms:
        return _empty_frame()
    counts = np.fromiter((len(g) for g in genes), dtype=np.int64, count=len(genes))
    term_col = np.repeat(np.asarray(terms, dtype=object), counts)
    name_col = np.repeat(np.asarray(names, dtype=object), counts)
    gene_col = np.fromiter((g for gs in genes for g in gs), dtype=object, count=int(counts.sum()))
    return pd.DataFrame({"term": term_col, "name": name_col, "gene": gene_col})


def read_gmt(path: str | os.PathLike) -> pd.DataFrame:
    r"""Read gene sets from a GMT file.

    A GMT file has one gene set per line, with tab-separated fields: the term id, a description, then the
    genes. Empty gene fields (for example trailing tabs) are ignored, blank lines are skipped and a gene
    listed twice in the same term is kept once. The file is read as UTF-8; a byte-order mark at its start
    is ignored.

    Parameters
    ----------
    path
        Path to a ``.gmt`` file, optionally gzip-compressed (detected from a ``.gz`` suffix or from the
        gzip magic bytes).

    Returns
    -------
    A long :class:`~pandas.DataFrame` with the string columns ``term``, ``name`` (the description) and
    ``gene``, one row per (term, gene) pair, in file order. An empty file gives an empty frame.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a line has fewer than three fields, an empty term id or no genes, or if a term id appears on two
        lines; the message names the file and the 1-based line number.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import featurelens as fl
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sets.gmt"
    >>> _ = path.write_text("T1\tfirst set\tA\tB\tA\nT2\tsecond set\tC\t\n")
    >>> fl.io.read_gmt(path)
      term        name gene
    0   T1   first set    A
    1   T1   first set    B
    2   T2  second set    C
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GMT file {str(path)!r} does not exist (or is not a file).")
    opener = gzip.open if _is_gzip(path) else open
    terms: list[str] = []
    names: list[str] = []
    genes: list[list[str]] = []
    seen: dict[str, int] = {}
    lineno = 0
    try:
        # utf-8-sig drops a byte-order mark at the start (files saved by Excel and other Windows tools)
        with opener(path, "rt", encoding="utf-8-sig", newline=None) as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                where = f"GMT file {str(path)!r}, line {lineno}"
                if len(fields) < 3:
                    raise ValueError(
                        f"{where}: expected at least 3 tab-separated fields (term id, description, genes), "
                        f"found {len(fields)}. Is the file tab-separated?"
                    )
                term = fields[0].strip()
                if not term:
                    raise ValueError(f"{where}: the term id (field 1) is empty.")
                if term in seen:
                    raise ValueError(f"{where}: term {term!r} was already defined on line {seen[term]}.")
                members = list(dict.fromkeys(g for g in (f.strip() for f in fields[2:]) if g))
                if not members:
                    raise ValueError(f"{where}: term {term!r} has no genes.")
                seen[term] = lineno
                terms.append(term)
                names.append(fields[1].strip())
                genes.append(members)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"GMT file {str(path)!r} could not be read near line {lineno + 1}: {err}") from err
    return _frame(terms, names, genes)


def write_gmt(gene_sets: Any, path: str | os.PathLike) -> None:
    """Write gene sets to a GMT file.

    The inverse of :func:`read_gmt`: one line per term, in order of first appearance, with the term id,
    the name and the genes separated by tabs.

    Parameters
    ----------
    gene_sets
        Anything :func:`read_gene_sets` accepts, typically the long frame returned by :func:`read_gmt`
        or a dict mapping term -> genes.
    path
        Output path. The file is gzip-compressed when the name ends with ``.gz``.

    Returns
    -------
    Nothing; the file at ``path`` is created or overwritten.

    Raises
    ------
    ValueError
        If a term, name or gene contains a tab or a line break (they cannot be stored in a GMT file).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import featurelens as fl
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sets.gmt.gz"
    >>> fl.io.write_gmt({"T1": ["A", "B"], "T2": ["C"]}, path)
    >>> fl.io.read_gmt(path)["term"].tolist()
    ['T1', 'T1', 'T2']
    """
    df = read_gene_sets(gene_sets)
    for col in COLUMNS:
        bad = df[col].str.contains(r"[\t\r\n]", regex=True)
        if bad.any():
            raise ValueError(
                f"Cannot write a GMT file: column {col!r} contains tabs or line breaks, e.g. {df[col][bad].iloc[0]!r}."
            )
    buf = io.StringIO()
    for (term, name), genes in df.groupby(["term", "name"], sort=False)["gene"]:
        buf.write("\t".join([term, name, *genes]))
        buf.write("\n")
    data = buf.getvalue().encode("utf-8")
    path = Path(path)
    if path.name.lower().endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _check_no_missing(values: pd.Series, what: str) -> None:
    missing = values.isna()
    if missing.any():
        raise ValueError(f"Gene sets: {int(missing.sum())} missing value(s) in {what}.")


def _from_mapping(gene_sets: Mapping) -> pd.DataFrame:
    terms: list[str] = []
    genes: list[list[str]] = []
    for term, members in gene_sets.items():
        if isinstance(members, str | bytes) or not isinstance(members, Iterable):
            raise TypeError(
                f"Gene sets: the genes of term {term!r} must be an iterable of gene names (list, set, tuple, ...), "
                f"got {type(members).__name__}."
            )
        is_set = isinstance(members, set | frozenset)
        members = list(members)
        if is_set:
            members = sorted(members, key=str)  # sets have no order; make the result reproducible
        if any(g is None or (isinstance(g, float) and np.isnan(g)) for g in members):
            raise ValueError(f"Gene sets: term {term!r} has missing gene names (None or NaN).")
        members = list(dict.fromkeys(str(g) for g in members))
        if members:  # a term with no genes carries no information; a long frame could not hold it either
            terms.append(str(term))
            genes.append(members)
    return _frame(terms, terms, genes)


def _from_frame(df: pd.DataFrame) -> pd.DataFrame:
    missing = [col for col in ("term", "gene") if col not in df.columns]
    if missing:
        raise ValueError(
            f"Gene sets: a DataFrame needs the columns 'term' and 'gene' (and optionally 'name'); "
            f"missing {missing}, found {list(df.columns)}."
        )
    out = pd.DataFrame(
        {
            "term": df["term"].to_numpy(),
            "name": (df["name"] if "name" in df.columns else df["term"]).to_numpy(),
            "gene": df["gene"].to_numpy(),
        }
    )
    for col in COLUMNS:
        _check_no_missing(out[col], f"column {col!r}")
        out[col] = out[col].astype(str).astype(object)
    n_names = out.groupby("term", sort=False)["name"].nunique()
    if (n_names > 1).any():
        term = n_names.index[n_names > 1][0]
        raise ValueError(
            f"Gene sets: each term needs a single name, but term {term!r} has "
            f"{sorted(out.loc[out['term'] == term, 'name'].unique())}."
        )
    out = out.drop_duplicates(["term", "gene"])
    # group the rows by term (terms in order of first appearance, genes in row order), as in a GMT file
    codes, _ = pd.factorize(out["term"])
    out = out.iloc[np.argsort(codes, kind="stable")]
    return out.reset_index(drop=True)


def read_gene_sets(gene_sets: Any) -> pd.DataFrame:
    """Normalise any accepted gene-set input to one long DataFrame.

    Parameters
    ----------
    gene_sets
        One of

        - ``"GO_BP"``, ``"GO_MF"`` or ``"GO_CC"`` (case-insensitive): the bundled human Gene Ontology gene
          sets, unfiltered (see :func:`featurelens.datasets.go_gene_sets`);
        - a path (:class:`str` or :class:`pathlib.Path`) to a ``.gmt`` or ``.gmt.gz`` file (see :func:`read_gmt`);
        - a dict mapping term -> iterable of genes; the term doubles as the name, terms without genes are
          dropped and sets are sorted (they have no order);
        - a long :class:`~pandas.DataFrame` with the columns ``term`` and ``gene`` and optionally ``name``
          (one name per term; the term is used when absent). Other columns are ignored.

    Returns
    -------
    A :class:`~pandas.DataFrame` with the string columns ``term``, ``name`` and ``gene``, one row per
    (term, gene) pair without duplicates, rows grouped by term in order of first appearance.

    Raises
    ------
    TypeError
        If ``gene_sets`` is of an unsupported type, or a dict value is not an iterable of genes.
    ValueError
        If a name is neither a bundled collection nor an existing file, a DataFrame lacks the required
        columns or holds missing values, a term has several names, or the result is empty.
    FileNotFoundError
        If a path (or a string that looks like one) points to no file.

    Examples
    --------
    >>> import featurelens as fl
    >>> fl.io.read_gene_sets({"T1": ["A", "B"], "T2": ["C"]})
      term name gene
    0   T1   T1    A
    1   T1   T1    B
    2   T2   T2    C
    >>> go = fl.io.read_gene_sets("GO_MF")
    >>> go["term"].nunique()
    4964
    """
    if isinstance(gene_sets, str) and gene_sets.upper() in BUNDLED:
        df = bundled_go(BUNDLED[gene_sets.upper()]).copy(deep=True)
        source = f"bundled collection {gene_sets!r}"
    elif isinstance(gene_sets, str | os.PathLike):
        path = Path(gene_sets)
        if not path.is_file():
            looks_like_path = (
                isinstance(gene_sets, os.PathLike)
                or path.name.lower().endswith((".gmt", ".gmt.gz", ".gz", ".txt"))
                or os.sep in str(gene_sets)
                or "/" in str(gene_sets)
            )
            if looks_like_path:
                raise FileNotFoundError(f"Gene sets: the file {str(gene_sets)!r} does not exist.")
            raise ValueError(
                f"Gene sets: unknown name {gene_sets!r} (and no file of that name exists). Accepted: {_ACCEPTED}."
            )
        df = read_gmt(path)
        source = f"file {str(gene_sets)!r}"
    elif isinstance(gene_sets, Mapping):
        df = _from_mapping(gene_sets)
        source = "the dict"
    elif isinstance(gene_sets, pd.DataFrame):
        df = _from_frame(gene_sets)
        source = "the DataFrame"
    else:
        raise TypeError(f"Gene sets: unsupported type {type(gene_sets).__name__}. Accepted: {_ACCEPTED}.")
    if df.empty:
        raise ValueError(f"Gene sets: {source} holds no gene sets.")
    return df


@lru_cache(maxsize=3)
def bundled_go(ontology: str) -> pd.DataFrame:
    """The raw (unfiltered) bundled gene sets of one ontology; cached, so callers must never modify it."""
    from .._core import data_file

    with data_file(f"human_GO_{ontology}_propagated_all_2022-07-01.gmt.gz") as path:
        return read_gmt(path)
