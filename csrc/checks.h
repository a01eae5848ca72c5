// Input checks shared by the CPU and CUDA bindings. They raise the same Python exception
// types (TypeError for a dtype, ValueError for a shape, length or device) with the same
// messages as the Python checks in sparsekit/ops/_checks.py, which serve the fake kernels
// and the reference fallback.
#pragma once
#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <string>

namespace sparsekit {

// dtype names as Python spells them (torch.float32 -> "float32").
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// The kernels index columns with int32 (col_indices, bitmap positions): in_features must fit.
inline void check_in_features(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.size(1) <= std::numeric_limits<int32_t>::max(), op, ": in_features ", x.size(1),
                    " exceeds the int32 index range");
}

// Checks the arguments of csr_mm(x, crow_indices, col_indices, values, out_features, bias).
inline void check_csr_mm_args(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.csr_mm";
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": expected x of shape (M, in_features), got shape ", shape_str(x.sizes()));
  TORCH_CHECK_TYPE(is_float_type(x.scalar_type()), op, ": expected x of dtype float32 or bfloat16 or float16, got ",
                   dtype_name(x.scalar_type()));
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), op, ": expected values of the same dtype as x (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(values.scalar_type()));
  check_in_features(op, x);
  TORCH_CHECK_TYPE(crow.scalar_type() == at::kInt, op, ": expected crow_indices of dtype int32, got ",
                   dtype_name(crow.scalar_type()));
  TORCH_CHECK_TYPE(col.scalar_type() == at::kInt, op, ": expected col_indices of dtype int32, got ",
                   dtype_name(col.scalar_type()));
  TORCH_CHECK_VALUE(crow.dim() == 1 && col.dim() == 1 && values.dim() == 1, op,
                    ": expected 1-d crow_indices, col_indices and values, got ", crow.dim(), "-d, ", col.dim(),
                    "-d and ", values.dim(), "-d");
  TORCH_CHECK_VALUE(out_features >= 0, op, ": expected out_features >= 0, got ", out_features);
  TORCH_CHECK_VALUE(crow.numel() == out_features + 1, op, ": expected crow_indices of length out_features + 1 = ",
                    out_features + 1, ", got ", crow.numel());
  TORCH_CHECK_VALUE(col.numel() == values.numel(), op, ": expected col_indices and values of the same length, got ",
                    col.numel(), " and ", values.numel());
  TORCH_CHECK_VALUE(values.numel() <= std::numeric_limits<int32_t>::max(), op, ": nnz ", values.numel(),
                    " exceeds the int32 index range");
  const auto dev = x.device();
  TORCH_CHECK_VALUE(crow.device() == dev, op, ": expected crow_indices on ", dev, " like x, got ", crow.device());
  TORCH_CHECK_VALUE(col.device() == dev, op, ": expected col_indices on ", dev, " like x, got ", col.device());
  TORCH_CHECK_VALUE(values.device() == dev, op, ": expected values on ", dev, " like x, got ", values.device());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == out_features, op, ": expected bias of shape (",
                      out_features, ",), got ", shape_str(bias->sizes()));
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), op, ": expected bias of dtype ",
                     dtype_name(x.scalar_type()), " like x, got ", dtype_name(bias->scalar_type()));
    TORCH_CHECK_VALUE(bias->device() == dev, op, ": expected bias on ", dev, " like x, got ", bias->device());
  }
}

}  // namespace sparsekit

namespace sparsekit {

inline void check_same_device(const char* op, const at::Tensor& x, const char* what, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": expected ", what, " on ", x.device(), " like x, got ",
                    t.device());
}

inline void check_float_x_and_values(const char* op, const at::Tensor& x, const at::Tensor& values) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": expected x of shape (M, in_features), got shape ", shape_str(x.sizes()));
  TORCH_CHECK_TYPE(is_float_type(x.scalar_type()), op, ": expected x of dtype float32 or bfloat16 or float16, got ",
                   dtype_name(x.scalar_type()));
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), op, ": expected values of the same dtype as x (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(values.scalar_type()));
  check_in_features(op, x);
}

