// Settings of the CPU kernels that the Python module can read and change.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace sparsekit {
namespace cpu {
// 0 = auto, 1 = generic, 2 = avx2 (values of core::Isa).
void set_isa(int isa);
int get_isa();
// The instruction set that calls run with now (auto resolved).
const char* active_isa_name();
// Which checks of the index buffers' contents the CPU bindings run: the pointer checks of
// csrc/checks.h (default: one pass, no temporaries) or, when on, the ATen checks of
// csrc/index_checks.h that the CUDA bindings run, so that tests hold both to the same messages
// without a GPU. A test switch (sparsekit._C._set_aten_index_checks).
void set_aten_index_checks(bool on);
bool aten_index_checks();
// The positions in a 2:4 meta buffer, checked once per buffer (checked_once.h) with the pointer
// checks or, under the switch above, the ATen ones; `mt` is `meta` made contiguous. For the CPU
// bindings of sparse24_mm and sparse24_int8_mm.
void check_meta_once(const char* op, const at::Tensor& meta, const at::Tensor& mt, int64_t N, int64_t K);
// From which M the CPU 2:4, int8 weight-only, CSR and bitmap ops multiply dense panels of W with
// ATen's GEMM (csrc/cpu/dense_panels.h): -1 = automatic (the default: a threshold per op and dtype,
// for large enough layers, and for CSR / bitmap dense enough ones), 0 = never, n = from M >= n for
// every op on every layer. SPARSEKIT_CPU_DENSE_MIN_M gives the starting value ('off' = 0).
void set_dense_min_m(int64_t m);
// The M threshold in force for an op ("2:4", "int8-wo", "csr", "bitmap") and x dtype ("float32",
// "bfloat16", "float16"): 0 = never.
int64_t dense_min_m(const char* op, const char* dtype);
// Whether that op takes the dense panels for an M x K x of that dtype times an N x K weight that keeps
// nnz weights (an x holding Inf or NaN keeps the op's own kernel whatever this says).
bool dense_panels_take(const char* op, const char* dtype, int64_t M, int64_t N, int64_t K, int64_t nnz);
// Whether the 2:4 op's kernel with staged x (bf16 from M = 21 with AVX-512 BF16, float32 from M = 11 with AVX-512)
// serves a call of M rows of x of `dtype` at the instruction set in force (when the dense panels do not).
bool sparse24_pairs_kernel(const char* dtype, int64_t M);
// Whether the bitmap op runs a call of M rows as CSR (decoded column lists, the CSR core's AVX-512 kernels: from
// M = 9 with AVX-512) at the instruction set in force (when the dense panels do not).
bool bitmap_csr_kernel(int64_t M);
}  // namespace cpu
}  // namespace sparsekit
