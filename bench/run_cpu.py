"""Reproduces bench/results/cpu_csr_layer.{jsonl,md}: sparsekit's CSR kernel on the CPU against
dense F.linear (float32 and bfloat16; the faster is the baseline) and torch.sparse.mm (CSR),
on LLaMA-7B layer shapes.  Run: `make bench` or `python bench/run_cpu.py`."""
import argparse
import os
from pathlib import Path

import torch

from sparsekit.bench.layer import bench_layer
from sparsekit.bench.timing import environment, markdown_table

OUT = Path(__file__).resolve().parent / "results"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="4096x4096,11008x4096")
    p.add_argument("--m", default="1,16,128")
    p.add_argument("--sparsity", default="0.5,0.7,0.9,0.95")
    p.add_argument("--name", default="cpu_csr_layer")
    a = p.parse_args()
    dev = torch.device("cpu")
    env = environment(dev)
    recs = []
    for shape in a.shapes.split(","):
        n, k = map(int, shape.split("x"))
        recs += bench_layer(n, k, [int(m) for m in a.m.split(",")], [float(s) for s in a.sparsity.split(",")],
                            torch.float32, dev)
    import json

    OUT.mkdir(exist_ok=True)
    with open(OUT / f"{a.name}.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(dict(r, env=env)) + "\n")
    rows = []
    for r in recs:
        if "ms" not in r:
            continue
        rows.append([f"{r['N']}x{r['K']}", r["M"], f"{r['sparsity']:.0%}", r["impl"], f"{r['ms']:.3f}",
                     f"{r['speedup']:.2f}x", f"{r['bytes_cap']:.2f}x", f"{r['gbps']:.1f}"])
    head = (f"# CPU layer latency: CSR against dense\n\n{env['device']}, {env['cpu_threads']} threads, "
            f"torch {env['torch']}, sparsekit {env['sparsekit']} ({env['sparsekit_commit']}), "
            f"CPU kernels: {env.get('cpu_isa')}. float32 activations and weights; the baseline is the faster of "
            "float32 and bfloat16 `F.linear` (named per row); speedup = baseline ms / ms (medians of "
            "`torch.utils.benchmark` blocked_autorange). The bytes cap is the baseline's weight bytes / these weight "
            "bytes (what a memory-bound kernel could gain); GB/s counts the weight bytes only.\n\n")
    table = markdown_table(["N x K", "M", "sparsity", "impl", "ms", "speedup", "bytes cap", "weight GB/s"], rows)
    (OUT / f"{a.name}.md").write_text(head + table + "\n")
    print(head + table)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
