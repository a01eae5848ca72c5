// GPU packers: one thread per output unit (a meta byte, a bitmap word, a BSR block or a BSR value),
// grid-stride loops, 64-bit indices. Packing runs once per model, so the kernels are plain; their job
// is to be bit-identical to the CPU packers and to take milliseconds, not minutes, for a 7B model.
#include "cuda/pack_kernel.cuh"

#include <cstdint>

namespace sparsekit {
namespace cuda {
namespace {

constexpr int kThreads = 256;

inline unsigned grid_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > (1 << 20) ? (1 << 20) : b));
}

__device__ __forceinline__ int64_t gtid() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t gstride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename E>
__device__ __forceinline__ E pick4(const E (&w)[4], int i) {
  return i == 0 ? w[0] : i == 1 ? w[1] : i == 2 ? w[2] : w[3];
}

// E: an unsigned integer as wide as the weight's elements (the values are copied as bits).
template <typename E>
__global__ void __launch_bounds__(kThreads) pack24_kernel(const E* __restrict__ w, const uint8_t* __restrict__ mask,
                                                          int64_t N, int64_t K, E* __restrict__ values,
                                                          uint8_t* __restrict__ meta, unsigned long long* bad) {
  const int64_t G = K / 4, MB = (K + 7) / 8;
  for (int64_t idx = gtid(); idx < N * MB; idx += gstride()) {
    const int64_t n = idx / MB, j = idx - n * MB;
    unsigned byte = 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t g = 2 * j + h;
      if (g >= G) break;
      const uint8_t* mk = mask + n * K + 4 * g;
      const E* wg = w + n * K + 4 * g;
      E wv[4];
      unsigned km = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        wv[i] = wg[i];
        km |= static_cast<unsigned>(mk[i] != 0) << i;
      }
      if (__popc(km) > 2) atomicMin(bad, static_cast<unsigned long long>(n * G + g));
      // the kept positions first, then the lowest free ones; the first two, ascending
      unsigned sm = 0;
      int ns = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (((km >> i) & 1u) && ns < 2) { sm |= 1u << i; ++ns; }
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (!((km >> i) & 1u) && ns < 2) { sm |= 1u << i; ++ns; }
      const int i0 = __ffs(static_cast<int>(sm)) - 1;
      const int i1 = 31 - __clz(static_cast<int>(sm));
      E* out = values + n * (K / 2) + 2 * g;
      out[0] = ((km >> i0) & 1u) ? pick4(wv, i0) : E(0);
      out[1] = ((km >> i1) & 1u) ? pick4(wv, i1) : E(0);
      byte |= static_cast<unsigned>(i0 | (i1 << 2)) << (4 * h);
    }
    meta[idx] = static_cast<uint8_t>(byte);
  }
}

__global__ void __launch_bounds__(kThreads) bitmap_words_kernel(const uint8_t* __restrict__ mask, int64_t N, int64_t K,
                                                                int32_t* __restrict__ bitmap,
                                                                int32_t* __restrict__ counts) {
  const int64_t W = (K + 31) / 32;
  for (int64_t idx = gtid(); idx < N * W; idx += gstride()) {
    const int64_t n = idx / W, w = idx - n * W;
    const uint8_t* mk = mask + n * K + 32 * w;
    const int valid = static_cast<int>(K - 32 * w < 32 ? K - 32 * w : 32);
    uint32_t bits = 0;
    for (int b = 0; b < valid; ++b) bits |= static_cast<uint32_t>(mk[b] != 0) << b;
    bitmap[idx] = static_cast<int32_t>(bits);
    counts[idx] = __popc(bits);
  }
}

template <typename E>
__global__ void __launch_bounds__(kThreads) scatter_kept_kernel(const E* __restrict__ w,
                                                                const int32_t* __restrict__ bitmap,
                                                                const int32_t* __restrict__ offsets, int64_t N,
                                                                int64_t K, E* __restrict__ values,
                                                                int32_t* __restrict__ cols) {
  const int64_t W = (K + 31) / 32;
  for (int64_t idx = gtid(); idx < N * W; idx += gstride()) {
    const int64_t n = idx / W, wd = idx - n * W;
    uint32_t bits = static_cast<uint32_t>(bitmap[idx]);
    int64_t pos = offsets[idx];
    const E* row = w + n * K + 32 * wd;
    while (bits) {
      const int b = __ffs(static_cast<int>(bits)) - 1;
      values[pos] = row[b];
      if (cols) cols[pos] = static_cast<int32_t>(32 * wd + b);
      ++pos;
      bits &= bits - 1;
    }
  }
}

__global__ void __launch_bounds__(kThreads) bsr_flags_kernel(const uint8_t* __restrict__ mask, int64_t N, int64_t K,
                                                             int64_t R, int64_t C, int32_t* __restrict__ flags) {
  const int64_t KB = K / C, NB = N / R;
  for (int64_t idx = gtid(); idx < NB * KB; idx += gstride()) {
    const int64_t br = idx / KB, bc = idx - br * KB;
    int any = 0;
    for (int64_t r = 0; r < R && !any; ++r) {
      const uint8_t* mk = mask + (br * R + r) * K + bc * C;
      for (int64_t c = 0; c < C; ++c)
        if (mk[c]) {
          any = 1;
          break;
        }
    }
    flags[idx] = any;
  }
}

__global__ void __launch_bounds__(kThreads) bsr_index_kernel(const int32_t* __restrict__ flags,
                                                             const int64_t* __restrict__ positions, int64_t NB,
                                                             int64_t KB, int32_t* __restrict__ cols,
                                                             int32_t* __restrict__ brows) {
  for (int64_t idx = gtid(); idx < NB * KB; idx += gstride()) {
    if (!flags[idx]) continue;
    const int64_t br = idx / KB, bc = idx - br * KB;
    const int64_t p = positions[idx];
    cols[p] = static_cast<int32_t>(bc);
    brows[p] = static_cast<int32_t>(br);
  }
}

// One block of threads per kept block at a time (grid-stride over the blocks), threads over its R * C values.
template <typename E>
__global__ void __launch_bounds__(kThreads) bsr_values_kernel(const E* __restrict__ w, const uint8_t* __restrict__ mask,
                                                              int64_t K, int64_t R, int64_t C,
                                                              const int32_t* __restrict__ cols,
                                                              const int32_t* __restrict__ brows, int64_t nblocks,
                                                              E* __restrict__ values) {
  const unsigned RC = static_cast<unsigned>(R * C), Cu = static_cast<unsigned>(C);  // R * C < 2**32 (checked)
  for (int64_t p = blockIdx.x; p < nblocks; p += gridDim.x) {
    const int64_t base = brows[p] * R * K + static_cast<int64_t>(cols[p]) * C;
    E* out = values + p * static_cast<int64_t>(RC);
    for (unsigned i = threadIdx.x; i < RC; i += blockDim.x) {
      const unsigned r = i / Cu, c = i - r * Cu;
      const int64_t at = base + static_cast<int64_t>(r) * K + c;
      out[i] = mask[at] ? w[at] : E(0);
    }
  }
}

template <typename E>
cudaError_t pack24_launch(const void* w, const uint8_t* mask, int64_t N, int64_t K, void* values, uint8_t* meta,
                          unsigned long long* bad, cudaStream_t stream) {
  pack24_kernel<E><<<grid_for(N * ((K + 7) / 8)), kThreads, 0, stream>>>(
      static_cast<const E*>(w), mask, N, K, static_cast<E*>(values), meta, bad);
  return cudaGetLastError();
}

template <typename E>
cudaError_t scatter_launch(const void* w, const int32_t* bitmap, const int32_t* offsets, int64_t N, int64_t K,
                           void* values, int32_t* cols, cudaStream_t stream) {
  scatter_kept_kernel<E><<<grid_for(N * ((K + 31) / 32)), kThreads, 0, stream>>>(
      static_cast<const E*>(w), bitmap, offsets, N, K, static_cast<E*>(values), cols);
  return cudaGetLastError();
}

template <typename E>
cudaError_t bsr_values_launch(const void* w, const uint8_t* mask, int64_t K, int64_t R, int64_t C,
                              const int32_t* cols, const int32_t* brows, int64_t nblocks, void* values,
                              cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(nblocks < (1 << 20) ? nblocks : (1 << 20));
  bsr_values_kernel<E><<<grid, kThreads, 0, stream>>>(
      static_cast<const E*>(w), mask, K, R, C, cols, brows, nblocks, static_cast<E*>(values));
  return cudaGetLastError();
}

}  // namespace

