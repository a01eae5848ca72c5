"""Reproduces bench/results/cpu_24_dense.{jsonl,md} (--op 2:4) and cpu_int8wo_dense.{jsonl,md}
(--op int8-wo): a CPU op's two paths side by side, its own kernel (csrc/core) and the large-M path
(W turned into dense rows 512 at a time, ATen's dense GEMM; csrc/cpu/dense_panels.h), against dense
F.linear in the same dtype; LLaMA-7B shapes. The automatic thresholds
(`sparsekit._C.cpu_dense_min_m()`) were set from these tables.

    python bench/cpu_dense_panels.py --op 2:4 [--shapes 4096x4096] [--m 2,16] [--dtypes bfloat16] [--quick]
    python bench/cpu_dense_panels.py --op int8-wo --dtypes bfloat16
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import _C
from sparsekit.bench.layer import parse_shapes
from sparsekit.bench.timing import environment, markdown_table, time_ms
from sparsekit.formats.sparse24 import pack_24
from sparsekit.prune import masks
from sparsekit.quant import dequantize_weight, quantize_weight

OUT = Path(__file__).resolve().parent / "results"
NAMES = {"2:4": "cpu_24_dense", "int8-wo": "cpu_int8wo_dense"}


def _layer(op, w32, dtype):
    """(the op's call on x, the dense weight F.linear multiplies)"""
    if op == "2:4":
        keep = masks.n_m(w32.abs(), 2, 4)
        w = (w32 * keep).to(dtype)
        values, meta = pack_24(w, keep, "weight")
        return (lambda x: torch.ops.sparsekit.sparse24_mm(x, values, meta, None)), w
    q, scale = quantize_weight(w32)
    return (lambda x: torch.ops.sparsekit.int8_weight_only_mm(x, q, scale, None)), dequantize_weight(q, scale).to(dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=sorted(NAMES), default="2:4")
    p.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    p.add_argument("--m", default="2,8,16,64,128,256,512")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--name", default=None, help="output stem (default: cpu_24_dense / cpu_int8wo_dense)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    assert sparsekit._ext.available(), sparsekit._ext.load_error
    name = a.name or NAMES[a.op]
    dev = torch.device("cpu")
    env = dict(environment(dev), command=" ".join(["python", "bench/cpu_dense_panels.py", *sys.argv[1:]]))
    run = 0.05 if a.quick else 0.2
    recs = []
    for N, K in parse_shapes(a.shapes):
        gen = torch.Generator().manual_seed(0)
        w32 = torch.randn(N, K, generator=gen)
        for dname in a.dtypes.split(","):
            dtype = getattr(torch, dname)
            call, w = _layer(a.op, w32, dtype)
            for M in [int(m) for m in a.m.split(",")]:
                x = torch.randn(M, K, generator=gen).to(dtype)
                try:
                    _C.set_cpu_dense_min_m(0)
                    kernel = time_ms(lambda: call(x), dev, run)["ms"]
                    _C.set_cpu_dense_min_m(1)
                    panels = time_ms(lambda: call(x), dev, run)["ms"]
                finally:
                    _C.set_cpu_dense_min_m(-1)
                dense = time_ms(lambda: F.linear(x, w), dev, run)["ms"]
                auto = _C.cpu_dense_min_m()[a.op][dname]
                recs.append(dict(env=env, op=a.op, N=N, K=K, M=M, dtype=dname, kernel_ms=kernel, panels_ms=panels,
                                 dense_ms=dense, auto_path="panels" if 0 < auto <= M and N * K >= 2**22 else "kernel",
                                 panels_gflops=2 * M * N * K / panels / 1e6))
                print(f"{a.op} {N}x{K} {dname} M={M}: kernel {kernel:.3f} panels {panels:.3f} dense {dense:.3f} ms",
                      flush=True)
    OUT.mkdir(exist_ok=True)
    with open(OUT / f"{name}.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    rows = [[f"{r['N']}x{r['K']}", r["dtype"], r["M"], f"{r['kernel_ms']:.3f}", f"{r['panels_ms']:.3f}",
             f"{r['dense_ms']:.3f}", f"{r['kernel_ms'] / r['panels_ms']:.2f}x",
             f"{r['dense_ms'] / r['panels_ms']:.2f}x",
             f"{r['dense_ms'] / min(r['kernel_ms'], r['panels_ms']):.2f}x", r["auto_path"], f"{r['panels_gflops']:.0f}"]
            for r in recs]
    head = (f"# {name}\n\n{env.get('device', '')} ({env.get('cpu_threads')} threads, {env.get('cpu_isa')}), torch "
            f"{torch.__version__}, sparsekit {sparsekit.__version__} ({env.get('sparsekit_commit')}); medians, caches "
            f"flushed between calls.\n\nreproduce: `{env['command']}`\n\n"
            f"kernel: the {a.op} kernel; panels: dense panels of W + ATen's dense GEMM; dense: F.linear on the dense "
            "weight, same dtype. auto: the path the automatic setting takes (its M threshold, on layers of at least "
            "2^22 weights). GFLOP/s: dense-equivalent (2 M N K) of the panel path.\n\n")
    md = head + markdown_table(["N x K", "dtype", "M", "kernel ms", "panels ms", "dense ms", "panels vs kernel",
                                "panels vs dense", f"best {a.op} vs dense", "auto", "panels GFLOP/s"], rows) + "\n"
    (OUT / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
