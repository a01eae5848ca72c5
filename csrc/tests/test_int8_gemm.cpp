// Unit tests of the torch-free int8 cores against naive exact references, for every instruction
// set the CPU has: int8 GEMM (raw int32 and the fused epilogue, bit for bit), 2:4 + int8,
// per-token quantization (byte for byte) and weight-only (float tolerance).
//
//   test_int8_gemm            the tests
//   test_int8_gemm --bench    also times 4096 x 4096 at M = 1, 16, 128 on 1 and 2 threads
//                             (SPARSEKIT_BENCH=1 does the same)
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/int8_gemm.h"

using namespace sparsekit::core;

static int g_failures = 0;
static int g_cases = 0;
#define EXPECT(cond, ...)                                                      \
  do {                                                                         \
    if (!(cond)) {                                                             \
      ++g_failures;                                                            \
      std::fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                       \
      std::fprintf(stderr, "\n");                                              \
    }                                                                          \
  } while (0)

static const Int8Isa kAllIsas[] = {Int8Isa::kGeneric, Int8Isa::kAvx2, Int8Isa::kAvxVnni, Int8Isa::kAvx512Vnni};
static const DType kTypes[] = {DType::f32, DType::bf16, DType::f16};
static const char* dname(DType d) { return d == DType::f32 ? "f32" : (d == DType::bf16 ? "bf16" : "f16"); }

static std::vector<Int8Isa> supported_isas() {
  std::vector<Int8Isa> out;
  for (Int8Isa isa : kAllIsas) {
    if (resolve_int8_isa(isa) == isa) {
      out.push_back(isa);
    } else {
      std::printf("skipping isa %s: not supported by this CPU\n", int8_isa_name(isa));
    }
  }
  return out;
}

// The reference epilogue, in the order of sparsekit/ops/reference.py int8_mm: exact int64 sum,
// minus zero point times row sum, to float32, times x_scale, times w_scale, plus bias, rounded
// into the output type. The test is compiled for the baseline target (no FMA to contract into).
static float ref_epilogue(int64_t acc, float xs, float ws, bool has_bias, float b) {
  volatile float f = static_cast<float>(acc);
  f = f * xs;
  f = f * ws;
  if (has_bias) f = f + b;
  return f;
}
static uint32_t out_bits(DType d, float v) {
  if (d == DType::bf16) return f32_to_bf16(v);
  if (d == DType::f16) return f32_to_f16(v);
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

// Output buffers of any type, prefilled with a sentinel so that writes outside [n0, n1) and into
// the padding show.
struct OutBuf {
  DType d;
  std::vector<float> f;
  std::vector<uint16_t> h;
  OutBuf(DType d_, size_t n) : d(d_), f(d_ == DType::f32 ? n : 0, 12345.f), h(d_ == DType::f32 ? 0 : n, 0x7777) {}
  void* ptr() { return d == DType::f32 ? static_cast<void*>(f.data()) : h.data(); }
  uint32_t bits(size_t i) const {
    if (d != DType::f32) return h[i];
    uint32_t u;
    std::memcpy(&u, &f[i], 4);
    return u;
  }
  bool untouched(size_t i) const { return d == DType::f32 ? f[i] == 12345.f : h[i] == 0x7777; }
};

struct Bias {
  std::vector<float> f;       // the bias as float (the value the kernel sees)
  std::vector<uint16_t> h;
  const void* ptr(DType d) const { return d == DType::f32 ? static_cast<const void*>(f.data()) : h.data(); }
};
static Bias make_bias(int64_t N, DType d, std::mt19937& rng) {
  std::uniform_real_distribution<float> U(-3.f, 3.f);
  Bias b;
  b.f.resize(N);
  b.h.resize(N);
  for (int64_t n = 0; n < N; ++n) {
    const float v = U(rng);
    if (d == DType::f32) {
      b.f[n] = v;
    } else {
      b.h[n] = d == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
      b.f[n] = d == DType::bf16 ? bf16_to_f32(b.h[n]) : f16_to_f32(b.h[n]);
    }
  }
  return b;
}

enum class Fill { kRandom, kMin, kMax, kSmall };
static void fill_i8(std::vector<int8_t>& v, Fill f, std::mt19937& rng) {
  std::uniform_int_distribution<int> U(-128, 127), S(-3, 3);
  for (auto& x : v) {
    switch (f) {
      case Fill::kRandom: x = static_cast<int8_t>(U(rng)); break;
      case Fill::kMin: x = -128; break;
      case Fill::kMax: x = 127; break;
      case Fill::kSmall: x = static_cast<int8_t>(S(rng)); break;
    }
  }
}

// ------------------------------------------------------------------------------------------
// int8 GEMM and 2:4 + int8
struct GemmCase {
  int64_t M, N, K;
  Fill fa, fb;
  bool raw;  // int32 output instead of the epilogue
  DType od;
  bool bias, zero, rowsum_given;
  int64_t pad;  // extra leading-dimension padding of every operand
  bool sparse;  // the weight in the 2:4 layout
};

static void run_gemm_case(const GemmCase& c, Int8Isa isa, std::mt19937& rng) {
  ++g_cases;
  const int64_t M = c.M, N = c.N, K = c.K;
  const int64_t lda = K + c.pad, ldb = K + c.pad, ldo = N + c.pad;
  std::vector<int8_t> A(static_cast<size_t>(std::max<int64_t>(M * lda, 1)));
  std::vector<int8_t> B(static_cast<size_t>(std::max<int64_t>(N * ldb, 1)));
  fill_i8(A, c.fa, rng);
  fill_i8(B, c.fb, rng);
  // 2:4: keep two of each group of four (positions from random nibbles), pack values and meta
  std::vector<int8_t> vals;
  std::vector<uint8_t> meta;
  if (c.sparse) {
    const int64_t G = K / 4, mb = (K + 7) / 8;
    vals.assign(static_cast<size_t>(std::max<int64_t>(N * (K / 2), 1)), 0);
    meta.assign(static_cast<size_t>(std::max<int64_t>(N * mb, 1)), 0);
    // the six valid position pairs, and (rarely) a malformed nibble naming one position twice,
    // which keeps the second value (as the reference's scatter_ does)
    std::uniform_int_distribution<int> P(0, 63);
    static const int pairs[8][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}, {1, 1}, {3, 3}};
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        const int r = P(rng);
        const int* p = pairs[r < 62 ? r % 6 : 6 + (r & 1)];
        int8_t* row = &B[n * ldb + 4 * g];
        const int8_t v0 = row[p[0] ^ 1], v1 = row[p[1]];
        for (int i = 0; i < 4; ++i) row[i] = 0;  // the dense weight the reference sees
        row[p[0]] = v0;
        row[p[1]] = v1;
        vals[n * (K / 2) + 2 * g] = v0;
        vals[n * (K / 2) + 2 * g + 1] = v1;
        meta[n * mb + g / 2] |= static_cast<uint8_t>((p[0] | p[1] << 2) << (4 * (g & 1)));
      }
    }
  }
  std::vector<float> xs(M), ws(N);
  std::vector<int32_t> xz(M), rowsum(N);
  std::uniform_real_distribution<float> S(1e-4f, 2e-2f);
  std::uniform_int_distribution<int> Z(-128, 127);
  for (auto& v : xs) v = S(rng);
  for (auto& v : ws) v = S(rng);
  for (auto& v : xz) v = Z(rng);
  for (int64_t n = 0; n < N; ++n) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += B[n * ldb + k];
    rowsum[n] = s;
  }
  const Bias bias = make_bias(N, c.od, rng);
  const size_t osize = static_cast<size_t>(std::max<int64_t>(M * ldo, 1));
  OutBuf y(c.od, osize);
  std::vector<int32_t> C(osize, 0x5a5a5a5a);

  Int8Epilogue ep;
  ep.x_zero = c.zero ? xz.data() : nullptr;
  if (c.rowsum_given) ep.b_rowsum = rowsum.data();
  if (c.raw) {
    ep.c = C.data();
    ep.ldc = ldo;
  } else {
    ep.x_scale = xs.data();
    ep.w_scale = ws.data();
    ep.bias = c.bias ? bias.ptr(c.od) : nullptr;
    ep.y = y.ptr();
    ep.ldy = ldo;
    ep.out_dtype = c.od;
  }
  // three uneven column ranges, as threads would split them
  const int64_t s1 = N / 3, s2 = N - N / 5;
  const int64_t cuts[4] = {0, s1, s2, N};
  for (int r = 0; r < 3; ++r) {
    if (c.sparse) {
      Sparse24Int8Args a;
      a.M = M; a.N = N; a.K = K;
      a.x = A.data(); a.ldx = lda;
      a.values = vals.data(); a.meta = meta.data();
      a.ep = ep;
      sparse24_int8_rows(a, cuts[r], cuts[r + 1], isa);
    } else {
      Int8GemmArgs a;
      a.M = M; a.N = N; a.K = K;
      a.a = A.data(); a.lda = lda;
      a.b = B.data(); a.ldb = ldb;
      a.ep = ep;
      int8_gemm_rows(a, cuts[r], cuts[r + 1], isa);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < ldo; ++n) {
      const size_t i = static_cast<size_t>(m * ldo + n);
      if (n >= N) {  // padding
        if (c.raw ? C[i] != 0x5a5a5a5a : !y.untouched(i)) {
          EXPECT(false, "isa=%s padding written at m=%lld n=%lld", int8_isa_name(isa), (long long)m, (long long)n);
          return;
        }
        continue;
      }
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int64_t(A[m * lda + k]) * int64_t(B[n * ldb + k]);
      if (c.zero) acc -= int64_t(xz[m]) * rowsum[n];
      bool ok;
      long long got, want;
      if (c.raw) {
        want = static_cast<int32_t>(static_cast<uint32_t>(acc));
        got = C[i];
        ok = got == want;
      } else {
        want = out_bits(c.od, ref_epilogue(acc, xs[m], ws[n], c.bias, bias.f[n]));
        got = y.bits(i);
        ok = got == want;
      }
      if (!ok) {
        EXPECT(false,
               "isa=%s %s M=%lld N=%lld K=%lld raw=%d od=%s bias=%d zero=%d rowsum=%d pad=%lld m=%lld n=%lld "
               "acc=%lld got=0x%llx want=0x%llx",
               int8_isa_name(isa), c.sparse ? "sparse24" : "dense", (long long)M, (long long)N, (long long)K,
               int(c.raw), dname(c.od), int(c.bias), int(c.zero), int(c.rowsum_given), (long long)c.pad,
               (long long)m, (long long)n, (long long)acc, got, want);
        return;
      }
    }
  }
}

static void test_gemm(const std::vector<Int8Isa>& isas, std::mt19937& rng) {
  const int64_t Ms[] = {0, 1, 2, 3, 5, 17, 33, 70};
  const int64_t Ks[] = {1, 3, 15, 17, 31, 33, 63, 65, 100, 129, 1000};
  const int64_t Ks24[] = {4, 12, 20, 36, 60, 68, 100, 260, 1028};
  for (Int8Isa isa : isas) {
    for (int64_t M : Ms) {
      for (int64_t K : Ks) {
        run_gemm_case({M, 37, K, Fill::kRandom, Fill::kRandom, true, DType::f32, false, false, false, 0, false}, isa,
                      rng);
        run_gemm_case({M, 19, K, Fill::kRandom, Fill::kRandom, false, DType::f32, true, true, false, 3, false}, isa,
                      rng);
      }
      for (DType od : kTypes)
        for (int bias = 0; bias < 2; ++bias)
          for (int zero = 0; zero < 2; ++zero) {
            run_gemm_case({M, 41, 77, Fill::kRandom, Fill::kRandom, false, od, bool(bias), bool(zero), false, 0, false},
                          isa, rng);
            run_gemm_case({M, 23, 100, Fill::kRandom, Fill::kRandom, false, od, bool(bias), bool(zero), true, 5, true},
                          isa, rng);
          }
      for (int64_t K : Ks24) {
        run_gemm_case({M, 29, K, Fill::kRandom, Fill::kRandom, true, DType::f32, false, false, false, 0, true}, isa, rng);
        run_gemm_case({M, 13, K, Fill::kRandom, Fill::kRandom, false, DType::bf16, true, true, false, 1, true}, isa,
                      rng);
      }
      run_gemm_case({M, 7, 1000, Fill::kRandom, Fill::kRandom, true, DType::f32, false, true, false, 0, false}, isa,
                    rng);  // raw with zero point
    }
    // extremes: all -128 x -128 (largest products), 127 x -128, with and without zero points
    for (int64_t K : {int64_t(64), int64_t(999), int64_t(4097)}) {
      for (Fill fa : {Fill::kMin, Fill::kMax})
        for (Fill fb : {Fill::kMin, Fill::kMax}) {
          run_gemm_case({5, 9, K, fa, fb, true, DType::f32, false, false, false, 0, false}, isa, rng);
          run_gemm_case({5, 9, K, fa, fb, false, DType::f32, true, true, false, 0, false}, isa, rng);
          run_gemm_case({5, 9, K & ~int64_t(3), fa, fb, false, DType::f16, true, true, false, 0, true}, isa, rng);
        }
    }
    // the largest K whose raw sums fit in int32 (128 * 128 * K < 2**31), and past kInt32SafeK
    // with zero points, where the correction needs int64 and the offset sums wrap
    run_gemm_case({2, 3, 131071, Fill::kMin, Fill::kMin, true, DType::f32, false, false, false, 0, false}, isa, rng);
    run_gemm_case({3, 5, 70001, Fill::kMax, Fill::kMin, false, DType::f32, false, true, false, 0, false}, isa, rng);
    run_gemm_case({3, 5, 70001, Fill::kRandom, Fill::kMin, false, DType::bf16, true, true, false, 0, false}, isa, rng);
    // many chunks of weight rows (N > the chunk) and M past several panels
    run_gemm_case({9, 700, 300, Fill::kRandom, Fill::kRandom, false, DType::f32, true, true, false, 2, false}, isa, rng);
    run_gemm_case({9, 700, 300, Fill::kRandom, Fill::kRandom, false, DType::bf16, false, false, false, 2, true}, isa,
                  rng);
    // several chunks inside one thread's range (K = 4097: chunks of 32 rows; ranges of 33, 47, 20
    // rows): the next chunk's prefetch, a short last chunk, a row stride past K
    run_gemm_case({5, 100, 4097, Fill::kRandom, Fill::kRandom, false, DType::f32, true, false, false, 3, false}, isa,
                  rng);
    run_gemm_case({1, 100, 4097, Fill::kRandom, Fill::kRandom, true, DType::f32, false, false, true, 0, false}, isa, rng);
    // 2:4 without decompression (AVX-512 VBMI, M <= 8): two full panels of activation rows, 4 + 2, and 1 (one row
    // at a time); windows of 128 columns with a short last one (K = 4100: 32 windows and one group); more rows than
    // a chunk of 256 in one range, with and without given row sums
    run_gemm_case({8, 700, 1028, Fill::kRandom, Fill::kRandom, false, DType::f32, true, true, false, 0, true}, isa,
                  rng);
    run_gemm_case({6, 40, 4100, Fill::kRandom, Fill::kRandom, true, DType::f32, false, false, true, 2, true}, isa,
                  rng);
    run_gemm_case({1, 900, 516, Fill::kRandom, Fill::kRandom, false, DType::bf16, false, true, true, 0, true}, isa,
                  rng);
    // offset activations past the per-thread buffer's 2 MiB (levels 2 and 3 allocate them per call)
    run_gemm_case({70, 3, 32768, Fill::kRandom, Fill::kRandom, false, DType::bf16, true, true, false, 1, false}, isa,
                  rng);
    // K == 0: y = bias (or 0)
    run_gemm_case({4, 13, 0, Fill::kRandom, Fill::kRandom, false, DType::f32, true, true, false, 0, false}, isa, rng);
    run_gemm_case({4, 13, 0, Fill::kRandom, Fill::kRandom, false, DType::f16, true, false, false, 0, true}, isa, rng);
  }
}

