"""Unstructured bitmap x dense: "load as sparse, compute as dense".

W (N, K) is stored as one bit per weight (bitmap int32 (N, ceil(K/32)), bit b of word w = column
32 w + b), the index of each word's first kept value (word_offsets) and the kept values (row-major).
A program owns a BLOCK_M x BLOCK_N tile of y and walks K in steps of WPB words (32 WPB columns).
Per step it loads the (BLOCK_N, WPB) words and offsets once (8 bytes per 32 weights), then for
each bit position j = 0..31 (unrolled) builds the (BLOCK_N, WPB) weight slice at columns 32 w + j:

    kept  = (word >> j) & 1
    w     = kept ? values[cnt] : 0       (a masked load: only kept values are read)
    cnt  += kept                         (cnt starts at word_offsets, so cnt = word_offsets +
                                          popcount(word & ((1 << j) - 1)): a running popcount)

and multiplies it with the matching x columns (a strided gather of x, which stays in L1/L2):
tl.dot with K = WPB (>= 16; M padded to 16 or tiled) or, for M <= 8, an elementwise FMA into a
(BLOCK_M, BLOCK_N, WPB) accumulator reduced once at the end. The weight tile is thus consumed in a
bit-major order of K, which leaves the dot product unchanged. No per-element popcount, no
per-element word load; the bytes read fall with sparsity (K/4 bytes of bitmap + offsets per row and
2 bytes per kept value).

Above M = 16 that bit-major walk gathers x columns 32 apart (one 2-byte load per 64-byte stride) and runs
32 dots of K = WPB per step: it measured 0.04-0.09x dense at M = 48-333 on an H200. Two designs serve
those M instead ("compute as dense" in natural column order, as Flash-LLM and SparTA do):

* TILE: per K step the (BLOCK_N, 32 WPB) weight tile is decoded in registers in column order
  (`_decode_tile`: each element's bit of its word, its place word_offsets + popcount of the word's lower
  bits, one masked load of its value) and multiplied by the contiguous (BLOCK_M, 32 WPB) x tile in one
  tl.dot: the decode is paid once per BLOCK_M rows, the dot is dense's.
* EXPAND: `_bitmap_expand_kernel` decodes the whole weight the same way into a dense (N, K) buffer of x's
  dtype (a transient allocation, N K element bytes), then cuBLAS (torch.addmm) multiplies: the decode is
  paid once per call whatever M, so it wins where the dense matmul's own time dominates (prefill).

Which design (and tile) serves an M bucket is measured on the device like every configuration here.
"""
import torch
import triton
import triton.language as tl

from ..ops import _checked_once, _checks
from . import autotune
from ._common import DTYPE_NAME, USE_POPC, cdiv, dot_acc, m_bucket, next_pow2, popcount32, tile_ids, upcast_dot
from .launch import launch

OP = "bitmap_mm"
_TABLE = autotune.table(OP)


@triton.jit
def _load_words(bm_ptr, wo_ptr, word_rows, wcol, WORDS, EVEN_K: tl.constexpr):
    """The (rows, words) bitmap words (as uint32) and word_offsets at word_rows (each row's first word, (rows, 1))
    + wcol; words past the row (wcol >= WORDS, only without EVEN_K) are 0 and keep nothing."""
    w_ptrs = word_rows + wcol[None, :]
    if EVEN_K:
        words = tl.load(bm_ptr + w_ptrs)
        cnt = tl.load(wo_ptr + w_ptrs)
    else:
        win = (wcol < WORDS)[None, :]
        words = tl.load(bm_ptr + w_ptrs, mask=win, other=0)
        cnt = tl.load(wo_ptr + w_ptrs, mask=win, other=0)
    return words.to(tl.uint32, bitcast=True), cnt


@triton.jit
def _decode_tile(u, cnt, v_ptr, BLOCK_N: tl.constexpr, WPB: tl.constexpr, USE_POPC: tl.constexpr):
    """The dense (BLOCK_N, 32 WPB) weight tile, in column order, of the (BLOCK_N, WPB) bitmap words u (uint32)
    and their first values' places cnt: element (n, 32 w + j) is kept when bit j of u[n, w] is set, and then is
    values[cnt[n, w] + popcount(u[n, w] & (2^j - 1))]; a pruned one is 0 and reads nothing."""
    j = tl.arange(0, 32).to(tl.uint32)[None, None, :]
    below = (tl.full((1, 1, 32), 1, tl.uint32) << j) - 1  # the bits under bit j
    u3 = tl.broadcast_to(u[:, :, None], (BLOCK_N, WPB, 32))
    kept = ((u3 >> j) & 1) != 0
    pos = cnt[:, :, None] + popcount32(u3 & below, USE_POPC)
    v = tl.load(v_ptr + pos, mask=kept, other=0.0)
    return tl.reshape(v, (BLOCK_N, 32 * WPB))


