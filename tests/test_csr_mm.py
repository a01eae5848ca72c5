"""The CSR x dense op: kernels against the float64 reference, odd sizes, strides, opcheck,
torch.compile, bad inputs."""
import pytest
import torch

import sparsekit
from sparsekit import ops
from sparsekit.ops import reference

from conftest import devices, requires_ext, requires_gpu
from helpers import assert_close_to_ref, random_csr

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def run_and_check(N, K, M, density, dtype, device="cpu", bias=True, empty_rows=(3,)):
    w, mask, csr = random_csr(N, K, density, dtype, device, empty_rows)
    x = torch.randn(M, K).to(dtype).to(device)
    b = torch.randn(N).to(dtype).to(device) if bias else None
    y = csr.matmul(x, b)
    assert y.shape == (M, N) and y.dtype == dtype and y.device == x.device
    wm = (w * mask).to(device)
    ref = reference.csr_mm(x.double(), csr.crow_indices, csr.col_indices, csr.values.double(), N,
                           None if b is None else b.double())
    assert_close_to_ref(y.cpu(), ref.cpu(), x.cpu(), wm.cpu(), dtype)
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 2, 3, 7, 8, 9, 17, 24, 33, 70])
@pytest.mark.parametrize("N,K", [(37, 61), (13, 203), (1, 1), (64, 8)])
def test_matches_reference(cpu_isa, dtype, M, N, K):
    run_and_check(N, K, M, 0.3, dtype)


@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_sparsity_extremes_and_bias(cpu_isa, density, bias):
    y = run_and_check(29, 45, 5, density, torch.float32, bias=bias, empty_rows=(0, 3, 28))
    if density == 0.0 and not bias:
        assert torch.count_nonzero(y) == 0


# bf16 values and x from M = 9 take the AVX-512 BF16 kernel where the CPU has it (x staged as bf16, pairs of kept
# weights): rows walked in panels of K, and sparse rows (below 1 in 8, K > 1024) without panels
@pytest.mark.parametrize("M", [9, 16, 33, 70, 130])
@pytest.mark.parametrize("K,density", [(1500, 0.4), (2100, 0.06)])
def test_bf16_long_rows(cpu_isa, M, K, density):
    run_and_check(19, K, M, density, torch.bfloat16)


# From M = 9 the AVX-512 core stores a block's sums by activation row (one run of the block's output columns per
# row of y): blocks of 64 weight rows in panels of K (from M = 49; 16 rows below), groups of 16 rows without panels
# (sparse rows, or K within one panel). N = 150 leaves a short block and a short group; M = 128 / 130 / 200 the
# last register part full and a second tile of activation rows; 2 threads split the rows off a block boundary.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [9, 40, 64, 100, 130, 200])
@pytest.mark.parametrize("K,density", [(1500, 0.3), (2100, 0.05), (150, 0.5)])
@pytest.mark.parametrize("bias", [True, False])
def test_blocks_stored_by_activation_row(cpu_isa, dtype, M, K, density, bias):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_and_check(150, K, M, density, dtype, bias=bias, empty_rows=(0, 63, 64, 149))
    finally:
        torch.set_num_threads(threads)


