"""int8 kernels: per-token activation quantization, W8A8 GEMM (int32 accumulation, fused epilogue)
and weight-only W8A16.

quantize_per_token: one program per row, two passes over the row in BLOCK_K chunks (the second
    from L2): max |x| (or min/max), then q = round_half_even(x / scale) with IEEE division
    (tl.math.div_rn) and an exact float round-half-even, so the bytes equal the reference's.
int8_mm: int8 x int8 -> int32 tl.dot on the tensor cores, both operands K-major (x_q (M, K) and
    w_q (N, K) row-major). With a zero point the kernel also sums w_q over K in the same loop and
    subtracts x_zero[m] * sum_k w_q[n, k]. The epilogue converts to float32, multiplies by x_scale[m]
    and w_scale[n], adds the bias and stores the output dtype: no int32 tensor, no second pass.
int8_weight_only_mm: int8 weights loaded (1 byte each), converted to x's dtype in registers
    (exact: |q| <= 127), tl.dot in float32, the per-channel scale applied once in the epilogue
    (y = (x @ q.T) * scale, the scale factors out of the K sum). For M <= 4 an elementwise path
    (no tl.dot, no padding of M to 16) streams the weights like a GEMV with small BLOCK_N, so even
    a 4096-row weight is spread over 512 programs. Above M = 128 also EXPAND (first above M = 512, and for
    float32 x above M = 16, whose Triton dot is an FMA loop): `_w8_expand_kernel` writes the dequantized weight
    (q * scale, rounded once to x's dtype, as a dense layer's weight is) into a transient (N, K) buffer, then
    cuBLAS multiplies: the dequantization once per call whatever M, and cuBLAS's GEMM, where Triton's
    mixed-input dot waits for each wgmma (the SASS of sm_90a) and measured 0.45-0.87x dense at M = 48-333.
    Above M = 16 (float16 / bfloat16) also SWAP tiles: y^T = w @ x^T with the converted weight as the dot's
    register operand, which on sm_90a keeps a wgmma in flight across K steps (not yet run on a GPU).
"""
import torch
import triton
import triton.language as tl

from ..ops import _checks
from . import autotune
from ._common import DTYPE_NAME, cdiv, dot_acc, m_bucket, next_pow2, round_half_even, tile_ids, upcast_dot
from .launch import launch

_QTABLE = autotune.table("quantize_per_token")
_I8TABLE = autotune.table("int8_mm")
_WOTABLE = autotune.table("int8_weight_only_mm")


