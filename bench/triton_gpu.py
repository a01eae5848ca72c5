"""The Triton kernels on a GPU against dense cuBLAS and PyTorch's own sparse / int8 paths.

For each LLaMA-7B layer shape (N x K = out x in features) and each M it times, by the rules of
/work/shared/BENCHMARKING.md (medians, L2 flushed, dense baseline in the same process):

  dense       F.linear (cuBLAS), fp16 (--dtype)
  bsr         sparsekit bsr_mm as routed (the compiled tensor-core kernel at M <= 16 where it applies, else
              Triton), blocks --bsr-blocks at --bsr-density kept blocks
  bsr_torch   torch.sparse._triton_ops.bsr_dense_mm on the same BSR weight (peer)
  bitmap      sparsekit bitmap_mm (Triton) at each --bitmap-sparsity (fraction pruned)
  bitmap_tile, bitmap_expand, bitmap_slices  Triton's bitmap_mm held to one design (its first configuration in
              the candidate list of the call's M bucket; from M = 16, where the designs differ): the weight tile
              decoded in column order (TILE), the dense weight decoded then cuBLAS (EXPAND), the bit slices
              (sparsekit/triton/bitmap.py), so that a run shows each against dense and the tuned choice
  csr_torch   torch.sparse.mm with the same weight in CSR (cuSPARSE, peer)
  w8a8        sparsekit quantize_per_token + int8_mm (the quantization included; int8_mm routed: the compiled
              tensor-core W8A8 kernel at M <= 16 on sm_80+, Triton's otherwise)
  w8a8_triton the same with Triton's int8_mm launcher itself
  w8a8_linear sparsekit int8_linear, what the int8 format runs (at M <= 16 on sm_80+ one call of the compiled
              W8A8 kernel that quantizes x per token itself; else Triton's quantization + int8_mm)
  w8a8_gemm   sparsekit int8_mm alone (activations already quantized)
  int_mm      torch._int_mm (int8 x int8 -> int32, no scales; peer; needs M > 16)
  w8a16       sparsekit int8_weight_only_mm (the CUDA router: the compiled tensor-core kernel for float16 /
              bfloat16 at M <= 16 on sm_80+, Triton's otherwise)
  w8a16_triton  the Triton int8_weight_only_mm launcher itself, whatever M (the router's other choice)
  w8a16_norefill, w8a8_linear_norefill  w8a16 / w8a8_linear with SPARSEKIT_CUDA_REFILL=0: the tensor-core
              kernel's order before its weight registers were refilled while consumed (csrc/cuda/README.md), for an
              A/B in one process (the variable is set around each call: their eager times carry that host cost;
              compare the graph times)
  w8a16_cuda, w8a8_cuda  the compiled tensor-core kernels themselves, whatever M (_cuda_int8_weight_only_mm;
              _cuda_int8_mm on x quantized beforehand): above M = 16 in tiles of 32 rows
  w8a16_cuda_16, w8a8_cuda_16  the same with SPARSEKIT_CUDA_WIDE_TILE=0: tiles of 16 rows, for an A/B of the
              wide tile (csrc/cuda/README.md; compare the graph times)
  quant       sparsekit quantize_per_token (symmetric) as routed: the compiled per-token kernel
              (_cuda_quantize_per_token), what the int8 linears and 2:4+int8 run above M = 16
  quant_triton  the Triton quantize_per_token launcher itself (the router's other choice); both give the
              reference's bytes (checked exactly). Their "speedup" column is against the dense layer, not a peer

each eagerly (triton.testing.do_bench) and in a CUDA graph (do_bench_cudagraph). Every candidate
is first checked against the reference; a wrong one is recorded and not timed. Every kernel is
called once before timing, so its autotuning (see sparsekit/triton/autotune.py) is never timed.
Records go to bench/results/triton_gpu_<device>.jsonl (one JSON object per configuration, with the
environment) and a markdown table to bench/results/triton_gpu_<device>.md.

    python bench/triton_gpu.py                    # everything (about 10-20 minutes on an H100)
    python bench/triton_gpu.py --quick            # 4096x4096, M in {1, 16, 2048}
    python bench/triton_gpu.py --kernels bsr,w8a16 --m 1,2,4,8,16
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from gpu_floor import annotate  # bench/gpu_floor.py: the floor of each kernel x shape

# the Triton launchers run CPU tensors under TRITON_INTERPRET=1 (a dry run: --check-only --device cpu)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no")


def model_args(kernel: str, params: dict) -> tuple:
    """(format, keyword arguments) of bench/gpu_floor.floor for a case of this script; None: no model."""
    if kernel in ("bsr", "bsr_torch"):
        return "bsr", {"density": params["density"], "block": params["block"]}
    if kernel in ("bitmap", "csr_torch") or kernel in BITMAP_DESIGNS:
        return ("csr" if kernel == "csr_torch" else "bitmap"), {"density": 1 - params["sparsity"]}
    return {"dense": ("dense", {}), "w8a8": ("int8", {}), "w8a8_triton": ("int8", {}), "w8a8_linear": ("int8", {}),
            "w8a16": ("int8-wo", {}), "w8a16_norefill": ("int8-wo", {}), "w8a8_linear_norefill": ("int8", {}),
            "w8a16_triton": ("int8-wo", {}), "w8a16_cuda": ("int8-wo", {}), "w8a16_cuda_16": ("int8-wo", {}),
            "w8a8_cuda": ("int8", {}), "w8a8_cuda_16": ("int8", {})}.get(kernel)

OUT = Path(__file__).resolve().parent / "results"
SHAPES = "4096x4096,11008x4096,4096x11008"
MS = "1,2,4,8,16,32,64,128,512,2048,8192"
# Triton's bitmap_mm held to one design: which configurations of the candidate list are that design's
BITMAP_DESIGNS = {"bitmap_tile": lambda c: bool(c.get("TILE")), "bitmap_expand": lambda c: bool(c.get("EXPAND")),
                  "bitmap_slices": lambda c: not (c.get("TILE") or c.get("EXPAND"))}
KERNELS = ("dense", "bsr", "bsr_torch", "bitmap", "csr_torch", "w8a8", "w8a8_triton", "w8a8_linear", "w8a8_gemm",
           "int_mm", "w8a16", "w8a16_triton", "quant", "quant_triton", "w8a16_norefill", "w8a8_linear_norefill",
           "w8a16_cuda", "w8a16_cuda_16", "w8a8_cuda", "w8a8_cuda_16", *BITMAP_DESIGNS)
WIDE_AB = ("w8a16_cuda", "w8a16_cuda_16", "w8a8_cuda", "w8a8_cuda_16")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=SHAPES, help=f"N x K list (default {SHAPES})")
    p.add_argument("--m", default=MS, help=f"M list (default {MS})")
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    p.add_argument("--kernels", default=",".join(KERNELS), help="subset of " + ",".join(KERNELS))
    p.add_argument("--bsr-blocks", default="64", help="BSR block sizes (square), e.g. 16,32,64")
    p.add_argument("--bsr-density", type=float, default=0.1, help="fraction of blocks kept (default 0.1)")
    p.add_argument("--bitmap-sparsity", default="0.5,0.7,0.9", help="fractions of weights pruned")
    p.add_argument("--no-graphs", action="store_true", help="eager timings only")
    p.add_argument("--rep", type=int, default=100, help="milliseconds of timing per measurement")
    p.add_argument("--quick", action="store_true", help="4096x4096 and M in {1, 16, 2048}")
    p.add_argument("--out", default=str(OUT), help="output folder (default bench/results)")
    p.add_argument("--name", default=None, help="file stem (default triton_gpu_<device>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-only", action="store_true", help="check correctness, time nothing")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only with --check-only (a dry run of "
                   "this script's plumbing: the ops then run their CPU / reference kernels, not Triton)")
    a = p.parse_args(argv)
    if a.quick:
        a.shapes, a.m = "4096x4096", "1,16,2048"
    a.shape_list = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",") if s]
    a.m_list = [int(m) for m in a.m.split(",") if m]
    a.kernel_list = [k for k in a.kernels.split(",") if k]
    bad = [k for k in a.kernel_list if k not in KERNELS]
    if bad:
        p.error(f"unknown kernels {bad}; choose from {','.join(KERNELS)}")
    a.block_list = [int(b) for b in a.bsr_blocks.split(",") if b]
    a.sparsity_list = [float(s) for s in a.bitmap_sparsity.split(",") if s]
    if a.device != "cuda" and not a.check_only:
        p.error("--device other than cuda needs --check-only")
    return a


# ------------------------------------------------------------------------------------ timing
def bench(fn, graphs: bool, rep: int):
    """(eager median ms, graph median ms or None). fn has been called (and tuned) before."""
    import triton.testing as tt

    torch.cuda.synchronize()
    eager = float(tt.do_bench(fn, warmup=25, rep=rep, return_mode="median"))
    graph = None
    if graphs:
        try:
            graph = float(tt.do_bench_cudagraph(fn, rep=rep, return_mode="median"))
        except Exception as e:  # a peer that cannot be captured
            warnings.warn(f"CUDA graph timing failed: {type(e).__name__}: {e}")
    return eager, graph


def with_env(fn, name, value="0"):
    """fn with the environment variable `name` set to `value` around each call (the CUDA plans read their knobs at
    each call, so also while a graph is captured)."""
    def call():
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn()
        finally:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
    return call


def no_refill(fn):
    """fn under SPARSEKIT_CUDA_REFILL=0: the tensor-core kernels' order before their register refill."""
    return with_env(fn, "SPARSEKIT_CUDA_REFILL")


