"""Every format: exact round trip, its op against the float64 reference (odd sizes, all dtypes,
every CPU instruction set), opcheck, torch.compile, bad inputs, SparseLinear, save and load."""
import io

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import formats, ops
from sparsekit.nn import SparseLinear
from sparsekit.ops import reference

from helpers import assert_close_to_ref

FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def mask_24(N, K, g=None):
    score = torch.rand(N, K // 4, 4, generator=g)
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(2, score.topk(2, dim=-1).indices, True)
    drop_more = torch.rand(N, K // 4, 4, generator=g) < 0.15  # some groups keep fewer than two
    return (keep & ~drop_more).reshape(N, K)


def block_mask(N, K, R, C, density):
    bm = torch.rand(N // R, K // C) < density
    return bm.repeat_interleave(R, 0).repeat_interleave(C, 1) & (torch.rand(N, K) < 0.9)


def make(fmt, N, K, dtype, **kw):
    w = torch.randn(N, K).to(dtype)
    if fmt == "bsr":
        R, C = kw.get("blocksize", (4, 8))
        mask = block_mask(N, K, R, C, 0.3)
        f = formats.BSRWeight.from_dense(w, mask, blocksize=(R, C))
    elif fmt == "bitmap":
        mask = torch.rand(N, K) < kw.get("density", 0.3)
        f = formats.BitmapWeight.from_dense(w, mask)
    elif fmt == "2:4":
        mask = mask_24(N, K)
        f = formats.Sparse24Weight.from_dense(w, mask)
    else:
        raise AssertionError(fmt)
    return w, mask, f


FLOAT_FORMATS = [("bsr", 24, 40, {"blocksize": (4, 8)}), ("bsr", 32, 48, {"blocksize": (16, 16)}),
                 ("bsr", 9, 10, {"blocksize": (3, 5)}), ("bitmap", 37, 77, {}), ("bitmap", 9, 200, {"density": 0.6}), ("bitmap", 5, 32, {"density": 1.0}),
                 ("bitmap", 6, 40, {"density": 0.0}), ("2:4", 21, 52, {}), ("2:4", 16, 64, {}),
                 ("bsr", 64, 96, {"blocksize": (32, 32)})]


@pytest.mark.parametrize("fmt,N,K,kw", FLOAT_FORMATS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_round_trip_is_exact(fmt, N, K, kw, dtype):
    w, mask, f = make(fmt, N, K, dtype, **kw)
    f.check()
    assert torch.equal(f.to_dense(), w * mask)
    assert torch.equal(type(f).from_buffers(f.buffers(), f.shape).to_dense(), w * mask)


@pytest.mark.parametrize("fmt,N,K,kw", FLOAT_FORMATS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("M", [1, 2, 3, 9, 17, 33])
def test_matches_reference(cpu_isa, fmt, N, K, kw, dtype, M):
    w, mask, f = make(fmt, N, K, dtype, **kw)
    x = torch.randn(M, K).to(dtype)
    b = torch.randn(N).to(dtype) if M % 2 else None
    y = f.matmul(x, b)
    assert y.shape == (M, N) and y.dtype == dtype
    ref = x.double() @ (w * mask).double().T + (0 if b is None else b.double())
    assert_close_to_ref(y, ref, x, w * mask, dtype)


@pytest.mark.parametrize("fmt,N,K,kw", FLOAT_FORMATS[::2])
def test_opcheck_and_compile(fmt, N, K, kw):
    w, mask, f = make(fmt, N, K, torch.float32, **kw)
    x = torch.randn(5, K)
    b = torch.randn(N)
    op = {"bsr": torch.ops.sparsekit.bsr_mm, "bitmap": torch.ops.sparsekit.bitmap_mm,
          "2:4": torch.ops.sparsekit.sparse24_mm}[fmt]
    bufs = [f.buffers()[n] for n in type(f).buffer_names]
    args = (x, *bufs, N, b) if fmt == "bsr" else (x, *bufs, b)
    torch.library.opcheck(op, args)
    xg = x.clone().requires_grad_()
    torch.library.opcheck(op, (xg, *args[1:]))
    torch._dynamo.reset()
    cf = torch.compile(lambda x: f.matmul(x, b).relu(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(cf(x), f.matmul(x, b).relu())


def test_zero_sizes_every_format():
    for fmt, N, K, kw in FLOAT_FORMATS[:1] + FLOAT_FORMATS[3:4] + FLOAT_FORMATS[7:8]:
        _, _, f = make(fmt, N, K, torch.float32, **kw)
        assert f.matmul(torch.randn(0, K)).shape == (0, N)


# ------------------------------------------------------------------------------------------- int8
@pytest.mark.parametrize("M,K", [(1, 7), (3, 64), (17, 33), (2, 0)])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", FLOATS)
def test_quantize_per_token_matches_reference_bytes(M, K, symmetric, dtype):
    x = (torch.randn(M, K) * 3).to(dtype)
    if M > 1 and K:
        x[1] = 0  # an all-zero row
    q, s, z = ops.quantize_per_token(x, symmetric)
    rq, rs, rz = reference.quantize_per_token(x, symmetric)
    assert torch.equal(q, rq) and torch.equal(s, rs) and torch.equal(z, rz)
    if K:
        err = ((q.float() - z[:, None].float()) * s[:, None] - x.float()).abs()
        assert (err <= s[:, None] * 0.5001 + 1e-6).all()


def test_quantize_rounds_half_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5]])  # scale 1: q = round_half_even(x)
    q, s, _ = ops.quantize_per_token(x)
    assert s.item() == 1.0 and q.tolist() == [[127, 0, 2, 2, 0, -2]]


@pytest.mark.parametrize("M,N,K", [(1, 5, 9), (17, 13, 64), (33, 8, 100), (4, 3, 4096)])
def test_int8_gemm_exact(M, N, K):
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    b = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    if M > 1:
        a[0] = -128
        b[0] = -128  # the largest products: 4096 * 16384 stays exact in int32
    got = ops.int8_gemm_i32(a, b)
    assert got.dtype == torch.int32
    assert torch.equal(got, (a.long() @ b.long().T).int())


@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("with_zero", [False, True])
def test_int8_mm_matches_reference(out_dtype, with_zero):
    M, N, K = 7, 11, 45
    x = torch.randn(M, K)
    w = torch.randn(N, K)
    q, s, z = ops.quantize_per_token(x, symmetric=not with_zero)
    wq, ws = formats.quantize_rows(w)
    b = torch.randn(N).to(out_dtype)
    y = ops.int8_mm(q, s, z if with_zero else None, wq, ws, b, out_dtype)
    acc = (q.long() - (z.long()[:, None] if with_zero else 0)) @ wq.long().T
    ref = acc.double() * s.double()[:, None] * ws.double()[None, :] + b.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-2 if out_dtype != torch.float32 else 1e-5, atol=1e-2)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("M", [1, 5, 16])
def test_int8_weight_only_matches_reference(dtype, M):
    w = torch.randn(19, 70)
    wq, ws = formats.quantize_rows(w)
    x = torch.randn(M, 70).to(dtype)
    y = ops.int8_weight_only_mm(x, wq, ws, None)
    wd = wq.double() * ws.double()[:, None]
    assert_close_to_ref(y, x.double() @ wd.T, x, wd, dtype)


def test_sparse24_int8_matches_reference():
    N, K = 9, 44
    w = torch.randn(N, K)
    mask = mask_24(N, K)
    f = formats.Sparse24Int8Weight.from_dense(w, mask)
    f.check()
    x = torch.randn(6, K)
    q, s, _ = ops.quantize_per_token(x)
    y = ops.sparse24_int8_mm(q, s, None, f.values, f.meta, f.scale, None, torch.float32)
    wq = torch.zeros(N, K, dtype=torch.int64)
    wq.scatter_(1, reference.sparse24_positions(f.meta, K), f.values.long())
    ref = (q.long() @ wq.T).double() * s.double()[:, None] * f.scale.double()[None, :]
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    # dequantized weight keeps the 2:4 mask and is close to the float weight
    dq = f.to_dense()
    assert torch.all(dq[~mask] == 0)
    assert (dq - w * mask).abs().max() <= f.scale.max() * 0.5001


@pytest.mark.parametrize("op,args,exc,msg", [
    ("int8_gemm_i32", lambda: (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int8)), TypeError,
     "expected a of dtype int8"),
    ("int8_gemm_i32", lambda: (torch.zeros(2, 3, dtype=torch.int8), torch.zeros(2, 4, dtype=torch.int8)), ValueError,
     "expected a \\(M, K\\) and b \\(N, K\\)"),
    ("quantize_per_token", lambda: (torch.zeros(2, 3, dtype=torch.int32), True), TypeError, "expected x of dtype"),
    ("int8_mm", lambda: (torch.zeros(2, 3, dtype=torch.int8), torch.ones(3), None, torch.zeros(4, 3, dtype=torch.int8),
                         torch.ones(4), None, torch.float32), ValueError, "expected x_scale of shape \\(2,\\)"),
    ("int8_mm", lambda: (torch.zeros(2, 3, dtype=torch.int8), torch.ones(2), None, torch.zeros(4, 3, dtype=torch.int8),
                         torch.ones(4), None, torch.int32), TypeError, "expected out_dtype"),
    ("int8_weight_only_mm", lambda: (torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.int8), torch.ones(4).half(),
                                     None), TypeError, "expected w_scale of dtype float32"),
    ("int8_linear", lambda: (torch.zeros(2, 3, dtype=torch.int8), torch.zeros(4, 3, dtype=torch.int8), torch.ones(4)),
     TypeError, "sparsekit.int8_linear: expected x of dtype float32 or bfloat16 or float16, got int8"),
    ("int8_linear", lambda: (torch.zeros(2, 3), torch.zeros(4, 5, dtype=torch.int8), torch.ones(4)), ValueError,
     "sparsekit.int8_linear: expected w_q of shape \\(out_features, 3\\), got \\(4, 5\\)"),
    ("sparse24_int8_linear", lambda: (torch.zeros(2, 8), torch.zeros(3, 4, dtype=torch.int8),
                                      torch.zeros(3, 1, dtype=torch.uint8), torch.ones(3), torch.ones(3).half()),
     TypeError, "sparsekit.sparse24_int8_linear: expected bias of dtype float32 like the output, got float16"),
    ("bsr_mm", lambda: (torch.zeros(2, 10), torch.zeros(3, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                        torch.zeros(0, 4, 4), 8), ValueError, "divisible by the block 4x4"),
    ("bitmap_mm", lambda: (torch.zeros(2, 40), torch.zeros(3, 1, dtype=torch.int32), torch.zeros(3, 1, dtype=torch.int32),
                           torch.zeros(0)), ValueError, "expected bitmap of shape"),
    ("sparse24_mm", lambda: (torch.zeros(2, 8), torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.int32)), TypeError,
     "expected meta of dtype uint8"),
    ("sparse24_mm", lambda: (torch.zeros(2, 6), torch.zeros(3, 3), torch.zeros(3, 1, dtype=torch.uint8)), ValueError,
     "divisible by 4"),
    ("sparse24_mm", lambda: (torch.zeros(2, 8), torch.zeros(3, 4).half(), torch.zeros(3, 1, dtype=torch.uint8)),
     TypeError, "expected values of the same dtype as x"),
])
def test_bad_inputs(op, args, exc, msg):
    with pytest.raises(exc, match=msg):
        getattr(torch.ops.sparsekit, op)(*args())


def test_format_bad_input():
    with pytest.raises(ValueError, match="does not tile"):
        formats.BSRWeight.from_dense(torch.randn(10, 10), blocksize=(4, 4))
    with pytest.raises(ValueError, match="not 2:4"):
        formats.Sparse24Weight.from_dense(torch.randn(4, 8))  # dense: 4 of 4 kept
    with pytest.raises(ValueError, match="divisible by 4"):
        formats.Sparse24Weight.from_dense(torch.randn(4, 6), torch.zeros(4, 6, dtype=torch.bool))
    _, _, f = make("bitmap", 5, 40, torch.float32)
    with pytest.raises(ValueError, match="word_offsets do not match"):
        formats.BitmapWeight(f.bitmap, f.word_offsets + 1, f.values, f.shape)
    _, _, f = make("2:4", 4, 8, torch.float32)
    bad = f.meta.clone()
    bad[0, 0] = 0x00  # positions 0 and 0
    with pytest.raises(ValueError, match="distinct and ascending"):
        formats.Sparse24Weight(f.values, bad, f.shape)


# ------------------------------------------------------------------------------------------- modules
ALL = [("csr", {}), ("bsr", {"blocksize": (8, 8)}), ("bitmap", {}), ("2:4", {}), ("int8", {}), ("int8-wo", {}),
       ("2:4+int8", {})]


def _layer_mask(fmt, N, K):
    if fmt in ("2:4", "2:4+int8"):
        return mask_24(N, K)
    if fmt == "bsr":
        return block_mask(N, K, 8, 8, 0.4)
    if fmt in ("int8", "int8-wo"):
        return torch.ones(N, K, dtype=torch.bool)
    return torch.rand(N, K) < 0.3


@pytest.mark.parametrize("fmt,opts", ALL)
def test_sparse_linear_every_format(fmt, opts):
    lin = nn.Linear(48, 24)
    mask = _layer_mask(fmt, 24, 48)
    with torch.no_grad():
        lin.weight.mul_(mask)
    sl = SparseLinear.from_linear(lin, mask, format=fmt, **opts)
    x = torch.randn(2, 3, 48)
    tol = 0.05 if "int8" in fmt else 1e-5
    torch.testing.assert_close(sl(x), lin(x), rtol=tol, atol=tol * 4)
    half = SparseLinear.from_linear(lin, mask, format=fmt, **opts).to(torch.bfloat16)
    if "int8" in fmt:
        assert half.scale.dtype == torch.float32  # scales stay float32 under a cast
    torch.testing.assert_close(half(x.bfloat16()).float(), lin(x), rtol=0.1, atol=0.2)


@pytest.mark.parametrize("fmt,opts", ALL)
def test_save_load_every_format_bit_exact(fmt, opts, tmp_path):
    def build(seed):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
        masks = {n: _layer_mask(fmt, l.out_features, l.in_features) for n, l in
                 [("0", m[0]), ("2", m[2])]} if fmt != "bsr" else None
        if fmt == "bsr":
            masks = {"0": block_mask(16, 32, 8, 8, 0.5), "2": block_mask(8, 16, 8, 8, 0.5)}
        sparsekit.apply_masks(m, masks)
        return sparsekit.convert(m, sparsekit.SparseConfig(fmt, **opts), masks=masks)

    src, dst = build(1), build(2)
    x = torch.randn(3, 32)
    # torch.save / torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(dst(x), src(x))
    # safetensors
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "m.safetensors"
    sparsekit.save_safetensors(src, str(path))
    dst2 = build(3)
    sparsekit.load_safetensors(dst2, str(path))
    assert torch.equal(dst2(x), src(x))
    for k, v in src.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(dst2.state_dict()[k], v), k
    # a file saved with another format refuses to load
    other = "csr" if fmt != "csr" else "bitmap"
    with pytest.raises(RuntimeError, match="format"):
        sparsekit.load_safetensors(sparsekit.convert(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)),
                                                     sparsekit.SparseConfig(other)), str(path))


