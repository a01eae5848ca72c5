// CUDA implementations of the format ops (sparse24_mm, bitmap_mm, bsr_mm) and of the GPU packers
// (pack_sparse24, pack_bitmap, pack_csr, pack_bsr): checks with the messages of the Python checks, then
// launches on the current stream of the tensors' device. The kernels are torch-free (csrc/cuda/*.cu);
// the packers' scans (at::cumsum) and the reads of nnz / a bad group (one device sync each: packing
// needs the sizes of its outputs) are done here.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <tuple>

#include "checks.h"
#include "cuda/binding_common.h"
#include "cuda/checked_once_cuda.h"
#include "cuda/bitmap_kernel.cuh"
#include "cuda/bsr_kernel.cuh"
#include "cuda/pack_kernel.cuh"
#include "cuda/sparse24_kernel.cuh"

namespace sparsekit {
namespace cuda {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// ------------------------------------------------------------------------------------------ 2:4
at::Tensor sparse24_mm_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.sparse24_mm";
  check_sparse24_mm_args(x, values, meta, bias);
  check_cuda(op, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), N = values.size(0), K = x.size(1);
  check_index_buffers_once(op, {&meta}, {N, K}, [&] { aten_checks::check_meta_positions(op, meta, K); });
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto vals = values.contiguous();
  const auto mt = meta.contiguous();
  Sparse24MmLaunch a;
  const StagedIo io = set_io(a, x, bias, y);
  a.values = vals.data_ptr();
  a.meta = mt.data_ptr<uint8_t>();
  launch_with_workspace(op, a, &sparse24_mm_workspace_bytes, &sparse24_mm, x);
  return y;
}

// ------------------------------------------------------------------------------------------ bitmap
// y = x @ W.T + bias through the bitmap kernel on checked buffers; columns (the column list, or null): its
// variant 4.
at::Tensor launch_bitmap(const char* op, const at::Tensor& x, const at::Tensor& bitmap, const at::Tensor& word_offsets,
                         const at::Tensor& values, const at::Tensor* columns, const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), N = bitmap.size(0);
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto bm = bitmap.contiguous();
  const auto wo = word_offsets.contiguous();
  const auto vals = values.contiguous();
  // the kernel reads the list 16 (float32: 8) bytes at a time: a list that does not start on 16 bytes is copied
  at::Tensor cols;
  if (columns != nullptr)
    cols = columns->is_contiguous() && reinterpret_cast<uintptr_t>(columns->data_ptr()) % 16 == 0
               ? *columns
               : columns->clone(at::MemoryFormat::Contiguous);
  BitmapMmLaunch a;
  const StagedIo io = set_io(a, x, bias, y);
  a.bitmap = bm.data_ptr<int32_t>();
  a.word_offsets = wo.data_ptr<int32_t>();
  a.values = vals.data_ptr();
  a.nnz = vals.numel();
  a.columns = cols.defined() && a.nnz > 0 ? reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>()) : nullptr;
  launch_with_workspace(op, a, &bitmap_mm_workspace_bytes, &bitmap_mm, x);
  return y;
}

