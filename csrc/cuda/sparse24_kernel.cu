// 2:4 x dense for small M, built to stream the weight at memory bandwidth.
//
// Two kernels: float16 / bfloat16 on sm_80+ from M = 2 run the tensor-core decode kernel of mma_decode.cuh
// (S24Rows: each group expanded into dense mma fragments); M = 1 and float32 run the FMA kernel below.
// SPARSEKIT_CUDA_DECODE=v1 keeps the FMA kernel at every M, v3 takes the tensor cores at M = 1 too.
//
// Work split: a warp owns one output column n (a weight row) at a time and walks it; the block's
// warps share an x tile (MT activation rows x a chunk of K columns) staged once in shared memory,
// transposed so that one column's MT values are one to four vector loads. Blocks are persistent-ish:
// the grid holds about as many blocks as fit on the GPU at once and each warp strides over the rows,
// so x is staged once per block, not once per row.
//
// Fast path (K % 128 == 0 and 16-byte aligned buffers): per tile a lane issues kU = 8 independent
// 16-byte loads of values (8 fp16/bf16 or 4 fp32 values each, consecutive lanes on consecutive 16
// bytes: fully coalesced) and one 16-byte load of the tile's metadata (the tile's 512 or 256 meta bytes
// read by 32 or 16 lanes), then waits. The metadata goes through a per-warp shared buffer so that each
// lane reads the 2 bytes (fp16) or 1 byte (fp32) of its own value vector. Each value is expanded in
// registers: its column is 4g + ((meta >> 4g' + 2e) & 3), its MT activations one shared load; fp32
// FMAs. At the end the warp reduce-scatters its MT sums (31 shuffles for MT = 16) and one lane per
// activation row writes y (or the split-K partial). No atomics.
// General path (any K % 4 == 0, any alignment): one group of four columns per lane step, scalar loads.
//
// K split: when K columns of x do not fit in shared memory, grid.y cuts K into chunks; each block
// writes float32 partial sums to the workspace and finish_kernel adds them (in a fixed order) with the
// bias. M > 16 is cut into tiles of 16 (grid.z) and one smaller tile for the rest (a second launch).
#include "cuda/sparse24_kernel.cuh"

#include "cuda/decode_common.cuh"
#include "cuda/mma_decode.cuh"

