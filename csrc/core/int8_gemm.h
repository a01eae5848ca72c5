// int8 kernel cores (torch-free): exact int8 GEMM with int32 accumulation and a fused
// dequantizing epilogue (W8A8), per-token activation quantization, int8 weight-only GEMM
// (W8A16, float32 accumulation) and 2:4-sparse int8 weights times int8 activations.
//
// Every GEMM-like core computes a range of OUTPUT COLUMNS n in [n_begin, n_end) (rows of the
// weight) for all M activation rows; the caller splits the columns across threads (ranges
// that are multiples of 16 are best). The cores are single-threaded and reentrant; the GEMM and
// 2:4 cores keep per-thread scratch buffers between calls (AVX2: an int16 copy of 4 activation
// rows; VNNI: the activations offset by +128, up to 2 MiB, larger ones allocated per call; the
// decompressed chunk of about 192 KiB of 2:4 weight rows). Layouts and
// formulas: sparsekit/formats/LAYOUTS.md, and the references in sparsekit/ops/reference.py,
// which these cores match:
//
//   int8_gemm_rows        C[m, n] = sum_k A[m, k] * B[n, k]   exactly in int32      (int8_gemm_i32)
//                         or y[m, n] = float(C[m, n] - x_zero[m] * rowsum(B[n])) * x_scale[m]
//                                      * w_scale[n] (+ bias[n])                      (int8_mm)
//   sparse24_int8_rows    the same with B in the 2:4 + int8 layout                  (sparse24_int8_mm)
//   quantize_per_token_rows                                                          (quantize_per_token)
//   int8_weight_only_rows y[m, n] = (sum_k x[m, k] * q[n, k]) * w_scale[n] (+ bias[n]) (int8_weight_only_mm)
//
// Exactness. The int32 sums are exact (and bit-identical on every ISA) as long as they fit in
// int32: |sum| <= 128 * 128 * K, i.e. K <= 131071 (the op checks refuse more); the zero-point correction is exact in
// int64. The epilogue is float32 in the reference's order, ((float(acc) * x_scale) * w_scale)
// + bias, with no fused multiply-add, then rounded to nearest even into the output type, so
// the W8A8 outputs equal the reference's bit for bit. quantize_per_token_rows uses IEEE
// division and round-half-to-even exactly as the reference (its bytes are identical).
// NaN and infinity in the inputs are not supported (the reference's results are undefined
// there too); they produce some value without undefined behaviour.
//
// Performance shape: the weight is read from memory once per call (small M runs at the memory
// bandwidth); activations are re-read from cache once per chunk of weight rows; K and N need no
// alignment (tails are zero-padded in registers). 2:4 weights: up to M = 8 on CPUs with AVX-512
// VBMI, multiplied without decompression (per 64 kept values, their activation bytes gathered by
// one vpermi2b from the meta, then one vpdpbusd: only the compressed bytes are read); otherwise
// decompressed a chunk at a time into a dense int8 buffer that the dense micro-kernels then read
// (AVX-512 VBMI where the CPU has it, else SSSE3 table shuffles).
//
// Instruction sets. int8 has its own enum, Int8Isa, whose first three values equal core::Isa's
// (kAuto = 0, kGeneric = 1, kAvx2 = 2), so the value that sparsekit.cpu's set_isa stores maps
// one to one; VNNI levels come after. A forced level the CPU lacks falls back to the best
// level below it (resolve_int8_isa). Per op:
//   int8 GEMM / 2:4:  generic C++; AVX2 (sign-extend to int16 + vpmaddwd: exact, never saturates);
//                     AVX-VNNI (256-bit vpdpbusd); AVX-512 VNNI (512-bit vpdpbusd). vpdpbusd is
//                     u8 x s8: the activation is offset by +128 (a xor 0x80) and 128 * rowsum(B[n])
//                     is subtracted in the epilogue; vpdpbusd does not saturate, so it is exact.
//   weight-only:      generic; AVX2 + FMA (for kAvx2 and kAvxVnni); AVX-512F (for kAvx512Vnni).
//   quantize:         generic; AVX2 (for every level above generic).
#pragma once
#include <cstdint>

#include "dtype.h"

namespace sparsekit {
namespace core {

enum class Int8Isa : int { kAuto = 0, kGeneric = 1, kAvx2 = 2, kAvxVnni = 3, kAvx512Vnni = 4 };

// The level kAuto resolves to on this CPU, or the best supported level not above `requested`.
Int8Isa resolve_int8_isa(Int8Isa requested);
const char* int8_isa_name(Int8Isa isa);

// The fused W8A8 epilogue. When y is null the GEMM cores write the raw int32 sums to c instead
// (x_zero still applies when given; x_scale, w_scale and bias are then ignored).
struct Int8Epilogue {
  const float* x_scale = nullptr;    // M entries (required with y)
  const int32_t* x_zero = nullptr;   // M entries, or null (symmetric activations)
  const float* w_scale = nullptr;    // N entries (required with y)
  const int32_t* b_rowsum = nullptr; // N entries sum_k B[n, k], or null: computed by the core when needed
  const void* bias = nullptr;        // N entries of type out_dtype, or null
  void* y = nullptr;                 // M x N, leading dimension ldy, type out_dtype
  int64_t ldy = 0;
  DType out_dtype = DType::f32;
  int32_t* c = nullptr;              // M x N int32, leading dimension ldc (used when y is null)
  int64_t ldc = 0;
};

struct Int8GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const int8_t* a = nullptr;  // M x K, leading dimension lda (activations)
  int64_t lda = 0;
  const int8_t* b = nullptr;  // N x K, leading dimension ldb (weights)
  int64_t ldb = 0;
  Int8Epilogue ep;
};

// 2:4 + int8 weight (LAYOUTS.md): values int8 (N, K / 2), meta uint8 (N, ceil(K / 8)), one nibble
// per group of four columns (bits 0-1: first kept position, bits 2-3: second; low nibble = even
// group). K % 4 == 0. A nibble with equal positions keeps the second value (as scatter_ does).
struct Sparse24Int8Args {
  int64_t M = 0, N = 0, K = 0;
  const int8_t* x = nullptr;  // M x K int8 activations, leading dimension ldx
  int64_t ldx = 0;
  const int8_t* values = nullptr;  // N x K/2, contiguous rows
  const uint8_t* meta = nullptr;   // N x ceil(K/8), contiguous rows
  Int8Epilogue ep;
};

// Per-token (per-row) quantization: x (M x K, leading dimension ldx, type x_dtype) ->
// q (M x K int8, leading dimension ldq), scale float32 (M), zero_point int32 (M).
struct QuantizeArgs {
  int64_t M = 0, K = 0;
  const void* x = nullptr;
  int64_t ldx = 0;
  DType x_dtype = DType::f32;
  bool symmetric = true;
  int8_t* q = nullptr;
  int64_t ldq = 0;
  float* scale = nullptr;
  int32_t* zero_point = nullptr;
};

struct Int8WeightOnlyArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* x = nullptr;  // M x K float32, leading dimension ldx
  int64_t ldx = 0;
  const int8_t* q = nullptr;  // N x K int8, leading dimension ldq
  int64_t ldq = 0;
  const float* w_scale = nullptr;  // N
  const void* bias = nullptr;      // N entries of type out_dtype, or null
  void* y = nullptr;               // M x N, leading dimension ldy, type out_dtype
  int64_t ldy = 0;
  DType out_dtype = DType::f32;
};

void int8_gemm_rows(const Int8GemmArgs& a, int64_t n_begin, int64_t n_end, Int8Isa isa = Int8Isa::kAuto);
void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n_begin, int64_t n_end, Int8Isa isa = Int8Isa::kAuto);
void quantize_per_token_rows(const QuantizeArgs& a, int64_t m_begin, int64_t m_end, Int8Isa isa = Int8Isa::kAuto);
void int8_weight_only_rows(const Int8WeightOnlyArgs& a, int64_t n_begin, int64_t n_end,
                           Int8Isa isa = Int8Isa::kAuto);

// sum_k B[n, k] for n in [n_begin, n_end) (what Int8Epilogue::b_rowsum holds), portable.
void int8_row_sums(const int8_t* b, int64_t ldb, int64_t K, int64_t n_begin, int64_t n_end, int32_t* out);

// Per-level entry points (int8_gemm_<isa>.cpp); call the dispatching functions above instead.
namespace i8_generic {
void int8_gemm_rows(const Int8GemmArgs& a, int64_t n0, int64_t n1);
void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n0, int64_t n1);
void quantize_per_token_rows(const QuantizeArgs& a, int64_t m0, int64_t m1);
void int8_weight_only_rows(const Int8WeightOnlyArgs& a, int64_t n0, int64_t n1);
}  // namespace i8_generic
namespace i8_avx2 {
void int8_gemm_rows(const Int8GemmArgs& a, int64_t n0, int64_t n1);
void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n0, int64_t n1);
void quantize_per_token_rows(const QuantizeArgs& a, int64_t m0, int64_t m1);
void int8_weight_only_rows(const Int8WeightOnlyArgs& a, int64_t n0, int64_t n1);
}  // namespace i8_avx2
namespace i8_avxvnni {
void int8_gemm_rows(const Int8GemmArgs& a, int64_t n0, int64_t n1);
void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n0, int64_t n1);
}  // namespace i8_avxvnni
namespace i8_avx512 {
void int8_gemm_rows(const Int8GemmArgs& a, int64_t n0, int64_t n1);
void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n0, int64_t n1);
void int8_weight_only_rows(const Int8WeightOnlyArgs& a, int64_t n0, int64_t n1);
}  // namespace i8_avx512

}  // namespace core
}  // namespace sparsekit
