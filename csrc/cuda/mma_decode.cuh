// The tensor-core decode kernel for small M on sm_80+, shared by int8 weight-only (int8_wo_kernel.cu), 2:4
// (sparse24_kernel.cu, M >= 2), W8A8 dense / 2:4 (w8a8_kernel.cu, x quantized inside or not) and BSR
// (bsr_kernel.cu, blocks of multiples of 16): the weight is streamed with 16-byte
// loads, expanded in registers into dense mma A fragments (a weight policy W says how) and multiplied on the
// tensor cores by x from shared memory: float16 / bfloat16 x with m16n8k16 (HalfX), int8 x with m16n8k32
// (Int8X; an activation policy X says which).
//
// Why tensor cores at decode sizes: a decode kernel must stream its weight bytes at the copy rate, and
// float32 FMAs on the CUDA cores cost one instruction per weight and activation row: at M = 8-16 they alone
// take longer than dense bf16 takes to read its weight. One mma multiplies 16 weight rows x 16 columns by
// 8 activation rows; at M = 1 seven of its eight columns are padding, tensor-core time the kernel does not
// otherwise use.
//
// Work split: a block owns a row group (16 weight rows) at a time and walks the block's row groups (grid.x
// about as many blocks as fit at once, so x is staged once per block); its warps split the group's K chunk
// into contiguous ranges of 64-column steps and their float32 partial sums are added through shared memory
// at the end of the group (two buffers, one __syncthreads per group).
//
// A step, per lane (g = lane / 4, t = lane % 4): the 16 columns 16t..16t+15 of the step of weight rows g and
// g + 8 (a warp-wide load covers 8 rows x 64 contiguous columns); the lane issues the loads of kBatch = 4
// steps before using the first. The dense policies (kRefill: int8 rows, 2:4, 2:4 int8) then refill each entry
// with the next batch's step (the group's next, or the next row group's first) as soon as it is consumed, so the
// stream does not drain while a batch is consumed or the group's reduction waits; the others issue the next row
// group's first batch before the group's reduction barrier. The k order inside a step is permuted so that no data
// moves between lanes: mma j (0..3) takes, as its k = 2t, 2t+1 | 2t+8, 2t+9, the columns 16t+4j, 16t+4j+1 |
// 16t+4j+2, 16t+4j+3 of the lane's own columns, as A (the policy's pairs of rows g and g + 8) and as B (four
// columns of x row g: one 32-byte read of the row-major x tile per step and 8-row tile of activations).
//
// K split: when K columns of x do not fit in shared memory, grid.y cuts K into chunks (multiples of 64) and
// finish_kernel adds the float32 partial sums with the bias (decode_common.cuh).
#pragma once
#include "cuda/decode_common.cuh"
#include "cuda/mma_sync.cuh"

namespace sparsekit {
namespace cuda {
namespace decode {
namespace mma {

constexpr int kStepCols = 64;   // weight columns per step (16 per lane of a quad)
constexpr int kGroupRows = 16;  // weight rows per row group (the mma's M)
constexpr int kBatch = 4;       // steps whose loads a lane has in flight before the first is used

// The x tile: rows [0, MT) of the chunk, row-major, elements of EB bytes (2: float16 / bfloat16 x, 1: int8
// x), each row's bytes rounded up to a multiple of 128 plus 16: the 8 lanes of a quarter warp reading rows g
// and g + 1 at the same columns then hit different banks.
__host__ __device__ constexpr size_t row_ld(int64_t cols, int eb) {
  return round_up<size_t>(static_cast<size_t>(round_up<int64_t>(cols, kStepCols)) * eb, 128) + 16;
}
inline size_t rowtile_bytes(int mt, int64_t cols, int eb) { return static_cast<size_t>(mt) * row_ld(cols, eb); }


struct Params {
  int64_t M = 0, N = 0, K = 0;
  int64_t m_begin = 0;  // first activation row of this launch (grid.z tiles of MT rows from here)
  int64_t Kc = 0;       // columns per split (grid.y)
  const void* w = nullptr;        // the weight's values (int8 rows, or 2:4 values)
  const uint8_t* meta = nullptr;  // 2:4 metadata (N, ceil(K/8))
  const float* scale = nullptr;   // per-row scale of an int8 weight, or null
  const float* x_scale = nullptr; // per-row scale of int8 x (W8A8)
  const void* x = nullptr;
  int64_t ldx = 0;
  bool refill = true;             // the plan's (stream_refill()): kRefill policies refill entry by entry
  const int32_t* crow = nullptr;  // BSR: block-row pointers (N / R + 1) and block columns
  const int32_t* col = nullptr;
  int64_t R = 0, C = 0;           // BSR: block rows, block columns
  const int32_t* bitmap = nullptr;        // bitmap: words (N, ceil(K/32)), word_offsets (N, ceil(K/32)), nnz values
  const int32_t* word_offsets = nullptr;
  int64_t nnz = 0;
  Output out;
};

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
__device__ __forceinline__ uint32_t word_of(const uint4& q, int j) {
  return j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w;  // j is a constant after unrolling
}

// Whether a lane's 16 columns starting at chunk column c of step s0 + u, row r, are to be loaded.
__device__ __forceinline__ bool lane_cols_live(int s, int s_end, int64_t r, int64_t N, int c, int kc) {
  return s < s_end && r < N && c < kc;
}

// The hooks every weight policy has (DenseSteps for the ones whose k is K itself): kBatch, the steps of a row
// group in the chunk (the chunk's, or fewer: kVarSteps, and then the x tile carries one more step, of zeros, for
// lanes without weights) with what the group's loads need (Group), and the x column a lane's 16 weight columns
// of batch entry u meet.
struct DenseSteps {
  static constexpr int kBatch = mma::kBatch;
  static constexpr bool kVarSteps = false;
  // load_step(.., s, .., u) loads step s alone into batch entry u, so the kernel refills each entry with the next
  // batch's step as soon as it is consumed (the weight stream never drains; see the kernel). A policy whose loads
  // carry state from batch to batch (BitmapRows) sets it false and loads whole batches.
  static constexpr bool kRefill = true;
  struct Group {};  // what a policy works out once per row group and chunk for its loads (BsrRows: the blocks)
  static constexpr size_t kWarpBytes = 0;  // shared bytes per warp the policy stages through (BitmapRows)
  template <typename Regs>
  __device__ __forceinline__ static void prepare(Regs&, int, unsigned char*) {}  // before step u's pairs
  __device__ __forceinline__ static int group_steps(const Params&, int64_t, int64_t, int, int steps, Group&) {
    return steps;
  }
  template <typename Regs>
  __device__ __forceinline__ static int xcol(const Regs&, int, int s, int t) { return s * kStepCols + 16 * t; }
};

// A whole batch (steps s0 .. s0 + kBatch - 1) of a policy with load_step.
template <typename W, bool kVec>
__device__ __forceinline__ void load_batch(const Params& p, int64_t k0, int kc, int64_t r0, int s0, int s_end, int g,
                                           int t, typename W::Regs& r) {
#pragma unroll
  for (int u = 0; u < W::kBatch; ++u) W::template load_step<kVec>(p, k0, kc, r0, s0 + u, s_end, g, t, r, u);
}

// ------------------------------------------------------------------------------------ int8 rows
// w_q int8 (N, K) row-major, a float32 scale per row. Per row and step a lane holds 16 bytes.
struct Int8Rows : DenseSteps {
  struct Regs {
    uint4 v[kBatch][2];
  };
  static constexpr int kLutWords = 0;
  static constexpr bool kScaled = true;
  __device__ static void init_lut(uint32_t*) {}

