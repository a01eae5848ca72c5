// AVX-512 path for the bitmap core at M == 1 with float32 values: each 16-bit half of a bitmap
// word expands the next kept values into their columns in one instruction (vexpandps), so the
// work per 16 columns is constant and small and never branches on the bits.
#include <cstdint>
#include <cstring>

#include "spmm_formats.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c,popcnt")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive inside avx512fintrin.h

namespace sparsekit {
namespace core {
namespace avx512 {

void bitmap_m1_f32(const BitmapArgs& a, int64_t r0, int64_t r1) {
  const float* vals = static_cast<const float*>(a.values);
  const float* x = a.io.xt;
  const int64_t K = a.io.K, words = (K + 31) / 32, full = K / 32;
  for (int64_t n = r0; n < r1; ++n) {
    const uint32_t* bm = a.bitmap + n * words;
    const float* v = vals + (words ? a.word_offsets[n * words] : 0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t w = 0; w < full; ++w) {
      const uint32_t word = bm[w];
      const __mmask16 m0 = static_cast<__mmask16>(word & 0xFFFFu), m1 = static_cast<__mmask16>(word >> 16);
      const __m512 e0 = _mm512_maskz_expandloadu_ps(m0, v);
      v += __builtin_popcount(word & 0xFFFFu);
      const __m512 e1 = _mm512_maskz_expandloadu_ps(m1, v);
      v += __builtin_popcount(word >> 16);
      acc0 = _mm512_fmadd_ps(e0, _mm512_loadu_ps(x + 32 * w), acc0);
      acc1 = _mm512_fmadd_ps(e1, _mm512_loadu_ps(x + 32 * w + 16), acc1);
    }
    if (full < words) {  // the last, partial word: x is read only where columns exist
      const int64_t valid = K - 32 * full;
      const uint32_t word = bm[full];
      const __mmask16 m0 = static_cast<__mmask16>(word & 0xFFFFu), m1 = static_cast<__mmask16>(word >> 16);
      const __mmask16 x0 = static_cast<__mmask16>(valid >= 16 ? 0xFFFFu : (1u << valid) - 1u);
      const __mmask16 x1 = static_cast<__mmask16>(valid > 16 ? (1u << (valid - 16)) - 1u : 0u);
      const __m512 e0 = _mm512_maskz_expandloadu_ps(m0, v);
      v += __builtin_popcount(word & 0xFFFFu);
      const __m512 e1 = _mm512_maskz_expandloadu_ps(m1, v);
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

}  // namespace avx512
}  // namespace core
}  // namespace sparsekit
#pragma GCC pop_options
#else
namespace sparsekit {
namespace core {
namespace avx512 {
void bitmap_m1_f32(const BitmapArgs& a, int64_t r0, int64_t r1) { generic::bitmap_spmm_rows(a, r0, r1); }
}  // namespace avx512
}  // namespace core
}  // namespace sparsekit
#endif
