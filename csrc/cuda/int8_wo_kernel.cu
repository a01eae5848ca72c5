// int8 weight-only (W8A16) x dense for small M (decode), on the tensor cores.
//
// Why tensor cores at decode sizes: the kernel must stream the int8 weight at the copy rate (1 byte per
// weight), and float32 FMAs on the CUDA cores cost one instruction per weight and activation row: at
// M = 8-16 they alone take longer than dense bf16 takes to read its 2-byte weight. An m16n8k16 mma
// multiplies 16 weight rows x 16 columns by 8 activation rows in one warp instruction; at M = 1 seven of
// its eight columns are padding, which the tensor cores can afford (they are otherwise idle).
//
// Work split: a block owns a row group (16 weight rows) at a time and walks the block's row groups
// (grid.x about as many blocks as fit at once, so x is staged once per block); its warps split the
// group's K chunk into contiguous ranges of 64-column steps and their float32 partial sums are added
// through shared memory at the end of the group (two buffers, one __syncthreads per group).
//
// A step, per lane (g = lane / 4, t = lane % 4): one 16-byte load of weight row g and one of row g + 8,
// columns 16t..16t+15 of the step (a warp-wide load is 8 rows x 64 contiguous bytes); the lane issues
// the loads of kBatch = 4 steps (8 x 16 bytes, 4 KB per warp) before using the first, and the first
// batch of the next row group before the group's reduction barrier. The k order inside a step is
// permuted so that no data moves between lanes: mma j (0..3) takes, as its k = 2t, 2t+1 | 2t+8, 2t+9,
// the columns 16t+4j, 16t+4j+1 | 16t+4j+2, 16t+4j+3, i.e. bytes 4j..4j+3 of the lane's own 16 bytes for
// A (converted exactly to float16 / bfloat16 pairs) and the same four columns of x row g for B: one
// 32-byte read of the row-major x tile in shared memory per step and 8-row tile of activations.
//
// K split: when K columns of x do not fit in shared memory (M = 16 from about K = 5700), grid.y cuts K
// into chunks and finish_kernel adds the float32 partial sums with the bias (decode_common.cuh).
#include "cuda/int8_wo_kernel.cuh"

#include "cuda/decode_common.cuh"
#include "cuda/mma_sync.cuh"