inline void check_int32(const char* op, const char* what, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, op, ": expected ", what, " of dtype int32, got ",
                   dtype_name(t.scalar_type()));
}

inline void check_bias(const char* op, const std::optional<at::Tensor>& bias, int64_t n, at::ScalarType dtype,
                       const at::Tensor& x) {
  if (!bias.has_value()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == n, op, ": expected bias of shape (", n, ",), got ",
                    shape_str(bias->sizes()));
  TORCH_CHECK_TYPE(bias->scalar_type() == dtype, op, ": expected bias of dtype ", dtype_name(dtype),
                   " like the output, got ", dtype_name(bias->scalar_type()));
  check_same_device(op, x, "bias", *bias);
}

inline void check_bsr_mm_args(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.bsr_mm";
  check_float_x_and_values(op, x, values);
  check_int32(op, "crow_indices", crow);
  check_int32(op, "col_indices", col);
  TORCH_CHECK_VALUE(values.dim() == 3, op, ": expected values of shape (nblocks, R, C), got shape ",
                    shape_str(values.sizes()));
  const int64_t R = values.size(1), C = values.size(2);
  TORCH_CHECK_VALUE(R > 0 && C > 0, op, ": expected blocks of positive size, got ", R, "x", C);
  TORCH_CHECK_VALUE(out_features % R == 0 && x.size(1) % C == 0, op,
                    ": expected out_features and in_features divisible by the block ", R, "x", C, ", got ",
                    out_features, " and ", x.size(1));
  TORCH_CHECK_VALUE(crow.dim() == 1 && crow.numel() == out_features / R + 1, op,
                    ": expected crow_indices of length out_features / R + 1 = ", out_features / R + 1, ", got ",
                    crow.numel());
  TORCH_CHECK_VALUE(col.dim() == 1 && col.numel() == values.size(0), op,
                    ": expected col_indices of length nblocks = ", values.size(0), ", got ", col.numel());
  check_same_device(op, x, "crow_indices", crow);
  check_same_device(op, x, "col_indices", col);
  check_same_device(op, x, "values", values);
  check_bias(op, bias, out_features, x.scalar_type(), x);
}

inline void check_bitmap_mm_args(const at::Tensor& x, const at::Tensor& bitmap, const at::Tensor& word_offsets,
                                 const at::Tensor& values, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.bitmap_mm";
  check_float_x_and_values(op, x, values);
  check_int32(op, "bitmap", bitmap);
  check_int32(op, "word_offsets", word_offsets);
  const int64_t words = (x.size(1) + 31) / 32;
  TORCH_CHECK_VALUE(bitmap.dim() == 2 && bitmap.size(1) == words, op,
                    ": expected bitmap of shape (out_features, ceil(in_features / 32) = ", words, "), got ",
                    shape_str(bitmap.sizes()));
  TORCH_CHECK_VALUE(word_offsets.sizes() == bitmap.sizes(), op, ": expected word_offsets of the bitmap's shape ",
                    shape_str(bitmap.sizes()), ", got ", shape_str(word_offsets.sizes()));
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() <= std::numeric_limits<int32_t>::max(), op,
                    ": expected 1-d values with nnz < 2**31, got shape ", shape_str(values.sizes()));
  check_same_device(op, x, "bitmap", bitmap);
  check_same_device(op, x, "word_offsets", word_offsets);
  check_same_device(op, x, "values", values);
  check_bias(op, bias, bitmap.size(0), x.scalar_type(), x);
}

inline void check_meta(const char* op, const at::Tensor& meta, int64_t rows, int64_t cols) {
  TORCH_CHECK_TYPE(meta.scalar_type() == at::kByte, op, ": expected meta of dtype uint8, got ",
                   dtype_name(meta.scalar_type()));
  TORCH_CHECK_VALUE(cols % 4 == 0, op, ": expected in_features divisible by 4 for 2:4, got ", cols);
  TORCH_CHECK_VALUE(meta.dim() == 2 && meta.size(0) == rows && meta.size(1) == (cols + 7) / 8, op,
                    ": expected meta of shape (", rows, ", ", (cols + 7) / 8, "), got ", shape_str(meta.sizes()));
}

