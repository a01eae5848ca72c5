"""Bitmap: one bit per weight plus the kept values; cheaper than CSR's 32-bit column index
per kept value until about 90% sparsity."""
from __future__ import annotations

from typing import Dict

import torch

from .. import ops
from ..ops import _as_2d, linear_call
from ._common import check_int32_range, check_weight_and_mask, cuda_rows_forward, input_rows, route
from .base import SparseFormat, register


_BITMAP_MM = linear_call(torch.ops.sparsekit.bitmap_mm.default)
_CUDA_BITMAP_MM = torch.ops.sparsekit._cuda_bitmap_mm.default
_ROUTE = route("bitmap_mm")


@register
class BitmapWeight(SparseFormat):
    name = "bitmap"
    buffer_names = ("bitmap", "word_offsets", "values")

    def __init__(self, bitmap, word_offsets, values, shape, check: bool = True):
        self.bitmap, self.word_offsets, self.values = bitmap, word_offsets, values
        self.shape = (int(shape[0]), int(shape[1]))
        if check:
            self.check()

    @classmethod
    def from_dense(cls, weight, mask=None) -> "BitmapWeight":
        mask = check_weight_and_mask(weight, mask, "BitmapWeight.from_dense")
        N, K = weight.shape
        words = (K + 31) // 32
        check_int32_range(int(mask.sum()), "BitmapWeight.from_dense: nnz")
        mp = torch.zeros(N, words * 32, dtype=torch.bool, device=mask.device)
        mp[:, :K] = mask
        mp = mp.reshape(N, words, 32)
        shifts = torch.arange(32, device=mask.device, dtype=torch.int64)
        word = (mp.to(torch.int64) << shifts).sum(-1)
        word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)  # two's complement
        counts = mp.sum(-1, dtype=torch.int64).reshape(-1)
        offsets = (torch.cumsum(counts, 0) - counts).reshape(N, words).to(torch.int32)
        values = weight.detach()[mask].contiguous()
        return cls(word.contiguous(), offsets.contiguous(), values, (N, K), check=False)

    @classmethod
    def from_buffers(cls, buffers: Dict[str, torch.Tensor], shape) -> "BitmapWeight":
        return cls(buffers["bitmap"], buffers["word_offsets"], buffers["values"], shape)

    def check(self) -> None:
        N, K = self.shape
        words = (K + 31) // 32
        if self.bitmap.dtype != torch.int32 or self.word_offsets.dtype != torch.int32:
            raise TypeError("BitmapWeight: expected int32 bitmap and word_offsets")
        if self.bitmap.shape != (N, words) or self.word_offsets.shape != (N, words) or self.values.dim() != 1:
            raise ValueError(
                f"BitmapWeight: expected bitmap and word_offsets of shape ({N}, {words}) and 1-d values, got "
                f"{tuple(self.bitmap.shape)}, {tuple(self.word_offsets.shape)}, {tuple(self.values.shape)}"
            )
        mask = ops.reference.bitmap_mask(self.bitmap, words * 32)
        if K % 32 and bool(mask[:, K:].any()):
            raise ValueError("BitmapWeight: bits past in_features must be 0")
        counts = mask.reshape(N, words, 32).sum(-1).reshape(-1)
        if int(counts.sum()) != self.values.numel():
            raise ValueError(
                f"BitmapWeight: the bitmap keeps {int(counts.sum())} weights but there are {self.values.numel()} values"
            )
        expected = (torch.cumsum(counts, 0) - counts).reshape(N, words)
        if not torch.equal(expected.to(torch.int32), self.word_offsets):
            raise ValueError("BitmapWeight: word_offsets do not match the bitmap")

    def to_dense(self) -> torch.Tensor:
        return ops.reference.bitmap_to_dense(self.bitmap, self.word_offsets, self.values, self.shape)

    @staticmethod
    def apply(x, shape, bias, bitmap, word_offsets, values):
        if x.dim() == 2:
            return _BITMAP_MM(x, bitmap, word_offsets, values, bias)
        y = _BITMAP_MM(_as_2d(x, "bitmap_mm"), bitmap, word_offsets, values, bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def module_forward(m, x):
        b = m._buffers
        if x.is_cuda:  # M <= 16: the compiled decode kernel directly (one op call; the router would pick it too)
            return cuda_rows_forward(m, x, _CUDA_BITMAP_MM, _BITMAP_MM, _ROUTE, b["bitmap"], b["word_offsets"],
                                     b["values"])
        if x.dim() == 2:
            return _BITMAP_MM(x, b["bitmap"], b["word_offsets"], b["values"], m._parameters["bias"])
        y = _BITMAP_MM(input_rows(m, x), b["bitmap"], b["word_offsets"], b["values"], m._parameters["bias"])
        return y.reshape(*x.shape[:-1], m.out_features)

    @property
    def nnz(self) -> int:
        return self.values.numel()
