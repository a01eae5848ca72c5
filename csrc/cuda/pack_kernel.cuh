// Torch-free CUDA packers: a (N, K) weight and its bool mask -> the buffers of the 2:4, bitmap, CSR
// and BSR formats, bit for bit what the CPU packers (sparsekit.formats.*.from_dense) produce.
// Weights are copied as raw bits (elem_size 1, 2, 4 or 8 bytes: float8, float16/bfloat16, float32,
// float64);
// positions the mask drops but a format stores hold +0.0 (all bits zero). All buffers contiguous,
// masks are bytes holding 0 or 1 (torch.bool). The scans between the steps (exclusive sums of counts,
// which fix where each row's values go) are done by the caller, e.g. with at::cumsum.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sparsekit {
namespace cuda {

// 2:4: values (N, K/2) and meta uint8 (N, ceil(K/8)); K % 4 == 0. *bad_group must hold ~0ull before
// the call; it receives the smallest n * (K/4) + g over the groups keeping more than two weights.
cudaError_t pack_sparse24(const void* weight, const uint8_t* mask, int64_t N, int64_t K, int elem_size,
                          void* values, uint8_t* meta, unsigned long long* bad_group, cudaStream_t stream);

// Bitmap words (N, ceil(K/32)) as int32 and each word's number of kept weights (same shape).
cudaError_t pack_bitmap_words(const uint8_t* mask, int64_t N, int64_t K, int32_t* bitmap, int32_t* counts,
                              cudaStream_t stream);

// Every kept weight, in row-major order, to values[word_offsets[n, w] + i] (the i-th kept weight of
// word w of row n); with col_indices (CSR) also its column there. word_offsets: the exclusive sum of the
// counts over the words in row-major order.
cudaError_t pack_scatter_kept(const void* weight, const int32_t* bitmap, const int32_t* word_offsets, int64_t N,
                              int64_t K, int elem_size, void* values, int32_t* col_indices, cudaStream_t stream);

// BSR step 1: flags (N/R, K/C) int32, 1 where the R x C block holds a kept weight.
cudaError_t pack_bsr_flags(const uint8_t* mask, int64_t N, int64_t K, int64_t R, int64_t C, int32_t* flags,
                           cudaStream_t stream);
// BSR step 2: positions = the exclusive sum of flags (row-major); each kept block writes its block
// column to col_indices[pos] and its block row to block_rows[pos].
cudaError_t pack_bsr_index(const int32_t* flags, const int64_t* positions, int64_t NB, int64_t KB,
                           int32_t* col_indices, int32_t* block_rows, cudaStream_t stream);
// BSR step 3: values (nblocks, R, C): the weight where the mask keeps it, else +0.
cudaError_t pack_bsr_values(const void* weight, const uint8_t* mask, int64_t K, int64_t R, int64_t C,
                            const int32_t* col_indices, const int32_t* block_rows, int64_t nblocks, int elem_size,
                            void* values, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekit
