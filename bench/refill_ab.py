#!/usr/bin/env python
"""The refill A/B of one GPU run, cell by cell (CPU only: reads JSON lines, times nothing).

The decode kernels refill their weight registers while they consume them (csrc/cuda/README.md: the 2:4 FMA
kernel issues its next tile before it consumes the current one; the tensor-core kernel refills each batch entry
as soon as it is consumed); SPARSEKIT_CUDA_REFILL=0 keeps the order before. bench/gpu_all.sh times both in one
process: bench/cuda_gpu.py --refill-ab (each 2:4 design, "... decode v2" against "... decode v2 no refill") and
bench/triton_gpu.py (w8a16 / w8a8_linear against w8a16_norefill / w8a8_linear_norefill). This pairs them:

    python bench/refill_ab.py --cuda OUT/cuda_decode_variants.jsonl --int8 OUT/int8_decode.jsonl [--md OUT/refill_ab.md]

Prints a markdown table (graph times where both have one, else eager: ratio = without / with the refill, above 1
when the refill is faster) and, last, one line for the run's summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

NO_REFILL = " no refill"  # the suffix of bench/cuda_gpu.py's impl names under --refill-ab
NOREFILL_KERNELS = {"w8a16_norefill": "w8a16", "w8a8_linear_norefill": "w8a8_linear"}  # bench/triton_gpu.py


def read_jsonl(path) -> list:
    p = Path(path) if path else None
    if p is None or not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut short by a deadline
    return out


def _times(on, off):
    """(ms with, ms without, "graph" or "eager"): graph times where both have one, else eager; None if untimed."""
    for key, kind in (("graph_ms", "graph"), ("ms", "eager")):
        if on.get(key) and off.get(key):
            return on[key], off[key], kind
    return None


def pairs(cuda_records, int8_records) -> list:
    """[(kernel, N, K, M, ms with, ms without, timing)], one per cell timed both ways (a cell's last records)."""
    found = {}  # (kernel, N, K, M) -> {True: record with the refill, False: without}
    for r in cuda_records:
        impl = r.get("impl") or ""
        if impl.startswith("sparsekit sparse24_mm decode "):
            off = impl.endswith(NO_REFILL)
            name = (impl[: -len(NO_REFILL)] if off else impl).replace("sparsekit ", "")
            found.setdefault((name, r.get("N"), r.get("K"), r.get("M")), {})[not off] = r
    for r in int8_records:
        k = r.get("kernel")
        if r.get("ok") and (k in NOREFILL_KERNELS or k in NOREFILL_KERNELS.values()):
            name = NOREFILL_KERNELS.get(k, k)
            found.setdefault((name, r.get("N"), r.get("K"), r.get("M")), {})[k not in NOREFILL_KERNELS] = r
    out = []
    for (name, N, K, M), both in sorted(found.items(), key=lambda kv: (kv[0][0],) + tuple(x or 0 for x in kv[0][1:])):
        t = _times(both[True], both[False]) if len(both) == 2 else None
        if t is not None:
            out.append((name, N, K, M) + t)
    return out


def markdown(rows) -> str:
    lines = ["| kernel | N x K | M | with refill (µs) | without (µs) | without / with | timing |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, N, K, M, on_ms, off_ms, kind in rows:
        lines.append(f"| {name} | {N}x{K} | {M} | {on_ms * 1e3:.1f} | {off_ms * 1e3:.1f} | {off_ms / on_ms:.2f} | {kind} |")
    return "\n".join(lines)


def summary(rows) -> str:
    if not rows:
        return "no pairs (were bench/cuda_gpu.py --refill-ab and the *_norefill kernels of bench/triton_gpu.py run?)"
    ratios = [off / on for _, _, _, _, on, off, _ in rows]
    faster = sum(1 for x in ratios if x > 1)
    return (f"{len(rows)} cells, the refill faster in {faster}; without / with: median {statistics.median(ratios):.2f}, "
            f"min {min(ratios):.2f}, max {max(ratios):.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuda", help="bench/cuda_gpu.py JSON lines (run with --refill-ab)")
    p.add_argument("--int8", help="bench/triton_gpu.py JSON lines (with w8a16_norefill / w8a8_linear_norefill)")
    p.add_argument("--md", help="also write the table here")
    a = p.parse_args(argv)
    rows = pairs(read_jsonl(a.cuda), read_jsonl(a.int8))
    table = markdown(rows)
    if a.md:
        Path(a.md).write_text("# Refill A/B (SPARSEKIT_CUDA_REFILL)\n\n" + table + "\n\n" + summary(rows) + "\n")
    print(table)
    print()
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
