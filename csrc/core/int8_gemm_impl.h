// Body of the int8 cores. Included once per instruction-set level by int8_gemm_<isa>.cpp, which
// includes every header first, then (for x86 levels) <immintrin.h> and the target pragma, and
// defines
//   SK_I8_NS     the namespace (i8_generic, i8_avx2, i8_avxvnni, i8_avx512)
//   SK_I8_LEVEL  0 generic C++, 1 AVX2 (+FMA, F16C), 2 AVX-VNNI (256-bit), 3 AVX-512 VNNI
// Level 2 only builds the int8 x int8 GEMMs (the other cores are the same as level 1's).
//
// GEMM structure (int8 x int8 and weight-only alike). Both operands are K-contiguous, so a
// micro-kernel computes an MR x NR block of dot products: per step of K it loads NR weight
// vectors and MR activation vectors and accumulates MR * NR vector partial sums, reduced
// horizontally at the end. The weight rows are walked in chunks of NC rows (NC * K bytes stay
// in L2); for each chunk every panel of MR activation rows (in L1) streams the chunk. The weight
// is read from memory exactly once, so small M runs at the memory bandwidth; large M re-reads
// the activations once per chunk, from cache. While a chunk computes, the next one is prefetched
// into L2 a few lines per micro-kernel step (NextChunk), so that its memory reads overlap this
// chunk's arithmetic. The int32 sums of a chunk land in a small buffer and the epilogue runs
// vectorised over it.
#ifndef SK_I8_NS
#error "define SK_I8_NS before including int8_gemm_impl.h"
#endif
#ifndef SK_I8_LEVEL
#error "define SK_I8_LEVEL before including int8_gemm_impl.h"
#endif

namespace sparsekit {
namespace core {
namespace SK_I8_NS {
namespace {

constexpr int kLevel = SK_I8_LEVEL;
// Levels 2 and 3 use vpdpbusd (u8 x s8): the activation byte a is fed as a + 128 (a ^ 0x80),
// so the raw sums hold sum (a + 128) b = acc + 128 * rowsum(b), corrected in the epilogue.
constexpr bool kOffset = kLevel >= 2;

// Largest K for which acc - zero_point * rowsum always fits in int32: |a - zp| <= 255, |b| <= 128.
constexpr int64_t kInt32SafeK = 65792;

// An empty asm that the compiler cannot see through: a multiply before it and an add after it
// cannot be contracted into an FMA (GCC contracts by default in C++), so the epilogue rounds
// exactly as the reference's separate multiplications and addition do.
template <typename T>
inline void opaque(T& v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#if SK_I8_LEVEL == 3
  __asm__("" : "+v"(v));
#else
  __asm__("" : "+x"(v));
#endif
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(v));
#else
  volatile T t = v;
  v = t;
#endif
}

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Rows of the weight per chunk: about 192 KiB of int8 weight, a multiple of 16, at most kNCMax.
constexpr int64_t kNCMax = 256;
inline int64_t chunk_rows(int64_t K, int64_t bytes_per = 1) {
  const int64_t budget = (int64_t(192) << 10) / max64(K * bytes_per, 1);
  return max64(16, min64(kNCMax, budget / 16 * 16));
}

// ------------------------------------------------------------------------------------------
// Output stores
template <DType OD>
inline void store1(void* y, int64_t i, float v) {
  Elem<OD>::store(static_cast<typename Elem<OD>::storage*>(y), i, v);
}

#if SK_I8_LEVEL >= 1
inline __m128i f32x8_to_bf16(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256 isnan = _mm256_cmp_ps(f, f, _CMP_UNORD_Q);
  r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(isnan));
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

template <DType OD>
inline void store8(void* y, int64_t i, __m256 f) {
  if constexpr (OD == DType::f32) {
    _mm256_storeu_ps(static_cast<float*>(y) + i, f);
  } else if constexpr (OD == DType::bf16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(y) + i), f32x8_to_bf16(f));
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(y) + i),
                     _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// Horizontal sums of up to 4 vectors of 8 int32 / float, stored to out[0..NR).
template <int NR>
inline void hsum_store(const __m256i* v, int32_t* out) {
  static_assert(NR >= 1 && NR <= 4, "NR");
  const __m256i z = _mm256_setzero_si256();
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], NR > 1 ? v[1] : z),
                                      _mm256_hadd_epi32(NR > 2 ? v[2] : z, NR > 3 ? v[3] : z));
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  if constexpr (NR == 4) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), s);
  } else {
    alignas(16) int32_t t[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(t), s);
    for (int j = 0; j < NR; ++j) out[j] = t[j];
  }
}
template <int NR>
inline void hsum_store(const __m256* v, float* out) {
  static_assert(NR >= 1 && NR <= 4, "NR");
  const __m256 z = _mm256_setzero_ps();
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], NR > 1 ? v[1] : z), _mm256_hadd_ps(NR > 2 ? v[2] : z, NR > 3 ? v[3] : z));
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  if constexpr (NR == 4) {
    _mm_storeu_ps(out, s);
  } else {
    alignas(16) float t[4];
    _mm_store_ps(t, s);
    for (int j = 0; j < NR; ++j) out[j] = t[j];
  }
}
#endif

// ==========================================================================================
// int8 x int8 -> int32
// ==========================================================================================

// What the chunk driver needs to know about one GEMM (dense, or 2:4 after decompression).
struct GemmView {
  int64_t M, K;
  const int8_t* a;
  int64_t lda;
  const Int8Epilogue* ep;
  bool need_rs;  // the epilogue needs the weight row sums (offset trick or zero point)
};

// ---- epilogue over the raw sums of one chunk: rows m0 .. m0 + mr, columns nc0 .. nc0 + nlen
using EpiFn = void (*)(const GemmView&, int64_t, int, int64_t, int64_t, const int32_t*, int64_t, const int32_t*,
                       const float*);

template <bool kRaw, DType OD, bool kBias, bool kZero>
void epilogue(const GemmView& g, int64_t m0, int mr, int64_t nc0, int64_t nlen, const int32_t* acc, int64_t ldacc,
              const int32_t* rs, const float* bias_f) {
  const Int8Epilogue& ep = *g.ep;
  // Past kInt32SafeK the zero-point correction may leave int32: do it in int64 as the reference.
  const bool wide = kZero && g.K > kInt32SafeK;
  for (int i = 0; i < mr; ++i) {
    const int64_t m = m0 + i;
    const int32_t* ar = acc + i * ldacc;
    const int32_t zp = kZero ? ep.x_zero[m] : 0;
    const float xs = kRaw ? 0.f : ep.x_scale[m];
    int64_t j = 0;
#if SK_I8_LEVEL >= 1
    if (!wide) {
      const __m256i zpv = _mm256_set1_epi32(zp);
      const __m256 xsv = _mm256_set1_ps(xs);
      for (; j + 8 <= nlen; j += 8) {
        __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar + j));
        if constexpr (kOffset || kZero) {
          const __m256i r = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rs + j));
          if constexpr (kOffset) v = _mm256_sub_epi32(v, _mm256_slli_epi32(r, 7));
          if constexpr (kZero) v = _mm256_sub_epi32(v, _mm256_mullo_epi32(r, zpv));
        }
        if constexpr (kRaw) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(ep.c + m * ep.ldc + nc0 + j), v);
        } else {
          __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), xsv);
          f = _mm256_mul_ps(f, _mm256_loadu_ps(ep.w_scale + nc0 + j));
          if constexpr (kBias) {
            opaque(f);
            f = _mm256_add_ps(f, _mm256_loadu_ps(bias_f + j));
          }
          store8<OD>(ep.y, m * ep.ldy + nc0 + j, f);
        }
      }
    }
