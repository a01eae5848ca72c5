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

// Checks the arguments of csr_mm(x, crow_indices, col_indices, values, out_features, bias).
inline void check_csr_mm_args(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.csr_mm";
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": expected x of shape (M, in_features), got shape ", shape_str(x.sizes()));
  TORCH_CHECK_TYPE(is_float_type(x.scalar_type()), op, ": expected x of dtype float32 or bfloat16 or float16, got ",
                   dtype_name(x.scalar_type()));
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), op, ": expected values of the same dtype as x (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(values.scalar_type()));
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