def test_convert_overrides_and_blocksize():
    m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    sparsekit.apply_masks(m, {"0": block_mask(32, 32, 16, 16, 0.5), "2": mask_24(16, 32)})
    cfg = sparsekit.SparseConfig("bsr", blocksize=16, overrides={"2": {"format": "2:4"}})
    x = torch.randn(4, 32)
    ref = m(x)
    sparsekit.convert(m, cfg)
    assert m[0].format == "bsr" and m[0].values.shape[1:] == (16, 16)
    assert m[2].format == "2:4"
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def _int8_op_args():
    torch.manual_seed(3)
    M, N, K = 5, 7, 44
    x = torch.randn(M, K)
    q, s, z = ops.quantize_per_token(x, symmetric=False)
    wq, ws = formats.quantize_rows(torch.randn(N, K))
    f24 = formats.Sparse24Int8Weight.from_dense(torch.randn(N, K), mask_24(N, K))
    b = torch.randn(N)
    return {
        "int8_gemm_i32": (q, wq),
        "quantize_per_token": (x, False),
        "int8_mm": (q, s, z, wq, ws, b, torch.float32),
        "int8_weight_only_mm": (x, wq, ws, b),
        "sparse24_int8_mm": (q, s, None, f24.values, f24.meta, f24.scale, b.bfloat16(), torch.bfloat16),
        "int8_linear": (x, wq, ws, b),
        "sparse24_int8_linear": (x.bfloat16(), f24.values, f24.meta, f24.scale, b.bfloat16()),
    }