#endif
    for (; j < nlen; ++j) {
      uint32_t v = static_cast<uint32_t>(ar[j]);
      if constexpr (kOffset) v -= 128u * static_cast<uint32_t>(rs[j]);
      int64_t t;
      if (wide) {
        t = static_cast<int64_t>(static_cast<int32_t>(v)) - static_cast<int64_t>(zp) * rs[j];
      } else {
        if constexpr (kZero) v -= static_cast<uint32_t>(zp) * static_cast<uint32_t>(rs[j]);
        t = static_cast<int32_t>(v);
      }
      if constexpr (kRaw) {
        ep.c[m * ep.ldc + nc0 + j] = static_cast<int32_t>(static_cast<uint32_t>(t));
      } else {
        float f = static_cast<float>(t) * xs;
        f = f * ep.w_scale[nc0 + j];
        if constexpr (kBias) {
          opaque(f);
          f = f + bias_f[j];
        }
        store1<OD>(ep.y, m * ep.ldy + nc0 + j, f);
      }
    }
  }
}

template <bool kRaw, DType OD>
EpiFn pick_epi2(bool bias, bool zero) {
  if (bias) return zero ? &epilogue<kRaw, OD, true, true> : &epilogue<kRaw, OD, true, false>;
  return zero ? &epilogue<kRaw, OD, false, true> : &epilogue<kRaw, OD, false, false>;
}
EpiFn pick_epi(const Int8Epilogue& ep) {
  const bool zero = ep.x_zero != nullptr;
  if (!ep.y) return zero ? &epilogue<true, DType::f32, false, true> : &epilogue<true, DType::f32, false, false>;
  const bool bias = ep.bias != nullptr;
  switch (ep.out_dtype) {
    case DType::bf16: return pick_epi2<false, DType::bf16>(bias, zero);
    case DType::f16: return pick_epi2<false, DType::f16>(bias, zero);
    default: return pick_epi2<false, DType::f32>(bias, zero);
  }
}

// The bias of the chunk's columns as float32 (it is given in the output type).
inline void load_bias(const Int8Epilogue& ep, int64_t nc0, int64_t nlen, float* out) {
  if (!ep.y || !ep.bias) return;
  for (int64_t j = 0; j < nlen; ++j) {
    switch (ep.out_dtype) {
      case DType::f32: out[j] = static_cast<const float*>(ep.bias)[nc0 + j]; break;
      case DType::bf16: out[j] = bf16_to_f32(static_cast<const uint16_t*>(ep.bias)[nc0 + j]); break;
      case DType::f16: out[j] = f16_to_f32(static_cast<const uint16_t*>(ep.bias)[nc0 + j]); break;
    }
  }
}

// A buffer of at least `bytes`, 64-byte aligned, reallocated (contents dropped) only when it
// must grow, freed with the holder.
// (A holder of our own rather than std::unique_ptr: no standard template gets instantiated under
// the target pragma, where it could become a shared weak symbol compiled for AVX-512.)
struct ScratchBuf {
  unsigned char* p = nullptr;
  size_t cap = 0;
  ~ScratchBuf() { delete[] p; }
  void* get(size_t bytes) {
    if (cap < bytes) {
      delete[] p;
      p = nullptr;
      cap = 0;
      p = new unsigned char[bytes + 64];
      cap = bytes;
    }
    return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
  }
};
// A per-thread buffer of at least n elements, kept between calls (a fresh allocation of a few
// hundred KiB would be an mmap and page faults on every call). Slot tells buffers apart.
template <typename T, int Slot>
T* thread_scratch(size_t n) {
  thread_local ScratchBuf buf;
  return static_cast<T*>(buf.get(n * sizeof(T)));
}

// The next chunk's weight bytes [p, end), prefetched into L2 while the current chunk computes: `per_step`
// lines of 64 bytes per micro-kernel step of K, spread over the chunk's `calls` micro-kernel calls of
// `ksteps` steps each (at most 16 lines a step; once p reaches end, none).
struct NextChunk {
  const char* p = nullptr;
  const char* end = nullptr;
  int per_step = 0;
  NextChunk(const void* next, int64_t bytes, int64_t calls, int64_t ksteps) {
    if (!next || bytes <= 0 || calls <= 0 || ksteps <= 0) return;
    p = static_cast<const char*>(next);
    end = p + bytes;
    const int64_t steps = calls * ksteps, lines = (bytes + 63) / 64;
    per_step = static_cast<int>(min64(16, (lines + steps - 1) / steps));
  }
  // The lines per step for the next call (then advance past what that call prefetches).
  int take(int64_t ksteps) {
    const int n = p < end ? per_step : 0;
    p += 64 * n * ksteps;
    return n;
  }
};

// Micro-kernel calls for M activation rows in panels of mr_max (a panel of one row takes nr1 weight
// rows per call, others nr) over nlen weight rows.
inline int64_t micro_calls(int64_t M, int64_t nlen, int mr_max, int nr, int nr1) {
  int64_t calls = 0;
  for (int64_t m0 = 0; m0 < M; m0 += mr_max) {
    const int64_t w = M - m0 == 1 ? nr1 : nr;
    calls += (nlen + w - 1) / w;
  }
  return calls;
}

// ---- micro-kernels: C[i * ldc + j] = raw sum_k A[i, k] B[j, k] (offset included), rs[j] = rowsum
// A is int8 (AT = int8_t), except at level 1 where the driver sign-extends each panel of
// activation rows to int16 once (AT = int16_t, rows zero-padded to a multiple of 16): the panel
// is reused for every weight row of the chunk, and the micro-kernel saves a shuffle per load.
#if SK_I8_LEVEL == 1
typedef int16_t AT;
#else
typedef int8_t AT;
#endif
// pf, pfn: the next chunk of weight rows, pulled into L2 while this one computes: pfn lines of 64
// bytes per step of K, from pf on (pfn = 0: none). See gemm_chunk.
using MicroFn = void (*)(const AT*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t, int32_t*,
                         const char*, int);

#if SK_I8_LEVEL == 0
constexpr int kMR = 4, kNR = 4, kNR1 = 4;
constexpr int kW = 64;  // the step of K the prefetch stream counts in (the generic micro-kernel ignores it)

inline int32_t dot_i8(const int8_t* __restrict a, const int8_t* __restrict b, int64_t K) {
  uint32_t s = 0;  // wraps like the SIMD paths instead of overflowing
  for (int64_t k = 0; k < K; ++k) s += static_cast<uint32_t>(static_cast<int32_t>(a[k]) * static_cast<int32_t>(b[k]));
  return static_cast<int32_t>(s);
}
inline int32_t sum_i8(const int8_t* __restrict b, int64_t K) {
  int32_t s = 0;
  for (int64_t k = 0; k < K; ++k) s += b[k];
  return s;
}

template <int MR, int NR, bool RS>
void micro(const int8_t* A, int64_t lda, const int8_t* B, int64_t ldb, int64_t K, int32_t* C, int64_t ldc,
           int32_t* rs, const char*, int) {
  for (int j = 0; j < NR; ++j) {
    const int8_t* b = B + j * ldb;
    if constexpr (RS) rs[j] = sum_i8(b, K);
    for (int i = 0; i < MR; ++i) C[i * ldc + j] = dot_i8(A + i * lda, b, K);
  }
}

