"""format="auto": per layer, measure the formats its mask allows and keep the fastest (or dense)."""
from __future__ import annotations

import statistics
from typing import Dict, List

import torch
from torch import nn

from . import formats
from .prune.masks import is_valid

#: block sizes tried for BSR when the mask is block-structured
BSR_BLOCKS = (64, 32, 16)
#: a format must beat dense by this factor to be chosen (timing noise must not pick a format)
MARGIN = 1.05
#: dense and the candidates are timed in turn, this many rounds, and each keeps its median: a machine
#: that slows down or speeds up for a while then weighs on all of them alike instead of on whichever
#: was being timed (one pass of each picked bitmap over a faster CSR on a loaded machine)
ROUNDS = 3


def _is_24(mask: torch.Tensor) -> bool:
    return mask.shape[1] % 4 == 0 and is_valid(mask, "2:4")


def _blocks_of(mask: torch.Tensor, b: int) -> bool:
    N, K = mask.shape
    return N % b == 0 and K % b == 0 and is_valid(mask, f"{b}x{b}")


def candidates(mask: torch.Tensor) -> List[Dict]:
    """The sparse formats (with options) that can hold this mask exactly."""
    out = []
    if _is_24(mask):
        out.append({"format": "2:4", "options": {}})
    for b in BSR_BLOCKS:
        if _blocks_of(mask, b):
            out.append({"format": "bsr", "options": {"blocksize": (b, b)}})
            break
    out += [{"format": "csr", "options": {}}, {"format": "bitmap", "options": {}}]
    return out


def _time_ms(fn, device) -> float:
    from .bench.timing import time_ms

    return time_ms(fn, device, min_run_time=0.02)["ms"]


def _backend(fmt_name: str, device: torch.device) -> str:
    op = {"csr": "csr_mm", "bsr": "bsr_mm", "bitmap": "bitmap_mm", "2:4": "sparse24_mm"}.get(fmt_name)
    if op is None:
        return "-"
    key = "CUDA" if device.type == "cuda" else "CPU"
    has = torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekit::{op}", key)
    return f"{device.type} kernel" if has else "reference"


@torch.no_grad()
def choose(linear: nn.Linear, mask: torch.Tensor, cfg) -> Dict:
    """Times dense and each candidate format at cfg.batch_size rows (ROUNDS interleaved rounds, medians);
    returns the choice."""
    w = linear.weight.detach()
    dtype = cfg.dtype or w.dtype
    device = w.device
    x = torch.randn(cfg.batch_size, w.shape[1], device=device, dtype=dtype)
    wd = (w * mask).to(dtype)
    bias = None if linear.bias is None else linear.bias.detach().to(dtype)
    dense_bytes = wd.numel() * wd.element_size()
    fns = {"dense": lambda: torch.nn.functional.linear(x, wd, bias)}
    packs = {}
    for cand in candidates(mask):
        packed = formats.get(cand["format"]).from_dense(wd, mask, **cand["options"])
        if packed.nbytes >= dense_bytes:
            # no fewer bytes and no less work than dense: a faster time would only say that one
            # kernel beats another on the same job, not that the sparsity pays
            continue
        packs[cand["format"]] = (cand, packed)
        fns[cand["format"]] = lambda p=packed: p.matmul(x, bias)
    samples = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            samples[name].append(_time_ms(fn, device))
    tried = {name: statistics.median(v) for name, v in samples.items()}
    dense_ms = tried["dense"]
    best = {"format": "dense", "options": {}, "ms": dense_ms, "dense_ms": dense_ms, "speedup": 1.0,
            "bytes": dense_bytes, "backend": "torch", "tried": tried}
    for name, (cand, packed) in packs.items():
        ms = tried[name]
        if ms * MARGIN < dense_ms and ms < best["ms"]:
            best.update(format=name, options=cand["options"], ms=ms, speedup=dense_ms / ms,
                        bytes=packed.nbytes, backend=_backend(name, device))
    best["batch_size"] = cfg.batch_size
    return best


def explain(model: nn.Module, file=None) -> str:
    """Per layer: format, backend, weight bytes, and (for format="auto") the measured speedup."""
    from .nn import SparseLinear

    rows = []
    for fqn, m in model.named_modules():
        choice = getattr(m, "_sparsekit_choice", None)
        if isinstance(m, SparseLinear):
            nbytes = m.weight_format.nbytes
            dev = next(iter(m.buffers())).device
            backend = choice["backend"] if choice else _backend(m.format, dev)
            fmt = m.format + (f" {m.values.shape[1]}x{m.values.shape[2]}" if m.format == "bsr" else "")
        elif isinstance(m, nn.Linear):
            nbytes = m.weight.numel() * m.weight.element_size()
            fmt, backend = "dense", "torch"
        else:
            continue
        sp = f"{choice['speedup']:.2f}x at M={choice['batch_size']}" if choice else "-"
        rows.append((fqn or "(model)", fmt, backend, f"{nbytes / 2**20:.2f} MiB", sp))
    head = ("layer", "format", "backend", "weight", "measured speedup")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    text = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head] + rows)
    print(text, file=file)
    return text
