// BSR, bitmap and 2:4 cores against a float64 dense reference, every ISA the CPU runs,
// odd M, all value/output types; runs under ASan + UBSan in CI (out-of-bounds reads fail).
#include <cmath>
#include <functional>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "core/spmm_formats.h"

using namespace sparsekit::core;

static int g_fail = 0;

struct Dense {
  int64_t N, K;
  std::vector<float> w;  // N x K, pruned positions 0
  std::vector<char> keep;
};

static uint16_t to16(DType d, float v) { return d == DType::bf16 ? f32_to_bf16(v) : f32_to_f16(v); }
static float from16(DType d, uint16_t h) { return d == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h); }

// Values of a packed buffer in the chosen dtype; w is rounded to it so the reference sees the same numbers.
struct Vals {
  DType d;
  std::vector<float> f;
  std::vector<uint16_t> h;
  void push(float v) {
    if (d == DType::f32) f.push_back(v);
    else h.push_back(to16(d, v));
  }
  float round(float v) const { return d == DType::f32 ? v : from16(d, to16(d, v)); }
  const void* data() const { return d == DType::f32 ? static_cast<const void*>(f.data()) : h.data(); }
  int64_t size() const { return static_cast<int64_t>(d == DType::f32 ? f.size() : h.size()); }
};

// poison: x holds NaN, +Inf and -Inf at three places (k = 3, K - 2, K / 2), and the reference multiplies only
// the kept weights (W.keep): a pruned weight is a structural zero, an output is non-finite exactly where a
// kept weight meets a poisoned x.
static void check_run(const char* what, Isa isa, const Dense& W, const Vals& vals, int64_t M, DType od,
                      bool bias, const std::function<void(DenseIo&)>& run, std::mt19937& rng,
                      DType xd = DType::f32, bool poison = false) {
  std::uniform_real_distribution<float> U(-1, 1);
  const int64_t ldxt = csr_spmm_ldxt(M), ldy = W.N + 3;
  std::vector<float> xt(std::max<int64_t>(W.K * ldxt, 1));
  for (auto& v : xt) v = xd != DType::f32 ? from16(xd, to16(xd, U(rng))) : U(rng);
  if (poison && M > 0 && W.K > 3) {
    const int64_t step = M == 1 ? 1 : ldxt;
    xt[3 * step + 0] = NAN;
    xt[(W.K - 2) * step + (M - 1)] = INFINITY;
    xt[(W.K / 2) * step + M / 2] = -INFINITY;
  }
  // x by rows as well (io.x), with a row stride past K: float32, or xd's 16-bit values
  const int64_t ldx = W.K + 5;
  std::vector<float> xf(std::max<int64_t>(M * ldx, 1), 0.f);
  std::vector<uint16_t> xh(xf.size(), 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < W.K; ++k) {
      xf[m * ldx + k] = xt[k * (M == 1 ? 1 : ldxt) + m];
      if (xd != DType::f32) xh[m * ldx + k] = to16(xd, xf[m * ldx + k]);
    }
  std::vector<float> bf(W.N);
  std::vector<uint16_t> bh(W.N);
  for (int64_t n = 0; n < W.N; ++n) {
    bf[n] = U(rng);
    if (od != DType::f32) { bh[n] = to16(od, bf[n]); bf[n] = from16(od, bh[n]); }
  }
  std::vector<float> yf(std::max<int64_t>(M * ldy, 1), 7.f);
  std::vector<uint16_t> yh(yf.size(), 0x1234);
  DenseIo io;
  io.M = M; io.N = W.N; io.K = W.K; io.xt = xt.data(); io.ldxt = M == 1 ? 1 : ldxt;
  io.bias = !bias ? nullptr : (od == DType::f32 ? static_cast<const void*>(bf.data()) : bh.data());
  io.y = od == DType::f32 ? static_cast<void*>(yf.data()) : yh.data();
  io.ldy = ldy; io.out_dtype = od; io.x_dtype = xd;
  io.x = xd == DType::f32 ? static_cast<const void*>(xf.data()) : xh.data();
  io.ldx = ldx;
  run(io);
  const double tol = od == DType::f32 ? 1e-4 : (od == DType::bf16 ? 1.6e-2 : 2e-3);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < W.N; ++n) {
      double ref = bias ? bf[n] : 0.0, mag = std::fabs(ref);
      for (int64_t k = 0; k < W.K; ++k) {
        if (poison && !W.keep[n * W.K + k]) continue;
        const double t = double(vals.round(W.w[n * W.K + k])) * xt[k * io.ldxt + m];
        ref += t; mag += std::fabs(t);
      }
      const size_t i = m * ldy + n;
      const double got = od == DType::f32 ? yf[i] : from16(od, yh[i]);
      const bool ok = std::isfinite(ref) ? std::fabs(got - ref) <= tol * (mag + 1.0) : !std::isfinite(got);
      if (!ok) {
        std::fprintf(stderr, "FAILED %s isa=%s M=%lld N=%lld K=%lld vd=%d od=%d m=%lld n=%lld got=%g ref=%g\n", what,
                     isa_name(isa), (long long)M, (long long)W.N, (long long)W.K, int(vals.d), int(od), (long long)m,
                     (long long)n, got, ref);
        ++g_fail;
        return;
      }
    }
}

static Dense random_dense(int64_t N, int64_t K, double density, std::mt19937& rng) {
  std::uniform_real_distribution<float> U(-1, 1);
  std::bernoulli_distribution B(density);
  Dense d{N, K, std::vector<float>(N * K, 0.f), std::vector<char>(N * K, 0)};
  for (int64_t i = 0; i < N * K; ++i)
    if (B(rng)) { d.keep[i] = 1; d.w[i] = U(rng); }
  return d;
}

int main() {
  std::mt19937 rng(7);
  const Isa isas[] = {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512};
  const DType types[] = {DType::f32, DType::bf16, DType::f16};
  const int64_t Ms[] = {0, 1, 2, 3, 5, 8, 17, 33, 40};
  int cases = 0;
  for (Isa isa : isas) {
    if (resolve_isa(isa) != isa) continue;
    for (DType vd : types)
      for (DType od : types)
        for (int64_t M : Ms) {
          const bool bias = (M % 2) == 1;
          // ---- BSR, blocks 4x8 and 8x16 (and 3x5: odd blocks); for the AVX-512 M = 1 kernel 24x16, 5x64 and 6x16
          // (passes of 16, 8, 4, 2 and 1 rows of a block row), 32x32 and 48x64 (whole blocks, 16 rows at a time; 1, 2
          // and 4 registers per block row); for the AVX-512 kernel from M = 2 (x by rows, of the values' dtype as
          // well: bf16 through vdpbf16ps, 256-bit where C = 16) tiles of 4 block rows and 3, 2 and 1 left (7x32, 6x16,
          // 5x64)
          for (auto rc : {std::pair<int, int>{4, 8}, {8, 16}, {3, 5}, {24, 16}, {32, 32}, {5, 64}, {6, 16}, {48, 64},
                          {7, 32}}) {
            const int R = rc.first, C = rc.second;
            Dense W = random_dense(R * 5, C * 7, 0.05, rng);
            std::vector<int32_t> crow{0}, col;
            Vals vals{vd, {}, {}};
            for (int64_t br = 0; br < W.N / R; ++br) {
              for (int64_t bc = 0; bc < W.K / C; ++bc) {
                bool any = false;
                for (int r = 0; r < R; ++r)
                  for (int c = 0; c < C; ++c) any |= W.keep[(br * R + r) * W.K + bc * C + c];
                if (!any && (br + bc) % 3) continue;  // also keep some all-zero blocks
                col.push_back(int32_t(bc));
                for (int r = 0; r < R; ++r)
                  for (int c = 0; c < C; ++c) vals.push(W.w[(br * R + r) * W.K + bc * C + c]);
              }
              crow.push_back(int32_t(col.size()));
            }
            for (bool x16 : {false, true}) {
              if (x16 && vd == DType::f32) continue;
              check_run("bsr", isa, W, vals, M, od, bias, [&](DenseIo& io) {
                BsrArgs a; a.io = io; a.R = R; a.C = C; a.crow = crow.data(); a.col = col.data();
                a.values = vals.data(); a.value_dtype = vd;
                bsr_spmm_rows(a, 0, 2, isa);
                bsr_spmm_rows(a, 2, W.N / R, isa);
              }, rng, x16 ? vd : DType::f32);
              ++cases;
            }
          }
          // ---- bitmap, K not a multiple of 32 (3 and 7 words: the AVX-512 M == 1 kernels take words in
          // pairs), densities from empty rows to full
          // (and K = 1000 with 37 rows: 33 rows in the second call, past blocks of 16 rows, whose next block is
          // prefetched, and groups of four with one row left)
          for (auto kd : {std::pair<int64_t, double>{77, 0.0}, {77, 0.3}, {77, 1.0}, {200, 0.3}, {200, 0.7},
                          {1000, 0.3}}) {
            const double density = kd.second;
            Dense W = random_dense(kd.first > 500 ? 37 : 11, kd.first, density, rng);
            const int64_t words = (W.K + 31) / 32;
            std::vector<uint32_t> bm(W.N * words, 0);
            std::vector<int32_t> off(W.N * words, 0);
            Vals vals{vd, {}, {}};
            int32_t count = 0;
            for (int64_t n = 0; n < W.N; ++n)
              for (int64_t w = 0; w < words; ++w) {
                off[n * words + w] = count;
                for (int b = 0; b < 32 && w * 32 + b < W.K; ++b)
                  if (W.keep[n * W.K + w * 32 + b]) {
                    bm[n * words + w] |= 1u << b;
                    vals.push(W.w[n * W.K + w * 32 + b]);
                    ++count;
                  }
              }
            // x of the values' 16-bit dtype too (io.x_dtype; bf16: the AVX-512 BF16 dot products); x with
            // Inf / NaN (the kernels that multiply x by expanded zeros must not run), its finiteness not
            // known to the core or told by the caller as the op does
            for (bool x16 : {false, true})
              for (int poison : {0, 1, 2}) {
                if (x16 && vd == DType::f32) continue;
                check_run("bitmap", isa, W, vals, M, od, bias, [&](DenseIo& io) {
                  BitmapArgs a; a.io = io; a.bitmap = bm.data(); a.word_offsets = off.data(); a.values = vals.data();
                  a.nnz = vals.size(); a.value_dtype = vd;
                  if (poison == 2) a.io.x_finite = dense_x_finite(a.io) ? 1 : 0;
                  bitmap_spmm_rows(a, 0, 4, isa);
                  bitmap_spmm_rows(a, 4, W.N, isa);
                }, rng, x16 ? vd : DType::f32, poison > 0);
                ++cases;
              }
          }
          // ---- 2:4 with K = 4 * odd groups (a padded last meta nibble): 13 groups (float32 windows of 8 groups
          // and a short one; a bf16 window of 16 that is short), and 83 groups in 37 rows (several windows, blocks
          // of 16 rows and groups of rows with some left); x of the values' dtype as well (the AVX-512 kernel reads
          // x by rows), and x with Inf / NaN (only the kept columns' x may reach an output)
          for (auto kn : {std::pair<int64_t, int64_t>{13, 9}, {83, 37}}) {
            Dense W = random_dense(kn.second, 4 * kn.first, 0.0, rng);
            std::uniform_int_distribution<int> P(0, 3);
            std::uniform_real_distribution<float> U(-1, 1);
            const int64_t groups = W.K / 4, mbytes = (W.K + 7) / 8;
            std::vector<uint8_t> meta(W.N * mbytes, 0);
            Vals vals{vd, {}, {}};
            for (int64_t n = 0; n < W.N; ++n)
              for (int64_t g = 0; g < groups; ++g) {
                int i0 = P(rng), i1 = P(rng);
                while (i1 == i0) i1 = P(rng);
                if (i0 > i1) std::swap(i0, i1);
                for (int i : {i0, i1}) {
                  const float v = (n + g) % 5 ? U(rng) : 0.f;
                  W.w[n * W.K + 4 * g + i] = v;
                  W.keep[n * W.K + 4 * g + i] = 1;
                  vals.push(v);
                }
                meta[n * mbytes + g / 2] |= uint8_t((i0 | (i1 << 2)) << ((g & 1) * 4));
              }
            for (bool x16 : {false, true})
              for (bool poison : {false, true}) {
                if (x16 && vd == DType::f32) continue;
                check_run("2:4", isa, W, vals, M, od, bias, [&](DenseIo& io) {
                  Sparse24Args a; a.io = io; a.values = vals.data(); a.meta = meta.data(); a.value_dtype = vd;
                  sparse24_spmm_rows(a, 0, 3, isa);
                  sparse24_spmm_rows(a, 3, W.N, isa);
                }, rng, x16 ? vd : DType::f32, poison);
                ++cases;
              }
          }
        }
  }
  // ---- 2:4 decompression (the CPU op's dense-GEMM path): bit for bit, every ISA, odd group counts,
  // -0.0 and NaN payloads kept, rows written from the first one asked for.
  for (Isa isa : isas) {
    if (resolve_isa(isa) != isa) continue;
    for (int bits : {16, 32})
      for (int64_t K : {4, 8, 12, 4 * 13, 4 * 32 + 4}) {
        const int64_t N = 7, groups = K / 4, mbytes = (K + 7) / 8;
        std::uniform_int_distribution<int> P(0, 3);
        std::uniform_int_distribution<uint32_t> R;
        std::vector<uint8_t> meta(N * mbytes, 0);
        std::vector<uint32_t> v32(N * K / 2), want32(N * K, 0), got32(N * K, 0xDEADBEEF);
        std::vector<uint16_t> v16(N * K / 2), want16(N * K, 0), got16(N * K, 0xBEEF);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t g = 0; g < groups; ++g) {
            int i0 = P(rng), i1 = P(rng);
            while (i1 == i0) i1 = P(rng);
            if (i0 > i1) std::swap(i0, i1);
            meta[n * mbytes + g / 2] |= uint8_t((i0 | (i1 << 2)) << ((g & 1) * 4));
            for (int j = 0; j < 2; ++j) {
              const uint32_t bitsv = (n + g + j) % 7 == 0 ? 0x80000000u : R(rng);  // -0.0 too
              const int64_t at = n * K / 2 + 2 * g + j, col = n * K + 4 * g + (j ? i1 : i0);
              v32[at] = want32[col] = bitsv;
              v16[at] = want16[col] = static_cast<uint16_t>(bitsv >> 16);
            }
          }
        const DType vd = bits == 32 ? DType::f32 : DType::bf16;
        const void* vals = bits == 32 ? static_cast<const void*>(v32.data()) : v16.data();
        for (int64_t split : {int64_t(0), int64_t(3)}) {
          char* out = bits == 32 ? reinterpret_cast<char*>(got32.data()) : reinterpret_cast<char*>(got16.data());
          sparse24_decompress_rows(vals, meta.data(), vd, K, 0, split, out, isa);
          sparse24_decompress_rows(vals, meta.data(), vd, K, split, N, out + split * K * (bits / 8), isa);
          const bool same = bits == 32 ? got32 == want32 : got16 == want16;
          if (!same) {
            ++g_fail;
            std::printf("FAIL 2:4 decompress isa=%s bits=%d K=%lld split=%lld\n", isa_name(isa), bits, (long long)K,
                        (long long)split);
          }
          ++cases;
        }
      }
  }
  // ---- bitmap rows decoded into CSR column lists (avx512::bitmap_decode_rows, bitmap_as_csr): against a scalar
  // decode, into a buffer of exactly count + bitmap_decode_slack(words) entries (ASan: no write past it), rows from
  // an offset; and a max_count below the count throws
  if (resolve_isa(Isa::kAvx512) == Isa::kAvx512) {
    for (int64_t K : {int64_t(1), int64_t(31), int64_t(32), int64_t(77), int64_t(300)})
      for (double density : {0.0, 0.3, 1.0}) {
        const int64_t N = 9, words = (K + 31) / 32, r0 = 2;
        std::vector<uint32_t> bm(N * words, 0u);
        std::vector<int32_t> want_crow{0}, want_col;
        std::bernoulli_distribution keep(density);
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t k = 0; k < K; ++k)
            if (keep(rng)) bm[n * words + k / 32] |= 1u << (k % 32);
          if (n < r0) continue;
          for (int64_t k = 0; k < K; ++k)
            if (bm[n * words + k / 32] >> (k % 32) & 1u) want_col.push_back(int32_t(k));
          want_crow.push_back(int32_t(want_col.size()));
        }
        const int64_t count = int64_t(want_col.size());
        std::vector<int32_t> crow(N - r0 + 1), col(count + avx512::bitmap_decode_slack(words));
        const int64_t got = avx512::bitmap_decode_rows(bm.data(), words, r0, N, count, crow.data(), col.data());
        col.resize(count);
        if (got != count || crow != want_crow || col != want_col) {
          ++g_fail;
          std::printf("FAIL bitmap_decode_rows K=%lld density=%.1f\n", (long long)K, density);
        }
        bool threw = false;
        try {
          std::vector<int32_t> small(count + avx512::bitmap_decode_slack(words));
          avx512::bitmap_decode_rows(bm.data(), words, r0, N, count - 1, crow.data(), small.data());
        } catch (const std::logic_error&) {
          threw = true;
        }
        if (!threw) {  // count > count - 1 (also at count 0)
          ++g_fail;
          std::printf("FAIL bitmap_decode_rows max_count K=%lld density=%.1f\n", (long long)K, density);
        }
        cases += 2;
      }
  }
  // ---- x transposed for the CSR core (avx512::stage_xt): a column range [k0, k1) of x (rows ldx apart), float32,
  // bf16 and f16, against a scalar transpose, as float32 and (bf16 x) as bf16 bits, into a buffer of exactly k1 x
  // ldxt (ASan: nothing past it; nothing outside the range written); ldxt = 8 (M <= 8) and multiples of 16, the
  // lanes from M to ldxt zero; bf16 bits kept as they are (a NaN payload, -0)
  if (stages_xt()) {
    for (DType xd : {DType::f32, DType::bf16, DType::f16})
      for (bool out16 : {false, true}) {
        if (out16 && xd != DType::bf16) continue;
        for (int64_t M : {int64_t(2), int64_t(5), int64_t(8), int64_t(9), int64_t(16), int64_t(17), int64_t(40), int64_t(128)})
          for (auto [k0, k1] : {std::pair<int64_t, int64_t>{0, 1}, {0, 16}, {16, 61}, {3, 100}}) {
            const int64_t ldxt = csr_spmm_ldxt(M), ldx = k1 + 3;
            std::uniform_real_distribution<float> U(-1.f, 1.f);
            std::vector<float> xf(M * ldx);
            std::vector<uint16_t> xh(M * ldx);
            for (size_t i = 0; i < xf.size(); ++i) {
              xf[i] = U(rng);
              xh[i] = xd == DType::f32 ? 0 : to16(xd, xf[i]);
            }
            if (xd == DType::bf16) { xh[0] = 0x7fc1; xh[1] = 0x8000; }  // a NaN with a payload, -0
            const void* xp = xd == DType::f32 ? static_cast<const void*>(xf.data()) : xh.data();
            std::vector<float> xt(k1 * ldxt, -7.f);
            std::vector<uint16_t> xt16(k1 * ldxt, 0x1234);
            avx512::stage_xt(xp, xd, ldx, M, k0, k1, out16 ? static_cast<void*>(xt16.data()) : xt.data(), out16, ldxt);
            bool ok = true;
            for (int64_t k = 0; k < k1 && ok; ++k)
              for (int64_t m = 0; m < ldxt; ++m) {
                const size_t src = m * ldx + k;
                if (out16) {
                  const uint16_t want = k < k0 ? 0x1234 : m < M ? xh[src] : 0;
                  if (xt16[k * ldxt + m] != want) ok = false;
                } else {
                  const float v = m < M ? (xd == DType::f32 ? xf[src] : from16(xd, xh[src])) : 0.f;
                  const float want = k < k0 ? -7.f : v;
                  const float got = xt[k * ldxt + m];
                  if (!(got == want || (std::isnan(got) && std::isnan(want)))) ok = false;
                }
              }
            if (!ok) {
              ++g_fail;
              std::printf("FAIL stage_xt x=%d out16=%d M=%lld k0=%lld k1=%lld\n", int(xd), int(out16), (long long)M,
                          (long long)k0, (long long)k1);
            }
            ++cases;
          }
      }
  }
  std::printf("test_spmm_formats: %d cases, %d failures\n", cases, g_fail);
  return g_fail ? 1 : 0;
}
