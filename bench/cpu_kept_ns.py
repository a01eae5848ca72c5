"""Time per kept weight of one CPU op on a chain of pruned layers: for comparing two builds of the kernels.

Each line: the op's time for all the layers (median of --reps calls after one warm-up) and that time per kept
weight and thread (ms * threads / kept weights). The layers chain (N = K), so the weights stream from memory as in a
model. To compare two builds, build the other one in a worktree and run both in alternating processes (a process's
placement changes its times on a VM; compare medians over rounds):

    git worktree add /tmp/wt_base <rev> && (cd /tmp/wt_base && SPARSEKIT_CPU_ONLY=1 python setup.py build_ext --inplace)
    for r in 1 2 3; do
      PYTHONPATH=/tmp/wt_base python bench/cpu_kept_ns.py --op csr --threads 1 | sed "s/^/base r$r /"
      python bench/cpu_kept_ns.py --op csr --threads 1 | sed "s/^/new r$r /"
    done
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import sparsekit  # noqa: F401  (loads the ops)
from sparsekit import formats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", choices=["csr", "bitmap", "bsr"], default="csr")
    p.add_argument("--shape", default="4096x4096", help="N x K of every layer (N = K)")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--m", default="16,32,64,128,256")
    p.add_argument("--sparsity", default="0.7,0.9,0.95")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block", type=int, default=16, help="bsr: square block size")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    N, K = (int(v) for v in args.shape.lower().split("x"))
    if N != K:
        p.error("--shape: the layers chain, so N must equal K")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        _sweep(args, N, K)
    finally:
        torch.set_num_threads(threads)


def _sweep(args, N, K):
    g = torch.Generator().manual_seed(0)
    for dt_name in args.dtypes.split(","):
        dt = getattr(torch, dt_name)
        for sp in (float(v) for v in args.sparsity.split(",")):
            layers, kept = [], 0
            for _ in range(args.layers):
                w = torch.randn(N, K, generator=g).to(dt)
                if args.op == "bsr":
                    b = args.block
                    kb = torch.rand(N // b, K // b, generator=g) >= sp
                    keep = kb.repeat_interleave(b, 0).repeat_interleave(b, 1)
                    layers.append(formats.BSRWeight.from_dense(w, keep, blocksize=(b, b)))
                else:
                    keep = torch.rand(N, K, generator=g) >= sp
                    fmt = formats.CSRWeight if args.op == "csr" else formats.BitmapWeight
                    layers.append(fmt.from_dense(w, keep))
                kept += int(keep.sum())
            for M in (int(v) for v in args.m.split(",")):
                x = torch.randn(M, K, generator=g).to(dt)

                def run():
                    y = x
                    for f in layers:
                        y = f.matmul(y)
                    return y

                run()
                ts = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    run()
                    ts.append(time.perf_counter() - t0)
                t = statistics.median(ts)
                print(f"{args.op} {dt_name} sp={sp:.2f} M={M} T={args.threads} {t * 1e3:.2f} ms "
                      f"{t * 1e9 * args.threads / kept:.2f} ns/kept/thread", flush=True)


if __name__ == "__main__":
    main()
