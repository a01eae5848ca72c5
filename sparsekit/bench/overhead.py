"""`sparsekit bench overhead`: the host time a converted layer costs beyond F.linear (issue 19).

CPU: a small layer (64x64 by default), M = 1, one thread, under torch.no_grad() (as generate() runs):
each format's SparseLinear and F.linear on the same input, timed in alternating rounds (so that drift and
the load of other processes hit all alike) with torch.utils.benchmark's Timer.blocked_autorange; a
format's overhead is the median over the rounds of (its time - F.linear's time in the same round). The
layer is this small so that the kernel costs almost nothing and what is left is the call path: Python,
checks, dispatch, allocations. nn.Linear is timed beside them for scale (its own module-call cost).

CUDA (when present): the host time per call of the same small layer at M = 1 (the goal) and M = 32 (the
paths above the compiled decode kernels' M <= 16: Triton's launches, timed both through their cached compiled
kernels, the default, and through Triton's JIT dispatch), timed over 1000 calls without
synchronizing (the time to enqueue; the device catches up afterwards), and on 14336x4096 at M = 1 the
speedup over dense F.linear eagerly (triton.testing.do_bench) and replayed from a CUDA graph
(do_bench_cudagraph), with their ratio: 1.0 means eager loses nothing to host overhead.

Every layer is checked against F.linear on the masked weight before it is timed.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import SparseLinear
from .layer import _block, _mask_for, convert_config, rel_error
from .timing import markdown_table, short_error

FORMATS = ("csr", "bsr:16", "2:4", "bitmap", "int8-wo", "int8", "2:4+int8")
# Goals of issue 19 (benchmarks, not timed tests)
CPU_GOAL_US = 5.0
CUDA_HOST_GOAL_US = 10.0
GRAPH_RATIO_GOAL = {"2:4": 0.85, "int8-wo": 0.85, "int8": 0.85, "2:4+int8": 0.85}
BSR_EAGER_GOAL = 3.0


def make_layer(fmt: str, N: int, K: int, dtype: torch.dtype, device, sparsity: float = 0.9, seed: int = 0):
    """(SparseLinear in `fmt`, nn.Linear holding the masked weight): a random layer pruned by magnitude to
    the format's pattern (bsr:B: B x B blocks) and converted."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) / K**0.5)
        lin.bias.copy_(torch.randn(N, generator=g) * 0.1)
    lin = lin.to(device=device, dtype=dtype)
    mask = _mask_for(fmt, lin.weight.detach(), sparsity)
    cfg = convert_config(fmt)
    sl = SparseLinear.from_linear(lin, mask=mask, format=cfg.format, **cfg.format_options())
    with torch.no_grad():
        lin.weight.mul_(mask)
    return sl.eval(), lin.eval()


def _check(fmt, sl, lin, x):
    with torch.no_grad():
        err = rel_error(sl(x), lin(x))
    tol = 5e-2 if "int8" in fmt else (2e-2 if x.dtype != torch.float32 else 1e-4)
    if not err <= tol:
        raise AssertionError(f"{fmt}: relative error {err:.3g} > {tol} against F.linear; not timed")
    return err


def cpu_overhead(fmts: Sequence[str] = FORMATS, N: int = 64, K: int = 64, M: int = 1, runs: int = 5,
                 min_run_time: float = 0.2, threads: int = 1, dtype=torch.float32, sparsity: float = 0.9,
                 clock: str = "wall", progress=None) -> List[dict]:
    """One record per format (and one for nn.Linear): medians over `runs` alternating rounds.

    clock "wall" (time.perf_counter, what a user waits) or "thread" (time.thread_time: the CPU time of
    this thread only, which other processes loading the machine inflate far less than the wall time)."""
    import logging

    # torch.utils.benchmark imports cpp_extension, which logs "No CUDA runtime is found" on a machine without
    # a GPU; nothing here builds C++
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.benchmark import Timer

    timer = {"wall": time.perf_counter, "thread": time.thread_time}[clock]
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(dtype)
        layers, errors, recs = {}, {}, []
        for fmt in fmts:
            try:
                sl, lin = make_layer(fmt, N, K, dtype, "cpu", sparsity)
                errors[fmt] = _check(fmt, sl, lin, x)
                layers[fmt] = sl
            except Exception as e:  # a format that cannot hold the shape: reported, not timed
                recs.append(dict(kind="cpu", format=fmt, N=N, K=K, M=M, error=short_error(e)))
        dense = nn.Linear(K, N).to(dtype).eval()
        w, b = dense.weight, dense.bias
        cands = {"F.linear": lambda: F.linear(x, w, b), "nn.Linear": lambda: dense(x)}
        cands.update({fmt: (lambda m=m: m(x)) for fmt, m in layers.items()})
        times: Dict[str, List[float]] = {k: [] for k in cands}
        with torch.no_grad():
            for _ in range(runs):
                for name, fn in cands.items():
                    fn()
                    t = Timer("fn()", globals={"fn": fn}, num_threads=threads, timer=timer)
                    times[name].append(t.blocked_autorange(min_run_time=min_run_time).median * 1e6)
                    if progress is not None:
                        progress.step(name)
        base = times["F.linear"]
        spread = (max(base) - min(base)) / statistics.median(base)
        for name in ["nn.Linear", *layers]:
            diffs = [t - b0 for t, b0 in zip(times[name], base)]
            recs.append(dict(
                kind="cpu", format=name, N=N, K=K, M=M, dtype=str(dtype).replace("torch.", ""), threads=threads,
                clock=clock,
                runs=runs, sparsity=round(layers[name].weight_format.sparsity, 4) if name in layers else None,
                us=statistics.median(times[name]), flinear_us=statistics.median(base),
                overhead_us=statistics.median(diffs), overhead_min_us=min(diffs), overhead_max_us=max(diffs),
                flinear_spread=spread, rel_error=errors.get(name),
                meets_goal=None if name == "nn.Linear" else statistics.median(diffs) <= CPU_GOAL_US,
                samples_us=[round(t, 3) for t in times[name]], flinear_samples_us=[round(t, 3) for t in base]))
        return recs
    finally:
        torch.set_num_threads(prev)


