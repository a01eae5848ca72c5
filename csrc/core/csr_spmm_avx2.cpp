// AVX2 + FMA build of the CSR core, chosen at run time on CPUs that have them.
// Every header is included before the target pragma so that no inline function shared
// with other translation units is compiled for AVX2.
#include <cstdint>
#include <cstring>

#include "csr_spmm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SK_HAVE_AVX2 1
#define SK_VEC_FLOATS 8
#define SK_ISA_NS avx2
#include "csr_spmm_impl.h"
#pragma GCC pop_options
#else
namespace sparsekit {
namespace core {
namespace avx2 {
void csr_spmm_rows(const CsrSpmmArgs& a, int64_t r0, int64_t r1) { generic::csr_spmm_rows(a, r0, r1); }
}  // namespace avx2
}  // namespace core
}  // namespace sparsekit
#endif
