// AVX-512 path for the bitmap core at M == 1: each 16-bit half of a bitmap word expands the next
// kept values into their columns in one instruction (vexpandps), so the work per 16 columns is
// constant and small and never branches on the bits. 16-bit values (bf16 / f16) are read with a
// masked load of exactly the half-word's count (AVX-512 BW + VL), widened to float32, then expanded.
#include <cstdint>
#include <cstring>

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
// The `count` kept values at v, as float32, expanded into the set bits of m (zero elsewhere).
template <DType VD>
inline __m512 expand_kept(__mmask16 m, const typename Elem<VD>::storage* v, int count) {
  if constexpr (VD == DType::f32) {
    (void)count;
    return _mm512_maskz_expandloadu_ps(m, v);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1u), v);
    const __m512 f = VD == DType::bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                       : _mm512_cvtph_ps(h);
    return _mm512_maskz_expand_ps(m, f);
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
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t w = 0; w < full; ++w) {
      const uint32_t word = bm[w];
      const __mmask16 m0 = static_cast<__mmask16>(word & 0xFFFFu), m1 = static_cast<__mmask16>(word >> 16);
      const int c0 = __builtin_popcount(word & 0xFFFFu), c1 = __builtin_popcount(word >> 16);
      const __m512 e0 = expand_kept<VD>(m0, v, c0);
      const __m512 e1 = expand_kept<VD>(m1, v + c0, c1);
      v += c0 + c1;
      acc0 = _mm512_fmadd_ps(e0, _mm512_loadu_ps(x + 32 * w), acc0);
      acc1 = _mm512_fmadd_ps(e1, _mm512_loadu_ps(x + 32 * w + 16), acc1);
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
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    switch (a.io.out_dtype) {
      case DType::f32: {
        if (a.io.bias) s += static_cast<const float*>(a.io.bias)[n];
        static_cast<float*>(a.io.y)[n] = s;
        break;
      }
      case DType::bf16: {
        if (a.io.bias) s += bf16_to_f32(static_cast<const uint16_t*>(a.io.bias)[n]);
        static_cast<uint16_t*>(a.io.y)[n] = f32_to_bf16(s);
        break;
      }
      case DType::f16: {
        if (a.io.bias) s += f16_to_f32(static_cast<const uint16_t*>(a.io.bias)[n]);
        static_cast<uint16_t*>(a.io.y)[n] = f32_to_f16(s);
        break;
      }
    }
  }
}
}  // namespace

void bitmap_m1(const BitmapArgs& a, int64_t r0, int64_t r1) {
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
