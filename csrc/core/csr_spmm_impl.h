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
  // the x rows of the kept weights kPrefetch ahead, while this one's FMAs run (within the row: col is
  // read only inside [crow[n], crow[n + 1]))
  constexpr int64_t kPrefetch = 8;
  for (; j + U <= end; j += U) {
    for (int u = 0; u < U; ++u) {
      if (j + u + kPrefetch < end) {
        const float* p = xt + static_cast<int64_t>(col[j + u + kPrefetch]) * ld;
        __builtin_prefetch(p);
        if (8 * NV > 16) __builtin_prefetch(p + 16);  // the tile's second cache line
      }
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
  const int64_t j = a.crow[n], end = a.crow[n + 1];
  if (a.ldxt == 1) return gather_dot<VD>(vals + j, a.col + j, end - j, a.xt);
  float s = 0.f;
  for (int64_t i = j; i < end; ++i) s += Elem<VD>::load(vals, i) * a.xt[static_cast<int64_t>(a.col[i]) * a.ldxt];
  return s;
}

template <DType OD>
inline void store_tile(const CsrSpmmArgs& a, int64_t n, int64_t m0, int mt, const float* acc) {
  store_column<OD>(a.y, a.ldy, a.bias, n, m0, mt, acc);
}

template <DType VD, DType OD, int NV>
void tile_rows(const CsrSpmmArgs& a, int64_t r0, int64_t r1, int64_t m0) {
  const int mt = static_cast<int>(a.M - m0 < 8 * NV ? a.M - m0 : 8 * NV);
  ColumnRuns<OD, 8 * NV> runs(a.y, a.ldy, a.bias, m0, mt);
  for (int64_t n = r0; n < r1; ++n) row_tile<VD, NV>(a, n, m0, runs.slot(n));
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
