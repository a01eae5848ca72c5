"""The performance model of sparsekit's GPU kernels: the floor each kernel × shape can reach on the device,
from the bytes it must move and the FLOPs it must do, beside dense cuBLAS modelled the same way, and the
speedup each kernel must reach to meet the goals of the GPU-speed issue.

    python bench/gpu_floor.py                  # the table for the benchmark shapes, bf16, to stdout + markdown
    python bench/gpu_floor.py --dtype float16 --shapes 4096x4096 --m 1,16

bench/cuda_gpu.py and bench/triton_gpu.py import `floor()` and print each measured time beside its
floor, so the first GPU run says at once which kernel is how far from it.

The device (H200, measured on the one run: see /work/shared/BENCHMARKING.md): 4.3 TB/s device copy rate
(bytes read + written), 790 TFLOP/s bf16 / fp16 dense tensor rate, twice that for int8 and for 2:4
sparse tensor cores (on the useful, kept-weight FLOPs that is the same 790 / 1580). Dense `F.linear` at
M = 1 on 14336x4096 took 30.3 us there, 90 % of its floor: a format wins by reading fewer bytes at the
same rate, so the speedup it can reach is about its byte cap (dense bytes / format bytes).

Bytes are what each kernel must read and write once: its weight buffers as the format stores them
(sparsekit/formats/LAYOUTS.md), x (M x K) read, y (M x N) written, and for W8A8 formats the per-token
quantization of x (x read, int8 x and its scales written and read back). One exception: bitmap's
word_offsets (an int32 per 32-bit word, as many bytes as the bitmap) is derived data, the running count of
the words before: the compiled decode kernels read it once per row (v1, v2) or per row group and warp (v3)
and carry the count, so its floor is values + bitmap (+ 4 bytes a row); a kernel that reads word_offsets
per word (Triton's) moves a bit per weight more than this floor.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

COPY_BPS = 4.3e12      # H200 device copy rate, bytes read + written per second
TENSOR_FLOPS = 790e12  # H200 bf16 / fp16 dense tensor rate
DENSE_EFF = 0.90       # cuBLAS at M = 1 reached 90 % of its byte floor on the H200 (30.3 us, 14336x4096 bf16)

FORMATS = ("dense", "2:4", "bitmap70", "bitmap90", "bsr64_90", "int8-wo", "int8", "2:4+int8")
SHAPES = "14336x4096,4096x14336,5120x13824,4096x4096,11008x4096,4096x11008"
MS = "1,3,7,16,48,333,512,2048"

# Goals of the GPU-speed issue (H200, CUDA graphs, speedup over dense F.linear), by M bucket:
# M = 1, M = 2-16, M = 17-512, M > 512. None: no goal (auto picks another format there).
GOALS = {
    "2:4": (1.5, 1.3, 1.1, 1.3),
    "bitmap70": (2.2, 1.5, None, None),
    "bitmap90": (4.5, 3.0, None, None),
    "bsr64_90": (7.0, 5.0, 4.0, 4.0),
    "int8-wo": (1.8, 1.6, 1.0, None),
    "2:4+int8": (2.7, 2.5, 2.0, 2.0),
    "int8": (1.6, 1.6, 1.5, 1.6),
}


def goal(fmt: str, M: int):
    g = GOALS.get(fmt)
    if g is None:
        return None
    return g[0 if M == 1 else 1 if M <= 16 else 2 if M <= 512 else 3]


# The table's names: (format, density of kept weights, BSR block)
NAMED = {"bitmap70": ("bitmap", 0.3, None), "bitmap90": ("bitmap", 0.1, None), "bsr64_90": ("bsr", 0.1, 64)}


def weight_bytes(fmt: str, N: int, K: int, e: int, density: float = 1.0, block: int = 64) -> float:
    """Bytes of the weight a kernel must read: the buffers as sparsekit stores them, but for bitmap one
    word_offsets entry per row (e: bytes per value of the activations' dtype; density: the fraction of weights
    kept for bitmap / csr, of blocks kept for bsr)."""
    if fmt == "dense":
        return N * K * e
    if fmt == "2:4":  # half the values + 4 bits of positions per kept pair
        return N * K / 2 * e + N * K / 8
    if fmt == "bitmap":  # kept values + 1 bit per weight (word padded) + the row's first int32 offset
        return density * N * K * e + N * math.ceil(K / 32) * 4 + N * 4
    if fmt == "csr":  # kept values + an int32 column each + row pointers
        return density * N * K * (e + 4) + (N + 1) * 4
    if fmt == "bsr":  # b x b blocks: values + a column index per block + row pointers
        nblocks = density * (N // block) * (K // block)
        return nblocks * block * block * e + nblocks * 4 + (N // block + 1) * 4
    if fmt in ("int8-wo", "int8"):  # int8 values + a float32 scale per output channel
        return N * K + N * 4
    if fmt == "2:4+int8":
        return N * K / 2 + N * K / 8 + N * 4
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS} or bitmap / csr / bsr")


def floor(fmt: str, N: int, K: int, M: int, e: int = 2, density: float | None = None, block: int = 64) -> dict:
    """The model of one kernel: bytes, useful FLOPs, floor in microseconds, the dense floor, the byte cap
    (the best speedup a kernel streaming at dense's rate can reach), the goal and the fraction of its
    floor the kernel must reach to meet the goal against a dense kernel at DENSE_EFF of its floor.
    fmt: one of FORMATS, or bitmap / csr / bsr with `density` (and `block`)."""
    name = fmt
    if fmt in NAMED:
        fmt, density, block = NAMED[fmt][0], NAMED[fmt][1], NAMED[fmt][2] or block
    if density is None:
        density = 0.5 if fmt in ("2:4", "2:4+int8") else 1.0
    io = M * K * e + M * N * e
    quant = M * K * e + 2 * (M * K + M * 4) if fmt in ("int8", "2:4+int8") else 0
    nbytes = weight_bytes(fmt, N, K, e, density, block) + io + quant
    flops = 2.0 * M * N * K * density
    rate = TENSOR_FLOPS * (2 if fmt in ("int8", "2:4+int8") else 1)
    us = max(nbytes / COPY_BPS, flops / rate) * 1e6
    d_bytes = N * K * e + io
    d_us = max(d_bytes / COPY_BPS, 2.0 * M * N * K / TENSOR_FLOPS) * 1e6
    g = goal(name, M)
    cap = d_us / us
    return dict(fmt=name, N=N, K=K, M=M, bytes=nbytes, flops=flops, floor_us=us, dense_floor_us=d_us, cap=cap,
                bound="bytes" if nbytes / COPY_BPS >= flops / rate else "flops", goal=g,
                # the fraction of its floor the kernel must reach for the goal, dense running at DENSE_EFF
                needed_of_floor=None if g is None else g * us / (d_us / DENSE_EFF))


def annotate(rec: dict, fmt: str, N: int, K: int, M: int, e: int, measured_ms, **kw) -> dict:
    """Adds the model's floor and the measured fraction of it to a benchmark record."""
    f = floor(fmt, N, K, M, e, **kw)
    rec.update(floor_us=f["floor_us"], goal=f["goal"], needed_of_floor=f["needed_of_floor"])
    if measured_ms:
        rec["of_floor"] = f["floor_us"] / (measured_ms * 1e3)
    return rec


def table(shapes, ms, e: int, fmts=FORMATS):
    rows = []
    for N, K in shapes:
        for M in ms:
            for fmt in fmts:
                f = floor(fmt, N, K, M, e)
                rows.append([f"{N}x{K}", M, fmt, f"{f['bytes'] / 1e6:.2f}", f"{f['floor_us']:.2f}", f["bound"],
                             f"{f['cap']:.2f}", "-" if f["goal"] is None else f"{f['goal']:.1f}",
                             "-" if f["needed_of_floor"] is None else f"{f['needed_of_floor']:.0%}"])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--m", default=MS)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--md", default=str(Path(__file__).resolve().parent / "results" / "gpu_floor.md"),
                   help="markdown output ('' for none)")
    a = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",") if s]
    ms = [int(m) for m in a.m.split(",") if m]
    head = ["N x K", "M", "format", "MB moved", "floor (us)", "bound", "cap (x dense)", "goal (x)",
            "needed of floor"]
    rows = table(shapes, ms, 2)  # bf16 and fp16 alike: 2 bytes per value
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))
    unreachable = [r for r in rows if r[8] != "-" and float(r[8].rstrip("%")) > 100]
    if a.md:
        lines = [f"# Floors of the GPU kernels on the H200 ({a.dtype})", "",
                 f"Generated by `python bench/gpu_floor.py` (the model: {COPY_BPS / 1e12:.1f} TB/s device copy, "
                 f"{TENSOR_FLOPS / 1e12:.0f} TFLOP/s dense tensor rate, 2x for int8 and 2:4). *Not a measurement*: "
                 "the floor each kernel can reach, the byte cap over dense, the goal of the GPU-speed issue, and "
                 f"the fraction of its floor the kernel must reach for the goal while dense runs at "
                 f"{DENSE_EFF:.0%} of its own (as measured at M = 1). Above 100 %: the goal is out of reach of the "
                 "format as stored.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
        Path(a.md).parent.mkdir(parents=True, exist_ok=True)
        Path(a.md).write_text("\n".join(lines) + "\n")
    print(f"gpu_floor: {len(rows)} kernel x shape x M cells, {len(unreachable)} whose goal needs more than 100 % "
          "of the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