  template <bool kVec>
  __device__ __forceinline__ static void load_step(const Params& p, int64_t k0, int kc, int64_t r0, int s, int s_end,
                                                   int g, int t, Regs& r, int u) {
    const int c = s * kStepCols + 16 * t;  // chunk-relative column of the lane's 16 bytes
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = r0 + g + 8 * h;
      r.v[u][h] = make_uint4(0u, 0u, 0u, 0u);
      if (lane_cols_live(s, s_end, row, p.N, c, kc)) {
        const int8_t* src = static_cast<const int8_t*>(p.w) + row * p.K + k0 + c;
        if constexpr (kVec) {
          r.v[u][h] = __ldg(reinterpret_cast<const uint4*>(src));  // c < kc implies c + 16 <= kc (K % 16 == 0)
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
          r.v[u][h] = make_uint4(static_cast<uint32_t>(lo), static_cast<uint32_t>(lo >> 32),
                                 static_cast<uint32_t>(hi), static_cast<uint32_t>(hi >> 32));
        }
      }
    }
  }

  // Four int8 (word j of the lane's 16 bytes) as two pairs of T, exactly: bytes 0, 1 -> lo, bytes 2, 3 -> hi
  // (every integer of [-128, 127] is a float16 and a bfloat16). One byte permute and one paired subtraction
  // per pair:
  //  float16:  0x64XX is 1024 + XX; with XX = byte + 128 (the byte xor 0x80), subtract 1152;
  //  bfloat16: 0x43XX is 128 + (XX & 127) when bit 7 of XX is clear; with XX = the byte, (0x4300 | low 7
  //            bits) minus (0x4300 | bit 7), i.e. minus 128 or 256, is the byte (two's complement).
  template <typename T>
  __device__ __forceinline__ static void pairs(const Regs& r, int u, int h, int j, const uint32_t*, uint32_t& lo,
                                               uint32_t& hi) {
    if constexpr (std::is_same_v<T, int8_t>) {  // int8 x (m16n8k32): the bytes as they are, words 2j, 2j + 1
      lo = word_of(r.v[u][h], 2 * j);
      hi = word_of(r.v[u][h], 2 * j + 1);
    } else if constexpr (std::is_same_v<T, __half>) {
      const uint32_t x = word_of(r.v[u][h], j) ^ 0x80808080u;
      const __half2 k1152 = as_pair<__half2>(0x64806480u);
      lo = pair_bits(__hsub2(as_pair<__half2>(__byte_perm(x, 0x64u, 0x4140u)), k1152));
      hi = pair_bits(__hsub2(as_pair<__half2>(__byte_perm(x, 0x64u, 0x4342u)), k1152));
    } else {
      const uint32_t w = word_of(r.v[u][h], j);
      const uint32_t pl = __byte_perm(w, 0x43u, 0x4140u), ph = __byte_perm(w, 0x43u, 0x4342u);
      lo = pair_bits(__hsub2(as_pair<__nv_bfloat162>(pl & 0xff7fff7fu), as_pair<__nv_bfloat162>(pl & 0xff80ff80u)));
      hi = pair_bits(__hsub2(as_pair<__nv_bfloat162>(ph & 0xff7fff7fu), as_pair<__nv_bfloat162>(ph & 0xff80ff80u)));
    }
  }
};

// The lane's two rows (g and g + 8 of the group at r0) of 2:4 values (V: 2-byte or int8) and metadata, at
// the chunk's first column k0 (a multiple of 64: whole metadata bytes).
template <typename V>
__device__ __forceinline__ void s24_rows(const Params& p, int64_t k0, int64_t r0, int g, const V* (&vrow)[2],
                                         const uint8_t* (&mrow)[2]) {
  const int64_t half_k = p.K / 2, meta_ld = (p.K + 7) / 8;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    vrow[h] = static_cast<const V*>(p.w) + (r0 + g + 8 * h) * half_k + k0 / 2;
    mrow[h] = p.meta + (r0 + g + 8 * h) * meta_ld + k0 / 8;
  }
}

// ------------------------------------------------------------------------------------ 2:4 rows
// values (N, K/2) float16 / bfloat16 and meta uint8 (N, ceil(K/8)) in the layout of LAYOUTS.md (group G =
// columns 4G..4G+3 keeps values[2G] at i0 and values[2G+1] at i1, its nibble i0 | i1 << 2). A lane's 16
// columns are 4 groups: 16 bytes of values (word j = group j's two values) and 16 bits of metadata (nibble
// j = group j's). A group expands into the pairs (columns 0, 1) and (2, 3) with two byte permutes whose
// selectors come from a 16-entry table in shared memory, indexed by the nibble.
struct S24Rows : DenseSteps {
  struct Regs {
    uint4 v[kBatch][2];
    uint32_t m[kBatch];  // the 16 metadata bits of row g (low half) and g + 8 (high half)
  };
  static constexpr int kLutWords = 32;  // 16 entries of (selector of columns 0, 1; selector of columns 2, 3)
  static constexpr bool kScaled = false;

  // Selector of byte_perm(values word, 0, .) for columns p = 0, 1 (low 16 bits) and 2, 3 (high): per column
  // 0x10 (the first value's two bytes), 0x32 (the second's) or 0x44 (zero bytes).
  __host__ __device__ static constexpr uint32_t selector(uint32_t nibble) {
    uint32_t s = 0;
    for (uint32_t p = 0; p < 4; ++p) {
      const uint32_t code = p == (nibble >> 2) ? 0x32u : p == (nibble & 3u) ? 0x10u : 0x44u;
      s |= code << (8 * p);
    }
    return s;
  }
  __device__ static void init_lut(uint32_t* lut) {
    for (int i = threadIdx.x; i < 16; i += blockDim.x) {
      const uint32_t s = selector(static_cast<uint32_t>(i));
      lut[2 * i] = s & 0xffffu;
      lut[2 * i + 1] = s >> 16;
    }
  }

  template <bool kVec>
  __device__ __forceinline__ static void load_step(const Params& p, int64_t k0, int kc, int64_t r0, int s, int s_end,
                                                   int g, int t, Regs& r, int u) {
    const uint16_t* vrow[2];
    const uint8_t* mrow[2];
    s24_rows(p, k0, r0, g, vrow, mrow);
    const int c = s * kStepCols + 16 * t;  // chunk-relative, a multiple of 16
    r.m[u] = 0u;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = r0 + g + 8 * h;
      r.v[u][h] = make_uint4(0u, 0u, 0u, 0u);
      if (lane_cols_live(s, s_end, row, p.N, c, kc)) {
        const unsigned cu = static_cast<unsigned>(c);
        if constexpr (kVec) {  // K % 16 == 0: c < kc implies c + 16 <= kc
          r.v[u][h] = __ldg(reinterpret_cast<const uint4*>(vrow[h] + (cu >> 1)));
          r.m[u] |= static_cast<uint32_t>(__ldg(reinterpret_cast<const uint16_t*>(mrow[h] + (cu >> 3)))) << (16 * h);
        } else {  // groups one at a time (K % 4 == 0), those past the chunk zero; a rolled loop (rare path)
          uint64_t lo = 0, hi = 0;  // groups 0, 1 and 2, 3: their two values each
          uint32_t nib = 0u;
          const int n = imin(4, (kc - c) / 4);
#pragma unroll 1
          for (int q = 0; q < n; ++q) {
            const unsigned G = (cu >> 2) + q;  // the group, from the chunk's first
            const uint64_t pair = static_cast<uint64_t>(__ldg(vrow[h] + 2 * G)) |
                                  (static_cast<uint64_t>(__ldg(vrow[h] + 2 * G + 1)) << 16);
            if (q < 2) {
              lo |= pair << (32 * q);
            } else {
              hi |= pair << (32 * (q - 2));
            }
            nib |= ((static_cast<uint32_t>(__ldg(mrow[h] + G / 2)) >> (4 * (G & 1))) & 15u)
                   << (4 * q);
          }
          r.v[u][h] = make_uint4(static_cast<uint32_t>(lo), static_cast<uint32_t>(lo >> 32),
                                 static_cast<uint32_t>(hi), static_cast<uint32_t>(hi >> 32));
          r.m[u] |= nib << (16 * h);
        }
      }
    }
  }

