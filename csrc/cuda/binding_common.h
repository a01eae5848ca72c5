// What the CUDA op bindings (ops_cuda.cpp, ops_cuda_formats.cpp) share: the dtype of a launch, the
// activation / bias / output fields every launch struct has, the current stream, and the launch of a
// kernel that may need a split-K workspace. Host code only.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <optional>

#include "checks.h"
#include "cuda/csr_spmm_kernel.cuh"  // DType

namespace sparsekit {
namespace cuda {

inline DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::f32;
    case at::kBFloat16: return DType::bf16;
    case at::kHalf: return DType::f16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, "sparsekit: unsupported dtype ", dtype_name(t));
  return DType::f32;
}

inline void check_cuda(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": expected CUDA tensors, got x on ", x.device());
}

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

inline cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// The tensors a launch points into besides the weight buffers; kept alive until the launch is queued.
struct StagedIo {
  at::Tensor x, bias;
};

// Fills M, N, K, x (read with a row stride and unit column stride), bias, y (row-major, ld N) and the
// dtype of `a`, every launch struct of csrc/cuda having these fields.
template <typename Launch>
StagedIo set_io(Launch& a, const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& y) {
  StagedIo io{x.stride(1) == 1 ? x : x.contiguous(), bias.has_value() ? bias->contiguous() : at::Tensor()};
  a.M = x.size(0);
  a.N = y.size(1);
  a.K = x.size(1);
  a.x = io.x.data_ptr();
  a.ldx = io.x.stride(0);
  a.bias = io.bias.defined() ? io.bias.data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.ldy = y.size(1);
  a.dtype = kernel_dtype(x.scalar_type());
  return io;
}

// Launches run(a, workspace, stream) with the split-K workspace workspace_bytes(a) asks for (from the
// caching allocator: stream-ordered, so it may be freed as soon as the launch is queued).
template <typename Launch>
void launch_with_workspace(const char* op, const Launch& a, size_t (*workspace_bytes)(const Launch&, cudaError_t*),
                           cudaError_t (*run)(const Launch&, void*, cudaStream_t), const at::Tensor& like) {
  cudaError_t err = cudaSuccess;
  const size_t bytes = workspace_bytes(a, &err);
  check_launch(op, err);
  at::Tensor ws;
  if (bytes) ws = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  check_launch(op, run(a, bytes ? ws.data_ptr() : nullptr, stream_of(like)));
}

}  // namespace cuda
}  // namespace sparsekit