at::Tensor bitmap_mm_cuda(const at::Tensor& x, const at::Tensor& bitmap, const at::Tensor& word_offsets,
                          const at::Tensor& values, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.bitmap_mm";
  check_bitmap_mm_args(x, bitmap, word_offsets, values, bias);
  check_cuda(op, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = bitmap.size(0), K = x.size(1);
  check_index_buffers_once(op, {&bitmap, &word_offsets}, {N, bitmap.size(1), K, values.numel()}, [&] {
    aten_checks::check_bitmap_words(op, bitmap, word_offsets, K, values.numel());
  });
  return launch_bitmap(op, x, bitmap, word_offsets, values, nullptr, bias);
}

// The same with the column list (variant 4 of the bitmap kernel; sparsekit/formats/bitmap.py makes the list when a
// layer is prepared). The list is checked against the bitmap once per buffer set, as the bitmap is.
at::Tensor bitmap_columns_mm_cuda(const at::Tensor& x, const at::Tensor& bitmap, const at::Tensor& word_offsets,
                                  const at::Tensor& values, const at::Tensor& columns,
                                  const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit._cuda_bitmap_columns_mm";
  check_bitmap_mm_args(x, bitmap, word_offsets, values, bias);
  const int64_t need = (values.numel() + 7) / 8 * 8;
  TORCH_CHECK_TYPE(columns.scalar_type() == at::kShort, op, ": expected columns of dtype int16, got ",
                   dtype_name(columns.scalar_type()));
  TORCH_CHECK_VALUE(columns.dim() == 1 && columns.numel() >= need, op,
                    ": expected 1-d columns of at least round_up(nnz, 8) = ", need, " entries, got shape ",
                    shape_str(columns.sizes()));
  TORCH_CHECK_VALUE(x.size(1) <= 65536, op, ": 16-bit columns need in_features <= 65536, got ", x.size(1));
  check_same_device(op, x, "columns", columns);
  check_cuda(op, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = bitmap.size(0), K = x.size(1);
  check_index_buffers_once(op, {&bitmap, &word_offsets, &columns}, {N, bitmap.size(1), K, values.numel()}, [&] {
    aten_checks::check_bitmap_words(op, bitmap, word_offsets, K, values.numel());
    aten_checks::check_bitmap_columns(op, bitmap, columns, K, values.numel());
  });
  return launch_bitmap(op, x, bitmap, word_offsets, values, &columns, bias);
}

// ------------------------------------------------------------------------------------------ BSR
at::Tensor bsr_mm_cuda(const at::Tensor& x, const at::Tensor& crow_indices, const at::Tensor& col_indices,
                       const at::Tensor& values, int64_t out_features, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparsekit.bsr_mm";
  check_bsr_mm_args(x, crow_indices, col_indices, values, out_features, bias);
  check_cuda(op, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), N = out_features, K = x.size(1);
  TORCH_CHECK_VALUE(K <= kInt32Max, op, ": in_features ", K, " exceeds the int32 index range");
  const int64_t R = values.size(1), C = values.size(2);
  check_index_buffers_once(op, {&crow_indices, &col_indices}, {N / R, values.size(0), K / C}, [&] {
    aten_checks::check_compressed_indices(op, crow_indices, N / R, "nblocks", values.size(0), col_indices, K / C,
                                          "in_features / C");
  });
  auto y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const auto crow = crow_indices.contiguous();
  const auto col = col_indices.contiguous();
  const auto vals = values.contiguous();
  BsrMmLaunch a;
  const StagedIo io = set_io(a, x, bias, y);
  a.R = R;
  a.C = C;
  a.crow = crow.data_ptr<int32_t>();
  a.col = col.data_ptr<int32_t>();
  a.values = vals.data_ptr();
  launch_with_workspace(op, a, &bsr_mm_workspace_bytes, &bsr_mm, x);
  return y;
}

// ------------------------------------------------------------------------------------------ packers
// The checks of sparsekit/formats/_common.py check_weight_and_mask, with the op's name; returns the
// mask as a contiguous bool tensor on the weight's device (default: weight != 0).
at::Tensor checked_mask(const char* op, const at::Tensor& weight, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": expected a 2-d weight (out_features, in_features), got ",
                    shape_str(weight.sizes()));
  TORCH_CHECK_TYPE(weight.is_floating_point(), op, ": expected a floating-point weight, got torch.",
                   dtype_name(weight.scalar_type()));
  TORCH_CHECK_VALUE(weight.is_cuda(), op, ": expected a CUDA weight, got one on ", weight.device());
  if (!mask.has_value()) return weight.ne(0);
  TORCH_CHECK_VALUE(mask->sizes() == weight.sizes(), op, ": expected a mask of the weight's shape ",
                    shape_str(weight.sizes()), ", got ", shape_str(mask->sizes()));
  TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, op, ": expected a bool mask, got torch.",
                   dtype_name(mask->scalar_type()));
  return mask->to(weight.device()).contiguous();
}

int elem_size(const char* op, const at::Tensor& w) {
  const int64_t es = w.element_size();
  TORCH_CHECK_TYPE(es == 1 || es == 2 || es == 4 || es == 8, op, ": unsupported weight dtype torch.",
                   dtype_name(w.scalar_type()));
  return static_cast<int>(es);
}

std::tuple<at::Tensor, at::Tensor> pack_sparse24_cuda(const at::Tensor& weight, const std::optional<at::Tensor>& mask) {
  constexpr const char* op = "sparsekit.pack_sparse24";
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto m = checked_mask(op, weight, mask);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(K % 4 == 0, op, ": 2:4 needs in_features divisible by 4, got ", K);
  const int es = elem_size(op, weight);
  const auto w = weight.contiguous();
  auto values = at::empty({N, K / 2}, weight.options());
  auto meta = at::empty({N, (K + 7) / 8}, weight.options().dtype(at::kByte));
  auto bad = at::full({1}, -1, weight.options().dtype(at::kLong));
  check_launch(op, pack_sparse24(w.data_ptr(), static_cast<const uint8_t*>(m.data_ptr()), N, K, es, values.data_ptr(),
                                 meta.data_ptr<uint8_t>(), reinterpret_cast<unsigned long long*>(bad.data_ptr<int64_t>()),
                                 stream_of(weight)));
  const int64_t first_bad = bad.item<int64_t>();  // a device sync: the mask is checked like the CPU packer does
  if (first_bad >= 0) {
    const int64_t groups = K / 4, r = first_bad / groups, g = first_bad % groups;
    const int64_t kept = m.select(0, r).slice(0, 4 * g, 4 * g + 4).sum().item<int64_t>();
    TORCH_CHECK_VALUE(false, op, ": the mask is not 2:4: row ", r, ", columns ", 4 * g, "..", 4 * g + 3, " keep ", kept,
                      " of 4 (prune with pattern='2:4' first)");
  }
  return {values, meta};
}

// Bitmap words, their counts and the exclusive (row-major) sum of the counts; nnz read on the host.
struct Words {
  at::Tensor bitmap, counts, offsets;
  int64_t nnz = 0;
};

Words bitmap_words(const char* op, const at::Tensor& m, int64_t N, int64_t K, const at::Tensor& like) {
  const int64_t W = (K + 31) / 32;
  Words out;
  out.bitmap = at::empty({N, W}, like.options().dtype(at::kInt));
  out.counts = at::empty({N, W}, like.options().dtype(at::kInt));
  check_launch(op, pack_bitmap_words(static_cast<const uint8_t*>(m.data_ptr()), N, K, out.bitmap.data_ptr<int32_t>(),
                                     out.counts.data_ptr<int32_t>(), stream_of(like)));
  if (N * W == 0) {
    out.offsets = at::zeros({N, W}, like.options().dtype(at::kInt));
    return out;
  }
  const auto c64 = out.counts.reshape({-1}).to(at::kLong);
  const auto incl = c64.cumsum(0);
  out.nnz = incl[-1].item<int64_t>();  // a device sync: the outputs' size
  TORCH_CHECK_VALUE(out.nnz <= kInt32Max, op, ": nnz ", out.nnz, " exceeds the int32 index range");
  out.offsets = (incl - c64).to(at::kInt).reshape({N, W});
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_bitmap_cuda(const at::Tensor& weight,
                                                                const std::optional<at::Tensor>& mask) {
  constexpr const char* op = "sparsekit.pack_bitmap";
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto m = checked_mask(op, weight, mask);
  const int64_t N = weight.size(0), K = weight.size(1);
  const int es = elem_size(op, weight);
  const auto w = weight.contiguous();
  Words words = bitmap_words(op, m, N, K, weight);
  auto values = at::empty({words.nnz}, weight.options());
  check_launch(op, pack_scatter_kept(w.data_ptr(), words.bitmap.data_ptr<int32_t>(), words.offsets.data_ptr<int32_t>(),
                                     N, K, es, values.data_ptr(), nullptr, stream_of(weight)));
  return {words.bitmap, words.offsets, values};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_csr_cuda(const at::Tensor& weight,
                                                             const std::optional<at::Tensor>& mask) {
  constexpr const char* op = "sparsekit.pack_csr";
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto m = checked_mask(op, weight, mask);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(K <= kInt32Max, op, ": in_features ", K, " exceeds the int32 index range");
  const int es = elem_size(op, weight);
  const auto w = weight.contiguous();
  Words words = bitmap_words(op, m, N, K, weight);
  auto crow = at::zeros({N + 1}, weight.options().dtype(at::kInt));
  if (N > 0 && K > 0) crow.slice(0, 1).copy_(words.counts.sum(1, false, at::kLong).cumsum(0).to(at::kInt));
  auto col = at::empty({words.nnz}, weight.options().dtype(at::kInt));
  auto values = at::empty({words.nnz}, weight.options());
  check_launch(op, pack_scatter_kept(w.data_ptr(), words.bitmap.data_ptr<int32_t>(), words.offsets.data_ptr<int32_t>(),
                                     N, K, es, values.data_ptr(), col.data_ptr<int32_t>(), stream_of(weight)));
  return {crow, col, values};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_bsr_cuda(const at::Tensor& weight,
                                                             const std::optional<at::Tensor>& mask,
                                                             at::IntArrayRef blocksize) {
  constexpr const char* op = "sparsekit.pack_bsr";
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto m = checked_mask(op, weight, mask);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(blocksize.size() == 2, op, ": expected blocksize (R, C), got ", blocksize.size(), " numbers");
  const int64_t R = blocksize[0], C = blocksize[1];
  TORCH_CHECK_VALUE(R > 0 && C > 0 && N % R == 0 && K % C == 0, op, ": the block ", R, "x", C,
                    " does not tile the weight ", N, "x", K, " (out_features must divide by R and in_features by C)");
  TORCH_CHECK_VALUE(R * C <= 0xffffffffLL, op, ": the block ", R, "x", C, " is too large");
  const int es = elem_size(op, weight);
  const auto w = weight.contiguous();
  const int64_t NB = N / R, KB = K / C;
  auto flags = at::empty({NB, KB}, weight.options().dtype(at::kInt));
  check_launch(op, pack_bsr_flags(static_cast<const uint8_t*>(m.data_ptr()), N, K, R, C, flags.data_ptr<int32_t>(),
                                  stream_of(weight)));
  auto crow = at::zeros({NB + 1}, weight.options().dtype(at::kInt));
  int64_t nblocks = 0;
  at::Tensor pos;
  if (NB * KB > 0) {
    const auto f64 = flags.reshape({-1}).to(at::kLong);
    const auto incl = f64.cumsum(0);
    nblocks = incl[-1].item<int64_t>();  // a device sync: the outputs' size
    TORCH_CHECK_VALUE(nblocks <= kInt32Max, op, ": nblocks ", nblocks, " exceeds the int32 index range");
    pos = incl - f64;
    crow.slice(0, 1).copy_(flags.sum(1, false, at::kLong).cumsum(0).to(at::kInt));
  }
  auto col = at::empty({nblocks}, weight.options().dtype(at::kInt));
  auto brow = at::empty({nblocks}, weight.options().dtype(at::kInt));
  auto values = at::empty({nblocks, R, C}, weight.options());
  if (nblocks > 0) {
    check_launch(op, pack_bsr_index(flags.data_ptr<int32_t>(), pos.data_ptr<int64_t>(), NB, KB, col.data_ptr<int32_t>(),
                                    brow.data_ptr<int32_t>(), stream_of(weight)));
    check_launch(op, pack_bsr_values(w.data_ptr(), static_cast<const uint8_t*>(m.data_ptr()), K, R, C,
                                     col.data_ptr<int32_t>(), brow.data_ptr<int32_t>(), nblocks, es, values.data_ptr(),
                                     stream_of(weight)));
  }
  return {crow, col, values};
}

}  // namespace
}  // namespace cuda
}  // namespace sparsekit

TORCH_LIBRARY_IMPL(sparsekit, CUDA, m) {
  m.impl("sparse24_mm", &sparsekit::cuda::sparse24_mm_cuda);
  m.impl("bitmap_mm", &sparsekit::cuda::bitmap_mm_cuda);
  m.impl("bsr_mm", &sparsekit::cuda::bsr_mm_cuda);
  // the same kernels under their own names, for the CUDA router of sparsekit/triton (see _schemas.py)
  m.impl("_cuda_bitmap_mm", &sparsekit::cuda::bitmap_mm_cuda);
  m.impl("_cuda_bitmap_columns_mm", &sparsekit::cuda::bitmap_columns_mm_cuda);
  m.impl("_cuda_bsr_mm", &sparsekit::cuda::bsr_mm_cuda);
  m.impl("pack_sparse24", &sparsekit::cuda::pack_sparse24_cuda);
  m.impl("pack_bitmap", &sparsekit::cuda::pack_bitmap_cuda);
  m.impl("pack_csr", &sparsekit::cuda::pack_csr_cuda);
  m.impl("pack_bsr", &sparsekit::cuda::pack_bsr_cuda);
}
