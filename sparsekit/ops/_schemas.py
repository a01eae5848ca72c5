"""The schemas of every sparsekit op, in one place.

Backends only register implementations: C++ through TORCH_LIBRARY_IMPL(sparsekit, CPU|CUDA)
in csrc/, Triton through torch.library in sparsekit/triton/, and the pure-PyTorch reference
as the CompositeExplicitAutograd fallback (sparsekit/ops/__init__.py). The buffer layouts are
documented in sparsekit/formats/LAYOUTS.md.
"""
import torch

NAMESPACE = "sparsekit"

SCHEMAS = {
    # y = x @ W.T + bias with W (out_features x K) in CSR: int32 crow_indices (out_features + 1),
    # int32 col_indices and values (nnz). x is (M, K); values, bias and y share x's dtype.
    "csr_mm": "csr_mm(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, "
    "int out_features, Tensor? bias=None) -> Tensor",
    # BSR with blocks (R, C) = values.shape[1:]: crow_indices (out_features / R + 1) and
    # col_indices (nblocks, block-column numbers) int32; values (nblocks, R, C) in x's dtype.
    "bsr_mm": "bsr_mm(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, "
    "int out_features, Tensor? bias=None) -> Tensor",
    # Bitmap: bitmap int32 (N, ceil(K / 32)), bit b of word w <-> column 32 w + b; word_offsets
    # int32 (N, ceil(K / 32)), index in values of the word's first kept value; values (nnz,) row-major.
    "bitmap_mm": "bitmap_mm(Tensor x, Tensor bitmap, Tensor word_offsets, Tensor values, "
    "Tensor? bias=None) -> Tensor",
    # 2:4: values (N, K / 2) in x's dtype, two per group of four; meta uint8 (N, ceil(K / 8)),
    # a nibble per group (low nibble = even group): bits 0-1 and 2-3 are the two kept positions.
    "sparse24_mm": "sparse24_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias=None) -> Tensor",
    # Exact int8 GEMM: a (M, K) int8, b (N, K) int8 -> (M, N) int32 = a @ b.T.
    "int8_gemm_i32": "int8_gemm_i32(Tensor a, Tensor b) -> Tensor",
    # Dynamic per-token (per-row) int8 quantization of x (M, K) float: returns (q int8 (M, K),
    # scale float32 (M,), zero_point int32 (M,)); symmetric: zero_point = 0 and q in [-127, 127];
    # asymmetric: q in [-128, 127]. x ~= (q - zero_point) * scale.
    "quantize_per_token": "quantize_per_token(Tensor x, bool symmetric=True) -> (Tensor, Tensor, Tensor)",
    # W8A8: y = ((x_q - x_zero) @ w_q.T) * x_scale[:, None] * w_scale[None, :] + bias, in out_dtype.
    # x_q int8 (M, K), x_scale float32 (M,), x_zero int32 (M,) or None, w_q int8 (N, K), w_scale float32 (N,),
    # bias (N,) in out_dtype or None.
    "int8_mm": "int8_mm(Tensor x_q, Tensor x_scale, Tensor? x_zero, Tensor w_q, Tensor w_scale, Tensor? bias, "
    "ScalarType out_dtype) -> Tensor",
    # W8A16 (weight-only): y = x @ (w_q * w_scale[:, None]).T + bias in x's dtype; x float (M, K).
    "int8_weight_only_mm": "int8_weight_only_mm(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias=None) -> Tensor",
    # 2:4 + int8, W8A8: as int8_mm with the weight in 2:4 layout (values int8 (N, K / 2), meta as sparse24_mm).
    "sparse24_int8_mm": "sparse24_int8_mm(Tensor x_q, Tensor x_scale, Tensor? x_zero, Tensor values, Tensor meta, "
    "Tensor w_scale, Tensor? bias, ScalarType out_dtype) -> Tensor",
    # One-call W8A8 linears: x (M, K) float32 / bfloat16 / float16 quantized per token (symmetric, as
    # quantize_per_token(x, True)) and multiplied in the same op; y (M, N) and bias (N,) in x's dtype.
    # int8_linear: as int8_mm(q, s, None, w_q, w_scale, bias, x.dtype) with w_q int8 (N, K), w_scale float32 (N,).
    # sparse24_int8_linear: as sparse24_int8_mm(q, s, None, values, meta, w_scale, bias, x.dtype).
    # On the CPU both are bit for bit the two-op composition (the same kernels, one dispatch).
    "int8_linear": "int8_linear(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias=None) -> Tensor",
    "sparse24_int8_linear": "sparse24_int8_linear(Tensor x, Tensor values, Tensor meta, Tensor w_scale, "
    "Tensor? bias=None) -> Tensor",
    # cuSPARSELt 2:4 (CUDA only; csrc/cuda/ops_cusparselt.cpp). cslt_compress: weight (N, K) float16 / bfloat16 /
    # int8, 2:4 along K, N and K multiples of 16 (16-bit) or 32 (int8) -> the opaque compressed buffer, 1-d
    # uint8 whose size cuSPARSELt decides (values + its own metadata layout, not LAYOUTS.md's) for (N, K, dtype).
    # cslt_mm: y (M, N) = (x @ W.T) * alpha[None, :] * row_scale[:, None] + bias, computed as
    # D (N x M) = W (N x K) · x.T (K x M) so that row-major x and y need no copies. x float16 / bfloat16 ->
    # y in x's dtype, bias fused by cuSPARSELt; x int8 -> y in out_dtype (float16 / bfloat16, required),
    # alpha float32 (N,) (cuSPARSELt alpha-vector scaling: the weight's per-channel scale), row_scale float32
    # (M,) (the per-token activation scale) and bias in a sparsekit epilogue. A compressed buffer has no
    # meaning on the CPU: there the ops raise NotImplementedError.
    "cslt_compress": "cslt_compress(Tensor weight) -> Tensor",
    "cslt_mm": "cslt_mm(Tensor x, Tensor compressed, int out_features, Tensor? bias=None, Tensor? alpha=None, "
    "Tensor? row_scale=None, ScalarType? out_dtype=None) -> Tensor",
    # The dense weight (out_features, in_features) of a packed one: format "csr" / "bsr" (buffers crow_indices,
    # col_indices, values), "bitmap" (bitmap, word_offsets, values), "2:4" (values, meta), "int8-wo" (w_q,
    # w_scale; float32), "2:4+int8" (values, meta, w_scale; float32). What the backward pass of the linear ops
    # multiplies the gradient with (their Autograd kernels: csrc/autograd.cpp, or sparsekit/ops/__init__.py
    # without the extension).
    "_dense_weight": "_dense_weight(str format, Tensor[] buffers, int out_features, int in_features) -> Tensor",
    # Packers (sparsekit/ops/packing.py): the buffers of a format from a weight (N, K) and its bool mask
    # (default: weight != 0), bit for bit what sparsekit.formats.*.from_dense produces (LAYOUTS.md).
    "pack_sparse24": "pack_sparse24(Tensor weight, Tensor? mask=None) -> (Tensor, Tensor)",
    "pack_bitmap": "pack_bitmap(Tensor weight, Tensor? mask=None) -> (Tensor, Tensor, Tensor)",
    "pack_csr": "pack_csr(Tensor weight, Tensor? mask=None) -> (Tensor, Tensor, Tensor)",
    "pack_bsr": "pack_bsr(Tensor weight, Tensor? mask=None, int[2] blocksize=[16, 16]) -> (Tensor, Tensor, Tensor)",
}

