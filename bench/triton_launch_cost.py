"""Host cost of a Triton launch's dispatch, without a GPU: Triton's `kernel[grid]` path against sparsekit's
cached launch (sparsekit/triton/launch.py), for each launcher's default launch at one M bucket.

Both sides end in the same stand-in compiled kernel (a runner that does nothing), so what is timed is the
dispatch in front of `CompiledKernel.run`:

* jit: Triton's binder for sm_90a (the specialisation of every argument), its cache key, and
  `compiled[grid](*bound arguments)`, as `JITFunction.run` does (its device / stream queries, hooks and
  globals check are left out: they cost it a little more);
* cached: `launch.launch(...)` on a hit: the call key, one dict look-up, `compiled[grid](...)` (its device /
  stream query replaced by a constant, as the stand-in has no device).

and, with `--launchers`, each launcher's own Python on CPU tensors with its launch stubbed out (checks, the
once-per-buffer index check, the output allocation, the configuration look-up, the launch arguments): the rest
of the host time of a Triton call in front of the dispatch.

    python bench/triton_launch_cost.py [--bucket 32] [--calls 20000] [--launchers]

Nothing here runs on a GPU; the CUDA numbers come from `sparsekit bench overhead` on a GPU (M = 32 rows).
"""
import argparse
import importlib.util
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _gpu_static():
    spec = importlib.util.spec_from_file_location("gpu_static", REPO / "bench" / "gpu_static.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Compiled:
    def __getitem__(self, grid):
        def runner(*args, stream=None):
            pass
        return runner


class _Kernel:
    """The real kernel's parameters; `kernel[grid]` returns the stand-in compiled kernel."""

    def __init__(self, fn, compiled):
        self.params, self.pre_run_hooks, self._compiled = fn.params, [], compiled

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self._compiled


def _per_call_us(fns, calls, repeats=7):
    """The fastest of `repeats` rounds (us per call) of each function, rounds alternating between them: on a
    shared machine the minimum is the stable figure, and alternation exposes all alike to drift."""
    for f in fns:
        for _ in range(calls // 10):
            f()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls * 1e6)
    return best


def launchers_us(calls: int):
    """Each launcher's host time with `launch` stubbed out, on CPU tensors (M = 32, 64 x 64, bf16)."""
    import torch

    from sparsekit.formats import BitmapWeight, BSRWeight
    from sparsekit.triton import bitmap as TB
    from sparsekit.triton import bsr as TS
    from sparsekit.triton import int8 as TI

    M, N, K = 32, 64, 64
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g).to(torch.bfloat16) * (torch.rand(N, K, generator=g) < 0.3)
    x = torch.randn(M, K, generator=g).to(torch.bfloat16)
    bw, sw = BitmapWeight.from_dense(w), BSRWeight.from_dense(w, blocksize=(16, 16))
    wq = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    ws, xs = torch.rand(N, generator=g) + 0.5, torch.rand(M, generator=g) + 0.5
    xq = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    calls_of = {
        "bitmap_mm": lambda: TB.bitmap_mm(x, bw.bitmap, bw.word_offsets, bw.values),
        "bsr_mm": lambda: TS.bsr_mm(x, sw.crow_indices, sw.col_indices, sw.values, N),
        "int8_weight_only_mm": lambda: TI.int8_weight_only_mm(x, wq, ws),
        "int8_mm": lambda: TI.int8_mm(xq, xs, None, wq, ws, None, torch.bfloat16),
        "quantize_per_token": lambda: TI.quantize_per_token(x),
    }
    saved = [(mod, mod.launch) for mod in (TB, TS, TI)]
    try:
        for mod, _ in saved:
            mod.launch = lambda *args, **kwargs: None
        return dict(zip(calls_of, _per_call_us(list(calls_of.values()), calls)))
    finally:
        for mod, f in saved:
            mod.launch = f


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bucket", type=int, default=32, help="M bucket of the launches (default 32)")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--launchers", action="store_true", help="also each launcher's own Python (launch stubbed)")
    a = ap.parse_args(argv)

    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature

    from sparsekit.triton import launch as L

    gs = _gpu_static()
    L.INTERPRET = False
    L._current_device_and_stream = lambda: (0, 0)
    compiled = _Compiled()
    backend = make_backend(GPUTarget("cuda", 90, 32))
    rows, seen = [], set()
    for op, dn, variant, where, default, _cfg, fn, args, kwargs in gs.cases(dtypes=["bf16", "fp16"],
                                                                             buckets=[a.bucket]):
        if not default or op in seen:
            continue
        seen.add(op)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        keys = {}

        def jit():
            bound, spec, opts = binder(*args, **kwargs)
            compute_cache_key(keys, spec, opts)
            compiled[(1, 1, 1)](*bound.values())

        k = _Kernel(fn, compiled)

        def cached():
            L.launch(k, (1,), *args, **kwargs)

        j, c = _per_call_us([jit, cached], a.calls)
        rows.append((op, dn, variant or "-", len(args), len(kwargs), j, c))
    print(f"M bucket {a.bucket}; us per call, the fastest of 7 alternating rounds of {a.calls} calls (this CPU, "
          "no GPU)\n")
    print("| op | dtype | variant | args | keywords | jit dispatch us | cached launch us | saved us |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for op, dn, v, na, nk, j, c in rows:
        print(f"| {op} | {dn} | {v} | {na} | {nk} | {j:.2f} | {c:.2f} | {j - c:.2f} |")
    if a.launchers:
        print("\nEach launcher's own Python, launch stubbed, CPU tensors, M = 32, 64 x 64, bf16 (us per call)\n")
        print("| op | launcher us |")
        print("|---|---:|")
        for op, us in launchers_us(a.calls).items():
            print(f"| {op} | {us:.2f} |")


if __name__ == "__main__":
    main()