cudaError_t pack_sparse24(const void* weight, const uint8_t* mask, int64_t N, int64_t K, int elem_size,
                          void* values, uint8_t* meta, unsigned long long* bad_group, cudaStream_t stream) {
  if (N < 0 || K < 0 || K % 4) return cudaErrorInvalidValue;
  if (N == 0 || K == 0) return cudaSuccess;
  switch (elem_size) {
    case 1: return pack24_launch<uint8_t>(weight, mask, N, K, values, meta, bad_group, stream);
    case 2: return pack24_launch<uint16_t>(weight, mask, N, K, values, meta, bad_group, stream);
    case 4: return pack24_launch<uint32_t>(weight, mask, N, K, values, meta, bad_group, stream);
    case 8: return pack24_launch<uint64_t>(weight, mask, N, K, values, meta, bad_group, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t pack_bitmap_words(const uint8_t* mask, int64_t N, int64_t K, int32_t* bitmap, int32_t* counts,
                              cudaStream_t stream) {
  if (N < 0 || K < 0) return cudaErrorInvalidValue;
  if (N == 0 || K == 0) return cudaSuccess;
  bitmap_words_kernel<<<grid_for(N * ((K + 31) / 32)), kThreads, 0, stream>>>(mask, N, K, bitmap, counts);
  return cudaGetLastError();
}

cudaError_t pack_scatter_kept(const void* weight, const int32_t* bitmap, const int32_t* word_offsets, int64_t N,
                              int64_t K, int elem_size, void* values, int32_t* col_indices, cudaStream_t stream) {
  if (N < 0 || K < 0) return cudaErrorInvalidValue;
  if (N == 0 || K == 0) return cudaSuccess;
  switch (elem_size) {
    case 1: return scatter_launch<uint8_t>(weight, bitmap, word_offsets, N, K, values, col_indices, stream);
    case 2: return scatter_launch<uint16_t>(weight, bitmap, word_offsets, N, K, values, col_indices, stream);
    case 4: return scatter_launch<uint32_t>(weight, bitmap, word_offsets, N, K, values, col_indices, stream);
    case 8: return scatter_launch<uint64_t>(weight, bitmap, word_offsets, N, K, values, col_indices, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t pack_bsr_flags(const uint8_t* mask, int64_t N, int64_t K, int64_t R, int64_t C, int32_t* flags,
                           cudaStream_t stream) {
  if (R <= 0 || C <= 0 || N < 0 || K < 0 || N % R || K % C) return cudaErrorInvalidValue;
  const int64_t blocks = (N / R) * (K / C);
  if (blocks == 0) return cudaSuccess;
  bsr_flags_kernel<<<grid_for(blocks), kThreads, 0, stream>>>(mask, N, K, R, C, flags);
  return cudaGetLastError();
}

cudaError_t pack_bsr_index(const int32_t* flags, const int64_t* positions, int64_t NB, int64_t KB,
                           int32_t* col_indices, int32_t* block_rows, cudaStream_t stream) {
  if (NB < 0 || KB < 0) return cudaErrorInvalidValue;
  if (NB * KB == 0) return cudaSuccess;
  bsr_index_kernel<<<grid_for(NB * KB), kThreads, 0, stream>>>(flags, positions, NB, KB, col_indices, block_rows);
  return cudaGetLastError();
}

cudaError_t pack_bsr_values(const void* weight, const uint8_t* mask, int64_t K, int64_t R, int64_t C,
                            const int32_t* col_indices, const int32_t* block_rows, int64_t nblocks, int elem_size,
                            void* values, cudaStream_t stream) {
  if (R <= 0 || C <= 0 || nblocks < 0 || R * C > 0xffffffffLL) return cudaErrorInvalidValue;
  if (nblocks == 0) return cudaSuccess;
  switch (elem_size) {
    case 1: return bsr_values_launch<uint8_t>(weight, mask, K, R, C, col_indices, block_rows, nblocks, values, stream);
    case 2: return bsr_values_launch<uint16_t>(weight, mask, K, R, C, col_indices, block_rows, nblocks, values, stream);
    case 4: return bsr_values_launch<uint32_t>(weight, mask, K, R, C, col_indices, block_rows, nblocks, values, stream);
    case 8: return bsr_values_launch<uint64_t>(weight, mask, K, R, C, col_indices, block_rows, nblocks, values, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace sparsekit