  template <typename T>
  __device__ __forceinline__ static void pairs(const Regs& r, int u, int h, int j, const uint32_t* lut, uint32_t& lo,
                                               uint32_t& hi) {
    const uint2 sel = reinterpret_cast<const uint2*>(lut)[(r.m[u] >> (16 * h + 4 * j)) & 15u];
    const uint32_t w = word_of(r.v[u][h], j);
    lo = __byte_perm(w, 0u, sel.x);
    hi = __byte_perm(w, 0u, sel.y);
  }
};

// ------------------------------------------------------------------------------------ 2:4 int8 rows
// values int8 (N, K/2) and meta as S24Rows (2:4+int8, W8A8 with int8 x). A lane's 16 columns are 4 groups:
// 8 bytes of values (bytes 2q, 2q + 1: group q's) and 16 bits of metadata. Group q expands into the four
// int8 of its columns with one byte permute, its selector from a table indexed by the nibble (the first
// half of an entry for a group in the low half of its word, the second for the high half).
struct S24Int8Rows : DenseSteps {
  struct Regs {
    uint2 v[kBatch][2];
    uint32_t m[kBatch];  // the 16 metadata bits of row g (low half) and g + 8 (high half)
  };
  static constexpr int kLutWords = 32;

  // byte_perm(word, 0, .) selector putting the group's two bytes (at byte `at` and at + 1 of the word) at
  // their columns i0, i1 and zero bytes elsewhere.
  __host__ __device__ static constexpr uint32_t selector(uint32_t nibble, uint32_t at) {
    uint32_t s = 0;
    for (uint32_t p = 0; p < 4; ++p) {
      const uint32_t code = p == (nibble >> 2) ? at + 1 : p == (nibble & 3u) ? at : 4u;
      s |= code << (4 * p);
    }
    return s;
  }
  __device__ static void init_lut(uint32_t* lut) {
    for (int i = threadIdx.x; i < 16; i += blockDim.x) {
      lut[2 * i] = selector(static_cast<uint32_t>(i), 0);
      lut[2 * i + 1] = selector(static_cast<uint32_t>(i), 2);
    }
  }

  template <bool kVec>
  __device__ __forceinline__ static void load_step(const Params& p, int64_t k0, int kc, int64_t r0, int s, int s_end,
                                                   int g, int t, Regs& r, int u) {
    const uint8_t* vrow[2];
    const uint8_t* mrow[2];
    s24_rows(p, k0, r0, g, vrow, mrow);
    const int c = s * kStepCols + 16 * t;
    r.m[u] = 0u;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = r0 + g + 8 * h;
      r.v[u][h] = make_uint2(0u, 0u);
      if (lane_cols_live(s, s_end, row, p.N, c, kc)) {
        const unsigned cu = static_cast<unsigned>(c);
        if constexpr (kVec) {  // K % 16 == 0: 8-byte aligned rows of values
          r.v[u][h] = __ldg(reinterpret_cast<const uint2*>(vrow[h] + (cu >> 1)));
          r.m[u] |= static_cast<uint32_t>(__ldg(reinterpret_cast<const uint16_t*>(mrow[h] + (cu >> 3)))) << (16 * h);
        } else {  // groups one at a time, those past the chunk zero; a rolled loop (rare path)
          uint64_t vals = 0;
          uint32_t nib = 0u;
          const int n = imin(4, (kc - c) / 4);
#pragma unroll 1
          for (int q = 0; q < n; ++q) {
            const unsigned G = (cu >> 2) + q;
            vals |= (static_cast<uint64_t>(__ldg(vrow[h] + 2 * G)) |
                     (static_cast<uint64_t>(__ldg(vrow[h] + 2 * G + 1)) << 8))
                    << (16 * q);
            nib |= ((static_cast<uint32_t>(__ldg(mrow[h] + G / 2)) >> (4 * (G & 1))) & 15u) << (4 * q);
          }
          r.v[u][h] = make_uint2(static_cast<uint32_t>(vals), static_cast<uint32_t>(vals >> 32));
          r.m[u] |= nib << (16 * h);
        }
      }
    }
  }

  // mma j (m16n8k32) of the lane's columns: groups 2j (lo: columns 8j..8j+3) and 2j + 1 (hi), both in word j.
  template <typename T>
  __device__ __forceinline__ static void pairs(const Regs& r, int u, int h, int j, const uint32_t* lut, uint32_t& lo,
                                               uint32_t& hi) {
    static_assert(std::is_same_v<T, int8_t>, "2:4 int8 values multiply int8 activations");
    const uint32_t w = j == 0 ? r.v[u][h].x : r.v[u][h].y;
    const uint32_t nib = r.m[u] >> (16 * h + 8 * j);
    lo = __byte_perm(w, 0u, lut[2 * (nib & 15u)]);
    hi = __byte_perm(w, 0u, lut[2 * ((nib >> 4) & 15u) + 1]);
  }
};

// ------------------------------------------------------------------------------------ BSR rows
// values (nblocks, R, C) float16 / bfloat16 with R % 16 == 0 and C % 16 == 0, crow (N / R + 1), col (nblocks), the
// layout of LAYOUTS.md: a row group lies in one block row, and its k is its stored blocks in the chunk cut into
// pieces of 16 columns (piece q: block b0 + q / (C / 16) of the chunk's run, its columns 16 (q % (C / 16)) ... +
// 15). Step s gives piece 4s + t to lane t: 32 bytes of values per row, and the x columns of the piece's block.
// The lanes of a quad may hold pieces of different blocks: the mma splits k by t, and each lane supplies A and B
// of its own k slice, so their columns need only agree between the lane's A and B (every lane with the same t
// holds the same piece). Lanes past the group's last piece, and pieces of a block outside the chunk, take zero
// weights and a column of zeros of x (the tile's extra step), so that no x value (an Inf) meets a weight that
// is not there.
//
// K split (chunks of a multiple of C columns, so that every block lies in one chunk): a chunk's blocks of a
// block row are a run of its stored blocks where the row's block columns ascend (as from_dense, the GPU packer
// and torch's BSR make them); the warp finds the run with two ballots per 32 column indices. A row whose
// columns do not ascend walks all its blocks in every chunk, those outside the chunk skipped: slower, as correct.
struct BsrRows {
  static constexpr int kBatch = 2;  // 2 x 64 bytes of values in flight per lane
  static constexpr bool kVarSteps = true;
  static constexpr bool kRefill = false;
  static constexpr int kLutWords = 0;
  static constexpr bool kScaled = false;
  struct Regs {
    uint4 v[kBatch][2][2];  // [u][row g, g + 8][columns 0-7, 8-15]
    int xc[kBatch];         // chunk column of x the lane's piece meets
  };
  struct Group {
    int64_t b0 = 0;  // the first stored block of the chunk's run in the group's block row
    int np = 0;      // pieces of 16 columns in the run
  };
  static constexpr size_t kWarpBytes = 0;
  __device__ __forceinline__ static void prepare(Regs&, int, unsigned char*) {}
  __device__ static void init_lut(uint32_t*) {}

  // Every lane of the warp calls (ballots when K is split).
  __device__ static Group chunk_group(const Params& p, int64_t br, int64_t k0, int kc) {
    const int64_t b0 = __ldg(p.crow + br), b1 = __ldg(p.crow + br + 1);
    Group gs;
    gs.b0 = b0;
    int64_t end = b1;
    if (k0 > 0 || kc < p.K) {
      const unsigned lane = threadIdx.x & 31u;
      const int64_t c_lo = k0 / p.C, c_hi = (k0 + kc) / p.C;  // the chunk's block columns [c_lo, c_hi)
      int before = 0, upto = 0, prev_last = -1;
      bool ascending = true;
      for (int64_t i = b0; i < b1; i += 32) {
        const bool in = i + lane < b1;
        const int c = in ? __ldg(p.col + i + lane) : 0x7fffffff;
        int prev = __shfl_up_sync(0xffffffffu, c, 1);
        if (lane == 0) prev = prev_last;
        ascending = ascending && !__any_sync(0xffffffffu, in && c < prev);
        before += __popc(__ballot_sync(0xffffffffu, in && c < c_lo));
        upto += __popc(__ballot_sync(0xffffffffu, in && c < c_hi));
        prev_last = __shfl_sync(0xffffffffu, c, 31);
      }
      if (ascending) {
        gs.b0 = b0 + before;
        end = b0 + upto;
      }
    }
    gs.np = static_cast<int>(end - gs.b0) * static_cast<int>(p.C / 16);
    return gs;
  }
  __device__ __forceinline__ static int group_steps(const Params& p, int64_t r0, int64_t k0, int kc, int,
                                                    Group& gs) {
    gs = chunk_group(p, r0 / p.R, k0, kc);
    return ceil_div(gs.np, 4);
  }
  __device__ __forceinline__ static int xcol(const Regs& r, int u, int, int) { return r.xc[u]; }

  template <bool kVec>
  __device__ __forceinline__ static void load(const Params& p, int64_t k0, int kc, int64_t r0, int s0, int s_end,
                                              int g, int t, Regs& r, const Group& gs) {
    const int64_t br = r0 / p.R;
    const int ppb = static_cast<int>(p.C / 16);  // pieces per block
    const int64_t rr = r0 - br * p.R + g;         // the lane's first row within the block
    const int zero = round_up(kc, kStepCols);     // the tile's step of zeros
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int q = 4 * (s0 + u) + t;
      r.xc[u] = zero;
#pragma unroll
      for (int h = 0; h < 2; ++h) r.v[u][h][0] = r.v[u][h][1] = make_uint4(0u, 0u, 0u, 0u);
      if (s0 + u < s_end && q < gs.np) {
        const int qb = q / ppb;
        const int c16 = (q - qb * ppb) * 16;
        const int64_t blk = gs.b0 + qb;
        const int64_t xc = static_cast<int64_t>(__ldg(p.col + blk)) * p.C - k0;  // the block's first, in the chunk
        if (xc >= 0 && xc < kc) {
          r.xc[u] = static_cast<int>(xc) + c16;
          const uint16_t* src = static_cast<const uint16_t*>(p.w) + (blk * p.R + rr) * p.C + c16;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint16_t* row = src + 8 * h * p.C;
            if constexpr (kVec) {  // values 16-byte aligned, C % 16 == 0
              r.v[u][h][0] = __ldg(reinterpret_cast<const uint4*>(row));
              r.v[u][h][1] = __ldg(reinterpret_cast<const uint4*>(row) + 1);
            } else {  // 2 bytes at a time (the rare path; unrolled, so that w stays in registers)
              uint32_t w[8];
#pragma unroll
              for (int e = 0; e < 8; ++e)
                w[e] = static_cast<uint32_t>(__ldg(row + 2 * e)) | (static_cast<uint32_t>(__ldg(row + 2 * e + 1)) << 16);
              r.v[u][h][0] = make_uint4(w[0], w[1], w[2], w[3]);
              r.v[u][h][1] = make_uint4(w[4], w[5], w[6], w[7]);
            }
          }
        }
      }
    }
  }

  // mma j takes the lane's columns 4j .. 4j + 3: words 2j (lo) and 2j + 1 (hi) of its 32 bytes
  template <typename T>
  __device__ __forceinline__ static void pairs(const Regs& r, int u, int h, int j, const uint32_t*, uint32_t& lo,
                                               uint32_t& hi) {
    static_assert(sizeof(T) == 2, "BSR values multiply float16 / bfloat16 activations");
    const uint4& q = r.v[u][h][j >> 1];
    lo = word_of(q, 2 * (j & 1));
    hi = word_of(q, 2 * (j & 1) + 1);
  }
};

// ------------------------------------------------------------------------------------ bitmap rows
// bitmap int32 (N, ceil(K/32)), word_offsets int32 (N, ceil(K/32)), values (nnz) float16 / bfloat16: the layout of
// LAYOUTS.md (bit b of word w of row n is column 32w + b; word_offsets[n, w] the index in values of the word's
// first kept value). A step's 64 columns of a row are its words w0, w0 + 1 and their kept values one run of
// values, [word_offsets[n, w0], + popc(w0) + popc(w0 + 1)). The quad of a row (lanes t = 0..3 of rows g and
// g + 8) loads the run together: 16-byte vectors of values aligned down to 16 bytes, vector q in lane q % 4 (at
// most 9: 7 values before the run + 64), stages them in a per-warp buffer of shared memory (prepare), and then
// each lane expands its own 16 columns (16t .. 16t + 15, the mask's bits) a nibble at a time (pairs: mma j takes
// columns 4j .. 4j + 3): the nibble's values are the next popc(nibble) of the run from its rank, read as two
// 8-byte words, shifted to the rank, and spread to the kept columns by two byte permutes and masks from a
// 16-entry table. Weights not kept are zeros in the dense mma (x @ W.T of the reference: an Inf of x meets them).
// word_offsets is read once per row group and warp, at the warp's first step: the next step's run starts where
// this one ends (a warp walks its steps of a group in order, kBatch at a time), so the index is carried from
// batch to batch in the registers (word_offsets is a bit per weight, as many bytes as the bitmap: at 90 %
// sparsity, reading it per step would be 28 % of the kernel's bytes).
struct BitmapRows : DenseSteps {
  static constexpr int kBatch = 2;
  static constexpr bool kRefill = false;  // a batch's run indices carry to the next
  static constexpr int kLutWords = 64;           // 16 entries of (selector lo, selector hi, mask lo, mask hi)
  static constexpr bool kScaled = false;
  static constexpr int kRowBuf = 160;            // bytes of a row's staged run: 9 vectors + the last 8-byte read
  static constexpr size_t kWarpBytes = 2 * 8 * kRowBuf;  // rows g and g + 8 of the warp's 8 quads
  struct Regs {
    uint4 v[kBatch][2][3];  // [u][row g, g + 8][vector t, t + 4, t + 8 of the row's run]
    uint32_t m[kBatch][2];  // the lane's 16 mask bits | vectors in the run << 16
    uint32_t k[kBatch][2];  // byte j: the place in the staged run of the first value of nibble j (< 71)
    unsigned char* stage;   // the warp's buffer (set by prepare)
    int64_t next[2];        // the run index of step next_s of rows g, g + 8 (carried from the previous batch)
    int next_s = -1;
  };