# ------------------------------------------------------------------------------ quantize_per_token
@triton.jit
def _load_finite(x_row, k, K, stride_xk):
    """x[k] as float32 (0 past K) and whether each is finite."""
    v = tl.load(x_row + k * stride_xk, mask=k < K, other=0.0).to(tl.float32)
    return v, (v == v) & (tl.abs(v) < float("inf"))


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, z_ptr, K, stride_xm, stride_xk, stride_qm,
                     SYMMETRIC: tl.constexpr, BLOCK_K: tl.constexpr):
    # As the reference: a row holding NaN / +-Inf gets scale NaN, q 0 and zero point 0 (its values are
    # taken as 0 while the statistics are gathered, so nothing else sees them).
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_xm
    q_row = q_ptr + row.to(tl.int64) * stride_qm
    rk = tl.arange(0, BLOCK_K)
    bad = tl.zeros([BLOCK_K], dtype=tl.int32)
    if SYMMETRIC:
        amax = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            v, fin = _load_finite(x_row, k0 + rk, K, stride_xk)
            bad = tl.maximum(bad, tl.where(fin, 0, 1))
            amax = tl.maximum(amax, tl.abs(tl.where(fin, v, 0.0)))
        m = tl.max(amax, axis=0)
        scale = tl.where(m > 0, tl.math.div_rn(m, tl.full([], 127.0, tl.float32)), 1.0)
        zp = tl.full([], 0.0, tl.float32)
        qmin = -127.0
    else:
        vmin = tl.zeros([BLOCK_K], dtype=tl.float32)
        vmax = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            v, fin = _load_finite(x_row, k0 + rk, K, stride_xk)
            bad = tl.maximum(bad, tl.where(fin, 0, 1))
            v = tl.where(fin, v, 0.0)
            vmin = tl.minimum(vmin, v)
            vmax = tl.maximum(vmax, v)
        lo = tl.min(vmin, axis=0)  # <= 0: the lanes start at 0
        hi = tl.max(vmax, axis=0)  # >= 0
        c255 = tl.full([], 255.0, tl.float32)
        scale = tl.math.div_rn(hi - lo, c255)
        # hi - lo past float32's max: the reference's hi / 255 - lo / 255
        scale = tl.where(tl.abs(scale) < float("inf"), scale, tl.math.div_rn(hi, c255) - tl.math.div_rn(lo, c255))
        scale = tl.where(scale > 0, scale, 1.0)
        zp = round_half_even(-128.0 - tl.math.div_rn(lo, scale))
        zp = tl.minimum(tl.maximum(zp, -128.0), 127.0)
        qmin = -128.0
    finite = tl.max(bad, axis=0) == 0
    zp = tl.where(finite, zp, 0.0)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        v, fin = _load_finite(x_row, k, K, stride_xk)
        t = round_half_even(tl.math.div_rn(tl.where(fin, v, 0.0), tl.zeros_like(v) + scale))
        if not SYMMETRIC:
            t = t + zp
        t = tl.minimum(tl.maximum(t, qmin), 127.0)
        t = tl.where(finite, t, 0.0)
        tl.store(q_row + k, t.to(tl.int8), mask=k < K)
    tl.store(s_ptr + row, tl.where(finite, scale, float("nan")))
    tl.store(z_ptr + row, zp.to(tl.int32))


def quantize_per_token(x, symmetric=True, *, config=None):
    """The Triton quantize_per_token: (q int8 (M, K), scale float32 (M,), zero_point int32 (M,))."""
    _checks.check_quantize_per_token(x)
    M, K = x.shape
    q = torch.empty((M, K), dtype=torch.int8, device=x.device)
    scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    zp = torch.empty((M,), dtype=torch.int32, device=x.device)
    if M == 0:
        return q, scale, zp
    if K == 0:  # amax = 0: scale 1; asymmetric lo = hi = 0 gives zp = round(-128 - 0) = -128
        scale.fill_(1.0)
        zp.fill_(0 if symmetric else -128)
        return q, scale, zp
    if config is None:
        dev = x.device
        key = (-1 if dev.index is None else dev.index, K, DTYPE_NAME[x.dtype])
        config = _QTABLE.get(key)
        if config is None:
            config = autotune.choose("quantize_per_token", _QTABLE, key, dev, quantize_candidates(K),
                                     lambda c: _launch_quantize(x, q, scale, zp, symmetric, c))
    _launch_quantize(x, q, scale, zp, symmetric, config)
    return q, scale, zp


