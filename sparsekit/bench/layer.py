"""One linear layer: dense against sparsekit's formats and PyTorch's own sparse path.

Every candidate is checked against the reference before it is timed; speedups are
dense_ms / candidate_ms with the dense baseline measured in the same process. The dense
baseline on the CPU is the faster of float32 and bfloat16 F.linear (BENCHMARKING.md rule 2).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

import warnings

from .. import formats
from ..prune import masks as _masks
from .timing import time_ms

SHAPES = {
    "llama-7b": [(4096, 4096), (11008, 4096), (4096, 11008)],
    "llama3-8b": [(14336, 4096), (4096, 14336)],
    "bert-base": [(768, 768), (3072, 768), (768, 3072)],
    "square-4096": [(4096, 4096)],
}


def parse_shapes(spec: str) -> List[tuple]:
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part in SHAPES:
            out += SHAPES[part]
        else:
            n, k = part.lower().replace("×", "x").split("x")
            out.append((int(n), int(k)))
    return out


def _check(name, got, ref, dtype, tol=None):
    tol = tol or (2e-2 if dtype != torch.float32 else 1e-3)
    err = ((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()
    if not err <= tol:
        raise AssertionError(f"{name}: relative error {err:.3g} > {tol} against the reference; not timed")


FORMATS = ("csr", "bitmap", "bsr:16", "bsr:32", "bsr:64", "2:4", "int8", "int8-wo", "2:4+int8")


def _mask_for(fmt: str, w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A magnitude mask with the structure `fmt` runs (sparsekit.prune.masks)."""
    score = w.abs().float()
    if fmt.startswith("bsr"):
        b = int(fmt.split(":")[1])
        return _masks.block(score, sparsity, (b, b))
    if fmt in ("2:4", "2:4+int8"):
        return _masks.n_m(score, 2, 4)
    if fmt in ("int8", "int8-wo"):
        return torch.ones_like(w, dtype=torch.bool)
    return _masks.unstructured(score, sparsity)


def _pack(fmt: str, w: torch.Tensor, mask: torch.Tensor):
    if fmt.startswith("bsr"):
        b = int(fmt.split(":")[1])
        return formats.BSRWeight.from_dense(w, mask, blocksize=(b, b))
    return formats.get(fmt).from_dense(w, mask)


def bench_layer(N: int, K: int, Ms: Sequence[int], sparsities: Sequence[float], dtype: torch.dtype,
                device: torch.device, peers: bool = True, seed: int = 0, min_run_time: float = 0.3,
                fmts: Sequence[str] = ("csr",)) -> List[Dict]:
    """Dense baselines, then every format at every sparsity (2:4 and int8 formats: their own
    sparsity, once), and PyTorch's CSR beside unstructured CSR."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(device=device, dtype=dtype)
    packed = {}
    for fmt in fmts:
        fixed = fmt in ("2:4", "int8", "int8-wo", "2:4+int8")
        for sp in ([None] if fixed else sparsities):
            mask = _mask_for(fmt, w, sp or 0.0)
            wm = w * mask
            packed[(fmt, sp)] = (_pack(fmt, w, mask), wm, mask)
    records = []
    for M in Ms:
        x = torch.randn(M, K, generator=g).to(device=device, dtype=dtype)
        dense = {"dense": (time_ms(lambda: F.linear(x, w), device, min_run_time), N * K * w.element_size())}
        if device.type == "cpu" and dtype == torch.float32:
            wb, xb = w.bfloat16(), x.bfloat16()
            dense["dense-bf16"] = (time_ms(lambda: F.linear(xb, wb), device, min_run_time), N * K * 2)
        base_name = min(dense, key=lambda k: dense[k][0]["ms"])
        base, dense_bytes = dense[base_name]
        for name, (t, nbytes) in dense.items():
            records.append(_record(N, K, M, 0.0, dtype, device, name, t, base, base_name, nbytes, dense_bytes))
        for (fmt, sp), (pk, wm, mask) in packed.items():
            spv = 1.0 - mask.float().mean().item() if sp is None else sp
            ref = F.linear(x.float(), wm.float())
            tol = 0.05 if "int8" in fmt else None
            _check(f"sparsekit {fmt}", pk.matmul(x), ref, dtype, tol)
            t = time_ms(lambda: pk.matmul(x), device, min_run_time)
            records.append(_record(N, K, M, spv, dtype, device, f"sparsekit-{fmt}", t, base, base_name, pk.nbytes,
                                   dense_bytes))
            if peers and fmt == "csr":
                try:
                    wt = wm.to_sparse_csr()
                    xt = x.t().contiguous()
                    _check("torch csr", torch.sparse.mm(wt, xt).t(), ref, dtype)
                    t = time_ms(lambda: torch.sparse.mm(wt, xt), device, min_run_time)
                    nb = wt.values().numel() * wt.values().element_size() + wt.col_indices().numel() * 8
                    records.append(_record(N, K, M, spv, dtype, device, "torch-csr", t, base, base_name, nb,
                                           dense_bytes))
                except (RuntimeError, NotImplementedError) as e:  # a dtype PyTorch's path lacks
                    records.append({"N": N, "K": K, "M": M, "sparsity": spv, "impl": "torch-csr",
                                    "error": str(e).splitlines()[0][:200]})
    return records


def _record(N, K, M, sp, dtype, device, impl, t, base, base_name, weight_bytes, dense_bytes):
    ms = t["ms"]
    return {
        "N": N, "K": K, "M": M, "sparsity": sp, "dtype": str(dtype).replace("torch.", ""), "device": device.type,
        "impl": impl, "ms": ms, "graph_ms": t.get("graph_ms"), "baseline": base_name, "baseline_ms": base["ms"],
        "speedup": base["ms"] / ms, "weight_bytes": weight_bytes,
        # the most a memory-bound kernel could gain over the baseline: its weight bytes / these
        "bytes_cap": dense_bytes / weight_bytes if weight_bytes else None,
        "gbps": weight_bytes / (ms * 1e-3) / 1e9,
    }
