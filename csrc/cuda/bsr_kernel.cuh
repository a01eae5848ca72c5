// Torch-free CUDA BSR x dense kernels: y = x @ W.T + bias with W in BSR (blocks R x C, layout of
// sparsekit/formats/LAYOUTS.md). float16 / bfloat16 with R % 16 == 0 and C % 16 == 0 on sm_80+: the tensor-core
// decode kernel (mma_decode.cuh), for small M, K split into chunks of whole blocks where x's rows do not fit in
// shared memory; else a simple, correct kernel for any R, C and M. The Triton kernel (sparsekit/triton/bsr.py) is the fast path
// for large M.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/csr_spmm_kernel.cuh"  // DType

namespace sparsekit {
namespace cuda {

struct BsrMmLaunch {
  int64_t M = 0, N = 0, K = 0;   // N % R == 0, K % C == 0
  int64_t R = 1, C = 1;          // block rows, block columns
  const int32_t* crow = nullptr; // (N / R + 1)
  const int32_t* col = nullptr;  // (nblocks), block-column numbers
  const void* values = nullptr;  // (nblocks, R, C) contiguous, dtype
  const void* x = nullptr;       // (M, K), row stride ldx, unit column stride
  int64_t ldx = 0;
  const void* bias = nullptr;    // (N,) or null
  void* y = nullptr;             // (M, N), row stride ldy
  int64_t ldy = 0;
  DType dtype = DType::f32;
};

// Workspace bytes bsr_mm needs on the current device (0: none): the tensor-core path's float32 partial sums when
// it splits K (x's rows too long for shared memory).
size_t bsr_mm_workspace_bytes(const BsrMmLaunch& a, cudaError_t* err = nullptr);

// Enqueues the kernel(s) on `stream`; returns the launch error, if any. `workspace`: bsr_mm_workspace_bytes of
// device memory, 16-byte aligned (null when that is 0).
cudaError_t bsr_mm(const BsrMmLaunch& a, void* workspace, cudaStream_t stream);

// Whether bsr_mm serves this launch on the current device with the tensor-core kernel (the test it makes
// first; sparsekit.triton.use_compiled_bsr mirrors it, and the emulator's tests hold the two together).
bool bsr_mm_uses_tensor_cores(const BsrMmLaunch& a);

}  // namespace cuda
}  // namespace sparsekit
