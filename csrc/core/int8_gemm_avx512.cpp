// AVX-512 build of the int8 cores (AVX-512 F/BW/VL/DQ + VNNI), chosen at run time
// (int8_gemm.cpp): int8 x int8 GEMMs through 512-bit vpdpbusd, weight-only through 512-bit FMA.
// Every header is included before the target pragma (see int8_gemm_avx2.cpp).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "int8_gemm.h"

#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 reports the deliberately undefined pass-through operands inside the AVX-512
// intrinsics (_mm512_undefined_*) as uninitialized; those reports say nothing about this code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#define SK_I8_NS i8_avx512
#define SK_I8_LEVEL 3
#include "int8_gemm_impl.h"
#undef SK_I8_NS
#undef SK_I8_LEVEL
#pragma GCC pop_options

#else
namespace sparsekit {
namespace core {
namespace i8_avx512 {
void int8_gemm_rows(const Int8GemmArgs& a, int64_t n0, int64_t n1) { i8_generic::int8_gemm_rows(a, n0, n1); }
void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n0, int64_t n1) {
  i8_generic::sparse24_int8_rows(a, n0, n1);
}
void int8_weight_only_rows(const Int8WeightOnlyArgs& a, int64_t n0, int64_t n1) {
  i8_generic::int8_weight_only_rows(a, n0, n1);
}
}  // namespace i8_avx512
}  // namespace core
}  // namespace sparsekit
#endif
