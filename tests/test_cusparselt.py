"""The cuSPARSELt 2:4 path: sparsekit.ops.cslt_compress / cslt_mm (csrc/cuda/ops_cusparselt.cpp) and the
2:4 formats' routing to it (sparsekit/formats/sparse24.py).

* CPU tests (always): the schemas, the fake kernels and their checks, the clear error on the CPU, the
  formats' CPU path unchanged, `with_cusparselt` / `python -m sparsekit info` telling the build's truth.
* GPU tests (skipped without a CUDA device or a build without cuSPARSELt): against the float64 reference
  for every dtype, odd M, several N x K, bias or not; the plan cache (a second call neither searches nor
  builds a plan); refused shapes; routing by M; threads; CUDA graphs; opcheck.
"""
import json
import threading
import weakref
from pathlib import Path

import pytest
import torch

import sparsekit
import sparsekit._info
from sparsekit import formats, ops
from sparsekit.formats import sparse24 as s24
from sparsekit.ops import _schemas

from helpers import assert_close_to_ref

HAS_CUDA = torch.cuda.is_available()
HAS_CSLT = ops.cslt_available()
gpu_cslt = pytest.mark.skipif(not (HAS_CUDA and HAS_CSLT),
                              reason="needs a CUDA device and a sparsekit built with cuSPARSELt")
HALVES = [torch.float16, torch.bfloat16]
ODD_MS = [1, 3, 17, 33, 333]


def mask_24(N, K, device="cpu"):
    score = torch.rand(N, K // 4, 4, device=device)
    keep = torch.zeros_like(score, dtype=torch.bool).scatter_(2, score.topk(2, dim=-1).indices, True)
    return keep.reshape(N, K)


def weight_24(N, K, dtype, device="cuda"):
    m = mask_24(N, K, device)
    if dtype == torch.int8:
        return torch.randint(-127, 128, (N, K), device=device, dtype=torch.int8) * m
    return (torch.randn(N, K, device=device) * m).to(dtype)


def stats():
    return sparsekit._ext.C.cusparselt_cache_stats()


# ------------------------------------------------------------------------------------------ CPU
def test_schemas_defined():
    for name in ("cslt_compress", "cslt_mm"):
        schema = str(getattr(torch.ops.sparsekit, name).default._schema)
        assert schema == "sparsekit::" + _schemas.SCHEMAS[name]


def test_cpu_raises_clear_error():
    x = torch.randn(4, 64, dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="CUDA only.*sparse24_mm"):
        ops.cslt_mm(x, torch.zeros(100, dtype=torch.uint8), 32)
    with pytest.raises(NotImplementedError, match="CUDA only"):
        ops.cslt_compress(weight_24(32, 64, torch.float16, "cpu"))


@pytest.mark.parametrize("dtype,out_dtype,want", [(torch.float16, None, torch.float16),
                                                  (torch.bfloat16, None, torch.bfloat16),
                                                  (torch.int8, torch.bfloat16, torch.bfloat16)])
def test_fake_kernel_shapes(dtype, out_dtype, want):
    x = torch.empty(5, 64, dtype=dtype, device="meta")
    alpha = torch.empty(32, device="meta") if dtype == torch.int8 else None
    y = torch.ops.sparsekit.cslt_mm(x, torch.empty(10, dtype=torch.uint8, device="meta"), 32, None, alpha, None,
                                    out_dtype)
    assert y.shape == (5, 32) and y.dtype == want


def test_fake_compress_has_a_dynamic_size():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()):
        c = torch.ops.sparsekit.cslt_compress(torch.empty(32, 64, dtype=torch.float16))
    assert c.dim() == 1 and c.dtype == torch.uint8 and isinstance(c.shape[0], torch.SymInt)


@pytest.mark.parametrize("N,K,dtype,exc,msg", [
    (24, 64, torch.float16, ValueError, "multiples of 16 for float16.*sparse24_mm"),
    (64, 48, torch.int8, ValueError, "multiples of 32 for int8"),
    (32, 64, torch.float32, TypeError, "float16 or bfloat16 or int8"),
])
def test_refused_shapes_and_dtypes_say_why(N, K, dtype, exc, msg):
    x = torch.empty(3, K, dtype=dtype, device="meta")
    with pytest.raises(exc, match=msg):
        torch.ops.sparsekit.cslt_mm(x, torch.empty(10, dtype=torch.uint8, device="meta"), N, None, None, None,
                                    torch.float16 if dtype == torch.int8 else None)
    with pytest.raises(exc, match=msg):
        torch.ops.sparsekit.cslt_compress(torch.empty(N, K, dtype=dtype, device="meta"))