def quantize_candidates(K: int):
    bk = max(16, min(4096, next_pow2(K)))
    out = [{"BLOCK_K": bk, "num_warps": 4 if bk <= 2048 else 8, "num_stages": 1}]
    if bk >= 2048:
        out.append({"BLOCK_K": bk // 2, "num_warps": 4, "num_stages": 1})
        out.append({"BLOCK_K": bk, "num_warps": 16, "num_stages": 1})
    return out


def _launch_quantize(x, q, scale, zp, symmetric, cfg):
    launch(
        _quantize_kernel, (x.shape[0],),
        x, q, scale, zp, x.shape[1], x.stride(0), x.stride(1), q.stride(0),
        SYMMETRIC=bool(symmetric), BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


# ------------------------------------------------------------------------------ W8A8
@triton.jit
def _int8_mm_kernel(a_ptr, b_ptr, xs_ptr, xz_ptr, ws_ptr, bias_ptr, y_ptr,
                    M, N, K, stride_am, stride_ak, stride_bn, stride_bk, stride_ym,
                    HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, RAW: tl.constexpr, EVEN_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = tile_ids(pid, num_m, num_n, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    ram = rm % M
    rbn = rn % N
    a_ptrs = a_ptr + ram.to(tl.int64)[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rbn.to(tl.int64)[:, None] * stride_bn + rk[None, :] * stride_bk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    if HAS_ZERO:
        wsum = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            kin = (k0 + rk < K)[None, :]
            a = tl.load(a_ptrs, mask=kin, other=0)
            b = tl.load(b_ptrs, mask=kin, other=0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        if HAS_ZERO:
            wsum += tl.sum(b.to(tl.int32), axis=1)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if HAS_ZERO:
        acc -= tl.load(xz_ptr + ram)[:, None] * wsum[None, :]
    y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    if RAW:
        tl.store(y_ptrs, acc, mask=mask)
    else:
        out = acc.to(tl.float32) * tl.load(xs_ptr + ram)[:, None]
        out = out * tl.load(ws_ptr + rbn)[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + rbn).to(tl.float32)[None, :]
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)


def _i8cfg(bm, bn, bk, warps, stages, group_m=8):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "num_warps": warps,
            "num_stages": stages}


def int8_candidates(bucket: int, K: int):
    """W8A8 configurations at an M bucket; the first is the heuristic default. BLOCK_K >= 32 (int8 MMA)."""
    kmax = max(32, min(256, next_pow2(K)))

    def k(v):
        return min(v, kmax)

    if bucket <= 16:
        # (and 16x128x128, 4 stages, until bench/gpu_static.py: an 8-byte stack on sm_80 with an int32 output)
        rows = [(16, 64, 256, 4, 3), (16, 32, 256, 4, 4), (16, 64, 128, 4, 4)]
    elif bucket <= 64:
        rows = [(bucket, 64, 128, 4, 4), (bucket, 128, 128, 4, 4), (bucket, 32, 256, 4, 3)]
    elif bucket <= 256:
        rows = [(64, 128, 128, 4, 4), (128, 128, 128, 8, 4), (64, 64, 128, 4, 4), (128, 64, 128, 4, 4)]
    else:
        # 128x256 with BLOCK_K = 128 (the default until bench/gpu_static.py) spills on sm_80 with an int32 or a
        # zero-point float32 output (72- / 16-byte stack); BLOCK_K = 64: 250-254 registers, no stack
        # (and 256x128x128 with 8 warps: 8- to 80-byte stacks on sm_80; 128x128x64 with 4 warps: 24 bytes on sm_90a
        # with a float32 output)
        rows = [(128, 256, 64, 8, 3), (128, 128, 128, 8, 4), (64, 128, 128, 4, 4)]
    out, seen = [], set()
    for bm, bn, bk, w, s in rows:
        c = _i8cfg(bm, bn, k(bk), w, s)
        t = tuple(sorted(c.items()))
        if t not in seen:
            seen.add(t)
            out.append(c)
    return out


def _launch_int8(x_q, x_scale, x_zero, w_q, w_scale, bias, y, raw, cfg):
    M, K = x_q.shape
    N = w_q.shape[0]
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    grid = (cdiv(M, bm) * cdiv(N, bn),)
    launch(
        _int8_mm_kernel, grid,
        x_q, w_q, x_scale if x_scale is not None else y, x_zero if x_zero is not None else y,
        w_scale if w_scale is not None else y, bias if bias is not None else y, y,
        M, N, K, x_q.stride(0), x_q.stride(1), w_q.stride(0), w_q.stride(1), y.stride(0),
        HAS_ZERO=x_zero is not None, HAS_BIAS=bias is not None, RAW=raw, EVEN_K=K % bk == 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def _int8_config(M, N, K, device, out_name, launch):
    key = (-1 if device.index is None else device.index, N, K, m_bucket(M), out_name)
    cfg = _I8TABLE.get(key)
    if cfg is None:
        cfg = autotune.choose("int8_mm", _I8TABLE, key, device, int8_candidates(key[3], K), launch)
    return cfg


def _contig1d(t):
    return t if t is None or t.is_contiguous() else t.contiguous()


def int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype, *, config=None):
    """The Triton int8_mm (W8A8): y (M, N) in out_dtype, exact int32 accumulation, fused epilogue."""
    _checks.check_int8_mm(x_q, x_scale, x_zero, w_q, w_scale, bias, out_dtype)
    M, K = x_q.shape
    N = w_q.shape[0]
    y = torch.empty((M, N), dtype=out_dtype, device=x_q.device)
    if M == 0 or N == 0:
        return y
    if K == 0:  # acc = 0
        if bias is None:
            return y.zero_()
        return y.copy_(bias.expand(M, N))
    x_scale, x_zero, w_scale, bias = _contig1d(x_scale), _contig1d(x_zero), _contig1d(w_scale), _contig1d(bias)
    if config is None:
        config = _int8_config(M, N, K, x_q.device, DTYPE_NAME[out_dtype],
                              lambda c: _launch_int8(x_q, x_scale, x_zero, w_q, w_scale, bias, y, False, c))
    _launch_int8(x_q, x_scale, x_zero, w_q, w_scale, bias, y, False, config)
    return y


def int8_mm_i32(x_q, w_q, x_zero=None, *, config=None):
    """The exact int32 accumulator of int8_mm before scaling: (x_q - x_zero[:, None]) @ w_q.T, with the
    same kernel (RAW epilogue). Equal to `int8_gemm_i32(x_q, w_q)` when x_zero is None."""
    _checks.check_int8_gemm_i32(x_q, w_q)
    M, K = x_q.shape
    N = w_q.shape[0]
    y = torch.empty((M, N), dtype=torch.int32, device=x_q.device)
    if M == 0 or N == 0:
        return y
    if K == 0:
        return y.zero_()
    x_zero = _contig1d(x_zero)
    if config is None:
        config = _int8_config(M, N, K, x_q.device, "i32",
                              lambda c: _launch_int8(x_q, None, x_zero, w_q, None, None, y, True, c))
    _launch_int8(x_q, None, x_zero, w_q, None, None, y, True, config)
    return y


# ------------------------------------------------------------------------------ W8A16
@triton.jit
def _w8a16_kernel(x_ptr, w_ptr, ws_ptr, bias_ptr, y_ptr,
                  M, N, K, stride_xm, stride_xk, stride_wn, stride_wk, stride_ym,
                  HAS_BIAS: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                  EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, SWAP: tl.constexpr = False):
    # SWAP (with DOT): y^T = w @ x^T, the converted weight the dot's first operand (on sm_90a wgmma takes it from
    # registers and x^T from shared memory, so the next tile's conversion can overlap a dot in flight; unswapped,
    # the converted weight is stored to shared memory and each K step waits for its dots), the sums (BLOCK_N,
    # BLOCK_M)
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = tile_ids(pid, num_m, num_n, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    ram = rm % M
    rbn = rn % N
    x_ptrs = x_ptr + ram.to(tl.int64)[:, None] * stride_xm + rk[None, :] * stride_xk
    w_ptrs = w_ptr + rbn.to(tl.int64)[:, None] * stride_wn + rk[None, :] * stride_wk
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    elif DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            xk = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            kin = (k0 + rk < K)[None, :]
            xk = tl.load(x_ptrs, mask=kin, other=0.0)
            w = tl.load(w_ptrs, mask=kin, other=0)
        if DOT:
            if UPCAST:  # the interpreter converts int8 -> bfloat16 wrongly; go through float32
                wd = w.to(tl.float32)
            else:
                wd = w.to(x_ptr.dtype.element_ty)  # exact: |q| <= 127
            if SWAP:
                acc = dot_acc(wd, tl.trans(xk), acc, IEEE, UPCAST)
            else:
                acc = dot_acc(xk, tl.trans(wd), acc, IEEE, UPCAST)
        else:
            acc += xk.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if SWAP:
        acc = acc * tl.load(ws_ptr + rbn)[:, None]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rbn).to(tl.float32)[:, None]
        y_ptrs = y_ptr + rm.to(tl.int64)[None, :] * stride_ym + rn[:, None]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rm < M)[None, :] & (rn < N)[:, None])
    else:
        if not DOT:
            acc = tl.sum(acc, axis=2)
        acc = acc * tl.load(ws_ptr + rbn)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rbn).to(tl.float32)[None, :]
        y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])