def environment() -> dict:
    try:
        from sparsekit.bench.timing import environment as env

        return env(torch.device("cuda"))
    except Exception:
        import triton

        return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "triton": triton.__version__}


def close(got, ref, dtype) -> tuple:
    """(ok, max error scaled by the result's magnitude)."""
    got, ref = got.float(), ref.float()
    err = ((got - ref).abs() / (ref.abs().amax() + 1e-6)).max().item()
    return bool(err <= 4 * TOL[dtype] and math.isfinite(err)), err


# ------------------------------------------------------------------------------------ weights
def x_bytes(dtype) -> int:
    return torch.finfo(dtype).bits // 8


def block_mask(N, K, b, density, device, gen):
    keep = torch.rand(N // b, K // b, generator=gen, device=device) < density
    return keep.repeat_interleave(b, 0).repeat_interleave(b, 1)


def make_cases(N, K, M, dtype, a, gen, dev):
    """Yields (kernel, params, fn, reference fn, bytes moved by the candidate)."""
    import sparsekit
    from sparsekit import ops
    from sparsekit.formats import BitmapWeight, BSRWeight, Int8Weight

    w = (torch.randn(N, K, generator=gen, device=dev) * 0.02).to(dtype)
    x = torch.randn(M, K, generator=gen, device=dev).to(dtype)
    io = (M * K + M * N) * x.element_size()
    ks = set(a.kernel_list)

    yield "dense", {}, (lambda: F.linear(x, w)), (lambda: F.linear(x, w)), N * K * 2 + io

    for b in a.block_list:
        if N % b or K % b:
            continue
        mask = block_mask(N, K, b, a.bsr_density, dev, gen)
        wm = w * mask
        ref = (lambda wm=wm: F.linear(x.float(), wm.float()))
        params = {"block": b, "density": a.bsr_density}
        if "bsr" in ks:
            W = BSRWeight.from_dense(w, mask, (b, b))
            yield ("bsr", params, (lambda W=W: ops.bsr_mm(x, W.crow_indices, W.col_indices, W.values, N)), ref,
                   W.nbytes + io)
        if "bsr_torch" in ks:
            from torch.sparse._triton_ops import bsr_dense_mm

            Wt = wm.to_sparse_bsr((b, b))
            xt = x.t().contiguous()
            nb = Wt.values().numel() * 2 + Wt.col_indices().numel() * 8 + Wt.crow_indices().numel() * 8
            yield "bsr_torch", params, (lambda Wt=Wt, xt=xt: bsr_dense_mm(Wt, xt)), (lambda r=ref: r().t()), nb + io

    for s in a.sparsity_list:
        mask = torch.rand(N, K, generator=gen, device=dev) >= s
        wm = w * mask
        ref = (lambda wm=wm: F.linear(x.float(), wm.float()))
        params = {"sparsity": s}
        designs = [d for d in BITMAP_DESIGNS if d in ks and (x.is_cuda or INTERPRET) and M >= 16]
        if "bitmap" in ks or designs:
            B = BitmapWeight.from_dense(w, mask)
        if "bitmap" in ks:
            yield ("bitmap", params, (lambda B=B: ops.bitmap_mm(x, B.bitmap, B.word_offsets, B.values)), ref,
                   B.nbytes + io)
        for design in designs:
            from sparsekit.triton import bitmap as tbm
            from sparsekit.triton._common import m_bucket

            cfgs = [c for c in tbm.candidates(m_bucket(M), K, x.dtype, tbm.density_bucket(B.nnz, N, K))
                    if BITMAP_DESIGNS[design](c)]
            if cfgs:
                yield (design, params, (lambda B=B, c=cfgs[0]: tbm.bitmap_mm(x, B.bitmap, B.word_offsets, B.values,
                                                                               config=c)), ref, B.nbytes + io)
        if "csr_torch" in ks:
            Wc = wm.to_sparse_csr()
            nb = Wc.values().numel() * 2 + Wc.col_indices().numel() * 8 + Wc.crow_indices().numel() * 8
            yield ("csr_torch", params, (lambda Wc=Wc: torch.sparse.mm(Wc, x.t())), (lambda r=ref: r().t()), nb + io)

    if ks & {"quant", "quant_triton"}:
        refq = (lambda: sparsekit.ops.reference.quantize_per_token(x)[0])
        qbytes = M * K * x.element_size() + M * K + M * 8
        if "quant" in ks:
            yield "quant", {}, (lambda: ops.quantize_per_token(x)[0]), refq, qbytes
        if "quant_triton" in ks and x.is_cuda:
            from sparsekit.triton import int8 as tint8
            yield "quant_triton", {}, (lambda: tint8.quantize_per_token(x)[0]), refq, qbytes

    if ks & {"w8a8", "w8a8_triton", "w8a8_linear", "w8a8_gemm", "int_mm", "w8a16", "w8a16_triton", "w8a16_norefill",
             "w8a8_linear_norefill", *WIDE_AB}:
        I = Int8Weight.from_dense(w)
        wnb = N * K + N * 4
        q, s, _ = sparsekit.ops.reference.quantize_per_token(x)
        ref8 = (lambda: sparsekit.ops.reference.int8_mm(q, s, None, I.qweight, I.scale, None, torch.float32))
        if "w8a8" in ks:
            def w8a8():
                xq, xs, _ = ops.quantize_per_token(x)
                return ops.int8_mm(xq, xs, None, I.qweight, I.scale, None, dtype)
            yield "w8a8", {}, w8a8, ref8, wnb + io + M * K
        if "w8a8_triton" in ks and x.is_cuda:
            from sparsekit.triton import int8 as tint8

            def w8a8_triton():
                xq, xs, _ = ops.quantize_per_token(x)
                return tint8.int8_mm(xq, xs, None, I.qweight, I.scale, None, dtype)
            yield "w8a8_triton", {}, w8a8_triton, ref8, wnb + io + M * K
        if "w8a8_linear" in ks:
            yield ("w8a8_linear", {}, (lambda: ops.int8_linear(x, I.qweight, I.scale)), ref8,
                   wnb + io)
        if "w8a8_linear_norefill" in ks:
            yield ("w8a8_linear_norefill", {}, no_refill(lambda: ops.int8_linear(x, I.qweight, I.scale)), ref8,
                   wnb + io)
        if "w8a8_gemm" in ks:
            yield ("w8a8_gemm", {}, (lambda: ops.int8_mm(q, s, None, I.qweight, I.scale, None, dtype)), ref8,
                   wnb + M * K + M * N * x.element_size())
        if "int_mm" in ks and M > 16 and K % 8 == 0 and N % 8 == 0:
            wt = I.qweight.t()  # column-major (K, N), as _int_mm wants
            yield ("int_mm", {}, (lambda: torch._int_mm(q, wt)),
                   (lambda: sparsekit.ops.reference.int8_gemm_i32(q, I.qweight)), N * K + M * K + M * N * 4)
        refwo = (lambda: F.linear(x.float(), I.qweight.float() * I.scale[:, None]))
        if "w8a16" in ks:
            yield ("w8a16", {}, (lambda: ops.int8_weight_only_mm(x, I.qweight, I.scale)), refwo, wnb + io)
        if "w8a16_norefill" in ks:
            yield ("w8a16_norefill", {}, no_refill(lambda: ops.int8_weight_only_mm(x, I.qweight, I.scale)), refwo,
                   wnb + io)
        if "w8a16_triton" in ks and x.is_cuda:
            from sparsekit.triton import int8 as tint8
            yield ("w8a16_triton", {}, (lambda: tint8.int8_weight_only_mm(x, I.qweight, I.scale)), refwo, wnb + io)
        # the compiled tensor-core kernels whatever M, in tiles of 32 rows above 16 and (_16) in tiles of 16
        if x.is_cuda and ks & set(WIDE_AB) and hasattr(torch.ops.sparsekit, "_cuda_int8_weight_only_mm"):
            qc, sc = q.to(x.device), s.to(x.device)
            cuda_wo = (lambda: torch.ops.sparsekit._cuda_int8_weight_only_mm(x, I.qweight, I.scale, None))
            cuda_w8 = (lambda: torch.ops.sparsekit._cuda_int8_mm(qc, sc, None, I.qweight, I.scale, None, dtype))
            for name, fn, ref, nb in (("w8a16_cuda", cuda_wo, refwo, wnb + io),
                                      ("w8a8_cuda", cuda_w8, ref8, wnb + M * K + M * N * x.element_size())):
                if name in ks:
                    yield name, {}, fn, ref, nb
                if name + "_16" in ks:
                    yield name + "_16", {}, with_env(fn, "SPARSEKIT_CUDA_WIDE_TILE"), ref, nb


# ------------------------------------------------------------------------------------ report
def markdown(records, env) -> str:
    lines = [f"# Triton kernels on {env.get('device')}", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}, "
             f"driver {env.get('driver')}. Speedup = dense F.linear ms / candidate ms in the same process "
             "(eager do_bench / CUDA graph do_bench_cudagraph, medians, L2 flushed). cap = dense bytes / "
             "candidate bytes. floor: bench/gpu_floor.py's model (bytes at the H200's copy rate, FLOPs at its "
             "tensor rate); 'of floor' the fraction reached (graph time where there is one); goal: the GPU-speed "
             "issue's, x dense.", ""]
    by_shape = {}
    for r in records:
        by_shape.setdefault((r["N"], r["K"]), []).append(r)
    for (N, K), rs in by_shape.items():
        lines += [f"## {N} x {K}", "",
                  "| kernel | params | M | ms eager | ms graph | speedup eager | speedup graph | cap | GB/s "
                  "| TFLOP/s | floor (us) | of floor | goal (x) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(rs, key=lambda r: (r["kernel"], json.dumps(r["params"]), r["M"])):
            def f(v, d=3):
                return "-" if v is None else f"{v:.{d}f}"
            if not r["ok"]:
                lines.append(f"| {r['kernel']} | {json.dumps(r['params'])} | {r['M']} | "
                             f"wrong or failed: {r.get('error', '')} "
                             "| | | | | | | | | |")
                continue
            lines.append(f"| {r['kernel']} | {json.dumps(r['params'])} | {r['M']} | {f(r['ms'], 4)} | "
                         f"{f(r['graph_ms'], 4)} | {f(r['speedup'], 2)} | {f(r['speedup_graph'], 2)} | "
                         f"{f(r['cap'], 2)} | {f(r['gbps'], 0)} | {f(r['tflops'], 1)} | {f(r.get('floor_us'), 2)} | "
                         f"{f(None if r.get('of_floor') is None else 100 * r['of_floor'], 0)}% | "
                         f"{f(r.get('goal'), 1)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    a = parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench/triton_gpu.py needs a CUDA device; nothing to do here.", file=sys.stderr)
        return 2
    import sparsekit
    import sparsekit.triton

    if not sparsekit.triton.register():
        print(f"the Triton kernels are not available: {sparsekit.triton.why_not()}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
    warnings.filterwarnings("ignore", message=".*Sparse BSR tensor support is in beta.*")
    dtype = DTYPES[a.dtype]
    env = environment() if dev.type == "cuda" else {"device": "cpu-dry-run", "torch": torch.__version__}
    name = a.name or "triton_gpu_" + re.sub(r"[^A-Za-z0-9]+", "_", env.get("device", "gpu")).strip("_")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.jsonl", out / f"{name}.md"
    jpath.unlink(missing_ok=True)
    gen = torch.Generator(device=dev)
    records = []
    t0 = time.time()
    for N, K in a.shape_list:
        for M in a.m_list:
            gen.manual_seed(a.seed)
            dense = None
            for kernel, params, fn, ref, nbytes in make_cases(N, K, M, dtype, a, gen, dev):
                rec = {"kernel": kernel, "params": params, "N": N, "K": K, "M": M, "dtype": a.dtype, "ok": False,
                       "ms": None, "graph_ms": None, "speedup": None, "speedup_graph": None, "bytes": nbytes,
                       "cap": None, "gbps": None, "tflops": None}
                if kernel != "dense" and kernel not in a.kernel_list:
                    continue
                try:
                    got = fn()  # compiles and tunes, outside any timed region
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    want = ref()
                    if got.dtype in (torch.int32, torch.int8):  # exact: the reference's bytes
                        rec["ok"], rec["max_err"] = bool(torch.equal(got, want)), 0.0
                    else:
                        rec["ok"], rec["max_err"] = close(got, want, dtype)
                    if not rec["ok"]:
                        rec["error"] = f"max scaled error {rec['max_err']:.3g}"
                except Exception as e:  # e.g. a peer that does not support this M
                    rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                if rec["ok"] and not a.check_only:
                    rec["ms"], rec["graph_ms"] = bench(fn, not a.no_graphs, a.rep)
                    if kernel == "dense":
                        dense = rec
                    if dense is not None:
                        rec["speedup"] = dense["ms"] / rec["ms"]
                        if dense["graph_ms"] and rec["graph_ms"]:
                            rec["speedup_graph"] = dense["graph_ms"] / rec["graph_ms"]
                        rec["cap"] = dense["bytes"] / nbytes
                    rec["gbps"] = nbytes / (rec["ms"] * 1e-3) / 1e9
                    rec["tflops"] = 2.0 * M * N * K / (rec["ms"] * 1e-3) / 1e12
                    model = model_args(kernel, params)
                    if model is not None:
                        annotate(rec, model[0], N, K, M, x_bytes(dtype), rec["graph_ms"] or rec["ms"], **model[1])
                rec["env"] = env
                records.append(rec)
                with open(jpath, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                sp = "-" if rec["speedup"] is None else f"{rec['speedup']:.2f}x"
                spg = "-" if rec["speedup_graph"] is None else f"{rec['speedup_graph']:.2f}x"
                fl = "-" if rec.get("floor_us") is None else (
                    f"floor {rec['floor_us']:.2f} us, {100 * rec.get('of_floor', 0):.0f}% reached, goal x{rec.get('goal')}")
                print(f"[{time.time() - t0:6.0f}s] {N}x{K} M={M:5d} {kernel:10s} {json.dumps(params):32s} "
                      f"{'ok ' if rec['ok'] else 'BAD'} eager {sp:>7s} graph {spg:>7s} {fl} "
                      f"{rec.get('error', '')}", flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    mpath.write_text(markdown(records, env) + "\n")
    print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
