"""CSR: compressed sparse rows of the (out_features x in_features) weight.

Buffers (the layout every kernel reads):
  crow_indices  int32 (out_features + 1,)  row n's kept values are values[crow[n]:crow[n+1]]
  col_indices   int32 (nnz,)               column of each kept value, ascending within a row
  values        (nnz,)                     the kept values, row-major order, the weight's dtype
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import torch

from .. import ops
from ..ops._checks import INT32_MAX
from ._common import check_weight_and_mask as _check_weight_and_mask
from ._common import compressed_rows_apply as _compressed_rows_apply
from ._common import compressed_rows_forward as _compressed_rows_forward
from .base import SparseFormat, register


_CSR_MM = ops.linear_call(torch.ops.sparsekit.csr_mm.default)


@register
class CSRWeight(SparseFormat):
    name = "csr"
    buffer_names = ("crow_indices", "col_indices", "values")

    def __init__(self, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
                 shape: Tuple[int, int], check: bool = True):
        self.crow_indices = crow_indices
        self.col_indices = col_indices
        self.values = values
        self.shape = (int(shape[0]), int(shape[1]))
        if check:
            self.check()

    # ------------------------------------------------------------------------------ building
    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None) -> "CSRWeight":
        """Pack `weight` keeping the positions where `mask` is True (default: weight != 0).

        Masked positions are kept even where the weight is zero, so `to_dense()` returns
        exactly `weight * mask`.
        """
        mask = _check_weight_and_mask(weight, mask, "CSRWeight.from_dense")
        rows, cols = weight.shape
        if cols > INT32_MAX:
            raise ValueError(f"CSRWeight.from_dense: in_features {cols} exceeds the int32 index range")
        w = weight.detach()
        counts = mask.sum(dim=1, dtype=torch.int64)
        nnz = int(counts.sum())
        if nnz > INT32_MAX:
            raise ValueError(f"CSRWeight.from_dense: nnz {nnz} exceeds the int32 index range")
        crow = torch.zeros(rows + 1, dtype=torch.int64, device=w.device)
        torch.cumsum(counts, 0, out=crow[1:])
        idx = mask.nonzero(as_tuple=True)  # row-major, columns ascending within a row
        return cls(crow.to(torch.int32), idx[1].to(torch.int32), w[idx].contiguous(), (rows, cols), check=False)

    @classmethod
    def from_buffers(cls, buffers: Dict[str, torch.Tensor], shape: Tuple[int, int]) -> "CSRWeight":
        return cls(buffers["crow_indices"], buffers["col_indices"], buffers["values"], shape)

    def check(self) -> None:
        """Validates the buffers (dtypes, lengths, monotone rows, columns in range)."""
        rows, cols = self.shape
        crow, col, val = self.crow_indices, self.col_indices, self.values
        if crow.dtype != torch.int32 or col.dtype != torch.int32:
            raise TypeError(f"CSRWeight: expected int32 indices, got {crow.dtype} and {col.dtype}")
        if crow.shape != (rows + 1,):
            raise ValueError(f"CSRWeight: expected crow_indices of shape ({rows + 1},), got {tuple(crow.shape)}")
        if col.dim() != 1 or val.dim() != 1 or col.numel() != val.numel():
            raise ValueError(
                f"CSRWeight: expected 1-d col_indices and values of one length, got {tuple(col.shape)} and "
                f"{tuple(val.shape)}"
            )
        if not (crow.device == col.device == val.device):
            raise ValueError(f"CSRWeight: buffers on different devices: {crow.device}, {col.device}, {val.device}")
        if int(crow[0]) != 0 or int(crow[-1]) != val.numel():
            raise ValueError(
                f"CSRWeight: expected crow_indices[0] == 0 and crow_indices[-1] == nnz == {val.numel()}, "
                f"got {int(crow[0])} and {int(crow[-1])}"
            )
        if rows and bool((crow[1:] < crow[:-1]).any()):
            raise ValueError("CSRWeight: crow_indices must be non-decreasing")
        if col.numel() and (int(col.min()) < 0 or int(col.max()) >= cols):
            raise ValueError(f"CSRWeight: col_indices must lie in [0, {cols})")

    # ------------------------------------------------------------------------------ using
    def to_dense(self) -> torch.Tensor:
        return ops.reference.csr_to_dense(self.crow_indices, self.col_indices, self.values, self.shape)

    @staticmethod
    def apply(x, shape, bias, crow_indices, col_indices, values):
        return _compressed_rows_apply(_CSR_MM, "csr_mm", x, shape, bias, crow_indices, col_indices, values)

    # a partial, not a def: one Python frame less per call (compressed_rows_forward is the forward)
    module_forward = staticmethod(functools.partial(_compressed_rows_forward, _CSR_MM, None))

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def __repr__(self) -> str:
        return f"CSRWeight(shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, dtype={self.values.dtype})"