namespace sparsekit {
namespace cuda {
namespace {

using namespace decode;

constexpr int kU = 8;              // 16-byte value vectors in flight per lane per tile
constexpr int64_t kChunkAlign = 128;  // K chunks are whole 16-byte runs of metadata (128 columns)

template <typename T>
struct S24 {
  static constexpr int kVecVals = 16 / static_cast<int>(sizeof(T));  // values per 16-byte vector: 8 or 4
  static constexpr int kSpan = 2 * kVecVals;                         // columns per vector: 16 or 8
  static constexpr int kMetaBytes = kSpan / 8;                       // meta bytes per vector: 2 or 1
  static constexpr int kTileVecs = 32 * kU;                          // vectors per warp tile
  static constexpr int kMetaStage = kTileVecs * kMetaBytes;          // meta bytes per tile: 512 or 256
  static constexpr int kMetaLanes = kMetaStage / 16;                 // lanes loading them: 32 or 16
};

struct S24Params {
  int64_t M = 0, N = 0, K = 0;
  bool refill = true;   // the plan's (stream_refill()): the next tile is issued before the current is consumed
  int64_t m_begin = 0;  // first activation row of this launch (grid.z tiles of MT rows from here)
  int64_t Kc = 0;       // columns per split (grid.y)
  const void* values = nullptr;
  const uint8_t* meta = nullptr;
  const void* x = nullptr;
  int64_t ldx = 0;
  Output out;
};

// A tile's registers in a lane: its kU value vectors and its 16 bytes of the tile's metadata.
struct S24TileRegs {
  uint4 v[kU];
  uint4 meta;
};

// The kU value vectors [t0 + 32u + lane] of a row (zero past cv1) and the lane's 16 bytes of the tile's meta.
template <typename T>
__device__ __forceinline__ void load_tile(const T* values, const uint8_t* meta, int64_t half_k, int64_t meta_ld,
                                          int64_t row, int64_t t0, int64_t cv1, int lane, S24TileRegs& t) {
  using C = S24<T>;
  const uint4* vrow = reinterpret_cast<const uint4*>(values + row * half_k);
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const int64_t vi = t0 + u * 32 + lane;
    t.v[u] = vi < cv1 ? __ldg(vrow + vi) : make_uint4(0u, 0u, 0u, 0u);
  }
  const int64_t mb = t0 * C::kMetaBytes + lane * 16;
  t.meta = make_uint4(0u, 0u, 0u, 0u);
  if (lane < C::kMetaLanes && mb < cv1 * C::kMetaBytes)
    t.meta = __ldg(reinterpret_cast<const uint4*>(meta + row * meta_ld + mb));
}

template <typename T, int MT, bool kVec>
__global__ void __launch_bounds__(kMaxThreads, 1) sparse24_decode_kernel(const S24Params p) {
  using C = S24<T>;
  using Tile = XTile<T, MT, C::kSpan>;
  extern __shared__ __align__(16) unsigned char smem[];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int splits = gridDim.y;
  const int split = blockIdx.y;
  const int64_t k0 = split * p.Kc;
  const int kc = static_cast<int>(imin<int64_t>(p.Kc, p.K - k0));  // columns of this chunk (% 4 == 0)
  const int64_t m0 = p.m_begin + static_cast<int64_t>(blockIdx.z) * MT;
  const int mrows = static_cast<int>(imin<int64_t>(MT, p.M - m0));
  const int64_t half_k = p.K / 2;
  const int64_t meta_ld = (p.K + 7) / 8;

  unsigned char* xs = smem;
  unsigned char* wmeta = smem + Tile::bytes(p.Kc) + warp * C::kMetaStage;
  const T* values = static_cast<const T*>(p.values);

  int64_t n = static_cast<int64_t>(blockIdx.x) * nwarps + warp;
  const int64_t n_stride = static_cast<int64_t>(gridDim.x) * nwarps;

  // Fast path: vectors [cv0, cv1) of each row belong to this chunk. The tiles of the warp's rows are one stream
  // ((n, cv0), (n, cv0 + 256), ..., (n + n_stride, cv0), ...): the next tile's loads are issued before the current
  // one is consumed, so a warp always has a tile in flight (the first before x is staged).
  const int64_t cv0 = k0 / C::kSpan;
  const int64_t cv1 = (k0 + kc) / C::kSpan;
  // (float32 from MT = 8 loads each tile when its turn comes: a second tile's registers would spill there; so
  // does every instance under SPARSEKIT_CUDA_REFILL=0)
  constexpr bool kPrefetch = sizeof(T) == 2 || MT <= 4;
  const bool prefetch = kPrefetch && p.refill;
  S24TileRegs cur;
  bool preloaded = false;
  if constexpr (kVec) {
    if (n < p.N && cv0 < cv1) {
      load_tile<T>(values, p.meta, half_k, meta_ld, n, cv0, cv1, lane, cur);
      preloaded = true;
    }
  }

  Tile::stage(xs, static_cast<const T*>(p.x) + m0 * p.ldx, p.ldx, mrows, k0, kc, static_cast<int>(round_up<int64_t>(kc, C::kSpan)));
  __syncthreads();

  for (; n < p.N; n += n_stride) {
    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.f;

    if constexpr (kVec) {
      for (int64_t t0 = cv0; t0 < cv1; t0 += C::kTileVecs) {
        // the next tile: the row's next, else the next row's first
        const bool row_ends = t0 + C::kTileVecs >= cv1;
        const int64_t n2 = row_ends ? n + n_stride : n;
        S24TileRegs nxt;
        if (prefetch) {
          const int64_t t2 = row_ends ? cv0 : t0 + C::kTileVecs;
          if (n2 < p.N) load_tile<T>(values, p.meta, half_k, meta_ld, n2, t2, cv1, lane, nxt);
        } else {
          if (!preloaded) load_tile<T>(values, p.meta, half_k, meta_ld, n, t0, cv1, lane, cur);
          preloaded = false;
        }
        __syncwarp();  // the previous tile's reads of wmeta are done
        if (lane < C::kMetaLanes) *reinterpret_cast<uint4*>(wmeta + lane * 16) = cur.meta;
        __syncwarp();
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int64_t vi = t0 + u * 32 + lane;
          if (vi < cv1) {
            const int slot = u * 32 + lane;
            const unsigned mm = C::kMetaBytes == 2 ? *reinterpret_cast<const uint16_t*>(wmeta + 2 * slot)
                                                   : static_cast<unsigned>(wmeta[slot]);
            uint32_t w4[4];
            split_uint4(cur.v[u], w4);
            float w[C::kVecVals];
            words_to_float<T, 4>(w4, w);
            const unsigned char* span = xs + static_cast<int>(vi - cv0) * Tile::kSpanBytes;
#pragma unroll
            for (int e = 0; e < C::kVecVals; ++e) {
              const int g = e >> 1;
              const unsigned pos = (mm >> (4 * g + 2 * (e & 1))) & 3u;
              float xv[MT];
              Tile::load_at(span + (4 * g + pos) * Tile::kColBytes, xv);
#pragma unroll
              for (int m = 0; m < MT; ++m) acc[m] = fmaf(w[e], xv[m], acc[m]);
            }
          }
        }
        if (prefetch) cur = nxt;  // (unset only past the warp's last row: the loops end)
      }
    } else {
      const T* vrow = values + n * half_k;
      const uint8_t* mrow = p.meta + n * meta_ld;
      const int64_t g0 = k0 / 4, g1 = (k0 + kc) / 4;
#pragma unroll 4
      for (int64_t g = g0 + lane; g < g1; g += 32) {
        const float v0 = to_f(vrow[2 * g]);
        const float v1 = to_f(vrow[2 * g + 1]);
        const unsigned mb = mrow[g >> 1];
        const unsigned nib = (g & 1) ? (mb >> 4) : (mb & 15u);
        const unsigned c = static_cast<unsigned>(4 * (g - g0));
        float xa[MT], xb[MT];
        Tile::load(xs, c + (nib & 3u), xa);
        Tile::load(xs, c + ((nib >> 2) & 3u), xb);
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[m] = fmaf(v1, xb[m], fmaf(v0, xa[m], acc[m]));
      }
    }

    const float r = warp_reduce_scatter<MT>(acc, lane);
    const int m = reduce_scatter_row<MT>(lane);
    if (reduce_scatter_writer<MT>(lane) && m < mrows) write_out<T>(p.out, splits, split, m0 + m, n, r);
  }
}

struct Sparse24Decode : FloatFinish {
  using Launch = Sparse24MmLaunch;
  static constexpr bool kWideTile = true;  // the tensor-core kernel: M > 16 in tiles of 32 (mma::tile_rows_for)

