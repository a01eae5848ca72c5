import torch

from sparsekit.formats import CSRWeight
from sparsekit.formats.sparse24 import pack_24

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def random_24(N, K, gen, dtype=torch.float32):
    """A random 2:4 weight (two kept of every four columns, at random positions): (w, keep, values, meta)."""
    w = torch.randn(N, K, generator=gen)
    keep = torch.zeros(N, K // 4, 4, dtype=torch.bool)
    keep.scatter_(2, torch.rand(N, K // 4, 4, generator=gen).topk(2, dim=-1).indices, True)
    keep = keep.reshape(N, K)
    w = (w * keep).to(dtype)
    values, meta = pack_24(w, keep, "weight")
    return w, keep, values, meta


def random_csr(N, K, density, dtype=torch.float32, device="cpu", empty_rows=()):
    w = torch.randn(N, K, dtype=torch.float32)
    mask = torch.rand(N, K) < density
    for r in empty_rows:
        if r < N:
            mask[r] = False
    w = w.to(dtype)
    return w, mask, CSRWeight.from_dense(w.to(device), mask.to(device))


def assert_close_to_ref(got, ref64, x, w_masked, dtype):
    """|got - ref| <= tol * (|x| @ |w|.T + 1): a bound that scales with the sum's magnitude."""
    scale = x.abs().double() @ w_masked.abs().double().T + 1.0
    err = (got.double() - ref64).abs() / scale
    tol = TOL[dtype]
    assert err.max().item() <= tol, f"max scaled error {err.max().item():.3g} > {tol}"
