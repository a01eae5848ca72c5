"""Launching a @triton.jit kernel without Triton's per-call dispatch.

``kernel[grid](*args, **meta)`` runs, on every call, Triton's binder (the specialisation of each argument), the
cache key of that specialisation, a look-up, a check of the kernel's globals, and at last
``CompiledKernel.run``. A converted layer calls the same kernel with the same kinds of arguments on every
forward, so `launch` keeps the compiled kernel per call key and calls it directly:

    key = (kernel, current device, each positional argument's key, the keyword arguments' items)

* a tensor's key is its dtype and whether its address is a multiple of 16: all that Triton specialises a
  pointer on;
* an int's key is its value, a refinement of what Triton specialises an int on (1, a multiple of 16, 32 or 64
  bits), so it does not depend on Triton's rules; ``None`` and bools are keyed by value and type;
* the keyword arguments must be constexpr parameters or launch options (``num_warps``, ``num_stages``): their
  values are the key as they are.

Two calls with the same key thus specialise alike in Triton (``tests/test_triton_launch.py`` checks that against
Triton's own binder for every launch the launchers make), so the kernel compiled for the first is the one Triton
would pick for the second. The first call of a key goes through ``kernel[grid]`` (compiling if need be) and keeps
the ``CompiledKernel`` it returns; later calls run ``compiled[grid](*args, *constexprs, stream=...)``, the
launch ``JITFunction.run`` itself ends with (the same code in triton 3.6 and 3.8; Triton's launch hooks are
still honoured, the runner reads them).

Not cached (every call through ``kernel[grid]``): the interpreter, a kernel with pre-run hooks, an argument of
another type, a keyword argument that is a run-time parameter; ``SPARSEKIT_TRITON_LAUNCH=jit`` (read at import,
or `set_mode`) turns it off. A kernel's globals are checked on its first call only (sparsekit's kernels read
none that change), and the cache does not see a Triton knob changed later in the process (``TRITON_DEBUG``,
a pass-pipeline hook): set those before the first call.
"""
from __future__ import annotations

import inspect
import os
from typing import Dict

import torch

from ._common import INTERPRET

_ONES = ((1, 1, 1), (1, 1), (1,), ())  # pads a grid to the 3 dimensions CompiledKernel's runner reads
_MAX_ENTRIES = 4096  # keys are exact ints (M varies in prefill): cleared when full, rebuilt by the next calls


def _env_mode() -> str:
    mode = os.environ.get("SPARSEKIT_TRITON_LAUNCH", "cached").strip().lower() or "cached"
    if mode not in ("cached", "jit"):
        raise ValueError(f"SPARSEKIT_TRITON_LAUNCH={mode!r}: expected 'cached' or 'jit'")
    return mode


_mode = _env_mode()
_cache: Dict[tuple, tuple] = {}  # key -> (CompiledKernel, constexpr tail in parameter order)
_plans: Dict[int, tuple] = {}  # id(kernel) -> (kernel, its parameter plan or None: not cacheable)
stats = {"hits": 0, "misses": 0, "uncached": 0}


def set_mode(mode: str) -> str:
    """'cached' (the default) or 'jit' (every launch through ``kernel[grid]``); returns the previous mode.
    For benchmarks and tests that compare the two."""
    global _mode
    if mode not in ("cached", "jit"):
        raise ValueError(f"launch mode {mode!r}: expected 'cached' or 'jit'")
    old, _mode = _mode, mode
    return old


def clear() -> None:
    _cache.clear()
    _plans.clear()
    for k in stats:
        stats[k] = 0


class _Uncacheable(Exception):
    pass


def _arg_key(v):
    t = type(v)
    if t is int:
        return v
    if isinstance(v, torch.Tensor):
        return (v.dtype, v.data_ptr() & 15 == 0)
    if v is None or t is bool:
        return (t, v)
    raise _Uncacheable


class _Plan:
    """What a kernel's signature says once: its parameters' names, which are constexprs, their defaults."""

    __slots__ = ("names", "constexpr", "defaults")

    def __init__(self, fn):
        params = list(fn.params)
        self.names = [p.name for p in params]
        self.constexpr = {p.name for p in params if p.is_constexpr}
        self.defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def tail(self, nargs: int, meta: dict) -> tuple:
        """The values of the parameters after the positional ones, in order (what Triton's binder binds):
        each must be a constexpr given by keyword or defaulted."""
        out = []
        for name in self.names[nargs:]:
            if name not in self.constexpr:
                raise _Uncacheable
            if name in meta:
                out.append(meta[name])
            elif name in self.defaults:
                out.append(self.defaults[name])
            else:
                raise _Uncacheable
        for name in meta:
            if name in self.names and (name not in self.constexpr or self.names.index(name) < nargs):
                raise _Uncacheable
        return tuple(out)


def _plan(fn):
    """The kernel's _Plan, made once; None where it is not cached (no parameters: not a JITFunction; pre-run
    hooks). Kept with the kernel itself, so that its id (in the plans and the cache keys) is not reused by
    another object while the entries live."""
    entry = _plans.get(id(fn))
    if entry is None or entry[0] is not fn:
        try:
            p = _Plan(fn) if not getattr(fn, "pre_run_hooks", None) else None
        except AttributeError:
            p = None
        entry = _plans[id(fn)] = (fn, p)
    return entry[1]


_device_and_stream = None


def _current_device_and_stream():
    """Triton's own view of where a launch goes (what ``JITFunction.run`` asks), bound on first use."""
    global _device_and_stream
    if _device_and_stream is None:
        from triton.runtime.driver import driver

        get_device, get_stream = driver.active.get_current_device, driver.active.get_current_stream

        def f():
            d = get_device()
            return d, get_stream(d)

        _device_and_stream = f
    return _device_and_stream()


def launch(fn, grid, *args, **meta):
    """``fn[grid](*args, **meta)``, through the compiled kernel kept for this call's key (module docstring)."""
    if _mode != "cached" or INTERPRET or type(grid) is not tuple or len(grid) > 3:
        return fn[grid](*args, **meta)
    entry = _plans.get(id(fn))
    plan = entry[1] if entry is not None and entry[0] is fn else _plan(fn)
    if plan is None:
        stats["uncached"] += 1
        return fn[grid](*args, **meta)
    Tensor = torch.Tensor
    device, stream = _current_device_and_stream()
    try:  # ints by value, tensors by dtype and 16-byte alignment (inline: this is the per-call cost)
        key = (id(fn), device, tuple([a if type(a) is int else (a.dtype, a.data_ptr() & 15 == 0)
                                      if type(a) is Tensor else _arg_key(a) for a in args]), tuple(meta.items()))
        hit = _cache.get(key)
    except (_Uncacheable, TypeError):  # another argument type, or a keyword value that cannot be hashed
        stats["uncached"] += 1
        return fn[grid](*args, **meta)
    if hit is not None:
        stats["hits"] += 1
        compiled, tail = hit
        compiled[grid + _ONES[len(grid)]](*args, *tail, stream=stream)
        return compiled
    stats["misses"] += 1
    compiled = fn[grid](*args, **meta)
    try:
        tail = plan.tail(len(args), meta)
    except _Uncacheable:
        return compiled
    if compiled is not None and hasattr(compiled, "__getitem__"):
        if len(_cache) >= _MAX_ENTRIES:
            _cache.clear()
        _cache[key] = (compiled, tail)
    return compiled