#else  // SIMD levels

// The accumulating operations are written as inline asm that updates the accumulator in place
// ("+x"/"+v"): with the intrinsics, GCC 12 copies every accumulator between registers (and spills
// some) on every step of the loop, about doubling the instruction count of the micro-kernels.
// vdot(acc, a, b): acc += the dot products of a and b per 32-bit lane; with a vector of ones as a
// it sums b's bytes (the weight row sums).
#if SK_I8_LEVEL == 3
typedef __m512i VI;
constexpr int kW = 64;  // bytes of K per step
constexpr int kMR = 4, kNR = 4, kNR1 = 4;
inline VI vzero() { return _mm512_setzero_si512(); }
inline VI vones() { return _mm512_set1_epi8(1); }
inline __mmask64 tail_mask(int64_t n) { return n >= 64 ? ~0ull : ((1ull << n) - 1ull); }
inline VI ld_b(const int8_t* p) { return _mm512_loadu_si512(p); }
inline VI ld_a(const int8_t* p) { return _mm512_loadu_si512(p); }  // offset by the driver (offset_rows)
inline VI ld_b_tail(const int8_t* p, int64_t n) { return _mm512_maskz_loadu_epi8(tail_mask(n), p); }
inline VI ld_a_tail(const int8_t* p, int64_t n) { return _mm512_maskz_loadu_epi8(tail_mask(n), p); }
inline VI vdot_(VI acc, VI a, VI b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}
inline __m256i fold(VI v) { return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)); }
#elif SK_I8_LEVEL == 2
typedef __m256i VI;
constexpr int kW = 32;
constexpr int kMR = 4, kNR = 2, kNR1 = 4;
inline VI vzero() { return _mm256_setzero_si256(); }
inline VI vones() { return _mm256_set1_epi8(1); }
inline VI ld_b(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline VI ld_a(const int8_t* p) { return ld_b(p); }  // offset by the driver (offset_rows)
inline VI ld_b_tail(const int8_t* p, int64_t n) {
  alignas(32) int8_t buf[32] = {};
  std::memcpy(buf, p, static_cast<size_t>(n));
  return ld_b(buf);
}
inline VI ld_a_tail(const int8_t* p, int64_t n) { return ld_b_tail(p, n); }
// {vex}: the AVX-VNNI encoding, also where the assembler would prefer AVX512-VNNI's EVEX one
inline VI vdot_(VI acc, VI a, VI b) {
  __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(b));
  return acc;
}
inline __m256i fold(VI v) { return v; }
#else  // level 1: sign-extend to int16 and vpmaddwd: pairs of products summed into int32, never saturates
typedef __m256i VI;
inline __m256i vadd_(__m256i acc, __m256i t) {
  __asm__("vpaddd %1, %0, %0" : "+x"(acc) : "x"(t));
  return acc;
}
constexpr int kW = 16;
constexpr int kMR = 4, kNR = 2, kNR1 = 4;
inline VI vzero() { return _mm256_setzero_si256(); }
inline VI vones() { return _mm256_set1_epi16(1); }
inline VI ld_b(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline VI ld_a(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline VI ld_b_tail(const int8_t* p, int64_t n) {
  alignas(16) int8_t buf[16] = {};
  std::memcpy(buf, p, static_cast<size_t>(n));
  return ld_b(buf);
}
inline VI ld_a_tail(const int16_t* p, int64_t) { return ld_a(p); }  // the panel is zero-padded
inline VI vdot_(VI acc, VI a, VI b) { return vadd_(acc, _mm256_madd_epi16(a, b)); }
inline __m256i fold(VI v) { return v; }
#endif

// through a value: an asm operand on the array element itself keeps the array in memory
inline void vdot(VI& acc, VI a, VI b) { acc = vdot_(acc, a, b); }

template <int MR, int NR, bool RS>
void micro(const AT* __restrict A, int64_t lda, const int8_t* __restrict B, int64_t ldb, int64_t K,
           int32_t* __restrict C, int64_t ldc, int32_t* __restrict rs, const char* pf, int pfn) {
  VI acc[MR][NR];
  VI r[NR];
  const VI ones = vones();
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = vzero();
#pragma GCC unroll 16
  for (int j = 0; j < NR; ++j) r[j] = vzero();
  int64_t k = 0;
  for (; k + kW <= K; k += kW) {
    for (int p = 0; p < pfn; ++p) __builtin_prefetch(pf + 64 * p, 0, 2);
    pf += 64 * pfn;
    VI b[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) b[j] = ld_b(B + j * ldb + k);
    if constexpr (RS) {
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) vdot(r[j], ones, b[j]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const VI a = ld_a(A + i * lda + k);
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) vdot(acc[i][j], a, b[j]);
    }
  }
  if (k < K) {  // the last partial step, zero-padded (0 x anything adds nothing)
    const int64_t n = K - k;
    VI b[NR];
    for (int j = 0; j < NR; ++j) b[j] = ld_b_tail(B + j * ldb + k, n);
    if constexpr (RS) {
      for (int j = 0; j < NR; ++j) vdot(r[j], ones, b[j]);
    }
    for (int i = 0; i < MR; ++i) {
      const VI a = ld_a_tail(A + i * lda + k, n);
      for (int j = 0; j < NR; ++j) vdot(acc[i][j], a, b[j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __m256i f[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) f[j] = fold(acc[i][j]);
    hsum_store<NR>(f, C + i * ldc);
  }
  if constexpr (RS) {
    __m256i f[NR];
    for (int j = 0; j < NR; ++j) f[j] = fold(r[j]);
    hsum_store<NR>(f, rs);
  }
}
#endif  // SIMD levels

template <bool RS, int MR, int NRMAX>
MicroFn pick_nr(int nr) {
  if constexpr (NRMAX >= 4) {
    if (nr >= 4) return &micro<MR, 4, RS>;
  }
  if constexpr (NRMAX >= 3) {
    if (nr == 3) return &micro<MR, 3, RS>;
  }
  if constexpr (NRMAX >= 2) {
    if (nr == 2) return &micro<MR, 2, RS>;
  }
  return &micro<MR, 1, RS>;
}
template <bool RS>
MicroFn pick_micro(int mr, int nr) {
  static_assert(kMR == 4, "pick_micro assumes kMR == 4");
  switch (mr) {
    case 1: return pick_nr<RS, 1, kNR1>(nr);
    case 2: return pick_nr<RS, 2, kNR>(nr);
    case 3: return pick_nr<RS, 3, kNR>(nr);
    default: return pick_nr<RS, 4, kNR>(nr);
  }
}

// Scratch of one call: raw sums of an MR x NC block, row sums and float bias of the chunk.
struct Scratch {
  alignas(64) int32_t acc[kMR * kNCMax];
  alignas(64) int32_t rs[kNCMax];
  alignas(64) float bias_f[kNCMax];
};

// One chunk of weight rows: Bc points at row nc0 (leading dimension ldb), nlen <= kNCMax rows.
// next, next_bytes: the weight bytes the following chunk will read (null / 0: none). They are
// prefetched into L2 spread evenly over this chunk's micro-kernel steps, so that the memory
// reads of the next chunk overlap the arithmetic of this one instead of following it (without it,
// small M ran at about the sum of its memory time and its compute time).
void gemm_chunk(const GemmView& g, EpiFn epi, int64_t nc0, int64_t nlen, const int8_t* Bc, int64_t ldb, bool rs_ready,
                Scratch& s, const int8_t* next, int64_t next_bytes) {
  load_bias(*g.ep, nc0, nlen, s.bias_f);
  const int64_t ksteps = g.K / kW;  // the full steps of K of one micro-kernel call
  NextChunk ahead(next, next_bytes, micro_calls(g.M, nlen, kMR, kNR, kNR1), ksteps);
  for (int64_t m0 = 0; m0 < g.M; m0 += kMR) {
    const int mr = static_cast<int>(min64(kMR, g.M - m0));
    const int nrw = mr == 1 ? kNR1 : kNR;
    const bool rs_now = g.need_rs && !rs_ready && m0 == 0;
#if SK_I8_LEVEL == 1
    int64_t lda = (g.K + 15) / 16 * 16;
    if ((lda * 2) % 1024 == 0) lda += 32;  // rows 64 bytes apart from a multiple of 1 KiB: no cache-set aliasing
    int16_t* A = thread_scratch<int16_t, 1>(static_cast<size_t>(max64(kMR * lda, 1)));
    for (int i = 0; i < mr; ++i) {
      const int8_t* src = g.a + (m0 + i) * g.lda;
      int16_t* dst = A + i * lda;
      for (int64_t k = 0; k < g.K; ++k) dst[k] = src[k];
      for (int64_t k = g.K; k < lda; ++k) dst[k] = 0;
    }
#else
    const AT* A = g.a + m0 * g.lda;
    const int64_t lda = g.lda;
#endif
    for (int64_t j = 0; j < nlen; j += nrw) {
      const int nr = static_cast<int>(min64(nrw, nlen - j));
      const MicroFn f = rs_now ? pick_micro<true>(mr, nr) : pick_micro<false>(mr, nr);
      const char* pf = ahead.p;
      f(A, lda, Bc + j * ldb, ldb, g.K, s.acc + j, kNCMax, s.rs + j, pf, ahead.take(ksteps));
    }
    epi(g, m0, mr, nc0, nlen, s.acc, kNCMax, s.rs, s.bias_f);
  }
}

// ---- 2:4 decompression: a row of values (K/2) and meta (ceil(K/8)) into K dense int8.
// Shuffle controls for one meta byte (two groups): dense byte p of the group takes value 1 if
// p == i1, else value 0 if p == i0, else zero (0x80). lo: values 0..3 -> bytes 0..7;
// hi: values 4..7 -> bytes 8..15 (as the high half of a 16-byte control).
struct Sparse24Lut {
  uint64_t lo[256];
  uint64_t hi[256];
};
constexpr Sparse24Lut make_sparse24_lut() {
  Sparse24Lut t{};
  for (int byte = 0; byte < 256; ++byte) {
    uint64_t lo = 0, hi = 0;
    for (int half = 0; half < 2; ++half) {
      const int nib = (byte >> (4 * half)) & 15;
      const int i0 = nib & 3, i1 = (nib >> 2) & 3;
      for (int p = 0; p < 4; ++p) {
        const int v = p == i1 ? 1 : (p == i0 ? 0 : -1);
        const uint64_t cl = v < 0 ? 0x80 : static_cast<uint64_t>(2 * half + v);
        const uint64_t ch = v < 0 ? 0x80 : static_cast<uint64_t>(4 + 2 * half + v);
        lo |= cl << (8 * (4 * half + p));
        hi |= ch << (8 * (4 * half + p));
      }
    }
    t.lo[byte] = lo;
    t.hi[byte] = hi;
  }
  return t;
}
constexpr Sparse24Lut kSparse24Lut = make_sparse24_lut();

#if SK_I8_LEVEL == 3
// AVX-512 VBMI: 16 groups (64 dense bytes) at a time, with no scalar table look-ups. The group's
// nibble goes to its four bytes (vpermb), nibble * 4 + position indexes kLoc (vpermb again):
// which of the group's two values lands there (0 or 1) or 0x80 for a zero; plus 2 * group that is
// the index into the 32 values, gathered by a zero-masking vpermb.
struct VbmiTables {
  int8_t rep[64], pos[64], loc[64], base[64];
};
constexpr VbmiTables make_vbmi_tables() {
  VbmiTables t{};
  for (int p = 0; p < 64; ++p) {
    t.rep[p] = static_cast<int8_t>(p / 4);
    t.pos[p] = static_cast<int8_t>(p % 4);
    t.base[p] = static_cast<int8_t>(2 * (p / 4));
    const int nib = p / 4, q = p % 4, i0 = nib & 3, i1 = nib >> 2;
    t.loc[p] = static_cast<int8_t>(q == i1 ? 1 : (q == i0 ? 0 : -128));
  }
  return t;
}
alignas(64) constexpr VbmiTables kVbmi = make_vbmi_tables();

// Returns the number of groups done (a multiple of 16).
__attribute__((target("avx512vbmi"))) int64_t decompress_vbmi(const int8_t* __restrict v,
                                                              const uint8_t* __restrict mt, int64_t G,
                                                              int8_t* __restrict out) {
  const __m512i rep = _mm512_loadu_si512(kVbmi.rep), pos = _mm512_loadu_si512(kVbmi.pos);
  const __m512i loc = _mm512_loadu_si512(kVbmi.loc), base = _mm512_loadu_si512(kVbmi.base);
  const __m128i low = _mm_set1_epi8(0x0F);
  int64_t g = 0;
  for (; g + 16 <= G; g += 16) {
    const __m128i m8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(mt + g / 2));
    const __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(m8, low), _mm_and_si128(_mm_srli_epi16(m8, 4), low));
    const __m512i np = _mm512_permutexvar_epi8(rep, _mm512_castsi128_si512(nib));
    const __m512i l = _mm512_permutexvar_epi8(_mm512_or_si512(_mm512_slli_epi16(np, 2), pos), loc);
    const __mmask64 keep = ~_mm512_movepi8_mask(l);
    const __m512i vals = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 2 * g)));
    _mm512_storeu_si512(out + 4 * g, _mm512_maskz_permutexvar_epi8(keep, _mm512_add_epi8(l, base), vals));
  }
  return g;
}
#endif