@pytest.mark.parametrize("name", ["int8_gemm_i32", "quantize_per_token", "int8_mm", "int8_weight_only_mm",
                                  "sparse24_int8_mm", "int8_linear", "sparse24_int8_linear"])
def test_int8_ops_opcheck_and_compile(name):
    args = _int8_op_args()[name]
    op = getattr(torch.ops.sparsekit, name)
    torch.library.opcheck(op, args)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: op(*a), fullgraph=True, backend="aot_eager")
    got, want = compiled(*args), op(*args)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert torch.equal(g, w)


@pytest.mark.parametrize("fmt", ["int8", "int8-wo", "2:4+int8"])
def test_int8_formats_compile_fullgraph_inductor(fmt):
    torch._dynamo.reset()
    lin = nn.Linear(64, 32)
    mask = _layer_mask(fmt, 32, 64)
    with torch.no_grad():
        lin.weight.mul_(mask)
    sl = SparseLinear.from_linear(lin, mask, format=fmt)
    x = torch.randn(3, 64)
    cf = torch.compile(sl, fullgraph=True)
    torch.testing.assert_close(cf(x), sl(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ bitmap column list
def test_bitmap_columns_reference():
    """reference.bitmap_columns: the kept weights' columns in the values' order, 16-bit, zero-padded to a multiple
    of 8; K = 65536 is the largest it takes."""
    g = torch.Generator().manual_seed(5)
    for N, K, d in ((7, 70, 0.3), (3, 1, 1.0), (0, 9, 0.5), (40, 3000, 0.01), (2, 65536, 0.001)):
        mask = torch.rand(N, K, generator=g) < d
        f = formats.BitmapWeight.from_dense(torch.randn(N, K, generator=g), mask)
        cols = reference.bitmap_columns(f.bitmap, K)
        assert cols.dtype == torch.int16 and cols.numel() == -(-f.nnz // 8) * 8
        assert torch.equal(cols[:f.nnz].int() & 0xFFFF, mask.nonzero()[:, 1].int())
        assert not cols[f.nnz:].any()
    with pytest.raises(ValueError, match="65536"):
        reference.bitmap_columns(torch.zeros(1, 2049, dtype=torch.int32), 65537)


def test_bitmap_columns_mm_op_on_the_cpu():
    """The private op of the column-list kernel: elsewhere than on CUDA its reference, after checking the list."""
    f = formats.BitmapWeight.from_dense(torch.randn(9, 100), torch.rand(9, 100) < 0.2)
    cols = reference.bitmap_columns(f.bitmap, 100)
    x, b = torch.randn(3, 100), torch.randn(9)
    y = torch.ops.sparsekit._cuda_bitmap_columns_mm(x, f.bitmap, f.word_offsets, f.values, cols, b)
    torch.testing.assert_close(y, torch.ops.sparsekit.bitmap_mm(x, f.bitmap, f.word_offsets, f.values, b))
    torch.library.opcheck(torch.ops.sparsekit._cuda_bitmap_columns_mm, (x, f.bitmap, f.word_offsets, f.values, cols, b))
    bad = cols.clone()
    bad[0] += 1
    with pytest.raises(ValueError, match="column list"):
        torch.ops.sparsekit._cuda_bitmap_columns_mm(x, f.bitmap, f.word_offsets, f.values, bad, b)
    with pytest.raises(ValueError, match="round_up"):
        torch.ops.sparsekit._cuda_bitmap_columns_mm(x, f.bitmap, f.word_offsets, f.values, cols[:3], b)
    with pytest.raises(TypeError, match="int16"):
        torch.ops.sparsekit._cuda_bitmap_columns_mm(x, f.bitmap, f.word_offsets, f.values, cols.int(), b)


def test_bitmap_column_list_is_prepared_by_density_and_follows_the_buffers(monkeypatch):
    """With a (stand-in) CUDA weight, packing makes the column list up to the density SPARSEKIT_BITMAP_COLUMNS sets
    (default 0.35), and only for float values and K <= 65536; nbytes counts it; a buffer written in place disables
    it until prepared again; it goes when its values go."""
    import gc

    from sparsekit.formats import bitmap as bmf

    monkeypatch.setattr(bmf, "_cuda", lambda t: True)
    monkeypatch.delenv("SPARSEKIT_BITMAP_COLUMNS", raising=False)
    g = torch.Generator().manual_seed(6)
    w = torch.randn(20, 300, generator=g)

    def packed(density):
        return formats.BitmapWeight.from_dense(w, torch.rand(20, 300, generator=g) < density)

    def listed(f):
        return bmf.bitmap_columns_for(f.bitmap, f.word_offsets, f.values)

    f = packed(0.1)
    cols = listed(f)
    assert cols is not None and torch.equal(cols, reference.bitmap_columns(f.bitmap, 300))
    assert f.nbytes == sum(t.numel() * t.element_size() for t in f.buffers().values()) + 2 * cols.numel()
    assert listed(packed(0.5)) is None
    monkeypatch.setenv("SPARSEKIT_BITMAP_COLUMNS", "on")
    assert listed(packed(0.9)) is not None
    monkeypatch.setenv("SPARSEKIT_BITMAP_COLUMNS", "off")
    assert listed(packed(0.01)) is None
    monkeypatch.setenv("SPARSEKIT_BITMAP_COLUMNS", "0.6")
    assert listed(packed(0.5)) is not None
    monkeypatch.setenv("SPARSEKIT_BITMAP_COLUMNS", "sometimes")
    with pytest.raises(ValueError, match="SPARSEKIT_BITMAP_COLUMNS"):
        packed(0.1)
    monkeypatch.delenv("SPARSEKIT_BITMAP_COLUMNS")
    assert listed(formats.BitmapWeight.from_dense(torch.randn(4, 65537), torch.rand(4, 65537) < 0.01)) is None
    assert listed(formats.BitmapWeight.from_dense(torch.randn(4, 64).double(), torch.rand(4, 64) < 0.1)) is None

    f = packed(0.1)
    f.values.mul_(2)
    assert listed(f) is None  # written in place: not this list
    assert bmf.prepare_columns(f.bitmap, f.word_offsets, f.values, f.shape) and listed(f) is not None
    key = id(f.values)
    del f
    gc.collect()
    assert key not in bmf._COLUMNS


def test_bitmap_layer_prepares_its_column_list_when_moved_or_loaded(monkeypatch):
    """SparseLinear prepares the list at conversion, after .to() / a cast and after load_state_dict; forward on the
    CPU never uses it, and state_dict never holds it."""
    from sparsekit.formats import bitmap as bmf
    from sparsekit.nn import SparseLinear

    monkeypatch.setattr(bmf, "_cuda", lambda t: True)
    monkeypatch.delenv("SPARSEKIT_BITMAP_COLUMNS", raising=False)
    lin = torch.nn.Linear(200, 30)
    mask = torch.rand(30, 200) < 0.1
    sl = SparseLinear.from_linear(lin, mask=mask, format="bitmap")

    def listed(m):
        b = m._buffers
        return bmf.bitmap_columns_for(b["bitmap"], b["word_offsets"], b["values"])

    assert listed(sl) is not None
    assert not any("column" in k for k in sl.state_dict())
    sl = sl.to(torch.bfloat16)
    assert listed(sl) is not None
    other = SparseLinear.from_linear(torch.nn.Linear(200, 30), mask=torch.rand(30, 200) < 0.1, format="bitmap")
    other.load_state_dict(sl.float().state_dict())
    assert listed(other) is not None
    x = torch.randn(2, 200)
    torch.testing.assert_close(other(x), x @ (lin.weight * mask).T.bfloat16().float() + lin.bias.bfloat16().float(),
                               rtol=1e-2, atol=1e-2)