namespace sparsekit {
namespace cuda {
namespace {

using namespace decode;

constexpr int kStepCols = 64;  // weight columns per step (16 per lane of a quad)
constexpr int kGroupRows = 16;  // weight rows per row group (the mma's M)
constexpr int kBatch = 4;       // steps whose loads a lane has in flight before the first is used

// The x tile: rows [0, MT) of the chunk, row-major, 2-byte elements, each row's bytes rounded up to a
// multiple of 128 plus 16: the 8 lanes of a quarter warp reading rows g and g + 1 at the same columns
// then hit different banks.
template <int MT>
struct RowTile {
  __host__ __device__ static constexpr size_t ld(int64_t cols) {
    return round_up<size_t>(static_cast<size_t>(round_up<int64_t>(cols, kStepCols)) * 2, 128) + 16;
  }
  __host__ __device__ static constexpr size_t bytes(int64_t cols) { return MT * ld(cols); }
};

template <int MT>
constexpr size_t red_bytes_per_warp() {  // two buffers of MT x 16 float32 partial sums
  return 2 * static_cast<size_t>(MT) * kGroupRows * sizeof(float);
}

size_t rowtile_bytes(int mt, int64_t cols) {
  switch (mt) {
    case 1: return RowTile<1>::bytes(cols);
    case 2: return RowTile<2>::bytes(cols);
    case 4: return RowTile<4>::bytes(cols);
    case 8: return RowTile<8>::bytes(cols);
    default: return RowTile<16>::bytes(cols);
  }
}

struct WoParams {
  int64_t M = 0, N = 0, K = 0;
  int64_t m_begin = 0;  // first activation row of this launch (grid.z tiles of MT rows from here)
  int64_t Kc = 0;       // columns per split (grid.y)
  const int8_t* w = nullptr;
  const float* scale = nullptr;
  const void* x = nullptr;
  int64_t ldx = 0;
  Output out;
};

// The loads of steps [s0, s0 + kBatch) (chunk-relative, < s_end) of weight rows r0 + g and r0 + g + 8:
// zero where the row is past N or the step past the lane's range; without kVec (K % 16 != 0 or an
// unaligned weight) byte by byte, columns past the chunk zero.
template <bool kVec>
__device__ __forceinline__ void load_batch(const int8_t* w, int64_t N, int64_t K, int64_t k0, int kc, int64_t r0,
                                           int s0, int s_end, int g, int t, uint4 (&v)[kBatch][2]) {
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const int c = (s0 + u) * kStepCols + 16 * t;  // chunk-relative column of the lane's 16 bytes
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + g + 8 * h;
      v[u][h] = make_uint4(0u, 0u, 0u, 0u);
      if (s0 + u < s_end && r < N && c < kc) {
        const int8_t* src = w + r * K + k0 + c;
        if constexpr (kVec) {
          v[u][h] = __ldg(reinterpret_cast<const uint4*>(src));  // c < kc implies c + 16 <= kc (K % 16 == 0)
        } else {  // a rolled loop: this path is the rare one, its code small
          uint64_t lo = 0, hi = 0;
          const int n = imin(16, kc - c);
#pragma unroll 1
          for (int e = 0; e < n; ++e) {
            const uint64_t byte = static_cast<uint8_t>(__ldg(src + e));
            if (e < 8) {
              lo |= byte << (8 * e);
            } else {
              hi |= byte << (8 * (e - 8));
            }
          }
          v[u][h] = make_uint4(static_cast<uint32_t>(lo), static_cast<uint32_t>(lo >> 32), static_cast<uint32_t>(hi),
                               static_cast<uint32_t>(hi >> 32));
        }
      }
    }
  }
}

template <typename P>
__device__ __forceinline__ P as_pair(uint32_t bits) {
  P p;
  memcpy(&p, &bits, 4);
  return p;
}
template <typename P>
__device__ __forceinline__ uint32_t pair_bits(P p) {
  uint32_t bits;
  memcpy(&bits, &p, 4);
  return bits;
}

// Four int8 (a little-endian word) as two pairs of T, exactly: bytes 0, 1 -> lo, bytes 2, 3 -> hi (every
// integer of [-128, 127] is a float16 and a bfloat16). One byte permute and one paired subtraction per pair:
//  float16:  0x64XX is 1024 + XX; with XX = byte + 128 (the byte xor 0x80), subtract 1152;
//  bfloat16: 0x43XX is 128 + (XX & 127) when bit 7 of XX is clear; with XX = the byte, (0x4300 | low 7 bits)
//            minus (0x4300 | bit 7), i.e. minus 128 or 256, is the byte (two's complement).
template <typename T>
__device__ __forceinline__ void int8x4_to_pairs(uint32_t w, uint32_t& lo, uint32_t& hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const uint32_t u = w ^ 0x80808080u;
    const __half2 k1152 = as_pair<__half2>(0x64806480u);
    lo = pair_bits(__hsub2(as_pair<__half2>(__byte_perm(u, 0x64u, 0x4140u)), k1152));
    hi = pair_bits(__hsub2(as_pair<__half2>(__byte_perm(u, 0x64u, 0x4342u)), k1152));
  } else {
    const uint32_t pl = __byte_perm(w, 0x43u, 0x4140u), ph = __byte_perm(w, 0x43u, 0x4342u);
    lo = pair_bits(__hsub2(as_pair<__nv_bfloat162>(pl & 0xff7fff7fu), as_pair<__nv_bfloat162>(pl & 0xff80ff80u)));
    hi = pair_bits(__hsub2(as_pair<__nv_bfloat162>(ph & 0xff7fff7fu), as_pair<__nv_bfloat162>(ph & 0xff80ff80u)));
  }
}

