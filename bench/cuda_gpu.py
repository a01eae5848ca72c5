"""GPU benchmark of the CUDA format kernels (csrc/cuda) by the rules of /work/shared/BENCHMARKING.md.

For each weight shape (LLaMA-7B-like and Mistral-like N x K), activation rows M and format it checks the
result against the float64 reference first, then times with triton.testing.do_bench (median, L2 flushed)
and do_bench_cudagraph (graph replays), beside, in the same process, same shapes and dtype:
  dense       F.linear (cuBLAS) in fp16 - the baseline of every speedup
  2:4         sparsekit sparse24_mm (CUDA), sparsekit cslt_mm (cuSPARSELt with cached plans, weight compressed
              once) and torch.sparse.to_sparse_semi_structured (PyTorch's cuSPARSELt / CUTLASS)
  2:4+int8    W8A8 with per-token quantization and scaling included: quantize_per_token + sparse24_int8_mm,
              and quantize_per_token + cslt_mm (int8 cuSPARSELt, alpha = weight scales, epilogue)
  2:4 own     sparsekit sparse24_mm in each design of --decode-variants (v1 FMAs; v2 tensor cores from M = 2,
              the default; v3 tensor cores at every M)
  bitmap      sparsekit bitmap_mm as routed, the compiled decode kernel in each design of --decode-variants
              (SPARSEKIT_CUDA_DECODE=v2, the batched one and the default; v1, the first), its column-list
              kernel (variant 4: what a bitmap layer prepared on CUDA runs up to 35 % density), the Triton
              one too when it imports
  bsr         sparsekit bsr_mm as routed, the compiled kernel in each design of --decode-variants (v2: the
              tensor-core decode kernel where it applies, v1: the simple one), the Triton one when it imports
  csr         sparsekit csr_mm (CUDA) and torch.sparse.mm on a CSR tensor (cuSPARSE)
Each record carries the bytes the format must move, the cap (dense bytes / format bytes: the best a
memory-bound kernel can gain), the achieved GB/s, the speedup over dense, and the performance model of
bench/gpu_floor.py: the kernel's floor on the device, the fraction of it reached (`of_floor`), the goal of
the GPU-speed issue and the fraction of the floor that goal needs. `--pack` also times the GPU
packers against the CPU from_dense and extrapolates to a 7B-parameter model.

Writes bench/results/cuda_layers_<device>.jsonl (one JSON record per configuration, with the
environment) and a markdown table beside it.

    python bench/cuda_gpu.py                      # the full sweep (tens of minutes)
    python bench/cuda_gpu.py --quick              # 2 shapes, M in {1, 16}, fewer formats
    python bench/cuda_gpu.py --pack               # also the packers
    python bench/cuda_gpu.py --cslt               # the cuSPARSELt study: LLaMA-7B shapes, M up to 8192
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

from gpu_floor import annotate  # bench/gpu_floor.py: the floor of each kernel x shape

OUT = Path(__file__).resolve().parent / "results"
SHAPES = "4096x4096,11008x4096,4096x11008,14336x4096,4096x14336"
MS = "1,2,3,4,7,8,16,32,33,64,128,512,2048"
CSLT_SHAPES = "4096x4096,11008x4096,4096x11008"
CSLT_MS = "1,16,128,512,2048,8192"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=SHAPES, help="N x K weight shapes, comma separated (default: %(default)s)")
    p.add_argument("--m", default=MS, help="activation rows M (default: %(default)s)")
    p.add_argument("--formats", default="2:4,bitmap,bsr,csr", help="formats to time (default: %(default)s)")
    p.add_argument("--bitmap-density", default="0.5,0.3,0.1", help="bitmap densities (default: %(default)s)")
    p.add_argument("--decode-variants", default="v2,v1",
                   help="designs of the CUDA decode kernels to time, each under SPARSEKIT_CUDA_DECODE (bitmap: v1, "
                        "v2; 2:4: v1 FMAs, v2 tensor cores from M = 2, v3 tensor cores at every M; default: "
                        "%(default)s)")
    p.add_argument("--refill-ab", action="store_true",
                   help="also time the 2:4 kernel in each design of --decode-variants with SPARSEKIT_CUDA_REFILL=0 "
                        "(the order before the weight registers were refilled while consumed; csrc/cuda/README.md)")
    p.add_argument("--bitmap-shapes", default="",
                   help="also time the batched bitmap kernel (v2) forced to each of these batch shapes "
                        "(SPARSEKIT_CUDA_BITMAP_SHAPE: wide, wide-dense, sparse, dense; csrc/cuda/README.md), so that "
                        "the density thresholds between them can be set from measurements (default: none)")
    p.add_argument("--bsr", default="16:0.3,64:0.1", help="BSR block:density pairs (default: %(default)s)")
    p.add_argument("--csr-density", default="0.1", help="CSR densities (default: %(default)s)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--quick", action="store_true", help="2 shapes, M in {1, 16}, one density per format")
    p.add_argument("--pack", action="store_true", help="also time the GPU packers against the CPU from_dense")
    p.add_argument("--cslt", action="store_true",
                   help=f"the cuSPARSELt study: shapes {CSLT_SHAPES}, M in {CSLT_MS}, formats 2:4 and 2:4+int8")
    p.add_argument("--out", default=str(OUT), help="output folder (default bench/results)")
    p.add_argument("--name", default="cuda_layers", help="results file stem (the device name is appended)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def model_args(key: str) -> tuple:
    """(format, keyword arguments) of bench/gpu_floor.floor for a candidate key of this script."""
    if key.startswith("bitmap") or key.startswith("csr"):
        return key.split()[0], {"density": float(key.split("d=")[1])}
    if key.startswith("bsr"):
        return "bsr", {"density": float(key.split("d=")[1]), "block": int(key.split()[1].split("x")[0])}
    return key, {}


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()


def main(argv=None):
    a = parse_args(argv)
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("bench/cuda_gpu.py: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    import triton.testing as tt

    import sparsekit
    from sparsekit import formats
    from sparsekit.bench.timing import environment, markdown_table
    from sparsekit.ops import reference

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    warnings.filterwarnings("ignore", message=".*semi-structured sparsity.*")
    torch.manual_seed(a.seed)
    dev = torch.device("cuda")
    dtype = getattr(torch, a.dtype)
    env = environment(dev)
    for op in ("sparse24_mm", "bitmap_mm", "bsr_mm", "csr_mm"):
        line = [ln for ln in torch._C._dispatch_dump(f"sparsekit::{op}").splitlines() if ln.startswith("CUDA:")]
        env[f"{op}_cuda_kernel"] = line[0].split("registered at ", 1)[1].split(" ::")[0] if line else None
    triton_ok = False
    try:
        import sparsekit.triton as skt

        triton_ok = skt.available()
    except Exception:
        pass
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    ms = [int(m) for m in a.m.split(",")]
    fmts = a.formats.split(",")
    bm_dens = [float(d) for d in a.bitmap_density.split(",")]
    bsr_cfg = [(int(b.split(":")[0]), float(b.split(":")[1])) for b in a.bsr.split(",")]
    csr_dens = [float(d) for d in a.csr_density.split(",")]
    if a.cslt:
        shapes = [tuple(int(v) for v in s.split("x")) for s in CSLT_SHAPES.split(",")]
        ms, fmts = [int(m) for m in CSLT_MS.split(",")], ["2:4", "2:4+int8"]
    if a.quick:
        shapes, ms, bm_dens, bsr_cfg, csr_dens = shapes[:2], [1, 16], bm_dens[:1], bsr_cfg[:1], csr_dens[:1]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{a.name}_{slug(env['device'])}"
    jpath, mpath = out / f"{stem}.jsonl", out / f"{stem}.md"
    jpath.unlink(missing_ok=True)
    esz = torch.finfo(dtype).bits // 8

    def bench(fn):
        fn()
        torch.cuda.synchronize()
        eager = tt.do_bench(fn, return_mode="median")
        try:
            graph = tt.do_bench_cudagraph(fn, return_mode="median")
        except Exception:
            graph = None
        return float(eager), None if graph is None else float(graph)

    def rel_err(y, ref):
        y = y.double()
        return float((y - ref).norm() / ref.norm().clamp_min(1e-30))

    tol = {torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    records = []

    def emit(rec):
        rec = dict(rec, env=env)
        records.append(rec)
        with open(jpath, "a") as f:
            f.write(json.dumps(rec) + "\n")
        sp = rec.get("speedup")
        sg = rec.get("speedup_graph")
        fl = rec.get("floor_us")
        print(f"{rec['shape']:>12} M={rec['M']:<5} {rec['impl']:<34} "
              f"{'%.4f' % rec['ms'] if rec.get('ms') else '-':>8} ms  "
              f"{'%.4f' % rec['graph_ms'] if rec.get('graph_ms') else '-':>8} ms(g)  "
              f"x{sp if sp is None else round(sp, 2)} x{sg if sg is None else round(sg, 2)}(g)  "
              f"cap x{rec.get('cap') and round(rec['cap'], 2)}  "
              f"floor {'-' if fl is None else '%.2f us' % fl} ({'-' if rec.get('of_floor') is None else '%.0f%%' % (100 * rec['of_floor'])} "
              f"reached, goal x{rec.get('goal')})  {rec.get('status', 'ok')}", flush=True)

    for N, K in shapes:
        w = torch.randn(N, K, device=dev, dtype=dtype)
        # the weights and packed formats of this shape
        cands = {}
        if "2:4" in fmts:
            score = torch.rand(N, K // 4, 4, device=dev)
            m24 = torch.zeros_like(score, dtype=torch.bool).scatter_(2, score.topk(2, -1).indices, True).reshape(N, K)
            cands["2:4"] = (m24, formats.Sparse24Weight.from_dense(w, m24))
        if "2:4+int8" in fmts:
            score = torch.rand(N, K // 4, 4, device=dev)
            m24 = torch.zeros_like(score, dtype=torch.bool).scatter_(2, score.topk(2, -1).indices, True).reshape(N, K)
            cands["2:4+int8"] = (m24, formats.Sparse24Int8Weight.from_dense(w, m24))
        if "bitmap" in fmts:
            for d in bm_dens:
                m = torch.rand(N, K, device=dev) < d
                cands[f"bitmap d={d}"] = (m, formats.BitmapWeight.from_dense(w, m))
        if "bsr" in fmts:
            for b, d in bsr_cfg:
                bm = torch.rand(N // b, K // b, device=dev) < d
                m = bm.repeat_interleave(b, 0).repeat_interleave(b, 1)
                cands[f"bsr {b}x{b} d={d}"] = (m, formats.BSRWeight.from_dense(w, m, (b, b)))
        if "csr" in fmts:
            for d in csr_dens:
                m = torch.rand(N, K, device=dev) < d
                cands[f"csr d={d}"] = (m, formats.CSRWeight.from_dense(w, m))
        for M in ms:
            x = torch.randn(M, K, device=dev, dtype=dtype)
            io_bytes = (M * K + M * N) * esz
            dense_bytes = N * K * esz + io_bytes
            base = dict(shape=f"{N}x{K}", N=N, K=K, M=M, dtype=a.dtype)
            d_ms, d_g = bench(lambda: F.linear(x, w))
            emit(annotate(dict(base, impl="dense F.linear (cuBLAS)", fmt="dense", ms=d_ms, graph_ms=d_g, speedup=1.0,
                               speedup_graph=1.0, bytes=dense_bytes, cap=1.0, gbps=dense_bytes / d_ms / 1e6,
                               tflops=2 * M * N * K / d_ms / 1e9), "dense", N, K, M, esz, d_g or d_ms))
            for key, (mask, f) in cands.items():
                wm = (w * mask)
                ref = x.double() @ wm.double().T
                # the format's own buffers (a bitmap weight's column list, made on CUDA below a density, is counted
                # only in the records of the kernel that reads it)
                fmt_bytes = sum(t.numel() * t.element_size() for t in f.buffers().values()) + io_bytes
                impls = []
                if key == "2:4":
                    impls.append(("sparsekit sparse24_mm (CUDA)", lambda f=f: sparsekit.ops.sparse24_mm(x, f.values, f.meta)))
                    # each design of the own kernel (v1 FMAs; v2 tensor cores from M = 2; v3 tensor cores at every M)
                    for var in [v for v in a.decode_variants.split(",") if v]:
                        impls.append((f"sparsekit sparse24_mm decode {var}",
                                      lambda f=f: sparsekit.ops.sparse24_mm(x, f.values, f.meta),
                                      {"SPARSEKIT_CUDA_DECODE": var}))
                        if a.refill_ab:
                            impls.append((f"sparsekit sparse24_mm decode {var} no refill",
                                          lambda f=f: sparsekit.ops.sparse24_mm(x, f.values, f.meta),
                                          {"SPARSEKIT_CUDA_DECODE": var, "SPARSEKIT_CUDA_REFILL": "0"}))
                    impls += cslt_impls(sparsekit.ops, x, wm, N, emit, dict(base, fmt=key))
                elif key == "2:4+int8":
                    impls += int8_24_impls(sparsekit.ops, x, f, N, emit, dict(base, fmt=key))
                    try:
                        from torch.sparse import to_sparse_semi_structured

                        ws = to_sparse_semi_structured(wm)
                        impls.append(("torch to_sparse_semi_structured", lambda ws=ws: F.linear(x, ws)))
                    except Exception as e:  # not supported on this device / shape
                        emit(dict(base, impl="torch to_sparse_semi_structured", fmt=key, status=f"unsupported: {e}"[:200]))
                elif key.startswith("bitmap"):
                    impls.append((f"sparsekit bitmap_mm ({env['bitmap_mm_cuda_kernel']})",
                                  lambda f=f: sparsekit.ops.bitmap_mm(x, f.bitmap, f.word_offsets, f.values)))
                    # the compiled decode kernel itself (whatever bitmap_mm routes this M to), each design
                    for var in [v for v in a.decode_variants.split(",") if v]:
                        impls.append((f"sparsekit compiled bitmap decode {var}",
                                      lambda f=f: torch.ops.sparsekit._cuda_bitmap_mm(x, f.bitmap, f.word_offsets,
                                                                                     f.values, None),
                                      {"SPARSEKIT_CUDA_DECODE": var}))
                    if M <= 4 and "v2" in a.decode_variants.split(","):
                        # v2 at M <= 4 walks each lane's bits (the default); the list and chunk consumer of larger M
                        impls.append(("sparsekit compiled bitmap decode v2 list",
                                      lambda f=f: torch.ops.sparsekit._cuda_bitmap_mm(x, f.bitmap, f.word_offsets,
                                                                                     f.values, None),
                                      {"SPARSEKIT_CUDA_DECODE": "v2", "SPARSEKIT_CUDA_BITMAP_CONSUMER": "list"}))
                    # the column-list kernel (variant 4: no scan, no compaction), on the list of this weight; it reads
                    # values + list (4 bytes a kept value in 16 bits) + a row's offsets, not the bitmap
                    cols = reference.bitmap_columns(f.bitmap, K)
                    cbytes = f.values.numel() * esz + 2 * f.values.numel() + 8 * N + io_bytes
                    impls.append(("sparsekit compiled bitmap decode column list",
                                  lambda f=f, cols=cols: torch.ops.sparsekit._cuda_bitmap_columns_mm(
                                      x, f.bitmap, f.word_offsets, f.values, cols, None),
                                  {}, {"bytes": cbytes, "cap": dense_bytes / cbytes}))
                    for shp in [v for v in a.bitmap_shapes.split(",") if v]:
                        impls.append((f"sparsekit compiled bitmap decode v2 {shp}",
                                      lambda f=f: torch.ops.sparsekit._cuda_bitmap_mm(x, f.bitmap, f.word_offsets,
                                                                                     f.values, None),
                                      {"SPARSEKIT_CUDA_DECODE": "v2", "SPARSEKIT_CUDA_BITMAP_SHAPE": shp}))
                    if triton_ok:
                        from sparsekit.triton import bitmap as tbm

                        impls.append(("sparsekit triton bitmap_mm",
                                      lambda f=f: tbm.bitmap_mm(x, f.bitmap, f.word_offsets, f.values, None)))
                elif key.startswith("bsr"):
                    impls.append((f"sparsekit bsr_mm ({env['bsr_mm_cuda_kernel']})",
                                  lambda f=f: sparsekit.ops.bsr_mm(x, f.crow_indices, f.col_indices, f.values, N)))
                    # the compiled kernel itself: v2 its tensor-core path where it applies, v1 the simple one
                    for var in [v for v in a.decode_variants.split(",") if v in ("v1", "v2")]:
                        impls.append((f"sparsekit compiled bsr {var}",
                                      lambda f=f: torch.ops.sparsekit._cuda_bsr_mm(x, f.crow_indices, f.col_indices,
                                                                                  f.values, N, None),
                                      {"SPARSEKIT_CUDA_DECODE": var}))
                    if triton_ok:
                        from sparsekit.triton import bsr as tbs

                        impls.append(("sparsekit triton bsr_mm",
                                      lambda f=f: tbs.bsr_mm(x, f.crow_indices, f.col_indices, f.values, N, None)))
                else:
                    impls.append(("sparsekit csr_mm (CUDA)",
                                  lambda f=f: sparsekit.ops.csr_mm(x, f.crow_indices, f.col_indices, f.values, N)))
                    try:
                        wc = torch.sparse_csr_tensor(f.crow_indices.long(), f.col_indices.long(), f.values, (N, K))
                        xt = x.T.contiguous()
                        torch.sparse.mm(wc, xt)
                        impls.append(("torch.sparse.mm CSR (cuSPARSE)", lambda wc=wc, xt=xt: torch.sparse.mm(wc, xt).T))
                    except Exception as e:
                        emit(dict(base, impl="torch.sparse.mm CSR (cuSPARSE)", fmt=key, status=f"unsupported: {e}"[:200]))
                for name, fn, *more in impls:
                    # an environment for the call (the decode design): set for the check, the eager timing and
                    # the graph capture, restored after; then what the record says otherwise (its bytes)
                    knobs = more[0] if more else {}
                    saved = {k: os.environ.get(k) for k in knobs}
                    os.environ.update(knobs)
                    rec = dict(base, impl=name, fmt=key, bytes=fmt_bytes, cap=dense_bytes / fmt_bytes, **knobs,
                               **(more[1] if len(more) > 1 else {}))
                    try:
                        try:
                            err = rel_err(fn(), ref)  # correctness first
                        except Exception as e:
                            emit(dict(rec, status=f"error: {type(e).__name__}: {e}"[:200]))
                            continue
                        rec["rel_err"] = err
                        tol_here = tol if key != "2:4+int8" else INT8_TOL  # int8 quantization error included
                        if not err <= tol_here or math.isnan(err):
                            emit(dict(rec, status=f"WRONG: relative error {err:.3g} > {tol_here}"))
                            continue
                        t, g = bench(fn)
                    finally:
                        for k, v in saved.items():
                            if v is None:
                                os.environ.pop(k, None)
                            else:
                                os.environ[k] = v
                    mfmt, mkw = model_args(key)
                    emit(annotate(dict(rec, ms=t, graph_ms=g, speedup=d_ms / t,
                                       speedup_graph=(d_g / g) if (g and d_g) else None,
                                       gbps=rec["bytes"] / t / 1e6),
                                  mfmt, N, K, M, esz, g or t, **mkw))
        del cands
        torch.cuda.empty_cache()

    if a.pack:
        pack_records(a, env, jpath, records, dtype)

    rows = []
    for r in records:
        if "ms" not in r or r.get("fmt") == "pack":
            continue
        rows.append([r["shape"], r["M"], r["impl"], r["fmt"], f"{r['ms']:.4f}",
                     "-" if r.get("graph_ms") is None else f"{r['graph_ms']:.4f}", f"{r['speedup']:.2f}",
                     "-" if r.get("speedup_graph") is None else f"{r['speedup_graph']:.2f}", f"{r['cap']:.2f}",
                     f"{r['gbps']:.0f}", "-" if r.get("floor_us") is None else f"{r['floor_us']:.2f}",
                     "-" if r.get("of_floor") is None else f"{r['of_floor']:.0%}",
                     "-" if r.get("goal") is None else f"{r['goal']:.1f}"])
    md = [f"# CUDA format kernels on {env['device']}", "",
          f"torch {env['torch']}, CUDA {env['cuda']}, driver {env.get('driver')}, triton {env.get('triton')}; "
          f"{a.dtype}; medians of triton.testing.do_bench (L2 flushed) and do_bench_cudagraph (g). "
          "speedup = dense F.linear ms / ms in the same process; cap = dense bytes / format bytes; floor: "
          "bench/gpu_floor.py's model (bytes at the H200's copy rate, FLOPs at its tensor rate), 'of floor' the "
          "fraction of it reached (graph time where there is one); goal: the GPU-speed issue's, x dense.", "",
          markdown_table(["N x K", "M", "impl", "format", "ms", "ms (g)", "speedup", "speedup (g)", "cap", "GB/s",
                          "floor (us)", "of floor", "goal (x)"], rows)]
    fastest = fastest_per_cell(records)
    if fastest:
        md += ["", "## Fastest per cell (for the routing by M)", "",
               "The fastest implementation of each format, shape and M (graph time where there is one), and the "
               "one the op's routing picks (`as routed`) beside it: a cell whose routed / fastest is below 1 is one "
               "the routing should send elsewhere, by this run.", "",
               markdown_table(["format", "N x K", "M", "fastest", "speedup", "as routed", "speedup",
                               "routed / fastest"], fastest)]
    pk = [r for r in records if r.get("fmt") == "pack"]
    if pk:
        md += ["", "## Packers (GPU op vs CPU from_dense)", "",
               markdown_table(["format", "N x K", "GPU ms", "CPU ms", "7B model GPU s", "7B model CPU s"],
                              [[r["impl"], r["shape"], f"{r['ms']:.3f}", f"{r['cpu_ms']:.1f}", f"{r['model_7b_s']:.2f}",
                                f"{r['model_7b_cpu_s']:.1f}"] for r in pk])]
    mpath.write_text("\n".join(md) + "\n")
    print(f"wrote {jpath} and {mpath}")
    return 0


# the implementation each format's op routes to, by the prefix of its name (2:4+int8 has none: its format picks)
ROUTED = ("sparsekit sparse24_mm (CUDA)", "sparsekit bitmap_mm (", "sparsekit bsr_mm (", "sparsekit csr_mm (CUDA)")


def fastest_per_cell(records):
    """Rows (format, shape, M, fastest impl, its speedup, the routed impl, its speedup, routed / fastest) over the
    timed, non-dense records, by graph time where there is one (else eager)."""
    def t(r):
        return r.get("graph_ms") or r["ms"]

    def sp(r):
        v = r.get("speedup_graph") or r.get("speedup")
        return "-" if v is None else f"{v:.2f}"

    cells = {}
    for r in records:
        if "ms" in r and r.get("fmt") not in ("dense", "pack"):
            cells.setdefault((r["fmt"], r["shape"], r["M"]), []).append(r)
    rows = []
    for (fmt, shape, M), rs in cells.items():
        best = min(rs, key=t)
        routed = next((r for r in rs if r["impl"].startswith(ROUTED)), None)
        rows.append([fmt, shape, M, best["impl"], sp(best), "-" if routed is None else routed["impl"],
                     "-" if routed is None else sp(routed), "-" if routed is None else f"{t(best) / t(routed):.2f}"])
    return rows


INT8_TOL = 3e-2  # relative error of W8A8 (per-channel weights, per-token activations) against the float product


def cslt_impls(ops, x, wm, N, emit, rec):
    """sparsekit's cuSPARSELt path: the weight compressed once (outside the timing), plans cached in C++."""
    if not ops.cslt_available():
        emit(dict(rec, impl="sparsekit cslt_mm (cuSPARSELt)", status="unavailable: built without cuSPARSELt"))
        return []
    try:
        c = ops.cslt_compress(wm)
    except Exception as e:  # a shape cuSPARSELt refuses
        emit(dict(rec, impl="sparsekit cslt_mm (cuSPARSELt)", status=f"unsupported: {e}"[:200]))
        return []
    return [("sparsekit cslt_mm (cuSPARSELt, cached plans)", lambda: ops.cslt_mm(x, c, N))]


