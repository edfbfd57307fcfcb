"""Row blocks of matrices in memory or on disk, and sums over them (no AnnData).

A cells x genes matrix may be a numpy array, a scipy sparse matrix, a memory map, an h5py or
zarr dataset, a sparse dataset of a backed AnnData (``read_h5ad(..., backed="r")``) or a dask
array (``anndata.experimental.read_lazy``, ``read_elem_lazy``, ``da.from_zarr``). The statistics
read such matrices only through :func:`row_blocks`, :func:`take_rows` and :func:`reduce_rows`, so
memory is bounded by one block of rows (about :data:`BLOCK_BYTES` of stored values) whatever the
matrix's size.

:func:`reduce_rows` sums a function of every block. For a dask array it builds one task per
group of chunks and adds the results pairwise in a tree, computed by dask's current scheduler:
the default threaded one, or a ``dask.distributed.Client`` when the user has created one, in
which case the blocks are read and reduced on the workers and only the sums travel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp

#: stored bytes of one block of rows (values and column indices of a sparse matrix)
BLOCK_BYTES = 256 * 2**20


def is_dask(X) -> bool:
    """Whether ``X`` is a dask array."""
    return type(X).__module__.split(".")[0] == "dask"


def is_lazy(X) -> bool:
    """Whether ``X`` is read from disk or computed on demand rather than held in memory."""
    if isinstance(X, np.memmap):
        return True
    return type(X).__module__.split(".")[0] in ("dask", "h5py", "zarr", "anndata")


def is_sparse_like(X) -> bool:
    """Whether ``X`` holds sparse blocks (scipy sparse, a sparse dataset, a dask array of sparse chunks)."""
    if sp.issparse(X):
        return True
    if is_dask(X):
        return sp.issparse(getattr(X, "_meta", None))
    return "sparse" in type(X).__name__.lower() or "csr" in type(X).__name__.lower()


def stored_nnz(X) -> int | None:
    """Number of stored values of a sparse matrix or dataset, when known without reading the values."""
    if sp.issparse(X):
        return int(X.nnz)
    group = getattr(X, "group", None)
    if group is not None and "data" in group:
        return int(group["data"].shape[0])
    return None


def block_rows(X, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that a block holds about ``block_bytes`` of stored values."""
    n, m = X.shape
    itemsize = np.dtype(getattr(X, "dtype", np.float64)).itemsize
    nnz = stored_nnz(X)
    per_row = (nnz / max(n, 1)) * (itemsize + 4) if nnz is not None else m * itemsize
    return int(max(256, min(n, block_bytes // max(per_row, 1.0))))


def to_memory(block):
    """An in-memory block: CSR for sparse blocks, a numpy array otherwise."""
    if is_dask(block):
        block = block.compute()
    if sp.issparse(block):
        return block if block.format == "csr" else sp.csr_matrix(block)
    if hasattr(block, "to_numpy"):
        return block.to_numpy()
    return np.asarray(block)


def _dask_row_groups(X, rows: int) -> list[tuple[int, int, list]]:
    """Consecutive row chunks of a dask array grouped into pieces of at least ``rows`` rows."""
    delayed = X.to_delayed()
    bounds = np.concatenate([[0], np.cumsum(X.chunks[0])])
    groups, start, members = [], 0, []
    for i in range(delayed.shape[0]):
        members.append(list(delayed[i]))
        if bounds[i + 1] - start >= rows or i == delayed.shape[0] - 1:
            groups.append((int(start), int(bounds[i + 1]), members))
            start, members = int(bounds[i + 1]), []
    return groups


def _assemble(pieces: list[list]):
    """Join a group's chunks (rows of column chunks) into one in-memory block."""
    rows = []
    for cols in pieces:
        cols = [to_memory(c) for c in cols]
        if len(cols) == 1:
            rows.append(cols[0])
        else:
            rows.append(sp.hstack(cols, "csr") if sp.issparse(cols[0]) else np.hstack(cols))
    if len(rows) == 1:
        return rows[0]
    return sp.vstack(rows, "csr") if sp.issparse(rows[0]) else np.vstack(rows)


def row_blocks(X, rows: int | None = None) -> Iterator[tuple[int, int, object]]:
    """``(start, stop, block)`` for consecutive blocks of rows, each block in memory (CSR or ndarray)."""
    rows = block_rows(X) if rows is None else int(rows)
    n = X.shape[0]
    if is_dask(X):
        for s, e, pieces in _dask_row_groups(X, rows):
            yield s, e, _assemble([[c.compute() for c in cols] for cols in pieces])
        return
    if not is_lazy(X) and rows >= n:
        yield 0, n, to_memory(X)
        return
    for s in range(0, n, rows):
        e = min(n, s + rows)
        yield s, e, to_memory(X[s:e])


def _add(a, b):
    if isinstance(a, tuple):
        return tuple(_add(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) for k in a}
    return a + b


def _tree_sum(parts: list):
    import dask

    add = dask.delayed(_add, pure=True)
    while len(parts) > 1:
        parts = [add(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def _dask_task(fn, s, e, pieces, *args):
    return fn(s, e, _assemble(pieces), *args)


def reduce_rows(
    fn: Callable,
    X,
    *,
    args: Callable | None = None,
    rows: int | None = None,
    progress: bool = False,
    desc: str = "blocks",
):
    """Sum of ``fn(start, stop, block, *args(start, stop))`` over the row blocks of ``X``.

    ``fn`` returns an array, or a tuple / dict of arrays, of the same shape for every block;
    ``args`` gives the (small) per-block inputs, so that a dask task carries only its own. A dask
    ``X`` is reduced by dask (see the module docstring); anything else block by block here.
    """
    rows = block_rows(X) if rows is None else int(rows)
    extra = args if args is not None else (lambda s, e: ())
    if is_dask(X):
        import dask

        task = dask.delayed(_dask_task, pure=True)
        parts = [task(fn, s, e, pieces, *extra(s, e)) for s, e, pieces in _dask_row_groups(X, rows)]
        return dask.compute(_tree_sum(parts))[0]
    from tqdm.auto import tqdm

    total = None
    n_blocks = -(-X.shape[0] // max(rows, 1))
    for s, e, blk in tqdm(row_blocks(X, rows), total=n_blocks, desc=desc, disable=not progress, leave=False):
        part = fn(s, e, blk, *extra(s, e))
        total = part if total is None else _add(total, part)
    return total


def take_rows(X, rows: np.ndarray):
    """Rows ``rows`` of ``X`` (any order, repeats allowed) as an in-memory block."""
    rows = np.asarray(rows, dtype=np.int64)
    if not is_lazy(X):
        return to_memory(X[rows])
    order = np.unique(rows)  # h5py and zarr read sorted, distinct rows
    blk = to_memory(X[order])
    pos = np.searchsorted(order, rows)
    return blk if np.array_equal(pos, np.arange(order.size)) else blk[pos]