void decompress_row(const int8_t* __restrict v, const uint8_t* __restrict mt, int64_t K, int8_t* __restrict out,
                    bool vbmi) {
  const int64_t G = K / 4;
  int64_t g = 0;
#if SK_I8_LEVEL == 3
  if (vbmi) g = decompress_vbmi(v, mt, G, out);
#else
  (void)vbmi;
#endif
#if SK_I8_LEVEL >= 1
  for (; g + 4 <= G; g += 4) {  // four groups: 8 values, 2 meta bytes -> 16 dense bytes
    const __m128i ctrl = _mm_set_epi64x(static_cast<long long>(kSparse24Lut.hi[mt[g / 2 + 1]]),
                                        static_cast<long long>(kSparse24Lut.lo[mt[g / 2]]));
    const __m128i vals = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(v + 2 * g));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * g), _mm_shuffle_epi8(vals, ctrl));
  }
#endif
  for (; g < G; ++g) {
    const int nib = (mt[g / 2] >> (4 * (g & 1))) & 15;
    int8_t* o = out + 4 * g;
    o[0] = o[1] = o[2] = o[3] = 0;
    o[nib & 3] = v[2 * g];
    o[(nib >> 2) & 3] = v[2 * g + 1];
  }
  for (int64_t k = 4 * G; k < K; ++k) out[k] = 0;  // K % 4 != 0 is not a 2:4 layout; read zeros
}

