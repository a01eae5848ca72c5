// AVX-512 CSR core for M >= 2 activation rows (M == 1 keeps the gather path).
//
// Measured first (one thread, 4096 x 4096 at 70 %, ns per kept weight): M = 1 takes 0.43, the AVX2
// tiles 1.2 at every M from 2 to 16, and 0.65 at M = 4 when K is 256. What sets the time is not the
// arithmetic nor the bytes but the reads of xt: K x round_up(M, 8) floats (128 KiB at K = 4096) do not
// fit in L1, and every kept weight reads a line of it at a random column. So:
//  - one 512-bit FMA serves G = 16 / W kept weights: W (4, 8 or 16: M rounded up) floats of xt per kept
//    weight, G such slices side by side in one register, against each kept value repeated W times; a
//    row's G groups are summed at its end. The reads of xt stay inside round_up(M, 8) per column (W <=
//    round_up(M, 8)), the padding csr_spmm.h already requires readable; the lanes past M are dropped.
//  - K is walked in panels (rows_w), a block of 16 rows at a time, so that the panel's slice of xt
//    (32 KiB, at least 128 columns) stays in L1; the next block's weights are prefetched into L2
//    meanwhile, since a block read piece by piece does not stream by itself. A row's piece of a panel
//    is found by a forward scan, 16 columns per compare. Rows sparser than 1 in 8 (K > 1024) give pieces
//    too short to pay for it, and go to the AVX2 tiles instead (csr_spmm_rows). From M = 49 the blocks
//    are 64 rows and the panels larger, and with float32 x both follow the density, down to 1 in 64
//    (Blocking).
//  - from M = 17, R = ceil(M / 16) registers per kept weight (the last one loaded under a mask), in
//    tiles of up to 128 rows.
// 8 layers of 4096 x 4096 at 70 %, 2 threads, AVX2 tiles -> this: M = 4 24.7 -> 16.5 ms, M = 16 25.9 ->
// 20.8 ms, M = 64 75.5 -> 68.3 ms (one thread: 2.6 ns per kept weight at M = 64, bound by xt reads).
//  - bf16 values and x staged as bf16 (xt16, M >= 9, AVX-512 BF16): two kept weights per vdpbf16ps, half
//    the bytes of xt per kept weight (accumulate_dp); sparse rows then go without panels (docs/cpu.md).
#include <cstdint>
#include <cstring>

#include "csr_spmm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace sparsekit {
namespace core {
namespace avx512 {

namespace {

#define SK_VEC_FLOATS 16
#include "tile_common_impl.h"
#undef SK_VEC_FLOATS

// On the loops over an array of vector registers (the accumulators): unrolled before GCC scalarizes the array,
// the registers stay registers; otherwise GCC 12 also keeps the array on the stack and stores every accumulator
// after each kept weight (8 stores per kept weight at M = 128).
#define SK_UNROLL _Pragma("GCC unroll 16")

// xt's slices of width W for the G = 16 / W columns at col[0 .. G), side by side.
template <int W>
inline __m512 load_slices(const float* xt, int64_t ld, const int32_t* col) {
  const float* p0 = xt + static_cast<int64_t>(col[0]) * ld;
  if constexpr (W == 16) {
    return _mm512_loadu_ps(p0);
  } else if constexpr (W == 8) {
    const __m512d lo = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(p0)));
    const __m256 hi = _mm256_loadu_ps(xt + static_cast<int64_t>(col[1]) * ld);
    return _mm512_castpd_ps(_mm512_insertf64x4(lo, _mm256_castps_pd(hi), 1));
  } else {
    __m512 v = _mm512_castps128_ps512(_mm_loadu_ps(p0));
    v = _mm512_insertf32x4(v, _mm_loadu_ps(xt + static_cast<int64_t>(col[1]) * ld), 1);
    v = _mm512_insertf32x4(v, _mm_loadu_ps(xt + static_cast<int64_t>(col[2]) * ld), 2);
    return _mm512_insertf32x4(v, _mm_loadu_ps(xt + static_cast<int64_t>(col[3]) * ld), 3);
  }
}

// G (4 or 2) kept values as float32 in the low lanes of a 128-bit register.
template <DType VD, int G>
inline __m128 load_values(const typename Elem<VD>::storage* v) {
  if constexpr (VD == DType::f32) {
    return G == 4 ? _mm_loadu_ps(reinterpret_cast<const float*>(v))
                  : _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v)));  // unaligned
  } else {
    __m128i h;
    if constexpr (G == 4) {
      h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(v));
    } else {
      int32_t bits;
      std::memcpy(&bits, v, sizeof bits);
      h = _mm_cvtsi32_si128(bits);
    }
    return VD == DType::bf16 ? _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16)) : _mm_cvtph_ps(h);
  }
}

