"""2:4 (semi-structured): two kept values in every group of four along the input dimension,
with their 2-bit positions. Also the int8 variant (2:4+int8)."""
from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Dict, Tuple

import torch

from .. import ops
from .. import triton as _sk_triton
from ..ops import _as_2d, linear_call
from ..ops._checks import cslt_shape_fits
from ._common import check_weight_and_mask, input_rows, needs_grad, side_table_put
from .base import SparseFormat, register
from .int8 import _HALVES, quantize_rows


def _slot_table() -> torch.Tensor:
    """(16, 2) int64: for each 4-bit keep pattern of a group (bit i = position i kept), the two positions
    stored: the kept ones first, then the lowest free ones, ascending (patterns with > 2 bits are refused
    before the look-up; their rows are unused)."""
    rows = []
    for code in range(16):
        kept = [i for i in range(4) if code >> i & 1]
        free = [i for i in range(4) if not code >> i & 1]
        rows.append(sorted((kept + free)[:2]))
    return torch.tensor(rows, dtype=torch.int64)


_SLOTS = _slot_table()
_POPCOUNT4 = torch.tensor([bin(c).count("1") for c in range(16)], dtype=torch.int64)


def _group_codes(mask: torch.Tensor) -> torch.Tensor:
    """(N, K/4) int64 keep pattern of every group of 4 of a bool (N, K) mask: bit i = position i kept.
    The four bool bytes of a group are read as one little-endian int32 (no reduction over a size-4 dim)."""
    N, K = mask.shape
    if sys.byteorder == "little" and K > 0:
        v = mask.contiguous().view(torch.uint8).view(torch.int32).reshape(N, K // 4)
        return ((v & 1) | ((v >> 7) & 2) | ((v >> 14) & 4) | ((v >> 21) & 8)).long()
    bits = torch.tensor([1, 2, 4, 8], dtype=torch.int64, device=mask.device)
    return (mask.reshape(N, K // 4, 4).long() * bits).sum(-1)


def pack_24(weight: torch.Tensor, mask: torch.Tensor, what: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values (N, K/2), meta uint8 (N, ceil(K/8))) of a weight whose mask keeps <= 2 of every 4."""
    N, K = weight.shape
    if K % 4:
        raise ValueError(f"{what}: 2:4 needs in_features divisible by 4, got {K}")
    groups = K // 4
    code = _group_codes(mask)  # (N, groups): bit i = position i of the group kept
    kept = _POPCOUNT4.to(mask.device)[code]
    if bool((kept > 2).any()):
        r, g = (kept > 2).nonzero()[0].tolist()
        raise ValueError(
            f"{what}: the mask is not 2:4: row {r}, columns {4 * g}..{4 * g + 3} keep {int(kept[r, g])} of 4 "
            "(prune with pattern='2:4' first)"
        )
    # the group's two stored positions, looked up by its keep pattern (a sort per group cost seconds per
    # 7B-sized layer)
    sel = _SLOTS.to(mask.device)[code]  # (N, groups, 2)
    w = torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype, device=weight.device))
    values = torch.gather(w.reshape(N, groups, 4), 2, sel).reshape(N, 2 * groups)
    nib = (sel[..., 0] | (sel[..., 1] << 2)).to(torch.int32)  # (N, groups)
    if groups % 2:
        nib = torch.cat([nib, torch.zeros(N, 1, dtype=nib.dtype, device=nib.device)], dim=1)
    meta = (nib[:, 0::2] | (nib[:, 1::2] << 4)).to(torch.uint8)
    return values.contiguous(), meta.contiguous()


def _check_meta(meta, N, K, what):
    if meta.dtype != torch.uint8 or meta.shape != (N, (K + 7) // 8):
        raise ValueError(f"{what}: expected uint8 meta of shape ({N}, {(K + 7) // 8}), got {meta.dtype} "
                         f"{tuple(meta.shape)}")
    m = meta.to(torch.int32)
    nib = torch.stack([m & 0xF, m >> 4], dim=-1).reshape(N, -1)
    groups = K // 4
    used, pad = nib[:, :groups], nib[:, groups:]
    if bool(((used & 3) >= (used >> 2)).any()):
        raise ValueError(f"{what}: every group's two positions must be distinct and ascending")
    if pad.numel() and bool((pad != 0).any()):
        raise ValueError(f"{what}: the unused last nibble of meta must be 0")


# ------------------------------------------------------------------------------------------ cuSPARSELt routing
# On CUDA the 2:4 formats have two kernels: cuSPARSELt (tensor-core sparse MMA, csrc/cuda/ops_cusparselt.cpp) and
# the own decode kernel (sparse24_mm), which streams the weight once per 16 activation rows and wins where the
# matmul is memory-bound. Which one serves M rows is measured, not guessed (`_cslt_route`): per (device, N, K,
# dtype, M bucket) the first eager call with such rows times both on its own tensors and keeps the faster, in
# memory and in the autotune cache on disk (sparsekit.triton.autotune, "sparse24_route"); where nothing can be
# timed (CUDA graph capture, SPARSEKIT_TRITON_AUTOTUNE=0, no triton) cuSPARSELt takes M > 16, and above 128 rows
# it always does (the decode kernel re-reads the weight per 16 rows). SPARSEKIT_CSLT_MIN_M fixes the boundary
# instead (cuSPARSELt for M above it; nothing measured). Anything else (CPU, shapes cuSPARSELt refuses,
# autograd, torch.compile tracing, a build without cuSPARSELt, a weight not compressed beforehand) takes the
# format's own path unchanged.
#
# cuSPARSELt wants its own compressed copy of the weight. Compressing syncs the device (cslt_compress reads
# back its 2:4 check), so it is never done inside forward (where it would break CUDA graph capture): it is
# made by `cslt_prepare` when the weight is packed or loaded on CUDA (from_dense / from_buffers on a CUDA
# weight, SparseLinear.from_linear, `.to()` / `.cuda()` / `.half()` of the module, load_state_dict), and
# forward only looks it up. It is held in this side table keyed by the `values` buffer: never a buffer of
# the module (so never in state_dict / safetensors) and never an attribute of the tensor (torch.save of a
# tensor pickles its __dict__). An entry is dropped when its `values` tensor dies (module moved to another
# device or dtype: new tensors, prepared again by the move). An entry whose buffers were changed in place
# since (version counters moved) is not used: that call takes the own kernel, until prepared again.
_CSLT_LOCK = threading.Lock()
# id(values) -> (weakref(values), stamp, compressed, fp16_output_safe, warm: {(M, dtype, bias ptr)} run eagerly)
_CSLT_CACHE: Dict[int, tuple] = {}
_FP16_MAX = 65504.0
_CSLT_DEFAULT_MIN_M = 16  # without a measurement: cuSPARSELt above this many rows
_ROUTE_MAX_M = 128  # above: cuSPARSELt, not measured
# the measured routes (autotune.clear() empties them in place)
_ROUTES = {op: _sk_triton.route_table(op) for op in ("sparse24", "sparse24_int8")}

_SPARSE24_MM = linear_call(torch.ops.sparsekit.sparse24_mm.default)
_SPARSE24_INT8_MM = torch.ops.sparsekit.sparse24_int8_mm.default
_CUDA_SPARSE24_INT8_LINEAR = torch.ops.sparsekit._cuda_sparse24_int8_linear.default
_QUANTIZE = torch.ops.sparsekit.quantize_per_token.default
_CUDA_QUANTIZE = torch.ops.sparsekit._cuda_quantize_per_token.default
_SPARSE24_INT8_LINEAR = linear_call(torch.ops.sparsekit.sparse24_int8_linear.default)
_CSLT_MM = torch.ops.sparsekit.cslt_mm.default
_CSLT_COMPRESS = torch.ops.sparsekit.cslt_compress.default


def _cuda(t: torch.Tensor) -> bool:
    """t.is_cuda (a seam: the CPU tests stand a CPU tensor in for a CUDA one)."""
    return t.is_cuda


# os.environ's own dict of bytes on POSIX: a look-up there costs ~0.05 us against os.environ.get's ~1.4 (the
# encoding of the key), and _cslt_route reads the variable on every 2:4 call on CUDA
_ENV_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None


def _cslt_min_m():
    """SPARSEKIT_CSLT_MIN_M when set (a fixed boundary: cuSPARSELt above it, nothing measured), else None. Read on
    every call."""
    if _ENV_BYTES is not None:
        v = _ENV_BYTES.get(b"SPARSEKIT_CSLT_MIN_M")
        v = "" if v is None else v.decode()
    else:
        v = os.environ.get("SPARSEKIT_CSLT_MIN_M", "")
    v = v.strip()
    return int(v) if v else None


def _use_cslt(x: torch.Tensor, shape, weight_dtype: torch.dtype, bias) -> bool:
    """Whether this call may go to cuSPARSELt: CUDA, a shape it takes, at least one row, eager (not torch.compile
    tracing), and no gradient needed. Which of the two kernels then serves the rows is `_cslt_route`'s; during
    CUDA graph capture `_cslt_call` adds its own condition."""
    if torch.compiler.is_compiling() or not _cuda(x):  # the CPU path stays exactly what it was
        return False
    n, k = shape
    if not cslt_shape_fits(n, k, weight_dtype) or x.numel() < k or not ops.cslt_available():
        return False
    # cslt_mm has no autograd formula; the own ops do (gradients to x and bias)
    return not needs_grad(x, bias)


def _cslt_route(op: str, x2: torch.Tensor, n: int):
    """Whether cuSPARSELt rather than the own kernel serves the rows x2 (2-d, eligible by `_use_cslt`, the weight
    compressed): SPARSEKIT_CSLT_MIN_M's boundary when set, else the measured choice of (device, n, K, dtype, M
    bucket) (sparsekit.triton.route_key; `op`: "sparse24" or "sparse24_int8", the autotune table op + "_route"),
    or None when it has not been measured yet (`_cslt_measure`). ~1.5 us: one look-up of a tuple."""
    fixed = _cslt_min_m()
    M = x2.shape[0]
    if fixed is not None:
        return M > fixed
    if M > _ROUTE_MAX_M:
        return True
    cfg = _ROUTES[op].get(_sk_triton.route_key(x2, n))
    return None if cfg is None else cfg["path"] == "cslt"


def _cslt_measure(op: str, x2: torch.Tensor, n: int, run_cslt, run_own) -> bool:
    """`_cslt_route`'s choice where it has none yet: both kernels timed now on these tensors (`run_cslt()`,
    `run_own()`; sparsekit.triton.measured_route) and the faster kept; where nothing can be timed (CUDA graph
    capture, SPARSEKIT_TRITON_AUTOTUNE=0, no triton), cuSPARSELt above 16 rows."""
    paths = ("own", "cslt") if x2.shape[0] <= _CSLT_DEFAULT_MIN_M else ("cslt", "own")  # first: the unmeasured
    return _sk_triton.measured_route(op, x2, n, *paths, lambda p: run_cslt() if p == "cslt" else run_own()) == "cslt"


def _stamp(*tensors):
    return tuple((t._version, t.data_ptr()) for t in tensors)


def _cslt_entry(values, meta, scale=None):
    """The cache entry (weakref, stamp, compressed or None if cuSPARSELt refused it, fp16_output_safe, warm)
    that `cslt_prepare` made for exactly these buffers, or None."""
    entry = _CSLT_CACHE.get(id(values))
    if entry is None or entry[0]() is not values:
        return None
    if entry[1] != _stamp(values, meta, *(() if scale is None else (scale,))):
        return None  # written in place since it was compressed: the own kernel, until prepared again
    return entry


def _cslt_lookup(values, meta, scale=None):
    """The entry of a compressed weight ready for these buffers, or None. Never compresses (forward calls it)."""
    entry = _cslt_entry(values, meta, scale)
    return entry if entry is not None and entry[2] is not None else None


def _cslt_call(entry, x2, n, bias, alpha=None, row_scale=None, out_dtype=None):
    """cslt_mm on a prepared weight. Its first call for an (M, dtype, bias) builds a plan and searches the
    algorithm (host syncs), which CUDA graph capture cannot hold: while the stream captures, only a call
    that ran eagerly before (`warm`, kept with the entry) is made; any other raises before launching."""
    key = (x2.shape[0], x2.dtype, None if bias is None else bias.data_ptr())
    warm = entry[4]
    if key not in warm and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"sparsekit 2:4: this layer has not run {x2.shape[0]} rows of {x2.dtype} through cuSPARSELt yet, and "
            "its first call plans and searches (device syncs), which CUDA graph capture cannot hold; call the "
            "model once with the same shapes before capturing (torch.compile mode='reduce-overhead' and "
            "do_bench_cudagraph warm up first), or set SPARSEKIT_CSLT_MIN_M above this M")
    y = _CSLT_MM(x2, entry[2], n, bias, alpha, row_scale, out_dtype)
    warm.add(key)
    return y


def cslt_prepare(values, meta, shape, scale=None) -> bool:
    """Compresses these 2:4 buffers for cuSPARSELt now, if forward could route them there (CUDA, the
    extension built with cuSPARSELt, a shape and dtype it takes); idempotent. True when a compressed weight
    is ready. Syncs the device: call it outside forward and outside CUDA graph capture (during capture it
    does nothing and returns False).

    fp16_output_safe (int8 only): cuSPARSELt writes D = acc * w_scale in the output dtype before the
    per-token scale, and |D| <= 127 * ||w_n||_1 (x quantized to +-127); float16 holds that only while every
    row's L1 norm stays below 65504 / 127, which is checked once here (bfloat16 always holds it).
    """
    n, k = int(shape[0]), int(shape[1])
    wdtype = torch.int8 if scale is not None else values.dtype
    if not _cuda(values) or (scale is None and values.dtype not in _HALVES):
        return False
    if not cslt_shape_fits(n, k, wdtype) or not ops.cslt_available():
        return False
    entry = _cslt_entry(values, meta, scale)
    if entry is not None:
        return entry[2] is not None  # ready, or refused before (not asked again until the buffers change)
    if torch.cuda.is_current_stream_capturing():
        return False
    stamp = _stamp(values, meta, *(() if scale is None else (scale,)))
    try:
        dense = ops.reference.sparse24_to_dense(values, meta, k)
        compressed = _CSLT_COMPRESS(dense)
        safe = scale is None or float((values.float().abs().sum(1) * scale).max()) * 127 < _FP16_MAX
    except Exception:
        _cslt_store(values, stamp, None, False)
        raise
    _cslt_store(values, stamp, compressed, safe)
    return True


def _cslt_store(values, stamp, compressed, safe) -> None:
    side_table_put(_CSLT_CACHE, _CSLT_LOCK, values, (weakref.ref(values), stamp, compressed, safe, set()))


def _cslt_prepare_quietly(*args) -> None:
    """cslt_prepare where a refusal must not stop packing or loading: cuSPARSELt refusing a weight (its
    own 2:4 check, an unsupported device) leaves the format's own kernels serving it."""
    try:
        cslt_prepare(*args)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        import warnings

        warnings.warn(f"sparsekit: the 2:4 weight is not compressed for cuSPARSELt ({e}); the own 2:4 kernel "
                      "serves every M", RuntimeWarning, stacklevel=3)


def _restore(y, x, n):
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)


