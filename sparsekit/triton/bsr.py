"""BSR x dense: y = x @ W.T + bias with W (N, K) in R x C blocks (sparsekit/formats/LAYOUTS.md).

One program owns a BLOCK_M x BLOCK_N tile of y: BLOCK_N consecutive rows of one block row
(a block row of R rows is split into ceil(R / BLOCK_N) programs, so a block row of 64 gives 4
programs of 16 rows at decode and keeps the GPU busy without split-K or atomics). It walks the
block row's blocks (crow/col), loads the x columns of each block and the block's BLOCK_N rows
(contiguous in `values`), and accumulates in float32:

* DOT=False (small M, 1-8): acc[m, n, c] += x[m, c] * w[n, c], reduced over c at the end: no
  padding of M to 16, no layout conversion; a GEMV-like stream over the values.
* DOT=True: tl.dot of (BLOCK_M x BLOCK_C) by (BLOCK_C x BLOCK_N), M padded to 16 at decode and tiled
  (64/128) at large M, tiles in grouped order for L2 reuse of x.

Blocks wider than 64 columns are walked in 64-wide chunks; blocks of any size work (rows past R and
columns past C are masked), the fast cases are R, C in {16, 32, 64}.
"""
import torch
import triton
import triton.language as tl

from ..ops import _checked_once, _checks
from . import autotune
from ._common import DTYPE_NAME, cdiv, dot_acc, m_bucket, next_pow2, tile_ids, upcast_dot
from .launch import launch

OP = "bsr_mm"
_TABLE = autotune.table(OP)