template <typename T, int MT, bool kVec>
__global__ void __launch_bounds__(kMaxThreads, 1) int8_wo_decode_kernel(const WoParams p) {
  constexpr int NT = MT > 8 ? 2 : 1;  // mma n-tiles of 8 activation rows
  extern __shared__ __align__(16) unsigned char smem[];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int splits = gridDim.y;
  const int split = blockIdx.y;
  const int64_t k0 = split * p.Kc;
  const int kc = static_cast<int>(imin<int64_t>(p.Kc, p.K - k0));  // columns of this chunk
  const int steps = ceil_div(kc, kStepCols);
  const int per_warp = ceil_div(steps, nwarps);
  const int s_begin = imin(warp * per_warp, steps);
  const int s_end = imin(s_begin + per_warp, steps);
  const int64_t m0 = p.m_begin + static_cast<int64_t>(blockIdx.z) * MT;
  const int mrows = static_cast<int>(imin<int64_t>(MT, p.M - m0));
  const int64_t groups = ceil_div<int64_t>(p.N, kGroupRows);

  const size_t ld = RowTile<MT>::ld(p.Kc);
  unsigned char* xs = smem;
  float* red = reinterpret_cast<float*>(smem + RowTile<MT>::bytes(p.Kc));

  int64_t grp = blockIdx.x;
  uint4 v[kBatch][2];
  bool preloaded = false;
  if (grp < groups && s_begin < s_end) {  // in flight while x is staged
    load_batch<kVec>(p.w, p.N, p.K, k0, kc, grp * kGroupRows, s_begin, s_end, g, t, v);
    preloaded = true;
  }

  {  // stage x rows [m0, m0 + mrows), columns [k0, k0 + kc); zero up to MT rows and whole steps
    const Bits<T>* xb = reinterpret_cast<const Bits<T>*>(p.x) + m0 * p.ldx + k0;
    const int cols = steps * kStepCols;
    for (int i = threadIdx.x; i < MT * cols; i += blockDim.x) {
      const int m = i / cols, c = i - m * cols;
      *reinterpret_cast<uint16_t*>(xs + m * ld + 2 * c) =
          (m < mrows && c < kc) ? static_cast<uint16_t>(xb[m * p.ldx + c]) : static_cast<uint16_t>(0);
    }
  }
  __syncthreads();

  for (int buf = 0; grp < groups; grp += gridDim.x, buf ^= 1) {
    const int64_t r0 = grp * kGroupRows;
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;

    for (int s0 = s_begin; s0 < s_end; s0 += kBatch) {
      if (!preloaded) load_batch<kVec>(p.w, p.N, p.K, k0, kc, r0, s0, s_end, g, t, v);
      preloaded = false;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (s0 + u < s_end) {
          uint32_t xw[NT][8];
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const int row = 8 * nt + g;
            uint4 q0 = make_uint4(0u, 0u, 0u, 0u), q1 = q0;
            if (row < MT) {
              const uint4* xp = reinterpret_cast<const uint4*>(xs + row * ld + 2 * ((s0 + u) * kStepCols + 16 * t));
              q0 = xp[0];
              q1 = xp[1];
            }
            xw[nt][0] = q0.x; xw[nt][1] = q0.y; xw[nt][2] = q0.z; xw[nt][3] = q0.w;
            xw[nt][4] = q1.x; xw[nt][5] = q1.y; xw[nt][6] = q1.z; xw[nt][7] = q1.w;
          }
          uint32_t wr[2][4];
          split_uint4(v[u][0], wr[0]);
          split_uint4(v[u][1], wr[1]);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            uint32_t a[4];
            int8x4_to_pairs<T>(wr[0][j], a[0], a[2]);
            int8x4_to_pairs<T>(wr[1][j], a[1], a[3]);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              const uint32_t b[2] = {xw[nt][2 * j], xw[nt][2 * j + 1]};
              mma_16816<T>(acc[nt], a, b);
            }
          }
        }
      }
    }

    // the next group's first batch goes out before the reduction waits
    if (grp + gridDim.x < groups && s_begin < s_end) {
      load_batch<kVec>(p.w, p.N, p.K, k0, kc, (grp + gridDim.x) * kGroupRows, s_begin, s_end, g, t, v);
      preloaded = true;
    }

    // partial sums [warp][activation row][weight row]; buffer buf, so the next group's writes (to the
    // other buffer) need no second barrier
    float* mine = red + (static_cast<size_t>(buf) * nwarps + warp) * MT * kGroupRows;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int m = 8 * nt + 2 * t + e;
        if (m < MT) {
          mine[m * kGroupRows + g] = acc[nt][e];
          mine[m * kGroupRows + g + 8] = acc[nt][2 + e];
        }
      }
    __syncthreads();
    const float* all = red + static_cast<size_t>(buf) * nwarps * MT * kGroupRows;
    for (int i = threadIdx.x; i < MT * kGroupRows; i += blockDim.x) {
      const int m = i / kGroupRows, row = i - m * kGroupRows;
      const int64_t n = r0 + row;
      if (m < mrows && n < p.N) {
        float s = 0.f;
        for (int w = 0; w < nwarps; ++w) s += all[static_cast<size_t>(w) * MT * kGroupRows + i];
        write_out<T>(p.out, splits, split, m0 + m, n, s * p.scale[n]);
      }
    }
  }
}

