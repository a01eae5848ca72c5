// CUDA implementations of sparsekit ops: checks, then a launch on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/checked_once_cuda.h"
#include "cuda/csr_spmm_kernel.cuh"

namespace sparsekit {
namespace cuda {
namespace {

DType to_kernel(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::f32;
    case at::kBFloat16: return DType::bf16;
    case at::kHalf: return DType::f16;
    default: TORCH_CHECK(false, "sparsekit: unsupported dtype ", t);
  }
}

at::Tensor csr_mm_cuda(const at::Tensor& x, const at::Tensor& crow_indices, const at::Tensor& col_indices,
                       const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  check_csr_mm_args(x, crow_indices, col_indices, values, out_features, bias);
  TORCH_CHECK(x.is_cuda(), "sparsekit.csr_mm: expected CUDA tensors, got x on ", x.device());
  constexpr const char* op = "sparsekit.csr_mm";
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), N = out_features, K = x.size(1);
  check_index_buffers_once(op, {&crow_indices, &col_indices}, {N, values.numel(), K}, [&] {
    aten_checks::check_compressed_indices(op, crow_indices, N, "nnz", values.numel(), col_indices, K, "in_features");
  });
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  // The kernel reads x with a row stride and unit column stride.
  const auto xc = x.stride(1) == 1 ? x : x.contiguous();
  const auto crow = crow_indices.contiguous();
  const auto col = col_indices.contiguous();
  const auto vals = values.contiguous();
  at::Tensor b;
  if (bias.has_value()) b = bias->contiguous();
  CsrMmLaunch a;
  a.M = M; a.N = N; a.K = K;
  a.crow = crow.data_ptr<int32_t>();
  a.col = col.data_ptr<int32_t>();
  a.values = vals.data_ptr();
  a.x = xc.data_ptr();
  a.ldx = xc.stride(0);
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.ldy = N;
  a.dtype = to_kernel(x.scalar_type());
  const cudaError_t err = csr_mm(a, c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "sparsekit.csr_mm: CUDA launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace
}  // namespace cuda
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) { m.impl("csr_mm", &sparsekit::cuda::csr_mm_cuda); }
