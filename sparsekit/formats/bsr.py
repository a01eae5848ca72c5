"""BSR: the weight cut into R x C blocks; only blocks holding a kept weight are stored."""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import torch

from .. import ops
from ._common import check_int32_range, check_weight_and_mask
from ._common import compressed_rows_apply as _compressed_rows_apply
from ._common import compressed_rows_forward as _compressed_rows_forward
from .base import SparseFormat, register


_BSR_MM = ops.linear_call(torch.ops.sparsekit.bsr_mm.default)
_CUDA_BSR_MM = torch.ops.sparsekit._cuda_bsr_mm.default


@register
class BSRWeight(SparseFormat):
    name = "bsr"
    buffer_names = ("crow_indices", "col_indices", "values")

    def __init__(self, crow_indices, col_indices, values, shape: Tuple[int, int], check: bool = True):
        self.crow_indices, self.col_indices, self.values = crow_indices, col_indices, values
        self.shape = (int(shape[0]), int(shape[1]))
        if check:
            self.check()

    @property
    def blocksize(self) -> Tuple[int, int]:
        return (self.values.shape[1], self.values.shape[2])

    @classmethod
    def from_dense(cls, weight, mask=None, blocksize=(16, 16)) -> "BSRWeight":
        """Keeps every R x C block that holds a kept weight; inside a kept block the pruned
        positions hold zeros, so `to_dense()` is exactly `weight * mask`."""
        mask = check_weight_and_mask(weight, mask, "BSRWeight.from_dense")
        if isinstance(blocksize, int):
            blocksize = (blocksize, blocksize)
        R, C = int(blocksize[0]), int(blocksize[1])
        N, K = weight.shape
        if R <= 0 or C <= 0 or N % R or K % C:
            raise ValueError(
                f"BSRWeight.from_dense: the block {R}x{C} does not tile the weight {N}x{K} "
                "(out_features must divide by R and in_features by C)"
            )
        w = torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype, device=weight.device))
        blocks = w.reshape(N // R, R, K // C, C).permute(0, 2, 1, 3)
        bmask = mask.reshape(N // R, R, K // C, C).any(dim=3).any(dim=1)
        counts = bmask.sum(1, dtype=torch.int64)
        check_int32_range(int(counts.sum()), "BSRWeight.from_dense: nblocks")
        crow = torch.zeros(N // R + 1, dtype=torch.int64, device=w.device)
        torch.cumsum(counts, 0, out=crow[1:])
        br, bc = bmask.nonzero(as_tuple=True)
        return cls(crow.to(torch.int32), bc.to(torch.int32), blocks[br, bc].contiguous(), (N, K), check=False)

    @classmethod
    def from_buffers(cls, buffers: Dict[str, torch.Tensor], shape) -> "BSRWeight":
        return cls(buffers["crow_indices"], buffers["col_indices"], buffers["values"], shape)

    def check(self) -> None:
        N, K = self.shape
        crow, col, val = self.crow_indices, self.col_indices, self.values
        if crow.dtype != torch.int32 or col.dtype != torch.int32:
            raise TypeError(f"BSRWeight: expected int32 indices, got {crow.dtype} and {col.dtype}")
        if val.dim() != 3:
            raise ValueError(f"BSRWeight: expected values of shape (nblocks, R, C), got {tuple(val.shape)}")
        R, C = self.blocksize
        if R <= 0 or C <= 0 or N % R or K % C:
            raise ValueError(f"BSRWeight: the block {R}x{C} does not tile {N}x{K}")
        if crow.shape != (N // R + 1,) or col.shape != (val.shape[0],):
            raise ValueError(
                f"BSRWeight: expected crow_indices ({N // R + 1},) and col_indices ({val.shape[0]},), got "
                f"{tuple(crow.shape)} and {tuple(col.shape)}"
            )
        if int(crow[0]) != 0 or int(crow[-1]) != val.shape[0] or bool((crow[1:] < crow[:-1]).any()):
            raise ValueError("BSRWeight: crow_indices must start at 0, not decrease, and end at nblocks")
        if col.numel() and (int(col.min()) < 0 or int(col.max()) >= K // C):
            raise ValueError(f"BSRWeight: col_indices must lie in [0, {K // C})")

    def to_dense(self) -> torch.Tensor:
        return ops.reference.bsr_to_dense(self.crow_indices, self.col_indices, self.values, self.shape)

    @staticmethod
    def apply(x, shape, bias, crow_indices, col_indices, values):
        return _compressed_rows_apply(_BSR_MM, "bsr_mm", x, shape, bias, crow_indices, col_indices, values)

    # a partial, not a def: one Python frame less per call (compressed_rows_forward is the forward; on CUDA,
    # M <= 16 where the tensor cores apply, it calls the compiled kernel directly: one op call)
    module_forward = staticmethod(functools.partial(_compressed_rows_forward, _BSR_MM, _CUDA_BSR_MM))

    @property
    def nnz(self) -> int:
        return self.values.numel()
