"""`sparsekit bench` command line.

    sparsekit bench                      # model: a decoder pruned + converted per format, on the device present
    sparsekit bench model --preset llama-7b --layers 2 --formats 2:4,bsr:64,int8-wo --json m.jsonl
    sparsekit bench layer --shapes llama-7b --m 1,16 --sparsity 0.9 --formats all --json out.jsonl
    sparsekit bench layer --shapes 4096x4096 --chain 8 --formats csr,auto,int8   # + DeepSparse (make peers)
    sparsekit bench report --json out.jsonl --out bench/results
    sparsekit bench overhead --json bench/results/cpu_overhead.jsonl   # host time beyond F.linear, per format
"""
from __future__ import annotations

import argparse
import shlex
import warnings

import torch

from .progress import Progress


def _floats(s):
    return [float(v) for v in s.split(",") if v]


def _ints(s):
    return [int(v) for v in s.split(",") if v]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# what the bare command and each sub-command run when a flag is not given: (sub-command, device type) -> flags
DEFAULTS = {
    ("model", "cpu"): dict(preset="small", formats="csr,bsr:32,2:4,int8-wo", sparsity=[0.9], prompt=64,
                           dtype="bfloat16"),
    ("model", "cuda"): dict(preset="llama-7b", formats="2:4,bsr:64,int8-wo,2:4+int8", sparsity=[0.9], prompt=2048,
                            dtype="float16"),
    ("layer", "cpu"): dict(shapes="square-4096", formats="csr,bsr:32,2:4,int8-wo", sparsity=[0.9], m=[1, 16],
                           dtype="float32"),
    ("layer", "cuda"): dict(shapes="llama-7b", formats="all", sparsity=[0.5, 0.9], m=[1, 16, 128, 2048],
                            dtype="float16"),
}
QUICK = {"model": dict(layers=2, prompt=32), "layer": dict(m=[1, 16])}
DIMS = ("hidden", "intermediate", "heads", "kv_heads", "layers", "vocab")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .model import PRESETS

    p.add_argument("what", nargs="?", default="model", choices=["model", "layer", "report", "overhead"],
                   help="model (default): a decoder-only transformer pruned and converted per format, prefill and "
                        "decode against dense; layer: single linear layers against dense and PyTorch's peers; "
                        "report: turn result JSON lines (--json) into markdown tables and PNG plots (--out); "
                        "overhead: per format, the host time of a small converted layer beyond F.linear (CPU, one "
                        "thread; on CUDA also per call without syncing and eager vs CUDA graph on 14336x4096)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: float16 on cuda; on cpu bfloat16 for "
                   "model, float32 for layer")
    p.add_argument("--formats", default=None,
                   help="comma list of csr, bitmap, bsr:B (B = block size), 2:4, int8, int8-wo, 2:4+int8, or 'all' "
                        "(layer: also auto, format='auto' told each M) "
                        "(default: model cpu csr,bsr:32,2:4,int8-wo; cuda 2:4,bsr:64,int8-wo,2:4+int8; "
                        "layer cpu csr,bsr:32,2:4,int8-wo; cuda all)")
    p.add_argument("--sparsity", type=_floats, default=None,
                   help="fractions pruned for csr, bitmap and bsr (2:4 and int8 formats have their own; default 0.9, "
                        "layer on cuda 0.5,0.9)")
    p.add_argument("--quick", action="store_true",
                   help="about a minute: shorter timing; model: 2 layers and a 32-token prompt; layer: M in {1, 16}")
    p.add_argument("--json", default=None, help="append result records (JSON lines, with the environment) here; "
                   "report: the file to read")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn on stderr only when "
                   "stderr is a terminal)")
    g = p.add_argument_group("layer")
    g.add_argument("--shapes", default=None, help="N x K list or families: llama2-7b (= llama-7b), llama2-13b, "
                   "llama3-8b (attention and MLP projections), bert-base, square-4096 (default: square-4096 on cpu, "
                   "llama-7b on cuda)")
    g.add_argument("--chain", type=int, default=1, help="L distinct layers of each shape run one after another "
                   "by every implementation, so that the weights stream from memory as in a model (in sequence when "
                   "N = K, else each on the same input); weight bytes count all L (default 1)")
    g.add_argument("--m", type=_ints, default=None, help="activation rows, e.g. 1,16 (default 1,16; cuda 1,16,128,2048)")
    g.add_argument("--no-peers", action="store_true", help="skip the peers: PyTorch's own paths (torch CSR/BSR, "
                   "to_sparse_semi_structured, torch._int_mm, quantize_dynamic, torchao) and DeepSparse (CPU, "
                   "unstructured formats; from the side virtualenv of `make peers` or $SPARSEKIT_PEERS_PYTHON)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="llama", choices=["llama", "builtin"],
                   help="llama: transformers' LlamaForCausalLM from a LlamaConfig, random weights, no download "
                        "(the built-in decoder when transformers does not import); builtin: the built-in decoder")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="model dimensions (default: small on cpu, llama-7b on cuda); the flags below override them")
    for d in DIMS:
        g.add_argument(f"--{d.replace('_', '-')}", type=int, default=None, help=f"{d} (default: the preset's)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time decode through torch.compile(fullgraph=True), dense and every format (CUDA: "
                        "mode reduce-overhead, i.e. CUDA graphs; CPU: inductor); default on with a GPU, off on the "
                        "CPU (each model compiles for a minute or more there)")
    g.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    g.add_argument("--prompt", type=int, default=None, help="prompt tokens; prefill M = batch x prompt, decode "
                   "attends to them (default 64 on cpu, 2048 on cuda; --quick 32)")
    g = p.add_argument_group("overhead")
    g.add_argument("--clock", default="wall", choices=["wall", "thread"],
                   help="CPU timer: wall (default) or thread (this thread's CPU time, steadier on a loaded machine)")
    g.add_argument("--runs", type=int, default=None, help="alternating rounds (default 5; --quick 3)")
    g = p.add_argument_group("report")
    g.add_argument("--out", default=None, help="folder for the markdown and PNG files")


