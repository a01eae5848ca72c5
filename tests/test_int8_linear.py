"""Issue 19: the one-call W8A8 linears (int8_linear, sparse24_int8_linear): per-token quantization and the int8
product in one op. On the CPU they are bit for bit the two-op composition they replace (quantize_per_token, then
int8_mm / sparse24_int8_mm); the compiled kernel and the Python checks raise the same errors in the same order."""
import re

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import formats, ops
from sparsekit.nn import SparseLinear
from sparsekit.ops import reference

from conftest import requires_ext
from helpers import assert_close_to_ref

FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def _mask24(N, K, g):
    keep = torch.rand(N, K // 4, 4, generator=g).topk(2, dim=-1).indices
    return torch.zeros(N, K // 4, 4, dtype=torch.bool).scatter_(2, keep, True).reshape(N, K)


def _case(op, M, N, K, dtype, bias, seed=0):
    """(args of the op, the two-op composition's result, the dense dequantized weight)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    w = torch.randn(N, K, generator=g)
    if op == "int8_linear":
        wq, ws = formats.quantize_rows(w)
        args = (x, wq, ws, b)
        q, s, _ = torch.ops.sparsekit.quantize_per_token(x, True)
        composed = torch.ops.sparsekit.int8_mm(q, s, None, wq, ws, b, dtype)
        dense = wq.double() * ws.double()[:, None]
    else:
        f = formats.Sparse24Int8Weight.from_dense(w, _mask24(N, K, g))
        args = (x, f.values, f.meta, f.scale, b)
        q, s, _ = torch.ops.sparsekit.quantize_per_token(x, True)
        composed = torch.ops.sparsekit.sparse24_int8_mm(q, s, None, f.values, f.meta, f.scale, b, dtype)
        dense = f.to_dense().double()
    return args, composed, dense


OPS = ["int8_linear", "sparse24_int8_linear"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("M", [0, 1, 3, 17])
@pytest.mark.parametrize("K", [12, 37, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_one_call_is_the_two_call_composition_bit_for_bit(cpu_isa, op, dtype, M, K, bias):
    if op == "sparse24_int8_linear" and K % 4:
        K += 4 - K % 4  # 2:4 needs in_features % 4 == 0
    args, composed, dense = _case(op, M, 13, K, dtype, bias, seed=M * 100 + K)
    y = getattr(torch.ops.sparsekit, op)(*args)
    assert y.shape == (M, 13) and y.dtype == dtype
    assert torch.equal(y, composed)
    # and the reference (its own quantization and product) within the int8 product's tolerance
    ref = getattr(reference, op)(*args)
    assert ref.dtype == dtype
    torch.testing.assert_close(y.double(), ref.double(), rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-2)
    x = args[0]
    want = x.double() @ dense.T + (args[-1].double() if bias else 0)
    if M:  # the quantized product against the float one: W8A8's own error, bounded per output
        err = (y.double() - want).abs() / (x.abs().double() @ dense.abs().T + 1)
        assert err.max() < 0.05


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("threads", [1, 2])
def test_large_enough_to_split_across_threads(op, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args, composed, _ = _case(op, 33, 96, 200, torch.bfloat16, True, seed=7)
        assert torch.equal(getattr(torch.ops.sparsekit, op)(*args), composed)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(2, 3), (4, 1, 2), (5,)], ids=str)
def test_wrappers_take_any_leading_dims(op, shape):
    args, _, _ = _case(op, 30, 8, 16, torch.float32, True)
    x = args[0][: int(torch.tensor(shape[:-1]).prod()) if len(shape) > 1 else 1]
    x = x.reshape(*shape[:-1], 16) if len(shape) > 1 else x.reshape(16)
    y = getattr(ops, op)(x, *args[1:])
    assert y.shape == (*x.shape[:-1], 8)
    assert torch.equal(y.reshape(-1, 8), getattr(torch.ops.sparsekit, op)(x.reshape(-1, 16), *args[1:]))
    with pytest.raises(ValueError, match=rf"sparsekit\.{op}: expected x of shape \(\.\.\., in_features\)"):
        getattr(ops, op)(torch.tensor(1.0), *args[1:])


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_x_and_strided_rows(op):
    args, composed, _ = _case(op, 6, 8, 16, torch.float16, False)
    x = args[0]
    every_other_row = torch.zeros(12, 16, dtype=x.dtype)
    every_other_row[::2] = x
    for bent in (x.t().contiguous().t(), torch.cat([x, x], 1)[:, :16], every_other_row[::2]):
        assert torch.equal(bent, x)
        assert torch.equal(getattr(torch.ops.sparsekit, op)(bent, *args[1:]), composed)


# ------------------------------------------------------------------------------------------ checks
def _i8(*shape):
    return torch.zeros(*shape, dtype=torch.int8)


def _u8(*shape, fill=0x44, device="cpu"):
    """A 2:4 meta buffer; 0x44: positions 0 and 1 in both groups of every byte."""
    return torch.full(shape, fill, dtype=torch.uint8, device=device)


x24 = torch.zeros(2, 8)
BAD = [
    ("int8_linear", lambda: (torch.zeros(2, 3, dtype=torch.int8), _i8(4, 3), torch.ones(4)), TypeError,
     "expected x of dtype float32 or bfloat16 or float16, got int8"),
    ("int8_linear", lambda: (torch.zeros(3), _i8(4, 3), torch.ones(4)), ValueError,
     r"expected x of shape \(M, in_features\), got shape \(3,\)"),
    ("int8_linear", lambda: (torch.zeros(2, 2, 3), _i8(4, 3), torch.ones(4)), ValueError, "expected x of shape"),
    # x's shape is checked before its dtype (as quantize_per_token)
    ("int8_linear", lambda: (torch.zeros(3, dtype=torch.int32), _i8(4, 3), torch.ones(4)), ValueError,
     "expected x of shape"),
    ("int8_linear", lambda: (torch.zeros(2, 3), torch.zeros(4, 3), torch.ones(4)), TypeError,
     "expected w_q of dtype int8, got float32"),
    ("int8_linear", lambda: (torch.zeros(2, 3), _i8(4, 5), torch.ones(4)), ValueError,
     r"expected w_q of shape \(out_features, 3\), got \(4, 5\)"),
    ("int8_linear", lambda: (torch.zeros(2, 3), _i8(4, 5), torch.ones(4).half()), ValueError,
     r"expected w_q of shape"),  # the first of two faults
    ("int8_linear", lambda: (torch.zeros(2, 3), _i8(4, 3), torch.ones(4).half()), TypeError,
     "expected w_scale of dtype float32, got float16"),
    ("int8_linear", lambda: (torch.zeros(2, 3), _i8(4, 3), torch.ones(3)), ValueError,
     r"expected w_scale of shape \(4,\), got \(3,\)"),
    ("int8_linear", lambda: (torch.zeros(2, 3), _i8(4, 3), torch.ones(4), torch.ones(5)), ValueError,
     r"expected bias of shape \(4,\), got \(5,\)"),
    ("int8_linear", lambda: (torch.zeros(2, 3).half(), _i8(4, 3), torch.ones(4), torch.ones(4)), TypeError,
     "expected bias of dtype float16 like the output, got float32"),
    ("int8_linear", lambda: (torch.zeros(2, 3), _i8(4, 3), torch.ones(4, device="meta")), ValueError,
     "expected w_scale on cpu like x, got meta"),
    ("sparse24_int8_linear", lambda: (x24.to(torch.int16), _i8(3, 4), _u8(3, 1), torch.ones(3)), TypeError,
     "expected x of dtype"),
    ("sparse24_int8_linear", lambda: (x24, torch.zeros(3, 4), _u8(3, 1), torch.ones(3)), TypeError,
     "expected values of dtype int8, got float32"),
    ("sparse24_int8_linear", lambda: (x24, _i8(3, 3), _u8(3, 1), torch.ones(3)), ValueError,
     r"expected values of shape \(out_features, in_features / 2 = 4\), got \(3, 3\)"),
    ("sparse24_int8_linear", lambda: (torch.zeros(2, 6), _i8(3, 3), _u8(3, 1), torch.ones(3)), ValueError,
     "expected in_features divisible by 4 for 2:4, got 6"),
    ("sparse24_int8_linear", lambda: (x24, _i8(3, 4), torch.zeros(3, 1, dtype=torch.int32), torch.ones(3)), TypeError,
     "expected meta of dtype uint8, got int32"),
    ("sparse24_int8_linear", lambda: (x24, _i8(3, 4), _u8(3, 2), torch.ones(3)), ValueError,
     r"expected meta of shape \(3, 1\), got \(3, 2\)"),
    ("sparse24_int8_linear", lambda: (x24, _i8(3, 4), _u8(3, 1), torch.ones(2)), ValueError,
     r"expected w_scale of shape \(3,\), got \(2,\)"),
    ("sparse24_int8_linear", lambda: (x24, _i8(3, 4), _u8(3, 1), torch.ones(3), torch.ones(3).bfloat16()), TypeError,
     "expected bias of dtype float32 like the output, got bfloat16"),
    ("sparse24_int8_linear", lambda: (x24, _i8(3, 4), _u8(3, 1, device="meta"), torch.ones(3)), ValueError,
     "expected meta on cpu like x, got meta"),
    # the contents of meta, after every argument check
    ("sparse24_int8_linear", lambda: (x24, _i8(3, 4), _u8(3, 1, fill=0x45), torch.ones(3)), ValueError,
     "expected two distinct ascending positions in every group of 4 of meta, got 1 and 1 in row 0, group 0"),
]


def _outcome(fn, args):
    try:
        fn(*args)
    except (TypeError, ValueError) as e:
        return type(e), str(e).splitlines()[0]
    return None


@pytest.mark.parametrize("op,args,exc,msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_raise_alike_from_the_kernel_and_the_reference(op, args, exc, msg):
    ref = _outcome(ops.FALLBACKS[op], args())
    assert ref is not None and ref[0] is exc, ref
    assert re.search(msg, ref[1]), ref
    assert ref[1].startswith(f"sparsekit.{op}: ")
    if any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args()):
        # a meta buffer sends the call to the fake kernel, which runs the same checks
        assert _outcome(getattr(torch.ops.sparsekit, op), args()) == ref
        return
    if sparsekit._ext.available():
        assert _outcome(getattr(torch.ops.sparsekit, op), args()) == ref


@pytest.mark.parametrize("op", OPS)
def test_meta_tensors_give_the_output_shape(op):
    args, _, _ = _case(op, 5, 8, 16, torch.bfloat16, True)
    y = getattr(torch.ops.sparsekit, op)(*[a.to("meta") for a in args])
    assert y.device.type == "meta" and y.shape == (5, 8) and y.dtype == torch.bfloat16


@requires_ext
@pytest.mark.parametrize("aten_checks", [False, True])
def test_meta_is_checked_once_and_again_after_an_in_place_write(aten_checks):
    args, composed, _ = _case("sparse24_int8_linear", 3, 8, 16, torch.float32, False)
    sparsekit._ext.C._set_aten_index_checks(aten_checks)
    try:
        op = torch.ops.sparsekit.sparse24_int8_linear
        assert torch.equal(op(*args), composed)
        assert torch.equal(op(*args), composed)  # the remembered check
        args[2][1, 0] = 0x45  # row 1, group 0: positions 1 and 1
        with pytest.raises(ValueError, match=r"sparsekit\.sparse24_int8_linear: .* got 1 and 1 in row 1, group 0"):
            op(*args)
    finally:
        sparsekit._ext.C._set_aten_index_checks(False)


# ------------------------------------------------------------------------------------------ the formats
@pytest.mark.parametrize("fmt", ["int8", "2:4+int8"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (2, 5, 64), (0, 64)], ids=str)
def test_formats_forward_is_the_two_call_composition(fmt, dtype, shape):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24).to(dtype)
    mask = None
    if fmt == "2:4+int8":
        mask = _mask24(24, 64, torch.Generator().manual_seed(1))
    sl = SparseLinear.from_linear(lin, mask=mask, format=fmt)
    x = torch.randn(shape).to(dtype)
    q, s, _ = ops.quantize_per_token(x.reshape(-1, 64))
    if fmt == "int8":
        want = ops.int8_mm(q, s, None, sl.qweight, sl.scale, sl.bias, dtype)
    else:
        want = ops.sparse24_int8_mm(q, s, None, sl.values, sl.meta, sl.scale, sl.bias, dtype)
    want = want.reshape(*shape[:-1], 24)
    if fmt == "int8":
        f = formats.Int8Weight(sl.qweight, sl.scale, (24, 64))
    else:
        f = formats.Sparse24Int8Weight(sl.values, sl.meta, sl.scale, (24, 64))
    with torch.no_grad():
        assert torch.equal(sl(x), want)
        assert torch.equal(f.matmul(x, sl.bias), want)
