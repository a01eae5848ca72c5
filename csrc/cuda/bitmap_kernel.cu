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
// the x columns from the tile. Warp reduce-scatter and split-K as in sparse24_kernel.cu. Variant 2 (below, the
// default) batches a warp's tiles and walks the sparsest rows in tiles of 2048 columns, two words per lane. At M <= 4
// in float16 / bfloat16 variant 2 drops the list and its consumer (the walk, Plan::walk, below: each lane multiplies
// its own word's kept values bit by bit, x from a tile of its own laid out so that the lanes' loads are free of bank
// conflicts); SPARSEKIT_CUDA_BITMAP_CONSUMER=list gives the list back there.
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
// Shared bytes of a warp's list for a tile of `cols` columns: an entry per column + the alignment shift (< 8) and
// the last chunk's round-up.
constexpr int list_bytes(int cols) { return (cols + 16) * 2; }
constexpr int kListBytes = list_bytes(kTileCols);  // v1's
// After the x tile, one zero column per block: what a chunk's entries outside its tile's run read instead of
// x (as wide as the widest column, float32 at MT = 16), so that they add exactly nothing without a branch.
// The per-warp buffers follow it.
constexpr int kZeroBytes = 64;
static_assert(kListBytes % 16 == 0 && kZeroBytes % 16 == 0, "the zero column and what follows are 16-byte aligned");

// A list entry: the tile-relative column c of a kept value as its x tile byte offset from the tile's base (what
// the consumer adds to the base: no per-value address arithmetic), shifted right where the tile is too wide for
// 16 bits (float32 at MT = 16 spans 66 KB in a 1024-column tile, 132 KB in a 2048-column one).
template <typename T, int MT, int kCols = kTileCols>
struct ListEntry {
  using Tile = XTile<T, MT, kSpan>;
  static constexpr unsigned kMax = (kCols / kSpan - 1) * Tile::kSpanBytes + (kSpan - 1) * Tile::kColBytes;
  static constexpr int kShift = kMax < 65536u ? 0 : (kMax >> 1) < 65536u ? 1 : 2;
  static_assert(Tile::kSpanBytes % (1 << kShift) == 0 && Tile::kColBytes % (1 << kShift) == 0,
                "x tile offsets are multiples of 1 << kShift");
  static_assert((kMax >> kShift) < 65536u, "a tile's entries fit 16 bits");
  // Entry of bit b of the tile's word w (column 32 * w + b of the tile): of(word_base(w), b).
  __device__ __forceinline__ static unsigned word_base(int w) {
    return static_cast<unsigned>(w) * static_cast<unsigned>(Tile::kSpanBytes >> kShift);
  }
  __device__ __forceinline__ static uint16_t of(unsigned base, int b) {
    return static_cast<uint16_t>(base + static_cast<unsigned>(b) * static_cast<unsigned>(Tile::kColBytes >> kShift));
  }
};

// The list entries of one bitmap word's kept values (E: its ListEntry), written from list[pos] on in column order.
template <typename E>
__device__ __forceinline__ void compact_word(uint16_t* list, int pos, uint32_t word, unsigned ebase) {
  while (word) {
    const int b = __ffs(static_cast<int>(word)) - 1;
    list[pos++] = E::of(ebase, b);
    word &= word - 1;
  }
}

