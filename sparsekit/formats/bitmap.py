"""Bitmap: one bit per weight plus the kept values; cheaper than CSR's 32-bit column index
per kept value until about 90% sparsity."""
from __future__ import annotations

import os
import threading
import weakref
from typing import Dict

import torch

from .. import ops
from .. import triton as _sk_triton
from ..ops import _as_2d, linear_call
from ._common import (check_int32_range, check_weight_and_mask, cuda_rows_forward, input_rows, needs_grad, route,
                      side_table_put)
from .base import SparseFormat, register


_BITMAP_MM = linear_call(torch.ops.sparsekit.bitmap_mm.default)
_CUDA_BITMAP_MM = torch.ops.sparsekit._cuda_bitmap_mm.default
_CUDA_BITMAP_COLUMNS_MM = torch.ops.sparsekit._cuda_bitmap_columns_mm.default
_ROUTE = route("bitmap_mm")

# The column list (ops.reference.bitmap_columns: a 16-bit column per kept value) that the CUDA kernel's variant 4
# reads instead of the bitmap, so that it does no scan and no compaction (csrc/cuda/README.md). It costs 2 bytes
# per kept value of device memory besides the format's buffers, and a kernel reading it moves 4 bytes per kept
# value (16-bit values) against the bitmap's 2 + 1/8 per weight, so it is made only up to a density
# (SPARSEKIT_BITMAP_COLUMNS: unset or "auto" 0.35, i.e. from 65 % sparsity; a number: that density; "0" / "off":
# never; "1" / "on": always). Made, like the 2:4 weight's cuSPARSELt copy, outside forward: when the weight is
# packed or loaded on CUDA and when the layer is moved or loaded (SparseLinear calls `prepare`). Held in this side
# table keyed by the `values` buffer (never a module buffer, so never saved), dropped when `values` dies; an entry
# whose buffers were written in place since is not used (the bitmap kernel runs) until prepared again.
_COLUMNS_LOCK = threading.Lock()
_COLUMNS: Dict[int, tuple] = {}  # id(values) -> (weakrefs of values, bitmap, word_offsets; versions; list)
_COLUMNS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_COLUMNS_DEFAULT_DENSITY = 0.35


def _columns_max_density() -> float:
    v = os.environ.get("SPARSEKIT_BITMAP_COLUMNS", "auto").strip().lower()
    if v in ("", "auto"):
        return _COLUMNS_DEFAULT_DENSITY
    if v in ("off", "never", "false", "no"):
        return -1.0
    if v in ("on", "always", "true", "yes"):
        return 1.0
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"SPARSEKIT_BITMAP_COLUMNS: expected auto, off, on or a density in [0, 1], got {v!r}") from None


def _cuda(t: torch.Tensor) -> bool:
    """t.is_cuda (a seam: the CPU tests stand a CPU tensor in for a CUDA one)."""
    return t.is_cuda


def bitmap_columns_for(bitmap, word_offsets, values):
    """The column list made by `prepare_columns` for exactly these buffers (the same tensor objects, none written in
    place since: their version counters, which `set_` moves too), or None. Never makes one: forward calls it
    (≈ 0.1 µs; a stamp of data pointers took ≈ 0.8)."""
    e = _COLUMNS.get(id(values))
    if (e is None or e[0]() is not values or e[1]() is not bitmap or e[2]() is not word_offsets
            or e[3] != (values._version, bitmap._version, word_offsets._version)):
        return None
    return e[4]


def prepare_columns(bitmap, word_offsets, values, shape) -> bool:
    """Makes the column list of these CUDA bitmap buffers now if the kernel would use it (float values, K <= 65536,
    density at most SPARSEKIT_BITMAP_COLUMNS); idempotent. True when a list is ready. Syncs the device: outside
    forward and outside CUDA graph capture (during capture it does nothing)."""
    n, k = int(shape[0]), int(shape[1])
    if not _cuda(values) or values.dtype not in _COLUMNS_DTYPES or not 0 < k <= 65536 or n == 0:
        return False
    if bitmap_columns_for(bitmap, word_offsets, values) is not None:
        return True
    if values.numel() > _columns_max_density() * n * k or values.numel() == 0:
        return False
    if values.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    columns = ops.reference.bitmap_columns(bitmap, k)
    side_table_put(_COLUMNS, _COLUMNS_LOCK, values,
                   (weakref.ref(values), weakref.ref(bitmap), weakref.ref(word_offsets),
                    (values._version, bitmap._version, word_offsets._version), columns))
    return True


_COLUMNS_ROUTE = "bitmap_columns"  # the route table of layers with a column list (bitmap_columns_route)

# Where nothing measures the route (CUDA graph capture before any eager call, SPARSEKIT_TRITON_AUTOTUNE=0, no triton,
# the functional BitmapWeight.apply): at M <= 4 in float16 / bfloat16 the bitmap kernel walks its words (variant 2's
# walk, csrc/cuda/README.md), and by the models of its instruction counts and bytes the walk is the faster above
# about this density, the column list below it (the list reads 4 bytes a kept value and no bitmap; at 30 % the walk
# models ≈ 2.4x dense, the list ≈ 1.7x; at 10 % ≈ 3.8x against ≈ 5x). A model, not a measurement.
_WALK_OVER_COLUMNS_DENSITY = 0.15
_HALF = (torch.float16, torch.bfloat16)


