"""Reproduces bench/results/cpu_24_dense.{jsonl,md} (--op 2:4), cpu_int8wo_dense.{jsonl,md}
(--op int8-wo) and cpu_sparse_dense.{jsonl,md} (--op csr,bitmap): a CPU op's two paths side by side, its
own kernel (csrc/core) and the large-M path (W turned into dense rows 512 at a time, ATen's dense GEMM;
csrc/cpu/dense_panels.h), against dense F.linear in the same dtype; LLaMA-7B shapes (and MiniLM's for
CSR and bitmap, at several densities). The automatic thresholds (`sparsekit._C.cpu_dense_min_m()`) were
set from these tables.

    python bench/cpu_dense_panels.py --op 2:4 [--shapes 4096x4096] [--m 2,16] [--dtypes bfloat16] [--quick]
    python bench/cpu_dense_panels.py --op int8-wo --dtypes bfloat16
    python bench/cpu_dense_panels.py --op csr,bitmap --densities 0.5,0.3,0.1 --shapes 4096x4096,1536x384
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
NAMES = {"2:4": "cpu_24_dense", "int8-wo": "cpu_int8wo_dense", "csr": "cpu_sparse_dense",
         "bitmap": "cpu_sparse_dense"}


def _layer(op, w32, dtype, density=None, gen=None):
    """(the op's call on x, the dense weight F.linear multiplies)"""
    if op in ("csr", "bitmap"):
        from sparsekit.formats.bitmap import BitmapWeight
        from sparsekit.formats.csr import CSRWeight

        keep = torch.rand(w32.shape, generator=gen) < density
        w = (w32 * keep).to(dtype)
        if op == "csr":
            c = CSRWeight.from_dense(w, keep)
            n = w.shape[0]
            return (lambda x: torch.ops.sparsekit.csr_mm(x, c.crow_indices, c.col_indices, c.values, n, None)), w
        b = BitmapWeight.from_dense(w, keep)
        return (lambda x: torch.ops.sparsekit.bitmap_mm(x, b.bitmap, b.word_offsets, b.values, None)), w
    if op == "2:4":
        keep = masks.n_m(w32.abs(), 2, 4)
        w = (w32 * keep).to(dtype)
        values, meta = pack_24(w, keep, "weight")
        return (lambda x: torch.ops.sparsekit.sparse24_mm(x, values, meta, None)), w
    q, scale = quantize_weight(w32)
    return (lambda x: torch.ops.sparsekit.int8_weight_only_mm(x, q, scale, None)), dequantize_weight(q, scale).to(dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", default="2:4", help="one or more of " + ", ".join(sorted(NAMES)) + ", comma-separated")
    p.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    p.add_argument("--m", default="2,8,16,64,128,256,512")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--densities", default="0.5,0.3,0.1", help="kept fraction (csr and bitmap only)")
    p.add_argument("--name", default=None, help="output stem (default: cpu_24_dense / cpu_int8wo_dense / "
                                                 "cpu_sparse_dense)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    ops = a.op.split(",")
    if any(op not in NAMES for op in ops):
        p.error(f"--op: expected some of {sorted(NAMES)}, got {a.op!r}")
    assert sparsekit._ext.available(), sparsekit._ext.load_error
    name = a.name or NAMES[ops[0]]
    dev = torch.device("cpu")
    env = dict(environment(dev), command=" ".join(["python", "bench/cpu_dense_panels.py", *sys.argv[1:]]))
    run = 0.05 if a.quick else 0.2
    recs = []
    for N, K in parse_shapes(a.shapes):
        gen = torch.Generator().manual_seed(0)
        w32 = torch.randn(N, K, generator=gen)
        for dname in a.dtypes.split(","):
            dtype = getattr(torch, dname)
            for op in ops:
                sparse = op in ("csr", "bitmap")
                for density in [float(d) for d in a.densities.split(",")] if sparse else [None]:
                    call, w = _layer(op, w32, dtype, density, gen)
                    nnz = int(torch.count_nonzero(w)) if sparse else N * K
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
                        auto = _C.cpu_dense_panels(op, dname, M, N, K, nnz)
                        recs.append(dict(env=env, op=op, N=N, K=K, M=M, dtype=dname, density=density,
                                         kernel_ms=kernel, panels_ms=panels, dense_ms=dense,
                                         auto_path="panels" if auto else "kernel",
                                         panels_gflops=2 * M * N * K / panels / 1e6))
                        print(f"{op} {N}x{K} {dname} d={density} M={M}: kernel {kernel:.3f} panels {panels:.3f} "
                              f"dense {dense:.3f} ms -> auto {recs[-1]['auto_path']}", flush=True)
    OUT.mkdir(exist_ok=True)
    with open(OUT / f"{name}.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    rows = [[r["op"], f"{r['N']}x{r['K']}", r["dtype"], "-" if r["density"] is None else f"{r['density']:.0%}",
             r["M"], f"{r['kernel_ms']:.3f}", f"{r['panels_ms']:.3f}", f"{r['dense_ms']:.3f}",
             f"{r['kernel_ms'] / r['panels_ms']:.2f}x", f"{r['dense_ms'] / r['panels_ms']:.2f}x",
             f"{r['dense_ms'] / min(r['kernel_ms'], r['panels_ms']):.2f}x", r["auto_path"],
             f"{r['dense_ms'] / (r['panels_ms'] if r['auto_path'] == 'panels' else r['kernel_ms']):.2f}x",
             f"{r['panels_gflops']:.0f}"]
            for r in recs]
    head = (f"# {name}\n\n{env.get('device', '')} ({env.get('cpu_threads')} threads, {env.get('cpu_isa')}), torch "
            f"{torch.__version__}, sparsekit {sparsekit.__version__} ({env.get('sparsekit_commit')}); medians, caches "
            f"flushed between calls.\n\nreproduce: `{env['command']}`\n\n"
            "kernel: the op's own kernel; panels: dense panels of W + ATen's dense GEMM; dense: F.linear on the dense "
            "weight, same dtype. auto: the path the automatic setting takes (`sparsekit._C.cpu_dense_panels`), and "
            "its time against dense. density: the kept fraction (CSR and bitmap). GFLOP/s: dense-equivalent "
            "(2 M N K) of the panel path.\n\n")
    md = head + markdown_table(["op", "N x K", "dtype", "density", "M", "kernel ms", "panels ms", "dense ms",
                                "panels vs kernel", "panels vs dense", "best vs dense", "auto", "auto vs dense",
                                "panels GFLOP/s"], rows) + "\n"
    (OUT / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