def _host_us_per_call(fn, calls: int, repeats: int = 5) -> float:
    """Median over `repeats` of the host time per call over `calls` calls, no synchronization inside."""
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        out.append((t1 - t0) / calls * 1e6)
    return statistics.median(out)


def _host_us_jit_launch(fn, calls: int) -> Optional[float]:
    """The host time per call with sparsekit's Triton kernels launched through Triton's JIT dispatch
    (`kernel[grid]`) instead of their cached compiled kernels (sparsekit/triton/launch.py); None without
    triton."""
    try:
        from ..triton import launch as tl_launch
    except ImportError:
        return None
    old = tl_launch.set_mode("jit")
    try:
        return _host_us_per_call(fn, calls)
    finally:
        tl_launch.set_mode(old)


def cuda_overhead(fmts: Sequence[str] = FORMATS, small=(64, 64), large=(14336, 4096), M: int = 1,
                  calls: int = 1000, dtype=torch.bfloat16, sparsity: float = 0.9, progress=None,
                  host_ms: Sequence[int] = (1, 32)) -> List[dict]:
    """Host time per call (small layer, at each M of host_ms: the goal is M = 1's; M = 32 shows the paths above
    the compiled decode kernels' M <= 16, Triton's launches) and the eager / CUDA-graph speedups (large layer, M),
    per format."""
    from .timing import time_ms

    dev = torch.device("cuda")
    recs = []
    with torch.no_grad():
        N, K = small
        dense = nn.Linear(K, N, device=dev, dtype=dtype)
        layers = {}
        for m in host_ms:
            x = torch.randn(m, K, device=dev, dtype=dtype)
            base = _host_us_per_call(lambda: F.linear(x, dense.weight, dense.bias), calls)
            recs.append(dict(kind="cuda-host", format="F.linear", N=N, K=K, M=m, calls=calls, host_us=base))
            recs.append(dict(kind="cuda-host", format="nn.Linear", N=N, K=K, M=m, calls=calls,
                             host_us=_host_us_per_call(lambda: dense(x), calls), flinear_host_us=base))
            for fmt in fmts:
                try:
                    if fmt not in layers:
                        layers[fmt] = make_layer(fmt, N, K, dtype, dev, sparsity)
                    sl, lin = layers[fmt]
                    _check(fmt, sl, lin, x)
                    us = _host_us_per_call(lambda: sl(x), calls)
                    rec = dict(kind="cuda-host", format=fmt, N=N, K=K, M=m, calls=calls, host_us=us,
                               flinear_host_us=base, meets_goal=us <= CUDA_HOST_GOAL_US if m == 1 else None)
                    if m > 16:  # above the compiled decode kernels: Triton's launches, also through its JIT
                        rec["host_us_jit_launch"] = _host_us_jit_launch(lambda: sl(x), calls)
                    recs.append(rec)
                except Exception as e:
                    recs.append(dict(kind="cuda-host", format=fmt, N=N, K=K, M=m, error=short_error(e)))
                if progress is not None:
                    progress.step(f"host {fmt} M={m}")
        del layers
        N, K = large
        x = torch.randn(M, K, device=dev, dtype=dtype)
        dense = nn.Linear(K, N, device=dev, dtype=dtype)
        d = time_ms(lambda: F.linear(x, dense.weight, dense.bias), dev)
        for fmt in fmts:
            big = f"bsr:{max(_block(fmt), 64)}" if fmt.startswith("bsr") else fmt
            rec = dict(kind="cuda-graph", format=big, N=N, K=K, M=M, dense_ms=d["ms"], dense_graph_ms=d["graph_ms"])
            try:
                sl, lin = make_layer(big, N, K, dtype, dev, sparsity)
                _check(big, sl, lin, x)
                t = time_ms(lambda: sl(x), dev)
                rec.update(ms=t["ms"], graph_ms=t["graph_ms"], speedup=d["ms"] / t["ms"])
                if t["graph_ms"] is not None and d["graph_ms"] is not None:
                    rec["graph_speedup"] = d["graph_ms"] / t["graph_ms"]
                    rec["eager_over_graph"] = rec["speedup"] / rec["graph_speedup"]
                else:
                    rec["graph_error"] = t.get("graph_error")
                del sl, lin
            except Exception as e:
                rec["error"] = short_error(e)
            recs.append(rec)
            if progress is not None:
                progress.step(f"graph {big}")
    return recs


