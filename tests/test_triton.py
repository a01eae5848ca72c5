"""Triton kernels (sparsekit/triton) against the references.

Three groups:

* interpreter tests: run in-process only when TRITON_INTERPRET=1 is set (CPU tensors, small
  shapes). `test_interpreter_suite` (always collected) re-runs this file in a subprocess with
  TRITON_INTERPRET=1, so a plain `pytest tests` covers them on a machine without a GPU.
* GPU tests: larger shapes, M sweeps, dispatch of the ops to Triton on CUDA tensors, opcheck,
  torch.compile, CUDA graphs, the on-disk autotune cache; skipped without a CUDA device.
* autotune cache logic: pure Python, always.

Nothing is set globally: the environment variable is set only for the subprocess.
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparsekit.formats import BitmapWeight, BSRWeight
from sparsekit.ops import reference

from helpers import assert_close_to_ref

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
REPO = Path(__file__).resolve().parent.parent

interp = pytest.mark.skipif(not (INTERPRET and HAS_TRITON),
                            reason="runs under TRITON_INTERPRET=1 (in the subprocess of test_interpreter_suite)")
gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON) or INTERPRET, reason="needs a CUDA device and triton")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# the interpreter's float32 -> bfloat16 cast truncates (the GPU rounds to nearest): one more bf16 ulp
OUT_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


# ------------------------------------------------------------------------------------- helpers
def _configs(cands, limit=2):
    """The default configuration and one of the other kind (dot / elementwise) or the next one."""
    out = [cands[0]]
    other = [c for c in cands[1:] if c.get("DOT") != cands[0].get("DOT")]
    rest = other or cands[1:]
    out += rest[:limit - 1]
    return out


def _bucket(M):
    from sparsekit.triton._common import m_bucket

    return m_bucket(M)


def _random_bsr(N, K, R, C, density, dtype, device):
    w = torch.randn(N, K).to(dtype)
    bmask = torch.rand(N // R, 1, K // C, 1) < density
    if N // R > 1:
        bmask[1] = False  # an empty block row
    inner = torch.rand(N, K) < 0.8  # pruned positions inside kept blocks
    mask = bmask.expand(N // R, R, K // C, C).reshape(N, K) & inner
    W = BSRWeight.from_dense(w, mask, (R, C))
    W = BSRWeight(W.crow_indices.to(device), W.col_indices.to(device), W.values.to(device), (N, K))
    return W, (w * mask)


def _random_bitmap(N, K, density, dtype, device, empty_rows=(2,)):
    w = torch.randn(N, K).to(dtype)
    mask = torch.rand(N, K) < density
    for r in empty_rows:
        if r < N:
            mask[r] = False
    W = BitmapWeight.from_dense(w, mask)
    W = BitmapWeight(W.bitmap.to(device), W.word_offsets.to(device), W.values.to(device), (N, K))
    return W, (w * mask)


def _check_out(got, ref64, x, wm, dtype):
    assert got.dtype == dtype and got.shape == ref64.shape
    assert_close_to_ref(got.float().cpu(), ref64.cpu(), x.float().cpu(), wm.float().cpu(), dtype)


def _bsr_case(M, N, K, R, C, dtype, device, config=None, bias=True, density=0.5, x=None):
    from sparsekit.triton import bsr

    W, wm = _random_bsr(N, K, R, C, density, dtype, device)
    x = torch.randn(M, K).to(dtype).to(device) if x is None else x
    b = torch.randn(N).to(dtype).to(device) if bias else None
    y = bsr.bsr_mm(x, W.crow_indices, W.col_indices, W.values, N, b, config=config)
    ref = reference.bsr_mm(x.double(), W.crow_indices, W.col_indices, W.values.double(), N,
                           None if b is None else b.double())
    _check_out(y, ref, x, wm, dtype)
    return y


def _bitmap_case(M, N, K, density, dtype, device, config=None, bias=True, x=None):
    from sparsekit.triton import bitmap

    W, wm = _random_bitmap(N, K, density, dtype, device)
    x = torch.randn(M, K).to(dtype).to(device) if x is None else x
    b = torch.randn(N).to(dtype).to(device) if bias else None
    y = bitmap.bitmap_mm(x, W.bitmap, W.word_offsets, W.values, b, config=config)
    ref = reference.bitmap_mm(x.double(), W.bitmap, W.word_offsets, W.values.double(),
                              None if b is None else b.double())
    _check_out(y, ref, x, wm, dtype)
    return y


def _quant_inputs(M, K, dtype, device):
    x = (torch.randn(M, K) * 3).to(dtype)
    if M > 1 and K >= 7:
        # exact ties at scale 1: symmetric amax = 127, asymmetric lo = -100, hi = 155
        x[0, :7] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 126.5])
        x[0, 7:] = x[0, 7:].clamp(-127, 127)
        x[1] = 0.0  # an all-zero row: scale 1
    return x.to(device)


def _check_quant(x, symmetric):
    from sparsekit.triton import int8

    q, s, z = int8.quantize_per_token(x, symmetric)
    rq, rs, rz = reference.quantize_per_token(x.cpu(), symmetric)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and z.dtype == torch.int32
    assert torch.equal(s.cpu().nan_to_num(-1.0), rs.nan_to_num(-1.0)), "scales differ"  # NaN: a non-finite row
    assert torch.equal(z.cpu(), rz), "zero points differ"
    assert torch.equal(q.cpu(), rq), f"{int((q.cpu() != rq).sum())} quantized values differ"


def _int8_case(M, N, K, device, zero, out_dtype, bias=True, config=None):
    from sparsekit.triton import int8

    x_q = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=device)
    w_q = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
    x_zero = torch.randint(-128, 128, (M,), dtype=torch.int32, device=device) if zero else None
    x_scale = ((torch.rand(M) + 0.5) / 127).to(device)
    w_scale = ((torch.rand(N) + 0.5) / 127 / max(K, 1) ** 0.5).to(device)
    b = torch.randn(N).to(out_dtype).to(device) if bias else None
    # 1. the int32 accumulator, bit for bit against an exact integer reference
    acc = int8.int8_mm_i32(x_q, w_q, x_zero, config=config)
    exact = x_q.cpu().long() @ w_q.cpu().long().T
    if zero:
        exact = exact - x_zero.cpu().long()[:, None] * w_q.cpu().long().sum(1)[None, :]
    assert acc.dtype == torch.int32 and torch.equal(acc.cpu().long(), exact)
    # 2. the fused epilogue against the reference (same float32 operations, up to FMA contraction)
    y = int8.int8_mm(x_q, x_scale, x_zero, w_q, w_scale, b, out_dtype, config=config)
    ref = reference.int8_mm(x_q.cpu(), x_scale.cpu(), None if x_zero is None else x_zero.cpu(), w_q.cpu(),
                            w_scale.cpu(), None if b is None else b.cpu(), torch.float32).double()
    assert y.dtype == out_dtype and y.shape == (M, N)
    torch.testing.assert_close(y.cpu().double(), ref, rtol=OUT_RTOL[out_dtype], atol=1e-5)


def _wo_case(M, N, K, dtype, device, bias=True, config=None, x=None):
    from sparsekit.triton import int8

    w_q = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
    w_scale = ((torch.rand(N) + 0.5) / 127).to(device)
    x = torch.randn(M, K).to(dtype).to(device) if x is None else x
    b = torch.randn(N).to(dtype).to(device) if bias else None
    y = int8.int8_weight_only_mm(x, w_q, w_scale, b, config=config)
    ref = reference.int8_weight_only_mm(x.double(), w_q, w_scale.double(), None if b is None else b.double())
    _check_out(y, ref, x, w_q.double() * w_scale.double()[:, None], dtype)
    return y


# ------------------------------------------------------------------------------ the subprocess
@pytest.mark.skipif(INTERPRET or not HAS_TRITON, reason="this is the wrapper; needs triton")
def test_interpreter_suite():
    """Runs this file's interpreter tests in a subprocess with TRITON_INTERPRET=1 on CPU tensors."""
    env = dict(os.environ, TRITON_INTERPRET="1", SPARSEKIT_TRITON_AUTOTUNE="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "interp_",
           str(Path(__file__).resolve())]
    r = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    assert " passed" in out and " failed" not in out, out[-4000:]


