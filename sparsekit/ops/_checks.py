"""Input checks shared by the op wrappers, the fake kernels and the references.

They raise TypeError for a wrong dtype and ValueError for a wrong shape, device or value,
and say what was expected and what came.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT32_MAX = 2**31 - 1
# int8 x int8 products summed in int32 are exact while sum |a * b| <= 128 * 128 * terms <= INT32_MAX
INT8_MAX_TERMS = INT32_MAX // (128 * 128)  # 131071


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def expect_dtype(op: str, what: str, t: torch.Tensor, allowed) -> None:
    if t.dtype not in allowed:
        allowed = tuple(allowed)
        names = " or ".join(_name(d) for d in allowed)
        raise TypeError(f"{op}: expected {what} of dtype {names}, got {_name(t.dtype)}")


def expect(cond, op: str, message) -> None:
    """A shape or value condition; works on symbolic sizes under torch.compile.

    `message` is a string or a callable returning one, built only when the check fails: these checks
    run on every call of an op, where formatting every message cost microseconds per call.
    """
    if cond is True:  # eager sizes give a plain bool; symbolic ones (torch.compile) go to _check_value
        return
    torch._check_value(cond, lambda: f"{op}: {message() if callable(message) else message}")


def _check_in_features(op, x):
    # the kernels index columns with int32 (col_indices, bitmap positions)
    expect(x.shape[1] <= INT32_MAX, op, lambda: f"in_features {x.shape[1]} exceeds the int32 index range")


def check_csr_mm(x, crow_indices, col_indices, values, out_features, bias) -> None:
    op = "sparsekit.csr_mm"
    expect(x.dim() == 2, op, lambda: f"expected x of shape (M, in_features), got shape {tuple(x.shape)}")
    expect_dtype(op, "x", x, FLOAT_DTYPES)
    if values.dtype != x.dtype:
        raise TypeError(f"{op}: expected values of the same dtype as x ({_name(x.dtype)}), got {_name(values.dtype)}")
    _check_in_features(op, x)
    expect_dtype(op, "crow_indices", crow_indices, (torch.int32,))
    expect_dtype(op, "col_indices", col_indices, (torch.int32,))
    expect(
        crow_indices.dim() == 1 and col_indices.dim() == 1 and values.dim() == 1,
        op,
        lambda: f"expected 1-d crow_indices, col_indices and values, got {crow_indices.dim()}-d, "
        f"{col_indices.dim()}-d and {values.dim()}-d",
    )
    expect(out_features >= 0, op, lambda: f"expected out_features >= 0, got {out_features}")
    expect(
        crow_indices.numel() == out_features + 1,
        op,
        lambda: f"expected crow_indices of length out_features + 1 = {out_features + 1}, got {crow_indices.numel()}",
    )
    expect(
        col_indices.numel() == values.numel(),
        op,
        lambda: f"expected col_indices and values of the same length, got {col_indices.numel()} and {values.numel()}",
    )
    expect(values.numel() <= INT32_MAX, op, lambda: f"nnz {values.numel()} exceeds the int32 index range")
    for what, t in (("crow_indices", crow_indices), ("col_indices", col_indices), ("values", values)):
        if t.device != x.device:
            raise ValueError(f"{op}: expected {what} on {x.device} like x, got {t.device}")
    if bias is not None:
        expect(
            bias.dim() == 1 and bias.numel() == out_features,
            op,
            lambda: f"expected bias of shape ({out_features},), got {tuple(bias.shape)}",
        )
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: expected bias of dtype {_name(x.dtype)} like x, got {_name(bias.dtype)}")
        if bias.device != x.device:
            raise ValueError(f"{op}: expected bias on {x.device} like x, got {bias.device}")


def _same_device(op, x, **tensors):
    for what, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: expected {what} on {x.device} like x, got {t.device}")


def _check_x2d(op, x, what="x"):
    expect(x.dim() == 2, op, lambda: f"expected {what} of shape (M, in_features), got shape {tuple(x.shape)}")


def _check_bias(op, bias, out_features, dtype, device):
    if bias is None:
        return
    expect(bias.dim() == 1 and bias.numel() == out_features, op,
           lambda: f"expected bias of shape ({out_features},), got {tuple(bias.shape)}")
    if bias.dtype != dtype:
        raise TypeError(f"{op}: expected bias of dtype {_name(dtype)} like the output, got {_name(bias.dtype)}")
    if bias.device != device:
        raise ValueError(f"{op}: expected bias on {device} like x, got {bias.device}")


def check_bsr_mm(x, crow_indices, col_indices, values, out_features, bias) -> None:
    op = "sparsekit.bsr_mm"
    _check_x2d(op, x)
    expect_dtype(op, "x", x, FLOAT_DTYPES)
    if values.dtype != x.dtype:
        raise TypeError(f"{op}: expected values of the same dtype as x ({_name(x.dtype)}), got {_name(values.dtype)}")
    _check_in_features(op, x)
    expect_dtype(op, "crow_indices", crow_indices, (torch.int32,))
    expect_dtype(op, "col_indices", col_indices, (torch.int32,))
    expect(values.dim() == 3, op, lambda: f"expected values of shape (nblocks, R, C), got shape {tuple(values.shape)}")
    R, C = values.shape[1], values.shape[2]
    expect(R > 0 and C > 0, op, lambda: f"expected blocks of positive size, got {R}x{C}")
    expect(out_features % R == 0 and x.shape[1] % C == 0, op,
           lambda: f"expected out_features and in_features divisible by the block {R}x{C}, got {out_features} and {x.shape[1]}")
    expect(crow_indices.dim() == 1 and crow_indices.numel() == out_features // R + 1, op,
           lambda: f"expected crow_indices of length out_features / R + 1 = {out_features // R + 1}, got {crow_indices.numel()}")
    expect(col_indices.dim() == 1 and col_indices.numel() == values.shape[0], op,
           lambda: f"expected col_indices of length nblocks = {values.shape[0]}, got {col_indices.numel()}")
    _same_device(op, x, crow_indices=crow_indices, col_indices=col_indices, values=values)
    _check_bias(op, bias, out_features, x.dtype, x.device)


def check_bitmap_mm(x, bitmap, word_offsets, values, bias) -> None:
    op = "sparsekit.bitmap_mm"
    _check_x2d(op, x)
    expect_dtype(op, "x", x, FLOAT_DTYPES)
    if values.dtype != x.dtype:
        raise TypeError(f"{op}: expected values of the same dtype as x ({_name(x.dtype)}), got {_name(values.dtype)}")
    _check_in_features(op, x)
    expect_dtype(op, "bitmap", bitmap, (torch.int32,))
    expect_dtype(op, "word_offsets", word_offsets, (torch.int32,))
    words = (x.shape[1] + 31) // 32
    expect(bitmap.dim() == 2 and bitmap.shape[1] == words, op,
           lambda: f"expected bitmap of shape (out_features, ceil(in_features / 32) = {words}), got {tuple(bitmap.shape)}")
    expect(word_offsets.shape == bitmap.shape, op,
           lambda: f"expected word_offsets of the bitmap's shape {tuple(bitmap.shape)}, got {tuple(word_offsets.shape)}")
    expect(values.dim() == 1 and values.numel() <= INT32_MAX, op,
           lambda: f"expected 1-d values with nnz < 2**31, got shape {tuple(values.shape)}")
    _same_device(op, x, bitmap=bitmap, word_offsets=word_offsets, values=values)
    _check_bias(op, bias, bitmap.shape[0], x.dtype, x.device)


def check_bitmap_columns_mm(x, bitmap, word_offsets, values, columns, bias) -> None:
    """bitmap_mm's checks, then the column list's dtype, length and device (its contents: the data check)."""
    check_bitmap_mm(x, bitmap, word_offsets, values, bias)
    op = "sparsekit._cuda_bitmap_columns_mm"
    expect_dtype(op, "columns", columns, (torch.int16,))
    need = -(-values.numel() // 8) * 8
    expect(columns.dim() == 1 and columns.numel() >= need, op,
           lambda: f"expected 1-d columns of at least round_up(nnz, 8) = {need} entries, got shape {tuple(columns.shape)}")
    expect(x.shape[1] <= 65536, op, lambda: f"16-bit columns need in_features <= 65536, got {x.shape[1]}")
    _same_device(op, x, columns=columns)


def _check_meta(op, meta, rows, cols):
    expect_dtype(op, "meta", meta, (torch.uint8,))
    expect(cols % 4 == 0, op, lambda: f"expected in_features divisible by 4 for 2:4, got {cols}")
    expect(meta.dim() == 2 and meta.shape[0] == rows and meta.shape[1] == (cols + 7) // 8, op,
           lambda: f"expected meta of shape ({rows}, {(cols + 7) // 8}), got {tuple(meta.shape)}")


def check_sparse24_mm(x, values, meta, bias) -> None:
    op = "sparsekit.sparse24_mm"
    _check_x2d(op, x)
    expect_dtype(op, "x", x, FLOAT_DTYPES)
    if values.dtype != x.dtype:
        raise TypeError(f"{op}: expected values of the same dtype as x ({_name(x.dtype)}), got {_name(values.dtype)}")
    _check_in_features(op, x)
    expect(values.dim() == 2 and values.shape[1] * 2 == x.shape[1], op,
           lambda: f"expected values of shape (out_features, in_features / 2 = {x.shape[1] // 2}), got {tuple(values.shape)}")
    _check_meta(op, meta, values.shape[0], x.shape[1])
    _same_device(op, x, values=values, meta=meta)
    _check_bias(op, bias, values.shape[0], x.dtype, x.device)


def _check_int32_sums(op, K, terms_per_column=1):
    """int32 accumulation of int8 products stays exact: at most INT8_MAX_TERMS products per output
    (2:4 stores one of every two columns, so it may take twice the in_features)."""
    limit = INT8_MAX_TERMS * terms_per_column
    expect(K <= limit, op, lambda: f"expected in_features <= {limit} (past it the int32 sums of int8 products "
           f"can overflow), got {K}")


def check_int8_gemm_i32(a, b) -> None:
    op = "sparsekit.int8_gemm_i32"
    expect_dtype(op, "a", a, (torch.int8,))
    expect_dtype(op, "b", b, (torch.int8,))
    expect(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[1], op,
           lambda: f"expected a (M, K) and b (N, K), got {tuple(a.shape)} and {tuple(b.shape)}")
    _check_int32_sums(op, a.shape[1])
    _same_device(op, a, b=b)


def check_quantize_per_token(x) -> None:
    op = "sparsekit.quantize_per_token"
    _check_x2d(op, x)
    expect_dtype(op, "x", x, FLOAT_DTYPES)


def _check_x_quant(op, x_q, x_scale, x_zero):
    expect_dtype(op, "x_q", x_q, (torch.int8,))
    _check_x2d(op, x_q, "x_q")
    expect_dtype(op, "x_scale", x_scale, (torch.float32,))
    expect(x_scale.shape == (x_q.shape[0],), op, lambda: f"expected x_scale of shape ({x_q.shape[0]},), got {tuple(x_scale.shape)}")
    if x_zero is not None:
        expect_dtype(op, "x_zero", x_zero, (torch.int32,))
        expect(x_zero.shape == (x_q.shape[0],), op, lambda: f"expected x_zero of shape ({x_q.shape[0]},), got {tuple(x_zero.shape)}")


def _check_out_dtype(op, out_dtype):
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: expected out_dtype float32 or bfloat16 or float16, got {_name(out_dtype)}")


def _check_w_scale(op, w_scale, rows):
    expect_dtype(op, "w_scale", w_scale, (torch.float32,))
    expect(w_scale.shape == (rows,), op, lambda: f"expected w_scale of shape ({rows},), got {tuple(w_scale.shape)}")


def check_int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype) -> None:
    op = "sparsekit.int8_mm"
    _check_x_quant(op, x_q, x_scale, x_zero)
    expect_dtype(op, "w_q", w_q, (torch.int8,))
    expect(w_q.dim() == 2 and w_q.shape[1] == x_q.shape[1], op,
           lambda: f"expected w_q of shape (out_features, {x_q.shape[1]}), got {tuple(w_q.shape)}")
    _check_int32_sums(op, x_q.shape[1])
    _check_w_scale(op, w_scale, w_q.shape[0])
    _check_out_dtype(op, out_dtype)
    _same_device(op, x_q, x_scale=x_scale, x_zero=x_zero, w_q=w_q, w_scale=w_scale)
    _check_bias(op, bias, w_q.shape[0], out_dtype, x_q.device)


def _check_float_x_int8_weight(op, x, w_q, w_scale, bias, int32_sums: bool) -> None:
    """A float x (M, K) against an int8 weight (N, K) with its per-channel scale; with `int32_sums`, x is
    quantized to int8 inside the op, so the int32 sums' limit on K applies."""
    _check_x2d(op, x)
    expect_dtype(op, "x", x, FLOAT_DTYPES)
    expect_dtype(op, "w_q", w_q, (torch.int8,))
    expect(w_q.dim() == 2 and w_q.shape[1] == x.shape[1], op,
           lambda: f"expected w_q of shape (out_features, {x.shape[1]}), got {tuple(w_q.shape)}")
    if int32_sums:
        _check_int32_sums(op, x.shape[1])
    _check_w_scale(op, w_scale, w_q.shape[0])
    _same_device(op, x, w_q=w_q, w_scale=w_scale)
    _check_bias(op, bias, w_q.shape[0], x.dtype, x.device)