// Every isa must give the same bits: spot-check one shape across them.
static void test_isas_agree(const std::vector<Int8Isa>& isas, std::mt19937& rng) {
  const int64_t M = 11, N = 53, K = 333;
  std::vector<int8_t> A(M * K), B(N * K);
  fill_i8(A, Fill::kRandom, rng);
  fill_i8(B, Fill::kRandom, rng);
  std::vector<float> xs(M, 0.01f), ws(N, 0.02f);
  std::vector<int32_t> xz(M, 3);
  std::vector<std::vector<uint16_t>> outs;
  for (Int8Isa isa : isas) {
    std::vector<uint16_t> y(M * N);
    Int8GemmArgs a;
    a.M = M; a.N = N; a.K = K;
    a.a = A.data(); a.lda = K; a.b = B.data(); a.ldb = K;
    a.ep.x_scale = xs.data(); a.ep.w_scale = ws.data(); a.ep.x_zero = xz.data();
    a.ep.y = y.data(); a.ep.ldy = N; a.ep.out_dtype = DType::bf16;
    int8_gemm_rows(a, 0, N, isa);
    outs.push_back(y);
  }
  ++g_cases;
  for (size_t i = 1; i < outs.size(); ++i) EXPECT(outs[i] == outs[0], "isa %s differs from generic", int8_isa_name(isas[i]));
}

// ------------------------------------------------------------------------------------------
// quantize_per_token: byte-exact against the scalar formula of LAYOUTS.md / reference.py
static void ref_quantize(const std::vector<float>& x, int64_t M, int64_t K, int64_t ldx, bool sym, std::vector<int8_t>& q,
                         std::vector<float>& scale, std::vector<int32_t>& zp) {
  q.assign(M * K, 0);
  scale.assign(M, 0.f);
  zp.assign(M, 0);
  for (int64_t m = 0; m < M; ++m) {
    const float* r = &x[m * ldx];
    if (sym) {
      float amax = 0.f;
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(r[k]));
      const volatile float s = amax > 0.f ? amax / 127.0f : 1.0f;
      for (int64_t k = 0; k < K; ++k) {
        const volatile float d = r[k] / s;
        q[m * K + k] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(d))));
      }
      scale[m] = s;
    } else {
      float lo = 0.f, hi = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        lo = std::min(lo, r[k]);
        hi = std::max(hi, r[k]);
      }
      volatile float s = (hi - lo) / 255.0f;
      if (!(s > 0.f)) s = 1.0f;
      const volatile float t = lo / s;
      const float z = std::min(127.f, std::max(-128.f, std::nearbyint(-128.0f - t)));
      for (int64_t k = 0; k < K; ++k) {
        const volatile float d = r[k] / s;
        q[m * K + k] = static_cast<int8_t>(std::min(127.f, std::max(-128.f, std::nearbyint(d) + z)));
      }
      scale[m] = s;
      zp[m] = static_cast<int32_t>(z);
    }
  }
}