// The G kept values at v, each repeated W times, in the order of load_slices.
template <DType VD, int W>
inline __m512 load_repeated(const typename Elem<VD>::storage* v) {
  if constexpr (W == 16) {
    return _mm512_set1_ps(Elem<VD>::load(v, 0));
  } else {
    const __m512i idx = W == 8 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                               : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(load_values<VD, 16 / W>(v)));
  }
}

// R registers of 16 lanes: one output column's partial sums for up to 16 R rows (R = 1 for W < 16,
// where the register holds G groups).
template <int R>
struct Acc {
  __m512 v[R];
};

template <int R>
inline Acc<R> acc_zero() {
  Acc<R> a;
  for (int r = 0; r < R; ++r) a.v[r] = _mm512_setzero_ps();
  return a;
}

template <int R>
inline void acc_add(Acc<R>& a, const Acc<R>& b) {
  for (int r = 0; r < R; ++r) a.v[r] = _mm512_add_ps(a.v[r], b.v[r]);
}

// Adds the kept weights [j, end) to `out`: vals[j] (repeated) times xt's slice of col[j]. W < 16: G
// kept weights per FMA, in the G groups. W = 16: R registers per kept weight (R >= 2 from M = 17),
// the last loaded under `last` (its lanes below M): its slice may end past the column's padding.
template <DType VD, int W, int R>
inline void accumulate(const typename Elem<VD>::storage* __restrict vals, const int32_t* __restrict col,
                       const float* __restrict xt, int64_t ld, int64_t j, int64_t end, __mmask16 last,
                       Acc<R>& out) {
  using V = typename Elem<VD>::storage;
  if constexpr (R == 1) {
    constexpr int G = 16 / W;
    // four accumulators: the FMAs of consecutive steps do not wait on each other (4 cycles of latency)
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
           acc3 = _mm512_setzero_ps();
    for (; j + 4 * G <= end; j += 4 * G) {
      acc0 = _mm512_fmadd_ps(load_repeated<VD, W>(vals + j), load_slices<W>(xt, ld, col + j), acc0);
      acc1 = _mm512_fmadd_ps(load_repeated<VD, W>(vals + j + G), load_slices<W>(xt, ld, col + j + G), acc1);
      acc2 = _mm512_fmadd_ps(load_repeated<VD, W>(vals + j + 2 * G), load_slices<W>(xt, ld, col + j + 2 * G), acc2);
      acc3 = _mm512_fmadd_ps(load_repeated<VD, W>(vals + j + 3 * G), load_slices<W>(xt, ld, col + j + 3 * G), acc3);
    }
    for (; j + G <= end; j += G)
      acc0 = _mm512_fmadd_ps(load_repeated<VD, W>(vals + j), load_slices<W>(xt, ld, col + j), acc0);
    if (j < end) {
      // fewer than G left: their values and columns into the first groups, the other groups masked
      // off (not multiplied by zero: 0 * inf would turn an inf sum into a NaN)
      const int rest = static_cast<int>(end - j);
      V v[G];
      int32_t c[G];
      for (int g = 0; g < G; ++g) {
        v[g] = vals[j + (g < rest ? g : 0)];
        c[g] = col[j + (g < rest ? g : 0)];
      }
      const __mmask16 keep = static_cast<__mmask16>((1u << (rest * W)) - 1u);
      acc1 = _mm512_mask3_fmadd_ps(load_repeated<VD, W>(v), load_slices<W>(xt, ld, c), acc1, keep);
    }
    out.v[0] = _mm512_add_ps(out.v[0], _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
  } else {
    static_assert(W == 16, "several registers per kept weight: 16 lanes each");
    // R independent FMA chains per kept weight; two accumulator sets at R = 2 (4 chains in flight)
    constexpr int U = R == 2 ? 2 : 1;
    __m512 acc[U][R];
    SK_UNROLL
    for (int u = 0; u < U; ++u)
      SK_UNROLL
      for (int r = 0; r < R; ++r) acc[u][r] = _mm512_setzero_ps();
    for (; j + U <= end; j += U) {
      SK_UNROLL
      for (int u = 0; u < U; ++u) {
        const __m512 v = _mm512_set1_ps(Elem<VD>::load(vals, j + u));
        const float* p = xt + static_cast<int64_t>(col[j + u]) * ld;
        SK_UNROLL
        for (int r = 0; r < R - 1; ++r) acc[u][r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(p + 16 * r), acc[u][r]);
        acc[u][R - 1] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(last, p + 16 * (R - 1)), acc[u][R - 1]);
      }
    }
    for (; j < end; ++j) {
      const __m512 v = _mm512_set1_ps(Elem<VD>::load(vals, j));
      const float* p = xt + static_cast<int64_t>(col[j]) * ld;
      SK_UNROLL
      for (int r = 0; r < R - 1; ++r) acc[0][r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(p + 16 * r), acc[0][r]);
      acc[0][R - 1] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(last, p + 16 * (R - 1)), acc[0][R - 1]);
    }
    SK_UNROLL
    for (int u = 1; u < U; ++u)
      SK_UNROLL
      for (int r = 0; r < R; ++r) acc[0][r] = _mm512_add_ps(acc[0][r], acc[u][r]);
    SK_UNROLL
    for (int r = 0; r < R; ++r) out.v[r] = _mm512_add_ps(out.v[r], acc[0][r]);
  }
}

