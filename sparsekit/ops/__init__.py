"""sparsekit ops: documented wrappers over torch.ops.sparsekit.*.

Each op has its schema in `_schemas.py`, input checks in `_checks.py` (shared by the fake
kernel, the fallback and, with the same messages, the compiled kernels), a fake kernel here
(so torch.compile traces it), its pure-PyTorch reference in `reference.py` (registered as the
CompositeExplicitAutograd fallback, so it serves wherever no compiled or Triton kernel is
registered), and kernels registered per device by the backends.
"""
from __future__ import annotations

import functools

import torch

from . import _checks as C
from . import _schemas  # noqa: F401  (defines the ops)
from . import reference

__all__ = ["csr_mm", "bsr_mm", "bitmap_mm", "sparse24_mm", "int8_gemm_i32", "quantize_per_token", "int8_mm",
           "int8_weight_only_mm", "sparse24_int8_mm", "int8_linear", "sparse24_int8_linear", "cslt_compress",
           "cslt_mm", "cslt_available", "reference"]

_lib = torch.library.Library("sparsekit", "IMPL")


#: the checked reference of each op (what serves where no kernel is registered), by op name
FALLBACKS = {}


def _register(name, check, ref, fake, data_check=None):
    """Fake kernel (checks + shapes) and the checked reference as the last fallback.

    data_check (the fallback only; a fake kernel sees no data) validates the index buffers' contents
    with the messages the compiled kernels use.
    """
    schema_args = getattr(torch.ops.sparsekit, name).default._schema.arguments

    def full(args, kwargs):
        # Python kernels receive what the caller passed: fill in the schema's defaults.
        out = list(args)
        for a in schema_args[len(args):]:
            out.append(kwargs[a.name] if a.name in kwargs else a.default_value)
        return out

    def fallback(*args, **kwargs):
        args = full(args, kwargs)
        check(*args)
        if data_check is not None:
            data_check(*args)
        return ref(*args)

    def fake_kernel(*args, **kwargs):
        args = full(args, kwargs)
        check(*args)
        return fake(*args)

    torch.library.register_fake(f"sparsekit::{name}")(fake_kernel)
    _lib.impl(name, fallback, "CompositeExplicitAutograd")
    FALLBACKS[name] = fallback
    _REGISTERED[name] = (check, ref, fake, data_check)


_REGISTERED: dict = {}  # name -> _register's arguments (the _cuda_ aliases take their op's)


def _int8_wo_dense(w_q, w_scale, shape):
    return w_q.float() * w_scale[:, None]


#: format -> (reference unpacking (buffers..., (out_features, in_features)), fake dtype from the buffers)
_DENSE_WEIGHT = {
    "csr": (reference.csr_to_dense, lambda b: b[2].dtype),
    "bsr": (reference.bsr_to_dense, lambda b: b[2].dtype),
    "bitmap": (reference.bitmap_to_dense, lambda b: b[2].dtype),
    "2:4": (lambda v, m, shape: reference.sparse24_to_dense(v, m, shape[1]), lambda b: b[0].dtype),
    "int8-wo": (_int8_wo_dense, lambda b: torch.float32),
    "2:4+int8": (lambda v, m, s, shape: reference.sparse24_to_dense(v, m, shape[1], torch.float32) * s[:, None],
                 lambda b: torch.float32),
}


def _dense_weight_format(format):
    if format not in _DENSE_WEIGHT:
        raise ValueError(f"sparsekit._dense_weight: unknown format {format!r}, expected one of {sorted(_DENSE_WEIGHT)}")
    return _DENSE_WEIGHT[format]


def _dense_weight(format, buffers, out_features, in_features):
    return _dense_weight_format(format)[0](*buffers, (out_features, in_features))


def _dense_weight_fake(format, buffers, out_features, in_features):
    return buffers[0].new_empty((out_features, in_features), dtype=_dense_weight_format(format)[1](buffers))


torch.library.register_fake("sparsekit::_dense_weight")(_dense_weight_fake)
_lib.impl("_dense_weight", _dense_weight, "CompositeExplicitAutograd")


