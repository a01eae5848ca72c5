"""Issue #6: no input crashes the process, corrupts memory or returns a silently wrong answer.

Bad-input coverage that the other files lack: malformed index buffers passed straight to the ops
(the compiled CPU kernels and the reference fallback raise the same error), int32 limits without
allocating, non-contiguous buffers, the NaN/Inf rule per format, truncated and mismatched saved
files, threads, the Triton autotune cache under threads, and memory over 10,000 calls.
"""
import concurrent.futures
import contextlib
import gc
import io
import os
import threading

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import formats, ops
from sparsekit.nn import SparseLinear
from sparsekit.ops import reference

from conftest import requires_ext, requires_gpu

INT32_MAX = 2**31 - 1
FORMATS = ["csr", "bsr", "bitmap", "2:4", "int8", "int8-wo", "2:4+int8"]
W8A8 = ("int8", "2:4+int8")  # activations quantized per token at run time


def _impls():
    """The compiled CPU kernel (when built) and the reference fallback; both must raise alike."""
    return [pytest.param("compiled", marks=requires_ext), "reference"]


def _content_check_impls():
    """_impls(), with the compiled CPU kernels also run with the ATen content checks that the CUDA
    bindings run (csrc/index_checks.h): both must raise the pointer checks' messages."""
    return [pytest.param("compiled", marks=requires_ext), pytest.param("compiled-aten", marks=requires_ext),
            "reference"]


@contextlib.contextmanager
def _aten_index_checks(on=True):
    """The compiled CPU ops check index contents with the ATen checks (what CUDA runs) inside."""
    sparsekit._ext.C._set_aten_index_checks(on)
    try:
        yield
    finally:
        sparsekit._ext.C._set_aten_index_checks(False)


def _call(impl, name, *args):
    if impl == "reference":
        return ops.FALLBACKS[name](*args)
    with _aten_index_checks(impl == "compiled-aten"):
        return getattr(torch.ops.sparsekit, name)(*args)


# ------------------------------------------------------------------------------------------ index buffers
def _csr(N=4, K=10):
    w = torch.randn(N, K)
    w[:, ::3] = 0
    return formats.CSRWeight.from_dense(w)


def _bsr():
    return formats.BSRWeight.from_dense(torch.randn(4, 8), blocksize=(2, 2))


def _bitmap(K=40):
    g = torch.Generator().manual_seed(K)  # the same buffers on every call
    return formats.BitmapWeight.from_dense(torch.randn(4, K, generator=g), torch.rand(4, K, generator=g) < 0.5)


def _s24():
    w = torch.randn(4, 8) * torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0])
    return formats.Sparse24Weight.from_dense(w)


def _edit(t, idx, value):
    t = t.clone()
    t[idx] = value
    return t


def _csr_args(f, crow=None, col=None):
    return ("csr_mm", torch.randn(3, f.shape[1]), f.crow_indices if crow is None else crow,
            f.col_indices if col is None else col, f.values, f.shape[0], None)


def _bsr_args(f, crow=None, col=None):
    return ("bsr_mm", torch.randn(3, 8), f.crow_indices if crow is None else crow,
            f.col_indices if col is None else col, f.values, 4, None)


def _bitmap_args(f, bitmap=None, wo=None, values=None):
    return ("bitmap_mm", torch.randn(3, f.shape[1]), f.bitmap if bitmap is None else bitmap,
            f.word_offsets if wo is None else wo, f.values if values is None else values, None)


def _s24int8_args(meta):
    q = torch.randint(-127, 128, (4, 4), dtype=torch.int8)
    return ("sparse24_int8_mm", torch.ones(3, 8, dtype=torch.int8), torch.ones(3), None, q, meta, torch.ones(4), None,
            torch.float32)


