"""Triton kernels for the sparsekit ops on CUDA tensors.

`register()` registers them as the CUDA implementations of ``sparsekit::bsr_mm``, ``bitmap_mm``,
``quantize_per_token``, ``int8_mm`` and ``int8_weight_only_mm`` through ``torch.library``, and the one-call
W8A8 linears ``int8_linear`` / ``sparse24_int8_linear`` as compositions of those launchers (the ops'
schemas and fake kernels live in sparsekit/ops, so ``torch.compile`` traces them). It imports
nothing heavy: triton and the kernel modules are imported on the first call of an op, so
``import sparsekit`` stays fast. It is a no-op returning False when triton is not installed or
``SPARSEKIT_DISABLE_TRITON=1``.

Each kernel also has a plain launcher taking the op's arguments (`sparsekit.triton.bsr.bsr_mm`,
`bitmap.bitmap_mm`, `int8.quantize_per_token`, `int8.int8_mm`, `int8.int8_weight_only_mm`, and
`int8.int8_mm_i32` for the raw int32 accumulator), which runs on CPU tensors under
``TRITON_INTERPRET=1``. ``bitmap_mm``, ``bsr_mm`` and the int8 ops also have compiled CUDA kernels: `set_backend` /
`backend` say which one a call takes (by default the compiled kernels for M <= 16; for bsr_mm only where its
tensor-core kernel applies, `use_compiled_bsr`; for symmetric quantize_per_token at every M; for the int8 ops the
faster of the two, measured on the device per shape and M bucket: `pick_compiled`). Configurations are tuned per
(shape, M bucket, dtype) and cached: see `sparsekit.triton.autotune`.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os

import warnings

import torch

__all__ = ["available", "register", "registered", "OPS", "set_backend", "backend", "BACKENDS"]

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

# Ops for which CUDA also has a compiled kernel (csrc/cuda, registered as "_cuda_<op>"): the CUDA
# implementation registered here routes each call. "auto" sends M <= the op's threshold to the compiled
# kernel and the rest to Triton: the compiled bitmap kernel is a decode kernel (x staged once in shared
# memory, the weight streamed with 16-byte loads) built for M <= 16, Triton's tiles use tl.dot and serve
# larger M. bsr_mm: auto picks the compiled kernel for M <= 16 only where it runs on the tensor cores
# (`use_compiled_bsr`: float16 / bfloat16, blocks of multiples of 16, sm_80+, one chunk of blocks fits in shared
# memory: K is split where x's rows do not fit whole);
# its other path is a simple kernel, which "compiled" alone selects. These thresholds are
# choices made without a GPU run: bench/cuda_gpu.py and bench/triton_gpu.py time both to confirm them; for the
# int8 ops and bitmap_mm they are only the fallback of the measured routes below (MEASURED_ROUTES).
# int8_weight_only_mm: the compiled kernel (csrc/cuda/int8_wo_kernel.cu) streams the int8 weight into
# tensor-core mmas for M <= 16 with float16 / bfloat16 x on sm_80+; float32 x always runs Triton's.
# int8_mm / sparse24_int8_mm: the compiled W8A8 kernel (csrc/cuda/w8a8_kernel.cu, int8 tensor-core mmas, sm_80+)
# for M <= 16 with symmetric activations; else Triton's int8_mm, and for 2:4 cuSPARSELt or the reference. Their
# settings also route the one-call linears int8_linear / sparse24_int8_linear, whose compiled kernel quantizes x
# per token inside the W8A8 launch. quantize_per_token: the compiled kernel (one block per row, two passes, the
# reference's bytes: the algorithm of Triton's, without its Python launch) for symmetric quantization at every M
# under "auto"; asymmetric quantization always runs Triton's. The int8 linears quantize through this setting at
# M > 16. bench/triton_gpu.py times the two (kernels quant, quant_triton).
BACKENDS = ("auto", "triton", "compiled")
_AUTO_MAX_M = {"bitmap_mm": 16, "bsr_mm": 16, "int8_weight_only_mm": 16, "int8_mm": 16, "sparse24_int8_mm": 16,
               "quantize_per_token": 1 << 62}
_backend = {op: "auto" for op in _AUTO_MAX_M}


def _parse_env() -> None:
    """SPARSEKIT_CUDA_BACKEND="bitmap_mm=triton,bsr_mm=compiled" sets the backends at import."""
    spec = os.environ.get("SPARSEKIT_CUDA_BACKEND", "").strip()
    for item in filter(None, (p.strip() for p in spec.split(","))):
        op, _, name = item.partition("=")
        set_backend(op.strip(), name.strip())


def set_backend(op: str, backend: str) -> None:
    """Which CUDA kernel serves `op` ("bitmap_mm", "bsr_mm", "int8_weight_only_mm", "int8_mm",
    "sparse24_int8_mm" or "quantize_per_token"): "triton" (for sparse24_int8_mm: cuSPARSELt or the reference),
    "compiled" (csrc/cuda) or "auto" (by M, see `backend`). A process-wide setting, read on every call."""
    if op not in _backend:
        raise ValueError(f"sparsekit.triton.set_backend: expected op in {sorted(_backend)}, got {op!r}")
    if backend not in BACKENDS:
        raise ValueError(f"sparsekit.triton.set_backend: expected backend in {list(BACKENDS)}, got {backend!r}")
    _backend[op] = backend


def backend(op: str, M: int) -> str:
    """The CUDA kernel ("triton" or "compiled") that serves `op` for M activation rows now."""
    choice = _backend[op]
    if choice == "auto":
        choice = "compiled" if M <= _AUTO_MAX_M[op] else "triton"
    if choice == "compiled" and not _compiled_cuda():
        return "triton"
    return choice


_compiled = None


def _compiled_cuda() -> bool:
    """Whether sparsekit._C carries the CUDA kernels (looked up once: this runs on every call)."""
    global _compiled
    if _compiled is None:
        from .. import _ext

        _compiled = _ext.C is not None and bool(getattr(_ext.C, "with_cuda", 0))
    return _compiled


_HALF_DTYPES = (torch.float16, torch.bfloat16)
_mma_devices: dict = {}


def _has_mma(device: torch.device) -> bool:
    """Whether the device runs the bfloat16 / float16 m16n8k16 mma (a CUDA device of sm_80+), looked up once
    per device."""
    if device.type != "cuda":
        return False
    idx = device.index if device.index is not None else torch.cuda.current_device()
    ok = _mma_devices.get(idx)
    if ok is None:
        ok = _mma_devices[idx] = torch.cuda.get_device_capability(idx)[0] >= 8
    return ok


def _compiled_runs(op: str, device: torch.device) -> bool:
    """Whether `op`'s compiled kernel runs on `device`: the bitmap decode kernel on any CUDA device, the tensor-core
    ones (the int8 ops) on sm_80+."""
    return _has_mma(device) or (op == "bitmap_mm" and device.type == "cuda")


# Measured routes. For the int8 ops under "auto" (int8_weight_only_mm, and int8_mm / int8_linear), which of the
# compiled kernel and Triton serves M rows is not the boundary above but the faster of the two on the device, per
# (device, N, K, dtype, M bucket) up to ROUTE_MAX_M rows (above: Triton): the op's CUDA implementation times both
# on the first call of a key (autotune.choose: in memory and in the autotune cache on disk, table "<table>_route")
# and keeps the faster; where nothing can be timed (CPU stand-ins, CUDA graph capture, SPARSEKIT_TRITON_AUTOTUNE=0)
# the boundary above. A converted layer's direct call of the compiled kernel (formats/_common.py,
# cuda_rows_forward) follows the same table, and takes the public op (which measures) on a key not measured yet.
# The 2:4 formats measure their own kernels against cuSPARSELt the same way (formats/sparse24.py). bitmap_mm too
# (its compiled decode kernel against Triton's TILE / bit-slice designs, whose tl.dot may win from M = 8); a bitmap
# layer with a column list measures that kernel against the public op in a table of its own (formats/bitmap.py).
MEASURED_ROUTES = ("int8_weight_only_mm", "int8_mm", "bitmap_mm")
ROUTE_MAX_M = 128
_DTYPE_KEYS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8"}
_route_tables: dict = {}


def route_key(x: torch.Tensor, n: int) -> tuple:
    """(device index, n, K, dtype, M bucket) of a call with rows x (2-d) and n output features: M buckets are
    powers of two (M = 5-8 share one)."""
    M, K = x.shape
    return (x.get_device(), n, K, _DTYPE_KEYS.get(x.dtype) or str(x.dtype), 1 << (M - 1).bit_length())


def route_table(table: str) -> dict:
    """The in-memory table of measured routes `table` + "_route" (autotune.clear() empties it in place)."""
    t = _route_tables.get(table)
    if t is None:
        from . import autotune

        t = _route_tables[table] = autotune.table(table + "_route")
    return t


def _can_measure(x: torch.Tensor) -> bool:
    """Whether a call with x could time kernels now (what autotune.choose would do on a miss)."""
    from . import autotune

    return (autotune.enabled() and autotune._measurable(x.device) and not torch.cuda.is_current_stream_capturing()
            and available())


def measured_route(table: str, x: torch.Tensor, n: int, first: str, second: str, run) -> str:
    """Which of two paths serves a call with rows x (2-d) and n output features: the measured choice of its
    route_key in route_table(table), timed now on the call's tensors (`run(path)`, autotune.choose: kept in memory
    and on disk) if not yet; `first` where nothing can be timed (CUDA graph capture, SPARSEKIT_TRITON_AUTOTUNE=0,
    no triton). The int8 ops' `pick_compiled` and the 2:4 formats' cuSPARSELt route both use it."""
    tbl = route_table(table)
    key = route_key(x, n)
    cfg = tbl.get(key)
    if cfg is None:
        if not available():  # autotune times with triton.testing
            return first
        from . import autotune

        cfg = autotune.choose(table + "_route", tbl, key, x.device, [{"path": first}, {"path": second}],
                              lambda c: run(c["path"]))
    return cfg["path"]


def pick_compiled(op: str, x: torch.Tensor, n: int, run_compiled, run_triton, table: str = None,
                  first=None) -> bool:
    """Whether the compiled kernel serves this call of `op` (x 2-d, n output features): the backend setting, and
    under "auto" for MEASURED_ROUTES up to ROUTE_MAX_M rows the faster of the two for the call's route_key,
    timed now on its tensors (`run_compiled()`, `run_triton()`) if not yet; otherwise M <= the op's boundary.
    `table`: the route table (default `op`; int8_linear keeps its own beside int8_mm). `first`: where the route
    is not measured yet, a callable saying whether the compiled kernel comes first within the boundary (the
    choice where nothing can be timed; called only then)."""
    if x.dim() != 2 or not _compiled_cuda() or not _compiled_runs(op, x.device):
        return False
    choice = _backend[op]
    M = x.shape[0]
    if choice != "auto":
        return choice == "compiled"
    static = M <= _AUTO_MAX_M[op]
    if op not in MEASURED_ROUTES or M > ROUTE_MAX_M or M == 0:
        return static
    cfg = route_table(table or op).get(route_key(x, n))  # (a known key: no closure built)
    if cfg is not None:
        return cfg["path"] == "compiled"
    paths = ("compiled", "triton") if static and (first is None or first()) else ("triton", "compiled")
    return measured_route(table or op, x, n, *paths,
                          lambda p: run_compiled() if p == "compiled" else run_triton()) == "compiled"


def use_compiled(op: str, x: torch.Tensor, n: int = None, table: str = None) -> bool:
    """Whether a call of `op` with activations x (2-d) takes the compiled kernel: it runs on x's device
    (`_compiled_runs`) and the backend setting for x's rows says "compiled"; with `n` (output features), for
    MEASURED_ROUTES under "auto", the measured route of (x, n) (`pick_compiled`), and False where that is not
    measured yet but could be (the caller then takes the public op, whose implementation measures)."""
    if x.dim() != 2:
        return False
    M = x.shape[0]
    if n is not None and op in MEASURED_ROUTES and _backend[op] == "auto" and 0 < M <= ROUTE_MAX_M:
        if not (_compiled_cuda() and _compiled_runs(op, x.device)):
            return False
        cfg = route_table(table or op).get(route_key(x, n))
        if cfg is not None:
            return cfg["path"] == "compiled"
        if _can_measure(x):
            return False
    return backend(op, M) == "compiled" and _compiled_runs(op, x.device)


def compiled_auto(op: str, x: torch.Tensor) -> bool:
    """Whether `op`'s backend is "auto" and its compiled tensor-core kernel could serve x (2-d, on an sm_80+ CUDA
    device, the build with the CUDA kernels) at any M: where a caller measures which kernel serves which M
    (the 2:4+int8 format against cuSPARSELt) rather than taking `backend`'s boundary."""
    return x.dim() == 2 and _backend[op] == "auto" and _compiled_cuda() and _has_mma(x.device)


