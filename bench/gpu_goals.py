"""The goals of the GPU-speed and host-time issues, checked cell by cell against a GPU run's JSON lines.

    python bench/gpu_goals.py --layer bench/results/gpu/gpu_layers.jsonl --model bench/results/gpu/gpu_model.jsonl \
        --overhead bench/results/gpu/gpu_overhead.jsonl
    python bench/gpu_goals.py --layer a.jsonl --layer b.jsonl --md goals.md --json goals.jsonl

Reads the records of `sparsekit bench layer` (--layer), `sparsekit bench model` (--model) and `sparsekit bench
overhead` on CUDA (--overhead) and prints, for
every goal and every cell the run measured (format x dtype x N x K x M), whether the goal is met or by how
much it falls short, with what the cell achieved beside it: GB/s, its share of a plain read of the same bytes
timed in the same run (`read_bw_ratio`), and its speedup as a share of the bytes cap. A cell the run did not
measure is not counted; a goal with no measured cell says so. Every goal of the tables is listed, so the note
of a GPU session can name each cell that falls short without reading the JSON by hand.

Goals (H200, float16 / bfloat16, speedup over dense `F.linear` on the same weight):
- layer, with CUDA graphs (`graph_speedup`): bench/gpu_floor.py's GOALS by M bucket (M = 1, 2-16, 17-512,
  above 512; no goal where it says None), and `format="auto"` at least 0.97x dense in every cell;
- layer, eagerly (`speedup`) at M = 1 on 14336x4096: 2:4, int8-wo, int8 and 2:4+int8 at least 0.85x of the
  same cell's graph speedup, BSR 64 at 90 % at least 3x (from the layer records and, the same goal measured by
  `bench overhead`, from its `cuda-graph` records);
- host time per call at M = 1 (`bench overhead`'s `cuda-host` records: 1000 calls of a small layer enqueued
  without synchronizing) at most 10 us for every format;
- model, decode with CUDA graphs (`decode_graph_speedup`): 2:4 1.3x, BSR 64 at 90 % 2.5x, int8-wo 1.6x,
  2:4+int8 2x; prefill (`prefill_graph_speedup`, else `prefill_speedup`) of 2:4+int8 and BSR 90 % 1.3x;
  compiled decode (`decode_compiled_speedup`) at least 0.95x the graph decode speedup for every format.

Exit status 0 whatever the outcome (a report, not a test); 2 when no record could be read.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from sparsekit.bench.overhead import BSR_EAGER_GOAL, CUDA_HOST_GOAL_US, GRAPH_RATIO_GOAL  # the host-time goals
from sparsekit.bench.report import load
from sparsekit.bench.timing import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_floor import goal as layer_goal  # noqa: E402

HALF = ("float16", "bfloat16")
AUTO_MIN = 0.97            # format="auto" against dense, every cell
EAGER_SHAPE = (14336, 4096)  # the eager goals' layer (M = 1)
MODEL_DECODE = {"2:4": 1.3, "bsr64_90": 2.5, "int8-wo": 1.6, "2:4+int8": 2.0}
MODEL_PREFILL = {"2:4+int8": 1.3, "bsr64_90": 1.3}
COMPILED_OF_GRAPH = 0.95


def goal_name(fmt: str, sparsity) -> str | None:
    """The name bench/gpu_floor.py's goals use for a format at a sparsity (None: no goal there)."""
    sp = float(sparsity or 0.0)
    if fmt == "bitmap":
        for target in (0.7, 0.9):
            if math.isclose(sp, target, abs_tol=1e-6):
                return f"bitmap{round(target * 100)}"
        return None
    if fmt == "bsr:64":
        return "bsr64_90" if math.isclose(sp, 0.9, abs_tol=1e-6) else None
    return fmt if fmt in ("2:4", "int8-wo", "int8", "2:4+int8") else None


def read_jsonl(paths):
    return [r for p in paths for r in load(p)]


def _cell(r):
    return f"{r.get('dtype')} {r.get('N')}x{r.get('K')} M={r.get('M')}"