MALFORMED = [
    ("csr col past K", lambda: _csr_args(_csr(), col=_edit(_csr().col_indices, 1, 10**9)),
     r"expected col_indices in \[0, in_features = 10\), got col_indices\[1\] = 1000000000"),
    ("csr col negative", lambda: _csr_args(_csr(), col=_edit(_csr().col_indices, 0, -5)),
     r"col_indices\[0\] = -5"),
    ("csr crow decreasing", lambda: _csr_args(_csr(), crow=_edit(_csr().crow_indices, 1, 10**6)),
     r"expected non-decreasing crow_indices, got crow_indices\[2\] = \d+ < crow_indices\[1\] = 1000000"),
    ("csr crow end", lambda: _csr_args(_csr(), crow=_edit(_csr().crow_indices, -1, 0)),
     r"crow_indices\[-1\] == nnz == \d+, got 0 and 0"),
    ("bsr col past K / C", lambda: _bsr_args(_bsr(), col=_edit(_bsr().col_indices, 0, 4)),
     r"expected col_indices in \[0, in_features / C = 4\), got col_indices\[0\] = 4"),
    ("bsr crow decreasing", lambda: _bsr_args(_bsr(), crow=_edit(_bsr().crow_indices, 1, 10**6)),
     r"expected non-decreasing crow_indices"),
    ("bitmap offsets", lambda: _bitmap_args(_bitmap(64), wo=_edit(_bitmap(64).word_offsets, (0, 1), 10**6)),
     r"expected word_offsets\[0, 1\] == \d+ \(the set bits before it\), got 1000000"),
    ("bitmap more bits than values", lambda: _bitmap_args(_bitmap(64), bitmap=torch.full((4, 2), -1, dtype=torch.int32)),
     r"expected word_offsets\[0, 1\] == 32"),
    ("bitmap bits past K", lambda: _bitmap_args(_bitmap(40), bitmap=_edit(_bitmap(40).bitmap, (2, 1), -1)),
     r"expected no bits past in_features = 40 in row 2 of bitmap"),
    ("bitmap values too many", lambda: _bitmap_args(_bitmap(40), values=torch.randn(_bitmap(40).values.numel() + 3)),
     r"the bitmap keeps \d+ weights but there are \d+ values"),
    ("2:4 equal positions", lambda: ("sparse24_mm", torch.randn(3, 8), _s24().values, _edit(_s24().meta, (1, 0), 0x55),
                                     None),
     r"expected two distinct ascending positions in every group of 4 of meta, got 1 and 1 in row 1, group 0"),
    ("2:4 descending positions", lambda: ("sparse24_mm", torch.randn(3, 8), _s24().values,
                                          _edit(_s24().meta, (0, 0), 0x21), None), r"got 1 and 0 in row 0, group 0"),
    ("2:4+int8 meta", lambda: _s24int8_args(torch.zeros(4, 1, dtype=torch.uint8)), r"got 0 and 0 in row 0, group 0"),
    ("2:4+int8 linear meta", lambda: ("sparse24_int8_linear", torch.randn(3, 8), _s24int8_args(None)[4],
                                      _edit(torch.full((4, 1), 0x44, dtype=torch.uint8), (2, 0), 0x47), torch.ones(4),
                                      None), r"got 3 and 1 in row 2, group 0"),
]


@pytest.mark.parametrize("impl", _content_check_impls())
@pytest.mark.parametrize("what,args,msg", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_index_buffers_raise_before_any_read(impl, what, args, msg):
    # these read out of bounds (segfault) or silently disagreed with the reference before the checks
    name, *a = args()
    with pytest.raises(ValueError, match=rf"sparsekit\.{name}: .*{msg}"):
        _call(impl, name, *a)


@pytest.mark.parametrize("impl", _content_check_impls())
def test_malformed_buffers_are_checked_for_an_empty_batch_too(impl):
    name, *a = _csr_args(_csr(), col=_edit(_csr().col_indices, 0, 99))
    a[0] = torch.randn(0, 10)
    with pytest.raises(ValueError, match="expected col_indices in"):
        _call(impl, name, *a)


def _corrupt_randomly(t, g, lo, hi, entries):
    """t with `entries` random elements set to random values in [lo, hi)."""
    t = t.clone()
    flat = t.view(-1)
    for i in torch.randint(flat.numel(), (entries,), generator=g).tolist():
        flat[i] = int(torch.randint(lo, hi, (1,), generator=g))
    return t


def _random_corruption(seed):
    """Op arguments with one index buffer randomly corrupted (or, by chance, still valid)."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 4, (1,), generator=g))
    kind = seed % 7
    if kind < 2:
        f = _csr()
        return _csr_args(f, col=_corrupt_randomly(f.col_indices, g, -2, 14, n)) if kind == 0 else \
            _csr_args(f, crow=_corrupt_randomly(f.crow_indices, g, -1, 12, n))
    if kind < 4:
        f = _bsr()
        return _bsr_args(f, col=_corrupt_randomly(f.col_indices, g, -1, 6, n)) if kind == 2 else \
            _bsr_args(f, crow=_corrupt_randomly(f.crow_indices, g, -1, 10, n))
    if kind < 6:
        f = _bitmap(40 + 24 * (seed % 2))
        return _bitmap_args(f, bitmap=_corrupt_randomly(f.bitmap, g, -2**31, 2**31 - 1, n)) if kind == 4 else \
            _bitmap_args(f, wo=_corrupt_randomly(f.word_offsets, g, 0, 80, n))
    f = _s24()
    return "sparse24_mm", torch.randn(3, 8), f.values, _corrupt_randomly(f.meta, g, 0, 256, n), None


def _outcome(impl, name, args):
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]  # no remembered check shared
    try:
        _call(impl, name, *args)
        return None
    except ValueError as e:
        return str(e).splitlines()[0]


@requires_ext
@pytest.mark.parametrize("seed", range(70))
def test_pointer_aten_and_python_checks_agree_on_random_corruptions(seed):
    name, *a = _random_corruption(seed)
    pointer, aten, python = (_outcome(impl, name, a) for impl in ("compiled", "compiled-aten", "reference"))
    assert pointer == aten == python


# The compiled CPU kernels check index contents once per buffer (a pass over them costs as much as the
# matmul at M = 1) and remember it while the buffer is alive and unchanged (version counter, data
# pointer): an in-place write to a checked buffer must be seen on the next call.
IN_PLACE = [
    ("csr col", lambda: _csr(), lambda f: _csr_args(f)[1:], lambda f: f.col_indices.__setitem__(1, 10**9),
     "expected col_indices in"),
    ("csr crow", lambda: _csr(), lambda f: _csr_args(f)[1:], lambda f: f.crow_indices.__setitem__(1, 10**6),
     "expected non-decreasing crow_indices"),
    ("bsr col", lambda: _bsr(), lambda f: _bsr_args(f)[1:], lambda f: f.col_indices.__setitem__(0, 4),
     "expected col_indices in"),
    ("bitmap offsets", lambda: _bitmap(64), lambda f: _bitmap_args(f)[1:],
     lambda f: f.word_offsets.__setitem__((0, 1), 10**6), "expected word_offsets"),
    ("bitmap bits (copy_)", lambda: _bitmap(40), lambda f: _bitmap_args(f)[1:],
     lambda f: f.bitmap.copy_(torch.full_like(f.bitmap, -1)), "expected no bits past in_features"),
    ("2:4 meta", lambda: _s24(), lambda f: (torch.randn(3, 8), f.values, f.meta, None),
     lambda f: f.meta.fill_(0x55), "expected two distinct ascending positions"),
]


def _in_place_op(what):
    return {"csr": "csr_mm", "bsr": "bsr_mm", "bitmap": "bitmap_mm", "2:4": "sparse24_mm"}[what.split()[0]]


def _call_check_corrupt_call(op, f, args, corrupt, msg):
    a = args(f)
    ok = op(*a)
    assert torch.equal(op(*a), ok)  # the second call takes the remembered check
    corrupt(f)
    with pytest.raises(ValueError, match=msg):
        op(*a)


@requires_ext
@pytest.mark.parametrize("checks", ["pointer", "aten"])
@pytest.mark.parametrize("what,make,args,corrupt,msg", IN_PLACE, ids=[c[0] for c in IN_PLACE])
def test_a_checked_buffer_written_in_place_is_checked_again(what, make, args, corrupt, msg, checks):
    with _aten_index_checks(checks == "aten"):
        _call_check_corrupt_call(getattr(torch.ops.sparsekit, _in_place_op(what)), make(), args, corrupt, msg)


@requires_ext
def test_a_checked_buffer_swapped_through_data_is_checked_again():
    f = _csr()
    a = list(_csr_args(f)[1:])
    torch.ops.sparsekit.csr_mm(*a)
    bad = _edit(f.col_indices, 0, 99)
    a[2].data = bad  # new storage under the same tensor object
    with pytest.raises(ValueError, match="expected col_indices in"):
        torch.ops.sparsekit.csr_mm(*a)


@requires_ext
def test_inference_tensors_are_checked_on_every_call():
    with torch.inference_mode():
        f = _csr()
        a = _csr_args(f)[1:]
        torch.ops.sparsekit.csr_mm(*a)
        f.col_indices[1] = 10**9  # no version counter to see this: the check runs again
        with pytest.raises(ValueError, match="expected col_indices in"):
            torch.ops.sparsekit.csr_mm(*a)


# The Triton launchers (sparsekit/triton) remember passed content checks in Python, by the same rule.
def _py_checked_once_counter():
    from sparsekit.ops import _checked_once

    calls = []
    a, b = torch.zeros(4, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)
    return _checked_once, calls, a, b, lambda params=(4,): _checked_once.run("test.op", (a, b), params,
                                                                            lambda: calls.append(1))


def test_python_checked_once_remembers_unchanged_buffers_only():
    _, calls, a, b, run = _py_checked_once_counter()
    run(), run()
    assert len(calls) == 1
    a[0] = 1  # in-place write: version counter
    run(), run()
    assert len(calls) == 2
    b.data = torch.zeros(3, dtype=torch.int32)  # new storage under the same tensor
    run()
    assert len(calls) == 3
    run(params=(5,))  # other shape parameters: another check
    assert len(calls) == 4


def test_python_checked_once_forgets_a_failed_check_and_rechecks_inference_tensors():
    from sparsekit.ops import _checked_once

    t = torch.zeros(2)

    def fail():
        raise ValueError("bad")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            _checked_once.run("test.fail", (t,), (), fail)
    with torch.inference_mode():
        u = torch.zeros(2)
    calls = []
    for _ in range(2):
        _checked_once.run("test.inference", (u,), (), lambda: calls.append(1))
    assert len(calls) == 2


def test_python_checked_once_is_bounded_and_thread_safe():
    from sparsekit.ops import _checked_once

    keep = [torch.zeros(1) for _ in range(_checked_once.MAX_ENTRIES + 10)]  # alive: eviction must clear
    for t in keep:
        _checked_once.run("test.bound", (t,), (), lambda: None)
    assert _checked_once.size() <= _checked_once.MAX_ENTRIES
    _, calls, a, b, run = _py_checked_once_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # list() re-raises what a worker raised
        list(pool.map(lambda _: [run() for _ in range(200)], range(8)))
    assert 1 <= len(calls) <= 8  # threads may race to the first check, never past it


# ------------------------------------------------------------------------------------------ CUDA index checks
# The CUDA bindings check index contents with ATen ops once per buffer (csrc/cuda/checked_once_cuda.h);
# the Triton launchers with the Python checks (sparsekit/ops/_checked_once.py). Same messages as on CPU.
def _cuda(args):
    return tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)  # .cuda() of a CUDA tensor: itself


def _cuda_backends(name):
    return ("compiled", "triton") if name in ("bitmap_mm", "bsr_mm") else ("compiled",)


def _use_cuda_backend(monkeypatch, name, backend):
    """Route `name` on CUDA to the compiled kernel or to Triton (restored after the test)."""
    import sparsekit.triton as st

    if name not in st._AUTO_MAX_M:
        return
    if backend == "triton" and not st.registered():
        pytest.skip("the Triton kernels are not registered")
    monkeypatch.setitem(st._backend, name, st._backend[name])
    st.set_backend(name, backend)


GPU_MALFORMED = [pytest.param(what, args, msg, backend, id=f"{what}-{backend}")
                 for what, args, msg in MALFORMED for backend in _cuda_backends(args()[0])]


@requires_gpu
@pytest.mark.parametrize("what,args,msg,backend", GPU_MALFORMED)
def test_malformed_index_buffers_raise_on_cuda_too(what, args, msg, backend, monkeypatch):
    name, *a = args()
    _use_cuda_backend(monkeypatch, name, backend)
    with pytest.raises(ValueError, match=rf"sparsekit\.{name}: .*{msg}"):
        getattr(torch.ops.sparsekit, name)(*_cuda(a))


class _OnCuda:
    """A format's index buffers and values on CUDA, as attributes (what IN_PLACE's lambdas read)."""

    def __init__(self, f):
        self.shape = f.shape
        for k in ("crow_indices", "col_indices", "values", "bitmap", "word_offsets", "meta"):
            if hasattr(f, k):
                setattr(self, k, getattr(f, k).cuda())


@requires_gpu
@pytest.mark.parametrize("what,make,args,corrupt,msg,backend",
                         [pytest.param(*c, b, id=f"{c[0]}-{b}") for c in IN_PLACE for b in _cuda_backends(_in_place_op(c[0]))])
def test_a_checked_cuda_buffer_written_in_place_is_checked_again(what, make, args, corrupt, msg, backend, monkeypatch):
    name = _in_place_op(what)
    _use_cuda_backend(monkeypatch, name, backend)
    _call_check_corrupt_call(getattr(torch.ops.sparsekit, name), _OnCuda(make()), lambda f: _cuda(args(f)), corrupt,
                             msg)


CAPTURE = [pytest.param(what, make, args, b, id=f"{what}-{b}") for what, make, args, *_ in IN_PLACE
           if what in ("csr col", "bsr col", "bitmap offsets", "2:4 meta") for b in _cuda_backends(_in_place_op(what))]


@requires_gpu
@pytest.mark.filterwarnings("ignore:The CUDA Graph is empty")  # the refused capture records nothing
@pytest.mark.parametrize("what,make,args,backend", CAPTURE)
def test_cuda_graph_capture_needs_index_buffers_checked_before(what, make, args, backend, monkeypatch):
    name = _in_place_op(what)
    _use_cuda_backend(monkeypatch, name, backend)
    op = getattr(torch.ops.sparsekit, name)
    f = _OnCuda(make())
    a = _cuda(args(f))
    # an unchecked buffer: the check would sync the device, illegal during capture
    with pytest.raises(RuntimeError, match="call the op once before capturing a CUDA graph"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            op(*a)
    expected = op(*a)  # checks the buffers (and tunes Triton) outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = op(*a)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, expected)


# ------------------------------------------------------------------------------------------ int32 limits
def _huge(n, dtype=torch.float32):
    """A 1-d tensor of n elements backed by one (stride 0): the sizes without the memory."""
    return torch.zeros(1, dtype=dtype).expand(n)


def _i8(rows, cols):
    """An int8 (rows, cols) of zeros backed by one element (stride 0)."""
    return torch.zeros(1, 1, dtype=torch.int8).expand(rows, cols)


LIMITS = [
    ("csr_mm", lambda: (torch.zeros(2, 1).expand(2, INT32_MAX + 1), torch.zeros(3, dtype=torch.int32),
                        torch.zeros(0, dtype=torch.int32), torch.zeros(0), 2, None),
     r"in_features 2147483648 exceeds the int32 index range"),
    ("csr_mm", lambda: (torch.zeros(2, 8), torch.zeros(3, dtype=torch.int32), _huge(INT32_MAX + 1, torch.int32),
                        _huge(INT32_MAX + 1), 2, None), r"nnz 2147483648 exceeds the int32 index range"),
    ("bsr_mm", lambda: (torch.zeros(2, 1).expand(2, 2 * INT32_MAX + 2), torch.zeros(2, dtype=torch.int32),
                        torch.zeros(0, dtype=torch.int32), torch.zeros(0, 2, 2), 2, None),
     r"in_features 4294967296 exceeds the int32 index range"),
    ("bitmap_mm", lambda: (torch.zeros(2, 1).expand(2, INT32_MAX + 1), torch.zeros(2, 1, dtype=torch.int32),
                           torch.zeros(2, 1, dtype=torch.int32), torch.zeros(0), None),
     r"in_features 2147483648 exceeds the int32 index range"),
    ("bitmap_mm", lambda: (torch.zeros(2, 32), torch.zeros(2, 1, dtype=torch.int32),
                           torch.zeros(2, 1, dtype=torch.int32), _huge(INT32_MAX + 1), None),
     r"expected 1-d values with nnz < 2\*\*31"),
    ("sparse24_mm", lambda: (torch.zeros(2, 1).expand(2, INT32_MAX + 1), torch.zeros(2, 1).expand(2, 2**30),
                             torch.zeros(2, 1, dtype=torch.uint8), None),
     r"in_features 2147483648 exceeds the int32 index range"),
    # int32 sums of int8 products: at most 131071 = (2**31 - 1) // 128**2 products per output
    ("int8_gemm_i32", lambda: (_i8(2, 131072), _i8(3, 131072)),
     r"expected in_features <= 131071 \(past it the int32 sums of int8 products can overflow\), got 131072"),
    ("int8_mm", lambda: (_i8(2, 131072), torch.ones(2), None, _i8(3, 131072), torch.ones(3), None, torch.float32),
     r"expected in_features <= 131071 .*, got 131072"),
    ("sparse24_int8_mm", lambda: (_i8(2, 262144), torch.ones(2), None, _i8(3, 131072),
                                  torch.zeros(3, 1, dtype=torch.uint8).expand(3, 32768), torch.ones(3), None,
                                  torch.float32),
     r"expected in_features <= 262142 .*, got 262144"),
    ("int8_linear", lambda: (torch.zeros(2, 1).expand(2, 131072), _i8(3, 131072), torch.ones(3), None),
     r"expected in_features <= 131071 .*, got 131072"),
    ("sparse24_int8_linear", lambda: (torch.zeros(2, 1).expand(2, 262144), _i8(3, 131072),
                                      torch.zeros(3, 1, dtype=torch.uint8).expand(3, 32768), torch.ones(3), None),
     r"expected in_features <= 262142 .*, got 262144"),
]


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("name,args,msg", LIMITS)
def test_int32_limits_are_refused_before_the_kernel(impl, name, args, msg):
    with pytest.raises(ValueError, match=rf"sparsekit\.{name}: {msg}"):
        _call(impl, name, *args())


def test_int32_limits_of_the_packers():
    mask = torch.zeros(1, 1, dtype=torch.bool).expand(1, INT32_MAX + 1)
    with pytest.raises(ValueError, match="in_features 2147483648 exceeds the int32 index range"):
        formats.CSRWeight.from_dense(torch.zeros(1, 1).expand(1, INT32_MAX + 1), mask)


# ------------------------------------------------------------------------------------------ strides
def _strided(t, dim):
    """The same values in a non-contiguous tensor: every other slice of a larger one along `dim`."""
    shape = list(t.shape)
    shape[dim] *= 2
    big = torch.zeros(shape, dtype=t.dtype).transpose(0, dim)
    big[::2] = t.transpose(0, dim)
    return big[::2].transpose(0, dim)


def _op_cases():
    torch.manual_seed(1)
    x = torch.randn(5, 16)
    b = torch.randn(8)
    csr, bsr = formats.CSRWeight.from_dense(torch.randn(8, 16) * (torch.rand(8, 16) < 0.4)), \
        formats.BSRWeight.from_dense(torch.randn(8, 16), blocksize=(2, 4))
    bm = formats.BitmapWeight.from_dense(torch.randn(8, 16), torch.rand(8, 16) < 0.4)
    s24 = formats.Sparse24Weight.from_dense(torch.randn(8, 16).reshape(8, 4, 4).mul(
        torch.tensor([1.0, 0, 0, 1])).reshape(8, 16))
    q, s, _ = ops.quantize_per_token(x)
    wq = torch.randint(-127, 128, (8, 16), dtype=torch.int8)
    s8 = formats.get("2:4+int8").from_dense(s24.to_dense())
    return {
        "csr_mm": (x, csr.crow_indices, csr.col_indices, csr.values, 8, b),
        "bsr_mm": (x, bsr.crow_indices, bsr.col_indices, bsr.values, 8, b),
        "bitmap_mm": (x, bm.bitmap, bm.word_offsets, bm.values, b),
        "sparse24_mm": (x, s24.values, s24.meta, b),
        "int8_gemm_i32": (q, wq),
        "quantize_per_token": (x, False),
        "int8_mm": (q, s, torch.randint(-3, 3, (5,), dtype=torch.int32), wq, torch.rand(8), b, torch.float32),
        "int8_weight_only_mm": (x, wq, torch.rand(8), b),
        "sparse24_int8_mm": (q, s, None, s8.values, s8.meta, s8.scale, b, torch.float32),
        "int8_linear": (x, wq, torch.rand(8), b),
        "sparse24_int8_linear": (x, s8.values, s8.meta, s8.scale, b),
    }


@pytest.mark.parametrize("name", list(_op_cases()))
def test_every_tensor_argument_may_be_non_contiguous(name):
    args = _op_cases()[name]
    want = ops.FALLBACKS[name](*args)
    for i, a in enumerate(args):
        for dim in range(a.dim() if isinstance(a, torch.Tensor) else 0):
            if a.shape[dim] < 2:
                continue
            bent = list(args)
            bent[i] = _strided(a, dim)
            assert not bent[i].is_contiguous() and torch.equal(bent[i], a)
            got = getattr(torch.ops.sparsekit, name)(*bent)
            for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=f"argument {i} strided along {dim}")


# ------------------------------------------------------------------------------------------ zero sizes
def _layer(fmt, N, K, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    mask = _mask(fmt, N, K)
    with torch.no_grad():
        lin.weight.mul_(mask)
    opts = {"blocksize": (2, 4)} if fmt == "bsr" else {}
    return lin, mask, SparseLinear.from_linear(lin, mask, format=fmt, **opts)


def _mask(fmt, N, K):
    if fmt in ("2:4", "2:4+int8"):
        keep = torch.zeros(N, K // 4, 4, dtype=torch.bool)
        keep.scatter_(2, torch.rand(N, K // 4, 4).topk(2, dim=-1).indices, True)
        return keep.reshape(N, K)
    if fmt == "bsr":
        return (torch.rand(N // 2, K // 4) < 0.5).repeat_interleave(2, 0).repeat_interleave(4, 1)
    if fmt in ("int8", "int8-wo"):
        return torch.ones(N, K, dtype=torch.bool)
    return torch.rand(N, K) < 0.4


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M,N,K", [(0, 8, 16), (3, 0, 16), (3, 8, 0), (0, 0, 0)])
def test_zero_sizes_every_format(fmt, M, N, K):
    lin, _, sl = _layer(fmt, N, K)
    x = torch.randn(M, K)
    y = sl(x)
    assert y.shape == (M, N) and y.dtype == x.dtype
    tol = 0.1 if "int8" in fmt else 1e-5
    torch.testing.assert_close(y, lin(x), rtol=tol, atol=tol)
    if K == 0:  # nothing to sum: the bias alone, exactly
        assert torch.equal(y, lin.bias.expand(M, N))


# ------------------------------------------------------------------------------------------ NaN / Inf
# The rule: a NaN or Inf in x reaches every output that uses it through a kept weight; pruned
# weights are structural zeros (as in torch.sparse), so it reaches no other output. The int8
# formats store every weight (int8-wo propagates like dense), and W8A8 quantizes the whole token:
# a token holding NaN/Inf gives NaN in every output of that token.
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
# M = 1 and 4 with K = 80 (the kernels without a column list: bitmap at M = 1 on AVX2 / AVX-512 and by rows
# on AVX-512), x by rows and with a column stride (the finiteness check on the staged copy)
@pytest.mark.parametrize("M,K,layout", [(4, 16, "rows"), (1, 80, "rows"), (4, 80, "rows"), (4, 80, "strided"),
                                        (1, 80, "strided")])
def test_non_finite_x_reaches_exactly_the_outputs_of_its_kept_weights(fmt, bad, M, K, layout):
    lin, mask, sl = _layer(fmt, 8, K)
    x = torch.randn(M, K)
    poisoned = torch.zeros(M, K, dtype=torch.bool)
    poisoned[1 % M, 3] = poisoned[2 % M, K - 6] = True
    x[poisoned] = bad
    if layout == "strided":
        x = torch.stack([x, x], 2).reshape(M, 2 * K)[:, ::2]
        assert x.stride(1) == 2
    y = sl(x)
    if fmt in W8A8:
        expect = poisoned.any(1, keepdim=True).expand(M, 8)
        assert torch.isnan(y[expect]).all()
    else:
        kept = torch.ones_like(mask) if fmt == "int8-wo" else mask
        expect = (poisoned.float() @ kept.float().T) > 0
    assert torch.equal(~torch.isfinite(y), expect), (fmt, expect, y)


def _rebuild(lin, mask, fmt):
    return SparseLinear.from_linear(lin, mask, format=fmt, **({"blocksize": (2, 4)} if fmt == "bsr" else {}))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_bias_reaches_its_output_only(fmt, bad):
    lin, mask, _ = _layer(fmt, 8, 16)
    with torch.no_grad():
        lin.bias[6] = bad
    y = _rebuild(lin, mask, fmt)(torch.randn(3, 16))
    expect = torch.zeros(3, 8, dtype=torch.bool)
    expect[:, 6] = True
    assert torch.equal(~torch.isfinite(y), expect)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if "int8" not in f])
def test_non_finite_kept_weight_reaches_its_output_only(fmt):
    lin, mask, _ = _layer(fmt, 8, 16)
    r, c = [int(i) for i in mask.nonzero()[5]]
    with torch.no_grad():
        lin.weight[r, c] = float("nan")
    y = _rebuild(lin, mask, fmt)(torch.randn(3, 16))
    expect = torch.zeros(3, 8, dtype=torch.bool)
    expect[:, r] = True
    assert torch.equal(torch.isnan(y), expect)


@pytest.mark.parametrize("fmt", ["int8", "int8-wo", "2:4+int8"])
def test_int8_formats_refuse_a_non_finite_weight(fmt):
    lin, mask, _ = _layer(fmt, 8, 16)
    r, c = [int(i) for i in mask.nonzero()[3]]
    with torch.no_grad():
        lin.weight[r, c] = float("nan")
    # the position is the weight's for int8 / int8-wo, the packed values' for 2:4+int8
    with pytest.raises(ValueError, match=r"cannot quantize a weight holding NaN or Inf to int8 \(weight\[\d+, \d+\] = nan\)"):
        SparseLinear.from_linear(lin, mask, format=fmt)


@pytest.mark.parametrize("impl", ["compiled", "reference"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("K", [3, 8, 37])  # below, at and past the 8-wide vector loop
def test_quantize_per_token_marks_non_finite_rows_nan(impl, symmetric, K):
    if impl == "compiled" and not sparsekit._ext.available():
        pytest.skip("needs the compiled extension")
    x = torch.randn(4, K)
    x[0, K - 1] = float("nan")
    x[2, 0] = float("inf")
    x[3, K // 2] = -float("inf")
    q, s, z = _call(impl, "quantize_per_token", x, symmetric)
    assert torch.isnan(s[[0, 2, 3]]).all() and torch.isfinite(s[1])
    assert not q[[0, 2, 3]].any() and not z[[0, 2, 3]].any()
    ref = reference.quantize_per_token(x[1:2], symmetric)
    assert torch.equal(q[1:2], ref[0]) and torch.equal(s[1:2], ref[1]) and torch.equal(z[1:2], ref[2])


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_asymmetric_quantization_of_a_finite_row_spanning_past_float32_max(impl):
    if impl == "compiled" and not sparsekit._ext.available():
        pytest.skip("needs the compiled extension")
    x = torch.tensor([[3e38, -3e38, 1e38, 0.0, -2e38, 5e37, 3e38, -1e38, 7.0]])
    q, s, z = _call(impl, "quantize_per_token", x, False)
    assert torch.isfinite(s).all() and s.item() > 0  # (hi - lo) / 255 would be inf: every q the same
    deq = (q.double() - z.double()[:, None]) * s.double()[:, None]
    assert (deq - x.double()).abs().max() <= s.double().item()
    assert torch.equal(q, reference.quantize_per_token(x, False)[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_finite_in_finite_out_near_the_float32_limit(fmt):
    # sums near 1e31 are far from float32's max (3.4e38): no kernel may overflow on the way
    lin, _, sl = _layer(fmt, 8, 16)
    x = torch.randn(5, 16) * 1e30
    y = sl(x)
    w = sl.to_dense().double()
    ref = x.double() @ w.T + lin.bias.double()
    assert torch.isfinite(y).all()
    scale = x.double().abs() @ w.abs().T  # the error bound scales with the sum's magnitude
    assert ((y.double() - ref).abs() / scale).max() <= (0.02 if fmt in W8A8 else 1e-5)


# ------------------------------------------------------------------------------------------ save / load
def _model(fmt, seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8))
    masks = {n: _mask(fmt, 8, l.in_features) for n, l in (("0", m[0]), ("2", m[2]))}
    sparsekit.apply_masks(m, masks)
    opts = {"blocksize": (2, 4)} if fmt == "bsr" else {}
    return sparsekit.convert(m, sparsekit.SparseConfig(fmt, **opts), masks=masks)


def _bits(sd):
    return {k: v.view(torch.uint8) if v.is_floating_point() else v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _assert_same_bits(a, b):
    ba, bb = _bits(a.state_dict()), _bits(b.state_dict())
    assert ba.keys() == bb.keys()
    for k in ba:
        assert ba[k].dtype == bb[k].dtype and torch.equal(ba[k], bb[k]), k


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_bit_exact_with_signed_zeros_and_subnormals(fmt, tmp_path):
    src = _model(fmt, 1)
    with torch.no_grad():  # values that compare equal but differ in bits, and subnormals
        v = src[0].values if "values" in src[0]._buffers else src[0].scale
        if v.is_floating_point():
            v[0] = -0.0
            v[-1] = 1e-40
        src[0].bias[0] = -0.0
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    dst = _model(fmt, 2)
    dst.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    _assert_same_bits(src, dst)
    pytest.importorskip("safetensors")
    sparsekit.save_safetensors(src, str(tmp_path / "m.safetensors"))
    dst = _model(fmt, 3)
    sparsekit.load_safetensors(dst, str(tmp_path / "m.safetensors"))
    _assert_same_bits(src, dst)


@pytest.mark.parametrize("fmt", ["csr", "2:4+int8"])
def test_a_truncated_torch_save_file_fails_and_leaves_the_model_as_it_was(fmt):
    src, dst = _model(fmt, 1), _model(fmt, 2)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    data = buf.getvalue()
    x = torch.randn(3, 16)
    before = dst(x)
    for cut in (0, 10, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        with pytest.raises((RuntimeError, EOFError, ValueError)):
            dst.load_state_dict(torch.load(io.BytesIO(data[:cut]), weights_only=True))
        assert torch.equal(dst(x), before)


@pytest.mark.parametrize("fmt", ["bitmap", "int8"])
def test_a_truncated_safetensors_file_fails_clearly_and_loads_nothing(fmt, tmp_path):
    pytest.importorskip("safetensors")
    src, dst = _model(fmt, 1), _model(fmt, 2)
    path = tmp_path / "m.safetensors"
    sparsekit.save_safetensors(src, str(path))
    data = path.read_bytes()
    x = torch.randn(3, 16)
    before = dst(x)
    for cut in (0, 5, 8, 60, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(RuntimeError, match="not a complete safetensors file .*; nothing was loaded"):
            sparsekit.load_safetensors(dst, str(tmp_path / "cut.safetensors"))
        assert torch.equal(dst(x), before)


@pytest.mark.parametrize("key,value,msg", [
    ("module_version", 7, r"saved module version 7, this sparsekit reads version 1"),
    ("format_version", 0, r"saved bsr layout version 0, this sparsekit reads version 1"),
])
def test_another_version_names_both_versions(key, value, msg):
    src, dst = _model("bsr", 1), _model("bsr", 2)
    sd = src.state_dict()
    sd["0._extra_state"] = dict(sd["0._extra_state"], **{key: value})
    with pytest.raises(RuntimeError, match=msg):
        dst.load_state_dict(sd)


@pytest.mark.parametrize("fmt,layer,edit,msg", [
    ("csr", 0, lambda sd: sd.pop("0.values"), r"Missing key\(s\) in state_dict: \"0.values\""),
    ("csr", 0, lambda sd: sd.__setitem__("0.col_indices", sd["0.col_indices"].long()),
     r"0.col_indices: expected a tensor of dtype torch.int32, got torch.int64"),
    ("bitmap", 0, lambda sd: sd.__setitem__("0.word_offsets", sd["0.word_offsets"][:, :0].clone()),
     r"0: inconsistent sparse buffers: BitmapWeight: expected bitmap and word_offsets of shape"),
    ("2:4", 2, lambda sd: sd.__setitem__("2.meta", torch.zeros_like(sd["2.meta"])),
     r"2: inconsistent sparse buffers: .*distinct and ascending"),
    ("int8", 0, lambda sd: sd.__setitem__("0.scale", sd["0.scale"][:-1].clone()),
     r"0: inconsistent sparse buffers: Int8Weight: expected float32 scale of shape \(8,\)"),
])
def test_mismatched_buffers_fail_clearly_and_keep_the_layer_intact(fmt, layer, edit, msg):
    src, dst = _model(fmt, 1), _model(fmt, 2)
    sd = dict(src.state_dict())
    edit(sd)
    layer = dst[layer]
    before = {n: b.clone() for n, b in layer._buffers.items()}
    with pytest.raises(RuntimeError, match=msg):
        dst.load_state_dict(sd)
    # the failing layer keeps its own consistent buffers, never a mix (torch.nn still loads the other layers)
    assert all(torch.equal(layer._buffers[n], b) for n, b in before.items())
    layer(torch.randn(3, layer.in_features))


# ------------------------------------------------------------------------------------------ threads
def _run_threads(n, work):
    errors, start = [], threading.Barrier(n)

    def body(i):
        try:
            start.wait()
            work(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def _forward_threads_match_serial(device):
    layers = {fmt: _layer(fmt, 64, 128)[2].to(device) for fmt in FORMATS}
    xs = [torch.randn(M, 128, device=device) for M in (1, 5, 33)]
    serial = {fmt: [sl(x) for x in xs] for fmt, sl in layers.items()}
    bad = []

    def work(i):
        for _ in range(5):
            for fmt, sl in layers.items():
                for j, x in enumerate(xs):
                    if not torch.equal(sl(x), serial[fmt][j]):
                        bad.append((i, fmt, j))

    _run_threads(8, work)
    assert not bad, bad[:5]


def test_forward_from_8_threads_matches_serial_cpu():
    _forward_threads_match_serial("cpu")


@requires_gpu
def test_forward_from_8_threads_matches_serial_gpu():
    _forward_threads_match_serial("cuda")


def test_autotune_cache_measures_each_key_once_under_threads(tmp_path, monkeypatch):
    from sparsekit.triton import autotune

    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "_disk", {})
    calls, lock = [], threading.Lock()
    candidates = [{"BLOCK": b} for b in (16, 32, 64)]

    def measure(key):
        def fake(cfg):  # a fake timing: the same for a key whatever the thread; BLOCK 32 wins
            with lock:
                calls.append((key, cfg["BLOCK"]))
            threading.Event().wait(0.002)  # widen the window in which another thread could enter
            return abs(cfg["BLOCK"] - 32) + 1.0
        return fake

    keys = [(M, 128, "float16") for M in (1, 2, 4, 8)]
    got = {}

    def work(i):
        for k in keys:
            got.setdefault(k, []).append(autotune.select("fake_op", k, "fakedev", candidates, measure(k))["BLOCK"])

    before = dict(autotune.stats)
    _run_threads(8, work)
    assert all(v == [32] * 8 for v in got.values()), got
    assert sorted(calls) == sorted((k, c["BLOCK"]) for k in keys for c in candidates)  # once per key and candidate
    assert autotune.stats["measured"] - before["measured"] == len(keys)
    disk = autotune._read(autotune.cache_file("fakedev"))
    assert {autotune._disk_key("fake_op", k) for k in keys} <= disk.keys()  # no thread's write lost another's


# ------------------------------------------------------------------------------------------ memory
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.parametrize("fmt", FORMATS)
def test_10000_forward_calls_leave_memory_flat_cpu(fmt):
    from sparsekit.triton import autotune

    _, _, sl = _layer(fmt, 16, 32)
    x = torch.randn(2, 32)
    with torch.no_grad():
        for _ in range(2000):  # warm up allocator pools (after 200, the first format of a long run grew by up to 10 MB)
            sl(x)
        gc.collect()
        rss, objects = _rss_bytes(), len(gc.get_objects())
        tables = {op: len(t) for op, t in autotune._tables.items()}
        for _ in range(10_000):
            sl(x)
        gc.collect()
    assert _rss_bytes() - rss < 8 << 20
    assert len(gc.get_objects()) - objects < 200  # no Python-side cache grows with calls
    assert {op: len(t) for op, t in autotune._tables.items()} == tables


@requires_gpu
@pytest.mark.parametrize("fmt", FORMATS)
def test_10000_forward_calls_leave_memory_flat_gpu(fmt):
    _, _, sl = _layer(fmt, 16, 32)
    sl = sl.cuda()
    x = torch.randn(2, 32, device="cuda")
    with torch.no_grad():
        for _ in range(200):
            sl(x)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(10_000):
            sl(x)
        torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 1 << 20
