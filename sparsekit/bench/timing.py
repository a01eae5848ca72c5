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


def time_ms(fn: Callable[[], object], device: torch.device, min_run_time: float = 0.3,
            graph: bool = True) -> Dict[str, Optional[float]]:
    """Median milliseconds of fn() with the caches flushed before each call; on CUDA
    (triton.testing.do_bench, which flushes L2) also replayed from a CUDA graph ("graph_ms":
    do_bench_cudagraph captures fn after a warm-up call and times the replays with CUDA events;
    None with the reason in "graph_error" when fn cannot be captured; not tried with graph=False,
    e.g. for a function that replays its own graphs). The CPU has no graphs."""
    if device.type == "cuda":
        import triton.testing as tt

        fn()
        torch.cuda.synchronize()
        out = {"ms": float(tt.do_bench(fn, return_mode="median")), "graph_ms": None}
        if not graph:
            return out
        try:
            out["graph_ms"] = float(tt.do_bench_cudagraph(fn, return_mode="median"))
        except Exception as e:  # capture refused (a host sync, a CPU tensor, an allocation outside the pool)
            torch.cuda.synchronize()
            out["graph_error"] = short_error(e)
        return out
    return {"ms": _cpu_median_ms(fn, min_run_time), "graph_ms": None}


_READ_BUF: Dict[str, torch.Tensor] = {}


def read_gbps(nbytes: int, device: torch.device, min_run_time: float = 0.3) -> Dict[str, float]:
    """The machine's streaming read bandwidth at this size, measured now and timed as the kernels are
    (caches flushed before each call on the CPU, do_bench on CUDA): torch.max over a float32 buffer of
    nbytes (on a 2-core Zen 4 it reads 5-15 % faster than torch.sum) (at least 4 KiB; one buffer per device, grown on demand and sliced). A kernel that moves
    nbytes in the same time reads at this bandwidth; BENCHMARKING.md's floor for a memory-bound call."""
    n = max(int(nbytes) // 4, 1024)
    key = str(device)
    buf = _READ_BUF.get(key)
    if buf is None or buf.numel() < n:
        _READ_BUF.pop(key, None)
        buf = _READ_BUF[key] = torch.ones(n, dtype=torch.float32, device=device)
    view = buf[:n]
    ms = time_ms(lambda: view.max(), device, min_run_time, graph=False)["ms"]
    return {"ms": ms, "gbps": n * 4 / (ms * 1e-3) / 1e9}


def short_error(e: BaseException) -> str:
    """The first line of an exception, shortened for a table cell or a JSON record."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"


_FLUSH = None


def _flush_caches() -> None:
    """Writes a buffer larger than the last-level cache (as do_bench zeroes one on the GPU), so
    that a weight smaller than the cache is read from memory, as in a model with many layers."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(int(os.environ.get("SPARSEKIT_FLUSH_BYTES", 256 * 2**20)) // 4, dtype=torch.float32)
    _FLUSH.fill_(1.0)


def _cpu_median_ms(fn, min_run_time: float) -> float:
    import statistics
    import time

    fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < 7 or (time.perf_counter() - start < min_run_time and len(samples) < 200):
        _flush_caches()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def _git_commit() -> Optional[str]:
    """The commit of the checkout sparsekit runs from ("-dirty" with uncommitted changes); None outside one."""
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--exclude", "*"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _version(dist: str) -> Optional[str]:
    """The installed version of a distribution, without importing it (None when absent)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    """What every result record carries: device, versions, commit, CPU model and threads."""
    import sparsekit

    cpu = _cpu_model()
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "device_type": device.type,
        "cpu_model": cpu,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sparsekit": sparsekit.__version__,
        "sparsekit_commit": _git_commit(),
        "compiled_extension": sparsekit._ext.available(),
        "transformers": _version("transformers"),
        "torchao": _version("torchao"),
        "driver": None,
    }
    if sparsekit._ext.available():
        env["cpu_isa"] = sparsekit._ext.C.cpu_isa()
        from sparsekit._info import _cpu_dense_min_m

        env["cpu_dense_min_m"] = _cpu_dense_min_m(sparsekit._ext.C)
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