# ----------------------------------------------------------------------------- interpreter: BSR
BSR_SHAPES = [  # N, K, R, C
    (48, 80, 16, 16),
    (64, 96, 32, 32),
    (64, 128, 64, 64),
    (12, 24, 4, 8),  # blocks smaller than a tl.dot tile: rows and columns masked
    (96, 64, 48, 16),  # R not a power of two
]


@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 3, 17, 33])
@pytest.mark.parametrize("shape", BSR_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_interp_bsr(shape, M, dtype):
    from sparsekit.triton import bsr

    N, K, R, C = shape
    for i, cfg in enumerate(_configs(bsr.candidates(R, C, _bucket(M), dtype))):
        _bsr_case(M, N, K, R, C, dtype, "cpu", config=cfg, bias=i == 0)


@interp
def test_interp_bsr_large_m_default_config_and_strides():
    _bsr_case(333, 32, 64, 16, 32, torch.float16, "cpu")
    base = torch.randn(96, 9).to(torch.bfloat16)
    _bsr_case(9, 64, 96, 32, 32, torch.bfloat16, "cpu", x=base.t())  # column-major x
    _bsr_case(3, 64, 96, 32, 32, torch.float32, "cpu", x=torch.randn(1, 96).expand(3, 96))  # stride 0
    _bsr_case(5, 64, 96, 32, 32, torch.float16, "cpu", density=1.0)
    y = _bsr_case(5, 64, 96, 32, 32, torch.float16, "cpu", density=0.0, bias=False)
    assert torch.count_nonzero(y) == 0


# -------------------------------------------------------------------------- interpreter: bitmap
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 3, 17, 33])
@pytest.mark.parametrize("N,K,density", [(37, 70, 0.5), (64, 128, 0.1), (5, 31, 0.3), (20, 96, 0.9)])
def test_interp_bitmap(N, K, density, M, dtype):
    from sparsekit.triton import bitmap

    cands = bitmap.candidates(_bucket(M), K, dtype, round(10 * density))
    bits = [c for c in cands if c["BITS"]][:1]  # the sparse walk (M <= 4)
    for i, cfg in enumerate(_configs([c for c in cands if not c["BITS"]]) + bits):
        _bitmap_case(M, N, K, density, dtype, "cpu", config=cfg, bias=i == 0)


@interp
def test_interp_bitmap_large_m_extremes_and_strides():
    _bitmap_case(333, 24, 70, 0.3, torch.float16, "cpu")
    _bitmap_case(4, 16, 64, 1.0, torch.bfloat16, "cpu")
    y = _bitmap_case(4, 16, 64, 0.0, torch.float32, "cpu", bias=False)
    assert torch.count_nonzero(y) == 0
    _bitmap_case(6, 16, 40, 0.5, torch.float16, "cpu", x=torch.randn(80, 6).to(torch.float16)[::2].t())
    # every bit of a word, the sign bit included
    w = torch.randn(3, 64)
    mask = torch.ones(3, 64, dtype=torch.bool)
    mask[1, ::2] = False
    W = BitmapWeight.from_dense(w, mask)
    from sparsekit.triton import bitmap

    x = torch.randn(2, 64)
    y = bitmap.bitmap_mm(x, W.bitmap, W.word_offsets, W.values)
    torch.testing.assert_close(y, x @ (w * mask).T, rtol=1e-5, atol=1e-5)


@interp
@pytest.mark.parametrize("dtype", DTYPES)
def test_interp_bitmap_tile_and_expand_designs(dtype):
    """From M = 32: the weight tile decoded in column order (TILE) and the dense weight decoded for cuBLAS
    (EXPAND), every configuration of the large-M candidate lists, on odd shapes: a K tail inside a word and
    inside a step, N not a multiple of the tile, empty rows, nothing kept, everything kept, a strided x."""
    from sparsekit.triton import bitmap

    cfgs = []
    for b in (16, 32, 64, 128, 256, 1024):
        cfgs += [c for c in bitmap.candidates(b, 4096, dtype, 5) if c.get("TILE") or c.get("EXPAND")]
    cfgs = [dict(t) for t in {tuple(sorted(c.items())) for c in cfgs}]
    assert any(c.get("EXPAND") for c in cfgs)
    assert any(c.get("TILE") for c in cfgs) == (dtype != torch.float32)
    shapes = [(33, 37, 70, 0.5), (17, 20, 96, 0.9), (40, 129, 200, 0.1), (5, 5, 31, 0.3), (70, 16, 64, 1.0)]
    for i, cfg in enumerate(sorted(cfgs, key=repr)):
        M, N, K, d = shapes[i % len(shapes)]
        _bitmap_case(M, N, K, d, dtype, "cpu", config=cfg, bias=i % 2 == 0)
        y = _bitmap_case(3, 16, 40, 0.0, dtype, "cpu", config=cfg, bias=False)
        assert torch.count_nonzero(y) == 0
        _bitmap_case(6, 16, 40, 0.5, dtype, "cpu", config=cfg, x=torch.randn(80, 6).to(dtype)[::2].t())


# ------------------------------------------------------------------------ interpreter: int8 ops
@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K", [(1, 1), (3, 70), (17, 128), (33, 300), (2, 5000)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_interp_quantize_per_token_is_bit_exact(M, K, dtype, symmetric):
    x = _quant_inputs(M, K, dtype, "cpu")
    if not symmetric and M > 1 and K >= 7:
        x[0, :5] = torch.tensor([-100.0, 155.0, 0.5, 1.5, -2.5]).to(dtype)
        x[0, 5:] = x[0, 5:].clamp(-100, 155)
    _check_quant(x, symmetric)
    _check_quant(x + 1.0 if symmetric else x.abs(), symmetric)  # one-signed rows