#if SK_I8_LEVEL == 3
// ---- 2:4 at small M without decompression (AVX-512 VBMI + VNNI). The dense path above writes every chunk out as
// dense int8 and reads it back, which at M = 1 made 2:4 + int8 no faster than dense int8 with 5/8 of its bytes.
// Here a window of 128 columns (32 groups) is one step: its 64 kept values (one 64-byte load) and their 16 bytes of
// meta (2 bits per value, value i's position at bits 2i .. 2i + 1) give each value the index of its activation byte
// in the window, 4 * (i / 2) + position (vpmovzxwq puts the meta of values 8q .. 8q + 7 in qword q, vpmultishiftqb
// moves each value's two bits to its byte, vpternlogd masks them and adds the group's base); vpermi2b then
// gathers those activation bytes from the window's 128 (two registers, per activation row) and one vpdpbusd
// multiplies them by the values. Per 64 kept values and activation row: one vpermi2b and one vpdpbusd, plus the
// decode (shared by the rows) and one vpdpbusd for the row sum. A nibble naming one position twice keeps the
// second value (as decompress_row and the reference do): the first is zeroed.
inline __m512i permute2b(__m512i idx, __m512i lo, __m512i hi) {  // vpermi2b: idx's bytes pick from lo:hi
  __asm__("vpermi2b %2, %1, %0" : "+v"(idx) : "v"(lo), "v"(hi));
  return idx;
}
inline __m512i multishift(__m512i ctrl, __m512i data) {  // vpmultishiftqb
  __m512i r;
  __asm__("vpmultishiftqb %2, %1, %0" : "=v"(r) : "v"(ctrl), "v"(data));
  return r;
}

struct S24Window {
  __m512i idx;   // per value: its activation byte's index in the window (0 .. 127)
  __m512i vals;  // the values (zeros past the row's end and for a malformed nibble's first value)
};

// The window of 32 groups from group g0 of one row (vals: the row's values, mt: its meta), `groups` of them valid.
inline S24Window s24_window(const int8_t* vals, const uint8_t* mt, int64_t g0, int64_t groups) {
  const __m512i shifts = _mm512_set1_epi64(0x0E0C0A0806040200ll);  // byte j of each qword: bit 2j
  // byte i: 4 * (i / 2), the first column of value i's group
  const __m512i base = _mm512_set_epi64(0x7C7C787874747070ll, 0x6C6C686864646060ll, 0x5C5C585854545050ll,
                                        0x4C4C484844444040ll, 0x3C3C383834343030ll, 0x2C2C282824242020ll,
                                        0x1C1C181814141010ll, 0x0C0C080804040000ll);
  __m128i m16;
  __m512i v;
  if (groups >= 32) {
    m16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(mt + g0 / 2));
    v = _mm512_loadu_si512(vals + 2 * g0);
  } else {
    m16 = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << ((groups + 1) / 2)) - 1u), mt + g0 / 2);
    v = _mm512_maskz_loadu_epi8((1ull << (2 * groups)) - 1ull, vals + 2 * g0);
  }
  const __m512i pos = multishift(shifts, _mm512_cvtepu16_epi64(m16));
  S24Window w;
  w.idx = _mm512_ternarylogic_epi32(pos, base, _mm512_set1_epi8(3), 0xEC);  // (pos & 3) | base
  // a first value (even byte) whose index equals the second's: zeroed
  const __mmask64 dup = _mm512_mask_cmpeq_epi8_mask(0x5555555555555555ull, w.idx, _mm512_srli_epi16(w.idx, 8));
  w.vals = _mm512_maskz_mov_epi8(~dup, v);
  return w;
}

// One chunk of 2:4 weight rows for the direct path: MR activation rows (a, lda: offset bytes) against the rows
// [0, nlen) from vals (K / 2 per row) and mt (mbytes per row); raw sums (offset included) into acc (ldacc per
// activation row), the row sums into rs when rs_now.
struct S24Chunk {
  const int8_t* a;
  int64_t lda, K;
  const int8_t* vals;
  const uint8_t* mt;
  int64_t mbytes;
  int64_t avail;  // rows readable from vals / mt (this chunk's and the following ones of the thread's range)
  int64_t ahead;  // rows ahead whose lines are prefetched into L2 (about 64 KiB of values)
  int32_t* acc;
  int64_t ldacc;
  int32_t* rs;
  bool rs_now;
};

// Rows j0 .. j0 + NR of the chunk (NR independent accumulator chains), window by window. Each row-window step
// prefetches the same window of the row `ahead` rows on (and its meta every fourth window): the rows are short
// streams (K / 2 bytes) that the hardware prefetchers pick up too late; without it M = 1 read about 21 GB/s
// where dense int8 read 40 (8 layers 4096 x 4096, 2 threads).
template <int MR, int NR>
void s24_direct_rows(const S24Chunk& c, int64_t j0) {
  const int64_t G = c.K / 4, half = c.K / 2;
  VI s[NR][MR], r[NR];
  for (int j = 0; j < NR; ++j) {
    r[j] = vzero();
    for (int i = 0; i < MR; ++i) s[j][i] = vzero();
  }
  const VI ones = vones();
  const bool pf = j0 + NR - 1 + c.ahead < c.avail;
  for (int64_t g0 = 0; g0 < G; g0 += 32) {
    const int64_t groups = min64(32, G - g0), k0 = 4 * g0;
    VI lo[MR], hi[MR];
    for (int i = 0; i < MR; ++i) {
      const int8_t* x = c.a + i * c.lda + k0;
      if (groups >= 32) {
        lo[i] = _mm512_loadu_si512(x);
        hi[i] = _mm512_loadu_si512(x + 64);
      } else {
        lo[i] = ld_a_tail(x, 4 * groups);
        hi[i] = 4 * groups > 64 ? ld_a_tail(x + 64, 4 * groups - 64) : vzero();
      }
    }
    for (int j = 0; j < NR; ++j) {
      const int64_t n = j0 + j;
      if (pf) {
        _mm_prefetch(reinterpret_cast<const char*>(c.vals + (n + c.ahead) * half + 2 * g0), _MM_HINT_T1);
        if ((g0 & 127) == 0)
          _mm_prefetch(reinterpret_cast<const char*>(c.mt + (n + c.ahead) * c.mbytes + g0 / 2), _MM_HINT_T1);
      }
      const S24Window w = s24_window(c.vals + n * half, c.mt + n * c.mbytes, g0, groups);
      if (c.rs_now) vdot(r[j], ones, w.vals);
      for (int i = 0; i < MR; ++i) vdot(s[j][i], permute2b(w.idx, lo[i], hi[i]), w.vals);
    }
  }
  for (int j = 0; j < NR; ++j) {
    for (int i = 0; i < MR; ++i) c.acc[i * c.ldacc + j0 + j] = _mm512_reduce_add_epi32(s[j][i]);
    if (c.rs_now) c.rs[j0 + j] = _mm512_reduce_add_epi32(r[j]);
  }
}

// Activation rows up to which 2:4 goes without decompression, in panels of up to kMR rows that each decode the
// meta again. 8 layers of 4096 x 4096, 2 threads, ms, decompressed chunks -> this: M = 1 4.0-4.2 -> 2.3-2.9,
// M = 4 4.4-5.0 -> 2.4-3.0, M = 5 5.2-5.4 -> 4.1-4.3, M = 8 5.7-5.9 -> 4.8-4.9; at M = 16 both 8.3-8.6.
constexpr int64_t kS24DirectMaxM = 8;

