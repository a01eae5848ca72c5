"""pytest-benchmark timings of the kernels: `pytest bench/ --benchmark-only` (not part of `make test`).

CPU: dense F.linear (float32 and bfloat16) and every sparsekit format on a 4096x4096 layer at
M = 1 and 16. GPU: the same in float16 with CUDA-synchronised calls (skipped without a CUDA device).
"""
import pytest
import torch
import torch.nn.functional as F

from sparsekit.bench.layer import _mask_for, _pack

N = K = 4096
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]
FORMATS = [("csr", 0.9), ("bitmap", 0.9), ("bsr:32", 0.9), ("bsr:64", 0.9), ("2:4", None), ("int8", None),
           ("int8-wo", None), ("2:4+int8", None)]


@pytest.fixture(scope="module")
def weight():
    torch.manual_seed(0)
    return torch.randn(N, K) / K**0.5


def _run(benchmark, fn, device):
    """Times fn; on CUDA each timed call ends with torch.cuda.synchronize(), so that the kernel's
    time is counted, not only its launch."""
    if device == "cuda":
        def call():
            fn()
            torch.cuda.synchronize()
    else:
        call = fn
    call()
    benchmark(call)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense(benchmark, weight, device, M, dtype):
    if device == "cuda":
        dtype = torch.float16
    w = weight.to(device, dtype)
    x = torch.randn(M, K, device=device, dtype=dtype)
    benchmark.group = f"{device} M={M}"
    _run(benchmark, lambda: F.linear(x, w), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 16])
@pytest.mark.parametrize("fmt,sparsity", FORMATS)
def test_format(benchmark, weight, device, M, fmt, sparsity):
    dtype = torch.float16 if device == "cuda" else torch.float32
    w = weight.to(device, dtype)
    packed = _pack(fmt, w, _mask_for(fmt, w, sparsity or 0.0))
    x = torch.randn(M, K, device=device, dtype=dtype)
    benchmark.group = f"{device} M={M}"
    _run(benchmark, lambda: packed.matmul(x), device)
