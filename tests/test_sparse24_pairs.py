"""The CPU 2:4 kernel with staged x (csrc/core/spmm_formats_avx512.cpp, `sparse24_pairs`): bfloat16 from M = 21, x
staged in pairs at the six position pairs of every group of four columns, one vdpbf16ps per kept pair and 16 rows of
x; float32 from M = 11, x staged transposed, one FMA per kept value and 16 rows of x. Partial sums carried over K
panels of 64 columns, and a transposed epilogue that adds the bias (and rounds to bf16).

It runs where the CPU has AVX-512 (bf16: AVX-512 BF16; the tests skip elsewhere) and must give the float64
reference's result up to float32 sums and the output's rounding: odd sizes (M across the 16-row registers and the
64-row blocks that each thread stages for itself; K across the 64-column panels, with a short last panel and a
K % 8 == 4 meta row), bias, x with a leading dimension, strided, transposed or unaligned, NaN / Inf in x (pruned
weights stay structural zeros), any number of threads (bit for bit), K = 0, and the route that says where it serves
(`_C.cpu_sparse24_pairs`)."""
import pytest
import torch

import sparsekit
from sparsekit.ops import reference

from helpers import random_24


def _C():
    from sparsekit import _C as ext

    return ext


def _runs(dtype):
    return sparsekit._ext.available() and _C().cpu_sparse24_pairs(str(dtype).split(".")[-1], 64)


pytestmark = pytest.mark.skipif(not _runs(torch.float32), reason="needs the compiled extension on a CPU with AVX-512")
# float32 on every AVX-512 CPU; bfloat16 where it has AVX-512 BF16 too
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not _runs(torch.bfloat16), reason="needs AVX-512 BF16"))]


@pytest.fixture(autouse=True)
def _kernel_only():
    """The op's kernel at every M (the dense panels off), the automatic setting restored after."""
    _C().set_cpu_dense_min_m(0)
    yield
    _C().set_cpu_dense_min_m(-1)


def _weight(N, K, gen, dtype=torch.bfloat16):
    return random_24(N, K, gen, dtype)


def _check(got, x, w, values, meta, b):
    """|got - ref| within the rounding of the output (bf16; none for float32) plus float32 sums: a lost or doubled
    group of four columns (about |x| |w| / (K / 4) of the sum) is far outside it."""
    ref = reference.sparse24_mm(x.double(), values.double(), meta, None if b is None else b.double())
    scale = x.abs().double() @ w.abs().double().T + (0 if b is None else b.abs().double())
    rounding = 2.0 ** -8 if x.dtype == torch.bfloat16 else 0.0
    err = (got.double() - ref).abs() - rounding * ref.abs() - 1e-5 * scale
    assert got.dtype == x.dtype and got.shape == ref.shape
    assert err.max().item() <= 0, f"worst excess {err.max().item():.3g} at {divmod(err.argmax().item(), ref.shape[1])}"


def test_route():
    C = _C()
    assert C.cpu_sparse24_pairs("float32", 11) and C.cpu_sparse24_pairs("float32", 4096)
    assert not C.cpu_sparse24_pairs("float32", 10)  # the window kernel (sparse24_rows) up to M = 10 in float32
    if _runs(torch.bfloat16):
        assert C.cpu_sparse24_pairs("bfloat16", 21) and C.cpu_sparse24_pairs("bfloat16", 4096)
        assert not C.cpu_sparse24_pairs("bfloat16", 20)  # and 20 in bfloat16
    assert not C.cpu_sparse24_pairs("float16", 64)
    C.set_cpu_isa("avx2")
    try:
        assert not C.cpu_sparse24_pairs("bfloat16", 64) and not C.cpu_sparse24_pairs("float32", 64)
    finally:
        C.set_cpu_isa("auto")
    with pytest.raises(ValueError, match="expected 'float32', 'bfloat16' or 'float16'"):
        C.cpu_sparse24_pairs("int8", 64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [11, 16, 17, 25, 31, 32, 33, 47, 64, 65, 100, 255, 256, 257, 300, 513])
@pytest.mark.parametrize("N,K", [(5, 4), (37, 52), (9, 68), (70, 100), (130, 516), (64, 1000)])
def test_matches_reference(dtype, M, N, K):
    gen = torch.Generator().manual_seed(M * 7919 + N * 31 + K)
    w, _, values, meta = _weight(N, K, gen, dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype) if M % 2 else None
    _check(torch.ops.sparsekit.sparse24_mm(x, values, meta, b), x, w, values, meta, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [10, 11, 16, 17, 20, 21, 24, 25])
