#!/usr/bin/env python
"""The GPU code checked without a GPU: every Triton kernel compiled for sm_80 and sm_90a with every
candidate configuration its launcher can pick, and the compiled .cu kernels of sparsekit._C, read
back from their cubins (registers, local memory, shared memory, SASS).

    python bench/gpu_static.py                 # everything: writes csrc/cuda/TRITON_RESOURCES.md,
                                               # csrc/cuda/RESOURCES.md and bench/results/gpu_static_*.jsonl
    python bench/gpu_static.py --jobs 2        # compile in 2 processes (the default: the CPU count, at most 8)
    python bench/gpu_static.py --no-cache      # compile everything again (ignore the committed results)
    python bench/gpu_static.py --ops bsr_mm --dtypes bf16 --arch 90 --no-cuda --md /tmp/t.md --jsonl /tmp/t.jsonl

Triton part. The candidates come from the launchers themselves: for every op, every dtype its checks
accept, every M bucket (`m_bucket`), the K values below and (BSR) the block sizes sparsekit uses, the
launcher's own candidate function is called and each configuration is launched through the launcher's
own `_launch*` function with the kernel replaced by a recorder, on CPU tensors of the real shape
(nothing runs). The recorded arguments are specialised by Triton's own binder for the target, as a real
launch is: 16-byte-divisible pointers, sizes and strides marked so, unit strides and M = 1 folded into
constants. Identical specialisations are compiled once. Each is compiled with `triton.compile` for
GPUTarget("cuda", 80 / 90, 32) (ptxas gives sm_80 / sm_90a), then

* `cuobjdump --dump-resource-usage` of the cubin: registers, stack frame, local and static shared memory;
  the dynamic shared memory is Triton's metadata;
* `nvdisasm -g` of the cubin (SASS with source lines): tensor-core instructions (HMMA / IMMA, and on
  sm_90a wgmma, which SASS spells HGMMA / IGMMA), LDL / STL, and the width of each global load
  (LDG, and LDGSTS = cp.async) attributed to the source line that issued it, so the weight stream's
  load width is read off the lines that load the weight (`STREAMS`), and on sm_90a how many wgmma groups each
  `WARPGROUP.DEPBAR` leaves in flight (`wgmma_waits`: all 0 means every wait drains the tensor cores, so the next
  K step's loads and conversions cannot overlap a running dot).

A failure: a compile error, a stack frame or local memory (spills), LDL / STL, shared memory over the
architecture's per-block limit (sm_80 163 KB, sm_90a 227 KB), or a kernel whose tl.dot gets 16- or 8-bit
operands (fp16 / bf16 / int8 launches) but has no tensor-core instruction. Float32 launches multiply with
input_precision="ieee" (exact float32 products), which tensor cores cannot do: their dots are FMA loops
by design and are reported as such. Load widths are reported, not judged.

The cache. The committed JSON lines (bench/results/gpu_static_triton.jsonl) are the results of the last full
run, each record with a key: sha256 of the kernel's source closure (its text and, recursively, that of every
@triton.jit helper and the values of the plain globals it names; not line numbers), the specialisation
(signature = dtypes, constexprs = configuration and flags, attributes, compile options incl. warps / stages),
the arch, triton's and ptxas's versions, and the extraction rules (the source of compile_one and its parsers,
STREAMS, MMA_OPS). A run recomputes every key from the current source and compiles only the specialisations
whose key has no record (stale: the same kernel x config x dtype x arch with another key; new: never
compiled), plus the sample: per op and arch one bfloat16 launcher default, compiled on every run and compared
field by field with its cached record (a difference fails the run: the key misses an input). The checks
(`failures`) run on every record, cached or fresh. So a kernel change makes CI compile that kernel's
candidates again (slow, correct) until `python bench/gpu_static.py` regenerates the committed files. Fresh
compiles are appended to <--jsonl>.partial as they finish, which the next run reads: an interrupted run loses
nothing. `--no-cache` compiles everything; `--no-compile` compiles nothing (a record missing = a failure).
Triton's own cache is never used (a fresh temporary directory).

CUDA part (`--cuda`, on by default when sparsekit._C carries CUDA code): the sm_80 and sm_90a cubins
of the built extension (`cuobjdump -xelf`), each kernel's registers, stack, shared memory, LDL / STL,
global load widths. A failure: a stack frame, local memory, LDL / STL, shared memory over the limit.
Not cached (it reads the built .so: seconds).

Writes a markdown table and JSON lines (one record per kernel x configuration x dtype x arch, after one
header line) and exits non-zero on any failure; the last line printed is a one-line summary.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ARCHS = (80, 90)
ARCH_NAME = {80: "sm_80", 90: "sm_90a"}
# the most shared memory one block may have (opt-in): A100 163 KB, H100 / H200 227 KB
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# Sizes of the compile shapes: N = K = 4096 (every LLaMA-7B dimension is a multiple of 512, so this is the
# unmasked-K specialisation those layers get). --full adds K = 11008 (not a multiple of 512: the K-masked
# variants where BLOCK_K does not divide it) and powers of two from 16, for the K-clamped candidates of small layers.
N_COMPILE = 4096
K_REAL = (4096,)
K_FULL = (11008, 16, 32, 64, 128, 256, 512, 1024, 2048)
MMA_OPS = ("HMMA", "HGMMA", "IMMA", "IGMMA", "QGMMA", "DMMA")

DEFAULT_MD = REPO / "csrc" / "cuda" / "TRITON_RESOURCES.md"
DEFAULT_CUDA_MD = REPO / "csrc" / "cuda" / "RESOURCES.md"
DEFAULT_JSONL = REPO / "bench" / "results" / "gpu_static_triton.jsonl"
DEFAULT_CUDA_JSONL = REPO / "bench" / "results" / "gpu_static_cuda.jsonl"

# Source lines that load each stream, per kernel (regular expressions on the kernel's own source lines).
# A pattern that matches no line is an error: the kernel changed, update the pattern.
STREAMS = {
    "_bsr_mm_kernel": {"weight": r"\bw = tl\.load\(w_ptrs", "x": r"\bxk = tl\.load\(x_ptrs"},
    "_bitmap_mm_kernel": {"weight": r"\bv = (tl\.load\(v_ptr|_decode_tile\()", "bitmap": r"\bu, cnt = _load_words\(",
                          "x": r"\bxj = tl\.load\("},
    "_bitmap_expand_kernel": {"weight": r"\bv = _decode_tile\(", "bitmap": r"\bu, cnt = _load_words\("},
    "_int8_mm_kernel": {"weight": r"\bb = tl\.load\(b_ptrs", "x": r"\ba = tl\.load\(a_ptrs"},
    "_w8a16_kernel": {"weight": r"\bw = tl\.load\(w_ptrs", "x": r"\bxk = tl\.load\(x_ptrs"},
    "_w8_expand_kernel": {"weight": r"\bw = tl\.load\(w_ptr"},
    "_quantize_kernel": {"x": r"v, fin = _load_finite\("},
}


# ------------------------------------------------------------------------------------------ tools
def _tool(name: str) -> str:
    import triton

    try:
        from triton import knobs

        p = getattr(knobs.nvidia, name).path
        if p and os.path.exists(p):
            return p
    except Exception:
        pass
    for p in (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name,
              Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name):
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"gpu_static: {name} not found (triton's bundled one, $CUDA_HOME/bin or PATH)")


def _run(cmd, **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


# ------------------------------------------------------------------------------------------ cases
class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the call."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((args, kwargs))

        return launch


@contextlib.contextmanager
def _recording(module, name):
    fn = getattr(module, name)
    rec = _Recorder(fn)
    setattr(module, name, rec)
    try:
        yield rec
    finally:
        setattr(module, name, fn)


@contextlib.contextmanager
def _no_dense_matmul():
    """torch.mm / torch.addmm made no-ops that return their `out`: the dense matmul some launchers run after their
    Triton kernel (bitmap EXPAND, int8 weight-only at large M) is not a launch to record, and on the CPU tensors
    of cases() it is real work (63 matmuls took 66 of the 69 s cases() took)."""
    import torch

    saved = torch.mm, torch.addmm
    torch.mm = torch.addmm = lambda *args, out=None, **kwargs: out
    try:
        yield
    finally:
        torch.mm, torch.addmm = saved


def _m_buckets():
    from sparsekit.triton._common import m_bucket

    return sorted({m_bucket(m) for m in range(1, 8193)})


def _m_of(bucket: int) -> int:
    """The M compiled for an M bucket: 1 for decode (M = 1 is a constant in a real launch, and changes the code),
    otherwise a size inside the bucket that is not a multiple of 16 (2, 3, 7, 15, ...), so that one
    specialisation stands for every M of the buckets above 1: a multiple of 16 only adds a divisibility
    hint on M, which no address depends on."""
    return bucket if bucket <= 2 else bucket - 1


def _dtypes():
    """The float dtypes the launchers' checks accept."""
    import torch

    from sparsekit.ops import _checks

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return [(names[d], d) for d in _checks.FLOAT_DTYPES]