def check_int8_weight_only_mm(x, w_q, w_scale, bias) -> None:
    _check_float_x_int8_weight("sparsekit.int8_weight_only_mm", x, w_q, w_scale, bias, int32_sums=False)


def check_sparse24_int8_mm(x_q, x_scale, x_zero, values, meta, w_scale, bias, out_dtype) -> None:
    op = "sparsekit.sparse24_int8_mm"
    _check_x_quant(op, x_q, x_scale, x_zero)
    expect_dtype(op, "values", values, (torch.int8,))
    expect(values.dim() == 2 and values.shape[1] * 2 == x_q.shape[1], op,
           lambda: f"expected values of shape (out_features, in_features / 2 = {x_q.shape[1] // 2}), got {tuple(values.shape)}")
    _check_meta(op, meta, values.shape[0], x_q.shape[1])
    _check_int32_sums(op, x_q.shape[1], 2)
    _check_w_scale(op, w_scale, values.shape[0])
    _check_out_dtype(op, out_dtype)
    _same_device(op, x_q, x_scale=x_scale, x_zero=x_zero, values=values, meta=meta, w_scale=w_scale)
    _check_bias(op, bias, values.shape[0], out_dtype, x_q.device)


def check_int8_linear(x, w_q, w_scale, bias) -> None:
    _check_float_x_int8_weight("sparsekit.int8_linear", x, w_q, w_scale, bias, int32_sums=True)


