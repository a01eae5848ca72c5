// CUDA implementations of sparsekit ops: checks, then a launch on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/binding_common.h"
#include "cuda/checked_once_cuda.h"
#include "cuda/csr_spmm_kernel.cuh"

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

}  // namespace
}  // namespace cuda
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) { m.impl("csr_mm", &sparsekit::cuda::csr_mm_cuda); }