def _non_finite_rows(K, dtype, device):
    """Rows with NaN, +Inf, -Inf, one spanning past float32's max (asymmetric: hi - lo overflows), zeros."""
    x = torch.randn(6, K, device=device)
    x[1, 3 % K] = float("nan")
    x[2, 0] = float("inf")
    x[3, K - 1] = -float("inf")
    x[4] = torch.tensor([3e38, -3e38], device=device).repeat(K // 2 + 1)[:K]
    x[5] = 0
    return x.to(dtype)


@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("K", [5, 37, 300])
def test_interp_quantize_per_token_non_finite_rows_as_the_reference(K, dtype, symmetric):
    # a row holding NaN/Inf: scale NaN, q 0, zero point 0; a finite row past float32's range: finite scale
    _check_quant(_non_finite_rows(K, dtype, "cpu"), symmetric)


@interp
@pytest.mark.parametrize("M", [1, 3, 17, 33])
@pytest.mark.parametrize("N,K", [(37, 70), (64, 128), (33, 300)])
def test_interp_int8_mm(M, N, K):
    from sparsekit.triton import int8

    cands = int8.int8_candidates(_bucket(M), K)
    for i, (zero, out_dtype) in enumerate([(False, torch.float16), (True, torch.bfloat16), (True, torch.float32),
                                           (False, torch.float32)]):
        _int8_case(M, N, K, "cpu", zero, out_dtype, bias=i % 2 == 0, config=cands[i % len(cands)])


@interp
def test_interp_w8a8_pipeline_matches_reference():
    """quantize_per_token + int8_mm, as Int8Weight.apply runs them, against the reference ops."""
    from sparsekit.formats import Int8Weight
    from sparsekit.triton import int8

    w = torch.randn(40, 72)
    W = Int8Weight.from_dense(w)
    for dtype in (torch.float16, torch.bfloat16):
        for symmetric in (True, False):
            x = torch.randn(5, 72).to(dtype)
            q, s, z = int8.quantize_per_token(x, symmetric)
            y = int8.int8_mm(q, s, None if symmetric else z, W.qweight, W.scale, None, dtype)
            rq, rs, rz = reference.quantize_per_token(x, symmetric)
            ref = reference.int8_mm(rq, rs, None if symmetric else rz, W.qweight, W.scale, None, torch.float32)
            torch.testing.assert_close(y.double(), ref.double(), rtol=OUT_RTOL[dtype], atol=1e-3)


@interp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 3, 17, 33])
@pytest.mark.parametrize("N,K", [(37, 70), (64, 128), (20, 300)])
def test_interp_int8_weight_only(N, K, M, dtype):
    from sparsekit.triton import int8

    for i, cfg in enumerate(_configs(int8.weight_only_candidates(_bucket(M), K, dtype))):
        _wo_case(M, N, K, dtype, "cpu", bias=i == 0, config=cfg)


@interp
def test_interp_weight_only_large_m_and_strides():
    _wo_case(333, 24, 64, torch.float16, "cpu")
    _wo_case(7, 24, 64, torch.bfloat16, "cpu", x=torch.randn(64, 7).to(torch.bfloat16).t())


@interp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interp_weight_only_swap(dtype):
    """SWAP tiles (y^T = w @ x^T, the converted weight the dot's first operand): listed above M = 16 in float16 /
    bfloat16 only, each one right on odd N, K and M (tails of every tile), with and without a bias, a strided x
    and a weight view."""
    from sparsekit.triton import int8

    assert not any(c.get("SWAP") for b in (1, 4, 16) for c in int8.weight_only_candidates(b, 300, dtype))
    assert not any(c.get("SWAP") for c in int8.weight_only_candidates(64, 300, torch.float32))
    for b, M in ((32, 17), (64, 33), (256, 130), (1024, 600)):
        swapped = [c for c in int8.weight_only_candidates(b, 300, dtype) if c.get("SWAP")]
        assert swapped and all(c["DOT"] for c in swapped)
        for i, cfg in enumerate(swapped):
            _wo_case(M, 70, 300, dtype, "cpu", bias=i == 0, config=cfg)
        _wo_case(M, 37, 70, dtype, "cpu", config=swapped[0], x=torch.randn(70, M).to(dtype).t())
        w_q = torch.randint(-127, 128, (24, 131), dtype=torch.int8)[:, 1:129]  # a view: row stride 131
        x, s = torch.randn(M, 128).to(dtype), torch.rand(24) / 64 + 0.001
        _check_out(int8.int8_weight_only_mm(x, w_q, s, config=swapped[-1]),
                   reference.int8_weight_only_mm(x.double(), w_q, s.double()), x, w_q.double() * s.double()[:, None],
                   dtype)


@interp
@pytest.mark.parametrize("dtype", DTYPES)
def test_interp_weight_only_expand(dtype):
    """EXPAND (the dequantized weight, then cuBLAS): first above M = 512 and for float32 above M = 16, last at
    M = 129-512; odd N and K (tails inside a program), with and without a bias, a strided x, a weight view."""
    from sparsekit.triton import int8

    first = [int8.weight_only_candidates(b, 4096, dtype)[0] for b in (32, 256, 1024)]
    assert [bool(c.get("EXPAND")) for c in first] == [dtype == torch.float32, dtype == torch.float32, True]
    assert int8.weight_only_candidates(256, 4096, dtype)[-1 if dtype != torch.float32 else 0].get("EXPAND")
    for cfg in (int8._wo_expand(), int8._wo_expand(bn=16, bk=64)):
        _wo_case(3, 37, 70, dtype, "cpu", config=cfg)
        _wo_case(20, 129, 300, dtype, "cpu", bias=False, config=cfg)
        _wo_case(5, 24, 64, dtype, "cpu", config=cfg, x=torch.randn(64, 5).to(dtype).t())
        x = torch.randn(4, 64).to(dtype)
        s = torch.rand(24) / 64 + 0.001
        for w_q in (torch.randint(-127, 128, (24, 67), dtype=torch.int8)[:, 1:65],  # a view: row stride 67
                    torch.randint(-127, 128, (64, 24), dtype=torch.int8).t()):  # column stride 24
            y = int8.int8_weight_only_mm(x, w_q, s, config=cfg)
            _check_out(y, reference.int8_weight_only_mm(x.double(), w_q, s.double()), x,
                       w_q.double() * s.double()[:, None], dtype)


