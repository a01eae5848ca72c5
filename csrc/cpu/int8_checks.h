// Input checks of the int8 ops (int8_gemm_i32, quantize_per_token, int8_mm, int8_weight_only_mm,
// sparse24_int8_mm, int8_linear, sparse24_int8_linear). They raise the same Python exception types with the same messages, in the
// same order, as sparsekit/ops/_checks.py: TypeError (TORCH_CHECK_TYPE) for a dtype, ValueError
// (TORCH_CHECK_VALUE) for a shape or a device. The helpers live in their own namespace so that
// they cannot collide with the ones checks.h grows.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>
#include <string>

#include "checks.h"

namespace sparsekit {
namespace int8chk {

inline bool dtype_in(at::ScalarType t, std::initializer_list<at::ScalarType> allowed) {
  for (auto a : allowed)
    if (a == t) return true;
  return false;
}

inline std::string dtype_names(std::initializer_list<at::ScalarType> allowed) {
  std::string out;
  for (auto a : allowed) out += (out.empty() ? "" : " or ") + dtype_name(a);
  return out;
}

constexpr std::initializer_list<at::ScalarType> kFloatTypes = {at::kFloat, at::kBFloat16, at::kHalf};

// expect_dtype(op, what, t, allowed)
inline void expect_dtype(const char* op, const char* what, const at::Tensor& t,
                         std::initializer_list<at::ScalarType> allowed) {
  TORCH_CHECK_TYPE(dtype_in(t.scalar_type(), allowed), op, ": expected ", what, " of dtype ", dtype_names(allowed),
                   ", got ", dtype_name(t.scalar_type()));
}

// _check_x2d(op, x, what)
inline void check_x2d(const char* op, const at::Tensor& x, const char* what = "x") {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": expected ", what, " of shape (M, in_features), got shape ",
                    shape_str(x.sizes()));
}

// _same_device(op, x, what=t)
inline void same_device(const char* op, const at::Tensor& x, const char* what, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": expected ", what, " on ", x.device(), " like x, got ", t.device());
}
inline void same_device(const char* op, const at::Tensor& x, const char* what, const std::optional<at::Tensor>& t) {
  if (t.has_value()) same_device(op, x, what, *t);
}

// a 1-d tensor of exactly n entries (Python: t.shape == (n,))
inline bool is_vec(const at::Tensor& t, int64_t n) { return t.dim() == 1 && t.size(0) == n; }

// _check_bias(op, bias, out_features, dtype, device)
inline void check_bias(const char* op, const std::optional<at::Tensor>& bias, int64_t n, at::ScalarType dtype,
                       const at::Device& device) {
  if (!bias.has_value()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == n, op, ": expected bias of shape (", n, ",), got ",
                    shape_str(bias->sizes()));
  TORCH_CHECK_TYPE(bias->scalar_type() == dtype, op, ": expected bias of dtype ", dtype_name(dtype),
                   " like the output, got ", dtype_name(bias->scalar_type()));
  TORCH_CHECK_VALUE(bias->device() == device, op, ": expected bias on ", device, " like x, got ", bias->device());
}

// _check_x_quant(op, x_q, x_scale, x_zero)
inline void check_x_quant(const char* op, const at::Tensor& x_q, const at::Tensor& x_scale,
                          const std::optional<at::Tensor>& x_zero) {
  expect_dtype(op, "x_q", x_q, {at::kChar});
  check_x2d(op, x_q, "x_q");
  expect_dtype(op, "x_scale", x_scale, {at::kFloat});
  const int64_t M = x_q.size(0);
  TORCH_CHECK_VALUE(is_vec(x_scale, M), op, ": expected x_scale of shape (", M, ",), got ", shape_str(x_scale.sizes()));
  if (x_zero.has_value()) {
    expect_dtype(op, "x_zero", *x_zero, {at::kInt});
    TORCH_CHECK_VALUE(is_vec(*x_zero, M), op, ": expected x_zero of shape (", M, ",), got ",
                      shape_str(x_zero->sizes()));
  }
}

