"""Writing activations straight into an on-disk store (zarr or HDF5) while they are computed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

#: bytes of codes collected before they are appended to the store
FLUSH_BYTES = 64 * 2**20


def _read_only_error(where: str) -> ValueError:
    return ValueError(
        f"{where} is open read-only, so the activations cannot be written into it. Open it for writing "
        "(`anndata.read_h5ad(path, backed='r+')`, `h5py.File(path, 'a')`, `zarr.open_group(path, mode='a')`) "
        "or pass `out=` a new path (e.g. 'codes.zarr')."
    )


def open_store(out, adata=None):
    """The group to write into: an open zarr / h5py group, or a path (``.h5`` / ``.h5ad``: HDF5, else zarr)."""
    if isinstance(out, (str, os.PathLike)):
        path = Path(out)
        backed = getattr(adata, "filename", None) if adata is not None and adata.isbacked else None
        if backed is not None and Path(backed).resolve() == path.resolve():
            if adata.file._filemode == "r":
                raise _read_only_error(f"{path} (the file this AnnData is backed by)")
            return adata.file._file
        if path.exists() and not os.access(path, os.W_OK):
            raise _read_only_error(str(path))
        if not path.parent.exists() or not os.access(path.parent, os.W_OK):
            raise ValueError(f"Cannot write the activations to {path}: its folder does not exist or is not writable.")
        if path.suffix in (".h5", ".h5ad", ".hdf5"):
            import h5py

            return h5py.File(path, "a")
        import zarr

        return zarr.open_group(str(path), mode="a")
    mode = getattr(getattr(out, "file", None), "mode", None)
    if mode == "r" or getattr(out, "read_only", False):
        raise _read_only_error(f"The store {out!r}")
    if not hasattr(out, "create_group"):
        raise TypeError(f"`out` must be a path or an open zarr / h5py group, got {type(out).__name__}.")
    return out


class StoreSink:
    """Appends the codes of every batch to a sparse (CSR) element of a store, in bounded pieces."""

    def __init__(self, group, name: str, n_features: int):
        self.group, self.name, self.n_features = group, name, n_features
        self.data, self.indices, self.counts, self.bytes = [], [], [], 0
        self.written = False
        if name in group:
            del group[name]

    def add(self, idx: np.ndarray, val: np.ndarray, counts: np.ndarray) -> None:
        self.data.append(val)
        self.indices.append(idx)
        self.counts.append(counts)
        self.bytes += val.nbytes + idx.nbytes
        if self.bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.counts:
            return
        from anndata.io import sparse_dataset, write_elem

        counts = np.concatenate(self.counts)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        piece = sp.csr_matrix(
            (np.concatenate(self.data), np.concatenate(self.indices), indptr), shape=(counts.size, self.n_features)
        )
        if not self.written:
            write_elem(self.group, self.name, piece)
            self.written = True
        else:
            sparse_dataset(self.group[self.name]).append(piece)
        self.data, self.indices, self.counts, self.bytes = [], [], [], 0

    def result(self):
        """The stored codes, read lazily (a dask array of CSR chunks)."""
        from anndata.experimental import read_elem_lazy

        self.flush()
        if not self.written:
            from anndata.io import write_elem

            write_elem(self.group, self.name, sp.csr_matrix((0, self.n_features), dtype=np.float32))
        elem = self.group[self.name]
        n = int(elem.attrs["shape"][0])
        return read_elem_lazy(elem, chunks=(max(1, min(n, 65536)), self.n_features))