static void run_quant_case(const std::vector<float>& xin, int64_t M, int64_t K, int64_t pad, DType xd, bool sym,
                           Int8Isa isa, const char* what) {
  ++g_cases;
  const int64_t ldx = K + pad, ldq = K + pad;
  // the input in its type, and the float values the kernel sees
  std::vector<float> xf(static_cast<size_t>(std::max<int64_t>(M * ldx, 1)), 0.f);
  std::vector<uint16_t> xh(xf.size(), 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      const float v = xin[m * K + k];
      const size_t i = m * ldx + k;
      if (xd == DType::f32) {
        xf[i] = v;
      } else {
        xh[i] = xd == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v);
        xf[i] = xd == DType::bf16 ? bf16_to_f32(xh[i]) : f16_to_f32(xh[i]);
      }
    }
  std::vector<int8_t> rq;
  std::vector<float> rs;
  std::vector<int32_t> rz;
  ref_quantize(xf, M, K, ldx, sym, rq, rs, rz);

  std::vector<int8_t> q(static_cast<size_t>(std::max<int64_t>(M * ldq, 1)), 0x55);
  std::vector<float> s(M, -1.f);
  std::vector<int32_t> z(M, 999);
  QuantizeArgs a;
  a.M = M; a.K = K;
  a.x = xd == DType::f32 ? static_cast<const void*>(xf.data()) : xh.data();
  a.ldx = ldx; a.x_dtype = xd; a.symmetric = sym;
  a.q = q.data(); a.ldq = ldq; a.scale = s.data(); a.zero_point = z.data();
  const int64_t split = M / 2;
  quantize_per_token_rows(a, 0, split, isa);
  quantize_per_token_rows(a, split, M, isa);
  for (int64_t m = 0; m < M; ++m) {
    uint32_t sb, rb;
    std::memcpy(&sb, &s[m], 4);
    std::memcpy(&rb, &rs[m], 4);
    if (sb != rb || z[m] != rz[m]) {
      EXPECT(false, "quantize %s isa=%s xd=%s sym=%d m=%lld scale %.9g vs %.9g zp %d vs %d", what, int8_isa_name(isa),
             dname(xd), int(sym), (long long)m, s[m], rs[m], z[m], rz[m]);
      return;
    }
    for (int64_t k = 0; k < ldq; ++k) {
      const int8_t got = q[m * ldq + k];
      if (k >= K) {
        if (got != 0x55) {
          EXPECT(false, "quantize wrote padding");
          return;
        }
        continue;
      }
      if (got != rq[m * K + k]) {
        EXPECT(false, "quantize %s isa=%s xd=%s sym=%d M=%lld K=%lld m=%lld k=%lld x=%.9g got %d want %d", what,
               int8_isa_name(isa), dname(xd), int(sym), (long long)M, (long long)K, (long long)m, (long long)k,
               xf[m * ldx + k], got, rq[m * K + k]);
        return;
      }
    }
  }
}

static void test_quantize(const std::vector<Int8Isa>& isas, std::mt19937& rng) {
  const int64_t Ms[] = {0, 1, 2, 3, 5, 17, 33, 70};
  const int64_t Ks[] = {0, 1, 7, 8, 9, 31, 100, 1001};
  for (Int8Isa isa : isas) {
    if (isa == Int8Isa::kAvxVnni || isa == Int8Isa::kAvx512Vnni) continue;  // the AVX2 code serves them
    for (int64_t M : Ms)
      for (int64_t K : Ks)
        for (DType xd : kTypes)
          for (int sym = 0; sym < 2; ++sym) {
            std::vector<float> x(M * K);
            std::normal_distribution<float> Nd(0.f, 1.f);
            std::uniform_real_distribution<float> U(0.5f, 5.f);
            for (int64_t m = 0; m < M; ++m) {
              const float mag = U(rng), shift = (m % 3 == 0) ? U(rng) : 0.f;  // some one-sided rows
              for (int64_t k = 0; k < K; ++k) x[m * K + k] = (m % 7 == 4) ? 0.f : Nd(rng) * mag + shift;
            }
            run_quant_case(x, M, K, M % 2 ? 3 : 0, xd, bool(sym), isa, "random");
          }
    // ties at .5: scale 1 (symmetric amax 127; asymmetric hi - lo = 255) and values k + 0.5
    {
      const int64_t K = 21;
      std::vector<float> x(2 * K);
      const float ties[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f, -3.5f, 126.5f, -126.5f, 100.5f};
      for (int64_t k = 0; k < K; ++k) x[k] = k == 0 ? 127.f : ties[k % 11];
      // asymmetric: lo = -100.5, hi = 154.5 -> scale 1, zero point round(-27.5) = -28
      for (int64_t k = 0; k < K; ++k) x[K + k] = k == 0 ? -100.5f : (k == 1 ? 154.5f : ties[k % 11]);
      for (int sym = 0; sym < 2; ++sym) run_quant_case(x, 2, K, 0, DType::f32, bool(sym), isa, "ties");
      // a zero point that ties: lo = -99.5, hi = 155.5 -> scale 1, zero point round(-28.5) = -28
      std::vector<float> y(K);
      for (int64_t k = 0; k < K; ++k) y[k] = k == 0 ? -99.5f : (k == 1 ? 155.5f : ties[k % 11] * 0.5f);
      run_quant_case(y, 1, K, 0, DType::f32, false, isa, "zp tie");
    }
    // all-zero rows, a single nonzero, constant rows, tiny and huge magnitudes
    {
      const int64_t K = 37;
      std::vector<float> x(6 * K, 0.f);
      x[1 * K + 5] = -3.f;
      for (int64_t k = 0; k < K; ++k) x[2 * K + k] = 0.25f;
      for (int64_t k = 0; k < K; ++k) x[3 * K + k] = -1e-30f * float(k);
      for (int64_t k = 0; k < K; ++k) x[4 * K + k] = 1e30f * float(k % 5 - 2);
      for (int64_t k = 0; k < K; ++k) x[5 * K + k] = float(k) - 18.f;
      for (int sym = 0; sym < 2; ++sym) run_quant_case(x, 6, K, 1, DType::f32, bool(sym), isa, "edges");
    }
  }
}

// ------------------------------------------------------------------------------------------
// weight-only
static void run_wo_case(int64_t M, int64_t N, int64_t K, DType od, bool has_bias, int64_t pad, Int8Isa isa,
                        std::mt19937& rng) {
  ++g_cases;
  const int64_t ldx = K + pad, ldq = K + pad, ldy = N + pad;
  std::vector<float> x(static_cast<size_t>(std::max<int64_t>(M * ldx, 1)));
  std::uniform_real_distribution<float> U(-1.f, 1.f), S(1e-3f, 2e-2f);
  for (auto& v : x) v = U(rng);
  std::vector<int8_t> q(static_cast<size_t>(std::max<int64_t>(N * ldq, 1)));
  fill_i8(q, Fill::kRandom, rng);
  std::vector<float> ws(N);
  for (auto& v : ws) v = S(rng);
  const Bias bias = make_bias(N, od, rng);
  OutBuf y(od, static_cast<size_t>(std::max<int64_t>(M * ldy, 1)));
  Int8WeightOnlyArgs a;
  a.M = M; a.N = N; a.K = K;
  a.x = x.data(); a.ldx = ldx; a.q = q.data(); a.ldq = ldq; a.w_scale = ws.data();
  a.bias = has_bias ? bias.ptr(od) : nullptr;
  a.y = y.ptr(); a.ldy = ldy; a.out_dtype = od;
  const int64_t s1 = N / 3;
  int8_weight_only_rows(a, 0, s1, isa);
  int8_weight_only_rows(a, s1, N, isa);
  const double tol = od == DType::f32 ? 1e-5 : (od == DType::bf16 ? 8e-3 : 1e-3);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < ldy; ++n) {
      const size_t i = m * ldy + n;
      if (n >= N) {
        if (!y.untouched(i)) {
          EXPECT(false, "weight-only padding written");
          return;
        }
        continue;
      }
      double ref = has_bias ? bias.f[n] : 0.0, mag = std::fabs(ref);
      for (int64_t k = 0; k < K; ++k) {
        const double t = double(x[m * ldx + k]) * double(q[n * ldq + k]) * ws[n];
        ref += t;
        mag += std::fabs(t);
      }
      const double got = od == DType::f32 ? y.f[i] : (od == DType::bf16 ? bf16_to_f32(y.h[i]) : f16_to_f32(y.h[i]));
      if (!(std::fabs(got - ref) <= tol * (mag + 1e-3))) {
        EXPECT(false, "weight-only isa=%s M=%lld N=%lld K=%lld od=%s m=%lld n=%lld got=%.9g ref=%.9g",
               int8_isa_name(isa), (long long)M, (long long)N, (long long)K, dname(od), (long long)m, (long long)n,
               got, ref);
        return;
      }
    }
}

static void test_weight_only(const std::vector<Int8Isa>& isas, std::mt19937& rng) {
  const int64_t Ms[] = {0, 1, 2, 3, 5, 17, 33, 70};
  const int64_t Ks[] = {0, 1, 7, 15, 17, 33, 100, 1000};
  for (Int8Isa isa : isas) {
    if (isa == Int8Isa::kAvxVnni) continue;  // the AVX2 code serves it
    for (int64_t M : Ms) {
      for (int64_t K : Ks) run_wo_case(M, 21, K, DType::f32, true, M % 2 ? 2 : 0, isa, rng);
      for (DType od : kTypes)
        for (int b = 0; b < 2; ++b) run_wo_case(M, 37, 77, od, bool(b), 1, isa, rng);
    }
    run_wo_case(6, 700, 300, DType::bf16, true, 0, isa, rng);  // several chunks
    // K = 4097: chunks of 32 rows, several per range (the next chunk's prefetch), rows padded
    run_wo_case(1, 100, 4097, DType::f32, false, 3, isa, rng);
    run_wo_case(5, 100, 4097, DType::f16, true, 0, isa, rng);
  }
}