# -------------------------------------------------------------------- interpreter: edge cases
@interp
def test_interp_zero_sizes_launch_nothing():
    from sparsekit.triton import bitmap, bsr, int8

    W, _ = _random_bsr(32, 32, 16, 16, 0.5, torch.float16, "cpu")
    assert bsr.bsr_mm(torch.randn(0, 32).half(), W.crow_indices, W.col_indices, W.values, 32).shape == (0, 32)
    b = torch.randn(8).half()
    E = BSRWeight.from_dense(torch.zeros(8, 0), blocksize=(4, 4))
    torch.testing.assert_close(bsr.bsr_mm(torch.randn(3, 0).half(), E.crow_indices, E.col_indices,
                                          E.values.half(), 8, b), b.expand(3, 8))
    Z = BSRWeight.from_dense(torch.zeros(0, 16), blocksize=(4, 4))
    assert bsr.bsr_mm(torch.randn(3, 16), Z.crow_indices, Z.col_indices, Z.values, 0).shape == (3, 0)

    B, _ = _random_bitmap(8, 40, 0.5, torch.float32, "cpu")
    assert bitmap.bitmap_mm(torch.randn(0, 40), B.bitmap, B.word_offsets, B.values).shape == (0, 8)
    B0 = BitmapWeight.from_dense(torch.randn(8, 40), torch.zeros(8, 40, dtype=torch.bool))
    torch.testing.assert_close(bitmap.bitmap_mm(torch.randn(2, 40), B0.bitmap, B0.word_offsets, B0.values,
                                                b.float()), b.float().expand(2, 8))

    for sym in (True, False):
        for shape in ((0, 5), (3, 0)):
            x = torch.randn(shape)
            got = int8.quantize_per_token(x, sym)
            ref = reference.quantize_per_token(x, sym)
            for g, r in zip(got, ref):
                assert g.shape == r.shape and torch.equal(g, r)

    wq = torch.randint(-127, 128, (6, 0), dtype=torch.int8)
    y = int8.int8_mm(torch.zeros(2, 0, dtype=torch.int8), torch.ones(2), None, wq, torch.ones(6), b[:6], torch.float16)
    torch.testing.assert_close(y, b[:6].expand(2, 6))
    assert int8.int8_mm_i32(torch.zeros(0, 4, dtype=torch.int8), torch.zeros(3, 4, dtype=torch.int8)).shape == (0, 3)
    assert int8.int8_weight_only_mm(torch.randn(4, 5), torch.zeros(0, 5, dtype=torch.int8),
                                    torch.ones(0)).shape == (4, 0)


@interp
def test_interp_launchers_validate_inputs():
    from sparsekit.triton import bitmap, bsr, int8

    W, _ = _random_bsr(32, 32, 16, 16, 0.5, torch.float16, "cpu")
    with pytest.raises(TypeError, match="values of the same dtype"):
        bsr.bsr_mm(torch.randn(2, 32), W.crow_indices, W.col_indices, W.values, 32)
    B, _ = _random_bitmap(8, 40, 0.5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="bitmap of shape"):
        bitmap.bitmap_mm(torch.randn(2, 80), B.bitmap, B.word_offsets, B.values)
    with pytest.raises(TypeError, match="x of dtype"):
        int8.quantize_per_token(torch.randn(2, 3).double())
    with pytest.raises(TypeError, match="out_dtype"):
        int8.int8_mm(torch.zeros(2, 4, dtype=torch.int8), torch.ones(2), None, torch.zeros(3, 4, dtype=torch.int8),
                     torch.ones(3), None, torch.int32)
    with pytest.raises(ValueError, match="w_q of shape"):
        int8.int8_weight_only_mm(torch.randn(2, 4), torch.zeros(3, 5, dtype=torch.int8), torch.ones(3))


def _launcher_cases(cases, name_of):
    """The cases of tests/test_hardening.py (malformed or corrupted index buffers) of the ops with a
    Triton launcher; test_hardening is imported on use, where these tests run."""
    return [c for c in cases if name_of(c) in ("bsr_mm", "bitmap_mm")]


def _launcher(name):
    from sparsekit.triton import bitmap, bsr

    return {"bsr_mm": bsr.bsr_mm, "bitmap_mm": bitmap.bitmap_mm}[name]


@interp
def test_interp_launchers_refuse_malformed_index_buffers():
    from test_hardening import MALFORMED

    for what, args, msg in _launcher_cases(MALFORMED, lambda c: c[1]()[0]):
        name, *a = args()
        with pytest.raises(ValueError, match=rf"sparsekit\.{name}: .*{msg}"):
            _launcher(name)(*a)


