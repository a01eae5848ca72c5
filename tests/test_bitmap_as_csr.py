"""The CPU bitmap op from M = 9 where the CSR core's AVX-512 kernels run: each thread decodes its rows, 128 at a time,
into column lists and runs the CSR core on them with the bitmap's values (csrc/cpu/ops_cpu.cpp, bitmap_mm_as_csr).
Against the float64 reference on odd sizes, at every instruction set this CPU runs (below AVX-512 the bitmap's own
kernels serve the same calls)."""
import pytest
import torch

import sparsekit
from sparsekit.formats import BitmapWeight

from helpers import assert_close_to_ref

pytestmark = pytest.mark.skipif(not sparsekit._ext.available(), reason="needs the compiled extension")


def _bitmap(N, K, density, dtype, empty_rows=()):
    w = torch.randn(N, K).to(dtype)
    keep = torch.rand(N, K) < density
    for r in empty_rows:
        keep[r] = False
    return w, keep, BitmapWeight.from_dense(w, keep)


def _check(N, K, M, density, dtype, bias, threads=2, empty_rows=()):
    w, keep, bw = _bitmap(N, K, density, dtype, empty_rows)
    x = torch.randn(M, K).to(dtype)
    b = torch.randn(N).to(dtype) if bias else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = torch.ops.sparsekit.bitmap_mm(x, bw.bitmap, bw.word_offsets, bw.values, b)
    finally:
        torch.set_num_threads(before)
    wm = w * keep
    ref = x.double() @ wm.double().T + (0 if b is None else b.double())
    assert y.shape == (M, N) and y.dtype == dtype
    assert_close_to_ref(y, ref, x, wm, dtype)


# N = 300: chunks of 128 rows with a short one, and 2 threads splitting them off a chunk boundary; K = 1500 at 30 %
# (the CSR core's panels), 2100 at 5 % (its sparse rows), 77 (one panel, K not a multiple of 32); M = 9 (the first M
# as CSR), 64, 130 (a second tile of activation rows)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [9, 64, 130])
@pytest.mark.parametrize("K,density", [(1500, 0.3), (2100, 0.05), (77, 0.5)])
def test_matches_reference(cpu_isa, dtype, M, K, density):
    _check(300, K, M, density, dtype, bias=M % 2 == 1, empty_rows=(0, 127, 128, 299))


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_and_empty_weight(cpu_isa, threads):
    _check(129, 300, 17, 0.4, torch.float32, bias=True, threads=threads)
    _check(40, 300, 17, 0.0, torch.bfloat16, bias=True, threads=threads)  # nothing kept: y is the bias


def test_route():
    C = sparsekit._ext.C
    C.set_cpu_isa("avx2")
    try:
        assert not C.cpu_bitmap_csr(64)
    finally:
        C.set_cpu_isa("auto")
    assert not C.cpu_bitmap_csr(8)
    C.set_cpu_isa("avx512")
    try:
        avx512 = C.cpu_isa() == "avx512"
        assert C.cpu_bitmap_csr(9) == avx512 and C.cpu_bitmap_csr(4096) == avx512
    finally:
        C.set_cpu_isa("auto")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pruned_weights_stay_structural_zeros(cpu_isa, dtype):
    """An Inf or NaN in x reaches only the outputs whose rows keep a weight in its column."""
    N, K, M = 70, 200, 20
    w, keep, bw = _bitmap(N, K, 0.3, dtype)
    for bad in (float("nan"), float("inf")):
        x = torch.randn(M, K).to(dtype)
        x[3, 17] = bad
        y = torch.ops.sparsekit.bitmap_mm(x, bw.bitmap, bw.word_offsets, bw.values, None)
        expect = torch.zeros(M, N, dtype=torch.bool)
        expect[3] = keep[:, 17]
        assert torch.equal(~torch.isfinite(y), expect)


@pytest.mark.parametrize("threads", [1, 2])
def test_several_chunks_per_thread(threads):
    """A thread decodes its rows in chunks of about 2^20 kept weights (whole 64-row blocks): 600 x 4096 at 90 % kept
    makes 2-3 chunks per thread."""
    _check(600, 4096, 9, 0.9, torch.float32, bias=True, threads=threads)
