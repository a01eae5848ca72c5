"""One linear layer: dense against sparsekit's formats and PyTorch's own paths (bench/peers.py).

Every candidate is checked against the reference before it is timed; speedups are
dense_ms / candidate_ms with the dense baseline measured in the same process. The dense
baseline on the CPU is the faster of float32 and bfloat16 F.linear (BENCHMARKING.md rule 2).
Beside each speedup: the bytes cap (the baseline's bytes moved / the candidate's, counting
weight, activation and output bytes: the most a memory-bound kernel can gain), the achieved
GB/s of those bytes and the dense-equivalent TFLOP/s (2 M N K / time).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import formats
from ..convert import SparseConfig
from ..prune import masks_from_scores
from . import peers as _peers
from .progress import Progress
from .timing import short_error, time_ms

SHAPES = {
    "llama-7b": [(4096, 4096), (11008, 4096), (4096, 11008)],
    "llama3-8b": [(14336, 4096), (4096, 14336)],
    "bert-base": [(768, 768), (3072, 768), (768, 3072)],
    "square-4096": [(4096, 4096)],
}

FORMATS = ("csr", "bitmap", "bsr:16", "bsr:32", "bsr:64", "2:4", "int8", "int8-wo", "2:4+int8")


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


def parse_formats(spec: str) -> tuple:
    fmts = FORMATS if spec == "all" else tuple(f for f in spec.split(",") if f)
    for f in fmts:
        prune_pattern(f)  # raises for an unknown name
    return fmts


def _block(fmt: str) -> int:
    return int(fmt.split(":")[1]) if ":" in fmt else 16


def prune_pattern(fmt: str) -> Optional[str]:
    """The sparsekit.prune pattern whose masks `fmt` runs; None for the int8 formats (nothing pruned)."""
    if fmt.startswith("bsr"):
        return f"{_block(fmt)}x{_block(fmt)}"
    if fmt in ("2:4", "2:4+int8"):
        return "2:4"
    if fmt in ("int8", "int8-wo"):
        return None
    if fmt in ("csr", "bitmap"):
        return "unstructured"
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)} (bsr:B for any block B)")


def fixed_sparsity(fmt: str) -> bool:
    """2:4 and int8 formats have their own sparsity (50% / none): they run once, not per --sparsity."""
    return prune_pattern(fmt) in (None, "2:4")


def convert_config(fmt: str) -> SparseConfig:
    """The sparsekit.convert configuration for a bench format name."""
    if fmt.startswith("bsr"):
        return SparseConfig(format="bsr", blocksize=(_block(fmt), _block(fmt)))
    return SparseConfig(format=fmt)


def _mask_for(fmt: str, w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A magnitude mask with the structure `fmt` runs (sparsekit.prune)."""
    pattern = prune_pattern(fmt)
    if pattern is None:
        return torch.ones_like(w, dtype=torch.bool)
    return masks_from_scores({"w": w.abs().float()}, None if pattern == "2:4" else sparsity, pattern)["w"]


def _pack(fmt: str, w: torch.Tensor, mask: torch.Tensor):
    if fmt.startswith("bsr"):
        return formats.BSRWeight.from_dense(w, mask, blocksize=(_block(fmt), _block(fmt)))
    return formats.get(fmt).from_dense(w, mask)


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()


def _check(name, got, ref, dtype, tol=None):
    tol = tol or (2e-2 if dtype != torch.float32 else 1e-3)
    err = rel_error(got, ref)
    if not err <= tol:
        raise AssertionError(f"{name}: relative error {err:.3g} > {tol} against the reference; not timed")


def _packed_weights(w, fmts, sparsities):
    """{(fmt, sparsity or None): (packed, masked weight, mask)}, or the ValueError of a format that
    cannot hold this shape (a block size that does not tile it)."""
    packed = {}
    for fmt in fmts:
        for sp in [None] if fixed_sparsity(fmt) else sparsities:
            try:
                mask = _mask_for(fmt, w, sp or 0.0)
                packed[(fmt, sp)] = (_pack(fmt, w, mask), w * mask, mask)
            except ValueError as e:
                packed[(fmt, sp)] = e
    return packed


