"""Pure-PyTorch references of every sparsekit op: the test oracle and the last fallback.

They compute in float32 (float64 when given float64) and return the input's dtype, as the
kernels do. They use only dense PyTorch, so they run on any device.
"""
from __future__ import annotations

import torch


def csr_to_dense(crow_indices, col_indices, values, shape, dtype=None) -> torch.Tensor:
    """Scatter a CSR matrix into a dense (rows, cols) tensor."""
    rows, cols = shape
    dtype = dtype or values.dtype
    dense = torch.zeros(rows, cols, dtype=dtype, device=values.device)
    counts = (crow_indices[1:] - crow_indices[:-1]).long()
    row_of = torch.repeat_interleave(torch.arange(rows, device=values.device), counts, output_size=values.numel())
    dense[row_of, col_indices.long()] = values.to(dtype)
    return dense


def csr_mm(x, crow_indices, col_indices, values, out_features, bias=None) -> torch.Tensor:
    """y = x @ W.T + bias, with W given in CSR."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = csr_to_dense(crow_indices, col_indices, values, (out_features, x.shape[-1]), acc)
    y = x.to(acc) @ w.T
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _finish(y, bias, dtype):
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(dtype)


# ------------------------------------------------------------------------------------------ BSR
def bsr_to_dense(crow_indices, col_indices, values, shape, dtype=None) -> torch.Tensor:
    """Scatter a BSR matrix (blocks values.shape[1:]) into a dense (rows, cols) tensor."""
    rows, cols = shape
    R, C = values.shape[1], values.shape[2]
    dtype = dtype or values.dtype
    dense = torch.zeros(rows // R, R, cols // C, C, dtype=dtype, device=values.device)
    counts = (crow_indices[1:] - crow_indices[:-1]).long()
    brow = torch.repeat_interleave(torch.arange(rows // R, device=values.device), counts, output_size=values.shape[0])
    dense[brow, :, col_indices.long(), :] = values.to(dtype)
    return dense.reshape(rows, cols)


def bsr_mm(x, crow_indices, col_indices, values, out_features, bias=None) -> torch.Tensor:
    acc = _acc_dtype(x.dtype)
    w = bsr_to_dense(crow_indices, col_indices, values, (out_features, x.shape[-1]), acc)
    return _finish(x.to(acc) @ w.T, bias, x.dtype)


# ------------------------------------------------------------------------------------------ bitmap
def bitmap_mask(bitmap: torch.Tensor, cols: int) -> torch.Tensor:
    """The bool (rows, cols) mask held by an int32 (rows, ceil(cols / 32)) bitmap."""
    bits = torch.arange(32, device=bitmap.device, dtype=torch.int64)
    m = (bitmap.to(torch.int64)[:, :, None] >> bits) & 1
    return m.reshape(bitmap.shape[0], -1)[:, :cols].bool()


def bitmap_columns(bitmap: torch.Tensor, cols: int) -> torch.Tensor:
    """The column of every kept weight of an int32 (rows, ceil(cols / 32)) bitmap, in the order of its values
    (row-major), as the int16 bits of 0..cols - 1 (cols <= 65536), zero-padded to a multiple of 8 entries: the
    column list that the CUDA bitmap kernel's variant 4 reads beside the values (formats/bitmap.py). Built a few
    million weights at a time, so that the temporaries stay small."""
    if cols > 65536:
        raise ValueError(f"bitmap_columns: 16-bit columns need in_features <= 65536, got {cols}")
    rows = bitmap.shape[0]
    step = max(1, (1 << 22) // max(cols, 1))
    parts = [bitmap_mask(bitmap[r:r + step], cols).nonzero()[:, 1] for r in range(0, rows, step)]
    c = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=bitmap.device)
    out = torch.zeros(-(-c.numel() // 8) * 8, dtype=torch.int32, device=bitmap.device)
    out[: c.numel()] = c
    return torch.where(out >= 32768, out - 65536, out).to(torch.int16)


def bitmap_to_dense(bitmap, word_offsets, values, shape, dtype=None) -> torch.Tensor:
    rows, cols = shape
    dtype = dtype or values.dtype
    mask = bitmap_mask(bitmap, cols)
    dense = torch.zeros(rows, cols, dtype=dtype, device=values.device)
    dense[mask] = values.to(dtype)  # boolean indexing is row-major: the values' order
    return dense


def bitmap_mm(x, bitmap, word_offsets, values, bias=None) -> torch.Tensor:
    acc = _acc_dtype(x.dtype)
    w = bitmap_to_dense(bitmap, word_offsets, values, (bitmap.shape[0], x.shape[-1]), acc)
    return _finish(x.to(acc) @ w.T, bias, x.dtype)


# ------------------------------------------------------------------------------------------ 2:4
def sparse24_positions(meta: torch.Tensor, cols: int) -> torch.Tensor:
    """int64 (rows, cols / 2): the column of each kept value in the 2:4 layout."""
    rows = meta.shape[0]
    groups = cols // 4
    m = meta.to(torch.int64)
    nib = torch.stack([m & 0xF, m >> 4], dim=-1).reshape(rows, -1)[:, :groups]  # a nibble per group
    i0, i1 = nib & 3, (nib >> 2) & 3
    base = torch.arange(groups, device=meta.device, dtype=torch.int64) * 4
    return torch.stack([base + i0, base + i1], dim=-1).reshape(rows, 2 * groups)


def sparse24_to_dense(values, meta, cols, dtype=None) -> torch.Tensor:
    dtype = dtype or values.dtype
    pos = sparse24_positions(meta, cols)
    dense = torch.zeros(values.shape[0], cols, dtype=dtype, device=values.device)
    dense.scatter_(1, pos, values.to(dtype))
    return dense


def sparse24_mm(x, values, meta, bias=None) -> torch.Tensor:
    acc = _acc_dtype(x.dtype)
    w = sparse24_to_dense(values, meta, x.shape[-1], acc)
    return _finish(x.to(acc) @ w.T, bias, x.dtype)


# ------------------------------------------------------------------------------------------ int8
def int8_gemm_i32(a, b) -> torch.Tensor:
    """Exact int8 x int8 -> int32 (float64 holds every such sum exactly for K < 2**37)."""
    return (a.to(torch.float64) @ b.to(torch.float64).T).to(torch.int32)


def quantize_per_token(x, symmetric: bool = True):
    """Per-row int8 quantization: x ~= (q - zero_point) * scale. Rounds half to even.

    A row holding NaN or +-Inf has no int8 representation: its scale is NaN (every output computed
    from it is then NaN), its q and zero point 0.
    """
    xf = x.float()
    finite = torch.isfinite(xf).all(dim=-1)
    xf = torch.where(finite[:, None], xf, torch.zeros((), device=xf.device))
    nan = torch.full((), float("nan"), device=xf.device)
    if symmetric:
        amax = xf.abs().amax(dim=-1) if xf.shape[-1] else xf.new_zeros(xf.shape[:-1])
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(xf / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return q, torch.where(finite, scale, nan), torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)
    if xf.shape[-1]:
        lo = xf.amin(dim=-1).clamp(max=0)
        hi = xf.amax(dim=-1).clamp(min=0)
    else:
        lo = hi = xf.new_zeros(xf.shape[:-1])
    scale = (hi - lo) / 255.0
    scale = torch.where(torch.isinf(scale), hi / 255.0 - lo / 255.0, scale)  # hi - lo overflowed float32
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.round(-128.0 - lo / scale).clamp(-128, 127)
    zp = torch.where(finite, zp, 0.0)
    q = (torch.round(xf / scale[:, None]) + zp[:, None]).clamp(-128, 127).to(torch.int8)
    return q, torch.where(finite, scale, nan), zp.to(torch.int32)


def int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype) -> torch.Tensor:
    acc = int8_gemm_i32(x_q, w_q).to(torch.int64)
    if x_zero is not None:
        acc = acc - x_zero.to(torch.int64)[:, None] * w_q.to(torch.int64).sum(1)[None, :]
    y = acc.to(torch.float32) * x_scale.float()[:, None] * w_scale.float()[None, :]
    return _finish(y, bias, out_dtype)


def int8_weight_only_mm(x, w_q, w_scale, bias=None) -> torch.Tensor:
    acc = _acc_dtype(x.dtype)
    w = w_q.to(acc) * w_scale.to(acc)[:, None]
    return _finish(x.to(acc) @ w.T, bias, x.dtype)


def sparse24_int8_mm(x_q, x_scale, x_zero, values, meta, w_scale, bias, out_dtype) -> torch.Tensor:
    pos = sparse24_positions(meta, x_q.shape[-1])
    w_q = torch.zeros(values.shape[0], x_q.shape[-1], dtype=torch.int8, device=values.device)
    w_q.scatter_(1, pos, values)
    return int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype)


def int8_linear(x, w_q, w_scale, bias=None) -> torch.Tensor:
    """The one-call W8A8 linear: quantize_per_token(x, True) then int8_mm, y in x's dtype."""
    q, s, _ = quantize_per_token(x, True)
    return int8_mm(q, s, None, w_q, w_scale, bias, x.dtype)


def sparse24_int8_linear(x, values, meta, w_scale, bias=None) -> torch.Tensor:
    """The one-call 2:4 + int8 W8A8 linear: quantize_per_token(x, True) then sparse24_int8_mm."""
    q, s, _ = quantize_per_token(x, True)
    return sparse24_int8_mm(q, s, None, values, meta, w_scale, bias, x.dtype)
