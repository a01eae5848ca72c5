// AVX-512 path for the bitmap core at M == 1: each 16-bit half of a bitmap word expands the next
// kept values into their columns in one instruction (vexpandps), so the work per 16 columns is
// constant and small and never branches on the bits. 16-bit values (bf16 / f16) are read with a
// masked load of exactly the half-word's count (AVX-512 BW + VL), widened to float32, then expanded.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <new>
#include <type_traits>

#include "spmm_formats.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c,popcnt")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positives inside avx512fintrin.h
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace sparsekit {
namespace core {
namespace avx512 {

namespace {
bool has_vbmi2() {
  static const bool yes = __builtin_cpu_supports("avx512vbmi2");
  return yes;
}
bool has_bf16_dot() {
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
}

// vexpandps into a register zeroed first. On Zen 4 a zero-masked vexpandps still waits for its destination's
// old value, so the expands that the compiler puts in one register form a chain; the zeroing idiom breaks it.
// (The intrinsic cannot say this: GCC folds "zero, then merge-expand" back into the zero-masked form.)
inline __m512 expand_zeroed(__mmask16 m, __m512 f) {
  __m512 r;
  asm("vpxord %0, %0, %0\n\tvexpandps %1, %0%{%2%}" : "=&v"(r) : "v"(f), "Yk"(m));
  return r;
}
inline __m512 expandload_zeroed(__mmask16 m, const float* p) {
  __m512 r;
  // the memory operand names the 64 bytes vexpandps may read; it reads only popcount(m) floats
  asm("vpxord %0, %0, %0\n\tvexpandps %1, %0%{%2%}" : "=&v"(r) : "m"(*reinterpret_cast<const float(*)[16]>(p)), "Yk"(m));
  return r;
}

// The `count` kept values at v, as float32, expanded into the set bits of m (zero elsewhere).
template <DType VD>
inline __m512 expand_kept(__mmask16 m, const typename Elem<VD>::storage* v, int count) {
  if constexpr (VD == DType::f32) {
    (void)count;
    return expandload_zeroed(m, v);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1u), v);
    const __m512 f = VD == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                       : _mm512_cvtph_ps(h);
    return expand_zeroed(m, f);
  }
}

// The M = 1 kernels read the values as one stream, row after row; two lines 8 KiB ahead of it go into L2 per step
// of two words (64 columns) so that the reads overlap the expands (one thread, 8 layers of 2048 x 4096 fp32 at
// 70 %: 7.0 -> 5.4-5.8 ms; 2 KiB ahead gained nothing, 16-32 KiB less). Prefetches never fault past the end.
constexpr int64_t kM1Ahead = 8192;
inline void m1_ahead(const void* v) {
  _mm_prefetch(static_cast<const char*>(v) + kM1Ahead, _MM_HINT_T1);
  _mm_prefetch(static_cast<const char*>(v) + kM1Ahead + 64, _MM_HINT_T1);
}

// y[m][n] = s plus the bias, in y's dtype.
inline void store_y(const DenseIo& io, int64_t m, int64_t n, float s) {
  const int64_t i = m * io.ldy + n;
  switch (io.out_dtype) {
    case DType::f32:
      if (io.bias) s += static_cast<const float*>(io.bias)[n];
      static_cast<float*>(io.y)[i] = s;
      break;
    case DType::bf16:
      if (io.bias) s += bf16_to_f32(static_cast<const uint16_t*>(io.bias)[n]);
      static_cast<uint16_t*>(io.y)[i] = f32_to_bf16(s);
      break;
    case DType::f16:
      if (io.bias) s += f16_to_f32(static_cast<const uint16_t*>(io.bias)[n]);
      static_cast<uint16_t*>(io.y)[i] = f32_to_f16(s);
      break;
  }
}
inline void store_row(const DenseIo& io, int64_t n, float s) { store_y(io, 0, n, s); }

template <DType VD>
void bitmap_m1_impl(const BitmapArgs& a, int64_t r0, int64_t r1) {
  using V = typename Elem<VD>::storage;
  const V* vals = static_cast<const V*>(a.values);
  const float* x = a.io.xt;
  const int64_t K = a.io.K, words = (K + 31) / 32, full = K / 32;
  for (int64_t n = r0; n < r1; ++n) {
    const uint32_t* bm = a.bitmap + n * words;
    const V* v = vals + (words ? a.word_offsets[n * words] : 0);
    // Two words (64 columns) per step into four accumulators: vexpandps has a throughput of about one per
    // 2.5 cycles on Zen 4 and one word per step left the expands of the next word waiting on the loop's
    // pointer chain (one thread, 8 layers of 4096 x 4096 fp32 at 70 %: 13.7 -> 11.6 ms).
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
           acc3 = _mm512_setzero_ps();
    int64_t w = 0;
    for (; w + 2 <= full; w += 2) {
      m1_ahead(v);
      const uint32_t wa = bm[w], wb = bm[w + 1];
      const __mmask16 m0 = static_cast<__mmask16>(wa & 0xFFFFu), m1 = static_cast<__mmask16>(wa >> 16),
                      m2 = static_cast<__mmask16>(wb & 0xFFFFu), m3 = static_cast<__mmask16>(wb >> 16);
      const int c0 = __builtin_popcount(wa & 0xFFFFu), c1 = __builtin_popcount(wa >> 16),
                c2 = __builtin_popcount(wb & 0xFFFFu), c3 = __builtin_popcount(wb >> 16);
      const V* v1 = v + c0;
      const V* v2 = v1 + c1;
      const V* v3 = v2 + c2;
      const float* xw = x + 32 * w;
      acc0 = _mm512_fmadd_ps(expand_kept<VD>(m0, v, c0), _mm512_loadu_ps(xw), acc0);
      acc1 = _mm512_fmadd_ps(expand_kept<VD>(m1, v1, c1), _mm512_loadu_ps(xw + 16), acc1);
      acc2 = _mm512_fmadd_ps(expand_kept<VD>(m2, v2, c2), _mm512_loadu_ps(xw + 32), acc2);
      acc3 = _mm512_fmadd_ps(expand_kept<VD>(m3, v3, c3), _mm512_loadu_ps(xw + 48), acc3);
      v = v3 + c3;
    }
    for (; w < full; ++w) {
      const uint32_t word = bm[w];
      const __mmask16 m0 = static_cast<__mmask16>(word & 0xFFFFu), m1 = static_cast<__mmask16>(word >> 16);
      const int c0 = __builtin_popcount(word & 0xFFFFu), c1 = __builtin_popcount(word >> 16);
      acc0 = _mm512_fmadd_ps(expand_kept<VD>(m0, v, c0), _mm512_loadu_ps(x + 32 * w), acc0);
      acc1 = _mm512_fmadd_ps(expand_kept<VD>(m1, v + c0, c1), _mm512_loadu_ps(x + 32 * w + 16), acc1);
      v += c0 + c1;
    }
    if (full < words) {  // the last, partial word: x is read only where columns exist
      const int64_t valid = K - 32 * full;
      const uint32_t word = bm[full];
      const __mmask16 m0 = static_cast<__mmask16>(word & 0xFFFFu), m1 = static_cast<__mmask16>(word >> 16);
      const __mmask16 x0 = static_cast<__mmask16>(valid >= 16 ? 0xFFFFu : (1u << valid) - 1u);
      const __mmask16 x1 = static_cast<__mmask16>(valid > 16 ? (1u << (valid - 16)) - 1u : 0u);
      const int c0 = __builtin_popcount(word & 0xFFFFu), c1 = __builtin_popcount(word >> 16);
      const __m512 e0 = expand_kept<VD>(m0, v, c0);
      const __m512 e1 = expand_kept<VD>(m1, v + c0, c1);
      acc0 = _mm512_fmadd_ps(e0, _mm512_maskz_loadu_ps(x0, x + 32 * full), acc0);
      acc1 = _mm512_fmadd_ps(e1, _mm512_maskz_loadu_ps(x1, x + 32 * full + 16), acc1);
    }
    store_row(a.io, n, _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3))));
  }
}

// ---- 16-bit values with AVX-512 VBMI2: vpexpandw places a whole word's (32 columns') kept values at once.
// The zmm vexpandps above costs about 2.5 cycles per 16 columns on Zen 4 (its throughput, measured in a
// loop of expands alone); one vpexpandw per 32 columns halves the expands. The 32 expanded 16-bit values are
// widened exactly to float32 as two vectors, and xp holds x in the same order (widen_word), zero past K: then
// the last, partial word needs no masks (its bits past K are 0 and so are its x).
inline __m512i expandw_zeroed(uint32_t m, const uint16_t* p) {
  __m512i r;
  // vpexpandw reads only popcount(m) values (fault suppression past them); the operand names the 64 bytes
  asm("vpxord %0, %0, %0\n\tvpexpandw %1, %0%{%2%}"
      : "=&v"(r)
      : "m"(*reinterpret_cast<const uint16_t(*)[32]>(p)), "Yk"(static_cast<__mmask32>(m)));
  return r;
}

// The 32 expanded values as float32, in the order xp holds x: bf16 as the even columns then the odd ones
// (a shift and a mask), f16 as columns 0-15 then 16-31 (vcvtph2ps widens a half-vector in order).
template <DType VD>
inline void widen_word(__m512i r, __m512& first, __m512& second) {
  if constexpr (VD == DType::bf16) {
    first = _mm512_castsi512_ps(_mm512_slli_epi32(r, 16));
    second = _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  } else {
    first = _mm512_cvtph_ps(_mm512_castsi512_si256(r));
    second = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(r, 1));
  }
}

// x as the kernel reads it: per 32 columns, even columns then odd ones (kEvenOdd) or in order; zero past K.
template <bool kEvenOdd>
void stage_x_words(const float* x, int64_t K, int64_t words, float* xp) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t w = 0; w < words; ++w) {
    const int64_t valid = K - 32 * w;
    const __mmask16 m0 = static_cast<__mmask16>(valid >= 16 ? 0xFFFFu : (1u << valid) - 1u);
    const __mmask16 m1 = static_cast<__mmask16>(valid >= 32 ? 0xFFFFu : valid > 16 ? (1u << (valid - 16)) - 1u : 0u);
    const __m512 a = _mm512_maskz_loadu_ps(m0, x + 32 * w), b = _mm512_maskz_loadu_ps(m1, x + 32 * w + 16);
    _mm512_store_ps(xp + 32 * w, kEvenOdd ? _mm512_permutex2var_ps(a, even, b) : a);
    _mm512_store_ps(xp + 32 * w + 16, kEvenOdd ? _mm512_permutex2var_ps(a, odd, b) : b);
  }
}

template <DType VD>
void bitmap_m1_w16_impl(const BitmapArgs& a, int64_t r0, int64_t r1, const float* xp) {
  const uint16_t* vals = static_cast<const uint16_t*>(a.values);
  const int64_t words = (a.io.K + 31) / 32;
  for (int64_t n = r0; n < r1; ++n) {
    const uint32_t* bm = a.bitmap + n * words;
    const uint16_t* v = vals + (words ? a.word_offsets[n * words] : 0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
           acc3 = _mm512_setzero_ps();
    __m512 e0, e1, e2, e3;
    int64_t w = 0;
    for (; w + 2 <= words; w += 2) {
      m1_ahead(v);
      const uint32_t wa = bm[w], wb = bm[w + 1];
      const int ca = __builtin_popcount(wa), cb = __builtin_popcount(wb);
      widen_word<VD>(expandw_zeroed(wa, v), e0, e1);
      widen_word<VD>(expandw_zeroed(wb, v + ca), e2, e3);
      v += ca + cb;
      const float* xw = xp + 32 * w;
      acc0 = _mm512_fmadd_ps(e0, _mm512_load_ps(xw), acc0);
      acc1 = _mm512_fmadd_ps(e1, _mm512_load_ps(xw + 16), acc1);
      acc2 = _mm512_fmadd_ps(e2, _mm512_load_ps(xw + 32), acc2);
      acc3 = _mm512_fmadd_ps(e3, _mm512_load_ps(xw + 48), acc3);
    }
    if (w < words) {
      widen_word<VD>(expandw_zeroed(bm[w], v), e0, e1);
      acc0 = _mm512_fmadd_ps(e0, _mm512_load_ps(xp + 32 * w), acc0);
      acc1 = _mm512_fmadd_ps(e1, _mm512_load_ps(xp + 32 * w + 16), acc1);
    }
    store_row(a.io, n, _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3))));
  }
}

// bf16 values times bf16 x (io.x_dtype == bf16) with AVX-512 BF16: vdpbf16ps multiplies the 32 expanded values by
// 32 x values in pairs and adds into 16 float32 sums, so a word takes one expand and one instruction, with no
// widening. The products of two bf16 values are exact in float32; vdpbf16ps treats denormal inputs and
// results as zero (magnitudes below 1.2e-38). One thread, 8 layers of 4096 x 4096 at 70 %: 7.6 -> 5.5 ms.
inline __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

// x (float32 holding bf16 values) as bf16 in column order, zero past K: its upper halves, exactly.
void stage_x_bf16(const float* x, int64_t K, int64_t words, uint16_t* xb) {
  for (int64_t i = 0; i < 32 * words; i += 16) {
    const int64_t valid = K - i;
    const __mmask16 m = static_cast<__mmask16>(valid >= 16 ? 0xFFFFu : valid > 0 ? (1u << valid) - 1u : 0u);
    const __m512i f = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_store_si256(reinterpret_cast<__m256i*>(xb + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(f, 16)));
  }
}

void bitmap_m1_dpbf16(const BitmapArgs& a, int64_t r0, int64_t r1, const uint16_t* xb) {
  const uint16_t* vals = static_cast<const uint16_t*>(a.values);
  const int64_t words = (a.io.K + 31) / 32;
  for (int64_t n = r0; n < r1; ++n) {
    const uint32_t* bm = a.bitmap + n * words;
    const uint16_t* v = vals + (words ? a.word_offsets[n * words] : 0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t w = 0;
    for (; w + 2 <= words; w += 2) {
      m1_ahead(v);
      const uint32_t wa = bm[w], wb = bm[w + 1];
      const int ca = __builtin_popcount(wa), cb = __builtin_popcount(wb);
      const __m512i ea = expandw_zeroed(wa, v), eb = expandw_zeroed(wb, v + ca);
      v += ca + cb;
      acc0 = dpbf16(acc0, ea, _mm512_load_si512(xb + 32 * w));
      acc1 = dpbf16(acc1, eb, _mm512_load_si512(xb + 32 * w + 32));
    }
    if (w < words) acc0 = dpbf16(acc0, expandw_zeroed(bm[w], v), _mm512_load_si512(xb + 32 * w));
    store_row(a.io, n, _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)));
  }
}

void bitmap_m1_w16(const BitmapArgs& a, int64_t r0, int64_t r1) {
  const int64_t words = (a.io.K + 31) / 32;
  float* xp = static_cast<float*>(::operator new[](static_cast<size_t>(words) * 32 * sizeof(float), std::align_val_t{64}));
  if (a.value_dtype == DType::bf16 && a.io.x_dtype == DType::bf16 && has_bf16_dot()) {
    uint16_t* xb = reinterpret_cast<uint16_t*>(xp);
    stage_x_bf16(a.io.xt, a.io.K, words, xb);
    bitmap_m1_dpbf16(a, r0, r1, xb);
  } else if (a.value_dtype == DType::bf16) {
    stage_x_words<true>(a.io.xt, a.io.K, words, xp);
    bitmap_m1_w16_impl<DType::bf16>(a, r0, r1, xp);
  } else {
    stage_x_words<false>(a.io.xt, a.io.K, words, xp);
    bitmap_m1_w16_impl<DType::f16>(a, r0, r1, xp);
  }
  ::operator delete[](xp, std::align_val_t{64});
}
// ---- 2 <= M <= 8, x by rows: each word's kept values are expanded once into registers (as at M == 1) and
// multiplied into every row of x, so the expand, the bitmap and the values are paid once for several rows of x;
// and each load of x serves a group of kGroup weight rows, so the loads of x are paid once for several weight
// rows. Per 32 columns and group: per weight row two expands (one vpexpandw for 16-bit values), per row of x
// two loads (one for bf16 x with vdpbf16ps), and per (weight row, x row) two FMAs (one vdpbf16ps): with four
// and four, 16 accumulators. Weight rows go in blocks of 16, once per pass over up to four rows of x (x is
// read from L2, in order); the next block is prefetched into L2 meanwhile. Before the groups (one weight row at
// a time, x reloaded for each) float32 at M = 4 was bound by the loads of x: 15.8 ms for 8 layers of 4096 x 4096
// at 70 % on 2 threads. Panels of K (x in L1 at any K) made it slower: a row read piece by piece does not stream.
constexpr int kRowsTile = 4;  // rows of x per pass
constexpr int kGroup = 4;     // weight rows per group
constexpr int64_t kRowsBlock = 16;

// 16 values of x row xm from column c as float32; kMasked: only `valid` columns exist from c.
template <DType XD, bool kMasked>
inline __m512 load_x16(const void* xm, int64_t c, int64_t valid) {
  const __mmask16 k =
      kMasked ? static_cast<__mmask16>(valid >= 16 ? 0xFFFFu : valid > 0 ? (1u << valid) - 1u : 0u) : 0xFFFFu;
  if constexpr (XD == DType::f32) {
    const float* p = static_cast<const float*>(xm) + c;
    return kMasked ? _mm512_maskz_loadu_ps(k, p) : _mm512_loadu_ps(p);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(xm) + c;
    const __m256i h = kMasked ? _mm256_maskz_loadu_epi16(k, p) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return XD == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                             : _mm512_cvtph_ps(h);
  }
}

// The word's 32 expanded 16-bit values as float32, columns 0-15 and 16-31.
template <DType VD>
inline void widen_in_order(__m512i r, __m512& lo, __m512& hi) {
  const __m256i a = _mm512_castsi512_si256(r), b = _mm512_extracti64x4_epi64(r, 1);
  if constexpr (VD == DType::bf16) {
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(a), 16));
    hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
  } else {
    lo = _mm512_cvtph_ps(a);
    hi = _mm512_cvtph_ps(b);
  }
}

// Word w of weight rows bm[0..R) (kept values from v[r], advanced past them) times x rows xr[0..MT); kMasked:
// the last, partial word (x read only where columns exist). acc[r][m] += the products.
template <DType VD, DType XD, int MT, int R, bool kDot, bool kMasked>
inline void group_word(const uint32_t* const* bm, const typename Elem<VD>::storage** v, int64_t w, int64_t valid,
                       const void* const* xr, __m512 (&acc)[kGroup][kRowsTile]) {
  if constexpr (kDot) {
    __m512i e[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint32_t word = bm[r][w];
      e[r] = expandw_zeroed(word, reinterpret_cast<const uint16_t*>(v[r]));
      v[r] += __builtin_popcount(word);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) {
      const uint16_t* xw = static_cast<const uint16_t*>(xr[m]) + 32 * w;
      const __m512i xv = kMasked ? _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1u << valid) - 1u), xw)
                                 : _mm512_loadu_si512(xw);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][m] = dpbf16(acc[r][m], e[r], xv);
    }
  } else {
    __m512 lo[R], hi[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint32_t word = bm[r][w];
      if constexpr (VD == DType::f32) {
        const int c0 = __builtin_popcount(word & 0xFFFFu);
        lo[r] = expandload_zeroed(static_cast<__mmask16>(word & 0xFFFFu), v[r]);
        hi[r] = expandload_zeroed(static_cast<__mmask16>(word >> 16), v[r] + c0);
      } else {
        widen_in_order<VD>(expandw_zeroed(word, reinterpret_cast<const uint16_t*>(v[r])), lo[r], hi[r]);
      }
      v[r] += __builtin_popcount(word);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) {
      const __m512 xl = load_x16<XD, kMasked>(xr[m], 32 * w, valid);
      const __m512 xh = load_x16<XD, kMasked>(xr[m], 32 * w + 16, valid - 16);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(hi[r], xh, _mm512_fmadd_ps(lo[r], xl, acc[r][m]));
    }
  }
}

// Prefetches [p, end) into L2 a slice at a time, spread over a block's work (64-byte lines).
struct L2Ahead {
  const char* p = nullptr;
  const char* end = nullptr;
  void step(int64_t lines) {
    for (int64_t i = 0; i < lines && p < end; ++i, p += 64) _mm_prefetch(p, _MM_HINT_T1);
  }
};

// Weight rows n .. n + R times x rows m0 .. m0 + MT (xr), into y; `lines` of `ahead` are prefetched on the way,
// a few per word (in one burst at the start of each group they queued up in front of the group's own loads:
// M = 4, fp32 at 70 %, one thread, 8 layers of 2048 x 4096: 11.4 -> 8.5 ms).
template <DType VD, DType XD, int MT, int R, bool kDot>
void rows_group(const BitmapArgs& a, int64_t n, int64_t m0, const void* const* xr, L2Ahead& ahead, int64_t lines) {
  using V = typename Elem<VD>::storage;
  const int64_t K = a.io.K, words = (K + 31) / 32, full = K / 32;
  const uint32_t* bm[R];
  const V* v[R];
  for (int r = 0; r < R; ++r) {
    bm[r] = a.bitmap + (n + r) * words;
    v[r] = static_cast<const V*>(a.values) + (words ? a.word_offsets[(n + r) * words] : 0);
  }
  __m512 acc[kGroup][kRowsTile];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm512_setzero_ps();
  int64_t w = 0;
  const int64_t per_word = full > 0 ? lines / full + 1 : lines;
  for (; w < full; ++w) {
    ahead.step(per_word);
    group_word<VD, XD, MT, R, kDot, false>(bm, v, w, 32, xr, acc);
  }
  if (w < words) group_word<VD, XD, MT, R, kDot, true>(bm, v, w, K - 32 * w, xr, acc);
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) store_y(a.io, m0 + m, n + r, _mm512_reduce_add_ps(acc[r][m]));
}

template <DType VD, DType XD, int MT, bool kDot>
void rows_tile(const BitmapArgs& a, int64_t nb, int64_t ne, int64_t m0, L2Ahead& ahead, int64_t lines_per_row) {
  const void* xr[kRowsTile];
  for (int m = 0; m < MT; ++m)
    xr[m] = static_cast<const char*>(a.io.x) + (m0 + m) * a.io.ldx * (XD == DType::f32 ? 4 : 2);
  int64_t n = nb;
  for (; n + kGroup <= ne; n += kGroup) {
    rows_group<VD, XD, MT, kGroup, kDot>(a, n, m0, xr, ahead, lines_per_row * kGroup);
  }
  for (; n < ne; ++n) {
    rows_group<VD, XD, MT, 1, kDot>(a, n, m0, xr, ahead, lines_per_row);
  }
}

// Weight rows r0 .. r1 in blocks of kRowsBlock, each block once per pass over up to kRowsTile rows of x:
// tile(nb, ne, m0, rows of x, ahead, lines per row). span(ne, ne2, ahead) points `ahead` at the next block's
// bytes (and may prefetch its small side arrays at once); they go into L2 a few lines per step of the block's
// rows and passes: without it the passes over a block of rows read memory piece by piece (2 threads, bitmap,
// M = 4, fp32 at 70 %: 23 -> 16 ms).
template <class Span, class Tile>
void by_row_blocks(int64_t r0, int64_t r1, int64_t M, Span&& span, Tile&& tile) {
  const int64_t passes = (M + kRowsTile - 1) / kRowsTile;
  for (int64_t nb = r0; nb < r1; nb += kRowsBlock) {
    const int64_t ne = nb + kRowsBlock < r1 ? nb + kRowsBlock : r1;
    L2Ahead ahead;
    int64_t lines_per_row = 0;
    if (ne < r1) {
      span(ne, ne + kRowsBlock < r1 ? ne + kRowsBlock : r1, ahead);
      lines_per_row = (ahead.end - ahead.p) / 64 / ((ne - nb) * passes) + 1;
    }
    for (int64_t m0 = 0; m0 < M; m0 += kRowsTile)
      tile(nb, ne, m0, static_cast<int>(M - m0 < kRowsTile ? M - m0 : kRowsTile), ahead, lines_per_row);
  }
}

template <DType VD, DType XD, bool kDot>
void bitmap_rows_impl(const BitmapArgs& a, int64_t r0, int64_t r1) {
  using V = typename Elem<VD>::storage;
  const int64_t words = (a.io.K + 31) / 32;
  auto span = [&](int64_t ne, int64_t ne2, L2Ahead& ahead) {  // values, and the rows' bitmap words at once
    const int64_t v0 = words ? a.word_offsets[ne * words] : 0;
    const int64_t v1 = ne2 < a.io.N && words ? a.word_offsets[ne2 * words] : a.nnz;
    ahead.p = reinterpret_cast<const char*>(static_cast<const V*>(a.values) + v0);
    ahead.end = reinterpret_cast<const char*>(static_cast<const V*>(a.values) + v1);
    for (int64_t n = ne; n < ne2; ++n) _mm_prefetch(reinterpret_cast<const char*>(a.bitmap + n * words), _MM_HINT_T1);
  };
  auto tile = [&](int64_t nb, int64_t ne, int64_t m0, int mt, L2Ahead& ahead, int64_t lines) {
    switch (mt) {
      case 4: rows_tile<VD, XD, 4, kDot>(a, nb, ne, m0, ahead, lines); break;
      case 3: rows_tile<VD, XD, 3, kDot>(a, nb, ne, m0, ahead, lines); break;
      case 2: rows_tile<VD, XD, 2, kDot>(a, nb, ne, m0, ahead, lines); break;
      default: rows_tile<VD, XD, 1, kDot>(a, nb, ne, m0, ahead, lines); break;
    }
  };
  by_row_blocks(r0, r1, a.io.M, span, tile);
}

// ---- 2:4, x by rows. A window of columns at a time: its kept values in one register (float32: 32 columns, 16
// values; bf16: 64 columns, 32 values), and from the window's meta each value's column in the window, 4 * group +
// position (float32: the 32-bit meta broadcast and shifted by 2 i per lane, vpsrlvd; bf16: the 64-bit meta's word
// i / 8 to lane i, vpermw, shifted by 2 (i % 8), vpsrlvw; then vpternlogd masks the position and adds the group's
// base). Per row of x, one two-register permutation (vpermi2ps / vpermi2w) gathers the window's x at those columns
// and one FMA (vdpbf16ps for bf16 x bf16: a group's two products per float32 lane) adds them up. Only kept columns
// are read, so an Inf or NaN in x reaches only the outputs of weights kept against it, as in the reference. The
// AVX2 kernel it replaces loaded and broadcast each kept value and FMA'd a column of the transposed x per value.
// Weight rows go in blocks of kRowsBlock, per pass over up to kRowsTile rows of x, in groups that share each
// window's loads of x; the next block is prefetched into L2 meanwhile.
struct S24Win {
  __m512i idx;   // each value's column in the window
  __m512i vals;  // the values (zero past the row's end)
};

// The window of weight row v / mt (values, meta of the row) from group g0; `groups` of them exist (a full window or
// the row's last, short one: kMasked).
template <DType VD, bool kMasked>
inline S24Win s24_win(const void* v, const uint8_t* mt, int64_t g0, int groups) {
  S24Win w;
  if constexpr (VD == DType::f32) {
    const float* vf = static_cast<const float*>(v) + 2 * g0;
    uint32_t bits = 0;
    if constexpr (kMasked) {
      std::memcpy(&bits, mt + g0 / 2, static_cast<size_t>((groups + 1) / 2));
      w.vals = _mm512_castps_si512(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (2 * groups)) - 1u), vf));
    } else {
      std::memcpy(&bits, mt + g0 / 2, 4);
      w.vals = _mm512_castps_si512(_mm512_loadu_ps(vf));
    }
    const __m512i sh = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i base = _mm512_set_epi32(28, 28, 24, 24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
    const __m512i pos = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(bits)), sh);
    w.idx = _mm512_ternarylogic_epi32(pos, base, _mm512_set1_epi32(3), 0xEC);  // (pos & 3) | base
  } else {
    const uint16_t* vh = static_cast<const uint16_t*>(v) + 2 * g0;
    uint64_t bits = 0;
    if constexpr (kMasked) {
      std::memcpy(&bits, mt + g0 / 2, static_cast<size_t>((groups + 1) / 2));
      w.vals = _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t(1) << (2 * groups)) - 1u), vh);
    } else {
      std::memcpy(&bits, mt + g0 / 2, 8);
      w.vals = _mm512_loadu_si512(vh);
    }
    // lane i (a 16-bit value): the meta's word i / 8, shifted right by 2 (i % 8)
    const __m512i word = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0,
                                          0, 0, 0, 0, 0, 0);
    const __m512i sh = _mm512_set_epi16(14, 12, 10, 8, 6, 4, 2, 0, 14, 12, 10, 8, 6, 4, 2, 0, 14, 12, 10, 8, 6, 4, 2, 0,
                                        14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i base = _mm512_set_epi16(60, 60, 56, 56, 52, 52, 48, 48, 44, 44, 40, 40, 36, 36, 32, 32, 28, 28, 24,
                                          24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
    const __m512i pos =
        _mm512_srlv_epi16(_mm512_permutexvar_epi16(word, _mm512_castsi128_si512(_mm_cvtsi64_si128(
                                                             static_cast<long long>(bits)))),
                          sh);
    w.idx = _mm512_ternarylogic_epi32(pos, base, _mm512_set1_epi16(3), 0xEC);
  }
  return w;
}

// The window's x of row xm from column c: two registers (kMasked: only `cols` columns exist, zeros after them).
template <DType VD, bool kMasked>
inline void s24_x(const void* xm, int64_t c, int cols, __m512i& lo, __m512i& hi) {
  if constexpr (VD == DType::f32) {
    const float* p = static_cast<const float*>(xm) + c;
    if constexpr (kMasked) {
      const int l = cols < 16 ? cols : 16, h = cols - l;
      lo = _mm512_castps_si512(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << l) - 1u), p));
      hi = _mm512_castps_si512(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << h) - 1u), p + 16));
    } else {
      lo = _mm512_castps_si512(_mm512_loadu_ps(p));
      hi = _mm512_castps_si512(_mm512_loadu_ps(p + 16));
    }
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(xm) + c;
    if constexpr (kMasked) {
      const int l = cols < 32 ? cols : 32, h = cols - l;
      lo = _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t(1) << l) - 1u), p);
      hi = _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t(1) << h) - 1u), p + 32);
    } else {
      lo = _mm512_loadu_si512(p);
      hi = _mm512_loadu_si512(p + 32);
    }
  }
}

// acc += the window's values times x gathered at their columns. In a short window the lanes past the row's groups
// hold zero values and point at columns past the row, where s24_x left zeros: 0 x 0, never 0 x Inf.
template <DType VD>
inline __m512 s24_fma(__m512 acc, const S24Win& w, __m512i lo, __m512i hi) {
  if constexpr (VD == DType::f32) {
    const __m512 xg = _mm512_permutex2var_ps(_mm512_castsi512_ps(lo), w.idx, _mm512_castsi512_ps(hi));
    return _mm512_fmadd_ps(_mm512_castsi512_ps(w.vals), xg, acc);
  } else {
    return dpbf16(acc, w.vals, _mm512_permutex2var_epi16(lo, w.idx, hi));
  }
}

// Weight rows n .. n + R times x rows m0 .. m0 + MT (xr) into y; `lines` of `ahead` prefetched on the way.
template <DType VD, int MT, int R>
void s24_group(const Sparse24Args& a, int64_t n, int64_t m0, const void* const* xr, L2Ahead& ahead, int64_t lines) {
  using V = typename Elem<VD>::storage;
  constexpr int WG = VD == DType::f32 ? 8 : 16;  // groups of four columns per window: 16 values of 4 / 32 of 2 bytes
  const int64_t K = a.io.K, G = K / 4, mbytes = (K + 7) / 8, full = G / WG;
  const V* v[R];
  const uint8_t* mt[R];
  for (int r = 0; r < R; ++r) {
    v[r] = static_cast<const V*>(a.values) + (n + r) * (K / 2);
    mt[r] = a.meta + (n + r) * mbytes;
  }
  __m512 acc[R][MT];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm512_setzero_ps();
  const int64_t per_win = full > 0 ? lines / full + 1 : lines;
  for (int64_t i = 0; i < full; ++i) {
    ahead.step(per_win);
    const int64_t g0 = i * WG;
    __m512i lo[MT], hi[MT];
    for (int m = 0; m < MT; ++m) s24_x<VD, false>(xr[m], 4 * g0, 4 * WG, lo[m], hi[m]);
    for (int r = 0; r < R; ++r) {
      const S24Win w = s24_win<VD, false>(v[r], mt[r], g0, WG);
      for (int m = 0; m < MT; ++m) acc[r][m] = s24_fma<VD>(acc[r][m], w, lo[m], hi[m]);
    }
  }
  if (full * WG < G) {
    const int64_t g0 = full * WG;
    const int groups = static_cast<int>(G - g0);
    __m512i lo[MT], hi[MT];
    for (int m = 0; m < MT; ++m) s24_x<VD, true>(xr[m], 4 * g0, 4 * groups, lo[m], hi[m]);
    for (int r = 0; r < R; ++r) {
      const S24Win w = s24_win<VD, true>(v[r], mt[r], g0, groups);
      for (int m = 0; m < MT; ++m) acc[r][m] = s24_fma<VD>(acc[r][m], w, lo[m], hi[m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) store_y(a.io, m0 + m, n + r, _mm512_reduce_add_ps(acc[r][m]));
}

template <DType VD, int MT>
void s24_tile(const Sparse24Args& a, int64_t nb, int64_t ne, int64_t m0, L2Ahead& ahead, int64_t lines_per_row) {
  constexpr int R = MT <= 2 ? 4 : 2;  // weight rows per group: R x MT accumulators, 2 MT registers of x
  const void* xr[kRowsTile];
  for (int m = 0; m < MT; ++m)
    xr[m] = static_cast<const char*>(a.io.x) + (m0 + m) * a.io.ldx * (VD == DType::f32 ? 4 : 2);
  int64_t n = nb;
  for (; n + R <= ne; n += R) s24_group<VD, MT, R>(a, n, m0, xr, ahead, lines_per_row * R);
  for (; n < ne; ++n) s24_group<VD, MT, 1>(a, n, m0, xr, ahead, lines_per_row);
}

template <DType VD>
void s24_rows_impl(const Sparse24Args& a, int64_t r0, int64_t r1) {
  using V = typename Elem<VD>::storage;
  const int64_t K = a.io.K, mbytes = (K + 7) / 8;
  auto span = [&](int64_t ne, int64_t ne2, L2Ahead& ahead) {  // values, and the meta (1/16 or 1/8 of that) at once
    ahead.p = reinterpret_cast<const char*>(static_cast<const V*>(a.values) + ne * (K / 2));
    ahead.end = reinterpret_cast<const char*>(static_cast<const V*>(a.values) + ne2 * (K / 2));
    for (const char* p = reinterpret_cast<const char*>(a.meta + ne * mbytes);
         p < reinterpret_cast<const char*>(a.meta + ne2 * mbytes); p += 64)
      _mm_prefetch(p, _MM_HINT_T1);
  };
  auto tile = [&](int64_t nb, int64_t ne, int64_t m0, int mt, L2Ahead& ahead, int64_t lines) {
    switch (mt) {
      case 4: s24_tile<VD, 4>(a, nb, ne, m0, ahead, lines); break;
      case 3: s24_tile<VD, 3>(a, nb, ne, m0, ahead, lines); break;
      case 2: s24_tile<VD, 2>(a, nb, ne, m0, ahead, lines); break;
      default: s24_tile<VD, 1>(a, nb, ne, m0, ahead, lines); break;
    }
  };
  by_row_blocks(r0, r1, a.io.M, span, tile);
}

// ---- 2:4 with x staged (sparse24_stage_pairs): bf16 x bf16 from M = 21, x in pairs; float32 from M = 11, x
// transposed (one FMA per kept value and 16 rows of x; s24p_panel). bf16: a group of four columns keeps two
// of them, at one of six position pairs; the staging writes, for every group and every one of the six, the two
// columns of x interleaved as bf16 pairs, 16 rows of x per 64-byte register (x pair at lane m = rows m of the two
// columns). Per kept pair of weights the kernel then broadcasts the pair (4 bytes) and, per 16 rows of x, does
// one vdpbf16ps whose other operand is the staged register of the pair's positions, read straight from memory:
// no permutation, no widening. The window kernel above spends a two-register permutation per window and row of
// x; dense bf16 spends two vdpbf16ps per group of four columns and 16 rows of x, this kernel one. The staged
// x is 3x x (six pairs per four columns): panels of kS24pGroups groups (64 columns) keep their slice in L1
// while a block of kS24pRows weight rows walks it, their partial sums in a buffer in L1 between panels.
constexpr int64_t kS24pGroups = 16;  // groups per K panel: one 64-bit word of meta, 64 bytes of values per row
constexpr int64_t kS24pRows = 64;    // weight rows per block
constexpr int kS24pRegs = kSparse24PairsRegs;

// A 2:4 meta nibble (first position | second << 2, first < second) -> which of the six position pairs, in the
// order 01 02 03 12 13 23; 0 for the nibbles the op's meta check refuses (never read out of bounds).
constexpr uint8_t kS24pPattern[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0, 0, 2, 4, 5, 0};
constexpr uint64_t kS24pPatternBits = [] {
  uint64_t b = 0;
  for (int i = 0; i < 16; ++i) b |= uint64_t(kS24pPattern[i]) << (4 * i);
  return b;
}();

// t[i][j] -> t[j][i] (16 x 16 floats).
inline void transpose16x16(__m512 (&t)[16]) {
  __m512 u[16];
  for (int i = 0; i < 16; i += 2) {
    u[i] = _mm512_unpacklo_ps(t[i], t[i + 1]);
    u[i + 1] = _mm512_unpackhi_ps(t[i], t[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    t[i] = _mm512_shuffle_ps(u[i], u[i + 2], 0x44);
    t[i + 1] = _mm512_shuffle_ps(u[i], u[i + 2], 0xEE);
    t[i + 2] = _mm512_shuffle_ps(u[i + 1], u[i + 3], 0x44);
    t[i + 3] = _mm512_shuffle_ps(u[i + 1], u[i + 3], 0xEE);
  }
  // t[4q + k], 128-bit lane c: rows 4q .. 4q + 3 of column 4c + k. Lanes 0 and 2, then 1 and 3, of rows 0-7 (and of
  // rows 8-15); then of those, lanes 0 and 2 / 1 and 3 again: columns k, 8 + k, 4 + k, 12 + k whole.
  for (int i = 0; i < 8; ++i) {
    const int a = (i / 4) * 8 + i % 4;  // t[a], t[a + 4]: rows 0-3 and 4-7 (or 8-11 and 12-15) of the same columns
    u[a] = _mm512_shuffle_f32x4(t[a], t[a + 4], 0x88);
    u[a + 4] = _mm512_shuffle_f32x4(t[a], t[a + 4], 0xDD);
  }
  for (int a = 0; a < 8; ++a) {  // u[a]: rows 0-7, u[a + 8]: rows 8-15
    t[a] = _mm512_shuffle_f32x4(u[a], u[a + 8], 0x88);
    t[a + 8] = _mm512_shuffle_f32x4(u[a], u[a + 8], 0xDD);
  }
}

// y[m][n .. n + cols) = s[0 .. cols) plus the bias, in y's dtype: float32, or bf16 rounded to nearest even as
// f32_to_bf16 (NaN quieted).
inline void store_y16(const DenseIo& io, int64_t m, int64_t n, int cols, __m512 s) {
  const __mmask16 k = static_cast<__mmask16>(cols >= 16 ? 0xFFFFu : (1u << cols) - 1u);
  if (io.out_dtype == DType::f32) {
    if (io.bias) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(k, static_cast<const float*>(io.bias) + n));
    _mm512_mask_storeu_ps(static_cast<float*>(io.y) + m * io.ldy + n, k, s);
    return;
  }
  if (io.bias) {
    const __m256i b = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(io.bias) + n);
    s = _mm512_add_ps(s, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)));
  }
  const __m512i u = _mm512_castps_si512(s);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  _mm256_mask_storeu_epi16(static_cast<uint16_t*>(io.y) + m * io.ldy + n, k, _mm512_cvtepi32_epi16(r));
}

inline __m512 dpbf16_mem(__m512 acc, __m512i a, const void* p) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "m"(*static_cast<const __m512i*>(p)));
  return acc;
}

// Staged bytes per group of four columns and 16-row register of x: bf16 six pairs, float32 the four columns.
template <DType VD>
constexpr int64_t kS24pPerGroup = VD == DType::bf16 ? 6 * 64 : 4 * 64;

// Rows v / mt (R of them: values, meta) times the staged block pb (MTB registers of rows of x) over groups q0 .. q0 +
// groups of a panel; partial sums in part (R x MTB x 16 floats), from zero when `first`. bf16: per kept pair one
// vdpbf16ps with the staged pair of its positions; float32: per kept value one FMA with its staged column.
template <DType VD, int MTB, int R, bool kFull>
inline void s24p_panel(const void* const* v, const uint8_t* const* mt, int64_t q0, int groups, const char* pb,
                       float* part, bool first) {
  constexpr int64_t kPat = MTB * 64, kGrp = kS24pPerGroup<VD> * MTB;
  __m512 acc[R][MTB];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MTB; ++m) acc[r][m] = first ? _mm512_setzero_ps() : _mm512_load_ps(part + (r * MTB + m) * 16);
  uint64_t bits[R];
  for (int r = 0; r < R; ++r) {
    bits[r] = 0;
    std::memcpy(&bits[r], mt[r] + q0 / 2, kFull ? 8 : static_cast<size_t>((groups + 1) / 2));
    // the row's piece four panels on: without it, weights in memory (caches flushed) came at the latency of each
    // piece (bf16, 11008 x 4096, M = 21-64: 12 ms against 8-9). Into L1 for bf16 (into L2 only, MiniLM's 384 x 1536
    // at M = 2048 took 8.1-8.7 ms against 5.6), into L2 for float32 (measured so; its next rows' pieces come into
    // L1 in s24p_block).
    const char* far = static_cast<const char*>(v[r]) + (q0 + 4 * kS24pGroups) * (VD == DType::bf16 ? 4 : 8);
    _mm_prefetch(far, VD == DType::bf16 ? _MM_HINT_T0 : _MM_HINT_T1);
    if constexpr (VD == DType::f32) _mm_prefetch(far + 64, _MM_HINT_T1);
  }
  const int n = kFull ? static_cast<int>(kS24pGroups) : groups;
  const char* pj = pb + q0 * kGrp;
  // (a loop, not unrolled: fully unrolled, GCC kept acc in memory and stored it after every vdpbf16ps)
  for (int j = 0; j < n; ++j, pj += kGrp) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const unsigned nib = static_cast<unsigned>(bits[r] & 15u);
      bits[r] >>= 4;
      if constexpr (VD == DType::bf16) {
        const char* px = pj + ((kS24pPatternBits >> (4 * nib)) & 15u) * kPat;
        uint32_t w;
        std::memcpy(&w, static_cast<const uint32_t*>(v[r]) + q0 + j, 4);
        const __m512i wv = _mm512_set1_epi32(static_cast<int>(w));
#pragma GCC unroll 4
        for (int m = 0; m < MTB; ++m) acc[r][m] = dpbf16_mem(acc[r][m], wv, px + m * 64);
      } else {
        const float* vf = static_cast<const float*>(v[r]) + 2 * (q0 + j);
        const char* p0 = pj + (nib & 3u) * kPat;
        const char* p1 = pj + (nib >> 2) * kPat;
        const __m512 w0 = _mm512_set1_ps(vf[0]), w1 = _mm512_set1_ps(vf[1]);
#pragma GCC unroll 4
        for (int m = 0; m < MTB; ++m)
          acc[r][m] = _mm512_fmadd_ps(w1, _mm512_load_ps(reinterpret_cast<const float*>(p1 + m * 64)),
                                      _mm512_fmadd_ps(w0, _mm512_load_ps(reinterpret_cast<const float*>(p0 + m * 64)),
                                                      acc[r][m]));
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MTB; ++m) _mm512_store_ps(part + (r * MTB + m) * 16, acc[r][m]);
}

template <DType VD, int MTB>
void s24p_block(const Sparse24Args& a, int64_t nb, int64_t ne, const char* pb, float* part) {
  constexpr int R = MTB <= 2 ? 4 : 2;
  const int64_t K = a.io.K, G = K / 4, mbytes = (K + 7) / 8;
  if (G == 0) std::memset(part, 0, sizeof(float) * static_cast<size_t>((ne - nb) * MTB * 16));
  for (int64_t q0 = 0; q0 < G; q0 += kS24pGroups) {
    const int groups = static_cast<int>(G - q0 < kS24pGroups ? G - q0 : kS24pGroups);
    const bool first = q0 == 0;
    int64_t n = nb;
    auto run = [&](auto rows) {
      constexpr int RR = decltype(rows)::value;
      const void* v[RR];
      const uint8_t* mt[RR];
      for (int r = 0; r < RR; ++r) {
        v[r] = static_cast<const typename Elem<VD>::storage*>(a.values) + (n + r) * (K / 2);
        mt[r] = a.meta + (n + r) * mbytes;
      }
      // the next group of rows' pieces of this panel into L1 (a line of values in bf16, two in float32, and 8 bytes
      // of meta; a whole row apart from the next row's, so the hardware prefetchers do not bring them): float32,
      // one thread, M = 128, 4096 x 4096, 0.72 -> 0.43 ns per FMA; bf16, 2 threads, M = 32-2048, 1.05-1.21x on
      // LLaMA-7B's layers and 1.01-1.45x on MiniLM's (bench/results/cpu_24_bf16_next_rows.md).
      {
        constexpr int64_t es = VD == DType::f32 ? 4 : 2;
        for (int64_t nn = n + RR; nn < n + 2 * RR && nn < ne; ++nn) {
          const char* p = static_cast<const char*>(a.values) + (nn * (K / 2) + 2 * q0) * es;
          _mm_prefetch(p, _MM_HINT_T0);
          if constexpr (VD == DType::f32) _mm_prefetch(p + 64, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(a.meta + nn * mbytes + q0 / 2), _MM_HINT_T0);
        }
      }
      float* pr = part + (n - nb) * MTB * 16;
      if (groups == kS24pGroups) s24p_panel<VD, MTB, RR, true>(v, mt, q0, groups, pb, pr, first);
      else s24p_panel<VD, MTB, RR, false>(v, mt, q0, groups, pb, pr, first);
    };
    for (; n + R <= ne; n += R) run(std::integral_constant<int, R>());
    for (; n < ne; ++n) run(std::integral_constant<int, 1>());
  }
  const int64_t rows = a.io.M;  // (at most MTB * 16: s24p_rows)
  // y[m][nb + r] = part[r][m]: 16 x 16 tiles transposed, so that each row of y is written 16 columns at a time
  // (one float at a time, down a column of y, took as long as the products at K = 512). y is x's dtype: float32 or
  // bf16 (sparse24_pairs_supported).
  for (int64_t r0 = 0; r0 < ne - nb; r0 += 16) {
    const int rr = static_cast<int>(ne - nb - r0 < 16 ? ne - nb - r0 : 16);
    for (int mb = 0; mb * 16 < rows; ++mb) {
      __m512 t[16];
      for (int i = 0; i < 16; ++i)
        t[i] = i < rr ? _mm512_load_ps(part + ((r0 + i) * MTB + mb) * 16) : _mm512_setzero_ps();
      transpose16x16(t);
      const int mm = static_cast<int>(rows - mb * 16 < 16 ? rows - mb * 16 : 16);
      for (int l = 0; l < mm; ++l) store_y16(a.io, mb * 16 + l, nb + r0, rr, t[l]);
    }
  }
}

template <DType VD, int MTB>
void s24p_dispatch(const Sparse24Args& a, int mtb, int64_t nb, int64_t ne, const char* pb, float* part) {
  if constexpr (MTB > 1) {
    if (mtb < MTB) return s24p_dispatch<VD, MTB - 1>(a, mtb, nb, ne, pb, part);
  }
  s24p_block<VD, MTB>(a, nb, ne, pb, part);
}

// a.io.M <= kSparse24PairsRows rows of x, staged at a.xpairs (sparse24_stage_pairs).
template <DType VD>
void s24p_rows(const Sparse24Args& a, int64_t r0, int64_t r1) {
  const int mtb = static_cast<int>((a.io.M + 15) / 16);
  alignas(64) float part[kS24pRows * kS24pRegs * 16];
  const char* pb = reinterpret_cast<const char*>(a.xpairs);
  for (int64_t nb = r0; nb < r1; nb += kS24pRows)
    s24p_dispatch<VD, kS24pRegs>(a, mtb, nb, nb + kS24pRows < r1 ? nb + kS24pRows : r1, pb, part);
}

// ---- BSR at M = 1, blocks 16, 32 or 64 columns wide. The portable kernel took one row of a block row at a time
// across all its blocks: per block it read one row of the block (C values) and reloaded x's block, so the values
// came as pieces of one row per block, R times over the block row (8 layers of 4096 x 4096 at 70 %, 2 threads,
// float32: 16x16 blocks read at 49 %, 32x32 at 38 % of the read bandwidth). Here a pass takes up to 16 rows of
// the block row, one accumulator each, and per block loads x's block once (C / 16 registers) and then the pass's
// rows of the block, which lie contiguous in memory; with R <= 16 the whole block row is one sequential stream.
// 16-bit values are widened to float32 exactly (bf16: a shift; f16: vcvtph2ps), x is float32 (M = 1 staging).
template <DType VD>
inline __m512 load_w16(const typename Elem<VD>::storage* p) {
  if constexpr (VD == DType::f32) {
    return _mm512_loadu_ps(p);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (VD == DType::bf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

// Rows r0 .. r0 + P of block row br; CV = C / 16 registers per block row.
template <DType VD, int CV, int P>
void bsr_m1_pass(const BsrArgs& a, int64_t br, int64_t r0) {
  using V = typename Elem<VD>::storage;
  constexpr int64_t C = 16 * CV;
  const V* vals = static_cast<const V*>(a.values);
  __m512 acc[P];
  for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_ps();
  for (int64_t j = a.crow[br]; j < a.crow[br + 1]; ++j) {
    const float* xb = a.io.xt + static_cast<int64_t>(a.col[j]) * C;
    __m512 xv[CV];
    for (int c = 0; c < CV; ++c) xv[c] = _mm512_loadu_ps(xb + 16 * c);
    const V* vb = vals + (j * a.R + r0) * C;
    for (int p = 0; p < P; ++p)
      for (int c = 0; c < CV; ++c) acc[p] = _mm512_fmadd_ps(load_w16<VD>(vb + p * C + 16 * c), xv[c], acc[p]);
  }
  for (int p = 0; p < P; ++p) store_row(a.io, br * a.R + r0 + p, _mm512_reduce_add_ps(acc[p]));
}

// Block rows of R = 16 k rows, k <= kBsrWideMax: each block is read whole, in order (R x C values), 16 rows at a
// time into registers that start from and go back to a per-row partial sum in L1 (macc); one pass per block row.
// Taking 16 rows per pass over the whole block row instead read pieces of 16 rows at a stride of R rows, which
// the hardware prefetchers followed badly (32x32 and 64x64 blocks ran slower than 16x16 on the same bytes).
constexpr int64_t kBsrWideMax = 8;
template <DType VD, int CV>
void bsr_m1_wide(const BsrArgs& a, int64_t br) {
  using V = typename Elem<VD>::storage;
  constexpr int64_t C = 16 * CV;
  const V* vals = static_cast<const V*>(a.values);
  const int64_t R = a.R;
  alignas(64) float macc[16 * 16 * kBsrWideMax];
  for (int64_t i = 0; i < 16 * R; i += 16) _mm512_store_ps(macc + i, _mm512_setzero_ps());
  for (int64_t j = a.crow[br]; j < a.crow[br + 1]; ++j) {
    const float* xb = a.io.xt + static_cast<int64_t>(a.col[j]) * C;
    __m512 xv[CV];
    for (int c = 0; c < CV; ++c) xv[c] = _mm512_loadu_ps(xb + 16 * c);
    const V* vb = vals + j * R * C;
    for (int64_t r0 = 0; r0 < R; r0 += 16) {
      __m512 acc[16];
      for (int p = 0; p < 16; ++p) acc[p] = _mm512_load_ps(macc + 16 * (r0 + p));
      for (int p = 0; p < 16; ++p)
        for (int c = 0; c < CV; ++c) acc[p] = _mm512_fmadd_ps(load_w16<VD>(vb + (r0 + p) * C + 16 * c), xv[c], acc[p]);
      for (int p = 0; p < 16; ++p) _mm512_store_ps(macc + 16 * (r0 + p), acc[p]);
    }
  }
  for (int64_t r = 0; r < R; ++r) store_row(a.io, br * R + r, _mm512_reduce_add_ps(_mm512_load_ps(macc + 16 * r)));
}

template <DType VD, int CV>
void bsr_m1_impl(const BsrArgs& a, int64_t br0, int64_t br1) {
  if (a.R > 16 && a.R % 16 == 0 && a.R <= 16 * kBsrWideMax) {
    for (int64_t br = br0; br < br1; ++br) bsr_m1_wide<VD, CV>(a, br);
    return;
  }
  for (int64_t br = br0; br < br1; ++br) {
    int64_t r = 0;
    for (; r + 16 <= a.R; r += 16) bsr_m1_pass<VD, CV, 16>(a, br, r);
    if (r + 8 <= a.R) { bsr_m1_pass<VD, CV, 8>(a, br, r); r += 8; }
    if (r + 4 <= a.R) { bsr_m1_pass<VD, CV, 4>(a, br, r); r += 4; }
    if (r + 2 <= a.R) { bsr_m1_pass<VD, CV, 2>(a, br, r); r += 2; }
    if (r < a.R) bsr_m1_pass<VD, CV, 1>(a, br, r);
  }
}

template <DType VD>
void bsr_m1_cv(const BsrArgs& a, int64_t br0, int64_t br1) {
  switch (a.C) {
    case 16: bsr_m1_impl<VD, 1>(a, br0, br1); break;
    case 32: bsr_m1_impl<VD, 2>(a, br0, br1); break;
    default: bsr_m1_impl<VD, 4>(a, br0, br1); break;
  }
}

// ---- BSR from M = 2, x by rows: each kept block is a small dense product, y[m, r] += sum_c x[m, c] w[r, c], done
// as dot products along the block's columns, MT <= 4 rows of x by RT <= 4 rows of the block at a time: per 16
// columns (float32; 32 for bf16 x bf16 through vdpbf16ps) MT loads of x and RT loads of the block's rows feed
// MT x RT FMAs into as many accumulators, summed across lanes once per block row. The portable kernel instead
// broadcast each block value and FMA'd it with a column of the transposed x (a load and a broadcast per FMA).
// bf16 blocks 16 columns wide (C % 32 != 0) take 256-bit vdpbf16ps (kHalf).
inline __m256 dpbf16_256(__m256 acc, __m256i a, __m256i b) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

template <bool kHalf>
struct BsrAcc {
  typedef __m512 T;
};
template <>
struct BsrAcc<true> {
  typedef __m256 T;
};

template <DType VD, int RT, int MT, bool kHalf>
void bsr_rows_tile(const BsrArgs& a, int64_t br, int64_t r0, int64_t m0, const void* const* xr) {
  using V = typename Elem<VD>::storage;
  constexpr int kStep = VD == DType::f32 || kHalf ? 16 : 32;  // columns per register
  using Acc = typename BsrAcc<kHalf>::T;
  const V* vals = static_cast<const V*>(a.values);
  const int64_t R = a.R, C = a.C;
  Acc acc[RT][MT];
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) {
      if constexpr (kHalf) acc[r][m] = _mm256_setzero_ps();
      else acc[r][m] = _mm512_setzero_ps();
    }
  for (int64_t j = a.crow[br]; j < a.crow[br + 1]; ++j) {
    const int64_t c0 = static_cast<int64_t>(a.col[j]) * C;
    const V* vb = vals + (j * R + r0) * C;
    for (int64_t c = 0; c < C; c += kStep) {
      if constexpr (kHalf) {
        __m256i xv[MT];
        for (int m = 0; m < MT; ++m)
          xv[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(xr[m]) + c0 + c));
        for (int r = 0; r < RT; ++r) {
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vb + r * C + c));
          for (int m = 0; m < MT; ++m) acc[r][m] = dpbf16_256(acc[r][m], wv, xv[m]);
        }
      } else if constexpr (VD == DType::f32) {
        __m512 xv[MT];
        for (int m = 0; m < MT; ++m) xv[m] = _mm512_loadu_ps(static_cast<const float*>(xr[m]) + c0 + c);
        for (int r = 0; r < RT; ++r) {
          const __m512 wv = _mm512_loadu_ps(vb + r * C + c);
          for (int m = 0; m < MT; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
        }
      } else {
        __m512i xv[MT];
        for (int m = 0; m < MT; ++m) xv[m] = _mm512_loadu_si512(static_cast<const uint16_t*>(xr[m]) + c0 + c);
        for (int r = 0; r < RT; ++r) {
          const __m512i wv = _mm512_loadu_si512(vb + r * C + c);
          for (int m = 0; m < MT; ++m) acc[r][m] = dpbf16(acc[r][m], wv, xv[m]);
        }
      }
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) {
      float sum;
      if constexpr (kHalf) {
        const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r][m]), _mm256_extractf128_ps(acc[r][m], 1));
        const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
        sum = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
      } else {
        sum = _mm512_reduce_add_ps(acc[r][m]);
      }
      store_y(a.io, m0 + m, br * R + r0 + r, sum);
    }
}

template <DType VD, int MT, bool kHalf>
void bsr_rows_m(const BsrArgs& a, int64_t br, int64_t m0) {
  const void* xr[4];
  for (int m = 0; m < MT; ++m)
    xr[m] = static_cast<const char*>(a.io.x) + (m0 + m) * a.io.ldx * (VD == DType::f32 ? 4 : 2);
  int64_t r = 0;
  for (; r + 4 <= a.R; r += 4) bsr_rows_tile<VD, 4, MT, kHalf>(a, br, r, m0, xr);
  switch (a.R - r) {
    case 3: bsr_rows_tile<VD, 3, MT, kHalf>(a, br, r, m0, xr); break;
    case 2: bsr_rows_tile<VD, 2, MT, kHalf>(a, br, r, m0, xr); break;
    case 1: bsr_rows_tile<VD, 1, MT, kHalf>(a, br, r, m0, xr); break;
    default: break;
  }
}

template <DType VD, bool kHalf>
void bsr_rows_impl(const BsrArgs& a, int64_t br0, int64_t br1) {
  const int64_t M = a.io.M;
  for (int64_t br = br0; br < br1; ++br) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      switch (M - m0 < 4 ? M - m0 : 4) {
        case 4: bsr_rows_m<VD, 4, kHalf>(a, br, m0); break;
        case 3: bsr_rows_m<VD, 3, kHalf>(a, br, m0); break;
        case 2: bsr_rows_m<VD, 2, kHalf>(a, br, m0); break;
        default: bsr_rows_m<VD, 1, kHalf>(a, br, m0); break;
      }
    }
  }
}

}  // namespace

void bitmap_m1(const BitmapArgs& a, int64_t r0, int64_t r1) {
  if (a.value_dtype != DType::f32 && has_vbmi2() && r0 < r1) return bitmap_m1_w16(a, r0, r1);
  switch (a.value_dtype) {
    case DType::f32: bitmap_m1_impl<DType::f32>(a, r0, r1); break;
    case DType::bf16: bitmap_m1_impl<DType::bf16>(a, r0, r1); break;
    case DType::f16: bitmap_m1_impl<DType::f16>(a, r0, r1); break;
  }
}

// x of the values' dtype (as the op gives it): float32; bf16 with AVX-512 BF16 (vdpbf16ps); f16 with VBMI2
// (widened per load). 16-bit values need VBMI2 (vpexpandw).
bool bitmap_rows_supported(const BitmapArgs& a) {
  if (!a.io.x || a.io.M < 2 || a.io.M > kBitmapRowsMaxM) return false;
  if (a.value_dtype == DType::f32) return a.io.x_dtype == DType::f32;
  if (!has_vbmi2()) return false;
  if (a.io.x_dtype == DType::f32) return true;
  if (a.value_dtype == DType::bf16) return a.io.x_dtype == DType::bf16 && has_bf16_dot();
  return a.io.x_dtype == DType::f16;
}

void bitmap_rows(const BitmapArgs& a, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;  // x is all finite (bitmap_spmm_rows sees to it)
  switch (a.value_dtype) {
    case DType::f32: bitmap_rows_impl<DType::f32, DType::f32, false>(a, r0, r1); break;
    case DType::bf16:
      if (a.io.x_dtype == DType::bf16) bitmap_rows_impl<DType::bf16, DType::bf16, true>(a, r0, r1);
      else bitmap_rows_impl<DType::bf16, DType::f32, false>(a, r0, r1);
      break;
    case DType::f16:
      if (a.io.x_dtype == DType::f16) bitmap_rows_impl<DType::f16, DType::f16, false>(a, r0, r1);
      else bitmap_rows_impl<DType::f16, DType::f32, false>(a, r0, r1);
      break;
  }
}

bool bsr_m1_supported(const BsrArgs& a) { return a.io.M == 1 && (a.C == 16 || a.C == 32 || a.C == 64); }

void bsr_m1(const BsrArgs& a, int64_t br0, int64_t br1) {
  if (br0 >= br1) return;
  switch (a.value_dtype) {
    case DType::f32: bsr_m1_cv<DType::f32>(a, br0, br1); break;
    case DType::bf16: bsr_m1_cv<DType::bf16>(a, br0, br1); break;
    case DType::f16: bsr_m1_cv<DType::f16>(a, br0, br1); break;
  }
}

bool bsr_rows_supported(const BsrArgs& a) {
  if (!a.io.x || a.io.M < 2 || a.io.x_dtype != a.value_dtype) return false;
  return a.C % 16 == 0 && (a.value_dtype == DType::f32 || (a.value_dtype == DType::bf16 && has_bf16_dot()));
}

void bsr_rows(const BsrArgs& a, int64_t br0, int64_t br1) {
  if (br0 >= br1) return;
  if (a.value_dtype == DType::f32) bsr_rows_impl<DType::f32, false>(a, br0, br1);
  else if (a.C % 32 == 0) bsr_rows_impl<DType::bf16, false>(a, br0, br1);
  else bsr_rows_impl<DType::bf16, true>(a, br0, br1);
}

bool sparse24_rows_supported(const Sparse24Args& a) {
  if (!a.io.x || a.io.M < 1 || a.io.M > sparse24_rows_max_m(a.io.x_dtype) || a.io.K % 4 != 0 ||
      a.io.x_dtype != a.value_dtype)
    return false;
  return a.value_dtype == DType::f32 || (a.value_dtype == DType::bf16 && has_bf16_dot());
}

void sparse24_rows(const Sparse24Args& a, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (a.value_dtype == DType::f32) s24_rows_impl<DType::f32>(a, r0, r1);
  else s24_rows_impl<DType::bf16>(a, r0, r1);
}

bool sparse24_pairs_supported(int64_t M, DType value_dtype, DType x_dtype) {
  if (value_dtype != x_dtype) return false;
  if (value_dtype == DType::f32) return M > kSparse24RowsMaxMF32;
  return value_dtype == DType::bf16 && M > kSparse24RowsMaxMBf16 && has_bf16_dot();
}

namespace {
// bf16: a task is 16 rows by 32 columns (8 groups): three 16 x 16 transposes.
void stage_pairs_bf16(const uint16_t* x, int64_t ldx, int64_t M, int64_t K, uint32_t* pairs) {
  const int64_t regs = (M + 15) / 16, chunks = (K / 4 + 7) / 8;
  // per group of four columns, as 16-bit lanes: (0, 2, 1, 3) and (0, 3, 1, 2), so that the row's 32-bit lanes
  // 2 g and 2 g + 1 hold the pairs 02 and 13, or 03 and 12 (the row itself holds 01 and 23)
  __m512i perm[2];
  {
    alignas(64) uint16_t i02[32], i03[32];
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, k = l % 4;
      static constexpr int k02[4] = {0, 2, 1, 3}, k03[4] = {0, 3, 1, 2};
      i02[l] = static_cast<uint16_t>(4 * g + k02[k]);
      i03[l] = static_cast<uint16_t>(4 * g + k03[k]);
    }
    perm[0] = _mm512_load_si512(i02);
    perm[1] = _mm512_load_si512(i03);
  }
  // the position pair (01 02 03 12 13 23) of 32-bit lane 2 g + h of the row as it is, and of each permutation
  static constexpr int kPat[3][2] = {{0, 5}, {1, 4}, {2, 3}};
  for (int64_t t = 0; t < regs * chunks; ++t) {
    const int64_t reg = t / chunks, c = t % chunks;
    const int64_t m0 = reg * 16, c0 = c * 32;
    uint32_t* pb = pairs + reg * 16;
    const int64_t cols = K - c0 < 32 ? K - c0 : 32, groups = cols / 4;
    const __mmask32 k = cols >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((uint64_t(1) << cols) - 1u);
    __m512i rows[16];
    for (int i = 0; i < 16; ++i)
      rows[i] = m0 + i < M ? _mm512_maskz_loadu_epi16(k, x + (m0 + i) * ldx + c0) : _mm512_setzero_si512();
    for (int arr = 0; arr < 3; ++arr) {
      __m512 t16[16];
      for (int i = 0; i < 16; ++i)
        t16[i] = _mm512_castsi512_ps(arr == 0 ? rows[i] : _mm512_permutexvar_epi16(perm[arr - 1], rows[i]));
      transpose16x16(t16);  // t16[2 g + h]: the pair h of group g (of this chunk), rows m0 .. m0 + 15
      for (int64_t g = 0; g < groups; ++g)
        for (int h = 0; h < 2; ++h)
          _mm512_store_ps(reinterpret_cast<float*>(pb + ((c * 8 + g) * 6 + kPat[arr][h]) * regs * 16), t16[2 * g + h]);
    }
  }
}

// float32: x transposed, 16 rows per register (column c's register of rows 16 r at (c * regs + r) * 16 floats).
void stage_cols_f32(const float* x, int64_t ldx, int64_t M, int64_t K, float* out) {
  stage_xt(x, DType::f32, ldx, M, 0, K, out, false, (M + 15) / 16 * 16);
}

// 16 elements of x from p (the first `cols`, the rest zero) as float32 (bf16 bits shifted, f16 converted: exact).
template <DType XD>
inline __m512 load_x16_f32(const void* p, __mmask16 cols) {
  if constexpr (XD == DType::f32) return _mm512_maskz_loadu_ps(cols, p);
  const __m256i h = _mm256_maskz_loadu_epi16(cols, p);
  if constexpr (XD == DType::bf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  else return _mm512_cvtph_ps(h);
}

// A task is 16 rows by 16 columns, one 16 x 16 transpose; each column's 16 rows stored under a mask (ldxt - m0 lanes
// where fewer than 16 are left: ldxt = 8 for M <= 8). kOut16: stored as bf16 bits (x bf16: its own bits back).
template <DType XD, bool kOut16>
void stage_xt_t(const void* x, int64_t ldx, int64_t M, int64_t k0, int64_t k1, void* xt, int64_t ldxt) {
  using X = typename Elem<XD>::storage;
  const X* xs = static_cast<const X*>(x);
  for (int64_t m0 = 0; m0 < ldxt; m0 += 16) {
    const int64_t lanes = ldxt - m0 < 16 ? ldxt - m0 : 16;
    const __mmask16 store = static_cast<__mmask16>(lanes >= 16 ? 0xFFFFu : (1u << lanes) - 1u);
    for (int64_t c0 = k0; c0 < k1; c0 += 16) {
      const int cols = static_cast<int>(k1 - c0 < 16 ? k1 - c0 : 16);
      const __mmask16 k = static_cast<__mmask16>(cols >= 16 ? 0xFFFFu : (1u << cols) - 1u);
      __m512 t16[16];
      for (int i = 0; i < 16; ++i)
        t16[i] = m0 + i < M ? load_x16_f32<XD>(xs + (m0 + i) * ldx + c0, k) : _mm512_setzero_ps();
      transpose16x16(t16);
      for (int j = 0; j < cols; ++j) {
        const int64_t at = (c0 + j) * ldxt + m0;
        if constexpr (kOut16)
          _mm256_mask_storeu_epi16(static_cast<uint16_t*>(xt) + at, store,
                                   _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(t16[j]), 16)));
        else
          _mm512_mask_storeu_ps(static_cast<float*>(xt) + at, store, t16[j]);
      }
    }
  }
}
}  // namespace

void stage_xt(const void* x, DType x_dtype, int64_t ldx, int64_t M, int64_t k0, int64_t k1, void* xt, bool xt16,
              int64_t ldxt) {
  if (xt16 && x_dtype != DType::bf16) throw std::logic_error("sparsekit: stage_xt stages bf16 only from bf16 x");
  switch (x_dtype) {
    case DType::f32: return stage_xt_t<DType::f32, false>(x, ldx, M, k0, k1, xt, ldxt);
    case DType::bf16:
      return xt16 ? stage_xt_t<DType::bf16, true>(x, ldx, M, k0, k1, xt, ldxt)
                  : stage_xt_t<DType::bf16, false>(x, ldx, M, k0, k1, xt, ldxt);
    case DType::f16: return stage_xt_t<DType::f16, false>(x, ldx, M, k0, k1, xt, ldxt);
  }
}

void sparse24_stage_pairs(const void* x, int64_t ldx, int64_t M, int64_t K, DType x_dtype, uint32_t* pairs) {
  if (x_dtype == DType::f32) stage_cols_f32(static_cast<const float*>(x), ldx, M, K, reinterpret_cast<float*>(pairs));
  else stage_pairs_bf16(static_cast<const uint16_t*>(x), ldx, M, K, pairs);
}

void sparse24_pairs(const Sparse24Args& a, int64_t r0, int64_t r1) {
  if (a.io.M > kSparse24PairsRows)
    throw std::logic_error("sparsekit: sparse24_pairs got more rows of x staged than kSparse24PairsRows");
  if (r0 >= r1) return;
  if (a.value_dtype == DType::f32) s24p_rows<DType::f32>(a, r0, r1);
  else s24p_rows<DType::bf16>(a, r0, r1);
}

int64_t bitmap_decode_rows(const uint32_t* bitmap, int64_t words, int64_t r0, int64_t r1, int64_t max_count,
                           int32_t* crow, int32_t* col) {
  // A byte of the bitmap at a time: its set bits' positions from kBytePositions (widened to 32 bits), plus the
  // byte's first column, stored as 8 columns (one ymm store), and the count advanced by the byte's popcount. No
  // branch on the bits. One thread, 4096 x 4096: 1.2 ms a layer at any density; vpcompressd of 16 columns at a
  // time into a register, then a zmm store, took 1.6 ms, and of 8 columns into a ymm 2.4 ms.
  const __m256i eight = _mm256_set1_epi32(8);
  int64_t cnt = 0;
  for (int64_t n = r0; n < r1; ++n) {
    if (cnt > max_count) throw std::logic_error("sparsekit: bitmap_decode_rows found more kept weights than max_count");
    crow[n - r0] = static_cast<int32_t>(cnt);
    const uint32_t* bm = bitmap + n * words;
    __m256i base = _mm256_setzero_si256();
    for (int64_t w = 0; w < words; ++w) {
      const uint32_t word = bm[w];
      for (int q = 0; q < 4; ++q) {
        const unsigned b = (word >> (8 * q)) & 0xFFu;
        const __m256i pos = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(kBytePositions[b])));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(col + cnt), _mm256_add_epi32(base, pos));
        cnt += __builtin_popcount(b);
        base = _mm256_add_epi32(base, eight);
      }
    }
  }
  if (cnt > max_count) throw std::logic_error("sparsekit: bitmap_decode_rows found more kept weights than max_count");
  crow[r1 - r0] = static_cast<int32_t>(cnt);
  return cnt;
}

}  // namespace avx512
}  // namespace core
}  // namespace sparsekit
#pragma GCC pop_options
#else
namespace sparsekit {
namespace core {
namespace avx512 {
void bitmap_m1(const BitmapArgs& a, int64_t r0, int64_t r1) { generic::bitmap_spmm_rows(a, r0, r1); }
bool bitmap_rows_supported(const BitmapArgs&) { return false; }
bool sparse24_rows_supported(const Sparse24Args&) { return false; }
bool bsr_m1_supported(const BsrArgs&) { return false; }
bool bsr_rows_supported(const BsrArgs&) { return false; }
void bsr_rows(const BsrArgs& a, int64_t r0, int64_t r1) { generic::bsr_spmm_rows(a, r0, r1); }
void bsr_m1(const BsrArgs& a, int64_t r0, int64_t r1) { generic::bsr_spmm_rows(a, r0, r1); }
void sparse24_rows(const Sparse24Args& a, int64_t r0, int64_t r1) { generic::sparse24_spmm_rows(a, r0, r1); }
bool sparse24_pairs_supported(int64_t, DType, DType) { return false; }
void sparse24_stage_pairs(const void*, int64_t, int64_t, int64_t, DType, uint32_t*) {}
void sparse24_pairs(const Sparse24Args& a, int64_t r0, int64_t r1) { generic::sparse24_spmm_rows(a, r0, r1); }
void bitmap_rows(const BitmapArgs& a, int64_t r0, int64_t r1) { generic::bitmap_spmm_rows(a, r0, r1); }
int64_t bitmap_decode_rows(const uint32_t*, int64_t, int64_t, int64_t, int64_t, int32_t*, int32_t*) {
  throw std::logic_error("sparsekit: bitmap_decode_rows needs AVX-512 (core::bitmap_as_csr is false here)");
}
void stage_xt(const void*, DType, int64_t, int64_t, int64_t, int64_t, void*, bool, int64_t) {
  throw std::logic_error("sparsekit: stage_xt needs AVX-512 (core::stages_xt is false here)");
}
}  // namespace avx512
}  // namespace core
}  // namespace sparsekit
#endif
