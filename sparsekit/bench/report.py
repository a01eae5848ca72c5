"""`sparsekit bench report`: result JSON lines -> markdown tables and PNG plots."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import List

from .timing import markdown_table


def load(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _f(v, fmt="{:.3f}", none="-"):
    return none if v is None else fmt.format(v)


def _mib(v):
    return _f(None if v is None else v / 2**20, "{:.1f}")


def layer_table(recs: List[dict]) -> str:
    """Layer records -> markdown: time, speedup, (CUDA-graph time and speedup when any), bytes cap, GB/s, (that
    as a share of a plain read of the same bytes, when recorded), TFLOP/s."""
    graphs = any(r.get("graph_ms") is not None for r in recs)
    head = ["N x K", "M", "sparsity", "impl", "ms", "speedup vs best dense"]
    head += ["graph ms", "graph speedup"] if graphs else []
    reads = any(r.get("read_bw_ratio") is not None for r in recs)
    head += ["bytes cap", "GB/s"] + (["of read BW"] if reads else []) + ["TFLOP/s"]
    rows = []
    for r in recs:
        chain = f" (x{r['chain']})" if r.get("chain", 1) > 1 else ""
        row = [f"{r['N']}x{r['K']}{chain}", r["M"], f"{r['sparsity']:.0%}", r["impl"]]
        if "ms" not in r:
            rows.append(row + ["-", r.get("error", "")] + ["-"] * (len(head) - 6))
            continue
        row += [_f(r["ms"]), f"{r['speedup']:.2f}x"]
        if graphs:
            row += [_f(r.get("graph_ms")), _f(r.get("graph_speedup"), "{:.2f}x", r.get("graph_error", "-")[:40])]
        row += [_f(r.get("bytes_cap"), "{:.2f}x"), _f(r.get("gbps"), "{:.1f}")]
        row += [_f(r.get("read_bw_ratio"), "{:.0%}")] if reads else []
        rows.append(row + [_f(r.get("tflops"))])
    return markdown_table(head, rows)


def model_table(recs: List[dict]) -> str:
    """Model records -> markdown: prefill and decode against dense, weight bytes, peak memory, conversion time."""
    graphs = any(r.get("decode_graph_ms") is not None for r in recs)
    compiled = any("decode_compiled_ms" in r or "decode_compiled_error" in r for r in recs)
    M = recs[0]["prefill_M"] if recs else "?"
    head = ["format", "sparsity", f"prefill ms (M={M})", "prefill speedup", "decode tok/s", "decode speedup"]
    head += ["graph prefill speedup", "graph decode speedup"] if graphs else []
    head += ["compiled decode ms", "compiled decode speedup"] if compiled else []
    head += ["weight MiB", "peak MiB", "convert s", "rel. error"]
    rows = []
    for r in recs:
        row = [r["format"], _f(r.get("sparsity"), "{:.0%}")]
        if "prefill_ms" not in r:
            rows.append(row + [r.get("error", ""), *["-"] * (len(head) - 3)])
            continue
        row += [_f(r["prefill_ms"], "{:.2f}"), f"{r['prefill_speedup']:.2f}x", f"{r['decode_tok_s']:.1f}",
                f"{r['decode_speedup']:.2f}x"]
        if graphs:
            row += [_f(r.get(f"{w}_graph_speedup"), "{:.2f}x", r.get(f"{w}_graph_error", "-")[:40])
                    for w in ("prefill", "decode")]
        if compiled:
            row += [_f(r.get("decode_compiled_ms"), "{:.3f}", r.get("decode_compiled_error", "-")[:40]),
                    _f(r.get("decode_compiled_speedup"), "{:.2f}x")]
        rows.append(row + [_mib(r["weight_bytes"]), _mib(r.get("peak_mem_bytes")), _f(r.get("convert_s"), "{:.2f}"),
                           f"{r['rel_error']:.1e}"])
    return markdown_table(head, rows)


def is_peer(rec: dict) -> bool:
    """A row of another library (PyTorch's quantize_dynamic, DeepSparse), not a sparsekit format."""
    return str(rec.get("format", "")).startswith(("torch-", "deepsparse"))


def gained_sentence(recs: List[dict]) -> str:
    """One plain sentence: the sparsekit format that decodes fastest against dense (peers' rows left out),
    with its prefill and bytes."""
    done = [r for r in recs[1:] if "decode_speedup" in r and not is_peer(r)]
    if not recs or not done:
        return "No sparse format ran here (see the errors in the table)."
    best = max(done, key=lambda r: r["decode_speedup"])
    dense, sp = recs[0], best.get("sparsity") or 0.0
    what = f"{best['format']}" + (f" at {sp:.0%} sparsity" if sp else "")
    dd, pd = best.get("baseline_decode_dtype"), best.get("baseline_prefill_dtype")
    if best["decode_speedup"] <= 1.0:
        return (f"Gained nothing here: the best format, {what}, decodes at {best['decode_speedup']:.2f}x "
                f"dense {dd}.")
    return (f"Gained: with {what}, this model decodes {best['decode_speedup']:.2f}x as fast as dense {dd} "
            f"({best['decode_tok_s']:.1f} against {dense['decode_tok_s']:.1f} tokens/s), prefills "
            f"{best['prefill_speedup']:.2f}x as fast as dense {pd}, and holds "
            f"{dense['weight_bytes'] / best['weight_bytes']:.1f}x fewer weight bytes.")


def baseline_line(rec: dict) -> str:
    p, d = rec.get("baseline_prefill_dtype"), rec.get("baseline_decode_dtype")
    return p if p == d else f"{p} for prefill, {d} for decode (the faster of each)"


def is_model(recs: List[dict]) -> bool:
    return bool(recs) and "impl" not in recs[0]


def environment_line(env: dict) -> str:
    return (f"{env.get('device', '?')} ({env.get('device_type', '?')}, {env.get('cpu_threads', '?')} CPU threads), "
            f"torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, driver {env.get('driver')}, "
            f"triton {env.get('triton')}, transformers {env.get('transformers')}, "
            f"sparsekit {env.get('sparsekit', '?')} ({env.get('sparsekit_commit')})")


def report(path: str, out: str | None = None) -> str:
    """Markdown for the records in `path`; with `out`, also writes <stem>.md and the PNG plots there."""
    recs = load(path)
    if not recs:
        return f"{path}: no records"
    env = recs[0].get("env", {})
    model = is_model(recs)
    parts = [f"# {os.path.basename(path)}\n", environment_line(env) + "\n"]
    if env.get("command"):
        parts.append(f"reproduce: `{env['command']}`, then `python -m sparsekit bench report --json {path}"
                     f"{'' if out is None else ' --out ' + out}`\n")
    if recs[0].get("runs", 1) > 1:
        parts.append(f"each row: the run with the median time of {recs[0]['runs']} runs of the whole sweep; speedups "
                     "against the median time of dense for the same shape and M\n")
    if model:
        parts.append(f"model: {recs[0]['model']} ({recs[0]['params'] / 1e6:.1f} M parameters), batch "
                     f"{recs[0]['batch']}, prompt {recs[0]['prompt']}, {recs[0]['dtype']}; baseline: dense "
                     f"{baseline_line(recs[0])}\n")
    parts.append(model_table(recs) if model else layer_table(recs))
    text = "\n".join(parts) + "\n"
    if out:
        os.makedirs(out, exist_ok=True)
        stem = os.path.join(out, os.path.splitext(os.path.basename(path))[0])
        with open(stem + ".md", "w") as f:
            f.write(text)
        _plot_model(recs, stem) if model else _plots([r for r in recs if "ms" in r], stem)
    return text


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _plot_model(recs, stem):
    """Bars: prefill and decode speedup over dense per format (and sparsity)."""
    plt = _pyplot()
    recs = [r for r in recs if "prefill_ms" in r and r["format"] != "dense"]
    if plt is None or not recs:
        return
    labels = [r["format"] + ("" if r["format"].startswith(("2:4", "int8")) else f" {r['sparsity']:.0%}")
              for r in recs]
    xs = range(len(recs))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(recs)), 4))
    ax.bar([x - 0.2 for x in xs], [r["prefill_speedup"] for r in recs], 0.4, label=f"prefill (M={recs[0]['prefill_M']})")
    ax.bar([x + 0.2 for x in xs], [r["decode_speedup"] for r in recs], 0.4, label="decode tokens/s")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(list(xs), labels, rotation=20, fontsize=8)
    ax.set_ylabel("speedup vs best dense")
    ax.set_title(recs[0]["model"][:80], fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem + "_speedup.png", dpi=110)
    plt.close(fig)