def _bsr_blocks(full=False):
    """Block sizes sparsekit uses: what `auto` tries and the convert default; `full` adds two non-square ones
    the tests run."""
    from sparsekit import auto
    from sparsekit.convert import SparseConfig

    blocks = [(b, b) for b in auto.BSR_BLOCKS]
    d = SparseConfig().blocksize
    d = (d, d) if isinstance(d, int) else tuple(d)
    for b in [d] + ([(32, 64), (8, 16)] if full else []):
        if b not in blocks:
            blocks.append(b)
    return blocks


def cases(ops=None, dtypes=None, buckets=None, full=False):
    """Yield (op, dtype, variant, where, is_default, config, fn, args, kwargs): one per launch the
    launchers would make, recorded from their own candidate lists and `_launch*` functions."""
    import torch

    from sparsekit.triton import bitmap as BM
    from sparsekit.triton import bsr as BS
    from sparsekit.triton import int8 as I8

    buckets = buckets or _m_buckets()
    fdt = [(n, d) for n, d in _dtypes() if not dtypes or n in dtypes]
    want = (lambda op: True) if not ops else (lambda op: op in ops)
    E = torch.empty
    N = N_COMPILE
    ks = K_REAL + (K_FULL if full else ())

    def one(module, name, launch):
        with _recording(module, name) as rec, _no_dense_matmul():
            launch()
        assert len(rec.calls) == 1, f"{name}: expected one launch, got {len(rec.calls)}"
        return rec.fn, rec.calls[0][0], rec.calls[0][1]

    if want("bsr_mm"):
        for dn, dt in fdt:
            for R, C in _bsr_blocks(full):
                K = 4096
                for b in buckets:
                    M = _m_of(b)
                    x, y = E(M, K, dtype=dt), E(M, N, dtype=dt)
                    crow = torch.zeros(N // R + 1, dtype=torch.int32)
                    col = torch.zeros(8, dtype=torch.int32)
                    vals = E(8, R, C, dtype=dt)
                    for i, c in enumerate(BS.candidates(R, C, b, dt)):
                        fn, a, k = one(BS, "_bsr_mm_kernel",
                                       lambda c=c: BS._launch(x, crow, col, vals, None, y, M, N, R, C, c))
                        yield "bsr_mm", dn, f"{R}x{C}", f"M{b} {R}x{C}", i == 0, c, fn, a, k

    if want("bitmap_mm"):
        for dn, dt in fdt:
            for K in ks:
                words = (K + 31) // 32
                bm, wo = E(N, words, dtype=torch.int32), E(N, words, dtype=torch.int32)
                vals = E(64, dtype=dt)
                for b in buckets:
                    M = _m_of(b)
                    x, y = E(M, K, dtype=dt), E(M, N, dtype=dt)
                    seen_default = set()
                    for density in (1, 5):  # the density bucket only reorders the candidates
                        for i, c in enumerate(BM.candidates(b, K, dt, density)):
                            kernel = "_bitmap_expand_kernel" if c.get("EXPAND") else "_bitmap_mm_kernel"
                            fn, a, k = one(BM, kernel,
                                           lambda c=c: BM._launch(x, bm, wo, vals, None, y, M, N, K, c))
                            key = json.dumps(c, sort_keys=True)
                            if i == 0:
                                seen_default.add(key)
                            yield "bitmap_mm", dn, "", f"M{b} K{K} d{density / 10:.1f}", i == 0, c, fn, a, k

    if want("int8_mm"):
        outs = [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32), ("i32", None)]
        outs = [(n, d) for n, d in outs if not dtypes or n in dtypes]
        for on, od in outs:
            for zero in (False, True):
                for K in ks:
                    wq, ws = E(N, K, dtype=torch.int8), E(N, dtype=torch.float32)
                    for b in buckets:
                        M = _m_of(b)
                        xq, xs, xz = E(M, K, dtype=torch.int8), E(M, dtype=torch.float32), E(M, dtype=torch.int32)
                        y = E(M, N, dtype=od if od is not None else torch.int32)
                        for i, c in enumerate(I8.int8_candidates(b, K)):
                            raw = od is None
                            fn, a, k = one(I8, "_int8_mm_kernel", lambda c=c: I8._launch_int8(
                                xq, None if raw else xs, xz if zero else None, wq, None if raw else ws, None, y, raw, c))
                            yield ("int8_mm", on, "zero point" if zero else "symmetric", f"M{b} K{K}", i == 0, c,
                                   fn, a, k)

    if want("int8_weight_only_mm"):
        for dn, dt in fdt:
            for K in ks:
                wq, ws = E(N, K, dtype=torch.int8), E(N, dtype=torch.float32)
                for b in buckets:
                    M = _m_of(b)
                    x, y = E(M, K, dtype=dt), E(M, N, dtype=dt)
                    for i, c in enumerate(I8.weight_only_candidates(b, K, dt)):
                        kernel = "_w8_expand_kernel" if c.get("EXPAND") else "_w8a16_kernel"
                        fn, a, k = one(I8, kernel, lambda c=c: I8._launch_wo(x, wq, ws, None, y, c))
                        yield "int8_weight_only_mm", dn, "", f"M{b} K{K}", i == 0, c, fn, a, k

    if want("quantize_per_token"):
        for dn, dt in fdt:
            for sym in (True, False):
                for K in sorted(set(ks + (8192,))):
                    M = 16
                    x = E(M, K, dtype=dt)
                    q, s, z = E(M, K, dtype=torch.int8), E(M, dtype=torch.float32), E(M, dtype=torch.int32)
                    for i, c in enumerate(I8.quantize_candidates(K)):
                        fn, a, k = one(I8, "_quantize_kernel", lambda c=c: I8._launch_quantize(x, q, s, z, sym, c))
                        yield ("quantize_per_token", dn, "symmetric" if sym else "asymmetric", f"K{K}", i == 0, c,
                               fn, a, k)