// _check_out_dtype(op, out_dtype)
inline void check_out_dtype(const char* op, at::ScalarType out_dtype) {
  TORCH_CHECK_TYPE(dtype_in(out_dtype, kFloatTypes), op, ": expected out_dtype float32 or bfloat16 or float16, got ",
                   dtype_name(out_dtype));
}

// _check_w_scale(op, w_scale, rows)
inline void check_w_scale(const char* op, const at::Tensor& w_scale, int64_t rows) {
  expect_dtype(op, "w_scale", w_scale, {at::kFloat});
  TORCH_CHECK_VALUE(is_vec(w_scale, rows), op, ": expected w_scale of shape (", rows, ",), got ",
                    shape_str(w_scale.sizes()));
}

// _check_meta(op, meta, rows, cols)
inline void check_meta(const char* op, const at::Tensor& meta, int64_t rows, int64_t cols) {
  expect_dtype(op, "meta", meta, {at::kByte});
  TORCH_CHECK_VALUE(cols % 4 == 0, op, ": expected in_features divisible by 4 for 2:4, got ", cols);
  TORCH_CHECK_VALUE(meta.dim() == 2 && meta.size(0) == rows && meta.size(1) == (cols + 7) / 8, op,
                    ": expected meta of shape (", rows, ", ", (cols + 7) / 8, "), got ", shape_str(meta.sizes()));
}

// int32 accumulation of int8 products stays exact: at most kInt8MaxTerms products per output (2:4
// stores one of every two columns, so it may take twice the in_features). As _check_int32_sums.
constexpr int64_t kInt8MaxTerms = 2147483647LL / (128 * 128);  // 131071

inline void check_int32_sums(const char* op, int64_t K, int64_t terms_per_column = 1) {
  const int64_t limit = kInt8MaxTerms * terms_per_column;
  TORCH_CHECK_VALUE(K <= limit, op, ": expected in_features <= ", limit,
                    " (past it the int32 sums of int8 products can overflow), got ", K);
}

// check_int8_gemm_i32(a, b)
inline void check_int8_gemm_i32_args(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = "sparsekit.int8_gemm_i32";
  expect_dtype(op, "a", a, {at::kChar});
  expect_dtype(op, "b", b, {at::kChar});
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1), op, ": expected a (M, K) and b (N, K), got ",
                    shape_str(a.sizes()), " and ", shape_str(b.sizes()));
  check_int32_sums(op, a.size(1));
  same_device(op, a, "b", b);
}

// check_quantize_per_token(x)
inline void check_quantize_per_token_args(const at::Tensor& x) {
  constexpr const char* op = "sparsekit.quantize_per_token";
  check_x2d(op, x);
  expect_dtype(op, "x", x, kFloatTypes);
}

// check_int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype)
inline void check_int8_mm_args(const at::Tensor& x_q, const at::Tensor& x_scale, const std::optional<at::Tensor>& x_zero,
                               const at::Tensor& w_q, const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                               at::ScalarType out_dtype) {
  constexpr const char* op = "sparsekit.int8_mm";
  check_x_quant(op, x_q, x_scale, x_zero);
  expect_dtype(op, "w_q", w_q, {at::kChar});
  TORCH_CHECK_VALUE(w_q.dim() == 2 && w_q.size(1) == x_q.size(1), op, ": expected w_q of shape (out_features, ",
                    x_q.size(1), "), got ", shape_str(w_q.sizes()));
  check_int32_sums(op, x_q.size(1));
  check_w_scale(op, w_scale, w_q.size(0));
  check_out_dtype(op, out_dtype);
  same_device(op, x_q, "x_scale", x_scale);
  same_device(op, x_q, "x_zero", x_zero);
  same_device(op, x_q, "w_q", w_q);
  same_device(op, x_q, "w_scale", w_scale);
  check_bias(op, bias, w_q.size(0), out_dtype, x_q.device());
}

