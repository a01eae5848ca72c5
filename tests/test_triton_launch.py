"""sparsekit/triton/launch.py: Triton kernels launched through their compiled kernel, cached per call key.

* against Triton's own binder, without a GPU, for every launch the launchers make (the cases of
  bench/gpu_static.py: every op, dtype, configuration and M bucket): the arguments `launch` hands the compiled
  kernel are the ones `JITFunction.run` would (positional ones, then the constexprs and defaults in parameter
  order), and two calls with the same cache key specialise alike in Triton (varied alignments, ints of 1, 16,
  17, 2**31 + 16), i.e. the key refines Triton's;
* the cache logic on a stand-in kernel: first call through `kernel[grid]`, later ones through the compiled
  kernel with the current stream and a 3-d grid, a new key for a misaligned tensor or another int, the paths
  that are never cached (mode "jit", pre-run hooks, a run-time parameter by keyword, other argument types);
* on a GPU: every Triton launcher gives the same bytes cached as through the JIT, and hits the cache.
"""
import importlib.util
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sparsekit.triton import launch as L

REPO = Path(__file__).resolve().parent.parent
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_CUDA = torch.cuda.is_available()

real_kernels = pytest.mark.skipif(not HAS_TRITON or INTERPRET,
                                  reason="needs triton's compiler-side binder (not under TRITON_INTERPRET=1)")


@pytest.fixture(scope="module")
def recorded():
    """(fn, args, kwargs) of every launch the launchers make, recorded by bench/gpu_static.py's cases."""
    spec = importlib.util.spec_from_file_location("gpu_static", REPO / "bench" / "gpu_static.py")
    gs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gs)
    out = [(fn, a, k) for (_op, _dn, _v, _w, _d, _c, fn, a, k) in gs.cases()]
    assert {fn.__name__ for fn, _, _ in out} >= {"_bitmap_mm_kernel", "_bsr_mm_kernel", "_int8_mm_kernel",
                                                 "_w8a16_kernel", "_quantize_kernel"}
    return out


_binders = {}


def _bind(fn, args, kwargs):
    """Triton's binder for sm_90a: (bound arguments, Triton's cache key)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature

    if id(fn) not in _binders:
        _binders[id(fn)] = create_function_from_signature(fn.signature, fn.params,
                                                          make_backend(GPUTarget("cuda", 90, 32)))
    bound, spec, opts = _binders[id(fn)](*args, **kwargs)
    return bound, compute_cache_key({}, spec, opts)


def _same(a, b):
    return a is b if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) else (type(a), a) == (type(b), b)


@real_kernels
def test_launch_passes_what_the_jit_binds(recorded):
    for fn, args, kwargs in recorded:
        plan = L._plan(fn)
        assert plan is not None, fn.__name__
        tail = plan.tail(len(args), kwargs)
        bound, _ = _bind(fn, args, kwargs)
        ours = list(args) + list(tail)
        theirs = list(bound.values())
        assert len(ours) == len(theirs), fn.__name__
        assert all(_same(a, b) for a, b in zip(ours, theirs)), (fn.__name__, ours, theirs)


def _variant(args, rng):
    """args with some tensors swapped for misaligned ones of their dtype and some ints changed."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and rng.random() < 0.5:
            base = torch.empty(64, dtype=a.dtype)
            a = base[rng.choice([1, 2, 3, 8, 16])]  # 1-16 elements in: 16-byte aligned or not, by dtype
        elif type(a) is int and rng.random() < 0.3:
            a = rng.choice([1, 2, 16, 17, 32, 4096, 2 ** 31 + 16])
        out.append(a)
    return tuple(out)


@real_kernels
def test_equal_keys_specialise_alike_in_triton(recorded):
    rng = random.Random(20261206)
    seen = {}
    checked = 0
    for fn, args, kwargs in recorded[::3]:
        for _ in range(12):
            a = _variant(args, rng)
            ours = (id(fn), tuple(L._arg_key(v) for v in a), tuple(kwargs.items()))
            _, theirs = _bind(fn, a, kwargs)
            assert seen.setdefault(ours, theirs) == theirs, (fn.__name__, ours)
            checked += 1
    assert checked > 500 and len(seen) > 100


def test_arg_keys():
    t = torch.empty(8, dtype=torch.float16)
    assert L._arg_key(t) == (torch.float16, t.data_ptr() % 16 == 0)
    assert L._arg_key(t[1:]) == (torch.float16, False)
    assert L._arg_key(7) == 7 and L._arg_key(None) == (type(None), None)
    assert L._arg_key(True) != L._arg_key(1)  # a bool and an int never share a key
    with pytest.raises(L._Uncacheable):
        L._arg_key(1.5)


# ------------------------------------------------------------------------------------------ the cache logic
class _Param:
    def __init__(self, name, constexpr=False, default=None, has_default=False):
        import inspect

        self.name, self.is_constexpr = name, constexpr
        self.default = default if has_default else inspect.Parameter.empty


class _Compiled:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        def runner(*args, stream=None):
            self.log.append(("compiled", grid, args, stream))
        return runner


class _Kernel:
    """Stands in for a JITFunction: `kernel[grid](...)` logs the call and returns a compiled stand-in."""

    def __init__(self):
        self.params = [_Param("x"), _Param("n"), _Param("BLOCK", True), _Param("FLAG", True, False, True)]
        self.pre_run_hooks = []
        self.log = []
        self.compiled = _Compiled(self.log)

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("jit", grid, args, kwargs))
            return self.compiled
        return run


class _Recorder:
    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append(grid)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(L, "INTERPRET", False)
    monkeypatch.setattr(L, "_current_device_and_stream", lambda: (0, 1234))
    old = L.set_mode("cached")
    L.clear()
    yield _Kernel()
    L.set_mode(old)
    L.clear()


def test_first_call_through_the_jit_then_the_compiled_kernel(fake):
    x = torch.empty(32, dtype=torch.float16)
    L.launch(fake, (5,), x, 7, BLOCK=16, num_warps=4)
    L.launch(fake, (5,), x, 7, BLOCK=16, num_warps=4)
    L.launch(fake, (6, 2), x, 7, BLOCK=16, num_warps=4)  # the grid is not in the key
    assert [e[0] for e in fake.log] == ["jit", "compiled", "compiled"]
    assert fake.log[1] == ("compiled", (5, 1, 1), (x, 7, 16, False), 1234)  # the default of FLAG bound too
    assert fake.log[2][1] == (6, 2, 1)
    assert L.stats == {"hits": 2, "misses": 1, "uncached": 0}


@pytest.mark.parametrize("change", ["misaligned", "int", "constexpr", "option", "dtype", "none"])
def test_a_different_key_goes_through_the_jit_again(fake, change):
    x = torch.empty(32, dtype=torch.float16)
    a, kw = (x, 7), dict(BLOCK=16, num_warps=4)
    L.launch(fake, (1,), *a, **kw)
    if change == "misaligned":
        a = (x[1:], 7)
    elif change == "int":
        a = (x, 16)
    elif change == "constexpr":
        kw["BLOCK"] = 32
    elif change == "option":
        kw["num_warps"] = 8
    elif change == "dtype":
        a = (torch.empty(32, dtype=torch.bfloat16), 7)
    else:
        a = (None, 7)
    L.launch(fake, (1,), *a, **kw)
    L.launch(fake, (1,), *a, **kw)
    assert [e[0] for e in fake.log] == ["jit", "jit", "compiled"]


