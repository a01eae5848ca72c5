// Bodies of the BSR, bitmap and 2:4 cores. Included once per instruction set by
// spmm_formats_<isa>.cpp, which defines SK_ISA_NS (and SK_VEC_FLOATS) first.
#ifndef SK_ISA_NS
#error "define SK_ISA_NS before including spmm_formats_impl.h"
#endif

namespace sparsekit {
namespace core {
namespace SK_ISA_NS {
namespace {

#include "tile_common_impl.h"

// The tiles of activation rows: 32, 24, 16 or 8 wide, never reading past round_up(M, 8).
template <class Body>
inline void for_each_m_tile(int64_t M, Body&& body) {
  for (int64_t m0 = 0; m0 < M;) {
    const int64_t padded = (M - m0 + 7) / 8 * 8;
    const int nv = padded >= 32 ? 4 : static_cast<int>(padded / 8);
    body(m0, nv);
    m0 += 8 * nv;
  }
}

template <DType OD>
inline void store_io(const DenseIo& io, int64_t n, int64_t m0, int mt, const float* acc) {
  store_column<OD>(io.y, io.ldy, io.bias, n, m0, mt, acc);
}

// Two accumulator sets (a, b) hide the FMA latency; R registers each cover the tile.
template <int NV>
struct Acc {
  static constexpr int R = 8 * NV / kLanes;
  vf a[R], b[R];
  Acc() {
    for (int i = 0; i < R; ++i) a[i] = b[i] = vf{};
  }
  inline void add_a(float v, const float* xr) {
    for (int i = 0; i < R; ++i) a[i] += v * loadv(xr + kLanes * i);
  }
  inline void add_b(float v, const float* xr) {
    for (int i = 0; i < R; ++i) b[i] += v * loadv(xr + kLanes * i);
  }
  inline void out(float* o) {
    for (int i = 0; i < R; ++i) a[i] += b[i];
    std::memcpy(o, a, sizeof a);
  }
};

// ------------------------------------------------------------------------------------ BSR
template <DType VD, DType OD, int NV>
void bsr_tile(const BsrArgs& a, int64_t br0, int64_t br1, int64_t m0) {
  using V = typename Elem<VD>::storage;
  const V* vals = static_cast<const V*>(a.values);
  const DenseIo& io = a.io;
  const int mt = static_cast<int>(io.M - m0 < 8 * NV ? io.M - m0 : 8 * NV);
  ColumnRuns<OD, 8 * NV> runs(io.y, io.ldy, io.bias, m0, mt);
  for (int64_t br = br0; br < br1; ++br) {
    for (int64_t r = 0; r < a.R; ++r) {
      Acc<NV> acc;
      for (int64_t j = a.crow[br]; j < a.crow[br + 1]; ++j) {
        const V* v = vals + (j * a.R + r) * a.C;
        const float* xb = io.xt + (static_cast<int64_t>(a.col[j]) * a.C) * io.ldxt + m0;
        int64_t c = 0;
        for (; c + 2 <= a.C; c += 2) {
          acc.add_a(Elem<VD>::load(v, c), xb + c * io.ldxt);
          acc.add_b(Elem<VD>::load(v, c + 1), xb + (c + 1) * io.ldxt);
        }
        if (c < a.C) acc.add_a(Elem<VD>::load(v, c), xb + c * io.ldxt);
      }
      acc.out(runs.slot(br * a.R + r));
    }
  }
}

template <DType VD, DType OD>
void bsr_m1(const BsrArgs& a, int64_t br0, int64_t br1) {
  using V = typename Elem<VD>::storage;
  const V* vals = static_cast<const V*>(a.values);
  const float* x = a.io.xt;
  for (int64_t br = br0; br < br1; ++br) {
    for (int64_t r = 0; r < a.R; ++r) {
      vf s0{}, s1{};
      float tail = 0.f;
      for (int64_t j = a.crow[br]; j < a.crow[br + 1]; ++j) {
        const V* v = vals + (j * a.R + r) * a.C;
        const float* xb = x + static_cast<int64_t>(a.col[j]) * a.C;
        int64_t c = 0;
        for (; c + 2 * kLanes <= a.C; c += 2 * kLanes) {
          vf w0, w1;
          for (int i = 0; i < kLanes; ++i) {
            w0[i] = Elem<VD>::load(v, c + i);
            w1[i] = Elem<VD>::load(v, c + kLanes + i);
          }
          s0 += w0 * loadv(xb + c);
          s1 += w1 * loadv(xb + c + kLanes);
        }
        for (; c < a.C; ++c) tail += Elem<VD>::load(v, c) * xb[c];
      }
      const float acc = hsum(s0 + s1) + tail;
      store_io<OD>(a.io, br * a.R + r, 0, 1, &acc);
    }
  }
}

// ------------------------------------------------------------------------------------ bitmap
// A row's bitmap is first decoded, branch-free, into its kept columns (a byte at a time: eight
// positions from a table, advance by the byte's popcount), then runs as a CSR row. Bit-by-bit
// loops mispredict on every word.
inline int64_t decode_row(const uint32_t* bm, int64_t words, int32_t* cols) {
  int64_t cnt = 0;
  for (int64_t w = 0; w < words; ++w) {
    const uint32_t word = bm[w];
    for (int byte = 0; byte < 4; ++byte) {
      const unsigned b = (word >> (8 * byte)) & 0xFFu;
      const int32_t base = static_cast<int32_t>(w * 32 + 8 * byte);
      const uint8_t* pos = kBytePositions[b];
      for (int i = 0; i < 8; ++i) cols[cnt + i] = base + pos[i];  // slack of 8 past the end
      cnt += __builtin_popcount(b);
    }
  }
  return cnt;
}

template <DType VD, DType OD, int NV>
void bitmap_tile(const BitmapArgs& a, int64_t r0, int64_t r1, int64_t m0, int32_t* cols) {
  using V = typename Elem<VD>::storage;
  const V* vals = static_cast<const V*>(a.values);
  const DenseIo& io = a.io;
  const int64_t words = (io.K + 31) / 32;
  const int mt = static_cast<int>(io.M - m0 < 8 * NV ? io.M - m0 : 8 * NV);
  ColumnRuns<OD, 8 * NV> runs(io.y, io.ldy, io.bias, m0, mt);
  for (int64_t n = r0; n < r1; ++n) {
    const int64_t cnt = decode_row(a.bitmap + n * words, words, cols);
    const V* v = vals + (words ? a.word_offsets[n * words] : 0);
    Acc<NV> acc;
    int64_t j = 0;
    for (; j + 2 <= cnt; j += 2) {
      acc.add_a(Elem<VD>::load(v, j), io.xt + static_cast<int64_t>(cols[j]) * io.ldxt + m0);
      acc.add_b(Elem<VD>::load(v, j + 1), io.xt + static_cast<int64_t>(cols[j + 1]) * io.ldxt + m0);
    }
    if (j < cnt) acc.add_a(Elem<VD>::load(v, j), io.xt + static_cast<int64_t>(cols[j]) * io.ldxt + m0);
    acc.out(runs.slot(n));
  }
}

#ifdef SK_HAVE_AVX2
// AVX2 at M == 1: no decode into a column list and no gather. Each byte b of a bitmap word expands the
// next popcount(b) kept values into its eight columns with one permute (vpermps), zeroes the pruned
// columns with one blend and does one FMA with x: the same few instructions per 8 columns whatever the
// bits (the AVX-512 build does this per 16 columns with vexpandps, spmm_formats_avx512.cpp). A pruned
// column multiplies x by 0, as the dense weight does.
// kExpandIdx[b][i]: the rank of column i among b's set bits (vpermps reads the low 3 bits), with the
// sign bit set where bit i is set (vblendvps reads only the sign bit): one table serves both.
struct ExpandIdx {
  alignas(32) int32_t t[256][8];
  constexpr ExpandIdx() : t() {
    for (int b = 0; b < 256; ++b) {
      int rank = 0;
      for (int i = 0; i < 8; ++i) {
        const int kept = (b >> i) & 1;
        t[b][i] = static_cast<int32_t>(static_cast<uint32_t>(rank) | (kept ? 0x80000000u : 0u));
        rank += kept;
      }
    }
  }
};
constexpr ExpandIdx kExpandIdx{};

// The kept values of byte b (popcount(b) of them, from v) in its 8 columns, 0 in the others. Eight values
// are loaded from v; kChecked: within 8 of the end of `values` (vend) they are copied first, never read
// past it (only the last rows of the weight need that).
template <DType VD, bool kChecked>
inline __m256 expand_byte(unsigned b, const typename Elem<VD>::storage* v, const typename Elem<VD>::storage* vend) {
  using V = typename Elem<VD>::storage;
  __m256 raw;
  if (!kChecked || vend - v >= 8) {
    raw = load8f<VD>(v);
  } else {
    V tmp[8] = {};
    if (vend > v) std::memcpy(tmp, v, static_cast<size_t>(vend - v) * sizeof(V));
    raw = load8f<VD>(tmp);
  }
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpandIdx.t[b]));
  return _mm256_blendv_ps(_mm256_setzero_ps(), _mm256_permutevar8x32_ps(raw, idx), _mm256_castsi256_ps(idx));
}

// One row's dot product with x: `full` whole words, then the partial last one (x read only where columns
// exist). v: the row's first kept value.
template <DType VD, bool kChecked>
inline float bitmap_row_m1(const uint32_t* bm, int64_t full, int64_t words, const typename Elem<VD>::storage* v,
                           const typename Elem<VD>::storage* vend, const float* x) {
  using V = typename Elem<VD>::storage;
  // one accumulator per byte of the word: a chain of one FMA per word, not the FMA latency per byte
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  for (int64_t w = 0; w < full; ++w) {
    const uint32_t word = bm[w];
    const float* xw = x + 32 * w;
    const unsigned b0 = word & 0xFFu, b1 = (word >> 8) & 0xFFu, b2 = (word >> 16) & 0xFFu, b3 = word >> 24;
    const V* v1 = v + __builtin_popcount(b0);
    const V* v2 = v1 + __builtin_popcount(b1);
    const V* v3 = v2 + __builtin_popcount(b2);
    acc0 = _mm256_fmadd_ps(expand_byte<VD, kChecked>(b0, v, vend), _mm256_loadu_ps(xw), acc0);
    acc1 = _mm256_fmadd_ps(expand_byte<VD, kChecked>(b1, v1, vend), _mm256_loadu_ps(xw + 8), acc1);
    acc2 = _mm256_fmadd_ps(expand_byte<VD, kChecked>(b2, v2, vend), _mm256_loadu_ps(xw + 16), acc2);
    acc3 = _mm256_fmadd_ps(expand_byte<VD, kChecked>(b3, v3, vend), _mm256_loadu_ps(xw + 24), acc3);
    v = v3 + __builtin_popcount(b3);
  }
  float s = hsum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  if (full < words) {
    uint32_t word = bm[full];
    for (int64_t c = 32 * full; word; word &= word - 1) s += Elem<VD>::load(v++, 0) * x[c + __builtin_ctz(word)];
  }
  return s;
}

template <DType VD, DType OD>
void bitmap_m1(const BitmapArgs& a, int64_t r0, int64_t r1, int32_t*) {
  using V = typename Elem<VD>::storage;
  const V* vals = static_cast<const V*>(a.values);
  const V* vend = vals + a.nnz;
  const int64_t K = a.io.K, N = a.io.N, words = (K + 31) / 32, full = K / 32;
  for (int64_t n = r0; n < r1; ++n) {
    const uint32_t* bm = a.bitmap + n * words;
    const int64_t start = words ? a.word_offsets[n * words] : 0;
    // the row's loads reach at most 8 values past its last kept one: unchecked unless that passes the end
    const int64_t end = n + 1 < N && words ? a.word_offsets[(n + 1) * words] : a.nnz;
    const float s = end + 8 <= a.nnz ? bitmap_row_m1<VD, false>(bm, full, words, vals + start, vend, a.io.xt)
                                     : bitmap_row_m1<VD, true>(bm, full, words, vals + start, vend, a.io.xt);
    store_io<OD>(a.io, n, 0, 1, &s);
  }
}
#else
template <DType VD, DType OD>
void bitmap_m1(const BitmapArgs& a, int64_t r0, int64_t r1, int32_t* cols) {
  using V = typename Elem<VD>::storage;
  const V* vals = static_cast<const V*>(a.values);
  const int64_t words = (a.io.K + 31) / 32;
  for (int64_t n = r0; n < r1; ++n) {
    const int64_t cnt = decode_row(a.bitmap + n * words, words, cols);
    const float acc = gather_dot<VD>(vals + (words ? a.word_offsets[n * words] : 0), cols, cnt, a.io.xt);
    store_io<OD>(a.io, n, 0, 1, &acc);
  }
}
#endif

// ------------------------------------------------------------------------------------ 2:4
template <DType VD, DType OD, int NV>
void sparse24_tile(const Sparse24Args& a, int64_t r0, int64_t r1, int64_t m0) {
  using V = typename Elem<VD>::storage;
  const DenseIo& io = a.io;
  const int64_t groups = io.K / 4, mbytes = (io.K + 7) / 8;
  const int mt = static_cast<int>(io.M - m0 < 8 * NV ? io.M - m0 : 8 * NV);
  ColumnRuns<OD, 8 * NV> runs(io.y, io.ldy, io.bias, m0, mt);
  for (int64_t n = r0; n < r1; ++n) {
    const V* v = static_cast<const V*>(a.values) + n * (io.K / 2);
    const uint8_t* meta = a.meta + n * mbytes;
    Acc<NV> acc;
    for (int64_t g = 0; g < groups; ++g) {
      const unsigned nib = (meta[g >> 1] >> ((g & 1) * 4)) & 0xFu;
      const float* xg = io.xt + (4 * g) * io.ldxt + m0;
      acc.add_a(Elem<VD>::load(v, 2 * g), xg + (nib & 3u) * io.ldxt);
      acc.add_b(Elem<VD>::load(v, 2 * g + 1), xg + (nib >> 2) * io.ldxt);
    }
    acc.out(runs.slot(n));
  }
}

template <DType VD, DType OD>
void sparse24_m1(const Sparse24Args& a, int64_t r0, int64_t r1) {
  using V = typename Elem<VD>::storage;
  const float* x = a.io.xt;
  const int64_t K = a.io.K, groups = K / 4, mbytes = (K + 7) / 8;
  for (int64_t n = r0; n < r1; ++n) {
    const V* v = static_cast<const V*>(a.values) + n * (K / 2);
    const uint8_t* meta = a.meta + n * mbytes;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    int64_t g = 0;
#ifdef SK_HAVE_AVX2
    // Four groups (16 columns, 8 kept values) at a time: two loads of x, a permutation per meta
    // byte picks the kept columns, one FMA with the eight values.
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; g + 8 <= groups; g += 8) {
      for (int h = 0; h < 2; ++h) {
        const int64_t gg = g + 4 * h;
        const float* xg = x + 4 * gg;
        const __m256i i0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPerm24[meta[gg >> 1]]));
        const __m256i i1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPerm24[meta[(gg >> 1) + 1]]));
        const __m256 xs = _mm256_blend_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(xg), i0),
                                          _mm256_permutevar8x32_ps(_mm256_loadu_ps(xg + 8), i1), 0xF0);
        __m256 w;
        if constexpr (VD == DType::f32) {
          w = _mm256_loadu_ps(reinterpret_cast<const float*>(v) + 2 * gg);
        } else if constexpr (VD == DType::bf16) {
          const __m128i hv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 2 * gg));
          w = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(hv), 16));
        } else {
          w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 2 * gg)));
        }
        if (h == 0) acc0 = _mm256_fmadd_ps(w, xs, acc0);
        else acc1 = _mm256_fmadd_ps(w, xs, acc1);
      }
    }
    {
      vf t;
      std::memcpy(&t, &acc0, sizeof t);
      vf u;
      std::memcpy(&u, &acc1, sizeof u);
      s0 = hsum(t + u);
    }
