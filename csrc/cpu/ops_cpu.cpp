// CPU implementations of sparsekit ops. The schemas are defined in Python
// (sparsekit/ops/_schemas.py); this file only registers kernels for the CPU key.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "checked_once.h"
#include "checks.h"
#include "core/csr_spmm.h"
#include "core/spmm_formats.h"
#include "index_checks.h"
#include "cpu/dense_panels.h"
#include "cpu/ops_cpu.h"

namespace sparsekit {
namespace cpu {
namespace {

std::atomic<int> g_isa{0};
std::atomic<bool> g_aten_index_checks{false};

core::DType to_core(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return core::DType::f32;
    case at::kBFloat16: return core::DType::bf16;
    case at::kHalf: return core::DType::f16;
    default: TORCH_CHECK(false, "sparsekit: unsupported dtype ", t);
  }
}

// The activation staged as float32, transposed (K x ldxt, padded to vectors of 8): one kept
// weight then reads M contiguous floats. For M == 1, x itself as float32.
struct Staged {
  at::Tensor xt;
  int64_t ld;
};

// as16: x (bf16) transposed as it is, for the CSR core's bf16 dot products (core::csr_spmm_bf16_xt; M > 1).
// x with unit column stride where the ISA is AVX-512: 16 x 16 transposes, the threads on column ranges
// (core::stages_xt, core::avx512::stage_xt). ATen's transposing copy took 0.33-0.48 ms at M = 128, K = 4096, float32,
// on one thread at any thread count. CSR, 8 layers of 4096 x 4096, 2 threads, the two stagings alternating in one
// process: 1.16-1.20x as fast at 95 % and M = 64 / 128 in float32, 1.17-1.33x in bfloat16 (x staged as bf16);
// 1.01-1.06x at 70 %.
Staged stage_x(const at::Tensor& x, core::Isa isa, bool as16 = false) {
  const int64_t M = x.size(0), K = x.size(1);
  if (M == 1) {
    // float32 with unit column stride: x itself, without a dispatched reshape / to / contiguous (the
    // host time of a decode call on a small layer; only the data pointer is read)
    if (x.scalar_type() == at::kFloat && (K <= 1 || x.stride(1) == 1)) return {x, 1};
    return {x.reshape({K}).to(at::kFloat).contiguous(), 1};
  }
  const int64_t ldxt = core::csr_spmm_ldxt(M);
  auto xt = at::empty({K, ldxt}, x.options().dtype(as16 ? at::kBFloat16 : at::kFloat));
  if ((K <= 1 || x.stride(1) == 1) && core::stages_xt(isa)) {
    const core::DType xd = to_core(x.scalar_type());
    const void* xp = x.data_ptr();
    void* out = xt.data_ptr();
    const int64_t ldx = x.stride(0), chunks = (K + 15) / 16;
    // at least 8192 elements of xt a task
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 13) / (16 * ldxt));
    at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
      core::avx512::stage_xt(xp, xd, ldx, M, 16 * c0, std::min(K, 16 * c1), out, as16, ldxt);
    });
    return {xt, ldxt};
  }
  if (ldxt > M) xt.narrow(1, M, ldxt - M).zero_();
  xt.narrow(1, 0, M).copy_(x.t());
  return {xt, ldxt};
}

core::DenseIo dense_io(const at::Tensor& x, const Staged& st, const at::Tensor& b, at::Tensor& y) {
  core::DenseIo io;
  io.M = x.size(0); io.N = y.size(1); io.K = x.size(1);
  if (st.xt.defined()) io.xt = st.xt.data_ptr<float>();  // (undefined: the kernel stages x its own way)
  io.ldxt = st.ld;
  io.bias = b.defined() ? b.data_ptr() : nullptr;
  io.y = y.data_ptr(); io.ldy = y.size(1);
  io.out_dtype = to_core(y.scalar_type());
  io.x_dtype = to_core(x.scalar_type());
  if (x.size(1) <= 1 || x.stride(1) == 1) {
    io.x = x.data_ptr();
    io.ldx = x.stride(0);
  }
  return io;
}

core::Isa current_isa() { return static_cast<core::Isa>(g_isa.load(std::memory_order_relaxed)); }

// Splits rows into chunks of about equal nnz, so that threads finish together. start(n) gives row n's
// first value (n in [0, N]; non-decreasing, start(N) = nnz); it is read only when the work is split.
template <typename Start, typename F>
void parallel_rows_by_nnz(Start&& start, int64_t N, int64_t work_per_nnz, F&& fn) {
  const int64_t nnz = start(N);
  const int64_t work = (nnz + N) * std::max<int64_t>(work_per_nnz, 1);
  const int64_t chunks =
      work < (1 << 15) ? 1 : std::min<int64_t>(at::get_num_threads() * 4, std::max<int64_t>(N, 1));
  if (chunks == 1) {
    fn(0, N);
    return;
  }
  auto row_at = [&](int64_t c) -> int64_t {  // the first row whose start reaches the chunk's share
    if (c >= chunks) return N;
    const int64_t target = nnz * c / chunks;
    int64_t lo = 0, hi = N;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (start(mid) < target) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const int64_t r0 = row_at(c0), r1 = row_at(c1);
    if (r0 < r1) fn(r0, r1);
  });
}

// y = x W^T (+ bias) at large M (dense_panels.h) for a pruned W whose dense rows [n0, n1) rows(n0, n1, out)
// writes bit for bit in x's dtype (pruned entries +0.0): the result is dense's up to the order of the sums.
// The caller makes sure x is finite (a pruned weight times Inf would be NaN here, never in the format's
// kernel, where pruned weights are structural zeros). rows runs in parallel on disjoint row ranges.
template <class Rows>
void mm_dense_panels(const char* op, const at::Tensor& x, const at::Tensor& b, at::Tensor& y, Rows&& rows) {
  const int64_t N = y.size(1), K = x.size(1);
  const int64_t es = static_cast<int64_t>(x.element_size());
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(K, 1));
  panels::run(
      N, K, x.options(), op,
      [&](int64_t n0, int64_t n1, at::Tensor& p) {
        char* out = static_cast<char*>(p.data_ptr());
        at::parallel_for(n0, n1, grain, [&](int64_t r0, int64_t r1) { rows(r0, r1, out + (r0 - n0) * K * es); });
      },
      [&](int64_t n0, int64_t n1, at::Tensor& p) {
        auto ys = y.narrow(1, n0, n1 - n0);
        if (b.defined()) at::addmm_out(ys, b.narrow(0, n0, n1 - n0), x, p.t());
        else at::mm_out(ys, x, p.t());
      });
}

// Whether x (M x K) holds no Inf or NaN. Rows of unit stride are read in place (core::dense_x_finite: ATen's
// isfinite(x).all() takes 70 us for 128 x 256 floats, the time of the whole GEMM); other layouts through ATen.
bool x_finite(const at::Tensor& x) {
  if (x.size(1) > 1 && x.stride(1) != 1) return at::isfinite(x).all().item<bool>();
  core::DenseIo io;
  io.M = x.size(0);
  io.K = x.size(1);
  io.x = x.data_ptr();
  io.ldx = x.stride(0);
  io.x_dtype = to_core(x.scalar_type());
  return core::dense_x_finite(io);
}

// Whether the 2:4 op's kernel with staged x (core::sparse24_stages_pairs: bf16 in pairs, float32 transposed; the
// window kernel below its M) runs for dtype t on this CPU at the instruction set in force (dense_panels.h's `pairs`).
bool sparse24_pairs_run(at::ScalarType t) {
  if (t != at::kBFloat16 && t != at::kFloat) return false;
  const core::DType d = to_core(t);
  return core::sparse24_stages_pairs(core::avx512::sparse24_rows_max_m(d) + 1, d, d, current_isa());
}

