// Body of the CSR x dense core. Included once per instruction set by csr_spmm_<isa>.cpp,
// which defines SK_ISA_NS (the namespace) and, for AVX2, SK_HAVE_AVX2 before including it.
#ifndef SK_ISA_NS
#error "define SK_ISA_NS before including csr_spmm_impl.h"
#endif

namespace sparsekit {
namespace core {
namespace SK_ISA_NS {
namespace {

#include "tile_common_impl.h"

// One row of W against a tile of 8 * NV activation rows, accumulated in registers.
// U independent accumulator sets hide the latency of the FMA chain (one kept value
// after another would otherwise wait on the previous FMA).
template <DType VD, int NV>
inline void row_tile(const CsrSpmmArgs& a, int64_t n, int64_t m0, float* __restrict out) {
  using V = typename Elem<VD>::storage;
  constexpr int R = 8 * NV / kLanes;  // registers per accumulator set
  constexpr int U = R >= 6 ? 1 : (R >= 3 ? 2 : 4);
  const V* __restrict vals = static_cast<const V*>(a.values);
  const int32_t* __restrict col = a.col;
  const float* __restrict xt = a.xt + m0;
  const int64_t ld = a.ldxt;
  vf acc[U][R];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < R; ++i) acc[u][i] = vf{};
  int64_t j = a.crow[n];
  const int64_t end = a.crow[n + 1];
  for (; j + U <= end; j += U) {
    for (int u = 0; u < U; ++u) {
      const float v = Elem<VD>::load(vals, j + u);
      const float* __restrict xr = xt + static_cast<int64_t>(col[j + u]) * ld;
      for (int i = 0; i < R; ++i) acc[u][i] += v * loadv(xr + kLanes * i);
    }
  }
  for (; j < end; ++j) {
    const float v = Elem<VD>::load(vals, j);
    const float* __restrict xr = xt + static_cast<int64_t>(col[j]) * ld;
    for (int i = 0; i < R; ++i) acc[0][i] += v * loadv(xr + kLanes * i);
  }
  for (int u = 1; u < U; ++u)
    for (int i = 0; i < R; ++i) acc[0][i] += acc[u][i];
  std::memcpy(out, acc[0], sizeof acc[0]);
}

// M == 1: a dot product of the kept values with gathered activations.
template <DType VD>
inline float row_dot(const CsrSpmmArgs& a, int64_t n) {
  using V = typename Elem<VD>::storage;
  const V* vals = static_cast<const V*>(a.values);
  const float* x = a.xt;
  const int64_t ld = a.ldxt;
  int64_t j = a.crow[n];
  const int64_t end = a.crow[n + 1];
#ifdef SK_HAVE_AVX2
  if (ld == 1 && end - j >= 8) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; j + 16 <= end; j += 16) {
      const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.col + j));
      const __m256i i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.col + j + 8));
      __m256 v0, v1;
      if constexpr (VD == DType::f32) {
        v0 = _mm256_loadu_ps(reinterpret_cast<const float*>(vals) + j);
        v1 = _mm256_loadu_ps(reinterpret_cast<const float*>(vals) + j + 8);
      } else if constexpr (VD == DType::bf16) {
        const __m128i h0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vals + j));
        const __m128i h1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vals + j + 8));
        v0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h0), 16));
        v1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h1), 16));
      } else {
        v0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vals + j)));
        v1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vals + j + 8)));
      }
      acc0 = _mm256_fmadd_ps(v0, _mm256_i32gather_ps(x, i0, 4), acc0);
      acc1 = _mm256_fmadd_ps(v1, _mm256_i32gather_ps(x, i1, 4), acc1);
    }
    acc0 = _mm256_add_ps(acc0, acc1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float sum = _mm_cvtss_f32(s);
    for (; j < end; ++j) sum += Elem<VD>::load(vals, j) * x[a.col[j]];
    return sum;
  }
#endif
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  for (; j + 4 <= end; j += 4) {
    s0 += Elem<VD>::load(vals, j + 0) * x[static_cast<int64_t>(a.col[j + 0]) * ld];
    s1 += Elem<VD>::load(vals, j + 1) * x[static_cast<int64_t>(a.col[j + 1]) * ld];
    s2 += Elem<VD>::load(vals, j + 2) * x[static_cast<int64_t>(a.col[j + 2]) * ld];
    s3 += Elem<VD>::load(vals, j + 3) * x[static_cast<int64_t>(a.col[j + 3]) * ld];
  }
  for (; j < end; ++j) s0 += Elem<VD>::load(vals, j) * x[static_cast<int64_t>(a.col[j]) * ld];
  return (s0 + s1) + (s2 + s3);
}

template <DType OD>
inline void store_tile(const CsrSpmmArgs& a, int64_t n, int64_t m0, int mt, const float* acc) {
  store_column<OD>(a.y, a.ldy, a.bias, n, m0, mt, acc);
}

template <DType VD, DType OD, int NV>
void tile_rows(const CsrSpmmArgs& a, int64_t r0, int64_t r1, int64_t m0) {
  alignas(64) float acc[8 * NV];
  const int mt = static_cast<int>(a.M - m0 < 8 * NV ? a.M - m0 : 8 * NV);
  for (int64_t n = r0; n < r1; ++n) {
    row_tile<VD, NV>(a, n, m0, acc);
    store_tile<OD>(a, n, m0, mt, acc);
  }
}

template <DType VD, DType OD>
void run(const CsrSpmmArgs& a, int64_t r0, int64_t r1) {
  if (a.M == 1) {
    for (int64_t n = r0; n < r1; ++n) {
      const float acc = row_dot<VD>(a, n);
      store_tile<OD>(a, n, 0, 1, &acc);
    }
    return;
  }
  // Tiles of activation rows, widest first. A tile's slice of xt (K x 8 NV floats) stays in
  // cache while every row of this thread's range streams past it once. The last tile may
  // be partial: it reads xt's padding (ldxt >= round_up(M, 8)) and stores only M's rows.
  for (int64_t m0 = 0; m0 < a.M;) {
    const int64_t padded = (a.M - m0 + 7) / 8 * 8;  // never read past round_up(M, 8)
    if (padded >= 32) {
      tile_rows<VD, OD, 4>(a, r0, r1, m0);
      m0 += 32;
    } else if (padded == 24) {
      tile_rows<VD, OD, 3>(a, r0, r1, m0);
      m0 += 24;
    } else if (padded == 16) {
      tile_rows<VD, OD, 2>(a, r0, r1, m0);
      m0 += 16;
    } else {
      tile_rows<VD, OD, 1>(a, r0, r1, m0);
      m0 += 8;
    }
  }
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

void csr_spmm_rows(const CsrSpmmArgs& a, int64_t row_begin, int64_t row_end) {
  if (a.M <= 0 || row_begin >= row_end) return;
  switch (a.value_dtype) {
    case DType::f32: run_out<DType::f32>(a, row_begin, row_end); break;
    case DType::bf16: run_out<DType::bf16>(a, row_begin, row_end); break;
    case DType::f16: run_out<DType::f16>(a, row_begin, row_end); break;
  }
}

}  // namespace SK_ISA_NS
}  // namespace core
}  // namespace sparsekit
