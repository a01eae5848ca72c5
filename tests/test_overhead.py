"""Issue 19 (CPU half): the thin call path of SparseLinear, `sparsekit bench overhead`, and (issue 17, D4)
the cuSPARSELt-compressed 2:4 weight made outside forward and never routed unwarmed during CUDA graph capture
(pinned here on the CPU with a stand-in for the device and for the cuSPARSELt ops)."""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import ops
from sparsekit.formats import sparse24 as s24
from sparsekit.nn import SparseLinear

from conftest import requires_ext

FORMATS = ["csr", "bsr", "bitmap", "2:4", "int8", "int8-wo", "2:4+int8"]
W8A8 = ("int8", "2:4+int8")
OPS = {"csr": ["csr_mm"], "bsr": ["bsr_mm"], "bitmap": ["bitmap_mm"], "2:4": ["sparse24_mm"],
       "int8-wo": ["int8_weight_only_mm"], "int8": ["int8_linear"],
       "2:4+int8": ["sparse24_int8_linear"]}


def mask_24(N, K):
    m = torch.zeros(N, K, dtype=torch.bool)
    m[:, 0::4] = True
    m[:, 3::4] = True
    return m


def layer(fmt, N=32, K=64, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    mask = mask_24(N, K) if fmt.startswith("2:4") else torch.rand(N, K) < 0.4
    if fmt in ("int8", "int8-wo"):
        mask = None
    opts = {"blocksize": (16, 16)} if fmt == "bsr" else {}
    sl = SparseLinear.from_linear(lin, mask=mask, format=fmt, **opts)
    dense = sl.to_linear()
    return sl, dense


# ------------------------------------------------------------------------------------------ the thin call path
class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "sparsekit":
            self.ops.append(func._opname)
        return func(*args, **(kwargs or {}))


@requires_ext
@pytest.mark.parametrize("fmt", FORMATS)
def test_forward_is_one_op_call_and_no_python_autograd_frame(fmt):
    """Under no_grad a forward is the module call, the format's module_forward and the op: no wrapper, no
    Python autograd kernel (torch/_library), no walk over the buffer names."""
    sl, _ = layer(fmt)
    x = torch.randn(1, 64)
    with torch.no_grad():
        sl(x)
        with _OpLog() as log:
            sl(x)
        assert log.ops == OPS[fmt]
        calls = []

        def prof(frame, event, arg):
            if event == "call":
                calls.append((frame.f_code.co_filename, frame.f_code.co_name))

        sys.setprofile(prof)
        try:
            sl(x)
        finally:
            sys.setprofile(None)
    ours = [c[1] for c in calls if "sparsekit" in c[0]]
    assert not [c for c in calls if "_library" in c[0]], calls
    # the Autograd kernel is compiled (csrc/autograd.cpp): no Python guard, no wrapper frame in sparsekit.ops
    assert ours in (["forward", "module_forward"], ["forward", "compressed_rows_forward"]), ours
    assert len(calls) <= 6, calls  # module call (2), forward, module_forward, the op's __call__


def test_every_gradient_formula_is_compiled():
    """With the extension, every linear op's Autograd kernel is C++ (no Python formula registered over it)."""
    if not sparsekit._ext.available():
        pytest.skip("needs the compiled extension")
    assert ops.CPP_AUTOGRAD == set(ops.LINEAR_AUTOGRAD)
    for name in ops.LINEAR_AUTOGRAD:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekit::{name}", "Autograd")


@pytest.mark.parametrize("fmt", FORMATS)
def test_opcheck_linear_ops_and_dense_weight(fmt):
    """torch.library.opcheck of each format's op with x requiring grad (schema, fake kernel, the Autograd
    kernel's registration, AOT dispatch) and of _dense_weight on the format's buffers."""
    sl, _ = layer(fmt)
    b = [sl._buffers[n] for n in sl._format_cls.buffer_names]
    x = torch.randn(5, 64, requires_grad=True)
    (name,) = OPS[fmt]
    args = (x, *b, 32, sl.bias) if fmt in ("csr", "bsr") else (x, *b, sl.bias)
    torch.library.opcheck(getattr(torch.ops.sparsekit, name).default, args)
    torch.library.opcheck(torch.ops.sparsekit._dense_weight.default, ("int8-wo" if fmt == "int8" else fmt, b, 32, 64))


def test_dense_weight_op_refuses_an_unknown_format():
    with pytest.raises(ValueError, match=r"unknown format 'coo'"):
        torch.ops.sparsekit._dense_weight("coo", [torch.zeros(2)], 2, 2)


@requires_ext
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(3, 64), (2, 3, 64), (64,)], ids=str)
def test_forward_matches_dense_for_any_leading_dims(fmt, shape):
    sl, dense = layer(fmt)
    x = torch.randn(shape)
    with torch.no_grad():
        y = sl(x)
        want = dense(x)
    assert y.shape == want.shape
    tol = 0.05 if fmt in W8A8 else 1e-5
    torch.testing.assert_close(y, want, rtol=tol, atol=tol)
    assert torch.equal(y, sl(x))  # grad mode on (bias requires grad): the autograd path, the same numbers


@pytest.mark.parametrize("fmt", ["csr", "bsr", "bitmap", "2:4", "int8-wo"])
def test_gradients_still_flow_to_x_and_bias(fmt):
    sl, dense = layer(fmt)
    x = torch.randn(5, 64, requires_grad=True)
    sl(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    dense(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sl.bias.grad, dense.bias.grad, rtol=1e-4, atol=1e-4)
    assert sl(torch.randn(2, 64)).requires_grad  # bias requires grad: the output too


@pytest.mark.parametrize("fmt", W8A8)
@pytest.mark.parametrize("bias", [True, False])
def test_w8a8_gradients_are_straight_through(fmt, bias):
    """W8A8 layers: x gets grad @ W with W the dequantized weight (per-token quantization taken as the
    identity), the bias grad.sum(0); the same in a compiled graph."""
    sl, dense = layer(fmt, bias=bias)
    w = dense.weight.detach()
    x = torch.randn(5, 64, requires_grad=True)
    g = torch.randn(5, 32)
    sl(x).backward(g)
    torch.testing.assert_close(x.grad, g @ w, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(sl.bias.grad, g.sum(0))
    x.grad = None
    torch._dynamo.reset()
    torch.compile(sl, fullgraph=True, backend="aot_eager")(x).backward(g)
    torch.testing.assert_close(x.grad, g @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["csr", "2:4", "int8-wo"])
def test_gradients_in_a_compiled_graph(fmt):
    """AOTAutograd traces the compiled Autograd kernel's backward (the _dense_weight op's fake kernel)."""
    sl, dense = layer(fmt)
    x = torch.randn(4, 64, requires_grad=True)
    g = torch.randn(4, 32)
    torch._dynamo.reset()
    torch.compile(sl, fullgraph=True, backend="aot_eager")(x).backward(g)
    torch.testing.assert_close(x.grad, g @ dense.weight.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sl.bias.grad, g.sum(0))


def test_python_gradient_formulas_without_the_extension():
    """Without sparsekit._C the same gradients come from the Python formulas (torch.library)."""
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("ignore")
        import torch, sparsekit
        from sparsekit.nn import SparseLinear
        assert not sparsekit._ext.available() and not sparsekit.ops.CPP_AUTOGRAD
        torch.manual_seed(0)
        for fmt in ["csr", "bsr", "bitmap", "2:4", "int8-wo", "int8", "2:4+int8"]:
            lin = torch.nn.Linear(64, 32)
            mask = None
            if fmt.startswith("2:4"):
                mask = torch.zeros(32, 64, dtype=torch.bool)
                mask[:, 0::4] = mask[:, 3::4] = True
            elif fmt in ("csr", "bsr", "bitmap"):
                mask = torch.rand(32, 64) < 0.4
            opts = {"blocksize": (16, 16)} if fmt == "bsr" else {}
            sl = SparseLinear.from_linear(lin, mask=mask, format=fmt, **opts)
            w = sl.to_dense().float()
            x = torch.randn(5, 64, requires_grad=True)
            g = torch.randn(5, 32)
            sl(x).backward(g)
            torch.testing.assert_close(x.grad, g @ w, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(sl.bias.grad, g.sum(0))
        print("ok")
        """
    )
    env = dict(os.environ, SPARSEKIT_DISABLE_EXTENSION="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_sparse_values_requiring_grad_are_still_refused():
    sl, _ = layer("csr")
    sl.values.requires_grad_()
    with pytest.raises(RuntimeError, match="gradients with respect to the sparse values are not supported"):
        sl(torch.randn(2, 64))
    with torch.no_grad():  # no gradient asked for: runs
        sl(torch.randn(2, 64))


@requires_ext
@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_input_messages_are_those_of_the_ops(fmt):
    """The module adds no check of its own beyond the shape: a bad dtype meets the op's own message."""
    sl, _ = layer(fmt)
    with pytest.raises(ValueError, match=r"SparseLinear: expected input of shape \(\.\.\., 64\), got \(2, 63\)"):
        sl(torch.randn(2, 63))
    x = torch.randn(2, 64, dtype=torch.float64)
    b = {n: getattr(sl, n) for n in sl._format_cls.buffer_names}
    with pytest.raises((TypeError, ValueError)) as got:
        sl(x)
    with pytest.raises(type(got.value)) as want:
        if fmt == "int8":
            ops.int8_linear(x, b["qweight"], b["scale"], sl.bias)
        elif fmt == "2:4+int8":
            ops.sparse24_int8_linear(x, b["values"], b["meta"], b["scale"], sl.bias)
        elif fmt == "int8-wo":
            ops.int8_weight_only_mm(x, b["qweight"], b["scale"], sl.bias)
        elif fmt == "2:4":
            ops.sparse24_mm(x, b["values"], b["meta"], sl.bias)
        elif fmt == "bitmap":
            ops.bitmap_mm(x, b["bitmap"], b["word_offsets"], b["values"], sl.bias)
        else:
            getattr(ops, f"{fmt}_mm")(x, b["crow_indices"], b["col_indices"], b["values"], 32, sl.bias)
    assert str(got.value) == str(want.value)


def test_buffers_are_read_at_call_time_never_cached():
    """functional_call swaps buffers straight in module._buffers: the swapped ones are used."""
    sl, _ = layer("csr")
    x = torch.randn(2, 64)
    swapped = {"values": sl.values * 2, "bias": sl.bias * 2}
    with torch.no_grad():
        y = torch.func.functional_call(sl, swapped, (x,))
        torch.testing.assert_close(y, 2 * sl(x))


def test_state_dict_round_trip_unchanged():
    sl, _ = layer("2:4+int8")
    other = SparseLinear(64, 32, format="2:4+int8")
    other.load_state_dict(sl.state_dict())
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(other(x), sl(x))
    assert set(sl.state_dict()) == {"values", "meta", "scale", "bias", "_extra_state"}


# ------------------------------------------------------------------------------------------ cuSPARSELt (D4)
@pytest.fixture
def fake_cslt(monkeypatch):
    """CPU tensors stand in for CUDA ones, the build has cuSPARSELt, and its ops are recorders."""
    log = {"compress": 0, "mm": []}

    def compress(dense):
        log["compress"] += 1
        return torch.zeros(8, dtype=torch.uint8)

    def mm(x, compressed, n, bias=None, alpha=None, row_scale=None, out_dtype=None):
        log["mm"].append(x.shape[0])
        return torch.zeros(x.shape[0], n, dtype=out_dtype or x.dtype)

    monkeypatch.setattr(s24, "_cuda", lambda t: True)
    monkeypatch.setattr(s24, "_CSLT_COMPRESS", compress)
    monkeypatch.setattr(s24, "_CSLT_MM", mm)
    monkeypatch.setattr(ops, "cslt_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setenv("SPARSEKIT_CSLT_MIN_M", "16")
    return log


def half_layer(fmt):
    N, K = 64, 128
    lin = nn.Linear(K, N).to(torch.bfloat16)
    sl = SparseLinear.from_linear(lin, mask=mask_24(N, K), format=fmt)
    sl.bias.requires_grad_(False)  # cuSPARSELt only where no gradient is needed
    return sl


@pytest.mark.parametrize("fmt", ["2:4", "2:4+int8"])
def test_cslt_weight_is_compressed_at_conversion_never_in_forward(fmt, fake_cslt):
    sl = half_layer(fmt)
    assert fake_cslt["compress"] == 1  # at conversion
    f = sl.weight_format  # from_buffers of the same buffers: found, not compressed again
    assert fake_cslt["compress"] == 1
    x = torch.randn(32, 128, dtype=torch.bfloat16)
    for _ in range(3):
        f.matmul(x, sl.bias)
    assert fake_cslt["compress"] == 1 and fake_cslt["mm"] == [32, 32, 32]


@pytest.mark.parametrize("fmt", ["2:4", "2:4+int8"])
def test_cslt_weight_is_made_again_by_load_and_moves_only(fmt, fake_cslt):
    sl = half_layer(fmt)
    sl.load_state_dict(sl.state_dict())
    assert fake_cslt["compress"] == 2
    assert s24._cslt_lookup(sl.values, sl.meta, getattr(sl, "scale", None)) is not None
    sl.to(torch.float16)  # _apply: new tensors (2:4) or the same int8 ones (2:4+int8): ready either way
    assert s24._cslt_lookup(sl.values, sl.meta, getattr(sl, "scale", None)) is not None
    n = fake_cslt["compress"]
    with torch.no_grad():
        sl.values.add_(1 if fmt == "2:4+int8" else 0.5)  # written in place: the entry no longer matches
    x = torch.randn(32, 128, dtype=torch.float16)
    fake_cslt["mm"].clear()
    if fmt == "2:4":
        s24.Sparse24Weight.apply(x, (64, 128), None, sl.values, sl.meta)
    else:
        s24.Sparse24Int8Weight.apply(x, (64, 128), None, sl.values, sl.meta, sl.scale)
    assert fake_cslt["mm"] == [] and fake_cslt["compress"] == n  # the own kernel; nothing compressed in forward


def test_cslt_weight_follows_a_deepcopy(fake_cslt):
    import copy

    sl = half_layer("2:4")
    twin = copy.deepcopy(sl)
    assert twin.values is not sl.values and fake_cslt["compress"] == 2
    assert s24._cslt_lookup(twin.values, twin.meta) is not None


def test_cslt_refused_weight_warns_and_keeps_the_own_kernel(fake_cslt, monkeypatch):
    def refuse(dense):
        raise ValueError("cslt_compress: the weight is not 2:4 along in_features")

    monkeypatch.setattr(s24, "_CSLT_COMPRESS", refuse)
    with pytest.warns(RuntimeWarning, match="not compressed for cuSPARSELt"):
        sl = half_layer("2:4")
    x = torch.randn(32, 128, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused once: not asked (nor warned) again for the same buffers
        with torch.no_grad():
            y = sl.weight_format.matmul(x, sl.bias)
    assert fake_cslt["mm"] == [] and y.shape == (32, 64)


@pytest.mark.parametrize("fmt", ["2:4", "2:4+int8"])
def test_cuda_graph_capture_takes_only_a_warmed_cslt_call(fmt, fake_cslt, monkeypatch):
    sl = half_layer(fmt)
    f = sl.weight_format
    x = torch.randn(32, 128, dtype=torch.bfloat16)
    f.matmul(x, sl.bias)  # eager warm-up of M = 32
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    f.matmul(x, sl.bias)  # captured: this M ran before
    assert fake_cslt["mm"] == [32, 32]
    with pytest.raises(RuntimeError, match="has not run 48 rows .* through cuSPARSELt yet.*before capturing"):
        f.matmul(torch.randn(48, 128, dtype=torch.bfloat16), sl.bias)
    assert fake_cslt["mm"] == [32, 32]  # refused before launching
    n = fake_cslt["compress"]
    other = half_layer(fmt)  # packing during capture compresses nothing (it would sync)
    assert fake_cslt["compress"] == n
    assert s24._cslt_lookup(other.values, other.meta, getattr(other, "scale", None)) is None


def test_cslt_not_used_while_compiling(fake_cslt, monkeypatch):
    sl = half_layer("2:4")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not s24._use_cslt(torch.randn(32, 128, dtype=torch.bfloat16), (64, 128), torch.bfloat16, None)


def test_2_4_int8_small_m_takes_the_compiled_w8a8_kernel(fake_cslt, monkeypatch):
    """2:4+int8 on CUDA (CPU stand-ins): with the compiled W8A8 kernel available (sm_80+), M <= 16 goes in one
    call to the one-call linear's _cuda_ alias, which quantizes x itself (its CPU fallback, the reference, stands
    in for it), not to cuSPARSELt; larger M, or the backend set to "triton", keeps cuSPARSELt; 3-d x gets its
    rows back."""
    from sparsekit import triton as skt

    monkeypatch.setattr(skt, "_has_mma", lambda device: True)
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    monkeypatch.setattr(skt, "_backend", dict.fromkeys(skt._AUTO_MAX_M, "auto"))
    calls = []
    real = s24._CUDA_SPARSE24_INT8_LINEAR
    monkeypatch.setattr(s24, "_CUDA_SPARSE24_INT8_LINEAR",
                        lambda *a: calls.append((a[0].shape[0], a[0].dtype)) or real(*a))
    sl = half_layer("2:4+int8")
    for shape in [(1, 128), (16, 128), (2, 3, 128), (32, 128)]:
        x = torch.randn(*shape, dtype=torch.bfloat16)
        y = s24.Sparse24Int8Weight.apply(x, (64, 128), sl.bias, sl.values, sl.meta, sl.scale)
        assert y.shape == (*shape[:-1], 64)
        if x.numel() // 128 <= 16:
            want = ops.reference.sparse24_int8_linear(x.reshape(-1, 128), sl.values, sl.meta, sl.scale, sl.bias)
            assert torch.equal(y.reshape(-1, 64), want)
    bf = torch.bfloat16
    assert calls == [(1, bf), (16, bf), (6, bf)] and fake_cslt["mm"] == [32]
    skt.set_backend("sparse24_int8_mm", "triton")
    s24.Sparse24Int8Weight.apply(torch.randn(4, 128, dtype=torch.bfloat16), (64, 128), sl.bias, sl.values, sl.meta,
                                 sl.scale)
    assert calls == [(1, bf), (16, bf), (6, bf)] and fake_cslt["mm"] == [32, 4]


@pytest.fixture
def measured_routes(fake_cslt, monkeypatch, tmp_path):
    """fake_cslt without SPARSEKIT_CSLT_MIN_M, so the routes are measured: the CPU stand-ins count as timeable,
    and the timer runs the call once and gives the time `times[path](M bucket)` of the kernel it saw run."""
    from sparsekit import triton as skt
    from sparsekit.triton import autotune

    monkeypatch.delenv("SPARSEKIT_CSLT_MIN_M")
    monkeypatch.delenv("SPARSEKIT_TRITON_AUTOTUNE", raising=False)
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(skt, "available", lambda: True)
    monkeypatch.setattr(autotune, "_measurable", lambda device: True)
    monkeypatch.setattr(autotune, "device_tag", lambda device: "Fake_GPU")
    log = []  # (kernel, M) of every call of either kernel, in order
    for name, path in (("_SPARSE24_MM", "own"), ("_CUDA_SPARSE24_INT8_LINEAR", "own"), ("_CSLT_MM", "cslt")):
        real = getattr(s24, name)
        monkeypatch.setattr(s24, name, lambda *a, _real=real, _p=path: log.append((_p, a[0].shape[0])) or _real(*a))
    state = {"times": None, "timed": []}

    def bench(fn):
        n = len(log)
        fn()
        assert len(log) == n + 1
        path, m = log[-1]
        state["timed"].append((path, m))
        return state["times"][path](1 << (m - 1).bit_length())

    monkeypatch.setattr(autotune, "_do_bench_ms", bench)
    autotune.clear()
    yield state, log
    autotune.clear()


def test_2_4_route_to_cusparselt_is_measured_per_m_bucket(measured_routes, fake_cslt, monkeypatch, tmp_path):
    """Which kernel serves a 2:4 call on CUDA (the own decode kernel or cuSPARSELt) is the faster of the two on
    the device, timed at the first eager call of each (N, K, dtype, M bucket) and kept in memory and on disk; a
    call of a known bucket measures nothing; above 128 rows cuSPARSELt, unmeasured; during CUDA graph capture an
    unmeasured bucket takes the boundary (M > 16) and is measured at the next eager call;
    SPARSEKIT_TRITON_AUTOTUNE=0 keeps the boundary; SPARSEKIT_CSLT_MIN_M fixes it."""
    from sparsekit.triton import autotune

    state, log = measured_routes
    state["times"] = {"own": lambda b: 2.0, "cslt": lambda b: 1.0 if b >= 4 else 3.0}
    sl = half_layer("2:4")
    f = sl.weight_format

    def call(M):
        log.clear()
        state["timed"].clear()
        x = torch.randn(M, 128, dtype=torch.bfloat16)
        y = f.matmul(x, sl.bias)
        ran, m = log[-1]
        assert m == M
        if ran == "own":  # the own kernel's result (the fake cuSPARSELt returns zeros)
            torch.testing.assert_close(y, x @ sl.to_dense().T + sl.bias, rtol=2e-2, atol=2e-2)
        return ran, sorted(state["timed"])

    assert call(1) == ("own", [("cslt", 1), ("own", 1)])    # measured: the own kernel is faster at M = 1
    assert call(3) == ("cslt", [("cslt", 3), ("own", 3)])   # and cuSPARSELt from the bucket of 4 (M = 3-4)
    assert call(4) == ("cslt", [])                          # same bucket: nothing measured
    assert call(200) == ("cslt", [])                        # above 128 rows: cuSPARSELt, unmeasured
    data = json.loads(Path(autotune.cache_file("Fake_GPU")).read_text())["configs"]
    assert data == {"sparse24_route|64|128|bf16|1": {"path": "own"}, "sparse24_route|64|128|bf16|4": {"path": "cslt"}}
    # another process: the disk answers
    autotune.clear()
    assert call(2) == ("own", [("cslt", 2), ("own", 2)]) and call(1) == ("own", [])
    # graph capture of an unmeasured bucket: the boundary (the own kernel up to 16 rows), not remembered
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert call(9) == ("own", [])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert call(9) == ("cslt", [("cslt", 9), ("own", 9)])
    # autotune off: the boundary, remembered for the process
    autotune.clear()
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SPARSEKIT_TRITON_AUTOTUNE", "0")
    assert call(8) == ("own", []) and call(17) == ("cslt", []) and call(5) == ("own", [])
    # a fixed boundary
    monkeypatch.setenv("SPARSEKIT_CSLT_MIN_M", "0")
    assert call(1) == ("cslt", [])
    monkeypatch.setenv("SPARSEKIT_CSLT_MIN_M", "64")
    assert call(32) == ("own", [])


def test_2_4_int8_route_between_the_compiled_kernel_and_cusparselt_is_measured(measured_routes, fake_cslt,
                                                                               monkeypatch):
    """2:4+int8 with both kernels at hand (the compiled W8A8 kernel on sm_80+, the weight compressed for
    cuSPARSELt) takes the faster per M bucket, measured as for 2:4; the backend set to "compiled" or "triton"
    decides by itself and measures nothing."""
    from sparsekit import triton as skt

    monkeypatch.setattr(skt, "_has_mma", lambda device: True)
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    monkeypatch.setattr(skt, "_backend", dict.fromkeys(skt._AUTO_MAX_M, "auto"))
    state, log = measured_routes
    state["times"] = {"own": lambda b: 1.0 if b <= 32 else 3.0, "cslt": lambda b: 2.0}
    sl = half_layer("2:4+int8")

    def call(M):
        log.clear()
        state["timed"].clear()
        x = torch.randn(M, 128, dtype=torch.bfloat16)
        y = s24.Sparse24Int8Weight.apply(x, (64, 128), sl.bias, sl.values, sl.meta, sl.scale)
        ran, m = log[-1]
        assert m == M
        if ran == "own":
            want = ops.reference.sparse24_int8_linear(x, sl.values, sl.meta, sl.scale, sl.bias)
            assert torch.equal(y, want)
        return ran, sorted(state["timed"])

    assert call(20) == ("own", [("cslt", 20), ("own", 20)])  # measured: the compiled kernel up to 32 rows here
    assert call(33) == ("cslt", [("cslt", 33), ("own", 33)])
    assert call(1) == ("own", [("cslt", 1), ("own", 1)]) and call(30) == ("own", [])
    skt.set_backend("sparse24_int8_mm", "triton")
    assert call(2) == ("cslt", [])
    skt.set_backend("sparse24_int8_mm", "compiled")
    assert call(40) == ("own", [])


class FakeCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA (the ops run on the CPU, their results stay FakeCuda)."""

    @property
    def is_cuda(self):
        return True


@pytest.fixture
def fake_compiled_cuda(monkeypatch):
    """An sm_80+ device whose build has the compiled CUDA kernels (FakeCuda tensors stand in for its
    tensors); the backends are "auto"."""
    from sparsekit import triton as skt

    monkeypatch.setattr(skt, "_has_mma", lambda device: True)
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    monkeypatch.setattr(skt, "_backend", dict.fromkeys(skt._AUTO_MAX_M, "auto"))


@pytest.mark.parametrize("fmt,dtype", [("int8", torch.bfloat16), ("int8", torch.float32), ("int8-wo", torch.float16),
                                       ("bitmap", torch.bfloat16), ("bitmap-columns", torch.float16),
                                       ("bsr:16", torch.float16)])
def test_cuda_forward_is_one_op_call_into_the_compiled_kernel(fmt, dtype, fake_compiled_cuda, monkeypatch):
    """On CUDA (CPU stand-ins) a converted layer calls the compiled kernel's _cuda_ alias itself for the rows the
    router sends there (M <= 16), not the public op and then the router; larger M, a gradient to record (the
    aliases have no backward) or the backend set to "triton" take the public op, whose backward works. A bitmap
    layer with a column list (10 % density, its weight standing in for a CUDA one) calls the column-list op."""
    from sparsekit import triton as skt
    from sparsekit.formats import bitmap as bmf

    public = {"int8": "int8_linear", "int8-wo": "int8_weight_only_mm", "bitmap": "bitmap_mm", "bitmap-columns": "bitmap_mm",
              "bsr:16": "bsr_mm"}[fmt]
    alias = "_cuda_bitmap_columns_mm" if fmt == "bitmap-columns" else "_cuda_" + public
    monkeypatch.setattr(skt, "_bsr_tile_fits", lambda M, K, C, device: True)
    lin = nn.Linear(64, 32).to(dtype)
    if fmt == "bsr:16":
        mask = (torch.rand(2, 4) < 0.6).repeat_interleave(16, 0).repeat_interleave(16, 1)
        sl = SparseLinear.from_linear(lin, mask=mask, format="bsr", blocksize=(16, 16))
    elif fmt == "bitmap-columns":
        monkeypatch.setattr(bmf, "_cuda", lambda t: True)
        monkeypatch.delenv("SPARSEKIT_BITMAP_COLUMNS", raising=False)
        sl = SparseLinear.from_linear(lin, mask=torch.rand(32, 64) < 0.1, format="bitmap")
        b = sl._buffers
        assert bmf.bitmap_columns_for(b["bitmap"], b["word_offsets"], b["values"]) is not None
    else:
        sl = SparseLinear.from_linear(lin, mask=torch.rand(32, 64) < 0.5, format=fmt)

    def ops_of(x):
        with _OpLog() as log:
            y = sl(x)
        return log.ops, y

    with torch.no_grad():  # the bias is a Parameter that requires grad: no_grad is what skips the backward
        for shape, want in [((1, 64), alias), ((16, 64), alias), ((2, 3, 64), alias), ((17, 64), public)]:
            x = torch.randn(*shape).to(dtype)
            called, y = ops_of(x.as_subclass(FakeCuda))
            assert called == [want], (shape, called)
            assert y.shape == (*shape[:-1], 32)
            # the alias's CPU fallback (the reference) against the public op's CPU kernel
            torch.testing.assert_close(y.as_subclass(torch.Tensor), sl(x), rtol=1e-2, atol=1e-2)
        assert ops_of(torch.randn(2, 64).to(dtype))[0] == [public]  # a CPU tensor: the public op
    x = torch.randn(3, 64).to(dtype).as_subclass(FakeCuda).requires_grad_()
    called, y = ops_of(x)
    y.float().sum().backward()  # the public op, with its straight-through backward
    assert called == [public] and x.grad is not None and sl.bias.grad is not None
    skt.set_backend({"int8": "int8_mm", "int8-wo": "int8_weight_only_mm", "bitmap": "bitmap_mm",
                     "bitmap-columns": "bitmap_mm", "bsr:16": "bsr_mm"}[fmt], "triton")
    with torch.no_grad():
        assert ops_of(torch.randn(2, 64).to(dtype).as_subclass(FakeCuda))[0] == [public]


def test_2_4_int8_on_cuda_keeps_the_backward_when_a_gradient_is_needed(fake_cslt, fake_compiled_cuda, monkeypatch):
    """2:4+int8 on CUDA (CPU stand-ins): the compiled kernel and cuSPARSELt have no backward, so a call that must
    record one (x or the bias requiring grad, grad mode on) runs the public sparse24_int8_linear, whose gradient
    reaches x and the bias; without it, M <= 16 takes the compiled one-call kernel."""
    from sparsekit import triton as skt

    monkeypatch.setattr(skt, "_has_mma", lambda device: True)
    calls = []
    real = s24._CUDA_SPARSE24_INT8_LINEAR
    monkeypatch.setattr(s24, "_CUDA_SPARSE24_INT8_LINEAR", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    sl = half_layer("2:4+int8")
    sl.bias.requires_grad_(True)
    x = torch.randn(4, 128, dtype=torch.bfloat16).as_subclass(FakeCuda).requires_grad_()
    y = sl(x)
    y.float().sum().backward()
    assert calls == [] and fake_cslt["mm"] == [] and x.grad is not None and sl.bias.grad is not None
    torch.testing.assert_close(sl.bias.grad, torch.full((64,), 4.0, dtype=torch.bfloat16))
    with torch.no_grad():
        sl(torch.randn(4, 128, dtype=torch.bfloat16).as_subclass(FakeCuda))
    assert calls == [4]


def test_2_4_int8_large_m_quantizes_with_the_compiled_kernel(fake_cslt, fake_compiled_cuda):
    """2:4+int8 on CUDA (CPU stand-ins) above the compiled W8A8 kernel's M: x is quantized by the compiled
    per-token kernel's _cuda_ alias (one op call, no Python launch), then cuSPARSELt; with quantize_per_token set
    to "triton" the public op quantizes."""
    from sparsekit import triton as skt

    sl = half_layer("2:4+int8")
    x = torch.randn(32, 128, dtype=torch.bfloat16).as_subclass(FakeCuda)
    with torch.no_grad():
        for setting, want in [("auto", "_cuda_quantize_per_token"), ("triton", "quantize_per_token")]:
            skt.set_backend("quantize_per_token", setting)
            with _OpLog() as log:
                y = sl(x)
            assert log.ops[0] == want, log.ops
            assert y.shape == (32, 64)
    assert fake_cslt["mm"] == [32, 32]


def test_router_quantizes_symmetric_rows_with_the_compiled_kernel(fake_compiled_cuda):
    """The CUDA router of quantize_per_token and of the int8 linears above M = 16 (CPU stand-ins): symmetric
    quantization takes _cuda_quantize_per_token at every M; asymmetric, or the backend set to "triton", the Triton
    launcher."""
    from sparsekit import triton as skt

    launched = []

    def launcher(x, symmetric=True):
        launched.append(symmetric)
        return ops.reference.quantize_per_token(x.as_subclass(torch.Tensor), symmetric)

    impls = skt._make_impls()
    x = torch.randn(40, 64).as_subclass(FakeCuda)
    with _OpLog() as log:
        q, s, z = impls["quantize_per_token"](x)
    assert log.ops == ["_cuda_quantize_per_token"] and launched == []
    assert torch.equal(q.as_subclass(torch.Tensor), ops.reference.quantize_per_token(x.as_subclass(torch.Tensor))[0])
    from unittest import mock
    with mock.patch.object(skt, "_lazy", lambda module, name: (lambda: launcher)):
        impls = skt._make_impls()
        impls["quantize_per_token"](x, False)
        assert launched == [False]
        skt.set_backend("quantize_per_token", "triton")
        impls["quantize_per_token"](x)
        assert launched == [False, True]


# ------------------------------------------------------------------------------------------ the bench
def test_bench_overhead_records_and_tables():
    from sparsekit.bench.overhead import cpu_overhead, overhead_tables

    recs = cpu_overhead(["csr", "int8"], runs=2, min_run_time=0.01)
    assert [r["format"] for r in recs] == ["nn.Linear", "csr", "int8"]
    for r in recs:
        assert r["kind"] == "cpu" and r["threads"] == 1 and r["M"] == 1 and (r["N"], r["K"]) == (64, 64)
        assert r["us"] > 0 and len(r["samples_us"]) == 2 and r["overhead_min_us"] <= r["overhead_us"]
    assert recs[1]["sparsity"] == pytest.approx(0.9, abs=0.01) and recs[1]["meets_goal"] in (True, False)
    text = overhead_tables(recs)
    assert "| csr |" in text and "F.linear" in text and "goal" in text


def test_bench_overhead_command_writes_json(tmp_path, capsys):
    from sparsekit.__main__ import main

    out = tmp_path / "o.jsonl"
    assert main(["bench", "overhead", "--quick", "--no-progress", "--device", "cpu", "--formats", "2:4",
                 "--json", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["format"] for r in recs] == ["nn.Linear", "2:4"]
    assert recs[0]["env"]["command"].startswith("python -m sparsekit bench overhead")
    assert "| 2:4 |" in capsys.readouterr().out


def test_bench_overhead_cuda_tables_from_records():
    """The CUDA tables of `bench overhead` (records as cuda_overhead writes them): host time at M = 1 with the
    goal, at M = 32 without one; eager / graph per format."""
    from sparsekit.bench.overhead import overhead_tables

    recs = [dict(kind="cuda-host", format="F.linear", N=64, K=64, M=1, calls=1000, host_us=4.0),
            dict(kind="cuda-host", format="bsr:16", N=64, K=64, M=1, calls=1000, host_us=12.5, flinear_host_us=4.0,
                 meets_goal=False),
            dict(kind="cuda-host", format="bsr:16", N=64, K=64, M=32, calls=1000, host_us=30.0, flinear_host_us=4.2,
                 meets_goal=None, host_us_jit_launch=33.5),
            dict(kind="cuda-graph", format="bsr:64", N=14336, K=4096, M=1, dense_ms=0.03, dense_graph_ms=0.03,
                 ms=0.01, graph_ms=0.006, speedup=3.0, graph_speedup=5.0, eager_over_graph=0.6)]
    text = overhead_tables(recs)
    assert "| bsr:16 | 1 | 12.50 | - | no |" in text and "| bsr:16 | 32 | 30.00 | 33.50 |  |" in text
    assert "| bsr:64 | 0.0100 | 3.00x | 5.00x | 0.60 |  |" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_overhead_cuda_records():
    from sparsekit.bench.overhead import cuda_overhead

    recs = cuda_overhead(["2:4", "int8-wo"], calls=50, large=(256, 256))
    host = [r for r in recs if r["kind"] == "cuda-host"]
    assert all(r.get("host_us", 0) > 0 for r in host), host
    assert sorted({r["M"] for r in host}) == [1, 32]
    assert all(r.get("host_us_jit_launch", 0) > 0 for r in host
               if r["M"] == 32 and r["format"] not in ("F.linear", "nn.Linear")), host
    graph = [r for r in recs if r["kind"] == "cuda-graph"]
    assert all("speedup" in r for r in graph), graph
