// Bitmap x dense for small M: one warp per weight row at a time, x staged once per block in shared
// memory (the same transposed tile as the 2:4 kernel), float32 accumulation, no atomics.
//
// A row is walked in tiles of 32 bitmap words (1024 columns), one word per lane (coalesced 4-byte loads,
// the next tile's word prefetched). The kept values of a tile are one contiguous run of `values`; its
// start is the row's word_offsets entry at the chunk start plus the running count, so word_offsets is
// read once per row (not once per word): a warp inclusive scan of the words' popcounts gives each
// word's place in the run. The run is read with 16-byte loads (8 fp16/bf16 or 4 fp32 values per lane,
// the load window aligned down to 16 bytes; the few values of neighbouring tiles it covers are masked
// off) issued right after the scan; while they are in flight each lane writes the tile-relative
// columns of its word's kept values into a per-warp shared list at their place in the run (a compaction,
// so that lanes then share the kept values evenly whatever the density). Each lane then takes a 16-byte
// chunk of values and the matching 8 or 4 list entries (one shared vector load) and does the FMAs with
// the x columns from the tile. Warp reduce-scatter and split-K as in sparse24_kernel.cu.
//
// SPARSEKIT_CUDA_DECODE=v3 (float16 / bfloat16 on sm_80+, every M) runs the tensor-core decode kernel instead
// (mma_decode.cuh, BitmapRows: a row's run of a step staged in shared memory by its quad, each lane expanding
// its 16 columns into m16n8k16 A fragments): opt-in until a GPU run says from which M it is the faster one.
#include "cuda/bitmap_kernel.cuh"

#include "cuda/decode_common.cuh"
#include "cuda/mma_decode.cuh"

