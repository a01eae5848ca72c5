// Run-time choice of the instruction set for the int8 cores.
#include "int8_gemm.h"

namespace sparsekit {
namespace core {

namespace {

bool cpu_has(Int8Isa isa) {
  switch (isa) {
    case Int8Isa::kAuto:
    case Int8Isa::kGeneric: return true;
#if defined(__x86_64__) || defined(_M_X64)
    case Int8Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Int8Isa::kAvxVnni: return cpu_has(Int8Isa::kAvx2) && __builtin_cpu_supports("avxvnni");
    case Int8Isa::kAvx512Vnni:
      return cpu_has(Int8Isa::kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
#else
    default: return false;
#endif
  }
  return false;
}

Int8Isa best_at_most(Int8Isa cap) {
  for (int v = static_cast<int>(cap); v > static_cast<int>(Int8Isa::kGeneric); --v)
    if (cpu_has(static_cast<Int8Isa>(v))) return static_cast<Int8Isa>(v);
  return Int8Isa::kGeneric;
}

}  // namespace

Int8Isa resolve_int8_isa(Int8Isa requested) {
  if (requested == Int8Isa::kAuto) {
    static const Int8Isa best = best_at_most(Int8Isa::kAvx512Vnni);
    return best;
  }
  if (static_cast<int>(requested) < 0 || static_cast<int>(requested) > static_cast<int>(Int8Isa::kAvx512Vnni))
    return resolve_int8_isa(Int8Isa::kAuto);
  return best_at_most(requested);
}

const char* int8_isa_name(Int8Isa isa) {
  switch (isa) {
    case Int8Isa::kAuto: return "auto";
    case Int8Isa::kGeneric: return "generic";
    case Int8Isa::kAvx2: return "avx2";
    case Int8Isa::kAvxVnni: return "avxvnni";
    case Int8Isa::kAvx512Vnni: return "avx512vnni";
  }
  return "?";
}

void int8_gemm_rows(const Int8GemmArgs& a, int64_t n_begin, int64_t n_end, Int8Isa isa) {
  switch (resolve_int8_isa(isa)) {
    case Int8Isa::kAvx512Vnni: i8_avx512::int8_gemm_rows(a, n_begin, n_end); break;
    case Int8Isa::kAvxVnni: i8_avxvnni::int8_gemm_rows(a, n_begin, n_end); break;
    case Int8Isa::kAvx2: i8_avx2::int8_gemm_rows(a, n_begin, n_end); break;
    default: i8_generic::int8_gemm_rows(a, n_begin, n_end); break;
  }
}

void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n_begin, int64_t n_end, Int8Isa isa) {
  switch (resolve_int8_isa(isa)) {
    case Int8Isa::kAvx512Vnni: i8_avx512::sparse24_int8_rows(a, n_begin, n_end); break;
    case Int8Isa::kAvxVnni: i8_avxvnni::sparse24_int8_rows(a, n_begin, n_end); break;
    case Int8Isa::kAvx2: i8_avx2::sparse24_int8_rows(a, n_begin, n_end); break;
    default: i8_generic::sparse24_int8_rows(a, n_begin, n_end); break;
  }
}

void quantize_per_token_rows(const QuantizeArgs& a, int64_t m_begin, int64_t m_end, Int8Isa isa) {
  if (resolve_int8_isa(isa) == Int8Isa::kGeneric) {
    i8_generic::quantize_per_token_rows(a, m_begin, m_end);
  } else {
    i8_avx2::quantize_per_token_rows(a, m_begin, m_end);
  }
}

void int8_weight_only_rows(const Int8WeightOnlyArgs& a, int64_t n_begin, int64_t n_end, Int8Isa isa) {
  switch (resolve_int8_isa(isa)) {
    case Int8Isa::kAvx512Vnni: i8_avx512::int8_weight_only_rows(a, n_begin, n_end); break;
    case Int8Isa::kAvxVnni:
    case Int8Isa::kAvx2: i8_avx2::int8_weight_only_rows(a, n_begin, n_end); break;
    default: i8_generic::int8_weight_only_rows(a, n_begin, n_end); break;
  }
}

void int8_row_sums(const int8_t* b, int64_t ldb, int64_t K, int64_t n_begin, int64_t n_end, int32_t* out) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += b[n * ldb + k];
    out[n - n_begin] = s;
  }
}

}  // namespace core
}  // namespace sparsekit