#: op -> (format, index of its bias, indices of the packed weight's tensors) of the ops with a gradient
LINEAR_AUTOGRAD = {
    "csr_mm": ("csr", 5, (1, 2, 3)),
    "bsr_mm": ("bsr", 5, (1, 2, 3)),
    "bitmap_mm": ("bitmap", 4, (1, 2, 3)),
    "sparse24_mm": ("2:4", 3, (1, 2)),
    "int8_weight_only_mm": ("int8-wo", 3, (1, 2)),
    # W8A8: the backward pass takes the per-token quantization of x as the identity (straight-through)
    "int8_linear": ("int8-wo", 3, (1, 2)),
    "sparse24_int8_linear": ("2:4+int8", 4, (1, 2, 3)),
}

#: the ops of LINEAR_AUTOGRAD whose Autograd kernel is compiled (csrc/autograd.cpp), set by register_autograd()
CPP_AUTOGRAD: set = set()


def _register_linear_autograd(name, format, bias_index, weight_args):
    """The Python twin of csrc/autograd.cpp (used without the compiled extension): gradients to the input
    (through the dense weight) and the bias; none to the packed weight."""

    def setup_context(ctx, inputs, output):
        for i in weight_args:
            t = inputs[i]
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise RuntimeError(
                    f"sparsekit.{name}: gradients with respect to the sparse values are not supported; "
                    "train the dense weight with its mask (sparsekit.prune) and convert afterwards"
                )
        ctx.save_for_backward(*[inputs[i] for i in weight_args])
        ctx.in_features = inputs[0].shape[1]
        ctx.nargs = len(inputs)

    def backward(ctx, grad):
        grads = [None] * ctx.nargs
        if ctx.needs_input_grad[0]:
            w = torch.ops.sparsekit._dense_weight(format, list(ctx.saved_tensors), grad.shape[1], ctx.in_features)
            grads[0] = grad @ w.to(grad.dtype)
        if ctx.needs_input_grad[bias_index]:
            grads[bias_index] = grad.sum(0)
        return tuple(grads)

    torch.library.register_autograd(f"sparsekit::{name}", backward, setup_context=setup_context)


def register_autograd() -> None:
    """The gradients of the linear ops: the compiled Autograd kernels where sparsekit._C registered them (a
    call then costs no Python frame), the Python formula otherwise. Called once, after sparsekit._C loads."""
    if CPP_AUTOGRAD or getattr(register_autograd, "done", False):
        return
    register_autograd.done = True
    for name, (format, bias_index, weight_args) in LINEAR_AUTOGRAD.items():
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekit::{name}", "Autograd"):
            CPP_AUTOGRAD.add(name)
        else:
            _register_linear_autograd(name, format, bias_index, weight_args)


def _out(x, n, dtype=None):
    return x.new_empty((x.shape[0], n), dtype=dtype or x.dtype)


_register("csr_mm", C.check_csr_mm, reference.csr_mm, lambda x, cr, ci, v, n, b: _out(x, n), C.check_csr_mm_data)
_register("bsr_mm", C.check_bsr_mm, reference.bsr_mm, lambda x, cr, ci, v, n, b: _out(x, n), C.check_bsr_mm_data)
_register("bitmap_mm", C.check_bitmap_mm, reference.bitmap_mm, lambda x, bm, wo, v, b: _out(x, bm.shape[0]),
          C.check_bitmap_mm_data)
_register("_cuda_bitmap_columns_mm", C.check_bitmap_columns_mm,
          lambda x, bm, wo, v, cols, b: reference.bitmap_mm(x, bm, wo, v, b),
          lambda x, bm, wo, v, cols, b: _out(x, bm.shape[0]), C.check_bitmap_columns_mm_data)
_register("sparse24_mm", C.check_sparse24_mm, reference.sparse24_mm, lambda x, v, m, b: _out(x, v.shape[0]),
          C.check_sparse24_mm_data)
_register("int8_gemm_i32", C.check_int8_gemm_i32, reference.int8_gemm_i32,
          lambda a, b: _out(a, b.shape[0], torch.int32))