// ---- bf16 values times x staged as bf16 (xt16), AVX-512 BF16. One vdpbf16ps takes two kept weights: their
// values as one 32-bit pair (adjacent in `vals`) against their two columns' slices of xt16 interleaved, and adds
// w0 x0[m] + w1 x1[m] into lane m. Per 16 activation rows and two kept weights: two 32-byte loads, one vpermt2w
// and one vdpbf16ps, where the float32 path loads 128 bytes and runs two FMAs. Both instructions are written as
// inline asm (this file is not compiled for AVX-512 BF16 / BW; csr_spmm_bf16_xt checks the CPU).
inline __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

// The 16 bf16 of a and of b interleaved: a0 b0 a1 b1 ... a15 b15.
inline __m512i interleave16(__m256i a, __m256i b) {
  const __m512i idx = _mm512_set_epi32(0x002F000F, 0x002E000E, 0x002D000D, 0x002C000C, 0x002B000B, 0x002A000A,
                                       0x00290009, 0x00280008, 0x00270007, 0x00260006, 0x00250005, 0x00240004,
                                       0x00230003, 0x00220002, 0x00210001, 0x00200000);
  __m512i r = _mm512_castsi256_si512(a);
  asm("vpermt2w %2, %1, %0" : "+v"(r) : "v"(idx), "v"(_mm512_castsi256_si512(b)));
  return r;
}