  // Table entry for a nibble: the values v0..v3 (the nibble's kept ones in order, as the 8 bytes of two words)
  // to columns 0, 1 (lo) and 2, 3 (hi) by byte_perm, and the masks that zero the columns not kept.
  __host__ __device__ static constexpr uint32_t sel(uint32_t nib, int half) {
    uint32_t s = 0;
    for (int c = 0; c < 2; ++c) {
      const int col = 2 * half + c;
      uint32_t k = 0;  // the column's value: the kept ones before it
      for (int b = 0; b < col; ++b) k += (nib >> b) & 1u;
      k &= 3u;
      s |= ((2 * k) | ((2 * k + 1) << 4)) << (8 * c);
    }
    return s;
  }
  __host__ __device__ static constexpr uint32_t keep(uint32_t nib, int half) {
    return (((nib >> (2 * half)) & 1u) ? 0xffffu : 0u) | (((nib >> (2 * half + 1)) & 1u) ? 0xffff0000u : 0u);
  }
  __device__ static void init_lut(uint32_t* lut) {
    for (int i = threadIdx.x; i < 16; i += blockDim.x) {
      const uint32_t n = static_cast<uint32_t>(i);
      lut[4 * i] = sel(n, 0);
      lut[4 * i + 1] = sel(n, 1);
      lut[4 * i + 2] = keep(n, 0);
      lut[4 * i + 3] = keep(n, 1);
    }
  }

  template <bool kVec>
  __device__ __forceinline__ static void load(const Params& p, int64_t k0, int kc, int64_t r0, int s0, int s_end,
                                              int g, int t, Regs& r, const Group&) {
    static_assert(!kVarSteps, "the carried run index assumes the same steps [s_begin, s_end) for every group");
    const int64_t wn = (p.K + 31) / 32;  // words per row
    // s0 continues the batch before (the same group: a new group starts again at the warp's first step, which is
    // below every step that batch carried to) or starts the warp's steps of a group: then word_offsets
    const bool carried = s0 == r.next_s;
    uint32_t w0[kBatch][2], w1[kBatch][2];
    int64_t off[2] = {0, 0};
    // the words (and at a group's first step the run's first index) first, then the values they locate (all
    // steps' loads in flight)
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int c0 = (s0 + u) * kStepCols;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = r0 + g + 8 * h;
        w0[u][h] = w1[u][h] = 0u;
        if (s0 + u < s_end && row < p.N && c0 < kc) {
          const int64_t w = row * wn + (k0 + c0) / 32;
          w0[u][h] = static_cast<uint32_t>(__ldg(p.bitmap + w));
          if ((k0 + c0) / 32 + 1 < wn) w1[u][h] = static_cast<uint32_t>(__ldg(p.bitmap + w + 1));
          if (u == 0) off[h] = carried ? r.next[h] : static_cast<int64_t>(__ldg(p.word_offsets + w));
        }
      }
    }
    r.next_s = s0 + kBatch;
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int n0 = __popc(w0[u][h]);
        const int len = n0 + __popc(w1[u][h]);  // 0 for a step not loaded (nvec 0: nothing read or staged)
        const int64_t start = off[h] & ~static_cast<int64_t>(7);  // the run's first vector
        const int lead = static_cast<int>(off[h] - start);
        const int nvec = len > 0 ? (lead + len + 7) / 8 : 0;
        const uint32_t word = t < 2 ? w0[u][h] : w1[u][h];
        const uint32_t mask = (word >> (16 * (t & 1))) & 0xffffu;
        const int before = (t & 1) ? __popc(word & 0xffffu) : 0;  // the lane's first value, in its word
        const uint32_t place = static_cast<uint32_t>(lead + (t < 2 ? 0 : n0) + before);
        r.m[u][h] = mask | (static_cast<uint32_t>(nvec) << 16);
        const uint32_t c0 = place, c1 = c0 + __popc(mask & 0xfu), c2 = c1 + __popc(mask & 0xf0u),
                       c3 = c2 + __popc(mask & 0xf00u);
        r.k[u][h] = c0 | (c1 << 8) | (c2 << 16) | (c3 << 24);
#pragma unroll
        for (int i = 0; i < 3; ++i) {
          const int q = t + 4 * i;
          r.v[u][h][i] = q < nvec ? load_chunk<uint16_t, kVec>(static_cast<const uint16_t*>(p.w), p.nnz,
                                                               start + 8 * q)
                                  : make_uint4(0u, 0u, 0u, 0u);
        }
        off[h] += len;  // the next step's run
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) r.next[h] = off[h];
  }

  // Stages step u's runs in the warp's buffer (every lane of the warp calls).
  __device__ __forceinline__ static void prepare(Regs& r, int u, unsigned char* stage) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    __syncwarp();  // the previous step's reads of the buffer are done
    r.stage = stage;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int nvec = static_cast<int>(r.m[u][h] >> 16);
      unsigned char* row = stage + (8 * h + g) * kRowBuf;
#pragma unroll
      for (int i = 0; i < 3; ++i)
        if (t + 4 * i < nvec) *reinterpret_cast<uint4*>(row + 16 * (t + 4 * i)) = r.v[u][h][i];
    }
    __syncwarp();
  }

  template <typename T>
  __device__ __forceinline__ static void pairs(const Regs& r, int u, int h, int j, const uint32_t* lut, uint32_t& lo,
                                               uint32_t& hi) {
    static_assert(sizeof(T) == 2, "bitmap values multiply float16 / bfloat16 activations");
    // no branch on an empty nibble: its masks are zero (and the buffer is read within its bounds either way)
    const uint32_t nib = (r.m[u][h] >> (4 * j)) & 15u;
    const int g = (threadIdx.x & 31) >> 2;
    const int k = static_cast<int>((r.k[u][h] >> (8 * j)) & 0xffu);  // the nibble's first value in the run
    const unsigned char* row = r.stage + (8 * h + g) * kRowBuf + 8 * (k >> 2);
    const uint2 a = *reinterpret_cast<const uint2*>(row);      // values 4 (k / 4) .. + 3
    const uint2 b = *reinterpret_cast<const uint2*>(row + 8);  // .. + 7
    const int d = k & 3;
    const uint32_t x0 = d >= 2 ? a.y : a.x, x1 = d >= 2 ? b.x : a.y, x2 = d >= 2 ? b.y : b.x;
    const uint32_t v01 = (d & 1) ? __byte_perm(x0, x1, 0x5432u) : x0;  // values k, k + 1
    const uint32_t v23 = (d & 1) ? __byte_perm(x1, x2, 0x5432u) : x1;  // k + 2, k + 3
    const uint4 e = reinterpret_cast<const uint4*>(lut)[nib];
    lo = __byte_perm(v01, v23, e.x) & e.z;
    hi = __byte_perm(v01, v23, e.y) & e.w;
  }
};