  static bool valid(const Launch& a) { return a.K % 4 == 0; }

  // The tensor-core kernel (mma_decode.cuh, S24Rows) for float16 / bfloat16 on sm_80+ from M = 2 (every M
  // with SPARSEKIT_CUDA_DECODE=v3; never with v1): at M >= 2 the FMA kernel below costs an FMA per kept
  // weight and activation row. Its 16-byte path needs K % 16 == 0, 16-byte aligned values and 2-byte
  // aligned metadata.
  template <typename T>
  static bool use_mma(const Launch& a, const DevInfo& d) {
    if constexpr (sizeof(T) != 2) {
      return false;
    } else {
      const int v = decode_variant();
      return d.cc_major >= 8 && (v == 3 || (v == 2 && a.M >= 2));
    }
  }

  template <typename T>
  static cudaError_t make_plan(const Launch& a, const DevInfo& d, Plan* plan) {
    Plan p;
    if (use_mma<T>(a, d)) {
      p.variant = 3;
      mma::plan_chunks<mma::S24Rows, mma::HalfX<T>>(&p, a.M, a.K, d);
      p.vec = a.K % 16 == 0 && reinterpret_cast<uintptr_t>(a.values) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(a.meta) % 2 == 0;
      plan_workspace(&p, a.M, a.N);
      *plan = p;
      return cudaSuccess;
    }
    // The largest M tile used sizes the chunks (the smaller launch reuses the same chunks).
    const int mt_max = tile_m_for(a.M);
    p.ch = choose_chunking(a.K, kChunkAlign, S24<T>::kMetaStage, d,
                           [&](int64_t cols) { return xtile_bytes<T, S24<T>::kSpan>(mt_max, cols); });
    const bool aligned = reinterpret_cast<uintptr_t>(a.values) % 16 == 0 && reinterpret_cast<uintptr_t>(a.meta) % 16 == 0;
    p.vec = a.K % 128 == 0 && aligned;
    plan_workspace(&p, a.M, a.N);
    *plan = p;
    return cudaSuccess;
  }

  template <typename T, int MT, bool kVec>
  static cudaError_t launch_tiles(const Launch& a, const Plan& plan, const DevInfo& d, const Output& out,
                                  int64_t m_begin, int64_t tiles, cudaStream_t stream) {
    if constexpr (sizeof(T) == 2) {
      if (plan.variant == 3) {
        mma::Params p;
        p.M = a.M; p.N = a.N; p.K = a.K;
        p.w = a.values; p.meta = a.meta; p.x = a.x; p.ldx = a.ldx;
        p.out = out;
        return mma::launch<mma::S24Rows, mma::HalfX<T>, MT, kVec>(p, plan, d, m_begin, tiles, stream);
      }
    }
    if constexpr (MT > 16) {  // wide tiles are the tensor-core kernel's only
      return cudaErrorInvalidValue;
    } else {
      const auto kernel = sparse24_decode_kernel<T, MT, kVec>;
      const size_t smem = XTile<T, MT, S24<T>::kSpan>::bytes(plan.ch.Kc) +
                          static_cast<size_t>(plan.ch.threads / 32) * S24<T>::kMetaStage;
      S24Params p;
      p.M = a.M; p.N = a.N; p.K = a.K;
      p.Kc = plan.ch.Kc;
      p.refill = plan.refill;
      p.values = a.values; p.meta = a.meta; p.x = a.x; p.ldx = a.ldx;
      p.out = out;
      return launch_decode_grid<MT>(kernel, p, plan, d, smem, a.N, m_begin, tiles, stream);
    }
  }
};

}  // namespace

size_t sparse24_mm_workspace_bytes(const Sparse24MmLaunch& a, cudaError_t* err) {
  return Driver<Sparse24Decode>::workspace_bytes(a, err);
}

cudaError_t sparse24_mm(const Sparse24MmLaunch& a, void* workspace, cudaStream_t stream) {
  return Driver<Sparse24Decode>::run(a, workspace, stream);
}

}  // namespace cuda
}  // namespace sparsekit
