"""Helpers shared by the Triton kernels: interpreter detection, tile ordering, exact rounding, popcount.

No `from __future__ import annotations` in the kernel modules: Triton reads the `tl.constexpr`
annotations of @triton.jit functions at decoration time.
"""
import os

import torch
import triton
import triton.language as tl

# Triton decides between the compiler and the interpreter when a kernel is decorated, so this is
# fixed when the kernel modules are imported (set TRITON_INTERPRET=1 before importing them).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no")

try:  # libdevice's popc is one instruction on the GPU; the interpreter has no libdevice
    from triton.language.extra import libdevice as _libdevice  # noqa: F401
    HAS_LIBDEVICE_POPC = hasattr(_libdevice, "popc")
except Exception:  # pragma: no cover - very old triton
    _libdevice = None
    HAS_LIBDEVICE_POPC = False

USE_POPC = HAS_LIBDEVICE_POPC and not INTERPRET

TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
DTYPE_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8"}


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division of ints on the host: `triton.cdiv` is a constexpr function in triton 3.8 and costs
    about 2 us a call from Python."""
    return -(-a // b)


def m_bucket(M: int) -> int:
    """The M bucket a configuration is tuned for: 1, 2, 4, 8, 16 (decode), then powers of two to 8192."""
    return min(next_pow2(M), 8192)


@triton.jit
def tile_ids(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M row tiles share each column tile while it is hot in L2."""
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def round_half_even(v):
    """torch.round (half to even) of float32 v, exactly, with plain float ops (no libdevice.rint,
    which the interpreter lacks). floor and v - floor(v) are exact in float32."""
    f = tl.floor(v)
    d = v - f
    half = f * 0.5
    odd = tl.floor(half) != half
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def popcount32(v, USE_POPC: tl.constexpr):
    """Set bits of each uint32 in v, as int32: the popc instruction on the GPU, bit tricks otherwise."""
    if USE_POPC:
        c = _libdevice.popc(v.to(tl.int32, bitcast=True))
    else:
        u = v.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        c = ((u * 0x01010101) >> 24).to(tl.int32, bitcast=True)
    return c


@triton.jit
def dot_acc(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b in float32. IEEE: exact float32 products (float32 inputs, no tf32).
    UPCAST: compute on float32 copies; only for the interpreter, whose tl.dot multiplies the raw
    uint16 bit patterns of bfloat16 operands (triton 3.8 interpreter.create_dot)."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


def upcast_dot(dtype) -> bool:
    """Whether the interpreter's float dot needs the float32 detour (see dot_acc)."""
    return INTERPRET and dtype == torch.bfloat16