// ------------------------------------------------------------------------------------ activations
// HalfX<T>: float16 / bfloat16 x, m16n8k16 (4 mmas per step), float32 sums, times the weight's scale when W
// has one, written by write_out (split-K: float32 partials). Int8X<OutT>: int8 x (W8A8), m16n8k32 (2 mmas
// per step), exact int32 sums; y = float(sum) * x_scale[m] * w_scale[n] (+ bias[n]) in float32 without
// contraction, rounded once to OutT: the reference's bytes; split-K partials are int32, added exactly by
// w8a8_finish_kernel.
template <typename T>
struct HalfX {
  using Acc = float;
  using Elem = T;  // the fragments' element type
  static constexpr int kXBytes = 2, kMmas = 4;
  static constexpr bool kQuant = false;
  static constexpr size_t kExtraBytes = 0;
  __device__ __forceinline__ static void mma(Acc (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_16816<T>(d, a, b);
  }
  template <typename W>
  __device__ __forceinline__ static void write(const Params& p, int splits, int split, int64_t m, int64_t n, Acc s,
                                               float) {
    if constexpr (W::kScaled) s *= p.scale[n];
    write_out<T>(p.out, splits, split, m, n, s);
  }
};

template <typename O>
__device__ __forceinline__ void w8a8_store(const Output& o, int64_t m, int64_t n, int acc, float xs, float ws) {
  float y = __fmul_rn(__fmul_rn(static_cast<float>(acc), xs), ws);
  if (o.bias) y = __fadd_rn(y, to_f(static_cast<const O*>(o.bias)[n]));
  static_cast<O*>(o.y)[m * o.ldy + n] = from_f<O>(y);
}

template <typename O, bool kQuantize = false>
struct Int8X {
  using Acc = int;
  using Elem = int8_t;
  using In = O;  // kQuant: x's element type
  static constexpr int kXBytes = 1, kMmas = 2;
  static constexpr bool kQuant = kQuantize;
  static constexpr size_t kExtraBytes = kQuant ? 2 * kGroupRows * 4 : 0;  // the rows' scales and max |x| bits
  __device__ __forceinline__ static void mma(Acc (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_s8_16832(d, a, b);
  }
  template <typename W>
  __device__ __forceinline__ static void write(const Params& p, int splits, int split, int64_t m, int64_t n, Acc s,
                                               float xs) {
    const Output& o = p.out;
    if (splits == 1) {
      w8a8_store<O>(o, m, n, s, xs, p.scale[n]);
    } else {
      reinterpret_cast<int*>(o.ws)[(static_cast<int64_t>(split) * o.ws_rows + (m - o.ws_m0)) * o.N + n] = s;
    }
  }
};

// The W8A8 split-K finish: y[m, n] from the int32 partials of every split, exactly; row m's scale is
// x_scale[m - xs_m0] (xs_m0 = 0: the caller's scales; o.ws_m0: those the fused quantization left in the workspace).
template <typename O>
__global__ void __launch_bounds__(256) w8a8_finish_kernel(const Output o, int splits, const float* x_scale,
                                                          int64_t xs_m0, const float* w_scale) {
  const int64_t total = o.ws_rows * o.N;
  const int* ws = reinterpret_cast<const int*>(o.ws);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / o.N, n = i - r * o.N;
    int s = 0;
    for (int k = 0; k < splits; ++k) s += ws[(static_cast<int64_t>(k) * o.ws_rows + r) * o.N + n];
    w8a8_store<O>(o, o.ws_m0 + r, n, s, x_scale[o.ws_m0 + r - xs_m0], w_scale[n]);
  }
}

template <typename O>
cudaError_t launch_w8a8_finish(const Output& o, int splits, const float* x_scale, int64_t xs_m0, const float* w_scale,
                               cudaStream_t stream) {
  const int64_t total = o.ws_rows * o.N;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = imin<int64_t>(ceil_div<int64_t>(total, 256), 65535);
  w8a8_finish_kernel<O><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(o, splits, x_scale, xs_m0, w_scale);
  return cudaGetLastError();
}

// Where the fused quantization leaves the rows' scales when K is split (for w8a8_finish_kernel): after the
// int32 partials of the workspace, row m at m - o.ws_m0.
__host__ __device__ inline float* split_x_scales(const Output& o, int splits) {
  return reinterpret_cast<float*>(reinterpret_cast<int*>(o.ws) + static_cast<int64_t>(splits) * o.ws_rows * o.N);
}

// ------------------------------------------------------------------------------------ per-token quantization
// The reference's symmetric quantize_per_token, bit for bit: a row's scale is max |x| / 127 (IEEE division; 1
// for a row of zeros; NaN for a row holding NaN or +-Inf), q = clamp(round_half_even(x / scale), -127, 127) with
// IEEE division, 0 throughout a NaN row. QuantX (below) does it inside the W8A8 kernel; quantize_rows_kernel as
// a kernel of its own (w8a8_kernel.cu).
constexpr int kQVec = 8;  // x elements per 16-byte load (float16 / bfloat16)

__device__ __forceinline__ float q_inf() { return __uint_as_float(0x7f800000u); }
// |v| when v is finite, else +inf: the row's max then says whether it holds a NaN / +-Inf
__device__ __forceinline__ float q_mag(float v) {
  const float a = fabsf(v);
  return a < q_inf() ? a : q_inf();
}
__device__ __forceinline__ float q_scale(float amax) {
  return !(amax < q_inf()) ? __uint_as_float(0x7fffffffu) : amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
}
__device__ __forceinline__ uint32_t q_byte(float v, float scale) {
  if (scale != scale) return 0u;
  const float r = fminf(fmaxf(rintf(__fdiv_rn(v, scale)), -127.f), 127.f);
  return static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(r)));
}
template <typename T>
__device__ __forceinline__ void q_unpack(const uint4& v, T (&e)[kQVec]) {
  static_assert(sizeof(T) == 2, "16-byte vectors of float16 / bfloat16");
  memcpy(&e, &v, 16);
}
template <typename T>
__device__ __forceinline__ uint2 q_vec(const uint4& v, float scale) {  // 8 elements to 8 int8 (little-endian)
  T e[kQVec];
  q_unpack(v, e);
  uint32_t w[2] = {0u, 0u};
#pragma unroll
  for (int i = 0; i < kQVec; ++i) w[i / 4] |= q_byte(to_f(e[i]), scale) << (8 * (i % 4));
  return make_uint2(w[0], w[1]);
}

// Whether x's rows are read as 16-byte vectors: float16 / bfloat16, 16-byte aligned, K and the row stride
// multiples of 8 elements.
template <typename T>
__host__ __device__ inline bool q_vec_rows(const void* x, int64_t ldx, int64_t K) {
  return sizeof(T) == 2 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && ldx % kQVec == 0 && K % kQVec == 0;
}

// This thread's part of max q_mag over a row of K elements: vectors (or elements) i0, i0 + stride, ...
template <typename T>
__device__ __forceinline__ float q_row_part(const T* row, int64_t K, bool vec, int i0, int stride) {
  float a = 0.f;
  if constexpr (sizeof(T) == 2) {
    if (vec) {
      const uint4* rv = reinterpret_cast<const uint4*>(row);
      for (int64_t v = i0; v < K / kQVec; v += stride) {
        T e[kQVec];
        q_unpack(__ldg(rv + v), e);
#pragma unroll
        for (int i = 0; i < kQVec; ++i) a = fmaxf(a, q_mag(to_f(e[i])));
      }
      return a;
    }
  }
  for (int64_t k = i0; k < K; k += stride) a = fmaxf(a, q_mag(to_f(row[k])));
  return a;
}