namespace sparsekit {
namespace cuda {
namespace {

using namespace decode;

constexpr int kSpan = 32;             // x tile span: one bitmap word
constexpr int64_t kChunkAlign = 32;   // K chunks are whole words
constexpr int kTileCols = 1024;       // a warp tile: 32 words
constexpr int kPre = 4;               // value chunks per lane loaded before the list is built (v1)
constexpr int kListLen = kTileCols + 16;  // + the alignment shift (< 8) and the last chunk's round-up
constexpr int kListBytes = kListLen * 2;
// After the x tile, one zero column per block: what a chunk's entries outside its tile's run read instead of
// x (as wide as the widest column, float32 at MT = 16), so that they add exactly nothing without a branch.
// The per-warp buffers follow it.
constexpr int kZeroBytes = 64;
static_assert(kListBytes % 16 == 0 && kZeroBytes % 16 == 0, "the zero column and what follows are 16-byte aligned");

// A list entry: the tile-relative column c of a kept value as its x tile byte offset from the tile's base (what
// the consumer adds to the base: no per-value address arithmetic), halved where the tile is too wide for 16 bits
// (float32 at MT = 16 spans 66 KB).
template <typename T, int MT>
struct ListEntry {
  using Tile = XTile<T, MT, kSpan>;
  static constexpr unsigned kMax = (kTileCols / kSpan - 1) * Tile::kSpanBytes + (kSpan - 1) * Tile::kColBytes;
  static constexpr int kShift = kMax < 65536 ? 0 : 1;
  static_assert(Tile::kSpanBytes % 2 == 0 && Tile::kColBytes % 2 == 0, "x tile offsets are even");
  static_assert((kMax >> kShift) < 65536, "a tile's entries fit 16 bits");
  // Entry of bit b of lane `lane`'s word (column 32 * lane + b of the tile).
  __device__ __forceinline__ static unsigned lane_base(int lane) {
    return static_cast<unsigned>(lane) * static_cast<unsigned>(Tile::kSpanBytes >> kShift);
  }
  __device__ __forceinline__ static uint16_t of(unsigned base, int b) {
    return static_cast<uint16_t>(base + static_cast<unsigned>(b) * static_cast<unsigned>(Tile::kColBytes >> kShift));
  }
};

// Zeroes the block's zero column (before the block's first __syncthreads).
__device__ __forceinline__ void zero_column(unsigned char* zero) {
  if (threadIdx.x < kZeroBytes / 4) reinterpret_cast<uint32_t*>(zero)[threadIdx.x] = 0u;
}
struct BmParams {
  int64_t M = 0, N = 0, K = 0;
  int64_t m_begin = 0;
  int64_t Kc = 0;
  const int32_t* bitmap = nullptr;
  const int32_t* word_offsets = nullptr;
  const void* values = nullptr;
  int64_t nnz = 0;
  const void* x = nullptr;
  int64_t ldx = 0;
  Output out;
};

// FMAs of one 16-byte chunk q of the tile's run: entries j = q * kV + r in [shift, shift + total) are
// the run's; list[j] locates their x column from the tile's base (ListEntry). kBranchFree: an entry outside the
// run takes the value -0.0 and reads the zero column, and -0.0 * 0 added to any sum leaves it as it was (bits
// and sign included), so the chunk's shared loads can all be in flight at once; else a branch skips it. Branch-
// free costs registers (kV entries' MT values of x in flight): v2 (128 registers, 16 warps per SM) takes it up to
// MT = 4, v1 (32 warps per SM at 64 registers) up to MT = 2; at MT >= 8 the FMAs outweigh the branch and the
// loads in flight would not fit (a spill at MT = 16).
template <typename T, int MT, bool kBranchFree>
__device__ __forceinline__ void consume_chunk(const uint4& chunk, int q, const uint16_t* list, int shift, int total,
                                              const unsigned char* tile, const unsigned char* zero,
                                              float (&acc)[MT]) {
  using Tile = XTile<T, MT, kSpan>;
  constexpr int kV = 16 / static_cast<int>(sizeof(T));
  uint32_t w4[4];
  split_uint4(chunk, w4);
  float vals[kV];
  words_to_float<T, 4>(w4, vals);
  uint32_t cw[kV / 2];
  if constexpr (kV == 8) {
    const uint4 c = *reinterpret_cast<const uint4*>(list + q * kV);
    cw[0] = c.x; cw[1] = c.y; cw[2] = c.z; cw[3] = c.w;
  } else {
    const uint2 c = *reinterpret_cast<const uint2*>(list + q * kV);
    cw[0] = c.x; cw[1] = c.y;
  }
  // entries r in [a, b) are the run's: j = q * kV + r in [shift, shift + total)
  const int a = imax(shift - q * kV, 0);
  const int b = imin(shift + total - q * kV, kV);
  const uint32_t in_run = b > a ? ((1u << b) - 1u) & ~((1u << a) - 1u) : 0u;
#pragma unroll
  for (int r = 0; r < kV; ++r) {
    const bool in = (in_run & (1u << r)) != 0u;
    const unsigned e = (cw[r >> 1] >> (16 * (r & 1))) & 0xffffu;
    if constexpr (!kBranchFree) {
      if (in) {
        float xv[MT];
        Tile::load_at(tile + (e << ListEntry<T, MT>::kShift), xv);
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[m] = fmaf(vals[r], xv[m], acc[m]);
      }
    } else {
      float xv[MT];
      Tile::load_at(in ? tile + (e << ListEntry<T, MT>::kShift) : zero, xv);
      const float v = in ? vals[r] : -0.0f;
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[m] = fmaf(v, xv[m], acc[m]);
    }
  }
}

template <typename T, int MT, bool kVecLoads>
__global__ void __launch_bounds__(kMaxThreads, 1) bitmap_decode_kernel(const BmParams p) {
  using Tile = XTile<T, MT, kSpan>;
  constexpr int kV = 16 / static_cast<int>(sizeof(T));  // values per 16-byte chunk
  constexpr bool kV1BranchFree = MT <= 2;
  extern __shared__ __align__(16) unsigned char smem[];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int splits = gridDim.y;
  const int split = blockIdx.y;
  const int64_t k0 = split * p.Kc;
  const int kc = static_cast<int>(imin<int64_t>(p.Kc, p.K - k0));
  const int64_t m0 = p.m_begin + static_cast<int64_t>(blockIdx.z) * MT;
  const int mrows = static_cast<int>(imin<int64_t>(MT, p.M - m0));
  const int64_t words = (p.K + 31) / 32;
  const int64_t w0 = k0 / 32;
  const int64_t w1 = (k0 + kc + 31) / 32;

  unsigned char* xs = smem;
  unsigned char* zero = smem + Tile::bytes(p.Kc);
  zero_column(zero);
  uint16_t* list = reinterpret_cast<uint16_t*>(zero + kZeroBytes + warp * kListBytes);
  const Bits<T>* vbits = static_cast<const Bits<T>*>(p.values);

  int64_t n = static_cast<int64_t>(blockIdx.x) * nwarps + warp;
  const int64_t n_stride = static_cast<int64_t>(gridDim.x) * nwarps;

  // The first row's first word and offset are loaded before x is staged.
  uint32_t next_word = 0;
  int64_t base = 0;
  if (n < p.N && w0 < w1) {
    next_word = w0 + lane < w1 ? static_cast<uint32_t>(p.bitmap[n * words + w0 + lane]) : 0u;
    base = p.word_offsets[n * words + w0];
  }

  Tile::stage(xs, static_cast<const T*>(p.x) + m0 * p.ldx, p.ldx, mrows, k0, kc,
              static_cast<int>(round_up<int64_t>(kc, kSpan)));
  __syncthreads();

  bool first = true;
  for (; n < p.N; n += n_stride) {
    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.f;
    if (!first && w0 < w1) {
      next_word = w0 + lane < w1 ? static_cast<uint32_t>(p.bitmap[n * words + w0 + lane]) : 0u;
      base = p.word_offsets[n * words + w0];
    }
    first = false;
    const int32_t* brow = p.bitmap + n * words;

    for (int64_t t0 = w0; t0 < w1; t0 += 32) {
      uint32_t word = next_word;
      next_word = t0 + 32 + lane < w1 ? static_cast<uint32_t>(brow[t0 + 32 + lane]) : 0u;

      // The tile's run of values: [base, base + total); this word's part starts at base + excl.
      const int cnt = __popc(word);
      int incl = cnt;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int t = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += t;
      }
      const int total = __shfl_sync(kFullMask, incl, 31);
      const int excl = incl - cnt;
      const int64_t start = base;
      base += total;
      const int64_t aligned = start & ~static_cast<int64_t>(kV - 1);
      const int shift = static_cast<int>(start - aligned);
      const int nq = (shift + total + kV - 1) / kV;  // 16-byte chunks covering the run

      uint4 raw[kPre];
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        const int q = lane + 32 * i;
        raw[i] = q < nq ? load_chunk<T, kVecLoads>(vbits, p.nnz, aligned + static_cast<int64_t>(q) * kV) : make_uint4(0u, 0u, 0u, 0u);
      }

      __syncwarp();  // the previous tile's reads of the list are done
      int pos = shift + excl;
      const unsigned ebase = ListEntry<T, MT>::lane_base(lane);
      while (word) {
        const int b = __ffs(static_cast<int>(word)) - 1;
        list[pos++] = ListEntry<T, MT>::of(ebase, b);
        word &= word - 1;
      }
      __syncwarp();

      const unsigned char* tile = xs + Tile::offset(static_cast<unsigned>((t0 - w0) * 32));
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        const int q = lane + 32 * i;
        if (q < nq) consume_chunk<T, MT, kV1BranchFree>(raw[i], q, list, shift, total, tile, zero, acc);
      }
      for (int q = lane + 32 * kPre; q < nq; q += 32)
        consume_chunk<T, MT, kV1BranchFree>(
            load_chunk<T, kVecLoads>(vbits, p.nnz, aligned + static_cast<int64_t>(q) * kV), q, list, shift, total,
            tile, zero, acc);
    }