def int8_24_impls(ops, x, f, N, emit, rec):
    """W8A8 2:4, quantization of x and every scaling inside the timed call, so it compares with fp16 dense."""
    from sparsekit.ops import reference

    def own():
        q, s, _ = ops.quantize_per_token(x, True)
        return ops.sparse24_int8_mm(q, s, None, f.values, f.meta, f.scale, None, x.dtype)

    impls = [("sparsekit 2:4+int8 quantize + sparse24_int8_mm", own)]
    import torch

    if hasattr(torch.ops.sparsekit, "_cuda_sparse24_int8_mm") and torch.cuda.get_device_capability()[0] >= 8:
        def compiled():  # the W8A8 tensor-core decode kernel (csrc/cuda/w8a8_kernel.cu), what M <= 16 runs
            q, s, _ = ops.quantize_per_token(x, True)
            return torch.ops.sparsekit._cuda_sparse24_int8_mm(q, s, None, f.values, f.meta, f.scale, None, x.dtype)

        impls.append(("sparsekit 2:4+int8 quantize + compiled W8A8 kernel", compiled))
        if hasattr(torch.ops.sparsekit, "_cuda_sparse24_int8_linear"):
            def one_call():  # what the 2:4+int8 format runs at M <= 16: x quantized inside the W8A8 kernel
                return torch.ops.sparsekit._cuda_sparse24_int8_linear(x, f.values, f.meta, f.scale, None)

            impls.append(("sparsekit 2:4+int8 one-call linear (compiled, quantization fused)", one_call))
    if not ops.cslt_available():
        return impls
    try:
        c = ops.cslt_compress(reference.sparse24_to_dense(f.values, f.meta, x.shape[1]))
    except Exception as e:
        emit(dict(rec, impl="sparsekit 2:4+int8 cslt_mm (cuSPARSELt)", status=f"unsupported: {e}"[:200]))
        return impls

    def cslt():
        q, s, _ = ops.quantize_per_token(x, True)
        return ops.cslt_mm(q, c, N, None, f.scale, s, x.dtype)

    return impls + [("sparsekit 2:4+int8 quantize + cslt_mm (cuSPARSELt)", cslt)]


