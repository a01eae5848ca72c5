"""The CUDA format kernels (csrc/cuda: sparse24_mm, bitmap_mm, bsr_mm) and GPU packers (pack_*) against
the references and the CPU packers.

* GPU tests (skipped without a CUDA device): the compiled kernels against the float64 reference for odd M,
  every dtype, unaligned K, empty rows, 0% / 100% density, non-contiguous and misaligned inputs, split-K
  sizes; every output element written (the allocator is poisoned with NaN first); CUDA graph capture;
  opcheck; the packers bit for bit equal to the CPU ``from_dense``; the CUDA kernel, not the fallback,
  being the one that runs.
* CPU tests (always): the packers' references (sparsekit/ops/packing.py) against ``from_dense``, their
  checks and, where the pack ops are defined, the ops through the fallback.

`bench/cuda_sanitize.sh` runs this file under compute-sanitizer.
"""
import os

from pathlib import Path

import pytest
import torch

import sparsekit
from sparsekit import formats
from sparsekit.ops import packing, reference

from helpers import assert_close_to_ref

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
HAS_PACK_OPS = hasattr(torch.ops.sparsekit, "pack_sparse24")
pack_ops = pytest.mark.skipif(not HAS_PACK_OPS, reason="the pack ops' schemas are not in sparsekit/ops/_schemas.py")

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_ID = lambda d: str(d).replace("torch.", "")  # noqa: E731  (test ids "float16", ...)
MS = [1, 3, 8, 16, 17, 33]


