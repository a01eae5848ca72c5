// CPU implementations of the int8 ops (schemas in sparsekit/ops/_schemas.py): exact int8 GEMM,
// per-token quantization, W8A8 int8_mm, weight-only W8A16, 2:4 + int8, and the one-call W8A8 linears
// (int8_linear, sparse24_int8_linear: quantization and GEMM in one op). The kernels are the
// torch-free cores of csrc/core/int8_gemm.h; this file checks, stages and splits the work.
//
// Instruction set: sparsekit._C.set_cpu_isa('generic' | 'avx2') forces the int8 cores too
// (avx2 = the AVX2 path without VNNI); with 'auto', the environment variable SPARSEKIT_INT8_ISA
// (auto, generic, avx2, avxvnni, avx512vnni; read once) may cap the level, else the best the CPU has.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "core/int8_gemm.h"
#include "cpu/dense_panels.h"
#include "cpu/int8_checks.h"
#include "cpu/ops_cpu.h"

namespace sparsekit {
namespace cpu {
namespace {

core::DType to_core(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return core::DType::f32;
    case at::kBFloat16: return core::DType::bf16;
    case at::kHalf: return core::DType::f16;
    default: TORCH_CHECK(false, "sparsekit: unsupported dtype ", t);
  }
}

core::Int8Isa env_isa() {
  const char* e = std::getenv("SPARSEKIT_INT8_ISA");
  if (!e) return core::Int8Isa::kAuto;
  if (!std::strcmp(e, "generic")) return core::Int8Isa::kGeneric;
  if (!std::strcmp(e, "avx2")) return core::Int8Isa::kAvx2;
  if (!std::strcmp(e, "avxvnni")) return core::Int8Isa::kAvxVnni;
  if (!std::strcmp(e, "avx512vnni")) return core::Int8Isa::kAvx512Vnni;
  return core::Int8Isa::kAuto;
}

core::Int8Isa int8_isa() {
  // core::Isa's values (0 auto, 1 generic, 2 avx2) are Int8Isa's first three.
  const int forced = get_isa();
  if (forced == 1 || forced == 2) return static_cast<core::Int8Isa>(forced);
  static const core::Int8Isa from_env = env_isa();
  return from_env;
}

// A 2-d tensor whose rows are each contiguous (row stride >= row length) is used in place, with
// its row stride as the leading dimension; any other layout is copied once.
at::Tensor rows_contiguous(const at::Tensor& t) {
  const bool rows_ok = t.size(1) <= 1 || t.stride(1) == 1;
  if (rows_ok && (t.size(0) <= 1 || t.stride(0) >= std::max<int64_t>(t.size(1), 1))) return t;
  return t.contiguous();
}
int64_t ld_of(const at::Tensor& t) { return t.size(0) <= 1 ? std::max<int64_t>(t.size(1), 1) : t.stride(0); }

// Splits the (M, N) output into one block per thread and calls fn(m0, m1, n0, n1) for each.
// Normally by columns only (ranges of multiples of 16 columns, about equal; every column costs
// the same), so that the weight is read once in all; when there are too few columns for the
// threads (small out_features, large M), by activation rows. Small problems run on the
// calling thread.
// Note: with torch's OpenMP backend, at::parallel_for is inline code that runs in parallel only
// where this file is compiled with -fopenmp; without it every call runs on one thread.
template <typename F>
void parallel_blocks(int64_t M, int64_t N, int64_t K, F&& fn) {
  int64_t T = at::get_num_threads();
  if (M * N * std::max<int64_t>(K, 1) < (int64_t(1) << 17)) T = 1;
  if (T <= 1) {
    fn(int64_t(0), M, int64_t(0), N);
    return;
  }
  const int64_t Tn = std::min<int64_t>(T, (N + 15) / 16);
  if (Tn >= T || M < 2 * T) {
    auto cut = [N, Tn](int64_t t) -> int64_t { return t >= Tn ? N : std::min<int64_t>(N, (N * t / Tn + 8) / 16 * 16); };
    at::parallel_for(0, Tn, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = cut(t), n1 = cut(t + 1);
        if (n0 < n1) fn(int64_t(0), M, n0, n1);
      }
    });
    return;
  }
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = M * t / T, m1 = M * (t + 1) / T;
      if (m0 < m1) fn(m0, m1, int64_t(0), N);
    }
  });
}

// The epilogue of rows [m0, m0 + rows) of the output.
core::Int8Epilogue epilogue_rows(const core::Int8Epilogue& ep, int64_t m0) {
  core::Int8Epilogue e = ep;
  if (e.x_scale) e.x_scale += m0;
  if (e.x_zero) e.x_zero += m0;
  if (e.y) {
    const int64_t size = ep.out_dtype == core::DType::f32 ? 4 : 2;
    e.y = static_cast<char*>(e.y) + m0 * ep.ldy * size;
  }
  if (e.c) e.c += m0 * ep.ldc;
  return e;
}