def test_never_cached(fake, monkeypatch):
    x = torch.empty(32, dtype=torch.float16)
    for _ in range(2):
        L.launch(fake, (1,), x, 1.5, BLOCK=16)  # a float argument
        L.launch(fake, (1,), x, n=7, BLOCK=16)  # a run-time parameter by keyword
        L.launch(fake, lambda meta: (1,), x, 7, BLOCK=16)  # a grid function
        L.launch(fake, (1,), x, 7, BLOCK=[16])  # a keyword value that cannot be hashed
    assert [e[0] for e in fake.log] == ["jit"] * 8
    L.set_mode("jit")
    L.launch(fake, (1,), x, 7, BLOCK=16)
    L.launch(fake, (1,), x, 7, BLOCK=16)
    L.set_mode("cached")
    fake.pre_run_hooks.append(lambda *a, **k: None)
    L.clear()
    L.launch(fake, (1,), x, 7, BLOCK=16)
    L.launch(fake, (1,), x, 7, BLOCK=16)
    monkeypatch.setattr(L, "INTERPRET", True)
    L.launch(fake, (1,), x, 7, BLOCK=16)
    assert [e[0] for e in fake.log] == ["jit"] * 13
    rec = _Recorder()  # gpu_static's stand-in: no `params`, called as kernel[grid]
    L.launch(rec, (3,), x)
    assert rec.log == [(3,)]


def test_missing_constexpr_is_not_cached(fake):
    x = torch.empty(32, dtype=torch.float16)
    L.launch(fake, (1,), x, 7)  # BLOCK missing: the JIT raises in real life; here nothing is kept
    L.launch(fake, (1,), x, 7)
    assert [e[0] for e in fake.log] == ["jit", "jit"]


def test_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPARSEKIT_TRITON_LAUNCH", "jit")
    assert L._env_mode() == "jit"
    monkeypatch.setenv("SPARSEKIT_TRITON_LAUNCH", "")
    assert L._env_mode() == "cached"
    monkeypatch.setenv("SPARSEKIT_TRITON_LAUNCH", "fast")
    with pytest.raises(ValueError, match="SPARSEKIT_TRITON_LAUNCH"):
        L._env_mode()
    with pytest.raises(ValueError, match="launch mode"):
        L.set_mode("fast")


def test_cache_is_bounded(fake, monkeypatch):
    monkeypatch.setattr(L, "_MAX_ENTRIES", 3)
    x = torch.empty(32, dtype=torch.float16)
    for n in range(10):
        L.launch(fake, (1,), x, n, BLOCK=16)
    assert len(L._cache) <= 3


# ------------------------------------------------------------------------------------------ on a GPU
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON) or INTERPRET, reason="needs a CUDA device and triton")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cached_launches_give_the_jit_bytes(dtype):
    from sparsekit.formats import BitmapWeight, BSRWeight
    from sparsekit.triton import bitmap as TB
    from sparsekit.triton import bsr as TS
    from sparsekit.triton import int8 as TI

    torch.manual_seed(0)
    dev = "cuda"
    M, N, K = 37, 96, 320
    w = torch.randn(N, K, dtype=dtype) * (torch.rand(N, K) < 0.3)
    x = torch.randn(M, K, device=dev, dtype=dtype)
    bias = torch.randn(N, device=dev, dtype=dtype)
    bw = BitmapWeight.from_dense(w)
    sw = BSRWeight.from_dense(w, blocksize=(16, 16))
    bw = SimpleNamespace(bitmap=bw.bitmap.to(dev), word_offsets=bw.word_offsets.to(dev), values=bw.values.to(dev))
    sw = SimpleNamespace(crow_indices=sw.crow_indices.to(dev), col_indices=sw.col_indices.to(dev),
                         values=sw.values.to(dev))
    wq = torch.randint(-127, 128, (N, K), device=dev, dtype=torch.int8)
    ws = torch.rand(N, device=dev) + 0.5
    calls = {
        "bitmap": lambda: TB.bitmap_mm(x, bw.bitmap, bw.word_offsets, bw.values, bias),
        "bsr": lambda: TS.bsr_mm(x, sw.crow_indices, sw.col_indices, sw.values, N, bias),
        "w8a16": lambda: TI.int8_weight_only_mm(x, wq, ws.to(torch.float32), bias),
        "quantize": lambda: TI.quantize_per_token(x, symmetric=False),
    }
    for name, call in calls.items():
        old = L.set_mode("jit")
        try:
            want = call()
        finally:
            L.set_mode(old)
        L.clear()
        call()
        first = dict(L.stats)
        got = call()
        torch.cuda.synchronize()
        assert L.stats["hits"] > first["hits"], name
        for a, b in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            assert torch.equal(a, b), name
