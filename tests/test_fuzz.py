"""hypothesis fuzzing of every sparse op against its reference: shapes, sparsities, dtypes,
strides; and thread safety of the CPU kernels. Shrunk failures are kept below as regular tests."""
import threading

import pytest
import torch

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from sparsekit import formats  # noqa: E402

from helpers import assert_close_to_ref  # noqa: E402

DT = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])
HAS_CUDA = torch.cuda.is_available()
# Every fuzz test runs on the CPU and, where there is one, on the GPU (the CUDA / Triton kernels).
DEVICES = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device"))])


def on(f, device):
    """The format f with its buffers on `device`."""
    return type(f).from_buffers({k: v.to(device) for k, v in f.buffers().items()}, f.shape)


def _x(M, K, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed":
        return torch.randn(K, M, generator=g).to(dtype).t()
    if layout == "strided":
        return torch.randn(M, 2 * K + 1, generator=g).to(dtype)[:, 1::2][:, :K]
    if layout == "expanded":  # stride 0: every row the same memory
        return torch.randn(1, K, generator=g).to(dtype).expand(M, K)
    return torch.randn(M, K, generator=g).to(dtype)


LAYOUTS = st.sampled_from(["contiguous", "transposed", "strided", "expanded"])


@DEVICES
@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(["csr", "bitmap", "bsr", "2:4"]), M=st.integers(0, 40), n=st.integers(1, 12),
       k=st.integers(1, 12), density=st.floats(0, 1), dtype=DT,
       layout=LAYOUTS, bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_ops_match_reference(device, fmt, M, n, k, density, dtype, layout, bias, seed):
    g = torch.Generator().manual_seed(seed)
    if fmt == "bsr":
        R, C = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        N, K = R * n, C * k
    elif fmt == "2:4":
        N, K = n, 4 * k
    else:
        N, K = n, 3 * k + n % 5
    w = torch.randn(N, K, generator=g).to(dtype)
    mask = torch.rand(N, K, generator=g) < density
    if fmt == "2:4":
        grp = mask.reshape(N, K // 4, 4)
        grp &= grp.cumsum(-1) <= 2  # keep at most the first two per group
        mask = grp.reshape(N, K)
        f = formats.Sparse24Weight.from_dense(w, mask)
    elif fmt == "bsr":
        f = formats.BSRWeight.from_dense(w, mask, blocksize=(R, C))
    else:
        f = formats.get(fmt).from_dense(w, mask)
    assert torch.equal(f.to_dense(), w * mask)
    x = _x(M, K, dtype, layout, seed)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    ref = x.double() @ (w * mask).double().T + (0 if b is None else b.double())
    y = on(f, device).matmul(x.to(device), None if b is None else b.to(device)).cpu()
    assert y.shape == (M, N) and y.dtype == dtype
    if M:
        assert_close_to_ref(y, ref, x, w * mask, dtype)


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 20), K=st.integers(1, 70), symmetric=st.booleans(), dtype=DT, scale=st.floats(1e-3, 1e3),
       seed=st.integers(0, 2**16))
def test_quantize_per_token_is_the_reference_byte_for_byte(M, K, symmetric, dtype, scale, seed):
    from sparsekit import ops
    from sparsekit.ops import reference

    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(M, K, generator=g) * scale).to(dtype)
    got = ops.quantize_per_token(x, symmetric)
    ref = reference.quantize_per_token(x, symmetric)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


