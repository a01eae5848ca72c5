"""bench/gpu_static.py: the GPU code compiled for sm_80 / sm_90a and read back, without a GPU.

* the run must pass: every candidate configuration of the launchers x dtype x arch (the committed results,
  bench/results/gpu_static_triton.jsonl, are its cache: only a specialisation whose key - kernel source
  closure, specialisation, arch, triton / ptxas versions, extraction rules - has no record there is compiled,
  plus a small sample compiled every time and compared with its cached record), and the .cu kernels of the
  built extension: no compile error, no spill / local memory, shared memory within the arch's limit, tensor
  cores in every 16- / 8-bit tl.dot, checked on every record, cached or fresh;
* the cache cannot hide a change: a changed kernel source, helper, global or extraction rule makes the keys
  stale, and a cached record that a fresh compile contradicts fails;
* planted bugs must fail it: a spilling configuration, a bf16 dot that lost its tensor cores, a tile over the
  shared-memory limit, a configuration that does not compile;
* the parsers of cuobjdump / nvdisasm / LLVM IR output on fixed text.

Needs triton (with its bundled ptxas / cuobjdump / nvdisasm); no GPU.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_static.py"
COMMITTED = REPO / "bench" / "results" / "gpu_static_triton.jsonl"
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

pytestmark = [
    pytest.mark.skipif(not HAS_TRITON, reason="needs triton"),
    # the interpreter replaces @triton.jit kernels: nothing to compile
    pytest.mark.skipif(INTERPRET, reason="compiles real kernels; not under TRITON_INTERPRET=1"),
]


@pytest.fixture(scope="module")
def gs():
    spec = importlib.util.spec_from_file_location("gpu_static", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _records(path):
    """The records of a run's JSON lines (not the header line)."""
    with open(path) as f:
        return [r for r in (json.loads(line) for line in f if line.strip()) if "op" in r]


# ------------------------------------------------------------------------------------------ the whole run
def _whole_run(tmp_path, *extra):
    jobs = os.environ.get("SPARSEKIT_GPU_STATIC_JOBS", "2")  # compile processes (CI has 2 cores)
    cmd = [sys.executable, str(SCRIPT), "--jobs", jobs, *extra,
           "--md", str(tmp_path / "t.md"), "--jsonl", str(tmp_path / "t.jsonl"),
           "--cuda-md", str(tmp_path / "c.md"), "--cuda-jsonl", str(tmp_path / "c.jsonl")]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90 * 60)
    out = p.stdout + p.stderr
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    print(f"gpu_static {' '.join(extra)} took {time.time() - t0:.0f} s: {last}")
    assert p.returncode == 0 and last.startswith("gpu_static: OK"), out[-6000:]
    recs = _records(tmp_path / "t.jsonl")
    assert {r["op"] for r in recs} == {"bsr_mm", "bitmap_mm", "int8_mm", "int8_weight_only_mm", "quantize_per_token"}
    assert {r["arch"] for r in recs} == {"sm_80", "sm_90a"}
    assert {r["dtype"] for r in recs} >= {"fp16", "bf16", "fp32"}
    # every 16-bit / int8 dot uses the tensor cores; on sm_90a the large tiles use wgmma
    assert all(r["mma"] for r in recs if r["dot"] and r["dtype"] != "fp32")
    assert any("HGMMA" in r["mma"] or "IGMMA" in r["mma"] for r in recs if r["arch"] == "sm_90a")
    assert any(r["default_at"] for r in recs) and all(r["used_at"] for r in recs)
    assert all(r["key"] and not r["failures"] for r in recs)
    return recs


def test_every_candidate_and_cuda_kernel_compiles_clean(tmp_path):
    """Every launcher's every candidate of every tuning key x dtype (float16 too) x sm_80 / sm_90a, and the .cu
    kernels of the built extension. What the committed results hold with a current key is read from them
    (the checks run on it again); the rest is compiled (2 processes, as CI has 2 cores): after a kernel change
    that is slow until `python bench/gpu_static.py` regenerates the table. The sample (per op and arch one
    bfloat16 default) is compiled every time and must equal its cached record."""
    _whole_run(tmp_path)


@pytest.mark.skipif(os.environ.get("SPARSEKIT_GPU_STATIC_FULL") != "1",
                    reason="--full (small K, K = 11008, non-square BSR blocks: 3x the specialisations, most not in "
                           "the committed cache): set SPARSEKIT_GPU_STATIC_FULL=1")
def test_every_triton_candidate_full_compiles_clean(tmp_path):
    _whole_run(tmp_path, "--no-cuda", "--full")


# ------------------------------------------------------------------------------------------ the cache
ONE = ["--ops", "int8_weight_only_mm", "--dtypes", "bf16", "--buckets", "16", "--arch", "80", "--no-cuda"]