def test_int8_needs_out_dtype_and_row_scale_needs_int8():
    c = torch.empty(10, dtype=torch.uint8, device="meta")
    with pytest.raises(TypeError, match="int8 x needs out_dtype"):
        torch.ops.sparsekit.cslt_mm(torch.empty(3, 64, dtype=torch.int8, device="meta"), c, 32)
    with pytest.raises(ValueError, match="row_scale .* int8 x only"):
        torch.ops.sparsekit.cslt_mm(torch.empty(3, 64, dtype=torch.float16, device="meta"), c, 32, None, None,
                                    torch.empty(3, device="meta"))


def test_with_cusparselt_tells_the_build():
    C = sparsekit._ext.C
    if C is None:
        pytest.skip("the compiled extension is not loaded")
    header = Path(torch.__file__).parent.parent / "nvidia" / "cusparselt" / "include" / "cusparseLt.h"
    if C.with_cusparselt:
        text = header.read_text() if header.exists() else ""
        parts = [text.split(f"#define CUSPARSELT_VER_{p} ")[1].split()[0] for p in ("MAJOR", "MINOR", "PATCH")] \
            if text else None
        if parts:
            assert C.cusparselt_version == ".".join(parts)
        assert {"entries", "searches", "plans_created"} <= set(C.cusparselt_cache_stats())
        assert sparsekit._info.collect()["cusparselt_version"].startswith(f"built against {C.cusparselt_version}")
    else:
        assert C.cusparselt_version == ""
        assert sparsekit._info.collect()["cusparselt_version"] is None


@pytest.mark.parametrize("fmt", ["2:4", "2:4+int8"])
def test_format_cpu_path_unchanged(fmt, monkeypatch):
    """The CPU forward is the format's own op, bit for bit, whatever the cuSPARSELt settings."""
    monkeypatch.setenv("SPARSEKIT_CSLT_MIN_M", "0")
    N, K = 64, 128
    w = torch.randn(N, K) * mask_24(N, K)
    f = formats.get(fmt).from_dense(w)
    x, b = torch.randn(40, K), torch.randn(N)
    got = f.matmul(x, b)
    if fmt == "2:4":
        want = ops.sparse24_mm(x, f.values, f.meta, b)
    else:
        q, s, _ = ops.quantize_per_token(x, True)
        want = ops.sparse24_int8_mm(q, s, None, f.values, f.meta, f.scale, b, x.dtype)
    assert torch.equal(got, want)
    assert not any(ref() is f.values for ref, *_ in s24._CSLT_CACHE.values())


# ------------------------------------------------------------------------------------------ GPU
def sweep(fn):
    """N x K that cuSPARSELt accepts for every dtype, odd M, bias or not."""
    for mark in (pytest.mark.parametrize("N,K", [(32, 64), (128, 256), (256, 1024)]),
                 pytest.mark.parametrize("M", ODD_MS), pytest.mark.parametrize("with_bias", [False, True])):
        fn = mark(fn)
    return fn


def ref_halves(x, w, bias):
    y = x.double() @ w.double().T
    return y + bias.double() if bias is not None else y


@gpu_cslt
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@sweep
def test_cslt_mm_halves(dtype, N, K, M, with_bias):
    w = weight_24(N, K, dtype)
    x = torch.randn(M, K, device="cuda").to(dtype)
    b = torch.randn(N, device="cuda").to(dtype) if with_bias else None
    y = ops.cslt_mm(x, ops.cslt_compress(w), N, b)
    assert y.shape == (M, N) and y.dtype == dtype and y.is_contiguous()
    assert_close_to_ref(y.cpu(), ref_halves(x, w, b).cpu(), x.cpu(), w.cpu(), dtype)


@gpu_cslt
@pytest.mark.parametrize("out_dtype", HALVES, ids=str)
@sweep
def test_cslt_mm_int8(out_dtype, N, K, M, with_bias):
    w = weight_24(N, K, torch.int8)
    x = torch.randint(-127, 128, (M, K), device="cuda", dtype=torch.int8)
    alpha = torch.rand(N, device="cuda") * 1e-3 + 1e-4
    rs = torch.rand(M, device="cuda") * 1e-2 + 1e-3
    b = torch.randn(N, device="cuda").to(out_dtype) if with_bias else None
    y = ops.cslt_mm(x, ops.cslt_compress(w), N, b, alpha, rs, out_dtype)
    acc = x.double() @ w.double().T  # exact
    ref = acc * alpha.double() * rs.double()[:, None] + (b.double() if with_bias else 0)
    # two roundings to out_dtype (cuSPARSELt's D = acc * alpha, then the epilogue): 2 ulp of the output
    scale = (acc.abs() * alpha.double() * rs.double()[:, None]) + (b.double().abs() if with_bias else 0) + 1e-3
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[out_dtype]
    assert y.dtype == out_dtype and ((y.double() - ref).abs() / scale).max().item() <= tol