    const float r = warp_reduce_scatter<MT>(acc, lane);
    const int m = reduce_scatter_row<MT>(lane);
    if (reduce_scatter_writer<MT>(lane) && m < mrows) write_out<T>(p.out, splits, split, m0 + m, n, r);
  }
}

// ------------------------------------------------------------------------------------ variant 2
// The same tiles, list and FMAs, with more bytes in flight per warp (SPARSEKIT_CUDA_DECODE=v2, the
// default; csrc/cuda/README.md has the model). Variant 1 issues one tile's values, waits, consumes, so a
// warp holds one tile (~200 bytes at 10 % density in bf16) in flight. Here a warp walks the flattened
// sequence of its (row, tile) items in batches of D items, across row ends:
//   1. the bitmap words of the batch's D tiles (and, in lane s, the word_offsets entry of slot s's row
//      when slot s starts a row) were loaded one batch ahead;
//   2. the D scans give each tile's run of values (a running base; word_offsets only at a row start),
//      and the values of all D tiles are issued at once: P 16-byte chunks per lane per tile;
//   3. the next batch's words and row offsets are issued;
//   4. the D tiles are consumed in order (list, FMAs; a row's sum is reduced and written as soon as its
//      last tile is consumed). A tile with more than 32 P chunks loads the rest as it consumes them.
// Registers go to the values in flight: per-slot numbers a lane does not need for itself (run start and
// length) live in lane s and are fetched with a shuffle; each lane's bitmap word and its place in the run
// wait for the list in a per-warp shared buffer (8 bytes per lane and slot), not in registers.
template <int MT, bool kSparse>
struct V2Shape {
  // kSparse (few values per tile): D = 8 tiles of 1 chunk per lane; else D = 4 tiles of 2 chunks
  // (32 registers of values either way).
  static constexpr int P = kSparse ? 1 : 2;
  static constexpr int D = kSparse ? 8 : 4;
  // Shared bytes per warp: the list, then (word, place) per lane for the deepest batch of this shape.
  static constexpr int kWarpBytes = kListBytes + (kSparse ? 8 : 4) * 32 * 8;
};