#endif
    for (; g + 2 <= groups; g += 2) {  // one meta byte: two groups
      const unsigned byte = meta[g >> 1];
      const float* xg = x + 4 * g;
      s0 += Elem<VD>::load(v, 2 * g) * xg[byte & 3u];
      s1 += Elem<VD>::load(v, 2 * g + 1) * xg[(byte >> 2) & 3u];
      s2 += Elem<VD>::load(v, 2 * g + 2) * xg[4 + ((byte >> 4) & 3u)];
      s3 += Elem<VD>::load(v, 2 * g + 3) * xg[4 + (byte >> 6)];
    }
    if (g < groups) {
      const unsigned nib = meta[g >> 1] & 0xFu;
      s0 += Elem<VD>::load(v, 2 * g) * x[4 * g + (nib & 3u)];
      s1 += Elem<VD>::load(v, 2 * g + 1) * x[4 * g + (nib >> 2)];
    }
    const float acc = (s0 + s1) + (s2 + s3);
    store_io<OD>(a.io, n, 0, 1, &acc);
  }
}

// Dense rows of a 2:4 weight, bit for bit (T: the values' storage, 16 or 32 bits).
template <class T>
void sparse24_decompress(const T* values, const uint8_t* meta, int64_t K, int64_t r0, int64_t r1, T* out) {
  const int64_t groups = K / 4, mbytes = (K + 7) / 8;
  for (int64_t n = r0; n < r1; ++n) {
    const T* v = values + n * (K / 2);
    const uint8_t* mt = meta + n * mbytes;
    T* o = out + (n - r0) * K;
    int64_t p = 0;
#ifdef SK_HAVE_AVX2
    // One meta byte (two groups: four values, eight columns) per shuffle.
    const int64_t pairs = groups / 2;
    if constexpr (sizeof(T) == 2) {
      for (; p < pairs; ++p) {
        const __m128i in = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(v + 4 * p));
        const __m128i sh = _mm_load_si128(reinterpret_cast<const __m128i*>(kExpand24x16[mt[p]]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 8 * p), _mm_shuffle_epi8(in, sh));
      }
    } else {
      const __m256i none = _mm256_set1_epi32(-1);
      for (; p < pairs; ++p) {
        const __m256i in = _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 4 * p)));
        const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand24x32[mt[p]]));
        const __m256i spread = _mm256_permutevar8x32_epi32(in, idx);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8 * p),
                            _mm256_and_si256(spread, _mm256_cmpgt_epi32(idx, none)));
      }
    }