_register("quantize_per_token", lambda x, sym: C.check_quantize_per_token(x), reference.quantize_per_token,
          lambda x, sym: (x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],), dtype=torch.float32),
                          x.new_empty((x.shape[0],), dtype=torch.int32)))
_register("int8_mm", C.check_int8_mm, reference.int8_mm,
          lambda xq, xs, xz, wq, ws, b, od: _out(xq, wq.shape[0], od))
_register("int8_weight_only_mm", C.check_int8_weight_only_mm, reference.int8_weight_only_mm,
          lambda x, wq, ws, b: _out(x, wq.shape[0]))
_register("sparse24_int8_mm", C.check_sparse24_int8_mm, reference.sparse24_int8_mm,
          lambda xq, xs, xz, v, m, ws, b, od: _out(xq, v.shape[0], od), C.check_sparse24_int8_mm_data)
_register("int8_linear", C.check_int8_linear, reference.int8_linear, lambda x, wq, ws, b: _out(x, wq.shape[0]))
_register("sparse24_int8_linear", C.check_sparse24_int8_linear, reference.sparse24_int8_linear,
          lambda x, v, m, ws, b: _out(x, v.shape[0]), C.check_sparse24_int8_linear_data)
# The compiled CUDA kernels' own names (_schemas.COMPILED_CUDA_ALIASES): the public op's checks, reference and
# fake kernel.
for _op in _schemas.COMPILED_CUDA_ALIASES:
    _register(f"_cuda_{_op}", *_REGISTERED[_op])


def _cslt_unavailable(op):
    """The fallback of the cuSPARSELt ops: their compressed buffer is cuSPARSELt's own, so no reference exists."""

    def fail(x, *args):
        if x.device.type != "cuda":
            raise NotImplementedError(
                f"sparsekit.{op}: cuSPARSELt runs on CUDA only and its compressed buffer is opaque, so there is no "
                f"{x.device.type} implementation; use sparse24_mm (the 2:4 format's own kernels) there")
        raise NotImplementedError(
            f"sparsekit.{op}: this sparsekit was built without cuSPARSELt (sparsekit._C.with_cusparselt is false: "
            "no cusparseLt.h at build time, SPARSEKIT_NO_CUSPARSELT set, or no compiled extension); "
            "use sparse24_mm, or rebuild with the nvidia-cusparselt package installed")

    return fail


def _cslt_compressed_fake(w):
    # The size is cuSPARSELt's (cusparseLtSpMMACompressedSize2), not a function of the shape we may assume.
    return w.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.uint8)


_register("cslt_compress", C.check_cslt_compress, _cslt_unavailable("cslt_compress"), _cslt_compressed_fake)
_register("cslt_mm", C.check_cslt_mm, _cslt_unavailable("cslt_mm"),
          lambda x, c, n, b, a, rs, od: _out(x, n, C.cslt_out_dtype(x, od)))

from . import packing  # noqa: E402

packing.register()


# ------------------------------------------------------------------------------------------ the thin call path
_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd
_any_requires_grad = torch._C._any_requires_grad
_is_compiling = torch.compiler.is_compiling


def call_no_grad_below_autograd(op, *args):
    """``op(*args)`` for an op whose autograd formula is registered from Python (without the compiled extension).

    When no gradient is needed (grad mode off, or no argument requires grad) the call runs below the
    Autograd key, which is exactly the no-grad branch of torch.library's Python autograd kernel
    (``_AutoDispatchBelowAutograd`` + the remaining keys) without its Python frames (about 15 us of host
    time per call on a 64x64 layer). Otherwise, and while torch.compile traces (which needs the formula),
    the op is called as it is. Modes, subclasses and the backend keys see the same call either way.
    """
    if _is_compiling() or (torch.is_grad_enabled() and _any_requires_grad(*args)):
        return op(*args)
    with _BELOW_AUTOGRAD():
        return op(*args)


def linear_call(op):
    """What the formats call for a linear op of LINEAR_AUTOGRAD: the op itself where its Autograd kernel is
    compiled (csrc/autograd.cpp: no Python frame per call), else ``call_no_grad_below_autograd`` bound to it.

    Decided once, when the formats import (after register_autograd())."""
    if op._schema.name.split("::", 1)[1] in CPP_AUTOGRAD:
        return op
    return functools.partial(call_no_grad_below_autograd, op)


