"""`sparsekit bench` command line.

    sparsekit bench                      # the built-in model demo on the device present
    sparsekit bench layer --shapes llama-7b --m 1,16 --sparsity 0.9 --json out.jsonl
"""
from __future__ import annotations

import argparse

import torch


def _floats(s):
    return [float(v) for v in s.split(",") if v]


def _ints(s):
    return [int(v) for v in s.split(",") if v]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", default="model", choices=["model", "layer", "report"],
                   help="model: prune+convert the built-in model and time it (default); layer: linear layers; "
                        "report: turn result JSON lines (--json) into markdown tables and PNG plots (--out)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: float16 on cuda, float32 on cpu")
    p.add_argument("--m", type=_ints, default=None, help="activation rows (batch x tokens), e.g. 1,16")
    p.add_argument("--sparsity", type=_floats, default=None, help="e.g. 0.5,0.7,0.9")
    p.add_argument("--shapes", default="square-4096", help="layer: N x K list or families (llama-7b, bert-base, ...)")
    p.add_argument("--formats", default="csr",
                   help="layer: comma list of csr, bitmap, bsr:16|32|64, 2:4, int8, int8-wo, 2:4+int8 (or 'all')")
    p.add_argument("--no-peers", action="store_true", help="layer: skip PyTorch's own sparse path")
    p.add_argument("--out", default=None, help="report: folder for the markdown and PNG files")
    p.add_argument("--quick", action="store_true", help="shorter timing runs")
    p.add_argument("--json", default=None, help="append result records (JSON lines, with the environment) here")


def run(args) -> int:
    from .timing import environment, markdown_table, write_jsonl

    if args.what == "report":
        from .report import report

        if not args.json:
            raise SystemExit("sparsekit bench report: pass --json RESULTS.jsonl (and --out FOLDER)")
        print(report(args.json, args.out))
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    min_run_time = 0.1 if args.quick else 0.3
    env = environment(device)
    print(f"# sparsekit bench {args.what} on {env['device']} ({device.type}, {env['cpu_threads']} CPU threads), "
          f"torch {env['torch']}, dtype {str(dtype).replace('torch.', '')}")
    if args.what == "model":
        from .model import bench_model

        recs = bench_model(args.m or [1, 16], args.sparsity or [0.5, 0.7, 0.9], dtype, device,
                           min_run_time=min_run_time)
        print(f"model: {recs[0]['model']}, {recs[0]['params'] / 1e6:.1f} M weights, pruned by magnitude "
              f"(unstructured, per layer) and converted to {recs[0]['format']}\n")
        rows = [[f"{r['sparsity']:.0%}", r["M"], f"{r['dense_ms']:.3f} ({r['dense_dtype']})", f"{r['ms']:.3f}",
                 f"{r['speedup']:.2f}x", f"{r['dense_weight_bytes'] / 2**20:.1f}", f"{r['weight_bytes'] / 2**20:.1f}"]
                for r in recs]
        print(markdown_table(["sparsity", "M", "best dense ms", "sparse ms", "speedup", "dense MiB", "sparse MiB"],
                             rows))
        print("\nbest dense: the faster of float32 and bfloat16 on the CPU; the sparse model keeps float32 weights")
    else:
        from .layer import FORMATS, bench_layer, parse_shapes

        fmts = FORMATS if args.formats == "all" else tuple(f for f in args.formats.split(",") if f)
        recs = []
        for N, K in parse_shapes(args.shapes):
            recs += bench_layer(N, K, args.m or [1, 16], args.sparsity or [0.9], dtype, device,
                                peers=not args.no_peers, min_run_time=min_run_time, fmts=fmts)
        rows = [[f"{r['N']}x{r['K']}", r["M"], f"{r['sparsity']:.0%}", r["impl"],
                 f"{r['ms']:.3f}" if "ms" in r else "-", f"{r['speedup']:.2f}x" if "ms" in r else r.get("error", ""),
                 f"{r['bytes_cap']:.2f}x" if r.get("bytes_cap") else "-", f"{r['gbps']:.1f}" if "gbps" in r else "-"]
                for r in recs]
        print(markdown_table(["N x K", "M", "sparsity", "impl", "ms", "speedup vs best dense", "bytes cap", "GB/s"],
                             rows))
    if args.json:
        write_jsonl(args.json, [dict(r, env=env) for r in recs])
        print(f"\nwrote {len(recs)} records to {args.json}")
    return 0