@interp
def test_interp_launchers_check_a_buffer_written_in_place_again():
    from test_hardening import IN_PLACE, _call_check_corrupt_call, _in_place_op

    for what, make, args, corrupt, msg in _launcher_cases(IN_PLACE, lambda c: _in_place_op(c[0])):
        _call_check_corrupt_call(_launcher(_in_place_op(what)), make(), args, corrupt, msg)


@interp
def test_interp_registered_impls_route_to_the_launchers():
    """The functions registered for the CUDA key, called directly on CPU tensors (defaults filled in)."""
    import sparsekit.triton as st
    from sparsekit.formats import Int8Weight, Sparse24Int8Weight

    impls = st._make_impls()
    W, wm = _random_bsr(32, 48, 16, 16, 0.5, torch.float16, "cpu")
    x = torch.randn(3, 48).half()
    y = impls["bsr_mm"](x, W.crow_indices, W.col_indices, W.values, 32)
    _check_out(y, x.double() @ wm.double().T, x, wm, torch.float16)
    B, bm = _random_bitmap(16, 48, 0.4, torch.float16, "cpu")
    y = impls["bitmap_mm"](x, B.bitmap, B.word_offsets, B.values, bias=None)
    _check_out(y, x.double() @ bm.double().T, x, bm, torch.float16)
    q, s, z = impls["quantize_per_token"](x)
    assert torch.equal(q, reference.quantize_per_token(x)[0])
    I = Int8Weight.from_dense(torch.randn(16, 48))
    y = impls["int8_mm"](q, s, None, I.qweight, I.scale, None, torch.float32)
    torch.testing.assert_close(y, reference.int8_mm(q, s, None, I.qweight, I.scale, None, torch.float32))
    y = impls["int8_weight_only_mm"](x, I.qweight, I.scale)
    ref = reference.int8_weight_only_mm(x.double(), I.qweight, I.scale.double())
    _check_out(y, ref, x, I.qweight.double() * I.scale.double()[:, None], torch.float16)
    # the one-call W8A8 linears: the two launchers from one op, the reference within the product's tolerance
    y = impls["int8_linear"](x, I.qweight, I.scale)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), reference.int8_linear(x, I.qweight, I.scale).float(), rtol=1e-2, atol=1e-2)
    w24 = torch.randn(16, 48) * torch.tensor([1.0, 0, 0, 1]).repeat(12)
    S = Sparse24Int8Weight.from_dense(w24)
    b = torch.randn(16).half()
    y = impls["sparse24_int8_linear"](x, S.values, S.meta, S.scale, b)
    want = reference.sparse24_int8_linear(x, S.values, S.meta, S.scale, b)
    torch.testing.assert_close(y.float(), want.float(), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match=r"sparsekit\.int8_linear: expected w_q of shape"):
        impls["int8_linear"](x, I.qweight[:, :8], I.scale)


if INTERPRET and HAS_TRITON:  # a kernel over the helpers, defined only where it runs
    import triton
    import triton.language as tl

    from sparsekit.triton._common import popcount32, round_half_even

    @triton.jit
    def _helpers_kernel(w_ptr, c_ptr, f_ptr, r_ptr, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(c_ptr + i, popcount32(tl.load(w_ptr + i), False))
        tl.store(r_ptr + i, round_half_even(tl.load(f_ptr + i)))


@interp
def test_interp_popcount_and_rounding_helpers():
    w = torch.randint(-2**31, 2**31, (256,), dtype=torch.int64).to(torch.int32)
    w[:4] = torch.tensor([0, -1, -2**31, 2**31 - 1], dtype=torch.int32)
    f = torch.cat([torch.arange(-8, 8, dtype=torch.float32) + 0.5, torch.randn(240) * 300])
    c = torch.empty(256, dtype=torch.int32)
    r = torch.empty(256)
    _helpers_kernel[(1,)](w, c, f, r, BLOCK=256)
    expect = [bin(v & 0xFFFFFFFF).count("1") for v in w.tolist()]
    assert c.tolist() == expect
    assert torch.equal(r, torch.round(f))


@interp
def test_interp_autotune_choose_uses_default_off_gpu():
    from sparsekit.triton import autotune, bsr

    W, _ = _random_bsr(32, 32, 16, 16, 0.5, torch.float16, "cpu")
    autotune.clear()
    bsr.bsr_mm(torch.randn(2, 32).half(), W.crow_indices, W.col_indices, W.values, 32)
    (key, cfg), = autotune.config_summary()["bsr_mm"]
    assert key == (-1, 32, 32, 16, 16, 2, "fp16") and cfg == bsr.candidates(16, 16, 2, torch.float16)[0]


# ---------------------------------------------------------------------- autotune (pure Python)
def test_autotune_select_measures_once_and_persists(tmp_path, monkeypatch):
    from sparsekit.triton import autotune

    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path))
    autotune.clear()
    cands = [{"BLOCK_M": 16, "num_warps": 4}, {"BLOCK_M": 32, "num_warps": 4}, {"BLOCK_M": 64, "num_warps": 8}]
    calls = []

    def measure(c):
        calls.append(c["BLOCK_M"])
        if c["BLOCK_M"] == 64:
            raise RuntimeError("out of resources")
        return {16: 2.0, 32: 1.0}[c["BLOCK_M"]]

    best = autotune.select("op", (4096, 4096, 16, "fp16"), "Fake_GPU", cands, measure)
    assert best == cands[1] and calls == [16, 32, 64]
    path = Path(autotune.cache_file("Fake_GPU"))
    assert path.parent == tmp_path and "Fake_GPU" in path.name and torch.__version__.split("+")[0] in path.name
    data = json.loads(path.read_text())
    assert data["configs"] == {"op|4096|4096|16|fp16": cands[1]}
    # a "second process": memory forgotten, the file answers, nothing is measured
    autotune.clear()
    calls.clear()
    assert autotune.select("op", (4096, 4096, 16, "fp16"), "Fake_GPU", cands, measure) == cands[1]
    assert calls == []
    # another key merges into the same file
    autotune.select("op", (11008, 4096, 1, "bf16"), "Fake_GPU", cands, lambda c: float(c["BLOCK_M"]))
    assert len(json.loads(path.read_text())["configs"]) == 2
    # another device has its own file
    assert autotune.cache_file("Other_GPU") != str(path)


