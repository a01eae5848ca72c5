"""Shared-memory wavefronts of the bitmap decode kernel's (v2, M <= 4) two consumers, by simulation.

A model, not a measurement (csrc/cuda/README.md, "The walk"). A warp's shared load or store costs as many
wavefronts as the most 4-byte words any one of the 32 banks must serve. On random bitmaps of a density this counts,
per 1024 columns of a bf16 weight row, at M = 1, 2 or 4 (the M tile):

- the walk (walk_word in csrc/cuda/bitmap_kernel.cu): per round, each lane still walking loads its value at its
  place in the tile's staged run (random-ish banks) and x from the walk's tile (WalkTile: float32 up to M = 2,
  16-bit at M = 4; lane l's word is in bank l whatever the bit: one wavefront at M = 1, two at M = 2 and 4);
- the list: the compaction's 2-byte stores at the run places, then per 16-byte chunk a lane holds the list
  entries (one LDS.128) and the x of each of its 8 entries (the column's M values, 2 M bytes), at random columns
  of the spanned 16-bit tile (XTile: 32 columns and one access width of padding a span); entries outside the run
  read the zero column.

Shapes as the kernel chooses them by density: 2048-column tiles (two words a lane) up to 31.9 %, else 1024.
Run: python bench/bitmap_banks.py [--density 0.1,0.3,0.5] [--m 1,2,4] [--tiles 40]
"""
from __future__ import annotations

import argparse

import numpy as np


def wavefronts(addrs, nbytes: int = 4) -> int:
    """Wavefronts of one warp instruction whose active lanes each load `nbytes` (2: within one word; 4, 8, 16:
    whole aligned words) from these byte addresses: the most distinct words one bank serves."""
    if len(addrs) == 0:
        return 0
    a = np.asarray(addrs, dtype=np.int64) // 4
    a = (a[:, None] + np.arange(max(1, nbytes // 4))[None, :]).reshape(-1)
    words = np.unique(a)
    return int(np.bincount(words % 32, minlength=32).max())


def random_tile(rng, density: float, w: int):
    """A tile's bits [word half][lane][bit], their counts, and each word's place in the run (after a random
    alignment shift < 8, as the kernel's run starts at a 16-byte boundary)."""
    bits = rng.random((w, 32, 32)) < density
    cnt = bits.sum(-1)
    shift = int(rng.integers(0, 8))
    place = np.concatenate([[0], np.cumsum(cnt.reshape(-1))])[:-1].reshape(w, 32) + shift
    return bits, cnt, place, shift


def walk_col_bytes(m: int) -> int:
    """A column's bytes in the walk's x tile (WalkTile::kColBytes): float32 up to M = 2, 16-bit at M = 4."""
    return 4 * m if m <= 2 else 2 * m


def list_span(m: int) -> tuple[int, int]:
    """(column bytes, span bytes) of the list consumer's bf16 x tile at M tile m (XTile<bf16, m, 32>)."""
    cb = 2 * m
    return cb, 32 * cb + max(4, min(cb, 16))


def walk(rng, density: float, w: int, m: int = 1) -> tuple[int, int, int]:
    """(rounds, value wavefronts, x wavefronts) of one tile at M tile m."""
    cb = walk_col_bytes(m)
    bits, cnt, place, _ = random_tile(rng, density, w)
    rounds = val = x = 0
    for h in range(w):
        setbits = [np.nonzero(bits[h, lane])[0][::-1] for lane in range(32)]  # from the highest
        for r in range(int(cnt[h].max())):
            act = [lane for lane in range(32) if cnt[h, lane] > r]
            val += wavefronts([2 * (place[h, lane] + cnt[h, lane] - 1 - r) for lane in act])
            x += wavefronts([((32 * h + lane) % 64) * cb + int(setbits[lane][r]) * 64 * cb for lane in act], cb)
            rounds += 1
    return rounds, val, x


def listed(rng, density: float, w: int, m: int = 1, kv: int = 8) -> tuple[int, int]:
    """(compaction store wavefronts, consumer wavefronts: list entries + x) of one tile at M tile m."""
    bits, cnt, place, shift = random_tile(rng, density, w)
    stores = 0
    for h in range(w):
        for r in range(int(cnt[h].max())):
            act = [lane for lane in range(32) if cnt[h, lane] > r]
            stores += wavefronts([2 * (place[h, lane] + r) for lane in act])
    cols = [(32 * h + lane) * 32 + int(b) for h in range(w) for lane in range(32) for b in np.nonzero(bits[h, lane])[0]]
    entries = [None] * shift + cols
    nq = (len(entries) + kv - 1) // kv
    cb, span = list_span(m)
    zero = 1 << 20     # the zero column: one address
    consumer = 0
    for q0 in range(0, nq, 32):
        consumer += 4  # the lanes' LDS.128 of their 8 list entries (512 bytes)
        for r in range(kv):
            addrs = []
            for lane in range(min(32, nq - q0)):
                j = (q0 + lane) * kv + r
                c = entries[j] if j < len(entries) else None
                addrs.append(zero if c is None else (c // 32) * span + (c % 32) * cb)
            consumer += wavefronts(addrs, cb)
    return stores, consumer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--density", default="0.1,0.3,0.5")
    p.add_argument("--m", default="1", help="M tiles, comma-separated: 1, 2, 4 (default: %(default)s)")
    p.add_argument("--tiles", type=int, default=40, help="random tiles per density (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    print("| M | density | tile | walk rounds a tile | walk: value + x wavefronts / 1024 cols "
          "| list: stores + consumer / 1024 cols |")
    print("|---:|---:|---:|---:|---:|---:|")
    for m in (int(v) for v in a.m.split(",")):
        if m not in (1, 2, 4):
            p.error("--m: the walk serves M tiles 1, 2 and 4")
        for d in (float(v) for v in a.density.split(",")):
            w = 2 if d * 1024 / 8 / 32 <= 1.275 else 1  # the 2048-column shapes up to 31.9 % (bf16)
            wk = np.array([walk(rng, d, w, m) for _ in range(a.tiles)], dtype=float).mean(0)
            ls = np.array([listed(rng, d, w, m) for _ in range(a.tiles)], dtype=float).mean(0)
            per = 1024 / (1024 * w)
            print(f"| {m} | {d:g} | {1024 * w} | {wk[0]:.1f} | {wk[1] * per:.0f} + {wk[2] * per:.0f} = "
                  f"{(wk[1] + wk[2]) * per:.0f} | {ls[0] * per:.0f} + {ls[1] * per:.0f} = {(ls[0] + ls[1]) * per:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