@gpu_cslt
def test_second_call_neither_searches_nor_plans():
    sparsekit._ext.C.cusparselt_release()
    N, K, M = 256, 512, 64
    w = weight_24(N, K, torch.float16)
    c = ops.cslt_compress(w)
    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    b1, b2 = torch.randn(N, device="cuda", dtype=torch.float16), torch.randn(N, device="cuda", dtype=torch.float16)
    y1 = ops.cslt_mm(x, c, N, b1)
    first = stats()
    assert first["plans_created"] == 1 and first["searches"] in (0, 1)
    y2 = ops.cslt_mm(x, c, N, b1)
    second = stats()
    assert second["plans_created"] == 1 and second["searches"] == first["searches"]
    assert second["hits"] == first["hits"] + 1
    assert torch.equal(y1, y2)
    ops.cslt_mm(x, c, N, b2)  # another bias (another layer): a plan, but the shape's algorithm is remembered
    third = stats()
    assert third["plans_created"] == 2 and third["searches"] == first["searches"]


@gpu_cslt
def test_refuses_bad_weights_and_buffers():
    with pytest.raises(ValueError, match="multiples of 16 for float16.*sparse24_mm"):
        ops.cslt_compress(weight_24(24, 64, torch.float16))
    with pytest.raises(ValueError, match="not 2:4"):
        ops.cslt_compress(torch.randn(32, 64, device="cuda", dtype=torch.float16))
    c = ops.cslt_compress(weight_24(32, 64, torch.float16))
    with pytest.raises(ValueError, match="expected compressed of"):
        ops.cslt_mm(torch.randn(8, 64, device="cuda", dtype=torch.float16), c[:-16], 32)


def spy(monkeypatch, name):
    """Records M of every call of the op handle the 2:4 formats call (sparse24.py's _CSLT_MM, _SPARSE24_MM, ...)."""
    calls = []
    real = getattr(s24, name)

    def wrapped(*a, **k):
        calls.append(a[0].shape[0] if a[0].dim() == 2 else -1)
        return real(*a, **k)

    monkeypatch.setattr(s24, name, wrapped)
    return calls


@gpu_cslt
@pytest.mark.parametrize("fmt,dtype", [("2:4", torch.float16), ("2:4", torch.bfloat16),
                                       ("2:4+int8", torch.float16), ("2:4+int8", torch.bfloat16)])
def test_format_routing_by_m(fmt, dtype, monkeypatch):
    """SPARSEKIT_CSLT_MIN_M fixes the boundary: the own kernels up to it, cuSPARSELt above."""
    monkeypatch.setenv("SPARSEKIT_CSLT_MIN_M", "16")
    N, K = 256, 512
    w = weight_24(N, K, dtype) * 0.05
    f = formats.get(fmt).from_dense(w)
    b = torch.randn(N, device="cuda", dtype=dtype)
    int8 = fmt == "2:4+int8"
    own_op = ops.sparse24_int8_mm if int8 else ops.sparse24_mm
    cslt = spy(monkeypatch, "_CSLT_MM")
    own = spy(monkeypatch, "_CUDA_SPARSE24_INT8_LINEAR" if int8 else "_SPARSE24_MM")
    for M in (4, 16, 17, 128):
        x = torch.randn(M, K, device="cuda", dtype=dtype)
        y = f.matmul(x, b)
        if int8:  # the same quantized product through the own kernel (one rounding instead of two)
            q, s, _ = ops.quantize_per_token(x, True)
            want = own_op(q, s, None, f.values, f.meta, f.scale, b, dtype).double()
        else:
            want = ref_halves(x, f.to_dense(), b)
        assert_close_to_ref(y.cpu(), want.cpu(), x.cpu(), f.to_dense().float().cpu(), dtype)
    # M <= 16: the own kernels (2:4+int8: the compiled W8A8 tensor-core kernel), cuSPARSELt above
    assert cslt == [17, 128] and own == [4, 16]


