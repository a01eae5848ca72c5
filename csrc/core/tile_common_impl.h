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
