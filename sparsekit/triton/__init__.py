"""Triton kernels for the sparsekit ops on CUDA tensors.

`register()` registers them as the CUDA implementations of ``sparsekit::bsr_mm``, ``bitmap_mm``,
``quantize_per_token``, ``int8_mm`` and ``int8_weight_only_mm`` through ``torch.library`` (the ops'
schemas and fake kernels live in sparsekit/ops, so ``torch.compile`` traces them). It imports
nothing heavy: triton and the kernel modules are imported on the first call of an op, so
``import sparsekit`` stays fast. It is a no-op returning False when triton is not installed or
``SPARSEKIT_DISABLE_TRITON=1``.

Each kernel also has a plain launcher taking the op's arguments (`sparsekit.triton.bsr.bsr_mm`,
`bitmap.bitmap_mm`, `int8.quantize_per_token`, `int8.int8_mm`, `int8.int8_weight_only_mm`, and
`int8.int8_mm_i32` for the raw int32 accumulator), which runs on CPU tensors under
``TRITON_INTERPRET=1``. Configurations are tuned per (shape, M bucket, dtype) and cached: see
`sparsekit.triton.autotune`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import torch

__all__ = ["available", "register", "registered", "OPS"]

# op name -> (module, launcher)
OPS = {
    "bsr_mm": ("bsr", "bsr_mm"),
    "bitmap_mm": ("bitmap", "bitmap_mm"),
    "quantize_per_token": ("int8", "quantize_per_token"),
    "int8_mm": ("int8", "int8_mm"),
    "int8_weight_only_mm": ("int8", "int8_weight_only_mm"),
}

_lib = None
_why_not: str | None = None


def available() -> bool:
    """True when triton can be imported (checked without importing it)."""
    global _why_not
    if os.environ.get("SPARSEKIT_DISABLE_TRITON", "").strip().lower() in ("1", "true", "yes"):
        _why_not = "disabled by SPARSEKIT_DISABLE_TRITON"
        return False
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        found = False
    _why_not = None if found else "triton is not installed"
    return found


def _lazy(module: str, name: str):
    fn = None

    def launcher():
        nonlocal fn
        if fn is None:
            fn = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        return fn

    return launcher


def _make_impls():
    _bsr, _bitmap, _quant, _i8, _wo = (_lazy(*OPS[k]) for k in
                                       ("bsr_mm", "bitmap_mm", "quantize_per_token", "int8_mm", "int8_weight_only_mm"))

    # Python kernels receive what the caller passed, so the schema's defaults are repeated here.
    def bsr_mm(x, crow_indices, col_indices, values, out_features, bias=None):
        return _bsr()(x, crow_indices, col_indices, values, out_features, bias)

    def bitmap_mm(x, bitmap, word_offsets, values, bias=None):
        return _bitmap()(x, bitmap, word_offsets, values, bias)

    def quantize_per_token(x, symmetric=True):
        return _quant()(x, symmetric)

    def int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype):
        return _i8()(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype)

    def int8_weight_only_mm(x, w_q, w_scale, bias=None):
        return _wo()(x, w_q, w_scale, bias)

    return {"bsr_mm": bsr_mm, "bitmap_mm": bitmap_mm, "quantize_per_token": quantize_per_token,
            "int8_mm": int8_mm, "int8_weight_only_mm": int8_weight_only_mm}


def register() -> bool:
    """Register the Triton kernels as the CUDA implementations of their ops (once). Returns whether
    they are registered. Call after the ops are defined (``import sparsekit.ops``)."""
    global _lib
    if _lib is not None:
        return True
    if not available():
        return False
    from .. import ops  # noqa: F401  (the schemas must exist before implementations register)

    lib = torch.library.Library("sparsekit", "IMPL")
    for name, fn in _make_impls().items():
        lib.impl(name, fn, "CUDA")
    _lib = lib
    return True


def registered() -> bool:
    return _lib is not None


def why_not() -> str | None:
    """Why the kernels are not available (None when they are)."""
    available()
    return _why_not