def _kernels_in_package():
    """Every @triton.jit function named *_kernel in sparsekit.triton's modules (helpers are inlined into them)."""
    import importlib
    import pkgutil

    import triton

    import sparsekit.triton as pkg

    out = {}
    for m in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"sparsekit.triton.{m.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                out[name] = mod.__name__
    return out


# ------------------------------------------------------------------------------------------ specialisation
_binders = {}


def specialise(fn, args, kwargs, arch):
    """What Triton's launcher would compile for these arguments on `arch`: (signature, constexprs, attrs,
    options), from Triton's own binder (`JITFunction.run` does the same)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    key = (id(fn), arch)
    if key not in _binders:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        _binders[key] = (backend, create_function_from_signature(fn.signature, fn.params, backend))
    backend, binder = _binders[key]
    kwargs = dict(kwargs)
    bound, spec, opts = binder(*args, **kwargs)
    options, sig, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return sig, constexprs, attrs, options.__dict__


def _spec_key(fn, arch, sig, constexprs, attrs, options):
    return json.dumps([fn.__name__, arch, sorted(sig.items()), sorted((str(k), repr(v)) for k, v in constexprs.items()),
                       sorted((str(k), repr(v)) for k, v in attrs.items()),
                       sorted((k, repr(v)) for k, v in options.items())])


# ------------------------------------------------------------------------------------------ SASS
_INSN = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)")
_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')


def load_width(op: str):
    """Bits moved per thread by a global load opcode (LDG / LDGSTS), None for anything else."""
    parts = op.split(".")
    if parts[0] not in ("LDG", "LDGSTS"):
        return None
    for p, bits in (("128", 128), ("64", 64), ("U16", 16), ("S16", 16), ("U8", 8), ("S8", 8)):
        if p in parts[1:]:
            return bits
    return 32


def parse_sass(text: str):
    """(opcode Counter, {(file, line): Counter of global-load opcodes}) of nvdisasm -g output."""
    ops = Counter()
    loads = defaultdict(Counter)
    where = None
    for line in text.splitlines():
        m = _LINE.search(line)
        if m:
            where = (os.path.realpath(m.group(1)), int(m.group(2)))
            continue
        m = _INSN.search(line)
        if not m:
            continue
        op = m.group(1)
        ops[op] += 1
        if load_width(op) is not None:
            loads[where][op] += 1
    return ops, loads


_WGMMA_WAIT = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*(0x[0-9a-fA-F]+|\d+)")


def wgmma_waits(text: str) -> list:
    """sm_90a SASS: for each WARPGROUP.DEPBAR, how many wgmma groups it leaves in flight, sorted (all 0: every
    wait drains the tensor cores, so nothing overlaps the next K step's loads and conversions)."""
    return sorted(int(v, 0) for v in _WGMMA_WAIT.findall(text))


def parse_resource_usage(text: str):
    """{function name: {REG, STACK, SHARED, LOCAL}} from cuobjdump --dump-resource-usage."""
    out = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            out[name] = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            name = None
    return out


def _summ_ops(ops: Counter, prefixes) -> dict:
    out = Counter()
    for op, n in ops.items():
        head = op.split(".")[0]
        if head in prefixes:
            out[head] += n
    return dict(out)


def _width_hist(counter: Counter) -> dict:
    out = Counter()
    for op, n in counter.items():
        kind = "LDGSTS" if op.startswith("LDGSTS") else "LDG"
        out[f"{kind}.{load_width(op)}"] += n
    return dict(sorted(out.items()))


def stream_lines(fn):
    """{stream: set of (file, line)} of the kernel's source lines that load each stream."""
    pats = STREAMS.get(fn.__name__, {})
    src, first = inspect.getsourcelines(fn.fn)
    path = os.path.realpath(inspect.getsourcefile(fn.fn))
    out = {}
    for stream, pat in pats.items():
        lines = {(path, first + i) for i, s in enumerate(src) if re.search(pat, s)}
        if not lines:
            raise RuntimeError(f"gpu_static: STREAMS[{fn.__name__!r}][{stream!r}] = {pat!r} matches no source line "
                               f"of {fn.__name__}: update the pattern")
        out[stream] = lines
    return out


_DILOC = re.compile(r"^(![0-9]+) = (?:distinct )?!DILocation\(line: (\d+)(?:, column: \d+)?, scope: (![0-9]+)"
                    r"(?:, inlinedAt: (![0-9]+))?")
_DISCOPE = re.compile(r"^(![0-9]+) = (?:distinct )?!DI(?:Subprogram|LexicalBlock|LexicalBlockFile)\(.*?\bfile: (![0-9]+)")
_DIFILE = re.compile(r'^(![0-9]+) = (?:distinct )?!DIFile\(filename: "([^"]*)", directory: "([^"]*)"')
_ASM = re.compile(r'asm sideeffect "([^"]*)".*!dbg (![0-9]+)')
_CP_ASYNC = re.compile(r"cp\.async\.\w+\.shared\.global(?:\.[\w:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)")


def llir_loads(llir: str):
    """[(kind, bits, [(file, line) of the load and of each call site it is inlined into])] for every global load
    (ld.global / cp.async) of the LLVM IR. Triton emits them as inline PTX whose debug location is the source
    line of the tl.load (the .loc lines of the PTX and SASS can be shifted by LLVM's codegen; these are not)."""
    locs, scopes, files = {}, {}, {}
    for ln in llir.splitlines():
        if not ln.startswith("!"):
            continue
        m = _DILOC.match(ln)
        if m:
            locs[m.group(1)] = (int(m.group(2)), m.group(3), m.group(4))
            continue
        m = _DIFILE.match(ln)
        if m:
            files[m.group(1)] = os.path.realpath(os.path.join(m.group(3), m.group(2)))
            continue
        m = _DISCOPE.match(ln)
        if m:
            scopes[m.group(1)] = m.group(2)

    def chain(dbg):
        out, seen = [], set()
        while dbg and dbg in locs and dbg not in seen:
            seen.add(dbg)
            line, scope, inl = locs[dbg]
            out.append((files.get(scopes.get(scope), "?"), line))
            dbg = inl
        return out

    res = []
    for ln in llir.splitlines():
        if "ld.global" not in ln and "cp.async" not in ln:
            continue
        m = _ASM.search(ln)
        if not m:
            continue
        asm, dbg = m.group(1), m.group(2)
        where = chain(dbg)
        for ins in asm.split("\\0A"):
            ins = ins.replace("\\09", " ").strip()
            tok = next((t for t in ins.split() if t.startswith("ld.global")), None)
            if tok:
                parts = tok.split(".")
                vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
                mb = re.fullmatch(r"[bsuf](\d+)", parts[-1])
                res.append(("LDG", vec * int(mb.group(1)) if mb else 0, where))
                continue
            mc = _CP_ASYNC.search(ins)
            if mc:
                res.append(("LDGSTS", 8 * int(mc.group(1), 0), where))
    return res


# ------------------------------------------------------------------------------------------ the result cache
# A compile's result (everything compile_one reads off the cubin) is stored with a key, and reused while the key
# is the same: sha256 of the kernel's source closure (source_key), the specialisation (signature, constexprs
# incl. the configuration, attributes, options: dtype and config are in there), the arch, triton's and ptxas's
# versions and the extraction rules (rules_key). The checks (failures) are applied to every record, cached
# or fresh, on every run; they are not in the key.
RAW_FIELDS = ("arch", "compile_s", "error", "regs", "stack", "local", "static_smem", "dyn_smem", "smem", "ldl", "stl",
              "mma", "dot", "dot_ieee", "loads", "all_loads", "wgmma_waits")
COMPARED_FIELDS = tuple(f for f in RAW_FIELDS if f != "compile_s")


def source_key(fn, _memo=None) -> str:
    """sha256 of a @triton.jit function's source text and, recursively, of every @triton.jit function and plain
    global value (bool / int / float / str / tl.constexpr) it names, directly or as module.attr. Line numbers are
    not part of it (Triton's own cache_key has them), so editing a candidate list above a kernel keeps its key."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    memo = {} if _memo is None else _memo
    name = f"{fn.fn.__module__}.{fn.fn.__qualname__}"
    if name in memo:
        return memo[name]
    memo[name] = f"recursion:{name}"
    g = fn.fn.__globals__
    refs = {}
    for node in ast.walk(ast.parse(fn.src)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in g:
            refs[node.id] = g[node.id]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and isinstance(g.get(node.value.id), types.ModuleType)):
            mod = g[node.value.id]
            if not mod.__name__.startswith("triton") and hasattr(mod, node.attr):
                refs[f"{node.value.id}.{node.attr}"] = getattr(mod, node.attr)
    h = hashlib.sha256(fn.src.encode())
    for ref in sorted(refs):
        val = refs[ref]
        if isinstance(val, JITFunction):
            h.update(f"\n{ref}:jit:{source_key(val, memo)}".encode())
        elif isinstance(val, tl.constexpr):
            h.update(f"\n{ref}=constexpr({val.value!r})".encode())
        elif isinstance(val, (bool, int, float, str)):
            h.update(f"\n{ref}={val!r}".encode())
    memo[name] = h.hexdigest()
    return memo[name]


def rules_key() -> str:
    """sha256 of what turns a compiled kernel into a record: the source of compile_one and the parsers it calls,
    their regular expressions, MMA_OPS and STREAMS. A change to any of them makes every cached record stale."""
    fns = (compile_one, _ieee_dot, load_width, parse_sass, parse_resource_usage, _summ_ops, _width_hist, stream_lines,
           llir_loads, wgmma_waits)
    h = hashlib.sha256()
    for f in fns:
        h.update(inspect.getsource(f).encode())
    h.update(repr([r.pattern for r in (_INSN, _LINE, _DILOC, _DISCOPE, _DIFILE, _ASM, _CP_ASYNC, _WGMMA_WAIT)]).encode())
    h.update(repr([MMA_OPS, sorted((k, sorted(v.items())) for k, v in STREAMS.items())]).encode())
    return h.hexdigest()


def _portable(options: dict) -> dict:
    """The compile options without machine-specific paths (libdevice's location)."""
    out = dict(options)
    if out.get("extern_libs"):
        out["extern_libs"] = tuple((n, os.path.basename(str(p))) for n, p in out["extern_libs"])
    return out


def cache_key(fn, arch, sig, constexprs, attrs, options, env, rules) -> str:
    return hashlib.sha256(json.dumps([
        source_key(fn), _spec_key(fn, arch, sig, constexprs, attrs, _portable(options)),
        env["triton"], env["ptxas"], rules]).encode()).hexdigest()[:32]


def load_cache(paths):
    """({key: raw record}, {record identity: key}) from JSON lines of earlier runs (records with a "key"; later
    files win). The identity (op, dtype, variant, config, flags, arch) tells a stale record from a new one."""
    by_key, idents = {}, {}
    for p in paths:
        if not p or not os.path.exists(p):
            continue
        with open(p) as f:
            for ln in f:
                if not ln.strip():
                    continue
                try:
                    r = json.loads(ln)
                except json.JSONDecodeError:  # a partial line of an interrupted run
                    continue
                if "key" not in r:
                    continue
                by_key[r["key"]] = {k: r[k] for k in RAW_FIELDS if k in r}
                if "op" in r:
                    idents[_rec_key(r)] = r["key"]
    return by_key, idents


# ------------------------------------------------------------------------------------------ one compile
def _ieee_dot(ttir_line: str) -> bool:
    """A tt.dot of float32 operands with exact products: the TTIR prints inputPrecision only when it is not
    the default ieee (tf32, tf32x3, ...)."""
    if "inputPrecision = ieee" in ttir_line:
        return True
    return bool(re.search(r"xf32> \* tensor<[^>]*xf32>", ttir_line)) and "inputPrecision" not in ttir_line


def compile_one(job):
    """Compile one specialisation for one arch and read its cubin. Runs in a worker process."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, arch, sig, constexprs, attrs, options, dtype_name = job
    rec = {"arch": ARCH_NAME[arch]}
    t0 = time.time()
    try:
        ck = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:  # a compile error is a result, not a crash of the run
        msg = str(e).strip().splitlines()
        rec.update(compile_s=round(time.time() - t0, 2), error=f"{type(e).__name__}: {msg[0] if msg else ''}"[:300])
        return rec
    rec["compile_s"] = round(time.time() - t0, 2)
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(ck.asm["cubin"])
        ru = parse_resource_usage(_run([_tool("cuobjdump"), "--dump-resource-usage", cubin]))
        sass = subprocess.run([_tool("nvdisasm"), "-c", cubin], check=True, capture_output=True, text=True).stdout
    res = next(iter(ru.values()))
    ops, loads = parse_sass(sass)
    ttir = ck.asm["ttir"]
    dots = [ln for ln in ttir.splitlines() if "tt.dot" in ln]
    streams = {}
    lloads = llir_loads(ck.asm["llir"])
    for stream, lines in stream_lines(fn).items():
        c = Counter()
        for kind, bits, where in lloads:
            if any(w in lines for w in where):
                c[f"{kind}.{bits}"] += 1
        streams[stream] = dict(sorted(c.items()))
    all_loads = Counter()
    for c in loads.values():
        all_loads.update(c)
    dyn = int(ck.metadata.shared)
    rec.update(
        regs=res.get("REG", 0), stack=res.get("STACK", 0), local=res.get("LOCAL", 0),
        static_smem=res.get("SHARED", 0), dyn_smem=dyn, smem=dyn + res.get("SHARED", 0),
        ldl=sum(n for op, n in ops.items() if op.startswith("LDL")),
        stl=sum(n for op, n in ops.items() if op.startswith("STL")),
        mma=_summ_ops(ops, MMA_OPS), dot=bool(dots), dot_ieee=bool(dots) and all(_ieee_dot(ln) for ln in dots),
        loads=streams, all_loads=_width_hist(all_loads), wgmma_waits=wgmma_waits(sass),
    )
    return rec


def failures(rec, dtype_name):
    out = []
    if "error" in rec:
        return [f"compile error: {rec['error']}"]
    if rec["stack"] or rec["local"] or rec["ldl"] or rec["stl"]:
        out.append(f"local memory (stack {rec['stack']} B, local {rec['local']} B, {rec['ldl']} LDL, {rec['stl']} STL)")
    lim = SMEM_LIMIT[80 if rec["arch"] == "sm_80" else 90]
    if rec["smem"] > lim:
        out.append(f"shared memory {rec['smem']} B > {lim} B")
    if rec["dot"] and not rec["mma"]:
        # fp32 launches ask for exact float32 products (input_precision="ieee"): FMA by design
        if not (dtype_name == "fp32" and rec["dot_ieee"]):
            out.append("tl.dot without a tensor-core instruction")
    return out


# ------------------------------------------------------------------------------------------ the Triton run
def _cfg_str(c: dict) -> str:
    keys = [k for k in ("DOT", "SWAP", "BITS", "TILE", "EXPAND", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_C", "WPB", "GROUP_M")
            if k in c]
    parts = []
    for k in keys:
        v = c[k]
        if isinstance(v, bool):
            if v:
                parts.append(k.lower())
            elif k == "DOT" and not (c.get("TILE") or c.get("EXPAND")):
                parts.append("fma")
        else:
            parts.append(f"{k.replace('BLOCK_', '')}{v}")
    return " ".join(parts) + f" w{c['num_warps']} s{c['num_stages']}"


def _flags(constexprs, fn):
    """The constexpr flags of a specialisation that are not configuration keys (EVEN_K, M = 1, unit strides ...)."""
    names = fn.arg_names
    out = {}
    for k, v in constexprs.items():
        name = names[k[0]]
        if name.startswith(("BLOCK_", "GROUP_")) or name in ("DOT", "SWAP", "BITS", "WPB"):
            continue
        out[name] = v if isinstance(v, (bool, int, float, str)) else repr(v)
    return out


_JOBS = []


def _compile_job(i):
    return compile_one(_JOBS[i])


def _rec_key(r):
    return (r["op"], r["dtype"], r["variant"], json.dumps(r["config"], sort_keys=True),
            json.dumps(r["flags"], sort_keys=True), r["arch"])


def run_triton(args, log, compile=True):
    """Enumerate the specialisations and compile them; with compile=False, only the records' keys
    (op, dtype, variant, config, flags, arch) of what would be compiled."""
    t_enum = time.time()
    archs = [a for a in ARCHS if a in args.arch]
    specs = {}  # spec key -> entry
    order = []
    for op, dn, variant, where, is_default, cfg, fn, a, k in cases(args.ops, args.dtypes, args.buckets, args.full):
        if args.defaults_only and not is_default:
            continue
        for arch in archs:
            sig, constexprs, attrs, options = specialise(fn, a, k, arch)
            key = _spec_key(fn, arch, sig, constexprs, attrs, options)
            e = specs.get(key)
            if e is None:
                e = specs[key] = {"op": op, "kernel": fn.__name__, "dtype": dn, "variant": variant,
                                  "config": {kk: vv for kk, vv in cfg.items()}, "flags": _flags(constexprs, fn),
                                  "arch_n": arch, "used_at": [], "default_at": [],
                                  "_job": (fn, arch, sig, constexprs, attrs, options, dn)}
                order.append(key)
            if where not in e["used_at"]:
                e["used_at"].append(where)
            if is_default and where not in e["default_at"]:
                e["default_at"].append(where)
    if not compile:
        return {_rec_key({**specs[k], "arch": ARCH_NAME[specs[k]["arch_n"]]}): specs[k] for k in order}
    covered = {specs[k]["kernel"] for k in order}
    missing = sorted(set(_kernels_in_package()) - covered) if not args.ops else []

    # the cache: reuse a record whose key is current; compile the rest, and the sample again (compared)
    env = args._env
    rules = rules_key()
    cache, idents = ({}, {}) if args.no_cache else load_cache(args.cache)
    for k in order:
        e = specs[k]
        fn, arch, sig, constexprs, attrs, options, _ = e["_job"]
        e["key"] = cache_key(fn, arch, sig, constexprs, attrs, options, env, rules)
    sample = set(sample_of(specs, order)) if args.sample else set()
    todo = [k for k in order if specs[k]["key"] not in cache or k in sample]
    def ident(k):
        return _rec_key({**specs[k], "arch": ARCH_NAME[specs[k]["arch_n"]]})

    stale = [k for k in order if specs[k]["key"] not in cache and idents.get(ident(k)) not in (None, specs[k]["key"])]
    n_new = sum(1 for k in order if specs[k]["key"] not in cache) - len(stale)
    stats = args._stats
    stats.update(total=len(order), cached=sum(1 for k in order if specs[k]["key"] in cache), stale=len(stale),
                 new=n_new, sample=len([k for k in sample if specs[k]["key"] in cache]), compiled=0, mismatch=0)
    log(f"[triton] {len(order)} specialisations ({len(order) // max(1, len(archs))} per arch) in "
        f"{time.time() - t_enum:.1f} s of enumeration: {stats['cached']} in the cache with a current key, "
        f"{len(stale)} stale, {n_new} new; {stats['sample']} cached ones recompiled as the sample")
    for k in stale[:20]:
        e = specs[k]
        log(f"  stale: {e['op']} {e['dtype']} {e['variant']} {_cfg_str(e['config'])} {ARCH_NAME[e['arch_n']]}")
    if args.no_compile:
        todo = []

    # cheap kernels first, the 32-step unrolled bitmap kernels last
    cost = {"quantize_per_token": 0, "int8_weight_only_mm": 1, "int8_mm": 2, "bsr_mm": 3, "bitmap_mm": 4}
    todo.sort(key=lambda k: (k not in sample, cost.get(specs[k]["op"], 5)))
    partial = getattr(args, "partial", None)

    def progress(i, r):
        e = specs[todo[i]]
        fl = failures(r, e["dtype"])
        if fl:
            log(f"  fail: {e['op']} {e['dtype']} {e['variant']} {_cfg_str(e['config'])} {r['arch']}: {'; '.join(fl)}")
        if partial and e["key"] not in cache:  # a checkpoint: an interrupted run loses nothing compiled
            with open(partial, "a") as f:
                f.write(json.dumps({"key": e["key"], **{kk: vv for kk, vv in e.items() if kk in ID_FIELDS},
                                    **r}, sort_keys=True) + "\n")
        if (i + 1) % 50 == 0:
            log(f"[triton] {i + 1}/{len(todo)} compiled, {time.time() - t0:.0f} s")

    global _JOBS
    jobs = _JOBS = [specs[k]["_job"] for k in todo]
    if todo:
        log(f"[triton] compiling {len(todo)} in {args.jobs} processes")
    t0 = time.time()
    results = []
    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork")  # the workers inherit _JOBS (kernels do not pickle)
        with ctx.Pool(min(args.jobs, len(jobs))) as pool:
            for i, r in enumerate(pool.imap(_compile_job, range(len(jobs)), chunksize=1)):
                results.append(r)
                progress(i, r)
    else:
        for i, j in enumerate(jobs):
            results.append(compile_one(j))
            progress(i, results[-1])
    t_compile = time.time() - t0
    fresh = dict(zip(todo, results))
    stats["compiled"] = len(fresh)

    records = []
    for key in order:
        e = specs[key]
        rec = {k: v for k, v in e.items() if not k.startswith("_") and k != "arch_n"}
        r = fresh.get(key)
        cached = cache.get(e["key"])
        extra = []
        if r is None and cached is None:
            r = {"arch": ARCH_NAME[e["arch_n"]], "error": "not compiled: no cached record with the current key "
                 "(--no-compile)", "compile_s": 0}
        elif r is None:
            r = cached
            rec["cached"] = True
        elif cached is not None:  # the sample: the fresh compile must give the cached record
            diff = [f"{f} {cached.get(f)!r} cached, {r.get(f)!r} now" for f in COMPARED_FIELDS
                    if cached.get(f) != r.get(f)]
            if diff:
                stats["mismatch"] += 1
                extra.append("the cached record differs from a fresh compile (the cache key misses something): "
                             + "; ".join(diff)[:400])
        rec.update(r)
        rec["failures"] = failures(r, e["dtype"]) + extra
        records.append(rec)
    return records, missing, t_compile


ID_FIELDS = ("op", "kernel", "dtype", "variant", "config", "flags")


def sample_of(specs, order):
    """The specialisations compiled on every run even when cached (and compared with the cache), so that the
    compile path itself runs: per op and arch, the bfloat16 launcher default at M = 16 (quantize_per_token:
    at K = 4096), else its first bfloat16 default."""
    out = {}
    for k in order:
        e = specs[k]
        if e["dtype"] != "bf16" or not e["default_at"]:
            continue
        slot = (e["op"], e["arch_n"])
        good = any(w.startswith("M16 ") or w == "K4096" for w in e["default_at"])
        if slot not in out or (good and not out[slot][1]):
            out[slot] = (k, good)
    return [k for k, _ in out.values()]


# ------------------------------------------------------------------------------------------ CUDA part
def cuda_so():
    cands = sorted((REPO / "sparsekit").glob("_C*.so"))
    return cands[0] if cands else None


def _demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return dict(zip(names, out.splitlines()))
    except Exception:
        return {n: n for n in names}


def _split_top(name: str, sep: str):
    """Split at `sep` outside <...> and (...)."""
    out, depth, cur, i = [], 0, "", 0
    while i < len(name):
        ch = name[i]
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        if depth == 0 and name.startswith(sep, i):
            out.append(cur)
            cur, i = "", i + len(sep)
            continue
        cur += ch
        i += 1
    return out + [cur]


def _short(name: str) -> str:
    """void sparsekit::cuda::(anonymous namespace)::bitmap_decode_kernel<__half, 8, false>(Params) ->
    bitmap_decode_kernel<__half, 8, false>"""
    if name.startswith("void "):
        name = name[5:]
    if name.endswith(")"):  # drop the parameter list: the last top-level (...)
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return _split_top(name, "::")[-1]


def run_cuda(so, log, jobs=1):
    """Resource usage and SASS facts of every kernel in the .so's cubins (`jobs` cubins read at once)."""
    from concurrent.futures import ThreadPoolExecutor

    records = []
    with tempfile.TemporaryDirectory() as d:
        listing = _run([_tool("cuobjdump"), "--list-elf", str(so)])
        elves = re.findall(r"ELF file\s+\d+:\s+(\S+)", listing)
        if not elves:
            return records
        _run([_tool("cuobjdump"), "-xelf", "all", str(so)], cwd=d)

        def read(elf):
            path = os.path.join(d, elf)
            return (_run([_tool("cuobjdump"), "--dump-resource-usage", path]),
                    subprocess.run([_tool("nvdisasm"), "-c", "-g", path], capture_output=True, text=True,
                                   check=True).stdout)

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            outputs = list(pool.map(read, elves))
        for elf, (ru_text, sass) in zip(elves, outputs):
            m = re.match(r"(.+)\.(sm_\d+a?)\.cubin$", elf)
            src, arch = (m.group(1), m.group(2)) if m else (elf, "?")
            ru = parse_resource_usage(ru_text)
            # split per function: nvdisasm prints ".text.<mangled>:" before each
            per_fn = defaultdict(list)
            cur = None
            for line in sass.splitlines():
                m = re.match(r"\s*\.text\.(\S+?):", line) or re.match(r"\s*\.section\s+\.text\.(\S+?),", line)
                if m:
                    cur = m.group(1)
                    continue
                if cur:
                    per_fn[cur].append(line)
            names = _demangle(list(ru))
            for mangled, r in ru.items():
                ops, loads = parse_sass("\n".join(per_fn.get(mangled, [])))
                all_loads = Counter()
                by_line = {}
                for where, c in loads.items():
                    all_loads.update(c)
                    if where is not None:
                        by_line[f"{os.path.basename(where[0])}:{where[1]}"] = _width_hist(c)
                rec = {"file": src + ".cu", "kernel": _short(names[mangled]), "mangled": mangled, "arch": arch,
                       "regs": r.get("REG", 0), "stack": r.get("STACK", 0), "local": r.get("LOCAL", 0),
                       "smem": r.get("SHARED", 0),
                       "ldl": sum(n for op, n in ops.items() if op.startswith("LDL")),
                       "stl": sum(n for op, n in ops.items() if op.startswith("STL")),
                       "mma": _summ_ops(ops, MMA_OPS), "all_loads": _width_hist(all_loads), "loads_by_line": by_line,
                       "sass_instructions": sum(ops.values())}
                fl = []
                if rec["stack"] or rec["local"] or rec["ldl"] or rec["stl"]:
                    fl.append(f"local memory (stack {rec['stack']} B, local {rec['local']} B, {rec['ldl']} LDL, "
                              f"{rec['stl']} STL)")
                lim = SMEM_LIMIT[80 if arch == "sm_80" else 90]
                if rec["smem"] > lim:
                    fl.append(f"static shared memory {rec['smem']} B > {lim} B")
                if not rec["sass_instructions"]:
                    fl.append("no SASS found for this function")
                rec["failures"] = fl
                records.append(rec)
    records.sort(key=lambda r: (r["file"], r["kernel"], r["arch"]))
    return records


# ------------------------------------------------------------------------------------------ reports
def _env():
    import torch
    import triton

    try:
        ptxas = _run([_tool("ptxas"), "--version"]).strip().splitlines()[-1]
    except Exception:
        ptxas = "?"
    return {"triton": triton.__version__, "torch": torch.__version__, "ptxas": ptxas,
            "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()}


def _hist_str(h: dict) -> str:
    if not h:
        return "-"
    return " ".join(f"{k}x{v}" for k, v in sorted(h.items(), key=lambda kv: (-int(kv[0].split(".")[1]), kv[0])))


def _mma_str(r) -> str:
    if "error" in r:
        return "-"
    if r["mma"]:
        s = " ".join(f"{k}x{v}" for k, v in sorted(r["mma"].items()))
        waits = r.get("wgmma_waits") or []
        if waits:  # sm_90a: the most wgmma groups any wait leaves in flight (0: each wait drains them)
            s += f" (in flight {max(waits)})"
        return s
    if r["dot"]:
        return "FMA (ieee)" if r["dot_ieee"] else "**none**"
    return ""


def _where_str(lst, limit=4):
    if not lst:
        return ""
    s = ", ".join(lst[:limit])
    return s + (f" +{len(lst) - limit}" if len(lst) > limit else "")


def write_triton_md(path, records, env, summary, scope=""):
    groups = defaultdict(dict)
    for r in records:
        k = (r["op"], r["dtype"], r["variant"], json.dumps(r["config"], sort_keys=True), json.dumps(r["flags"],
                                                                                                    sort_keys=True))
        groups[k][r["arch"]] = r
    lines = [
        "# Triton kernels compiled for sm_80 and sm_90a: resources and SASS",
        "",
        "Generated by `python bench/gpu_static.py` (do not edit by hand) on a machine without a GPU: every Triton kernel",
        "of sparsekit/triton compiled with every candidate configuration its launcher can pick, for every dtype it",
        "accepts, with the specialisation a real launch gets (Triton's own binder on the launcher's own arguments:",
        "16-byte-divisible pointers / sizes / strides, unit strides and M = 1 as constants). See the docstring of",
        "bench/gpu_static.py for how each column is read. "
        f"triton {env['triton']}, torch {env['torch']}, {env['ptxas']}, sparsekit {env['commit']}.",
        "The records, each with its cache key, are bench/results/gpu_static_triton.jsonl: CI compiles only what",
        "has no record of its current key there (and a sample), and checks every record.",
        "",
        f"**{summary}**",
        "",
        f"Scope: {scope}" if scope else "",
        "",
        "Columns: regs (registers per thread), smem (static + dynamic shared memory, KB; sm_90a counts the 1 KB it",
        "reserves per block, so the check against 227 KB is 1 KB strict), local (stack / local",
        "bytes and LDL / STL count: any is a failure), tensor cores (SASS count: HMMA / IMMA; HGMMA / IGMMA are",
        "sm_90a wgmma, with `(in flight n)`: the most wgmma groups any of its waits leaves running, 0 where every",
        "wait drains them; `FMA (ieee)` = a float32 dot with exact products, no tensor core by design), weight loads",
        "(the global loads the weight-stream source lines compile to: LDG = plain load, LDGSTS = cp.async, and",
        "the bits per thread), flags (constexpr specialisation beyond the configuration: EVEN_K, M = 1, ...),",
        "default at (the tuning keys where this configuration is the launcher's first candidate, used without",
        "autotuning: M bucket, K, density or block).",
        "",
    ]
    by_op = defaultdict(list)
    for k, v in groups.items():
        by_op[k[0]].append((k, v))
    for op in sorted(by_op):
        lines += [f"## {op}", "",
                  "| dtype | variant | config | flags | regs 80 / 90 | smem KB 80 / 90 | local 80 / 90 | tensor cores sm_80 "
                  "| tensor cores sm_90a | weight loads sm_80 | weight loads sm_90a | status | default at |",
                  "|---|---|---|---|---:|---:|---|---|---|---|---|---|---|"]

        def sk(item):
            (o, dt, var, cfg, fl), _ = item
            c = json.loads(cfg)
            return (dt, var, not c.get("DOT", True), c.get("BITS", False), c.get("BLOCK_M", 0), c.get("BLOCK_N", 0),
                    c.get("BLOCK_K", c.get("BLOCK_C", c.get("WPB", 0))), c["num_warps"], c["num_stages"], fl)

        for (o, dt, var, cfg, fl), per in sorted(by_op[op], key=sk):
            c = json.loads(cfg)
            a80, a90 = per.get("sm_80"), per.get("sm_90a")

            def f(r, fn):
                return "-" if r is None or "error" in r else fn(r)

            regs = f"{f(a80, lambda r: r['regs'])} / {f(a90, lambda r: r['regs'])}"
            smem = " / ".join(f(r, lambda r: f"{r['smem'] / 1024:.1f}") for r in (a80, a90))
            loc = " / ".join(f(r, lambda r: "0" if not (r["stack"] or r["local"] or r["ldl"] or r["stl"]) else
                               f"**{r['stack']}B {r['ldl']}LDL {r['stl']}STL**") for r in (a80, a90))
            fails = [f"{r['arch']}: {x}" for r in (a80, a90) if r for x in r["failures"]]
            status = "ok" if not fails else "**FAIL** " + "; ".join(fails)
            wl = [f(r, lambda r: _hist_str(r["loads"].get("weight", r["loads"].get("x", {})))) for r in (a80, a90)]
            flags = " ".join(f"{k}={v}" for k, v in sorted(json.loads(fl).items())
                             if k not in ("HAS_BIAS", "IEEE", "UPCAST", "USE_POPC") and not (k.startswith("stride")))
            default_at = _where_str((a90 or a80)["default_at"]) if (a90 or a80) else ""
            lines.append(f"| {dt} | {var} | {_cfg_str(c)} | {flags} | {regs} | {smem} | {loc} | "
                         f"{_mma_str(a80) if a80 else '-'} | {_mma_str(a90) if a90 else '-'} | {wl[0]} | {wl[1]} | "
                         f"{status} | {default_at} |")
        lines.append("")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


CUDA_MD_NOTES = """\
Summary of the earlier hand-run `nvcc -Xptxas -v` reports, kept for their history: earlier versions of the
kernels did use local memory: `acc` went to a 64-byte stack frame when the warp reduce-scatter's outer loop
was not unrolled (now compile-time recursion) and when lambdas holding references to register arrays were
not inlined (now `__forceinline__` functions); `pack24_kernel` indexed a register array with a run-time
index (`sel[ns++]`, now a bit mask); `bsr_values_kernel` spilled 16 bytes around 64-bit divisions (now one
block per BSR block and 32-bit division). The decode kernels are declared `__launch_bounds__(512, 1)` (a
128-register cap). Keep the stack and LDL / STL columns at 0: `tests/test_gpu_static.py` fails otherwise.

Template arguments: `<dtype, MT, vector path>` for the decode kernels (MT = activation rows per tile),
`<element bits type>` for the packers (the weight is copied as raw bits).
"""


def write_cuda_md(path, records, env, summary, so):
    lines = [
        "# Resources of the CUDA kernels (sm_80, sm_90a): registers, local memory, shared memory, SASS loads",
        "",
        "Generated by `python bench/gpu_static.py --cuda --no-triton` (do not edit the table by hand; the Triton",
        "kernels are in TRITON_RESOURCES.md) from the cubins inside the built `sparsekit/_C*.so`",
        "(`cuobjdump -xelf all`, `cuobjdump --dump-resource-usage`, `nvdisasm -g`, with triton "
        f"{env['triton']}'s bundled tools), sparsekit {env['commit']}.",
        "",
        f"**{summary}**",
        "",
        CUDA_MD_NOTES,
        "Columns: regs, stack (bytes of stack frame: spills or local arrays), smem (static shared memory in bytes;",
        "the decode kernels add dynamic shared memory at launch; sm_90a counts the 1 KB it reserves per block), LDL / STL (local-memory instructions), global",
        "loads (SASS instructions by bits per thread: LDG.128 = 16-byte loads; the JSON lines",
        "bench/results/gpu_static_cuda.jsonl break them down by source line), tensor cores (HMMA / IMMA count).",
        "",
        "| file | kernel | regs 80 / 90 | stack 80 / 90 | smem 80 / 90 | LDL / STL | global loads sm_80 | global loads sm_90a "
        "| tensor cores | status |",
        "|---|---|---:|---:|---:|---|---|---|---|---|",
    ]
    groups = {}
    for r in records:
        groups.setdefault((r["file"], r["kernel"]), {})[r["arch"]] = r
    for (fname, kernel), per in groups.items():
        a, b = per.get("sm_80"), per.get("sm_90a")

        def f(key, a=a, b=b):
            return " / ".join("-" if r is None else str(r[key]) for r in (a, b))

        rs = [r for r in (a, b) if r]
        fails = [f"{r['arch']}: {x}" for r in rs for x in r["failures"]]
        st = "ok" if not fails else "**FAIL** " + "; ".join(fails)
        ldst = " / ".join(f"{r['ldl']}, {r['stl']}" for r in rs)
        mma = " / ".join(" ".join(f"{k}x{v}" for k, v in sorted(r["mma"].items())) for r in rs if r["mma"])
        lines.append(f"| {fname} | `{kernel}` | {f('regs')} | {f('stack')} | {f('smem')} | {ldst} | "
                     f"{_hist_str(a['all_loads']) if a else '-'} | {_hist_str(b['all_loads']) if b else '-'} | {mma} | "
                     f"{st} |")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def write_jsonl(path, records, env):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps({**r, "env": env}, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ main
def _has_cuda_code(so) -> bool:
    try:
        return bool(re.search(r"ELF file", _run([_tool("cuobjdump"), "--list-elf", str(so)])))
    except subprocess.CalledProcessError:
        return False


def write_triton_jsonl(path, records, env, summary, scope):
    """The records, one a line (compact: no per-line env), after one header line {"env", "summary", "scope"}.
    The committed file is the cache of the next run: every record carries its key."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps({"env": env, "summary": summary, "scope": scope}, sort_keys=True) + "\n")
        for r in records:
            f.write(json.dumps({k: v for k, v in r.items() if k != "cached"}, sort_keys=True, separators=(",", ":"))
                    + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="compile processes")
    p.add_argument("--arch", default="80,90", help="comma-separated: 80 (sm_80), 90 (sm_90a)")
    p.add_argument("--ops", default="", help="comma-separated Triton ops (default: all)")
    p.add_argument("--dtypes", default="", help="comma-separated dtypes, e.g. bf16,fp32 (int8_mm: its out dtypes, i32)")
    p.add_argument("--buckets", default="", help="comma-separated M buckets (default: every one)")
    p.add_argument("--md", default=str(DEFAULT_MD))
    p.add_argument("--jsonl", default=str(DEFAULT_JSONL))
    p.add_argument("--cuda-md", default=str(DEFAULT_CUDA_MD))
    p.add_argument("--cuda-jsonl", default=str(DEFAULT_CUDA_JSONL))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cuda", dest="cuda", action="store_true", default=None,
                   help="read the .cu kernels of sparsekit._C (default: when it carries CUDA code)")
    g.add_argument("--no-cuda", dest="cuda", action="store_false")
    p.add_argument("--no-triton", action="store_true", help="only the CUDA part")
    p.add_argument("--defaults-only", action="store_true",
                   help="only the first candidate of every tuning key: what runs without autotuning")
    p.add_argument("--full", action="store_true",
                   help="also the K-clamped candidates of small layers (K = 16 ... 2048) and the non-square BSR "
                        "blocks 32x64, 8x16, and K = 11008")
    p.add_argument("--cache", default=None,
                   help="comma-separated JSON lines holding earlier results with their keys (default: the committed "
                        f"{DEFAULT_JSONL.relative_to(REPO)}, and the checkpoint <--jsonl>.partial of an "
                        "interrupted run)")
    p.add_argument("--no-cache", action="store_true", help="compile everything")
    p.add_argument("--no-compile", action="store_true",
                   help="compile nothing: a specialisation with no cached record of its current key fails")
    p.add_argument("--no-sample", dest="sample", action="store_false",
                   help="do not recompile the sample (per op and arch, one bfloat16 default) when it is cached")
    a = p.parse_args(argv)
    a.arch = [int(x) for x in a.arch.split(",") if x]
    a.ops = [x for x in a.ops.split(",") if x] or None
    a.dtypes = [x for x in a.dtypes.split(",") if x] or None
    a.buckets = [int(x) for x in a.buckets.split(",") if x] or None
    a.partial = a.jsonl + ".partial"
    if a.cache is None:
        a.cache = [str(DEFAULT_JSONL), a.partial]
    else:
        a.cache = [x for x in a.cache.split(",") if x]
    restricted = a.ops or a.dtypes or a.buckets or a.defaults_only or sorted(a.arch) != sorted(ARCHS)
    to_committed = Path(a.jsonl).resolve() == DEFAULT_JSONL or Path(a.md).resolve() == DEFAULT_MD
    if restricted and not a.no_triton and to_committed:
        p.error("a restricted run (--ops / --dtypes / --buckets / --arch / --defaults-only) would overwrite the "
                "committed table and cache with a part of it: give --md and --jsonl")
    return a


LAST_STATS = {}  # the counts of the last main() (tests read them)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    tmp_cache = tempfile.mkdtemp(prefix="gpu_static_triton_cache_")
    old_cache = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = tmp_cache  # Triton's own cache: never (our cache is keyed on the source)
    try:
        from triton import knobs

        old_knob = knobs.cache.dir
        knobs.cache.dir = tmp_cache
    except Exception:
        knobs = None

    def log(msg):
        print(msg, flush=True)

    env = args._env = _env()
    LAST_STATS.clear()
    stats = args._stats = LAST_STATS
    n_fail = 0
    parts = []
    try:
        if not args.no_triton:
            records, missing, t_compile = run_triton(args, log)
            bad = [r for r in records if r["failures"]]
            for r in bad[:200]:
                log(f"FAIL {r['op']} {r['dtype']} {r['variant']} {_cfg_str(r['config'])} {r['arch']}: "
                    f"{'; '.join(r['failures'])}")
            for k in missing:
                log(f"FAIL kernel {k} is compiled by no case of bench/gpu_static.py: add its launcher to cases()")
            n_cfg = len({(r["op"], r["dtype"], r["variant"], json.dumps(r["config"], sort_keys=True)) for r in records})
            t_all = sum(r.get("compile_s", 0) for r in records)
            tsum = (f"triton: {len(records)} compiles ({n_cfg} op x dtype x config, {len(args.arch)} archs), "
                    f"{len(bad)} failing, {len(missing)} kernels uncovered; {stats['compiled']} compiled now in "
                    f"{t_compile:.0f} s ({stats['stale']} stale, {stats['new']} new, {stats['sample']} sample), "
                    f"{stats['cached'] - stats['sample']} from the cache; {t_all:.0f} s of compile in all records")
            if stats["mismatch"]:
                tsum += f"; {stats['mismatch']} sample records DIFFER from the cache"
            if args.defaults_only:
                scope = "the first candidate of every tuning key only (`--defaults-only`)."
            else:
                scope = "every candidate of every tuning key" + (" (`--full`: small K, K = 11008, non-square BSR "
                                                                   "blocks too)." if args.full else " at N = K = 4096.")
            if args.ops or args.dtypes or args.buckets or len(args.arch) < len(ARCHS):
                scope += f" Restricted to ops {args.ops or 'all'}, dtypes {args.dtypes or 'all'}, M buckets " \
                         f"{args.buckets or 'all'}, archs {args.arch}."
            write_triton_md(args.md, records, env, tsum, scope)
            write_triton_jsonl(args.jsonl, records, env, tsum, scope)
            if os.path.exists(args.partial):
                os.remove(args.partial)  # its records are in args.jsonl now
            log(f"[triton] wrote {args.md} and {args.jsonl}")
            n_fail += len(bad) + len(missing)
            parts.append(tsum)
        so = cuda_so()
        want_cuda = args.cuda if args.cuda is not None else (so is not None and _has_cuda_code(so))
        if want_cuda:
            if so is None:
                raise FileNotFoundError("gpu_static --cuda: no sparsekit/_C*.so (build the extension first)")
            t0 = time.time()
            crec = run_cuda(so, log, args.jobs)
            cbad = [r for r in crec if r["failures"]]
            for r in cbad:
                log(f"FAIL {r['file']} {r['kernel']} {r['arch']}: {'; '.join(r['failures'])}")
            if not crec:
                cbad = [None]
                log(f"FAIL {so.name} carries no CUDA kernel")
            csum = f"cuda: {len(crec)} kernels x arch, {len(cbad)} failing, {time.time() - t0:.0f} s"
            write_cuda_md(args.cuda_md, crec, env, csum, so)
            write_jsonl(args.cuda_jsonl, crec, env)
            log(f"[cuda] wrote {args.cuda_md} and {args.cuda_jsonl}")
            n_fail += len(cbad)
            parts.append(csum)
    finally:
        shutil.rmtree(tmp_cache, ignore_errors=True)
        if old_cache is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = old_cache
        if knobs is not None:
            knobs.cache.dir = old_knob
    print(f"gpu_static: {'OK' if n_fail == 0 else 'FAIL'} ({n_fail} failures) - " + "; ".join(parts)
          + f"; {time.time() - t_start:.0f} s in all", flush=True)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
