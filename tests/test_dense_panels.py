"""The CPU large-M path of the 2:4, int8 weight-only, CSR and bitmap ops: W turned into dense rows a
panel at a time, multiplied by ATen's dense GEMM (csrc/cpu/dense_panels.h).

It must give what the reference gives (fresh random data, odd sizes, several panels, bias, strides),
keep each format's NaN rule (2:4, CSR, bitmap: pruned weights are structural zeros, so an x holding
NaN/Inf goes to the op's kernel; int8-wo: as dense), and its threshold must be settable and readable.
`set_cpu_dense_min_m(0)` turns it off, so the same call is checked against the op's kernel too."""
import os
import subprocess
import sys

import pytest
import torch

import sparsekit
from sparsekit.formats.bitmap import BitmapWeight
from sparsekit.formats.csr import CSRWeight
from sparsekit.formats.sparse24 import pack_24
from sparsekit.ops import reference
from sparsekit.quant import dequantize_weight, quantize_weight

from helpers import assert_close_to_ref, random_24

pytestmark = pytest.mark.skipif(not sparsekit._ext.available(), reason="compiled extension not built")


def _C():
    from sparsekit import _C as ext

    return ext


@pytest.fixture
def dense_from(request):
    """Set the threshold for one test and restore the automatic one after it."""
    ext = _C()

    def set_(m):
        ext.set_cpu_dense_min_m(m)

    yield set_
    ext.set_cpu_dense_min_m(-1)


