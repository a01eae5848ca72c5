// Run-time choice of the instruction set for the CSR core.
#include "csr_spmm.h"

#include <stdexcept>

namespace sparsekit {
namespace core {

namespace {
#if defined(__x86_64__) || defined(_M_X64)
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() { return has_avx2() && __builtin_cpu_supports("avx512f"); }
#else
bool has_avx2() { return false; }
bool has_avx512() { return false; }
#endif
}  // namespace

Isa resolve_isa(Isa requested) {
  static const bool avx2 = has_avx2(), avx512 = has_avx512();
  const Isa best = avx512 ? Isa::kAvx512 : (avx2 ? Isa::kAvx2 : Isa::kGeneric);
  if (requested == Isa::kAuto) return best;
  // a forced level the CPU lacks falls back to the best level below it
  return static_cast<int>(requested) <= static_cast<int>(best) ? requested : best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAuto: return "auto";
    case Isa::kGeneric: return "generic";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "?";
}

bool csr_spmm_bf16_xt(int64_t M, DType value_dtype, DType x_dtype, Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool dot = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
#else
  static const bool dot = false;
#endif
  return dot && resolve_isa(isa) == Isa::kAvx512 && value_dtype == DType::bf16 && x_dtype == DType::bf16 && M >= 9;
}

void csr_spmm_rows(const CsrSpmmArgs& a, int64_t row_begin, int64_t row_end, Isa isa) {
  if (a.xt16) {
    if (!csr_spmm_bf16_xt(a.M, a.value_dtype, DType::bf16, isa))
      throw std::logic_error("sparsekit: csr_spmm_rows got x staged as bf16 where csr_spmm_bf16_xt is false");
    avx512::csr_spmm_rows(a, row_begin, row_end);
    return;
  }
  const Isa level = resolve_isa(isa);
  if (level >= Isa::kAvx512 && a.M >= 2) {
    avx512::csr_spmm_rows(a, row_begin, row_end);
  } else if (level >= Isa::kAvx2) {
    avx2::csr_spmm_rows(a, row_begin, row_end);
  } else {
    generic::csr_spmm_rows(a, row_begin, row_end);
  }
}

}  // namespace core
}  // namespace sparsekit
