// Unit tests of the torch-free CSR core against a float64 reference, for every
// instruction set the CPU has, every value/output type, and awkward sizes.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/csr_spmm.h"

using namespace sparsekit::core;

static int g_failures = 0;
#define EXPECT(cond, ...)                                         \
  do {                                                            \
    if (!(cond)) {                                                \
      ++g_failures;                                               \
      std::fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                          \
      std::fprintf(stderr, "\n");                                 \
    }                                                             \
  } while (0)

static float load_any(DType d, const std::vector<uint16_t>& h, const std::vector<float>& f, size_t i) {
  if (d == DType::f32) return f[i];
  return d == DType::bf16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
}

struct Case {
  int64_t M, N, K;
  double density;
  DType vd, od;
  bool bias;
  int64_t ldxt_pad, ldy_pad;
  bool x16 = false;  // x of bf16 values: staged as xt16 where csr_spmm_bf16_xt says so (its padding NaN)
};

static void run_case(const Case& c, Isa isa, std::mt19937& rng) {
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  std::bernoulli_distribution keep(c.density);
  std::vector<int32_t> crow(c.N + 1, 0), col;
  std::vector<float> vf;
  std::vector<uint16_t> vh;
  for (int64_t n = 0; n < c.N; ++n) {
    // every seventh row is empty on purpose
    for (int64_t k = 0; k < c.K; ++k) {
      if (n % 7 == 3 || !keep(rng)) continue;
      col.push_back(static_cast<int32_t>(k));
      const float v = U(rng);
      vf.push_back(v);
      vh.push_back(c.vd == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v));
    }
    crow[n + 1] = static_cast<int32_t>(col.size());
  }
  const int64_t ldxt = csr_spmm_ldxt(c.M) + c.ldxt_pad, ldy = c.N + c.ldy_pad;
  std::vector<float> xt(static_cast<size_t>(std::max<int64_t>(c.K * ldxt, 1)));
  for (auto& v : xt) v = c.x16 ? bf16_to_f32(f32_to_bf16(U(rng))) : U(rng);
  const bool staged16 = c.x16 && csr_spmm_bf16_xt(c.M, c.vd, DType::bf16, isa);
  std::vector<uint16_t> xt16;
  if (staged16) {
    // the padding columns past M hold NaN: what the kernels read there must never reach y
    xt16.assign(xt.size(), 0x7FC0);
    for (int64_t k = 0; k < c.K; ++k)
      for (int64_t m = 0; m < c.M; ++m) xt16[k * ldxt + m] = f32_to_bf16(xt[k * ldxt + m]);
  }
  std::vector<float> bf(c.N);
  std::vector<uint16_t> bh(c.N);
  for (int64_t n = 0; n < c.N; ++n) {
    bf[n] = U(rng);
    bh[n] = c.od == DType::bf16 ? f32_to_bf16(bf[n]) : f32_to_f16(bf[n]);
  }
  const size_t ysize = static_cast<size_t>(std::max<int64_t>(c.M * ldy, 1));
  std::vector<float> yf(ysize, 12345.f);
  std::vector<uint16_t> yh(ysize, 0x7777);

  CsrSpmmArgs a;
  a.M = c.M; a.N = c.N; a.K = c.K;
  a.crow = crow.data(); a.col = col.data();
  a.values = c.vd == DType::f32 ? static_cast<const void*>(vf.data()) : vh.data();
  a.value_dtype = c.vd;
  if (staged16) a.xt16 = xt16.data();
  else a.xt = xt.data();
  a.ldxt = ldxt;
  a.bias = !c.bias ? nullptr : (c.od == DType::f32 ? static_cast<const void*>(bf.data()) : bh.data());
  a.y = c.od == DType::f32 ? static_cast<void*>(yf.data()) : yh.data();
  a.ldy = ldy; a.out_dtype = c.od;
  // two uneven row ranges, as two threads would split them
  const int64_t split = c.N / 3;
  csr_spmm_rows(a, 0, split, isa);
  csr_spmm_rows(a, split, c.N, isa);

  const double tol = c.od == DType::f32 ? 1e-4 : (c.od == DType::bf16 ? 1.6e-2 : 2e-3);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      double ref = c.bias ? load_any(c.od, bh, bf, n) : 0.0;
      double mag = std::fabs(ref);
      for (int32_t j = crow[n]; j < crow[n + 1]; ++j) {
        const double t = double(load_any(c.vd, vh, vf, j)) * xt[col[j] * ldxt + m];
        ref += t;
        mag += std::fabs(t);
      }
      const size_t i = m * ldy + n;
      const double got = c.od == DType::f32 ? yf[i] : (c.od == DType::bf16 ? bf16_to_f32(yh[i]) : f16_to_f32(yh[i]));
      if (!(std::fabs(got - ref) <= tol * (mag + 1.0))) {
        EXPECT(false, "isa=%s M=%lld N=%lld K=%lld vd=%d od=%d m=%lld n=%lld got=%g ref=%g", isa_name(isa),
               (long long)c.M, (long long)c.N, (long long)c.K, int(c.vd), int(c.od), (long long)m, (long long)n, got, ref);
        return;
      }
    }
  }
  // the padding of y must be untouched
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = c.N; n < ldy; ++n) {
      const size_t i = m * ldy + n;
      EXPECT(c.od == DType::f32 ? yf[i] == 12345.f : yh[i] == 0x7777, "padding written at m=%lld n=%lld", (long long)m,
             (long long)n);
    }
}

