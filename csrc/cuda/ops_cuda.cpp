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
  TORCH_CHECK(at::cuda::getDeviceProperties(x.device().index())->major >= 8, op,
              ": the compiled CUDA kernel needs tensor cores with bfloat16 / float16 mma (sm_80 or newer)");
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

}  // namespace
}  // namespace cuda
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("csr_mm", &sparsekit::cuda::csr_mm_cuda);
  // under its own name, for the CUDA router of sparsekit/triton (see _schemas.py)
  m.impl("_cuda_int8_weight_only_mm", &sparsekit::cuda::int8_weight_only_mm_cuda);
}