#endif
    for (int64_t g = 2 * p; g < groups; ++g) {
      const unsigned nib = (mt[g >> 1] >> ((g & 1) * 4)) & 0xFu;
      T* og = o + 4 * g;
      og[0] = og[1] = og[2] = og[3] = T{0};
      og[nib & 3u] = v[2 * g];
      og[nib >> 2] = v[2 * g + 1];
    }
  }
}

// ------------------------------------------------------------------------------------ dispatch
#define SK_DISPATCH_VD_OD(vd, od, CALL)                                      \
  switch (vd) {                                                               \
    case DType::f32: SK_DISPATCH_OD(DType::f32, od, CALL); break;             \
    case DType::bf16: SK_DISPATCH_OD(DType::bf16, od, CALL); break;           \
    case DType::f16: SK_DISPATCH_OD(DType::f16, od, CALL); break;             \
  }
#define SK_DISPATCH_OD(VDc, od, CALL)                      \
  switch (od) {                                            \
    case DType::f32: CALL(VDc, DType::f32); break;         \
    case DType::bf16: CALL(VDc, DType::bf16); break;       \
    case DType::f16: CALL(VDc, DType::f16); break;         \
  }

template <DType VD, DType OD>
void bsr_run(const BsrArgs& a, int64_t r0, int64_t r1) {
  if (a.io.M == 1) return bsr_m1<VD, OD>(a, r0, r1);
  for_each_m_tile(a.io.M, [&](int64_t m0, int nv) {
    switch (nv) {
      case 4: bsr_tile<VD, OD, 4>(a, r0, r1, m0); break;
      case 3: bsr_tile<VD, OD, 3>(a, r0, r1, m0); break;
      case 2: bsr_tile<VD, OD, 2>(a, r0, r1, m0); break;
      default: bsr_tile<VD, OD, 1>(a, r0, r1, m0); break;
    }
  });
}