// ------------------------------------------------------------------------------------------
// timings (--bench)
static double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
static double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}
// Runs fn(n0, n1) over the columns [0, N), split into `threads` ranges of multiples of 16, reps
// times. Returns the best wall time and the best "busiest thread's CPU time": the machines are
// shared, and the CPU time leaves out the time a thread waited for a core (memory bandwidth and
// caches remain shared, so it is the time on an idle machine only roughly).
struct Timing {
  double wall, cpu;
};
static Timing time_split(int64_t N, int threads, const std::function<void(int64_t, int64_t)>& fn, int reps,
                         const std::function<void()>& before_rep = nullptr) {
  Timing best{1e30, 1e30};
  for (int r = 0; r < reps; ++r) {
    if (before_rep) before_rep();
    std::vector<double> cpu(threads, 0.0);
    const double t0 = now_s();
    std::vector<std::thread> th;
    for (int i = 0; i < threads; ++i) {
      const int64_t a = (N * i / threads) / 16 * 16, b = i + 1 == threads ? N : (N * (i + 1) / threads) / 16 * 16;
      th.emplace_back([&fn, &cpu, i, a, b] {
        const double c0 = thread_cpu_s();
        fn(a, b);
        cpu[i] = thread_cpu_s() - c0;
      });
    }
    for (auto& x : th) x.join();
    best.wall = std::min(best.wall, now_s() - t0);
    best.cpu = std::min(best.cpu, *std::max_element(cpu.begin(), cpu.end()));
  }
  return best;
}