static void test_conversions() {
  // every half and bfloat16 bit pattern survives a round trip through float32
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT(std::isnan(f16_to_f32(f32_to_f16(f))), "f16 nan 0x%04x", h);
    } else {
      EXPECT(f32_to_f16(f) == h, "f16 round trip 0x%04x -> %g -> 0x%04x", h, f, f32_to_f16(f));
    }
    const float g = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(g)) EXPECT(f32_to_bf16(g) == h, "bf16 round trip 0x%04x", h);
  }
  // rounding: to nearest, ties to even, overflow to inf
  EXPECT(f32_to_f16(65504.f) == 0x7bff, "max half");
  EXPECT(f32_to_f16(65520.f) == 0x7c00, "overflow to inf");
  EXPECT(f32_to_f16(1.f + 1.f / 2048.f) == 0x3c00, "tie to even down");
  EXPECT(f32_to_f16(1.f + 3.f / 2048.f) == 0x3c02, "tie to even up");
  EXPECT(f32_to_f16(std::ldexp(1.f, -25)) == 0x0000, "half the smallest subnormal ties to zero");
  EXPECT(f32_to_f16(std::ldexp(1.5f, -25)) == 0x0001, "above half rounds up to the smallest subnormal");
  EXPECT(f32_to_bf16(1.f + 1.f / 256.f) == 0x3f80, "bf16 tie to even");
}