def _achieved(r):
    """What a layer cell achieved beside its speedup: GB/s, share of the plain read, share of the bytes cap."""
    parts = []
    if r.get("gbps") is not None:
        parts.append(f"{r['gbps']:.0f} GB/s")
    if r.get("read_bw_ratio") is not None:
        parts.append(f"{r['read_bw_ratio']:.0%} of read BW")
    graph = r.get("graph_speedup")
    sp = graph if graph is not None else r.get("speedup")
    if sp is not None and r.get("bytes_cap"):
        parts.append(f"{sp / r['bytes_cap']:.0%} of the bytes cap {r['bytes_cap']:.2f}x" +
                     ("" if graph is not None else " (eager)"))
    if r.get("auto_formats"):
        parts.append(f"picked {r['auto_formats']}")
    return ", ".join(parts)


def _check(rows, goal, what, cell, got, need, achieved="", unit="x"):
    """unit "x" (a speedup) and "%" (a ratio): got >= need; "us" (a time): got <= need."""
    met = got is not None and (got <= need if unit == "us" else got >= need)
    rows.append(dict(goal=goal, what=what, cell=cell, got=got, need=need, met=met, achieved=achieved, unit=unit))


def layer_checks(recs, device="cuda"):
    """One row per (goal, measured cell) of the layer records."""
    rows = []
    live = [r for r in recs if r.get("device") == device and r.get("dtype") in HALF and "error" not in r
            and str(r.get("impl", "")).startswith("sparsekit-")]
    for r in live:
        fmt = r["impl"][len("sparsekit-"):]
        cell = _cell(r)
        g = r.get("graph_speedup")
        if fmt == "auto":
            _check(rows, "auto never slower than dense", f"auto {r.get('sparsity', 0):.0%}", cell,
                   g if g is not None else r.get("speedup"), AUTO_MIN, _achieved(r))
            continue
        name = goal_name(fmt, r.get("sparsity"))
        if name is None:
            continue
        need = layer_goal(name, int(r["M"]))
        if need is not None:
            _check(rows, "layer speed (graphs)", name, cell, g, need, _achieved(r))
        if int(r["M"]) == 1 and (r.get("N"), r.get("K")) == EAGER_SHAPE:
            _eager_checks(rows, "eager as fast as graphs", name, cell, r.get("speedup"), g)
    return rows


def _eager_checks(rows, goal, name, cell, eager, graph):
    """The eager goals of an M = 1 cell on 14336x4096: eager / graph speedup for GRAPH_RATIO_GOAL's formats, BSR 90 %'s eager
    speedup itself."""
    def x(v):
        return "n/a" if v is None else f"{v:.2f}x"

    if name in GRAPH_RATIO_GOAL:
        ratio = None if eager is None or not graph else eager / graph
        _check(rows, goal, name, cell, ratio, GRAPH_RATIO_GOAL[name], f"eager {x(eager)}, graphs {x(graph)}", "%")
    elif name == "bsr64_90":
        _check(rows, goal, name, cell, eager, BSR_EAGER_GOAL, f"graphs {x(graph)}")


def model_checks(recs, device="cuda"):
    rows = []
    for r in recs:
        if r.get("device") != device or r.get("dtype") not in HALF or "error" in r or r.get("format") == "dense":
            continue
        name = goal_name(r.get("format", ""), r.get("sparsity"))
        cell = f"{r.get('dtype')} {r.get('arch', '')} batch={r.get('batch')} prompt={r.get('prompt')}"
        label = name or f"{r.get('format')} {float(r.get('sparsity') or 0):.0%}"
        dg = r.get("decode_graph_speedup")
        if name in MODEL_DECODE:
            _check(rows, "model decode (graphs)", name, cell, dg, MODEL_DECODE[name],
                   f"{r.get('decode_graph_ms', float('nan')):.3f} ms")
        if name in MODEL_PREFILL:
            pre = r.get("prefill_graph_speedup") or r.get("prefill_speedup")
            _check(rows, "model prefill", name, cell, pre, MODEL_PREFILL[name], f"M = {r.get('prefill_M')}")
        if r.get("decode_compiled_speedup") is not None or dg is not None:
            c = r.get("decode_compiled_speedup")
            _check(rows, "compiled decode as fast as graphs", label, cell,
                   None if c is None or dg is None else c / dg, COMPILED_OF_GRAPH,
                   f"compiled {c if c is not None else float('nan'):.2f}x, graphs {dg or float('nan'):.2f}x", "%")
    return rows