def test_autotune_unwritable_cache_dir_warns_and_goes_on(tmp_path, monkeypatch):
    from sparsekit.triton import autotune

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(autotune, "_warned_write", False)
    autotune.clear()
    with pytest.warns(RuntimeWarning, match="cannot write the autotune cache"):
        best = autotune.select("op", (1,), "Fake_GPU", [{"a": 1}, {"a": 2}], lambda c: 3.0 - c["a"])
    assert best == {"a": 2}
    autotune.clear()


def test_register_is_lazy_and_idempotent():
    import sparsekit.triton as st

    if not HAS_TRITON:
        assert st.register() is False
        return
    code = textwrap.dedent("""
        import sys, sparsekit, sparsekit.triton as st
        assert st.register() and st.register() and st.registered()
        assert "triton" not in sys.modules, "register() must not import triton"
        print("ok")
    """)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------------------------------------------ GPU tests
M_SWEEP = [1, 2, 3, 4, 7, 8, 16, 17, 33, 64, 128, 333, 1024]


@pytest.fixture(scope="module")
def registered():
    import sparsekit.triton as st

    if HAS_TRITON:
        st.register()
    return st


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("R,C", [(16, 16), (32, 32), (64, 64), (32, 64), (8, 16)])
def test_gpu_bsr_sweep(R, C, dtype):
    for M in M_SWEEP:
        _bsr_case(M, 512, 768, R, C, dtype, "cuda", density=0.2)
    _bsr_case(17, 128, 256, R, C, torch.float32, "cuda")


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("density", [0.5, 0.3, 0.1])
def test_gpu_bitmap_sweep(density, dtype):
    for M in M_SWEEP:
        _bitmap_case(M, 320, 1000, density, dtype, "cuda")
    _bitmap_case(5, 64, 96, density, torch.float32, "cuda")


@gpu
def test_gpu_bsr_and_bitmap_every_candidate():
    from sparsekit.triton import bitmap, bsr

    for M in (1, 3, 16, 33, 300, 1100):
        for cfg in bsr.candidates(64, 64, _bucket(M), torch.float16):
            _bsr_case(M, 256, 512, 64, 64, torch.float16, "cuda", config=cfg, density=0.3)
        for d in (1, 5):
            for cfg in bitmap.candidates(_bucket(M), 500, torch.bfloat16, d):
                _bitmap_case(M, 96, 500, d / 10, torch.bfloat16, "cuda", config=cfg)
    for cfg in bitmap.candidates(_bucket(40), 500, torch.float32, 5):  # EXPAND first
        _bitmap_case(40, 96, 500, 0.5, torch.float32, "cuda", config=cfg)


@gpu
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_quantize_per_token_is_bit_exact(dtype, symmetric):
    for M, K in [(1, 4096), (3, 11008), (17, 1000), (333, 4096), (2048, 4096), (4, 20000)]:
        _check_quant(_quant_inputs(M, K, dtype, "cuda"), symmetric)
    _check_quant(_non_finite_rows(4096, dtype, "cuda"), symmetric)


@gpu
@pytest.mark.parametrize("zero", [False, True])
def test_gpu_int8_mm_sweep(zero):
    from sparsekit.triton import int8

    for M in M_SWEEP + [2048]:
        for out_dtype in (torch.float16, torch.bfloat16, torch.float32):
            _int8_case(M, 384, 1000, "cuda", zero, out_dtype, bias=out_dtype != torch.float32)
    for cfg in int8.int8_candidates(_bucket(4096), 4096) + int8.int8_candidates(1, 4096):
        _int8_case(256, 512, 4096, "cuda", zero, torch.float16, config=cfg)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_int8_weight_only_sweep(dtype):
    from sparsekit.triton import int8

    for M in M_SWEEP:
        _wo_case(M, 384, 1000, dtype, "cuda")
    for M in (1, 4, 16, 512, 1100):
        for cfg in int8.weight_only_candidates(_bucket(M), 4096, dtype):
            _wo_case(M, 256, 4096, dtype, "cuda", config=cfg)