int main() {
  test_conversions();
  std::mt19937 rng(1234);
  const Isa isas[] = {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512};
  const DType types[] = {DType::f32, DType::bf16, DType::f16};
  const int64_t Ms[] = {0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 33, 70};  // the AVX-512 core's widths (4, 8, 16) and registers
  int cases = 0;
  for (Isa isa : isas) {
    if (resolve_isa(isa) != isa) {
      std::printf("skipping isa %s: not supported by this CPU\n", isa_name(isa));
      continue;
    }
    for (int64_t M : Ms)
      for (DType vd : types)
        for (DType od : types) {
          run_case({M, 37, 61, 0.3, vd, od, true, 0, 0}, isa, rng);
          run_case({M, 19, 203, 0.9, vd, od, false, 3, 5}, isa, rng);
          cases += 2;
        }
    run_case({4, 13, 40, 0.0, DType::f32, DType::f32, true, 0, 0}, isa, rng);   // all zero: y = bias
    run_case({4, 13, 40, 1.0, DType::f32, DType::f32, false, 0, 0}, isa, rng);  // dense
    run_case({1, 8, 1000, 0.5, DType::f32, DType::f32, true, 0, 0}, isa, rng);  // long rows: gather path
    run_case({3, 5, 0, 0.5, DType::f32, DType::f32, true, 0, 0}, isa, rng);     // K == 0
    // K past one panel (the AVX-512 few-rows core walks K in panels of 1024 columns where the rows are
    // dense enough, else takes the AVX2 tiles): the rows' pieces per panel, rows without kept weights in
    // a panel, a row block cut short (N % 16), each width (M <= 4, <= 8, <= 16)
    run_case({4, 37, 1500, 0.7, DType::f32, DType::f32, true, 0, 0}, isa, rng);
    run_case({2, 21, 2049, 0.98, DType::bf16, DType::f32, false, 0, 3}, isa, rng);
    run_case({7, 18, 1100, 0.5, DType::f16, DType::bf16, true, 3, 0}, isa, rng);
    run_case({16, 17, 700, 0.6, DType::f32, DType::f32, false, 0, 0}, isa, rng);
    run_case({13, 11, 2300, 0.6, DType::bf16, DType::bf16, true, 5, 1}, isa, rng);
    // several registers per kept weight (17..64 rows), and tiles of 64 rows with a short last one
    run_case({40, 19, 1500, 0.6, DType::f32, DType::f32, true, 0, 2}, isa, rng);
    run_case({64, 5, 2100, 0.8, DType::f16, DType::f32, false, 3, 0}, isa, rng);
    run_case({65, 9, 1100, 0.5, DType::bf16, DType::bf16, true, 0, 0}, isa, rng);
    run_case({130, 7, 300, 0.5, DType::f32, DType::f16, true, 1, 1}, isa, rng);
    // from M = 49: blocks of 64 rows (several, the last cut short), panels of 48 KiB of xt, 5..8 registers per
    // kept weight in tiles of up to 128 rows; rows of 1 in 10 kept in panels, 1 in 20 in the AVX2 tiles
    run_case({49, 150, 1200, 0.5, DType::f32, DType::f16, true, 0, 3}, isa, rng);
    run_case({100, 150, 1500, 0.1, DType::f32, DType::f32, false, 0, 0}, isa, rng);
    run_case({90, 67, 1300, 0.05, DType::f16, DType::bf16, true, 3, 0}, isa, rng);
    run_case({128, 70, 2100, 0.3, DType::bf16, DType::f32, true, 0, 1}, isa, rng);
    run_case({112, 65, 700, 0.4, DType::f32, DType::f32, false, 5, 0}, isa, rng);
    run_case({77, 66, 1100, 0.2, DType::f32, DType::bf16, true, 0, 0}, isa, rng);
    // from M = 49 with xt as float32 the panels widen with the density (up to 384 KiB of xt), and below 13.5 % the
    // blocks take 128 rows (here two, then one cut short); 1 in 10 and 1 in 30 kept in panels, 1 in 80 (below 1 in
    // 64, K > 1024) in the AVX2 tiles; a panel wider than K (700 at 1 in 10: no panels)
    run_case({64, 300, 3000, 0.1, DType::f32, DType::f32, true, 0, 3}, isa, rng);
    run_case({128, 290, 2500, 0.033, DType::f16, DType::bf16, false, 3, 0}, isa, rng);
    run_case({100, 260, 4100, 0.0125, DType::f32, DType::f32, true, 0, 0}, isa, rng);
    run_case({130, 270, 1500, 0.12, DType::bf16, DType::f32, true, 0, 1}, isa, rng);
    run_case({80, 140, 700, 0.1, DType::f32, DType::f16, false, 0, 0}, isa, rng);
    cases += 29;
    // bf16 values times x as bf16 (AVX-512 BF16: pairs of kept weights, vdpbf16ps): every register count and a
    // last tile of 1..8 rows (odd: a pair half in the padding), odd kept counts per row (one left over), rows
    // in panels (K past one) and sparse rows without panels (density below 1 / 8, K > 1024)
    for (int64_t M : {2, 9, 15, 16, 17, 33, 48, 64, 65, 71, 100, 128, 130})
      for (DType od : types) {
        run_case({M, 23, 203, 0.3, DType::bf16, od, M % 2 == 1, 0, 2, true}, isa, rng);
        run_case({M, 19, 1500, 0.4, DType::bf16, od, false, 3, 0, true}, isa, rng);
        run_case({M, 21, 2100, 0.06, DType::bf16, od, true, 0, 1, true}, isa, rng);
        cases += 3;
      }
    run_case({20, 7, 300, 0.5, DType::f32, DType::f32, true, 0, 0, true}, isa, rng);  // float32 values: xt
    ++cases;
  }
  // xt16 where csr_spmm_bf16_xt is false (a forced lower ISA, float32 values): refused, nothing computed
  {
    std::vector<int32_t> crow{0, 1}, col{0};
    std::vector<uint16_t> v{0x3f80}, xt16(16, 0x3f80);
    std::vector<float> y(16, 5.f);
    CsrSpmmArgs a;
    a.M = 9; a.N = 1; a.K = 1; a.crow = crow.data(); a.col = col.data(); a.values = v.data();
    a.value_dtype = DType::bf16; a.xt16 = xt16.data(); a.ldxt = 16; a.y = y.data(); a.ldy = 1;
    for (Isa isa : {Isa::kGeneric, Isa::kAvx2}) {
      bool threw = false;
      try {
        csr_spmm_rows(a, 0, 1, isa);
      } catch (const std::logic_error&) {
        threw = true;
      }
      EXPECT(threw && y[0] == 5.f, "xt16 at isa=%s not refused", isa_name(isa));
    }
    a.value_dtype = DType::f32;
    bool threw = false;
    try {
      csr_spmm_rows(a, 0, 1);
    } catch (const std::logic_error&) {
      threw = true;
    }
    EXPECT(threw, "xt16 with float32 values not refused");
  }
  std::printf("test_csr_spmm: %d cases, %d failures\n", cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}