@gpu_cslt
@pytest.mark.parametrize("fmt,dtype", [("2:4", torch.bfloat16), ("2:4+int8", torch.float16)])
def test_format_routing_is_measured_per_m_bucket(fmt, dtype, monkeypatch, tmp_path):
    """Without SPARSEKIT_CSLT_MIN_M, the first call of an M bucket times the own kernel and cuSPARSELt on the
    device and keeps the faster (memory and disk); the next call of that bucket runs one kernel, once. Results
    are right whichever wins."""
    from sparsekit.triton import autotune

    monkeypatch.delenv("SPARSEKIT_CSLT_MIN_M", raising=False)
    monkeypatch.delenv("SPARSEKIT_TRITON_AUTOTUNE", raising=False)
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path))
    autotune.clear()
    N, K = 512, 1024
    int8 = fmt == "2:4+int8"
    w = weight_24(N, K, dtype) * 0.05
    f = formats.get(fmt).from_dense(w)
    b = torch.randn(N, device="cuda", dtype=dtype)
    cslt = spy(monkeypatch, "_CSLT_MM")
    own = spy(monkeypatch, "_CUDA_SPARSE24_INT8_LINEAR" if int8 else "_SPARSE24_MM")
    table = autotune.table("sparse24_int8_route" if int8 else "sparse24_route")
    for M in (1, 3, 48, 128):
        x = torch.randn(M, K, device="cuda", dtype=dtype)
        f.matmul(x, b)  # measures
        cslt.clear()
        own.clear()
        y = f.matmul(x, b)
        assert len(cslt) + len(own) == 1, (M, cslt, own)  # measured once: one kernel now
        key = (torch.cuda.current_device(), N, K, {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype],
               1 << (M - 1).bit_length())
        assert table[key]["path"] == ("cslt" if cslt else "own")
        if int8:
            want = ops.reference.sparse24_int8_linear(x.cpu(), f.values.cpu(), f.meta.cpu(), f.scale.cpu(), b.cpu())
            torch.testing.assert_close(y.float().cpu(), want.float(), rtol=2e-2, atol=2e-2)
        else:
            assert_close_to_ref(y.cpu(), ref_halves(x, f.to_dense(), b).cpu(), x.cpu(), f.to_dense().float().cpu(),
                                dtype)
    assert any(k.startswith("sparse24") for k in json.loads(Path(autotune.cache_file(
        autotune.device_tag(torch.device("cuda")))).read_text())["configs"])
    autotune.clear()


@gpu_cslt
def test_compressed_cache_follows_the_buffers():
    N, K = 128, 256
    lin = torch.nn.Linear(K, N).half().cuda()
    with torch.no_grad():
        lin.weight.mul_(mask_24(N, K, "cuda"))
    sl = sparsekit.nn.SparseLinear.from_linear(lin, format="2:4")
    first = s24._CSLT_CACHE[id(sl.values)][2]  # compressed at conversion, before any forward (issue 17, D4)
    x = torch.randn(64, K, device="cuda", dtype=torch.float16)
    sl(x)
    sl(x)
    assert s24._CSLT_CACHE[id(sl.values)][2] is first  # compressed once
    assert not any(k.endswith("cslt") or "compressed" in k for k in sl.state_dict())
    sl.load_state_dict(sl.state_dict())  # new buffers, compressed again by the load
    assert s24._CSLT_CACHE[id(sl.values)][2] is not first
    sl(x)
    old_id, old = id(sl.values), weakref.ref(sl.values)
    sl.float()  # new buffers: the old entry goes with the old tensor
    assert old() is None and old_id not in s24._CSLT_CACHE


@gpu_cslt
def test_threads_give_serial_results():
    N, K = 256, 512
    w = weight_24(N, K, torch.float16)
    c = ops.cslt_compress(w)
    xs = [torch.randn(m, K, device="cuda", dtype=torch.float16) for m in (24, 40, 64, 100, 24, 64, 200, 333)]
    sparsekit._ext.C.cusparselt_release()  # the threads race to build and search the plans
    out = [None] * len(xs)

    def work(i):
        out[i] = ops.cslt_mm(xs[i], c, N)
        torch.cuda.current_stream().synchronize()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats()["plans_created"] == len(set(x.shape[0] for x in xs))  # one plan per M, whoever built it
    serial = [ops.cslt_mm(x, c, N) for x in xs]  # the same cached plans and algorithms: the same bits
    for got, want, x in zip(out, serial, xs):
        assert torch.equal(got, want)
        assert_close_to_ref(got.cpu(), ref_halves(x, w, None).cpu(), x.cpu(), w.cpu(), torch.float16)


