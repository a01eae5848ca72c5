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


def report(path: str, out: str | None = None) -> str:
    recs = [r for r in load(path) if "ms" in r]
    if not recs:
        return f"{path}: no timed records"
    env = recs[0].get("env", {})
    title = (f"{env.get('device', '?')} ({env.get('device_type', '?')}, {env.get('cpu_threads', '?')} CPU threads), "
             f"torch {env.get('torch', '?')}, sparsekit {env.get('sparsekit', '?')} ({env.get('sparsekit_commit')})")
    parts = [f"# {os.path.basename(path)}\n\n{title}\n"]
    if "impl" in recs[0]:  # layer records
        rows = [[f"{r['N']}x{r['K']}", r["M"], f"{r['sparsity']:.0%}", r["impl"], f"{r['ms']:.3f}",
                 "-" if r.get("graph_ms") is None else f"{r['graph_ms']:.3f}", f"{r['speedup']:.2f}x",
                 f"{r['bytes_cap']:.2f}x", f"{r['gbps']:.1f}"] for r in recs]
        parts.append(markdown_table(["N x K", "M", "sparsity", "impl", "ms", "graph ms", "speedup vs best dense",
                                     "bytes cap", "weight GB/s"], rows))
    else:  # model records
        rows = [[r["model"], r["format"], f"{r['sparsity']:.0%}", r["M"], f"{r['dense_ms']:.3f}", f"{r['ms']:.3f}",
                 f"{r['speedup']:.2f}x"] for r in recs]
        parts.append(markdown_table(["model", "format", "sparsity", "M", "dense ms", "ms", "speedup"], rows))
    text = "\n".join(parts) + "\n"
    if out:
        os.makedirs(out, exist_ok=True)
        stem = os.path.splitext(os.path.basename(path))[0]
        with open(os.path.join(out, stem + ".md"), "w") as f:
            f.write(text)
        if "impl" in recs[0]:
            _plots(recs, os.path.join(out, stem))
    return text


def _plots(recs, stem):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    sparse = [r for r in recs if r["impl"].startswith("sparsekit-") or r["impl"] == "torch-csr"]
    # speedup vs sparsity, one line per (impl, M), first shape
    shape = (sparse[0]["N"], sparse[0]["K"]) if sparse else None
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
    ax.set_title(f"{shape[0]}x{shape[1]}" if shape else "")
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
    ax.set_title(f"{shape[0]}x{shape[1]}, unstructured/block at {top:.0%}" if shape else "")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem + "_vs_m.png", dpi=110)
    plt.close(fig)