def pack_records(a, env, jpath, records, dtype):
    """GPU pack ops vs CPU from_dense on 4096x4096 and 11008x4096, extrapolated to LLaMA-7B (32 layers of
    4 x 4096^2 + 3 x 11008 x 4096 weights)."""
    import torch

    from sparsekit import formats
    from sparsekit.ops import packing

    if not hasattr(torch.ops.sparsekit, "pack_sparse24"):
        print("the pack ops are not defined (sparsekit/ops/_schemas.py); skipping --pack")
        return
    layers = {(4096, 4096): 4 * 32, (11008, 4096): 3 * 32}
    for (N, K), count in layers.items():
        w = torch.randn(N, K, dtype=dtype)
        score = torch.rand(N, K // 4, 4)
        m24 = torch.zeros_like(score, dtype=torch.bool).scatter_(2, score.topk(2, -1).indices, True).reshape(N, K)
        mu = torch.rand(N, K) < 0.3
        for fmt, mask, cpu in [("2:4", m24, lambda w, m: formats.Sparse24Weight.from_dense(w, m)),
                               ("bitmap", mu, lambda w, m: formats.BitmapWeight.from_dense(w, m)),
                               ("csr", mu, lambda w, m: formats.CSRWeight.from_dense(w, m)),
                               ("bsr", mu, lambda w, m: formats.BSRWeight.from_dense(w, m, (16, 16)))]:
            wg, mg = w.cuda(), mask.cuda()
            packing.pack(fmt, wg, mg)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            reps = 5
            for _ in range(reps):
                got = packing.pack(fmt, wg, mg)
            torch.cuda.synchronize()
            g_ms = (time.perf_counter() - t0) / reps * 1e3  # includes the op's own nnz sync, as a user sees it
            t0 = time.perf_counter()
            want = cpu(w, mask)
            c_ms = (time.perf_counter() - t0) * 1e3
            same = all(torch.equal(x.cpu().view(torch.uint8) if x.dtype.is_floating_point else x.cpu(),
                                   y.view(torch.uint8) if y.dtype.is_floating_point else y)
                       for x, y in zip(got.buffers().values(), want.buffers().values()))
            rec = dict(fmt="pack", impl=fmt, shape=f"{N}x{K}", M=0, ms=g_ms, cpu_ms=c_ms, bit_identical=same,
                       model_7b_s=sum(c * g_ms for c in layers.values()) / 1e3,
                       model_7b_cpu_s=sum(c * c_ms for c in layers.values()) / 1e3, env=env)
            records.append(rec)
            with open(jpath, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"pack {fmt:7} {N}x{K}: GPU {g_ms:.3f} ms, CPU {c_ms:.1f} ms, bit-identical {same}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