def check_sparse24_int8_linear(x, values, meta, w_scale, bias) -> None:
    op = "sparsekit.sparse24_int8_linear"
    _check_x2d(op, x)
    expect_dtype(op, "x", x, FLOAT_DTYPES)
    expect_dtype(op, "values", values, (torch.int8,))
    expect(values.dim() == 2 and values.shape[1] * 2 == x.shape[1], op,
           lambda: f"expected values of shape (out_features, in_features / 2 = {x.shape[1] // 2}), got {tuple(values.shape)}")
    _check_meta(op, meta, values.shape[0], x.shape[1])
    _check_int32_sums(op, x.shape[1], 2)
    _check_w_scale(op, w_scale, values.shape[0])
    _same_device(op, x, values=values, meta=meta, w_scale=w_scale)
    _check_bias(op, bias, values.shape[0], x.dtype, x.device)


# ------------------------------------------------------------------------------------------
# Checks of the index buffers' contents, for the reference path (the fake kernels cannot see
# data). Same messages, in the same order, as the C++ checks in csrc/checks.h that the compiled
# kernels run before reading the buffers.
def _first(bad: torch.Tensor) -> int:
    return int(bad.reshape(-1).nonzero()[0, 0])


def check_compressed_indices(op, crow, n, count_name, count, col, cols, cols_name) -> None:
    """crow (n + 1,) starts at 0, ends at `count`, never decreases; every col lies in [0, cols)."""
    c0, cn = int(crow[0]), int(crow[n])
    if c0 != 0 or cn != count:
        raise ValueError(f"{op}: expected crow_indices[0] == 0 and crow_indices[-1] == {count_name} == {count}, "
                         f"got {c0} and {cn}")
    dec = crow[1:] < crow[:-1]
    if bool(dec.any()):
        i = _first(dec)
        raise ValueError(f"{op}: expected non-decreasing crow_indices, got crow_indices[{i + 1}] = {int(crow[i + 1])} "
                         f"< crow_indices[{i}] = {int(crow[i])}")
    col = col[:count]
    out = (col < 0) | (col >= cols)
    if bool(out.any()):
        i = _first(out)
        raise ValueError(f"{op}: expected col_indices in [0, {cols_name} = {cols}), got col_indices[{i}] = {int(col[i])}")


