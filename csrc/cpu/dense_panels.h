// The CPU ops' large-M path: W turned into dense rows a panel at a time and multiplied with ATen's
// dense GEMM (oneDNN / BLAS), for the formats whose own kernel loses to dense GEMM once x has
// enough rows: 2:4, CSR and bitmap (ops_cpu.cpp) and int8 weight-only (ops_int8.cpp). See docs/cpu.md.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace sparsekit {
namespace cpu {
namespace panels {

enum class Op { kSparse24, kInt8WeightOnly, kCsr, kBitmap };

// The setting: -1 automatic, 0 never, n >= 1 from M >= n for every op and layer; -2 until
// SPARSEKIT_CPU_DENSE_MIN_M has been read.
inline std::atomic<int64_t> g_min_m{-2};

// SPARSEKIT_CPU_DENSE_MIN_M: "off" or 0 = never, n >= 1 = from M >= n, unset = automatic.
inline int64_t min_m_from_env() {
  const char* e = std::getenv("SPARSEKIT_CPU_DENSE_MIN_M");
  if (!e || !*e) return -1;
  if (!std::strcmp(e, "off")) return 0;
  char* end = nullptr;
  const long long v = std::strtoll(e, &end, 10);
  TORCH_CHECK(end && *end == '\0' && v >= 0,
              "sparsekit: SPARSEKIT_CPU_DENSE_MIN_M must be 'off' or an integer >= 0, got '", e, "'");
  return v;
}

inline int64_t setting() {
  int64_t set = g_min_m.load(std::memory_order_relaxed);
  if (set == -2) {  // a bad value raises on every call, until the variable or the setting is fixed
    set = min_m_from_env();
    int64_t unread = -2;
    g_min_m.compare_exchange_strong(unread, set);
  }
  return set;
}

inline void set(int64_t m) {
  TORCH_CHECK(m >= -1, "sparsekit: expected -1 (automatic), 0 (never) or a positive M, got ", m);
  g_min_m.store(m);
}

// The automatic thresholds, measured on an AMD EPYC with avx512_bf16, 2 threads, caches flushed
// (bench/results/cpu_24_dense.md, cpu_24_pairs.md, cpu_int8wo_dense.md, cpu_sparse_dense.md):
// - 2:4 where the op's AVX-512 kernels run for the dtype (`pairs`: at the instruction set in force; bf16 with AVX-512
//   BF16, float32; the window kernel up to M = 20 / 10, then the one with x staged, csrc/core/spmm_formats_avx512.cpp):
//   never. The kernels beat the panels on LLaMA-7B's and MiniLM's layers at every M measured, 1 to 2048
//   (bench/results/cpu_24_pairs.md, cpu_24_pairs_f32.md and, since each thread stages x for itself,
//   cpu_24_own_staging.md: MiniLM's 384-row layers in bf16 at M = 512-2048, where the panels had been faster in
//   most runs before, 1.11-1.22x of dense against the panels' 0.83-0.96x).
// - 2:4, bf16 otherwise (native bf16 dot products with the instruction set held at AVX2: the AVX2 kernel): from
//   M = 17 (8 layers of 4096 x 4096, 2 threads, ms, window kernel / panels / dense bf16 before the pairs kernel:
//   M = 16 17.2 / 21.5 / 19.4, M = 32 34.0 / 31.6 / 28.8); float32 otherwise: from M = 256. bf16 without
//   native dot products (no avx512_bf16 / amx_bf16) is taken to be as fast as float32 (not measured).
//   float16: never (ATen's float16 GEMM is ten times slower than bf16 here).
// - int8 weight-only, bf16 x with native bf16: from M = 64; otherwise never (the int8 kernel beats a
//   float32 GEMM at every M measured).
//   Both on layers of at least kMinWeights weights (LLaMA-7B's shapes). On smaller ones down to
//   kSmallMinWeights (MiniLM's 384 x 384, 1536 x 384, 384 x 1536; bench/results/cpu_minilm_dense.md) the fill
//   costs more of the time, and the panels win later: 2:4 bf16 from M = 64 (at 32 the kernel is 4-12 %
//   faster), int8 weight-only bf16 from M = 256 (at 64 the kernel is 10-35 % faster); 2:4 float32 from
//   M = 256 as on large layers.
// - CSR and bitmap: from an M and a kept fraction of the weights, in tiers per op and dtype (kSparseRules;
//   the larger M, the sparser a layer may be), on layers of at least kSmallMinWeights weights. Set from
//   bench/results/cpu_sparse_dense.md (MiniLM's 384 x 384, 1536 x 384 and 384 x 1536, LLaMA-7B's 4096 x 4096;
//   10-70 % kept; M = 64-1024): each tier is the lowest kept fraction (of 70 / 50 / 30 / 10 %, less 5 points)
//   from which the panels were never more than 5 % slower than the kernel in any cell from its M on. The
//   kernels' time falls with the kept fraction and the GEMM's does not; the bitmap kernel loses to dense
//   soonest (at M = 1024, 4096 x 4096, bf16, 10 % kept: 267 ms against 89 by panels and 85 dense). Below the
//   smallest layers measured (256 x 256), filling the panel (≈ 50 us) costs as much as the GEMM.
constexpr int64_t kMinWeights = int64_t(1) << 22;
constexpr int64_t kSmallMinWeights = int64_t(1) << 17;
struct SparseTier {
  int64_t min_m;     // 0: unused
  int64_t permille;  // the panels from M >= min_m where at least permille / 1000 of the weights are kept
};
struct SparseRule {
  SparseTier tier[3];  // by increasing M
};
// {CSR, bitmap} x {float32 (and bfloat16 without native dot products), native bfloat16}. float16: never. Bitmap where
// it runs as CSR (AVX-512, core::bitmap_as_csr) takes CSR's tiers: with them the automatic choice was off by more than
// 5 % in 3 of 48 bitmap cells, as in 2 of 48 for CSR (bench/results/cpu_bitmap_as_csr_dense.md).
constexpr SparseRule kSparseRules[2][2] = {
    {{{{256, 650}, {1024, 450}, {0, 0}}}, {{{256, 450}, {512, 250}, {0, 0}}}},        // CSR
    {{{{256, 450}, {512, 250}, {1024, 50}}}, {{{64, 650}, {128, 450}, {256, 50}}}}};  // bitmap
inline bool native_bf16() {
  static const bool yes = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  return yes;
}
// own (bitmap): whether the op runs as CSR (core::bitmap_as_csr); it then takes CSR's tiers.
inline const SparseRule* sparse_rule(Op op, at::ScalarType t, bool own) {
  if ((op != Op::kCsr && op != Op::kBitmap) || (t != at::kFloat && t != at::kBFloat16)) return nullptr;
  return &kSparseRules[op == Op::kBitmap && !own][t == at::kBFloat16 && native_bf16()];
}
inline int64_t auto_min_m(Op op, at::ScalarType t, bool own) {
  if (op == Op::kSparse24 && own) return 0;
  if (op == Op::kInt8WeightOnly) return t == at::kBFloat16 && native_bf16() ? 64 : 0;
  if (op == Op::kCsr || op == Op::kBitmap) {
    const SparseRule* r = sparse_rule(op, t, own);
    return r ? r->tier[0].min_m : 0;
  }
  switch (t) {
    case at::kFloat: return 256;
    case at::kBFloat16: return native_bf16() ? 17 : 256;
    default: return 0;
  }
}

// 2:4 and int8 weight-only on layers of kSmallMinWeights to kMinWeights weights: the M from which the panels
// win there (at least the threshold in force).
inline int64_t small_layer_min_m(Op op, at::ScalarType t) {
  return op == Op::kSparse24 && t == at::kBFloat16 && native_bf16() ? 64 : 256;
}

// The threshold in force (0 = never). own: whether the op's own AVX-512 kernel for large M runs for dtype t at the
// instruction set in force: 2:4's with staged x, bitmap's as CSR (above).
inline int64_t min_m(Op op, at::ScalarType t, bool own) {
  const int64_t set = setting();
  return set >= 0 ? set : auto_min_m(op, t, own);
}

// A threshold set by hand applies to every layer; the automatic one to large enough layers, and for CSR
// and bitmap to those that keep enough weights (nnz of N x K).
inline bool use(Op op, at::ScalarType t, int64_t M, int64_t N, int64_t K, int64_t nnz, bool own) {
  const int64_t m = min_m(op, t, own);
  if (m <= 0 || M < m || N <= 0 || K <= 0) return false;
  if (setting() > 0) return true;
  if (N * K < kSmallMinWeights) return false;
  const SparseRule* r = sparse_rule(op, t, own);
  if (!r) return N * K >= kMinWeights || M >= std::max(m, small_layer_min_m(op, t));
  for (const SparseTier& tier : r->tier)
    if (tier.min_m > 0 && M >= tier.min_m && nnz * 1000 >= N * K * tier.permille) return true;
  return false;
}

// A 64-byte aligned buffer of at least `bytes`, kept per calling thread (and per Tag) between calls: a fresh
// allocation of megabytes is mapped anew by malloc on every call, and its page faults cost as much as the work
// done in it.
template <class Tag>
char* thread_buffer(size_t bytes, const char* op) {
  struct Buffer {
    char* p = nullptr;
    size_t bytes = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer buf;
  const size_t need = (bytes + 63) / 64 * 64;
  if (buf.bytes < need) {
    std::free(buf.p);
    buf.p = static_cast<char*>(std::aligned_alloc(64, need));
    buf.bytes = buf.p ? need : 0;
    TORCH_CHECK(buf.p, op, ": out of memory for a ", need, "-byte buffer");
  }
  return buf.p;
}

// For each panel of rows [n0, n1) of an N x K weight: fill(n0, n1, panel) writes those dense rows
// into `panel` ((n1 - n0) x K, contiguous, `opts`), then gemm(n0, n1, panel) multiplies it into its
// columns of y. Panels are 512 rows and at most 16 MB: fewer rows starve the GEMM when K is large
// (4096 x 11008 bf16 at M = 4: 6.1 ms with 176 rows, 3.1 ms with 512); a panel past the last-level
// cache goes to memory. The buffer is kept per calling thread between calls: a fresh allocation of
// this size is mapped anew by malloc on every call, and its page faults cost as much as the filling.
template <class Fill, class Gemm>
void run(int64_t N, int64_t K, const at::TensorOptions& opts, const char* op, Fill&& fill, Gemm&& gemm) {
  const int64_t es = static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
  const int64_t fit = std::min<int64_t>(512, (int64_t(16) << 20) / (K * es)) / 16 * 16;
  const int64_t rows = std::min(N, std::max<int64_t>(16, fit));
  struct Tag {};
  auto panel = at::from_blob(thread_buffer<Tag>(static_cast<size_t>(rows * K * es), op), {rows, K}, opts);
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t n1 = std::min(N, n0 + rows);
    auto p = panel.narrow(0, 0, n1 - n0);
    fill(n0, n1, p);
    gemm(n0, n1, p);
  }
}

// Dense rows [r0, r1) of a CSR weight, in its values' own storage T (pruned entries +0.0), one row of K
// after another. A column named twice in a row keeps the sum of its values, as the kernels do.
template <class T>
void csr_rows(const int32_t* crow, const int32_t* col, const T* vals, int64_t K, int64_t r0, int64_t r1, T* out) {
  std::memset(static_cast<void*>(out), 0, static_cast<size_t>((r1 - r0) * K) * sizeof(T));
  for (int64_t n = r0; n < r1; ++n) {
    T* o = out + (n - r0) * K;
    const int64_t b = crow[n], e = crow[n + 1];
    bool increasing = true;
    for (int64_t j = b + 1; j < e; ++j) increasing &= col[j] > col[j - 1];
    if (increasing) {
      for (int64_t j = b; j < e; ++j) o[col[j]] = vals[j];
    } else {
      for (int64_t j = b; j < e; ++j)
        o[col[j]] = static_cast<T>(static_cast<float>(o[col[j]]) + static_cast<float>(vals[j]));
    }
  }
}

// Dense rows [r0, r1) of a bitmap weight (words 32-column words a row; a word's kept values in the
// order of its set bits, from word_offsets), as csr_rows.
template <class T>
void bitmap_rows(const uint32_t* bitmap, const int32_t* word_offsets, const T* vals, int64_t words, int64_t K,
                 int64_t r0, int64_t r1, T* out) {
  std::memset(static_cast<void*>(out), 0, static_cast<size_t>((r1 - r0) * K) * sizeof(T));
  for (int64_t n = r0; n < r1; ++n) {
    T* o = out + (n - r0) * K;
    for (int64_t w = 0; w < words; ++w) {
      const T* v = vals + word_offsets[n * words + w];
      for (uint32_t bits = bitmap[n * words + w]; bits; bits &= bits - 1) o[w * 32 + __builtin_ctz(bits)] = *v++;
    }
  }
}

}  // namespace panels
}  // namespace cpu
}  // namespace sparsekit