// The chunk's rows, one at a time up to 2 activation rows (one sequential stream), else two at a time.
template <int MR>
void s24_direct_chunk(const S24Chunk& c, int64_t nlen) {
  constexpr int NR = MR <= 2 ? 1 : 2;
  int64_t j = 0;
  for (; j + NR <= nlen; j += NR) s24_direct_rows<MR, NR>(c, j);
  for (; j < nlen; ++j) s24_direct_rows<MR, 1>(c, j);
}
#endif

// ==========================================================================================
// weight-only: float32 x int8 -> float32
// ==========================================================================================
#if SK_I8_LEVEL != 2

// pf, pfn: as MicroFn's (the next chunk's weight rows, pfn lines per step of K).
using WoMicroFn = void (*)(const float*, int64_t, const int8_t*, int64_t, int64_t, float*, int64_t, const char*, int);

#if SK_I8_LEVEL == 0
constexpr int kWoMR = 4, kWoNR = 4, kWoNR1 = 4;
constexpr int kWF = 16;  // the step of K the prefetch stream counts in (the generic micro-kernel ignores it)
inline float dot_wo(const float* __restrict x, const int8_t* __restrict q, int64_t K) {
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int j = 0; j < 8; ++j) s[j] += x[k + j] * static_cast<float>(q[k + j]);
  for (; k < K; ++k) s[0] += x[k] * static_cast<float>(q[k]);
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}
template <int MR, int NR>
void wo_micro(const float* X, int64_t ldx, const int8_t* Q, int64_t ldq, int64_t K, float* C, int64_t ldc, const char*,
              int) {
  for (int j = 0; j < NR; ++j)
    for (int i = 0; i < MR; ++i) C[i * ldc + j] = dot_wo(X + i * ldx, Q + j * ldq, K);
}
#else
#if SK_I8_LEVEL == 3
typedef __m512 VF;
constexpr int kWF = 16;
constexpr int kWoMR = 4, kWoNR = 4, kWoNR1 = 4;
inline VF vfzero() { return _mm512_setzero_ps(); }
inline VF ldq(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VF ldx(const float* p) { return _mm512_loadu_ps(p); }
inline VF ldq_tail(const int8_t* p, int64_t n) {
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}
inline VF ldx_tail(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p); }
inline void vfma(VF& acc, VF a, VF b) {
  VF t = acc;  // through a value: an asm operand on the array element itself keeps the array in memory
  __asm__("vfmadd231ps %2, %1, %0" : "+v"(t) : "v"(a), "v"(b));
  acc = t;
}
inline __m256 ffold(VF v) { return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)); }
#else
typedef __m256 VF;
constexpr int kWF = 8;
constexpr int kWoMR = 4, kWoNR = 2, kWoNR1 = 4;
inline VF vfzero() { return _mm256_setzero_ps(); }
inline VF ldq(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline VF ldx(const float* p) { return _mm256_loadu_ps(p); }
inline VF ldq_tail(const int8_t* p, int64_t n) {
  alignas(16) int8_t buf[16] = {};
  std::memcpy(buf, p, static_cast<size_t>(n));
  return ldq(buf);
}
inline VF ldx_tail(const float* p, int64_t n) {
  alignas(32) float buf[8] = {};
  std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(float));
  return ldx(buf);
}
inline void vfma(VF& acc, VF a, VF b) {
  VF t = acc;  // through a value: an asm operand on the array element itself keeps the array in memory
  __asm__("vfmadd231ps %2, %1, %0" : "+x"(t) : "x"(a), "x"(b));
  acc = t;
}
inline __m256 ffold(VF v) { return v; }
#endif

