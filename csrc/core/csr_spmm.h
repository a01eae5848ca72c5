// CSR sparse weight x dense activation, torch-free kernel core.
//
//   y[m, n] = sum_{j in row n} values[j] * x[m, col[j]]  (+ bias[n])
//
// W is N x K in CSR (int32 row pointers and column indices). The activation is passed
// transposed and in float32, xt[k * ldxt + m] for m < M, so that the gathers for one
// kept weight read M contiguous floats (vectors of 8). Accumulation is float32. The caller splits the
// rows [row_begin, row_end) across threads; the core itself is single-threaded.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace sparsekit {
namespace core {

struct CsrSpmmArgs {
  int64_t M = 0;               // activation rows
  int64_t N = 0;               // weight rows (out_features)
  int64_t K = 0;               // weight columns (in_features)
  const int32_t* crow = nullptr;  // N + 1 entries, crow[0] == 0, non-decreasing
  const int32_t* col = nullptr;   // nnz entries in [0, K)
  const void* values = nullptr;   // nnz entries of type value_dtype
  DType value_dtype = DType::f32;
  // K x M, leading dimension ldxt. For M > 1, ldxt >= round_up(M, 8) (a multiple of 8 is
  // best) and the padding columns must be readable: partial tiles load them and drop them.
  const float* xt = nullptr;
  int64_t ldxt = 0;
  // Or, where csr_spmm_bf16_xt says so (bf16 values and bf16 x), xt as bf16 bits instead (xt null): K x ldxt,
  // the padding columns readable (what is read there never reaches y). The AVX-512 core then multiplies pairs
  // of kept weights by pairs of x values with vdpbf16ps (exact products, float32 sums; denormals flushed to
  // zero): half the bytes per kept weight.
  const uint16_t* xt16 = nullptr;
  const void* bias = nullptr;     // N entries of type out_dtype, or null
  void* y = nullptr;              // M x N, leading dimension ldy >= N, type out_dtype
  int64_t ldy = 0;
  DType out_dtype = DType::f32;
};

// Instruction sets a core was compiled for; kAuto picks the best the CPU supports. kAvx512
// means AVX2 everywhere plus the AVX-512 paths that exist (bitmap at M == 1, CSR at
// M >= 2); forcing kAvx2 keeps AVX-512 out.
enum class Isa : int { kAuto = 0, kGeneric = 1, kAvx2 = 2, kAvx512 = 3 };

// Computes the rows [row_begin, row_end) of y.
void csr_spmm_rows(const CsrSpmmArgs& a, int64_t row_begin, int64_t row_end, Isa isa = Isa::kAuto);

// Whether the cores want x staged as bf16 (CsrSpmmArgs::xt16) for these dtypes and M on this CPU: AVX-512 BF16
// (and BW), bf16 values and bf16 x, M >= 9 (16 activation rows per register). Calling csr_spmm_rows with xt16
// set where this is false throws std::logic_error.
bool csr_spmm_bf16_xt(int64_t M, DType value_dtype, DType x_dtype, Isa isa = Isa::kAuto);

// The leading dimension xt needs for M activation rows.
// Up to M = 16 M rounded up to 8; from M = 17, where the AVX-512 cores read 16 floats (64 bytes) per register,
// to 16, so that every column of a 64-byte aligned xt starts on a cache line: a load that splits across two
// lines costs the loop at M = 64 8-9 cycles per kept weight against 5 (one thread, x in L1).
inline int64_t csr_spmm_ldxt(int64_t M) { return M <= 1 ? 1 : M <= 16 ? (M + 7) / 8 * 8 : (M + 15) / 16 * 16; }

// The instruction set kAuto resolves to on this CPU (never kAuto).
Isa resolve_isa(Isa requested);
const char* isa_name(Isa isa);

namespace generic {
void csr_spmm_rows(const CsrSpmmArgs& a, int64_t row_begin, int64_t row_end);
}
namespace avx2 {
void csr_spmm_rows(const CsrSpmmArgs& a, int64_t row_begin, int64_t row_end);
}
namespace avx512 {
// M >= 2 only (M == 1: nothing is computed; the gather path serves it); xt16 only where csr_spmm_bf16_xt.
// csr_spmm_avx512.cpp.
void csr_spmm_rows(const CsrSpmmArgs& a, int64_t row_begin, int64_t row_end);
}

}  // namespace core
}  // namespace sparsekit