@gpu
def test_gpu_ops_dispatch_to_triton(registered):
    """torch.ops.sparsekit.* on CUDA tensors run the Triton kernels (their tuning tables fill) and match."""
    from sparsekit import ops
    from sparsekit.formats import Int8Weight
    from sparsekit.triton import bitmap, bsr, int8

    dt = torch.float16
    W, wm = _random_bsr(256, 512, 64, 64, 0.2, dt, "cuda")
    x = torch.randn(5, 512, device="cuda", dtype=dt)
    n = len(bsr._TABLE)
    y = ops.bsr_mm(x, W.crow_indices, W.col_indices, W.values, 256)
    assert len(bsr._TABLE) == n + 1
    _check_out(y, x.double() @ wm.double().cuda().T, x, wm, dt)
    B, bmw = _random_bitmap(256, 512, 0.5, dt, "cuda")
    n = len(bitmap._TABLE)
    y = ops.bitmap_mm(x, B.bitmap, B.word_offsets, B.values)
    assert len(bitmap._TABLE) == n + 1
    _check_out(y, x.double() @ bmw.double().cuda().T, x, bmw, dt)
    I = Int8Weight.from_dense(torch.randn(256, 512, device="cuda"))
    nq, ni = len(int8._QTABLE), len(int8._I8TABLE)
    y = I.apply(x, I.shape, None, I.qweight, I.scale)
    assert len(int8._QTABLE) == nq + 1 and len(int8._I8TABLE) == ni + 1
    q, s, _ = reference.quantize_per_token(x)
    torch.testing.assert_close(y.float(), reference.int8_mm(q, s, None, I.qweight, I.scale, None, torch.float32),
                               rtol=2e-3, atol=1e-3)
    n = len(int8._WOTABLE)
    y = ops.int8_weight_only_mm(x, I.qweight, I.scale)
    assert len(int8._WOTABLE) == n + 1


@gpu
def test_gpu_opcheck_compile_and_graphs(registered):
    from sparsekit import ops

    dt = torch.bfloat16
    W, wm = _random_bsr(128, 256, 32, 32, 0.3, dt, "cuda")
    B, bmw = _random_bitmap(128, 256, 0.5, dt, "cuda")
    wq = torch.randint(-127, 128, (128, 256), dtype=torch.int8, device="cuda")
    ws = torch.rand(128, device="cuda") / 127
    x = torch.randn(4, 256, device="cuda", dtype=dt)
    bias = torch.randn(128, device="cuda", dtype=dt)
    q, s, z = ops.quantize_per_token(x, False)
    cases = [
        (torch.ops.sparsekit.bsr_mm.default, (x, W.crow_indices, W.col_indices, W.values, 128, bias)),
        (torch.ops.sparsekit.bitmap_mm.default, (x, B.bitmap, B.word_offsets, B.values, bias)),
        (torch.ops.sparsekit.quantize_per_token.default, (x, False)),
        (torch.ops.sparsekit.int8_mm.default, (q, s, z, wq, ws, bias, dt)),
        (torch.ops.sparsekit.int8_weight_only_mm.default, (x, wq, ws, bias)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)

    def f(x):
        y = ops.bsr_mm(x, W.crow_indices, W.col_indices, W.values, 128, bias)
        y = y + ops.bitmap_mm(x, B.bitmap, B.word_offsets, B.values)
        q, s, _ = ops.quantize_per_token(x)
        y = y + ops.int8_mm(q, s, None, wq, ws, None, dt)
        return y + ops.int8_weight_only_mm(x, wq, ws)

    eager = f(x)
    compiled = torch.compile(f, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
    # CUDA graphs: tuned during the eager calls above, so the capture measures nothing
    static_x = x.clone()
    f(static_x)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = f(static_x)
    static_x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, f(static_x))


@gpu
def test_gpu_autotune_cache_second_process_measures_nothing(tmp_path):
    code = textwrap.dedent("""
        import json, sys, torch, sparsekit, sparsekit.triton as st
        from sparsekit.triton import autotune, int8
        st.register()
        w = torch.randint(-127, 128, (512, 1024), dtype=torch.int8, device="cuda")
        s = torch.rand(512, device="cuda")
        for M in (1, 16, 300):
            torch.ops.sparsekit.int8_weight_only_mm(torch.randn(M, 1024, device="cuda", dtype=torch.float16), w, s)
        torch.cuda.synchronize()
        print(json.dumps(autotune.stats))
    """)
    env = dict(os.environ, SPARSEKIT_CACHE_DIR=str(tmp_path), SPARSEKIT_TRITON_AUTOTUNE="1")
    env.pop("TRITON_INTERPRET", None)
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert runs[0]["measured"] == 3 and runs[1]["measured"] == 0 and runs[1]["disk_hits"] == 3
    assert len(list(tmp_path.glob("triton-*.json"))) == 1