# From M = 49 with x staged as float32 the panels of K widen with the density of a thread's rows (about 25 kept
# weights a row per panel, up to 384 KiB of x), below 13.5 % the blocks take 128 weight rows, and only rows sparser
# than 1 in 64 (K > 1024) go to the AVX2 tiles. N = 333 on one thread: two blocks of 128 and a short one; on two, a
# block each cut short; K = 3001 a short last panel at every width.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [49, 64, 128, 130])
@pytest.mark.parametrize("density", [0.012, 0.03, 0.1, 0.14, 0.3])
@pytest.mark.parametrize("threads", [1, 2])
def test_panels_follow_density(cpu_isa, dtype, M, density, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_and_check(333, 3001, M, density, dtype, empty_rows=(0, 127, 128, 332))
    finally:
        torch.set_num_threads(saved)


def test_large_rows_and_threads(cpu_isa):
    # enough work to be split across threads, with rows of very different lengths
    N, K = 300, 1000
    w = torch.randn(N, K)
    mask = torch.rand(N, K) < torch.linspace(0, 1, N)[:, None]
    csr = sparsekit.formats.CSRWeight.from_dense(w, mask)
    for M in (1, 16, 40):
        x = torch.randn(M, K)
        ref = x.double() @ (w * mask).double().T
        assert_close_to_ref(csr.matmul(x), ref, x, w * mask, torch.float32)


def test_zero_sizes():
    _, _, csr = random_csr(5, 7, 0.5)
    assert csr.matmul(torch.randn(0, 7)).shape == (0, 5)
    empty_k = sparsekit.formats.CSRWeight.from_dense(torch.zeros(5, 0))
    b = torch.randn(5)
    torch.testing.assert_close(empty_k.matmul(torch.randn(3, 0), b), b.expand(3, 5))
    empty_n = sparsekit.formats.CSRWeight.from_dense(torch.zeros(0, 7))
    assert empty_n.matmul(torch.randn(3, 7)).shape == (3, 0)


def test_strided_and_batched_inputs(cpu_isa):
    w, mask, csr = random_csr(21, 40, 0.4)
    wm = w * mask
    base = torch.randn(40, 30)
    # rows apart by more than K with unit column stride (and an odd offset): x staged from its rows as they lie
    for x in (base.t(), base.t()[::3], torch.randn(6, 80)[:, ::2], torch.randn(1, 40).expand(4, 40),
              torch.randn(23, 47)[:, 5:45], torch.randn(3, 41)[:, 1:]):
        assert not x.is_contiguous() or x.stride(0) == 0
        assert_close_to_ref(csr.matmul(x), x.double() @ wm.double().T, x, wm, torch.float32)
    x3 = torch.randn(2, 3, 40)
    y3 = csr.matmul(x3)
    assert y3.shape == (2, 3, 21)
    torch.testing.assert_close(y3, csr.matmul(x3.reshape(6, 40)).reshape(2, 3, 21))
    x1 = torch.randn(40)
    torch.testing.assert_close(csr.matmul(x1), csr.matmul(x1[None])[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_and_inf_propagate(cpu_isa, dtype):
    w = torch.ones(4, 6, dtype=dtype)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 2] = mask[1, 2] = mask[2, 5] = True
    mask[3, 0] = mask[3, 1] = mask[3, 3] = True  # three kept weights: a pair and one left over beside column 2
    csr = sparsekit.formats.CSRWeight.from_dense(w, mask)
    for bad in (float("nan"), float("inf")):
        for M in (1, 3, 9, 17):
            x = torch.zeros(M, 6, dtype=dtype)
            x[:, 2] = bad
            y = csr.matmul(x)
            # rows that keep a weight in column 2 see the value; the others do not multiply it
            assert not torch.isfinite(y[:, :2]).any()
            assert torch.isfinite(y[:, 2:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    w, mask, csr = random_csr(19, 33, 0.4, dtype)
    for M, bias in ((1, True), (5, False), (17, True)):
        x = torch.randn(M, 33).to(dtype)
        b = torch.randn(19).to(dtype) if bias else None
        torch.library.opcheck(torch.ops.sparsekit.csr_mm, (x, csr.crow_indices, csr.col_indices, csr.values, 19, b))


def test_opcheck_with_grad():
    _, _, csr = random_csr(9, 12, 0.5)
    x = torch.randn(4, 12, requires_grad=True)
    b = torch.randn(9, requires_grad=True)
    torch.library.opcheck(torch.ops.sparsekit.csr_mm, (x, csr.crow_indices, csr.col_indices, csr.values, 9, b))


def test_grad_matches_dense():
    w, mask, csr = random_csr(9, 12, 0.5)
    x = torch.randn(4, 12, dtype=torch.float32, requires_grad=True)
    b = torch.randn(9, requires_grad=True)
    y = csr.matmul(x, b)
    y.square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    torch.nn.functional.linear(x2, w * mask, b2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_grad_of_values_is_refused():
    _, _, csr = random_csr(9, 12, 0.5)
    v = csr.values.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="gradients with respect to the sparse values"):
        ops.csr_mm(torch.randn(2, 12), csr.crow_indices, csr.col_indices, v, 9)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    w, mask, csr = random_csr(24, 40, 0.3)
    b = torch.randn(24)

    def f(x):
        return torch.relu(csr.matmul(x, b)) * 2

    cf = torch.compile(f, fullgraph=True, backend=backend)
    for M in (1, 5, 9):
        x = torch.randn(M, 40)
        torch.testing.assert_close(cf(x), f(x))


# ---------------------------------------------------------------------------------- bad input
def _args(**over):
    _, _, csr = random_csr(6, 10, 0.5)
    a = dict(x=torch.randn(3, 10), crow_indices=csr.crow_indices, col_indices=csr.col_indices, values=csr.values,
             out_features=6, bias=torch.randn(6))
    a.update(over)
    return a


BAD = [
    (dict(x=torch.randint(0, 5, (3, 10))), TypeError, "expected x of dtype float32 or bfloat16 or float16, got int64"),
    (dict(x=torch.randn(3, 10).double()), TypeError, "got float64"),
    (dict(x=torch.randn(3, 10).bfloat16()), TypeError, "expected values of the same dtype as x"),
    (dict(crow_indices=torch.zeros(7, dtype=torch.int64)), TypeError, "crow_indices of dtype int32"),
    (dict(crow_indices=torch.zeros(5, dtype=torch.int32)), ValueError, "crow_indices of length out_features"),
    (dict(values=torch.randn(2)), ValueError, "col_indices and values of the same length"),
    (dict(bias=torch.randn(5)), ValueError, r"expected bias of shape \(6,\)"),
    (dict(bias=torch.randn(6).half()), TypeError, "expected bias of dtype float32"),
    (dict(bias=torch.randn(6, device="meta")), ValueError, "expected bias on cpu"),
]


@pytest.mark.parametrize("over,exc,msg", BAD)
def test_bad_inputs_wrapper(over, exc, msg):
    with pytest.raises(exc, match=msg):
        ops.csr_mm(**_args(**over))


@pytest.mark.parametrize("over,exc,msg", BAD)
def test_bad_inputs_raw_op(over, exc, msg):
    # the compiled kernel checks too, with the same exception and message: a direct
    # torch.ops call must not read out of bounds
    with pytest.raises(exc, match=msg):
        torch.ops.sparsekit.csr_mm(*_args(**over).values())


@requires_ext
def test_raw_op_checks_crow_against_nnz():
    a = _args()
    crow = a["crow_indices"].clone()
    crow[-1] += 5
    with pytest.raises(ValueError, match=r"crow_indices\[-1\] == nnz"):
        torch.ops.sparsekit.csr_mm(a["x"], crow, a["col_indices"], a["values"], 6, None)


def test_bad_x_rank():
    a = _args(x=torch.tensor(1.0))
    with pytest.raises(ValueError, match="0-d tensor"):
        ops.csr_mm(**a)


# ---------------------------------------------------------------------------------- GPU
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 3, 8, 17, 33])
def test_cuda_matches_reference(dtype, M):
    run_and_check(45, 77, M, 0.3, dtype, device="cuda")


@requires_gpu
def test_cuda_opcheck():
    _, _, csr = random_csr(19, 33, 0.4, torch.float16, "cuda")
    x = torch.randn(5, 33, device="cuda", dtype=torch.float16)
    torch.library.opcheck(torch.ops.sparsekit.csr_mm, (x, csr.crow_indices, csr.col_indices, csr.values, 19, None))