// The walk (variant 2 at M <= 4 in float16 / bfloat16, Plan::walk): a lane multiplies its word's kept values
// itself, bit by bit, the values read from the tile's run staged in shared memory (vals: the word's first) and x
// from the walk's own x tile (WalkTile), so there is no list and no second pass. The bits go from the highest down
// (the values from the word's last), so that finding a bit is one FLO and clearing it one SHF and one LOP3 (which
// also sets the loop's predicate). By the SASS (sm_90a) a round is 10 instructions in the lane at MT = 1 (FLO,
// SHF, LOP3, the x address, two shared loads, the value pointer, the value's conversion, the FMA, the branch), 11
// at MT = 2, 19 at MT = 4 (x's 4 conversions, 4 FMAs), and 2 shared loads, the one of x free of bank conflicts; a warp runs as many rounds as its fullest
// word has bits. The list design pays 10 instructions a round to compact, then ≈ 12 per kept value in the
// consumer and a shared load of x at a random bank (csrc/cuda/README.md has the counts per tile).
//
// The walk's x tile: x in blocks of 2048 columns (64 words), the MT rows of column 32 g + b of the K chunk (word
// g, bit b) together (kColBytes) at byte (g / 64) * 32 kBitBytes + b * kBitBytes + (g % 64) * kColBytes, kBitBytes
// = 64 kColBytes. The lanes of a warp walk words g0 + lane, so whatever bits they are at, their x loads take the
// fewest wavefronts their bytes allow: one at MT = 1 (the spanned 16-bit tile takes ≈ 3 for 32 random columns),
// two at MT = 2 and 4. Up to MT = 2 x is float32 (no conversion; twice the bytes of the 16-bit tile); at MT = 4
// it stays 16-bit (8 bytes a column: float32 would take 4 wavefronts a round, which by the counts costs more
// than the 4 conversions).
template <int MT>
struct WalkTile {
  static_assert(MT == 1 || MT == 2 || MT == 4, "the walk serves M <= 4");
  static constexpr bool kFloat = MT <= 2;                    // float32 x, else the 16-bit bits as given
  static constexpr int kColBytes = (kFloat ? 4 : 2) * MT;
  static constexpr int kBlockWords = 64;
  static constexpr int kBitBytes = kBlockWords * kColBytes;  // from bit b to bit b + 1 of a word
  static constexpr int kBlockBytes = 32 * kBitBytes;         // 2048 columns
  __host__ __device__ static constexpr size_t bytes(int64_t cols) {
    return static_cast<size_t>(ceil_div<int64_t>(cols, 32 * kBlockWords)) * kBlockBytes;
  }
  // Where word g's column 32 g (bit 0) is; bit b's is b * kBitBytes on.
  __device__ __forceinline__ static const unsigned char* word(const unsigned char* tile, unsigned g) {
    return tile + (g / kBlockWords) * kBlockBytes + (g % kBlockWords) * kColBytes;
  }
  // Cooperative copy by the whole block, a word (32 columns) a thread: row m, column c gets x[m, k0 + c] for
  // m < mrows and c < kc, else zero, in every word of the tile's blocks. 16-byte loads where a row's 32 values
  // of the word are whole and aligned.
  template <typename T>
  __device__ static void stage(unsigned char* tile, const T* x, int64_t ldx, int mrows, int64_t k0, int kc) {
    using E = std::conditional_t<kFloat, float, uint16_t>;   // a stored element
    constexpr int kStride = kBitBytes / static_cast<int>(sizeof(E));  // elements from bit b to bit b + 1
    const auto conv = [](uint32_t bits) -> E {
      if constexpr (kFloat) {
        return elem_from_bits<T>(bits);
      } else {
        return static_cast<uint16_t>(bits);
      }
    };
    const int nw = static_cast<int>(bytes(kc) / kBlockBytes) * kBlockWords;
    for (int g = threadIdx.x; g < nw; g += blockDim.x) {
      const int c0 = 32 * g;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        E* dst = reinterpret_cast<E*>(const_cast<unsigned char*>(word(tile, static_cast<unsigned>(g)))) + m;
        const Bits<T>* xb = reinterpret_cast<const Bits<T>*>(x) + m * ldx + k0;
        if (m < mrows && c0 + 32 <= kc && (reinterpret_cast<uintptr_t>(xb + c0) & 15u) == 0) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const uint4 q = __ldg(reinterpret_cast<const uint4*>(xb + c0) + i);
            const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int j = 0; j < 8; ++j) dst[(8 * i + j) * kStride] = conv((w[j / 2] >> (16 * (j % 2))) & 0xffffu);
          }
        } else {
          for (int b = 0; b < 32; ++b)
            dst[b * kStride] = conv(m < mrows && c0 + b < kc ? static_cast<uint32_t>(xb[c0 + b]) : 0u);
        }
      }
    }
  }
};

// The walk's x tile bytes for `cols` columns at M tile mt (1, 2 or 4): what the plan sizes K chunks with and the
// launch asks for.
inline size_t walk_tile_bytes(int mt, int64_t cols) {
  return mt == 1 ? WalkTile<1>::bytes(cols) : mt == 2 ? WalkTile<2>::bytes(cols) : WalkTile<4>::bytes(cols);
}

template <typename T, int MT>
__device__ __forceinline__ void walk_word(const uint16_t* vals, uint32_t word, const unsigned char* xw,
                                          float (&acc)[MT]) {
  const uint16_t* v = vals + __popc(word);
  while (word) {
    const int b = 31 - __clz(static_cast<int>(word));  // the highest bit: FLO
    word &= ~(1u << b);
    const unsigned char* xp = xw + b * WalkTile<MT>::kBitBytes;
    float xv[MT];
    if constexpr (MT == 1) {
      xv[0] = *reinterpret_cast<const float*>(xp);
    } else if constexpr (MT == 2) {
      const float2 q = *reinterpret_cast<const float2*>(xp);
      xv[0] = q.x;
      xv[1] = q.y;
    } else {
      const uint2 q = *reinterpret_cast<const uint2*>(xp);
      const uint32_t w[2] = {q.x, q.y};
      words_to_float<T, 2>(w, xv);
    }
    const float w = elem_from_bits<T>(*--v);
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = fmaf(w, xv[m], acc[m]);
  }
}

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
  const uint16_t* columns = nullptr;  // variant 4
  const void* x = nullptr;
  int64_t ldx = 0;
  Output out;
};

// FMAs of one 16-byte chunk q of the tile's run: entries j = q * kV + r in [shift, shift + total) are
// the run's; list[j] << kEntryShift is their x column's offset from the tile's base (ListEntry). kBranchFree: an
// entry outside the run takes the value -0.0 and reads the zero column, and -0.0 * 0 added to any sum leaves it
// as it was (bits and sign included), so the chunk's shared loads can all be in flight at once; else a branch
// skips it. Branch-free costs registers (kV entries' MT values of x in flight): v2 (128 registers, 16 warps per SM) takes it up to
// MT = 4, v1 (32 warps per SM at 64 registers) up to MT = 2; at MT >= 8 the FMAs outweigh the branch and the
// loads in flight would not fit (a spill at MT = 16).
template <typename T, int MT, bool kBranchFree, int kEntryShift>
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
  // Entry r is the run's when its place in the run, j0 + r, is in [0, total): one unsigned compare (17 fewer
  // instructions a chunk than a mask of the run's entries made per chunk and tested bit by bit, bf16 MT = 1).
  const int j0 = q * kV - shift;