// The int8 GEMM cores over all M rows, split over threads (each block: its rows of a, of the
// epilogue's per-row inputs and of the output). a: int8 (M, K) rows, leading dimension lda.
void run_int8_gemm(const int8_t* a, int64_t lda, const at::Tensor& B, const core::Int8Epilogue& ep, int64_t M,
                   int64_t N, int64_t K) {
  core::Int8GemmArgs g;
  g.M = M; g.N = N; g.K = K;
  g.a = a; g.lda = lda;
  g.b = B.data_ptr<int8_t>(); g.ldb = ld_of(B);
  g.ep = ep;
  const auto isa = int8_isa();
  parallel_blocks(M, N, K, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    core::Int8GemmArgs r = g;
    r.M = m1 - m0;
    r.a += m0 * r.lda;
    r.ep = epilogue_rows(g.ep, m0);
    core::int8_gemm_rows(r, n0, n1, isa);
  });
}

// The same for the 2:4 int8 weight (values (N, K / 2) int8 contiguous, meta contiguous).
void run_sparse24_int8(const int8_t* x, int64_t ldx, const at::Tensor& V, const at::Tensor& Mt,
                       const core::Int8Epilogue& ep, int64_t M, int64_t N, int64_t K) {
  core::Sparse24Int8Args s;
  s.M = M; s.N = N; s.K = K;
  s.x = x; s.ldx = ldx;
  s.values = V.data_ptr<int8_t>();
  s.meta = Mt.data_ptr<uint8_t>();
  s.ep = ep;
  const auto isa = int8_isa();
  parallel_blocks(M, N, K, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    core::Sparse24Int8Args r = s;
    r.M = m1 - m0;
    r.x += m0 * r.ldx;
    r.ep = epilogue_rows(s.ep, m0);
    core::sparse24_int8_rows(r, n0, n1, isa);
  });
}

// ------------------------------------------------------------------------------------------
at::Tensor int8_gemm_i32_cpu(const at::Tensor& a, const at::Tensor& b) {
  int8chk::check_int8_gemm_i32_args(a, b);
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  auto c = at::empty({M, N}, a.options().dtype(at::kInt));
  if (M == 0 || N == 0) return c;
  const auto A = rows_contiguous(a), B = rows_contiguous(b);
  core::Int8Epilogue ep;
  ep.c = c.data_ptr<int32_t>();
  ep.ldc = N;
  run_int8_gemm(A.data_ptr<int8_t>(), ld_of(A), B, ep, M, N, K);
  return c;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_token_cpu(const at::Tensor& x, bool symmetric) {
  int8chk::check_quantize_per_token_args(x);
  const int64_t M = x.size(0), K = x.size(1);
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto scale = at::empty({M}, x.options().dtype(at::kFloat));
  auto zp = at::empty({M}, x.options().dtype(at::kInt));
  if (M == 0) return {q, scale, zp};
  const auto X = rows_contiguous(x);
  core::QuantizeArgs a;
  a.M = M; a.K = K;
  a.x = X.data_ptr(); a.ldx = ld_of(X); a.x_dtype = to_core(X.scalar_type());
  a.symmetric = symmetric;
  a.q = q.data_ptr<int8_t>(); a.ldq = std::max<int64_t>(K, 1);
  a.scale = scale.data_ptr<float>();
  a.zero_point = zp.data_ptr<int32_t>();
  const auto isa = int8_isa();
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(K, 1));
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) { core::quantize_per_token_rows(a, m0, m1, isa); });
  return {q, scale, zp};
}

// The W8A8 epilogue's pointers; the tensors stay alive in the caller.
struct EpilogueInputs {
  at::Tensor x_scale, x_zero, w_scale, bias;
};

core::Int8Epilogue make_epilogue(EpilogueInputs& in, const at::Tensor& x_scale, const std::optional<at::Tensor>& x_zero,
                                 const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, at::Tensor& y) {
  in.x_scale = x_scale.contiguous();
  in.w_scale = w_scale.contiguous();
  if (x_zero.has_value()) in.x_zero = x_zero->contiguous();
  if (bias.has_value()) in.bias = bias->contiguous();
  core::Int8Epilogue ep;
  ep.x_scale = in.x_scale.data_ptr<float>();
  ep.w_scale = in.w_scale.data_ptr<float>();
  ep.x_zero = in.x_zero.defined() ? in.x_zero.data_ptr<int32_t>() : nullptr;
  ep.bias = in.bias.defined() ? in.bias.data_ptr() : nullptr;
  ep.y = y.data_ptr();
  ep.ldy = y.size(1);
  ep.out_dtype = to_core(y.scalar_type());
  return ep;
}

at::Tensor int8_mm_cpu(const at::Tensor& x_q, const at::Tensor& x_scale, const std::optional<at::Tensor>& x_zero,
                       const at::Tensor& w_q, const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                       at::ScalarType out_dtype) {
  int8chk::check_int8_mm_args(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype);
  const int64_t M = x_q.size(0), K = x_q.size(1), N = w_q.size(0);
  auto y = at::empty({M, N}, x_q.options().dtype(out_dtype));
  if (M == 0 || N == 0) return y;
  const auto A = rows_contiguous(x_q), B = rows_contiguous(w_q);
  EpilogueInputs keep;
  run_int8_gemm(A.data_ptr<int8_t>(), ld_of(A), B, make_epilogue(keep, x_scale, x_zero, w_scale, bias, y), M, N, K);
  return y;
}

at::Tensor int8_weight_only_mm_cpu(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                                   const std::optional<at::Tensor>& bias) {
  int8chk::check_int8_weight_only_mm_args(x, w_q, w_scale, bias);
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (panels::use(panels::Op::kInt8WeightOnly, x.scalar_type(), M, N, K, N * K, false)) {
    // Large M (dense_panels.h): the int8 rows turned into x's dtype (exact: |q| <= 128 fits even a
    // bf16 significand), x times them through ATen's GEMM, then the channel scale and bias in float32.
    // For 16-bit x the GEMM's output is rounded once before the scale: one more rounding than the
    // int8 kernel's.
    const auto ws = w_scale.contiguous();
    at::Tensor b;
    if (bias.has_value()) b = bias->contiguous();
    panels::run(
        N, K, x.options(), "sparsekit.int8_weight_only_mm",
        [&](int64_t n0, int64_t n1, at::Tensor& p) { p.copy_(w_q.narrow(0, n0, n1 - n0)); },
        [&](int64_t n0, int64_t n1, at::Tensor& p) {
          auto r = at::mm(x, p.t()).to(at::kFloat).mul_(ws.narrow(0, n0, n1 - n0));
          if (b.defined()) r.add_(b.narrow(0, n0, n1 - n0));
          y.narrow(1, n0, n1 - n0).copy_(r);
        });
    return y;
  }
  // the activation in float32 (bfloat16 and float16 convert exactly), rows contiguous
  const auto X = rows_contiguous(x.scalar_type() == at::kFloat ? x : x.to(at::kFloat));
  const auto Q = rows_contiguous(w_q);
  const auto ws = w_scale.contiguous();
  at::Tensor b;
  if (bias.has_value()) b = bias->contiguous();
  core::Int8WeightOnlyArgs a;
  a.M = M; a.N = N; a.K = K;
  a.x = X.data_ptr<float>(); a.ldx = ld_of(X);
  a.q = Q.data_ptr<int8_t>(); a.ldq = ld_of(Q);
  a.w_scale = ws.data_ptr<float>();
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  a.y = y.data_ptr(); a.ldy = N;
  a.out_dtype = to_core(y.scalar_type());
  const auto isa = int8_isa();
  const int64_t ysize = y.element_size();
  parallel_blocks(M, N, K, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    core::Int8WeightOnlyArgs r = a;
    r.M = m1 - m0;
    r.x += m0 * r.ldx;
    r.y = static_cast<char*>(r.y) + m0 * r.ldy * ysize;
    core::int8_weight_only_rows(r, n0, n1, isa);
  });
  return y;
}

at::Tensor sparse24_int8_mm_cpu(const at::Tensor& x_q, const at::Tensor& x_scale, const std::optional<at::Tensor>& x_zero,
                                const at::Tensor& values, const at::Tensor& meta, const at::Tensor& w_scale,
                                const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  int8chk::check_sparse24_int8_mm_args(x_q, x_scale, x_zero, values, meta, w_scale, bias, out_dtype);
  const int64_t M = x_q.size(0), K = x_q.size(1), N = values.size(0);
  const auto Mt = meta.contiguous();
  check_meta_once("sparsekit.sparse24_int8_mm", meta, Mt, N, K);
  auto y = at::empty({M, N}, x_q.options().dtype(out_dtype));
  if (M == 0 || N == 0) return y;
  const auto A = rows_contiguous(x_q);
  const auto V = values.contiguous();
  EpilogueInputs keep;
  run_sparse24_int8(A.data_ptr<int8_t>(), ld_of(A), V, Mt, make_epilogue(keep, x_scale, x_zero, w_scale, bias, y),
                    M, N, K);
  return y;
}