def _apply_defaults(args, device: torch.device) -> None:
    """Fills the flags left out from DEFAULTS (and QUICK with --quick)."""
    table = dict(DEFAULTS[(args.what, "cuda" if device.type == "cuda" else "cpu")])
    if args.quick:
        table.update(QUICK[args.what])
    for k, v in table.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)


def run(args) -> int:
    from .layer import parse_formats
    from .report import baseline_line, gained_sentence, layer_table, model_table, report
    from .timing import environment, write_jsonl

    if args.what == "report":
        if not args.json:
            raise SystemExit("sparsekit bench report: pass --json RESULTS.jsonl (and --out FOLDER)")
        print(report(args.json, args.out))
        return 0
    if args.what == "overhead":
        return _run_overhead(args)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _apply_defaults(args, device)
    dtype = DTYPES[args.dtype]
    min_run_time = 0.1 if args.quick else 0.3
    command = " ".join(["python -m sparsekit", *map(shlex.quote, getattr(args, "argv", []))])
    env = dict(environment(device), command=command)
    print(f"# sparsekit bench {args.what} on {env['device']} ({device.type}, {env['cpu_threads']} CPU threads), "
          f"torch {env['torch']}, dtype {str(dtype).replace('torch.', '')}")
    fmts = parse_formats(args.formats)
    if args.what == "model":
        recs = _run_model(args, fmts, dtype, device, min_run_time)
        print(model_table(recs))
        print(f"\nspeedup: over dense {baseline_line(recs[0])}; "
              f"decode: one token per sequence at position {args.prompt} with a KV cache"
              + ("; tokens/s from the faster of eager and CUDA graph" if device.type == "cuda"
                 else "; peak memory is measured on CUDA only"))
        print("\n" + gained_sentence(recs))
    else:
        recs = _run_layers(args, fmts, dtype, device, min_run_time)
        print(layer_table(recs))
    if args.json:
        write_jsonl(args.json, [dict(r, env=env) for r in recs])
        print(f"\nwrote {len(recs)} records to {args.json}")
    return 0


def _run_overhead(args) -> int:
    from .layer import parse_formats
    from .overhead import FORMATS, overhead_tables, run_overhead
    from .timing import environment, write_jsonl

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    fmts = parse_formats(args.formats) if args.formats else FORMATS
    command = " ".join(["python -m sparsekit", *map(shlex.quote, getattr(args, "argv", []))])
    env = dict(environment(torch.device("cuda" if cuda else "cpu")), command=command)
    print(f"# sparsekit bench overhead on {env['cpu_model']}" + (f" and {env['device']}" if cuda else "")
          + f", torch {env['torch']}, sparsekit {env['sparsekit_commit']}")
    runs, mrt = (3, 0.05) if args.quick else (5, 0.2)
    runs = args.runs or runs
    n = (runs * (len(fmts) + 2)) + (3 * len(fmts) if cuda else 0)  # CUDA: host time at M = 1 and 32, graphs
    with Progress(n, enabled=not args.no_progress) as bar:
        recs = run_overhead(fmts, runs=runs, min_run_time=mrt, cuda=cuda, clock=args.clock, progress=bar)
    print(overhead_tables(recs))
    if not cuda:
        print("\nCUDA: no device here; the host-time and eager / graph tables run where torch.cuda.is_available()")
    if args.json:
        write_jsonl(args.json, [dict(r, env=env) for r in recs])
        print(f"\nwrote {len(recs)} records to {args.json}")
    return 0


def _run_layers(args, fmts, dtype, device, min_run_time):
    from .layer import bench_layer, layer_steps, parse_shapes

    if args.chain < 1:
        raise SystemExit(f"sparsekit bench layer: --chain must be >= 1, got {args.chain}")
    shapes = parse_shapes(args.shapes)
    if args.chain > 1:
        print(f"chain: {args.chain} distinct layers per shape, run one after another (in sequence where N = K, "
              "else each on the same input)")
    recs = []
    with Progress(len(shapes) * layer_steps(fmts, args.sparsity), enabled=not args.no_progress) as bar:
        for N, K in shapes:
            recs += bench_layer(N, K, args.m, args.sparsity, dtype, device, peers=not args.no_peers,
                                min_run_time=min_run_time, fmts=fmts, progress=bar, chain=args.chain)
    return recs


def _run_model(args, fmts, dtype, device, min_run_time):
    from .model import PRESETS, bench_model, transformers_available, variants

    dims = {d: getattr(args, d) if getattr(args, d) is not None else PRESETS[args.preset][d] for d in DIMS}
    arch = args.arch if transformers_available() else "builtin"
    print(f"model: {'transformers LlamaForCausalLM' if arch == 'llama' else 'built-in decoder'} "
          f"({args.preset}: {', '.join(f'{k} {v}' for k, v in dims.items())}), random weights; attention and MLP "
          f"projections pruned by magnitude per layer and converted; lm_head dense; batch {args.batch}, prompt "
          f"{args.prompt}\n")
    with Progress(1 + len(list(variants(fmts, args.sparsity))), enabled=not args.no_progress) as bar:
        return bench_model(dims, fmts, args.sparsity, dtype, device, arch=arch, batch=args.batch, prompt=args.prompt,
                           min_run_time=min_run_time, progress=bar, peers=not args.no_peers,
                           compile="inductor" if (device.type == "cuda" if args.compile is None else args.compile)
                           else None)
