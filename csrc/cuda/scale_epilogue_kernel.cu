// The W8A8 epilogue: one read and one write of y, no other traffic beyond the two small vectors.
// Vector path (N % 8 == 0, y and bias 16-byte aligned): each thread owns 8 consecutive outputs of one
// row (one 16-byte load and store); otherwise a scalar grid-stride loop. Memory-bound by design.
#include "cuda/scale_epilogue_kernel.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace sparsekit {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ T scaled(T y, float s, const T* __restrict__ bias, int64_t n) {
  return from_float<T>(to_float(y) * s + (bias ? to_float(__ldg(bias + n)) : 0.f));
}

// 8 halves / bfloat16s in one 16-byte vector.
template <typename T>
__global__ void __launch_bounds__(kThreads) epilogue_vec8_kernel(T* __restrict__ y, int64_t M, int64_t N,
                                                                 const float* __restrict__ row_scale,
                                                                 const T* __restrict__ bias) {
  const int64_t vecs_per_row = N / 8, total = M * vecs_per_row;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = v / vecs_per_row, n0 = (v - m * vecs_per_row) * 8;
    const float s = row_scale ? __ldg(row_scale + m) : 1.f;
    uint4 raw = *reinterpret_cast<const uint4*>(y + m * N + n0);
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) e[i] = scaled(e[i], s, bias, n0 + i);
    *reinterpret_cast<uint4*>(y + m * N + n0) = raw;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) epilogue_scalar_kernel(T* __restrict__ y, int64_t M, int64_t N,
                                                                   const float* __restrict__ row_scale,
                                                                   const T* __restrict__ bias) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / N;
    y[i] = scaled(y[i], row_scale ? __ldg(row_scale + m) : 1.f, bias, i - m * N);
  }
}

inline unsigned grid_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > (1 << 20) ? (1 << 20) : b));
}

template <typename T>
cudaError_t launch(void* y, int64_t M, int64_t N, const float* row_scale, const void* bias, cudaStream_t stream) {
  T* yt = static_cast<T*>(y);
  const T* bt = static_cast<const T*>(bias);
  const bool vec = N % 8 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0 && reinterpret_cast<uintptr_t>(bias) % 16 == 0;
  if (vec)
    epilogue_vec8_kernel<T><<<grid_for(M * (N / 8)), kThreads, 0, stream>>>(yt, M, N, row_scale, bt);
  else
    epilogue_scalar_kernel<T><<<grid_for(M * N), kThreads, 0, stream>>>(yt, M, N, row_scale, bt);
  return cudaGetLastError();
}

}  // namespace

cudaError_t scale_rows_add_bias(void* y, int64_t M, int64_t N, DType dtype, const float* row_scale,
                                const void* bias, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  switch (dtype) {
    case DType::f16: return launch<__half>(y, M, N, row_scale, bias, stream);
    case DType::bf16: return launch<__nv_bfloat16>(y, M, N, row_scale, bias, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace sparsekit
