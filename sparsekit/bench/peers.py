"""PyTorch's own paths for each sparsekit format, timed beside it (BENCHMARKING.md rule 3), and
PyTorch's dynamic int8 (quantize_dynamic); DeepSparse, which runs in another process, is in
bench/deepsparse.py.

A peer is a function ``peer(wms, x) -> Candidate`` for the masked weights ``wms`` (a list of L
N x K tensors: the chain of ``--chain L`` layers, distinct weights so that they stream from memory
as in a model) and the activations ``x`` (M x K); it raises :class:`Unavailable` with the reason
when this torch, this device or this M cannot run it (the table then says "n/a (reason)" instead of
crashing). The L layers run in sequence when they are square (y = W_L(... W_1(x))); otherwise every
layer reads x (same work and bytes; the check compares all L outputs, concatenated).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

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


def sequential(wms: Sequence[torch.Tensor]) -> bool:
    """Whether a chain of these weights runs in sequence (square layers) or every layer reads the input."""
    return wms[0].shape[0] == wms[0].shape[1]


def chain(ops: List[Callable], x, sequence: bool, post: Callable = lambda y: y):
    """(fn, check) for per-layer ops ``op(a) -> b``: fn runs them (in sequence from x, or each on x,
    returning the last output); check returns what the reference is compared with, through `post`
    (which maps an op's output to M x N): the last output in sequence, else all outputs side by side."""
    if sequence:
        def fn():
            y = x
            for op in ops:
                y = op(y)
            return y

        return fn, lambda: post(fn())

    def fn():
        for op in ops:
            y = op(x)
        return y

    return fn, lambda: torch.cat([post(op(x)) for op in ops], dim=-1)


def reference(wms: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The float32 result of the chain that every candidate is checked against."""
    return chain([lambda a, w=w: F.linear(a, w.float()) for w in wms], x.float(), sequential(wms))[1]()


def _need_cuda(x: torch.Tensor, what: str) -> None:
    if x.device.type != "cuda":
        raise Unavailable(f"{what} runs on CUDA only")


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _sparse_mm_chain(mats, wms, x):
    """torch.sparse.mm(W, x^T) per layer, in the transposed space (y^T = W x^T feeds the next layer)."""
    xt = x.t().contiguous()
    fn, check = chain([lambda a, m=m: torch.sparse.mm(m, a) for m in mats], xt, sequential(wms), post=lambda y: y.t())
    return Candidate(fn, sum(_nbytes(m.values(), m.col_indices(), m.crow_indices()) for m in mats), check=check)


def torch_csr(wms, x):
    """torch.sparse.mm with the weight in CSR (MKL / native on the CPU, cuSPARSE on CUDA)."""
    return _sparse_mm_chain([wm.to_sparse_csr() for wm in wms], wms, x)


def torch_bsr(block: int):
    def peer(wms, x):
        """Torch's BSR: Triton bsr_dense_mm on CUDA (M >= 16), torch.sparse.mm on the CPU."""
        mats = [wm.to_sparse_bsr((block, block)) for wm in wms]
        if x.device.type != "cuda":
            return _sparse_mm_chain(mats, wms, x)
        from torch.sparse._triton_ops import bsr_dense_mm

        if x.shape[0] < 16:
            raise Unavailable("bsr_dense_mm needs M >= 16")
        fn, check = chain([lambda a, m=m: bsr_dense_mm(m, a) for m in mats], x.t().contiguous(), sequential(wms),
                          post=lambda y: y.t())
        return Candidate(fn, sum(_nbytes(m.values(), m.col_indices(), m.crow_indices()) for m in mats), check=check)

    peer.__name__ = "torch_bsr"
    return peer


def torch_semi_structured(wms, x):
    """torch.sparse.to_sparse_semi_structured (CUTLASS on sm_8x, cuSPARSELt elsewhere)."""
    _need_cuda(x, "to_sparse_semi_structured")
    ops = [lambda a, ws=torch.sparse.to_sparse_semi_structured(wm): F.linear(a, ws) for wm in wms]
    fn, check = chain(ops, x, sequential(wms))
    return Candidate(fn, sum(wm.numel() * wm.element_size() * 9 // 16 for wm in wms), check=check)


def _int8_rows(t: torch.Tensor):
    """Symmetric per-row int8 and the float scales (what sparsekit's int8 formats do)."""
    scale = t.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
    return torch.round(t.float() / scale).clamp(-127, 127).to(torch.int8), scale


def _int_mm_operands(wm, x):
    if x.device.type == "cuda" and x.shape[0] <= 16:
        raise Unavailable("torch._int_mm needs M > 16 on CUDA")
    wq, ws = _int8_rows(wm)
    return wq, ws, wq.t()  # (K, N) column-major, as _int_mm wants


def _chain_tol(tol: float, wms) -> float:
    """A quantizing peer's tolerance for a chain in sequence: its per-layer errors add up."""
    return tol * (len(wms) ** 0.5 if sequential(wms) else 1.0)


def torch_int_mm(wms, x):
    """torch._int_mm alone (activations quantized beforehand): the int8 GEMM without the scaling pass.
    In a chain every layer multiplies the same quantized x (the int32 result cannot feed the next
    layer without the scaling pass, which is torch-int_mm+scales)."""
    if len(wms) > 1 and sequential(wms):
        raise Unavailable("the GEMM alone does not chain; see torch-int_mm+scales")
    opers = [_int_mm_operands(wm, x) for wm in wms]
    xq, xs = _int8_rows(x)
    ops = [lambda a, wqt=wqt: torch._int_mm(xq, wqt) for _, _, wqt in opers]
    fn, _ = chain(ops, x, False)
    check = lambda: torch.cat([(torch._int_mm(xq, wqt).float() * xs * ws.t()).to(x.dtype)  # noqa: E731
                               for _, ws, wqt in opers], dim=-1)
    return Candidate(fn, sum(_nbytes(wq, ws) for wq, ws, _ in opers), check=check, tol=0.05)


def torch_int_mm_scaled(wms, x):
    """Per-token quantization of x, torch._int_mm and the scaling pass, end to end."""
    def op(a, wqt, wst):
        aq, as_ = _int8_rows(a)
        return (torch._int_mm(aq, wqt).float() * as_ * wst).to(x.dtype)

    opers = [_int_mm_operands(wm, x) for wm in wms]
    fn, check = chain([lambda a, wqt=wqt, wst=ws.t(): op(a, wqt, wst) for _, ws, wqt in opers], x, sequential(wms))
    return Candidate(fn, sum(_nbytes(wq, ws) for wq, ws, _ in opers), check=check, tol=_chain_tol(0.05, wms))


def _linears(wms, dtype=None) -> torch.nn.Sequential:
    """nn.Linear layers (no bias) holding the masked weights."""
    lins = []
    for wm in wms:
        lin = torch.nn.Linear(wm.shape[1], wm.shape[0], bias=False, device=wm.device, dtype=dtype or wm.dtype)
        with torch.no_grad():
            lin.weight.copy_(wm)
        lins.append(lin)
    return torch.nn.Sequential(*lins)


def torchao_int8_weight_only(wms, x):
    """torchao's int8 weight-only quantization of an nn.Linear, where torchao imports."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise Unavailable(f"torchao: {e}") from None
    lins = _linears(wms)
    quantize_(lins, Int8WeightOnlyConfig())
    fn, check = chain(list(lins), x, sequential(wms))
    return Candidate(fn, sum(wm.numel() + wm.shape[0] * wm.element_size() for wm in wms), check=check,
                     tol=_chain_tol(0.05, wms))


def quantize_dynamic(engine: str):
    def peer(wms, x):
        """torch.ao.quantization.quantize_dynamic(..., {nn.Linear}, dtype=torch.qint8) under
        torch.backends.quantized.engine = `engine` (fbgemm, onednn): int8 weights per tensor and
        activations quantized per call (per tensor), float32 in and out; the int8 CPU path PyTorch
        users have. torch.ao.quantization is deprecated (its warning points to torchao's quantize_
        with Int8DynamicActivationInt8WeightConfig, the successor: the torchao-* peers where torchao
        imports) but still runs in torch 2.11-2.14; its warnings are silenced here."""
        import warnings

        if x.device.type != "cpu":
            raise Unavailable("quantize_dynamic runs on the CPU only")
        if x.dtype != torch.float32:
            raise Unavailable(f"quantize_dynamic takes float32 activations, not {str(x.dtype).replace('torch.', '')}")
        if engine not in torch.backends.quantized.supported_engines:
            raise Unavailable(f"quantized engine {engine} is not in this torch build "
                              f"({', '.join(torch.backends.quantized.supported_engines)})")
        try:
            from torch.ao.quantization import quantize_dynamic as qd
        except ImportError as e:
            raise Unavailable(f"torch.ao.quantization: {e}") from None
        before = torch.backends.quantized.engine
        try:
            torch.backends.quantized.engine = engine
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = qd(_linears(wms, torch.float32), {torch.nn.Linear}, dtype=torch.qint8)
        finally:
            torch.backends.quantized.engine = before
        ops = list(q)

        def run(fn):
            def go():
                prev = torch.backends.quantized.engine
                torch.backends.quantized.engine = engine
                try:
                    return fn()
                finally:
                    torch.backends.quantized.engine = prev
            return go

        fn, check = chain(ops, x, sequential(wms))
        # int8 weights + one float scale and zero point per layer
        return Candidate(run(fn), sum(wm.numel() + 8 for wm in wms), check=run(check), tol=_chain_tol(0.05, wms))

    peer.__name__ = f"quantize_dynamic_{engine}"
    return peer


def peers_for(fmt: str) -> Dict[str, Callable]:
    """{impl name: peer} for a sparsekit format name (bsr:B included)."""
    if fmt.startswith("bsr"):
        return {f"torch-bsr:{fmt.split(':')[1]}": torch_bsr(int(fmt.split(":")[1]))}
    return {
        "csr": {"torch-csr": torch_csr},
        "2:4": {"torch-2:4-semi-structured": torch_semi_structured},
        "int8": {"torch-int_mm": torch_int_mm, "torch-int_mm+scales": torch_int_mm_scaled,
                 "torch-quantize_dynamic-fbgemm": quantize_dynamic("fbgemm"),
                 "torch-quantize_dynamic-onednn": quantize_dynamic("onednn")},
        "int8-wo": {"torchao-int8-wo": torchao_int8_weight_only},
    }.get(fmt, {})