struct Item {  // a warp's position in its sequence: row n, tile t of the row's K chunk
  int64_t n;
  int t;
};

__device__ __forceinline__ void advance(Item& it, int tiles, int64_t n_stride) {
  if (++it.t == tiles) {
    it.t = 0;
    it.n += n_stride;
  }
}

// The words of the D items from `it` (zero past the row's chunk or past N) and, in lane s, the first
// word offset of slot s's row when slot s is a row's first tile.
template <int D>
__device__ __forceinline__ void load_batch_words(const BmParams& p, Item it, int tiles, int64_t n_stride,
                                                 int64_t words, int64_t w0, int64_t w1, int lane,
                                                 uint32_t (&wd)[D], int32_t& row_off) {
  row_off = 0;
#pragma unroll
  for (int s = 0; s < D; ++s) {
    const int64_t wi = w0 + static_cast<int64_t>(it.t) * 32 + lane;
    wd[s] = (it.n < p.N && wi < w1) ? static_cast<uint32_t>(__ldg(p.bitmap + it.n * words + wi)) : 0u;
    if (lane == s && it.t == 0 && it.n < p.N) row_off = __ldg(p.word_offsets + it.n * words + w0);
    advance(it, tiles, n_stride);
  }
}

template <typename T, int MT, bool kSparse>
__global__ void __launch_bounds__(kMaxThreads, 1) bitmap_decode_v2_kernel(const BmParams p) {
  using Tile = XTile<T, MT, kSpan>;
  constexpr int kV = 16 / static_cast<int>(sizeof(T));
  constexpr int D = V2Shape<MT, kSparse>::D;
  constexpr int P = V2Shape<MT, kSparse>::P;
  constexpr bool kV2BranchFree = MT <= 4;
  extern __shared__ __align__(16) unsigned char smem[];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int splits = gridDim.y;
  const int split = blockIdx.y;
  const int64_t k0 = split * p.Kc;
  const int kc = static_cast<int>(imin<int64_t>(p.Kc, p.K - k0));
  const int64_t m0 = p.m_begin + static_cast<int64_t>(blockIdx.z) * MT;
  const int mrows = static_cast<int>(imin<int64_t>(MT, p.M - m0));
  const int64_t words = (p.K + 31) / 32;
  const int64_t w0 = k0 / 32;
  const int64_t w1 = (k0 + kc + 31) / 32;
  const int tiles = static_cast<int>((w1 - w0 + 31) / 32);  // >= 1: every chunk has columns

  unsigned char* xs = smem;
  unsigned char* zero = smem + Tile::bytes(p.Kc);
  zero_column(zero);
  unsigned char* wsm = zero + kZeroBytes + warp * V2Shape<MT, kSparse>::kWarpBytes;
  uint16_t* list = reinterpret_cast<uint16_t*>(wsm);
  uint2* wordbuf = reinterpret_cast<uint2*>(wsm + kListBytes);  // [slot][lane]: (word, place in the run)
  const Bits<T>* vbits = static_cast<const Bits<T>*>(p.values);
  const int64_t n_stride = static_cast<int64_t>(gridDim.x) * nwarps;

  Item it{static_cast<int64_t>(blockIdx.x) * nwarps + warp, 0};
  uint32_t wd[D];
  int32_t row_off;
  // The first batch's words are loaded before x is staged.
  load_batch_words<D>(p, it, tiles, n_stride, words, w0, w1, lane, wd, row_off);

  Tile::stage(xs, static_cast<const T*>(p.x) + m0 * p.ldx, p.ldx, mrows, k0, kc,
              static_cast<int>(round_up<int64_t>(kc, kSpan)));
  __syncthreads();

  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.f;
  int64_t base = 0;  // where the next tile's run starts in `values`

  while (it.n < p.N) {  // warp-uniform
    uint4 v[D][P];
    int64_t start_l = 0;  // lane s: run start of slot s
    int total_l = 0;      // lane s: run length of slot s
    Item c = it;
#pragma unroll
    for (int s = 0; s < D; ++s) {
      const int cnt = __popc(wd[s]);
      int incl = cnt;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int t = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += t;
      }
      const int total = __shfl_sync(kFullMask, incl, 31);
      // (each lane reads back only its own entries: no barrier)
      wordbuf[s * 32 + lane] = make_uint2(wd[s], static_cast<uint32_t>(incl - cnt));
      const int32_t rb = __shfl_sync(kFullMask, row_off, s);
      if (c.t == 0) base = rb;
      const int64_t start = base;
      base += total;
      if (lane == s) {
        start_l = start;
        total_l = total;
      }
      const int64_t aligned = start & ~static_cast<int64_t>(kV - 1);
      const int shift = static_cast<int>(start - aligned);
      const int nq = c.n < p.N ? (shift + total + kV - 1) / kV : 0;
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const int q = lane + 32 * i;
        v[s][i] = q < nq ? load_chunk<T, true>(vbits, p.nnz, aligned + static_cast<int64_t>(q) * kV)
                         : make_uint4(0u, 0u, 0u, 0u);
      }
      advance(c, tiles, n_stride);
    }

    // The next batch's words, in flight while this batch is consumed.
    load_batch_words<D>(p, c, tiles, n_stride, words, w0, w1, lane, wd, row_off);

    Item e = it;
