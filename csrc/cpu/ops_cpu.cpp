// CPU implementations of sparsekit ops. The schemas are defined in Python
// (sparsekit/ops/_schemas.py); this file only registers kernels for the CPU key.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "checks.h"
#include "core/csr_spmm.h"
#include "cpu/ops_cpu.h"

namespace sparsekit {
namespace cpu {
namespace {

std::atomic<int> g_isa{0};

core::DType to_core(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return core::DType::f32;
    case at::kBFloat16: return core::DType::bf16;
    case at::kHalf: return core::DType::f16;
    default: TORCH_CHECK(false, "sparsekit: unsupported dtype ", t);
  }
}

// Splits rows into chunks of about equal nnz, so that threads finish together.
template <typename F>
void parallel_rows_by_nnz(const int32_t* crow, int64_t N, int64_t work_per_nnz, F&& fn) {
  const int64_t nnz = crow[N];
  const int64_t work = (nnz + N) * std::max<int64_t>(work_per_nnz, 1);
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = work < (1 << 15) ? 1 : std::min<int64_t>(threads * 4, std::max<int64_t>(N, 1));
  auto row_at = [&](int64_t c) -> int64_t {
    if (c >= chunks) return N;
    const int64_t target = nnz * c / chunks;
    return static_cast<int64_t>(std::lower_bound(crow, crow + N + 1, static_cast<int32_t>(target)) - crow);
  };
  if (chunks == 1) {
    fn(0, N);
    return;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const int64_t r0 = row_at(c0), r1 = row_at(c1);
    if (r0 < r1) fn(r0, r1);
  });
}

at::Tensor csr_mm_cpu(const at::Tensor& x, const at::Tensor& crow_indices, const at::Tensor& col_indices,
                      const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  check_csr_mm_args(x, crow_indices, col_indices, values, out_features, bias);
  TORCH_CHECK(x.device().is_cpu(), "sparsekit.csr_mm: expected CPU tensors, got x on ", x.device());
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto crow = crow_indices.contiguous();
  const auto col = col_indices.contiguous();
  const auto vals = values.contiguous();
  const int32_t* crow_p = crow.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(crow_p[0] == 0 && crow_p[N] == vals.numel(), "sparsekit.csr_mm: expected crow_indices[0] == 0 and ",
              "crow_indices[-1] == nnz == ", vals.numel(), ", got ", crow_p[0], " and ", crow_p[N]);
  // Stage the activation as float32, transposed (K x ldxt, padded to vectors of 8): one kept
  // weight then reads M contiguous floats.
  const int64_t ldxt = core::csr_spmm_ldxt(M);
  at::Tensor xt;
  if (M == 1) {
    xt = x.reshape({K}).to(at::kFloat).contiguous();
  } else {
    xt = at::empty({K, ldxt}, x.options().dtype(at::kFloat));
    if (ldxt > M) xt.narrow(1, M, ldxt - M).zero_();
    xt.narrow(1, 0, M).copy_(x.t());
  }
  at::Tensor b;
  if (bias.has_value()) b = bias->contiguous();

  core::CsrSpmmArgs a;
  a.M = M; a.N = N; a.K = K;
  a.crow = crow_p;
  a.col = col.data_ptr<int32_t>();
  a.values = vals.data_ptr();
  a.value_dtype = to_core(vals.scalar_type());
  a.xt = xt.data_ptr<float>();
  a.ldxt = ldxt;
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.ldy = N;
  a.out_dtype = to_core(y.scalar_type());
  const auto isa = static_cast<core::Isa>(g_isa.load(std::memory_order_relaxed));
  parallel_rows_by_nnz(crow_p, N, M, [&](int64_t r0, int64_t r1) { core::csr_spmm_rows(a, r0, r1, isa); });
  return y;
}

}  // namespace

void set_isa(int isa) {
  TORCH_CHECK(isa >= 0 && isa <= 2, "sparsekit: unknown CPU instruction set ", isa);
  g_isa.store(isa);
}
int get_isa() { return g_isa.load(); }
const char* active_isa_name() { return core::isa_name(core::resolve_isa(static_cast<core::Isa>(g_isa.load()))); }

}  // namespace cpu
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CPU, m) { m.impl("csr_mm", &sparsekit::cpu::csr_mm_cpu); }