// ------------------------------------------------------------------------------------------
// The one-call W8A8 linears: x (M, K) float quantized per token (symmetric) into a scratch buffer,
// then the int8 core with the output in x's dtype. The same cores, arguments and thread splits as
// quantize_per_token followed by int8_mm / sparse24_int8_mm, so the result is bit for bit theirs;
// what goes is the second dispatcher round trip and the three tensors quantize_per_token returns.

// The symmetric per-token quantization of x: q (M rows of ldq bytes), scale and zero point (M each)
// in one allocation that `keep` holds.
struct QuantizedRows {
  at::Tensor keep;
  int8_t* q = nullptr;
  int64_t ldq = 0;
  float* scale = nullptr;
};

QuantizedRows quantize_rows_scratch(const at::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1);
  QuantizedRows r;
  r.ldq = std::max<int64_t>(K, 1);
  const int64_t q_bytes = (M * r.ldq + 63) / 64 * 64;  // scale and zero point start 64-byte aligned
  r.keep = at::empty({q_bytes + 8 * M}, x.options().dtype(at::kChar));
  char* base = static_cast<char*>(r.keep.data_ptr());
  r.q = reinterpret_cast<int8_t*>(base);
  r.scale = reinterpret_cast<float*>(base + q_bytes);
  const auto X = rows_contiguous(x);
  core::QuantizeArgs a;
  a.M = M; a.K = K;
  a.x = X.data_ptr(); a.ldx = ld_of(X); a.x_dtype = to_core(X.scalar_type());
  a.symmetric = true;
  a.q = r.q; a.ldq = r.ldq;
  a.scale = r.scale;
  a.zero_point = reinterpret_cast<int32_t*>(base + q_bytes + 4 * M);
  const auto isa = int8_isa();
  // as quantize_per_token_cpu
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(K, 1));
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) { core::quantize_per_token_rows(a, m0, m1, isa); });
  return r;
}

// The epilogue of a one-call linear: per-token scale from the scratch, no zero point, y in x's dtype.
core::Int8Epilogue linear_epilogue(EpilogueInputs& in, const QuantizedRows& xq, const at::Tensor& w_scale,
                                   const std::optional<at::Tensor>& bias, at::Tensor& y) {
  in.w_scale = w_scale.contiguous();
  if (bias.has_value()) in.bias = bias->contiguous();
  core::Int8Epilogue ep;
  ep.x_scale = xq.scale;
  ep.w_scale = in.w_scale.data_ptr<float>();
  ep.x_zero = nullptr;
  ep.bias = in.bias.defined() ? in.bias.data_ptr() : nullptr;
  ep.y = y.data_ptr();
  ep.ldy = y.size(1);
  ep.out_dtype = to_core(y.scalar_type());
  return ep;
}

at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                           const std::optional<at::Tensor>& bias) {
  int8chk::check_int8_linear_args(x, w_q, w_scale, bias);
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const QuantizedRows xq = quantize_rows_scratch(x);
  const auto B = rows_contiguous(w_q);
  EpilogueInputs keep;
  run_int8_gemm(xq.q, xq.ldq, B, linear_epilogue(keep, xq, w_scale, bias, y), M, N, K);
  return y;
}

at::Tensor sparse24_int8_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                    const at::Tensor& w_scale, const std::optional<at::Tensor>& bias) {
  int8chk::check_sparse24_int8_linear_args(x, values, meta, w_scale, bias);
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  const auto Mt = meta.contiguous();
  check_meta_once("sparsekit.sparse24_int8_linear", meta, Mt, N, K);
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const QuantizedRows xq = quantize_rows_scratch(x);
  const auto V = values.contiguous();
  EpilogueInputs keep;
  run_sparse24_int8(xq.q, xq.ldq, V, Mt, linear_epilogue(keep, xq, w_scale, bias, y), M, N, K);
  return y;
}

}  // namespace
}  // namespace cpu
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CPU, m) {
  m.impl("int8_gemm_i32", &sparsekit::cpu::int8_gemm_i32_cpu);
  m.impl("quantize_per_token", &sparsekit::cpu::quantize_per_token_cpu);
  m.impl("int8_mm", &sparsekit::cpu::int8_mm_cpu);
  m.impl("int8_weight_only_mm", &sparsekit::cpu::int8_weight_only_mm_cpu);
  m.impl("sparse24_int8_mm", &sparsekit::cpu::sparse24_int8_mm_cpu);
  m.impl("int8_linear", &sparsekit::cpu::int8_linear_cpu);
  m.impl("sparse24_int8_linear", &sparsekit::cpu::sparse24_int8_linear_cpu);
}