_smem_blocks: dict = {}
_bsr_fits: dict = {}


def _bsr_chunk_smem(M: int, K: int, C: int, optin: int, per_sm: int) -> int:
    """Shared bytes per block of the compiled tensor-core BSR kernel's launch for M rows (its M tile) and K
    columns: csrc/cuda's choose_chunking with mma_decode.cuh's sizes for BsrRows / HalfX, line for line. An x
    tile of mt rows of round_up(2 (cols + 64 rounded to 64), 128) + 16 bytes, plus 128 mt bytes of partial sums
    per warp; K whole with 8 warps within half an SM, or 16 within a whole one, else in chunks of a multiple of
    lcm(64, C) columns with 8 warps (at least one such chunk)."""
    mt = 16 if M >= 16 else 1 << max(M - 1, 0).bit_length()
    extra = 128 * mt
    align = math.lcm(64, C)

    def tile(cols):
        return mt * (-(-((-(-(cols + 64) // 64) * 64) * 2) // 128) * 128 + 16)

    b2 = min(optin, per_sm // 2 - 1024)
    b1 = min(optin, per_sm - 1024)
    whole = -(-max(K, 1) // align) * align
    if tile(whole) + 8 * extra <= b2:
        return tile(whole) + 8 * extra
    if tile(whole) + 16 * extra <= b1:
        return tile(whole) + 16 * extra
    avail = b2 - 8 * extra
    per_align = tile(align)
    kc_max = max(1, int(avail / max(per_align, 1))) * align  # C++ integer division: toward zero
    while kc_max > align and tile(kc_max) > avail:
        kc_max -= align
    splits = -(-K // kc_max)
    kc = -(-(-(-K // splits)) // align) * align
    return tile(kc) + 8 * extra


def _bsr_tile_fits(M: int, K: int, C: int, device: torch.device) -> bool:
    """Whether the compiled tensor-core BSR kernel takes M rows of K columns with blocks C wide: its launch's
    shared memory (`_bsr_chunk_smem`; K split where x's rows do not fit whole) within min(opt-in bytes per
    block, bytes per multiprocessor - 1 KB). Only a block so wide that one chunk of it does not fit fails. The
    test of csrc/cuda (bsr_kernel.cu's make_plan) made here so that the router never sends it a call it would
    give to its simple kernel; tests/test_cuda_emulated.py compares the two
    (test_bsr_router_mirrors_the_tensor_core_size_test)."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    smem = _smem_blocks.get(idx)
    if smem is None:
        props = torch.cuda.get_device_properties(idx)
        optin = getattr(props, "shared_memory_per_block_optin", 48 * 1024)
        smem = _smem_blocks[idx] = (optin, getattr(props, "shared_memory_per_multiprocessor", 2 * optin))
    key = (min(M, 16), K, C, smem)  # this runs on every call: the answer is looked up after the first
    fits = _bsr_fits.get(key)
    if fits is None:
        if len(_bsr_fits) > 4096:
            _bsr_fits.clear()
        optin, per_sm = smem
        fits = _bsr_fits[key] = _bsr_chunk_smem(M, K, C, optin, per_sm) <= min(optin, per_sm - 1024)
    return fits


def quantize_compiled(x: torch.Tensor) -> bool:
    """Whether symmetric quantize_per_token of x takes the compiled kernel (_cuda_quantize_per_token): x is a
    2-d CUDA tensor and the backend setting for its rows says "compiled"."""
    return x.is_cuda and x.dim() == 2 and backend("quantize_per_token", x.shape[0]) == "compiled"


def use_compiled_bsr(x: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether a CUDA bsr_mm call with activations x (2-d) and block values (nblocks, R, C) takes the compiled
    kernel: backend "compiled" always (its simple kernel where the tensor cores do not apply); "auto" for M <= 16
    where the tensor-core kernel applies."""
    choice = _backend["bsr_mm"]
    if choice == "triton" or x.dim() != 2 or not _compiled_cuda():
        return False
    if choice == "compiled":
        return True
    M = x.shape[0]
    return (M <= _AUTO_MAX_M["bsr_mm"] and x.dtype in _HALF_DTYPES and values.dim() == 3
            and values.shape[1] % 16 == 0 and values.shape[2] % 16 == 0 and _has_mma(x.device)
            and _bsr_tile_fits(M, x.shape[1], values.shape[2], x.device))


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
    from ..ops import _checks

    _bsr, _bitmap, _quant, _i8, _wo = (_lazy(*OPS[k]) for k in
                                       ("bsr_mm", "bitmap_mm", "quantize_per_token", "int8_mm", "int8_weight_only_mm"))

    # Python kernels receive what the caller passed, so the schema's defaults are repeated here.
    def bsr_mm(x, crow_indices, col_indices, values, out_features, bias=None):
        if use_compiled_bsr(x, values):
            return torch.ops.sparsekit._cuda_bsr_mm(x, crow_indices, col_indices, values, out_features, bias)
        return _bsr()(x, crow_indices, col_indices, values, out_features, bias)

    def bitmap_mm(x, bitmap, word_offsets, values, bias=None):
        def compiled():
            return torch.ops.sparsekit._cuda_bitmap_mm(x, bitmap, word_offsets, values, bias)

        def triton():
            return _bitmap()(x, bitmap, word_offsets, values, bias)

        if bitmap.dim() == 2 and pick_compiled("bitmap_mm", x, bitmap.shape[0], compiled, triton):
            return compiled()
        return triton()

    def quantize(x):  # symmetric
        if quantize_compiled(x):
            return torch.ops.sparsekit._cuda_quantize_per_token(x, True)
        return _quant()(x, True)

    def quantize_per_token(x, symmetric=True):
        return quantize(x) if symmetric else _quant()(x, False)

    # The int8 ops pick their kernel by pick_compiled (the measured route under "auto"; n from the weight's rows).
    def int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype):
        def compiled():
            return torch.ops.sparsekit._cuda_int8_mm(x_q, x_scale, None, w_q, w_scale, bias, out_dtype)

        def triton():
            return _i8()(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype)

        if x_zero is None and w_q.dim() == 2 and pick_compiled("int8_mm", x_q, w_q.shape[0], compiled, triton):
            return compiled()
        return triton()

    def int8_weight_only_mm(x, w_q, w_scale, bias=None):
        def compiled():
            return torch.ops.sparsekit._cuda_int8_weight_only_mm(x, w_q, w_scale, bias)

        def triton():
            return _wo()(x, w_q, w_scale, bias)

        if x.dtype in _HALF_DTYPES and w_q.dim() == 2 and pick_compiled("int8_weight_only_mm", x, w_q.shape[0],
                                                                        compiled, triton):
            return compiled()
        return triton()

    # The one-call W8A8 linears on CUDA: for small M on sm_80+ the compiled W8A8 kernel quantizes x per token
    # itself (_cuda_int8_linear / _cuda_sparse24_int8_linear: one launch while a tile's rows are short, else the
    # compiled quantization kernel first; one op call either way); else the Triton quantization, then Triton's
    # int8_mm / the sparse24_int8_mm op (its reference fallback), called directly, without a second dispatch. The
    # quantization is the compiled kernel's (one launch, no Python one) unless quantize_per_token is set to triton.
    def int8_linear(x, w_q, w_scale, bias=None):
        def compiled():
            return torch.ops.sparsekit._cuda_int8_linear(x, w_q, w_scale, bias)

        def triton():
            _checks.check_int8_linear(x, w_q, w_scale, bias)
            q, s, _ = quantize(x)
            return _i8()(q, s, None, w_q, w_scale, bias, x.dtype)

        if w_q.dim() == 2 and pick_compiled("int8_mm", x, w_q.shape[0], compiled, triton, table="int8_linear"):
            return compiled()
        return triton()

    def sparse24_int8_linear(x, values, meta, w_scale, bias=None):
        if use_compiled("sparse24_int8_mm", x):
            return torch.ops.sparsekit._cuda_sparse24_int8_linear(x, values, meta, w_scale, bias)
        _checks.check_sparse24_int8_linear(x, values, meta, w_scale, bias)
        q, s, _ = quantize(x)
        return torch.ops.sparsekit.sparse24_int8_mm(q, s, None, values, meta, w_scale, bias, x.dtype)

    return {"bsr_mm": bsr_mm, "bitmap_mm": bitmap_mm, "quantize_per_token": quantize_per_token,
            "int8_mm": int8_mm, "int8_weight_only_mm": int8_weight_only_mm, "int8_linear": int8_linear,
            "sparse24_int8_linear": sparse24_int8_linear}


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
    with warnings.catch_warnings():
        # bsr_mm and bitmap_mm have compiled CUDA kernels too: replacing them is the point (the router above
        # calls them through their _cuda_ aliases), so torch's "Overriding a previously registered kernel"
        # warning would only alarm users on every import.
        warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
        warnings.filterwarnings("ignore", message=".*Warning only once for all operators.*")
        for name, fn in _make_impls().items():
            lib.impl(name, fn, "CUDA")
    _lib = lib
    return True


_parse_env()


def registered() -> bool:
    return _lib is not None


def why_not() -> str | None:
    """Why the kernels are not available (None when they are)."""
    available()
    return _why_not