# The bitmap matmul with the bitmap's column list beside it (reference.bitmap_columns: int16, the column of each
# kept value, zero-padded to a multiple of 8): what a bitmap layer prepared on CUDA calls at M <= 16, the
# column-list kernel of csrc/cuda/bitmap_kernel.cu (no scan, no compaction). Elsewhere the reference (the
# list checked against the bitmap, then bitmap_mm's). Private: formats/bitmap.py makes and keeps the list.
SCHEMAS["_cuda_bitmap_columns_mm"] = ("_cuda_bitmap_columns_mm(Tensor x, Tensor bitmap, Tensor word_offsets, "
                                      "Tensor values, Tensor columns, Tensor? bias=None) -> Tensor")

# Where CUDA has two kernels for one op (sparsekit/triton registers the op's CUDA implementation, which
# routes by M between Triton and the compiled kernel), the compiled CUDA kernel is also registered
# under its own name, with the public op's schema: "_cuda_<op>".
COMPILED_CUDA_ALIASES = ("bitmap_mm", "bsr_mm", "int8_weight_only_mm", "int8_mm", "sparse24_int8_mm", "int8_linear",
                         "sparse24_int8_linear", "quantize_per_token")
for _op in COMPILED_CUDA_ALIASES:
    SCHEMAS[f"_cuda_{_op}"] = f"_cuda_{SCHEMAS[_op]}"

LIB = torch.library.Library(NAMESPACE, "DEF")
for _schema in SCHEMAS.values():
    LIB.define(_schema)
