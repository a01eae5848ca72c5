// Run-time choice of the instruction set for the BSR / bitmap / 2:4 cores.
#include "spmm_formats.h"

namespace sparsekit {
namespace core {

void bsr_spmm_rows(const BsrArgs& a, int64_t r0, int64_t r1, Isa isa) {
  if (resolve_isa(isa) == Isa::kAvx2) avx2::bsr_spmm_rows(a, r0, r1);
  else generic::bsr_spmm_rows(a, r0, r1);
}
void bitmap_spmm_rows(const BitmapArgs& a, int64_t r0, int64_t r1, Isa isa) {
  if (resolve_isa(isa) == Isa::kAvx2) avx2::bitmap_spmm_rows(a, r0, r1);
  else generic::bitmap_spmm_rows(a, r0, r1);
}
void sparse24_spmm_rows(const Sparse24Args& a, int64_t r0, int64_t r1, Isa isa) {
  if (resolve_isa(isa) == Isa::kAvx2) avx2::sparse24_spmm_rows(a, r0, r1);
  else generic::sparse24_spmm_rows(a, r0, r1);
}

}  // namespace core
}  // namespace sparsekit
