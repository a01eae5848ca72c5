// Torch-free CUDA epilogue of the W8A8 cuSPARSELt path (csrc/cuda/ops_cusparselt.cpp), in place:
//   y[m, n] = y[m, n] * row_scale[m] + bias[n]      (float32 math, rounded once to y's dtype)
// cuSPARSELt scales the rows of its D = W · xᵀ (our output channels, alpha-vector scaling) but has no
// per-column scale of D, so the per-token activation scale (a column of D, a row of y) is applied here,
// and the bias after it (a bias fused into cuSPARSELt would be scaled by the token's scale too).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/csr_spmm_kernel.cuh"  // DType

namespace sparsekit {
namespace cuda {

// y (M, N) contiguous, dtype f16 or bf16; row_scale float32 (M,) or null (1); bias (N,) in y's dtype or
// null (0). Returns the launch error, if any.
cudaError_t scale_rows_add_bias(void* y, int64_t M, int64_t N, DType dtype, const float* row_scale,
                                const void* bias, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekit
