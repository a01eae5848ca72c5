"""Timing by the rules of BENCHMARKING.md: medians; CUDA events with the L2 flushed and CUDA
graphs on a GPU; torch.utils.benchmark on the CPU with the thread count stated."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Callable, Dict, Optional

import torch


def time_ms(fn: Callable[[], object], device: torch.device, min_run_time: float = 0.3) -> Dict[str, Optional[float]]:
    """Median milliseconds of fn(); on CUDA also with CUDA graphs ("graph_ms")."""
    if device.type == "cuda":
        import triton.testing as tt

        fn()
        torch.cuda.synchronize()
        eager = tt.do_bench(fn, return_mode="median")
        try:
            graph = tt.do_bench_cudagraph(fn, return_mode="median")
        except Exception:
            graph = None
        return {"ms": float(eager), "graph_ms": None if graph is None else float(graph)}
    from torch.utils.benchmark import Timer

    fn()
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time
    )
    return {"ms": m.median * 1e3, "graph_ms": None}


def _git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def environment(device: torch.device) -> dict:
    import sparsekit

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sparsekit": sparsekit.__version__,
        "sparsekit_commit": _git_commit(),
        "compiled_extension": sparsekit._ext.available(),
    }
    if sparsekit._ext.available():
        env["cpu_isa"] = sparsekit._ext.C.cpu_isa()
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if device.type == "cuda":
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            env["driver"] = out.stdout.strip().splitlines()[0]
        except Exception:
            env["driver"] = None
    return env


def write_jsonl(path: str, records) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def markdown_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)
