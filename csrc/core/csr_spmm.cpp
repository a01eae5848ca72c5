// Run-time choice of the instruction set for the CSR core.
#include "csr_spmm.h"

namespace sparsekit {
namespace core {

Isa resolve_isa(Isa requested) {
  if (requested != Isa::kAuto) {
#if defined(__x86_64__) || defined(_M_X64)
    if (requested == Isa::kAvx2 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                     __builtin_cpu_supports("f16c")))
      return Isa::kGeneric;
    return requested;
#else
    return Isa::kGeneric;
#endif
  }
#if defined(__x86_64__) || defined(_M_X64)
  static const Isa best = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c"))
                              ? Isa::kAvx2
                              : Isa::kGeneric;
  return best;
#else
  return Isa::kGeneric;
#endif
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAuto: return "auto";
    case Isa::kGeneric: return "generic";
    case Isa::kAvx2: return "avx2";
  }
  return "?";
}

void csr_spmm_rows(const CsrSpmmArgs& a, int64_t row_begin, int64_t row_end, Isa isa) {
  if (resolve_isa(isa) == Isa::kAvx2) {
    avx2::csr_spmm_rows(a, row_begin, row_end);
  } else {
    generic::csr_spmm_rows(a, row_begin, row_end);
  }
}

}  // namespace core
}  // namespace sparsekit