@gpu_cslt
def test_cuda_graph_capture():
    N, K, M = 256, 512, 64
    w = weight_24(N, K, torch.float16)
    c = ops.cslt_compress(w)
    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.cslt_mm(x, c, N)  # warm-up: plan and search outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = ops.cslt_mm(x, c, N)
    x.copy_(torch.randn(M, K, device="cuda", dtype=torch.float16))
    g.replay()
    torch.cuda.synchronize()
    assert_close_to_ref(y.cpu(), ref_halves(x, w, None).cpu(), x.cpu(), w.cpu(), torch.float16)


@gpu_cslt
def test_opcheck():
    N, K = 64, 128
    w = weight_24(N, K, torch.float16)
    c = ops.cslt_compress(w)
    x = torch.randn(24, K, device="cuda", dtype=torch.float16)
    torch.library.opcheck(torch.ops.sparsekit.cslt_mm.default, (x, c, N, torch.randn(N, device="cuda").half()))
    wq = weight_24(N, K, torch.int8)
    torch.library.opcheck(torch.ops.sparsekit.cslt_mm.default,
                          (x.to(torch.int8), ops.cslt_compress(wq), N, None, torch.rand(N, device="cuda"),
                           torch.rand(24, device="cuda"), torch.float16))
    torch.library.opcheck(torch.ops.sparsekit.cslt_compress.default, (w,), test_utils=("test_schema",))


# ------------------------------------------------------------------------------------------ GPU: #17's causes
@gpu_cslt
@pytest.mark.parametrize("dtype", HALVES + [torch.int8], ids=str)
def test_compress_accepts_valid_weights_whatever_the_allocator_left(dtype):
    """The prune check writes its flag only on a violation: with an uninitialised flag, valid weights were
    refused whenever the caching allocator handed back dirty memory. Dirty it on purpose first."""
    for _ in range(4):
        junk = torch.full((1 << 16,), -1, dtype=torch.int32, device="cuda")
        del junk  # the next small allocations reuse this memory
        w = weight_24(128, 256, dtype)
        c = ops.cslt_compress(w)
        assert c.dtype == torch.uint8 and c.numel() > 0
    bad = weight_24(128, 256, dtype)
    bad[3, 4:8] = 1
    with pytest.raises(ValueError, match="not 2:4"):
        ops.cslt_compress(bad)


@gpu_cslt
def test_compress_refuses_graph_capture_clearly():
    w = weight_24(64, 128, torch.bfloat16)
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph capture forbids"):
        with torch.cuda.graph(g):
            ops.cslt_compress(w)
    torch.cuda.synchronize()  # the context is healthy


@gpu_cslt
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_misaligned_views(dtype):
    """16-byte alignment: a misaligned weight view is copied, a misaligned compressed buffer is refused, a
    misaligned bias is added after the matmul, a misaligned alpha copied; results as with aligned tensors."""
    N, K, M = 64, 128, 17
    w = weight_24(N, K, dtype)
    flat = torch.empty(N * K + 1, device="cuda", dtype=dtype)
    wv = flat[1:].view(N, K)  # contiguous, 2 bytes off
    wv.copy_(w)
    c = ops.cslt_compress(w)
    assert torch.equal(ops.cslt_compress(wv), c)
    cv = torch.empty(c.numel() + 1, device="cuda", dtype=torch.uint8)[1:]
    cv.copy_(c)
    x = torch.randn(M, K, device="cuda").to(dtype)
    with pytest.raises(ValueError, match="16-byte aligned"):
        ops.cslt_mm(x, cv, N)
    b = torch.randn(N, device="cuda").to(dtype)
    bv = torch.empty(N + 1, device="cuda", dtype=dtype)[1:]
    bv.copy_(b)
    y_aligned, y_view = ops.cslt_mm(x, c, N, b), ops.cslt_mm(x, c, N, bv)
    assert_close_to_ref(y_view.cpu(), ref_halves(x, w, b).cpu(), x.cpu(), w.cpu(), dtype)
    assert_close_to_ref(y_aligned.cpu(), ref_halves(x, w, b).cpu(), x.cpu(), w.cpu(), dtype)


@gpu_cslt
def test_release_while_other_threads_use_plans():
    """cusparselt_release() in one thread never destroys a handle that a plan in another thread uses."""
    N, K = 256, 512
    w = weight_24(N, K, torch.bfloat16)
    c = ops.cslt_compress(w)
    x = torch.randn(64, K, device="cuda", dtype=torch.bfloat16)
    want = ops.cslt_mm(x, c, N)
    errors = []

    def work():
        try:
            for _ in range(50):
                if not torch.equal(ops.cslt_mm(x, c, N), want):
                    errors.append("different result")
            torch.cuda.current_stream().synchronize()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        sparsekit._ext.C.cusparselt_release()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    assert not errors, errors[:3]