def _popcount32(words: torch.Tensor) -> torch.Tensor:
    """The set bits of each int32 word, as int64 (SWAR: no (words, 32) temporary, as csrc/index_checks.h)."""
    v = words.to(torch.int64) & 0xFFFFFFFF
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & 0xFFFFFFFF) >> 24


def check_bitmap_words(op, bitmap, word_offsets, cols, nnz) -> None:
    """word_offsets count the set bits before each word (row-major), the total is nnz, no bit past cols."""
    rows, words = bitmap.shape
    if words and cols % 32:  # the bits past cols all lie in a row's last word
        tail = (bitmap[:, -1].to(torch.int64) & ~((1 << (cols % 32)) - 1) & 0xFFFFFFFF) != 0
    else:
        tail = torch.zeros(rows, dtype=torch.bool, device=bitmap.device)
    counts = _popcount32(bitmap.reshape(-1))
    expected = torch.cumsum(counts, 0) - counts
    wrong = (word_offsets.reshape(-1).to(torch.int64) != expected).reshape(rows, words)
    t = _first(tail) if bool(tail.any()) else rows
    w = _first(wrong) if bool(wrong.any()) else rows * words
    if t < rows and t <= w // max(words, 1):
        raise ValueError(f"{op}: expected no bits past in_features = {cols} in row {t} of bitmap")
    if w < rows * words:
        n, j = divmod(w, words)
        raise ValueError(f"{op}: expected word_offsets[{n}, {j}] == {int(expected[w])} (the set bits before it), "
                         f"got {int(word_offsets[n, j])}")
    total = int(counts.sum())
    if total != nnz:
        raise ValueError(f"{op}: the bitmap keeps {total} weights but there are {nnz} values")


