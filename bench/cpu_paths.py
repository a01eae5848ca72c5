"""A CPU op's paths side by side on a chain of layers (the weights stream from memory, as in a model): the kernel the
CPU picks (`set_cpu_isa("auto")`: the AVX-512 kernels where the CPU has them), the AVX2 kernel (`set_cpu_isa("avx2")`),
for 2:4 the dense panels (`set_cpu_dense_min_m(1)`), and dense F.linear in the same dtype. Medians of alternating rounds
in one process; prints a markdown table (ms for all the layers).

    python bench/cpu_paths.py --op 2:4 [--m 1,2,4,8,16] [--dtypes bfloat16,float32] [--layers 8] [--shape 4096x4096]
    python bench/cpu_paths.py --op bsr [--blocks 16,64] [--sparsity 0.7] [--m 1,4,16,64,256]
"""
import argparse
import statistics
import time

import torch

import sparsekit  # noqa: F401  (loads the ops)
import sparsekit._C as C
from sparsekit.formats.bsr import BSRWeight
from sparsekit.formats.sparse24 import pack_24
from sparsekit.prune import masks


def _median_ms(f, x, reps=9):
    f(x)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(x)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def _chain(call, weights):
    def run(x):
        for w in weights:
            x = call(x, w)
        return x

    return run


def _layers(op, N, K, dt, n, block, sparsity):
    """(the op's call on x and one layer's weight, the layers' weights, their dense weights)"""
    out, dense = [], []
    for _ in range(n):
        w32 = torch.randn(N, K)
        if op == "2:4":
            keep = masks.n_m(w32.abs(), 2, 4)
            w = (w32 * keep).to(dt)
            out.append(pack_24(w, keep, "weight"))
        else:
            kb = torch.rand(N // block, K // block) >= sparsity
            keep = kb.repeat_interleave(block, 0).repeat_interleave(block, 1)
            w = (w32 * keep).to(dt)
            out.append(BSRWeight.from_dense(w, keep, block))
        dense.append(w)
    if op == "2:4":
        return (lambda x, vm: torch.ops.sparsekit.sparse24_mm(x, vm[0], vm[1], None)), out, dense
    return (lambda x, b: torch.ops.sparsekit.bsr_mm(x, b.crow_indices, b.col_indices, b.values, N, None)), out, dense


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=("2:4", "bsr"), default="2:4")
    p.add_argument("--m", default=None, help="default: 1,2,4,8,16 (2:4), 1,4,16,64,256 (bsr)")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--shape", default="4096x4096", help="N x K of every layer (N = K chains in sequence)")
    p.add_argument("--blocks", default="16,64", help="bsr: square block sizes")
    p.add_argument("--sparsity", type=float, default=0.7, help="bsr: the fraction of blocks pruned")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    N, K = (int(v) for v in a.shape.split("x"))
    assert N == K, "the layers run in sequence: N must equal K"
    ms = [int(v) for v in (a.m or ("1,2,4,8,16" if a.op == "2:4" else "1,4,16,64,256")).split(",")]
    blocks = [int(v) for v in a.blocks.split(",")] if a.op == "bsr" else [0]
    paths = ["auto", "avx2"] + (["panels"] if a.op == "2:4" else []) + ["dense"]
    names = {"auto": "kernel (auto ISA)", "avx2": "AVX2 kernel", "panels": "dense panels", "dense": "dense"}
    torch.manual_seed(0)
    what = "" if a.op == "2:4" else f", {a.sparsity:.0%} of the blocks pruned"
    print(f"{a.op}: {a.layers} layers of {N}x{K}{what}, {torch.get_num_threads()} threads, "
          f"ms (median of {a.rounds} rounds)\n")
    print("| dtype | " + ("block | " if a.op == "bsr" else "") + "M | " + " | ".join(names[k] for k in paths) + " |")
    print("|---|" + ("---:|" if a.op == "bsr" else "") + "---:|" + "---:|" * len(paths))
    for dname in a.dtypes.split(","):
        dt = getattr(torch, dname)
        for block in blocks:
            call, ws, dense = _layers(a.op, N, K, dt, a.layers, block, a.sparsity)
            run, rund = _chain(call, ws), _chain(torch.nn.functional.linear, dense)
            with torch.inference_mode():
                for M in ms:
                    x = torch.randn(M, K).to(dt)
                    r = {k: [] for k in paths}
                    try:
                        for _ in range(a.rounds):
                            C.set_cpu_dense_min_m(0)
                            r["auto"].append(_median_ms(run, x))
                            C.set_cpu_isa("avx2")
                            r["avx2"].append(_median_ms(run, x))
                            C.set_cpu_isa("auto")
                            if "panels" in r:
                                C.set_cpu_dense_min_m(1)
                                r["panels"].append(_median_ms(run, x))
                            C.set_cpu_dense_min_m(-1)
                            r["dense"].append(_median_ms(rund, x))
                    finally:
                        C.set_cpu_isa("auto")
                        C.set_cpu_dense_min_m(-1)
                    cells = " | ".join(f"{statistics.median(r[k]):.2f}" for k in paths)
                    lead = f"| {dname} | " + (f"{block}x{block} | " if a.op == "bsr" else "")
                    print(f"{lead}{M} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
