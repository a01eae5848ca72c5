// Checks of the index buffers' contents written with ATen ops, so that they run where the buffers
// live: the CUDA bindings run them before a kernel reads a buffer (a malformed one would be read out
// of bounds on the device). Same conditions, same order and same messages as the pointer checks of
// csrc/checks.h, which the CPU bindings keep (one pass, no temporaries: faster for a first call).
//
// A passing check computes its whole condition on the device and reads back one bool: one device
// sync, paid once per buffer (csrc/checked_once.h). Only a failing check reads more, to name the first
// bad entry as the pointer check does.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace sparsekit {
namespace aten_checks {

// Index of the first true element of `bad` in row-major order (the caller knows there is one).
inline int64_t first_true(const at::Tensor& bad) { return bad.reshape(-1).nonzero()[0][0].item<int64_t>(); }

// Element i of t in row-major order, read back to the host.
inline int64_t value_at(const at::Tensor& t, int64_t i) { return t.reshape(-1)[i].item<int64_t>(); }

// As check_compressed_indices of csrc/checks.h: crow (n + 1 entries) starts at 0, ends at `count`,
// never decreases; the first `count` cols lie in [0, cols).
inline void check_compressed_indices(const char* op, const at::Tensor& crow, int64_t n, const char* count_name,
                                     int64_t count, const at::Tensor& col, int64_t cols, const char* cols_name) {
  const auto c = col.slice(0, 0, count);
  const auto decreasing = crow.slice(0, 1) < crow.slice(0, 0, n);
  const auto outside = (c < 0) | (c >= cols);
  const auto bad = crow[0].ne(0) | crow[n].ne(count) | decreasing.any() | outside.any();
  if (!bad.item<bool>()) return;
  const int64_t first = value_at(crow, 0), last = value_at(crow, n);
  TORCH_CHECK_VALUE(first == 0 && last == count, op, ": expected crow_indices[0] == 0 and crow_indices[-1] == ",
                    count_name, " == ", count, ", got ", first, " and ", last);
  if (decreasing.any().item<bool>()) {
    const int64_t i = first_true(decreasing);
    TORCH_CHECK_VALUE(false, op, ": expected non-decreasing crow_indices, got crow_indices[", i + 1, "] = ",
                      value_at(crow, i + 1), " < crow_indices[", i, "] = ", value_at(crow, i));
  }
  const int64_t i = first_true(outside);
  TORCH_CHECK_VALUE(false, op, ": expected col_indices in [0, ", cols_name, " = ", cols, "), got col_indices[", i,
                    "] = ", value_at(c, i));
}

// The set bits of each 32-bit word (SWAR popcount on int64: ATen has no popcount op), as int64.
inline at::Tensor popcount32(const at::Tensor& words) {
  auto v = words.to(at::kLong).bitwise_and(0xFFFFFFFFLL);  // the word's bits, as a non-negative number
  v = v - v.bitwise_right_shift(1).bitwise_and(0x55555555LL);
  v = v.bitwise_and(0x33333333LL) + v.bitwise_right_shift(2).bitwise_and(0x33333333LL);
  v = (v + v.bitwise_right_shift(4)).bitwise_and(0x0F0F0F0FLL);
  return (v * 0x01010101LL).bitwise_and(0xFFFFFFFFLL).bitwise_right_shift(24);
}

// As check_bitmap_words of csrc/checks.h: word_offsets[n, w] is the number of set bits before word w
// of row n (row-major over the whole bitmap), the total is nnz, no bit past in_features is set.
inline void check_bitmap_words(const char* op, const at::Tensor& bitmap, const at::Tensor& word_offsets, int64_t cols,
                               int64_t nnz) {
  const int64_t rows = bitmap.size(0), words = bitmap.size(1);
  const auto counts = popcount32(bitmap).reshape(-1);
  const auto before = counts.cumsum(0) - counts;
  const auto wrong = word_offsets.reshape(-1).to(at::kLong).ne(before);
  // The bits past in_features all lie in a row's last word.
  const uint32_t tail_mask = cols % 32 ? ~((uint32_t(1) << (cols % 32)) - 1u) : 0u;
  const auto tail = words && tail_mask
                        ? bitmap.select(1, words - 1).bitwise_and(static_cast<int32_t>(tail_mask)).ne(0)
                        : at::zeros({rows}, bitmap.options().dtype(at::kBool));
  const auto total = counts.sum();
  const auto bad = wrong.any() | tail.any() | total.ne(nnz);
  if (!bad.item<bool>()) return;
  // The pointer check walks row by row, the row's tail before its offsets: report what it meets first.
  const int64_t t = tail.any().item<bool>() ? first_true(tail) : rows;
  const int64_t w = wrong.any().item<bool>() ? first_true(wrong) : rows * words;
  TORCH_CHECK_VALUE(!(t < rows && t <= w / words), op, ": expected no bits past in_features = ", cols, " in row ", t,
                    " of bitmap");
  TORCH_CHECK_VALUE(w == rows * words, op, ": expected word_offsets[", w / words, ", ", w % words, "] == ",
                    value_at(before, w), " (the set bits before it), got ", value_at(word_offsets, w));
  TORCH_CHECK_VALUE(false, op, ": the bitmap keeps ", total.item<int64_t>(), " weights but there are ", nnz,
                    " values");
}

// The column list of the CUDA bitmap kernel's variant 4 (sparsekit.ops.reference.bitmap_columns): its first nnz
// entries, as 16-bit columns, are the columns of the bitmap's set bits in row-major order (bitmap already checked by
// check_bitmap_words). Unpacked a few million weights at a time (8 bytes a weight while unpacked).
inline void check_bitmap_columns(const char* op, const at::Tensor& bitmap, const at::Tensor& columns, int64_t cols,
                                 int64_t nnz) {
  const int64_t rows = bitmap.size(0), words = bitmap.size(1);
  const int64_t step = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(words * 32, 1));
  const auto bits = at::arange(32, bitmap.options().dtype(at::kLong));
  const auto got = columns.slice(0, 0, nnz).to(at::kLong).bitwise_and(0xFFFFLL);
  int64_t at_value = 0;
  auto bad = at::zeros({}, bitmap.options().dtype(at::kBool));
  for (int64_t r = 0; r < rows; r += step) {
    const auto m = bitmap.slice(0, r, std::min(rows, r + step)).to(at::kLong).unsqueeze(-1).bitwise_right_shift(bits)
                       .bitwise_and(1).reshape({-1, words * 32}).slice(1, 0, cols).to(at::kBool);
    const auto c = m.nonzero().select(1, 1);  // (one device sync per block: nonzero's size)
    const int64_t k = c.size(0);
    if (at_value + k > nnz) break;  // (check_bitmap_words has refused this already)
    bad = bad | got.slice(0, at_value, at_value + k).ne(c).any();
    at_value += k;
  }
  TORCH_CHECK_VALUE(at_value == nnz && !bad.item<bool>(), op,
                    ": the columns are not the bitmap's column list (sparsekit.ops.reference.bitmap_columns)");
}

// As check_meta_positions of csrc/checks.h: every group's two 2-bit positions in meta (rows x
// ceil(cols / 8) bytes, two groups of 4 columns per byte, low nibble first) are distinct and ascending.
inline void check_meta_positions(const char* op, const at::Tensor& meta, int64_t cols) {
  const int64_t rows = meta.size(0), groups = cols / 4;
  const auto m = meta.to(at::kInt);
  const auto nib = at::stack({m.bitwise_and(0xF), m.bitwise_right_shift(4)}, -1)
                       .reshape({rows, 2 * meta.size(1)})
                       .slice(1, 0, groups);
  const auto lo = nib.bitwise_and(3), hi = nib.bitwise_right_shift(2);
  const auto bad = lo >= hi;
  if (!bad.any().item<bool>()) return;
  const int64_t i = first_true(bad);
  TORCH_CHECK_VALUE(false, op, ": expected two distinct ascending positions in every group of 4 of meta, got ",
                    value_at(lo, i), " and ", value_at(hi, i), " in row ", i / groups, ", group ", i % groups);
}

}  // namespace aten_checks
}  // namespace sparsekit
