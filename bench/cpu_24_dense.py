"""Reproduces bench/results/cpu_24_dense.{jsonl,md}: the CPU 2:4 op's two paths side by side, the
2:4 kernel (csrc/core, fp32 accumulation of the kept products) and the large-M path (W decompressed
512 rows at a time, ATen's dense GEMM), against dense F.linear in the same dtype; LLaMA-7B shapes.
The automatic threshold (`sparsekit._C.cpu_24_dense_min_m()`) was set from this table.

    python bench/cpu_24_dense.py [--shapes 4096x4096] [--m 2,16] [--dtypes bfloat16] [--quick]
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsekit
from sparsekit import _C
from sparsekit.bench.layer import parse_shapes
from sparsekit.bench.timing import environment, markdown_table, time_ms
from sparsekit.formats.sparse24 import pack_24
from sparsekit.prune import masks

OUT = Path(__file__).resolve().parent / "results"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    p.add_argument("--m", default="2,8,16,64,128,512")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--name", default="cpu_24_dense")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    assert sparsekit._ext.available(), sparsekit._ext.load_error
    dev = torch.device("cpu")
    env = environment(dev)
    run = 0.05 if a.quick else 0.2
    recs = []
    for N, K in parse_shapes(a.shapes):
        gen = torch.Generator().manual_seed(0)
        w32 = torch.randn(N, K, generator=gen)
        keep = masks.n_m(w32.abs(), 2, 4)
        for dname in a.dtypes.split(","):
            dtype = getattr(torch, dname)
            w = (w32 * keep).to(dtype)
            values, meta = pack_24(w, keep, "weight")
            for M in [int(m) for m in a.m.split(",")]:
                x = torch.randn(M, K, generator=gen).to(dtype)
                call = lambda: torch.ops.sparsekit.sparse24_mm(x, values, meta, None)  # noqa: E731
                _C.set_cpu_24_dense_min_m(0)
                kernel = time_ms(call, dev, run)["ms"]
                _C.set_cpu_24_dense_min_m(1)
                panels = time_ms(call, dev, run)["ms"]
                _C.set_cpu_24_dense_min_m(-1)
                dense = time_ms(lambda: F.linear(x, w), dev, run)["ms"]
                auto = _C.cpu_24_dense_min_m()[dname]
                rec = dict(env=env, N=N, K=K, M=M, dtype=dname, kernel_ms=kernel, panels_ms=panels, dense_ms=dense,
                           auto_path="panels" if 0 < auto <= M and N * K >= 2**22 else "kernel",
                           panels_gflops=2 * M * N * K / panels / 1e6)
                recs.append(rec)
                print(f"{N}x{K} {dname} M={M}: kernel {kernel:.3f} panels {panels:.3f} dense {dense:.3f} ms", flush=True)
    OUT.mkdir(exist_ok=True)
    with open(OUT / f"{a.name}.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    rows = [[f"{r['N']}x{r['K']}", r["dtype"], r["M"], f"{r['kernel_ms']:.3f}", f"{r['panels_ms']:.3f}",
             f"{r['dense_ms']:.3f}", f"{r['kernel_ms'] / r['panels_ms']:.2f}x", f"{r['dense_ms'] / r['panels_ms']:.2f}x",
             f"{r['dense_ms'] / min(r['kernel_ms'], r['panels_ms']):.2f}x", r["auto_path"], f"{r['panels_gflops']:.0f}"]
            for r in recs]
    head = (f"# {a.name}\n\n{env.get('device', '')} ({env.get('cpu_threads')} threads, {env.get('cpu_isa')}), torch "
            f"{torch.__version__}, sparsekit {sparsekit.__version__} ({env.get('sparsekit_commit')}); medians, caches flushed "
            f"between calls.\n\nreproduce: `python bench/cpu_24_dense.py{' --quick' if a.quick else ''}`\n\n"
            "kernel: the 2:4 kernel; panels: decompressed panels + ATen's dense GEMM; dense: F.linear on the dense "
            "weight, same dtype. auto: the path the automatic setting takes (its M threshold, on layers of at least 2^22 "
            "weights). GFLOP/s: dense-equivalent "
            "(2 M N K) of the panel path.\n\n")
    md = head + markdown_table(["N x K", "dtype", "M", "kernel ms", "panels ms", "dense ms", "panels vs kernel",
                                "panels vs dense", "best 2:4 vs dense", "auto", "panels GFLOP/s"], rows) + "\n"
    (OUT / f"{a.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