struct Int8WoDecode {
  using Launch = Int8WoMmLaunch;

  static bool valid(const Launch& a) { return a.dtype != DType::f32; }

  template <typename T>
  static cudaError_t make_plan(const Launch& a, const DevInfo& d, Plan* plan) {
    if constexpr (sizeof(T) != 2) {
      return cudaErrorInvalidValue;
    } else {
      if (d.cc_major < 8) return cudaErrorInvalidDeviceFunction;
      Plan p;
      const int mt_max = tile_m_for(a.M);
      p.ch = choose_chunking(a.K, kStepCols, 2 * static_cast<size_t>(mt_max) * kGroupRows * sizeof(float), d,
                             [&](int64_t cols) { return rowtile_bytes(mt_max, cols); });
      p.vec = a.K % 16 == 0 && reinterpret_cast<uintptr_t>(a.w_q) % 16 == 0;
      plan_workspace(&p, a.M, a.N);
      *plan = p;
      return cudaSuccess;
    }
  }

  template <typename T, int MT, bool kVec>
  static cudaError_t launch_tiles(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                                  int64_t m_begin, int64_t tiles, cudaStream_t stream) {
    if constexpr (sizeof(T) != 2) {
      return cudaErrorInvalidValue;
    } else {
      const auto kernel = int8_wo_decode_kernel<T, MT, kVec>;
      const size_t smem = RowTile<MT>::bytes(plan.ch.Kc) +
                          static_cast<size_t>(plan.ch.threads / 32) * red_bytes_per_warp<MT>();
      WoParams p;
      p.M = a.M; p.N = a.N; p.K = a.K;
      p.Kc = plan.ch.Kc;
      p.w = a.w_q; p.scale = a.w_scale; p.x = a.x; p.ldx = a.ldx;
      p.out = out;
      // a block works on one row group at a time: no more blocks than groups
      const int64_t groups = ceil_div<int64_t>(a.N, kGroupRows);
      return launch_decode_grid<MT>(kernel, p, plan, d, smem, groups * (plan.ch.threads / 32), m_begin, tiles,
                                    stream);
    }
  }
};

}  // namespace

size_t int8_wo_mm_workspace_bytes(const Int8WoMmLaunch& a, cudaError_t* err) {
  return Driver<Int8WoDecode>::workspace_bytes(a, err);
}

cudaError_t int8_wo_mm(const Int8WoMmLaunch& a, void* workspace, cudaStream_t stream) {
  return Driver<Int8WoDecode>::run(a, workspace, stream);
}

}  // namespace cuda
}  // namespace sparsekit