template <DType VD, DType OD>
void bitmap_run(const BitmapArgs& a, int64_t r0, int64_t r1) {
#ifdef SK_HAVE_AVX2
  if (a.io.M == 1) return bitmap_m1<VD, OD>(a, r0, r1, nullptr);  // no column list
#endif
  std::vector<int32_t> buf(static_cast<size_t>((a.io.K + 31) / 32 * 32 + 8));
  int32_t* cols = buf.data();
  if (a.io.M == 1) return bitmap_m1<VD, OD>(a, r0, r1, cols);
  for_each_m_tile(a.io.M, [&](int64_t m0, int nv) {
    switch (nv) {
      case 4: bitmap_tile<VD, OD, 4>(a, r0, r1, m0, cols); break;
      case 3: bitmap_tile<VD, OD, 3>(a, r0, r1, m0, cols); break;
      case 2: bitmap_tile<VD, OD, 2>(a, r0, r1, m0, cols); break;
      default: bitmap_tile<VD, OD, 1>(a, r0, r1, m0, cols); break;
    }
  });
}

template <DType VD, DType OD>
void sparse24_run(const Sparse24Args& a, int64_t r0, int64_t r1) {
  if (a.io.M == 1) return sparse24_m1<VD, OD>(a, r0, r1);
  for_each_m_tile(a.io.M, [&](int64_t m0, int nv) {
    switch (nv) {
      case 4: sparse24_tile<VD, OD, 4>(a, r0, r1, m0); break;
      case 3: sparse24_tile<VD, OD, 3>(a, r0, r1, m0); break;
      case 2: sparse24_tile<VD, OD, 2>(a, r0, r1, m0); break;
      default: sparse24_tile<VD, OD, 1>(a, r0, r1, m0); break;
    }
  });
}

}  // namespace