// 16 bf16 of an xt16 slice; the last register of a row only its first `last` 32-bit pairs (the lanes below M,
// rounded up to a pair: the lane past an odd M reads xt16's padding and is dropped).
template <bool kLast>
inline __m256i load_x16(const uint16_t* p, __mmask8 last) {
  if constexpr (kLast) return _mm256_maskz_loadu_epi32(last, p);
  else return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Adds the kept weights [j, end) to `out` (R registers of 16 activation rows), two at a time.
template <int R>
inline void accumulate_dp(const uint16_t* __restrict vals, const int32_t* __restrict col,
                          const uint16_t* __restrict xt, int64_t ld, int64_t j, int64_t end, __mmask8 last,
                          Acc<R>& out) {
  // U accumulator sets: vdpbf16ps has a latency of several cycles, and R chains alone would wait on it
  constexpr int U = R == 1 ? 4 : 2;
  __m512 acc[U][R];
  SK_UNROLL
  for (int u = 0; u < U; ++u)
    SK_UNROLL
    for (int r = 0; r < R; ++r) acc[u][r] = _mm512_setzero_ps();
  auto pair = [&](int u, int64_t i) {
    int32_t w2;
    std::memcpy(&w2, vals + i, sizeof w2);
    const __m512i w = _mm512_set1_epi32(w2);
    const uint16_t* p0 = xt + static_cast<int64_t>(col[i]) * ld;
    const uint16_t* p1 = xt + static_cast<int64_t>(col[i + 1]) * ld;
    SK_UNROLL
    for (int r = 0; r < R - 1; ++r)
      acc[u][r] = dpbf16(acc[u][r], interleave16(load_x16<false>(p0 + 16 * r, last), load_x16<false>(p1 + 16 * r, last)), w);
    acc[u][R - 1] = dpbf16(acc[u][R - 1],
                           interleave16(load_x16<true>(p0 + 16 * (R - 1), last), load_x16<true>(p1 + 16 * (R - 1), last)), w);
  };
  for (; j + 2 * U <= end; j += 2 * U)
    SK_UNROLL
    for (int u = 0; u < U; ++u) pair(u, j + 2 * u);
  for (; j + 2 <= end; j += 2) pair(0, j);
  if (j < end) {
    // one left: its value with a zero beside it, its slice with zeros between (0 * 0: no NaN from elsewhere)
    const __m512i w = _mm512_set1_epi32(vals[j]);
    const uint16_t* p0 = xt + static_cast<int64_t>(col[j]) * ld;
    const __m256i z = _mm256_setzero_si256();
    SK_UNROLL
    for (int r = 0; r < R - 1; ++r) acc[1 % U][r] = dpbf16(acc[1 % U][r], interleave16(load_x16<false>(p0 + 16 * r, last), z), w);
    acc[1 % U][R - 1] = dpbf16(acc[1 % U][R - 1], interleave16(load_x16<true>(p0 + 16 * (R - 1), last), z), w);
  }
  SK_UNROLL
  for (int u = 1; u < U; ++u)
    SK_UNROLL
    for (int r = 0; r < R; ++r) acc[0][r] = _mm512_add_ps(acc[0][r], acc[u][r]);
  SK_UNROLL
  for (int r = 0; r < R; ++r) out.v[r] = _mm512_add_ps(out.v[r], acc[0][r]);
}

// The sums of one output column for the M activation rows (W < 16: the G groups summed) into out.
template <int W, int R>
inline void row_sums(const Acc<R>& acc, float* out) {
  if constexpr (W == 16) {
    SK_UNROLL
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + 16 * r, acc.v[r]);
  } else if constexpr (W == 8) {
    const __m512 v = acc.v[0];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm512_castps512_ps256(v),
                                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
  } else {
    const __m512 v = acc.v[0];
    const __m128 s01 = _mm_add_ps(_mm512_castps512_ps128(v), _mm512_extractf32x4_ps(v, 1));
    const __m128 s23 = _mm_add_ps(_mm512_extractf32x4_ps(v, 2), _mm512_extractf32x4_ps(v, 3));
    _mm_storeu_ps(out, _mm_add_ps(s01, s23));
  }
}

// The first kept weight in [lo, hi) whose column is >= k (hi if none). col is sorted within a row, so
// the columns below k are a prefix: a forward scan, 16 columns per compare, which costs about a piece's
// length / 16 steps and (unlike a binary search over the rest of the row) mispredicts once.
inline int64_t first_col_at_least(const int32_t* col, int64_t lo, int64_t hi, int32_t k) {
  const __m512i kv = _mm512_set1_epi32(k);
  while (lo < hi) {
    const int64_t n = hi - lo;
    const __mmask16 valid = n >= 16 ? static_cast<__mmask16>(0xffffu) : static_cast<__mmask16>((1u << n) - 1u);
    const __mmask16 below = _mm512_mask_cmplt_epi32_mask(valid, _mm512_maskz_loadu_epi32(valid, col + lo), kv);
    if (below != valid) return lo + __builtin_popcount(static_cast<unsigned>(below));
    lo += n >= 16 ? 16 : n;
  }
  return hi;
}

// Prefetches [p, end) a few lines per call, in order (the weights of the next row block): into L2, or into
// L1 (kL1) where a kept weight's FMAs take long enough for the lines to stay there until used.
template <bool kL1>
struct Stream {
  const char* p = nullptr;
  const char* end = nullptr;
  int64_t lines = 0;  // per call
  void step() {
    for (int64_t i = 0; i < lines && p < end; ++i, p += 64) _mm_prefetch(p, kL1 ? _MM_HINT_T0 : _MM_HINT_T1);
  }
};

// How rows_w walks the weights for R registers per kept weight. Up to R = 3 (M <= 48): blocks of 16 rows,
// panels of 32 KiB of xt (one L1), at least 128 columns, the next block prefetched into L2. From R = 4
// (M > 48): blocks of 64 rows, panels of 48 KiB (96 columns at R = 8, 192 at R = 4), the next block into
// L1: a row's piece of a panel then costs about as much as its fixed costs (the scan, the accumulators,
// the mispredicted end of its loop), and a panel's slice of xt, read from L2 once per block, serves four
// times as many kept weights. One thread, 4096 x 4096 at 70 %, ns per kept weight: M = 64 2.55 -> 2.35,
// M = 128 (one tile of R = 8 instead of two of R = 4) 6.3 -> 4.6; at 90 % (then in panels, below) M = 64
// 3.95 -> 3.2, M = 128 7.8 -> 7.0. bf16 pairs (xt16), 8 layers of 4096 x 4096, 2 threads, 70 %: M = 64 46 -> 43 ms.
//
// From R = 4 with float32 x, the panel and the block also follow the density of the thread's rows (`density`, kept
// weights over rows x K, as rows_w reads it from crow; 1 for the bf16 pairs): a row's piece of a 48 KiB panel at M = 128 (96 columns) holds 29 kept
// weights at 70 % but 5 at 95 %, too few to pay for its fixed costs. So the panel widens to about kPieceKept kept
// weights a row (up to kMaxPanelBytes of xt, which L2 holds; the slice no longer fits L1, but at these M it did not
// before either), and below 13.5 % density the blocks take 128 rows, which halves the passes over the panels. One
// thread, 8 layers of 4096 x 4096, ns per kept weight (medians of 13 calls alternating with the fixed blocking in one
// process): 90 % M = 64 / 96 / 128 3.25 / 4.79 / 5.94 -> 2.91 / 4.35 / 5.65; 95 % 4.29 / 5.95 / 8.69 -> 3.77 / 4.97 /
// 6.91; 97 % 4.97 / 6.68 / 10.38 -> 4.69 / 5.71 / 8.50; 80 % within 2 %. Blocks of 256 rows were no faster than 128.
template <int R>
struct Blocking {
  static constexpr bool kWide = R >= 4;
  static constexpr int64_t kRows = kWide ? 64 : 16;
  static constexpr int64_t kMaxRows = kWide ? 128 : 16;  // the block's accumulators live on the stack
  static constexpr int64_t kPanelBytes = (kWide ? 48 : 32) * 1024;
  static constexpr int64_t kMaxPanelBytes = 384 * 1024;
  static constexpr double kPieceKept = 25;
  static constexpr int64_t kMinCols = kWide ? 32 : 128;
  // Columns per panel; bytes: what a kept weight's reads of one column cover (with the rest of their lines).
  static int64_t panel_cols(int64_t bytes, double density) {
    int64_t c = kPanelBytes / bytes;
    if (kWide && density > 0) {
      const double piece = kPieceKept / density, most = static_cast<double>(kMaxPanelBytes / bytes);
      const int64_t wide = static_cast<int64_t>(piece < most ? piece : most);
      if (wide > c) c = wide;
    }
    return c < kMinCols ? kMinCols : c;
  }
  static int64_t rows(double density) { return kWide && density < 0.135 ? kMaxRows : kRows; }
};
// Rows sparser than 1 in this many kept weights (K > 1024) go without panels (`direct`, or the AVX2 tiles): M <= 48
// (and bf16 xt16) 8; float32 x with M > 48 64, where the panels follow the density (above): at 95 % (1 in 20) they
// now run 1.14-1.26x as fast as the AVX2 tiles, at 99 % as fast.
inline int64_t min_density(int64_t M, bool dp) { return M > 48 && !dp ? 64 : 8; }

// Rows in blocks (Blocking), K in panels of panel_cols columns: every row of the block takes its
// kept weights of one panel before the next panel, so that the panel's slice of xt stays in L1
// (without panels, K = 4096 at M = 4 misses L1 on nearly every kept weight: 1.2 ns per kept weight
// against 0.65 at K = 256). The block's weights are read piecewise then, which the hardware
// prefetchers do not follow (2.1 ns per kept weight); so the next block's weights are prefetched in
// order, a few lines per step, while this block computes. One thread, 4096 x 4096 at 70 %, ns per
// kept weight: M = 4 0.66, M = 16 0.98, M = 32 1.56, M = 64 2.64 (panels of 1024 columns at every M:
// 0.76, 1.03, 1.82, 3.08).
// kDp: bf16 values times xt16 (accumulate_dp, W = 16), and `direct` (rows sparser than min_density): no
// panels, the AVX2 tiles' job in the float32 path, which xt16 does not have.
template <DType VD, DType OD, int W, int R, bool kDp = false>
void rows_w(const CsrSpmmArgs& a, int64_t r0, int64_t r1, bool direct = false) {
  using V = typename Elem<VD>::storage;
  static_assert(!kDp || (VD == DType::bf16 && W == 16), "pairs of bf16 kept weights, 16 rows per register");
  const V* __restrict vals = static_cast<const V*>(a.values);
  const int32_t* __restrict col = a.col;
  const int64_t ld = a.ldxt;
  const int tail = static_cast<int>(a.M - 16 * (R - 1));  // lanes of the last register (W = 16)
  const __mmask16 last = static_cast<__mmask16>(tail >= 16 ? 0xffffu : (1u << (tail > 0 ? tail : 0)) - 1u);
  const __mmask8 last2 = static_cast<__mmask8>(tail >= 16 ? 0xffu : (1u << (tail > 0 ? (tail + 1) / 2 : 0)) - 1u);
  auto add = [&](int64_t j, int64_t end, Acc<R>& acc) {
    if constexpr (kDp) accumulate_dp<R>(vals, col, a.xt16, ld, j, end, last2, acc);
    else accumulate<VD, W, R>(vals, col, a.xt, ld, j, end, last, acc);
  };
  using B = Blocking<R>;
  const double density =
      kDp || a.K <= 0 ? 1.0 : static_cast<double>(a.crow[r1] - a.crow[r0]) / static_cast<double>((r1 - r0) * a.K);
  const int64_t block_rows = B::rows(density);
  const int64_t width = ld < 16 * R ? ld : 16 * R;
  const int64_t panel = B::panel_cols(width * (kDp ? 2 : 4), density);
  // the rows' sums go out 16 rows at a time, one run of 16 values per activation row (ColumnRuns): stored a row at
  // a time, storing cost as much as 10-27 % of the kernel at M = 64-128 on 4096 x 4096 (one thread)
  ColumnRuns<OD, 16 * R> runs(a.y, a.ldy, a.bias, 0, static_cast<int>(a.M));
  if (a.K <= panel || direct) {
    for (int64_t n = r0; n < r1; ++n) {
      Acc<R> acc = acc_zero<R>();
      add(a.crow[n], a.crow[n + 1], acc);
      row_sums<W, R>(acc, runs.slot(n));
    }
    return;
  }
  const int64_t panels = (a.K + panel - 1) / panel;
  Acc<R> acc[B::kMaxRows];
  int64_t cur[B::kMaxRows];
  for (int64_t nb = r0; nb < r1; nb += block_rows) {
    const int rows = static_cast<int>(r1 - nb < block_rows ? r1 - nb : block_rows);
    const int64_t nn0 = nb + rows, nn1 = r1 - nn0 < block_rows ? r1 : nn0 + block_rows;
    const int64_t steps = rows * panels;
    Stream<B::kWide> pv, pc;
    if (nn0 < nn1) {
      pv.p = reinterpret_cast<const char*>(vals + a.crow[nn0]);
      pv.end = reinterpret_cast<const char*>(vals + a.crow[nn1]);
      pc.p = reinterpret_cast<const char*>(col + a.crow[nn0]);
      pc.end = reinterpret_cast<const char*>(col + a.crow[nn1]);
      pv.lines = ((pv.end - pv.p) / 64 + steps) / steps;
      pc.lines = ((pc.end - pc.p) / 64 + steps) / steps;
    }
    for (int i = 0; i < rows; ++i) {
      acc[i] = acc_zero<R>();
      cur[i] = a.crow[nb + i];
    }
    for (int64_t k0 = 0; k0 < a.K; k0 += panel) {
      const bool final_panel = k0 + panel >= a.K;
      for (int i = 0; i < rows; ++i) {
        const int64_t row_end = a.crow[nb + i + 1];
        const int64_t e =
            final_panel ? row_end : first_col_at_least(col, cur[i], row_end, static_cast<int32_t>(k0 + panel));
        if (e > cur[i]) add(cur[i], e, acc[i]);
        cur[i] = e;
        pv.step();
        pc.step();
      }
    }
    for (int i = 0; i < rows; ++i) row_sums<W, R>(acc[i], runs.slot(nb + i));
  }
}

// rows_w with R = ceil(M / 16) registers of 16 activation rows per kept weight (t.M <= 128).
template <DType VD, DType OD, bool kDp = false>
void by_registers(const CsrSpmmArgs& t, int64_t r0, int64_t r1, bool direct = false) {
  switch ((t.M + 15) / 16) {
    case 1: return rows_w<VD, OD, 16, 1, kDp>(t, r0, r1, direct);
    case 2: return rows_w<VD, OD, 16, 2, kDp>(t, r0, r1, direct);
    case 3: return rows_w<VD, OD, 16, 3, kDp>(t, r0, r1, direct);
    case 4: return rows_w<VD, OD, 16, 4, kDp>(t, r0, r1, direct);
    case 5: return rows_w<VD, OD, 16, 5, kDp>(t, r0, r1, direct);
    case 6: return rows_w<VD, OD, 16, 6, kDp>(t, r0, r1, direct);
    case 7: return rows_w<VD, OD, 16, 7, kDp>(t, r0, r1, direct);
    default: return rows_w<VD, OD, 16, 8, kDp>(t, r0, r1, direct);
  }
}

// One tile of at most kTileRows activation rows (a.M): up to 8 rows several kept weights per register (W = 4
// or 8), beyond that by registers per kept weight.
template <DType VD, DType OD>
void run_tile(const CsrSpmmArgs& a, int64_t r0, int64_t r1) {
  if (a.M <= 4) return rows_w<VD, OD, 4, 1>(a, r0, r1);
  if (a.M <= 8) return rows_w<VD, OD, 8, 1>(a, r0, r1);
  by_registers<VD, OD>(a, r0, r1);
}

// Activation rows per tile: up to 8 registers per kept weight, one pass over the weights for M = 128 (float32
// x: 4.6 ns per kept weight against 6.3 for two tiles of 64, one thread, 70 %; bf16 pairs, 8 layers of
// 4096 x 4096, 2 threads, 70 %: 92 -> 85 ms). bf16 pairs in rows without panels (`direct`) keep tiles of 64
// (90 %: 36.6 against 37.6 ms, 95 %: 24.5 against 26.2).
constexpr int64_t kTileRows = 128;
constexpr int64_t kDirectTileRows = 64;

// The tile of at most `rows` activation rows from m0: its rows of xt (or xt16) and of y.
template <DType OD>
CsrSpmmArgs tile_at(const CsrSpmmArgs& a, int64_t m0, int64_t rows = kTileRows) {
  CsrSpmmArgs t = a;
  t.M = a.M - m0 < rows ? a.M - m0 : rows;
  if (a.xt) t.xt = a.xt + m0;
  if (a.xt16) t.xt16 = a.xt16 + m0;
  t.y = static_cast<char*>(a.y) + m0 * a.ldy * static_cast<int64_t>(OD == DType::f32 ? 4 : 2);
  return t;
}

// bf16 values times xt16 (M >= 9): tiles of kTileRows activation rows (kDirectTileRows if direct), by their
// registers.
template <DType OD>
void run_dp(const CsrSpmmArgs& a, int64_t r0, int64_t r1, bool direct) {
  const int64_t rows = direct ? kDirectTileRows : kTileRows;
  for (int64_t m0 = 0; m0 < a.M; m0 += rows) {
    const CsrSpmmArgs t = tile_at<OD>(a, m0, rows);
    // a last tile of 1..8 rows reads its pairs within xt16's padding (ldxt = csr_spmm_ldxt(M))
    by_registers<DType::bf16, OD, true>(t, r0, r1, direct);
  }
}

// Activation rows in tiles of kTileRows (each reads its own rows of xt and writes its own rows of y).
template <DType VD, DType OD>
void run(const CsrSpmmArgs& a, int64_t r0, int64_t r1) {
  if (a.M <= kTileRows) return run_tile<VD, OD>(a, r0, r1);
  for (int64_t m0 = 0; m0 < a.M; m0 += kTileRows) run_tile<VD, OD>(tile_at<OD>(a, m0), r0, r1);
}

template <DType VD>
void run_out(const CsrSpmmArgs& a, int64_t r0, int64_t r1) {
  switch (a.out_dtype) {
    case DType::f32: run<VD, DType::f32>(a, r0, r1); break;
    case DType::bf16: run<VD, DType::bf16>(a, r0, r1); break;
    case DType::f16: run<VD, DType::f16>(a, r0, r1); break;
  }
}

}  // namespace

void csr_spmm_rows(const CsrSpmmArgs& a, int64_t r0, int64_t r1) {
  if (a.M < 2 || r0 >= r1) return;
  const bool dp = a.xt16 != nullptr;
  const int64_t kept = a.crow[r1] - a.crow[r0];
  const bool sparse_rows = a.K > 1024 && kept * min_density(a.M, dp) < (r1 - r0) * a.K;
  if (dp) {
    switch (a.out_dtype) {
      case DType::f32: run_dp<DType::f32>(a, r0, r1, sparse_rows); break;
      case DType::bf16: run_dp<DType::bf16>(a, r0, r1, sparse_rows); break;
      case DType::f16: run_dp<DType::f16>(a, r0, r1, sparse_rows); break;
    }
    return;
  }
  // Panels pay while a row's piece of one panel is long enough. In rows sparser than min_density (K > 1024)
  // the AVX2 tiles, which prefetch xt ahead, are as fast or faster: 8 layers of 4096 x 4096, 2 threads, at
  // 95 % M = 4 3.7 against 4.0 ms, M = 64 15.7 against 21.0 ms (blocks of 16 rows); at 90 % within noise. From
  // M = 49 the panels widen with the density instead (Blocking), down to 1 in 64.
  if (sparse_rows) {
    avx2::csr_spmm_rows(a, r0, r1);
    return;
  }
  switch (a.value_dtype) {
    case DType::f32: run_out<DType::f32>(a, r0, r1); break;
    case DType::bf16: run_out<DType::bf16>(a, r0, r1); break;
    case DType::f16: run_out<DType::f16>(a, r0, r1); break;
  }
}

}  // namespace avx512
}  // namespace core
}  // namespace sparsekit

#undef SK_UNROLL
#pragma GCC pop_options
#else
namespace sparsekit {
namespace core {
namespace avx512 {
void csr_spmm_rows(const CsrSpmmArgs& a, int64_t r0, int64_t r1) { avx2::csr_spmm_rows(a, r0, r1); }
}  // namespace avx512
}  // namespace core
}  // namespace sparsekit
#endif