#pragma unroll
  for (int r = 0; r < kV; ++r) {
    const bool in = static_cast<unsigned>(j0 + r) < static_cast<unsigned>(total);
    const unsigned e = (cw[r >> 1] >> (16 * (r & 1))) & 0xffffu;
    if constexpr (!kBranchFree) {
      if (in) {
        float xv[MT];
        Tile::load_at(tile + (e << kEntryShift), xv);
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[m] = fmaf(vals[r], xv[m], acc[m]);
      }
    } else {
      float xv[MT];
      Tile::load_at(in ? tile + (e << kEntryShift) : zero, xv);
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
  using Entry = ListEntry<T, MT>;
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
      compact_word<Entry>(list, shift + excl, word, Entry::word_base(lane));
      __syncwarp();

      const unsigned char* tile = xs + Tile::offset(static_cast<unsigned>((t0 - w0) * 32));
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        const int q = lane + 32 * i;
        if (q < nq)
          consume_chunk<T, MT, kV1BranchFree, Entry::kShift>(raw[i], q, list, shift, total, tile, zero, acc);
      }
      for (int q = lane + 32 * kPre; q < nq; q += 32)
        consume_chunk<T, MT, kV1BranchFree, Entry::kShift>(
            load_chunk<T, kVecLoads>(vbits, p.nnz, aligned + static_cast<int64_t>(q) * kV), q, list, shift, total,
            tile, zero, acc);
    }

    const float r = warp_reduce_scatter<MT>(acc, lane);
    const int m = reduce_scatter_row<MT>(lane);
    if (reduce_scatter_writer<MT>(lane) && m < mrows) write_out<T>(p.out, splits, split, m0 + m, n, r);
  }
}

// ------------------------------------------------------------------------------------ variant 2
// The same list and FMAs, with more bytes in flight per warp (SPARSEKIT_CUDA_DECODE=v2, the default;
// csrc/cuda/README.md has the model). Variant 1 issues one tile's values, waits, consumes, so a warp holds one
// tile (~200 bytes at 10 % density in bf16) in flight. Here a warp walks the flattened sequence of its
// (row, tile) items in batches of D items, across row ends:
//   1. the bitmap words of the batch's D tiles (and, in lane s, the word_offsets entry of slot s's row
//      when slot s starts a row) were loaded one batch ahead;
//   2. the D scans give each tile's run of values (a running base; word_offsets only at a row start),
//      and the values of all D tiles are issued at once: P 16-byte chunks per lane per tile;
//   3. the next batch's words and row offsets are issued;
//   4. the D tiles are consumed in order (list, FMAs; a row's sum is reduced and written as soon as its
//      last tile is consumed). A tile with more than 32 P chunks loads the rest as it consumes them.
// Registers go to the values in flight: per-slot numbers a lane does not need for itself (run start and
// length) live in lane s and are fetched with a shuffle; each lane's bitmap words and their places in the run
// wait for the list in a per-warp shared buffer, not in registers.
//
// Four shapes (V2Shape), chosen by the density: kDense, D = 4 tiles of 1024 columns and 2 chunks per lane;
// kSparse, D = 8 tiles of 1024 columns and 1 chunk per lane (32 registers of values either way); kWide (the
// sparsest), D = 4 tiles of 2048 columns, two words per lane (words lane and lane + 32 of the tile: coalesced
// loads), 1 chunk per lane; kWideDense (up to ~32 % density in 16 bits), D = 3 tiles of 2048 columns and 3
// chunks per lane. At 10 % density a 1024-column tile's run fills 13 of the 32 lanes' chunks, yet its scan, its
// compaction's loop overhead, its bookkeeping and the consumer's instructions are paid for all 32 lanes: a
// 2048-column tile fills 26 and pays them once for twice the columns (one scan of the two words' counts packed
// in the halves of an int). The bytes in flight stay those of kSparse (4 tiles of 26 chunks against 8 of 13)
// with half the registers of values. At 30 % a 1024-column tile's 38 chunks take two rounds of the consumer
// (P = 2, 26 of the second round's lanes idle); a 2048-column tile's 77 take three, its scan and bookkeeping
// are paid once for 2048 columns, and its compaction runs the fullest word pair's rounds, not twice the
// fullest word's.
enum V2Kind { kV2Dense = 0, kV2Sparse = 1, kV2Wide = 2, kV2WideDense = 3 };