// Max over `width` consecutive lanes (a power of two, at most 32; every lane of the warp calls), then one lane
// of each group raises *slot (the bits of a non-negative float order as the float).
__device__ __forceinline__ void q_reduce(float a, int width, unsigned* slot, bool live) {
  for (int o = width / 2; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  if (live && (threadIdx.x & (width - 1)) == 0) atomicMax(slot, __float_as_uint(a));
}

// Stages the chunk [k0, k0 + kc) of x rows [m0, m0 + mrows) quantized (the x tile of mma_decode_kernel, `cols`
// columns, zeros past mrows and kc) and leaves each row's scale in xsc[m]: first max |x| over the row's whole K
// (blockDim / MT threads a row), then the chunk. Every block reads its rows of x whole (from L2 after the
// first), which is why the host fuses only while they are few bytes. With K split, block (0, 0) of the tile
// also writes the scales to the workspace for w8a8_finish_kernel.
template <typename T, int MT>
__device__ void stage_quantized(const Params& p, unsigned char* xs, size_t ld, int64_t m0, int mrows, int64_t k0,
                                int kc, int cols, float* xsc, unsigned* amax, int splits) {
  const T* x = static_cast<const T*>(p.x) + m0 * p.ldx;
  const bool vec = q_vec_rows<T>(p.x, p.ldx, p.K);
  if (threadIdx.x < MT) amax[threadIdx.x] = 0u;
  __syncthreads();
  const int tpr = static_cast<int>(blockDim.x) / MT;  // 16 or more: MT <= 16, 256 or 512 threads
  const int m = static_cast<int>(threadIdx.x) / tpr;
  const bool live = m < mrows;
  const float a = live ? q_row_part(x + m * p.ldx, p.K, vec, static_cast<int>(threadIdx.x) - m * tpr, tpr) : 0.f;
  q_reduce(a, imin(tpr, 32), amax + m, live);
  __syncthreads();
  if (threadIdx.x < MT) {
    const float s = q_scale(__uint_as_float(amax[threadIdx.x]));
    xsc[threadIdx.x] = s;
    if (splits > 1 && blockIdx.x == 0 && blockIdx.y == 0 && static_cast<int>(threadIdx.x) < mrows)
      split_x_scales(p.out, splits)[m0 + threadIdx.x - p.out.ws_m0] = s;
  }
  __syncthreads();
  const T* xc = x + k0;
  if (vec) {  // kc % 8 == 0 (K % 8 == 0, k0 % 64 == 0): 16 bytes in, 8 bytes out
    const int vcols = cols / kQVec;
    for (int i = threadIdx.x; i < MT * vcols; i += blockDim.x) {
      const int r = i / vcols, c = (i - r * vcols) * kQVec;
      uint2 q = make_uint2(0u, 0u);
      if (r < mrows && c < kc) q = q_vec<T>(__ldg(reinterpret_cast<const uint4*>(xc + r * p.ldx + c)), xsc[r]);
      *reinterpret_cast<uint2*>(xs + r * ld + c) = q;
    }
  } else {
    for (int i = threadIdx.x; i < MT * cols; i += blockDim.x) {
      const int r = i / cols, c = i - r * cols;
      xs[r * ld + c] = static_cast<unsigned char>((r < mrows && c < kc) ? q_byte(to_f(xc[r * p.ldx + c]), xsc[r]) : 0u);
    }
  }
}

// W8A8 with float16 / bfloat16 x quantized per token inside the kernel (the one-launch int8_linear): Int8X whose
// x tile is staged by stage_quantized and whose epilogue takes the block's own scales.
template <typename T>
using QuantX = Int8X<T, true>;

// ------------------------------------------------------------------------------------ the kernel
template <typename W, typename X, int MT, bool kVec>
__global__ void __launch_bounds__(kMaxThreads, 1) mma_decode_kernel(const Params p) {
  static_assert(MT == 1 || MT == 2 || MT == 4 || MT == 8 || MT == 16 || MT == 32, "M tiles of 1-32 rows");
  static_assert(MT <= 16 || !X::kQuant, "the fused quantization stages at most 16 rows");
  constexpr int NT = MT > 8 ? MT / 8 : 1;  // mma n-tiles of 8 activation rows
  constexpr int XW = 2 * X::kMmas;         // 32-bit words of x per lane, step and n-tile
  // Up to 2 n-tiles a step's x fragments are loaded at once and held (16-byte loads); with 4 (the wide tile) they
  // would not fit the 128 registers beside 4 accumulators, so each mma's 8 bytes are loaded where it needs them.
  constexpr bool kHoldX = NT <= 2;
  using Acc = typename X::Acc;
  using XBits = std::conditional_t<X::kXBytes == 2, uint16_t, uint8_t>;
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
  // the warp's steps [sb, se) of the row group at r0 (the chunk's steps split between the warps)
  auto warp_steps = [&](int64_t r0, int& sb, int& se, typename W::Group& gs) {
    const int st = W::group_steps(p, r0, k0, kc, steps, gs);
    const int per_warp = ceil_div(st, nwarps);
    sb = imin(warp * per_warp, st);
    se = imin(sb + per_warp, st);
  };
  const int64_t m0 = p.m_begin + static_cast<int64_t>(blockIdx.z) * MT;
  const int mrows = static_cast<int>(imin<int64_t>(MT, p.M - m0));
  const int64_t groups = ceil_div<int64_t>(p.N, kGroupRows);

  const size_t ld = row_ld(p.Kc + (W::kVarSteps ? kStepCols : 0), X::kXBytes);
  unsigned char* xs = smem;
  Acc* red = reinterpret_cast<Acc*>(smem + MT * ld);
  uint32_t* lut = reinterpret_cast<uint32_t*>(red + static_cast<size_t>(nwarps) * 2 * MT * kGroupRows);

  int64_t grp = blockIdx.x;
  typename W::Regs regs;
  typename W::Group gs;
  const auto load = [&](int64_t r0, int s0, int s_end, const typename W::Group& group) {
    if constexpr (W::kRefill) {
      load_batch<W, kVec>(p, k0, kc, r0, s0, s_end, g, t, regs);
    } else {
      W::template load<kVec>(p, k0, kc, r0, s0, s_end, g, t, regs, group);
    }
  };
  bool preloaded = false;
  int s_begin = 0, s_end = 0;
  if (grp < groups) {  // in flight while x is staged
    warp_steps(grp * kGroupRows, s_begin, s_end, gs);
    if (s_begin < s_end) {
      load(grp * kGroupRows, s_begin, s_end, gs);
      preloaded = true;
    }
  }

  float* xsc = reinterpret_cast<float*>(lut + W::kLutWords);  // QuantX: the rows' scales, then max |x| bits
  unsigned char* wstage = reinterpret_cast<unsigned char*>(xsc) + X::kExtraBytes + warp * W::kWarpBytes;
  {  // stage x rows [m0, m0 + mrows), columns [k0, k0 + kc); zero up to MT rows and whole steps
    const int cols = (steps + (W::kVarSteps ? 1 : 0)) * kStepCols;
    if constexpr (X::kQuant) {
      stage_quantized<typename X::In, MT>(p, xs, ld, m0, mrows, k0, kc, cols, xsc,
                                          reinterpret_cast<unsigned*>(xsc + kGroupRows), splits);
    } else {
      const XBits* xb = reinterpret_cast<const XBits*>(p.x) + m0 * p.ldx + k0;
      for (int i = threadIdx.x; i < MT * cols; i += blockDim.x) {
        const int m = i / cols, c = i - m * cols;
        *reinterpret_cast<XBits*>(xs + m * ld + X::kXBytes * c) =
            (m < mrows && c < kc) ? xb[m * p.ldx + c] : static_cast<XBits>(0);
      }
    }
    W::init_lut(lut);
  }
  __syncthreads();

  for (int buf = 0; grp < groups; grp += gridDim.x, buf ^= 1) {
    const int64_t r0 = grp * kGroupRows;
    if (grp != blockIdx.x) warp_steps(r0, s_begin, s_end, gs);  // (the first group's were taken for its preload)
    Acc acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[nt][i] = Acc(0);

    for (int s0 = s_begin; s0 < s_end; s0 += W::kBatch) {
      if (!preloaded) load(r0, s0, s_end, gs);
      preloaded = false;
      // kRefill: the next batch (the group's next, or the next group's first; the dense policies' steps are the
      // same in every group) goes out entry by entry, each as soon as this batch's entry is consumed
      const bool last = s0 + W::kBatch >= s_end;
      const int64_t r_next = last ? r0 + static_cast<int64_t>(gridDim.x) * kGroupRows : r0;
      const int s_next = last ? s_begin : s0 + W::kBatch;
      const bool refill = W::kRefill && p.refill && (!last || grp + gridDim.x < groups);
#pragma unroll
      for (int u = 0; u < W::kBatch; ++u) {
        if (s0 + u < s_end) {
          W::prepare(regs, u, wstage);
          // kHoldX: the step's x fragments of every n-tile loaded at once (16-byte loads) and held; else (MT = 32,
          // rows 8 nt + g all inside the tile) each mma's 8 bytes (the lane's words 2 j, 2 j + 1) where it needs them
          const unsigned char* xrow = xs + g * ld + X::kXBytes * W::xcol(regs, u, s0 + u, t);
          uint32_t xw[kHoldX ? NT : 1][XW];
          if constexpr (kHoldX) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
              for (int q = 0; q < XW / 4; ++q) {
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (8 * nt + g < MT) v = reinterpret_cast<const uint4*>(xrow + 8 * nt * ld)[q];
                xw[nt][4 * q] = v.x; xw[nt][4 * q + 1] = v.y; xw[nt][4 * q + 2] = v.z; xw[nt][4 * q + 3] = v.w;
              }
            }
          }
#pragma unroll
          for (int j = 0; j < X::kMmas; ++j) {
            uint32_t a[4];
            W::template pairs<typename X::Elem>(regs, u, 0, j, lut, a[0], a[2]);
            W::template pairs<typename X::Elem>(regs, u, 1, j, lut, a[1], a[3]);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              uint32_t b[2];
              if constexpr (kHoldX) {
                b[0] = xw[nt][2 * j]; b[1] = xw[nt][2 * j + 1];
              } else {
                const uint2 v = reinterpret_cast<const uint2*>(xrow + 8 * nt * ld)[j];
                b[0] = v.x; b[1] = v.y;
              }
              X::mma(acc[nt], a, b);
            }
          }
        }
        if constexpr (W::kRefill) {
          if (refill) W::template load_step<kVec>(p, k0, kc, r_next, s_next + u, s_end, g, t, regs, u);
        }
      }
      if (refill) preloaded = true;
    }

    // the next group's first batch goes out before the reduction waits (kRefill: it went out above)
    if ((!W::kRefill || !p.refill) && grp + gridDim.x < groups) {
      int nb = s_begin, ne = s_end;  // the dense policies' steps are the same for every group
      typename W::Group next = gs;
      if constexpr (W::kVarSteps) warp_steps((grp + gridDim.x) * kGroupRows, nb, ne, next);
      if (nb < ne) {
        load((grp + gridDim.x) * kGroupRows, nb, ne, next);
        preloaded = true;
      }
    }

    // partial sums [warp][activation row][weight row]; buffer buf, so the next group's writes (to the
    // other buffer) need no second barrier
    Acc* mine = red + (static_cast<size_t>(buf) * nwarps + warp) * MT * kGroupRows;
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
    const Acc* all = red + static_cast<size_t>(buf) * nwarps * MT * kGroupRows;
    for (int i = threadIdx.x; i < MT * kGroupRows; i += blockDim.x) {
      const int m = i / kGroupRows, row = i - m * kGroupRows;
      const int64_t n = r0 + row;
      if (m < mrows && n < p.N) {
        Acc s = Acc(0);
        for (int w = 0; w < nwarps; ++w) s += all[static_cast<size_t>(w) * MT * kGroupRows + i];
        float xscale = 0.f;  // int8 x: the row's scale
        if constexpr (X::kXBytes == 1) xscale = X::kQuant ? xsc[m] : p.x_scale[m0 + m];
        X::template write<W>(p, splits, split, m0 + m, n, s, xscale);
      }
    }
  }
}