template <int MR, int NR>
void wo_micro(const float* __restrict X, int64_t ldx_, const int8_t* __restrict Q, int64_t ldq_, int64_t K,
              float* __restrict C, int64_t ldc, const char* pf, int pfn) {
  VF acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = vfzero();
  int64_t k = 0;
  for (; k + kWF <= K; k += kWF) {
    for (int p = 0; p < pfn; ++p) __builtin_prefetch(pf + 64 * p, 0, 2);
    pf += 64 * pfn;
    VF b[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) b[j] = ldq(Q + j * ldq_ + k);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const VF a = ldx(X + i * ldx_ + k);
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) vfma(acc[i][j], a, b[j]);
    }
  }
  if (k < K) {
    const int64_t n = K - k;
    VF b[NR];
    for (int j = 0; j < NR; ++j) b[j] = ldq_tail(Q + j * ldq_ + k, n);
    for (int i = 0; i < MR; ++i) {
      const VF a = ldx_tail(X + i * ldx_ + k, n);
      for (int j = 0; j < NR; ++j) vfma(acc[i][j], a, b[j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __m256 f[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) f[j] = ffold(acc[i][j]);
    hsum_store<NR>(f, C + i * ldc);
  }
}
#endif

template <int MR, int NRMAX>
WoMicroFn wo_pick_nr(int nr) {
  if constexpr (NRMAX >= 4) {
    if (nr >= 4) return &wo_micro<MR, 4>;
  }
  if constexpr (NRMAX >= 3) {
    if (nr == 3) return &wo_micro<MR, 3>;
  }
  if constexpr (NRMAX >= 2) {
    if (nr == 2) return &wo_micro<MR, 2>;
  }
  return &wo_micro<MR, 1>;
}
WoMicroFn wo_pick(int mr, int nr) {
  static_assert(kWoMR == 4, "wo_pick assumes kWoMR == 4");
  switch (mr) {
    case 1: return wo_pick_nr<1, kWoNR1>(nr);
    case 2: return wo_pick_nr<2, kWoNR>(nr);
    case 3: return wo_pick_nr<3, kWoNR>(nr);
    default: return wo_pick_nr<4, kWoNR>(nr);
  }
}

template <DType OD, bool kBias>
void wo_epilogue(const Int8WeightOnlyArgs& a, int64_t m0, int mr, int64_t nc0, int64_t nlen, const float* acc,
                 int64_t ldacc, const float* bias_f) {
  for (int i = 0; i < mr; ++i) {
    const int64_t m = m0 + i;
    const float* ar = acc + i * ldacc;
    int64_t j = 0;
#if SK_I8_LEVEL >= 1
    for (; j + 8 <= nlen; j += 8) {
      __m256 f = _mm256_mul_ps(_mm256_loadu_ps(ar + j), _mm256_loadu_ps(a.w_scale + nc0 + j));
      if constexpr (kBias) f = _mm256_add_ps(f, _mm256_loadu_ps(bias_f + j));
      store8<OD>(a.y, m * a.ldy + nc0 + j, f);
    }
#endif
    for (; j < nlen; ++j) {
      float f = ar[j] * a.w_scale[nc0 + j];
      if constexpr (kBias) f += bias_f[j];
      store1<OD>(a.y, m * a.ldy + nc0 + j, f);
    }
  }
}

template <DType OD, bool kBias>
void wo_run(const Int8WeightOnlyArgs& a, int64_t n0, int64_t n1) {
  struct WoScratch {
    alignas(64) float acc[kWoMR * kNCMax];
    alignas(64) float bias_f[kNCMax];
  } s;
  const int64_t NC = chunk_rows(a.K);
  const int64_t ksteps = a.K / kWF;  // full steps of K per micro-kernel call
  for (int64_t nc0 = n0; nc0 < n1; nc0 += NC) {
    const int64_t nlen = min64(NC, n1 - nc0);
    if constexpr (kBias) {
      using O = typename Elem<OD>::storage;
      for (int64_t j = 0; j < nlen; ++j) s.bias_f[j] = Elem<OD>::load(static_cast<const O*>(a.bias), nc0 + j);
    }
    // the next chunk's rows into L2 over this chunk's steps, as gemm_chunk does
    const int64_t next_rows = min64(NC, n1 - nc0 - nlen);
    NextChunk ahead(a.q + (nc0 + nlen) * a.ldq, next_rows > 0 ? (next_rows - 1) * a.ldq + a.K : 0,
                    micro_calls(a.M, nlen, kWoMR, kWoNR, kWoNR1), ksteps);
    for (int64_t m0 = 0; m0 < a.M; m0 += kWoMR) {
      const int mr = static_cast<int>(min64(kWoMR, a.M - m0));
      const int nrw = mr == 1 ? kWoNR1 : kWoNR;
      const float* X = a.x + m0 * a.ldx;
      for (int64_t j = 0; j < nlen; j += nrw) {
        const int nr = static_cast<int>(min64(nrw, nlen - j));
        const char* pf = ahead.p;
        wo_pick(mr, nr)(X, a.ldx, a.q + (nc0 + j) * a.ldq, a.ldq, a.K, s.acc + j, kNCMax, pf, ahead.take(ksteps));
      }
      wo_epilogue<OD, kBias>(a, m0, mr, nc0, nlen, s.acc, kNCMax, s.bias_f);
    }
  }
}
template <DType OD>
void wo_run_b(const Int8WeightOnlyArgs& a, int64_t n0, int64_t n1) {
  if (a.bias) {
    wo_run<OD, true>(a, n0, n1);
  } else {
    wo_run<OD, false>(a, n0, n1);
  }
}
#endif  // SK_I8_LEVEL != 2

// ==========================================================================================
// per-token quantization (levels 0 and 1)
// ==========================================================================================
#if SK_I8_LEVEL <= 1

// Clamps a rounded value and converts it; NaN (unsupported input) becomes 0 without UB.
inline int8_t to_i8(float r, float lo, float hi) {
  if (!(r == r)) return 0;
  r = r < lo ? lo : (r > hi ? hi : r);
  return static_cast<int8_t>(static_cast<int>(r));
}

#if SK_I8_LEVEL == 1
template <DType XD>
inline __m256 load8x(const typename Elem<XD>::storage* p) {
  if constexpr (XD == DType::f32) {
    return _mm256_loadu_ps(p);
  } else if constexpr (XD == DType::bf16) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
}
inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmin8(__m256 v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  s = _mm_min_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// round half to even (x / scale), clamped to [lo, hi] after adding zp, stored as 8 int8
inline void quant8(__m256 x, __m256 scale, __m256 zp, __m256 lo, __m256 hi, int8_t* q) {
  __m256 r = _mm256_round_ps(_mm256_div_ps(x, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm256_add_ps(r, zp);
  r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
  const __m256i i = _mm256_cvtps_epi32(r);
  const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_packs_epi16(p16, p16));
}
#endif

// A row holding NaN or +-Inf has no int8 representation: scale NaN (so that every output of the
// token is NaN, never a finite guess), q 0 and zero point 0. sparsekit/ops/reference.py agrees.
inline void nonfinite_row(const QuantizeArgs& a, int64_t m, int8_t* q) {
  std::memset(q, 0, static_cast<size_t>(a.K));
  a.scale[m] = std::numeric_limits<float>::quiet_NaN();
  a.zero_point[m] = 0;
}

template <DType XD>
void quantize_rows_t(const QuantizeArgs& a, int64_t m0, int64_t m1) {
  using S = typename Elem<XD>::storage;
  const int64_t K = a.K;
  for (int64_t m = m0; m < m1; ++m) {
    const S* x = static_cast<const S*>(a.x) + m * a.ldx;
    int8_t* q = a.q + m * a.ldq;
    int64_t k = 0;
    if (a.symmetric) {
      float amax = 0.f;
      bool finite = true;
#if SK_I8_LEVEL == 1
      if (K >= 8) {
        const __m256 sign = _mm256_set1_ps(-0.f), inf = _mm256_set1_ps(INFINITY);
        __m256 mx = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (; k + 8 <= K; k += 8) {
          const __m256 v = _mm256_andnot_ps(sign, load8x<XD>(x + k));
          mx = _mm256_max_ps(mx, v);
          bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, inf, _CMP_NLT_UQ));  // NaN or Inf
        }
        amax = hmax8(mx);
        finite = _mm256_movemask_ps(bad) == 0;
      }
#endif
      for (; k < K; ++k) {
        const float v = std::fabs(Elem<XD>::load(x, k));
        finite = finite && std::isfinite(v);
        amax = v > amax ? v : amax;
      }
      if (!finite) {
        nonfinite_row(a, m, q);
        continue;
      }
      const float scale = amax > 0.f ? amax / 127.0f : 1.0f;
      k = 0;
#if SK_I8_LEVEL == 1
      {
        const __m256 sv = _mm256_set1_ps(scale), z = _mm256_setzero_ps();
        const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
        for (; k + 8 <= K; k += 8) quant8(load8x<XD>(x + k), sv, z, lo, hi, q + k);
      }
#endif
      for (; k < K; ++k) q[k] = to_i8(std::nearbyint(Elem<XD>::load(x, k) / scale), -127.f, 127.f);
      a.scale[m] = scale;
      a.zero_point[m] = 0;
    } else {
      float lo = 0.f, hi = 0.f;
      bool finite = true;
#if SK_I8_LEVEL == 1
      if (K >= 8) {
        const __m256 sign = _mm256_set1_ps(-0.f), inf = _mm256_set1_ps(INFINITY);
        __m256 mn = _mm256_setzero_ps(), mx = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (; k + 8 <= K; k += 8) {
          const __m256 v = load8x<XD>(x + k);
          mn = _mm256_min_ps(mn, v);
          mx = _mm256_max_ps(mx, v);
          bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_andnot_ps(sign, v), inf, _CMP_NLT_UQ));
        }
        lo = hmin8(mn);
        hi = hmax8(mx);
        finite = _mm256_movemask_ps(bad) == 0;
      }
#endif
      for (; k < K; ++k) {
        const float v = Elem<XD>::load(x, k);
        finite = finite && std::isfinite(v);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
      if (!finite) {
        nonfinite_row(a, m, q);
        continue;
      }
      float scale = (hi - lo) / 255.0f;
      if (std::isinf(scale)) scale = hi / 255.0f - lo / 255.0f;  // hi - lo overflowed float32
      if (!(scale > 0.f)) scale = 1.0f;
      float zp = std::nearbyint(-128.0f - lo / scale);
      zp = zp < -128.f ? -128.f : (zp > 127.f ? 127.f : zp);
      k = 0;
#if SK_I8_LEVEL == 1
      {
        const __m256 sv = _mm256_set1_ps(scale), zv = _mm256_set1_ps(zp);
        const __m256 lov = _mm256_set1_ps(-128.f), hiv = _mm256_set1_ps(127.f);
        for (; k + 8 <= K; k += 8) quant8(load8x<XD>(x + k), sv, zv, lov, hiv, q + k);
      }
#endif
      for (; k < K; ++k) q[k] = to_i8(std::nearbyint(Elem<XD>::load(x, k) / scale) + zp, -128.f, 127.f);
      a.scale[m] = scale;
      a.zero_point[m] = static_cast<int32_t>(zp);
    }
  }
}
#endif  // SK_I8_LEVEL <= 1

}  // namespace