def _weight(N, K, dtype, gen):
    w, _, values, meta = random_24(N, K, gen, dtype)
    return w, values, meta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1, 5, 4), (2, 37, 52), (3, 1100, 8), (17, 513, 36), (130, 29, 4 * 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_dense_panels_match_the_reference_and_the_kernel(dense_from, dtype, M, N, K, bias):
    gen = torch.Generator().manual_seed(M * 1000 + N + K)
    w, values, meta = _weight(N, K, dtype, gen)
    x = torch.randn(M, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype) if bias else None
    ref = reference.sparse24_mm(x.double(), values.double(), meta, None if b is None else b.double())
    dense_from(1)
    got = torch.ops.sparsekit.sparse24_mm(x, values, meta, b)
    dense_from(0)
    kernel = torch.ops.sparsekit.sparse24_mm(x, values, meta, b)
    assert got.dtype == dtype and got.shape == (M, N)
    ref_nb = ref - (b.double() if bias else 0)
    assert_close_to_ref(got.double() - (b.double() if bias else 0), ref_nb, x, w, dtype)
    assert_close_to_ref(kernel.double() - (b.double() if bias else 0), ref_nb, x, w, dtype)


def test_dense_panels_take_strided_x_and_are_exact_in_float32_sums_of_one_term(dense_from):
    # each output sums one kept product: the GEMM must give it exactly, whatever the panel split
    N, K = 1030, 8
    w = torch.zeros(N, K)
    cols = torch.arange(N) % 4
    w[torch.arange(N), cols] = torch.randn(N)
    w[torch.arange(N), 4 + cols] = 0.0
    keep = torch.zeros(N, K, dtype=torch.bool)
    keep[torch.arange(N), cols] = True
    keep[torch.arange(N), (cols + 1) % 4] = True
    keep[torch.arange(N), 4 + cols] = True
    keep[torch.arange(N), 4 + (cols + 1) % 4] = True
    w = w * keep
    values, meta = pack_24(w, keep, "weight")
    x_full = torch.randn(2 * K, 5).t()  # (5, 16): x is every other column, stride (1, 5)
    x = x_full[:, ::2]
    assert not x.is_contiguous()
    dense_from(1)
    got = torch.ops.sparsekit.sparse24_mm(x, values, meta, None)
    assert torch.equal(got, x @ w.t())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_x_keeps_the_structural_zero_rule(dense_from, dtype, bad):
    gen = torch.Generator().manual_seed(3)
    N, K, M = 24, 16, 6
    w, values, meta = _weight(N, K, dtype, gen)
    x = torch.randn(M, K, generator=gen).to(dtype)
    x[1, 3] = bad
    x[4, 10] = bad
    dense_from(1)
    y = torch.ops.sparsekit.sparse24_mm(x, values, meta, None)
    poisoned = torch.zeros(M, K, dtype=torch.bool)
    poisoned[1, 3] = poisoned[4, 10] = True
    expect = (poisoned.float() @ (w != 0).float().T) > 0
    assert torch.equal(~torch.isfinite(y), expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1, 5, 3), (2, 37, 52), (3, 1100, 8), (17, 513, 37), (65, 29, 130)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_weight_only_panels_match_the_reference_and_the_kernel(dense_from, dtype, M, N, K, bias):
    gen = torch.Generator().manual_seed(M * 1000 + N + K + 1)
    q, scale = quantize_weight(torch.randn(N, K, generator=gen))
    w = dequantize_weight(q, scale)
    x = torch.randn(M, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype) if bias else None
    ref = reference.int8_weight_only_mm(x.double(), q, scale.double(), None)
    dense_from(1)
    got = torch.ops.sparsekit.int8_weight_only_mm(x, q, scale, b)
    dense_from(0)
    kernel = torch.ops.sparsekit.int8_weight_only_mm(x, q, scale, b)
    assert got.dtype == dtype and got.shape == (M, N)
    for y in (got, kernel):
        assert_close_to_ref(y.double() - (b.double() if bias else 0), ref, x, w, dtype)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_int8_weight_only_panels_propagate_non_finite_x_as_dense(dense_from, bad):
    gen = torch.Generator().manual_seed(9)
    q, scale = quantize_weight(torch.randn(24, 16, generator=gen))
    x = torch.randn(6, 16, generator=gen).bfloat16()
    x[1, 3] = bad
    dense_from(1)
    got = torch.ops.sparsekit.int8_weight_only_mm(x, q, scale, None)
    dense_from(0)
    kernel = torch.ops.sparsekit.int8_weight_only_mm(x, q, scale, None)
    assert torch.equal(~torch.isfinite(got), ~torch.isfinite(kernel))
    assert (~torch.isfinite(got[1])).any() and torch.isfinite(got[[0, 2, 3, 4, 5]]).all()


# ---------------------------------------------------------------------------------------- CSR and bitmap
def _sparse_call(fmt, w, keep):
    """The op's call on (x, bias) for the pruned weight w (kept where `keep`)."""
    N = w.shape[0]
    if fmt == "csr":
        c = CSRWeight.from_dense(w, keep)
        return lambda x, b: torch.ops.sparsekit.csr_mm(x, c.crow_indices, c.col_indices, c.values, N, b)
    bw = BitmapWeight.from_dense(w, keep)
    return lambda x, b: torch.ops.sparsekit.bitmap_mm(x, bw.bitmap, bw.word_offsets, bw.values, b)


@pytest.mark.parametrize("fmt", ["csr", "bitmap"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1, 5, 3), (2, 37, 52), (3, 1100, 8), (17, 513, 37), (65, 29, 130)])
@pytest.mark.parametrize("bias", [False, True])
def test_sparse_panels_match_the_reference_and_the_kernel(dense_from, fmt, dtype, M, N, K, bias):
    gen = torch.Generator().manual_seed(M * 1000 + N + K + 2)
    keep = torch.rand(N, K, generator=gen) < 0.4
    keep[N // 2] = False  # an empty row
    w = (torch.randn(N, K, generator=gen) * keep).to(dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype) if bias else None
    call = _sparse_call(fmt, w, keep)
    ref = x.double() @ w.double().t()
    dense_from(1)
    got = call(x, b)
    dense_from(0)
    kernel = call(x, b)
    assert got.dtype == dtype and got.shape == (M, N)
    for y in (got, kernel):
        assert_close_to_ref(y.double() - (b.double() if bias else 0), ref, x, w, dtype)


@pytest.mark.parametrize("fmt", ["csr", "bitmap"])
def test_sparse_panels_take_strided_x(dense_from, fmt):
    gen = torch.Generator().manual_seed(11)
    N, K = 700, 45
    keep = torch.rand(N, K, generator=gen) < 0.3
    w = torch.randn(N, K, generator=gen) * keep
    x = torch.randn(2 * K, 9, generator=gen).t()[:, ::2]  # (9, 45), stride (1, 9)
    assert not x.is_contiguous()
    dense_from(1)
    got = _sparse_call(fmt, w, keep)(x, None)
    assert_close_to_ref(got.double(), x.double() @ w.double().t(), x, w, torch.float32)


def test_csr_panels_sum_a_column_named_twice(dense_from):
    # the checks let a row name a column twice; the kernel adds both values, and so must the panel
    crow = torch.tensor([0, 3, 4], dtype=torch.int32)
    col = torch.tensor([1, 1, 4, 0], dtype=torch.int32)
    vals = torch.tensor([1.5, 2.0, -1.0, 3.0])
    x = torch.randn(5, 6)
    w = torch.zeros(2, 6)
    w[0, 1], w[0, 4], w[1, 0] = 3.5, -1.0, 3.0
    for m in (0, 1):
        dense_from(m)
        torch.testing.assert_close(torch.ops.sparsekit.csr_mm(x, crow, col, vals, 2, None), x @ w.t())


@pytest.mark.parametrize("fmt", ["csr", "bitmap"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("layout", ["rows", "columns"])  # x's rows of unit stride, or its columns
def test_sparse_panels_keep_the_structural_zero_rule(dense_from, fmt, dtype, bad, layout):
    gen = torch.Generator().manual_seed(4)
    N, K, M = 40, 33, 12
    keep = torch.rand(N, K, generator=gen) < 0.3
    w = (torch.randn(N, K, generator=gen) * keep).to(dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    if layout == "columns":
        x = x.t().contiguous().t()
    x[1, 3] = bad
    x[7, 20] = bad
    dense_from(1)
    y = _sparse_call(fmt, w, keep)(x, None)
    poisoned = torch.zeros(M, K, dtype=torch.bool)
    poisoned[1, 3] = poisoned[7, 20] = True
    expect = (poisoned.float() @ keep.float().T) > 0
    assert torch.equal(~torch.isfinite(y), expect)


def test_sparse_panels_automatic_rule(dense_from):
    """The automatic setting: CSR and bitmap take the panels only at large M, on large enough layers that keep
    enough weights (the larger M, the fewer), never in float16; a threshold set by hand applies to every
    layer."""
    take = _C().cpu_dense_panels
    dense_from(-1)
    N = K = 4096
    for op in ("csr", "bitmap"):
        for dt in ("float32", "bfloat16"):
            m = _C().cpu_dense_min_m()[op][dt]
            assert m >= 64
            assert take(op, dt, m, N, K, N * K) and not take(op, dt, m - 1, N, K, N * K)
            assert not take(op, dt, 1 << 20, N, K, N * K // 100)  # 1 % kept: the kernel at any M
            assert not take(op, dt, 1 << 20, 256, 256, 256 * 256)  # a small layer: the fill costs as much
            # monotone: more rows or more kept weights never turn the panels off
            kept = [N * K * p // 100 for p in (5, 10, 25, 45, 65, 100)]
            ms = [m, 2 * m, 4 * m, 8 * m, 16 * m]
            grid = [[take(op, dt, M, N, K, nnz) for nnz in kept] for M in ms]
            for i, row in enumerate(grid):
                assert row == sorted(row), (op, dt, ms[i], row)
                assert i == 0 or all(b or not a for a, b in zip(grid[i - 1], row)), (op, dt, ms[i])
        assert not take(op, "float16", 4096, N, K, N * K)
        dense_from(3)
        assert take(op, "float16", 3, 8, 8, 1) and not take(op, "float32", 2, N, K, N * K)
        dense_from(0)
        assert not take(op, "float32", 4096, N, K, N * K)
        dense_from(-1)
    if _C().cpu_bitmap_csr(1024):
        # bitmap runs as CSR (AVX-512): CSR's tiers (docs/cpu.md)
        for dt in ("float32", "bfloat16"):
            for M in (64, 256, 512, 1024, 4096):
                for p in (5, 10, 25, 45, 65, 100):
                    nnz = N * K * p // 100
                    assert take("bitmap", dt, M, N, K, nnz) == take("csr", dt, M, N, K, nnz), (dt, M, p)
        assert not take("bitmap", "float32", 1024, N, K, N * K // 10)
    else:
        # the sparse tiers: bitmap in float32 at 10 % kept, only from M = 1024 (docs/cpu.md)
        assert not take("bitmap", "float32", 512, N, K, N * K // 10)
        assert take("bitmap", "float32", 1024, N, K, N * K // 10)
    with pytest.raises(ValueError, match="expected '2:4', 'int8-wo', 'csr' or 'bitmap'"):
        take("bsr", "float32", 1, 1, 1, 1)


def test_small_layers_take_the_panels_later(dense_from):
    """2:4 and int8 weight-only: on layers of 2^17 to 2^22 weights (MiniLM's) the panels start at a larger M
    than on LLaMA's, and below 2^17 weights never (automatic setting)."""
    take = _C().cpu_dense_panels
    dense_from(-1)
    auto = _C().cpu_dense_min_m()
    big, small, tiny = (4096, 4096), (384, 1536), (256, 256)
    m = auto["2:4"]["float32"]
    assert not take("2:4", "float32", 1 << 20, *tiny, 1)
    if _C().cpu_sparse24_pairs("float32", 64):
        # the AVX-512 kernels (window, then x staged): never the panels, automatically
        assert m == 0
        assert not any(take("2:4", "float32", M, *shape, 1) for M in (25, 512, 1 << 20) for shape in (big, small))
    else:
        assert m == 256 and take("2:4", "float32", 256, *small, 1) and not take("2:4", "float32", 255, *small, 1)
    m16 = auto["2:4"]["bfloat16"]
    if _C().cpu_sparse24_pairs("bfloat16", 64):
        # the AVX-512 BF16 kernels (window, then x in pairs): never the panels, automatically
        assert m16 == 0
        assert not any(take("2:4", "bfloat16", M, *shape, 1) for M in (17, 512, 1 << 20)
                       for shape in (big, small, (1536, 384), tiny))
    else:
        small16 = max(m16, 64 if m16 < 256 else 256)  # 64 where native bf16 makes the large-layer threshold 17
        assert take("2:4", "bfloat16", m16, *big, 1) and not take("2:4", "bfloat16", small16 - 1, *small, 1)
        assert take("2:4", "bfloat16", small16, *small, 1)
    wo = auto["int8-wo"]["bfloat16"]
    if wo:  # native bf16
        assert take("int8-wo", "bfloat16", wo, *big, 1) and not take("int8-wo", "bfloat16", 255, *small, 1)
        assert take("int8-wo", "bfloat16", 256, *small, 1)
    assert not take("int8-wo", "float32", 1 << 20, *small, 1) and not take("int8-wo", "bfloat16", 1 << 20, *tiny, 1)


def test_threshold_setting_and_reading(dense_from):
    ext = _C()
    ops = ("2:4", "int8-wo", "csr", "bitmap")
    dense_from(0)
    assert ext.cpu_dense_min_m() == {op: {"float32": 0, "bfloat16": 0, "float16": 0} for op in ops}
    dense_from(7)
    assert ext.cpu_dense_min_m() == {op: {"float32": 7, "bfloat16": 7, "float16": 7} for op in ops}
    dense_from(-1)
    auto = ext.cpu_dense_min_m()
    s24, wo = auto["2:4"], auto["int8-wo"]
    assert s24["float16"] == 0 and s24["float32"] >= 0 and s24["bfloat16"] >= 0
    assert wo["float32"] == 0 and wo["float16"] == 0 and wo["bfloat16"] >= 0
    for op in ("csr", "bitmap"):
        assert auto[op]["float16"] == 0 and auto[op]["float32"] >= 1 and auto[op]["bfloat16"] >= 1
    with pytest.raises(ValueError, match="-1 \\(automatic\\), 0 \\(never\\) or a positive M"):
        ext.set_cpu_dense_min_m(-2)
    assert ext.cpu_dense_min_m() == auto
    assert sparsekit.info()["cpu_dense_min_m"] == auto


@pytest.mark.parametrize("value,expect",
                         [("off", 0), ("0", 0), ("12", 12), ("", None), ("abc", "error"), ("-3", "error")])
def test_threshold_from_the_environment(value, expect):
    code = (
        "import torch, sparsekit\n"
        "from sparsekit import _C\n"
        "try:\n"
        "    print(_C.cpu_dense_min_m()['csr']['float32'])\n"
        "except ValueError as e:\n"
        "    print('error', str(e).splitlines()[0])\n"
        "x = torch.randn(3, 8)\n"
        "v = torch.randn(2, 4); m = torch.full((2, 1), 0b01000100, dtype=torch.uint8)\n"
        "try:\n"
        "    torch.ops.sparsekit.sparse24_mm(x, v, m, None); print('call ok')\n"
        "except Exception as e:\n"
        "    print('call error', type(e).__name__)\n"
    )
    env = dict(os.environ, SPARSEKIT_CPU_DENSE_MIN_M=value)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    first, call = out.stdout.strip().splitlines()
    if expect == "error":
        assert first.startswith("error") and "SPARSEKIT_CPU_DENSE_MIN_M must be 'off' or an integer >= 0" in first
        assert call == "call error RuntimeError"
    else:
        assert call == "call ok"
        if expect is None:
            assert int(first) >= 1
        else:
            assert int(first) == expect