def overhead_checks(recs):
    """The host-time goals on `sparsekit bench overhead`'s CUDA records."""
    rows = []
    for r in recs:
        if "error" in r:
            continue
        cell = f"{r.get('N')}x{r.get('K')} M={r.get('M')}"
        fmt = r.get("format", "")
        if r.get("kind") == "cuda-host" and fmt not in ("F.linear", "nn.Linear") and r.get("M") == 1:
            _check(rows, "host time per call", fmt, cell, r.get("host_us"), CUDA_HOST_GOAL_US,
                   f"F.linear {r.get('flinear_host_us', float('nan')):.1f} us", "us")
        elif r.get("kind") == "cuda-graph":
            name = goal_name(fmt, 0.9 if fmt.startswith("bsr") else 0.0)  # bench overhead prunes to 90 %
            _eager_checks(rows, "eager as fast as graphs (bench overhead)", name, cell, r.get("speedup"),
                          r.get("graph_speedup"))
    return rows


def _fmt(v, unit="x"):
    if v is None:
        return "not measured"
    return {"%": f"{v:.0%}", "us": f"{v:.1f} us"}.get(unit, f"{v:.2f}x")


def _margin(r):
    """got / need for "at least" goals, need / got for "at most" (us) ones: below 1 is short; None: -inf."""
    if r["got"] is None:
        return -math.inf
    if r["unit"] == "us":
        return r["need"] / r["got"] if r["got"] > 0 else math.inf
    return r["got"] / r["need"]


def report(rows):
    """Markdown: a summary line per goal, then every cell short of its goal (worst first)."""
    keys = list(dict.fromkeys((r["goal"], r["what"]) for r in rows))
    summary = []
    for key in keys:
        cells = [r for r in rows if (r["goal"], r["what"]) == key]
        worst = min(cells, key=_margin)
        summary.append([key[0], key[1], f"{sum(r['met'] for r in cells)} / {len(cells)}", worst["cell"],
                        _fmt(worst["got"], worst["unit"]), _fmt(worst["need"], worst["unit"])])
    lines = [markdown_table(["goal", "format", "cells met", "worst cell", "worst", "needed"], summary)]
    short = sorted((r for r in rows if not r["met"]), key=lambda r: (r["goal"], r["what"], _margin(r)))
    if short:
        lines += ["", f"Cells short of their goal ({len(short)} of {len(rows)}):", "",
                  markdown_table(["goal", "format", "cell", "got", "needed", "achieved"],
                                 [[r["goal"], r["what"], r["cell"], _fmt(r["got"], r["unit"]),
                                   _fmt(r["need"], r["unit"]), r["achieved"]] for r in short])]
    else:
        lines += ["", f"Every one of the {len(rows)} cells measured meets its goal."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", action="append", default=[], help="JSON lines of `sparsekit bench layer` (repeatable)")
    p.add_argument("--model", action="append", default=[], help="JSON lines of `sparsekit bench model` (repeatable)")
    p.add_argument("--overhead", action="append", default=[],
                   help="JSON lines of `sparsekit bench overhead` run with a GPU (repeatable)")
    p.add_argument("--device", default="cuda", help="the records' device to check (default cuda)")
    p.add_argument("--md", default="", help="also write the markdown here")
    p.add_argument("--json", default="", help="also write one JSON line per checked cell here")
    a = p.parse_args(argv)
    layer = read_jsonl(f for f in a.layer if Path(f).is_file())
    model = read_jsonl(f for f in a.model if Path(f).is_file())
    over = read_jsonl(f for f in a.overhead if Path(f).is_file())
    if not layer and not model and not over:
        print("gpu_goals: no records (is the run's JSON there?)", file=sys.stderr)
        return 2
    rows = layer_checks(layer, a.device) + model_checks(model, a.device) + overhead_checks(over)
    env = next((r.get("env") for r in layer + model + over if r.get("env")), {}) or {}
    head = (f"# Goals of the GPU-speed and host-time issues, checked on {env.get('device', a.device)} "
            f"(sparsekit {env.get('sparsekit_commit', '?')})\n\n"
            "Generated by `python bench/gpu_goals.py` from the run's JSON lines; speedups over dense F.linear "
            "on the same weight, layer goals with CUDA graphs.\n\n")
    text = head + (report(rows) if rows else "No record of a float16 / bfloat16 cell with a goal.\n")
    print(text)
    if a.md:
        Path(a.md).write_text(text)
    if a.json:
        Path(a.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    met = sum(r["met"] for r in rows)
    print(f"gpu_goals: {met} of {len(rows)} cells meet their goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
