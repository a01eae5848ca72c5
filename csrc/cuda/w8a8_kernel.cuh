// Torch-free CUDA W8A8 kernel for small M (decode): int8 activations (quantized per token, symmetric) times
// an int8 weight, dense (int8_mm) or 2:4 (sparse24_int8_mm), on the tensor cores (m16n8k32, sm_80+):
//   y[m, n] = float32(sum_k x_q[m, k] * w_q[n, k]) * x_scale[m] * w_scale[n] (+ bias[n])
// the int32 sum exact, the epilogue in float32 in that order without contraction: the reference's bytes.
// With `quantize` it is the whole one-call linear (int8_linear / sparse24_int8_linear): x is float activations,
// quantized per token as quantize_per_token(x, True) does, bit for bit, inside the W8A8 kernel (one launch)
// while the rows of an M tile are at most kFusedQuantBytes of x, else by a quantization kernel first.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/csr_spmm_kernel.cuh"  // DType

namespace sparsekit {
namespace cuda {

struct W8A8MmLaunch {
  int64_t M = 0, N = 0, K = 0;     // x_q (M, K), weight (N, K) dense or 2:4, y (M, N)
  const void* x = nullptr;         // x_q int8 (M, K), row stride ldx, unit column stride
  int64_t ldx = 0;
  const float* x_scale = nullptr;  // (M,)
  const void* w = nullptr;         // int8: (N, K) contiguous (meta null) or 2:4 values (N, K/2) contiguous
  const uint8_t* meta = nullptr;   // 2:4 metadata (N, ceil(K/8)) contiguous, or null for a dense weight
  const float* w_scale = nullptr;  // (N,)
  const void* bias = nullptr;      // (N,) or null, dtype
  void* y = nullptr;               // (M, N), row stride ldy, dtype
  int64_t ldy = 0;
  DType dtype = DType::bf16;       // the output's (and bias's) dtype
  bool quantize = false;           // x is float (M, K) of `dtype`, quantized per token here; x_scale unused
};

// The fused quantization reads its tile's whole rows of x in every block: fused while those are at most this
// many bytes (a choice made without a GPU run; above it the quantization kernel runs first).
constexpr int64_t kFusedQuantBytes = 32 * 1024;

// Workspace bytes w8a8_mm needs on the current device (0: none): with K split the int32 partials (and the
// fused quantization's scales); when `quantize` runs a kernel of its own, x quantized and its scales first.
size_t w8a8_mm_workspace_bytes(const W8A8MmLaunch& a, cudaError_t* err = nullptr);

// Enqueues the kernels on `stream`. cudaErrorInvalidValue for a 2:4 K % 4 != 0,
// cudaErrorInvalidDeviceFunction on a device below sm_80.
cudaError_t w8a8_mm(const W8A8MmLaunch& a, void* workspace, cudaStream_t stream);

// quantize_per_token(x, True) as a launch of its own (the per-token quantization kernel w8a8_mm runs first for
// long rows), bit for bit: x (M, K) of `dtype` (float32 / float16 / bfloat16) with row stride ldx and unit column
// stride; q int8 (M, K) contiguous (8-byte aligned) and scale (M,) float32 written. Nothing runs for M == 0. For the CUDA paths
// that quantize before a matmul of another library (2:4+int8 through cuSPARSELt) or before Triton's int8_mm.
cudaError_t quantize_per_token_rows(const void* x, int64_t ldx, int64_t M, int64_t K, DType dtype, int8_t* q,
                                    float* scale, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekit
