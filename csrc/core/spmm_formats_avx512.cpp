// AVX-512 path for the bitmap core at M == 1: each 16-bit half of a bitmap word expands the next
// kept values into their columns in one instruction (vexpandps), so the work per 16 columns is
// constant and small and never branches on the bits. 16-bit values (bf16 / f16) are read with a
// masked load of exactly the half-word's count (AVX-512 BW + VL), widened to float32, then expanded.
#include <cstdint>
#include <cstring>
#include <new>

#include "spmm_formats.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c,popcnt")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive inside avx512fintrin.h

namespace sparsekit {
namespace core {
namespace avx512 {

namespace {
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

// Row n of y (M == 1): the dot product plus the bias, in y's dtype.
inline void store_row(const DenseIo& io, int64_t n, float s) {
  switch (io.out_dtype) {
    case DType::f32:
      if (io.bias) s += static_cast<const float*>(io.bias)[n];
      static_cast<float*>(io.y)[n] = s;
      break;
    case DType::bf16:
      if (io.bias) s += bf16_to_f32(static_cast<const uint16_t*>(io.bias)[n]);
      static_cast<uint16_t*>(io.y)[n] = f32_to_bf16(s);
      break;
    case DType::f16:
      if (io.bias) s += f16_to_f32(static_cast<const uint16_t*>(io.bias)[n]);
      static_cast<uint16_t*>(io.y)[n] = f32_to_f16(s);
      break;
  }
}

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

// bf16 values times bf16 x (io.x_is_bf16) with AVX-512 BF16: vdpbf16ps multiplies the 32 expanded values by
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
  static const bool bf16_dot = __builtin_cpu_supports("avx512bf16");
  if (a.value_dtype == DType::bf16 && a.io.x_is_bf16 && bf16_dot) {
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
}  // namespace

void bitmap_m1(const BitmapArgs& a, int64_t r0, int64_t r1) {
  static const bool vbmi2 = __builtin_cpu_supports("avx512vbmi2");
  if (a.value_dtype != DType::f32 && vbmi2 && r0 < r1) return bitmap_m1_w16(a, r0, r1);
  switch (a.value_dtype) {
    case DType::f32: bitmap_m1_impl<DType::f32>(a, r0, r1); break;
    case DType::bf16: bitmap_m1_impl<DType::bf16>(a, r0, r1); break;
    case DType::f16: bitmap_m1_impl<DType::f16>(a, r0, r1); break;
  }
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
}  // namespace avx512
}  // namespace core
}  // namespace sparsekit
#endif