// Whether op's own AVX-512 kernel for large M runs for dtype t at the instruction set in force (dense_panels.h's
// `own`): 2:4's with staged x, bitmap's as CSR.
bool own_kernel_runs(panels::Op op, at::ScalarType t) {
  if (op == panels::Op::kSparse24) return sparse24_pairs_run(t);
  return op == panels::Op::kBitmap && core::bitmap_as_csr(core::avx512::kBitmapRowsMaxM + 1, current_isa());
}

// Whether the CSR / bitmap / 2:4 op takes its dense-panel path for this call: the threshold in force for
// its dtype and density, and an x without Inf or NaN (the check reads x once, at large M only).
bool take_dense_panels(panels::Op op, const at::Tensor& x, int64_t N, int64_t nnz) {
  const int64_t M = x.size(0), K = x.size(1);
  return panels::use(op, x.scalar_type(), M, N, K, nnz, own_kernel_runs(op, x.scalar_type())) && x_finite(x);
}

// The CSR core's arguments for x (M x K) against values of vals' dtype into y (M x N): x staged for the core (as bf16
// where core::csr_spmm_bf16_xt says so), its pointer and leading dimension, y's and the dtypes. The weight's rows,
// values, bias and y's first column are the caller's. `st` keeps the staged x alive.
core::CsrSpmmArgs csr_core_args(const at::Tensor& x, const at::Tensor& vals, const at::Tensor& y, core::Isa isa,
                                Staged& st) {
  core::CsrSpmmArgs a;
  a.M = x.size(0); a.N = y.size(1); a.K = x.size(1);
  a.value_dtype = to_core(vals.scalar_type());
  const bool x16 = core::csr_spmm_bf16_xt(a.M, a.value_dtype, to_core(x.scalar_type()), isa);
  st = stage_x(x, isa, x16);
  if (x16) a.xt16 = reinterpret_cast<const uint16_t*>(st.xt.data_ptr<at::BFloat16>());
  else a.xt = st.xt.data_ptr<float>();
  a.ldxt = st.ld;
  a.values = vals.data_ptr();
  a.y = y.data_ptr();
  a.ldy = y.size(1);
  a.out_dtype = to_core(y.scalar_type());
  return a;
}

at::Tensor csr_mm_cpu(const at::Tensor& x, const at::Tensor& crow_indices, const at::Tensor& col_indices,
                      const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  check_csr_mm_args(x, crow_indices, col_indices, values, out_features, bias);
  TORCH_CHECK(x.device().is_cpu(), "sparsekit.csr_mm: expected CPU tensors, got x on ", x.device());
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  const auto crow = crow_indices.contiguous();
  const auto col = col_indices.contiguous();
  const int32_t* crow_p = crow.data_ptr<int32_t>();
  CheckedOnce::run("csr_mm", {&crow_indices, &col_indices}, {N, values.numel(), K}, [&] {
    if (aten_index_checks())
      aten_checks::check_compressed_indices("sparsekit.csr_mm", crow, N, "nnz", values.numel(), col, K, "in_features");
    else
      check_compressed_indices("sparsekit.csr_mm", crow_p, N, "nnz", values.numel(), col.data_ptr<int32_t>(), K,
                               "in_features");
  });
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto vals = values.contiguous();
  at::Tensor b;
  if (bias.has_value()) b = bias->contiguous();
  if (take_dense_panels(panels::Op::kCsr, x, N, vals.numel())) {
    const int32_t* col_p = col.data_ptr<int32_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, vals.scalar_type(), "csr_mm_dense_panels", [&] {
      const scalar_t* v = vals.data_ptr<scalar_t>();
      mm_dense_panels("sparsekit.csr_mm", x, b, y, [&](int64_t r0, int64_t r1, char* out) {
        panels::csr_rows(crow_p, col_p, v, K, r0, r1, reinterpret_cast<scalar_t*>(out));
      });
    });
    return y;
  }
  const auto isa = current_isa();
  Staged st;
  core::CsrSpmmArgs a = csr_core_args(x, vals, y, isa, st);
  a.crow = crow_p;
  a.col = col.data_ptr<int32_t>();
  a.bias = b.defined() ? b.data_ptr() : nullptr;
  auto row_start = [crow_p](int64_t n) -> int64_t { return crow_p[n]; };
  parallel_rows_by_nnz(row_start, N, M, [&](int64_t r0, int64_t r1) { core::csr_spmm_rows(a, r0, r1, isa); });
  return y;
}

at::Tensor bsr_mm_cpu(const at::Tensor& x, const at::Tensor& crow_indices, const at::Tensor& col_indices,
                      const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  check_bsr_mm_args(x, crow_indices, col_indices, values, out_features, bias);
  const int64_t M = x.size(0), N = out_features;
  const auto crow = crow_indices.contiguous();
  const auto col = col_indices.contiguous();
  const int64_t R = values.size(1), C = values.size(2), NB = N / R;
  const int32_t* crow_p = crow.data_ptr<int32_t>();
  CheckedOnce::run("bsr_mm", {&crow_indices, &col_indices}, {NB, values.size(0), x.size(1) / C}, [&] {
    if (aten_index_checks())
      aten_checks::check_compressed_indices("sparsekit.bsr_mm", crow, NB, "nblocks", values.size(0), col,
                                            x.size(1) / C, "in_features / C");
    else
      check_compressed_indices("sparsekit.bsr_mm", crow_p, NB, "nblocks", values.size(0), col.data_ptr<int32_t>(),
                               x.size(1) / C, "in_features / C");
  });
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto vals = values.contiguous();
  const auto isa = current_isa();
  const Staged st = stage_x(x, isa);
  at::Tensor b;
  if (bias.has_value()) b = bias->contiguous();
  core::BsrArgs a;
  a.io = dense_io(x, st, b, y);
  a.R = R; a.C = C;
  a.crow = crow_p; a.col = col.data_ptr<int32_t>();
  a.values = vals.data_ptr(); a.value_dtype = to_core(vals.scalar_type());
  auto row_start = [crow_p](int64_t n) -> int64_t { return crow_p[n]; };
  parallel_rows_by_nnz(row_start, NB, M * R * C, [&](int64_t r0, int64_t r1) { core::bsr_spmm_rows(a, r0, r1, isa); });
  return y;
}

// Bitmap as CSR (core::bitmap_as_csr: from M = 9 where the CSR core's AVX-512 kernels run). Each thread decodes its
// rows into column lists in a buffer of its own (core::avx512::bitmap_decode_rows: 1.2 ms a 4096 x 4096 layer, one
// thread), in chunks of whole 64-row blocks of about kBitmapCsrKept kept weights, and runs the CSR core on each chunk
// with the bitmap's values, which lie in the same order. The CSR core prefetches a block's weights while the block
// before it runs, so a chunk's first block streams unprefetched: chunks of 128 rows were up to 1.4x slower than
// chunks of 2^18-2^20 kept weights (90 %, M = 64, float32), which ran as fast as one chunk per thread. The bitmap's
// own kernel for these M (a column list per row, then 32 activation rows of x transposed per pass over the weights)
// was 1.5-5x slower (bench/results/cpu_bitmap_as_csr.md).
constexpr int64_t kBitmapCsrKept = int64_t(1) << 20, kBitmapCsrMinRows = 64;

// row_start(n): row n's first value (n in [0, N]), as bitmap_mm_cpu's.
template <typename Start>
void bitmap_mm_as_csr(const at::Tensor& x, const uint32_t* bits, Start&& row_start, int64_t words,
                      const at::Tensor& vals, const at::Tensor& b, at::Tensor& y, core::Isa isa) {
  Staged st;
  const core::CsrSpmmArgs a = csr_core_args(x, vals, y, isa, st);
  const int64_t ves = vals.element_size(), yes = y.element_size();
  const char* v = static_cast<const char*>(a.values);
  const char* bias = b.defined() ? static_cast<const char*>(b.data_ptr()) : nullptr;
  char* out = static_cast<char*>(a.y);
  parallel_rows_by_nnz(row_start, a.N, a.M, [&](int64_t r0, int64_t r1) {
    for (int64_t c0 = r0, c1; c0 < r1; c0 = c1) {
      const int64_t v0 = row_start(c0);
      c1 = std::min(r1, c0 + kBitmapCsrMinRows);
      while (c1 < r1 && row_start(c1) - v0 < kBitmapCsrKept) c1 = std::min(r1, c1 + kBitmapCsrMinRows);
      const int64_t rows = c1 - c0, kept = row_start(c1) - v0;
      struct Tag {};
      const size_t ints = static_cast<size_t>(rows + 1 + kept + core::avx512::bitmap_decode_slack(words));
      auto* crow = reinterpret_cast<int32_t*>(panels::thread_buffer<Tag>(ints * 4, "sparsekit.bitmap_mm"));
      int32_t* col = crow + rows + 1;
      if (core::avx512::bitmap_decode_rows(bits, words, c0, c1, kept, crow, col) != kept)
        throw std::logic_error("sparsekit.bitmap_mm: the bitmap's kept weights and word_offsets disagree");
      core::CsrSpmmArgs t = a;
      t.N = rows;
      t.crow = crow;
      t.col = col;
      t.values = v + v0 * ves;
      t.bias = bias ? bias + c0 * yes : nullptr;
      t.y = out + c0 * yes;
      core::csr_spmm_rows(t, 0, rows, isa);
    }
  });
}

at::Tensor bitmap_mm_cpu(const at::Tensor& x, const at::Tensor& bitmap, const at::Tensor& word_offsets,
                         const at::Tensor& values, const std::optional<at::Tensor>& bias) {
  check_bitmap_mm_args(x, bitmap, word_offsets, values, bias);
  const int64_t M = x.size(0), N = bitmap.size(0), words = bitmap.size(1);
  const auto bm = bitmap.contiguous();
  const auto wo = word_offsets.contiguous();
  const int32_t* wo_p = wo.data_ptr<int32_t>();
  CheckedOnce::run("bitmap_mm", {&bitmap, &word_offsets}, {N, words, x.size(1), values.numel()}, [&] {
    if (aten_index_checks())
      aten_checks::check_bitmap_words("sparsekit.bitmap_mm", bm, wo, x.size(1), values.numel());
    else
      check_bitmap_words("sparsekit.bitmap_mm", bm.data_ptr<int32_t>(), wo_p, N, words, x.size(1), values.numel());
  });
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto vals = values.contiguous();
  const int64_t nnz = vals.numel();
  at::Tensor b;
  if (bias.has_value()) b = bias->contiguous();
  const auto* bits = reinterpret_cast<const uint32_t*>(bm.data_ptr<int32_t>());
  if (take_dense_panels(panels::Op::kBitmap, x, N, nnz)) {
    const int64_t K = x.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, vals.scalar_type(), "bitmap_mm_dense_panels", [&] {
      const scalar_t* v = vals.data_ptr<scalar_t>();
      mm_dense_panels("sparsekit.bitmap_mm", x, b, y, [&](int64_t r0, int64_t r1, char* out) {
        panels::bitmap_rows(bits, wo_p, v, words, K, r0, r1, reinterpret_cast<scalar_t*>(out));
      });
    });
    return y;
  }
  // Row starts for load balance: a row's first word offset.
  auto row_start = [=](int64_t n) -> int64_t { return n == N ? nnz : (words ? wo_p[n * words] : 0); };
  const auto isa = current_isa();
  if (words > 0 && core::bitmap_as_csr(M, isa)) {
    bitmap_mm_as_csr(x, bits, row_start, words, vals, b, y, isa);
    return y;
  }
  const Staged st = stage_x(x, isa);
  core::BitmapArgs a;
  a.io = dense_io(x, st, b, y);
  a.bitmap = bits;
  a.word_offsets = wo_p;
  a.values = vals.data_ptr(); a.nnz = nnz; a.value_dtype = to_core(vals.scalar_type());
  // once, not in every thread's call: the kernels that multiply x by pruned weights' zeros need x finite
  if (M <= core::avx512::kBitmapRowsMaxM) a.io.x_finite = core::dense_x_finite(a.io) ? 1 : 0;
  parallel_rows_by_nnz(row_start, N, M + 1, [&](int64_t r0, int64_t r1) {
    core::bitmap_spmm_rows(a, r0, r1, isa);
  });
  return y;
}

// The 2:4 kernel with staged x (core::avx512::sparse24_stage_pairs: bf16 in pairs at the six position pairs of every
// group, 3x x's bytes; float32 transposed): in one parallel region, every thread stages x's blocks of 64 rows one at
// a time into a buffer of its own (6 x 64 x K bytes in bf16, 4 x 64 x K in float32, kept between calls) and runs
// its weight rows against each block. Every thread stages all of x, but reads only what it wrote itself, from its
// own L2. Staging x once for all the threads (what this did before) made each thread read the others' pieces: on
// this project's 2-vCPU machine that was 1.0-1.4x slower on LLaMA-7B's and MiniLM's layers and 2-4x on layers of
// 64-128 rows, and about half of the processes that had run a larger layer first took MiniLM's 384 x 1536 at
// M = 128 at one thread's speed (0.68-0.73 ms against 0.33-0.36; bench/results/cpu_24_own_staging.md).
// Staging x costs about as much as 12-30 weight rows of the kernel (one thread, K = 1536 / 4096, M = 32 / 128):
// threads take at least kPairsMinRows rows each.
constexpr int64_t kPairsMinRows = 32;

at::Tensor sparse24_mm_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                           const std::optional<at::Tensor>& bias) {
  check_sparse24_mm_args(x, values, meta, bias);
  const int64_t M = x.size(0), N = values.size(0), K = x.size(1);
  const auto mt = meta.contiguous();
  check_meta_once("sparsekit.sparse24_mm", meta, mt, N, K);
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto vals = values.contiguous();
  at::Tensor b;
  if (bias.has_value()) b = bias->contiguous();
  // x and the values share a dtype (checked above); a non-finite x keeps the 2:4 kernel
  if (take_dense_panels(panels::Op::kSparse24, x, N, N * (K / 2))) {
    const core::DType vd = to_core(vals.scalar_type());
    const uint8_t* mp = mt.data_ptr<uint8_t>();
    const auto isa = current_isa();
    mm_dense_panels("sparsekit.sparse24_mm", x, b, y, [&](int64_t r0, int64_t r1, char* out) {
      core::sparse24_decompress_rows(vals.data_ptr(), mp, vd, K, r0, r1, out, isa);
    });
    return y;
  }
  const auto isa = current_isa();
  const core::DType vd = to_core(vals.scalar_type());
  core::Sparse24Args a;
  a.values = vals.data_ptr(); a.value_dtype = vd;
  a.meta = mt.data_ptr<uint8_t>();
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(K / 2 * M, 1));
  if (core::sparse24_stages_pairs(M, vd, to_core(x.scalar_type()), isa)) {
    // x staged for the kernel, by each thread for itself (kPairsMinRows above)
    const at::Tensor xr = K <= 1 || x.stride(1) == 1 ? x : x.contiguous();
    const char* xp = static_cast<const char*>(xr.data_ptr());
    const int64_t ldx = xr.stride(0), es = xr.element_size();
    const int64_t rows = std::min(M, core::avx512::kSparse24PairsRows);
    a.io = dense_io(x, Staged{at::Tensor(), 0}, b, y);
    a.io.x = nullptr;  // (read through the staging only)
    at::parallel_for(0, N, std::max(grain, kPairsMinRows), [&](int64_t r0, int64_t r1) {
      struct Tag {};
      auto* own = reinterpret_cast<uint32_t*>(panels::thread_buffer<Tag>(
          static_cast<size_t>(core::avx512::sparse24_pairs_words(K, vd)) * 4, "sparsekit.sparse24_mm"));
      core::Sparse24Args t = a;
      t.xpairs = own;
      for (int64_t m0 = 0; m0 < M; m0 += rows) {
        t.io.M = std::min(rows, M - m0);
        t.io.y = static_cast<char*>(a.io.y) + m0 * a.io.ldy * es;
        core::avx512::sparse24_stage_pairs(xp + m0 * ldx * es, ldx, t.io.M, K, vd, own);
        core::sparse24_spmm_rows(t, r0, r1, isa);
      }
    });
    return y;
  }
  const Staged st = stage_x(x, isa);  // (kept alive: a.io points into it)
  a.io = dense_io(x, st, b, y);
  at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) { core::sparse24_spmm_rows(a, r0, r1, isa); });
  return y;
}

}  // namespace

void set_isa(int isa) {
  TORCH_CHECK(isa >= 0 && isa <= 3, "sparsekit: unknown CPU instruction set ", isa);
  g_isa.store(isa);
}
int get_isa() { return g_isa.load(); }
void set_aten_index_checks(bool on) { g_aten_index_checks.store(on); }
void set_dense_min_m(int64_t m) { panels::set(m); }
namespace {
at::ScalarType dtype_named(const char* dtype) {
  if (!std::strcmp(dtype, "float32")) return at::kFloat;
  if (!std::strcmp(dtype, "bfloat16")) return at::kBFloat16;
  if (!std::strcmp(dtype, "float16")) return at::kHalf;
  TORCH_CHECK(false, "sparsekit: expected 'float32', 'bfloat16' or 'float16', got '", dtype, "'");
}
panels::Op op_named(const char* op) {
  if (!std::strcmp(op, "2:4")) return panels::Op::kSparse24;
  if (!std::strcmp(op, "int8-wo")) return panels::Op::kInt8WeightOnly;
  if (!std::strcmp(op, "csr")) return panels::Op::kCsr;
  if (!std::strcmp(op, "bitmap")) return panels::Op::kBitmap;
  TORCH_CHECK(false, "sparsekit: expected '2:4', 'int8-wo', 'csr' or 'bitmap', got '", op, "'");
}
}  // namespace
int64_t dense_min_m(const char* op, const char* dtype) {
  const panels::Op o = op_named(op);
  const at::ScalarType t = dtype_named(dtype);
  return panels::min_m(o, t, own_kernel_runs(o, t));
}
bool dense_panels_take(const char* op, const char* dtype, int64_t M, int64_t N, int64_t K, int64_t nnz) {
  const panels::Op o = op_named(op);
  const at::ScalarType t = dtype_named(dtype);
  return panels::use(o, t, M, N, K, nnz, own_kernel_runs(o, t));
}
bool sparse24_pairs_kernel(const char* dtype, int64_t M) {
  const at::ScalarType t = dtype_named(dtype);
  return sparse24_pairs_run(t) && M > core::avx512::sparse24_rows_max_m(to_core(t));
}
bool bitmap_csr_kernel(int64_t M) { return core::bitmap_as_csr(M, current_isa()); }
bool aten_index_checks() { return g_aten_index_checks.load(std::memory_order_relaxed); }
void check_meta_once(const char* op, const at::Tensor& meta, const at::Tensor& mt, int64_t N, int64_t K) {
  CheckedOnce::run(op, {&meta}, {N, K}, [&] {
    if (aten_index_checks()) aten_checks::check_meta_positions(op, mt, K);
    else check_meta_positions(op, mt.data_ptr<uint8_t>(), N, K);
  });
}
const char* active_isa_name() { return core::isa_name(core::resolve_isa(static_cast<core::Isa>(g_isa.load()))); }

}  // namespace cpu
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CPU, m) {
  m.impl("csr_mm", &sparsekit::cpu::csr_mm_cpu);
  m.impl("bsr_mm", &sparsekit::cpu::bsr_mm_cpu);
  m.impl("bitmap_mm", &sparsekit::cpu::bitmap_mm_cpu);
  m.impl("sparse24_mm", &sparsekit::cpu::sparse24_mm_cpu);
}
