// Pieces shared by the small-M ("decode") CUDA kernels of sparse24_kernel.cu and bitmap_kernel.cu:
// dtype conversion from raw bits, the shared-memory tile of x, the warp reduce-scatter, the
// device-property / occupancy caches, the choice of K chunks (split-K) and the split-K finish kernel.
// Torch-free; included by .cu files only (it holds device code).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "cuda/csr_spmm_kernel.cuh"  // DType

namespace sparsekit {
namespace cuda {
namespace decode {

constexpr unsigned kFullMask = 0xffffffffu;
// Activation rows per M tile: a kernel instance is specialised for MT in {1, 2, 4, 8, 16}; M > 16 is
// cut into tiles of 16 (and one smaller tile for the rest).
constexpr int kMaxTileM = 16;
// Upper bound of threads per block (the decode kernels run 256 or 512).
constexpr int kMaxThreads = 512;
// Split-K partial sums are kept for at most this many activation rows at a time (bounds the workspace).
constexpr int64_t kWorkspaceRows = 256;

template <typename A>
__host__ __device__ constexpr A imin(A a, A b) { return a < b ? a : b; }
template <typename A>
__host__ __device__ constexpr A imax(A a, A b) { return a > b ? a : b; }
template <typename A>
__host__ __device__ constexpr A ceil_div(A a, A b) { return (a + b - 1) / b; }
template <typename A>
__host__ __device__ constexpr A round_up(A a, A b) { return ceil_div(a, b) * b; }
__host__ __device__ constexpr int ilog2(int v) { return v <= 1 ? 0 : 1 + ilog2(v / 2); }

// ------------------------------------------------------------------------------------ conversions
__device__ __forceinline__ float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The raw bits of one element: uint16_t for the 16-bit types, uint32_t for float.
template <typename T>
using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;

// 16 bytes of values from index gi0 (kV = 16 / sizeof(T) of them; zeros past nnz): a bitmap row's run, in
// bitmap_kernel.cu and BitmapRows of mma_decode.cuh.
template <typename T, bool kVecLoads>
__device__ __forceinline__ uint4 load_chunk(const Bits<T>* vbits, int64_t nnz, int64_t gi0) {
  constexpr int kV = 16 / static_cast<int>(sizeof(T));
  if (kVecLoads && gi0 + kV <= nnz) return __ldg(reinterpret_cast<const uint4*>(vbits + gi0));
  uint32_t b[kV];
#pragma unroll
  for (int r = 0; r < kV; ++r) b[r] = gi0 + r < nnz ? static_cast<uint32_t>(vbits[gi0 + r]) : 0u;
  if constexpr (kV == 8) {
    return make_uint4(b[0] | (b[1] << 16), b[2] | (b[3] << 16), b[4] | (b[5] << 16), b[6] | (b[7] << 16));
  } else {
    return make_uint4(b[0], b[1], b[2], b[3]);
  }
}

// One element from its raw bits.
template <typename T>
__device__ __forceinline__ float elem_from_bits(uint32_t b) {
  if constexpr (std::is_same_v<T, float>) {
    return f32_from_bits(b);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return f32_from_bits(b << 16);
  } else {
    __half h;
    const uint16_t s = static_cast<uint16_t>(b);
    memcpy(&h, &s, 2);
    return __half2float(h);
  }
}

// Unpacks NW 32-bit words holding NW * 4 / sizeof(T) elements (little-endian, element 0 in the
// low bits of word 0) into floats.
template <typename T, int NW>
__device__ __forceinline__ void words_to_float(const uint32_t (&w)[NW], float (&out)[NW * 4 / sizeof(T)]) {
#pragma unroll
  for (int i = 0; i < NW; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      out[i] = f32_from_bits(w[i]);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      out[2 * i] = f32_from_bits(w[i] << 16);
      out[2 * i + 1] = f32_from_bits(w[i] & 0xffff0000u);
    } else {
      __half2 h;
      memcpy(&h, &w[i], 4);
      const float2 f = __half22float2(h);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
}

__device__ __forceinline__ void split_uint4(const uint4& q, uint32_t (&w)[4]) {
  w[0] = q.x;
  w[1] = q.y;
  w[2] = q.z;
  w[3] = q.w;
}

// ------------------------------------------------------------------------------------ the x tile
// x[m0 : m0 + MT, k0 : k0 + kc] lives in shared memory transposed: a column's MT values are
// contiguous (MT * sizeof(T) bytes, read with one to four vector loads), columns are grouped in
// spans of kSpan and each span is followed by kPad bytes, so that lanes reading the same position
// of consecutive spans hit different banks (the span stride is an odd number of access widths).
// kSpan = 0: no spans and no padding (column c at c * kColBytes), for kernels whose lanes read columns in
// no fixed pattern (the column-list kernel of bitmap_columns.cuh), where padding avoids no conflict.
template <typename T, int MT, int kSpan>
struct XTile {
  static_assert(MT == 1 || MT == 2 || MT == 4 || MT == 8 || MT == 16, "MT must be a power of two <= 16");
  static constexpr int kColBytes = MT * static_cast<int>(sizeof(T));
  static constexpr int kAccess = kColBytes < 16 ? kColBytes : 16;  // bytes per shared load
  static constexpr int kAccesses = kColBytes / kAccess;
  static constexpr int kPad = kAccess < 4 ? 4 : kAccess;
  static constexpr int kSpanBytes = kSpan * kColBytes + kPad;
  static constexpr int kWords = (kColBytes + 3) / 4;  // 32-bit words per column (rounded up)

  // Shared bytes for `cols` columns (rounded up to a span and to 16 bytes).
  __host__ __device__ static constexpr size_t bytes(int64_t cols) {
    if constexpr (kSpan == 0) {
      return round_up<size_t>(static_cast<size_t>(cols) * kColBytes, 16);
    } else {
      return round_up<size_t>(static_cast<size_t>(ceil_div<int64_t>(cols, kSpan)) * kSpanBytes, 16);
    }
  }
  __device__ __forceinline__ static unsigned offset(unsigned c) {
    if constexpr (kSpan == 0) {
      return c * kColBytes;
    } else {
      return (c / kSpan) * kSpanBytes + (c % kSpan) * kColBytes;
    }
  }

  // The MT values of the column that starts at p, as float.
  __device__ __forceinline__ static void load_at(const unsigned char* p, float (&out)[MT]) {
    uint32_t w[kWords];
    if constexpr (kAccess == 16) {
#pragma unroll
      for (int i = 0; i < kAccesses; ++i) {
        const uint4 q = *reinterpret_cast<const uint4*>(p + 16 * i);
        w[4 * i] = q.x;
        w[4 * i + 1] = q.y;
        w[4 * i + 2] = q.z;
        w[4 * i + 3] = q.w;
      }
    } else if constexpr (kAccess == 8) {
      const uint2 q = *reinterpret_cast<const uint2*>(p);
      w[0] = q.x;
      w[1] = q.y;
    } else if constexpr (kAccess == 4) {
      w[0] = *reinterpret_cast<const uint32_t*>(p);
    } else {
      w[0] = *reinterpret_cast<const uint16_t*>(p);
    }
    if constexpr (kColBytes >= 4) {
      words_to_float<T, kWords>(w, out);
    } else {
      out[0] = elem_from_bits<T>(w[0]);
    }
  }
  __device__ __forceinline__ static void load(const unsigned char* tile, unsigned c, float (&out)[MT]) {
    load_at(tile + offset(c), out);
  }

  // Cooperative copy by the whole block: tile column c in [0, kc_alloc) gets
  // x[m, k0 + c] for m < mrows and c < kc_valid, else zero. x points at the tile's first row.
  __device__ static void stage(unsigned char* tile, const T* x, int64_t ldx, int mrows, int64_t k0, int kc_valid,
                               int kc_alloc) {
    const Bits<T>* xb = reinterpret_cast<const Bits<T>*>(x) + k0;
    for (int c = threadIdx.x; c < kc_alloc; c += blockDim.x) {
      uint32_t b[MT];
#pragma unroll
      for (int m = 0; m < MT; ++m) b[m] = (m < mrows && c < kc_valid) ? static_cast<uint32_t>(xb[m * ldx + c]) : 0u;
      unsigned char* p = tile + offset(c);
      if constexpr (sizeof(T) == 4) {
        if constexpr (kAccess == 16) {
#pragma unroll
          for (int i = 0; i < kAccesses; ++i)
            *reinterpret_cast<uint4*>(p + 16 * i) = make_uint4(b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]);
        } else if constexpr (kAccess == 8) {
          *reinterpret_cast<uint2*>(p) = make_uint2(b[0], b[1]);
        } else {
          *reinterpret_cast<uint32_t*>(p) = b[0];
        }
      } else {
        if constexpr (MT == 1) {
          *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(b[0]);
        } else {
          uint32_t w[kWords];
#pragma unroll
          for (int i = 0; i < kWords; ++i) w[i] = b[2 * i] | (b[2 * i + 1] << 16);
          if constexpr (kAccess == 16) {
#pragma unroll
            for (int i = 0; i < kAccesses; ++i)
              *reinterpret_cast<uint4*>(p + 16 * i) = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
          } else if constexpr (kAccess == 8) {
            *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
          } else {
            *reinterpret_cast<uint32_t*>(p) = w[0];
          }
        }
      }
    }
  }
};

// ------------------------------------------------------------------------------------ warp reduction
// Sums acc[m] over the 32 lanes for every m < MT with MT + MT/2 + ... + 1 + (5 - log2 MT) shuffles
// (31 for MT = 16 instead of 80): each step halves the values a lane holds and exchanges the other
// half. Returns the total for m = lane >> (5 - log2 MT); lanes with lane % (32 / MT) == 0 are the
// one holder of each m that should write it.
// One halving step with kCount values per lane, exchanging with lane ^ kOffset; recursion keeps every
// index a compile-time constant (a run-time index would put acc in local memory).
template <int kCount, int kOffset, int MT>
__device__ __forceinline__ void reduce_scatter_step(float (&acc)[MT], int lane) {
  if constexpr (kCount > 1) {
    constexpr int kHalf = kCount / 2;
    const bool upper = (lane & kOffset) != 0;
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const float send = upper ? acc[i] : acc[i + kHalf];
      const float keep = upper ? acc[i + kHalf] : acc[i];
      acc[i] = keep + __shfl_xor_sync(kFullMask, send, kOffset);
    }
    reduce_scatter_step<kHalf, kOffset / 2, MT>(acc, lane);
  }
}

template <int MT>
__device__ __forceinline__ float warp_reduce_scatter(float (&acc)[MT], int lane) {
  constexpr int kSteps = ilog2(MT);
  reduce_scatter_step<MT, 16, MT>(acc, lane);
#pragma unroll
  for (int o = 16 >> kSteps; o > 0; o >>= 1) acc[0] += __shfl_xor_sync(kFullMask, acc[0], o);
  return acc[0];
}
template <int MT>
__device__ __forceinline__ int reduce_scatter_row(int lane) { return lane >> (5 - ilog2(MT)); }
template <int MT>
__device__ __forceinline__ bool reduce_scatter_writer(int lane) { return (lane & ((32 >> ilog2(MT)) - 1)) == 0; }

// ------------------------------------------------------------------------------------ output
// Where a warp's finished sum for (activation row m, output column n) goes: straight to y (with the
// bias) when there is one K split, else to the float32 workspace [split][m - ws_m0][n].
struct Output {
  int64_t M = 0, N = 0;
  const void* bias = nullptr;
  void* y = nullptr;
  int64_t ldy = 0;
  float* ws = nullptr;
  int64_t ws_m0 = 0, ws_rows = 0;
};

template <typename T>
__device__ __forceinline__ void write_out(const Output& o, int splits, int split, int64_t m, int64_t n, float v) {
  if (splits == 1) {
    if (o.bias) v += to_f(static_cast<const T*>(o.bias)[n]);
    static_cast<T*>(o.y)[m * o.ldy + n] = from_f<T>(v);
  } else {
    o.ws[(static_cast<int64_t>(split) * o.ws_rows + (m - o.ws_m0)) * o.N + n] = v;
  }
}

// y[m, n] = sum over the splits of ws[split][m - ws_m0][n] (+ bias[n]) for m in [ws_m0, ws_m0 + ws_rows);
// splits == 0 writes the bias (or zeros): the K == 0 case.
template <typename T>
__global__ void __launch_bounds__(256) finish_kernel(const Output o, int splits) {
  const int64_t total = o.ws_rows * o.N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / o.N, n = i - r * o.N;
    float s = 0.f;
    for (int k = 0; k < splits; ++k) s += o.ws[(static_cast<int64_t>(k) * o.ws_rows + r) * o.N + n];
    if (o.bias) s += to_f(static_cast<const T*>(o.bias)[n]);
    static_cast<T*>(o.y)[(o.ws_m0 + r) * o.ldy + n] = from_f<T>(s);
  }
}

template <typename T>
cudaError_t launch_finish(const Output& o, int splits, cudaStream_t stream) {
  const int64_t total = o.ws_rows * o.N;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = imin<int64_t>(ceil_div<int64_t>(total, 256), 65535);
  finish_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(o, splits);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------ device facts
struct DevInfo {
  int device = 0;
  int sms = 1;
  int smem_optin = 48 * 1024;    // bytes of shared memory one block may ask for
  int smem_per_sm = 64 * 1024;   // bytes per multiprocessor
  int cc_major = 8;              // compute capability (major): the tensor-core kernels need 8 or more
};

inline cudaError_t dev_info(DevInfo* out) {
  static std::mutex mu;
  static std::map<int, DevInfo> cache;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dev);
  if (it == cache.end()) {
    DevInfo d;
    d.device = dev;
    if ((e = cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return e;
    if ((e = cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
      return e;
    if ((e = cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev)) !=
        cudaSuccess)
      return e;
    if ((e = cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess) return e;
    it = cache.emplace(dev, d).first;
  }
  *out = it->second;
  return cudaSuccess;
}

// Resident blocks per multiprocessor of `kernel` with `threads` threads and `smem` dynamic shared
// bytes; raises the kernel's dynamic shared-memory limit first when smem > 48 KB. Cached.
inline cudaError_t blocks_per_sm(const void* kernel, int device, int threads, size_t smem, int* out) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int, size_t>, int> cache;
  static std::map<std::pair<const void*, int>, size_t> raised;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(kernel, device, threads, smem);
  auto it = cache.find(key);
  if (it != cache.end()) {
    *out = it->second;
    return cudaSuccess;
  }
  cudaError_t e;
  if (smem > 48 * 1024) {
    size_t& done = raised[std::make_pair(kernel, device)];
    if (done < smem) {
      e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (e != cudaSuccess) return e;
      done = smem;
    }
  }
  int n = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem);
  if (e != cudaSuccess) return e;
  if (n < 1) return cudaErrorInvalidConfiguration;
  cache.emplace(key, n);
  *out = n;
  return cudaSuccess;
}

// ------------------------------------------------------------------------------------ K chunks
// How K is cut: chunks of Kc columns (a multiple of `align`), one per grid.y, so that the x tile of a
// chunk fits in shared memory. Preference: the whole K with 256 threads and two blocks per
// multiprocessor; else the whole K with 512 threads and one block; else chunks (split-K) with 256
// threads and two blocks, their partial sums finished by finish_kernel.
struct Chunking {
  int64_t Kc = 0;    // columns per chunk (the last one may be shorter)
  int splits = 1;    // chunks
  int threads = 256;
  size_t smem = 0;   // dynamic shared bytes per block
  size_t tile_bytes = 0;  // of which the x tile
};

// tile_bytes(cols): shared bytes of a tile of `cols` columns; extra_per_warp: other shared bytes per warp.
template <typename TileBytes>
Chunking choose_chunking(int64_t K, int64_t align, size_t extra_per_warp, const DevInfo& d, TileBytes tile_bytes) {
  Chunking c;
  const int64_t reserve = 1024;  // the runtime's own shared memory per block
  const int64_t b2 = imin<int64_t>(d.smem_optin, d.smem_per_sm / 2 - reserve);
  const int64_t b1 = imin<int64_t>(d.smem_optin, d.smem_per_sm - reserve);
  const int64_t whole = round_up<int64_t>(imax<int64_t>(K, 1), align);
  const int64_t t_whole = static_cast<int64_t>(tile_bytes(whole));
  if (t_whole + 8 * static_cast<int64_t>(extra_per_warp) <= b2) {
    c.Kc = whole;
    c.threads = 256;
  } else if (t_whole + 16 * static_cast<int64_t>(extra_per_warp) <= b1) {
    c.Kc = whole;
    c.threads = 512;
  } else {
    c.threads = 256;
    const int64_t avail = b2 - 8 * static_cast<int64_t>(extra_per_warp);
    // the largest multiple of align whose tile fits (at least one align; tiles are linear in the
    // columns up to a 16-byte rounding)
    const int64_t per_align = static_cast<int64_t>(tile_bytes(align));
    int64_t kc_max = imax<int64_t>(1, avail / imax<int64_t>(per_align, 1)) * align;
    while (kc_max > align && static_cast<int64_t>(tile_bytes(kc_max)) > avail) kc_max -= align;
    const int64_t splits = ceil_div<int64_t>(K, kc_max);
    c.Kc = round_up<int64_t>(ceil_div<int64_t>(K, splits), align);
  }
  c.splits = static_cast<int>(imax<int64_t>(1, ceil_div<int64_t>(K, c.Kc)));
  c.tile_bytes = tile_bytes(c.Kc);
  c.smem = c.tile_bytes + static_cast<size_t>(c.threads / 32) * extra_per_warp;
  return c;
}

// The activation-row tile for the rows left: `full` (16, or 32 for the tensor-core kernel's wide tiles) while at
// least that many remain, 32 for 17-31 rows where the full tile is 32, else the next power of two.
inline int tile_m_for(int64_t rows, int full = 16) {
  if (rows >= full) return full;
  int t = 1;
  while (t < rows) t *= 2;
  return t;
}

// Whether the tensor-core decode kernel runs M > 16 in tiles of 32 activation rows (mma::tile_rows_for):
// SPARSEKIT_CUDA_WIDE_TILE=0 (or off) keeps tiles of 16, for an A/B of the two in one process on a GPU. Read once
// per plan (a getenv).
inline bool wide_tiles() {
  const char* v = std::getenv("SPARSEKIT_CUDA_WIDE_TILE");
  return v == nullptr || (std::strcmp(v, "0") != 0 && std::strcmp(v, "off") != 0);
}

// ------------------------------------------------------------------------------------ host driver
// Whether the decode kernels refill their weight registers while they consume them: the 2:4 FMA kernel issues
// the next tile before it consumes the current one, the tensor-core kernel's dense policies (int8 rows, 2:4, 2:4
// int8) refill each batch entry with the next batch's step as soon as it is consumed. SPARSEKIT_CUDA_REFILL=0 (or
// off) gives the order before (a tile or batch is waited for, then consumed with nothing in flight; the
// tensor-core kernel's next row group goes out before its reduction), so that one process can time both on a GPU.
// Read once per plan (a getenv).
inline bool stream_refill() {
  const char* v = std::getenv("SPARSEKIT_CUDA_REFILL");
  return v == nullptr || (std::strcmp(v, "0") != 0 && std::strcmp(v, "off") != 0);
}

// What one decode call runs: the K chunks, whether the 16-byte load path applies, whether the weight registers
// are refilled while consumed, and the workspace the split-K partial sums need.
struct Plan {
  Chunking ch;
  bool vec = false;
  bool refill = stream_refill();
  int variant = 1;      // kernel design (decode_variant()); 3: the tensor-core kernel (mma_decode.cuh)
  int shape = 0;        // variant 2 of bitmap_mm: the batch's shape by the density (V2Shape in bitmap_kernel.cu)
  bool walk = false;    // variant 2 of bitmap_mm at M <= 4: the lanes walk their words' bits (walk_consumer)
  int tile_rows = 16;   // activation rows of a full M tile: 16, or 32 (the tensor-core kernel's wide tiles, kWideTile)
  int64_t ws_rows = 0;  // activation rows whose partial sums the workspace holds at once
  size_t ws_bytes = 0;
};

// The design SPARSEKIT_CUDA_DECODE names: 1 (v1: the first ones; bitmap one tile per warp in flight, 2:4
// CUDA-core FMAs at every M), 2 (v2: the batched bitmap kernel and, for 2:4 in float16 / bfloat16 on sm_80+, the
// tensor-core kernel from M = 2), 3 (v3: as v2 but the 2:4 tensor-core kernel at M = 1 too and bitmap (float16 /
// bfloat16) on the tensor cores at every M); 0 when it names none (unset, empty or anything else). Where it names
// one, a bitmap weight with a column list runs that design, not the column-list kernel (variant 4 of bitmap_mm).
// Read on every call (a getenv, well under a microsecond), so that one process can time them all.
inline int decode_variant_named() {
  const char* v = std::getenv("SPARSEKIT_CUDA_DECODE");
  if (v == nullptr) return 0;
  if (std::strcmp(v, "v1") == 0) return 1;
  if (std::strcmp(v, "v2") == 0) return 2;
  if (std::strcmp(v, "v3") == 0) return 3;
  return 0;
}

// Which design runs: the one named, else v2 (the default).
inline int decode_variant() {
  const int v = decode_variant_named();
  return v != 0 ? v : 2;
}

// Sizes the split-K workspace of `p` for an (M, N) output (none when K is not split).
inline void plan_workspace(Plan* p, int64_t M, int64_t N) {
  if (p->ch.splits > 1) {
    p->ws_rows = imin<int64_t>(M, kWorkspaceRows);
    p->ws_bytes = static_cast<size_t>(p->ch.splits) * p->ws_rows * N * sizeof(float);
  }
}

// Shared bytes of an x tile of `cols` columns for the M tile mt in {1, 2, 4, 8, 16}.
template <typename T, int kSpan>
size_t xtile_bytes(int mt, int64_t cols) {
  switch (mt) {
    case 1: return XTile<T, 1, kSpan>::bytes(cols);
    case 2: return XTile<T, 2, kSpan>::bytes(cols);
    case 4: return XTile<T, 4, kSpan>::bytes(cols);
    case 8: return XTile<T, 8, kSpan>::bytes(cols);
    default: return XTile<T, 16, kSpan>::bytes(cols);
  }
}

// Launches a decode kernel over `tiles` M tiles of MT rows from m_begin: grid.z = the tiles (at most
// 65535 a launch), grid.y = the K chunks, grid.x = about as many blocks as fit on the GPU at once
// (each warp then strides over the weight rows), but no more than the N rows need. Params must have
// an `m_begin` field, the first activation row of a launch.
template <int MT, typename Params>
cudaError_t launch_decode_grid(void (*kernel)(Params), Params p, const Plan& plan, const DevInfo& d, size_t smem,
                               int64_t N, int64_t m_begin, int64_t tiles, cudaStream_t stream) {
  if (tiles <= 0) return cudaSuccess;
  int per_sm = 0;
  cudaError_t e = blocks_per_sm(reinterpret_cast<const void*>(kernel), d.device, plan.ch.threads, smem, &per_sm);
  if (e != cudaSuccess) return e;
  const int64_t warps = plan.ch.threads / 32;
  const int64_t resident = static_cast<int64_t>(per_sm) * d.sms;
  for (int64_t t = 0; t < tiles; t += 65535) {
    const int64_t tz = imin<int64_t>(tiles - t, 65535);
    const int64_t gx = imax<int64_t>(1, imin<int64_t>(ceil_div<int64_t>(resident, plan.ch.splits * tz),
                                                      ceil_div<int64_t>(N, warps)));
    p.m_begin = m_begin + t * MT;
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(plan.ch.splits), static_cast<unsigned>(tz));
    kernel<<<grid, plan.ch.threads, smem, stream>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  return cudaSuccess;
}

// How the split-K partials of a decode family become y: float32 sums, then the bias (finish_kernel).
struct FloatFinish {
  template <typename T, typename Launch>
  static cudaError_t finish(const Launch&, const Output& out, int splits, cudaStream_t stream) {
    return launch_finish<T>(out, splits, stream);
  }
};

// Whether the decode family Op may plan wide M tiles (a `static constexpr bool kWideTile = true;` member): its
// launch_tiles then takes MT = 32 where its plan's tile_rows is 32.
template <typename Op, typename = void>
struct WideTile : std::false_type {};
template <typename Op>
struct WideTile<Op, std::void_t<decltype(Op::kWideTile)>> : std::bool_constant<Op::kWideTile> {};

// The host side shared by the decode kernels. Op is the kernel family:
//   using Launch = ...;                                   the launch arguments (M, N, K, y, ldy, bias, dtype)
//   static bool valid(const Launch&);                     sizes the kernel accepts
//   template <typename T> static cudaError_t make_plan(const Launch&, const DevInfo&, Plan*);
//   template <typename T, int MT, bool kVec> static cudaError_t launch_tiles(const Launch&, const Plan&,
//       const DevInfo&, const Output&, int64_t m_begin, int64_t tiles, cudaStream_t);
//   template <typename T> static cudaError_t finish(const Launch&, const Output&, int splits, cudaStream_t);
//       the split-K finish (FloatFinish: float32 partials)
template <typename Op>
struct Driver {
  using Launch = typename Op::Launch;

  // Rows [m_begin, m_begin + rows): full tiles of plan.tile_rows (16, or 32 for a family with WideTile), then
  // one smaller tile for the rest.
  template <typename T, bool kVec>
  static cudaError_t launch_rows(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                                 int64_t m_begin, int64_t rows, cudaStream_t stream) {
    int full_rows = 16;
    if constexpr (WideTile<Op>::value) full_rows = plan.tile_rows;
    const int64_t full = rows / full_rows;
    cudaError_t e = cudaSuccess;
    if constexpr (WideTile<Op>::value) {
      if (full_rows == 32) e = Op::template launch_tiles<T, 32, kVec>(a, plan, d, out, m_begin, full, stream);
    }
    if (full_rows == 16) e = Op::template launch_tiles<T, 16, kVec>(a, plan, d, out, m_begin, full, stream);
    if (e != cudaSuccess) return e;
    const int64_t rest = rows - full * full_rows;
    if (rest == 0) return cudaSuccess;
    const int64_t mb = m_begin + full * full_rows;
    if constexpr (WideTile<Op>::value) {
      if (tile_m_for(rest, full_rows) == 32) return Op::template launch_tiles<T, 32, kVec>(a, plan, d, out, mb, 1, stream);
    }
    switch (tile_m_for(rest)) {
      case 1: return Op::template launch_tiles<T, 1, kVec>(a, plan, d, out, mb, 1, stream);
      case 2: return Op::template launch_tiles<T, 2, kVec>(a, plan, d, out, mb, 1, stream);
      case 4: return Op::template launch_tiles<T, 4, kVec>(a, plan, d, out, mb, 1, stream);
      case 8: return Op::template launch_tiles<T, 8, kVec>(a, plan, d, out, mb, 1, stream);
      default: return Op::template launch_tiles<T, 16, kVec>(a, plan, d, out, mb, 1, stream);
    }
  }

  template <typename T>
  static cudaError_t dispatch_rows(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                                   int64_t m_begin, int64_t rows, cudaStream_t stream) {
    return plan.vec ? launch_rows<T, true>(a, plan, d, out, m_begin, rows, stream)
                    : launch_rows<T, false>(a, plan, d, out, m_begin, rows, stream);
  }

  template <typename T>
  static cudaError_t run_typed(const Launch& a, void* workspace, cudaStream_t stream) {
    if (a.M == 0 || a.N == 0) return cudaSuccess;
    if (a.M < 0 || a.N < 0 || a.K < 0 || !Op::valid(a)) return cudaErrorInvalidValue;
    Output out;
    out.M = a.M; out.N = a.N; out.bias = a.bias; out.y = a.y; out.ldy = a.ldy;
    if (a.K == 0) {  // y = bias (or 0)
      out.ws_m0 = 0;
      out.ws_rows = a.M;
      return launch_finish<T>(out, 0, stream);
    }
    DevInfo d;
    cudaError_t e = dev_info(&d);
    if (e != cudaSuccess) return e;
    Plan plan;
    if ((e = Op::template make_plan<T>(a, d, &plan)) != cudaSuccess) return e;
    if (plan.ch.splits == 1) {
      out.ws_m0 = 0;
      out.ws_rows = a.M;
      return dispatch_rows<T>(a, plan, d, out, 0, a.M, stream);
    }
    if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0) return cudaErrorInvalidValue;
    out.ws = static_cast<float*>(workspace);
    for (int64_t m = 0; m < a.M; m += plan.ws_rows) {
      out.ws_m0 = m;
      out.ws_rows = imin<int64_t>(plan.ws_rows, a.M - m);
      if ((e = dispatch_rows<T>(a, plan, d, out, m, out.ws_rows, stream)) != cudaSuccess) return e;
      if ((e = Op::template finish<T>(a, out, plan.ch.splits, stream)) != cudaSuccess) return e;
    }
    return cudaSuccess;
  }

  template <typename T>
  static size_t workspace_bytes_typed(const Launch& a, cudaError_t* err) {
    if (err) *err = cudaSuccess;
    if (a.M <= 0 || a.N <= 0 || a.K <= 0) return 0;
    DevInfo d;
    Plan plan;
    cudaError_t e = dev_info(&d);
    if (e == cudaSuccess) e = Op::template make_plan<T>(a, d, &plan);
    if (e != cudaSuccess) {
      if (err) *err = e;
      return 0;
    }
    return plan.ws_bytes;
  }

  // The entry points, dispatched on the launch's dtype.
  static cudaError_t run(const Launch& a, void* workspace, cudaStream_t stream) {
    switch (a.dtype) {
      case DType::f32: return run_typed<float>(a, workspace, stream);
      case DType::f16: return run_typed<__half>(a, workspace, stream);
      case DType::bf16: return run_typed<__nv_bfloat16>(a, workspace, stream);
    }
    return cudaErrorInvalidValue;
  }

  static size_t workspace_bytes(const Launch& a, cudaError_t* err) {
    switch (a.dtype) {
      case DType::f32: return workspace_bytes_typed<float>(a, err);
      case DType::f16: return workspace_bytes_typed<__half>(a, err);
      case DType::bf16: return workspace_bytes_typed<__nv_bfloat16>(a, err);
    }
    if (err) *err = cudaErrorInvalidValue;
    return 0;
  }
};

}  // namespace decode
}  // namespace cuda
}  // namespace sparsekit
