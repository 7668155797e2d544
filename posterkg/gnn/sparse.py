"""Sparse kernels shared by the graph models: CSR construction, normalisation and ``A @ x``."""

from __future__ import annotations

import numpy as np
import torch


def to_torch_csr_tensor(index: torch.Tensor, value: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """COO ``index`` [2, E] and ``value`` [E] as a CSR tensor, duplicates summed (what PyG's
    function of that name does, in plain torch: importing torch_geometric costs seconds of
    start-up in every interactive command). ``value`` may carry autograd."""
    n_rows, n_cols = int(size[0]), int(size[1])
    key = index[0] * n_cols + index[1]
    key, perm = torch.sort(key, stable=True)
    value = value[perm]
    uniq, inv = torch.unique_consecutive(key, return_inverse=True)
    if len(uniq) != len(key):
        value = torch.zeros(len(uniq), dtype=value.dtype).index_add(0, inv, value)
    rows = uniq // n_cols
    crow = torch.zeros(n_rows + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return torch.sparse_csr_tensor(crow, uniq % n_cols, value, size=(n_rows, n_cols))


class _SpMM(torch.autograd.Function):
    """``A @ x`` for a constant sparse CSR ``A`` whose transpose is given: the backward pass is
    ``A^T @ grad`` with the pre-built transpose instead of torch's transpose-by-sort each step."""

    @staticmethod
    def forward(ctx, a, at, x):
        ctx.at = at
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad):
        return None, None, torch.sparse.mm(ctx.at, grad.contiguous())


def spmm(a: torch.Tensor, x: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse CSR ``a`` times dense ``x``; ``at`` = ``a``'s transpose (default: ``a``, symmetric).
    When ``a`` carries autograd (edge weights with a gradient: explanations) torch's own sparse
    product is used so the gradient reaches the weights."""
    if not x.requires_grad or a.requires_grad:
        return torch.sparse.mm(a, x)
    return _SpMM.apply(a, a if at is None else at, x)


def csr(rows, cols, vals, shape) -> torch.Tensor:
    """A torch sparse CSR tensor from COO parts (numpy or torch; ``vals`` may carry autograd)."""
    idx = torch.stack([torch.as_tensor(np.asarray(rows) if not torch.is_tensor(rows) else rows, dtype=torch.long),
                       torch.as_tensor(np.asarray(cols) if not torch.is_tensor(cols) else cols, dtype=torch.long)])
    v = vals if torch.is_tensor(vals) else torch.as_tensor(np.asarray(vals), dtype=torch.float32)
    return to_torch_csr_tensor(idx, v.float(), size=shape)


def sym_norm_adj(n_nodes: int, src, dst, weight=None) -> torch.Tensor:
    """Symmetric-normalised adjacency ``D^-1/2 (A + A^T) D^-1/2`` as a torch sparse CSR tensor.

    ``src``/``dst`` are undirected edges given once; both directions are added. ``weight`` may be
    a tensor that requires grad (the normalisation then stays differentiable)."""
    src = torch.as_tensor(np.asarray(src) if not torch.is_tensor(src) else src, dtype=torch.long)
    dst = torch.as_tensor(np.asarray(dst) if not torch.is_tensor(dst) else dst, dtype=torch.long)
    if weight is None:
        w = torch.ones(len(src))
    else:
        w = weight.float() if torch.is_tensor(weight) else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
    row = torch.cat([src, dst])
    col = torch.cat([dst, src])
    w = torch.cat([w, w])
    deg = torch.zeros(n_nodes, dtype=w.dtype).index_add(0, row, w)
    dinv = torch.where(deg > 0, deg.clamp(min=1e-12).pow(-0.5), torch.zeros_like(deg))
    val = dinv[row] * w * dinv[col]
    return to_torch_csr_tensor(torch.stack([row, col]), val, size=(n_nodes, n_nodes))


def row_norm(rows, cols, w, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-normalised weights as CSR ``[shape]``, and its transpose (``w`` may carry autograd)."""
    rows_t = torch.as_tensor(np.asarray(rows) if not torch.is_tensor(rows) else rows, dtype=torch.long)
    w = w.float() if torch.is_tensor(w) else torch.as_tensor(np.asarray(w), dtype=torch.float32)
    tot = torch.zeros(shape[0], dtype=w.dtype).index_add(0, rows_t, w)
    val = w / tot[rows_t].clamp(min=1e-12)
    return csr(rows_t, cols, val, shape), csr(cols, rows_t, val, (shape[1], shape[0]))
