// Torch-free CUDA 2:4 x dense kernel for small M (decode):
//   y[m, n] = sum_g values[n, 2g] * x[m, 4g + i0] + values[n, 2g + 1] * x[m, 4g + i1] + bias[n]
// with the layout of sparsekit/formats/LAYOUTS.md: values (N, K/2), meta uint8 (N, ceil(K/8)), a
// nibble i0 | i1 << 2 per group of four columns (even group in the low nibble); K % 4 == 0.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/csr_spmm_kernel.cuh"  // DType

namespace sparsekit {
namespace cuda {

struct Sparse24MmLaunch {
  int64_t M = 0, N = 0, K = 0;    // x (M, K), values (N, K/2), y (M, N)
  const void* values = nullptr;   // (N, K/2) contiguous, dtype
  const uint8_t* meta = nullptr;  // (N, ceil(K/8)) contiguous
  const void* x = nullptr;        // (M, K), row stride ldx, unit column stride, dtype
  int64_t ldx = 0;
  const void* bias = nullptr;     // (N,) or null, dtype
  void* y = nullptr;              // (M, N), row stride ldy, dtype
  int64_t ldy = 0;
  DType dtype = DType::f32;       // values, x, bias and y share it; accumulation is float32
};

// Device bytes of float32 workspace sparse24_mm needs on the current device for these sizes (0: none;
// it is needed only when x's K columns do not fit in shared memory and K is split across blocks).
// Returns a CUDA error through `err` if the device could not be queried.
size_t sparse24_mm_workspace_bytes(const Sparse24MmLaunch& a, cudaError_t* err = nullptr);

// Enqueues the kernels on `stream`; `workspace` must hold sparse24_mm_workspace_bytes(a) bytes
// (16-byte aligned; may be null when that is 0). Returns the launch error, if any.
cudaError_t sparse24_mm(const Sparse24MmLaunch& a, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekit
