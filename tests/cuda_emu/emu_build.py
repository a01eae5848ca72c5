"""Builds the CPU-emulated CUDA kernels (tests/cuda_emu) into a driver executable.

The exact sources of csrc/cuda are copied to a build directory with two textual rewrites, the only
changes the emulator needs:

* every launch ``kernel<T><<<grid, block, smem, stream>>>(args)`` becomes
  ``::cuda_emu::launch(kernel<T>, ::cuda_emu::Cfg(grid, block, smem, stream), args)``;
* every ``extern __shared__ [__align__(n)] T name[];`` becomes
  ``T* name = reinterpret_cast<T*>(::cuda_emu::dynamic_smem());`` (a poisoned, exactly sized heap block).

Both fail loudly when they find nothing to rewrite (or leave a ``<<<`` behind), so that a change in how
the kernels launch cannot turn the emulated tests into tests of nothing. A mutation (a textual change of
one kernel source: the planted bugs of the tests) is applied to the copy, never to csrc/.

Usable alone: ``python tests/cuda_emu/emu_build.py OUT_DIR`` builds OUT_DIR/driver.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CUDA_SRC = REPO / "csrc" / "cuda"
KERNEL_TUS = ("sparse24_kernel.cu", "bitmap_kernel.cu", "bsr_kernel.cu", "csr_spmm_kernel.cu", "pack_kernel.cu",
              "scale_epilogue_kernel.cu", "int8_wo_kernel.cu", "w8a8_kernel.cu")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
CXXFLAGS = ["-std=c++17", "-O0", "-g1", "-w", "-ffp-contract=off", *SANITIZE]

# (file, old text, new text): a planted bug; `old` must occur exactly once in `file`.
Mutation = Tuple[str, str, str]


class TransformError(RuntimeError):
    pass


def compiler() -> Optional[str]:
    for c in (os.environ.get("CXX"), "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _match_back(s: str, end: int, open_c: str, close_c: str) -> int:
    """Index of the `open_c` matching the `close_c` at s[end]."""
    depth = 0
    for i in range(end, -1, -1):
        if s[i] == close_c:
            depth += 1
        elif s[i] == open_c:
            depth -= 1
            if depth == 0:
                return i
    raise TransformError(f"unbalanced {open_c}{close_c} before offset {end}")


def _match_fwd(s: str, start: int, open_c: str, close_c: str) -> int:
    """Index of the `close_c` matching the `open_c` at s[start]."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] == open_c:
            depth += 1
        elif s[i] == close_c:
            depth -= 1
            if depth == 0:
                return i
    raise TransformError(f"unbalanced {open_c}{close_c} after offset {start}")


def rewrite_launches(src: str) -> Tuple[str, int]:
    """`kexpr<<<cfg>>>(args)` -> `::cuda_emu::launch(kexpr, ::cuda_emu::Cfg(cfg), args)`; kexpr is an
    identifier (with ::) optionally followed by a template argument list."""
    out, n, pos = [], 0, 0
    while True:
        i = src.find("<<<", pos)
        if i < 0:
            break
        # the kernel expression before <<<
        j = i
        while j > 0 and src[j - 1].isspace():
            j -= 1
        if src[j - 1] == ">":
            j = _match_back(src, j - 1, "<", ">")
        k = j
        while k > 0 and (src[k - 1].isalnum() or src[k - 1] in "_:"):
            k -= 1
        kexpr = src[k:i].strip()
        if not re.match(r"^[A-Za-z_:][\w:]*\s*(<.*>)?$", kexpr, re.S):
            raise TransformError(f"cannot parse the kernel of the launch at offset {i}: {kexpr!r}")
        e = src.find(">>>", i)
        if e < 0:
            raise TransformError(f"no >>> after the <<< at offset {i}")
        cfg = src[i + 3:e].strip()
        p = e + 3
        while src[p].isspace():
            p += 1
        if src[p] != "(":
            raise TransformError(f"no argument list after the launch at offset {i}")
        q = _match_fwd(src, p, "(", ")")
        args = src[p + 1:q].strip()
        call = f"::cuda_emu::launch({kexpr}, ::cuda_emu::Cfg({cfg})" + (f", {args})" if args else ")")
        out.append(src[pos:k])
        out.append(call)
        pos = q + 1
        n += 1
    out.append(src[pos:])
    res = "".join(out)
    if "<<<" in res or ">>>" in res:
        raise TransformError("a <<< or >>> is left after rewriting the launches")
    return res, n


_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([\w:\s\*]+?)\s+(\w+)\s*\[\s*\]\s*;")


def rewrite_shared(src: str) -> Tuple[str, int]:
    n = 0

    def sub(m):
        nonlocal n
        n += 1
        t, name = " ".join(m.group(1).split()), m.group(2)
        return f"{t}* {name} = reinterpret_cast<{t}*>(::cuda_emu::dynamic_smem());"

    res = _EXTERN_SHARED.sub(sub, src)
    if re.search(r"extern\s+__shared__", res):
        raise TransformError("an `extern __shared__` declaration was left unrewritten")
    return res, n


def transform(dst: Path, mutations: Sequence[Mutation] = ()) -> Dict[str, int]:
    """Copies csrc/cuda to dst/cuda with the launches and dynamic shared memory rewritten and the
    mutations applied. Returns the rewrites per file; raises TransformError when there are none."""
    out_dir = dst / "cuda"
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = {m[0]: [] for m in mutations}
    for m in mutations:
        pending[m[0]].append(m)
    counts: Dict[str, int] = {}
    launches = 0
    for f in sorted(CUDA_SRC.iterdir()):
        if f.suffix not in (".cu", ".cuh", ".h"):
            continue
        s = f.read_text()
        for _, old, new in pending.pop(f.name, []):
            c = s.count(old)
            if c != 1:
                raise TransformError(f"mutation of {f.name}: expected the text once, found it {c} times: {old!r}")
            s = s.replace(old, new)
        if f.suffix in (".cu", ".cuh"):
            s, nl = rewrite_launches(s)
            s, ns = rewrite_shared(s)
            counts[f.name] = nl + ns
            launches += nl
            if f.suffix == ".cu" and "__global__" in s and nl == 0 and f.name != "decode_common.cuh":
                # every .cu with kernels launches them itself (the decode ones through decode_common.cuh)
                if "launch_decode_grid" not in s:
                    raise TransformError(f"{f.name} defines kernels but the transform found no launch in it")
        target = out_dir / f.name
        if not target.exists() or target.read_text() != s:
            target.write_text(s)
    if pending:
        raise TransformError(f"mutations name files not in csrc/cuda: {sorted(pending)}")
    if launches == 0:
        raise TransformError("the transform found no <<<...>>> launch to rewrite in csrc/cuda")
    if sum(v for k, v in counts.items()) == launches:
        raise TransformError("the transform found no extern __shared__ declaration to rewrite")
    return counts


def _compile(cxx: str, src: Path, obj: Path, includes: Iterable[Path], extra: Sequence[str] = ()) -> None:
    cmd = [cxx, *CXXFLAGS, *extra, "-include", str(HERE / "cuda_emu.h"), *[f"-I{p}" for p in includes], "-c",
           "-x", "c++", str(src), "-o", str(obj)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"compiling {src.name} failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def build(out: Path, mutations: Sequence[Mutation] = (), jobs: Optional[int] = None,
          obj_cache: Optional[Path] = None, only: Optional[Iterable[str]] = None) -> Path:
    """Builds out/driver from the transformed (and mutated) sources. Objects are cached in obj_cache
    (default out/obj) by the hash of their transformed sources, so that a mutated build recompiles only
    what the mutation changes. `only` (names of KERNEL_TUS): the translation units that take the mutations;
    the others, the runtime and the driver are compiled from the unmutated sources (so, with the unmutated
    build's obj_cache, not at all): a mutation of a header shared by several kernels (mma_decode.cuh) then
    rebuilds only the kernels its planted bug is checked on."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler")
    out.mkdir(parents=True, exist_ok=True)
    root = out / "src"
    transform(root, mutations)
    plain = root
    if mutations and only is not None:
        only = set(only)
        unknown = only - set(KERNEL_TUS)
        if unknown:
            raise ValueError(f"only: not kernel translation units: {sorted(unknown)}")
        plain = out / "plain"
        transform(plain)
    cache = obj_cache or (out / "obj")
    cache.mkdir(parents=True, exist_ok=True)
    emu = (HERE / "cuda_emu.h").read_bytes()
    flags = " ".join(CXXFLAGS).encode()
    headers = {t: b"".join((t / "cuda" / h.name).read_bytes() for h in sorted(CUDA_SRC.iterdir())
                           if h.suffix in (".cuh", ".h")) for t in {root, plain}}
    units: List[Tuple[Path, Path, Path]] = []  # (source, object, the tree it includes)
    for name in KERNEL_TUS:
        tree = root if plain is root or name in only else plain
        src = tree / "cuda" / name
        units.append((src, cache / f"{name}.{_digest(src.read_bytes(), headers[tree], emu, flags)}.o", tree))
    for name in ("emu_runtime.cpp", "driver.cpp"):
        src = HERE / name
        units.append((src, cache / f"{name}.{_digest(src.read_bytes(), headers[plain], emu, flags)}.o", plain))
    todo = [u for u in units if not u[1].exists()]

    def one(u):
        s, o, tree = u
        tmp = o.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # builds may run side by side
        _compile(cxx, s, tmp, [HERE / "include", HERE, tree])
        os.replace(tmp, o)

    if jobs is None:  # SPARSEKIT_EMU_JOBS: compiler processes at once (default 2)
        jobs = int(os.environ.get("SPARSEKIT_EMU_JOBS", "2") or 2)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        list(ex.map(one, todo))
    exe = out / "driver"
    cmd = [cxx, *SANITIZE, *[str(o) for _, o, _ in units], "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"linking the driver failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}")
    return exe


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cuda_emu_build")))
