"""Pure-PyTorch references of every sparsekit op: the test oracle and the last fallback.

They compute in float32 (float64 when given float64) and return the input's dtype, as the
kernels do. They use only dense PyTorch, so they run on any device.
"""
from __future__ import annotations

import torch


def csr_to_dense(crow_indices, col_indices, values, shape, dtype=None) -> torch.Tensor:
    """Scatter a CSR matrix into a dense (rows, cols) tensor."""
    rows, cols = shape
    dtype = dtype or values.dtype
    dense = torch.zeros(rows, cols, dtype=dtype, device=values.device)
    counts = (crow_indices[1:] - crow_indices[:-1]).long()
    row_of = torch.repeat_interleave(torch.arange(rows, device=values.device), counts, output_size=values.numel())
    dense[row_of, col_indices.long()] = values.to(dtype)
    return dense


def csr_mm(x, crow_indices, col_indices, values, out_features, bias=None) -> torch.Tensor:
    """y = x @ W.T + bias, with W given in CSR."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = csr_to_dense(crow_indices, col_indices, values, (out_features, x.shape[-1]), acc)
    y = x.to(acc) @ w.T
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)