#define SK_CALL_BSR(VDc, ODc) bsr_run<VDc, ODc>(a, r0, r1)
#define SK_CALL_BITMAP(VDc, ODc) bitmap_run<VDc, ODc>(a, r0, r1)
#define SK_CALL_24(VDc, ODc) sparse24_run<VDc, ODc>(a, r0, r1)

void bsr_spmm_rows(const BsrArgs& a, int64_t r0, int64_t r1) {
  if (a.io.M <= 0 || r0 >= r1) return;
  SK_DISPATCH_VD_OD(a.value_dtype, a.io.out_dtype, SK_CALL_BSR)
}
void bitmap_spmm_rows(const BitmapArgs& a, int64_t r0, int64_t r1) {
  if (a.io.M <= 0 || r0 >= r1) return;
  SK_DISPATCH_VD_OD(a.value_dtype, a.io.out_dtype, SK_CALL_BITMAP)
}
void sparse24_spmm_rows(const Sparse24Args& a, int64_t r0, int64_t r1) {
  if (a.io.M <= 0 || r0 >= r1) return;
  SK_DISPATCH_VD_OD(a.value_dtype, a.io.out_dtype, SK_CALL_24)
}
void sparse24_decompress_rows(const void* values, const uint8_t* meta, DType vd, int64_t K, int64_t r0, int64_t r1,
                              void* out) {
  if (vd == DType::f32)
    sparse24_decompress(static_cast<const uint32_t*>(values), meta, K, r0, r1, static_cast<uint32_t*>(out));
  else
    sparse24_decompress(static_cast<const uint16_t*>(values), meta, K, r0, r1, static_cast<uint16_t*>(out));
}

#undef SK_CALL_BSR
#undef SK_CALL_BITMAP
#undef SK_CALL_24
#undef SK_DISPATCH_VD_OD
#undef SK_DISPATCH_OD

}  // namespace SK_ISA_NS
}  // namespace core
}  // namespace sparsekit
