"""Sparse building blocks shared by the learners.

Codes are handled in *flat* form: ``rows`` (non-decreasing sample index), ``cols`` (feature
index) and ``vals``, one entry per non-zero, so fixed-width codes (TopK, pursuit) and
variable-width codes (BatchTopK) share one path. Decoding is an ``embedding_bag`` sum over
decoder rows; the encoder's backward pass touches only the selected pre-activations through
sparse (CSR) products instead of dense ``B x M`` matrices.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

_BLOCK = 64


def topk_indices(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of every row of ``score`` (unsorted).

    For wide rows the search is two-stage and exact: the top ``k`` entries of a row lie in
    the ``k`` blocks with the largest block maxima, so a cheap block-max reduction narrows the
    search to ``k * 64`` candidates per row.
    """
    n, m = score.shape
    if score.device.type != "cpu" or m < 2048 or m % _BLOCK or k * _BLOCK * 4 > m:
        return torch.topk(score, k, dim=1, sorted=False).indices
    nb = m // _BLOCK
    blocks = score.view(n, nb, _BLOCK).amax(dim=2)
    top_blocks = torch.topk(blocks, k, dim=1, sorted=False).indices
    cand = (top_blocks.unsqueeze(2) * _BLOCK + torch.arange(_BLOCK, device=score.device)).reshape(n, -1)
    pick = torch.topk(score.gather(1, cand), k, dim=1, sorted=False).indices
    return cand.gather(1, pick)


def offsets_from_rows(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Bag offsets (start of every row) for non-decreasing ``rows``."""
    counts = torch.bincount(rows, minlength=n_rows)
    offsets = torch.zeros(n_rows, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.cumsum(counts, 0)[:-1]
    return offsets


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """CSR tensor from entries whose ``rows`` are non-decreasing."""
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _sparse_mm(rows, cols, vals, shape, dense, *, sorted_rows: bool) -> torch.Tensor:
    """``S @ dense`` for the sparse matrix ``S`` given by flat entries."""
    if dense.device.type != "cpu":
        s = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape)
        return torch.sparse.mm(s, dense)
    if not sorted_rows:
        order = torch.argsort(rows, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
    return _csr(rows, cols, vals.to(dense.dtype), shape) @ dense


class _GatherPreact(torch.autograd.Function):
    """Selected pre-activations ``(x @ W.T + b)[rows, cols]`` with a sparse backward pass.

    ``pre`` (the dense pre-activations) is computed by the caller without gradient; the
    backward pass only forms the gradients of the selected entries.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, rows, cols, pre):
        ctx.save_for_backward(x, weight, rows, cols)
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad):
        x, weight, rows, cols = ctx.saved_tensors
        n, m = x.shape[0], weight.shape[0]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _sparse_mm(rows, cols, grad, (n, m), weight, sorted_rows=True)
        if ctx.needs_input_grad[1]:
            grad_w = _sparse_mm(cols, rows, grad, (m, n), x, sorted_rows=False)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(m, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        return grad_x, grad_w, grad_b, None, None, None


def gather_preact(x, weight, bias, rows, cols, pre):
    """Differentiable ``pre[rows, cols]`` where ``pre = x @ weight.T + bias`` (given, no grad)."""
    return _GatherPreact.apply(x, weight, bias, rows, cols, pre)


def _pairwise_dots(grad_out, weight, rows, cols, offsets) -> torch.Tensor:
    """``<grad_out[rows[i]], weight[cols[i]]>`` for every entry ``i``."""
    try:
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(grad_out, weight, cols, offsets, rows, 0, -1)
    except (RuntimeError, AttributeError):  # pragma: no cover - operator missing in this torch build
        out = torch.empty(cols.shape[0], dtype=grad_out.dtype, device=grad_out.device)
        step = 16384
        for s in range(0, cols.shape[0], step):
            out[s : s + step] = (weight[cols[s : s + step]] * grad_out[rows[s : s + step]]).sum(1)
        return out


class _SparseDecode(torch.autograd.Function):
    """``embedding_bag`` sum whose backward pass forms the decoder gradient as a sparse product."""

    @staticmethod
    def forward(ctx, vals, weight, rows, cols, offsets):
        ctx.save_for_backward(vals, weight, rows, cols, offsets)
        return F.embedding_bag(cols, weight, offsets, mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, grad):
        vals, weight, rows, cols, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_vals = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_vals = _pairwise_dots(grad, weight, rows, cols, offsets)
        if ctx.needs_input_grad[1]:
            grad_w = _sparse_mm(cols, rows, vals, (weight.shape[0], grad.shape[0]), grad, sorted_rows=False)
        return grad_vals, grad_w, None, None, None


def sparse_decode(rows, cols, vals, weight, n_rows: int) -> torch.Tensor:
    """``out[b] = sum_{i: rows[i] == b} vals[i] * weight[cols[i]]`` (rows non-decreasing).

    Wide dictionaries on the CPU use an ``embedding_bag`` sum (no dense ``B x M`` matrix); small
    ones scatter into a dense code matrix, whose matrix products are faster at that size.
    """
    if weight.shape[0] >= 2048 and weight.device.type == "cpu":
        offsets = offsets_from_rows(rows, n_rows)
        return _SparseDecode.apply(vals.to(weight.dtype), weight, rows, cols, offsets)
    z = torch.zeros(n_rows, weight.shape[0], dtype=weight.dtype, device=weight.device)
    z = z.index_put((rows, cols), vals.to(weight.dtype), accumulate=True)
    return z @ weight


def dense_from_flat(rows, cols, vals, shape) -> torch.Tensor:
    """Dense ``(n, m)`` matrix from flat entries; duplicate entries are summed."""
    out = torch.zeros(shape, dtype=vals.dtype, device=vals.device)
    out.index_put_((rows, cols), vals, accumulate=True)
    return out


def mean_rows(X: torch.Tensor, block: int = 65536) -> torch.Tensor:
    """Column means of ``X`` summed in float64 block by block (no float64 copy of ``X``), as float32."""
    total = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    for s in range(0, X.shape[0], block):
        total += X[s : s + block].double().sum(0)
    return (total / max(X.shape[0], 1)).float()


def gram(weight: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``weight @ weight.T`` of the dictionary rows."""
    return weight @ weight.T


def project_out_radial(weight: torch.Tensor) -> None:
    """Remove from ``weight.grad`` the component parallel to each (unit-norm) row of ``weight``."""
    if weight.grad is None:
        return
    w = weight.detach()
    weight.grad.sub_((weight.grad * w).sum(dim=1, keepdim=True) * w)


@torch.no_grad()
def normalize_rows_(weight: torch.Tensor) -> None:
    """Scale every row of ``weight`` to unit L2 norm, in place."""
    weight.div_(weight.norm(dim=1, keepdim=True).clamp_min(1e-12))


def random_unit_rows(m: int, d: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """``m`` rows drawn uniformly on the unit sphere in ``d`` dimensions."""
    w = torch.randn(m, d, generator=generator, dtype=dtype)
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