def _cslt_int8_entry(x2, shape, bias, values, meta, scale):
    """The cuSPARSELt entry a 2:4+int8 call with rows x2 may use, or None: a float16 / bfloat16 call cuSPARSELt
    may take (`_use_cslt`), the weight compressed, and in float16 its output safe from overflow before the
    per-token scale (cslt_prepare)."""
    if x2.dtype not in _HALVES or not _use_cslt(x2, shape, torch.int8, bias):
        return None
    hit = _cslt_lookup(values, meta, scale)
    return hit if hit is not None and (hit[3] or x2.dtype == torch.bfloat16) else None


def _cslt_int8(hit, x2, n, bias, scale):
    """2:4+int8 through cuSPARSELt: x quantized per token (the compiled kernel, one launch and no Python launch,
    unless quantize_per_token is set to triton), then cuSPARSELt's int8 matmul, which scales D's rows (output
    channels: alpha = w_scale) but has no per-column scale of D, so the per-token scale and then the bias run in
    cslt_mm's epilogue kernel."""
    q, s, _ = (_CUDA_QUANTIZE if _sk_triton.quantize_compiled(x2) else _QUANTIZE)(x2, True)
    return _cslt_call(hit, q, n, bias, scale, s, x2.dtype)


def _compiled_w8a8(x: torch.Tensor) -> bool:
    """Whether the rows x (2-d, on CUDA) go to the compiled 2:4 W8A8 kernel (sparsekit.triton.use_compiled)."""
    return not torch.compiler.is_compiling() and _sk_triton.use_compiled("sparse24_int8_mm", x)


