"""Packers as ops: a weight (N, K) and its bool mask -> the buffers of a format.

``sparsekit::pack_sparse24``, ``pack_bitmap``, ``pack_csr`` and ``pack_bsr`` produce, bit for bit, the
buffers of ``sparsekit.formats.{Sparse24Weight, BitmapWeight, CSRWeight, BSRWeight}.from_dense`` (layouts:
sparsekit/formats/LAYOUTS.md). On CUDA tensors the compiled kernels (csrc/cuda/pack_kernel.cu) do the work,
so converting a 7B-parameter model takes seconds; elsewhere the references below (which call the format
packers) serve, registered as the CompositeExplicitAutograd fallback by `register()`.

The mask defaults to ``weight != 0``, as in ``from_dense``; a mask on another device is moved to the
weight's. Outputs with a data-dependent size (nnz, nblocks) make the ops synchronise with the device once.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ._checks import expect

__all__ = ["pack_sparse24", "pack_bitmap", "pack_csr", "pack_bsr", "pack", "register", "registered",
           "reference_pack_sparse24", "reference_pack_bitmap", "reference_pack_csr", "reference_pack_bsr", "OPS"]

OPS = ("pack_sparse24", "pack_bitmap", "pack_csr", "pack_bsr")


# ------------------------------------------------------------------------------------------ checks
# The messages of sparsekit/formats/_common.py check_weight_and_mask with the op's name; the CUDA kernels
# (csrc/cuda/ops_cuda_formats.cpp) raise the same.
def check_pack(op: str, weight, mask) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{op}: expected a 2-d weight (out_features, in_features), got {shape}")
    if not weight.is_floating_point():
        raise TypeError(f"{op}: expected a floating-point weight, got {weight.dtype}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"{op}: expected a mask of the weight's shape {tuple(weight.shape)}, got "
                             f"{type(mask).__name__}")
        expect(mask.shape == weight.shape, op,
               lambda: f"expected a mask of the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"{op}: expected a bool mask, got {mask.dtype}")


def check_pack_sparse24(weight, mask) -> None:
    op = "sparsekit.pack_sparse24"
    check_pack(op, weight, mask)
    expect(weight.shape[1] % 4 == 0, op, lambda: f"2:4 needs in_features divisible by 4, got {weight.shape[1]}")


def check_pack_bitmap(weight, mask) -> None:
    check_pack("sparsekit.pack_bitmap", weight, mask)


def check_pack_csr(weight, mask) -> None:
    check_pack("sparsekit.pack_csr", weight, mask)


def _blocksize(blocksize) -> Tuple[int, int]:
    if isinstance(blocksize, int):
        return blocksize, blocksize
    R, C = blocksize
    return R, C


def check_pack_bsr(weight, mask, blocksize) -> None:
    op = "sparsekit.pack_bsr"
    check_pack(op, weight, mask)
    R, C = _blocksize(blocksize)
    N, K = weight.shape
    expect(R > 0 and C > 0 and N % R == 0 and K % C == 0, op,
           lambda: f"the block {R}x{C} does not tile the weight {N}x{K} (out_features must divide by R and in_features by C)")


# ------------------------------------------------------------------------------------------ references
def _mask(weight, mask):
    return weight != 0 if mask is None else mask.to(weight.device)


def reference_pack_sparse24(weight, mask=None):
    """(values (N, K/2), meta uint8 (N, ceil(K/8))) exactly as Sparse24Weight.from_dense."""
    from ..formats.sparse24 import pack_24

    return pack_24(weight, _mask(weight, mask), "sparsekit.pack_sparse24")


def reference_pack_bitmap(weight, mask=None):
    """(bitmap int32 (N, ceil(K/32)), word_offsets int32 (N, ceil(K/32)), values (nnz,)) as BitmapWeight.from_dense."""
    from ..formats import BitmapWeight

    f = BitmapWeight.from_dense(weight, mask)
    return f.bitmap, f.word_offsets, f.values


def reference_pack_csr(weight, mask=None):
    """(crow_indices int32 (N+1,), col_indices int32 (nnz,), values (nnz,)) as CSRWeight.from_dense."""
    from ..formats import CSRWeight

    f = CSRWeight.from_dense(weight, mask)
    return f.crow_indices, f.col_indices, f.values


def reference_pack_bsr(weight, mask=None, blocksize=(16, 16)):
    """(crow_indices int32 (N/R+1,), col_indices int32 (nblocks,), values (nblocks, R, C)) as BSRWeight.from_dense."""
    from ..formats import BSRWeight

    f = BSRWeight.from_dense(weight, mask, blocksize=_blocksize(blocksize))
    return f.crow_indices, f.col_indices, f.values


# ------------------------------------------------------------------------------------------ fake kernels
def _fake_sparse24(weight, mask):
    N, K = weight.shape
    return weight.new_empty((N, K // 2)), weight.new_empty((N, (K + 7) // 8), dtype=torch.uint8)


def _fake_bitmap(weight, mask):
    N, K = weight.shape
    nnz = torch.library.get_ctx().new_dynamic_size()
    W = (K + 31) // 32
    return (weight.new_empty((N, W), dtype=torch.int32), weight.new_empty((N, W), dtype=torch.int32),
            weight.new_empty((nnz,)))


def _fake_csr(weight, mask):
    N, _ = weight.shape
    nnz = torch.library.get_ctx().new_dynamic_size()
    return (weight.new_empty((N + 1,), dtype=torch.int32), weight.new_empty((nnz,), dtype=torch.int32),
            weight.new_empty((nnz,)))


def _fake_bsr(weight, mask, blocksize):
    N, _ = weight.shape
    R, C = _blocksize(blocksize)
    nb = torch.library.get_ctx().new_dynamic_size()
    return (weight.new_empty((N // R + 1,), dtype=torch.int32), weight.new_empty((nb,), dtype=torch.int32),
            weight.new_empty((nb, R, C)))


_registered = False


def register() -> None:
    """Registers the fake kernels and the references (as the CompositeExplicitAutograd fallback) of the
    pack ops, whose schemas live in _schemas.py. Call once, after the ops are defined; later calls do nothing."""
    global _registered
    if _registered:
        return
    from . import _register

    _register("pack_sparse24", check_pack_sparse24, reference_pack_sparse24, _fake_sparse24)
    _register("pack_bitmap", check_pack_bitmap, reference_pack_bitmap, _fake_bitmap)
    _register("pack_csr", check_pack_csr, reference_pack_csr, _fake_csr)
    _register("pack_bsr", check_pack_bsr, reference_pack_bsr, _fake_bsr)
    _registered = True


def registered() -> bool:
    return _registered


# ------------------------------------------------------------------------------------------ wrappers
def pack_sparse24(weight: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """2:4 buffers (values, meta) of ``weight`` (N, K) kept where ``mask`` is True (default: weight != 0)."""
    return torch.ops.sparsekit.pack_sparse24(weight.detach(), mask)


def pack_bitmap(weight: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """Bitmap buffers (bitmap, word_offsets, values)."""
    return torch.ops.sparsekit.pack_bitmap(weight.detach(), mask)


def pack_csr(weight: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """CSR buffers (crow_indices, col_indices, values)."""
    return torch.ops.sparsekit.pack_csr(weight.detach(), mask)


def pack_bsr(weight: torch.Tensor, mask: Optional[torch.Tensor] = None, blocksize: Sequence[int] | int = (16, 16)):
    """BSR buffers (crow_indices, col_indices, values (nblocks, R, C)) with blocks R x C = blocksize."""
    return torch.ops.sparsekit.pack_bsr(weight.detach(), mask, list(_blocksize(blocksize)))


def pack(fmt: str, weight: torch.Tensor, mask: Optional[torch.Tensor] = None, blocksize=(16, 16)):
    """The format object for ``fmt`` in {"2:4", "bitmap", "csr", "bsr"} built through the pack ops (on the
    GPU for a CUDA weight); equal to ``sparsekit.formats.get(fmt).from_dense(weight, mask)``."""
    from .. import formats

    shape = tuple(weight.shape)
    if fmt == "2:4":
        return formats.Sparse24Weight(*pack_sparse24(weight, mask), shape, check=False)
    if fmt == "bitmap":
        return formats.BitmapWeight(*pack_bitmap(weight, mask), shape, check=False)
    if fmt == "csr":
        return formats.CSRWeight(*pack_csr(weight, mask), shape, check=False)
    if fmt == "bsr":
        return formats.BSRWeight(*pack_bsr(weight, mask, blocksize), shape, check=False)
    raise ValueError(f"sparsekit.ops.packing.pack: expected a format in ('2:4', 'bitmap', 'csr', 'bsr'), got {fmt!r}")