// _check_float_x_int8_weight(op, x, w_q, w_scale, bias, int32_sums): a float x against an int8 weight; with
// int32_sums, x is quantized inside the op, so the int32 sums' limit on K applies
inline void check_float_x_int8_weight(const char* op, const at::Tensor& x, const at::Tensor& w_q,
                                      const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                      bool int32_sums) {
  check_x2d(op, x);
  expect_dtype(op, "x", x, kFloatTypes);
  expect_dtype(op, "w_q", w_q, {at::kChar});
  TORCH_CHECK_VALUE(w_q.dim() == 2 && w_q.size(1) == x.size(1), op, ": expected w_q of shape (out_features, ",
                    x.size(1), "), got ", shape_str(w_q.sizes()));
  if (int32_sums) check_int32_sums(op, x.size(1));
  check_w_scale(op, w_scale, w_q.size(0));
  same_device(op, x, "w_q", w_q);
  same_device(op, x, "w_scale", w_scale);
  check_bias(op, bias, w_q.size(0), x.scalar_type(), x.device());
}

// check_int8_weight_only_mm(x, w_q, w_scale, bias)
inline void check_int8_weight_only_mm_args(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                                           const std::optional<at::Tensor>& bias) {
  check_float_x_int8_weight("sparsekit.int8_weight_only_mm", x, w_q, w_scale, bias, false);
}

// check_sparse24_int8_mm(x_q, x_scale, x_zero, values, meta, w_scale, bias, out_dtype)
inline void check_sparse24_int8_mm_args(const at::Tensor& x_q, const at::Tensor& x_scale,
                                        const std::optional<at::Tensor>& x_zero, const at::Tensor& values,
                                        const at::Tensor& meta, const at::Tensor& w_scale,
                                        const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "sparsekit.sparse24_int8_mm";
  check_x_quant(op, x_q, x_scale, x_zero);
  expect_dtype(op, "values", values, {at::kChar});
  const int64_t K = x_q.size(1);
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(1) * 2 == K, op,
                    ": expected values of shape (out_features, in_features / 2 = ", K / 2, "), got ",
                    shape_str(values.sizes()));
  check_meta(op, meta, values.size(0), K);
  check_int32_sums(op, K, 2);
  check_w_scale(op, w_scale, values.size(0));
  check_out_dtype(op, out_dtype);
  same_device(op, x_q, "x_scale", x_scale);
  same_device(op, x_q, "x_zero", x_zero);
  same_device(op, x_q, "values", values);
  same_device(op, x_q, "meta", meta);
  same_device(op, x_q, "w_scale", w_scale);
  check_bias(op, bias, values.size(0), out_dtype, x_q.device());
}

// check_int8_linear(x, w_q, w_scale, bias)
inline void check_int8_linear_args(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                                   const std::optional<at::Tensor>& bias) {
  check_float_x_int8_weight("sparsekit.int8_linear", x, w_q, w_scale, bias, true);
}

// check_sparse24_int8_linear(x, values, meta, w_scale, bias)
inline void check_sparse24_int8_linear_args(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                            const at::Tensor& w_scale, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.sparse24_int8_linear";
  check_x2d(op, x);
  expect_dtype(op, "x", x, kFloatTypes);
  expect_dtype(op, "values", values, {at::kChar});
  const int64_t K = x.size(1);
  TORCH_CHECK_VALUE(values.dim() == 2 && values.size(1) * 2 == K, op,
                    ": expected values of shape (out_features, in_features / 2 = ", K / 2, "), got ",
                    shape_str(values.sizes()));
  check_meta(op, meta, values.size(0), K);
  check_int32_sums(op, K, 2);
  check_w_scale(op, w_scale, values.size(0));
  same_device(op, x, "values", values);
  same_device(op, x, "meta", meta);
  same_device(op, x, "w_scale", w_scale);
  check_bias(op, bias, values.size(0), x.scalar_type(), x.device());
}

}  // namespace int8chk
}  // namespace sparsekit