# ------------------------------------------------------------------------------------------ helpers
def mask_24(N, K, drop=0.15, g=None):
    score = torch.rand(N, K // 4, 4, generator=g)
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(2, score.topk(2, dim=-1).indices, True)
    keep &= ~(torch.rand(N, K // 4, 4, generator=g) < drop)  # some groups keep fewer than two
    return keep.reshape(N, K)


def block_mask(N, K, R, C, density):
    bm = torch.rand(N // R, K // C) < density
    if N // R > 1:
        bm[1] = False  # an empty block row
    return bm.repeat_interleave(R, 0).repeat_interleave(C, 1) & (torch.rand(N, K) < 0.9)


def cuda_kernel_source(op):
    """The file that registered the active CUDA kernel of sparsekit::<op> (None if none)."""
    for line in torch._C._dispatch_dump(f"sparsekit::{op}").splitlines():
        if line.startswith("CUDA:"):
            return line.split("registered at ", 1)[1].split(":", 1)[0]
    return None


# bitmap_mm and bsr_mm: the CUDA implementation of the public op is sparsekit/triton's router; the
# compiled kernel is also registered as _cuda_<op> (sparsekit/ops/_schemas.py), which these tests call.
ALIASED = ("bitmap_mm", "bsr_mm")


def cpp_op(op):
    return getattr(torch.ops.sparsekit, f"_cuda_{op}" if op in ALIASED else op)


def require_cpp_kernel(op):
    op = f"_cuda_{op}" if op in ALIASED else op
    if not sparsekit._ext.available():
        pytest.skip(f"the compiled extension is not loaded: {sparsekit._ext.load_error}")
    src = cuda_kernel_source(op)
    if src is None or "ops_cuda_formats.cpp" not in src:
        pytest.skip(f"the CUDA kernel of sparsekit::{op} in this process is not the C++ one (registered at {src})")


def poison_allocator(nbytes=64 << 20):
    """Fill what the caching allocator will hand out next with NaN, so that an unwritten output shows.
    (Without the caching allocator, under compute-sanitizer, initcheck finds unwritten outputs instead.)"""
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
        return
    t = torch.full((nbytes // 4,), float("nan"), device="cuda")
    del t


def ref_mm(x, w_masked, bias):
    ref = x.double() @ w_masked.double().T
    return ref + bias.double() if bias is not None else ref


def check(y, x, w_masked, bias, dtype):
    assert y.dtype == dtype and y.shape == (x.shape[0], w_masked.shape[0])
    assert torch.isfinite(y).all(), "an output element is NaN / inf: not written?"
    assert_close_to_ref(y.cpu(), ref_mm(x.cpu(), w_masked.cpu(), None if bias is None else bias.cpu()), x.cpu(),
                        w_masked.cpu(), dtype)


def make_x(M, K, dtype, layout):
    if layout == "contiguous":
        return torch.randn(M, K, device="cuda").to(dtype)
    if layout == "row-stride":  # a column slice: row stride > K, unit column stride
        return torch.randn(M, K + 5, device="cuda").to(dtype)[:, 2:K + 2]
    return torch.randn(K, M, device="cuda").to(dtype).T  # transposed: the binding makes it contiguous


# ------------------------------------------------------------------------------------------ dispatch
@gpu
@pytest.mark.parametrize("op", ["sparse24_mm", "bitmap_mm", "bsr_mm", "_cuda_bitmap_mm", "_cuda_bsr_mm"])
def test_cuda_kernel_is_registered(op):
    if not sparsekit._ext.available():
        pytest.skip(f"the compiled extension is not loaded: {sparsekit._ext.load_error}")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekit::{op}", "CUDA")
    dump = torch._C._dispatch_dump(f"sparsekit::{op}")
    assert "ops_cuda_formats.cpp" in dump, dump  # registered (maybe overridden by Triton: see require_cpp_kernel)


def cuda_kernels_run(fn):
    """Names of the CUDA kernels fn() launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events()]


@gpu
def test_the_cuda_kernels_run_not_the_fallback():
    """The ops launch the kernels of csrc/cuda (the reference fallback would launch dense matmuls instead).
    Under compute-sanitizer the profiler cannot subscribe (CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED):
    there test_cuda_kernel_is_registered (the dispatcher's table) stands for this test."""
    if os.environ.get("SPARSEKIT_UNDER_SANITIZER"):
        pytest.skip("the profiler cannot subscribe under compute-sanitizer; test_cuda_kernel_is_registered "
                    "checks the dispatch instead")
    w = torch.randn(16, 64)
    x = torch.randn(2, 64, device="cuda")
    f24 = formats.Sparse24Weight.from_dense(w, mask_24(16, 64))
    fbm = formats.BitmapWeight.from_dense(w, torch.rand(16, 64) < 0.4)
    fbs = formats.BSRWeight.from_dense(w, block_mask(16, 64, 4, 8, 0.5), (4, 8))
    cases = [("sparse24_mm", "sparse24_decode_kernel",
              lambda: sparsekit.ops.sparse24_mm(x, f24.values.cuda(), f24.meta.cuda())),
             ("bitmap_mm", "bitmap_decode",  # bitmap_decode_kernel (v1) or bitmap_decode_v2_kernel
              lambda: cpp_op("bitmap_mm")(x, fbm.bitmap.cuda(), fbm.word_offsets.cuda(), fbm.values.cuda())),
             ("bsr_mm", "bsr_mm_kernel",
              lambda: cpp_op("bsr_mm")(x, fbs.crow_indices.cuda(), fbs.col_indices.cuda(), fbs.values.cuda(), 16))]
    if HAS_PACK_OPS:
        cases.append(("pack_sparse24", "pack24_kernel", lambda: packing.pack_sparse24(w.cuda(), mask_24(16, 64).cuda())))
        cases.append(("pack_csr", "scatter_kept_kernel", lambda: packing.pack_csr(w.cuda())))
    for op, kernel, fn in cases:
        require_cpp_kernel(op)
        names = cuda_kernels_run(fn)
        assert any(kernel in n for n in names), (op, names)


def test_cuda_backend_choice_by_m_and_setting(monkeypatch):
    """Which CUDA kernel serves bitmap_mm / bsr_mm (sparsekit.triton.backend): logic only, no GPU."""
    from sparsekit import triton as skt

    monkeypatch.setattr(skt, "_backend", dict.fromkeys(skt._AUTO_MAX_M, "auto"))
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    assert [skt.backend("bitmap_mm", m) for m in (1, 16, 17)] == ["compiled", "compiled", "triton"]
    assert [skt.backend("bsr_mm", m) for m in (1, 17)] == ["compiled", "triton"]  # (and use_compiled_bsr)
    skt.set_backend("bsr_mm", "compiled")
    assert skt.backend("bsr_mm", 4096) == "compiled"
    skt.set_backend("bitmap_mm", "triton")
    assert skt.backend("bitmap_mm", 1) == "triton"
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: False)  # a build without CUDA kernels: Triton
    assert skt.backend("bsr_mm", 1) == "triton"
    with pytest.raises(ValueError, match="expected op in"):
        skt.set_backend("csr_mm", "triton")
    with pytest.raises(ValueError, match="expected backend in"):
        skt.set_backend("bitmap_mm", "cuda")
    assert [skt.backend("int8_weight_only_mm", m) for m in (1, 16, 17)] == ["triton", "triton", "triton"]
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    assert [skt.backend("int8_weight_only_mm", m) for m in (1, 16, 17)] == ["compiled", "compiled", "triton"]
    assert [skt.backend("sparse24_int8_mm", m) for m in (1, 16, 17)] == ["compiled", "compiled", "triton"]
    monkeypatch.setenv("SPARSEKIT_CUDA_BACKEND", "bitmap_mm=compiled, bsr_mm=triton, int8_weight_only_mm=triton")
    skt._parse_env()
    assert skt._backend == {"bitmap_mm": "compiled", "bsr_mm": "triton", "int8_weight_only_mm": "triton",
                            "int8_mm": "auto", "sparse24_int8_mm": "auto", "quantize_per_token": "auto"}
    # symmetric quantize_per_token: the compiled kernel at every M under "auto"
    assert [skt.backend("quantize_per_token", m) for m in (1, 17, 1 << 20)] == ["compiled"] * 3


def test_bsr_router_takes_the_compiled_kernel_where_its_tensor_cores_apply(monkeypatch):
    """bsr_mm on CUDA (sparsekit/triton's implementation, logic only): "auto" sends M <= 16 to the compiled kernel
    only for float16 / bfloat16 with blocks of multiples of 16 on sm_80+ and one chunk of blocks fitting in shared
    memory (the C++ test, mirrored: at 227 KB per block any K, K split where x's rows do not fit whole, unless a
    block is so wide that one chunk of M = 16 rows does not fit); "compiled" always, "triton" never."""
    from sparsekit import triton as skt

    monkeypatch.setattr(skt, "_backend", dict.fromkeys(skt._AUTO_MAX_M, "auto"))
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    mma = {"ok": True}
    monkeypatch.setattr(skt, "_has_mma", lambda device: mma["ok"])
    monkeypatch.setattr(skt, "_smem_blocks", {0: (227 * 1024, 228 * 1024)})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    dev = torch.device("cuda", 0)
    assert skt._bsr_tile_fits(16, 6144, 64, dev) and skt._bsr_tile_fits(16, 14336, 64, dev)
    assert skt._bsr_tile_fits(1, 100_000, 64, dev) and skt._bsr_tile_fits(8, 14336, 48, dev)
    assert not skt._bsr_tile_fits(16, 16384, 8192, dev) and skt._bsr_tile_fits(1, 16384, 8192, dev)
    # x whole in shared memory up to K = 6144 at M = 16: beyond it the chunked launch (8 warps)
    assert skt._bsr_chunk_smem(16, 6144, 64, 227 * 1024, 228 * 1024) == 16 * (12416 + 16) + 16 * 2048
    assert skt._bsr_chunk_smem(16, 6208, 64, 227 * 1024, 228 * 1024) < 16 * (12416 + 16) + 8 * 2048

    def takes(M, K=256, dtype=torch.bfloat16, block=(64, 64)):
        return skt.use_compiled_bsr(torch.empty(M, K, dtype=dtype), torch.empty(3, *block, dtype=dtype))

    assert [takes(m) for m in (1, 16, 17)] == [True, True, False]
    assert not takes(1, dtype=torch.float32) and not takes(1, block=(16, 8)) and not takes(1, block=(8, 16))
    assert takes(16, K=14336) and takes(1, K=14336) and not takes(16, K=16384, block=(16, 8192))
    mma["ok"] = False
    assert not takes(1)
    skt.set_backend("bsr_mm", "compiled")
    assert takes(1, dtype=torch.float32) and takes(4096)
    skt.set_backend("bsr_mm", "triton")
    mma["ok"] = True
    assert not takes(1)


def test_int8_weight_only_router_picks_the_compiled_kernel_for_small_m_halves(monkeypatch):
    """The CUDA implementation of int8_weight_only_mm (sparsekit/triton): float16 / bfloat16 x with M <= 16
    on an sm_80+ device -> the compiled tensor-core kernel (its _cuda_ alias); float32 x, larger M, an older
    device or backend "triton" -> the Triton launcher. Logic only: CPU tensors, the launcher a stand-in, the
    alias's CPU fallback (the reference) standing in for the kernel."""
    from sparsekit import triton as skt

    calls = []

    def fake_lazy(module, name):
        return lambda: (lambda *a: calls.append(name) or torch.zeros(a[0].shape[0], a[1].shape[0], dtype=a[0].dtype))

    monkeypatch.setattr(skt, "_lazy", fake_lazy)
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    monkeypatch.setattr(skt, "_backend", dict.fromkeys(skt._AUTO_MAX_M, "auto"))
    mma = {"ok": True}
    monkeypatch.setattr(skt, "_has_mma", lambda device: mma["ok"])
    impl = skt._make_impls()["int8_weight_only_mm"]
    w = formats.Int8Weight.from_dense(torch.randn(8, 32))

    def route(M, dtype):
        calls.clear()
        x = torch.randn(M, 32).to(dtype)
        y = impl(x, w.qweight, w.scale, None)
        if calls:
            return "triton"
        torch.testing.assert_close(y, reference.int8_weight_only_mm(x, w.qweight, w.scale), rtol=0, atol=0)
        return "compiled"

    assert [route(m, torch.bfloat16) for m in (1, 16, 17)] == ["compiled", "compiled", "triton"]
    assert [route(m, torch.float16) for m in (3, 33)] == ["compiled", "triton"]
    assert route(1, torch.float32) == "triton"
    mma["ok"] = False  # below sm_80
    assert route(1, torch.float16) == "triton"
    mma["ok"] = True
    skt.set_backend("int8_weight_only_mm", "triton")
    assert route(1, torch.float16) == "triton"
    monkeypatch.undo()
    assert skt._has_mma(torch.device("cpu")) is False  # not a CUDA device: never the compiled kernel


@gpu
@pytest.mark.parametrize("op", ["bitmap_mm", "bsr_mm"])
@pytest.mark.parametrize("M", [1, 16, 17, 64])
def test_both_cuda_backends_match_the_reference(op, M, monkeypatch):
    from sparsekit import triton as skt

    if not skt.registered():
        pytest.skip("the Triton kernels are not registered")
    require_cpp_kernel(op)
    w = torch.randn(32, 64, dtype=torch.float16)
    if op == "bitmap_mm":
        f = formats.BitmapWeight.from_dense(w, torch.rand(32, 64) < 0.3)
        call = lambda x: sparsekit.ops.bitmap_mm(x, f.bitmap.cuda(), f.word_offsets.cuda(), f.values.cuda())  # noqa: E731
    else:
        f = formats.BSRWeight.from_dense(w, block_mask(32, 64, 16, 16, 0.5), (16, 16))
        call = lambda x: sparsekit.ops.bsr_mm(x, f.crow_indices.cuda(), f.col_indices.cuda(), f.values.cuda(), 32)  # noqa: E731
    x = torch.randn(M, 64, device="cuda", dtype=torch.float16)
    for b in ("compiled", "triton"):
        monkeypatch.setitem(skt._backend, op, b)
        assert skt.backend(op, M) == b
        check(call(x), x, f.to_dense().cuda(), None, torch.float16)


@gpu
@pytest.mark.parametrize("op", ["pack_sparse24", "pack_bitmap", "pack_csr", "pack_bsr"])
def test_pack_cuda_kernel_is_registered(op):
    if not HAS_PACK_OPS:
        pytest.skip("the pack ops' schemas are not in sparsekit/ops/_schemas.py")
    require_cpp_kernel(op)


# ------------------------------------------------------------------------------------------ 2:4
S24_SHAPES = [(37, 256), (21, 52), (9, 4), (13, 384), (64, 4224), (5, 8320), (4, 8196)]


@gpu
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
@pytest.mark.parametrize("N,K", S24_SHAPES)
@pytest.mark.parametrize("M", MS)
def test_sparse24_mm(dtype, N, K, M):
    require_cpp_kernel("sparse24_mm")
    w = torch.randn(N, K).to(dtype)
    mask = mask_24(N, K)
    mask[min(2, N - 1)] = False  # an empty row
    f = formats.Sparse24Weight.from_dense(w, mask)
    x = make_x(M, K, dtype, "row-stride" if M == 3 else "contiguous")
    b = torch.randn(N, device="cuda").to(dtype) if M % 2 else None
    poison_allocator()
    y = sparsekit.ops.sparse24_mm(x, f.values.cuda(), f.meta.cuda(), b)
    check(y, x, f.to_dense().cuda(), b, dtype)


@gpu
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
@pytest.mark.parametrize("M", [1, 8, 16, 40])
def test_sparse24_mm_split_k(dtype, M):
    """K long enough that x's tile does not fit in shared memory: K is split and the partial sums finished."""
    require_cpp_kernel("sparse24_mm")
    N, K = 48, 16384 if dtype == torch.float32 else 32768
    w = torch.randn(N, K).to(dtype)
    f = formats.Sparse24Weight.from_dense(w, mask_24(N, K))
    x = torch.randn(M, K, device="cuda").to(dtype)
    b = torch.randn(N, device="cuda").to(dtype)
    poison_allocator()
    check(sparsekit.ops.sparse24_mm(x, f.values.cuda(), f.meta.cuda(), b), x, f.to_dense().cuda(), b, dtype)


@gpu
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
def test_sparse24_mm_layouts_and_alignment(dtype):
    """Transposed x, and values / meta views that are not 16-byte aligned (the general path)."""
    require_cpp_kernel("sparse24_mm")
    N, K, M = 19, 512, 5
    w = torch.randn(N, K).to(dtype)
    f = formats.Sparse24Weight.from_dense(w, mask_24(N, K))
    x = make_x(M, K, dtype, "transposed")
    y = sparsekit.ops.sparse24_mm(x, f.values.cuda(), f.meta.cuda())
    check(y, x, f.to_dense().cuda(), None, dtype)
    vbuf = torch.empty(N * K // 2 + 1, dtype=dtype, device="cuda")
    mbuf = torch.empty(N * K // 8 + 1, dtype=torch.uint8, device="cuda")
    vals = vbuf[1:].view(N, K // 2)
    meta = mbuf[1:].view(N, K // 8)
    vals.copy_(f.values)
    meta.copy_(f.meta)
    assert vals.data_ptr() % 16 and meta.data_ptr() % 16
    check(sparsekit.ops.sparse24_mm(x, vals, meta), x, f.to_dense().cuda(), None, dtype)


@gpu
def test_sparse24_mm_edge_sizes():
    require_cpp_kernel("sparse24_mm")
    for M, N, K in [(0, 8, 16), (3, 0, 16), (2, 5, 0)]:
        x = torch.randn(M, K, device="cuda")
        vals = torch.randn(N, K // 2, device="cuda")
        meta = torch.full((N, (K + 7) // 8), 0x44, dtype=torch.uint8, device="cuda")  # positions 0 and 1
        b = torch.randn(N, device="cuda")
        y = torch.ops.sparsekit.sparse24_mm(x, vals, meta, b)
        assert y.shape == (M, N)
        if M and N:
            assert torch.equal(y, b.expand(M, N))  # K == 0: the bias


# ------------------------------------------------------------------------------------------ bitmap
BITMAP_CASES = [(37, 77, 0.3), (5, 32, 1.0), (6, 40, 0.0), (19, 2100, 0.5), (11, 1, 0.5), (23, 1500, 0.05),
                (7, 1024, 0.97), (64, 4096, 0.5)]


@gpu
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
@pytest.mark.parametrize("N,K,density", BITMAP_CASES)
@pytest.mark.parametrize("M", MS)
def test_bitmap_mm(dtype, N, K, density, M):
    require_cpp_kernel("bitmap_mm")
    w = torch.randn(N, K).to(dtype)
    mask = torch.rand(N, K) < density
    mask[min(2, N - 1)] = False
    f = formats.BitmapWeight.from_dense(w, mask)
    x = make_x(M, K, dtype, "row-stride" if M == 3 else "contiguous")
    b = torch.randn(N, device="cuda").to(dtype) if M % 2 else None
    poison_allocator()
    y = cpp_op("bitmap_mm")(x, f.bitmap.cuda(), f.word_offsets.cuda(), f.values.cuda(), b)
    check(y, x, f.to_dense().cuda(), b, dtype)


@gpu
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
@pytest.mark.parametrize("M", [1, 16, 40])
def test_bitmap_mm_split_k_and_misaligned(dtype, M):
    require_cpp_kernel("bitmap_mm")
    N, K = 40, 30000 if dtype == torch.float32 else 60000
    w = torch.randn(N, K).to(dtype)
    f = formats.BitmapWeight.from_dense(w, torch.rand(N, K) < 0.3)
    x = torch.randn(M, K, device="cuda").to(dtype)
    b = torch.randn(N, device="cuda").to(dtype)
    check(cpp_op("bitmap_mm")(x, f.bitmap.cuda(), f.word_offsets.cuda(), f.values.cuda(), b), x,
          f.to_dense().cuda(), b, dtype)
    buf = torch.empty(f.values.numel() + 1, dtype=dtype, device="cuda")
    vals = buf[1:]
    vals.copy_(f.values)
    assert vals.data_ptr() % 16
    check(cpp_op("bitmap_mm")(x, f.bitmap.cuda(), f.word_offsets.cuda(), vals, b), x, f.to_dense().cuda(), b, dtype)


@gpu
@pytest.mark.parametrize("variant", ["v2", "v1", "v3"])
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
# (v2's batch shapes by density: wide <= 10.6 % in 16 bits / 5.3 % in fp32, wide-dense <= 31.9 % / 15.9 %, else
# dense; the sparse shape, a fallback on smaller devices, is forced below)
@pytest.mark.parametrize("N,K,density", [(300, 900, 0.1), (200, 9000, 0.05), (120, 3000, 0.13), (150, 4100, 0.3),
                                         (70, 2050, 1.0), (64, 14336, 0.3)])
@pytest.mark.parametrize("M", [1, 5, 16])
def test_bitmap_decode_variants(monkeypatch, variant, dtype, N, K, density, M):
    """The designs of the decode kernel (SPARSEKIT_CUDA_DECODE; v3: the tensor-core kernel for float16 /
    bfloat16, the batched one for float32), with more rows than a small grid's warps (batches that cross rows),
    rows longer than a batch, empty and dense rows, K split."""
    require_cpp_kernel("bitmap_mm")
    monkeypatch.setenv("SPARSEKIT_CUDA_DECODE", variant)
    check_compiled_bitmap(dtype, N, K, density, M, bias=M % 2 == 1)


def check_compiled_bitmap(dtype, N, K, density, M, bias):
    """The compiled bitmap kernel against the reference on a random (N, K) weight of the given density, with
    row 1 empty and row 3 dense."""
    w = torch.randn(N, K).to(dtype)
    mask = torch.rand(N, K) < density
    mask[1] = False
    mask[3] = True
    f = formats.BitmapWeight.from_dense(w, mask)
    x = make_x(M, K, dtype, "contiguous")
    b = torch.randn(N, device="cuda").to(dtype) if bias else None
    poison_allocator()
    y = torch.ops.sparsekit._cuda_bitmap_mm(x, f.bitmap.cuda(), f.word_offsets.cuda(), f.values.cuda(), b)
    check(y, x, f.to_dense().cuda(), b, dtype)


@gpu
@pytest.mark.parametrize("shape", ["wide", "wide-dense", "sparse", "dense"])
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
@pytest.mark.parametrize("density,M", [(0.03, 1), (0.12, 5), (0.3, 16), (0.8, 2)])
def test_bitmap_v2_forced_shapes(monkeypatch, shape, dtype, density, M):
    """SPARSEKIT_CUDA_BITMAP_SHAPE forces the batched kernel's shape whatever the density (what
    bench/cuda_gpu.py --bitmap-shapes times): each is right far from the densities it is chosen for."""
    require_cpp_kernel("bitmap_mm")
    monkeypatch.setenv("SPARSEKIT_CUDA_DECODE", "v2")
    monkeypatch.setenv("SPARSEKIT_CUDA_BITMAP_SHAPE", shape)
    check_compiled_bitmap(dtype, 200, 6000, density, M, bias=False)


@gpu
@pytest.mark.parametrize("consumer", ["walk", "list"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("density", [0.03, 0.3, 0.7])
@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_bitmap_v2_walk_and_list_up_to_m4(monkeypatch, consumer, dtype, density, M):
    """At M <= 4 in float16 / bfloat16 the batched kernel walks each lane's bits (the default) or compacts the list
    (SPARSEKIT_CUDA_BITMAP_CONSUMER=list, what bench/cuda_gpu.py times beside it): both right, K whole, odd and
    split (K = 70000: the walk's x tile is 280 KB a row up to M = 2, 140 KB a row at M = 3-4)."""
    require_cpp_kernel("bitmap_mm")
    monkeypatch.setenv("SPARSEKIT_CUDA_DECODE", "v2")
    if consumer == "list":
        monkeypatch.setenv("SPARSEKIT_CUDA_BITMAP_CONSUMER", "list")
    check_compiled_bitmap(dtype, 300, 14336, density, M, bias=True)
    check_compiled_bitmap(dtype, 50, 3001, density, M, bias=False)
    check_compiled_bitmap(dtype, 40, 70000, density, M, bias=False)


@gpu
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
@pytest.mark.parametrize("N,K,density", [(200, 6000, 0.03), (150, 1152, 0.3), (70, 97, 0.1), (9, 65536, 0.01),
                                         (4096, 4096, 0.1), (64, 14336, 0.3)])
@pytest.mark.parametrize("M", [1, 3, 8, 16, 33])
@pytest.mark.parametrize("layout", ["contiguous", "row-stride"])
def test_bitmap_column_list_kernel(dtype, N, K, density, M, layout):
    """The column-list kernel (variant 4 of the compiled bitmap kernel: the kept values with a 16-bit column each)
    against the reference: every M tile, odd K, K = 65536 (the largest 16-bit column), split K (K = 65536 and 14336
    at M = 16), rows empty and dense, strided x, with a bias."""
    require_cpp_kernel("bitmap_mm")
    w = torch.randn(N, K).to(dtype)
    mask = torch.rand(N, K) < density
    mask[1] = False
    mask[3] = True
    f = formats.BitmapWeight.from_dense(w, mask)
    bm, wo, v = f.bitmap.cuda(), f.word_offsets.cuda(), f.values.cuda()
    cols = reference.bitmap_columns(bm, K)
    x = make_x(M, K, dtype, layout)
    b = torch.randn(N, device="cuda").to(dtype)
    poison_allocator()
    y = torch.ops.sparsekit._cuda_bitmap_columns_mm(x, bm, wo, v, cols, b)
    check(y, x, f.to_dense().cuda(), b, dtype)
    kernels = cuda_kernels_run(lambda: torch.ops.sparsekit._cuda_bitmap_columns_mm(x, bm, wo, v, cols, b))
    assert any("bitmap_columns_kernel" in k for k in kernels), kernels


@gpu
def test_bitmap_column_list_refuses_a_wrong_list():
    """A list that is not the bitmap's (checked once per buffer set, on the device) is refused before any kernel
    reads it; short, wrongly typed or misplaced lists are refused by the argument checks."""
    require_cpp_kernel("bitmap_mm")
    f = formats.BitmapWeight.from_dense(torch.randn(30, 500, device="cuda"), torch.rand(30, 500, device="cuda") < 0.2)
    cols = reference.bitmap_columns(f.bitmap, 500)
    x = torch.randn(2, 500, device="cuda")
    bad = cols.clone()
    bad[7] += 1
    with pytest.raises(ValueError, match="column list"):
        torch.ops.sparsekit._cuda_bitmap_columns_mm(x, f.bitmap, f.word_offsets, f.values, bad, None)
    with pytest.raises(ValueError, match="round_up"):
        torch.ops.sparsekit._cuda_bitmap_columns_mm(x, f.bitmap, f.word_offsets, f.values, cols[:f.nnz - 1], None)
    with pytest.raises(TypeError, match="int16"):
        torch.ops.sparsekit._cuda_bitmap_columns_mm(x, f.bitmap, f.word_offsets, f.values, cols.int(), None)
    # a view that does not start on 16 bytes is copied, not read misaligned
    off = torch.zeros(cols.numel() + 8, dtype=torch.int16, device="cuda")
    off[1:cols.numel() + 1] = cols
    y = torch.ops.sparsekit._cuda_bitmap_columns_mm(x, f.bitmap, f.word_offsets, f.values, off[1:], None)
    torch.testing.assert_close(y, x @ f.to_dense().T, rtol=1e-4, atol=1e-4)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_ID)
def test_bitmap_layer_takes_the_column_list(monkeypatch, dtype):
    """A bitmap layer at 90 % sparsity on CUDA gets its column list when converted and serves M <= 16 through the
    column-list kernel (one op call), M > 16 through Triton; not after its values are written in place (until
    prepared again), not at 50 % density by default, and under CUDA graph replay after a warm-up."""
    require_cpp_kernel("bitmap_mm")
    from sparsekit.formats import bitmap as bmf
    from sparsekit.nn import SparseLinear
    from sparsekit.triton import autotune

    # nothing timed: the column list's route takes the M <= 16 boundary (test_bitmap_route_is_measured_on_the_device
    # measures it)
    monkeypatch.setenv("SPARSEKIT_TRITON_AUTOTUNE", "0")
    autotune.clear()
    lin = torch.nn.Linear(1000, 300, device="cuda", dtype=dtype)
    mask = torch.rand(300, 1000, device="cuda") < 0.1
    sl = SparseLinear.from_linear(lin, mask=mask, format="bitmap")
    b = sl._buffers
    assert bmf.bitmap_columns_for(b["bitmap"], b["word_offsets"], b["values"]) is not None
    calls = []
    real = bmf._CUDA_BITMAP_COLUMNS_MM
    monkeypatch.setattr(bmf, "_CUDA_BITMAP_COLUMNS_MM", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    ref = (lin.weight * mask).float()
    with torch.no_grad():
        for M in (1, 7, 16, 40):
            x = torch.randn(M, 1000, device="cuda", dtype=dtype)
            torch.testing.assert_close(sl(x).float(), x.float() @ ref.T + lin.bias.float(), rtol=2e-2, atol=2e-2)
        assert calls == [1, 7, 16]
        x = torch.randn(1, 1000, device="cuda", dtype=dtype)
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            sl(x)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            y = sl(x)
        g.replay()
        torch.testing.assert_close(y.float(), x.float() @ ref.T + lin.bias.float(), rtol=2e-2, atol=2e-2)
        b["values"].mul_(2)
        calls.clear()
        torch.testing.assert_close(sl(x).float(), x.float() @ (2 * ref).T + lin.bias.float(), rtol=4e-2, atol=4e-2)
        assert calls == []
    dense = SparseLinear.from_linear(lin, mask=torch.rand(300, 1000, device="cuda") < 0.5, format="bitmap")
    d = dense._buffers
    assert bmf.bitmap_columns_for(d["bitmap"], d["word_offsets"], d["values"]) is None


@gpu
@pytest.mark.parametrize("variant", ["v2", "v1", "v3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("N,K", [(300, 256), (150, 1152), (70, 52), (40, 8192), (4096, 4096)])
@pytest.mark.parametrize("M", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("refill", ["1", "0"], ids=["refill", "norefill"])
def test_sparse24_decode_variants(monkeypatch, variant, dtype, N, K, M, refill):
    """The 2:4 designs (SPARSEKIT_CUDA_DECODE): v1 the FMA kernel, v2 the tensor-core kernel from M = 2
    (mma_decode.cuh), v3 the tensor-core kernel at every M; more row groups than blocks, K % 16 != 0, split K;
    each with its weight registers refilled while consumed and in the order before (SPARSEKIT_CUDA_REFILL=0)."""
    require_cpp_kernel("sparse24_mm")
    monkeypatch.setenv("SPARSEKIT_CUDA_DECODE", variant)
    monkeypatch.setenv("SPARSEKIT_CUDA_REFILL", refill)
    w = torch.randn(N, K).to(dtype)
    mask = mask_24(N, K)
    mask[1] = False
    f = formats.Sparse24Weight.from_dense(w, mask)
    x = make_x(M, K, dtype, "contiguous")
    b = torch.randn(N, device="cuda").to(dtype) if M % 2 else None
    poison_allocator()
    y = sparsekit.ops.sparse24_mm(x, f.values.cuda(), f.meta.cuda(), b)
    check(y, x, f.to_dense().cuda(), b, dtype)


# ------------------------------------------------------------------------------------------ BSR
@gpu
@pytest.mark.parametrize("dtype", FLOATS, ids=DTYPE_ID)
@pytest.mark.parametrize("N,K,R,C", [(24, 40, 4, 8), (32, 48, 16, 16), (9, 10, 3, 5), (5, 7, 1, 1), (128, 192, 64, 64),
                                     (64, 4096, 16, 16)])
@pytest.mark.parametrize("M", MS)
def test_bsr_mm(dtype, N, K, R, C, M):
    require_cpp_kernel("bsr_mm")
    w = torch.randn(N, K).to(dtype)
    f = formats.BSRWeight.from_dense(w, block_mask(N, K, R, C, 0.4), (R, C))
    x = make_x(M, K, dtype, "row-stride" if M == 3 else "transposed" if M == 8 else "contiguous")
    b = torch.randn(N, device="cuda").to(dtype) if M % 2 else None
    poison_allocator()
    y = cpp_op("bsr_mm")(x, f.crow_indices.cuda(), f.col_indices.cuda(), f.values.cuda(), N, b)
    check(y, x, f.to_dense().cuda(), b, dtype)


@gpu
@pytest.mark.parametrize("density", [0.0, 1.0])
def test_bsr_mm_empty_and_full(density):
    require_cpp_kernel("bsr_mm")
    N, K, R, C = 32, 64, 8, 8
    w = torch.randn(N, K)
    f = formats.BSRWeight.from_dense(w, torch.full((N, K), density > 0), (R, C))
    x = torch.randn(5, K, device="cuda")
    check(cpp_op("bsr_mm")(x, f.crow_indices.cuda(), f.col_indices.cuda(), f.values.cuda(), N), x,
          f.to_dense().cuda(), None, torch.float32)


# ------------------------------------------------------------------------------------------ graphs, opcheck
@gpu
def test_cuda_graph_capture():
    """No host sync or allocation outside the caching allocator on the launch path: graphs capture it."""
    require_cpp_kernel("sparse24_mm")
    N, K, M = 256, 4096, 4
    w = torch.randn(N, K, dtype=torch.float16)
    f = formats.Sparse24Weight.from_dense(w, mask_24(N, K, 0.0))
    vals, meta = f.values.cuda(), f.meta.cuda()
    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    fn = lambda: sparsekit.ops.sparse24_mm(x, vals, meta)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # warm-up: attributes and caches
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fn()
    x.copy_(torch.randn(M, K, device="cuda", dtype=torch.float16))
    g.replay()
    torch.cuda.synchronize()
    check(y, x, f.to_dense().cuda(), None, torch.float16)


@gpu
def test_opcheck_cuda():
    require_cpp_kernel("sparse24_mm")
    w = torch.randn(16, 64)
    f = formats.Sparse24Weight.from_dense(w, mask_24(16, 64))
    x = torch.randn(3, 64, device="cuda")
    torch.library.opcheck(torch.ops.sparsekit.sparse24_mm, (x, f.values.cuda(), f.meta.cuda(), torch.randn(16, device="cuda")))
    fb = formats.BitmapWeight.from_dense(w, torch.rand(16, 64) < 0.4)
    torch.library.opcheck(torch.ops.sparsekit.bitmap_mm, (x, fb.bitmap.cuda(), fb.word_offsets.cuda(), fb.values.cuda(), None))
    cols = reference.bitmap_columns(fb.bitmap.cuda(), 64)
    torch.library.opcheck(torch.ops.sparsekit._cuda_bitmap_columns_mm,
                          (x, fb.bitmap.cuda(), fb.word_offsets.cuda(), fb.values.cuda(), cols, None))


# ------------------------------------------------------------------------------------------ packers
PACK_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def special_weights(w):
    """-0.0, tiny and inf among the weights: their bits must survive packing. (NaN payloads are not
    compared: the CPU torch.where canonicalises bf16 NaNs.)"""
    flat = w.view(-1)
    if flat.numel() >= 8:
        flat[0], flat[3], flat[5] = -0.0, 1e-30, float("-inf")
    return w


def bits(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_same_bits(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        assert g.is_contiguous()
        assert torch.equal(bits(g.cpu()), bits(w.cpu()))


def pack_cases(fmt, dtype):
    out = []
    for (N, K) in [(7, 36), (16, 64), (3, 4), (5, 132), (33, 96), (12, 40)]:
        w = special_weights(torch.randn(N, K).to(dtype))
        if fmt == "2:4":
            mask = mask_24(N, K, 0.3)
        elif fmt == "bsr":
            mask = None if N % 4 or K % 4 else block_mask(N, K, 4, 4, 0.5)
            if mask is None:
                continue
        else:
            mask = torch.rand(N, K) < 0.4
        out.append((w, mask))
        out.append((torch.where(mask, w, torch.zeros((), dtype=dtype)), None))  # default mask: weight != 0
    if fmt in ("bitmap", "csr"):
        out += [(torch.randn(4, 40).to(dtype), torch.zeros(4, 40, dtype=torch.bool)),
                (torch.randn(5, 33).to(dtype), torch.ones(5, 33, dtype=torch.bool)),
                (torch.randn(3, 1).to(dtype), torch.tensor([[True], [False], [True]]))]
    return out


def cpu_pack(fmt, w, mask, blocksize=(4, 4)):
    if fmt == "2:4":
        f = formats.Sparse24Weight.from_dense(w, mask)
    elif fmt == "bitmap":
        f = formats.BitmapWeight.from_dense(w, mask)
    elif fmt == "csr":
        f = formats.CSRWeight.from_dense(w, mask)
    else:
        f = formats.BSRWeight.from_dense(w, mask, blocksize)
    return tuple(f.buffers().values())


REFS = {"2:4": lambda w, m: packing.reference_pack_sparse24(w, m), "bitmap": packing.reference_pack_bitmap,
        "csr": packing.reference_pack_csr, "bsr": lambda w, m: packing.reference_pack_bsr(w, m, (4, 4))}
OPS = {"2:4": lambda w, m: packing.pack_sparse24(w, m), "bitmap": packing.pack_bitmap, "csr": packing.pack_csr,
       "bsr": lambda w, m: packing.pack_bsr(w, m, (4, 4))}


@pytest.mark.parametrize("fmt", ["2:4", "bitmap", "csr", "bsr"])
@pytest.mark.parametrize("dtype", PACK_DTYPES, ids=DTYPE_ID)
def test_pack_references_equal_from_dense(fmt, dtype):
    for w, mask in pack_cases(fmt, dtype):
        assert_same_bits(REFS[fmt](w, mask), cpu_pack(fmt, w, mask))


@pack_ops
@pytest.mark.parametrize("fmt", ["2:4", "bitmap", "csr", "bsr"])
def test_pack_ops_cpu_fallback(fmt):
    assert packing.registered()
    for w, mask in pack_cases(fmt, torch.float32):
        assert_same_bits(OPS[fmt](w, mask), cpu_pack(fmt, w, mask))
        assert packing.pack(fmt, w, mask, (4, 4)).to_dense().equal(cpu_pack_dense(fmt, w, mask))


def cpu_pack_dense(fmt, w, mask):
    cls = {"2:4": formats.Sparse24Weight, "bitmap": formats.BitmapWeight, "csr": formats.CSRWeight,
           "bsr": formats.BSRWeight}[fmt]
    return (cls.from_dense(w, mask, (4, 4)) if fmt == "bsr" else cls.from_dense(w, mask)).to_dense()


@pytest.mark.parametrize("bad,exc,msg", [
    ((torch.randn(3),), ValueError, "expected a 2-d weight"),
    ((torch.randint(0, 3, (4, 4)),), TypeError, "expected a floating-point weight, got torch.int64"),
    ((torch.randn(4, 8), torch.ones(4, 8, dtype=torch.int32)), TypeError, "expected a bool mask, got torch.int32"),
    ((torch.randn(4, 8), torch.ones(4, 4, dtype=torch.bool)), ValueError, "expected a mask of the weight's shape (4, 8)"),
    ((torch.randn(4, 6),), ValueError, "2:4 needs in_features divisible by 4, got 6"),
])
def test_pack_checks(bad, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        packing.check_pack_sparse24(*(bad + (None,) * (2 - len(bad))))
    if HAS_PACK_OPS:
        with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
            packing.pack_sparse24(*bad)


def test_pack_bsr_checks():
    with pytest.raises(ValueError, match="the block 3x8 does not tile the weight 8x32"):
        packing.check_pack_bsr(torch.randn(8, 32), None, (3, 8))


def test_pack_sparse24_reference_rejects_non_24_masks():
    w = torch.randn(4, 16)
    m = mask_24(4, 16, 0.0)
    m[2, 4:7] = True
    with pytest.raises(ValueError, match=r"sparsekit.pack_sparse24: the mask is not 2:4: row 2, columns 4..7 keep 3 of 4"):
        packing.reference_pack_sparse24(w, m)


@gpu
@pack_ops
@pytest.mark.parametrize("fmt", ["2:4", "bitmap", "csr", "bsr"])
@pytest.mark.parametrize("dtype", PACK_DTYPES, ids=DTYPE_ID)
def test_gpu_packers_bit_identical_to_cpu(fmt, dtype):
    require_cpp_kernel({"2:4": "pack_sparse24", "bitmap": "pack_bitmap", "csr": "pack_csr", "bsr": "pack_bsr"}[fmt])
    for w, mask in pack_cases(fmt, dtype):
        got = OPS[fmt](w.cuda(), None if mask is None else mask.cuda())
        assert all(t.is_cuda for t in got)
        assert_same_bits(got, cpu_pack(fmt, w, mask))
    # a mask on the CPU with a CUDA weight is moved, as from_dense does
    w, mask = pack_cases(fmt, dtype)[0]
    assert_same_bits(OPS[fmt](w.cuda(), mask), cpu_pack(fmt, w, mask))


@gpu
@pack_ops
def test_gpu_packers_large_and_edge_shapes():
    require_cpp_kernel("pack_csr")
    w = torch.randn(1024, 4096, dtype=torch.bfloat16)
    mask = torch.rand(1024, 4096) < 0.3
    for fmt in ("bitmap", "csr", "bsr"):
        assert_same_bits(OPS[fmt](w.cuda(), mask.cuda()), cpu_pack(fmt, w, mask))
    m24 = mask_24(1024, 4096)
    assert_same_bits(OPS["2:4"](w.cuda(), m24.cuda()), cpu_pack("2:4", w, m24))
    for N, K in [(0, 8), (4, 0)]:
        w = torch.randn(N, K)
        for fmt in ("bitmap", "csr", "2:4"):
            assert_same_bits(OPS[fmt](w.cuda(), None), cpu_pack(fmt, w, None))


@gpu
@pack_ops
def test_gpu_pack_sparse24_rejects_non_24_masks_like_the_cpu():
    require_cpp_kernel("pack_sparse24")
    w = torch.randn(6, 40)
    m = mask_24(6, 40, 0.0)
    m[3, 12:16] = True
    m[4, 0:3] = True
    with pytest.raises(ValueError) as gpu_err:
        packing.pack_sparse24(w.cuda(), m.cuda())
    with pytest.raises(ValueError) as cpu_err:
        packing.reference_pack_sparse24(w, m)
    assert str(cpu_err.value) in str(gpu_err.value)
    assert "row 3, columns 12..15 keep 4 of 4" in str(gpu_err.value)


# ------------------------------------------------------------------------------------------ int8 weight-only
# (M, N, K): row groups of 16 with a short last one, K % 16 != 0 (byte loads), 18+ steps, K split on an
# H100 / H200 at M = 16 (K = 8192) and M = 1 (K = 65536), several M tiles (33).
WO_SHAPES = [(1, 40, 256), (3, 17, 100), (7, 300, 1024), (16, 33, 4096), (16, 20, 8192), (17, 9, 48), (33, 65, 640),
             (2, 5, 1), (1, 9, 65536), (4, 4096, 4096),
             (1, 300, 8192)]  # (the last: several batches of 4 steps a warp and row group)


def require_int8_wo_kernel():
    if not sparsekit._ext.available():
        pytest.skip(f"the compiled extension is not loaded: {sparsekit._ext.load_error}")
    src = cuda_kernel_source("_cuda_int8_weight_only_mm")
    if src is None or "ops_cuda.cpp" not in src:
        pytest.skip(f"no compiled CUDA kernel behind sparsekit::_cuda_int8_weight_only_mm (registered at {src})")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the int8 weight-only tensor-core kernel needs sm_80+")


def int8_wo_inputs(M, N, K, dtype, g):
    q = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int16).to(torch.int8)
    s = torch.rand(N, generator=g) * 0.02 + 1e-3
    x = torch.randn(M, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    return q, s, x, b


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("M,N,K", WO_SHAPES)
@pytest.mark.parametrize("refill", ["1", "0"], ids=["refill", "norefill"])
def test_int8_weight_only_compiled_kernel(monkeypatch, dtype, M, N, K, refill):
    """The tensor-core kernel (csrc/cuda/int8_wo_kernel.cu) against the float64 reference, every output
    written (the allocator poisoned first), with and without bias; with its weight registers refilled while
    consumed and in the order before (SPARSEKIT_CUDA_REFILL=0)."""
    require_int8_wo_kernel()
    monkeypatch.setenv("SPARSEKIT_CUDA_REFILL", refill)
    g = torch.Generator().manual_seed(M * 7919 + N * 31 + K)
    q, s, x, b = int8_wo_inputs(M, N, K, dtype, g)
    w = q.double() * s.double()[:, None]
    for bias in (b, None):
        poison_allocator()
        y = torch.ops.sparsekit._cuda_int8_weight_only_mm(x.cuda(), q.cuda(), s.cuda(),
                                                          None if bias is None else bias.cuda())
        check(y, x.cuda(), w.cuda(), None if bias is None else bias.cuda(), dtype)


@gpu
@pytest.mark.parametrize("wide", ["on", "0"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_ID)
def test_tensor_core_kernel_wide_m_tiles(monkeypatch, dtype, wide):
    """Above M = 16 the tensor-core decode kernel runs tiles of 32 rows (SPARSEKIT_CUDA_WIDE_TILE=0: 16): int8
    weight-only, 2:4 and W8A8 (dense and 2:4 int8, byte for byte) against the references at M = 17-300, whole K
    and split K (K = 14336: 32 rows of x do not fit whole)."""
    require_int8_wo_kernel()
    monkeypatch.setenv("SPARSEKIT_CUDA_WIDE_TILE", wide)
    for M, N, K in ((17, 40, 256), (32, 65, 640), (45, 300, 1024), (64, 33, 14336), (300, 20, 512)):
        g = torch.Generator().manual_seed(M * 7 + N + K)
        q, s, x, b = int8_wo_inputs(M, N, K, dtype, g)
        poison_allocator()
        y = torch.ops.sparsekit._cuda_int8_weight_only_mm(x.cuda(), q.cuda(), s.cuda(), b.cuda())
        check(y, x.cuda(), (q.double() * s.double()[:, None]).cuda(), b.cuda(), dtype)
        f = formats.Sparse24Weight.from_dense(torch.randn(N, K).to(dtype), mask_24(N, K, g=g))
        poison_allocator()
        check(sparsekit.ops.sparse24_mm(x.cuda(), f.values.cuda(), f.meta.cuda(), b.cuda()), x.cuda(),
              f.to_dense().cuda(), b.cuda(), dtype)
        x_q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int16).to(torch.int8)
        x_scale = torch.rand(M, generator=g) * 0.05 + 1e-3
        for sparse in (False, True):
            wargs, op, ref = w8a8_weight(N, K, g, sparse, "mm")
            want = ref(x_q, x_scale, None, *wargs, s, b, dtype)
            poison_allocator()
            got = op(x_q.cuda(), x_scale.cuda(), None, *(t.cuda() for t in wargs), s.cuda(), b.cuda(), dtype)
            assert torch.equal(got.cpu(), want), (M, N, K, sparse, (got.cpu() - want).abs().max())


@gpu
def test_int8_weight_only_route_is_measured_on_the_device(monkeypatch, tmp_path):
    """The public int8_weight_only_mm on CUDA under "auto": the first call of an M bucket times the compiled kernel
    and Triton and keeps the faster (in the route table and the autotune file); results right whichever wins."""
    require_int8_wo_kernel()
    from sparsekit import triton as skt
    from sparsekit.triton import autotune

    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPARSEKIT_TRITON_AUTOTUNE", raising=False)
    autotune.clear()
    try:
        g = torch.Generator().manual_seed(11)
        for M in (1, 48):
            q, s, x, b = int8_wo_inputs(M, 512, 1024, torch.bfloat16, g)
            xc = x.cuda()
            y = sparsekit.ops.int8_weight_only_mm(xc, q.cuda(), s.cuda(), b.cuda())
            check(y, xc, (q.double() * s.double()[:, None]).cuda(), b.cuda(), torch.bfloat16)
            cfg = skt.route_table("int8_weight_only_mm").get(skt.route_key(xc, 512))
            assert cfg is not None and cfg["path"] in ("compiled", "triton"), cfg
        assert "int8_weight_only_mm_route" in Path(autotune.cache_file(autotune.device_tag(
            torch.device("cuda")))).read_text()
    finally:
        autotune.clear()


@gpu
def test_bitmap_route_is_measured_on_the_device(monkeypatch, tmp_path):
    """bitmap_mm on CUDA under "auto": the first call of an M bucket times the compiled decode kernel and Triton and
    keeps the faster; a converted layer with a column list times that kernel against the public op in its own
    table; results right whichever wins."""
    require_cpp_kernel("bitmap_mm")
    from sparsekit import triton as skt
    from sparsekit.nn import SparseLinear
    from sparsekit.triton import autotune

    if not skt.registered():
        pytest.skip("the Triton kernels are not registered")
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPARSEKIT_TRITON_AUTOTUNE", raising=False)
    monkeypatch.delenv("SPARSEKIT_BITMAP_COLUMNS", raising=False)
    autotune.clear()
    try:
        lin = torch.nn.Linear(1024, 384, device="cuda", dtype=torch.bfloat16)
        mask = torch.rand(384, 1024, device="cuda") < 0.1
        f = formats.BitmapWeight.from_dense(lin.weight.detach(), mask)
        sl = SparseLinear.from_linear(lin, mask=mask, format="bitmap")
        ref = (lin.weight * mask).float()
        with torch.no_grad():
            for M in (1, 12, 48):
                x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
                check(sparsekit.ops.bitmap_mm(x, f.bitmap, f.word_offsets, f.values), x, ref.double(), None,
                      torch.bfloat16)
                cfg = skt.route_table("bitmap_mm").get(skt.route_key(x, 384))
                assert cfg is not None and cfg["path"] in ("compiled", "triton"), cfg
                torch.testing.assert_close(sl(x).float(), x.float() @ ref.T + lin.bias.float(), rtol=2e-2, atol=2e-2)
                cfg = skt.route_table("bitmap_columns").get(skt.route_key(x, 384))
                assert cfg is not None and cfg["path"] in ("compiled", "triton"), cfg  # column list / the op
        text = Path(autotune.cache_file(autotune.device_tag(torch.device("cuda")))).read_text()
        assert "bitmap_mm_route" in text and "bitmap_columns_route" in text
    finally:
        autotune.clear()


@gpu
def test_int8_weight_only_compiled_kernel_layouts_and_refusals():
    require_int8_wo_kernel()
    g = torch.Generator().manual_seed(5)
    q, s, x, b = int8_wo_inputs(5, 37, 320, torch.bfloat16, g)
    w = q.double() * s.double()[:, None]
    op = torch.ops.sparsekit._cuda_int8_weight_only_mm
    for layout in ("row-stride", "transposed"):
        xl = make_x(5, 320, torch.bfloat16, layout)
        check(op(xl, q.cuda(), s.cuda(), b.cuda()), xl, w.cuda(), b.cuda(), torch.bfloat16)
    # a weight view 1 byte past a 16-byte boundary: made contiguous (aligned) by the binding; a view with
    # unit stride at an odd offset takes the byte loads
    big = torch.randint(-128, 128, (37, 321), dtype=torch.int16).to(torch.int8).cuda()
    wv = big[:, 1:]
    xx = x.cuda()
    check(op(xx, wv, s.cuda(), None), xx, (wv.double() * s.double().cuda()[:, None]), None, torch.bfloat16)
    flat = torch.randint(-128, 128, (37 * 320 + 1,), dtype=torch.int16).to(torch.int8).cuda()
    wm = flat[1:].view(37, 320)  # contiguous, data pointer odd
    check(op(xx, wm, s.cuda(), None), xx, (wm.double() * s.double().cuda()[:, None]), None, torch.bfloat16)
    with pytest.raises(TypeError, match=r"sparsekit\.int8_weight_only_mm: the compiled CUDA kernel takes float16"):
        op(xx.float(), q.cuda(), s.cuda(), None)
    with pytest.raises(ValueError, match=r"sparsekit\.int8_weight_only_mm: expected w_q of shape"):
        op(xx, q[:, :16].cuda(), s.cuda(), None)
    assert op(xx[:0], q.cuda(), s.cuda(), None).shape == (0, 37)
    y0 = op(xx[:, :0], q[:, :0].cuda(), s.cuda(), b.cuda())
    torch.testing.assert_close(y0, b.cuda().expand(5, 37))
    # the router sends small-M halves here
    require_cpp_kernel("bitmap_mm")  # (any compiled kernel: the extension's CUDA half is loaded)
    names = cuda_kernels_run(lambda: sparsekit.ops.int8_weight_only_mm(xx, q.cuda(), s.cuda(), b.cuda()))
    from sparsekit import triton as skt
    if skt.registered():
        assert any("int8_wo_decode_kernel" in n for n in names), names


def w8a8_weight(N, K, g, sparse, kind):
    """(weight arguments, compiled op, reference op) of the W8A8 `kind` ("mm": x already quantized, "linear":
    the one-call linear), dense int8 or 2:4 int8."""
    name = ("sparse24_int8_" if sparse else "int8_") + kind
    if sparse:
        f = formats.Sparse24Int8Weight.from_dense(torch.randn(N, K, generator=g), mask_24(N, K, g=g))
        wargs = (f.values, f.meta)
    else:
        wargs = (torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int16).to(torch.int8),)
    return wargs, getattr(torch.ops.sparsekit, "_cuda_" + name), getattr(reference, name)


@gpu
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "2:4"])
@pytest.mark.parametrize("M,N,K", [(1, 40, 256), (3, 17, 100), (7, 300, 1024), (16, 33, 4096), (16, 20, 16384),
                                   (33, 65, 640), (1, 4096, 4096)])
def test_w8a8_compiled_kernel_bytes_equal_the_reference(out_dtype, sparse, M, N, K):
    """The compiled W8A8 kernel (int8 tensor-core mma, exact int32 sums, the reference's float32 epilogue)
    gives the reference op's bytes, with and without bias, whole K and split K."""
    require_int8_wo_kernel()
    g = torch.Generator().manual_seed(M * 131 + N + K)
    x_q = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int16).to(torch.int8)
    x_scale = torch.rand(M, generator=g) * 0.05 + 1e-3
    w_scale = torch.rand(N, generator=g) * 0.02 + 1e-3
    b = torch.randn(N, generator=g).to(out_dtype)
    wargs, op, ref = w8a8_weight(N, K, g, sparse, "mm")
    for bias in (b, None):
        want = ref(x_q, x_scale, None, *wargs, w_scale, bias, out_dtype)
        poison_allocator()
        got = op(x_q.cuda(), x_scale.cuda(), None, *(t.cuda() for t in wargs), w_scale.cuda(),
                 None if bias is None else bias.cuda(), out_dtype)
        assert torch.equal(got.cpu(), want), (got.cpu() - want).abs().max()
    with pytest.raises(ValueError, match="symmetric activations"):
        op(x_q.cuda(), x_scale.cuda(), torch.zeros(M, dtype=torch.int32, device="cuda"), *(t.cuda() for t in wargs),
           w_scale.cuda(), None, out_dtype)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "2:4"])
@pytest.mark.parametrize("M,N,K", [(1, 40, 256), (3, 17, 100), (2, 300, 4096), (16, 33, 1024), (16, 20, 4096),
                                   (1, 64, 14336), (33, 65, 640)])
def test_w8a8_linear_compiled_kernel_bytes_equal_the_reference(dtype, sparse, M, N, K):
    """The one-call compiled W8A8 linears (x quantized per token inside the tensor-core kernel, or by the compiled
    quantization kernel first for long rows and float32) give the reference's bytes; a NaN row gives NaN."""
    require_int8_wo_kernel()
    g = torch.Generator().manual_seed(M * 71 + N + K)
    x = torch.randn(M, K, generator=g).to(dtype)
    if M > 2:
        x[1, K // 3] = float("nan")
        x[2] = 0
    w_scale = torch.rand(N, generator=g) * 0.02 + 1e-3
    b = torch.randn(N, generator=g).to(dtype)
    wargs, op, ref = w8a8_weight(N, K, g, sparse, "linear")
    for bias in (b, None):
        want = ref(x, *wargs, w_scale, bias)
        poison_allocator()
        got = op(x.cuda(), *(t.cuda() for t in wargs), w_scale.cuda(), None if bias is None else bias.cuda()).cpu()
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0)), (got - want).abs().nan_to_num(0).max()


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("M,K", [(1, 4096), (5, 100), (40, 4096), (2048, 256), (3, 0), (0, 64)])
def test_compiled_quantize_per_token_bytes_equal_the_reference(dtype, M, K):
    """_cuda_quantize_per_token (symmetric quantize_per_token on CUDA, one compiled launch) gives the reference's
    q and scales byte for byte, a NaN row a NaN scale and zeros; strided x; asymmetric is refused with a message."""
    require_int8_wo_kernel()
    g = torch.Generator().manual_seed(M * 7 + K)
    x = torch.randn(M, K + 3, generator=g).to(dtype)[:, :K]
    if M > 2 and K:
        x[1, K // 2] = float("nan")
        x[2] = 0
    op = torch.ops.sparsekit._cuda_quantize_per_token
    for xi in (x, x.contiguous()):
        want = reference.quantize_per_token(xi, True)
        poison_allocator()
        got = [t.cpu() for t in op(xi.cuda(), True)]
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1].isnan(), want[1].isnan())
        assert torch.equal(got[1].nan_to_num(0).view(torch.int32), want[1].nan_to_num(0).view(torch.int32))
        assert torch.equal(got[2], want[2])
    with pytest.raises(ValueError, match="quantizes symmetrically"):
        op(x.cuda(), False)


@gpu
def test_w8a8_linear_compiled_kernel_under_graph_capture():
    """Both paths of the one-call linear (fused: M = 1; the quantization kernel first: M = 16, K = 4096, whose
    workspace comes from the caching allocator) replay under a CUDA graph."""
    require_int8_wo_kernel()
    g = torch.Generator().manual_seed(8)
    f = formats.Int8Weight.from_dense(torch.randn(64, 4096, generator=g))
    op = torch.ops.sparsekit._cuda_int8_linear
    for M in (1, 16):
        x = torch.randn(M, 4096, generator=g).half().cuda()
        args = (x, f.qweight.cuda(), f.scale.cuda(), None)
        want = op(*args)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = op(*args)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, want)


@gpu
@pytest.mark.parametrize("fmt,kernel", [("int8", "mma_decode_kernel"), ("2:4+int8", "mma_decode_kernel"),
                                        ("int8-wo", "mma_decode_kernel"), ("bitmap", "bitmap_decode")])
def test_converted_layers_launch_one_compiled_kernel_at_decode(fmt, kernel):
    """A converted layer on CUDA at M = 1 (eager, no_grad) launches the compiled decode kernel alone (the W8A8
    formats quantize inside it: no quantization launch), matches the layer on the CPU, and keeps its backward
    when a gradient is needed (the public op)."""
    require_int8_wo_kernel()
    if os.environ.get("SPARSEKIT_UNDER_SANITIZER"):
        pytest.skip("the profiler cannot subscribe under compute-sanitizer")
    from sparsekit.nn import SparseLinear

    torch.manual_seed(3)
    lin = torch.nn.Linear(256, 96).to(torch.bfloat16)
    # (bitmap at 50 %: no column list; bitmap_decode_kernel (v1) or bitmap_decode_v2_kernel (v2, the default))
    mask = mask_24(96, 256) if fmt == "2:4+int8" else torch.rand(96, 256) < 0.5
    sl = SparseLinear.from_linear(lin, mask=mask, format=fmt)
    x = torch.randn(1, 256).to(torch.bfloat16)
    with torch.no_grad():
        want = sl(x)
        sl = sl.cuda()
        xc = x.cuda()
        sl(xc)
        names = cuda_kernels_run(lambda: sl(xc))
        got = sl(xc).cpu()
    assert [n for n in names if kernel in n] and len(names) == 1, names
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    xg = xc.clone().requires_grad_()
    sl(xg).float().sum().backward()
    assert xg.grad is not None and xg.grad.shape == xg.shape


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("R,C", [(16, 16), (64, 64), (32, 48), (16, 64)])
@pytest.mark.parametrize("M", [1, 3, 16, 33])
def test_bsr_tensor_core_kernel_matches_the_reference(dtype, R, C, M, monkeypatch):
    """The compiled BSR kernel on the tensor cores (blocks of multiples of 16, x whole in shared memory) against
    the float64 reference, with an empty block row; also under SPARSEKIT_CUDA_DECODE=v1 (the simple kernel), and
    the router sends M <= 16 there (the kernel named in the profile)."""
    require_int8_wo_kernel()
    torch.manual_seed(R * 7 + C + M)
    N, K = 8 * R, 12 * C
    w = torch.randn(N, K)
    f = formats.BSRWeight.from_dense(w, block_mask(N, K, R, C, 0.4), (R, C))
    x = torch.randn(M, K).to(dtype)
    b = torch.randn(N).to(dtype)
    args = (f.crow_indices.cuda(), f.col_indices.cuda(), f.values.to(dtype).cuda(), N, b.cuda())
    ref = reference.bsr_mm(x.double(), f.crow_indices, f.col_indices, f.values.to(dtype).double(), N, b.double())
    got = torch.ops.sparsekit._cuda_bsr_mm(x.cuda(), *args)
    assert_close_to_ref(got.cpu(), ref, x, f.to_dense().to(dtype), dtype)
    with monkeypatch.context() as mp:
        mp.setenv("SPARSEKIT_CUDA_DECODE", "v1")
        assert_close_to_ref(torch.ops.sparsekit._cuda_bsr_mm(x.cuda(), *args).cpu(), ref, x, f.to_dense().to(dtype), dtype)
    if M <= 16 and not os.environ.get("SPARSEKIT_UNDER_SANITIZER"):
        names = cuda_kernels_run(lambda: sparsekit.ops.bsr_mm(x.cuda(), *args))
        from sparsekit import triton as skt
        if skt.registered():
            assert any("mma_decode_kernel" in n for n in names), names


@gpu
@pytest.mark.parametrize("M,K", [(1, 4096), (16, 14336)], ids=["whole", "split K"])
def test_bsr_tensor_core_kernel_under_graph_capture(M, K):
    """Both plans replay under a CUDA graph: x whole, and K split (its workspace from the caching allocator)."""
    require_int8_wo_kernel()
    torch.manual_seed(9)
    f = formats.BSRWeight.from_dense(torch.randn(256, K), block_mask(256, K, 64, 64, 0.1), (64, 64))
    args = (f.crow_indices.cuda(), f.col_indices.cuda(), f.values.half().cuda(), 256, None)
    x = torch.randn(M, K).half().cuda()
    op = torch.ops.sparsekit._cuda_bsr_mm
    want = op(x, *args)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = op(x, *args)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, want)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_ID)
@pytest.mark.parametrize("M,N,K,C,shuffle", [(16, 128, 14336, 64, False), (8, 96, 13824, 48, False),
                                            (16, 64, 11008, 16, True), (3, 64, 30720, 64, True)])
def test_bsr_tensor_core_kernel_splits_long_k(dtype, M, N, K, C, shuffle):
    """K split into chunks of whole blocks where x's rows do not fit in shared memory (llama's down projection at
    M = 8-16), against the float64 reference; block columns ascending as packed, or shuffled within each block
    row (every chunk then walks all of the row's blocks)."""
    require_int8_wo_kernel()
    torch.manual_seed(M + K + C)
    f = formats.BSRWeight.from_dense(torch.randn(N, K), block_mask(N, K, 16, C, 0.1), (16, C))
    col, values = f.col_indices.clone(), f.values.clone()
    if shuffle:
        for br in range(N // 16):
            b0, b1 = int(f.crow_indices[br]), int(f.crow_indices[br + 1])
            perm = b0 + torch.randperm(b1 - b0)
            col[b0:b1], values[b0:b1] = col[perm], values[perm]
    x = torch.randn(M, K).to(dtype)
    b = torch.randn(N).to(dtype)
    ref = reference.bsr_mm(x.double(), f.crow_indices, f.col_indices, f.values.to(dtype).double(), N, b.double())
    poison_allocator()
    got = torch.ops.sparsekit._cuda_bsr_mm(x.cuda(), f.crow_indices.cuda(), col.cuda(), values.to(dtype).cuda(), N,
                                            b.cuda())
    assert_close_to_ref(got.cpu(), ref, x, f.to_dense().to(dtype), dtype)


@gpu
def test_int8_weight_only_compiled_kernel_under_graph_capture():
    require_int8_wo_kernel()
    g = torch.Generator().manual_seed(6)
    q, s, x, b = int8_wo_inputs(16, 64, 8192, torch.float16, g)  # split K: the workspace inside the graph
    q, s, x, b = q.cuda(), s.cuda(), x.cuda(), b.cuda()
    op = torch.ops.sparsekit._cuda_int8_weight_only_mm
    want = op(x, q, s, b)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = op(x, q, s, b)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, want)


def test_w8a8_router_picks_the_compiled_kernel_for_small_m(monkeypatch):
    """int8_mm / int8_linear / sparse24_int8_linear on CUDA (sparsekit/triton's implementations): symmetric
    activations with M <= 16 on an sm_80+ device -> the compiled W8A8 kernel (its _cuda_ alias); a zero point,
    larger M, an older device or backend "triton" -> Triton's int8_mm / the public sparse24_int8_mm. Logic only:
    CPU tensors, the Triton launchers stand-ins, the aliases' CPU fallbacks (the references) stand in for the
    kernels."""
    from sparsekit import triton as skt
    from sparsekit.formats import Int8Weight, Sparse24Int8Weight

    calls = []

    def fake_lazy(module, name):
        if name == "quantize_per_token":
            return lambda: reference.quantize_per_token
        return lambda: (lambda *a: calls.append(name) or torch.zeros(a[0].shape[0], a[3].shape[0], dtype=a[-1]))

    monkeypatch.setattr(skt, "_lazy", fake_lazy)
    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    monkeypatch.setattr(skt, "_backend", dict.fromkeys(skt._AUTO_MAX_M, "auto"))
    mma = {"ok": True}
    monkeypatch.setattr(skt, "_has_mma", lambda device: mma["ok"])
    impls = skt._make_impls()
    w = Int8Weight.from_dense(torch.randn(8, 32))
    w24 = Sparse24Int8Weight.from_dense(torch.randn(8, 32) * torch.tensor([1.0, 0, 0, 1]).repeat(8))

    def int8_mm(M, zero=False):
        calls.clear()
        q, s, z = reference.quantize_per_token(torch.randn(M, 32), not zero)
        y = impls["int8_mm"](q, s, z if zero else None, w.qweight, w.scale, None, torch.float16)
        if calls:
            return "triton"
        assert torch.equal(y, reference.int8_mm(q, s, None, w.qweight, w.scale, None, torch.float16))
        return "compiled"

    def int8_linear(M, dtype=torch.bfloat16):
        calls.clear()
        x = torch.randn(M, 32).to(dtype)
        seen = []
        real = torch.ops.sparsekit._cuda_int8_linear
        with monkeypatch.context() as mp:  # the one-call compiled kernel quantizes inside: no Triton launch
            mp.setattr(torch.ops.sparsekit, "_cuda_int8_linear", lambda *a: seen.append(1) or real(*a))
            y = impls["int8_linear"](x, w.qweight, w.scale)
        if calls:
            assert not seen
            return "triton"
        assert seen and torch.equal(y, reference.int8_linear(x, w.qweight, w.scale))
        return "compiled"

    def sparse24_int8_linear(M):
        x = torch.randn(M, 32).to(torch.float16)
        seen = []
        real = torch.ops.sparsekit._cuda_sparse24_int8_linear
        with monkeypatch.context() as mp:
            mp.setattr(torch.ops.sparsekit, "_cuda_sparse24_int8_linear", lambda *a: seen.append(1) or real(*a))
            y = impls["sparse24_int8_linear"](x, w24.values, w24.meta, w24.scale)
        assert torch.equal(y, reference.sparse24_int8_linear(x, w24.values, w24.meta, w24.scale))
        return "compiled" if seen else "public op"

    assert [int8_mm(m) for m in (1, 16, 17)] == ["compiled", "compiled", "triton"]
    assert int8_mm(3, zero=True) == "triton"  # a zero point: Triton's int8_mm
    assert [int8_linear(m) for m in (2, 40)] == ["compiled", "triton"]
    assert int8_linear(3, torch.float32) == "compiled"  # float32 x: quantized by the compiled kernel first
    assert [sparse24_int8_linear(m) for m in (5, 17)] == ["compiled", "public op"]
    mma["ok"] = False
    assert int8_mm(1) == "triton" and sparse24_int8_linear(1) == "public op"
    mma["ok"] = True
    skt.set_backend("int8_mm", "triton")
    assert int8_mm(1) == "triton"


def fake_measuring_device(monkeypatch, tmp_path, log):
    """The measured routes' world on the CPU: an sm_80+ device with the compiled kernels, backends "auto", kernels
    that can be timed, an autotune cache in tmp_path, and a timer that reports times[path](M bucket) of the one
    kernel it saw run (`log`: (path, M) of every launch). Returns (times, timed): the caller fills `times`;
    `timed` lists the (path, M) timed."""
    from sparsekit import triton as skt
    from sparsekit.triton import autotune

    monkeypatch.setattr(skt, "_compiled_cuda", lambda: True)
    monkeypatch.setattr(skt, "_has_mma", lambda device: True)
    monkeypatch.setattr(skt, "_backend", dict.fromkeys(skt._AUTO_MAX_M, "auto"))
    monkeypatch.setattr(skt, "available", lambda: True)
    monkeypatch.setattr(autotune, "_measurable", lambda device: True)
    monkeypatch.setattr(autotune, "device_tag", lambda device: "Fake_GPU")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPARSEKIT_TRITON_AUTOTUNE", raising=False)
    times, timed = {}, []

    def bench(fn):
        n = len(log)
        fn()
        assert len(log) == n + 1
        path, m = log[-1]
        timed.append((path, m))
        return times[path](1 << (m - 1).bit_length())

    monkeypatch.setattr(autotune, "_do_bench_ms", bench)
    autotune.clear()
    return times, timed


def test_int8_routes_are_measured_per_m_bucket(monkeypatch, tmp_path):
    """Under "auto", int8_weight_only_mm and int8_linear on CUDA take the faster of the compiled kernel and Triton
    on the device, timed at the first call of each (N, K, dtype, M bucket) up to 128 rows (above: Triton) and
    kept in memory and on disk (int8_linear in its own table); a converted layer's direct call
    (use_compiled with the output features) follows the measured table, and takes the public op (which measures)
    while a key is not measured yet; a fixed backend setting measures nothing. Logic only: CPU tensors stand in,
    the timer is faked by the kernel it sees run."""
    import json

    from sparsekit import triton as skt
    from sparsekit.triton import autotune

    log = []  # (kernel, M) of every launch, in order

    def fake_lazy(module, name):
        if name == "quantize_per_token":
            return lambda: reference.quantize_per_token
        n_of = 1 if name == "int8_weight_only_mm" else 3
        return lambda: (lambda *a: log.append(("triton", a[0].shape[0])) or
                        torch.zeros(a[0].shape[0], a[n_of].shape[0], dtype=a[0].dtype if n_of == 1 else a[-1]))

    for alias in ("_cuda_int8_weight_only_mm", "_cuda_int8_linear"):
        real = getattr(torch.ops.sparsekit, alias)
        monkeypatch.setattr(torch.ops.sparsekit, alias, lambda *a, _r=real: log.append(("compiled", a[0].shape[0]))
                            or _r(*a))
    monkeypatch.setattr(skt, "_lazy", fake_lazy)
    times, timed = fake_measuring_device(monkeypatch, tmp_path, log)
    impls = skt._make_impls()
    w = formats.Int8Weight.from_dense(torch.randn(8, 32))

    def call(op, M):
        log.clear()
        timed.clear()
        x = torch.randn(M, 32).to(torch.bfloat16)
        y = impls[op](x, w.qweight, w.scale, None)
        path, m = log[-1]
        assert m == M
        if path == "compiled":
            want = (reference.int8_weight_only_mm if op == "int8_weight_only_mm" else reference.int8_linear)(
                x, w.qweight, w.scale)
            assert torch.equal(y, want)
        return path, sorted(timed)

    try:
        times.update(compiled=lambda b: 1.0 if b <= 32 else 3.0, triton=lambda b: 2.0)
        wo = "int8_weight_only_mm"
        assert call(wo, 20) == ("compiled", [("compiled", 20), ("triton", 20)])  # measured: beyond the old 16
        assert call(wo, 40) == ("triton", [("compiled", 40), ("triton", 40)])
        assert call(wo, 64) == ("triton", []) and call(wo, 17) == ("compiled", [])  # known buckets
        assert call(wo, 200) == ("triton", [])  # above 128 rows: Triton, unmeasured
        times.update(compiled=lambda b: 3.0, triton=lambda b: 2.0)
        assert call("int8_linear", 1) == ("triton", [("compiled", 1), ("triton", 1)])  # its own table
        data = json.loads(Path(autotune.cache_file("Fake_GPU")).read_text())["configs"]
        assert data == {"int8_weight_only_mm_route|8|32|bf16|32": {"path": "compiled"},
                        "int8_weight_only_mm_route|8|32|bf16|64": {"path": "triton"},
                        "int8_linear_route|8|32|bf16|1": {"path": "triton"}}
        # the direct call of a converted layer: the table; a key not measured yet: the public op, which measures
        x = torch.randn(20, 32).to(torch.bfloat16)
        assert skt.use_compiled(wo, x, 8) and not skt.use_compiled(wo, x[:9], 8)
        assert not skt.use_compiled("int8_mm", x[:1], 8, table="int8_linear")
        assert skt.use_compiled(wo, x[:9])  # without n: the boundary
        # during CUDA graph capture nothing is timed: the boundary, not remembered
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        assert skt.use_compiled(wo, x[:9], 8) and call(wo, 9) == ("compiled", [])
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
        times.update(compiled=lambda b: 3.0, triton=lambda b: 2.0)
        assert call(wo, 9) == ("triton", [("compiled", 9), ("triton", 9)])
        assert not skt.use_compiled(wo, x[:9], 8)  # the measured choice
        monkeypatch.setattr(autotune, "_measurable", lambda device: False)  # nothing can be timed: the boundary
        assert skt.use_compiled(wo, x[:3], 8)
        # a fixed setting decides by itself
        skt.set_backend(wo, "compiled")
        assert call(wo, 200) == ("compiled", [])
        skt.set_backend(wo, "triton")
        assert call(wo, 20) == ("triton", [])
    finally:
        autotune.clear()


def test_bitmap_routes_are_measured_per_m_bucket(monkeypatch, tmp_path):
    """bitmap_mm on CUDA under "auto": the compiled decode kernel or Triton (whose tl.dot designs may win from M = 8)
    by the faster on the device, per (N, K, dtype, M bucket) up to 128 rows, kept in memory and on disk; a layer
    with a column list routes between that kernel and the public op in a table of its own (`_columns_use`: the op's
    table times the bitmap kernel, not the column list); where nothing can be timed, M <= 16. Logic only: CPU
    tensors stand in, the timer is faked by the kernel it sees run."""
    import json

    from sparsekit import triton as skt
    from sparsekit.formats import bitmap as bmf
    from sparsekit.triton import autotune

    log = []  # (kernel, M) of every launch, in order

    def logged(name, fn):
        return lambda *a: log.append((name, a[0].shape[0])) or fn(*a)

    monkeypatch.setattr(skt, "_lazy", lambda module, name: lambda: logged("triton", reference.bitmap_mm))
    monkeypatch.setattr(torch.ops.sparsekit, "_cuda_bitmap_mm", logged("compiled", torch.ops.sparsekit._cuda_bitmap_mm))
    monkeypatch.setattr(bmf, "_CUDA_BITMAP_COLUMNS_MM", logged("columns", bmf._CUDA_BITMAP_COLUMNS_MM))
    monkeypatch.setattr(bmf, "_BITMAP_MM", logged("op", reference.bitmap_mm))
    times, timed = fake_measuring_device(monkeypatch, tmp_path, log)
    bitmap_mm = skt._make_impls()["bitmap_mm"]
    f = formats.BitmapWeight.from_dense(torch.randn(8, 64), torch.rand(8, 64) < 0.3)
    cols = reference.bitmap_columns(f.bitmap, 64)
    bias = torch.randn(8)

    def call(M):
        log.clear()
        timed.clear()
        x = torch.randn(M, 64)
        y = bitmap_mm(x, f.bitmap, f.word_offsets, f.values, bias)
        torch.testing.assert_close(y, x @ f.to_dense().T + bias, rtol=1e-4, atol=1e-4)
        assert log[-1][1] == M
        return log[-1][0], sorted(timed)

    def layer(M):
        log.clear()
        timed.clear()
        use = bmf._columns_use(torch.randn(M, 64), 8, f.bitmap, f.word_offsets, f.values, cols, bias)
        return use, sorted(timed)

    try:
        times.update(compiled=lambda b: 1.0 if b <= 4 else 3.0, triton=lambda b: 2.0)
        assert call(3) == ("compiled", [("compiled", 3), ("triton", 3)])
        assert call(9) == ("triton", [("compiled", 9), ("triton", 9)])  # Triton's dot wins at 16 rows here
        assert call(4) == ("compiled", []) and call(16) == ("triton", [])  # known buckets
        times.update(compiled=lambda b: 1.0)
        assert call(40) == ("compiled", [("compiled", 40), ("triton", 40)])  # beyond the old 16 where faster
        assert call(200) == ("triton", [])  # above 128 rows: Triton, unmeasured
        x = torch.randn(12, 64)
        assert not skt.use_compiled("bitmap_mm", x, 8) and skt.use_compiled("bitmap_mm", x[:3], 8)  # the table
        assert not skt.use_compiled("bitmap_mm", x[:2], 8)  # not measured yet: the public op, which measures
        assert skt.use_compiled("bitmap_mm", x)  # without the output features: the boundary
        times.update(columns=lambda b: 1.0 if b <= 2 else 3.0, op=lambda b: 2.0)
        assert layer(1) == (True, [("columns", 1), ("op", 1)])
        assert layer(5) == (False, [("columns", 5), ("op", 5)])
        assert layer(1) == (True, []) and layer(7) == (False, [])  # known buckets
        data = json.loads(Path(autotune.cache_file("Fake_GPU")).read_text())["configs"]
        assert data == {"bitmap_mm_route|8|64|fp32|4": {"path": "compiled"},
                        "bitmap_mm_route|8|64|fp32|16": {"path": "triton"},
                        "bitmap_mm_route|8|64|fp32|64": {"path": "compiled"},
                        "bitmap_columns_route|8|64|fp32|1": {"path": "compiled"},  # the column list
                        "bitmap_columns_route|8|64|fp32|8": {"path": "triton"}}  # the op
        # during CUDA graph capture nothing is timed: M <= 16 the compiled kernels, not remembered
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        assert call(100) == ("triton", []) and layer(12) == (True, []) and layer(20) == (False, [])

        def unmeasured(M, dtype, n=8):  # the first choice of a layer with a list (density ≈ 0.3 at n = 8)
            x = torch.randn(M, 64, dtype=dtype)
            first = bmf._columns_first(x, n, f.values)
            assert bmf._columns_use(x, n, f.bitmap, f.word_offsets, f.values, cols, bias) == first
            return first

        # where the bitmap kernel walks its words (M <= 4, float16 / bfloat16) its model beats the list above 15 %
        assert not unmeasured(1, torch.float16) and not unmeasured(4, torch.bfloat16)
        assert unmeasured(5, torch.float16) and unmeasured(1, torch.float32)
        assert unmeasured(1, torch.float16, n=8 * 64)  # density ≈ 0.3 / 64: the list
        monkeypatch.setenv("SPARSEKIT_CUDA_BITMAP_CONSUMER", "list")
        assert unmeasured(2, torch.bfloat16)  # no walk: the list
        monkeypatch.delenv("SPARSEKIT_CUDA_BITMAP_CONSUMER")
        assert not timed
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
        assert layer(12)[1] == [("columns", 12), ("op", 12)]  # measured at the next eager call
        # a fixed setting decides for the op and the layer; nothing measured
        skt.set_backend("bitmap_mm", "compiled")
        assert call(300) == ("compiled", []) and layer(30) == (True, [])
        skt.set_backend("bitmap_mm", "triton")
        assert call(2) == ("triton", []) and layer(1) == (False, [])
    finally:
        autotune.clear()


def _alias_args(op, device="cpu"):
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    x = torch.randn(3, 64, device=device)
    if op == "_cuda_quantize_per_token":
        return (x, True)
    if op == "_cuda_int8_weight_only_mm":
        f = formats.Int8Weight.from_dense(w)
        return (x.half() if device == "cuda" else x, f.qweight.to(device), f.scale.to(device), None)
    if op in ("_cuda_int8_linear", "_cuda_sparse24_int8_linear"):
        b = torch.randn(16, device=device)
        if op == "_cuda_int8_linear":
            f = formats.Int8Weight.from_dense(w)
            return (x, f.qweight.to(device), f.scale.to(device), b)
        f = formats.Sparse24Int8Weight.from_dense(w * torch.tensor([1.0, 0, 0, 1]).repeat(16))
        return (x, f.values.to(device), f.meta.to(device), f.scale.to(device), b)
    if op in ("_cuda_int8_mm", "_cuda_sparse24_int8_mm"):
        q, s, _ = reference.quantize_per_token(x)
        b = torch.randn(16, device=device)
        if op == "_cuda_int8_mm":
            f = formats.Int8Weight.from_dense(w)
            return (q, s, None, f.qweight.to(device), f.scale.to(device), b, torch.float32)
        f = formats.Sparse24Int8Weight.from_dense(w * torch.tensor([1.0, 0, 0, 1]).repeat(16))
        return (q, s, None, f.values.to(device), f.meta.to(device), f.scale.to(device), b, torch.float32)
    if op == "_cuda_bitmap_mm":
        f = formats.BitmapWeight.from_dense(w, torch.rand(16, 64) < 0.4)
        return (x, f.bitmap.to(device), f.word_offsets.to(device), f.values.to(device), None)
    f = formats.BSRWeight.from_dense(w, block_mask(16, 64, 4, 8, 0.5), (4, 8))
    return (x, f.crow_indices.to(device), f.col_indices.to(device), f.values.to(device), 16, torch.randn(16, device=device))


@pytest.mark.parametrize("op", ["_cuda_bitmap_mm", "_cuda_bsr_mm", "_cuda_int8_weight_only_mm", "_cuda_int8_mm",
                                "_cuda_sparse24_int8_mm", "_cuda_int8_linear", "_cuda_sparse24_int8_linear",
                                "_cuda_quantize_per_token"])
def test_compiled_cuda_aliases_opcheck_and_checks_on_cpu(op):
    """The _cuda_ names of the compiled CUDA kernels are ops of their own: on the CPU they fall back to the
    checked reference, with the public op's messages."""
    args = _alias_args(op)
    public = getattr(torch.ops.sparsekit, op[len("_cuda_"):])
    torch.library.opcheck(getattr(torch.ops.sparsekit, op), args)
    # the public op runs the compiled CPU kernel (another summation order than the reference)
    torch.testing.assert_close(getattr(torch.ops.sparsekit, op)(*args), public(*args), rtol=1e-5, atol=1e-5)
    bad = (args[0].double(),) + args[1:]
    with pytest.raises(TypeError, match=rf"sparsekit\.{op[len('_cuda_'):]}: expected x(_q)? of dtype"):
        getattr(torch.ops.sparsekit, op)(*bad)


@gpu
@pytest.mark.parametrize("op", ["_cuda_bitmap_mm", "_cuda_bsr_mm", "_cuda_int8_weight_only_mm", "_cuda_int8_mm",
                                "_cuda_sparse24_int8_mm", "_cuda_int8_linear", "_cuda_sparse24_int8_linear",
                                "_cuda_quantize_per_token"])
def test_compiled_cuda_aliases_opcheck_cuda(op):
    if op in ("_cuda_int8_weight_only_mm", "_cuda_int8_mm", "_cuda_sparse24_int8_mm", "_cuda_int8_linear",
              "_cuda_sparse24_int8_linear", "_cuda_quantize_per_token"):
        require_int8_wo_kernel()
    else:
        require_cpp_kernel(op[len("_cuda_"):])
    torch.library.opcheck(getattr(torch.ops.sparsekit, op), _alias_args(op, "cuda"))


@pytest.mark.parametrize("op,extra", [("pack_csr", ()), ("pack_bitmap", ()), ("pack_sparse24", ()),
                                      ("pack_bsr", ([8, 8],))])
def test_pack_ops_opcheck_cpu(op, extra):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    if op == "pack_sparse24":
        g = w.abs().reshape(16, 8, 4)
        keep = torch.zeros_like(g, dtype=torch.bool)
        keep.scatter_(2, g.topk(2, dim=-1).indices, True)
        mask = keep.reshape(16, 32)
    else:
        mask = torch.rand(16, 32) < 0.4
    torch.library.opcheck(getattr(torch.ops.sparsekit, op), (w, mask, *extra))
