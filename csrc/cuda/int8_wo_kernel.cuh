// Torch-free CUDA int8 weight-only (W8A16) kernel for small M (decode):
//   y[m, n] = w_scale[n] * sum_k x[m, k] * w_q[n, k] + bias[n]
// with w_q int8 (N, K) row-major, w_scale float32 (N,), x / bias / y float16 or bfloat16 (the op
// int8_weight_only_mm; float32 x stays on the Triton kernel). Tensor cores (mma.sync m16n8k16): sm_80+.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/csr_spmm_kernel.cuh"  // DType

namespace sparsekit {
namespace cuda {

struct Int8WoMmLaunch {
  int64_t M = 0, N = 0, K = 0;      // x (M, K), w_q (N, K), y (M, N)
  const int8_t* w_q = nullptr;      // (N, K) contiguous
  const float* w_scale = nullptr;   // (N,)
  const void* x = nullptr;          // (M, K), row stride ldx, unit column stride, dtype
  int64_t ldx = 0;
  const void* bias = nullptr;       // (N,) or null, dtype
  void* y = nullptr;                // (M, N), row stride ldy, dtype
  int64_t ldy = 0;
  DType dtype = DType::bf16;        // x, bias and y share it: f16 or bf16 (f32: cudaErrorInvalidValue)
};

// Float32 workspace bytes int8_wo_mm needs on the current device (0: none; only when K is split).
size_t int8_wo_mm_workspace_bytes(const Int8WoMmLaunch& a, cudaError_t* err = nullptr);

// Enqueues the kernels on `stream`; `workspace` holds int8_wo_mm_workspace_bytes(a) bytes (16-byte
// aligned; may be null when that is 0). cudaErrorInvalidValue for a float32 launch,
// cudaErrorInvalidDeviceFunction on a device below sm_80.
cudaError_t int8_wo_mm(const Int8WoMmLaunch& a, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekit
