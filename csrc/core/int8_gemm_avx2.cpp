// x86 builds of the int8 cores, chosen at run time (int8_gemm.cpp):
//   i8_avx2     AVX2 + FMA + F16C: every core (int8 GEMM through sign extension + vpmaddwd)
//   i8_avxvnni  the same plus AVX-VNNI: the int8 x int8 GEMMs through 256-bit vpdpbusd
// Every header is included before the target pragmas so that no inline function shared with
// other translation units is compiled for these instruction sets.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "int8_gemm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SK_I8_NS i8_avx2
#define SK_I8_LEVEL 1
#include "int8_gemm_impl.h"
#undef SK_I8_NS
#undef SK_I8_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
#define SK_I8_NS i8_avxvnni
#define SK_I8_LEVEL 2
#include "int8_gemm_impl.h"
#undef SK_I8_NS
#undef SK_I8_LEVEL
#pragma GCC pop_options

#else  // not x86: the dispatcher never picks these; forward to the portable build
namespace sparsekit {
namespace core {
namespace i8_avx2 {
void int8_gemm_rows(const Int8GemmArgs& a, int64_t n0, int64_t n1) { i8_generic::int8_gemm_rows(a, n0, n1); }
void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n0, int64_t n1) {
  i8_generic::sparse24_int8_rows(a, n0, n1);
}
void quantize_per_token_rows(const QuantizeArgs& a, int64_t m0, int64_t m1) {
  i8_generic::quantize_per_token_rows(a, m0, m1);
}
void int8_weight_only_rows(const Int8WeightOnlyArgs& a, int64_t n0, int64_t n1) {
  i8_generic::int8_weight_only_rows(a, n0, n1);
}
}  // namespace i8_avx2
namespace i8_avxvnni {
void int8_gemm_rows(const Int8GemmArgs& a, int64_t n0, int64_t n1) { i8_generic::int8_gemm_rows(a, n0, n1); }
void sparse24_int8_rows(const Sparse24Int8Args& a, int64_t n0, int64_t n1) {
  i8_generic::sparse24_int8_rows(a, n0, n1);
}
}  // namespace i8_avxvnni
}  // namespace core
}  // namespace sparsekit
#endif
