// AVX2 + FMA build of the BSR / bitmap / 2:4 cores (headers first, then the target pragma).
#include <cstdint>
#include <cstring>

#include <vector>

#include "spmm_formats.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,ssse3")
#define SK_HAVE_AVX2 1
#define SK_VEC_FLOATS 8
#define SK_ISA_NS avx2
#include "spmm_formats_impl.h"
#pragma GCC pop_options
#else
namespace sparsekit {
namespace core {
namespace avx2 {
void bsr_spmm_rows(const BsrArgs& a, int64_t r0, int64_t r1) { generic::bsr_spmm_rows(a, r0, r1); }
void bitmap_spmm_rows(const BitmapArgs& a, int64_t r0, int64_t r1) { generic::bitmap_spmm_rows(a, r0, r1); }
void sparse24_spmm_rows(const Sparse24Args& a, int64_t r0, int64_t r1) { generic::sparse24_spmm_rows(a, r0, r1); }
void sparse24_decompress_rows(const void* values, const uint8_t* meta, DType vd, int64_t K, int64_t r0, int64_t r1,
                              void* out) {
  generic::sparse24_decompress_rows(values, meta, vd, K, r0, r1, out);
}
}  // namespace avx2
}  // namespace core
}  // namespace sparsekit
#endif