#pragma unroll
    for (int s = 0; s < D; ++s) {
      if (e.n < p.N) {  // warp-uniform; once past N, every later slot is too
        const int64_t start = __shfl_sync(kFullMask, start_l, s);
        const int total = __shfl_sync(kFullMask, total_l, s);
        const int64_t aligned = start & ~static_cast<int64_t>(kV - 1);
        const int shift = static_cast<int>(start - aligned);
        const int nq = (shift + total + kV - 1) / kV;

        __syncwarp();  // the previous tile's reads of the list are done
        const uint2 wp = wordbuf[s * 32 + lane];
        int pos = shift + static_cast<int>(wp.y);
        const unsigned ebase = ListEntry<T, MT>::lane_base(lane);
        uint32_t word = wp.x;
        while (word) {
          const int b = __ffs(static_cast<int>(word)) - 1;
          list[pos++] = ListEntry<T, MT>::of(ebase, b);
          word &= word - 1;
        }
        __syncwarp();

        const unsigned char* tile = xs + Tile::offset(static_cast<unsigned>(e.t) * static_cast<unsigned>(kTileCols));
#pragma unroll
        for (int i = 0; i < P; ++i) {
          const int q = lane + 32 * i;
          if (q < nq) consume_chunk<T, MT, kV2BranchFree>(v[s][i], q, list, shift, total, tile, zero, acc);
        }
        for (int q = lane + 32 * P; q < nq; q += 32)
          consume_chunk<T, MT, kV2BranchFree>(
              load_chunk<T, true>(vbits, p.nnz, aligned + static_cast<int64_t>(q) * kV), q, list, shift, total, tile,
              zero, acc);

        if (e.t == tiles - 1) {  // the row's last tile: its sum is complete
          const float r = warp_reduce_scatter<MT>(acc, lane);
          const int m = reduce_scatter_row<MT>(lane);
          if (reduce_scatter_writer<MT>(lane) && m < mrows) write_out<T>(p.out, splits, split, m0 + m, e.n, r);
#pragma unroll
          for (int mm = 0; mm < MT; ++mm) acc[mm] = 0.f;
        }
      }
      advance(e, tiles, n_stride);
    }
    it = c;
  }
}

struct BitmapDecode : FloatFinish {
  using Launch = BitmapMmLaunch;

  static bool valid(const Launch& a) { return a.nnz >= 0; }