def _columns_first(x2, n: int, values) -> bool:
    """Whether the column-list kernel is the first choice for rows x2 (2-d) of a layer with n output features where
    its route is not measured: not where the bitmap kernel would walk its words (M <= 4, float16 / bfloat16, the
    default consumer) at a density above _WALK_OVER_COLUMNS_DENSITY."""
    M, K = x2.shape
    if M > 4 or x2.dtype not in _HALF or values.numel() <= _WALK_OVER_COLUMNS_DENSITY * n * K:
        return True
    return os.environ.get("SPARSEKIT_CUDA_BITMAP_CONSUMER") == "list"  # as csrc/cuda's walk_consumer() reads it


def _columns_use(x2, n, bitmap, word_offsets, values, cols, bias) -> bool:
    """`use` of cuda_rows_forward for a layer with a column list: whether the column-list kernel serves these rows,
    by sparsekit.triton.pick_compiled with the column-list kernel as the compiled path and the public op (whose own
    route picks the compiled bitmap kernel or Triton) as the other, in a route table of its own (the op's table
    times the bitmap kernel, not this one): measured on the device up to ROUTE_MAX_M rows under "auto", else M <=
    16 where `_columns_first`, or the backend setting."""
    return _sk_triton.pick_compiled(
        "bitmap_mm", x2, n, lambda: _CUDA_BITMAP_COLUMNS_MM(x2, bitmap, word_offsets, values, cols, bias),
        lambda: _BITMAP_MM(x2, bitmap, word_offsets, values, bias), table=_COLUMNS_ROUTE,
        first=lambda: _columns_first(x2, n, values))


def _columns_call(x2, n, bitmap, word_offsets, values, bias):
    """The rows x2 (2-d, CUDA) of a weight with n rows through the column-list kernel when these buffers have a
    list, the compiled kernel takes these rows (M <= 16, no gradient to record, eager) and the list is the first
    choice (`_columns_first`; this path measures nothing), else None."""
    if torch.compiler.is_compiling():  # (traced: the public op)
        return None
    cols = bitmap_columns_for(bitmap, word_offsets, values)
    if cols is None or not _ROUTE(x2) or needs_grad(x2, bias) or not _columns_first(x2, n, values):
        return None
    return _CUDA_BITMAP_COLUMNS_MM(x2, bitmap, word_offsets, values, cols, bias)


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
        self = cls(word.contiguous(), offsets.contiguous(), values, (N, K), check=False)
        prepare_columns(self.bitmap, self.word_offsets, self.values, self.shape)
        return self

    @classmethod
    def from_buffers(cls, buffers: Dict[str, torch.Tensor], shape) -> "BitmapWeight":
        self = cls(buffers["bitmap"], buffers["word_offsets"], buffers["values"], shape)
        prepare_columns(self.bitmap, self.word_offsets, self.values, self.shape)
        return self

    @staticmethod
    def prepare(m) -> None:
        b = m._buffers
        prepare_columns(b["bitmap"], b["word_offsets"], b["values"], (m.out_features, m.in_features))

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
        if x.is_cuda:
            y = _columns_call(_as_2d(x, "bitmap_mm"), shape[0], bitmap, word_offsets, values, bias)
            if y is not None:
                return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])
        if x.dim() == 2:
            return _BITMAP_MM(x, bitmap, word_offsets, values, bias)
        y = _BITMAP_MM(_as_2d(x, "bitmap_mm"), bitmap, word_offsets, values, bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def module_forward(m, x):
        b = m._buffers
        if x.is_cuda:  # M <= 16: the compiled decode kernel directly (one op call; the router would pick it too)
            cols = None if torch.compiler.is_compiling() else bitmap_columns_for(b["bitmap"], b["word_offsets"],
                                                                                  b["values"])
            if cols is not None:  # with the column list: its variant 4, by a route of its own
                bias = m._parameters["bias"]
                return cuda_rows_forward(
                    m, x, lambda x2, bm, wo, v, bias: _CUDA_BITMAP_COLUMNS_MM(x2, bm, wo, v, cols, bias), _BITMAP_MM,
                    lambda x2, n: _columns_use(x2, n, b["bitmap"], b["word_offsets"], b["values"], cols, bias),
                    b["bitmap"], b["word_offsets"], b["values"])
            return cuda_rows_forward(m, x, _CUDA_BITMAP_MM, _BITMAP_MM, _ROUTE, b["bitmap"], b["word_offsets"],
                                     b["values"])
        if x.dim() == 2:
            return _BITMAP_MM(x, b["bitmap"], b["word_offsets"], b["values"], m._parameters["bias"])
        y = _BITMAP_MM(input_rows(m, x), b["bitmap"], b["word_offsets"], b["values"], m._parameters["bias"])
        return y.reshape(*x.shape[:-1], m.out_features)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def nbytes(self) -> int:
        """The buffers' bytes, and the column list's where one is prepared (device memory it holds)."""
        cols = bitmap_columns_for(self.bitmap, self.word_offsets, self.values)
        return super().nbytes + (0 if cols is None else cols.numel() * cols.element_size())
