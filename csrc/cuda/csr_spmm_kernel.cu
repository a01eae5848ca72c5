// One warp per weight row: lanes stride over the row's kept values and accumulate a tile
// of up to kTileM activation rows in registers (float32), then reduce across the warp.
// Rows are independent, so there are no atomics. This is the foundation's general CSR
// kernel; the tuned decode kernels live beside it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/csr_spmm_kernel.cuh"

namespace sparsekit {
namespace cuda {
namespace {

constexpr int kTileM = 8;
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    csr_mm_kernel(int64_t M, int64_t N, const int32_t* __restrict__ crow, const int32_t* __restrict__ col,
                  const T* __restrict__ vals, const T* __restrict__ x, int64_t ldx, const T* __restrict__ bias,
                  T* __restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  if (n >= N) return;
  const int mt = static_cast<int>(M - m0 < kTileM ? M - m0 : kTileM);
  float acc[kTileM];
#pragma unroll
  for (int i = 0; i < kTileM; ++i) acc[i] = 0.f;
  const int32_t end = crow[n + 1];
  for (int32_t j = crow[n] + lane; j < end; j += 32) {
    const float v = to_f(vals[j]);
    const T* xc = x + m0 * ldx + col[j];
#pragma unroll
    for (int i = 0; i < kTileM; ++i)
      if (i < mt) acc[i] += v * to_f(xc[i * ldx]);
  }
#pragma unroll
  for (int i = 0; i < kTileM; ++i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
  }
  if (lane < mt) {
    float out = 0.f;
#pragma unroll
    for (int i = 0; i < kTileM; ++i)
      if (i == lane) out = acc[i];
    if (bias) out += to_f(bias[n]);
    y[(m0 + lane) * ldy + n] = from_f<T>(out);
  }
}

template <typename T>
cudaError_t launch(const CsrMmLaunch& a, cudaStream_t stream) {
  const int64_t tiles_m = (a.M + kTileM - 1) / kTileM;
  const int64_t blocks_n = (a.N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (tiles_m == 0 || blocks_n == 0) return cudaSuccess;
  if (tiles_m > 65535 || blocks_n > 2147483647LL) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks_n), static_cast<unsigned>(tiles_m));
  csr_mm_kernel<T><<<grid, kWarpsPerBlock * 32, 0, stream>>>(
      a.M, a.N, a.crow, a.col, static_cast<const T*>(a.values), static_cast<const T*>(a.x), a.ldx,
      static_cast<const T*>(a.bias), static_cast<T*>(a.y), a.ldy);
  return cudaGetLastError();
}

}  // namespace

cudaError_t csr_mm(const CsrMmLaunch& a, cudaStream_t stream) {
  switch (a.dtype) {
    case DType::f32: return launch<float>(a, stream);
    case DType::f16: return launch<__half>(a, stream);
    case DType::bf16: return launch<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace sparsekit
