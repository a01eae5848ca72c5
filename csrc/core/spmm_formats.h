// BSR, bitmap and 2:4 sparse weight x dense activation, torch-free kernel cores.
//
// Same contract as the CSR core (csr_spmm.h): y[m, n] = sum_k W[n, k] x[m, k] (+ bias[n]) for the
// rows [row_begin, row_end) of W; the activation is staged as float32 xt (K x ldxt, transposed,
// ldxt = csr_spmm_ldxt(M), padding readable), accumulation in float32, y of out_dtype (M x ldy).
// Buffer layouts: sparsekit/formats/LAYOUTS.md.
#pragma once
#include <cstdint>

#include "csr_spmm.h"

namespace sparsekit {
namespace core {

struct DenseIo {
  int64_t M = 0, N = 0, K = 0;
  const float* xt = nullptr;   // K x ldxt float32 (for M == 1: x itself, ldxt == 1)
  int64_t ldxt = 0;
  const void* bias = nullptr;  // N of out_dtype, or null
  void* y = nullptr;           // M x ldy of out_dtype
  int64_t ldy = 0;
  DType out_dtype = DType::f32;
  DType x_dtype = DType::f32;  // the dtype x came in; xt holds its values exactly (bf16: bf16 dot products are exact)
  const void* x = nullptr;     // x as given, M x ldx of x_dtype with unit column stride, or null (kernels that
  int64_t ldx = 0;             // read x by rows: the AVX-512 bitmap at 2 <= M <= 8)
  // Whether every value of x is finite: 1 yes, 0 no, -1 not known (bitmap_spmm_rows then checks, per call;
  // an op that splits rows across threads sets it once with dense_x_finite).
  int8_t x_finite = -1;
};

// Whether every value of x's M rows is finite: io.x when set, else xt.
bool dense_x_finite(const DenseIo& io);

struct BsrArgs {
  DenseIo io;
  int64_t R = 0, C = 0;             // block shape; N % R == 0, K % C == 0
  const int32_t* crow = nullptr;    // N / R + 1
  const int32_t* col = nullptr;     // nblocks, block-column numbers
  const void* values = nullptr;     // nblocks x R x C of value_dtype
  DType value_dtype = DType::f32;
};

struct BitmapArgs {
  DenseIo io;
  const uint32_t* bitmap = nullptr;       // N x words, words = ceil(K / 32)
  const int32_t* word_offsets = nullptr;  // N x words
  const void* values = nullptr;           // nnz of value_dtype
  int64_t nnz = 0;                        // values' length (the kernels never read past it)
  DType value_dtype = DType::f32;
};

struct Sparse24Args {
  DenseIo io;                      // K % 4 == 0
  const void* values = nullptr;    // N x K/2 of value_dtype
  const uint8_t* meta = nullptr;   // N x ceil(K / 8)
  DType value_dtype = DType::f32;
  // x staged for avx512::sparse24_pairs (sparse24_stage_pairs: bf16 in pairs, float32 transposed; io.M rows), or
  // null.
  const uint32_t* xpairs = nullptr;
};

// kBytePositions[b][i]: the position of the i-th set bit of byte b (0 past the popcount).
extern const uint8_t (&kBytePositions)[256][8];
// kPerm24[b]: for a 2:4 meta byte b (two groups of four columns), the positions of its four
// kept values within those eight columns, repeated in lanes 0-3 and 4-7.
extern const int32_t (&kPerm24)[256][8];

// For BSR the range counts block rows: rows [block_row_begin * R, block_row_end * R).
void bsr_spmm_rows(const BsrArgs& a, int64_t block_row_begin, int64_t block_row_end, Isa isa = Isa::kAuto);
void bitmap_spmm_rows(const BitmapArgs& a, int64_t row_begin, int64_t row_end, Isa isa = Isa::kAuto);
void sparse24_spmm_rows(const Sparse24Args& a, int64_t row_begin, int64_t row_end, Isa isa = Isa::kAuto);
// Whether a 2:4 call of M rows with these dtypes takes x staged (bf16 in pairs, float32 transposed) on this CPU at
// `isa` (Sparse24Args::xpairs; avx512::sparse24_pairs_supported): the caller then stages it and sets xpairs.
bool sparse24_stages_pairs(int64_t M, DType value_dtype, DType x_dtype, Isa isa = Isa::kAuto);
// Whether a bitmap call of M rows runs as CSR on this CPU at `isa`: the caller decodes its rows into column lists
// (avx512::bitmap_decode_rows) and runs csr_spmm_rows on them with the bitmap's values, from M = 9 (past
// avx512::kBitmapRowsMaxM) where the CSR core's AVX-512 kernels run.
bool bitmap_as_csr(int64_t M, Isa isa = Isa::kAuto);
// Whether avx512::stage_xt runs on this CPU at `isa` (AVX-512 F, BW and VL); elsewhere the caller transposes x its
// own way.
bool stages_xt(Isa isa = Isa::kAuto);

// The dense rows [row_begin, row_end) of a 2:4 weight (K % 4 == 0), written bit for bit in the
// values' own dtype (pruned entries +0.0) to `out`, one row of K elements after another. The CPU
// 2:4 op multiplies such panels with a dense GEMM when M is large (csrc/cpu/ops_cpu.cpp).
void sparse24_decompress_rows(const void* values, const uint8_t* meta, DType value_dtype, int64_t K,
                              int64_t row_begin, int64_t row_end, void* out, Isa isa = Isa::kAuto);
// kExpand24x16[b]: a byte shuffle (pshufb) that spreads the four 16-bit values of a 2:4 meta byte b
// into its eight columns, zero (0x80) where pruned. kExpand24x32[b]: the same for 32-bit values,
// as lane indices, -1 where pruned.
extern const uint8_t (&kExpand24x16)[256][16];
extern const int32_t (&kExpand24x32)[256][8];

namespace generic {
void bsr_spmm_rows(const BsrArgs& a, int64_t r0, int64_t r1);
void bitmap_spmm_rows(const BitmapArgs& a, int64_t r0, int64_t r1);
void sparse24_spmm_rows(const Sparse24Args& a, int64_t r0, int64_t r1);
void sparse24_decompress_rows(const void* values, const uint8_t* meta, DType vd, int64_t K, int64_t r0, int64_t r1,
                              void* out);
}  // namespace generic
namespace avx2 {
void bsr_spmm_rows(const BsrArgs& a, int64_t r0, int64_t r1);
void bitmap_spmm_rows(const BitmapArgs& a, int64_t r0, int64_t r1);
void sparse24_spmm_rows(const Sparse24Args& a, int64_t r0, int64_t r1);
void sparse24_decompress_rows(const void* values, const uint8_t* meta, DType vd, int64_t K, int64_t r0, int64_t r1,
                              void* out);
}  // namespace avx2
namespace avx512 {
// These multiply x by the expanded zeros of pruned weights: x must be all finite (bitmap_spmm_rows sends an x
// with Inf or NaN to the column-list kernels, so that pruned weights stay structural zeros).
// M == 1 (y row 0 only; ldy irrelevant). float32 values need AVX-512 F, 16-bit ones also BW + VL.
void bitmap_m1(const BitmapArgs& a, int64_t r0, int64_t r1);
// 2 <= M <= kBitmapRowsMaxM with io.x set (AVX-512 F + BW + VL): whether this CPU runs bitmap_rows for a's
// dtypes, and the kernel.
constexpr int64_t kBitmapRowsMaxM = 8;
bool bitmap_rows_supported(const BitmapArgs& a);
void bitmap_rows(const BitmapArgs& a, int64_t r0, int64_t r1);
// The kept columns of bitmap rows [r0, r1) (N x words) as CSR: crow[i] for i <= r1 - r0 where row r0 + i starts,
// counted from row r0's first kept value (the bitmap's values are stored in that order), col the columns in
// order. Returns the count. Throws std::logic_error once the count passes max_count (checked before each row and
// at the end): col needs room for max_count + bitmap_decode_slack(words) entries. AVX-512 F (bitmap_as_csr).
inline int64_t bitmap_decode_slack(int64_t words) { return 32 * words + 16; }
int64_t bitmap_decode_rows(const uint32_t* bitmap, int64_t words, int64_t r0, int64_t r1, int64_t max_count,
                           int32_t* crow, int32_t* col);
// 2:4 with io.x set, 1 <= M <= sparse24_rows_max_m(x's dtype), x of the values' dtype: float32, or bf16 with AVX-512
// BF16 (AVX-512 F + BW + VL): whether this CPU runs sparse24_rows for a's arguments. Unlike the bitmap kernels above it
// reads x only at kept columns: any x. float32 up to M = 10 (sparse24_pairs from 11; 8 layers of 4096 x 4096, 2
// threads, ms, window / staged: M = 9 20.3 / 22.8, M = 12 25.8 / 22.8, M = 16 37.6 / 23.2, M = 24 50.6 / 31.5), bf16
// up to 20 (sparse24_pairs from 21; at M = 20 21.7 / 22.8, at 24 26.4 / 26.0).
constexpr int64_t kSparse24RowsMaxMF32 = 10, kSparse24RowsMaxMBf16 = 20;
inline int64_t sparse24_rows_max_m(DType x_dtype) {
  return x_dtype == DType::f32 ? kSparse24RowsMaxMF32 : kSparse24RowsMaxMBf16;
}
bool sparse24_rows_supported(const Sparse24Args& a);
void sparse24_rows(const Sparse24Args& a, int64_t r0, int64_t r1);
// 2:4 past sparse24_rows' last M, x of the values' dtype (AVX-512 F + BW + VL; bf16 also AVX-512 BF16): whether this
// CPU runs sparse24_pairs; the staging it reads; the kernel. x is staged kSparse24PairsRows rows at most at a time,
// 16 rows of x per 64-byte register; per group of four columns g: bf16, for each position pair p of the six a 2:4
// group may keep (in the order 01 02 03 12 13 23), a register holding per row x at the pair's two columns as a bf16
// pair (3x x's bytes); float32, the group's four columns of x (x transposed). Zero past M.
// sparse24_stage_pairs writes M <= kSparse24PairsRows rows of x (M x ldx, unit column stride) into `pairs` (64-byte
// aligned, sparse24_pairs_words 32-bit words); sparse24_pairs reads a.xpairs, staged so for a.io.M rows. Like
// sparse24_rows it reads x only at kept columns: any x.
constexpr int kSparse24PairsRegs = 4;
constexpr int64_t kSparse24PairsRows = 16 * kSparse24PairsRegs;
inline int64_t sparse24_pairs_words(int64_t K, DType x_dtype) {
  return kSparse24PairsRows * (x_dtype == DType::f32 ? 4 : 6) * (K / 4);
}
bool sparse24_pairs_supported(int64_t M, DType value_dtype, DType x_dtype);
void sparse24_stage_pairs(const void* x, int64_t ldx, int64_t M, int64_t K, DType x_dtype, uint32_t* pairs);
// x (M x K of x_dtype, rows ldx elements apart) at columns [k0, k1) transposed into xt: column k's M values at
// xt + k * ldxt, the lanes from M to ldxt zero (ldxt >= M; the CSR core's xt with csr_spmm_ldxt(M)); as float32, or
// with xt16 as bf16 (x bf16 only: its bits as they are). AVX-512 F + BW + VL.
void stage_xt(const void* x, DType x_dtype, int64_t ldx, int64_t M, int64_t k0, int64_t k1, void* xt, bool xt16,
              int64_t ldxt);
void sparse24_pairs(const Sparse24Args& a, int64_t r0, int64_t r1);
// BSR at M == 1 with blocks 16, 32 or 64 columns wide (AVX-512 F; 16-bit values also BW + VL): whether
// bsr_m1 runs for a's arguments (block rows r0 .. r1, as bsr_spmm_rows), and the kernel.
bool bsr_m1_supported(const BsrArgs& a);
void bsr_m1(const BsrArgs& a, int64_t r0, int64_t r1);
// BSR with io.x set, M >= 2, x of the values' dtype (float32, or bf16 with AVX-512 BF16), blocks a multiple of 16
// columns wide: whether bsr_rows runs for a's arguments, and the kernel.
bool bsr_rows_supported(const BsrArgs& a);
void bsr_rows(const BsrArgs& a, int64_t r0, int64_t r1);
}  // namespace avx512

}  // namespace core
}  // namespace sparsekit