@triton.jit
def _bitmap_mm_kernel(x_ptr, bm_ptr, wo_ptr, v_ptr, bias_ptr, y_ptr,
                      M, N, K, WORDS, stride_xm, stride_xk, stride_ym,
                      HAS_BIAS: tl.constexpr, DOT: tl.constexpr, BITS: tl.constexpr, TILE: tl.constexpr,
                      IEEE: tl.constexpr, UPCAST: tl.constexpr, USE_POPC: tl.constexpr, EVEN_K: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WPB: tl.constexpr, GROUP_M: tl.constexpr):
    BLOCK_K: tl.constexpr = 32 * WPB
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = tile_ids(pid, num_m, num_n, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rw = tl.arange(0, WPB)
    x_rows = x_ptr + (rm % M).to(tl.int64)[:, None] * stride_xm  # (BLOCK_M, 1)
    word_rows = (rn % N).to(tl.int64)[:, None] * WORDS  # (BLOCK_N, 1)

    if DOT or TILE:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N, WPB), dtype=tl.float32)

    for k0 in range(0, K, BLOCK_K):
        wcol = k0 // 32 + rw  # the tile's words
        u, cnt = _load_words(bm_ptr, wo_ptr, word_rows, wcol, WORDS, EVEN_K)
        xcol = k0 + 32 * rw  # the column of bit 0 of each word
        if TILE:
            # The step's weight tile decoded in column order, then one dot with the contiguous x tile.
            v = _decode_tile(u, cnt, v_ptr, BLOCK_N, WPB, USE_POPC)
            xc = k0 + tl.arange(0, BLOCK_K)
            if EVEN_K:
                xj = tl.load(x_rows + xc[None, :] * stride_xk)
            else:
                xj = tl.load(x_rows + xc[None, :] * stride_xk, mask=(xc < K)[None, :], other=0.0)
            acc = dot_acc(xj, tl.trans(v), acc, IEEE, UPCAST)
        elif BITS:
            # Sparse walk (decode at high sparsity): only as many steps as the fullest word of the
            # tile has set bits; each step takes the lowest set bit of every word, its value (the
            # next one of the word, contiguous) and the x element of its column.
            steps = tl.max(tl.max(popcount32(u, USE_POPC), axis=1), axis=0)
            for _ in range(0, steps):
                live = u != 0
                rest = u & (u - 1)  # u without its lowest set bit
                b = popcount32((u ^ rest) - 1, USE_POPC)  # trailing zeros = the lowest set bit's column
                v = tl.load(v_ptr + cnt, mask=live, other=0.0)
                xc = xcol[None, :] + b
                xj = tl.load(x_rows[:, :, None] + xc[None, :, :] * stride_xk, mask=live[None, :, :],
                             other=0.0)
                acc += xj.to(tl.float32) * v.to(tl.float32)[None, :, :]
                cnt += live.to(tl.int32)
                u = rest
        else:
            # Bit j of every word of the tile at once: the (BLOCK_N, WPB) slice of the weight at columns
            # 32 w + j. `cnt` runs through the values of each word (= word_offsets + popcount of the lower
            # bits), so a kept weight is one masked load and a pruned one costs no memory traffic.
            # The slices are multiplied in this bit-major order: any order of K gives the same dot product.
            for j in tl.static_range(32):
                bit = ((u >> j) & 1).to(tl.int32)
                v = tl.load(v_ptr + cnt, mask=bit != 0, other=0.0)
                cnt += bit
                xc = xcol + j
                if EVEN_K:
                    xj = tl.load(x_rows + xc[None, :] * stride_xk)
                else:
                    xj = tl.load(x_rows + xc[None, :] * stride_xk, mask=(xc < K)[None, :], other=0.0)
                if DOT:
                    acc = dot_acc(xj, tl.trans(v), acc, IEEE, UPCAST)
                else:
                    acc += xj.to(tl.float32)[:, None, :] * v.to(tl.float32)[None, :, :]

    if not (DOT or TILE):
        acc = tl.sum(acc, axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn % N).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bitmap_expand_kernel(bm_ptr, wo_ptr, v_ptr, w_ptr, N, K, WORDS, USE_POPC: tl.constexpr, EVEN_K: tl.constexpr,
                          BLOCK_N: tl.constexpr, WPB: tl.constexpr):
    """The dense (N, K) weight (row-major, values' dtype) of a bitmap: program (i, j) writes rows
    i BLOCK_N.. and columns j 32 WPB.. (`_decode_tile`)."""
    BLOCK_K: tl.constexpr = 32 * WPB
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    wcol = tl.program_id(1) * WPB + tl.arange(0, WPB)
    u, cnt = _load_words(bm_ptr, wo_ptr, (rn % N).to(tl.int64)[:, None] * WORDS, wcol, WORDS, EVEN_K)
    v = _decode_tile(u, cnt, v_ptr, BLOCK_N, WPB, USE_POPC)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    out = w_ptr + rn.to(tl.int64)[:, None] * K + rk[None, :]
    tl.store(out, v, mask=(rn < N)[:, None] & (rk < K)[None, :])