@triton.jit
def _w8_expand_kernel(w_ptr, ws_ptr, out_ptr, N, K, stride_wn, stride_wk, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """out (N, K) row-major, out's dtype: w_q[n, k] * w_scale[n] in float32, rounded once."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    inside = (rn < N)[:, None] & (rk < K)[None, :]
    w = tl.load(w_ptr + rn.to(tl.int64)[:, None] * stride_wn + rk[None, :] * stride_wk, mask=inside, other=0)
    s = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
    tl.store(out_ptr + rn.to(tl.int64)[:, None] * K + rk[None, :],
             (w.to(tl.float32) * s[:, None]).to(out_ptr.dtype.element_ty), mask=inside)


def _wo_expand(bn=32, bk=128, warps=4):
    """An EXPAND configuration of int8_weight_only_mm: the dequantized weight written by programs of BLOCK_N rows x
    BLOCK_K columns, then cuBLAS."""
    return {"EXPAND": True, "DOT": False, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": 1}


def _wocfg(dot, bm, bn, bk, warps, stages, group_m=8):
    return {"DOT": dot, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "num_warps": warps,
            "num_stages": stages}


def weight_only_candidates(bucket: int, K: int, dtype: torch.dtype):
    """W8A16 configurations at an M bucket; the first is the heuristic default."""
    kmax = max(16, min(512, next_pow2(K)))

    def k(v):
        return min(v, kmax)

    if bucket == 1:
        rows = [(False, 1, 8, 256, 4, 3), (False, 1, 4, 512, 4, 3), (False, 1, 16, 256, 4, 3),
                (False, 1, 8, 512, 8, 3), (True, 16, 16, 256, 4, 4)]
    elif bucket <= 4:
        rows = [(False, bucket, 8, 128, 4, 3), (False, bucket, 4, 256, 4, 3), (True, 16, 16, 256, 4, 4),
                (True, 16, 32, 128, 4, 4)]
    elif bucket <= 16:
        rows = [(True, 16, 32, 128, 4, 4), (True, 16, 16, 256, 4, 4), (True, 16, 64, 128, 4, 3),
                (True, 16, 32, 256, 4, 3)]
        if bucket == 8:
            rows.append((False, 8, 4, 128, 4, 3))
    elif bucket <= 64:
        rows = [(True, bucket, 64, 128, 4, 4), (True, bucket, 32, 128, 4, 4), (True, bucket, 128, 64, 4, 4)]
    elif bucket <= 256:
        rows = [(True, 64, 128, 64, 4, 4), (True, 128, 128, 64, 8, 3), (True, 64, 64, 128, 4, 4)]
    else:
        # (and 128x128x64 with 4 warps, 4 stages, until bench/gpu_static.py: an 8-byte stack on sm_80 in bf16)
        rows = [(True, 128, 128, 64, 8, 3), (True, 128, 256, 64, 8, 3), (True, 64, 128, 64, 4, 4)]
    out, seen = [], set()
    for dot, bm, bn, bk, w, s in rows:
        bk = k(bk)
        if dtype == torch.float32 and dot:
            # float32 dots run as FMA loops ("ieee"): larger tiles spill (sm_90 compile)
            bm, bn, bk = min(bm, 32), min(bn, 32), min(bk, 64)
            if bm * bn * bk >= 32 * 32 * 64:
                # with 4 warps this tile needs 255 registers and a 160-byte stack (bench/gpu_static.py);
                # 8 warps: 174-178 registers, no stack, on sm_80 and sm_90a
                w = max(w, 8)
        if not dot and bm * bn * bk > 8192:
            bk = max(16, 8192 // (bm * bn))
        c = _wocfg(dot, bm, bn, bk, w, s)
        t = tuple(sorted(c.items()))
        if t not in seen:
            seen.add(t)
            out.append(c)
    out = out or [_wocfg(True, 16, 32, k(64), 4, 3)]
    if bucket > 16 and dtype != torch.float32:
        # SWAP (the kernel's comment): tiles whose sm_90a SASS (triton 3.8) keeps one wgmma in flight across K steps
        # (WARPGROUP.DEPBAR.LE gsb0, 0x1 in the loop); the autotuner times them against the rest on the device
        swapped = [(bucket, 64, 128, 4, 3), (bucket, 128, 64, 8, 3)] if bucket <= 64 else \
            [(128, 64, 64, 8, 3), (128, 128, 64, 8, 3)] if bucket <= 256 else [(128, 128, 64, 8, 3), (128, 64, 64, 8, 4)]
        for bm, bn, bk, w, st in swapped:
            out.append(dict(_wocfg(True, bm, bn, k(bk), w, st), SWAP=True))
    if bucket > 128 or (dtype == torch.float32 and bucket > 16):  # EXPAND (module doc)
        out.insert(0 if bucket > 512 or dtype == torch.float32 else len(out), _wo_expand())
    return out


def _launch_wo(x, w_q, w_scale, bias, y, cfg):
    M, K = x.shape
    N = w_q.shape[0]
    if cfg.get("EXPAND"):
        bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
        w = torch.empty((N, K), dtype=x.dtype, device=x.device)
        launch(_w8_expand_kernel, (cdiv(N, bn), cdiv(K, bk)), w_q, w_scale, w, N, K, w_q.stride(0), w_q.stride(1),
               BLOCK_N=bn, BLOCK_K=bk, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        if bias is None:
            torch.mm(x, w.t(), out=y)
        else:
            torch.addmm(bias, x, w.t(), out=y)
        return
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    grid = (cdiv(M, bm) * cdiv(N, bn),)
    launch(
        _w8a16_kernel, grid,
        x, w_q, w_scale, bias if bias is not None else y, y,
        M, N, K, x.stride(0), x.stride(1), w_q.stride(0), w_q.stride(1), y.stride(0),
        HAS_BIAS=bias is not None, DOT=cfg["DOT"], IEEE=x.dtype == torch.float32, UPCAST=upcast_dot(x.dtype),
        EVEN_K=K % bk == 0, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_M"], SWAP=cfg.get("SWAP", False),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def int8_weight_only_mm(x, w_q, w_scale, bias=None, *, config=None):
    """The Triton int8_weight_only_mm (W8A16): y (M, N) in x's dtype."""
    _checks.check_int8_weight_only_mm(x, w_q, w_scale, bias)
    M, K = x.shape
    N = w_q.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if K == 0:
        if bias is None:
            return y.zero_()
        return y.copy_(bias.expand(M, N))
    w_scale, bias = _contig1d(w_scale), _contig1d(bias)
    if config is None:
        dev = x.device
        key = (-1 if dev.index is None else dev.index, N, K, m_bucket(M), DTYPE_NAME[x.dtype])
        config = _WOTABLE.get(key)
        if config is None:
            config = autotune.choose("int8_weight_only_mm", _WOTABLE, key, dev,
                                     weight_only_candidates(key[3], K, x.dtype),
                                     lambda c: _launch_wo(x, w_q, w_scale, bias, y, c))
    _launch_wo(x, w_q, w_scale, bias, y, config)
    return y