inline void check_sparse24_mm_args(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                   const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.sparse24_mm";
  check_float_x_and_values(op, x, values);
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(1) * 2 == x.size(1), op,
                    ": expected values of shape (out_features, in_features / 2 = ", x.size(1) / 2, "), got ",
                    shape_str(values.sizes()));
  check_meta(op, meta, values.size(0), x.size(1));
  check_same_device(op, x, "values", values);
  check_same_device(op, x, "meta", meta);
  check_bias(op, bias, values.size(0), x.scalar_type(), x);
}

// ------------------------------------------------------------------------------------------
// Checks of the index buffers' contents (CPU pointers), run before a kernel reads them: a
// malformed buffer passed straight to torch.ops.sparsekit.* must raise, never read or write out
// of bounds. Same messages as the data checks in sparsekit/ops/_checks.py (the reference path).

// crow (n + 1 entries) starts at 0, ends at `count` (nnz or nblocks), never decreases; every
// col lies in [0, cols).
inline void check_compressed_indices(const char* op, const int32_t* crow, int64_t n, const char* count_name,
                                     int64_t count, const int32_t* col, int64_t cols, const char* cols_name) {
  TORCH_CHECK_VALUE(crow[0] == 0 && crow[n] == count, op, ": expected crow_indices[0] == 0 and crow_indices[-1] == ",
                    count_name, " == ", count, ", got ", crow[0], " and ", crow[n]);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(crow[i] <= crow[i + 1], op, ": expected non-decreasing crow_indices, got crow_indices[", i + 1,
                      "] = ", crow[i + 1], " < crow_indices[", i, "] = ", crow[i]);
  int32_t lo = 0, hi = 0;
  for (int64_t i = 0; i < count; ++i) {
    lo = col[i] < lo ? col[i] : lo;
    hi = col[i] > hi ? col[i] : hi;
  }
  if (lo < 0 || (count && hi >= cols)) {
    int64_t i = 0;
    while (col[i] >= 0 && col[i] < cols) ++i;
    TORCH_CHECK_VALUE(false, op, ": expected col_indices in [0, ", cols_name, " = ", cols, "), got col_indices[", i,
                      "] = ", col[i]);
  }
}

// word_offsets[n, w] is the number of set bits before word w of row n (row-major over the
// whole bitmap), the total is nnz, and no bit past in_features is set.
inline void check_bitmap_words(const char* op, const int32_t* bitmap, const int32_t* word_offsets, int64_t rows,
                               int64_t words, int64_t cols, int64_t nnz) {
  const uint32_t tail = cols % 32 ? ~((uint32_t(1) << (cols % 32)) - 1u) : 0u;
  int64_t count = 0;
  for (int64_t n = 0; n < rows; ++n) {
    const uint32_t* bm = reinterpret_cast<const uint32_t*>(bitmap) + n * words;
    const int32_t* wo = word_offsets + n * words;
    TORCH_CHECK_VALUE(words == 0 || (bm[words - 1] & tail) == 0, op, ": expected no bits past in_features = ", cols,
                      " in row ", n, " of bitmap");
    for (int64_t w = 0; w < words; ++w) {
      TORCH_CHECK_VALUE(wo[w] == count, op, ": expected word_offsets[", n, ", ", w, "] == ", count,
                        " (the set bits before it), got ", wo[w]);
      count += __builtin_popcount(bm[w]);
    }
  }
  TORCH_CHECK_VALUE(count == nnz, op, ": the bitmap keeps ", count, " weights but there are ", nnz, " values");
}

// Every group's two 2-bit positions in meta are distinct and ascending (i0 < i1).
inline void check_meta_positions(const char* op, const uint8_t* meta, int64_t rows, int64_t cols) {
  const int64_t groups = cols / 4, bytes = (cols + 7) / 8;
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      const unsigned nib = (meta[n * bytes + g / 2] >> (4 * (g % 2))) & 0xFu;
      TORCH_CHECK_VALUE((nib & 3u) < (nib >> 2), op, ": expected two distinct ascending positions in every group of 4 ",
                        "of meta, got ", nib & 3u, " and ", nib >> 2, " in row ", n, ", group ", g);
    }
}

}  // namespace sparsekit
