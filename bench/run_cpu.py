"""Reproduces bench/results/cpu_layers.{jsonl,md} and the plots beside them: every sparsekit
format on the CPU against dense F.linear (float32 and bfloat16; the faster one is the baseline)
and PyTorch's CSR (torch.sparse.mm), on LLaMA-7B layer shapes.

    make bench            # or: python bench/run_cpu.py [--shapes 4096x4096] [--m 1,16] [--quick]
    python bench/run_cpu.py --dtype bfloat16 --name cpu_layers_bf16   # bench/results/cpu_layers_bf16.*
"""
import argparse
import json
import os
import warnings
from pathlib import Path

import torch

from sparsekit.bench.layer import FORMATS, bench_layer, parse_shapes
from sparsekit.bench.report import report
from sparsekit.bench.timing import environment

OUT = Path(__file__).resolve().parent / "results"


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
    a = p.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    dev = torch.device("cpu")
    env = environment(dev)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{a.name}.jsonl"
    path.unlink(missing_ok=True)
    for N, K in parse_shapes(a.shapes):
        recs = bench_layer(N, K, [int(m) for m in a.m.split(",")], [float(s) for s in a.sparsity.split(",")],
                           getattr(torch, a.dtype), dev, min_run_time=0.1 if a.quick else 0.3, fmts=tuple(a.formats.split(",")))
        with open(path, "a") as f:
            for r in recs:
                f.write(json.dumps(dict(r, env=env)) + "\n")
        print(f"{N}x{K}: {len(recs)} records", flush=True)
    print(report(str(path), str(OUT)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