static void bench(const std::vector<Int8Isa>& isas) {
  const int64_t N = 4096, K = 4096;
  std::mt19937 rng(7);
  std::vector<int8_t> B(N * K), vals(N * K / 2);
  std::vector<uint8_t> meta(N * K / 8);
  fill_i8(B, Fill::kRandom, rng);
  fill_i8(vals, Fill::kRandom, rng);
  for (auto& m : meta) m = 0x94;  // (0, 1) and (1, 2)... any valid nibbles
  std::vector<float> ws(N, 0.01f), bias(N, 0.5f);
  std::printf("\ntimings, 4096 x 4096 weight, ms, best of several (weight bytes: int8 16.8 MB, 2:4+int8 10.5 MB)\n"
              "  cpu: CPU time of the busiest thread (leaves out waiting for a core on a shared machine)\n"
              "  M = 1c: M = 1 with the weight coming from memory (4 copies rotated), not from the L3\n");
  std::printf("%-11s %-22s %5s %9s %9s %9s  %s\n", "isa", "op", "M", "1t cpu", "2t cpu", "2t wall",
              "rate at 2t cpu");
  for (int64_t M : {int64_t(1), int64_t(16), int64_t(128)}) {
    std::vector<int8_t> A(M * K);
    fill_i8(A, Fill::kRandom, rng);
    std::vector<float> x(M * K), xs(M, 0.01f), yf(M * N);
    for (auto& v : x) v = std::uniform_real_distribution<float>(-1.f, 1.f)(rng);
    std::vector<uint16_t> yh(M * N);
    std::vector<int32_t> xz(M, 1);
    const int reps = M >= 128 ? 5 : 21;
    const double macs = double(M) * N * K;
    for (Int8Isa isa : isas) {
      auto report = [&](const char* op, const std::function<void(int64_t, int64_t)>& fn, double bytes, double work) {
        const Timing t1 = time_split(N, 1, fn, reps), t2 = time_split(N, 2, fn, reps);
        std::printf("%-11s %-22s %5lld %9.3f %9.3f %9.3f  %.1f GB/s, %.0f GMAC/s\n", int8_isa_name(isa), op,
                    (long long)M, t1.cpu * 1e3, t2.cpu * 1e3, t2.wall * 1e3, bytes / t2.cpu * 1e-9,
                    work / t2.cpu * 1e-9);
      };
      Int8GemmArgs g;
      g.M = M; g.N = N; g.K = K; g.a = A.data(); g.lda = K; g.b = B.data(); g.ldb = K;
      g.ep.x_scale = xs.data(); g.ep.w_scale = ws.data(); g.ep.y = yh.data(); g.ep.ldy = N;
      g.ep.out_dtype = DType::bf16;
      report("int8_mm bf16 out", [&](int64_t a, int64_t b) { int8_gemm_rows(g, a, b, isa); }, double(N) * K, macs);
      Int8GemmArgs gz = g;
      gz.ep.x_zero = xz.data();
      report("int8_mm asym bf16 out", [&](int64_t a, int64_t b) { int8_gemm_rows(gz, a, b, isa); }, double(N) * K, macs);
      Sparse24Int8Args s;
      s.M = M; s.N = N; s.K = K; s.x = A.data(); s.ldx = K; s.values = vals.data(); s.meta = meta.data();
      s.ep = g.ep;
      report("sparse24_int8 bf16 out", [&](int64_t a, int64_t b) { sparse24_int8_rows(s, a, b, isa); },
             double(N) * K * 0.625, macs);
      if (isa != Int8Isa::kAvxVnni) {
        Int8WeightOnlyArgs w;
        w.M = M; w.N = N; w.K = K; w.x = x.data(); w.ldx = K; w.q = B.data(); w.ldq = K; w.w_scale = ws.data();
        w.bias = bias.data(); w.y = yf.data(); w.ldy = N; w.out_dtype = DType::f32;
        report("weight_only f32", [&](int64_t a, int64_t b) { int8_weight_only_rows(w, a, b, isa); }, double(N) * K,
               macs);
      }
      if (M == 1) {  // weights from memory: 4 copies (67 MB) rotated, more than the 32 MB L3 holds
        constexpr int kCopies = 4;
        static std::vector<int8_t> B4, V4;
        static std::vector<uint8_t> M4;
        if (B4.empty()) {
          B4.resize(size_t(kCopies) * N * K);
          V4.resize(size_t(kCopies) * N * K / 2);
          M4.resize(size_t(kCopies) * N * K / 8);
          for (int c = 0; c < kCopies; ++c) {
            std::copy(B.begin(), B.end(), B4.begin() + size_t(c) * N * K);
            std::copy(vals.begin(), vals.end(), V4.begin() + size_t(c) * N * K / 2);
            std::copy(meta.begin(), meta.end(), M4.begin() + size_t(c) * N * K / 8);
          }
        }
        int copy = 0;
        auto next = [&] { copy = (copy + 1) % kCopies; };
        auto report_cold = [&](const char* op, const std::function<void(int64_t, int64_t)>& fn, double bytes) {
          const Timing t1 = time_split(N, 1, fn, reps, next), t2 = time_split(N, 2, fn, reps, next);
          std::printf("%-11s %-22s %5s %9.3f %9.3f %9.3f  %.1f GB/s at 2t wall\n", int8_isa_name(isa), op, "1c",
                      t1.cpu * 1e3, t2.cpu * 1e3, t2.wall * 1e3, bytes / t2.wall * 1e-9);
        };
        report_cold("int8_mm bf16 out", [&](int64_t a, int64_t b) {
          Int8GemmArgs gc = g;
          gc.b = B4.data() + size_t(copy) * N * K;
          int8_gemm_rows(gc, a, b, isa);
        }, double(N) * K);
        report_cold("sparse24_int8 bf16 out", [&](int64_t a, int64_t b) {
          Sparse24Int8Args sc = s;
          sc.values = V4.data() + size_t(copy) * N * K / 2;
          sc.meta = M4.data() + size_t(copy) * N * K / 8;
          sparse24_int8_rows(sc, a, b, isa);
        }, double(N) * K * 0.625);
        if (isa != Int8Isa::kAvxVnni) {
          Int8WeightOnlyArgs w;
          w.M = M; w.N = N; w.K = K; w.x = x.data(); w.ldx = K; w.ldq = K; w.w_scale = ws.data();
          w.bias = bias.data(); w.y = yf.data(); w.ldy = N; w.out_dtype = DType::f32;
          report_cold("weight_only f32", [&](int64_t a, int64_t b) {
            Int8WeightOnlyArgs wc = w;
            wc.q = B4.data() + size_t(copy) * N * K;
            int8_weight_only_rows(wc, a, b, isa);
          }, double(N) * K);
        }
      }
      if (isa == Int8Isa::kGeneric || isa == Int8Isa::kAvx2) {
        std::vector<int8_t> q(M * K);
        std::vector<float> sc(M);
        std::vector<int32_t> zp(M);
        QuantizeArgs qa;
        qa.M = M; qa.K = K; qa.x = x.data(); qa.ldx = K; qa.symmetric = true;
        qa.q = q.data(); qa.ldq = K; qa.scale = sc.data(); qa.zero_point = zp.data();
        const double t =
            time_split(M, 1, [&](int64_t a, int64_t b) { quantize_per_token_rows(qa, a, b, isa); }, reps).cpu;
        std::printf("%-11s %-22s %5lld %9.3f %9s %9s  %.1f GB/s read\n", int8_isa_name(isa), "quantize_per_token f32",
                    (long long)M, t * 1e3, "-", "-", double(M) * K * 4 / t * 1e-9);
      }
    }
  }
}

int main(int argc, char** argv) {
  bool do_bench = false;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--bench") do_bench = true;
  if (const char* e = std::getenv("SPARSEKIT_BENCH")) do_bench = do_bench || std::string(e) == "1";
  std::printf("int8 isa resolved for auto: %s\n", int8_isa_name(resolve_int8_isa(Int8Isa::kAuto)));
  const std::vector<Int8Isa> isas = supported_isas();
  std::mt19937 rng(1234);
  test_gemm(isas, rng);
  test_isas_agree(isas, rng);
  test_quantize(isas, rng);
  test_weight_only(isas, rng);
  std::printf("test_int8_gemm: %d cases, %d failures\n", g_cases, g_failures);
  if (do_bench) bench(isas);
  return g_failures == 0 ? 0 : 1;
}
