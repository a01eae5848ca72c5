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


def _x(M, K, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed":
        return torch.randn(K, M, generator=g).to(dtype).t()
    if layout == "strided":
        return torch.randn(M, 2 * K + 1, generator=g).to(dtype)[:, 1::2][:, :K]
    return torch.randn(M, K, generator=g).to(dtype)


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(["csr", "bitmap", "bsr", "2:4"]), M=st.integers(0, 40), n=st.integers(1, 12),
       k=st.integers(1, 12), density=st.floats(0, 1), dtype=DT,
       layout=st.sampled_from(["contiguous", "transposed", "strided"]), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_ops_match_reference(fmt, M, n, k, density, dtype, layout, bias, seed):
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
    y = f.matmul(x, b)
    ref = x.double() @ (w * mask).double().T + (0 if b is None else b.double())
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
