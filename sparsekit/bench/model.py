"""The built-in model demo: prune an MLP stack at several sparsities, convert it, time it against dense."""
from __future__ import annotations

import copy
from typing import Dict, List, Sequence

import torch
from torch import nn

from ..convert import SparseConfig, convert
from ..prune import prune
from .timing import time_ms


class FeedForwardStack(nn.Module):
    """A stack of LLaMA-style feed-forward blocks (up/gate, down) with residuals: the linear
    layers that dominate a decoder's weight bytes, without attention."""

    def __init__(self, d_model: int = 1024, d_ff: int = 2816, n_blocks: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(up=nn.Linear(d_model, d_ff, bias=False), gate=nn.Linear(d_model, d_ff, bias=False),
                               down=nn.Linear(d_ff, d_model, bias=False)))
            for _ in range(n_blocks)
        )

    def forward(self, x):
        for b in self.blocks:
            x = x + b["down"](nn.functional.silu(b["gate"](x)) * b["up"](x))
        return x


def bench_model(Ms: Sequence[int], sparsities: Sequence[float], dtype: torch.dtype, device: torch.device,
                d_model: int = 1024, d_ff: int = 2816, n_blocks: int = 4, fmt: str = "csr",
                min_run_time: float = 0.3) -> List[Dict]:
    torch.manual_seed(0)
    dense = FeedForwardStack(d_model, d_ff, n_blocks).to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in dense.parameters())
    records = []
    xs = {M: torch.randn(M, d_model, device=device, dtype=dtype) for M in Ms}
    with torch.no_grad():
        base = {M: time_ms(lambda: dense(xs[M]), device, min_run_time) for M in Ms}
        base_name = {M: str(dtype).replace("torch.", "") for M in Ms}
        if device.type == "cpu" and dtype == torch.float32:
            # BENCHMARKING.md rule 2: on the CPU the baseline is the faster of float32 and bfloat16
            dense16 = copy.deepcopy(dense).bfloat16()
            xs16 = {M: xs[M].bfloat16() for M in Ms}
            for M in Ms:
                t16 = time_ms(lambda: dense16(xs16[M]), device, min_run_time)
                if t16["ms"] < base[M]["ms"]:
                    base[M], base_name[M] = t16, "bfloat16"
        for sp in sparsities:
            model = copy.deepcopy(dense)
            prune(model, sparsity=sp)
            ref = {M: model(xs[M]).float() for M in Ms}
            convert(model, SparseConfig(format=fmt))
            wbytes = sum(b.numel() * b.element_size() for b in model.buffers())
            for M in Ms:
                y = model(xs[M]).float()
                err = ((y - ref[M]).norm() / ref[M].norm()).item()
                if not err < (1e-3 if dtype == torch.float32 else 3e-2):
                    raise AssertionError(f"converted model differs from the pruned dense model: {err:.3g}")
                t = time_ms(lambda: model(xs[M]), device, min_run_time)
                records.append({
                    "model": f"ffn-stack d={d_model} ff={d_ff} x{n_blocks}", "params": n_params, "M": M,
                    "sparsity": sp, "format": fmt, "dtype": str(dtype).replace("torch.", ""), "device": device.type,
                    "dense_ms": base[M]["ms"], "dense_dtype": base_name[M], "ms": t["ms"], "dense_graph_ms": base[M]["graph_ms"],
                    "graph_ms": t["graph_ms"], "speedup": base[M]["ms"] / t["ms"],
                    "dense_weight_bytes": n_params * dense.blocks[0]["up"].weight.element_size(),
                    "weight_bytes": wbytes, "rel_error": err,
                })
    return records
