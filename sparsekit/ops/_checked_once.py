"""Index-content checks run once per buffer: the Python twin of csrc/checked_once.h.

The Triton launchers (sparsekit/triton/bsr.py, bitmap.py) check the contents of their index buffers
before a kernel reads them (a malformed buffer would be read out of bounds on the device). A full
check costs a pass over the buffers and, on CUDA, device syncs; a layer calls its op with the same
buffers again and again, so a check that passed is remembered while the buffers provably hold the
same contents: each is alive and the same object (weak reference), and its version counter (bumped
by every in-place write), data pointer and element count are unchanged. Inference tensors have no
version counter and are checked on every call.

A check syncs the device, which is illegal while the current CUDA stream captures a graph: a CUDA
buffer not checked yet is refused then; a checked one costs nothing during capture.
"""
from __future__ import annotations

import threading
import weakref

import torch

MAX_ENTRIES = 4096

_lock = threading.Lock()
_table: dict = {}


def _state(t: torch.Tensor):
    return t._version, t.data_ptr(), t.numel()


def _still_valid(entry, buffers) -> bool:
    refs, states = entry
    for r, t, s in zip(refs, buffers, states):
        if r() is not t or s != (t._version, t.data_ptr(), t.numel()):
            return False
    return True


def _refuse_during_capture(op: str, buffers) -> None:
    if buffers[0].is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"{op}: call the op once before capturing a CUDA graph so its index buffers can be checked")


def run(op: str, buffers, params, check) -> None:
    """Runs check() unless `buffers` passed the check of `op` with the same `params` before and are
    unchanged since. check() raises on a bad buffer; only a check that returns is remembered.
    The path of a remembered check is the launchers' per-call cost: no lock to read (a dict look-up is atomic),
    no generators."""
    buffers = tuple(buffers)
    for t in buffers:
        if t.is_inference():
            _refuse_during_capture(op, buffers)
            check()
            return
    key = (op, *map(id, buffers), *params)
    entry = _table.get(key)
    if entry is not None and _still_valid(entry, buffers):
        return
    _refuse_during_capture(op, buffers)
    check()
    entry = (tuple(weakref.ref(t) for t in buffers), tuple(_state(t) for t in buffers))
    with _lock:
        if len(_table) >= MAX_ENTRIES:
            _evict()
        _table[key] = entry


def _evict() -> None:
    """Drops the entries of dead tensors; if that frees nothing, forgets everything (bounded memory)."""
    dead = [k for k, (refs, _) in _table.items() if any(r() is None for r in refs)]
    for k in dead:
        del _table[k]
    if len(_table) >= MAX_ENTRIES:
        _table.clear()


def size() -> int:
    """Entries held now (tests: the cache stays bounded)."""
    with _lock:
        return len(_table)