def _dense_baselines(w, x, device, min_run_time):
    """{name: (timing, weight bytes, activation + output element size)}; the CPU adds bfloat16."""
    dense = {"dense": (time_ms(lambda: F.linear(x, w), device, min_run_time), _peers._nbytes(w), x.element_size())}
    if device.type == "cpu" and w.dtype == torch.float32:
        wb, xb = w.bfloat16(), x.bfloat16()
        dense["dense-bf16"] = (time_ms(lambda: F.linear(xb, wb), device, min_run_time), _peers._nbytes(wb), 2)
    return dense


def bench_layer(N: int, K: int, Ms: Sequence[int], sparsities: Sequence[float], dtype: torch.dtype,
                device: torch.device, peers: bool = True, seed: int = 0, min_run_time: float = 0.3,
                fmts: Sequence[str] = ("csr",), progress: Optional[Progress] = None) -> List[Dict]:
    """Dense baselines, then every format at every sparsity (2:4 and int8 formats: their own
    sparsity, once), each followed by PyTorch's peers for it; `progress` advances once per M."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(device=device, dtype=dtype)
    packed = _packed_weights(w, fmts, sparsities)
    records = []
    for M in Ms:
        x = torch.randn(M, K, generator=g).to(device=device, dtype=dtype)
        shape = dict(N=N, K=K, M=M, dtype=str(dtype).replace("torch.", ""), device=device.type)
        dense = _dense_baselines(w, x, device, min_run_time)
        base_name = min(dense, key=lambda k: dense[k][0]["ms"])
        base = dict(dense[base_name][0], name=base_name,
                    bytes=dense[base_name][1] + _io_bytes(M, N, K, dense[base_name][2]))
        for name, (t, nbytes, elt) in dense.items():
            records.append(_record(shape, 0.0, name, t, base, nbytes, elt))
        for (fmt, sp), entry in packed.items():
            if isinstance(entry, ValueError):
                records.append(dict(shape, sparsity=sp or 0.0, impl=f"sparsekit-{fmt}",
                                    error=f"n/a ({short_error(entry)})"))
                continue
            pk, wm, mask = entry
            spv = 1.0 - mask.float().mean().item() if sp is None else sp
            ref = F.linear(x.float(), wm.float())
            cands = {f"sparsekit-{fmt}": lambda: _peers.Candidate(lambda: pk.matmul(x), pk.nbytes,
                                                                  tol=0.05 if "int8" in fmt else None)}
            if peers:
                cands.update({name: (lambda p=p: p(wm, x)) for name, p in _peers.peers_for(fmt).items()})
            for name, make in cands.items():
                records.append(_measure(shape, spv, name, make, ref, base, min_run_time))
        if progress is not None:
            progress.step(f"{N}x{K} M={M}")
    return records


def _measure(shape, sp, name, make, ref, base, min_run_time):
    """Builds one candidate, checks it against `ref`, times it; an unavailable peer or a wrong
    result becomes a record with "error" = "n/a (reason)" (and no "ms") instead of an exception."""
    dtype = getattr(torch, shape["dtype"])
    try:
        c = make()
        _check(name, (c.check or c.fn)(), ref, dtype, c.tol)
    except _peers.Unavailable as e:
        return dict(shape, sparsity=sp, impl=name, error=f"n/a ({e})")
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AssertionError) as e:
        return dict(shape, sparsity=sp, impl=name, error=f"n/a ({short_error(e)})")
    t = time_ms(c.fn, torch.device(shape["device"]), min_run_time)
    return _record(shape, sp, name, t, base, c.nbytes, dtype.itemsize)


def _io_bytes(M, N, K, elt):
    return (M * K + M * N) * elt


def _record(shape, sp, impl, t, base, weight_bytes, elt):
    M, N, K = shape["M"], shape["N"], shape["K"]
    ms, s = t["ms"], t["ms"] * 1e-3
    moved = weight_bytes + _io_bytes(M, N, K, elt)
    graph = t.get("graph_ms")
    rec = dict(shape, sparsity=sp, impl=impl, ms=ms, graph_ms=graph, baseline=base["name"], baseline_ms=base["ms"],
               speedup=base["ms"] / ms, weight_bytes=weight_bytes, bytes_moved=moved,
               # the most a memory-bound kernel could gain over the baseline: its bytes moved / these
               bytes_cap=base["bytes"] / moved, gbps=moved / s / 1e9, tflops=2.0 * M * N * K / s / 1e12)
    if graph is not None and base.get("graph_ms"):
        rec["graph_speedup"] = base["graph_ms"] / graph
    if "graph_error" in t:
        rec["graph_error"] = t["graph_error"]
    return rec