@DEVICES
@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(["int8_gemm_i32", "int8_mm", "int8_weight_only_mm", "sparse24_int8_mm", "int8_linear",
                           "sparse24_int8_linear"]),
       M=st.integers(0, 24), N=st.integers(1, 20), k=st.integers(1, 24), dtype=DT, layout=LAYOUTS,
       asymmetric=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_int8_ops_match_reference(device, op, M, N, k, dtype, layout, asymmetric, bias, seed):
    from sparsekit import ops
    from sparsekit.ops import reference

    g = torch.Generator().manual_seed(seed)
    K = 4 * k
    x = _x(M, K, dtype, layout, seed)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    composed = None  # the one-call linears: the two-op composition they replace, bit for bit on the CPU
    if op in ("int8_weight_only_mm", "int8_linear"):
        wq = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
        args = (x, wq, torch.rand(N, generator=g) + 0.01, b)
        if op == "int8_linear":
            composed = lambda x, wq, ws, b: ops.int8_mm(*ops.quantize_per_token(x)[:2], None, wq, ws, b, x.dtype)  # noqa: E731
    elif op == "sparse24_int8_linear":
        w = torch.randn(N, K, generator=g)
        keep = torch.zeros(N, K // 4, 4, dtype=torch.bool).scatter_(
            2, torch.rand(N, K // 4, 4, generator=g).topk(2, dim=-1).indices, True)
        f = formats.get("2:4+int8").from_dense(w, keep.reshape(N, K))
        args = (x, f.values, f.meta, f.scale, b)
        composed = lambda x, v, m, ws, b: ops.sparse24_int8_mm(  # noqa: E731
            *ops.quantize_per_token(x)[:2], None, v, m, ws, b, x.dtype)
    else:
        q, s, z = ops.quantize_per_token(x, not asymmetric)
        q = q if layout != "transposed" else q.t().contiguous().t()  # strided int8 activations too
        if op == "int8_gemm_i32":
            args = (q, torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8))
        elif op == "int8_mm":
            args = (q, s, z if asymmetric else None, torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8),
                    torch.rand(N, generator=g) + 0.01, b, dtype)
        else:
            w = torch.randn(N, K, generator=g)
            keep = torch.zeros(N, K // 4, 4, dtype=torch.bool).scatter_(
                2, torch.rand(N, K // 4, 4, generator=g).topk(2, dim=-1).indices, True)
            f = formats.get("2:4+int8").from_dense(w, keep.reshape(N, K))
            args = (q, s, z if asymmetric else None, f.values, f.meta, f.scale, b, dtype)
    want = getattr(reference, op)(*args)
    moved = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    got = getattr(torch.ops.sparsekit, op)(*moved).cpu()
    assert got.shape == want.shape and got.dtype == want.dtype
    if op == "int8_gemm_i32":
        assert torch.equal(got, want)  # exact
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    if composed is not None and device == "cpu":
        assert torch.equal(got, composed(*args))


@DEVICES
@settings(max_examples=30, deadline=None)
@given(fmt=st.sampled_from(["csr", "bitmap", "bsr", "2:4"]), n=st.integers(0, 10), k=st.integers(0, 10),
       density=st.floats(0, 1), dtype=DT, transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_packers_match_from_dense(device, fmt, n, k, density, dtype, transposed, seed):
    from sparsekit.ops import packing

    g = torch.Generator().manual_seed(seed)
    N, K = (2 * n, 4 * k) if fmt in ("bsr", "2:4") else (n, 3 * k + 1)
    w = torch.randn(K, N, generator=g).to(dtype).t() if transposed else torch.randn(N, K, generator=g).to(dtype)
    mask = torch.rand(N, K, generator=g) < density
    if fmt == "2:4":
        grp = mask.reshape(N, K // 4, 4)
        grp &= grp.cumsum(-1) <= 2
        mask = grp.reshape(N, K)
    kw = {"blocksize": (2, 4)} if fmt == "bsr" else {}
    if fmt == "bsr":
        mask = mask.reshape(n, 2, k, 4).any(3, keepdim=True).any(1, keepdim=True).expand(n, 2, k, 4).reshape(N, K)
    name = {"2:4": "pack_sparse24"}.get(fmt, f"pack_{fmt}")
    got = getattr(packing, name)(w.to(device), mask.to(device), **kw)
    want = formats.get(fmt).from_dense(w, mask, **kw).buffers().values()
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b)


def test_concurrent_calls_match_serial():
    torch.manual_seed(0)
    w = torch.randn(300, 512)
    mask = torch.rand(300, 512) < 0.2
    fs = [formats.CSRWeight.from_dense(w, mask), formats.BitmapWeight.from_dense(w, mask)]
    xs = [torch.randn(M, 512) for M in (1, 7, 16, 33)]
    serial = [[f.matmul(x) for x in xs] for f in fs]
    errors = []

    def work():
        try:
            for _ in range(20):
                for i, f in enumerate(fs):
                    for j, x in enumerate(xs):
                        if not torch.equal(f.matmul(x), serial[i][j]):
                            errors.append((i, j))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


# ------------------------------------------------------------------------------------------ bad inputs
def _bad_case(case, g):
    """(callable on a device, what it gets wrong): an op or packer call with one thing wrong."""
    from sparsekit.ops import packing

    w = torch.randn(8, 16, generator=g)
    x = torch.randn(3, 16, generator=g)
    f24 = formats.get("2:4").from_dense(w, torch.tensor([1, 1, 0, 0]).bool().repeat(8, 4))
    fbm = formats.get("bitmap").from_dense(w, torch.rand(8, 16, generator=g) < 0.5)
    fbs = formats.get("bsr").from_dense(w, torch.ones(8, 16, dtype=torch.bool), blocksize=(4, 4))
    ops = torch.ops.sparsekit
    not24 = torch.ones(8, 16, dtype=torch.bool)
    meta_bad = f24.meta.clone()
    meta_bad[0, 0] = 0x00  # positions 0 and 0
    offsets_bad = fbm.word_offsets.clone()
    offsets_bad[-1, -1] += 5
    col_bad = fbs.col_indices.clone()
    col_bad[0] = 99
    return {
        "pack_sparse24 not 2:4": lambda d: packing.pack_sparse24(w.to(d), not24.to(d)),
        "pack_sparse24 K % 4": lambda d: packing.pack_sparse24(w[:, :14].to(d), not24[:, :14].to(d)),
        "pack_bsr does not tile": lambda d: packing.pack_bsr(w.to(d), not24.to(d), blocksize=(3, 4)),
        "pack mask shape": lambda d: packing.pack_csr(w.to(d), not24[:, :8].to(d)),
        "sparse24_mm x dtype": lambda d: ops.sparse24_mm(x.half().to(d), f24.values.to(d), f24.meta.to(d)),
        "sparse24_mm meta positions": lambda d: ops.sparse24_mm(x.to(d), f24.values.to(d), meta_bad.to(d)),
        "sparse24_mm K": lambda d: ops.sparse24_mm(x[:, :12].to(d), f24.values.to(d), f24.meta.to(d)),
        "bitmap_mm offsets": lambda d: ops.bitmap_mm(x.to(d), fbm.bitmap.to(d), offsets_bad.to(d), fbm.values.to(d)),
        "bitmap_mm bias shape": lambda d: ops.bitmap_mm(x.to(d), fbm.bitmap.to(d), fbm.word_offsets.to(d),
                                                        fbm.values.to(d), torch.zeros(5).to(d)),
        "bsr_mm col range": lambda d: ops.bsr_mm(x.to(d), fbs.crow_indices.to(d), col_bad.to(d), fbs.values.to(d), 8),
        "bsr_mm out_features": lambda d: ops.bsr_mm(x.to(d), fbs.crow_indices.to(d), fbs.col_indices.to(d),
                                                    fbs.values.to(d), 12),
        "bsr_mm x 3-d": lambda d: ops.bsr_mm(x[None].to(d), fbs.crow_indices.to(d), fbs.col_indices.to(d),
                                             fbs.values.to(d), 8),
    }[case]


BAD_CASES = ["pack_sparse24 not 2:4", "pack_sparse24 K % 4", "pack_bsr does not tile", "pack mask shape",
             "sparse24_mm x dtype", "sparse24_mm meta positions", "sparse24_mm K", "bitmap_mm offsets",
             "bitmap_mm bias shape", "bsr_mm col range", "bsr_mm out_features", "bsr_mm x 3-d"]


@DEVICES
@settings(max_examples=24, deadline=None)
@given(case=st.sampled_from(BAD_CASES), seed=st.integers(0, 2**16))
def test_bad_inputs_raise_the_cpu_error_on_every_device(device, case, seed):
    """Every bad input that the CPU path answers with an error gets the same error on CUDA, raised before
    any kernel runs: the process (and its CUDA context) lives on."""
    call = _bad_case(case, torch.Generator().manual_seed(seed))
    with pytest.raises((ValueError, TypeError, RuntimeError)) as cpu_err:
        call("cpu")
    if device == "cpu":
        return
    with pytest.raises(type(cpu_err.value)) as dev_err:
        call(device)
    torch.cuda.synchronize()  # the context is healthy: nothing ran out of bounds
    cpu_msg = str(cpu_err.value).split("\n")[0]
    assert cpu_msg.split(": ", 1)[-1][:40] in str(dev_err.value), (cpu_msg, str(dev_err.value))