def test_around_the_window_kernels_last_m(dtype, M):
    """The window kernel (sparse24_rows) takes float32 up to M = 10 and bf16 up to 20; the next M goes to this one."""
    gen = torch.Generator().manual_seed(M + 3)
    N, K = 45, 100
    w, _, values, meta = _weight(N, K, gen)
    w, values = w.to(dtype), values.to(dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype)
    got = torch.ops.sparsekit.sparse24_mm(x, values, meta, b)
    ref = reference.sparse24_mm(x.double(), values.double(), meta, b.double())
    scale = x.abs().double() @ w.abs().double().T + b.abs().double()
    tol = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -20
    assert got.dtype == dtype and ((got.double() - ref).abs() - tol * ref.abs() - 1e-5 * scale).max() <= 0


@pytest.mark.parametrize("dtype,M", [(torch.float32, 760), pytest.param(torch.bfloat16, 513, marks=DTYPES[1].marks)])
def test_many_blocks_of_x_at_large_k(dtype, M):
    """x staged 64 rows at a time into a thread's own buffer (csrc/cpu/ops_cpu.cpp, kPairsMinRows): at K = 2804,
    M = 760 takes 12 blocks and 513 takes 9, the last short and not a multiple of 16."""
    gen = torch.Generator().manual_seed(19)
    N, K = 9, 2804
    w, _, values, meta = _weight(N, K, gen, dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype)
    _check(torch.ops.sparsekit.sparse24_mm(x, values, meta, b), x, w, values, meta, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["leading dimension", "column stride", "transposed", "unaligned"])
def test_x_layouts(dtype, layout):
    gen = torch.Generator().manual_seed(5)
    M, N, K = 70, 33, 188
    w, _, values, meta = _weight(N, K, gen, dtype)
    base = torch.randn(M + 1, 3 * K, generator=gen).to(dtype)
    x = {"leading dimension": base[:M, :K], "column stride": base[:M, ::3],
         "transposed": base[:M, :K].t().contiguous().t(), "unaligned": base.reshape(-1)[1:1 + M * K].view(M, K)}[layout]
    b = torch.randn(N, generator=gen).to(dtype)
    got = torch.ops.sparsekit.sparse24_mm(x, values, meta, b)
    _check(got, x, w, values, meta, b)
    assert torch.equal(got, torch.ops.sparsekit.sparse24_mm(x.contiguous(), values, meta, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_x_reaches_only_the_weights_kept_against_it(dtype, bad):
    gen = torch.Generator().manual_seed(11)
    M, N, K = 40, 48, 64
    w, keep, values, meta = _weight(N, K, gen, dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    poisoned = torch.zeros(M, K, dtype=torch.bool)
    for m, k in ((1, 3), (20, 10), (39, 63), (17, 0)):
        x[m, k] = bad
        poisoned[m, k] = True
    y = torch.ops.sparsekit.sparse24_mm(x, values, meta, None)
    expect = (poisoned.float() @ keep.float().T) > 0
    assert torch.equal(~torch.isfinite(y), expect)
    clean = ~expect
    ref = reference.sparse24_mm(torch.where(poisoned, 0, x).double(), values.double(), meta)
    assert torch.allclose(y.double()[clean], ref[clean], rtol=2.0 ** -7, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", [(130, 200, 372), (300, 257, 1000), (21, 100, 1536)])
def test_threads_give_the_same_bits(dtype, M, N, K):
    """1, 2 and 3 threads (each stages all of x for itself, 64 rows at a time: M = 130 and 300 end in a short block;
    at least 32 weight rows a thread: N = 100 takes 3 threads as 34 / 34 / 32 rows): the same bits."""
    gen = torch.Generator().manual_seed(M + N + K)
    w, _, values, meta = _weight(N, K, gen, dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype)
    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            got.append(torch.ops.sparsekit.sparse24_mm(x, values, meta, b))
    finally:
        torch.set_num_threads(threads)
    _check(got[0], x, w, values, meta, b)
    assert torch.equal(got[1], got[0]) and torch.equal(got[2], got[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_zero_gives_the_bias(dtype):
    b = torch.randn(3).to(dtype)
    x, v, meta = torch.randn(30, 0).to(dtype), torch.zeros(3, 0).to(dtype), torch.zeros(3, 0, dtype=torch.uint8)
    assert torch.equal(torch.ops.sparsekit.sparse24_mm(x, v, meta, b), b.expand(30, 3))
    assert torch.equal(torch.ops.sparsekit.sparse24_mm(x, v, meta, None), torch.zeros(30, 3).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_converted_linear_takes_it(dtype):
    """A 2:4-pruned nn.Linear converted to sparsekit's module gives the pruned dense layer's result on a 3-d batch of
    2 x 20 tokens (M = 40)."""
    gen = torch.Generator().manual_seed(17)
    N, K = 96, 128
    w, _, values, meta = _weight(N, K, gen, dtype)
    lin = torch.nn.Linear(K, N).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = sparsekit.convert(torch.nn.Sequential(lin), sparsekit.SparseConfig("2:4"))
    assert model[0].format == "2:4"
    x = torch.randn(2, 20, K, generator=gen).to(dtype)
    got = model(x)
    assert got.shape == (2, 20, N)
    _check(got.reshape(40, N), x.reshape(40, K), w, values, meta, lin.bias.detach())