template <int kKind>
struct V2Shape {
  static constexpr bool kWideTiles = kKind == kV2Wide || kKind == kV2WideDense;
  static constexpr int W = kWideTiles ? 2 : 1;  // bitmap words per lane and tile
  // 16-byte chunks of values per lane issued per tile, and tiles per batch
  static constexpr int P = kKind == kV2Dense ? 2 : kKind == kV2WideDense ? 3 : 1;
  static constexpr int D = kKind == kV2Sparse ? 8 : kKind == kV2WideDense ? 3 : 4;
  static constexpr int kCols = kTileCols * W;           // columns per tile
  static constexpr int kListBytes = list_bytes(kCols);
  // Per lane and slot: the words and their places in the run (uint2 (word, place) or uint4 (words, places)).
  static constexpr int kSlotBytes = W == 1 ? 8 : 16;
  // Shared bytes per warp: the list, then the slots' words and places.
  static constexpr int kWarpBytes = kListBytes + D * 32 * kSlotBytes;
  static_assert(kListBytes % 16 == 0, "the slot buffer is 16-byte aligned");
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

// The words of the D items from `it` (zero past the row's chunk or past N): word lane + 32 h of slot s's tile in
// wd[s][h]; and, in lane s, the first word offset of slot s's row when slot s is a row's first tile.
template <int D, int W>
__device__ __forceinline__ void load_batch_words(const BmParams& p, Item it, int tiles, int64_t n_stride,
                                                 int64_t words, int64_t w0, int64_t w1, int lane,
                                                 uint32_t (&wd)[D][W], int32_t& row_off) {
  row_off = 0;
#pragma unroll
  for (int s = 0; s < D; ++s) {
#pragma unroll
    for (int h = 0; h < W; ++h) {
      const int64_t wi = w0 + static_cast<int64_t>(it.t) * (32 * W) + 32 * h + lane;
      wd[s][h] = (it.n < p.N && wi < w1) ? static_cast<uint32_t>(__ldg(p.bitmap + it.n * words + wi)) : 0u;
    }
    if (lane == s && it.t == 0 && it.n < p.N) row_off = __ldg(p.word_offsets + it.n * words + w0);
    advance(it, tiles, n_stride);
  }
}

template <typename T, int MT, int kKind, bool kWalk = false>
__global__ void __launch_bounds__(kMaxThreads, 1) bitmap_decode_v2_kernel(const BmParams p) {
  static_assert(!kWalk || (MT <= 4 && sizeof(T) == 2), "the walk takes up to four rows of 16-bit values and x");
  using Tile = XTile<T, MT, kSpan>;
  using WTile = WalkTile<kWalk ? MT : 1>;  // the walk's x tile
  using Shape = V2Shape<kKind>;
  constexpr int kV = 16 / static_cast<int>(sizeof(T));
  constexpr int D = Shape::D;
  constexpr int P = Shape::P;
  constexpr int W = Shape::W;
  using Entry = ListEntry<T, MT, Shape::kCols>;
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
  const int tiles = static_cast<int>((w1 - w0 + 32 * W - 1) / (32 * W));  // >= 1: every chunk has columns

  unsigned char* xs = smem;
  unsigned char* zero = smem + (kWalk ? WTile::bytes(p.Kc) : Tile::bytes(p.Kc));
  zero_column(zero);
  unsigned char* wsm = zero + kZeroBytes + warp * Shape::kWarpBytes;
  uint16_t* list = reinterpret_cast<uint16_t*>(wsm);
  // [slot][lane]: W == 1 (word, place in the run); W == 2 (word lane, word lane + 32, their places)
  unsigned char* slots = wsm + Shape::kListBytes;
  const Bits<T>* vbits = static_cast<const Bits<T>*>(p.values);
  const int64_t n_stride = static_cast<int64_t>(gridDim.x) * nwarps;

  Item it{static_cast<int64_t>(blockIdx.x) * nwarps + warp, 0};
  uint32_t wd[D][W];
  int32_t row_off;
  // The first batch's words are loaded before x is staged.
  load_batch_words<D, W>(p, it, tiles, n_stride, words, w0, w1, lane, wd, row_off);

  if constexpr (kWalk) {
    WTile::template stage<T>(xs, static_cast<const T*>(p.x) + m0 * p.ldx, p.ldx, mrows, k0, kc);
  } else {
    Tile::stage(xs, static_cast<const T*>(p.x) + m0 * p.ldx, p.ldx, mrows, k0, kc,
                static_cast<int>(round_up<int64_t>(kc, kSpan)));
  }
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
      // W == 2: the two words' counts in the halves of one int (a half's sum stays <= 1024), so one scan
      // gives both words' places.
      const int cnt = W == 1 ? __popc(wd[s][0]) : __popc(wd[s][0]) | (__popc(wd[s][W - 1]) << 16);
      int incl = cnt;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int t = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += t;
      }
      const int tot = __shfl_sync(kFullMask, incl, 31);
      const int excl = incl - cnt;
      int total;
      // (each lane reads back only its own entries: no barrier)
      if constexpr (W == 1) {
        total = tot;
        reinterpret_cast<uint2*>(slots)[s * 32 + lane] = make_uint2(wd[s][0], static_cast<uint32_t>(excl));
      } else {
        const int total0 = tot & 0xffff;  // the run of the tile's first 32 words comes first
        total = total0 + (tot >> 16);
        reinterpret_cast<uint4*>(slots)[s * 32 + lane] =
            make_uint4(wd[s][0], wd[s][W - 1], static_cast<uint32_t>(excl & 0xffff),
                       static_cast<uint32_t>(total0 + (excl >> 16)));
      }
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
    load_batch_words<D, W>(p, c, tiles, n_stride, words, w0, w1, lane, wd, row_off);

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
        if constexpr (kWalk) {
          // The run's chunks go to the list's bytes (an aligned run of 16-bit values needs at most
          // 2 kCols + 16 of its 2 kCols + 32), then each lane walks its words.
          uint4* run = reinterpret_cast<uint4*>(list);
#pragma unroll
          for (int i = 0; i < P; ++i) {
            const int q = lane + 32 * i;
            if (q < nq) run[q] = v[s][i];
          }
          for (int q = lane + 32 * P; q < nq; q += 32)
            run[q] = load_chunk<T, true>(vbits, p.nnz, aligned + static_cast<int64_t>(q) * kV);
          __syncwarp();
          const unsigned g = static_cast<unsigned>(e.t) * (32 * W) + lane;  // the lane's word in the K chunk
          if constexpr (W == 1) {
            const uint2 wp = reinterpret_cast<const uint2*>(slots)[s * 32 + lane];
            walk_word<T, MT>(list + shift + wp.y, wp.x, WTile::word(xs, g), acc);
          } else {
            const uint4 wp = reinterpret_cast<const uint4*>(slots)[s * 32 + lane];
            walk_word<T, MT>(list + shift + wp.z, wp.x, WTile::word(xs, g), acc);
            walk_word<T, MT>(list + shift + wp.w, wp.y, WTile::word(xs, g + 32), acc);
          }
        } else {
          const unsigned char* tile =
              xs + Tile::offset(static_cast<unsigned>(e.t) * static_cast<unsigned>(Shape::kCols));
          if constexpr (W == 1) {
            const uint2 wp = reinterpret_cast<const uint2*>(slots)[s * 32 + lane];
            compact_word<Entry>(list, shift + static_cast<int>(wp.y), wp.x, Entry::word_base(lane));
          } else {
            const uint4 wp = reinterpret_cast<const uint4*>(slots)[s * 32 + lane];
            compact_word<Entry>(list, shift + static_cast<int>(wp.z), wp.x, Entry::word_base(lane));
            compact_word<Entry>(list, shift + static_cast<int>(wp.w), wp.y, Entry::word_base(lane + 32));
          }
          __syncwarp();
#pragma unroll
          for (int i = 0; i < P; ++i) {
            const int q = lane + 32 * i;
            if (q < nq)
              consume_chunk<T, MT, kV2BranchFree, Entry::kShift>(v[s][i], q, list, shift, total, tile, zero, acc);
          }
          for (int q = lane + 32 * P; q < nq; q += 32)
            consume_chunk<T, MT, kV2BranchFree, Entry::kShift>(
                load_chunk<T, true>(vbits, p.nnz, aligned + static_cast<int64_t>(q) * kV), q, list, shift, total,
                tile, zero, acc);
        }

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

// ------------------------------------------------------------------------------------ variant 4: column list
// The kept values with a 16-bit column each (`columns`, made once from the bitmap when a layer is prepared on
// CUDA), so a warp does no scan and no compaction: what variants 1 and 2 spend per 1024-column tile (scan, run,
// the compaction serialised by the fullest word; ≈ 184-440 warp instructions by the SASS, whatever the density)
// is gone, and the kept values are shared evenly by the lanes, 16 bytes of values and their 8 (4 for float32)
// columns per lane and chunk. It reads 2 bytes per kept value more than the bitmap's 1/8 byte per weight: fewer
// bytes than values + bitmap below 6.25 % density (16-bit values), more above, so the list is made only up to a
// density (sparsekit/formats/bitmap.py, SPARSEKIT_BITMAP_COLUMNS; a GPU run should set it); given a list, make_plan
// takes this design unless SPARSEKIT_CUDA_DECODE names another.
//
// A warp owns one weight row at a time (rows n, n + n_stride, ...): its run in this K chunk is
// [word_offsets[n, w0], end), end = word_offsets[n, w1], or the next row's first entry, or nnz. The run is read in
// batches of 32 x kP chunks (16-byte aligned, the neighbours' entries at both ends masked off: their place in
// the run is outside [0, len)); the next batch (the row's next, or the next row's first) is issued before this
// one is consumed, and the next row's run bounds one row ahead, so a warp always has a batch in flight. An
// entry outside the run, or whose column is outside the K chunk, reads the zero column with the value -0.0
// (adds exactly nothing), branch-free up to MT = 4 as in consume_chunk. The x tile has no spans (XTile<.., 0>):
// the lanes' columns follow no pattern that padding would spread over the banks.
template <typename T, int MT, bool kBranchFree>
__device__ __forceinline__ void consume_columns(const uint4& chunk, const uint4& cols, int j0, int len, int64_t k0,
                                                int kc, const unsigned char* tile, unsigned zero_off,
                                                float (&acc)[MT]) {
  using Tile = XTile<T, MT, 0>;
  constexpr int kV = 16 / static_cast<int>(sizeof(T));
  uint32_t w4[4];
  split_uint4(chunk, w4);
  float vals[kV];
  words_to_float<T, 4>(w4, vals);
  const uint32_t cw[4] = {cols.x, cols.y, cols.z, cols.w};
#pragma unroll
  for (int r = 0; r < kV; ++r) {
    const int rel = static_cast<int>((cw[r >> 1] >> (16 * (r & 1))) & 0xffffu) - static_cast<int>(k0);
    const bool in = static_cast<unsigned>(j0 + r) < static_cast<unsigned>(len) &&
                    static_cast<unsigned>(rel) < static_cast<unsigned>(kc);
    if constexpr (!kBranchFree) {
      if (in) {
        float xv[MT];
        Tile::load_at(tile + Tile::offset(static_cast<unsigned>(rel)), xv);
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[m] = fmaf(vals[r], xv[m], acc[m]);
      }
    } else {
      float xv[MT];
      // the column, or the zero column's (its offset is a multiple of the column's bytes): one select, then the
      // address as one shift-add
      Tile::load_at(tile + Tile::offset(in ? static_cast<unsigned>(rel) : zero_off / Tile::kColBytes), xv);
      const float v = in ? vals[r] : -0.0f;
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[m] = fmaf(v, xv[m], acc[m]);
    }
  }
}

// kP chunks per lane and batch: the batch being consumed and the next one in flight.
template <int kP>
struct ColumnsBatch {
  uint4 v[kP];  // values
  uint4 c[kP];  // their columns (float32: the low 8 bytes)
};

// Up to MT = 2 two 512-thread blocks per SM (64 registers: 32 warps per SM, each with a batch of 2 chunks a lane
// in flight besides the one it consumes: ≈ 64 KB per SM where rows are long, and twice the rows in flight where
// they are short); from MT = 4 the x values in flight and the accumulators need more registers (16 warps per SM,
// batches of 4 chunks a lane: again ≈ 64 KB per SM where rows are long). No spill (RESOURCES.md).
template <typename T, int MT, bool kVecLoads>
__global__ void __launch_bounds__(kMaxThreads, MT <= 2 ? 2 : 1) bitmap_columns_kernel(const BmParams p) {
  using Tile = XTile<T, MT, 0>;
  constexpr int kV = 16 / static_cast<int>(sizeof(T));  // values per 16-byte chunk
  constexpr int kP = MT <= 2 ? 2 : 4;                    // chunks per lane and batch
  constexpr int kBatch = 32 * kP * kV;                   // entries per batch
  constexpr bool kBranchFree = MT <= 4;
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
  const int nnz = static_cast<int>(p.nnz);  // < 2**31 (the binding checks): entry indices are 32-bit

  unsigned char* xs = smem;
  const unsigned zero_off = static_cast<unsigned>(Tile::bytes(p.Kc));
  zero_column(xs + zero_off);
  const Bits<T>* vbits = static_cast<const Bits<T>*>(p.values);

  int64_t n = static_cast<int64_t>(blockIdx.x) * nwarps + warp;
  const int64_t n_stride = static_cast<int64_t>(gridDim.x) * nwarps;
  // Row r's run in this K chunk: [start, end) of values and columns.
  const auto run_of = [&](int64_t r, int& start, int& end) {
    start = p.word_offsets[r * words + w0];
    end = w1 < words ? p.word_offsets[r * words + w1] : r + 1 < p.N ? p.word_offsets[(r + 1) * words] : nnz;
  };
  const auto issue = [&](ColumnsBatch<kP>& b, int a, int end) {
#pragma unroll
    for (int i = 0; i < kP; ++i) {
      const int gi = a + (i * 32 + lane) * kV;  // (a < end <= nnz and the batch is < 2**31 - nnz past it)
      b.v[i] = make_uint4(0u, 0u, 0u, 0u);
      b.c[i] = make_uint4(0u, 0u, 0u, 0u);
      if (gi < end) {
        b.v[i] = load_chunk<T, kVecLoads>(vbits, nnz, gi);
        if constexpr (kV == 8) {
          b.c[i] = __ldg(reinterpret_cast<const uint4*>(p.columns + gi));
        } else {
          const uint2 c2 = __ldg(reinterpret_cast<const uint2*>(p.columns + gi));
          b.c[i] = make_uint4(c2.x, c2.y, 0u, 0u);
        }
      }
    }
  };

  // The first row's run and its first batch are issued before x is staged.
  int s = 0, e = 0, a = 0;
  ColumnsBatch<kP> cur;
  if (n < p.N) {
    run_of(n, s, e);
    a = s & ~(kV - 1);
    issue(cur, a, e);
  }
  Tile::stage(xs, static_cast<const T*>(p.x) + m0 * p.ldx, p.ldx, mrows, k0, kc, kc);
  __syncthreads();
  if (n >= p.N) return;

  int s_next = 0, e_next = 0;  // the next row's run, loaded one row ahead
  if (n + n_stride < p.N) run_of(n + n_stride, s_next, e_next);
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.f;

  for (;;) {
    // The next batch: the row's next window, else the next row's first.
    const bool row_ends = e - a <= kBatch;
    const int64_t n2 = row_ends ? n + n_stride : n;
    const int s2 = row_ends ? s_next : s, e2 = row_ends ? e_next : e;
    const int a2 = row_ends ? (s_next & ~(kV - 1)) : a + kBatch;
    ColumnsBatch<kP> nxt;
    if (n2 < p.N) {
      issue(nxt, a2, e2);
      if (row_ends && n2 + n_stride < p.N) run_of(n2 + n_stride, s_next, e_next);
    }

    const int len = e - s;
#pragma unroll
    for (int i = 0; i < kP; ++i) {
      const int g0 = a + i * 32 * kV;  // the same in every lane
      if (g0 >= e) break;
      const int j0 = g0 - s + lane * kV;  // the place in the run of the lane's first entry
      consume_columns<T, MT, kBranchFree>(cur.v[i], cur.c[i], j0, len, k0, kc, xs, zero_off, acc);
    }

    if (row_ends) {
      const float r = warp_reduce_scatter<MT>(acc, lane);
      const int m = reduce_scatter_row<MT>(lane);
      if (reduce_scatter_writer<MT>(lane) && m < mrows) write_out<T>(p.out, splits, split, m0 + m, n, r);
#pragma unroll
      for (int m2 = 0; m2 < MT; ++m2) acc[m2] = 0.f;
    }
    if (n2 >= p.N) break;
    n = n2;
    s = s2;
    e = e2;
    a = a2;
    cur = nxt;
  }
}

// SPARSEKIT_CUDA_BITMAP_SHAPE=wide | wide-dense | sparse | dense forces variant 2's batch shape (so that a GPU run
// can time them against each other at any density: bench/cuda_gpu.py --bitmap-shapes); unset or anything else, -1:
// the shape follows the density. Read on every call, like decode_variant().
inline int forced_v2_shape() {
  const char* v = std::getenv("SPARSEKIT_CUDA_BITMAP_SHAPE");
  if (v == nullptr || *v == '\0') return -1;
  if (std::strcmp(v, "wide") == 0) return kV2Wide;
  if (std::strcmp(v, "wide-dense") == 0) return kV2WideDense;
  if (std::strcmp(v, "sparse") == 0) return kV2Sparse;
  if (std::strcmp(v, "dense") == 0) return kV2Dense;
  return -1;
}

// SPARSEKIT_CUDA_BITMAP_CONSUMER=list makes variant 2 at M <= 4 (float16 / bfloat16) compact a list and run the
// chunk consumer (consume_chunk) as at larger M, instead of the walk (walk_word, the default there: by the SASS
// fewer instructions and shared-memory wavefronts per tile in every shape; csrc/cuda/README.md). Read on every
// call, so that one process can time both (bench/cuda_gpu.py times "v2 list" beside the default).
inline bool walk_consumer() {
  const char* v = std::getenv("SPARSEKIT_CUDA_BITMAP_CONSUMER");
  return v == nullptr || std::strcmp(v, "list") != 0;
}

// Shared bytes per warp of variant 2's shape `kind` (besides the x tile and the zero column).
inline size_t v2_warp_bytes(int kind) {
  return kind == kV2Wide        ? V2Shape<kV2Wide>::kWarpBytes
         : kind == kV2WideDense ? V2Shape<kV2WideDense>::kWarpBytes
         : kind == kV2Sparse    ? V2Shape<kV2Sparse>::kWarpBytes
                                : V2Shape<kV2Dense>::kWarpBytes;
}

template <typename T, int MT, bool kWalk>
auto v2_kernel(int shape) {
  return shape == kV2Wide        ? bitmap_decode_v2_kernel<T, MT, kV2Wide, kWalk>
         : shape == kV2WideDense ? bitmap_decode_v2_kernel<T, MT, kV2WideDense, kWalk>
         : shape == kV2Sparse    ? bitmap_decode_v2_kernel<T, MT, kV2Sparse, kWalk>
                                 : bitmap_decode_v2_kernel<T, MT, kV2Dense, kWalk>;
}

struct BitmapDecode : FloatFinish {
  using Launch = BitmapMmLaunch;

