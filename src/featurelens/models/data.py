"""Rows of an embedding read block by block, so the learners train on data in memory or on disk.

:class:`RowSource` wraps anything that slices by rows into arrays: a numpy memmap, an h5py or zarr
dataset (an AnnData opened with ``backed="r"`` or read lazily), or a dask array (``compute`` is
called on one block at a time). :class:`ShuffleBuffer` draws training batches from it through a
buffer of whole chunks: every epoch visits the chunks in a random order, loads as many as fill the
buffer, shuffles the rows of the buffer and serves batches from it. Rows are therefore sampled
without replacement within an epoch, but a batch only mixes rows of the chunks that share a buffer
(with one chunk, or a buffer as large as the data, this is the in-memory sampling). Memory is bounded
by the buffer. No AnnData here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

#: default size of one chunk read from disk
CHUNK_BYTES = 32 * 2**20
#: default size of the shuffle buffer
BUFFER_BYTES = 512 * 2**20


def _storage_chunk_rows(data) -> int | None:
    """Rows per chunk of the storage (dask, h5py or zarr), when it has chunks."""
    chunks = getattr(data, "chunks", None)
    if chunks is None:
        return None
    first = chunks[0]
    if isinstance(first, tuple):  # dask: a tuple of chunk sizes per axis
        return int(first[0]) if first else None
    return int(first)


class RowSource:
    """Read the rows of a 2-D array-like in chunks, as float32.

    Parameters
    ----------
    data
        A 2-D array-like that supports ``data[start:stop]`` (numpy memmap, h5py / zarr dataset,
        dask array).
    chunk_rows
        Rows read at once (default: the storage's chunks, at least about 32 MB).
    name
        What the data is called in error messages.

    Examples
    --------
    >>> import numpy as np
    >>> src = RowSource(np.arange(12.0).reshape(6, 2), chunk_rows=4)
    >>> [b.shape for b in src.blocks()]
    [(4, 2), (2, 2)]
    """

    def __init__(self, data, *, chunk_rows: int | None = None, name: str = "the embedding"):
        shape = tuple(getattr(data, "shape", ()))
        if len(shape) != 2:
            raise ValueError(f"{name} must be two-dimensional (cells x dimensions), got shape {shape}.")
        if not np.issubdtype(np.dtype(data.dtype), np.number):
            raise ValueError(f"{name} must be numeric, got dtype {data.dtype}.")
        self.data, self.name = data, name
        self.n_rows, self.n_cols = int(shape[0]), int(shape[1])
        if chunk_rows is None:
            base = _storage_chunk_rows(data) or 1
            floor = max(1, CHUNK_BYTES // (4 * max(self.n_cols, 1)))
            chunk_rows = base * max(1, -(-floor // base))  # whole storage chunks, about CHUNK_BYTES
        self.chunk_rows = int(max(1, min(int(chunk_rows), max(self.n_rows, 1))))

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)``."""
        return self.n_rows, self.n_cols

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return -(-self.n_rows // self.chunk_rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a float32 array."""
        block = self.data[start:stop]
        if hasattr(block, "compute"):
            block = block.compute()
        return np.asarray(block, dtype=np.float32)

    def chunk(self, i: int) -> np.ndarray:
        """Chunk ``i``."""
        return self.read(i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n_rows))

    def blocks(self) -> Iterator[np.ndarray]:
        """Every chunk in order."""
        for i in range(self.n_chunks):
            yield self.chunk(i)


class ShuffleBuffer:
    """Training batches from a :class:`RowSource` through a shuffle buffer of whole chunks.

    Parameters
    ----------
    source
        The rows.
    transform
        Applied to every loaded buffer (e.g. the normalisation); returns float32 rows.
    buffer_rows
        Rows held at once (rounded up to whole chunks; at least one batch). At the end of an epoch,
        chunks that hold fewer rows than a batch are skipped, as the in-memory path skips the last
        partial batch.
    generator
        CPU generator for the chunk order and the row order.
    device
        Where batches are moved.

    Examples
    --------
    >>> import numpy as np, torch
    >>> src = RowSource(np.arange(20.0).reshape(10, 2), chunk_rows=3)
    >>> buf = ShuffleBuffer(src, lambda x: x, buffer_rows=6, generator=torch.Generator().manual_seed(0))
    >>> buf.batch(4).shape
    torch.Size([4, 2])
    """

    def __init__(self, source: RowSource, transform: Callable[[np.ndarray], np.ndarray], *, buffer_rows: int,
                 generator: torch.Generator, device: torch.device | str = "cpu"):  # fmt: skip
        self.source, self.transform, self.generator = source, transform, generator
        self.device = torch.device(device)
        self.chunks_per_buffer = max(1, -(-int(buffer_rows) // source.chunk_rows))
        self.order = self._chunk_order()
        self.next_chunk = 0
        self.buffer_chunks: list[int] = []
        self.buffer: torch.Tensor | None = None
        self.perm: torch.Tensor | None = None
        self.pos = 0

    @property
    def n_rows(self) -> int:
        """Rows of the source."""
        return self.source.n_rows

    def _chunk_order(self) -> torch.Tensor:
        n = self.source.n_chunks
        return torch.randperm(n, generator=self.generator) if n > 1 else torch.zeros(1, dtype=torch.long)

    def _load(self, chunks: list[int]) -> None:
        self.buffer = None  # release the previous buffer before reading the next
        rows = np.concatenate([self.source.chunk(int(i)) for i in chunks])
        self.buffer = torch.from_numpy(np.ascontiguousarray(self.transform(rows), dtype=np.float32))
        self.buffer_chunks = [int(i) for i in chunks]

    def _rows(self, chunks) -> int:
        c, n = self.source.chunk_rows, self.source.n_rows
        return sum(min(c, n - int(i) * c) for i in chunks)

    def _refill(self, batch_size: int) -> None:
        chunks = self.order[self.next_chunk : self.next_chunk + self.chunks_per_buffer].tolist()
        if self._rows(chunks) < batch_size:  # the end of an epoch: skip its last rows, as the last partial batch
            self.order, self.next_chunk = self._chunk_order(), 0
            chunks = self.order[: self.chunks_per_buffer].tolist()
        self.next_chunk += len(chunks)
        self._load(chunks)
        self.perm = torch.randperm(self.buffer.shape[0], generator=self.generator)
        self.pos = 0

    def batch(self, batch_size: int) -> torch.Tensor:
        """The next ``batch_size`` rows (rows left at the end of a buffer are skipped, as at the end of an epoch)."""
        if self.buffer is None or self.pos + batch_size > self.buffer.shape[0]:
            self._refill(batch_size)
            if batch_size > self.buffer.shape[0]:
                raise ValueError(
                    f"A batch of {batch_size} rows does not fit the shuffle buffer of {self.buffer.shape[0]} rows; "
                    "use a larger buffer or a smaller batch."
                )
        idx = self.perm[self.pos : self.pos + batch_size]
        self.pos += batch_size
        return self.buffer[idx].to(self.device)

    def state_dict(self) -> dict:
        """Where the sampler is: chunk order and position, the chunks in the buffer and the row order."""
        return {
            "order": self.order.clone(),
            "next_chunk": int(self.next_chunk),
            "buffer_chunks": list(self.buffer_chunks),
            "perm": None if self.perm is None else self.perm.clone(),
            "pos": int(self.pos),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (the buffer's chunks are read again)."""
        self.order, self.next_chunk = state["order"], int(state["next_chunk"])
        self.perm, self.pos = state["perm"], int(state["pos"])
        if state["buffer_chunks"]:
            self._load(state["buffer_chunks"])
        else:
            self.buffer = None


class MemorySampler:
    """Batches of rows of an in-memory tensor, without replacement epoch by epoch.

    The tensor stays where it is (host memory for an embedding held by an AnnData); every batch is
    gathered there and moved to ``device`` (default: the tensor's), so a GPU holds one batch at a
    time, not the embedding.
    """

    def __init__(self, X: torch.Tensor, generator: torch.Generator, device: torch.device | str | None = None):
        self.X, self.generator = X, generator
        self.device = X.device if device is None else torch.device(device)
        self._pin = self.device.type == "cuda" and X.device.type == "cpu"
        self.perm = torch.randperm(X.shape[0], generator=generator)
        self.pos = 0

    @property
    def n_rows(self) -> int:
        """Rows of the data."""
        return int(self.X.shape[0])

    def batch(self, batch_size: int) -> torch.Tensor:
        """The next ``batch_size`` rows."""
        if self.pos + batch_size > self.n_rows:
            self.perm = torch.randperm(self.n_rows, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + batch_size].to(self.X.device)
        self.pos += batch_size
        rows = self.X[idx]
        if rows.device == self.device:
            return rows
        return (rows.pin_memory() if self._pin else rows).to(self.device, non_blocking=self._pin)

    def state_dict(self) -> dict:
        """The row order and the position in it."""
        return {"perm": self.perm.cpu().clone(), "pos": int(self.pos)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.perm, self.pos = state["perm"], int(state["pos"])