def check_meta_positions(op, meta, cols) -> None:
    """Every group's two 2-bit positions are distinct and ascending."""
    rows, groups = meta.shape[0], cols // 4
    m = meta.to(torch.int64)
    nib = torch.stack([m & 0xF, m >> 4], dim=-1).reshape(rows, -1)[:, :groups]
    bad = (nib & 3) >= (nib >> 2)
    if bool(bad.any()):
        i = _first(bad)
        n, g = divmod(i, groups)
        v = int(nib[n, g])
        raise ValueError(f"{op}: expected two distinct ascending positions in every group of 4 of meta, got {v & 3} "
                         f"and {v >> 2} in row {n}, group {g}")


def check_csr_mm_data(x, crow_indices, col_indices, values, out_features, bias) -> None:
    check_compressed_indices("sparsekit.csr_mm", crow_indices, out_features, "nnz", values.numel(), col_indices,
                             x.shape[1], "in_features")


def check_bsr_mm_data(x, crow_indices, col_indices, values, out_features, bias) -> None:
    R, C = values.shape[1], values.shape[2]
    check_compressed_indices("sparsekit.bsr_mm", crow_indices, out_features // R, "nblocks", values.shape[0],
                             col_indices, x.shape[1] // C, "in_features / C")


def check_bitmap_mm_data(x, bitmap, word_offsets, values, bias) -> None:
    check_bitmap_words("sparsekit.bitmap_mm", bitmap, word_offsets, x.shape[1], values.numel())


def check_bitmap_columns_mm_data(x, bitmap, word_offsets, values, columns, bias) -> None:
    check_bitmap_mm_data(x, bitmap, word_offsets, values, bias)
    from .reference import bitmap_columns

    nnz = values.numel()
    if not torch.equal(columns[:nnz].cpu(), bitmap_columns(bitmap, x.shape[1])[:nnz].cpu()):
        raise ValueError("sparsekit._cuda_bitmap_columns_mm: the columns are not the bitmap's column list "
                         "(sparsekit.ops.reference.bitmap_columns)")


def check_sparse24_mm_data(x, values, meta, bias) -> None:
    check_meta_positions("sparsekit.sparse24_mm", meta, x.shape[1])


def check_sparse24_int8_mm_data(x_q, x_scale, x_zero, values, meta, w_scale, bias, out_dtype) -> None:
    check_meta_positions("sparsekit.sparse24_int8_mm", meta, x_q.shape[1])


def check_sparse24_int8_linear_data(x, values, meta, w_scale, bias) -> None:
    check_meta_positions("sparsekit.sparse24_int8_linear", meta, x.shape[1])


# cuSPARSELt: out_features and in_features must be multiples of these (csrc/cuda/ops_cusparselt.cpp)
CSLT_NK_MULTIPLE = {torch.float16: 16, torch.bfloat16: 16, torch.int8: 32}


def cslt_shape_fits(n: int, k: int, dtype: torch.dtype) -> bool:
    m = CSLT_NK_MULTIPLE.get(dtype)
    return m is not None and n > 0 and k > 0 and n % m == 0 and k % m == 0


def _check_cslt_nk(op, n, k, dtype):
    expect(cslt_shape_fits(n, k, dtype), op,
           lambda: f"cuSPARSELt needs out_features and in_features that are positive multiples of "
           f"{CSLT_NK_MULTIPLE[dtype]} for {_name(dtype)}, got {n} x {k}; sparsekit's own 2:4 kernel (sparse24_mm) "
           "serves other shapes")


def check_cslt_compress(weight) -> None:
    op = "sparsekit.cslt_compress"
    expect(weight.dim() == 2, op, lambda: f"expected a weight of shape (out_features, in_features), got shape "
           f"{tuple(weight.shape)}")
    expect_dtype(op, "a weight", weight, tuple(CSLT_NK_MULTIPLE))
    _check_cslt_nk(op, weight.shape[0], weight.shape[1], weight.dtype)


def cslt_out_dtype(x, out_dtype):
    """The output dtype of cslt_mm: x's for float16 / bfloat16 x, out_dtype (float16 / bfloat16) for int8 x."""
    op = "sparsekit.cslt_mm"
    if x.dtype == torch.int8:
        if out_dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"{op}: int8 x needs out_dtype float16 or bfloat16, got "
                            f"{'None' if out_dtype is None else _name(out_dtype)}")
        return out_dtype
    if out_dtype is not None and out_dtype != x.dtype:
        raise TypeError(f"{op}: {_name(x.dtype)} x gives a {_name(x.dtype)} output, got out_dtype {_name(out_dtype)}")
    return x.dtype


