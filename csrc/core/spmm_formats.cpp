// Run-time choice of the instruction set for the BSR / bitmap / 2:4 cores.
#include "spmm_formats.h"

namespace sparsekit {
namespace core {

namespace {
struct BytePositions {
  uint8_t t[256][8];
  constexpr BytePositions() : t{} {
    for (int b = 0; b < 256; ++b) {
      int c = 0;
      for (int i = 0; i < 8; ++i)
        if (b & (1 << i)) t[b][c++] = static_cast<uint8_t>(i);
    }
  }
};

struct Perm24 {
  alignas(32) int32_t t[256][8];
  constexpr Perm24() : t{} {
    for (int b = 0; b < 256; ++b) {
      const int32_t p[4] = {b & 3, (b >> 2) & 3, 4 + ((b >> 4) & 3), 4 + ((b >> 6) & 3)};
      for (int i = 0; i < 8; ++i) t[b][i] = p[i & 3];
    }
  }
};

// The column (0..7) of each of the four values of meta byte b.
constexpr int expand_slot(int b, int i) { return (i < 2 ? 0 : 4) + ((b >> (2 * i)) & 3); }
// The value (0..3) that lands in column s of meta byte b, or -1.
constexpr int expand_source(int b, int s) {
  for (int i = 0; i < 4; ++i)
    if (expand_slot(b, i) == s) return i;
  return -1;
}
struct Expand24 {
  alignas(16) uint8_t x16[256][16];
  alignas(32) int32_t x32[256][8];
  constexpr Expand24() : x16{}, x32{} {
    for (int b = 0; b < 256; ++b)
      for (int s = 0; s < 8; ++s) {
        const int i = expand_source(b, s);
        x16[b][2 * s] = static_cast<uint8_t>(i < 0 ? 0x80 : 2 * i);
        x16[b][2 * s + 1] = static_cast<uint8_t>(i < 0 ? 0x80 : 2 * i + 1);
        x32[b][s] = i;
      }
  }
};

// Computed at compile time (constant-initialised: no start-up code, no initialisation order).
constexpr BytePositions kBytePositionsTable{};
constexpr Perm24 kPerm24Table{};
constexpr Expand24 kExpand24Table{};
}  // namespace

const uint8_t (&kBytePositions)[256][8] = kBytePositionsTable.t;
const int32_t (&kPerm24)[256][8] = kPerm24Table.t;
const uint8_t (&kExpand24x16)[256][16] = kExpand24Table.x16;
const int32_t (&kExpand24x32)[256][8] = kExpand24Table.x32;

namespace {
// The AVX-512 kernels here need BW and VL beside F.
bool avx512_bw_vl() {
  static const bool yes = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return yes;
}
}  // namespace

void bsr_spmm_rows(const BsrArgs& a, int64_t r0, int64_t r1, Isa isa) {
  const Isa level = resolve_isa(isa);
  if (level == Isa::kAvx512 && avx512_bw_vl() && avx512::bsr_m1_supported(a)) avx512::bsr_m1(a, r0, r1);
  else if (level == Isa::kAvx512 && avx512_bw_vl() && avx512::bsr_rows_supported(a)) avx512::bsr_rows(a, r0, r1);
  else if (level >= Isa::kAvx2) avx2::bsr_spmm_rows(a, r0, r1);
  else generic::bsr_spmm_rows(a, r0, r1);
}
namespace {
template <typename T>
bool all_finite(const T* p, int64_t n, T exp_mask) {
  T bad = 0;  // branch-free, so that the compiler vectorises it
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<T>((p[i] & exp_mask) == exp_mask);
  return !bad;
}
}  // namespace

bool dense_x_finite(const DenseIo& io) {
  if (io.x) {
    const bool f32 = io.x_dtype == DType::f32;
    const uint16_t e16 = io.x_dtype == DType::bf16 ? 0x7F80 : 0x7C00;
    for (int64_t m = 0; m < io.M; ++m) {
      const bool ok = f32 ? all_finite(static_cast<const uint32_t*>(io.x) + m * io.ldx, io.K, 0x7F800000u)
                          : all_finite(static_cast<const uint16_t*>(io.x) + m * io.ldx, io.K, e16);
      if (!ok) return false;
    }
    return true;
  }
  // xt: K x ldxt float32 (M == 1: ldxt == 1); the padding columns past M are not x's
  const uint32_t* xt = reinterpret_cast<const uint32_t*>(io.xt);
  if (io.M == io.ldxt) return all_finite(xt, io.M * io.K, 0x7F800000u);
  for (int64_t k = 0; k < io.K; ++k)
    if (!all_finite(xt + k * io.ldxt, io.M, 0x7F800000u)) return false;
  return true;
}

void bitmap_spmm_rows(const BitmapArgs& a, int64_t r0, int64_t r1, Isa isa) {
  const Isa level = resolve_isa(isa);
  const bool bw_vl = avx512_bw_vl();
  const bool m1 = a.io.M == 1;
  const bool m1_512 = level == Isa::kAvx512 && m1 && (a.value_dtype == DType::f32 || bw_vl);
  const bool rows_512 = level == Isa::kAvx512 && !m1 && bw_vl && avx512::bitmap_rows_supported(a);
  // The kernels without a column list (AVX2 and AVX-512 at M == 1, AVX-512 by rows) multiply x by the
  // expanded zeros of pruned weights. A pruned weight is a structural zero (an Inf or NaN in x reaches only
  // the outputs of its kept weights), so an x that is not all finite takes the column-list kernels.
  if (((m1 && level >= Isa::kAvx2) || rows_512) &&
      !(a.io.x_finite == 1 || (a.io.x_finite < 0 && dense_x_finite(a.io)))) {
    if (m1) generic::bitmap_spmm_rows(a, r0, r1);
    else avx2::bitmap_spmm_rows(a, r0, r1);
  } else if (m1_512) {
    avx512::bitmap_m1(a, r0, r1);
  } else if (rows_512) {
    avx512::bitmap_rows(a, r0, r1);
  } else if (level >= Isa::kAvx2) {
    avx2::bitmap_spmm_rows(a, r0, r1);
  } else {
    generic::bitmap_spmm_rows(a, r0, r1);
  }
}
bool bitmap_as_csr(int64_t M, Isa isa) { return M > avx512::kBitmapRowsMaxM && resolve_isa(isa) == Isa::kAvx512; }
bool stages_xt(Isa isa) { return resolve_isa(isa) == Isa::kAvx512 && avx512_bw_vl(); }
bool sparse24_stages_pairs(int64_t M, DType value_dtype, DType x_dtype, Isa isa) {
  return resolve_isa(isa) == Isa::kAvx512 && avx512_bw_vl() &&
         avx512::sparse24_pairs_supported(M, value_dtype, x_dtype);
}
void sparse24_spmm_rows(const Sparse24Args& a, int64_t r0, int64_t r1, Isa isa) {
  const Isa level = resolve_isa(isa);
  const bool rows_512 = level == Isa::kAvx512 && avx512_bw_vl() && avx512::sparse24_rows_supported(a);
  if (a.xpairs) avx512::sparse24_pairs(a, r0, r1);  // staged only where sparse24_stages_pairs said so
  else if (rows_512) avx512::sparse24_rows(a, r0, r1);
  else if (level >= Isa::kAvx2) avx2::sparse24_spmm_rows(a, r0, r1);
  else generic::sparse24_spmm_rows(a, r0, r1);
}
void sparse24_decompress_rows(const void* values, const uint8_t* meta, DType vd, int64_t K, int64_t r0, int64_t r1,
                              void* out, Isa isa) {
  if (r0 >= r1 || K <= 0) return;
  if (resolve_isa(isa) >= Isa::kAvx2) avx2::sparse24_decompress_rows(values, meta, vd, K, r0, r1, out);
  else generic::sparse24_decompress_rows(values, meta, vd, K, r0, r1, out);
}

}  // namespace core
}  // namespace sparsekit