@triton.jit
def _bsr_mm_kernel(x_ptr, crow_ptr, col_ptr, v_ptr, bias_ptr, y_ptr,
                   M, N, stride_xm, stride_xk, stride_ym,
                   R: tl.constexpr, C: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                   IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_C: tl.constexpr, GROUP_M: tl.constexpr):
    SUBS: tl.constexpr = (R + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = (N // R) * SUBS
    pid_m, pid_n = tile_ids(pid, num_m, num_n, GROUP_M)
    brow = pid_n // SUBS
    rr = (pid_n % SUBS) * BLOCK_N + tl.arange(0, BLOCK_N)  # rows inside the block row
    if R % BLOCK_N == 0:
        rr_ld = rr
    else:
        rr_ld = tl.minimum(rr, R - 1)  # rows past R read a valid row; their results are not stored
    rc = tl.arange(0, BLOCK_C)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    x_rows = x_ptr + (rm % M).to(tl.int64)[:, None] * stride_xm

    if DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_C), dtype=tl.float32)

    start = tl.load(crow_ptr + brow)
    end = tl.load(crow_ptr + brow + 1)
    w_blk = v_ptr + start.to(tl.int64) * (R * C)
    col_p = col_ptr + start
    for _ in range(start, end):
        cb = tl.load(col_p)
        for c0 in tl.static_range(0, C, BLOCK_C):
            cc = c0 + rc
            x_ptrs = x_rows + (cb * C + cc)[None, :] * stride_xk
            w_ptrs = w_blk + rr_ld[:, None] * C + cc[None, :]
            if C % BLOCK_C == 0:
                xk = tl.load(x_ptrs)
                w = tl.load(w_ptrs)
            else:
                cm = cc < C
                xk = tl.load(x_ptrs, mask=cm[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=cm[None, :], other=0.0)
            if DOT:
                acc = dot_acc(xk, tl.trans(w), acc, IEEE, UPCAST)
            else:
                acc += xk.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
        w_blk += R * C
        col_p += 1

    if not DOT:
        acc = tl.sum(acc, axis=2)
    n = brow * R + rr
    if HAS_BIAS:
        acc += tl.load(bias_ptr + brow * R + rr_ld).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + n[None, :]
    mask = (rm < M)[:, None] & (rr < R)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def _cfg(dot, bm, bn, bc, warps=4, stages=2, group_m=8):
    return {"DOT": dot, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_C": bc, "GROUP_M": group_m,
            "num_warps": warps, "num_stages": stages}


def candidates(R: int, C: int, bucket: int, dtype: torch.dtype):
    """Configurations to try for blocks R x C at an M bucket; the first is the heuristic default."""
    bc_dot = max(16, min(64, next_pow2(C)))
    bc_ew = min(64, next_pow2(C))
    rp = next_pow2(R)
    bn_dot = [b for b in (16, 32, 64, 128) if b <= max(16, rp)]
    bn_ew = [b for b in (8, 16, 32) if b <= rp] or [rp]
    out = []
    if bucket <= 8:
        # decode: elementwise FMA over the block rows, then dot with M padded to 16
        for bn in (16, 8, 32):
            if bn in bn_ew and bucket * bn * bc_ew <= 8192:
                out.append(_cfg(False, bucket, bn, bc_ew, warps=4 if bucket * bn * bc_ew >= 1024 else 2, stages=3))
        if not out:
            out.append(_cfg(False, bucket, bn_ew[0], bc_ew))
        for bn in bn_dot[:3]:
            out.append(_cfg(True, 16, bn, bc_dot, warps=4, stages=3))
        if bucket >= 8:  # the dot path first at 8
            out = [c for c in out if c["DOT"]] + [c for c in out if not c["DOT"]]
    elif bucket <= 16:
        for bn in ([32, 16, 64] if 32 in bn_dot else bn_dot):
            if bn in bn_dot:
                for st in (3, 4):
                    out.append(_cfg(True, 16, bn, bc_dot, warps=4, stages=st))
    elif bucket <= 128:
        bms = [b for b in (32, 64, 128) if b <= bucket]
        for bm in bms:
            for bn in bn_dot[:3]:
                out.append(_cfg(True, bm, bn, bc_dot, warps=4, stages=3))
        # prefer min(bucket, 64) x 64 (or the largest bn) first
        pref_bm, pref_bn = min(bucket, 64), bn_dot[min(2, len(bn_dot) - 1)]
        out.sort(key=lambda c: (c["BLOCK_M"] != pref_bm or c["BLOCK_N"] != pref_bn))
    else:
        for bm in (128, 64):
            for bn in reversed(bn_dot[:3]):
                for warps, st in ((8, 3), (4, 3), (8, 4)):
                    if bm * bn <= 4096 and warps == 8:
                        continue
                    out.append(_cfg(True, bm, bn, bc_dot, warps=warps, stages=st))
    if dtype == torch.float32:
        # float32 dots are FMA loops ("ieee"): with 4 warps, BLOCK_M = 128 or more than 64 x 32 x 64 products per
        # step spill on sm_80 or sm_90a (128x32x64: 168-byte stack on sm_80; bench/gpu_static.py). The
        # default that goes is replaced by the largest tile left (64 x 32 where it was 128 x 32 or 64 x 64).
        first = out[0]
        keep = [c for c in out if not (c["DOT"] and (c["BLOCK_M"] > 64 or
                                                     c["BLOCK_M"] * c["BLOCK_N"] * c["BLOCK_C"] > 64 * 32 * 64))]
        if keep and first not in keep:
            near = max((c for c in keep if c["DOT"] == first["DOT"]), default=None,
                       key=lambda c: (c["BLOCK_M"] * c["BLOCK_N"], c["BLOCK_M"]))
            if near is not None:
                keep.remove(near)
                keep.insert(0, near)
        out = keep or out[:1]
    return out


def _launch(x, crow, col, values, bias, y, M, N, R, C, cfg):
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    grid = (cdiv(M, bm) * (N // R) * cdiv(R, bn),)
    launch(
        _bsr_mm_kernel, grid,
        x, crow, col, values, bias if bias is not None else y, y,
        M, N, x.stride(0), x.stride(1), y.stride(0),
        R=R, C=C, HAS_BIAS=bias is not None, DOT=cfg["DOT"], IEEE=x.dtype == torch.float32, UPCAST=upcast_dot(x.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_C=cfg["BLOCK_C"], GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def bsr_mm(x, crow_indices, col_indices, values, out_features, bias=None, *, config=None):
    """The Triton bsr_mm: y (M, out_features) in x's dtype. `config` overrides the tuned configuration."""
    _checks.check_bsr_mm(x, crow_indices, col_indices, values, out_features, bias)
    R, C = values.shape[1], values.shape[2]
    _checked_once.run("sparsekit.bsr_mm", (crow_indices, col_indices),
                      (int(out_features) // R, values.shape[0], x.shape[1] // C),
                      lambda: _checks.check_bsr_mm_data(x, crow_indices, col_indices, values, out_features, bias))
    M, K = x.shape
    N = int(out_features)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if values.shape[0] == 0 or K == 0:  # no stored block: y = bias (or 0), nothing to launch
        if bias is None:
            return y.zero_()
        return y.copy_(bias.expand(M, N))
    if not values.is_contiguous():
        values = values.contiguous()
    if not crow_indices.is_contiguous():
        crow_indices = crow_indices.contiguous()
    if not col_indices.is_contiguous():
        col_indices = col_indices.contiguous()
    if config is None:
        dev = x.device
        key = (-1 if dev.index is None else dev.index, N, K, R, C, m_bucket(M), DTYPE_NAME[x.dtype])
        config = _TABLE.get(key)
        if config is None:
            config = autotune.choose(
                OP, _TABLE, key, dev, candidates(R, C, key[5], x.dtype),
                lambda c: _launch(x, crow_indices, col_indices, values, bias, y, M, N, R, C, c))
    _launch(x, crow_indices, col_indices, values, bias, y, M, N, R, C, config)
    return y