def _run_cached(gs, tmp_path, *extra, cache=COMMITTED):
    md, jl = tmp_path / "k.md", tmp_path / "k.jsonl"
    rc = gs.main(["--jobs", "1", "--md", str(md), "--jsonl", str(jl), "--cache", str(cache), *ONE, *extra])
    return rc, _records(jl), dict(gs.LAST_STATS)


@pytest.fixture
def patched_src():
    """Replace a @triton.jit function's source text for one test (restored after)."""
    undo = []

    def patch(fn, new_src):
        undo.append((fn, fn.src))
        fn._unsafe_update_src(new_src)

    yield patch
    for fn, src in reversed(undo):
        fn._unsafe_update_src(src)


def test_committed_cache_is_used(gs, tmp_path):
    """Nothing compiled when every key is in the committed results, and the records are the committed ones."""
    rc, recs, st = _run_cached(gs, tmp_path, "--no-compile", "--no-sample")
    assert rc == 0 and recs and st["compiled"] == 0 and st["cached"] == st["total"] == len(recs), st
    committed = {r["key"]: r for r in _records(COMMITTED)}
    assert all(committed[r["key"]]["regs"] == r["regs"] for r in recs)


def test_changed_kernel_source_makes_its_entries_stale(gs, tmp_path, patched_src):
    """A change to the kernel's text: every one of its records is stale, and is compiled again (not reused)."""
    from sparsekit.triton import int8 as I8

    patched_src(I8._w8a16_kernel, I8._w8a16_kernel.src + "    # a planted change\n")
    rc, recs, st = _run_cached(gs, tmp_path, "--no-compile", "--no-sample")
    assert rc == 1 and st["cached"] == 0 and st["stale"] == st["total"] == len(recs) > 0, st
    assert all(r["failures"][0].startswith("compile error: not compiled") for r in recs)
    rc, recs, st = _run_cached(gs, tmp_path, "--no-sample")
    assert rc == 0 and st["compiled"] == st["total"] == len(recs) > 0 and not any(r.get("cached") for r in recs), st


def test_changed_helper_global_or_rules_make_entries_stale(gs, tmp_path, patched_src, monkeypatch):
    """A change to a @triton.jit helper the kernel calls (dot_acc, in _common.py), to a global it reads, or
    to how gpu_static reads a cubin: stale too. A line shift alone (a candidate list edited above the kernel) is not."""
    from sparsekit.triton import _common
    from sparsekit.triton import int8 as I8

    k0 = gs.source_key(I8._w8a16_kernel)
    patched_src(_common.dot_acc, _common.dot_acc.src.replace("acc", "acc ", 1))
    assert gs.source_key(I8._w8a16_kernel) != k0
    rc, recs, st = _run_cached(gs, tmp_path, "--no-compile", "--no-sample")
    assert rc == 1 and st["stale"] == st["total"] > 0, st
    _common.dot_acc._unsafe_update_src(_common.dot_acc.src.replace("acc ", "acc", 1))
    assert gs.source_key(I8._w8a16_kernel) == k0

    assert "tile_ids" in I8._w8a16_kernel.src
    monkeypatch.setitem(I8._w8a16_kernel.fn.__globals__, "PLANTED_WIDTH", 4)
    patched_src(I8._w8a16_kernel, I8._w8a16_kernel.src.replace("tile_ids(", "tile_ids(PLANTED_WIDTH * 0 + ", 1))
    k1 = gs.source_key(I8._w8a16_kernel)
    monkeypatch.setitem(I8._w8a16_kernel.fn.__globals__, "PLANTED_WIDTH", 8)
    assert gs.source_key(I8._w8a16_kernel) != k1
    I8._w8a16_kernel._unsafe_update_src(I8._w8a16_kernel.src.replace("tile_ids(PLANTED_WIDTH * 0 + ", "tile_ids(", 1))
    assert gs.source_key(I8._w8a16_kernel) == k0

    monkeypatch.setitem(gs.STREAMS, "_w8a16_kernel", {**gs.STREAMS["_w8a16_kernel"], "planted": r"\bacc = "})
    rc, recs, st = _run_cached(gs, tmp_path, "--no-compile", "--no-sample")
    assert rc == 1 and st["stale"] == st["total"] > 0, st


def test_cached_record_contradicted_by_a_fresh_compile_fails(gs, tmp_path):
    """The sample is compiled on every run and compared: a cached record that does not match it (a cache key
    that misses an input) fails the run."""
    recs = _records(COMMITTED)
    forged = tmp_path / "forged.jsonl"
    with open(forged, "w") as f:
        for r in recs:
            f.write(json.dumps({**r, "regs": r["regs"] + 8}) + "\n")
    rc, out, st = _run_cached(gs, tmp_path, cache=forged)
    assert rc == 1 and st["sample"] == 1 and st["mismatch"] == 1, st
    bad = [r for r in out if r["failures"]]
    assert len(bad) == 1 and "differs from a fresh compile" in bad[0]["failures"][0] and "regs" in bad[0]["failures"][0]


def test_restricted_run_does_not_overwrite_the_committed_table(gs):
    with pytest.raises(SystemExit):
        gs.parse_args(["--ops", "bsr_mm"])
    gs.parse_args(["--ops", "bsr_mm", "--md", "/tmp/x.md", "--jsonl", "/tmp/x.jsonl"])


# ------------------------------------------------------------------------------------------ planted bugs
def _run_one(gs, tmp_path, *extra):
    md, jl = tmp_path / "p.md", tmp_path / "p.jsonl"
    rc = gs.main(["--jobs", "1", "--no-cuda", "--no-cache", "--md", str(md), "--jsonl", str(jl), *extra])
    return rc, _records(jl)


def test_planted_spilling_config_fails(gs, tmp_path, monkeypatch):
    """w8a16 float32 32x32x64, 4 warps, 4 stages: 255 registers and a 160-byte stack (it was the default at
    M = 64 / 128 before this check removed it)."""
    from sparsekit.triton import int8 as I8

    spill = I8._wocfg(True, 32, 32, 64, 4, 4)
    monkeypatch.setattr(I8, "weight_only_candidates", lambda bucket, K, dtype: [spill])
    rc, recs = _run_one(gs, tmp_path, "--ops", "int8_weight_only_mm", "--dtypes", "fp32", "--buckets", "64",
                        "--arch", "90")
    assert rc == 1
    assert recs and all(any("local memory" in f for f in r["failures"]) for r in recs), recs


def test_planted_dot_without_tensor_cores_fails(gs, tmp_path, monkeypatch):
    """A bf16 launch whose dot goes through float32 (the interpreter's detour left on for the GPU) runs on FMA."""
    from sparsekit.triton import int8 as I8

    monkeypatch.setattr(I8, "upcast_dot", lambda dtype: True)
    monkeypatch.setattr(I8, "weight_only_candidates", lambda bucket, K, dtype: [I8._wocfg(True, 16, 32, 64, 4, 2)])
    rc, recs = _run_one(gs, tmp_path, "--ops", "int8_weight_only_mm", "--dtypes", "bf16", "--buckets", "16",
                        "--arch", "80")
    assert rc == 1
    assert recs and all("tl.dot without a tensor-core instruction" in r["failures"] for r in recs), recs


def test_planted_shared_memory_overflow_and_compile_error_fail(gs, tmp_path, monkeypatch):
    """A W8A8 tile whose pipeline needs more shared memory than an H100 block may have (128 x 256 x 256 in
    6 stages: 288 KB), and BLOCK_N = 48, which Triton refuses to compile (tl.arange needs a power of two).
    (Triton 3.8 does compile a dot with BLOCK_M = 8: it pads.)"""
    from sparsekit.triton import int8 as I8

    big = I8._i8cfg(128, 256, 256, 8, 6)
    monkeypatch.setattr(I8, "int8_candidates", lambda bucket, K: [big])
    rc, recs = _run_one(gs, tmp_path, "--ops", "int8_mm", "--dtypes", "bf16", "--buckets", "256", "--arch", "90")
    assert rc == 1
    assert recs and all(any(f.startswith("shared memory") for f in r["failures"]) for r in recs), recs

    monkeypatch.setattr(I8, "weight_only_candidates", lambda bucket, K, dtype: [I8._wocfg(True, 16, 48, 64, 4, 2)])
    rc, recs = _run_one(gs, tmp_path, "--ops", "int8_weight_only_mm", "--dtypes", "fp16", "--buckets", "8",
                        "--arch", "90")
    assert rc == 1
    assert recs and all(r["failures"] and r["failures"][0].startswith("compile error") for r in recs), recs


def test_planted_clean_config_passes(gs, tmp_path, monkeypatch):
    """The same path with a configuration that is fine: the check does not fail everything."""
    from sparsekit.triton import int8 as I8

    monkeypatch.setattr(I8, "weight_only_candidates", lambda bucket, K, dtype: [I8._wocfg(True, 16, 32, 64, 4, 2)])
    rc, recs = _run_one(gs, tmp_path, "--ops", "int8_weight_only_mm", "--dtypes", "bf16", "--buckets", "16",
                        "--arch", "80")
    assert rc == 0, recs
    assert recs and all(not r["failures"] and r["mma"].get("HMMA") for r in recs)
    # the int8 weight stream is read 16 bytes per thread (cp.async)
    assert all(r["loads"]["weight"] and all(k.endswith(".128") for k in r["loads"]["weight"]) for r in recs), recs


# ------------------------------------------------------------------------------------------ parsers
def test_parsers_on_fixed_text(gs):
    assert gs.load_width("LDG.E.128.CONSTANT") == 128
    assert gs.load_width("LDG.E.U16") == 16
    assert gs.load_width("LDG.E") == 32
    assert gs.load_width("LDGSTS.E.BYPASS.LTC128B.128") == 128
    assert gs.load_width("LDS.128") is None
    ru = gs.parse_resource_usage(" Function _k:\n  REG:255 STACK:160 SHARED:1024 LOCAL:0 CONSTANT[0]:608 TEXTURE:0\n")
    assert ru == {"_k": {"REG": 255, "STACK": 160, "SHARED": 1024, "LOCAL": 0}}
    ops, _ = gs.parse_sass("        /*0a20*/               @!P0 LDG.E.64 R18, desc[UR8][R18.64] ;\n"
                           "        /*0a30*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;\n"
                           "        /*0a40*/                   STL.64 [R1+0x8], R4 ;\n")
    assert ops == {"LDG.E.64": 1, "HGMMA.64x64x16.F32.BF16": 1, "STL.64": 1}
    assert gs.wgmma_waits("        /*2c00*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;\n"
                          "        /*2d00*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;\n"
                          "        /*2e00*/                   WARPGROUP.ARRIVE ;\n") == [0, 1]
    assert gs._mma_str({"mma": {"HGMMA": 8}, "dot": True, "wgmma_waits": [0, 1, 1]}) == "HGMMAx8 (in flight 1)"
    assert gs._mma_str({"mma": {"HMMA": 8}, "dot": True, "wgmma_waits": []}) == "HMMAx8"
    llir = "\n".join([
        '%1 = tail call { i32, i32, i32, i32 } asm sideeffect "mov.u32 $0, 0x0;\\0A\\09ld.global.v4.b32 '
        '{ $0, $1, $2, $3 }, [ $4 + 0 ];", "=r,=r,=r,=r,l"(ptr addrspace(1) %0) #6, !dbg !12',
        'tail call void asm sideeffect "@$2 cp.async.cg.shared.global [ $0 + 0 ], [ $1 + 0 ], 0x10, $3;", '
        '"r,l,b,r"(ptr addrspace(3) %a, ptr addrspace(1) %b, i1 %c, i32 %d) #6, !dbg !13',
        '!3 = !DIFile(filename: "k.py", directory: "/src")',
        '!5 = distinct !DISubprogram(name: "k", linkageName: "k", scope: !3, file: !3, line: 1)',
        '!12 = !DILocation(line: 40, column: 9, scope: !5)',
        '!13 = !DILocation(line: 7, column: 3, scope: !5, inlinedAt: !12)',
    ])
    loads = gs.llir_loads(llir)
    real = os.path.realpath("/src/k.py")
    assert loads == [("LDG", 128, [(real, 40)]), ("LDGSTS", 128, [(real, 7), (real, 40)])]


def test_w8a16_swap_tiles_keep_a_wgmma_in_flight():
    """Why the W8A16 SWAP candidates exist (sparsekit/triton/README.md): on sm_90a each keeps a wgmma group in flight
    across K steps, where the unswapped dot tiles above M = 16 drain the tensor cores at every wait. Read from the
    committed records (the full run above checks that they are current)."""
    from sparsekit.triton import int8 as I8

    recs = [json.loads(ln) for ln in COMMITTED.read_text().splitlines() if ln.strip()]
    wo = [r for r in recs if r.get("op") == "int8_weight_only_mm" and r.get("arch") == "sm_90a" and r.get("mma")]
    for dtype, name in ((I8.torch.float16, "fp16"), (I8.torch.bfloat16, "bf16")):
        for b in (32, 64, 256, 1024):
            cands = I8.weight_only_candidates(b, 4096, dtype)
            swapped = [c for c in cands if c.get("SWAP")]
            assert len(swapped) == 2, (b, name)
            for c in swapped:
                mine = [r for r in wo if r["dtype"] == name and r["config"] == c]
                assert mine and all(max(r["wgmma_waits"]) >= 1 for r in mine), (b, name, c)
            plain = [c for c in cands if c.get("DOT") and not c.get("SWAP") and c["BLOCK_M"] >= 64]
            for c in plain:
                mine = [r for r in wo if r["dtype"] == name and r["config"] == c]
                assert mine and all(max(r["wgmma_waits"]) == 0 for r in mine), (b, name, c)
