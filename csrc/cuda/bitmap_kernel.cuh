// Torch-free CUDA bitmap x dense kernel for small M (decode): y = x @ W.T + bias with W in the bitmap
// layout of sparsekit/formats/LAYOUTS.md: bitmap int32 (N, ceil(K/32)) (bit b of word w of row n is
// column 32w + b), word_offsets int32 (N, ceil(K/32)) (index in values of the word's first kept value),
// values (nnz,) row-major.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/csr_spmm_kernel.cuh"  // DType

namespace sparsekit {
namespace cuda {

struct BitmapMmLaunch {
  int64_t M = 0, N = 0, K = 0;
  const int32_t* bitmap = nullptr;        // (N, ceil(K/32)) contiguous
  const int32_t* word_offsets = nullptr;  // (N, ceil(K/32)) contiguous
  const void* values = nullptr;           // (nnz,), dtype
  int64_t nnz = 0;
  // Optional: the column of each kept value, as 16 bits (int16 storage of 0..65535), at least round_up(nnz, 8)
  // entries, 16-byte aligned (sparsekit/formats/bitmap.py makes it when a layer is prepared on CUDA). Given, the
  // column-list kernel runs (variant 4: no scan or compaction; csrc/cuda/README.md), unless
  // SPARSEKIT_CUDA_DECODE names v1, v2 or v3. An entry's column outside the K chunk it belongs to is skipped,
  // never read from (a wrong list gives wrong sums, not a wild read); the binding checks the list once.
  const uint16_t* columns = nullptr;
  const void* x = nullptr;                // (M, K), row stride ldx, unit column stride
  int64_t ldx = 0;
  const void* bias = nullptr;             // (N,) or null
  void* y = nullptr;                      // (M, N), row stride ldy
  int64_t ldy = 0;
  DType dtype = DType::f32;
};

// Float32 workspace bytes bitmap_mm needs on the current device (0: none; only when K is split).
size_t bitmap_mm_workspace_bytes(const BitmapMmLaunch& a, cudaError_t* err = nullptr);

// Enqueues the kernels on `stream`; `workspace` holds bitmap_mm_workspace_bytes(a) bytes (16-byte
// aligned; may be null when that is 0).
cudaError_t bitmap_mm(const BitmapMmLaunch& a, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekit
