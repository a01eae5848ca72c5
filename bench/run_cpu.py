"""Reproduces bench/results/cpu_layers.{jsonl,md} and the plots beside them: every sparsekit
format on the CPU against dense F.linear (float32 and bfloat16; the faster one is the baseline)
and PyTorch's CSR (torch.sparse.mm), on LLaMA-7B layer shapes.

    make bench            # or: python bench/run_cpu.py [--shapes 4096x4096] [--m 1,16] [--quick]
    python bench/run_cpu.py --dtype bfloat16 --name cpu_layers_bf16   # bench/results/cpu_layers_bf16.*
"""
import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from sparsekit.bench.layer import FORMATS, bench_layer, parse_shapes
from sparsekit.bench.report import report
from sparsekit.bench.timing import environment

OUT = Path(__file__).resolve().parent / "results"


def _key(r):
    return (r["N"], r["K"], r["M"], r["sparsity"], r["impl"])


def median_of_runs(runs):
    """Per row (shape, M, sparsity, impl), the record of the run with the median time; its speedup is
    recomputed against the median time of the baseline it names (same shape and M)."""
    if len(runs) == 1:
        return runs[0]
    by_key = {}
    for recs in runs:
        for r in recs:
            by_key.setdefault(_key(r), []).append(r)
    timed = lambda rs: sorted((r for r in rs if r.get("ms") is not None), key=lambda r: r["ms"])  # noqa: E731
    medians = {k: (t[(len(t) - 1) // 2] if t else rs[0]) for k, rs in by_key.items() for t in [timed(rs)]}
    base_ms = {}
    for (N, K, M, _, impl), r in medians.items():
        if r.get("ms") is not None:
            base_ms[(N, K, M, impl)] = r["ms"]
    out = []
    for r in runs[0]:  # the first run's order
        m = dict(medians[_key(r)])
        b = base_ms.get((m["N"], m["K"], m["M"], m.get("baseline")))
        if m.get("ms") is not None and b is not None:
            m["baseline_ms"], m["speedup"] = b, b / m["ms"]
        out.append(m)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="4096x4096,11008x4096")
    p.add_argument("--m", default="1,16,128")
    p.add_argument("--sparsity", default="0.5,0.7,0.9,0.95")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="activations and (but for int8) weights; float32 also times bfloat16 dense")
    p.add_argument("--name", default="cpu_layers")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--chain", type=int, default=1,
                   help="L distinct layers per shape run one after another (weights from memory, as in a model)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the whole sweep this many times and keep, per row, the run with the median time "
                        "(speedups against the median dense of its shape and M): for a noisy machine")
    a = p.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    dev = torch.device("cpu")
    env = dict(environment(dev), command=" ".join(["python", "bench/run_cpu.py", *sys.argv[1:]]))
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{a.name}.jsonl"
    path.unlink(missing_ok=True)
    runs = []
    for i in range(a.repeat):
        recs = []
        for N, K in parse_shapes(a.shapes):
            recs += bench_layer(N, K, [int(m) for m in a.m.split(",")], [float(s) for s in a.sparsity.split(",")],
                                getattr(torch, a.dtype), dev, min_run_time=0.1 if a.quick else 0.3,
                                fmts=tuple(a.formats.split(",")), chain=a.chain)
            print(f"run {i + 1}/{a.repeat} {N}x{K}: {len(recs)} records", flush=True)
        runs.append(recs)
    with open(path, "w") as f:
        for r in median_of_runs(runs):
            f.write(json.dumps(dict(r, env=env, runs=a.repeat)) + "\n")
    print(report(os.path.relpath(path), os.path.relpath(OUT)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
