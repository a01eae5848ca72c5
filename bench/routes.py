#!/usr/bin/env python
"""The kernel routes a GPU run measured (CPU only: reads the autotune cache, times nothing).

Which kernel serves a call's M rows on CUDA is measured on the device at the first eager call of each (N, K,
dtype, M bucket) and kept in the autotune cache: for 2:4 the own decode kernel or cuSPARSELt (table
`sparse24_route`; sparsekit/formats/sparse24.py), for 2:4+int8 the compiled W8A8 kernel or cuSPARSELt
(`sparse24_int8_route`), for int8 weight-only and W8A8 the compiled kernel or Triton (`int8_weight_only_mm_route`,
`int8_linear_route`, `int8_mm_route`; sparsekit/triton/__init__.py, `pick_compiled`), for bitmap the compiled
decode kernel or Triton (`bitmap_mm_route`) and, in a layer with a column list, that kernel or the public op
(`bitmap_columns_route`; sparsekit/formats/bitmap.py). bench/gpu_all.sh keeps the
benchmarks' cache in $OUT/autotune, so the run's routes are recorded with its timings. This prints them, one row
per (route, N x K, dtype), one column per M bucket:

    python bench/routes.py OUT/autotune [--md OUT/routes.md]

and, last, one line for the run's summary.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROUTE_TABLES = {"sparse24_route": "2:4: own kernel / cuSPARSELt",
                "sparse24_int8_route": "2:4+int8: compiled W8A8 kernel / cuSPARSELt",
                "int8_weight_only_mm_route": "int8 weight-only: compiled kernel / Triton",
                "int8_linear_route": "int8 W8A8 linear: compiled kernel / Triton",
                "int8_mm_route": "int8_mm (x quantized): compiled kernel / Triton",
                "bitmap_mm_route": "bitmap: compiled decode kernel / Triton",
                "bitmap_columns_route": "bitmap layer with a column list: column-list kernel (compiled) / the op (triton)"}
OWN = ("own", "compiled")  # the sparsekit decode kernels' side of each route


def read_routes(cache_dir) -> dict:
    """{(table, N, K, dtype): {M bucket: path}} from every autotune file in cache_dir."""
    out: dict = {}
    d = Path(cache_dir) if cache_dir else None
    if d is None or not d.is_dir():
        return out
    for f in sorted(d.glob("*.json")):
        try:
            configs = json.loads(f.read_text()).get("configs", {})
        except (OSError, ValueError, AttributeError):
            continue
        for key, cfg in configs.items():
            parts = key.split("|")
            if parts[0] not in ROUTE_TABLES or len(parts) != 5 or not isinstance(cfg, dict) or "path" not in cfg:
                continue
            table, n, k, dtype, bucket = parts
            out.setdefault((table, int(n), int(k), dtype), {})[int(bucket)] = cfg["path"]
    return out


def markdown(routes: dict) -> str:
    buckets = sorted({b for row in routes.values() for b in row})
    lines = ["| route | N x K | dtype | " + " | ".join(f"M ≤ {b}" for b in buckets) + " |",
             "|---|---|---|" + "---:|" * len(buckets)]
    for (table, n, k, dtype), row in sorted(routes.items()):
        cells = [row.get(b, "") for b in buckets]
        lines.append(f"| {ROUTE_TABLES[table]} | {n}x{k} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(routes: dict) -> str:
    if not routes:
        return "no measured routes in the cache"
    cells = [(b, p) for row in routes.values() for b, p in row.items()]
    own_max = [max((b for b, p in row.items() if p in OWN), default=0) for row in routes.values()]
    return (f"{len(cells)} measured (shape, M bucket) routes over {len(routes)} shapes: the decode kernel in "
            f"{sum(p in OWN for _, p in cells)}, cuSPARSELt, Triton or the op in {sum(p not in OWN for _, p in cells)}; "
            f"the decode kernel's largest bucket per shape: {min(own_max)}-{max(own_max)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cache_dir", help="the autotune cache directory (SPARSEKIT_CACHE_DIR of the run)")
    p.add_argument("--md", default=None, help="also write the table here")
    a = p.parse_args(argv)
    routes = read_routes(a.cache_dir)
    md = markdown(routes) if routes else "(no measured routes)"
    if a.md:
        Path(a.md).write_text("# Kernel routes measured on the device\n\n" + __doc__.split("\n\n")[1].replace(
            "\n", " ") + "\n\n" + md + "\n")
    print(md)
    print(summary(routes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