def _as_2d(x, op):
    if x.dim() == 0:
        raise ValueError(f"sparsekit.{op}: expected x of shape (..., in_features), got a 0-d tensor")
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])


def _restore(y, x):
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def csr_mm(x, crow_indices, col_indices, values, out_features: int, bias=None) -> torch.Tensor:
    """``x @ W.T + bias`` for a weight W of shape (out_features, in_features) stored in CSR.

    Args:
        x: activations of shape (..., in_features), float32, bfloat16 or float16, any strides.
        crow_indices: int32, (out_features + 1,): row i's kept values are values[crow[i]:crow[i+1]].
        col_indices: int32, (nnz,): the column of each kept value, in [0, in_features).
        values: (nnz,), the same dtype as x.
        out_features: rows of W.
        bias: optional (out_features,), the same dtype as x.

    Returns:
        (..., out_features) in x's dtype, accumulated in float32.

    Raises:
        TypeError: a dtype other than the above. ValueError: a shape, length or device mismatch.
    """
    y = torch.ops.sparsekit.csr_mm(_as_2d(x, "csr_mm"), crow_indices, col_indices, values, out_features, bias)
    return _restore(y, x)


def bsr_mm(x, crow_indices, col_indices, values, out_features: int, bias=None) -> torch.Tensor:
    """``x @ W.T + bias`` for W in BSR with blocks (R, C) = values.shape[1:] (see formats/LAYOUTS.md).

    x: (..., in_features) float32 / bfloat16 / float16; out_features and in_features divisible by R and C.
    """
    y = torch.ops.sparsekit.bsr_mm(_as_2d(x, "bsr_mm"), crow_indices, col_indices, values, out_features, bias)
    return _restore(y, x)


def bitmap_mm(x, bitmap, word_offsets, values, bias=None) -> torch.Tensor:
    """``x @ W.T + bias`` for W in the bitmap format (one bit per weight + the kept values)."""
    return _restore(torch.ops.sparsekit.bitmap_mm(_as_2d(x, "bitmap_mm"), bitmap, word_offsets, values, bias), x)


def sparse24_mm(x, values, meta, bias=None) -> torch.Tensor:
    """``x @ W.T + bias`` for W in the 2:4 format (values (N, K/2) + 2-bit positions in meta)."""
    return _restore(torch.ops.sparsekit.sparse24_mm(_as_2d(x, "sparse24_mm"), values, meta, bias), x)


def int8_gemm_i32(a, b) -> torch.Tensor:
    """Exact ``a @ b.T`` for int8 a (M, K) and b (N, K), accumulated and returned in int32."""
    return torch.ops.sparsekit.int8_gemm_i32(a, b)


def quantize_per_token(x, symmetric: bool = True):
    """Dynamic per-row int8 quantization of x (..., K): returns (q int8, scale float32, zero_point int32)
    with x ~= (q - zero_point) * scale; symmetric keeps zero_point = 0 and q in [-127, 127]."""
    q, s, z = torch.ops.sparsekit.quantize_per_token(_as_2d(x, "quantize_per_token"), symmetric)
    if x.dim() != 2:
        q, s, z = q.reshape(x.shape), s.reshape(x.shape[:-1]), z.reshape(x.shape[:-1])
    return q, s, z


def int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias=None, out_dtype=torch.float32) -> torch.Tensor:
    """W8A8: ``((x_q - x_zero) @ w_q.T) * x_scale[:, None] * w_scale + bias`` in out_dtype, int32 accumulation."""
    return torch.ops.sparsekit.int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype)


def int8_weight_only_mm(x, w_q, w_scale, bias=None) -> torch.Tensor:
    """W8A16: ``x @ (w_q * w_scale[:, None]).T + bias`` in x's dtype."""
    return _restore(torch.ops.sparsekit.int8_weight_only_mm(_as_2d(x, "int8_weight_only_mm"), w_q, w_scale, bias), x)


def sparse24_int8_mm(x_q, x_scale, x_zero, values, meta, w_scale, bias=None, out_dtype=torch.float32):
    """W8A8 with a 2:4 int8 weight (values (N, K/2) int8, meta as sparse24_mm)."""
    return torch.ops.sparsekit.sparse24_int8_mm(x_q, x_scale, x_zero, values, meta, w_scale, bias, out_dtype)


def int8_linear(x, w_q, w_scale, bias=None) -> torch.Tensor:
    """W8A8 linear in one op: x quantized per token (symmetric int8), then ``int8_mm``, y in x's dtype.

    The same as ``q, s, _ = quantize_per_token(x)`` then ``int8_mm(q, s, None, w_q, w_scale, bias, x.dtype)``
    (bit for bit on the CPU, where both run the same kernels) with one op call instead of two.

    Args:
        x: activations of shape (..., in_features), float32, bfloat16 or float16, any strides.
        w_q: int8 weight (out_features, in_features), e.g. from ``sparsekit.formats.int8.quantize_rows``.
        w_scale: float32 (out_features,), the weight's per-channel scale.
        bias: optional (out_features,), in x's dtype.

    Returns:
        (..., out_features) in x's dtype.

    Raises:
        TypeError: a dtype other than the above. ValueError: a shape or device mismatch, or in_features
        past 131071 (int32 sums of int8 products could overflow).
    """
    return _restore(torch.ops.sparsekit.int8_linear(_as_2d(x, "int8_linear"), w_q, w_scale, bias), x)


def sparse24_int8_linear(x, values, meta, w_scale, bias=None) -> torch.Tensor:
    """2:4 + int8 W8A8 linear in one op: x quantized per token, then ``sparse24_int8_mm``, y in x's dtype.

    The same as ``q, s, _ = quantize_per_token(x)`` then
    ``sparse24_int8_mm(q, s, None, values, meta, w_scale, bias, x.dtype)`` (bit for bit on the CPU).

    Args:
        x: activations of shape (..., in_features), float32, bfloat16 or float16; in_features divisible by 4.
        values: int8 (out_features, in_features / 2), the two kept weights of every group of four.
        meta: uint8 (out_features, ceil(in_features / 8)), their positions (formats/LAYOUTS.md); its contents
            are checked once per buffer.
        w_scale: float32 (out_features,).
        bias: optional (out_features,), in x's dtype.

    Returns:
        (..., out_features) in x's dtype.

    Raises:
        TypeError: a dtype other than the above. ValueError: a shape or device mismatch, or a malformed meta.
    """
    y = torch.ops.sparsekit.sparse24_int8_linear(_as_2d(x, "sparse24_int8_linear"), values, meta, w_scale, bias)
    return _restore(y, x)


def cslt_available() -> bool:
    """True when the compiled extension carries the cuSPARSELt path (a GPU is still needed to run it)."""
    from .. import _ext

    return _ext.C is not None and bool(getattr(_ext.C, "with_cusparselt", 0))


def cslt_compress(weight) -> torch.Tensor:
    """Compress a 2:4 weight (out_features, in_features) float16 / bfloat16 / int8 on CUDA for cslt_mm.

    Returns cuSPARSELt's opaque buffer (1-d uint8). Raises ValueError if the weight is not 2:4 along
    in_features or its sizes are not multiples of 16 (16-bit) / 32 (int8); NotImplementedError on the CPU.
    """
    return torch.ops.sparsekit.cslt_compress(weight)


def cslt_mm(x, compressed, out_features: int, bias=None, alpha=None, row_scale=None, out_dtype=None):
    """``(x @ W.T) * alpha * row_scale[:, None] + bias`` through cuSPARSELt, W given by ``cslt_compress``.

    x (..., in_features) float16 / bfloat16 (y in x's dtype, bias in it too) or int8 (y in out_dtype
    float16 / bfloat16; alpha float32 (out_features,) per output channel, row_scale float32 (M,) per token).
    """
    y = torch.ops.sparsekit.cslt_mm(_as_2d(x, "cslt_mm"), compressed, out_features, bias, alpha, row_scale, out_dtype)
    return _restore(y, x)