def _cfg(dot, bm, bn, wpb, warps=4, stages=3, group_m=8, bits=False):
    return {"DOT": dot, "BITS": bits, "BLOCK_M": bm, "BLOCK_N": bn, "WPB": wpb, "GROUP_M": group_m,
            "num_warps": warps, "num_stages": stages}


def _tile(bm, bn, wpb=2, warps=4, stages=3, group_m=8):
    """A TILE configuration: the weight tile decoded in column order, one dot per step of 32 WPB columns."""
    return dict(_cfg(False, bm, bn, wpb, warps, stages, group_m), TILE=True)


def _expand(bn=32, wpb=4, warps=4):
    """An EXPAND configuration: the dense weight decoded (programs of BLOCK_N rows x 32 WPB columns), then
    cuBLAS."""
    return {"EXPAND": True, "DOT": False, "BITS": False, "BLOCK_N": bn, "WPB": wpb, "num_warps": warps,
            "num_stages": 1}


def density_bucket(nnz: int, N: int, K: int) -> int:
    """Kept fraction in tenths (0-10): part of the tuning key, since the best decode kernel depends on it."""
    return int(round(10.0 * nnz / max(1, N * K)))


def candidates(bucket: int, K: int, dtype: torch.dtype, density: int = 5):
    """Configurations to try at an M bucket and kept fraction (tenths); the first is the heuristic
    default. WPB = words (of 32 columns) per K step; tl.dot needs WPB >= 16 (its K is WPB). BITS walks
    the set bits (M <= 4): its work falls with sparsity, the dense walk's does not."""
    words = max(1, (K + 31) // 32)

    def wp(w):  # no wider than the row, except that tl.dot needs 16
        return max(1, min(w, next_pow2(words)))

    out = []
    if bucket <= 4:
        for bn, w in ((32, 8), (16, 16), (64, 4), (32, 16)):
            if bucket * bn * wp(w) <= 2048:
                out.append(_cfg(False, bucket, bn, wp(w), warps=4))
        for bn in (32, 64):
            out.append(_cfg(True, 16, bn, 16, warps=4))
        bits = [_cfg(False, bucket, bn, wp(w), warps=4, bits=True) for bn, w in ((32, 8), (64, 4), (16, 16))
                if bucket * bn * wp(w) <= 2048]
        out = bits + out if density <= 1 else out + bits  # the walk wins only above ~85% sparsity
    elif bucket <= 16:
        for bn in (64, 32, 128):
            out.append(_cfg(True, 16, bn, 16, warps=4))
        if bucket == 8:
            out.append(_cfg(False, 8, 16, wp(8), warps=4))
        out += [_tile(16, 64), _tile(16, 128)]
    else:
        # Above M = 16: the TILE design first (module doc), the bit-slice design's former default last (for the
        # measurement to compare with); above M = 128 also EXPAND, first above M = 512, where the dense matmul's
        # own time dwarfs one decode of the weight.
        if bucket <= 32:
            out = [_tile(32, 64), _tile(32, 128), _tile(16, 64)]
        elif bucket <= 64:
            out = [_tile(64, 64), _tile(64, 128, warps=8), _tile(32, 64)]
        else:
            out = [_tile(64, 128, warps=8), _tile(128, 64, warps=8), _tile(64, 64)]
        if bucket >= 256:
            out = [_tile(128, 128, warps=8)] + out
            out.insert(0 if bucket >= 1024 else len(out), _expand())
        out.append(_cfg(True, min(bucket, 64), 64 if bucket <= 128 else 128, 16,
                        warps=4 if bucket <= 128 and min(bucket, 64) * 64 <= 4096 else 8))
    if dtype == torch.float32:
        # float32 dots run as FMA loops ("ieee") and stage each of the 32 bit slices in shared memory:
        # anything wider than 16 x 32 needs more than the 227 KB an H100 block may have (sm_90 compile); TILE's
        # float32 dot spills at every tile from 16 x 64 (sm_80, sm_90a): float32 takes EXPAND (cuBLAS) above M = 16
        out = [c for c in out if not (c["DOT"] and c["BLOCK_M"] * c["BLOCK_N"] > 16 * 32) and not c.get("TILE")]
        if bucket > 16 and not any(c.get("EXPAND") for c in out):
            out.insert(0, _expand())
        if not any(c["DOT"] for c in out):
            out.append(_cfg(True, 16, 32, 16, warps=4))
    return out


def _launch(x, bitmap, word_offsets, values, bias, y, M, N, K, cfg):
    if cfg.get("EXPAND"):
        bn, wpb = cfg["BLOCK_N"], cfg["WPB"]
        w = torch.empty((N, K), dtype=values.dtype, device=values.device)
        launch(_bitmap_expand_kernel, (cdiv(N, bn), cdiv(K, 32 * wpb)), bitmap, word_offsets, values, w, N, K,
               bitmap.shape[1], USE_POPC=USE_POPC, EVEN_K=K % (32 * wpb) == 0, BLOCK_N=bn, WPB=wpb,
               num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        if bias is None:
            torch.mm(x, w.t(), out=y)
        else:
            torch.addmm(bias, x, w.t(), out=y)
        return
    bm, bn, wpb = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["WPB"]
    grid = (cdiv(M, bm) * cdiv(N, bn),)
    launch(
        _bitmap_mm_kernel, grid,
        x, bitmap, word_offsets, values, bias if bias is not None else y, y,
        M, N, K, bitmap.shape[1], x.stride(0), x.stride(1), y.stride(0),
        HAS_BIAS=bias is not None, DOT=cfg["DOT"], IEEE=x.dtype == torch.float32, UPCAST=upcast_dot(x.dtype),
        BITS=cfg.get("BITS", False), TILE=cfg.get("TILE", False), USE_POPC=USE_POPC, EVEN_K=K % (32 * wpb) == 0,
        BLOCK_M=bm, BLOCK_N=bn, WPB=wpb, GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def bitmap_mm(x, bitmap, word_offsets, values, bias=None, *, config=None):
    """The Triton bitmap_mm: y (M, N) in x's dtype. `config` overrides the tuned configuration."""
    _checks.check_bitmap_mm(x, bitmap, word_offsets, values, bias)
    _checked_once.run("sparsekit.bitmap_mm", (bitmap, word_offsets), (*bitmap.shape, x.shape[1], values.numel()),
                      lambda: _checks.check_bitmap_mm_data(x, bitmap, word_offsets, values, bias))
    M, K = x.shape
    N = bitmap.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if values.numel() == 0 or K == 0:  # nothing kept: y = bias (or 0), nothing to launch
        if bias is None:
            return y.zero_()
        return y.copy_(bias.expand(M, N))
    if not bitmap.is_contiguous():
        bitmap = bitmap.contiguous()
    if not word_offsets.is_contiguous():
        word_offsets = word_offsets.contiguous()
    if not values.is_contiguous():
        values = values.contiguous()
    if config is None:
        dev = x.device
        d = density_bucket(values.numel(), N, K)
        key = (-1 if dev.index is None else dev.index, N, K, d, m_bucket(M), DTYPE_NAME[x.dtype])
        config = _TABLE.get(key)
        if config is None:
            config = autotune.choose(OP, _TABLE, key, dev, candidates(key[4], K, x.dtype, d),
                                     lambda c: _launch(x, bitmap, word_offsets, values, bias, y, M, N, K, c))
    _launch(x, bitmap, word_offsets, values, bias, y, M, N, K, config)
    return y
