"""PyTorch's own paths for each sparsekit format, timed beside it (BENCHMARKING.md rule 3).

A peer is a function ``peer(wm, x) -> Candidate`` for the masked weight ``wm`` (N x K) and the
activations ``x`` (M x K); it raises :class:`Unavailable` with the reason when this torch, this
device or this M cannot run it (the table then says "n/a (reason)" instead of crashing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F


class Unavailable(Exception):
    """The peer cannot run here; the message says why."""


@dataclass
class Candidate:
    fn: Callable[[], torch.Tensor]  # the timed call
    nbytes: int  # bytes of its weight operand
    check: Optional[Callable[[], torch.Tensor]] = None  # what is compared with the reference (default: fn)
    tol: Optional[float] = None  # relative-error tolerance (default: the dtype's)


def _need_cuda(x: torch.Tensor, what: str) -> None:
    if x.device.type != "cuda":
        raise Unavailable(f"{what} runs on CUDA only")


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def torch_csr(wm, x):
    """torch.sparse.mm with the weight in CSR (MKL / native on the CPU, cuSPARSE on CUDA)."""
    wt, xt = wm.to_sparse_csr(), x.t().contiguous()
    return Candidate(lambda: torch.sparse.mm(wt, xt), _nbytes(wt.values(), wt.col_indices(), wt.crow_indices()),
                     check=lambda: torch.sparse.mm(wt, xt).t())


def torch_bsr(block: int):
    def peer(wm, x):
        """Torch's BSR: Triton bsr_dense_mm on CUDA (M >= 16), torch.sparse.mm on the CPU."""
        bsr, xt = wm.to_sparse_bsr((block, block)), x.t().contiguous()
        if x.device.type == "cuda":
            from torch.sparse._triton_ops import bsr_dense_mm

            if x.shape[0] < 16:
                raise Unavailable("bsr_dense_mm needs M >= 16")
            fn = lambda: bsr_dense_mm(bsr, xt)  # noqa: E731
        else:
            fn = lambda: torch.sparse.mm(bsr, xt)  # noqa: E731
        return Candidate(fn, _nbytes(bsr.values(), bsr.col_indices(), bsr.crow_indices()), check=lambda: fn().t())

    peer.__name__ = "torch_bsr"
    return peer


def torch_semi_structured(wm, x):
    """torch.sparse.to_sparse_semi_structured (CUTLASS on sm_8x, cuSPARSELt elsewhere)."""
    _need_cuda(x, "to_sparse_semi_structured")
    ws = torch.sparse.to_sparse_semi_structured(wm)
    return Candidate(lambda: F.linear(x, ws), wm.numel() * wm.element_size() * 9 // 16)


def _int8_rows(t: torch.Tensor):
    """Symmetric per-row int8 and the float scales (what sparsekit's int8 formats do)."""
    scale = t.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
    return torch.round(t.float() / scale).clamp(-127, 127).to(torch.int8), scale


def _int_mm_operands(wm, x):
    if x.device.type == "cuda" and x.shape[0] <= 16:
        raise Unavailable("torch._int_mm needs M > 16 on CUDA")
    wq, ws = _int8_rows(wm)
    return wq, ws, wq.t()  # (K, N) column-major, as _int_mm wants


def torch_int_mm(wm, x):
    """torch._int_mm alone (activations quantized beforehand): the int8 GEMM without the scaling pass."""
    wq, ws, wqt = _int_mm_operands(wm, x)
    xq, xs = _int8_rows(x)
    return Candidate(lambda: torch._int_mm(xq, wqt), _nbytes(wq, ws),
                     check=lambda: (torch._int_mm(xq, wqt).float() * xs * ws.t()).to(x.dtype), tol=0.05)


def torch_int_mm_scaled(wm, x):
    """Per-token quantization of x, torch._int_mm and the scaling pass, end to end."""
    wq, ws, wqt = _int_mm_operands(wm, x)
    wst = ws.t()

    def fn():
        xq, xs = _int8_rows(x)
        return (torch._int_mm(xq, wqt).float() * xs * wst).to(x.dtype)

    return Candidate(fn, _nbytes(wq, ws), tol=0.05)


def torchao_int8_weight_only(wm, x):
    """torchao's int8 weight-only quantization of an nn.Linear, where torchao imports."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise Unavailable(f"torchao: {e}") from None
    lin = torch.nn.Linear(wm.shape[1], wm.shape[0], bias=False, device=wm.device, dtype=wm.dtype)
    with torch.no_grad():
        lin.weight.copy_(wm)
    quantize_(lin, Int8WeightOnlyConfig())
    return Candidate(lambda: lin(x), wm.numel() + wm.shape[0] * wm.element_size(), tol=0.05)


def peers_for(fmt: str) -> Dict[str, Callable]:
    """{impl name: peer} for a sparsekit format name (bsr:B included)."""
    if fmt.startswith("bsr"):
        return {f"torch-bsr:{fmt.split(':')[1]}": torch_bsr(int(fmt.split(":")[1]))}
    return {
        "csr": {"torch-csr": torch_csr},
        "2:4": {"torch-2:4-semi-structured": torch_semi_structured},
        "int8": {"torch-int_mm": torch_int_mm, "torch-int_mm+scales": torch_int_mm_scaled},
        "int8-wo": {"torchao-int8-wo": torchao_int8_weight_only},
    }.get(fmt, {})

