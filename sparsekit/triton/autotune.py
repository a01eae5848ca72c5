"""Kernel configurations per (op, shape, M bucket, dtype): measured once on the device, cached.

A launcher asks `lookup(table, key)` first: one dict look-up with a tuple key, nothing built on
the device. On a miss it calls `choose(...)`, which

* under the interpreter, on a CPU tensor, while a CUDA graph is being captured, or with
  ``SPARSEKIT_TRITON_AUTOTUNE=0``: returns the heuristic default (the first candidate) and measures nothing;
* otherwise reads the on-disk cache of this device (once per process), and, if the key is not
  there, times every candidate with ``triton.testing.do_bench`` on the call's own tensors,
  keeps the fastest, and writes it back.

The disk cache is a JSON file ``triton-<device name>-torch<v>-triton<v>-v<CACHE_VERSION>.json`` in
``$SPARSEKIT_CACHE_DIR`` (default ``~/.cache/sparsekit``), so a second process starts with the
first one's choices and measures nothing. Tuning happens on the first call of a key, so a
benchmark warms every configuration up before it times anything (bench/triton_gpu.py does).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

# bump when a kernel's meaning of a configuration changes, or a candidate list gains designs that cached choices
# never competed with (2: bitmap_mm's TILE and EXPAND designs, int8_weight_only_mm's EXPAND)
CACHE_VERSION = 2

_lock = threading.Lock()
# Held while a key is tuned and the file written: threads that miss the same key at once measure it
# once (the others then find it in the disk table), timings never overlap, and no thread's merge of
# the file loses another's entries.
_tune_lock = threading.RLock()
_tables: Dict[str, dict] = {}  # op -> {(device index, *key): config}
_disk: Dict[str, dict] = {}  # device tag -> {"op|k1|k2...": config} as read from / written to disk
_device_tags: Dict[int, str] = {}
_warned_write = False
stats = {"measured": 0, "disk_hits": 0, "defaults": 0}


def table(op: str) -> dict:
    """The in-memory table of one op (launchers keep a reference for their fast path)."""
    with _lock:
        return _tables.setdefault(op, {})


def lookup(tbl: dict, key: tuple) -> Optional[dict]:
    return tbl.get(key)


def enabled() -> bool:
    return os.environ.get("SPARSEKIT_TRITON_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> str:
    return os.environ.get("SPARSEKIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sparsekit")


def _sanitize(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")


def versions() -> str:
    try:
        import triton

        tv = triton.__version__
    except Exception:  # pragma: no cover
        tv = "none"
    return f"torch{torch.__version__}-triton{tv}-v{CACHE_VERSION}"


def device_tag(device: torch.device) -> str:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    tag = _device_tags.get(idx)
    if tag is None:
        tag = _sanitize(torch.cuda.get_device_name(idx))
        _device_tags[idx] = tag
    return tag


def cache_file(tag: str) -> str:
    return os.path.join(cache_dir(), _sanitize(f"triton-{tag}-{versions()}") + ".json")


def _disk_key(op: str, key: tuple) -> str:
    return "|".join([op] + [str(k) for k in key])


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data.get("configs", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _disk_table(tag: str) -> dict:
    d = _disk.get(tag)
    if d is None:
        d = _read(cache_file(tag))
        _disk[tag] = d
    return d


def _write(tag: str, new: dict) -> None:
    """Merge `new` into the file (another process may have written meanwhile) and replace it atomically."""
    global _warned_write
    path = cache_file(tag)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        merged = _read(path)
        merged.update(new)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as f:
            json.dump({"device": tag, "versions": versions(), "configs": merged}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        if not _warned_write:
            _warned_write = True
            warnings.warn(f"sparsekit.triton: cannot write the autotune cache {path} ({e}); "
                          "configurations are kept in memory only", RuntimeWarning, stacklevel=3)


def select(op: str, key: tuple, tag: str, candidates: List[dict], measure: Callable[[dict], float]) -> dict:
    """The fastest candidate by `measure(config) -> ms` (inf for one that fails), via the disk cache of `tag`.

    Thread-safe: one thread measures a key while the others wait, then read its choice.
    """
    with _tune_lock:
        return _select(op, key, tag, candidates, measure)[0]


def _select(op, key, tag, candidates, measure) -> Tuple[dict, bool]:
    """(the choice, whether it is one to remember: from the disk or measured; not when no candidate ran)."""
    dk = _disk_key(op, key)
    disk = _disk_table(tag)
    cfg = disk.get(dk)
    if cfg is not None:
        stats["disk_hits"] += 1
        return dict(cfg), True
    best, best_ms = None, math.inf
    for c in candidates:
        try:
            ms = float(measure(c))
        except Exception:  # e.g. out of shared memory for this configuration
            ms = math.inf
        if ms < best_ms:
            best, best_ms = c, ms
    stats["measured"] += 1
    if best is None:  # nothing ran (e.g. a call with bad arguments): the default, which raises a clear error
        return dict(candidates[0]), False
    best = dict(best)
    disk[dk] = best
    _write(tag, {dk: best})
    return best, True


def _do_bench_ms(fn) -> float:
    from triton.testing import do_bench

    try:
        return do_bench(fn, warmup=5, rep=25, return_mode="median")
    except TypeError:  # older signature
        return do_bench(fn, warmup=5, rep=25)


def _measurable(device: torch.device) -> bool:
    """Whether kernels on `device` can be timed: a CUDA device, not the interpreter (a seam: the CPU tests of the
    measured routes stand a CPU tensor in for a CUDA one)."""
    from ._common import INTERPRET

    return device.type == "cuda" and not INTERPRET


def choose(op: str, tbl: dict, key: tuple, device: torch.device, candidates: List[dict],
           run: Callable[[dict], None]) -> dict:
    """The configuration for `key` (whose first element is the device index); fills `tbl`.

    `run(config)` launches the kernel on the call's own tensors (kernels only write their output).
    """
    if not _measurable(device):
        cfg = dict(candidates[0])
        stats["defaults"] += 1
        tbl[key] = cfg
        return cfg
    if torch.cuda.is_current_stream_capturing():
        # never measure inside a graph capture; do not remember, so the next eager call tunes
        stats["defaults"] += 1
        return dict(candidates[0])
    if not enabled():
        cfg = dict(candidates[0])
        stats["defaults"] += 1
    else:
        tag = device_tag(device)

        def measure(c):
            run(c)  # compile and check that it runs before timing
            return _do_bench_ms(lambda: run(c))

        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext(), _tune_lock:
            cfg, keep = _select(op, key[1:], tag, candidates, measure)
        if not keep:  # measured again by the next call of this key
            return cfg
    tbl[key] = cfg
    return cfg


def clear(memory: bool = True, disk_view: bool = True) -> None:
    """Forget configurations held in memory (the files on disk stay)."""
    with _lock:
        if memory:
            for t in _tables.values():
                t.clear()
        if disk_view:
            _disk.clear()


def config_summary() -> Dict[str, List[Tuple[tuple, dict]]]:
    return {op: list(t.items()) for op, t in _tables.items()}
