#!/usr/bin/env python
"""A model, not a measurement: the bytes each small-M decode kernel (csrc/cuda/bitmap_kernel.cu,
sparse24_kernel.cu) keeps in flight per SM on an H200, against what Little's law asks for the copy rate.

    python bench/decode_inflight.py            # markdown table to stdout (bf16, the GPU-speed shapes, M 1/4/16)

    needed per SM  = rate x latency / SMs                      (4.3 TB/s, 132 SMs, 600-900 ns loaded latency)
    in flight / SM = warps resident per SM x bytes one warp has requested and not yet used, at its peak

Warps per SM come from the launch plan as the host code makes it (choose_chunking: threads, dynamic shared
bytes; launch_decode_grid: blocks = min(resident, rows / warps per block)) and the occupancy the registers
allow, read from bench/results/gpu_static_cuda.jsonl (sm_90a; `python bench/gpu_static.py --cuda` writes it),
with an H200's 228 KB shared memory and 64 K registers per SM. Bytes per warp at the peak of one step:

* bitmap v1: one 1024-column tile's values (density x 1024 x 2 bytes, at most the 4 x 512 bytes issued before
  use) + the next tile's 32 bitmap words (128 bytes);
* bitmap v2: D tiles' values (each at most the P x 512 bytes issued before use) + the next batch's words
  (D x 128 bytes, D x 256 for 2048-column tiles; D, P: V2Shape in bitmap_kernel.cu: wide when the density is
  <= 10.6 %, wide-dense when <= 31.9 %, else dense);
* bitmap column list (variant 4, bitmap_columns_kernel): the next batch, issued before the current one is
  consumed: kP 16-byte chunks of values and their kP 16-byte chunks of columns per lane (kP = 2 up to M = 2,
  2 KB a warp; else 4, 4 KB), less when the row's run in the K chunk is shorter (density x Kc entries of 4 bytes);
* 2:4 (the FMA kernel: M = 1 in float16 / bfloat16, every M under SPARSEKIT_CUDA_DECODE=v1): the next tile,
  issued before the current one is consumed: 8 x 512 bytes of values + 512 bytes of metadata (less when the
  row's chunk is shorter).

The peak is an upper bound of the average where a warp waits for its loads, then computes with none in flight
(v1 every tile; v2 every batch of D tiles); the column list and 2:4 have their next batch or tile in flight
while they compute. Nothing here ran on a GPU.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RATE, SMS, LAT = 4.3e12, 132, (600e-9, 900e-9)
SMEM_SM, SMEM_OPTIN, REGS_SM, MAX_WARPS = 233472, 232448, 65536, 64
SHAPES = [(14336, 4096), (4096, 14336), (5120, 13824)]
E = 2  # bf16


def regs_table():
    out = {}
    p = REPO / "bench" / "results" / "gpu_static_cuda.jsonl"
    for line in p.read_text().splitlines():
        r = json.loads(line)
        if r.get("arch") == "sm_90a" and "kernel" in r:
            out[r["kernel"]] = r["regs"]
    return out


def xtile_bytes(mt, cols, span):
    col = mt * E
    access = min(col, 16)
    pad = max(access, 4)
    return math.ceil(math.ceil(cols / span) * (span * col + pad) / 16) * 16


def xtile_flat_bytes(mt, cols):
    """XTile<T, MT, 0>: no spans, no padding (the column-list kernel's)."""
    return math.ceil(cols * mt * E / 16) * 16


def walk_tile_bytes(cols, mt):
    """WalkTile of bitmap_kernel.cu (the v2 walk at M <= 4): x in blocks of 2048 columns, float32 up to M = 2,
    16-bit at M = 4."""
    return math.ceil(cols / 2048) * 2048 * (4 if mt <= 2 else 2) * mt


def chunking(K, align, extra_per_warp, mt, span, extra_per_block=0, walk=False):
    """choose_chunking of decode_common.cuh: (Kc, splits, threads, smem). extra_per_block: shared bytes a block
    keeps beside its x tile (the bitmap kernels' zero column), counted with the tile as the kernels do. walk: the
    x tile is the bitmap walk's (walk_tile_bytes: blocks of 2048 columns, float32 up to M = 2, 16-bit at M = 4)."""
    def tile(cols):
        if walk:
            return walk_tile_bytes(cols, mt) + extra_per_block
        return (xtile_flat_bytes(mt, cols) if span == 0 else xtile_bytes(mt, cols, span)) + extra_per_block

    b2 = min(SMEM_OPTIN, SMEM_SM // 2 - 1024)
    b1 = min(SMEM_OPTIN, SMEM_SM - 1024)
    whole = math.ceil(max(K, 1) / align) * align
    if tile(whole) + 8 * extra_per_warp <= b2:
        kc, threads = whole, 256
    elif tile(whole) + 16 * extra_per_warp <= b1:
        kc, threads = whole, 512
    else:
        threads = 256
        avail = b2 - 8 * extra_per_warp
        kmax = max(1, avail // tile(align)) * align
        while kmax > align and tile(kmax) > avail:
            kmax -= align
        splits = math.ceil(K / kmax)
        kc = math.ceil(math.ceil(K / splits) / align) * align
    splits = max(1, math.ceil(K / kc))
    return kc, splits, threads, tile(kc) + threads // 32 * extra_per_warp


def warps_per_sm(regs, threads, smem, N, splits):
    wpb = threads // 32
    per_warp = math.ceil(max(regs, 1) / 8) * 8 * 32
    by_regs = (REGS_SM // per_warp) // wpb
    by_smem = SMEM_SM // (smem + 1024)
    blocks = max(1, min(by_regs, by_smem, MAX_WARPS // wpb, 32))
    grid = min(math.ceil(blocks * SMS / splits), math.ceil(N / wpb)) * splits
    return min(blocks * wpb, grid * wpb / SMS), blocks


def bitmap_row(N, K, M, density, variant, regs):
    mt = min(16, 1 << max(0, (M - 1).bit_length()))
    tile_vals = density * 1024 * E
    list_bytes = (1024 + 16) * 2
    w = 1
    if variant == 1:
        name = f"bitmap_decode_kernel<__nv_bfloat16, {mt}, true>"
        d, p, warp_bytes = 1, 4, list_bytes
    else:
        # V2Shape in bitmap_kernel.cu: kWide (2048-column tiles, one chunk per lane) when an average 1024-column
        # tile's run fills at most 42.5 % of one 16-byte chunk per lane, kWideDense (2048 columns, three chunks)
        # up to 127.5 %, else kDense (bf16: 8 values a chunk); kSparse only where the 2048-column shapes do not
        # fit in shared memory (not on an H200)
        fill = density * 1024 / 8 / 32
        kind = 2 if fill <= 0.425 else 3 if fill <= 1.275 else 0
        walk = mt <= 4  # (at M <= 4 in 16 bits the lanes walk their bits: x in a tile of its own)
        name = f"bitmap_decode_v2_kernel<__nv_bfloat16, {mt}, {kind}, {'true' if walk else 'false'}>"
        w, p, d = {2: (2, 1, 4), 3: (2, 3, 3), 1: (1, 1, 8), 0: (1, 2, 4)}[kind]
        tile_vals *= w
        warp_bytes = (1024 * w + 16) * 2 + d * 32 * 8 * w
    r = regs.get(name)
    if r is None:
        return None
    kc, splits, threads, smem = chunking(K, 32, warp_bytes, mt, 32, extra_per_block=64,  # + the zero column
                                         walk=variant == 2 and mt <= 4)
    per_warp = d * (min(tile_vals, p * 512) + 128 * w)
    warps, blocks = warps_per_sm(r, threads, smem, N, splits)
    shape = "1 tile" if variant == 1 else f"D={d} P={p}" + (" 2048" if w == 2 else "")
    return dict(regs=r, threads=threads, blocks=blocks, splits=splits, warps=warps, per_warp=per_warp,
                per_sm=warps * per_warp, shape=shape)


def columns_row(N, K, M, density, regs):
    mt = min(16, 1 << max(0, (M - 1).bit_length()))
    r = regs.get(f"bitmap_columns_kernel<__nv_bfloat16, {mt}, true>")
    if r is None:
        return None
    kc, splits, threads, smem = chunking(K, 32, 0, mt, 0, extra_per_block=64)  # flat tile + the zero column
    per_warp = min((2 if mt <= 2 else 4) * 32 * 8, density * kc) * (E + 2)  # kP chunks a lane (by MT)
    warps, blocks = warps_per_sm(r, threads, smem, N, splits)
    return dict(regs=r, threads=threads, blocks=blocks, splits=splits, warps=warps, per_warp=per_warp,
                per_sm=warps * per_warp)


def s24_row(N, K, M, regs):
    mt = min(16, 1 << max(0, (M - 1).bit_length()))
    kc, splits, threads, smem = chunking(K, 128, 512, mt, 16)
    r = regs.get(f"sparse24_decode_kernel<__nv_bfloat16, {mt}, true>")
    per_warp = min(8 * 512, kc // 2 * E) + min(512, kc // 8)
    w, blocks = warps_per_sm(r, threads, smem, N, splits)
    return dict(regs=r, threads=threads, blocks=blocks, splits=splits, warps=w, per_warp=per_warp,
                per_sm=w * per_warp, shape="1 tile")


def main():
    regs = regs_table()
    need = [RATE * lat / SMS / 1024 for lat in LAT]
    print(f"needed per SM at 4.3 TB/s: {need[0]:.1f} KB (600 ns) - {need[1]:.1f} KB (900 ns)\n")
    print("| kernel | N x K | M | v1: regs, warps/SM, B/warp, KB/SM | v2: shape, regs, warps/SM, B/warp, KB/SM "
          "| v2 / 29 KB | column list: regs, warps/SM, B/warp, KB/SM | column list / 29 KB |")
    print("|---|---|---:|---|---|---:|---|---:|")
    for N, K in SHAPES:
        for M in (1, 4, 16):
            for label, dens in (("bitmap 50 %", 0.5), ("bitmap 70 %", 0.3), ("bitmap 90 %", 0.1)):
                a = bitmap_row(N, K, M, dens, 1, regs)
                b = bitmap_row(N, K, M, dens, 2, regs)
                fa = f"{a['regs']}, {a['warps']:.0f}, {a['per_warp']:.0f}, {a['per_sm'] / 1024:.1f}"
                fb = "-" if b is None else (f"{b['shape']}, {b['regs']}, {b['warps']:.0f}, {b['per_warp']:.0f}, "
                                            f"{b['per_sm'] / 1024:.1f}")
                ratio = "-" if b is None else f"{b['per_sm'] / 1024 / need[1]:.1f}x"
                c = columns_row(N, K, M, dens, regs)
                fc = "-" if c is None else (f"{c['regs']}, {c['warps']:.0f}, {c['per_warp']:.0f}, "
                                            f"{c['per_sm'] / 1024:.1f}")
                rc = "-" if c is None else f"{c['per_sm'] / 1024 / need[1]:.1f}x"
                print(f"| {label} | {N}x{K} | {M} | {fa} | {fb} | {ratio} | {fc} | {rc} |")
            s = s24_row(N, K, M, regs)
            print(f"| 2:4 | {N}x{K} | {M} | {s['regs']}, {s['warps']:.0f}, {s['per_warp']:.0f}, "
                  f"{s['per_sm'] / 1024:.1f} | (no v2) | {s['per_sm'] / 1024 / need[1]:.1f}x | - | - |")


if __name__ == "__main__":
    main()