  template <typename T>
  static cudaError_t make_plan(const Launch& a, const DevInfo& d, Plan* plan) {
    Plan p;
    if constexpr (sizeof(T) == 2) {  // the tensor-core kernel (v3 only, for now)
      if (d.cc_major >= 8 && decode_variant() == 3) {
        p.variant = 3;
        p.ch = mma::chunking<mma::BitmapRows, mma::HalfX<T>>(a.M, a.K, d);
        p.vec = (reinterpret_cast<uintptr_t>(a.values) & 15u) == 0;
        plan_workspace(&p, a.M, a.N);
        // a device whose shared memory cannot hold the per-warp buffers and a chunk: the FMA kernels below
        if (static_cast<int64_t>(p.ch.smem) <= imin<int64_t>(d.smem_optin, d.smem_per_sm - 1024)) {
          *plan = p;
          return cudaSuccess;
        }
        p = Plan();
      }
    }
    const int mt_max = tile_m_for(a.M);
    p.vec = reinterpret_cast<uintptr_t>(a.values) % 16 == 0;
    // Variant 2 has the 16-byte path only; unaligned values run variant 1.
    p.variant = p.vec && decode_variant() != 1 ? 2 : 1;  // (v3 is a 2:4 design: bitmap runs v2)
    // The deep batch (D = 8 tiles of one 16-byte chunk per lane) when an average tile's run fills at most
    // about 60 % of one chunk per lane (density <= 15 % in fp16 / bf16, <= 7.5 % in fp32); else D = 4
    // tiles of two chunks. Either way a denser tile is correct: it loads its other chunks as it goes.
    {
      constexpr double kV = 16.0 / sizeof(T);
      const double cells = static_cast<double>(a.N) * static_cast<double>(a.K);
      const double density = cells > 0 ? static_cast<double>(a.nnz) / cells : 0.0;
      p.sparse = density * kTileCols / kV / 32.0 <= 0.6;
    }
    // Shared bytes per warp besides the x tile (the largest any M tile of this plan asks for). Variant 2's
    // per-warp buffers may take at most half of what two 256-thread blocks per SM get (so that the x tile
    // keeps the other half); on a smaller budget (under ~130 KB per SM for the sparse shape) variant 1 runs.
    size_t warp_bytes = p.variant == 1 ? kListBytes
                        : p.sparse     ? V2Shape<1, true>::kWarpBytes
                                       : V2Shape<1, false>::kWarpBytes;
    const int64_t b2 = imin<int64_t>(d.smem_optin, d.smem_per_sm / 2 - 1024);
    if (p.variant == 2 && 2 * 8 * static_cast<int64_t>(warp_bytes) > b2) {
      p.variant = 1;
      warp_bytes = kListBytes;
    }
    p.ch = choose_chunking(a.K, kChunkAlign, warp_bytes, d,
                           [&](int64_t cols) { return xtile_bytes<T, kSpan>(mt_max, cols) + kZeroBytes; });
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
        p.w = a.values; p.bitmap = a.bitmap; p.word_offsets = a.word_offsets; p.nnz = a.nnz;
        p.x = a.x; p.ldx = a.ldx;
        p.out = out;
        return mma::launch<mma::BitmapRows, mma::HalfX<T>, MT, kVec>(p, plan, d, m_begin, tiles, stream);
      }
    }
    auto kernel = bitmap_decode_kernel<T, MT, kVec>;
    if constexpr (kVec) {
      if (plan.variant == 2)
        kernel = plan.sparse ? bitmap_decode_v2_kernel<T, MT, true> : bitmap_decode_v2_kernel<T, MT, false>;
    }
    size_t warp_bytes = kListBytes;
    if constexpr (kVec) {
      if (plan.variant == 2) warp_bytes = plan.sparse ? V2Shape<MT, true>::kWarpBytes : V2Shape<MT, false>::kWarpBytes;
    }
    const size_t smem = XTile<T, MT, kSpan>::bytes(plan.ch.Kc) + kZeroBytes +
                        static_cast<size_t>(plan.ch.threads / 32) * warp_bytes;
    BmParams p;
    p.M = a.M; p.N = a.N; p.K = a.K;
    p.Kc = plan.ch.Kc;
    p.bitmap = a.bitmap; p.word_offsets = a.word_offsets; p.values = a.values; p.nnz = a.nnz;
    p.x = a.x; p.ldx = a.ldx;
    p.out = out;
    return launch_decode_grid<MT>(kernel, p, plan, d, smem, a.N, m_begin, tiles, stream);
  }
};

}  // namespace

size_t bitmap_mm_workspace_bytes(const BitmapMmLaunch& a, cudaError_t* err) {
  return Driver<BitmapDecode>::workspace_bytes(a, err);
}

cudaError_t bitmap_mm(const BitmapMmLaunch& a, void* workspace, cudaStream_t stream) {
  return Driver<BitmapDecode>::run(a, workspace, stream);
}

}  // namespace cuda
}  // namespace sparsekit
