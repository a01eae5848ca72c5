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
constexpr BytePositions kTable{};

struct Perm24 {
  int32_t t[256][8];
  constexpr Perm24() : t{} {
    for (int b = 0; b < 256; ++b) {
      const int32_t p[4] = {b & 3, (b >> 2) & 3, 4 + ((b >> 4) & 3), 4 + ((b >> 6) & 3)};
      for (int i = 0; i < 8; ++i) t[b][i] = p[i & 3];
    }
  }
};
constexpr Perm24 kPermTable{};

// The column (0..7) of each of the four values of meta byte b.
constexpr int expand_slot(int b, int i) { return (i < 2 ? 0 : 4) + ((b >> (2 * i)) & 3); }
// The value (0..3) that lands in column s of meta byte b, or -1.
constexpr int expand_source(int b, int s) {
  for (int i = 0; i < 4; ++i)
    if (expand_slot(b, i) == s) return i;
  return -1;
}
struct Expand24 {
  uint8_t x16[256][16];
  int32_t x32[256][8];
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
constexpr Expand24 kExpandTable{};
}  // namespace

alignas(16) const uint8_t kExpand24x16[256][16] = {
#define SK_ROW(b) {kExpandTable.x16[b][0], kExpandTable.x16[b][1], kExpandTable.x16[b][2], kExpandTable.x16[b][3],     \
                   kExpandTable.x16[b][4], kExpandTable.x16[b][5], kExpandTable.x16[b][6], kExpandTable.x16[b][7],     \
                   kExpandTable.x16[b][8], kExpandTable.x16[b][9], kExpandTable.x16[b][10], kExpandTable.x16[b][11],   \
                   kExpandTable.x16[b][12], kExpandTable.x16[b][13], kExpandTable.x16[b][14], kExpandTable.x16[b][15]}
#define SK_R4(b) SK_ROW(b), SK_ROW(b + 1), SK_ROW(b + 2), SK_ROW(b + 3)
#define SK_R16(b) SK_R4(b), SK_R4(b + 4), SK_R4(b + 8), SK_R4(b + 12)
#define SK_R64(b) SK_R16(b), SK_R16(b + 16), SK_R16(b + 32), SK_R16(b + 48)
    SK_R64(0), SK_R64(64), SK_R64(128), SK_R64(192)
#undef SK_ROW
};

alignas(32) const int32_t kExpand24x32[256][8] = {
#define SK_ROW(b) {kExpandTable.x32[b][0], kExpandTable.x32[b][1], kExpandTable.x32[b][2], kExpandTable.x32[b][3], \
                   kExpandTable.x32[b][4], kExpandTable.x32[b][5], kExpandTable.x32[b][6], kExpandTable.x32[b][7]}
    SK_R64(0), SK_R64(64), SK_R64(128), SK_R64(192)
#undef SK_R64
#undef SK_R16
#undef SK_R4
#undef SK_ROW
};

alignas(32) const int32_t kPerm24[256][8] = {
#define SK_ROW(b) {kPermTable.t[b][0], kPermTable.t[b][1], kPermTable.t[b][2], kPermTable.t[b][3], \
                   kPermTable.t[b][4], kPermTable.t[b][5], kPermTable.t[b][6], kPermTable.t[b][7]}
#define SK_R4(b) SK_ROW(b), SK_ROW(b + 1), SK_ROW(b + 2), SK_ROW(b + 3)
#define SK_R16(b) SK_R4(b), SK_R4(b + 4), SK_R4(b + 8), SK_R4(b + 12)
#define SK_R64(b) SK_R16(b), SK_R16(b + 16), SK_R16(b + 32), SK_R16(b + 48)
    SK_R64(0), SK_R64(64), SK_R64(128), SK_R64(192)
#undef SK_R64
#undef SK_R16
#undef SK_R4
#undef SK_ROW
};

const uint8_t kBytePositions[256][8] = {
#define SK_ROW(b) {kTable.t[b][0], kTable.t[b][1], kTable.t[b][2], kTable.t[b][3], \
                   kTable.t[b][4], kTable.t[b][5], kTable.t[b][6], kTable.t[b][7]}
#define SK_R4(b) SK_ROW(b), SK_ROW(b + 1), SK_ROW(b + 2), SK_ROW(b + 3)
#define SK_R16(b) SK_R4(b), SK_R4(b + 4), SK_R4(b + 8), SK_R4(b + 12)
#define SK_R64(b) SK_R16(b), SK_R16(b + 16), SK_R16(b + 32), SK_R16(b + 48)
    SK_R64(0), SK_R64(64), SK_R64(128), SK_R64(192)
#undef SK_R64
#undef SK_R16
#undef SK_R4
#undef SK_ROW
};

void bsr_spmm_rows(const BsrArgs& a, int64_t r0, int64_t r1, Isa isa) {
  if (resolve_isa(isa) >= Isa::kAvx2) avx2::bsr_spmm_rows(a, r0, r1);
  else generic::bsr_spmm_rows(a, r0, r1);
}
void bitmap_spmm_rows(const BitmapArgs& a, int64_t r0, int64_t r1, Isa isa) {
  const Isa level = resolve_isa(isa);
  if (level == Isa::kAvx512 && a.io.M == 1 && a.value_dtype == DType::f32) avx512::bitmap_m1_f32(a, r0, r1);
  else if (level >= Isa::kAvx2) avx2::bitmap_spmm_rows(a, r0, r1);
  else generic::bitmap_spmm_rows(a, r0, r1);
}
void sparse24_spmm_rows(const Sparse24Args& a, int64_t r0, int64_t r1, Isa isa) {
  if (resolve_isa(isa) >= Isa::kAvx2) avx2::sparse24_spmm_rows(a, r0, r1);
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