def _check_float_vector(op, what, v, n):
    if v is None:
        return
    expect_dtype(op, what, v, (torch.float32,))
    expect(v.shape == (n,), op, lambda: f"expected {what} of shape ({n},), got {tuple(v.shape)}")


def check_cslt_mm(x, compressed, out_features, bias, alpha, row_scale, out_dtype) -> None:
    op = "sparsekit.cslt_mm"
    _check_x2d(op, x)
    expect_dtype(op, "x", x, tuple(CSLT_NK_MULTIPLE))
    _check_cslt_nk(op, out_features, x.shape[1], x.dtype)
    out = cslt_out_dtype(x, out_dtype)
    expect_dtype(op, "compressed", compressed, (torch.uint8,))
    expect(compressed.dim() == 1, op, lambda: f"expected compressed as returned by cslt_compress (1-d uint8), got shape "
           f"{tuple(compressed.shape)}")
    _check_float_vector(op, "alpha", alpha, out_features)
    if row_scale is not None and x.dtype != torch.int8:
        raise ValueError(f"{op}: row_scale (the per-token scale of W8A8) is for int8 x only")
    _check_float_vector(op, "row_scale", row_scale, x.shape[0])
    _same_device(op, x, compressed=compressed, alpha=alpha, row_scale=row_scale)
    _check_bias(op, bias, out_features, out, x.device)
