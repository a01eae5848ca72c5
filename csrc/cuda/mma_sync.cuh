// The warp-wide tensor-core products the decode kernels use: mma.sync.aligned.m16n8k16 with float32
// accumulators (sm_80+), D (16 x 8) += A (16 x 16, row-major) * B (16 x 8, column-major), A and B in
// float16 or bfloat16. The fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"), for lane l with g = l / 4 and t = l % 4, the low 16 bits of a register holding the lower index:
//   a[0] = A[g][2t, 2t+1]       a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]       b[1] = B[2t+8, 2t+9][g]
//   d[0], d[1] = D[g][2t, 2t+1] d[2], d[3] = D[g+8][2t, 2t+1]
// Under the CPU emulator of tests/cuda_emu (__CUDACC__EMU) the same contract is computed from the lanes'
// fragments gathered with shuffles, so the kernels' fragment building is tested there; whether the
// contract above is the hardware's is for a GPU run to confirm (tests/test_cuda_kernels.py).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace sparsekit {
namespace cuda {
namespace decode {

#if defined(__CUDACC__EMU)
namespace mma_emu {
template <typename T>
inline float half_at(uint32_t pair, int e) {
  const uint16_t h = static_cast<uint16_t>(pair >> (16 * e));
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(__nv_bfloat16{h});
  } else {
    return __half2float(__half{h});
  }
}
}  // namespace mma_emu
#endif

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_16816: float16 or bfloat16");
#if defined(__CUDACC__EMU)
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int g = lane >> 2, t = lane & 3;
  float s[4] = {0.f, 0.f, 0.f, 0.f};
  for (int q = 0; q < 4; ++q) {  // the k pairs 2q, 2q+1 and 2q+8, 2q+9 live in lane 4 * row + q
    uint32_t ar[4], bc[2][2];
    for (int i = 0; i < 4; ++i) ar[i] = __shfl_sync(0xffffffffu, a[i], 4 * g + q);
    for (int c = 0; c < 2; ++c)
      for (int i = 0; i < 2; ++i) bc[c][i] = __shfl_sync(0xffffffffu, b[i], 4 * (2 * t + c) + q);
    for (int e = 0; e < 2; ++e) {
      for (int c = 0; c < 2; ++c) {
        const float b_lo = mma_emu::half_at<T>(bc[c][0], e), b_hi = mma_emu::half_at<T>(bc[c][1], e);
        s[c] += mma_emu::half_at<T>(ar[0], e) * b_lo + mma_emu::half_at<T>(ar[2], e) * b_hi;
        s[2 + c] += mma_emu::half_at<T>(ar[1], e) * b_lo + mma_emu::half_at<T>(ar[3], e) * b_hi;
      }
    }
  }
  for (int i = 0; i < 4; ++i) d[i] += s[i];
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // the launchers refuse devices below sm_80 before launching (DevInfo::cc_major)
#endif
}

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (sm_80+): D (16 x 8, int32) += A (16 x 32 int8) * B (32 x 8
// int8), exact. Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k32"), 4 int8 per register, the lowest k
// in the low byte:
//   a[0] = A[g][4t..4t+3]       a[1] = A[g+8][4t..4t+3]   a[2] = A[g][4t+16..4t+19]   a[3] = A[g+8][4t+16..4t+19]
//   b[0] = B[4t..4t+3][g]       b[1] = B[4t+16..4t+19][g]
//   d as mma_16816's.
#if defined(__CUDACC__EMU)
namespace mma_emu {
inline int dot4_s8(uint32_t a, uint32_t b) {
  int s = 0;
  for (int i = 0; i < 4; ++i) s += static_cast<int8_t>(a >> (8 * i)) * static_cast<int8_t>(b >> (8 * i));
  return s;
}
}  // namespace mma_emu
#endif

__device__ __forceinline__ void mma_s8_16832(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDACC__EMU)
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int g = lane >> 2, t = lane & 3;
  int s[4] = {0, 0, 0, 0};
  for (int q = 0; q < 4; ++q) {  // k = 4q..4q+3 and 4q+16..4q+19 live in lane 4 * row + q
    uint32_t ar[4], bc[2][2];
    for (int i = 0; i < 4; ++i) ar[i] = __shfl_sync(0xffffffffu, a[i], 4 * g + q);
    for (int c = 0; c < 2; ++c)
      for (int i = 0; i < 2; ++i) bc[c][i] = __shfl_sync(0xffffffffu, b[i], 4 * (2 * t + c) + q);
    for (int c = 0; c < 2; ++c) {
      s[c] += mma_emu::dot4_s8(ar[0], bc[c][0]) + mma_emu::dot4_s8(ar[2], bc[c][1]);
      s[2 + c] += mma_emu::dot4_s8(ar[1], bc[c][0]) + mma_emu::dot4_s8(ar[3], bc[c][1]);
    }
  }
  for (int i = 0; i < 4; ++i) d[i] += s[i];
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

}  // namespace decode
}  // namespace cuda
}  // namespace sparsekit