def _plots(recs, stem):
    """Speedup vs sparsity and speedup vs M, first shape."""
    plt = _pyplot()
    sparse = [r for r in recs if not r["impl"].startswith("dense")]
    if plt is None or not sparse:
        return
    # speedup vs sparsity, one line per (impl, M), first shape
    shape = (sparse[0]["N"], sparse[0]["K"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = defaultdict(list)
    for r in sparse:
        if (r["N"], r["K"]) == shape:
            lines[(r["impl"], r["M"])].append((r["sparsity"], r["speedup"]))
    for (impl, M), pts in sorted(lines.items()):
        if len(pts) > 1:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{impl} M={M}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("speedup vs best dense")
    ax.set_title(f"{shape[0]}x{shape[1]}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem + "_vs_sparsity.png", dpi=110)
    plt.close(fig)
    # speedup vs M at the highest sparsity
    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = max((r["sparsity"] for r in sparse), default=0)
    lines = defaultdict(list)
    for r in sparse:
        if (r["N"], r["K"]) == shape and (r["sparsity"] == top or r["impl"] in ("sparsekit-2:4", "sparsekit-int8",
                                                                               "sparsekit-int8-wo",
                                                                               "sparsekit-2:4+int8")):
            lines[r["impl"]].append((r["M"], r["speedup"]))
    for impl, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
    ax.set_xscale("log", base=2)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("M (rows of activations)")
    ax.set_ylabel("speedup vs best dense")
    ax.set_title(f"{shape[0]}x{shape[1]}, unstructured/block at {top:.0%}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem + "_vs_m.png", dpi=110)
    plt.close(fig)
