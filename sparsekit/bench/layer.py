"""One linear layer (or a chain of L of them): dense against sparsekit's formats, PyTorch's own
paths and quantize_dynamic (bench/peers.py) and DeepSparse (bench/deepsparse_peer.py).

Every candidate is checked against the reference before it is timed; speedups are
dense_ms / candidate_ms with the dense baseline measured in the same process. The dense
baseline on the CPU is the faster of float32 and bfloat16 F.linear (BENCHMARKING.md rule 2).
Beside each speedup: the bytes cap (the baseline's bytes moved / the candidate's, counting
weight, activation and output bytes: the most a memory-bound kernel can gain), the achieved
GB/s of those bytes, that against a plain streaming read of the same bytes timed right after
the row (timing.read_gbps: the machine's bandwidth at that size, now) and the dense-equivalent
TFLOP/s (2 M N K / time).
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
from .timing import read_gbps, short_error, time_ms

# N x K of the distinct projection shapes: attention (q/k/v/o) then MLP (gate/up, down)
SHAPES = {
    "llama-7b": [(4096, 4096), (11008, 4096), (4096, 11008)],  # LLaMA(-2)-7B: MHA, q = k = v = o
    "llama2-13b": [(5120, 5120), (13824, 5120), (5120, 13824)],
    "llama3-8b": [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)],  # GQA: k, v 8 heads x 128
    "bert-base": [(768, 768), (3072, 768), (768, 3072)],
    "square-4096": [(4096, 4096)],
}
ALIASES = {"llama2-7b": "llama-7b", "llama-2-7b": "llama-7b", "llama-2-13b": "llama2-13b", "llama-3-8b": "llama3-8b"}

FORMATS = ("csr", "bitmap", "bsr:16", "bsr:32", "bsr:64", "2:4", "int8", "int8-wo", "2:4+int8")


def parse_shapes(spec: str) -> List[tuple]:
    """"llama2-13b,4096x11008" -> [(N, K), ...]: families by name (SHAPES, ALIASES) and N x K; each shape once."""
    out = []
    for part in spec.split(","):
        part = part.strip().lower()
        if not part:
            continue
        part = ALIASES.get(part, part)
        if part in SHAPES:
            shapes = SHAPES[part]
        else:
            try:
                n, k = part.replace("×", "x").split("x")
                shapes = [(int(n), int(k))]
            except ValueError:
                raise ValueError(f"unknown shape {part!r}: expected N x K (e.g. 4096x4096) or one of "
                                 f"{', '.join(sorted(SHAPES) + sorted(ALIASES))}") from None
            if min(shapes[0]) < 1:
                raise ValueError(f"shape {part!r}: N and K must be >= 1")
        out += [s for s in shapes if s not in out]
    if not out:
        raise ValueError("no shape given")
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
    if fmt in ("csr", "bitmap", "auto"):
        return "unstructured"
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)} (bsr:B for any block B) "
                     "or auto")


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


def _masked(fmt: str, ws, sparsity: float):
    """(masked weights, masks) of the chain for `fmt` at `sparsity`."""
    masks = [_mask_for(fmt, w, sparsity) for w in ws]
    return [w * m for w, m in zip(ws, masks)], masks


def _dense_baselines(ws, x, device, min_run_time):
    """{name: (timing, weight bytes, activation + output element size)}; the CPU adds bfloat16."""
    seq = _peers.sequential(ws)
    fn, _ = _peers.chain([lambda a, w=w: F.linear(a, w) for w in ws], x, seq)
    dense = {"dense": (time_ms(fn, device, min_run_time), _peers._nbytes(*ws), x.element_size())}
    if device.type == "cpu" and ws[0].dtype == torch.float32:
        wbs = [w.bfloat16() for w in ws]
        fn, _ = _peers.chain([lambda a, w=w: F.linear(a, w) for w in wbs], x.bfloat16(), seq)
        dense["dense-bf16"] = (time_ms(fn, device, min_run_time), _peers._nbytes(*wbs), 2)
    return dense


def _sparsekit_candidate(fmt, packs, x, sequence):
    fn, check = _peers.chain([pk.matmul for pk in packs], x, sequence)
    tol = _peers._chain_tol(0.05, packs) if "int8" in fmt else None
    return _peers.Candidate(fn, sum(pk.nbytes for pk in packs), check=check, tol=tol)


def _auto_candidate(wms, masks, x, sequence):
    """format="auto" told this M: per layer the fastest of dense and the formats its mask allows
    (sparsekit.auto.choose, timed here), as convert(model, SparseConfig(format="auto", batch_size=M))."""
    from types import SimpleNamespace

    from ..auto import choose

    cfg = SparseConfig(format="auto", batch_size=x.shape[0], dtype=x.dtype)
    ops, nbytes, chosen = [], 0, []
    for wm, mask in zip(wms, masks):
        c = choose(SimpleNamespace(weight=wm, bias=None), mask, cfg)
        if c["format"] == "dense":
            ops.append(lambda a, w=wm.to(x.dtype): F.linear(a, w))
            nbytes += _peers._nbytes(wm)
        else:
            pk = formats.get(c["format"]).from_dense(wm.to(x.dtype), mask, **c["options"])
            ops.append(pk.matmul)
            nbytes += pk.nbytes
        chosen.append(c["format"] + (f":{c['options']['blocksize'][0]}" if c["format"] == "bsr" else ""))
    fn, check = _peers.chain(ops, x, sequence)
    cand = _peers.Candidate(fn, nbytes, check=check)
    cand.chosen = chosen
    return cand


def layer_steps(fmts: Sequence[str], sparsities: Sequence[float]) -> int:
    """How often bench_layer advances its progress bar for one shape."""
    return 1 + sum(1 if fixed_sparsity(f) else len(sparsities) for f in fmts)


def bench_layer(N: int, K: int, Ms: Sequence[int], sparsities: Sequence[float], dtype: torch.dtype,
                device: torch.device, peers: bool = True, seed: int = 0, min_run_time: float = 0.3,
                fmts: Sequence[str] = ("csr",), progress: Optional[Progress] = None, chain: int = 1) -> List[Dict]:
    """Dense baselines, then every format at every sparsity (2:4 and int8 formats: their own
    sparsity, once), each followed by PyTorch's peers for it and, on the CPU, DeepSparse for the
    unstructured masks (bench/deepsparse_peer.py) and quantize_dynamic for int8.

    chain: L distinct N x K layers (different random weights, so that they stream from memory as in a
    model) run one after another by every implementation: in sequence when N == K, else each on the
    same input (the check then compares all L outputs); weight bytes count all L layers. Records
    come out ordered by M; `progress` advances once per format and sparsity (layer_steps)."""
    if chain < 1:
        raise ValueError(f"bench_layer: chain must be >= 1, got {chain}")
    if not Ms:
        raise ValueError("bench_layer: no M given")
    g = torch.Generator().manual_seed(seed)
    ws = [(torch.randn(N, K, generator=g) / K**0.5).to(device=device, dtype=dtype) for _ in range(chain)]
    xs = {M: torch.randn(M, K, generator=g).to(device=device, dtype=dtype) for M in Ms}
    seq = _peers.sequential(ws)
    shapes = {M: dict(N=N, K=K, M=M, dtype=str(dtype).replace("torch.", ""), device=device.type, chain=chain)
              for M in Ms}
    out: List[tuple] = []  # (M's index, group, record): sorted at the end

    def add(M, group, rec):
        if rec.get("bytes_moved"):
            # the plain read of the same bytes, timed right after the row: what "reads its bytes at
            # x % of the machine's bandwidth" is measured against (issue 15)
            rd = read_gbps(rec["bytes_moved"], device, min_run_time)
            rec.update(read_gbps=rd["gbps"], read_bw_ratio=rec["gbps"] / rd["gbps"])
        out.append((list(Ms).index(M), group, len(out), rec))

    bases = {}
    for M in Ms:
        dense = _dense_baselines(ws, xs[M], device, min_run_time)
        base_name = min(dense, key=lambda k: dense[k][0]["ms"])
        bases[M] = dict(dense[base_name][0], name=base_name,
                        bytes=dense[base_name][1] + _io_bytes(M, N, K, dense[base_name][2]) * chain)
        for name, (t, nbytes, elt) in dense.items():
            add(M, 0, _record(shapes[M], 0.0, name, t, bases[M], nbytes, elt))
    if progress is not None:
        progress.step(f"{N}x{K} dense")
    deepsparse = peers and device.type == "cpu" and any(prune_pattern(f) == "unstructured" for f in fmts)
    if deepsparse:
        for M, rec in _deepsparse_records({"deepsparse-dense": (0.0, ws)}, xs, seq, shapes, bases, min_run_time,
                                          dtype):
            add(M, 0, rec)
    done_deepsparse = set()
    for group, (fmt, sp) in enumerate(_variants(fmts, sparsities), start=1):
        try:
            wms, masks = _masked(fmt, ws, sp or 0.0)
            packs = None if fmt == "auto" else [_pack(fmt, w, m) for w, m in zip(ws, masks)]
        except ValueError as e:  # a block size that does not tile the shape
            for M in Ms:
                add(M, group, dict(shapes[M], sparsity=sp or 0.0, impl=f"sparsekit-{fmt}",
                                   error=f"n/a ({short_error(e)})"))
            continue
        spv = 1.0 - sum(m.float().sum().item() for m in masks) / (len(masks) * masks[0].numel()) if sp is None else sp
        for M in Ms:
            x = xs[M]
            ref = _peers.reference(wms, x)
            if fmt == "auto":
                cands = {"sparsekit-auto": lambda: _auto_candidate(wms, masks, x, seq)}
            else:
                cands = {f"sparsekit-{fmt}": lambda: _sparsekit_candidate(fmt, packs, x, seq)}
            if peers:
                cands.update({name: (lambda p=p: p(wms, x)) for name, p in _peers.peers_for(fmt).items()})
            for name, make in cands.items():
                add(M, group, _measure(shapes[M], spv, name, make, ref, bases[M], min_run_time))
        if deepsparse and prune_pattern(fmt) == "unstructured" and sp not in done_deepsparse:
            done_deepsparse.add(sp)
            for M, rec in _deepsparse_records({"deepsparse": (sp, wms)}, xs, seq, shapes, bases, min_run_time, dtype):
                add(M, group, rec)
        del wms, masks, packs
        if progress is not None:
            progress.step(f"{N}x{K} {fmt}" + ("" if sp is None else f" {sp:.0%}"))
    return [rec for *_, rec in sorted(out, key=lambda t: t[:3])]


def _variants(fmts, sparsities):
    for fmt in fmts:
        for sp in [None] if fixed_sparsity(fmt) else sparsities:
            yield fmt, sp


def _deepsparse_records(variants, xs, seq, shapes, bases, min_run_time, dtype):
    """[(M, record)] for DeepSparse on each {impl: (sparsity, weights)}: checked against the float32
    reference, timed in the side process; "n/a (reason)" rows where it cannot run."""
    from .deepsparse_peer import run_deepsparse

    try:
        got = run_deepsparse({name: ws for name, (_, ws) in variants.items()}, xs, seq, min_run_time=min_run_time)
    except _peers.Unavailable as e:
        return [(M, dict(shapes[M], sparsity=sp, impl=name, error=f"n/a ({e})"))
                for name, (sp, _) in variants.items() if name == "deepsparse" for M in xs]
    recs = []
    for name, (sp, ws) in variants.items():
        for M, x in xs.items():
            r = got["results"][name][M]
            try:
                _check(name, r["out"], _peers.reference(ws, x), torch.float32)
            except AssertionError as e:
                recs.append((M, dict(shapes[M], sparsity=sp, impl=name, error=f"n/a ({short_error(e)})")))
                continue
            # fp32 in and out; weight bytes: DeepSparse's own compressed layout, not reported
            rec = _record(shapes[M], sp, name, {"ms": r["ms"], "graph_ms": None}, bases[M], None, 4)
            rec.update(peer_version=f"deepsparse {got['version']}", compile_s=r["compile_s"])
            if "kernels" in r:  # e.g. "ks_gevm_be-89.8% x8": DeepSparse found the zeros and runs sparse kernels
                rec["deepsparse_kernels"] = r["kernels"]
            recs.append((M, rec))
    return recs


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
    rec = _record(shape, sp, name, t, base, c.nbytes, dtype.itemsize)
    if getattr(c, "chosen", None) is not None:
        rec["auto_formats"] = c.chosen
    return rec


def _io_bytes(M, N, K, elt):
    return (M * K + M * N) * elt


def _record(shape, sp, impl, t, base, weight_bytes, elt):
    """One timed row; weight_bytes None (a peer whose storage is its own): no bytes cap and GB/s."""
    M, N, K, L = shape["M"], shape["N"], shape["K"], shape.get("chain", 1)
    ms, s = t["ms"], t["ms"] * 1e-3
    moved = None if weight_bytes is None else weight_bytes + _io_bytes(M, N, K, elt) * L
    graph = t.get("graph_ms")
    rec = dict(shape, sparsity=sp, impl=impl, ms=ms, graph_ms=graph, baseline=base["name"], baseline_ms=base["ms"],
               speedup=base["ms"] / ms, weight_bytes=weight_bytes, bytes_moved=moved,
               # the most a memory-bound kernel could gain over the baseline: its bytes moved / these
               bytes_cap=None if moved is None else base["bytes"] / moved,
               gbps=None if moved is None else moved / s / 1e9, tflops=2.0 * M * N * K * L / s / 1e12)
    if graph is not None and base.get("graph_ms"):
        rec["graph_speedup"] = base["graph_ms"] / graph
    if "graph_error" in t:
        rec["graph_error"] = t["graph_error"]
    return rec