  static bool valid(const Launch& a) { return a.nnz >= 0; }

  template <typename T>
  static cudaError_t make_plan(const Launch& a, const DevInfo& d, Plan* plan) {
    Plan p;
    const int mt_max = tile_m_for(a.M);
    const int named = decode_variant_named();  // (one read of the environment a call)
    const int variant = named != 0 ? named : 2;
    // the column-list kernel (no per-warp buffers; its entry indices are 32-bit, with a batch's room past nnz)
    if (a.columns != nullptr && a.nnz <= INT32_MAX - 1024 && named == 0) {
      p.variant = 4;
      p.vec = reinterpret_cast<uintptr_t>(a.values) % 16u == 0;
      p.ch = choose_chunking(a.K, kChunkAlign, 0, d,
                             [&](int64_t cols) { return xtile_bytes<T, 0>(mt_max, cols) + kZeroBytes; });
      plan_workspace(&p, a.M, a.N);
      *plan = p;
      return cudaSuccess;
    }
    if constexpr (sizeof(T) == 2) {  // the tensor-core kernel (v3 only, for now)
      if (d.cc_major >= 8 && variant == 3) {
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
    p.vec = reinterpret_cast<uintptr_t>(a.values) % 16 == 0;
    // Variant 2 has the 16-byte path only; unaligned values run variant 1.
    p.variant = p.vec && variant != 1 ? 2 : 1;  // (v3 is a 2:4 design: bitmap runs v2)
    // The shape of variant 2's batch (V2Shape) by how much of one 16-byte chunk per lane an average
    // 1024-column tile's run fills: kWide (2048-column tiles, one chunk per lane) up to 42.5 % (a wide tile's
    // run then fills 85 % of one chunk per lane: density <= 10.6 % in fp16 / bf16, <= 5.3 % in fp32),
    // kWideDense (three chunks per lane) up to 127.5 % (85 % of three: <= 31.9 %, <= 15.9 %), else kDense
    // (1024-column tiles, two chunks per lane). kSparse (1024-column tiles, one chunk per lane, D = 8) is what
    // kWide falls back to. Any shape is correct for any tile: a denser one loads its other chunks as it goes.
    if (p.variant == 2) {
      constexpr double kV = 16.0 / sizeof(T);
      const double cells = static_cast<double>(a.N) * static_cast<double>(a.K);
      const double density = cells > 0 ? static_cast<double>(a.nnz) / cells : 0.0;
      const double fill = density * kTileCols / kV / 32.0;
      p.shape = fill <= 0.425 ? kV2Wide : fill <= 1.275 ? kV2WideDense : kV2Dense;
      const int forced = forced_v2_shape();
      if (forced >= 0) p.shape = forced;
    }
    // Variant 2's per-warp buffers (the largest any M tile of this plan asks for) may take at most half of
    // what two 256-thread blocks per SM get, so that the x tile keeps the other half: kWide needs ≈ 200 KB of
    // shared memory per SM (an H100 or H200), kWideDense ≈ 183 KB, kSparse ≈ 134 KB (an A100 too), kDense
    // ≈ 102 KB; on less, the 1024-column shape of the same density (kSparse, kDense), then variant 1.
    const int64_t b2 = imin<int64_t>(d.smem_optin, d.smem_per_sm / 2 - 1024);
    const auto fits = [&](size_t bytes) { return 2 * 8 * static_cast<int64_t>(bytes) <= b2; };
    if (p.variant == 2 && p.shape == kV2Wide && !fits(V2Shape<kV2Wide>::kWarpBytes)) p.shape = kV2Sparse;
    if (p.variant == 2 && p.shape == kV2WideDense && !fits(V2Shape<kV2WideDense>::kWarpBytes)) p.shape = kV2Dense;
    if (p.variant == 2 && p.shape == kV2Sparse && !fits(V2Shape<kV2Sparse>::kWarpBytes)) p.shape = kV2Dense;
    if (p.variant == 2 && !fits(v2_warp_bytes(p.shape))) p.variant = 1;
    p.walk = p.variant == 2 && sizeof(T) == 2 && mt_max <= 4 && walk_consumer();
    const size_t warp_bytes = p.variant == 1 ? kListBytes : v2_warp_bytes(p.shape);
    p.ch = choose_chunking(a.K, kChunkAlign, warp_bytes, d, [&](int64_t cols) {
      return (p.walk ? walk_tile_bytes(mt_max, cols) : xtile_bytes<T, kSpan>(mt_max, cols)) + kZeroBytes;
    });
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
    BmParams p;
    p.M = a.M; p.N = a.N; p.K = a.K;
    p.Kc = plan.ch.Kc;
    p.bitmap = a.bitmap; p.word_offsets = a.word_offsets; p.values = a.values; p.nnz = a.nnz;
    p.columns = a.columns;
    p.x = a.x; p.ldx = a.ldx;
    p.out = out;
    if (plan.variant == 4) {
      const size_t smem = XTile<T, MT, 0>::bytes(plan.ch.Kc) + kZeroBytes;
      return launch_decode_grid<MT>(bitmap_columns_kernel<T, MT, kVec>, p, plan, d, smem, a.N, m_begin, tiles,
                                    stream);
    }
    auto kernel = bitmap_decode_kernel<T, MT, kVec>;
    size_t warp_bytes = kListBytes;
    bool walk = false;
    if constexpr (kVec) {
      if (plan.variant == 2) {
        kernel = v2_kernel<T, MT, false>(plan.shape);
        if constexpr (MT <= 4 && sizeof(T) == 2) {
          walk = plan.walk;
          if (walk) kernel = v2_kernel<T, MT, true>(plan.shape);
        }
        warp_bytes = v2_warp_bytes(plan.shape);
      }
    }
    const size_t x_bytes = walk ? walk_tile_bytes(MT, plan.ch.Kc) : XTile<T, MT, kSpan>::bytes(plan.ch.Kc);
    const size_t smem = x_bytes + kZeroBytes + static_cast<size_t>(plan.ch.threads / 32) * warp_bytes;
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
