// SIMD helpers shared by the kernel-core bodies. Included INSIDE an ISA namespace (and an
// anonymous namespace) by csr_spmm_impl.h and spmm_formats_impl.h, once per instruction set,
// so that each build gets its own copies: no include guard on purpose.

// SK_VEC_FLOATS lanes (4 = SSE in the generic build, 8 = AVX in the AVX2 build).
#ifndef SK_VEC_FLOATS
#define SK_VEC_FLOATS 4
#endif
constexpr int kLanes = SK_VEC_FLOATS;
typedef float vf __attribute__((vector_size(4 * SK_VEC_FLOATS)));

inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// Writes acc[0..mt) (+ bias[n]) to y[(m0 + mm) * ldy + n] in the output type.
template <DType OD>
inline void store_column(void* y_, int64_t ldy, const void* bias, int64_t n, int64_t m0, int mt, const float* acc) {
  using O = typename Elem<OD>::storage;
  O* y = static_cast<O*>(y_);
  const float b = bias ? Elem<OD>::load(static_cast<const O*>(bias), n) : 0.f;
  for (int mm = 0; mm < mt; ++mm) Elem<OD>::store(y, (m0 + mm) * ldy + n, acc[mm] + b);
}

// The sums of `cols` consecutive output columns n0 .. n0 + cols (column i's for activation rows m0 .. m0 + mt at
// sums + i * stride) (+ bias) written row by row of y: one run of `cols` values per activation row, the same
// values as store_column's. Stored a column at a time, the mt values of a column lie ldy apart; with ldy a
// multiple of 1024 floats (N = 4096) they all fall into one set of L1 and of L2 and evict each other.
template <DType OD>
inline void store_columns(void* y_, int64_t ldy, const void* bias, int64_t n0, int cols, int64_t m0, int mt,
                          const float* sums, int64_t stride) {
  using O = typename Elem<OD>::storage;
  O* y = static_cast<O*>(y_) + n0;
  const O* b = bias ? static_cast<const O*>(bias) + n0 : nullptr;
  for (int mm = 0; mm < mt; ++mm) {
    O* yr = y + (m0 + mm) * ldy;
    const float* s = sums + mm;
    if (b) {
      for (int i = 0; i < cols; ++i) Elem<OD>::store(yr, i, s[i * stride] + Elem<OD>::load(b, i));
    } else {
      for (int i = 0; i < cols; ++i) Elem<OD>::store(yr, i, s[i * stride] + 0.f);
    }
  }
}

// Collects the sums of consecutive output columns (kW floats each, the first mt of them activation rows m0 ..)
// and stores them 16 columns at a time with store_columns; the rest when it goes out of scope.
template <DType OD, int kW>
class ColumnRuns {
 public:
  ColumnRuns(void* y, int64_t ldy, const void* bias, int64_t m0, int mt) : y_(y), ldy_(ldy), bias_(bias), m0_(m0), mt_(mt) {}
  ColumnRuns(const ColumnRuns&) = delete;
  ColumnRuns& operator=(const ColumnRuns&) = delete;
  ~ColumnRuns() { flush(); }
  // Where column n's sums go; n follows the column before it.
  float* slot(int64_t n) {
    if (count_ == kCols) flush();
    if (count_ == 0) n0_ = n;
    return sums_[count_++];
  }
  void flush() {
    if (count_) store_columns<OD>(y_, ldy_, bias_, n0_, count_, m0_, mt_, sums_[0], kW);
    count_ = 0;
  }

 private:
  static constexpr int kCols = 16;
  alignas(64) float sums_[kCols][kW];
  void* y_;
  int64_t ldy_;
  const void* bias_;
  int64_t m0_;
  int mt_;
  int64_t n0_ = 0;
  int count_ = 0;
};

#ifdef SK_HAVE_AVX2
// Eight values at v as float32 (bf16: the high half of a float; f16: vcvtph2ps).
template <DType VD>
inline __m256 load8f(const typename Elem<VD>::storage* v) {
  if constexpr (VD == DType::f32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(v));
  } else if constexpr (VD == DType::bf16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
  }
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// sum_j vals[j] * x[cols[j]] for j < count (contiguous x: the M == 1 paths).
template <DType VD>
inline float gather_dot(const typename Elem<VD>::storage* vals, const int32_t* cols, int64_t count, const float* x) {
  int64_t j = 0;
#ifdef SK_HAVE_AVX2
  if (count >= 16) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; j + 16 <= count; j += 16) {
      const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols + j));
      const __m256i i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols + j + 8));
      const __m256 v0 = load8f<VD>(vals + j), v1 = load8f<VD>(vals + j + 8);
      acc0 = _mm256_fmadd_ps(v0, _mm256_i32gather_ps(x, i0, 4), acc0);
      acc1 = _mm256_fmadd_ps(v1, _mm256_i32gather_ps(x, i1, 4), acc1);
    }
    float sum = hsum8(_mm256_add_ps(acc0, acc1));
    for (; j < count; ++j) sum += Elem<VD>::load(vals, j) * x[cols[j]];
    return sum;
  }
#endif
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  for (; j + 4 <= count; j += 4) {
    s0 += Elem<VD>::load(vals, j + 0) * x[cols[j + 0]];
    s1 += Elem<VD>::load(vals, j + 1) * x[cols[j + 1]];
    s2 += Elem<VD>::load(vals, j + 2) * x[cols[j + 2]];
    s3 += Elem<VD>::load(vals, j + 3) * x[cols[j + 3]];
  }
  for (; j < count; ++j) s0 += Elem<VD>::load(vals, j) * x[cols[j]];
  return (s0 + s1) + (s2 + s3);
}