// Levels 2 and 3: the activations as vpdpbusd's unsigned operand, a ^ 0x80 = a + 128, written
// once per call into a buffer (M rows of K bytes, 64-byte aligned rows) that every chunk then
// reads, instead of one xor per activation load in the micro-kernels. Up to 2 MiB the buffer is
// per thread and kept between calls; a larger one (long prompts) is `own`'s, freed with it.
// Returns g with a and lda pointing at the buffer; other levels return g unchanged.
GemmView offset_rows(GemmView g, ScratchBuf& own) {
#if SK_I8_LEVEL >= 2
  const int64_t ld = (g.K + 63) / 64 * 64;
  const size_t bytes = static_cast<size_t>(max64(g.M * ld, 1));
  int8_t* u = bytes <= (size_t(2) << 20) ? thread_scratch<int8_t, 2>(bytes) : static_cast<int8_t*>(own.get(bytes));
  for (int64_t m = 0; m < g.M; ++m) {
    const int8_t* src = g.a + m * g.lda;
    int8_t* dst = u + m * ld;
    int64_t k = 0;
    for (; k + kW <= g.K; k += kW) {
#if SK_I8_LEVEL == 3
      _mm512_store_si512(dst + k, _mm512_xor_si512(_mm512_loadu_si512(src + k), _mm512_set1_epi8(-128)));
#else
      _mm256_store_si256(reinterpret_cast<__m256i*>(dst + k), _mm256_xor_si256(ld_b(src + k), _mm256_set1_epi8(-128)));
#endif
    }
    for (; k < g.K; ++k) dst[k] = static_cast<int8_t>(src[k] ^ 0x80);
  }
  g.a = u;
  g.lda = ld;
#else
  (void)own;
#endif
  return g;
}

// ==========================================================================================
// entry points
// ==========================================================================================
void int8_gemm_rows(const Int8GemmArgs& a, int64_t n0, int64_t n1) {
  if (a.M <= 0 || n0 >= n1) return;
  ScratchBuf own;
  const GemmView g = offset_rows({a.M, a.K, a.a, a.lda, &a.ep, kOffset || a.ep.x_zero != nullptr}, own);
  const EpiFn epi = pick_epi(a.ep);
  Scratch s;
  const int64_t NC = chunk_rows(a.K);
  for (int64_t nc0 = n0; nc0 < n1; nc0 += NC) {
    const int64_t nlen = min64(NC, n1 - nc0);
    bool rs_ready = false;
    if (g.need_rs && a.ep.b_rowsum) {
      std::memcpy(s.rs, a.ep.b_rowsum + nc0, static_cast<size_t>(nlen) * sizeof(int32_t));
      rs_ready = true;
    }
    const int64_t next_rows = min64(NC, n1 - nc0 - nlen);  // rows of the following chunk
    gemm_chunk(g, epi, nc0, nlen, a.b + nc0 * a.ldb, a.ldb, rs_ready, s, a.b + (nc0 + nlen) * a.ldb,
               next_rows > 0 ? (next_rows - 1) * a.ldb + a.K : 0);
  }
}

void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n0, int64_t n1) {
  if (a.M <= 0 || n0 >= n1) return;
  ScratchBuf own;
  const GemmView g = offset_rows({a.M, a.K, a.x, a.ldx, &a.ep, kOffset || a.ep.x_zero != nullptr}, own);
  const EpiFn epi = pick_epi(a.ep);
  Scratch s;
  const int64_t NC = min64(chunk_rows(a.K), n1 - n0);
  const int64_t half = a.K / 2, mbytes = (a.K + 7) / 8;
#if SK_I8_LEVEL == 3
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi");
  if (vbmi && g.M <= kS24DirectMaxM && a.K % 4 == 0) {
    S24Chunk c{g.a, g.lda, a.K, nullptr, nullptr, mbytes, 0, max64(1, (int64_t(64) << 10) / max64(half, 1)),
               s.acc, kNCMax, s.rs, false};
    for (int64_t nc0 = n0; nc0 < n1; nc0 += kNCMax) {
      const int64_t nlen = min64(kNCMax, n1 - nc0);
      load_bias(a.ep, nc0, nlen, s.bias_f);
      const bool rs_ready = g.need_rs && a.ep.b_rowsum;
      if (rs_ready) std::memcpy(s.rs, a.ep.b_rowsum + nc0, static_cast<size_t>(nlen) * sizeof(int32_t));
      c.vals = a.values + nc0 * half;
      c.mt = a.meta + nc0 * mbytes;
      c.avail = n1 - nc0;
      for (int64_t m0 = 0; m0 < g.M; m0 += kMR) {  // panels of up to kMR activation rows
        const int mr = static_cast<int>(min64(kMR, g.M - m0));
        c.a = g.a + m0 * g.lda;
        c.rs_now = g.need_rs && !rs_ready && m0 == 0;
        switch (mr) {
          case 1: s24_direct_chunk<1>(c, nlen); break;
          case 2: s24_direct_chunk<2>(c, nlen); break;
          case 3: s24_direct_chunk<3>(c, nlen); break;
          default: s24_direct_chunk<4>(c, nlen); break;
        }
        epi(g, m0, mr, nc0, nlen, s.acc, kNCMax, s.rs, s.bias_f);
      }
    }
    return;
  }
#endif
  int8_t* dense = thread_scratch<int8_t, 0>(static_cast<size_t>(max64(NC * a.K, 1)));  // the decompressed chunk
#if SK_I8_LEVEL != 3
  const bool vbmi = false;
#endif
  for (int64_t nc0 = n0; nc0 < n1; nc0 += NC) {
    const int64_t nlen = min64(NC, n1 - nc0);
    for (int64_t j = 0; j < nlen; ++j)
      decompress_row(a.values + (nc0 + j) * half, a.meta + (nc0 + j) * mbytes, a.K, dense + j * a.K, vbmi);
    bool rs_ready = false;
    if (g.need_rs && a.ep.b_rowsum) {
      std::memcpy(s.rs, a.ep.b_rowsum + nc0, static_cast<size_t>(nlen) * sizeof(int32_t));
      rs_ready = true;
    }
    // the values of the following chunk come in while this one computes (its meta, 1/4 of that, is
    // left to the hardware prefetcher)
    const int64_t next_rows = min64(NC, n1 - nc0 - nlen);
    gemm_chunk(g, epi, nc0, nlen, dense, a.K, rs_ready, s, a.values + (nc0 + nlen) * half,
               next_rows > 0 ? next_rows * half : 0);
  }
}

#if SK_I8_LEVEL != 2
void int8_weight_only_rows(const Int8WeightOnlyArgs& a, int64_t n0, int64_t n1) {
  if (a.M <= 0 || n0 >= n1) return;
  switch (a.out_dtype) {
    case DType::f32: wo_run_b<DType::f32>(a, n0, n1); break;
    case DType::bf16: wo_run_b<DType::bf16>(a, n0, n1); break;
    case DType::f16: wo_run_b<DType::f16>(a, n0, n1); break;
  }
}
#endif

#if SK_I8_LEVEL <= 1
void quantize_per_token_rows(const QuantizeArgs& a, int64_t m0, int64_t m1) {
  if (m0 >= m1) return;
  switch (a.x_dtype) {
    case DType::f32: quantize_rows_t<DType::f32>(a, m0, m1); break;
    case DType::bf16: quantize_rows_t<DType::bf16>(a, m0, m1); break;
    case DType::f16: quantize_rows_t<DType::f16>(a, m0, m1); break;
  }
}
#endif

}  // namespace SK_I8_NS
}  // namespace core
}  // namespace sparsekit