@register
class Sparse24Weight(SparseFormat):
    name = "2:4"
    buffer_names = ("values", "meta")

    def __init__(self, values, meta, shape, check: bool = True):
        self.values, self.meta = values, meta
        self.shape = (int(shape[0]), int(shape[1]))
        if check:
            self.check()

    @classmethod
    def from_dense(cls, weight, mask=None) -> "Sparse24Weight":
        mask = check_weight_and_mask(weight, mask, "Sparse24Weight.from_dense")
        values, meta = pack_24(weight, mask, "Sparse24Weight.from_dense")
        _cslt_prepare_quietly(values, meta, weight.shape)
        return cls(values, meta, tuple(weight.shape), check=False)

    @classmethod
    def from_buffers(cls, buffers: Dict[str, torch.Tensor], shape) -> "Sparse24Weight":
        self = cls(buffers["values"], buffers["meta"], shape)
        _cslt_prepare_quietly(self.values, self.meta, self.shape)
        return self

    @staticmethod
    def prepare(m) -> None:
        b = m._buffers
        _cslt_prepare_quietly(b["values"], b["meta"], (m.out_features, m.in_features))

    def check(self) -> None:
        N, K = self.shape
        if K % 4 or self.values.shape != (N, K // 2):
            raise ValueError(f"Sparse24Weight: expected values of shape ({N}, {K // 2}) and K % 4 == 0, got "
                             f"{tuple(self.values.shape)} for K = {K}")
        _check_meta(self.meta, N, K, "Sparse24Weight")

    def to_dense(self) -> torch.Tensor:
        return ops.reference.sparse24_to_dense(self.values, self.meta, self.shape[1])

    @staticmethod
    def apply(x, shape, bias, values, meta):
        if values.dtype == x.dtype and _use_cslt(x, shape, values.dtype, bias):
            x2 = _as_2d(x, "cslt_mm")
            n = shape[0]
            use = _cslt_route("sparse24", x2, n)
            # (the compressed weight is looked up only where cuSPARSELt may run: a decode call the own kernel
            # serves skips that microsecond)
            hit = None if use is False else _cslt_lookup(values, meta)
            if hit is not None:
                if use is None:
                    use = _cslt_measure("sparse24", x2, n, lambda: _cslt_call(hit, x2, n, bias),
                                        lambda: _SPARSE24_MM(x2, values, meta, bias))
                if use:
                    return _restore(_cslt_call(hit, x2, n, bias), x, n)
            return _restore(_SPARSE24_MM(x2, values, meta, bias), x, n)
        if x.dim() == 2:
            return _SPARSE24_MM(x, values, meta, bias)
        return _restore(_SPARSE24_MM(_as_2d(x, "sparse24_mm"), values, meta, bias), x, shape[0])

    @staticmethod
    def module_forward(m, x):
        b = m._buffers
        if x.is_cuda:
            return Sparse24Weight.apply(x, (m.out_features, m.in_features), m._parameters["bias"], b["values"],
                                        b["meta"])
        if x.dim() == 2:
            return _SPARSE24_MM(x, b["values"], b["meta"], m._parameters["bias"])
        y = _SPARSE24_MM(input_rows(m, x), b["values"], b["meta"], m._parameters["bias"])
        return y.reshape(*x.shape[:-1], m.out_features)

    @property
    def nnz(self) -> int:
        return self.values.numel()


@register
class Sparse24Int8Weight(SparseFormat):
    """2:4 with int8 values and a float32 scale per output channel; activations quantized per
    token at run time (W8A8)."""

    name = "2:4+int8"
    buffer_names = ("values", "meta", "scale")
    float32_buffers = ("scale",)

    def __init__(self, values, meta, scale, shape, check: bool = True):
        self.values, self.meta, self.scale = values, meta, scale
        self.shape = (int(shape[0]), int(shape[1]))
        if check:
            self.check()

    @classmethod
    def from_dense(cls, weight, mask=None) -> "Sparse24Int8Weight":
        mask = check_weight_and_mask(weight, mask, "Sparse24Int8Weight.from_dense")
        values, meta = pack_24(weight, mask, "Sparse24Int8Weight.from_dense")
        q, scale = quantize_rows(values)
        _cslt_prepare_quietly(q, meta, weight.shape, scale)
        return cls(q, meta, scale, tuple(weight.shape), check=False)

    @classmethod
    def from_buffers(cls, buffers, shape) -> "Sparse24Int8Weight":
        self = cls(buffers["values"], buffers["meta"], buffers["scale"], shape)
        _cslt_prepare_quietly(self.values, self.meta, self.shape, self.scale)
        return self

    @staticmethod
    def prepare(m) -> None:
        b = m._buffers
        _cslt_prepare_quietly(b["values"], b["meta"], (m.out_features, m.in_features), b["scale"])

    def check(self) -> None:
        N, K = self.shape
        if self.values.dtype != torch.int8 or self.values.shape != (N, K // 2) or K % 4:
            raise ValueError(f"Sparse24Int8Weight: expected int8 values of shape ({N}, {K // 2}), got "
                             f"{self.values.dtype} {tuple(self.values.shape)}")
        if self.scale.dtype != torch.float32 or self.scale.shape != (N,):
            raise ValueError(f"Sparse24Int8Weight: expected float32 scale of shape ({N},)")
        _check_meta(self.meta, N, K, "Sparse24Int8Weight")

    def to_dense(self) -> torch.Tensor:
        return ops.reference.sparse24_to_dense(self.values.float() * self.scale[:, None], self.meta, self.shape[1])

    @staticmethod
    def apply(x, shape, bias, values, meta, scale):
        # quantize_per_token, sparse24_int8_mm, sparse24_int8_linear and cslt_mm have no Python autograd
        # kernel: called as they are
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        # quantization and the 2:4 int8 product in one op, with its backward (on CUDA when a gradient is needed:
        # the kernels below have none)
        if not _cuda(x2) or needs_grad(x2, bias):
            y = _SPARSE24_INT8_LINEAR(x2, values, meta, scale, bias)
            return _restore(y, x, shape[0])
        # Two kernels: the compiled W8A8 tensor-core kernel on sm_80+, x quantized per token inside it
        # (csrc/cuda/w8a8_kernel.cu), and cuSPARSELt (`_cslt_int8`). With both at hand ("auto" backend, sm_80+,
        # the weight compressed for cuSPARSELt) which one serves these rows is measured per M bucket as for 2:4
        # (`_cslt_route`; without a measurement, M <= 16 the compiled kernel). Else the compiled kernel where the
        # backend setting picks it, then cuSPARSELt for every M it can take, then sparse24_int8_mm (whose own
        # fallback decodes the weight on every call).
        n = shape[0]
        if x.dtype in _HALVES and _sk_triton.compiled_auto("sparse24_int8_mm", x2):
            use = _cslt_route("sparse24_int8", x2, n)  # (a decode call the compiled kernel serves stops here)
            if use is False:
                return _restore(_CUDA_SPARSE24_INT8_LINEAR(x2, values, meta, scale, bias), x, n)
            hit = _cslt_int8_entry(x2, shape, bias, values, meta, scale)
            if hit is not None:
                if use is None:
                    use = _cslt_measure("sparse24_int8", x2, n, lambda: _cslt_int8(hit, x2, n, bias, scale),
                                        lambda: _CUDA_SPARSE24_INT8_LINEAR(x2, values, meta, scale, bias))
                y = _cslt_int8(hit, x2, n, bias, scale) if use else _CUDA_SPARSE24_INT8_LINEAR(x2, values, meta,
                                                                                                scale, bias)
                return _restore(y, x, n)
        if _compiled_w8a8(x2):
            y = _CUDA_SPARSE24_INT8_LINEAR(x2, values, meta, scale, bias)
        else:
            hit = _cslt_int8_entry(x2, shape, bias, values, meta, scale)
            if hit is not None:
                y = _cslt_int8(hit, x2, n, bias, scale)
            else:
                q, s, _ = (_CUDA_QUANTIZE if _sk_triton.quantize_compiled(x2) else _QUANTIZE)(x2, True)
                y = _SPARSE24_INT8_MM(q, s, None, values, meta, scale, bias, x.dtype)
        return _restore(y, x, n)

    @staticmethod
    def module_forward(m, x):
        b = m._buffers
        if x.is_cuda:
            return Sparse24Int8Weight.apply(x, (m.out_features, m.in_features), m._parameters["bias"], b["values"],
                                            b["meta"], b["scale"])
        if x.dim() == 2:
            return _SPARSE24_INT8_LINEAR(x, b["values"], b["meta"], b["scale"], m._parameters["bias"])
        y = _SPARSE24_INT8_LINEAR(input_rows(m, x), b["values"], b["meta"], b["scale"],
                                  m._parameters["bias"])
        return y.reshape(*x.shape[:-1], m.out_features)

    @property
    def nnz(self) -> int:
        return self.values.numel()