// ------------------------------------------------------------------------------------ host side
// Two buffers of mt x 16 partial sums (float32 or int32) per warp.
inline size_t red_bytes_per_warp(int mt) { return 2 * static_cast<size_t>(mt) * kGroupRows * 4; }

// Shared bytes of a launch: the x tile, the partial sums (and the policy's buffer) of `threads / 32` warps, the
// policy's table.
template <typename W, typename X>
size_t smem_bytes(int mt, int64_t Kc, int threads) {
  return rowtile_bytes(mt, Kc + (W::kVarSteps ? kStepCols : 0), X::kXBytes) +
         static_cast<size_t>(threads / 32) * (red_bytes_per_warp(mt) + W::kWarpBytes) +
         static_cast<size_t>(W::kLutWords) * 4 + X::kExtraBytes;
}

// The K chunks of a launch for M activation rows (the largest M tile used sizes them).
// align: what Kc is a multiple of (kStepCols, or a multiple of it: BSR's chunks hold whole blocks).
template <typename W, typename X>
Chunking chunking(int64_t M, int64_t K, const DevInfo& d, int64_t align = kStepCols, int tile_rows = 16) {
  const int mt_max = tile_m_for(M, tile_rows);
  return choose_chunking(K, align, red_bytes_per_warp(mt_max) + W::kWarpBytes, d, [&](int64_t cols) {
    return rowtile_bytes(mt_max, cols + (W::kVarSteps ? kStepCols : 0), X::kXBytes) +
           static_cast<size_t>(W::kLutWords) * 4 + X::kExtraBytes;
  });
}

// The rows of a full M tile (Plan::tile_rows) for M activation rows: 32 above 16 rows (the wide tile: a weight
// step converted once for 32 rows, not once per 16), unless x is quantized in the kernel (QuantX stages at most 16)
// or SPARSEKIT_CUDA_WIDE_TILE=0; else 16.
template <typename X>
int tile_rows_for(int64_t M) {
  return M > 16 && !X::kQuant && wide_tiles() ? 32 : 16;
}

// A plan's M tile rows and K chunks: the wide tile where tile_rows_for says so and one chunk of it fits the
// device's shared memory (32 rows of partial sums a warp: 4 KB), else tiles of 16.
template <typename W, typename X>
void plan_chunks(Plan* p, int64_t M, int64_t K, const DevInfo& d) {
  p->tile_rows = tile_rows_for<X>(M);
  p->ch = chunking<W, X>(M, K, d, kStepCols, p->tile_rows);
  if (p->tile_rows > 16 && static_cast<int64_t>(p->ch.smem) > imin<int64_t>(d.smem_optin, d.smem_per_sm - 1024)) {
    p->tile_rows = 16;
    p->ch = chunking<W, X>(M, K, d, kStepCols, 16);
  }
}

// Launches mma_decode_kernel<W, X, MT, kVec> over `tiles` M tiles from m_begin (a block per row group at
// most: no more blocks than groups).
template <typename W, typename X, int MT, bool kVec>
cudaError_t launch(Params p, const Plan& plan, const DevInfo& d, int64_t m_begin, int64_t tiles, cudaStream_t stream) {
  const auto kernel = mma_decode_kernel<W, X, MT, kVec>;
  p.Kc = plan.ch.Kc;
  p.refill = plan.refill;
  const int64_t groups = ceil_div<int64_t>(p.N, kGroupRows);
  return launch_decode_grid<MT>(kernel, p, plan, d, smem_bytes<W, X>(MT, plan.ch.Kc, plan.ch.threads),
                                groups * (plan.ch.threads / 32), m_begin, tiles, stream);
}

}  // namespace mma
}  // namespace decode
}  // namespace cuda
}  // namespace sparsekit
