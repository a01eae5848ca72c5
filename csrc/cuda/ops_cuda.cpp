// CUDA implementations of sparsekit ops: checks, then a launch on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/binding_common.h"
#include "cuda/checked_once_cuda.h"
#include "cuda/csr_spmm_kernel.cuh"
#include "cuda/int8_wo_kernel.cuh"
#include "cuda/w8a8_kernel.cuh"
#include "index_checks.h"
#include "cpu/int8_checks.h"

#include <ATen/cuda/CUDAContext.h>

namespace sparsekit {
namespace cuda {
namespace {

at::Tensor csr_mm_cuda(const at::Tensor& x, const at::Tensor& crow_indices, const at::Tensor& col_indices,
                       const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  check_csr_mm_args(x, crow_indices, col_indices, values, out_features, bias);
  constexpr const char* op = "sparsekit.csr_mm";
  check_cuda(op, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), N = out_features, K = x.size(1);
  check_index_buffers_once(op, {&crow_indices, &col_indices}, {N, values.numel(), K}, [&] {
    aten_checks::check_compressed_indices(op, crow_indices, N, "nnz", values.numel(), col_indices, K, "in_features");
  });
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto crow = crow_indices.contiguous();
  const auto col = col_indices.contiguous();
  const auto vals = values.contiguous();
  CsrMmLaunch a;
  const StagedIo io = set_io(a, x, bias, y);
  a.crow = crow.data_ptr<int32_t>();
  a.col = col.data_ptr<int32_t>();
  a.values = vals.data_ptr();
  check_launch(op, csr_mm(a, stream_of(x)));
  return y;
}

// The tensor-core kernels (mma_decode.cuh) need an sm_80+ device; the CUDA routers check before calling.
void require_sm80(const char* op, const at::Tensor& x, const char* what) {
  TORCH_CHECK(at::cuda::getDeviceProperties(x.device().index())->major >= 8, op,
              ": the compiled CUDA kernel needs tensor cores with ", what, " mma (sm_80 or newer)");
}

// int8 weight-only (W8A16) on the tensor cores, float16 / bfloat16 x: the compiled kernel behind
// _cuda_int8_weight_only_mm, which the CUDA router of sparsekit/triton calls for small M (float32 x and
// larger M run the Triton kernel there).
at::Tensor int8_weight_only_mm_cuda(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.int8_weight_only_mm";
  int8chk::check_int8_weight_only_mm_args(x, w_q, w_scale, bias);
  check_cuda(op, x);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
                   ": the compiled CUDA kernel takes float16 or bfloat16 x (float32 runs on the Triton kernel), got "
                   "torch.", dtype_name(x.scalar_type()));
  const c10::cuda::CUDAGuard guard(x.device());
  require_sm80(op, x, "bfloat16 / float16");
  const int64_t M = x.size(0), N = w_q.size(0);
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto w = w_q.contiguous();
  const auto s = w_scale.contiguous();
  Int8WoMmLaunch a;
  const StagedIo io = set_io(a, x, bias, y);
  a.w_q = w.data_ptr<int8_t>();
  a.w_scale = s.data_ptr<float>();
  launch_with_workspace(op, a, &int8_wo_mm_workspace_bytes, &int8_wo_mm, x);
  return y;
}

// W8A8 on the tensor cores: the compiled kernel behind _cuda_int8_mm and _cuda_sparse24_int8_mm (meta given;
// int8 x quantized per token, symmetric: x_zero None) and behind the one-call linears _cuda_int8_linear and
// _cuda_sparse24_int8_linear (x_scale null: float x, quantized inside the launch), which the CUDA paths call for
// small M; y is the reference's, byte for byte.
at::Tensor w8a8_cuda(const char* op, const at::Tensor& x, const at::Tensor* x_scale, const at::Tensor& w,
                     const at::Tensor* meta, const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                     at::ScalarType out_dtype) {
  check_cuda(op, x);
  const c10::cuda::CUDAGuard guard(x.device());
  require_sm80(op, x, "int8");
  const int64_t M = x.size(0), N = w.size(0), K = x.size(1);
  if (meta) check_index_buffers_once(op, {meta}, {N, K}, [&] { aten_checks::check_meta_positions(op, *meta, K); });
  auto y = at::empty({M, N}, x.options().dtype(out_dtype));
  if (M == 0 || N == 0) return y;
  const auto xc = x.stride(1) == 1 ? x : x.contiguous();
  const at::Tensor xs = x_scale ? x_scale->contiguous() : at::Tensor();
  const auto wc = w.contiguous();
  const auto ws = w_scale.contiguous();
  const at::Tensor mc = meta ? meta->contiguous() : at::Tensor();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  W8A8MmLaunch a;
  a.M = M; a.N = N; a.K = K;
  a.x = xc.data_ptr(); a.ldx = xc.stride(0);
  a.quantize = x_scale == nullptr;
  a.x_scale = x_scale ? xs.data_ptr<float>() : nullptr;
  a.w = wc.data_ptr();
  a.meta = meta ? mc.data_ptr<uint8_t>() : nullptr;
  a.w_scale = ws.data_ptr<float>();
  a.bias = bc.defined() ? bc.data_ptr() : nullptr;
  a.y = y.data_ptr(); a.ldy = N;
  a.dtype = kernel_dtype(out_dtype);
  launch_with_workspace(op, a, &w8a8_mm_workspace_bytes, &w8a8_mm, x);
  return y;
}

void require_symmetric(const char* op, const std::optional<at::Tensor>& x_zero) {
  TORCH_CHECK_VALUE(!x_zero.has_value(), op,
                    ": the compiled CUDA kernel takes symmetric activations (x_zero None); asymmetric ones run the "
                    "public op");
}

at::Tensor int8_mm_cuda(const at::Tensor& x_q, const at::Tensor& x_scale, const std::optional<at::Tensor>& x_zero,
                        const at::Tensor& w_q, const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                        at::ScalarType out_dtype) {
  constexpr const char* op = "sparsekit.int8_mm";
  int8chk::check_int8_mm_args(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype);
  require_symmetric(op, x_zero);
  return w8a8_cuda(op, x_q, &x_scale, w_q, nullptr, w_scale, bias, out_dtype);
}

at::Tensor sparse24_int8_mm_cuda(const at::Tensor& x_q, const at::Tensor& x_scale,
                                 const std::optional<at::Tensor>& x_zero, const at::Tensor& values,
                                 const at::Tensor& meta, const at::Tensor& w_scale,
                                 const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "sparsekit.sparse24_int8_mm";
  int8chk::check_sparse24_int8_mm_args(x_q, x_scale, x_zero, values, meta, w_scale, bias, out_dtype);
  require_symmetric(op, x_zero);
  return w8a8_cuda(op, x_q, &x_scale, values, &meta, w_scale, bias, out_dtype);
}

// The one-call W8A8 linears: quantize_per_token(x, True) and the product in one launch (or two, see w8a8_mm).
at::Tensor int8_linear_cuda(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias) {
  int8chk::check_int8_linear_args(x, w_q, w_scale, bias);
  return w8a8_cuda("sparsekit.int8_linear", x, nullptr, w_q, nullptr, w_scale, bias, x.scalar_type());
}

at::Tensor sparse24_int8_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                     const at::Tensor& w_scale, const std::optional<at::Tensor>& bias) {
  int8chk::check_sparse24_int8_linear_args(x, values, meta, w_scale, bias);
  return w8a8_cuda("sparsekit.sparse24_int8_linear", x, nullptr, values, &meta, w_scale, bias, x.scalar_type());
}

// quantize_per_token(x, True) in one compiled launch: what the CUDA router of sparsekit/triton runs for symmetric
// quantization (a Triton launch costs tens of microseconds of host time), and the 2:4+int8 format before
// cuSPARSELt. Asymmetric quantization has no compiled kernel: the public op (Triton) serves it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_token_cuda(const at::Tensor& x, bool symmetric) {
  constexpr const char* op = "sparsekit.quantize_per_token";
  int8chk::check_quantize_per_token_args(x);
  check_cuda(op, x);
  TORCH_CHECK_VALUE(symmetric, op,
                    ": the compiled CUDA kernel quantizes symmetrically; asymmetric quantization runs the public op");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), K = x.size(1);
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto scale = at::empty({M}, x.options().dtype(at::kFloat));
  auto zero = at::zeros({M}, x.options().dtype(at::kInt));
  if (M == 0) return {q, scale, zero};
  const auto xc = x.stride(1) == 1 ? x : x.contiguous();
  check_launch(op, quantize_per_token_rows(xc.data_ptr(), xc.stride(0), M, K, kernel_dtype(x.scalar_type()),
                                           q.data_ptr<int8_t>(), scale.data_ptr<float>(), stream_of(x)));
  return {q, scale, zero};
}

}  // namespace
}  // namespace cuda
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("csr_mm", &sparsekit::cuda::csr_mm_cuda);
  // under its own name, for the CUDA router of sparsekit/triton (see _schemas.py)
  m.impl("_cuda_int8_weight_only_mm", &sparsekit::cuda::int8_weight_only_mm_cuda);
  m.impl("_cuda_int8_mm", &sparsekit::cuda::int8_mm_cuda);
  m.impl("_cuda_sparse24_int8_mm", &sparsekit::cuda::sparse24_int8_mm_cuda);
  m.impl("_cuda_int8_linear", &sparsekit::cuda::int8_linear_cuda);
  m.impl("_cuda_sparse24_int8_linear", &sparsekit::cuda::sparse24_int8_linear_cuda);
  m.impl("_cuda_quantize_per_token", &sparsekit::cuda::quantize_per_token_cuda);
}