def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def overhead_tables(recs: List[dict]) -> str:
    """Markdown: the CPU table, then (when present) the CUDA host table and the eager / graph table."""
    parts = []
    cpu = [r for r in recs if r["kind"] == "cpu"]
    if cpu:
        r0 = next((r for r in cpu if "us" in r), cpu[0])
        parts.append(f"CPU: {r0['N']}x{r0['K']} layer, M = {r0['M']}, {r0.get('dtype', '?')}, "
                     f"{r0.get('threads', '?')} thread, torch.no_grad(), {r0.get('clock', 'wall')} clock; median of {r0.get('runs', '?')} alternating "
                     f"rounds of Timer.blocked_autorange; F.linear {_f(r0.get('flinear_us'))} us (its rounds "
                     f"spread {_f(100 * r0.get('flinear_spread', 0), '{:.0f}')} % of its median); goal: overhead "
                     f"<= {CPU_GOAL_US:g} us\n")
        rows = []
        for r in cpu:
            if "us" not in r:
                rows.append([r["format"], "-", "-", "-", r.get("error", "")])
                continue
            goal = "" if r["meets_goal"] is None else ("yes" if r["meets_goal"] else "no")
            rows.append([r["format"], _f(r["us"]), _f(r["overhead_us"]),
                         f"{_f(r['overhead_min_us'])} .. {_f(r['overhead_max_us'])}", goal])
        parts.append(markdown_table(["layer", "us per call", "overhead us (vs F.linear)", "overhead range", "goal"],
                                    rows))
    host = [r for r in recs if r["kind"] == "cuda-host"]
    if host:
        parts.append(f"\nCUDA host time per call, {host[0]['N']}x{host[0]['K']}, {host[0].get('calls')} calls "
                     f"without synchronizing; goal <= {CUDA_HOST_GOAL_US:g} us at M = 1 (M = 32: the paths above the "
                     "compiled decode kernels)\n")
        parts.append(markdown_table(["layer", "M", "host us per call", "same, Triton launched by its JIT", "goal"], [
            [r["format"], r["M"], _f(r.get("host_us")) if "error" not in r else r["error"],
             _f(r.get("host_us_jit_launch")),
             "" if r.get("meets_goal") is None else ("yes" if r["meets_goal"] else "no")] for r in host]))
    graph = [r for r in recs if r["kind"] == "cuda-graph"]
    if graph:
        g0 = graph[0]
        parts.append(f"\nCUDA {g0['N']}x{g0['K']}, M = {g0['M']}: speedup over dense F.linear (eager "
                     f"{_f(g0.get('dense_ms'), '{:.4f}')} ms, graph {_f(g0.get('dense_graph_ms'), '{:.4f}')} ms); "
                     "goals: eager >= 0.85 x graph for 2:4 and the int8 formats, bsr >= 3x eagerly\n")
        rows = []
        for r in graph:
            if "error" in r:
                rows.append([r["format"], "-", "-", "-", "-", r["error"]])
                continue
            rows.append([r["format"], _f(r["ms"], "{:.4f}"), f"{r['speedup']:.2f}x",
                         _f(r.get("graph_speedup"), "{:.2f}x") if r.get("graph_speedup") else r.get("graph_error", "-"),
                         _f(r.get("eager_over_graph")), ""])
        parts.append(markdown_table(["layer", "eager ms", "eager speedup", "graph speedup", "eager / graph", "note"],
                                    rows))
    return "\n".join(parts)


def run_overhead(fmts: Sequence[str], runs: int = 5, min_run_time: float = 0.2, cuda: Optional[bool] = None,
                 clock: str = "wall", progress=None) -> List[dict]:
    recs = cpu_overhead(fmts, runs=runs, min_run_time=min_run_time, clock=clock, progress=progress)
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        recs += cuda_overhead(fmts, progress=progress)
    return recs
