// Torch-free CUDA CSR x dense kernel: y[m, n] = sum_j values[j] * x[m, col[j]] + bias[n].
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sparsekit {
namespace cuda {

enum class DType : int { f32 = 0, bf16 = 1, f16 = 2 };

struct CsrMmLaunch {
  int64_t M = 0, N = 0, K = 0;
  const int32_t* crow = nullptr;  // N + 1
  const int32_t* col = nullptr;   // nnz
  const void* values = nullptr;   // nnz, dtype
  const void* x = nullptr;        // M x K, row stride ldx, dtype
  int64_t ldx = 0;
  const void* bias = nullptr;     // N or null, dtype
  void* y = nullptr;              // M x N, row stride ldy, dtype
  int64_t ldy = 0;
  DType dtype = DType::f32;       // values, x, bias and y share it; accumulation is float32
};

// Enqueues the kernel on `stream`; returns the launch error, if any.
cudaError_t csr_mm(const CsrMmLaunch& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekit
