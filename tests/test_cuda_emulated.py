"""The exact CUDA kernels of csrc/cuda, run on the CPU by the emulator of tests/cuda_emu.

Every CUDA thread is a fiber, __syncthreads / __syncwarp / shuffles are real rendezvous (a missing one
lets a warp or a lane run ahead), shared memory and outputs start as NaN bytes, every buffer is a heap
block of exactly its size under AddressSanitizer + UBSan (bounds, alignment of vector loads, shifts).
The launchers (grid sizing, split-K planning, workspace sizing, M tiling) run as they would on a GPU,
against a device whose multiprocessor count and shared-memory budget are knobs (small budgets force
split-K). Results are compared with a float64 reference; the packers byte for byte with the formats'
from_dense. Planted bugs (textual mutations of a kernel's source) must make the runs fail.

Nothing here needs a GPU; it needs a C++ compiler (g++ or clang++) and skips without one.
"""
from __future__ import annotations

import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_emu"))
import emu_build  # noqa: E402
import emu_harness as H  # noqa: E402

from sparsekit.formats import BitmapWeight, BSRWeight, CSRWeight, Sparse24Weight  # noqa: E402
from sparsekit.ops import reference  # noqa: E402

pytestmark = pytest.mark.skipif(emu_build.compiler() is None, reason="needs a C++ compiler (g++ or clang++)")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MS = (1, 2, 3, 8, 16, 17, 33)
# A budget small enough to split K (b2 = smem_per_sm / 2 - 1 KB per block): see choose_chunking.
SPLIT_24 = {"EMU_SMEM_PER_SM": 20000, "EMU_SMEM_OPTIN": 20000}
SPLIT_BITMAP = {"EMU_SMEM_PER_SM": 40000, "EMU_SMEM_OPTIN": 40000}
# The batched bitmap kernel (v2) needs more shared memory per warp: on 40000 bytes it gives way to v1; on
# 140000 it runs and splits K (bf16) at M = 16 above ~2200 columns, at M = 1 above ~34000.
SPLIT_BITMAP_V2 = {"EMU_SMEM_PER_SM": 140000, "EMU_SMEM_OPTIN": 140000}
# Its wide shape (2048-column tiles, the sparsest rows) needs more: on 140000 the 1024-column sparse shape runs
# instead; on 200000 the wide one runs and splits K (bf16) at M = 16 above ~1500 columns, at M = 1 above ~24000.
SPLIT_BITMAP_WIDE = {"EMU_SMEM_PER_SM": 200000, "EMU_SMEM_OPTIN": 200000}


# ------------------------------------------------------------------------------------------ builds
@pytest.fixture(scope="session")
def emu_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda_emu")


@pytest.fixture(scope="session")
def driver(emu_dir):
    return emu_build.build(emu_dir / "base", obj_cache=emu_dir / "obj")


# The kernel translation unit whose kernels a planted bug's cases (its kind, PLANTED_CASES) run: a mutant is built
# with its mutations in those units only, the others from the unmutated objects (a mutation of mma_decode.cuh,
# which five units include, rebuilds only the one its cases run: CI time).
def kind_unit(kind):
    for prefix, unit in (("sparse24", "sparse24_kernel.cu"), ("s24_", "sparse24_kernel.cu"),
                         ("bitmap", "bitmap_kernel.cu"), ("bsr", "bsr_kernel.cu"), ("csr", "csr_spmm_kernel.cu"),
                         ("pack", "pack_kernel.cu"), ("int8_wo", "int8_wo_kernel.cu"), ("w8a8", "w8a8_kernel.cu")):
        if kind.startswith(prefix):
            return unit
    raise KeyError(f"no kernel unit for the planted-bug kind {kind!r}")


def _build_mutant(emu_dir, group):
    planted = [(m, kind) for name, (g, m, kind) in PLANTED.items() if g == group]
    return emu_build.build(emu_dir / f"mutant_{group}", [m for m, _ in planted], jobs=1,
                           obj_cache=emu_dir / "obj", only={kind_unit(k) for _, k in planted})


@pytest.fixture(scope="session")
def mutants(request, emu_dir, driver):
    """The mutant drivers of every planted-bug group the session runs, built up front SPARSEKIT_EMU_JOBS
    (default 2) at a time: each compiles one translation unit, so one at a time leaves a core idle (CI has
    two). The unmutated build (`driver`) comes first: the objects every mutant shares are then in the
    cache. A build that fails is kept as its error and raised by its group's tests alone."""
    groups = sorted({PLANTED[item.callspec.params["name"]][0] for item in request.session.items
                     if getattr(item, "originalname", None) == "test_planted_bug_is_caught"})

    def one(group):
        try:
            return _build_mutant(emu_dir, group)
        except Exception as e:  # noqa: BLE001 - raised again by the tests of this group
            return e

    jobs = max(1, int(os.environ.get("SPARSEKIT_EMU_JOBS", "2") or 2))
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        return dict(zip(groups, ex.map(one, groups)))


def mutant_driver(mutants, group):
    exe = mutants.get(group)
    if isinstance(exe, Exception):
        raise exe
    return exe


def run(exe, cases, workdir, knobs=None):
    return H.run_cases(exe, cases, workdir, knobs)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, g):
    return torch.randn(shape, generator=g).to(dtype)


def activations(M, K, dtype, g, pad=0, offset=0):
    """x (M, K) as a view of a wider (M, K + pad) buffer; the buffer written for the driver stops at
    the last element the kernel may read. Returns (x, buffer, byte offset)."""
    ld = K + pad
    full = randn((M, ld), dtype, g)
    x = full[:, :K]
    flat = full.reshape(-1)[: (M - 1) * ld + K] if M > 0 else full.reshape(-1)[:0]
    return x, flat, offset * full.element_size(), ld


def expect_ok(res, cases):
    assert res.returncode == 0, (f"driver failed (exit {res.returncode}) in {H.last_case(res.stderr)}:\n"
                                 f"{res.stderr[-5000:]}")
    bad = [c for c in cases if not (c.status or "").startswith("0 ")]
    assert not bad, f"launch errors: {[(c.name, c.status) for c in bad][:5]}"


def check_mm_cases(res, cases):
    expect_ok(res, cases)
    errors = []
    for c in cases:
        k = c.check
        y = c.out("y", k["x"].dtype, (c.scalars["M"], c.scalars["N"]))
        msg = H.check_matmul(y, k["x"], k["w"], k["bias"])
        if msg:
            errors.append(f"{c.name}: {msg}")
        ws = int((c.dir / "workspace.txt").read_text()) if (c.dir / "workspace.txt").exists() else 0
        if "split" in k and (ws > 0) != k["split"]:
            errors.append(f"{c.name}: split-K expected {k['split']}, workspace {ws} bytes")
    assert not errors, f"{len(errors)} of {len(cases)} cases wrong:\n" + "\n".join(errors[:10])


def mm_case(op, name, x, xbuf, xoff, ldx, w, bias, bufs, scalars, split=None):
    M, K = x.shape
    b = {"x": (xbuf, xoff), **bufs}
    if bias is not None:
        b["bias"] = (bias, 0)
    check = {"x": x, "w": w.to(x.dtype) if w.dtype != x.dtype else w, "bias": bias}
    if split is not None:
        check["split"] = split
    sc = dict(dtype=H.DTYPE_NAMES[x.dtype], M=M, N=w.shape[0], K=K, ldx=ldx, **scalars)
    return H.Case(op, sc, b, check, name=name)


# ------------------------------------------------------------------------------------------ 2:4
def mask_24(N, K, g, keep=2, empty_rows=()):
    """Each group of four keeps `keep` (0-2) random positions; rows in empty_rows keep none."""
    r = torch.rand((N, K // 4, 4), generator=g).argsort(-1) < keep
    m = r.reshape(N, K)
    for e in empty_rows:
        m[e] = False
    return m


def s24_case(name, dtype, M, N, K, g, keep=2, bias=True, empty_rows=(), voff=0, moff=0, xpad=0, xoff=0, split=None):
    w = randn((N, K), dtype, g)
    mask = mask_24(N, K, g, keep, empty_rows)
    sw = Sparse24Weight.from_dense(w, mask)
    x, xbuf, xb, ld = activations(M, K, dtype, g, xpad, xoff)
    b = randn((N,), dtype, g) if bias else None
    return mm_case("sparse24_mm", name, x, xbuf, xb, ld, sw.to_dense(), b,
                   {"values": (sw.values, voff * sw.values.element_size()), "meta": (sw.meta, moff)}, {},
                   split)


def sparse24_cases(dtype, seed=0):
    g = gen(seed)
    cases = []
    for i, M in enumerate(MS):
        # vector path (K % 128 == 0, aligned), rows striding over the grid (N > warps per grid)
        cases.append(s24_case(f"vec M={M}", dtype, M, 40, 256, g, bias=i % 2 == 0, empty_rows=(3,)))
    for M in (1, 3, 17):
        cases.append(s24_case(f"general K=100 M={M}", dtype, M, 21, 100, g, bias=M != 3))  # odd group count
    cases.append(s24_case("general K=4", dtype, 2, 5, 4, g))
    cases.append(s24_case("general K=12 keep<=1", dtype, 8, 7, 12, g, keep=1))
    cases.append(s24_case("0 % density", dtype, 3, 9, 256, g, keep=0))
    cases.append(s24_case("K=384 (3 vectors tiles)", dtype, 2, 9, 384, g))
    cases.append(s24_case("K=1152", dtype, 3, 6, 1152, g))
    # rows of 2.5 tiles (a tile is 256 vectors: 4096 columns, 2048 in float32), more rows than the 128 warps of
    # two emulated SMs: the next tile prefetched is the row's next, its last (partial), or the next row's first
    tile_cols = 256 * 32 // torch.empty((), dtype=dtype).element_size()
    cases.append(s24_case("vec rows of 2.5 tiles M=1", dtype, 1, 136, tile_cols * 5 // 2, g, empty_rows=(4,)))
    # misaligned: values off 16 bytes (general path), meta off, x a column slice at an odd offset
    cases.append(s24_case("values misaligned", dtype, 3, 11, 256, g, voff=1))
    cases.append(s24_case("meta misaligned", dtype, 16, 11, 256, g, moff=3))
    cases.append(s24_case("x strided + offset", dtype, 17, 11, 256, g, xpad=3, xoff=1))
    cases.append(s24_case("K=0", dtype, 3, 5, 0, g))
    cases.append(s24_case("K=0 no bias", dtype, 2, 5, 0, g, bias=False))
    cases.append(s24_case("N=1", dtype, 5, 1, 128, g))
    if dtype == torch.float32:
        # x tile + meta stage > 48 KB: needs cudaFuncSetAttribute (the emulated launch refuses otherwise)
        cases.append(s24_case("smem > 48 KB", dtype, 16, 9, 1024, g, split=False))
    return cases


def sparse24_split_cases(dtype, seed=1):
    g = gen(seed)
    big_m_k = 512 if dtype != torch.float32 else 1024
    return [
        s24_case("split M=1", dtype, 1, 19, 8192, g, split=True),
        s24_case("split M=3", dtype, 3, 19, 2048, g, split=True),
        s24_case("split M=16", dtype, 16, 19, big_m_k, g, split=True),
        s24_case("split M=33", dtype, 33, 13, big_m_k, g, bias=False, split=True),
        s24_case("split general M=17", dtype, 17, 13, big_m_k + 4, g, split=True),
        s24_case("split values misaligned M=2", dtype, 2, 13, 8192, g, voff=1, split=True),
    ] + ([s24_case("split M=260: two workspace chunks of rows", dtype, 260, 5, 512, g, split=True)]
         if dtype == torch.float16 else [])


# The 2:4 designs (SPARSEKIT_CUDA_DECODE): v1 the FMA kernel at every M, v2 (default) the tensor-core kernel
# (mma_decode.cuh) from M = 2 in float16 / bfloat16, v3 the tensor-core kernel at every M. float32 runs the FMA
# kernel whatever the setting (one variant is enough there).
S24_VARIANTS = [pytest.param(dt, v, id=f"{H.DTYPE_NAMES[dt]}-{v}") for dt in DTYPES
                for v in (("v2",) if dt == torch.float32 else ("v2", "v1", "v3"))]


@pytest.mark.parametrize("dtype,variant", S24_VARIANTS)
def test_sparse24_mm(driver, tmp_path, dtype, variant):
    cases = sparse24_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path, {"SPARSEKIT_CUDA_DECODE": variant}), cases)


@pytest.mark.parametrize("dtype,variant", S24_VARIANTS)
def test_sparse24_mm_split_k(driver, tmp_path, dtype, variant):
    cases = sparse24_split_cases(dtype)
    if variant == "v3":  # the tensor-core kernel keeps M = 1's x row (16 KB at K = 8192) whole on this budget
        for c in cases:
            if c.scalars["M"] == 1:
                c.check.pop("split", None)
    check_mm_cases(run(driver, cases, tmp_path, {**SPLIT_24, "SPARSEKIT_CUDA_DECODE": variant}), cases)


def sparse24_mma_cases(dtype, seed=45):
    """What the tensor-core 2:4 path adds: more row groups than blocks (run on one SM), K % 16 != 0 (the
    group-by-group loads), metadata at an odd address (2-byte loads refused), a weight keeping at most one
    value per group, several M tiles."""
    g = gen(seed)
    return [s24_case("mma groups M=2", dtype, 2, 300, 256, g, empty_rows=(5, 40)),
            s24_case("mma groups M=16", dtype, 16, 150, 1152, g, bias=False),
            s24_case("mma K=52 M=5", dtype, 5, 70, 52, g),
            s24_case("mma K=1028 M=9", dtype, 9, 40, 1028, g, keep=1),
            s24_case("mma meta odd M=3", dtype, 3, 37, 512, g, moff=1),
            s24_case("mma values misaligned M=33", dtype, 33, 21, 320, g, voff=1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_decode_without_refill(driver, tmp_path, dtype):
    """SPARSEKIT_CUDA_REFILL=0, the order before the weight registers were refilled while consumed (kept for an A/B
    on a GPU): the 2:4 FMA kernel waits for each tile, the tensor-core kernel's int8 rows, 2:4 and W8A8 load whole
    batches and the next row group's first before the group's barrier. One SM: blocks walk several row groups."""
    knobs = {"SPARSEKIT_CUDA_REFILL": "0", "EMU_SMS": 1}
    g = gen(47)
    tile_cols = 256 * 32 // torch.empty((), dtype=dtype).element_size()
    cases = [s24_case("vec rows of 1.5 tiles M=1", dtype, 1, 80, tile_cols * 3 // 2, g, empty_rows=(4,)),
             s24_case("vec M=3", dtype, 3, 70, 256, g), s24_case("general K=100 M=2", dtype, 2, 70, 100, g)]
    check_mm_cases(run(driver, cases, tmp_path / "s24", {**knobs, "SPARSEKIT_CUDA_DECODE": "v1"}), cases)
    if dtype != torch.float32:
        cases = sparse24_mma_cases(dtype, seed=48) + int8_wo_many_groups_cases(dtype, seed=49)
        check_mm_cases(run(driver, cases, tmp_path / "mma", {**knobs, "SPARSEKIT_CUDA_DECODE": "v3"}), cases)
    groups, _ = w8a8_groups_and_split_cases(dtype)
    check_w8a8_cases(run(driver, groups, tmp_path / "w8a8", knobs), groups)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: H.DTYPE_NAMES[d])
def test_sparse24_mm_tensor_core_path(driver, tmp_path, dtype):
    cases = sparse24_mma_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path / "v3", {"EMU_SMS": 1, "SPARSEKIT_CUDA_DECODE": "v3"}), cases)
    cases = sparse24_mma_cases(dtype, seed=46)  # and a device below sm_80: the FMA kernel serves
    check_mm_cases(run(driver, cases, tmp_path / "sm75", {"EMU_SMS": 1, "EMU_CC_MAJOR": 7}), cases)


# ------------------------------------------------------------------------------------------ bitmap
def bitmap_case(name, dtype, M, N, K, g, density=0.5, bias=True, empty_rows=(), voff=0, xpad=0, xoff=0, split=None):
    w = randn((N, K), dtype, g)
    mask = torch.rand((N, K), generator=g) < density
    for e in empty_rows:
        mask[e] = False
    bw = BitmapWeight.from_dense(w, mask)
    x, xbuf, xb, ld = activations(M, K, dtype, g, xpad, xoff)
    b = randn((N,), dtype, g) if bias else None
    return mm_case("bitmap_mm", name, x, xbuf, xb, ld, bw.to_dense(), b,
                   {"bitmap": (bw.bitmap, 0), "word_offsets": (bw.word_offsets, 0),
                    "values": (bw.values, voff * bw.values.element_size())},
                   {"nnz": bw.values.numel()}, split)


def bitmap_cases(dtype, seed=2):
    g = gen(seed)
    cases = []
    for i, M in enumerate(MS):
        cases.append(bitmap_case(f"M={M} K=97", dtype, M, 37, 97, g, density=0.5, bias=i % 2 == 1, empty_rows=(0, 5)))
    for d in (0.0, 0.1, 0.7, 1.0):
        cases.append(bitmap_case(f"density {d} K=1100", dtype, 3, 11, 1100, g, density=d))  # two 1024-col tiles
    cases.append(bitmap_case("K=2080 M=16", dtype, 16, 9, 2080, g, density=0.3))
    cases.append(bitmap_case("K=31", dtype, 2, 9, 31, g))
    cases.append(bitmap_case("K=1", dtype, 17, 5, 1, g, density=0.6))
    cases.append(bitmap_case("values misaligned", dtype, 8, 13, 300, g, voff=1))
    cases.append(bitmap_case("x strided + offset", dtype, 33, 7, 257, g, xpad=5, xoff=3))
    cases.append(bitmap_case("K=0", dtype, 2, 4, 0, g))
    return cases


def bitmap_split_cases(dtype, seed=3):
    g = gen(seed)
    return [
        bitmap_case("split M=1", dtype, 1, 9, 4100, g, split=True),
        bitmap_case("split M=3 dense", dtype, 3, 9, 1100, g, density=1.0, split=True),
        bitmap_case("split M=17", dtype, 17, 9, 300, g, density=0.2, split=True),
        bitmap_case("split M=8 misaligned", dtype, 8, 5, 700, g, voff=1, bias=False, split=True),
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_bitmap_mm(driver, tmp_path, dtype):
    cases = bitmap_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path), cases)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_bitmap_mm_split_k(driver, tmp_path, dtype):
    cases = bitmap_split_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path, SPLIT_BITMAP), cases)


def bitmap_case_mask(name, dtype, M, mask, g, bias=True, voff=0, split=None):
    """A bitmap case with the given (N, K) keep mask."""
    N, K = mask.shape
    w = randn((N, K), dtype, g)
    bw = BitmapWeight.from_dense(w, mask)
    x, xbuf, xb, ld = activations(M, K, dtype, g)
    b = randn((N,), dtype, g) if bias else None
    return mm_case("bitmap_mm", name, x, xbuf, xb, ld, bw.to_dense(), b,
                   {"bitmap": (bw.bitmap, 0), "word_offsets": (bw.word_offsets, 0),
                    "values": (bw.values, voff * bw.values.element_size())},
                   {"nnz": bw.values.numel()}, split)


def bitmap_v2_cases(dtype, seed=21):
    """What the batched variant (bitmap_decode_v2_kernel) must get right: its batch shapes (wide: density
    <= 10.6 % in 16-bit, 5.3 % in fp32; wide-dense: <= 31.9 %, 15.9 %; dense; the sparse shape runs where the
    wide one does not fit: see test_bitmap_mm_variants), batches that cross row ends
    (rows of 1-3 tiles: a batch of 8 or 4 holds several rows), odd K (a wide tile whose second half is short
    or empty), rows whose tiles are all empty, whole rows or single tiles 100 % dense (runs longer than the
    chunks issued per lane: the overflow loads), every M tile."""
    g = gen(seed)
    cases = []
    d_wd = 0.25 if dtype != torch.float32 else 0.12  # the wide-dense shape (three chunks per lane)
    for i, M in enumerate((1, 2, 3, 4, 5, 8, 16)):
        cases.append(bitmap_case(f"v2 wide M={M} K=3001", dtype, M, 21, 3001, g, density=0.05, bias=i % 2 == 0,
                                 empty_rows=(0, 7)))
        cases.append(bitmap_case(f"v2 dense M={M} K=2050", dtype, M, 13, 2050, g, density=0.6, bias=i % 2 == 1,
                                 empty_rows=(3,)))
        if M in (1, 4, 16):
            cases.append(bitmap_case(f"v2 wide-dense M={M} K=3001", dtype, M, 15, 3001, g, density=d_wd,
                                     empty_rows=(2,)))
    for K in (1, 31, 97, 1024, 1025, 2048, 2049):  # one tile per row: a batch spans up to 8 rows
        cases.append(bitmap_case(f"v2 rows of one tile K={K}", dtype, 3, 29, K, g, density=0.1))
    # tiles 100 % dense next to empty ones, in a sparse matrix (the wide shape with overflow loads)
    m = torch.rand((19, 5000), generator=g) < 0.03
    m[2, :] = True                  # a whole row dense
    m[4, 1024:2048] = True          # one dense tile
    m[5, :3000] = False             # empty tiles, then a few values
    m[6, :] = False                 # an empty row
    m[7, 4096:] = True              # the last (partial) tile dense
    cases.append(bitmap_case_mask("v2 sparse with dense and empty tiles", dtype, 4, m, g))
    m2 = torch.rand((11, 4500), generator=g) < 0.5
    m2[1, :] = True
    m2[2, 2048:4096] = False
    m2[9, :] = False
    cases.append(bitmap_case_mask("v2 dense with full and empty tiles", dtype, 16, m2, g))
    cases.append(bitmap_case("v2 density 1 K=4100", dtype, 2, 6, 4100, g, density=1.0))
    cases.append(bitmap_case("v2 density 0 K=2000", dtype, 7, 6, 2000, g, density=0.0))
    return cases


def bitmap_v2_many_rows_cases(dtype, seed=25):
    """More rows than warps (run on one SM): batches that hold the ends of several rows (rows of one
    tile) and rows longer than a batch (9 tiles: two sparse batches, three dense ones)."""
    g = gen(seed)
    return [
        bitmap_case("v2 rows of one tile", dtype, 3, 150, 900, g, density=0.1, empty_rows=(3, 4, 70)),
        bitmap_case("v2 sparse rows of 9 tiles", dtype, 1, 140, 9000, g, density=0.05, empty_rows=(1,)),
        bitmap_case("v2 dense rows of 9 tiles", dtype, 5, 100, 8300, g, density=0.4, empty_rows=(9,)),
    ]


def bitmap_v2_split_cases(dtype, seed=22, split=True):
    """Split-K cases for SPLIT_BITMAP_V2 (where v1, with less shared memory per warp, may keep K whole)."""
    g = gen(seed)
    m = torch.rand((10, 12000), generator=g) < 0.08
    m[3, :] = True
    m[4, :] = False
    return [
        bitmap_case("v2 split sparse M=1", dtype, 1, 17, 36000, g, density=0.05, split=split),
        bitmap_case("v2 split dense M=5", dtype, 5, 9, 6000, g, density=0.7, split=split),
        bitmap_case("v2 split M=16 K=4100", dtype, 16, 7, 4100, g, density=0.12, split=split),
        bitmap_case_mask("v2 split full and empty rows", dtype, 3, m, g, split=split),
    ]


def bitmap_v2_wide_split_cases(dtype, seed=28, split=True):
    """Split-K cases of the 2048-column shapes for SPLIT_BITMAP_WIDE (density <= 5 %: wide in every dtype; the
    wide-dense one at 25 % in 16 bits, 12 % in fp32)."""
    g = gen(seed)
    m = torch.rand((30, 13000), generator=g) < 0.02
    m[3, :] = True
    m[4, :] = False
    m[5, 2048:4096] = True  # one wide tile dense
    return [
        bitmap_case("v2 wide split M=2", dtype, 2, 17, 30000, g, density=0.05, split=split),
        bitmap_case("v2 wide split M=16 K=4100", dtype, 16, 7, 4100, g, density=0.05, split=split),
        bitmap_case("v2 wide-dense split M=16 K=6000", dtype, 16, 9, 6000, g,
                    density=0.25 if dtype != torch.float32 else 0.12, split=split),
        bitmap_case_mask("v2 wide split full and empty rows", dtype, 3, m, g, split=split),
    ]


@pytest.mark.parametrize("variant", ["v2", "v1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_bitmap_mm_variants(driver, tmp_path, dtype, variant):
    """The batched kernel (default) and the first one (SPARSEKIT_CUDA_DECODE=v1), on the cases made for
    the batched one, whole and split-K."""
    knobs = {"SPARSEKIT_CUDA_DECODE": variant}
    cases = bitmap_v2_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path / "whole", knobs), cases)
    # on 170000 bytes of shared memory the 2048-column shapes do not fit: the 1024-column ones of the same
    # density run (sparse for wide, dense for wide-dense)
    narrow = [c for c in cases if c.name.startswith(("v2 wide M=", "v2 wide-dense", "v2 rows of one tile"))]
    check_mm_cases(run(driver, narrow, tmp_path / "narrow", {"EMU_SMEM_PER_SM": 170000, "EMU_SMEM_OPTIN": 170000,
                                                             **knobs}), narrow)
    cases = bitmap_v2_many_rows_cases(dtype)  # one SM: every warp walks several rows
    check_mm_cases(run(driver, cases, tmp_path / "rows", {"EMU_SMS": 1, **knobs}), cases)
    cases = bitmap_v2_split_cases(dtype, split=True if variant == "v2" else None)
    check_mm_cases(run(driver, cases, tmp_path / "split", {**SPLIT_BITMAP_V2, **knobs}), cases)
    cases = bitmap_v2_wide_split_cases(dtype, split=True if variant == "v2" else None)
    check_mm_cases(run(driver, cases, tmp_path / "split_wide", {**SPLIT_BITMAP_WIDE, **knobs}), cases)
    # budgets too small for v2's buffers: v1 runs (and splits K)
    cases = bitmap_split_cases(dtype, seed=26)
    check_mm_cases(run(driver, cases, tmp_path / "small", {**SPLIT_BITMAP, **knobs}), cases)
    cases = bitmap_cases(dtype, seed=27)[:8]
    check_mm_cases(run(driver, cases, tmp_path / "tiny", {**SPLIT_24, **knobs}), cases)


@pytest.mark.parametrize("shape", ["wide", "wide-dense", "sparse", "dense"])
def test_bitmap_v2_each_shape_at_any_density(driver, tmp_path, shape):
    """SPARSEKIT_CUDA_BITMAP_SHAPE forces the batched kernel's shape whatever the density (for timing them
    against each other on a GPU): each shape is right on rows far sparser and far denser than it is chosen for
    (overflow chunks, idle lanes), whole and split K."""
    knobs = {"SPARSEKIT_CUDA_BITMAP_SHAPE": shape}
    for dtype in (torch.bfloat16, torch.float32):
        g = gen(29)
        cases = [bitmap_case(f"{shape} d={d} M={M}", dtype, M, 23, 4500, g, density=d, empty_rows=(4,))
                 for d, M in ((0.02, 1), (0.12, 3), (0.3, 16), (0.7, 5), (1.0, 2))]
        check_mm_cases(run(driver, cases, tmp_path / f"whole_{H.DTYPE_NAMES[dtype]}", knobs), cases)
        cases = bitmap_v2_wide_split_cases(dtype, seed=30, split=None)  # (whether K splits depends on the shape)
        check_mm_cases(run(driver, cases, tmp_path / f"split_{H.DTYPE_NAMES[dtype]}",
                           {**SPLIT_BITMAP_WIDE, **knobs}), cases)


@pytest.mark.parametrize("consumer", ["walk", "list"])
def test_bitmap_v2_walk_and_list_up_to_m4(driver, tmp_path, consumer):
    """At M <= 4 in float16 / bfloat16 the batched kernel walks each lane's bits itself (the default) or, with
    SPARSEKIT_CUDA_BITMAP_CONSUMER=list, compacts the list and runs the chunk consumer as at larger M: both in
    each shape (forced) on rows far sparser and denser than it is chosen for, odd K, x misaligned (the walk's x
    tile staged a value at a time), aligned (16-byte loads) and with a row stride, and K split (up to M = 2 the
    walk's x tile is twice the 16-bit one: K splits sooner). M = 3 runs the M = 4 tile with a row of zeros."""
    knobs = {} if consumer == "walk" else {"SPARSEKIT_CUDA_BITMAP_CONSUMER": "list"}
    for dtype in (torch.float16, torch.bfloat16):
        g = gen(75)
        cases = [bitmap_case(f"M={M} d={d} K={K} xoff={xo}", dtype, M, 37, K, g, density=d, empty_rows=(3,), xoff=xo,
                             xpad=xp)
                 for M, d, K, xo, xp in ((1, 0.03, 4500, 0, 0), (2, 0.2, 3001, 3, 5), (1, 0.5, 2050, 0, 0),
                                         (2, 0.6, 2080, 0, 8), (1, 1.0, 1100, 1, 0), (2, 0.0, 700, 0, 0),
                                         (3, 0.3, 2500, 0, 8), (4, 0.1, 3001, 1, 3), (4, 0.7, 2048, 0, 0))]
        for shape in ("wide", "wide-dense", "sparse", "dense"):
            check_mm_cases(run(driver, cases, tmp_path / f"{shape}_{H.DTYPE_NAMES[dtype]}",
                               {"SPARSEKIT_CUDA_BITMAP_SHAPE": shape, **knobs}), cases)
        cases = [bitmap_case("split sparse", dtype, 1, 17, 36000, g, density=0.05, split=True),
                 bitmap_case("split dense x misaligned", dtype, 1, 9, 40000, g, density=0.6, xoff=1,
                             split=True if consumer == "walk" else None),
                 bitmap_case("split M=2", dtype, 2, 11, 30000, g, density=0.3, split=True),
                 bitmap_case("split M=4", dtype, 4, 11, 30000, g, density=0.3, split=True)]
        check_mm_cases(run(driver, cases, tmp_path / f"split_{H.DTYPE_NAMES[dtype]}", {**SPLIT_BITMAP_V2, **knobs}),
                       cases)


def with_columns(cases, corrupt=None):
    """The bitmap cases with the column list (reference.bitmap_columns) beside their buffers: the column-list kernel
    (variant 4 of bitmap_mm) serves them. corrupt(cols, K): edits the list first (a wrong list)."""
    out = []
    for c in cases:
        bm = c.bufs["bitmap"][0]
        cols = reference.bitmap_columns(bm, int(c.scalars["K"])) if bm.shape[1] else torch.zeros(0, dtype=torch.int16)
        if corrupt is not None:
            cols = corrupt(cols.clone(), int(c.scalars["K"]))
        check = {k: v for k, v in c.check.items() if k != "split"}  # (its tile is smaller: K splits later)
        out.append(H.Case(c.op, dict(c.scalars), {**c.bufs, "columns": (cols, 0)}, check, name=f"columns: {c.name}"))
    return out


def split_count(cases):
    """How many of the (run) cases split K (their workspace is not empty)."""
    return sum(int((c.dir / "workspace.txt").read_text()) > 0 for c in cases if (c.dir / "workspace.txt").exists())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_bitmap_mm_column_list(driver, tmp_path, dtype):
    """The column-list kernel (variant 4: the kept values with a 16-bit column each) on the cases of the other
    bitmap kernels: every M tile, densities 0-100 %, empty and full rows, odd K, misaligned values (the 2-byte
    path), strided x, rows that end inside a batch and rows of several batches (one SM: each warp walks several
    rows), K split (its chunk bounds from word_offsets), K = 65536 (the largest 16-bit column). And
    SPARSEKIT_CUDA_DECODE=v2 on the same buffers runs the batched kernel instead (it must ignore the list)."""
    cases = with_columns(bitmap_cases(dtype, seed=40) + bitmap_v2_cases(dtype, seed=41))
    check_mm_cases(run(driver, cases, tmp_path / "whole"), cases)
    cases = with_columns(bitmap_v2_many_rows_cases(dtype, seed=42))
    check_mm_cases(run(driver, cases, tmp_path / "rows", {"EMU_SMS": 1}), cases)
    cases = with_columns(bitmap_split_cases(dtype, seed=43) + bitmap_v2_split_cases(dtype, seed=44) +
                         bitmap_v2_wide_split_cases(dtype, seed=45))
    check_mm_cases(run(driver, cases, tmp_path / "split", SPLIT_24), cases)
    assert split_count(cases) >= 8, "most of these cases should split K on this budget"
    g = gen(46)
    m = torch.zeros((3, 65536), dtype=torch.bool)
    m[0, -3:] = True
    m[1, ::4099] = True
    m[2, :] = torch.rand(65536, generator=g) < 0.01
    cases = with_columns([bitmap_case_mask("K=65536", dtype, 2, m, g)])
    check_mm_cases(run(driver, cases, tmp_path / "k64k"), cases)
    cases = with_columns(bitmap_cases(dtype, seed=47)[:6])
    check_mm_cases(run(driver, cases, tmp_path / "v2", {"SPARSEKIT_CUDA_DECODE": "v2"}), cases)


def test_bitmap_mm_column_list_out_of_range_columns(driver, tmp_path):
    """A column list whose entries point past the K chunk (a wrong list the binding's check would refuse) must not
    read outside the x tile: the kernel skips them (AddressSanitizer guards the tile's shared memory here)."""
    def corrupt(cols, K):
        cols[::3] = -1  # column 65535
        return cols
    g = gen(48)
    cases = with_columns([bitmap_case("K=300", torch.bfloat16, 3, 9, 300, g, density=0.5),
                          bitmap_case("K=4100 split", torch.float32, 16, 7, 4100, g, density=0.3)], corrupt)
    res = run(driver, cases, tmp_path, SPLIT_24)
    expect_ok(res, cases)


V3 = {"SPARSEKIT_CUDA_DECODE": "v3"}


def bitmap_mma_cases(dtype, seed=27):
    g = gen(seed)
    cases = []
    dens = (0.5, 0.05, 0.3, 0.9, 1.0)
    for i, M in enumerate(MS + (4, 5)):
        cases.append(bitmap_case(f"M={M} d={dens[i % 5]}", dtype, M, 37, 320, g, density=dens[i % 5],
                                 bias=i % 2 == 0, empty_rows=(0, 20)))
    cases.append(bitmap_case("K=97 (a step past K, one word)", dtype, 3, 19, 97, g, density=0.6))
    cases.append(bitmap_case("K=31", dtype, 2, 9, 31, g, density=0.7))
    cases.append(bitmap_case("K=1100 d=0.2", dtype, 16, 21, 1100, g, density=0.2))
    cases.append(bitmap_case("dense rows K=2080", dtype, 8, 17, 2080, g, density=1.0))
    cases.append(bitmap_case("no value", dtype, 4, 16, 256, g, density=0.0))
    cases.append(bitmap_case("values misaligned (2-byte path)", dtype, 5, 23, 300, g, density=0.4, voff=1))
    cases.append(bitmap_case("x strided + offset", dtype, 9, 18, 256, g, density=0.5, xpad=3, xoff=1))
    cases.append(bitmap_case("K=0", dtype, 2, 8, 0, g))
    return cases


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: H.DTYPE_NAMES[d])
def test_bitmap_mm_tensor_cores(driver, tmp_path, dtype):
    """Bitmap on the tensor cores (SPARSEKIT_CUDA_DECODE=v3: BitmapRows of mma_decode.cuh): every M tile, densities
    from empty to full rows (runs of 0 to 9 vectors), K not a multiple of 64 or 32, the last value of `values` at
    the end of its buffer (the tail read elementwise), misaligned values, strided x; several row groups per block
    (one SM), with rows long enough that each warp walks several batches of steps (the run index carried from
    batch to batch, word_offsets read at a group's first step only); K split."""
    cases = bitmap_mma_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path / "whole", V3), cases)
    g = gen(28)
    groups = [bitmap_case("groups M=3", dtype, 3, 200, 640, g, density=0.3),
              bitmap_case("groups M=16 d=0.1", dtype, 16, 150, 512, g, density=0.1),
              bitmap_case("groups, several batches a warp, M=5", dtype, 5, 40, 5000, g, density=0.3)]
    check_mm_cases(run(driver, groups, tmp_path / "groups", {**V3, "EMU_SMS": 1}), groups)
    split = [bitmap_case("split M=16", dtype, 16, 40, 2048, g, density=0.5, split=True),
             bitmap_case("split M=1 K=30000", dtype, 1, 20, 30000, g, density=0.2, split=True)]
    check_mm_cases(run(driver, split, tmp_path / "split", {**V3, **SPLIT_WO}), split)
    # too little shared memory for the per-warp buffers: the FMA kernel serves the call
    small = [bitmap_case("small device M=16", dtype, 16, 20, 512, g, density=0.5)]
    check_mm_cases(run(driver, small, tmp_path / "small", {**V3, **SPLIT_BITMAP}), small)


def test_bitmap_mm_v1_on_the_first_cases(driver, tmp_path):
    """The first kernel stays selectable and correct on the original cases."""
    cases = bitmap_cases(torch.bfloat16, seed=23) + bitmap_split_cases(torch.float32, seed=24)
    check_mm_cases(run(driver, cases[:-4], tmp_path / "a", {"SPARSEKIT_CUDA_DECODE": "v1"}), cases[:-4])
    check_mm_cases(run(driver, cases[-4:], tmp_path / "b", {"SPARSEKIT_CUDA_DECODE": "v1", **SPLIT_BITMAP}),
                   cases[-4:])


@pytest.mark.parametrize("knobs", [{"EMU_SCHEDULE": "fair"}, {"EMU_SCHEDULE": "reverse"}, {"EMU_SMS": 132}],
                         ids=["fair schedule", "reverse schedule", "132 SMs"])
def test_decode_kernels_other_schedules_and_grids(driver, tmp_path, knobs):
    """The decode kernels again with the fibers run in other orders (every runnable thread to its next
    barrier in turn; in reverse thread order) instead of one warp as far ahead as it can go, and on a
    device with as many SMs as an H100 (grids of more blocks: warps with one row or none)."""
    cases = sparse24_cases(torch.float16, seed=8) + bitmap_cases(torch.bfloat16, seed=9)
    check_mm_cases(run(driver, cases, tmp_path, knobs), cases)


# ------------------------------------------------------------------------------------------ int8 weight-only
WO_DTYPES = [torch.float16, torch.bfloat16]  # the tensor-core kernel's x dtypes (float32 stays on Triton)
# K split for int8_wo_mm: b2 = 38976 bytes a block; at M = 16 the partial-sum buffers of 8 warps take 16 KB and
# each 64 columns of x 2304 bytes (chunks of 576 columns; 512 threads, one block, keep K <= ~1500 whole); at M = 1,
# 144 bytes per 64 columns: K above ~34000 splits.
SPLIT_WO = {"EMU_SMEM_PER_SM": 80000, "EMU_SMEM_OPTIN": 80000}


def int8_wo_case(name, dtype, M, N, K, g, bias=True, woff=0, xpad=0, xoff=0, split=None):
    """y = x @ (w_q * w_scale).T + bias, w_q int8 over the whole range (-128 too), per-row float32 scales."""
    q = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int16).to(torch.int8)
    scale = torch.rand(N, generator=g) * 0.02 + 0.001
    x, xbuf, xb, ld = activations(M, K, dtype, g, xpad, xoff)
    b = randn((N,), dtype, g) if bias else None
    bufs = {"x": (xbuf, xb), "w_q": (q, woff), "w_scale": (scale, 0)}
    if b is not None:
        bufs["bias"] = (b, 0)
    check = {"x": x, "w": q.double() * scale.double()[:, None], "bias": b}
    if split is not None:
        check["split"] = split
    return H.Case("int8_wo_mm", dict(dtype=H.DTYPE_NAMES[dtype], M=M, N=N, K=K, ldx=ld), bufs, check, name=name)


def int8_wo_cases(dtype, seed=40):
    g = gen(seed)
    cases = []
    for i, M in enumerate(MS + (4, 5, 9)):
        # 16-byte loads (K % 16 == 0, aligned); N = 40: three row groups, the last one 8 rows short
        cases.append(int8_wo_case(f"vec M={M}", dtype, M, 40, 256, g, bias=i % 2 == 0))
    for M in (1, 3, 17):
        cases.append(int8_wo_case(f"bytewise K=100 M={M}", dtype, M, 21, 100, g, bias=M != 3))
    for K in (1, 16, 48, 80, 1152, 2000):  # one lane's columns only; a partial step; 18 steps: warps idle
        cases.append(int8_wo_case(f"K={K}", dtype, 3, 17, K, g))
    cases.append(int8_wo_case("w misaligned", dtype, 8, 19, 256, g, woff=1))
    cases.append(int8_wo_case("w misaligned M=16", dtype, 16, 5, 320, g, woff=8, bias=False))
    cases.append(int8_wo_case("x strided + offset", dtype, 17, 11, 256, g, xpad=3, xoff=1))
    cases.append(int8_wo_case("N=1", dtype, 5, 1, 128, g))
    cases.append(int8_wo_case("N=16", dtype, 16, 16, 512, g))
    cases.append(int8_wo_case("K=0", dtype, 3, 5, 0, g))
    cases.append(int8_wo_case("K=0 no bias", dtype, 2, 5, 0, g, bias=False))
    cases.append(int8_wo_case("M=16 K=4096", dtype, 16, 9, 4096, g, split=False))  # x tile > 48 KB
    return cases


def int8_wo_many_groups_cases(dtype, seed=41):
    """More row groups than blocks (one SM): every block walks several groups (the next group's loads
    issued before the reduction, the two partial-sum buffers)."""
    g = gen(seed)
    return [int8_wo_case("groups M=1", dtype, 1, 300, 640, g),
            int8_wo_case("groups M=7", dtype, 7, 170, 1024, g, bias=False),
            int8_wo_case("groups M=16", dtype, 16, 100, 192, g),
            int8_wo_case("groups bytewise M=2", dtype, 2, 90, 99, g),
            # several batches of 4 steps a warp and group (128 steps on at most 16 warps), refilled entry by entry
            int8_wo_case("groups of several batches M=1", dtype, 1, 48, 8192, g),
            int8_wo_case("groups of several batches bytewise M=3", dtype, 3, 40, 4100, g)]


def int8_wo_split_cases(dtype, seed=42):
    g = gen(seed)
    return [int8_wo_case("split M=1", dtype, 1, 9, 40000, g, split=True),
            int8_wo_case("split M=16", dtype, 16, 19, 2048, g, split=True),
            int8_wo_case("split M=33", dtype, 33, 13, 1700, g, bias=False, split=True),
            int8_wo_case("split bytewise M=9", dtype, 9, 7, 2001, g, split=True),
            int8_wo_case("split misaligned M=4", dtype, 4, 11, 9000, g, woff=2, split=True)]


@pytest.mark.parametrize("dtype", WO_DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_int8_wo_mm(driver, tmp_path, dtype):
    cases = int8_wo_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path / "whole"), cases)
    cases = int8_wo_many_groups_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path / "groups", {"EMU_SMS": 1}), cases)
    cases = int8_wo_split_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path / "split", SPLIT_WO), cases)


@pytest.mark.parametrize("dtype", WO_DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_emulated_mma_follows_the_ptx_fragment_layout(driver, tmp_path, dtype):
    """The emulated mma_16816 (csrc/cuda/mma_sync.cuh) against A @ B, with the fragments built in the driver
    from the PTX ISA's layout, written independently of the kernels: a kernel and the emulator cannot agree
    on a wrong layout unnoticed."""
    g = gen(44)
    cases = []
    for i in range(3):
        A = randn((16, 16), dtype, g)
        B = randn((16, 8), dtype, g)
        if i == 2:  # integers: every product and sum exact
            A = torch.randint(-20, 20, (16, 16), generator=g).to(dtype)
            B = torch.randint(-20, 20, (16, 8), generator=g).to(dtype)
        cases.append(H.Case("mma_probe", {"dtype": H.DTYPE_NAMES[dtype]}, {"A": (A, 0), "B": (B, 0)},
                            {"A": A, "B": B}, name=f"mma {i}"))
    res = run(driver, cases, tmp_path)
    expect_ok(res, cases)
    for c in cases:
        want = c.check["A"].double() @ c.check["B"].double()
        got = c.out("D", torch.float32, (16, 8)).double()
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_int8_wo_mm_refusals(driver, tmp_path):
    """float32 x: cudaErrorInvalidValue (1); a device below sm_80 (no m16n8k16 mma): cudaErrorInvalidDeviceFunction
    (98). Nothing is written (the output keeps the driver's NaN bytes)."""
    g = gen(43)
    f32 = int8_wo_case("float32", torch.float32, 2, 5, 64, g)
    res = run(driver, [f32], tmp_path / "f32")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (f32.status or "").startswith("1 "), f32.status
    old = int8_wo_case("sm_75", torch.float16, 2, 5, 64, g)
    res = run(driver, [old], tmp_path / "sm75", {"EMU_CC_MAJOR": 7})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (old.status or "").startswith("98 "), old.status
    assert bool(torch.isnan(old.out("y", torch.float16, (2, 5))).all())


# ------------------------------------------------------------------------------------------ W8A8 (int8 x)
# K split for w8a8_mm: int8 x rows of (K rounded to 128) + 16 bytes; at M = 16 the int32 partial sums of 8 warps
# take 16 KB, so on 80000 bytes chunks of 1344 columns (512 threads keep up to ~2900 whole).
SPLIT_W8A8 = {"EMU_SMEM_PER_SM": 80000, "EMU_SMEM_OPTIN": 80000}
OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def w8a8_case(name, out_dtype, M, N, K, g, sparse=False, bias=True, keep=2, woff=0, moff=0, xpad=0, xoff=0,
              split=None):
    """int8 x_q (M, K) with per-row scales against an int8 weight (dense, or 2:4 when `sparse`); the expected
    output is the reference op's, byte for byte."""
    xq_full = torch.randint(-127, 128, (M, K + xpad), generator=g, dtype=torch.int16).to(torch.int8)
    x_q = xq_full[:, :K]
    xbuf = xq_full.reshape(-1)[: (M - 1) * (K + xpad) + K] if M > 0 else xq_full.reshape(-1)[:0]
    x_scale = torch.rand(M, generator=g) * 0.05 + 1e-3
    w_scale = torch.rand(N, generator=g) * 0.02 + 1e-3
    b = randn((N,), out_dtype, g) if bias else None
    bufs = {"x": (xbuf, xoff), "x_scale": (x_scale, 0), "w_scale": (w_scale, 0)}
    if sparse:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int16).to(torch.float32)
        mask = mask_24(N, K, g, keep)
        from sparsekit.ops.packing import reference_pack_sparse24
        values, meta = reference_pack_sparse24(w, mask)
        values = values.to(torch.int8)
        bufs["w"] = (values, woff)
        bufs["meta"] = (meta, moff)
        want = reference.sparse24_int8_mm(x_q, x_scale, None, values, meta, w_scale, b, out_dtype)
    else:
        w_q = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int16).to(torch.int8)
        bufs["w"] = (w_q, woff)
        want = reference.int8_mm(x_q, x_scale, None, w_q, w_scale, b, out_dtype)
    if b is not None:
        bufs["bias"] = (b, 0)
    check = {"want": want, "split": split}
    return H.Case("w8a8_mm", dict(dtype=H.DTYPE_NAMES[out_dtype], M=M, N=N, K=K, ldx=K + xpad), bufs, check,
                  name=name)


def check_w8a8_cases(res, cases):
    expect_ok(res, cases)
    errors = []
    for c in cases:
        want = c.check["want"]
        got = c.out("y", want.dtype, tuple(want.shape))
        if not torch.equal(got.view(torch.int16 if want.element_size() == 2 else torch.int32),
                           want.view(torch.int16 if want.element_size() == 2 else torch.int32)):
            bad = (got != want).nonzero()
            i = tuple(bad[0].tolist()) if len(bad) else None
            errors.append(f"{c.name}: {len(bad)} of {want.numel()} outputs differ from the reference's bytes, e.g. "
                          f"y{list(i)} = {got[i].item()!r}, expected {want[i].item()!r}" if i else f"{c.name}: bytes differ")
        ws = int((c.dir / "workspace.txt").read_text()) if (c.dir / "workspace.txt").exists() else 0
        if c.check["split"] is not None and (ws > 0) != c.check["split"]:
            errors.append(f"{c.name}: split-K expected {c.check['split']}, workspace {ws} bytes")
    assert not errors, f"{len(errors)} of {len(cases)} cases wrong:\n" + "\n".join(errors[:10])


def w8a8_cases(out_dtype, seed=50):
    g = gen(seed)
    cases = []
    for i, M in enumerate(MS + (4, 5, 9)):
        cases.append(w8a8_case(f"dense M={M}", out_dtype, M, 40, 256, g, bias=i % 2 == 0))
        cases.append(w8a8_case(f"2:4 M={M}", out_dtype, M, 37, 256, g, sparse=True, bias=i % 2 == 1))
    for K in (1, 16, 100, 1152):
        cases.append(w8a8_case(f"dense K={K}", out_dtype, 3, 17, K, g))
    for K in (4, 52, 100, 1028):
        cases.append(w8a8_case(f"2:4 K={K}", out_dtype, 5, 19, K, g, sparse=True, keep=1 if K == 52 else 2))
    cases.append(w8a8_case("dense w misaligned", out_dtype, 8, 19, 256, g, woff=1))
    cases.append(w8a8_case("2:4 values misaligned", out_dtype, 8, 19, 256, g, sparse=True, woff=4))
    cases.append(w8a8_case("2:4 meta odd", out_dtype, 2, 21, 512, g, sparse=True, moff=1))
    cases.append(w8a8_case("2:4 keeps none", out_dtype, 3, 9, 128, g, sparse=True, keep=0))
    cases.append(w8a8_case("x strided + offset", out_dtype, 17, 11, 256, g, xpad=5, xoff=3))
    cases.append(w8a8_case("K=0", out_dtype, 3, 5, 0, g))
    cases.append(w8a8_case("N=1", out_dtype, 5, 1, 128, g, sparse=True))
    return cases


def w8a8_groups_and_split_cases(out_dtype, seed=51):
    g = gen(seed)
    groups = [w8a8_case("groups dense M=1", out_dtype, 1, 300, 640, g),
              w8a8_case("groups 2:4 M=16", out_dtype, 16, 150, 1152, g, sparse=True),
              w8a8_case("groups 2:4 K=100 M=3", out_dtype, 3, 180, 100, g, sparse=True),
              # several batches of 4 steps a warp and group (128 steps on at most 16 warps)
              w8a8_case("groups dense of several batches M=1", out_dtype, 1, 40, 8192, g),
              w8a8_case("groups 2:4 of several batches M=2", out_dtype, 2, 40, 8192, g, sparse=True)]
    split = [w8a8_case("split dense M=16", out_dtype, 16, 19, 4096, g, split=True),
             w8a8_case("split 2:4 M=16", out_dtype, 16, 21, 4096, g, sparse=True, split=True),
             w8a8_case("split 2:4 K=3004 M=9", out_dtype, 9, 13, 3004, g, sparse=True, bias=False, split=True),
             w8a8_case("split dense M=33", out_dtype, 33, 7, 3000, g, split=True)]
    return groups, split


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_w8a8_mm(driver, tmp_path, out_dtype):
    """int8 x int8 on the tensor cores (dense and 2:4), byte for byte the reference ops' outputs (exact int32
    sums, the same float32 epilogue), whole K, several row groups per block and split K."""
    cases = w8a8_cases(out_dtype)
    check_w8a8_cases(run(driver, cases, tmp_path / "whole"), cases)
    groups, split = w8a8_groups_and_split_cases(out_dtype)
    check_w8a8_cases(run(driver, groups, tmp_path / "groups", {"EMU_SMS": 1}), groups)
    check_w8a8_cases(run(driver, split, tmp_path / "split", SPLIT_W8A8), split)


WIDE_MS = (20, 32, 45, 64, 70)  # one wide tile padded; one whole; 32 + a 16-row tile; two; two + a padded one


@pytest.mark.parametrize("dtype,wide", [pytest.param(dt, w, id=f"{H.DTYPE_NAMES[dt]}-{w}")
                                        for dt, w in ((torch.float16, "on"), (torch.bfloat16, "on"),
                                                      (torch.bfloat16, "0"))])
def test_tensor_core_wide_m_tiles(driver, tmp_path, dtype, wide):
    """The tensor-core decode kernel above M = 16 in tiles of 32 rows (mma::tile_rows_for: four n-tiles an mma step,
    x fragments loaded per mma), and with SPARSEKIT_CUDA_WIDE_TILE=0 in tiles of 16: int8 weight-only, 2:4 and
    W8A8 (dense and 2:4 int8 weights, int8 x) at M = 20-70, odd N (a row group 8 rows short), whole K, several
    row groups per block (one SM), split K, a misaligned weight (the bytewise path) and a strided x."""
    g = gen(60)
    knobs = {} if wide == "on" else {"SPARSEKIT_CUDA_WIDE_TILE": "0"}
    mm = [int8_wo_case(f"int8-wo M={M}", dtype, M, 40, 256, g, bias=M % 2 == 0) for M in WIDE_MS]
    mm += [s24_case(f"2:4 M={M}", dtype, M, 37, 320, g, bias=M % 2 == 1) for M in WIDE_MS]
    mm += [int8_wo_case("int8-wo bytewise K=100 M=40", dtype, 40, 21, 100, g),
           int8_wo_case("int8-wo w misaligned M=33", dtype, 33, 19, 256, g, woff=1),
           s24_case("2:4 x strided + offset M=50", dtype, 50, 11, 256, g, xpad=3, xoff=1)]
    check_mm_cases(run(driver, mm, tmp_path / "mm", knobs), mm)
    groups = [int8_wo_case("int8-wo groups M=48", dtype, 48, 100, 640, g),
              s24_case("2:4 groups M=36", dtype, 36, 90, 512, g)]
    check_mm_cases(run(driver, groups, tmp_path / "groups", dict(knobs, EMU_SMS=1)), groups)
    split = [int8_wo_case("int8-wo split M=40", dtype, 40, 13, 1700, g, split=True),
             s24_case("2:4 split M=64", dtype, 64, 13, 2048, g, split=True)]
    check_mm_cases(run(driver, split, tmp_path / "split", dict(knobs, **SPLIT_W8A8)), split)
    # a device whose shared memory holds no chunk of a wide tile (its partial sums alone are 32 KB): tiles of 16
    small = [int8_wo_case("int8-wo small device M=40", dtype, 40, 13, 1700, g, split=True),
             s24_case("2:4 small device M=64", dtype, 64, 13, 512, g, split=True)]
    check_mm_cases(run(driver, small, tmp_path / "small", dict(knobs, **SPLIT_24)), small)
    w8 = [w8a8_case(f"w8a8 dense M={M}", dtype, M, 40, 256, g, bias=M % 2 == 0) for M in WIDE_MS]
    w8 += [w8a8_case(f"w8a8 2:4 M={M}", dtype, M, 37, 256, g, sparse=True) for M in WIDE_MS[::2]]
    w8 += [w8a8_case("w8a8 x strided + offset M=40", dtype, 40, 11, 256, g, xpad=5, xoff=3)]
    check_w8a8_cases(run(driver, w8, tmp_path / "w8a8", knobs), w8)
    w8s = [w8a8_case("w8a8 split dense M=45", dtype, 45, 7, 3000, g, split=True),
           w8a8_case("w8a8 split 2:4 M=32", dtype, 32, 9, 4096, g, sparse=True, split=True)]
    check_w8a8_cases(run(driver, w8s, tmp_path / "w8a8 split", dict(knobs, **SPLIT_W8A8)), w8s)


def test_w8a8_mm_refusals(driver, tmp_path):
    g = gen(52)
    old = w8a8_case("sm_75", torch.float16, 2, 5, 64, g)
    res = run(driver, [old], tmp_path / "sm75", {"EMU_CC_MAJOR": 7})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (old.status or "").startswith("98 "), old.status
    bad = w8a8_case("2:4 K % 4", torch.float16, 2, 5, 8, g, sparse=True)
    bad.scalars["K"] = 6  # the launcher is told K = 6 (not a multiple of 4)
    res = run(driver, [bad], tmp_path / "k")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (bad.status or "").startswith("1 "), bad.status


# ------------------------------------------------------------------------------------------ W8A8 linear (float x)
# w8a8_linear: the launcher with `quantize`: float x quantized per token inside the W8A8 kernel (float16 /
# bfloat16 while an M tile's rows are at most 32 KB of x) or by the quantization kernel first (longer rows,
# float32 x). The expected output is the reference int8_linear's, byte for byte (NaN where it is NaN).
FUSED_BYTES = 32 * 1024


def fused(dtype, M, K):
    return dtype != torch.float32 and min(M, 16) * K * 2 <= FUSED_BYTES


def special_rows(x, kinds):
    """Writes the named rows: "nan" / "inf" (one such value among normal ones), "zero", "ties" (max |x| = 127,
    so the scale is 1 and halves are rounding ties), "tiny" (values near float32's subnormals)."""
    K = x.shape[1]
    for r, kind in kinds.items():
        if K == 0:
            break
        if kind == "nan":
            x[r, K // 2] = float("nan")
        elif kind == "inf":
            x[r, 0] = float("-inf")
        elif kind == "zero":
            x[r] = 0
        elif kind == "ties":
            v = (torch.arange(K) % 17 - 8).float() + 0.5
            v[0] = 127.0
            x[r] = v.to(x.dtype)
        elif kind == "tiny":
            x[r] = (x[r].float() * 1e-36).to(x.dtype)


def w8a8_linear_case(name, dtype, M, N, K, g, sparse=False, bias=True, xpad=0, xoff=0, rows=None, ws=None):
    """float x (M, K) quantized per token inside the launch against an int8 weight (dense, or 2:4 when
    `sparse`). ws: whether the launch asks for a workspace (None: not checked)."""
    x, xbuf, off, ld = activations(M, K, dtype, g, xpad, xoff)
    if rows:
        special_rows(x, rows)
        xbuf = x.contiguous().reshape(-1) if xpad == 0 else torch.cat(
            [torch.cat([x[i], xbuf.new_zeros(xpad)]) if i < M - 1 else x[i] for i in range(M)])
    w_scale = torch.rand(N, generator=g) * 0.02 + 1e-3
    b = randn((N,), dtype, g) if bias else None
    bufs = {"x": (xbuf, off), "w_scale": (w_scale, 0)}
    if sparse:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int16).to(torch.float32)
        from sparsekit.ops.packing import reference_pack_sparse24
        values, meta = reference_pack_sparse24(w, mask_24(N, K, g))
        values = values.to(torch.int8)
        bufs["w"], bufs["meta"] = (values, 0), (meta, 0)
        want = reference.sparse24_int8_linear(x, values, meta, w_scale, b)
    else:
        w_q = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int16).to(torch.int8)
        bufs["w"] = (w_q, 0)
        want = reference.int8_linear(x, w_q, w_scale, b)
    if b is not None:
        bufs["bias"] = (b, 0)
    return H.Case("w8a8_linear", dict(dtype=H.DTYPE_NAMES[dtype], M=M, N=N, K=K, ldx=ld), bufs,
                  {"want": want, "ws": ws}, name=name)


def check_w8a8_linear_cases(res, cases):
    expect_ok(res, cases)
    errors = []
    for c in cases:
        want = c.check["want"]
        got = c.out("y", want.dtype, tuple(want.shape))
        nan_w, nan_g = torch.isnan(want), torch.isnan(got)
        view = torch.int16 if want.element_size() == 2 else torch.int32
        same = torch.equal(nan_w, nan_g) and torch.equal(got.masked_fill(nan_g, 0).view(view),
                                                         want.masked_fill(nan_w, 0).view(view))
        if not same:
            bad = ((got != want) & ~(nan_w & nan_g)).nonzero()
            i = tuple(bad[0].tolist()) if len(bad) else None
            errors.append(f"{c.name}: {len(bad)} of {want.numel()} outputs differ from the reference's bytes" +
                          (f", e.g. y{list(i)} = {got[i].item()!r}, expected {want[i].item()!r}" if i else ""))
        ws = int((c.dir / "workspace.txt").read_text()) if (c.dir / "workspace.txt").exists() else 0
        if c.check["ws"] is not None and (ws > 0) != c.check["ws"]:
            errors.append(f"{c.name}: workspace expected {c.check['ws']}, got {ws} bytes")
    assert not errors, f"{len(errors)} of {len(cases)} cases wrong:\n" + "\n".join(errors[:10])


def w8a8_linear_cases(dtype, seed=53):
    g = gen(seed)
    cases = []
    for i, M in enumerate(MS + (4, 5)):
        cases.append(w8a8_linear_case(f"dense M={M}", dtype, M, 40, 256, g, bias=i % 2 == 0, ws=not fused(dtype, M, 256)))
        cases.append(w8a8_linear_case(f"2:4 M={M}", dtype, M, 37, 256, g, sparse=True, bias=i % 2 == 1))
    for K in (1, 100, 1000):  # K % 8 != 0: the element path
        cases.append(w8a8_linear_case(f"dense K={K}", dtype, 3, 17, K, g))
    cases.append(w8a8_linear_case("2:4 K=52", dtype, 5, 19, 52, g, sparse=True))
    cases.append(w8a8_linear_case("x strided", dtype, 9, 11, 256, g, xpad=3))
    cases.append(w8a8_linear_case("x misaligned", dtype, 4, 11, 256, g, sparse=True, xoff=1))
    cases.append(w8a8_linear_case("special rows", dtype, 5, 23, 256, g,
                                  rows={0: "nan", 1: "zero", 2: "ties", 3: "inf", 4: "tiny"}))
    cases.append(w8a8_linear_case("special rows, element path", dtype, 4, 9, 100, g, sparse=True,
                                  rows={0: "ties", 1: "nan", 3: "zero"}))
    # rows too long to fuse: the quantization kernel first (a workspace holds the quantized rows)
    cases.append(w8a8_linear_case("dense M=16 K=1152", dtype, 16, 21, 1152, g, ws=True, rows={5: "nan", 6: "ties"}))
    cases.append(w8a8_linear_case("2:4 M=16 K=1028", dtype, 16, 13, 1028, g, sparse=True, ws=True))
    cases.append(w8a8_linear_case("K=0", dtype, 3, 5, 0, g, ws=False))
    return cases


# On SPLIT_24 the x tile of M = 1 still fits whole up to ~17000 columns (512 threads): M = 1 splits on less.
SPLIT_Q1 = {"EMU_SMEM_PER_SM": 12000, "EMU_SMEM_OPTIN": 12000}


def w8a8_linear_split_cases(dtype, seed=54):
    """(cases for SPLIT_24, cases for SPLIT_Q1): K split, fused (the scales go through the workspace) and not."""
    g = gen(seed)
    return ([w8a8_linear_case("split M=4 K=4096", dtype, 4, 19, 4096, g, ws=True, rows={1: "ties", 2: "nan"}),
             w8a8_linear_case("split M=33 K=600", dtype, 33, 7, 600, g, sparse=True, ws=True, rows={20: "zero"}),
             w8a8_linear_case("split unfused M=16 K=4096", dtype, 16, 11, 4096, g, ws=True)],
            [w8a8_linear_case("split 2:4 M=1 K=9000", dtype, 1, 21, 9000, g, sparse=True, ws=True),
             w8a8_linear_case("split M=1 K=8998 element path", dtype, 1, 9, 8998, g, ws=True)])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_w8a8_linear(driver, tmp_path, dtype):
    """float x quantized per token inside the W8A8 launch (fused into the tensor-core kernel, or the quantization
    kernel first), dense and 2:4: byte for byte the reference int8_linear / sparse24_int8_linear, rounding ties,
    NaN / Inf / zero rows, strided and misaligned x, several row groups per block and split K."""
    cases = w8a8_linear_cases(dtype)
    check_w8a8_linear_cases(run(driver, cases, tmp_path / "whole"), cases)
    groups = [w8a8_linear_case("groups dense M=1", dtype, 1, 300, 640, gen(55)),
              w8a8_linear_case("groups 2:4 M=16", dtype, 16, 150, 512, gen(56), sparse=True)]
    check_w8a8_linear_cases(run(driver, groups, tmp_path / "groups", {"EMU_SMS": 1}), groups)
    split, split1 = w8a8_linear_split_cases(dtype)
    check_w8a8_linear_cases(run(driver, split, tmp_path / "split", SPLIT_24), split)
    check_w8a8_linear_cases(run(driver, split1, tmp_path / "split1", SPLIT_Q1), split1)


def test_w8a8_linear_refusals(driver, tmp_path):
    """Below sm_80 both paths refuse (98) before writing anything; 2:4 with K % 4 != 0 is refused (1)."""
    g = gen(57)
    old = [w8a8_linear_case("sm_75 fused", torch.float16, 2, 5, 64, g),
           w8a8_linear_case("sm_75 unfused", torch.float32, 2, 5, 64, g)]
    res = run(driver, old, tmp_path / "sm75", {"EMU_CC_MAJOR": 7})
    assert res.returncode == 0, res.stderr[-3000:]
    for c in old:
        assert (c.status or "").startswith("98 "), (c.name, c.status)
        assert bool(torch.isnan(c.out("y", c.check["want"].dtype, (2, 5))).all())
    bad = w8a8_linear_case("2:4 K % 4", torch.float32, 2, 5, 8, g, sparse=True)
    bad.scalars["K"] = 6
    res = run(driver, [bad], tmp_path / "k")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (bad.status or "").startswith("1 "), bad.status


def quantize_case(name, dtype, M, K, g, xpad=0, xoff=0, rows=None):
    x, xbuf, off, ld = activations(M, K, dtype, g, xpad, xoff)
    if rows:
        special_rows(x, rows)
        xbuf = x.contiguous().reshape(-1) if xpad == 0 else torch.cat(
            [torch.cat([x[i], xbuf.new_zeros(xpad)]) if i < M - 1 else x[i] for i in range(M)])
    q, s, _ = reference.quantize_per_token(x, True)
    return H.Case("quantize_per_token", dict(dtype=H.DTYPE_NAMES[dtype], M=M, K=K, ldx=ld), {"x": (xbuf, off)},
                  {"q": q, "scale": s}, name=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_quantize_per_token_kernel(driver, tmp_path, dtype):
    """The per-token quantization as a launch of its own (quantize_per_token_rows: the CUDA router's and the
    2:4+int8 format's before cuSPARSELt): q and the scales byte for byte the reference's, the vector and element
    paths, strided (vector and element) and misaligned x, NaN / Inf / zero / tie rows, K = 0 and M = 0."""
    g = gen(58)
    cases = [quantize_case("M=1 K=4096", dtype, 1, 4096, g),
             quantize_case("M=33 K=256", dtype, 33, 256, g, rows={0: "nan", 1: "zero", 2: "ties", 3: "inf", 4: "tiny"}),
             quantize_case("K=100 element path", dtype, 5, 100, g, rows={1: "ties", 3: "nan"}),
             quantize_case("x strided, vectors", dtype, 6, 256, g, xpad=8),
             quantize_case("x strided, elements", dtype, 6, 264, g, xpad=3),
             quantize_case("x misaligned", dtype, 4, 256, g, xoff=1),
             quantize_case("K=1", dtype, 3, 1, g),
             quantize_case("K=0", dtype, 2, 0, g),
             quantize_case("M=0", dtype, 0, 64, g)]
    res = run(driver, cases, tmp_path / "q")
    expect_ok(res, cases)
    for c in cases:
        want_q, want_s = c.check["q"], c.check["scale"]
        got_q = c.out("q", torch.int8, tuple(want_q.shape))
        got_s = c.out("scale", torch.float32, tuple(want_s.shape))
        assert torch.equal(got_q, want_q), (c.name, (got_q != want_q).nonzero()[:3].tolist())
        assert torch.equal(got_s.isnan(), want_s.isnan()), c.name
        assert torch.equal(got_s.nan_to_num(0).view(torch.int32), want_s.nan_to_num(0).view(torch.int32)), c.name


# ------------------------------------------------------------------------------------------ BSR, CSR
def bsr_case(name, dtype, M, N, K, R, C, g, density=0.4, bias=True, empty_block_rows=(), voff=0, xpad=0, xoff=0,
             shuffled_rows=(), split=None):
    """shuffled_rows: block rows whose stored blocks are put in a random order (columns not ascending)."""
    w = randn((N, K), dtype, g)
    bm = torch.rand((N // R, K // C), generator=g) < density
    for e in empty_block_rows:
        bm[e] = False
    mask = bm.repeat_interleave(R, 0).repeat_interleave(C, 1) & (torch.rand((N, K), generator=g) < 0.8)
    sw = BSRWeight.from_dense(w, mask, blocksize=(R, C))
    col, values = sw.col_indices.clone(), sw.values.clone()
    for br in shuffled_rows:
        b0, b1 = int(sw.crow_indices[br]), int(sw.crow_indices[br + 1])
        perm = b0 + torch.randperm(b1 - b0, generator=g)
        col[b0:b1], values[b0:b1] = col[perm], values[perm]
    x, xbuf, xb, ld = activations(M, K, dtype, g, xpad, xoff)
    b = randn((N,), dtype, g) if bias else None
    return mm_case("bsr_mm", name, x, xbuf, xb, ld, sw.to_dense(), b,
                   {"crow": (sw.crow_indices, 0), "col": (col, 0),
                    "values": (values, voff * values.element_size())}, {"R": R, "C": C}, split=split)


def bsr_cases(dtype, seed=4):
    g = gen(seed)
    cases = []
    blocks = [(1, 1), (2, 3), (4, 8), (16, 16), (3, 5), (1, 64), (8, 1)]
    for i, M in enumerate(MS):
        R, C = blocks[i % len(blocks)]
        cases.append(bsr_case(f"M={M} {R}x{C}", dtype, M, 8 * R, 6 * C, R, C, g, bias=i % 2 == 0, empty_block_rows=(1,)))
    cases.append(bsr_case("0 % blocks", dtype, 3, 16, 32, 4, 4, g, density=0.0))
    cases.append(bsr_case("100 % blocks", dtype, 9, 12, 30, 2, 5, g, density=1.0))
    cases.append(bsr_case("values misaligned + x strided", dtype, 17, 12, 21, 3, 7, g, voff=1, xpad=2, xoff=1))
    cases.append(bsr_case("K=0", dtype, 2, 4, 0, 2, 1, g))
    return cases


def csr_case(name, dtype, M, N, K, g, density=0.3, bias=True, empty_rows=(), voff=0, xpad=0, xoff=0):
    w = randn((N, K), dtype, g)
    mask = torch.rand((N, K), generator=g) < density
    for e in empty_rows:
        mask[e] = False
    cw = CSRWeight.from_dense(w, mask)
    x, xbuf, xb, ld = activations(M, K, dtype, g, xpad, xoff)
    b = randn((N,), dtype, g) if bias else None
    return mm_case("csr_mm", name, x, xbuf, xb, ld, cw.to_dense(), b,
                   {"crow": (cw.crow_indices, 0), "col": (cw.col_indices, 0),
                    "values": (cw.values, voff * cw.values.element_size())}, {})


def csr_cases(dtype, seed=5):
    g = gen(seed)
    cases = [csr_case(f"M={M}", dtype, M, 13, 77, g, bias=i % 2 == 1, empty_rows=(2, 12)) for i, M in enumerate(MS)]
    cases.append(csr_case("0 %", dtype, 3, 9, 40, g, density=0.0))
    cases.append(csr_case("100 %", dtype, 9, 9, 70, g, density=1.0))
    cases.append(csr_case("values misaligned + x strided", dtype, 17, 6, 45, g, voff=1, xpad=4, xoff=1))
    return cases


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_bsr_mm(driver, tmp_path, dtype):
    cases = bsr_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path), cases)


# BSR with R % 16 == 0 and C % 16 == 0 in float16 / bfloat16: the tensor-core decode kernel (BsrRows) while x fits
# in shared memory; the simple kernel otherwise (and under SPARSEKIT_CUDA_DECODE=v1).
MMA_BLOCKS = [(16, 16), (64, 64), (32, 48), (16, 64), (48, 16)]


def bsr_mma_cases(dtype, seed=6):
    g = gen(seed)
    cases = []
    for i, M in enumerate(MS + (4, 5)):
        R, C = MMA_BLOCKS[i % len(MMA_BLOCKS)]
        cases.append(bsr_case(f"M={M} {R}x{C}", dtype, M, 3 * R, 5 * C, R, C, g, density=0.5, bias=i % 2 == 0,
                              empty_block_rows=(1,)))
    cases.append(bsr_case("all blocks 32x48", dtype, 3, 64, 240, 32, 48, g, density=1.0))
    cases.append(bsr_case("no block 16x16", dtype, 2, 32, 64, 16, 16, g, density=0.0))
    cases.append(bsr_case("values misaligned 16x32", dtype, 5, 48, 160, 16, 32, g, voff=1))
    cases.append(bsr_case("x strided + offset 64x64", dtype, 9, 128, 320, 64, 64, g, xpad=3, xoff=1))
    cases.append(bsr_case("K=0", dtype, 2, 32, 0, 16, 16, g))
    return cases


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: H.DTYPE_NAMES[d])
def test_bsr_mm_tensor_cores(driver, tmp_path, dtype):
    """BSR on the tensor cores: block shapes whose pieces of 16 columns mix blocks within a step, empty block rows,
    misaligned values (2-byte loads), strided x, every M tile; several row groups per block (one SM) with
    different block counts; x too wide for shared memory (the simple kernel) and the v1 switch give the same."""
    cases = bsr_mma_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path / "whole"), cases)
    g = gen(7)
    groups = [bsr_case("groups 16x64 M=1", dtype, 1, 320, 640, 16, 64, g, density=0.3),
              bsr_case("groups 32x32 M=16", dtype, 16, 256, 512, 32, 32, g, density=0.6, empty_block_rows=(2, 3)),
              bsr_case("groups 16x16 many steps", dtype, 1, 640, 2048, 16, 16, g, density=0.5)]
    check_mm_cases(run(driver, groups, tmp_path / "groups", {"EMU_SMS": 1}), groups)
    # not even one chunk of 64 columns fits at M = 16 on SPLIT_24: the simple kernel (no workspace)
    wide = [bsr_case("one chunk wider than shared memory", dtype, 16, 32, 1024, 16, 64, g, split=False)]
    check_mm_cases(run(driver, wide, tmp_path / "wide", SPLIT_24), wide)
    v1 = bsr_mma_cases(dtype, seed=8)[:4]
    check_mm_cases(run(driver, v1, tmp_path / "v1", {"SPARSEKIT_CUDA_DECODE": "v1"}), v1)


# On 60000 bytes per SM: M = 16 splits K into chunks of 256 columns (C = 64) or 192 (C = 48); M <= 4 from ~7000
# columns (whole K up to there, with 512 threads above ~3500).
SPLIT_BSR = {"EMU_SMEM_PER_SM": 60000, "EMU_SMEM_OPTIN": 60000}


def bsr_split_cases(dtype, seed=9):
    g = gen(seed)
    return [bsr_case("split 64x64 M=16", dtype, 16, 128, 1024, 64, 64, g, density=0.5, empty_block_rows=(1,), split=True),
            bsr_case("split 16x48 M=3", dtype, 3, 32, 7680, 16, 48, g, density=0.3, split=True),
            bsr_case("split 32x32 M=33", dtype, 33, 64, 1024, 32, 32, g, density=0.6, bias=False, split=True),
            bsr_case("split 16x16 M=8", dtype, 8, 48, 4096, 16, 16, g, density=0.2, empty_block_rows=(0, 2), split=True),
            bsr_case("split all blocks 16x64 M=16", dtype, 16, 32, 768, 16, 64, g, density=1.0, split=True),
            bsr_case("split columns not ascending 16x64 M=16", dtype, 16, 64, 1024, 16, 64, g, density=0.7,
                     shuffled_rows=(0, 2), split=True),
            bsr_case("split columns not ascending 16x48 M=2", dtype, 2, 48, 15360, 16, 48, g, density=0.2,
                     shuffled_rows=(1,), split=True),
            bsr_case("split values misaligned + x strided 32x64 M=16", dtype, 16, 64, 1024, 32, 64, g, voff=1, xpad=3,
                     split=True)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: H.DTYPE_NAMES[d])
def test_bsr_mm_tensor_cores_split_k(driver, tmp_path, dtype):
    """BSR on the tensor cores with K split into chunks of whole blocks (x's rows longer than shared memory holds):
    the chunk's run of blocks found by ballots over ascending columns, rows whose columns do not ascend walking all
    their blocks, chunks of lcm(64, C) columns for C = 48, empty block rows, M > 16 (tiles and the workspace), the
    2-byte path; several row groups per block (one SM)."""
    cases = bsr_split_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path / "split", SPLIT_BSR), cases)
    one = bsr_split_cases(dtype, seed=10)[:3]
    check_mm_cases(run(driver, one, tmp_path / "one_sm", {**SPLIT_BSR, "EMU_SMS": 1}), one)


@pytest.mark.parametrize("limit", [80_000, 120_000, 227 * 1024])
def test_bsr_router_mirrors_the_tensor_core_size_test(driver, tmp_path, limit, monkeypatch):
    """sparsekit.triton's _bsr_tile_fits (what the router and the BSR format decide on) says what bsr_mm's own
    test says (bsr_mm_uses_tensor_cores: mma_decode.cuh's chunking with K split into chunks of whole blocks), for
    M tiles, block widths around the widest that fits, and K whole or split, on a device with `limit` bytes of
    shared memory per block."""
    from sparsekit import triton as skt

    monkeypatch.setattr(skt, "_smem_blocks", {0: (limit, limit + 1024)})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    dev = torch.device("cuda", 0)
    cases, want = [], []
    for M in (1, 3, 8, 16, 40):
        fits = [C for C in range(16, 8192 + 1, 16) if skt._bsr_tile_fits(M, 4 * C, C, dev)]
        edge = fits[-1] if fits else 16
        for C in sorted({16, 48, 64, edge, edge + 16, edge + 48}):
            for K in (C, 4 * C, 37 * C):
                cases.append(H.Case("bsr_plan", dict(M=M, N=64, K=K, R=16, C=C, dtype="bf16"), {}, None,
                                    name=f"M={M} C={C} K={K}"))
                want.append(skt._bsr_tile_fits(M, K, C, dev))
    res = run(driver, cases, tmp_path, {"EMU_SMEM_OPTIN": limit, "EMU_SMEM_PER_SM": limit + 1024})
    expect_ok(res, cases)
    got = [bool(c.out("uses", torch.int32, (1,)).item()) for c in cases]
    wrong = [(c.name, w, g) for c, w, g in zip(cases, want, got) if w != g]
    assert not wrong, f"router and kernel disagree (case, router, kernel): {wrong[:8]}"
    assert any(want) and not all(want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: H.DTYPE_NAMES[d])
def test_csr_mm(driver, tmp_path, dtype):
    cases = csr_cases(dtype)
    check_mm_cases(run(driver, cases, tmp_path), cases)


# ------------------------------------------------------------------------------------------ packers
PACK_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn]


def special_weight(N, K, dtype, g):
    """Random weights with -0.0, +-inf, zeros and subnormals sprinkled in (no NaN: see README)."""
    w = torch.randn((N, K), generator=g, dtype=torch.float64)
    pick = torch.rand((N, K), generator=g)
    tiny = {torch.float16: 2.0 ** -20, torch.bfloat16: 1e-39, torch.float32: 1e-40, torch.float64: 1e-310,
            torch.float8_e4m3fn: 2.0 ** -8}[dtype]
    w = torch.where(pick < 0.05, torch.tensor(-0.0, dtype=torch.float64), w)
    w = torch.where((pick >= 0.05) & (pick < 0.1), torch.tensor(0.0, dtype=torch.float64), w)
    w = torch.where((pick >= 0.1) & (pick < 0.13), torch.tensor(tiny, dtype=torch.float64), w)
    if dtype != torch.float8_e4m3fn:  # e4m3fn has no infinity
        w = torch.where((pick >= 0.13) & (pick < 0.15), torch.tensor(float("inf"), dtype=torch.float64), w)
        w = torch.where((pick >= 0.15) & (pick < 0.17), torch.tensor(float("-inf"), dtype=torch.float64), w)
    return w.to(dtype)


def raw(t):
    return H.to_bytes(t)


def pack_case(op, name, w, mask, **scalars):
    N, K = w.shape
    return H.Case(op, dict(N=N, K=K, elem_size=w.element_size(), **scalars),
                  {"weight": (w, 0), "mask": (mask, 0)}, {"w": w, "mask": mask}, name=name)


def compare_bytes(c, expected):
    errs = []
    for name, t in expected.items():
        got = c.outputs.get(name)
        want = raw(t)
        if got != want:
            errs.append(f"{c.name}: {name} differs ({len(got or b'')} bytes vs {len(want)} expected)")
    return errs


@pytest.mark.parametrize("dtype", PACK_DTYPES, ids=str)
def test_pack_kernels(driver, tmp_path, dtype):
    g = gen(6)
    cases = []
    # 2:4 (from_dense cannot gather float8 on the CPU: compared for the other dtypes)
    if dtype != torch.float8_e4m3fn:
        for N, K, keep, name in [(5, 12, 2, "K=12"), (7, 64, 1, "keep 1"), (3, 36, 0, "all dropped"),
                                 (300, 8, 2, "N*MB > one grid-stride block"), (1, 4, 2, "1x4")]:
            w = special_weight(N, K, dtype, g)
            cases.append(pack_case("pack_sparse24", f"2:4 {name}", w, mask_24(N, K, g, keep)))
        w = special_weight(6, 16, dtype, g)
        m = mask_24(6, 16, g, 2)
        m[4, 9:12] = True  # row 4 group 2 keeps 3; row 5 group 1 keeps 4: the first bad group is 4 * 4 + 2
        m[5, 4:8] = True
        cases.append(pack_case("pack_sparse24", "2:4 not 2:4", w, m))
    for op in ("pack_bitmap", "pack_csr"):
        for N, K, d, name in [(5, 37, 0.5, "K=37"), (9, 100, 0.0, "0 %"), (4, 64, 1.0, "100 %"), (3, 1, 0.5, "K=1"),
                              (70, 33, 0.3, "many words")]:
            w = special_weight(N, K, dtype, g)
            m = torch.rand((N, K), generator=g) < d
            if N > 3:
                m[2] = False  # an empty row
            cases.append(pack_case(op, f"{op} {name}", w, m))
    for N, K, R, C, name in [(8, 12, 2, 3, "2x3"), (16, 16, 4, 4, "4x4"), (4, 40, 1, 8, "1x8"), (32, 32, 16, 16, "16x16"),
                             (9, 10, 3, 5, "3x5 sparse")]:
        w = special_weight(N, K, dtype, g)
        m = torch.rand((N, K), generator=g) < (0.05 if "sparse" in name else 0.3)
        m[:R] = False  # an empty block row
        cases.append(pack_case("pack_bsr", f"bsr {name}", w, m, R=R, C=C))
    res = run(driver, cases, tmp_path)
    expect_ok(res, cases)
    errors = []
    for c in cases:
        w, m = c.check["w"], c.check["mask"]
        N, K = w.shape
        if c.op == "pack_sparse24":
            kept = m.reshape(N, K // 4, 4).sum(-1)
            bad = int(torch.nonzero((kept > 2).reshape(-1))[0]) if bool((kept > 2).any()) else -1
            got_bad = int.from_bytes(c.outputs["bad"], "little", signed=True)
            if got_bad != bad:
                errors.append(f"{c.name}: first bad group {got_bad}, expected {bad}")
            if bad < 0:
                sw = Sparse24Weight.from_dense(w, m)
                errors += compare_bytes(c, {"values": sw.values, "meta": sw.meta})
        elif c.op == "pack_bitmap":
            bw = BitmapWeight.from_dense(w, m)
            errors += compare_bytes(c, {"bitmap": bw.bitmap, "word_offsets": bw.word_offsets, "values": bw.values})
        elif c.op == "pack_csr":
            cw = CSRWeight.from_dense(w, m)
            errors += compare_bytes(c, {"crow": cw.crow_indices, "col": cw.col_indices, "values": cw.values})
        else:
            bw = BSRWeight.from_dense(w, m, blocksize=(c.scalars["R"], c.scalars["C"]))
            errors += compare_bytes(c, {"crow": bw.crow_indices, "col": bw.col_indices, "values": bw.values})
    assert not errors, "\n".join(errors[:10])


# ------------------------------------------------------------------------------------------ W8A8 epilogue
def epilogue_reference(y, row_scale, bias):
    r = y.double()
    if row_scale is not None:
        r = r * row_scale.double()[:, None]
    if bias is not None:
        r = r + bias.double()
    return r


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: H.DTYPE_NAMES[d])
def test_scale_epilogue(driver, tmp_path, dtype):
    g = gen(7)
    cases = []
    for M, N, yoff, boff, scale, bias, name in [
        (1, 64, 0, 0, True, True, "vec8"), (3, 64, 0, 0, True, False, "vec8 no bias"),
        (17, 24, 0, 0, False, True, "vec8 no scale"), (2, 8, 0, 0, False, False, "vec8 identity"),
        (5, 13, 0, 0, True, True, "scalar N=13"), (33, 16, 2, 0, True, True, "y misaligned"),
        (4, 32, 0, 2, True, True, "bias misaligned"), (1, 1, 0, 0, True, True, "1x1"),
    ]:
        y = (torch.randn((M, N), generator=g) * 30).to(dtype)
        rs = torch.rand((M,), generator=g) * 0.1 if scale else None
        b = randn((N,), dtype, g) if bias else None
        bufs = {"y": (y, yoff)}
        if rs is not None:
            bufs["row_scale"] = (rs, 0)
        if b is not None:
            bufs["bias"] = (b, boff)
        cases.append(H.Case("scale_epilogue", dict(dtype=H.DTYPE_NAMES[dtype], M=M, N=N), bufs,
                            {"y": y, "rs": rs, "b": b}, name=name))
    res = run(driver, cases, tmp_path)
    expect_ok(res, cases)
    errors = []
    for c in cases:
        k = c.check
        got = c.out("y", dtype, k["y"].shape).double()
        ref = epilogue_reference(k["y"], k["rs"], k["b"])
        # float32 math rounded once to the output dtype (nvcc may contract to an FMA: half an ulp more)
        tol = 2 * H.UNIT_ROUNDOFF[dtype] * ref.abs() + 1e-6 * (ref.abs() + 1)
        if not bool(((got - ref).abs() <= tol).all()):
            errors.append(f"{c.name}: max error {(got - ref).abs().max().item():.3g}")
    assert not errors, "\n".join(errors)


# ------------------------------------------------------------------------------------------ planted bugs
# name: (build group, mutation, which cases must catch it). Mutations of one group live in different
# kernels and are built together (one compile of each changed file); each test runs only the kernel
# its mutation is in, so the others cannot be what fails it.
PLANTED = {
    "sparse24 wrong metadata shift": (
        "a", ("sparse24_kernel.cu", "(mm >> (4 * g + 2 * (e & 1))) & 3u", "(mm >> (4 * g + (e & 1))) & 3u"),
        "sparse24"),
    "sparse24 missing __syncthreads": (
        "b", ("sparse24_kernel.cu", "round_up<int64_t>(kc, C::kSpan)));\n  __syncthreads();",
              "round_up<int64_t>(kc, C::kSpan)));"),
        "sparse24"),
    "sparse24 missing __syncwarp after the meta stage": (
        "c", ("sparse24_kernel.cu", "*reinterpret_cast<uint4*>(wmeta + lane * 16) = cur.meta;\n        __syncwarp();",
              "*reinterpret_cast<uint4*>(wmeta + lane * 16) = cur.meta;"),
        "sparse24"),
    "sparse24 a row's last tile not seen as its last (the next row's first never loaded)": (
        "d", ("sparse24_kernel.cu", "const bool row_ends = t0 + C::kTileVecs >= cv1;",
              "const bool row_ends = t0 + C::kTileVecs > cv1;"),
        "sparse24"),
    "sparse24 the next tile prefetched from the row after, not the warp's next row": (
        "e", ("sparse24_kernel.cu", "const int64_t n2 = row_ends ? n + n_stride : n;",
              "const int64_t n2 = row_ends ? n + 1 : n;"),
        "sparse24"),
    "bitmap missing __syncwarp after the list": (
        "a", ("bitmap_kernel.cu", "Entry::word_base(lane));\n      __syncwarp();", "Entry::word_base(lane));"),
        "bitmap_v1"),
    "bitmap off-by-one prefetch bound": (
        "b", ("bitmap_kernel.cu", "next_word = t0 + 32 + lane < w1 ?", "next_word = t0 + 32 + lane <= w1 ?"),
        "bitmap_v1"),
    "bitmap v2 row start offset from the wrong lane": (
        "d", ("bitmap_kernel.cu", "__shfl_sync(kFullMask, row_off, s);", "__shfl_sync(kFullMask, row_off, 0);"),
        "bitmap_v2"),
    # (not the __syncwarp before the list is written: the shuffles of the run's start and length there
    # already make the lanes wait for each other, which the emulator cannot tell from a memory barrier)
    "bitmap v2 missing __syncwarp after the list": (
        "e", ("bitmap_kernel.cu", "          }\n          __syncwarp();\n#pragma unroll", "          }\n#pragma unroll"),
        "bitmap_v2"),
    "bitmap v2 overflow chunks skipped": (
        "f", ("bitmap_kernel.cu", "for (int q = lane + 32 * P; q < nq; q += 32)\n            consume_chunk",
              "for (int q = lane + 32 * P; q < 0; q += 32)\n            consume_chunk"),
        "bitmap_v2"),
    # the branch-free consumer: entries outside a tile's run take -0.0 and the block's zero column
    "bitmap zero column not zeroed": (
        "h", ("bitmap_kernel.cu", "  zero_column(zero);\n  uint16_t* list", "  uint16_t* list"),
        "bitmap_v1"),
    "bitmap entries outside the run neither masked nor sent to the zero column": (
        "i", ("bitmap_kernel.cu", "Tile::load_at(in ? tile + (e << kEntryShift) : zero, xv);\n"
                                  "      const float v = in ? vals[r] : -0.0f;",
              "Tile::load_at(tile + (e << kEntryShift), xv);\n      const float v = vals[r];"),
        "bitmap_v2"),
    "bitmap run one entry too long (the compare of the consumer without a branch)": (
        "k", ("bitmap_kernel.cu", "static_cast<unsigned>(j0 + r) < static_cast<unsigned>(total);",
              "static_cast<unsigned>(j0 + r) <= static_cast<unsigned>(total);"),
        "bitmap_v1"),
    "bitmap v2 next batch's words one tile late": (
        "g", ("bitmap_kernel.cu", "load_batch_words<D, W>(p, c, tiles,",
              "advance(c, tiles, n_stride);\n    load_batch_words<D, W>(p, c, tiles,"),
        "bitmap_v2"),
    # the wide shape (2048-column tiles, two words per lane; density <= 10.6 % in 16 bits, 5.3 % in fp32)
    "bitmap v2 wide: the second word's place ignores the first half's run": (
        "l", ("bitmap_kernel.cu", "static_cast<uint32_t>(total0 + (excl >> 16))", "static_cast<uint32_t>(excl >> 16)"),
        "bitmap_v2"),
    "bitmap v2 wide: the second word's columns taken for the first's": (
        "m", ("bitmap_kernel.cu", "wp.y, Entry::word_base(lane + 32));", "wp.y, Entry::word_base(lane));"),
        "bitmap_v2"),
    "bitmap v2 wide: the tile's run counts its first half only": (
        "n", ("bitmap_kernel.cu", "total = total0 + (tot >> 16);", "total = total0;"),
        "bitmap_v2"),
    # the walk (variant 2 at M <= 4 in 16-bit types: each lane multiplies its words' kept values bit by bit)
    "bitmap walk missing __syncwarp after the run is staged": (
        "w1", ("bitmap_kernel.cu", "aligned + static_cast<int64_t>(q) * kV);\n          __syncwarp();",
               "aligned + static_cast<int64_t>(q) * kV);"),
        "bitmap_walk"),
    "bitmap walk a word's values one place off": (
        "w2", ("bitmap_kernel.cu", "const uint16_t* v = vals + __popc(word);", "const uint16_t* v = vals + __popc(word) - 1;"),
        "bitmap_walk"),
    "bitmap walk the second word's x taken from the first's": (
        "w3", ("bitmap_kernel.cu", "WTile::word(xs, g + 32)", "WTile::word(xs, g)"), "bitmap_walk"),
    "bitmap walk x staged transposed on the 16-byte path": (
        "w4", ("bitmap_kernel.cu", "dst[(8 * i + j) * kStride]", "dst[(8 * j + i) * kStride]"), "bitmap_walk"),
    "bitmap walk overflow chunks not staged": (
        "w5", ("bitmap_kernel.cu", "q < nq; q += 32)\n            run[q]", "q < 0; q += 32)\n            run[q]"),
        "bitmap_walk"),
    "bitmap walk x tile blocks of 32 words, not 64": (
        "w6", ("bitmap_kernel.cu", "(g % kBlockWords) * kColBytes", "(g % 32) * kColBytes"), "bitmap_walk"),
    "bitmap walk M = 4: x's rows read in the wrong order": (
        "w8", ("bitmap_kernel.cu", "const uint32_t w[2] = {q.x, q.y};", "const uint32_t w[2] = {q.y, q.x};"),
        "bitmap_walk"),
    "bitmap walk x's second row staged from the first": (
        "w7", ("bitmap_kernel.cu", "reinterpret_cast<const Bits<T>*>(x) + m * ldx + k0;",
               "reinterpret_cast<const Bits<T>*>(x) + k0;"), "bitmap_walk"),
    "csr off-by-one row end": (
        "a", ("csr_spmm_kernel.cu", "j < end; j += 32", "j <= end; j += 32"), "csr"),
    "bsr a lane leaves before the warp reduction": (
        "a", ("bsr_kernel.cu", "if (n >= p.N) return;  // the whole warp",
              "if (n >= p.N || (lane == 7 && n == 1)) return;"), "bsr"),
    "bitmap vector loads without the alignment check": (
        "c", ("bitmap_kernel.cu", "p.vec = reinterpret_cast<uintptr_t>(a.values) % 16 == 0;", "p.vec = true;"),
        "bitmap_misaligned"),
    "csr __syncthreads in divergent code": (
        "b", ("csr_spmm_kernel.cu", "  if (lane < mt) {\n    float out = 0.f;",
              "  if (lane < mt) {\n    __syncthreads();\n    float out = 0.f;"), "csr"),
    "bsr one lane at __syncthreads, the others at a shuffle (deadlock)": (
        "c", ("bsr_kernel.cu", "  const float s = warp_reduce_scatter<kTileM>(acc, lane);",
              "  if (lane == 0) __syncthreads();\n  const float s = warp_reduce_scatter<kTileM>(acc, lane);"), "bsr"),
    "pack bitmap words off-by-one": (
        "a", ("pack_kernel.cu", "for (int b = 0; b < valid; ++b)", "for (int b = 0; b <= valid; ++b)"), "pack"),
    "int8_wo x columns of the mma's two k halves swapped": (
        "a", ("mma_decode.cuh", "b[0] = xw[nt][2 * j]; b[1] = xw[nt][2 * j + 1];",
              "b[0] = xw[nt][2 * j + 1]; b[1] = xw[nt][2 * j];"), "int8_wo"),
    "int8_wo missing __syncthreads before the reduction": (
        "b", ("mma_decode.cuh", "    __syncthreads();\n    const Acc* all", "    const Acc* all"), "int8_wo"),
    "int8_wo one partial-sum buffer": (
        "c", ("mma_decode.cuh", "grp += gridDim.x, buf ^= 1)", "grp += gridDim.x, buf ^= 0)"), "int8_wo"),
    "int8_wo next group's loads from this group": (
        "d", ("mma_decode.cuh", "const int64_t r_next = last ? r0 + static_cast<int64_t>(gridDim.x) * kGroupRows : r0;",
              "const int64_t r_next = r0;"), "int8_wo"),
    "int8_wo a group's next batch refilled with this batch's steps": (
        # (group t: built with a BSR mutation of the same file, which the int8 kernel does not run; one build less)
        "t", ("mma_decode.cuh", "const int s_next = last ? s_begin : s0 + W::kBatch;",
              "const int s_next = last ? s_begin : s0;"), "int8_wo"),
    "wide tile: n-tiles 2 and 3 read the x rows of n-tiles 0 and 1": (
        "y1", ("mma_decode.cuh", "reinterpret_cast<const uint2*>(xrow + 8 * nt * ld)[j];",
               "reinterpret_cast<const uint2*>(xrow + 8 * (nt & 1) * ld)[j];"), "int8_wo_wide"),
    "wide tile: the mma's two k halves of x swapped": (
        "y2", ("mma_decode.cuh", "b[0] = v.x; b[1] = v.y;", "b[0] = v.y; b[1] = v.x;"),
        "int8_wo_wide"),
    "wide tile: mmas 2 and 3 take the x of mmas 0 and 1": (
        "y3", ("mma_decode.cuh", "reinterpret_cast<const uint2*>(xrow + 8 * nt * ld)[j];",
               "reinterpret_cast<const uint2*>(xrow + 8 * nt * ld)[j & 1];"), "int8_wo_wide"),
    "wide tile: the last 17-31 rows run as a tile of 16": (
        "y4", ("decode_common.cuh", "      if (tile_m_for(rest, full_rows) == 32) return",
               "      if (false && tile_m_for(rest, full_rows) == 32) return"), "int8_wo_wide"),
    "wide tile: n-tiles 2 and 3 write their sums to the rows of 0 and 1": (
        "y5", ("mma_decode.cuh", "const int m = 8 * nt + 2 * t + e;", "const int m = 8 * (nt & 1) + 2 * t + e;"),
        "int8_wo_wide"),
    "wide tile kept where no chunk of it fits the shared memory": (  # (built with y4: neither runs the other's code)
        "y4", ("mma_decode.cuh", "  if (p->tile_rows > 16 && static_cast<int64_t>(p->ch.smem)",
               "  if (false && static_cast<int64_t>(p->ch.smem)"), "int8_wo_wide_small"),
    "int8_wo vector loads without the alignment check": (
        "e", ("int8_wo_kernel.cu", "p.vec = a.K % 16 == 0 && reinterpret_cast<uintptr_t>(a.w_q) % 16 == 0;",
              "p.vec = a.K % 16 == 0;"), "int8_wo_misaligned"),
    "s24 mma selector: the two values of a group swapped": (
        "h", ("mma_decode.cuh", "p == (nibble >> 2) ? 0x32u : p == (nibble & 3u) ? 0x10u : 0x44u",
              "p == (nibble >> 2) ? 0x10u : p == (nibble & 3u) ? 0x32u : 0x44u"), "s24_mma"),
    "s24 mma group-by-group loads: nibbles of neighbouring groups swapped": (
        "i", ("mma_decode.cuh", "& 15u)\n                   << (4 * q);", "& 15u)\n                   << (4 * (q ^ 1));"),
        "s24_mma"),
    "s24 mma 2-byte metadata loads without the alignment check": (
        "j", ("sparse24_kernel.cu", " &&\n              reinterpret_cast<uintptr_t>(a.meta) % 2 == 0;", ";"),
        "s24_mma_misaligned"),
    "w8a8 int8 mma k halves swapped": (
        "k", ("mma_decode.cuh", "      lo = word_of(r.v[u][h], 2 * j);\n      hi = word_of(r.v[u][h], 2 * j + 1);",
              "      lo = word_of(r.v[u][h], 2 * j + 1);\n      hi = word_of(r.v[u][h], 2 * j);"), "w8a8"),
    "w8a8 2:4 selectors of the high group read the low group's bytes": (
        "l", ("mma_decode.cuh", "lut[2 * i + 1] = selector(static_cast<uint32_t>(i), 2);",
              "lut[2 * i + 1] = selector(static_cast<uint32_t>(i), 0);"), "w8a8"),
    "w8a8 split-K partials written as float": (
        "m", ("mma_decode.cuh", "reinterpret_cast<int*>(o.ws)[(static_cast<int64_t>(split)",
              "o.ws[(static_cast<int64_t>(split)"), "w8a8_split"),
    "w8a8_linear scale by a reciprocal instead of IEEE division": (
        "n", ("mma_decode.cuh", "amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f", "amax > 0.f ? amax * (1.f / 127.f) : 1.f"),
        "w8a8_linear"),
    "w8a8_linear rounds halves away from zero": (
        "o", ("mma_decode.cuh", "fmaxf(rintf(__fdiv_rn(v, scale))", "fmaxf(roundf(__fdiv_rn(v, scale))"), "w8a8_linear"),
    "w8a8_linear a NaN does not flag its row": (
        "p", ("mma_decode.cuh", "return a < q_inf() ? a : q_inf();", "return a;"), "w8a8_linear"),
    "w8a8_linear max |x| of the K chunk only": (
        "q", ("mma_decode.cuh", "q_row_part(x + m * p.ldx, p.K, vec,", "q_row_part(x + m * p.ldx + k0, kc, vec,"),
        "w8a8_linear_split"),
    "w8a8_linear scales of a split K not left for the finish": (
        "r", ("mma_decode.cuh", "split_x_scales(p.out, splits)[m0 + threadIdx.x - p.out.ws_m0] = s;", "(void)s;"),
        "w8a8_linear_split"),
    "w8a8_linear quantization kernel keeps the last row's max": (
        "s", ("w8a8_kernel.cu", "    if (threadIdx.x == 0) amax = 0u;\n", ""), "w8a8_linear"),
    "bsr mma: a piece's columns within its block dropped": (
        "t", ("mma_decode.cuh", "r.xc[u] = static_cast<int>(xc) + c16;", "r.xc[u] = static_cast<int>(xc);"),
        "bsr_mma"),
    "bsr mma: the next group's loads over this group's steps": (
        "u", ("mma_decode.cuh", "if constexpr (W::kVarSteps) warp_steps((grp + gridDim.x) * kGroupRows, nb, ne, next);",
              ""),
        "bsr_mma"),
    "bitmap mma: the lane's first value placed without its word's lower half": (
        "s", ("mma_decode.cuh", "const int before = (t & 1) ? __popc(word & 0xffffu) : 0;", "const int before = 0;"),
        "bitmap_mma"),
    "bitmap mma: the run's last vector not loaded": (
        "w", ("mma_decode.cuh", "r.v[u][h][i] = q < nvec ?", "r.v[u][h][i] = q + 1 < nvec ?"), "bitmap_mma"),
    "bitmap mma: an odd rank not shifted to its value": (
        "x", ("mma_decode.cuh", "const uint32_t v01 = (d & 1) ? __byte_perm(x0, x1, 0x5432u) : x0;",
              "const uint32_t v01 = x0;"), "bitmap_mma"),
    "bitmap mma: the run index carried into the next row group": (
        "y", ("mma_decode.cuh", "const bool carried = s0 == r.next_s;", "const bool carried = r.next_s >= 0;"),
        "bitmap_mma"),
    "bitmap mma: the carried run index without the step's second word": (
        "z", ("mma_decode.cuh", "off[h] += len;  // the next step's run", "off[h] += n0;"), "bitmap_mma"),
    "bsr mma split: the chunk's first block counted as before it": (
        "e", ("mma_decode.cuh", "in && c < c_lo", "in && c <= c_lo"), "bsr_mma_split"),
    "bsr mma split: columns taken as ascending in every row": (
        "g", ("mma_decode.cuh", "ascending = ascending && !__any_sync(0xffffffffu, in && c < prev);",
              "ascending = ascending && !__any_sync(0xffffffffu, in && c < prev && c < 0);"), "bsr_mma_split"),
    "bsr mma split: blocks outside the chunk not skipped": (
        "j", ("mma_decode.cuh", "if (xc >= 0 && xc < kc) {", "if (xc >= -p.K) {"), "bsr_mma_split"),
    "bsr mma: the two column pairs of an mma swapped": (
        "v", ("mma_decode.cuh", "    lo = word_of(q, 2 * (j & 1));\n    hi = word_of(q, 2 * (j & 1) + 1);",
              "    lo = word_of(q, 2 * (j & 1) + 1);\n    hi = word_of(q, 2 * (j & 1));"), "bsr_mma"),
    "bitmap columns: the next row's run not loaded ahead": (
        "o", ("bitmap_kernel.cu", "      if (row_ends && n2 + n_stride < p.N) run_of(n2 + n_stride, s_next, e_next);\n",
              ""), "bitmap_columns"),
    "bitmap columns: a lane's place in the run one off": (
        "p", ("bitmap_kernel.cu", "const int j0 = g0 - s + lane * kV;", "const int j0 = g0 - s + lane * kV + 1;"),
        "bitmap_columns"),
    "bitmap columns: a row's next batch one chunk short": (
        "q", ("bitmap_kernel.cu", ": a + kBatch;", ": a + kBatch - kV;"), "bitmap_columns"),
    "bitmap columns: vector loads of misaligned values": (
        "s", ("bitmap_kernel.cu", "p.vec = reinterpret_cast<uintptr_t>(a.values) % 16u == 0;", "p.vec = true;"),
        "bitmap_columns_misaligned"),
    "bitmap columns: a column taken from the row's start, not the K chunk's": (
        "r", ("bitmap_kernel.cu", "& 0xffffu) - static_cast<int>(k0);", "& 0xffffu);"), "bitmap_columns_split"),
    "int8_wo x rows past M staged from memory": (
        "f", ("mma_decode.cuh", "(m < mrows && c < kc) ? xb[m * p.ldx + c]", "(c < kc) ? xb[m * p.ldx + c]"),
        "int8_wo"),
}


# the mutations of the first bitmap kernel run with it selected (the batched one is the default)
# and those of the batched one on one SM, so that every warp has several rows (batches that cross rows)
# (the tensor-core kernel's also on one SM: every block walks several row groups; the 2:4 FMA kernel's with it
# selected at every M, v1)
# (bitmap_v2's bugs are in the list and chunk consumer, which at M <= 4 the walk replaces unless told otherwise)
PLANTED_KNOBS = {"bitmap_v1": {"SPARSEKIT_CUDA_DECODE": "v1"},
                 "bitmap_v2": {"EMU_SMS": 1, "SPARSEKIT_CUDA_BITMAP_CONSUMER": "list"}, "bitmap_walk": {"EMU_SMS": 1},
                 "int8_wo": {"EMU_SMS": 1}, "int8_wo_wide": {"EMU_SMS": 1}, "int8_wo_wide_small": SPLIT_24,
                 "bitmap_columns": {"EMU_SMS": 1}, "bitmap_columns_split": {"EMU_SMS": 1, **SPLIT_24},
                 "sparse24": {"SPARSEKIT_CUDA_DECODE": "v1", "EMU_SMS": 1}, "s24_mma": {"EMU_SMS": 1, "SPARSEKIT_CUDA_DECODE": "v3"},
                 "w8a8_split": SPLIT_W8A8, "w8a8_linear_split": SPLIT_24, "bsr_mma": {"EMU_SMS": 1},
                 "bsr_mma_split": SPLIT_BSR, "bitmap_mma": {"SPARSEKIT_CUDA_DECODE": "v3", "EMU_SMS": 1}}


def planted_cases(kind):
    dt = torch.float16
    if kind == "sparse24":
        return [s24_case("vec", dt, 3, 17, 256, gen(10)), s24_case("general", dt, 2, 9, 100, gen(11)),
                s24_case("vec M=16", dt, 16, 9, 1152, gen(12)),
                # one SM (64 warps): warps walk two rows
                s24_case("vec rows of 2 tiles", dt, 1, 80, 8192, gen(69)),
                s24_case("vec rows of 1.5 tiles", dt, 2, 80, 6144, gen(70))]
    if kind in ("bitmap", "bitmap_v1"):
        return [bitmap_case("two tiles", dt, 2, 9, 2080, gen(13)), bitmap_case("dense", dt, 16, 5, 1100, gen(14), 0.9)]
    if kind == "bitmap_v2":
        g = gen(19)
        m = torch.rand((12, 2100), generator=g) < 0.08
        m[1, :] = True
        m[2, 1024:] = False
        return [bitmap_case("v2 sparse rows of one tile", dt, 3, 150, 900, gen(20), density=0.1),
                bitmap_case("v2 sparse rows of 9 tiles", dt, 1, 140, 9000, gen(22), density=0.05),
                bitmap_case("v2 wide-dense rows of 3", dt, 3, 100, 3000, gen(24), density=0.25),
                bitmap_case_mask("v2 sparse, dense and empty tiles", dt, 2, m, g),
                bitmap_case("v2 dense", dt, 16, 9, 2080, gen(21), density=0.5),
                bitmap_case("v2 dense rows of 5 tiles", dt, 4, 100, 4500, gen(23), density=0.5)]
    if kind == "bitmap_walk":  # M = 1, one SM: each warp walks several rows
        g = gen(71)
        m = torch.rand((40, 3000), generator=g) < 0.5
        m[1, :] = True    # a dense row: the overflow chunks
        m[2, :] = False
        return [bitmap_case("walk wide rows of 9 tiles", dt, 1, 140, 9000, gen(72), density=0.05),
                bitmap_case("walk wide-dense rows of 3", dt, 1, 100, 3000, gen(73), density=0.25),
                bitmap_case_mask("walk dense, full and empty rows", dt, 1, m, g),
                bitmap_case("walk x misaligned", dt, 1, 30, 2100, gen(74), density=0.3, xoff=3),
                bitmap_case("walk M=2", dt, 2, 60, 3000, gen(76), density=0.3),
                bitmap_case("walk M=4", dt, 4, 60, 3000, gen(77), density=0.3)]
    if kind == "bitmap_columns_misaligned":
        return with_columns([bitmap_case("columns values misaligned", dt, 3, 40, 700, gen(68), density=0.2, voff=1)])
    if kind in ("bitmap_columns", "bitmap_columns_split"):  # one SM: each warp walks several rows
        g = gen(65)
        m = torch.rand((40, 3000), generator=g) < 0.1
        m[1, :] = True
        m[2, :] = False
        return with_columns([bitmap_case("columns rows of one batch", dt, 3, 150, 900, gen(66), density=0.1),
                             bitmap_case("columns rows of 3 batches", dt, 16, 60, 9000, gen(67), density=0.3),
                             bitmap_case_mask("columns full and empty rows", dt, 2, m, g)])
    if kind == "int8_wo":
        # more row groups than the 8 blocks one SM holds
        return [int8_wo_case("int8_wo M=3", dt, 3, 200, 256, gen(30)), int8_wo_case("int8_wo M=16", dt, 16, 150, 1152, gen(31)),
                int8_wo_case("int8_wo M=5 bytewise", dt, 5, 180, 100, gen(32)),
                int8_wo_case("int8_wo M=1 several batches a warp", dt, 1, 48, 8192, gen(71))]
    if kind == "int8_wo_wide":  # 32-row tiles, one SM: blocks walk several row groups
        return [int8_wo_case("wide M=20", dt, 20, 200, 256, gen(78)), int8_wo_case("wide M=45", dt, 45, 90, 640, gen(79)),
                int8_wo_case("wide M=40 bytewise", dt, 40, 60, 100, gen(80))]
    if kind == "int8_wo_wide_small":
        return [int8_wo_case("wide on a small device M=40", dt, 40, 13, 1700, gen(81), split=True)]
    if kind == "w8a8":
        return [w8a8_case("w8a8 dense M=3", torch.bfloat16, 3, 40, 256, gen(38)),
                w8a8_case("w8a8 2:4 M=16", torch.float16, 16, 50, 640, gen(39), sparse=True),
                w8a8_case("w8a8 2:4 K=100 M=2", torch.float32, 2, 33, 100, gen(40), sparse=True)]
    if kind == "bsr_mma":  # one SM: blocks walk row groups of different block counts
        g = gen(62)
        return [bsr_case("bsr mma 16x64", dt, 3, 320, 640, 16, 64, g, density=0.4, empty_block_rows=(2,)),
                bsr_case("bsr mma 32x16 M=16", dt, 16, 256, 256, 32, 16, g, density=0.5),
                # 40 groups on 8 blocks, more steps than warps in numbers that differ between groups (16 +- 1.5):
                # the warps' ranges differ between a block's groups
                bsr_case("bsr mma many steps", dt, 1, 640, 2048, 16, 16, g, density=0.5)]
    if kind == "w8a8_linear":
        return [w8a8_linear_case("w8a8_linear fused", torch.bfloat16, 5, 40, 256, gen(58),
                                 rows={0: "ties", 1: "nan", 3: "zero"}),
                w8a8_linear_case("w8a8_linear 2:4 fused", torch.float16, 16, 50, 640, gen(59), sparse=True,
                                 rows={4: "ties"}),
                w8a8_linear_case("w8a8_linear unfused", torch.float16, 16, 21, 1152, gen(60), rows={2: "ties"})]
    if kind == "bitmap_mma":  # one SM: blocks walk several row groups
        g = gen(64)
        return [bitmap_case("bitmap mma M=3", dt, 3, 150, 640, g, density=0.5),
                bitmap_case("bitmap mma M=16 sparse", dt, 16, 140, 320, g, density=0.1),
                bitmap_case("bitmap mma M=2 dense rows", dt, 2, 60, 256, g, density=0.95),
                bitmap_case("bitmap mma M=5 long rows", dt, 5, 40, 5000, g, density=0.3)]
    if kind == "bsr_mma_split":  # K split (C = 64: chunks of 256 columns at M = 16), two rows not ascending
        g = gen(63)
        return [bsr_case("bsr mma split", dt, 16, 64, 1024, 16, 64, g, density=0.6, shuffled_rows=(1, 3), split=True),
                bsr_case("bsr mma split ascending", dt, 16, 64, 1024, 16, 64, g, density=0.6, split=True)]
    if kind == "w8a8_linear_split":
        return [w8a8_linear_case("w8a8_linear split", torch.bfloat16, 4, 19, 4096, gen(61), ws=True)]
    if kind == "w8a8_split":
        return [w8a8_case("w8a8 split", torch.bfloat16, 16, 19, 4096, gen(41), sparse=True, split=True)]
    if kind == "s24_mma":
        return [s24_case("s24 mma M=1", dt, 1, 200, 256, gen(34)), s24_case("s24 mma K=100 M=4", dt, 4, 180, 100, gen(35)),
                s24_case("s24 mma M=16", dt, 16, 150, 640, gen(36))]
    if kind == "s24_mma_misaligned":
        return [s24_case("s24 mma meta odd", dt, 3, 40, 256, gen(37), moff=1)]
    if kind == "int8_wo_misaligned":
        return [int8_wo_case("int8_wo misaligned", dt, 2, 9, 256, gen(33), woff=1)]
    if kind == "bitmap_misaligned":
        return [bitmap_case("misaligned", dt, 3, 9, 300, gen(18), voff=1)]
    if kind == "csr":
        return [csr_case("csr", dt, 3, 9, 40, gen(15))]
    if kind == "bsr":
        return [bsr_case("bsr", dt, 3, 16, 32, 4, 4, gen(16), density=1.0)]
    g = gen(17)
    w = special_weight(6, 40, dt, g)
    return [pack_case("pack_bitmap", "pack", w, torch.rand((6, 40), generator=g) < 0.5)]


def outcome(res, cases, kind):
    """None when the run passed every check, else why it failed."""
    if res.returncode != 0:
        tail = [ln for ln in res.stderr.splitlines() if "ERROR" in ln or "runtime error" in ln or "timed out" in ln]
        return f"driver exit {res.returncode}: {tail[0] if tail else res.stderr[-300:]}"
    try:
        if kind == "pack":
            c = cases[0]
            bw = BitmapWeight.from_dense(c.check["w"], c.check["mask"])
            errs = compare_bytes(c, {"bitmap": bw.bitmap, "word_offsets": bw.word_offsets, "values": bw.values})
            assert not errs, errs
        elif kind.startswith("w8a8_linear"):
            check_w8a8_linear_cases(res, cases)
        elif kind.startswith("w8a8"):
            check_w8a8_cases(res, cases)
        else:
            check_mm_cases(res, cases)
    except AssertionError as e:
        return f"wrong results: {str(e).splitlines()[0]}"
    return None


@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_bug_is_caught(mutants, tmp_path, name):
    group, _, kind = PLANTED[name]
    exe = mutant_driver(mutants, group)
    cases = planted_cases(kind)
    why = outcome(run(exe, cases, tmp_path, PLANTED_KNOBS.get(kind)), cases, kind)
    assert why is not None, f"the planted bug {name!r} went unnoticed"
    print(f"{name}: caught ({why})")


def test_planted_cases_pass_unmutated(driver, tmp_path):
    """The planted-bug cases pass on the real kernels: what fails them is the bug."""
    for kind in ("sparse24", "bitmap", "bitmap_v1", "bitmap_v2", "bitmap_columns", "bitmap_columns_split",
                 "bitmap_columns_misaligned", "bitmap_misaligned", "csr", "bsr", "pack", "int8_wo",
                 "int8_wo_misaligned", "int8_wo_wide", "int8_wo_wide_small", "s24_mma", "s24_mma_misaligned", "w8a8",
                 "w8a8_split", "w8a8_linear",
                 "w8a8_linear_split", "bsr_mma"):
        cases = planted_cases(kind)
        why = outcome(run(driver, cases, tmp_path / kind, PLANTED_KNOBS.get(kind)), cases, kind)
        assert why is None, f"{kind}: {why}"


# ------------------------------------------------------------------------------------------ the transform
def test_transform_rewrites_launches_and_fails_loudly(tmp_path):
    src = "void f() { k<T, 2><<<dim3(a, b), 256, smem, s>>>(p, q(1, 2)); other<<<1, 32>>>(); }"
    out, n = emu_build.rewrite_launches(src)
    assert n == 2
    assert "::cuda_emu::launch(k<T, 2>, ::cuda_emu::Cfg(dim3(a, b), 256, smem, s), p, q(1, 2))" in out
    assert "::cuda_emu::launch(other, ::cuda_emu::Cfg(1, 32))" in out
    sh, m = emu_build.rewrite_shared("extern __shared__ __align__(16) unsigned char smem[];")
    assert m == 1 and "unsigned char* smem = reinterpret_cast<unsigned char*>(::cuda_emu::dynamic_smem());" in sh
    with pytest.raises(emu_build.TransformError):
        emu_build.rewrite_launches("k<<<1, 2>>> ;")  # no argument list
    with pytest.raises(emu_build.TransformError):
        emu_build.transform(tmp_path, [("sparse24_kernel.cu", "text that is not there", "")])


# ------------------------------------------------------------------------------------------ launcher errors
def test_launchers_refuse_bad_arguments(driver, tmp_path):
    """Sizes the launchers refuse come back as cudaErrorInvalidValue (1), with no kernel run."""
    g = gen(19)
    x = randn((2, 6), torch.float16, g)
    w = randn((3, 6), torch.float16, g)
    bad = [
        H.Case("sparse24_mm", dict(dtype="f16", M=2, N=3, K=6, ldx=6),
               {"x": (x, 0), "values": (w[:, :3].contiguous(), 0), "meta": (torch.zeros(3, 1, dtype=torch.uint8), 0)},
               name="2:4 with K % 4 != 0"),
        H.Case("scale_epilogue", dict(dtype="f32", M=2, N=3), {"y": (torch.zeros(2, 3), 0)}, name="epilogue float32"),
        H.Case("bsr_mm", dict(dtype="f16", M=2, N=3, K=6, ldx=6, R=2, C=3),
               {"x": (x, 0), "crow": (torch.zeros(2, dtype=torch.int32), 0), "col": (torch.zeros(0, dtype=torch.int32), 0),
                "values": (torch.zeros(0, dtype=torch.float16), 0)}, name="BSR with N % R != 0"),
        H.Case("pack_sparse24", dict(N=3, K=6, elem_size=2),
               {"weight": (w, 0), "mask": (torch.ones(3, 6, dtype=torch.bool), 0)}, name="pack 2:4 K % 4 != 0"),
    ]
    res = run(driver, bad, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for c in bad:
        assert (c.status or "").startswith("1 "), f"{c.name}: status {c.status}"


# ------------------------------------------------------------------------------------------ the emulator's types
def test_emulated_half_bfloat16_conversions(driver, tmp_path):
    """__float2half_rn / __float2bfloat16_rn and back, as emulated, against torch (round to nearest even;
    NaN gives a NaN): random bit patterns, every boundary of the half range, all 65536 16-bit patterns."""
    g = gen(20)
    rnd = torch.randint(-2 ** 31, 2 ** 31 - 1, (100000,), generator=g, dtype=torch.int64).to(torch.int32).view(torch.float32)
    near = torch.tensor([65504.0, 65519.99, 65520.0, 65536.0, 2.0 ** -14, 2.0 ** -14 * (1 - 2 ** -12), 2.0 ** -24,
                         2.0 ** -25, 2.0 ** -25 * (1 + 2 ** -20), 2.0 ** -26, 1e-40, 0.0, -0.0, float("inf"),
                         -float("inf"), 3.4e38, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8])
    scaled = torch.randn(50000, generator=g) * torch.pow(2.0, torch.randint(-30, 20, (50000,), generator=g).float())
    f = torch.cat([rnd, near, -near, scaled])
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    c = H.Case("convert", {}, {"f": (f, 0), "bits": (bits, 0)}, name="convert")
    res = run(driver, [c], tmp_path)
    expect_ok(res, [c])
    nan = torch.isnan(f)
    for out, dt in (("f2h", torch.float16), ("f2b", torch.bfloat16)):
        got = c.out(out, torch.int16, f.shape)
        want = f.to(dt).view(torch.int16)
        assert torch.equal(got[~nan], want[~nan]), f"{out}: {int((got[~nan] != want[~nan]).sum())} mismatches"
        assert bool(torch.isnan(got.view(dt)[nan]).all()), f"{out}: a NaN did not stay NaN"
    for out, dt in (("h2f", torch.float16), ("b2f", torch.bfloat16)):
        got = c.out(out, torch.float32, (65536,))
        want = bits.view(dt).float()
        wn = torch.isnan(want)
        assert torch.equal(got[~wn].view(torch.int32), want[~wn].view(torch.int32)), out
        assert bool(torch.isnan(got[wn]).all()), out


# ------------------------------------------------------------------------------------------ random cases (opt-in)
FUZZ = int(os.environ.get("SPARSEKIT_EMU_FUZZ", "0") or 0)


def random_mm_case(rnd, split_knobs=False):
    dt = rnd.choice(DTYPES)
    g = gen(rnd.randrange(10 ** 6))
    M = rnd.choice([1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40])
    N = rnd.randint(1, 45)
    kind = rnd.choice(["s24", "bm", "bmc", "bsr", "csr", "w8", "w8l"] + (["wo"] if dt != torch.float32 else []))
    if kind == "w8l":  # the one-call W8A8 linear (x quantized inside), dense or 2:4
        sparse = rnd.random() < 0.5
        K = rnd.choice([1024, 2048, 4096, 9000] if split_knobs else [0, 4, 16, 52, 100, 256, 640, 1028])
        K = K if sparse else K + rnd.choice([0, 0, 1, 3])
        rows = {rnd.randrange(M): rnd.choice(["nan", "inf", "zero", "ties", "tiny"])} if rnd.random() < 0.4 else None
        return w8a8_linear_case(f"w8a8_linear {'2:4' if sparse else 'dense'} {dt} M={M} N={N} K={K}", dt, M, N, K,
                                g, sparse=sparse, bias=rnd.random() < 0.5, xpad=rnd.choice([0, 0, 3]),
                                xoff=rnd.choice([0, 0, 1]), rows=rows)
    if kind == "w8":  # W8A8, dense or 2:4, output in dt
        sparse = rnd.random() < 0.5
        K = rnd.choice([1024, 2048, 4096] if split_knobs else [0, 4, 16, 52, 100, 256, 640, 1028])
        K = K if sparse else K + rnd.choice([0, 0, 1, 3])
        return w8a8_case(f"w8a8 {'2:4' if sparse else 'dense'} {dt} M={M} N={N} K={K}", dt, M, N, K, g,
                         sparse=sparse, bias=rnd.random() < 0.5, woff=rnd.choice([0, 0, 0, 8, 1]),
                         xpad=rnd.choice([0, 0, 3]), xoff=rnd.choice([0, 0, 1]))
    if kind == "wo":
        K = rnd.choice([1024, 2000, 4096] if split_knobs else [0, 1, 16, 48, 100, 256, 640, 1000, 2048])
        return int8_wo_case(f"int8_wo {dt} M={M} N={N} K={K}", dt, M, N, K, g, bias=rnd.random() < 0.5,
                            woff=rnd.choice([0, 0, 0, 1, 8]), xpad=rnd.choice([0, 0, 3]), xoff=rnd.choice([0, 0, 1]))
    if kind == "s24":
        K = rnd.choice([512, 1024, 2048, 4096] if split_knobs else [0, 4, 8, 12, 128, 132, 256, 384, 640, 1024, 2048])
        return s24_case(f"s24 {dt} M={M} N={N} K={K}", dt, M, N, K, g, keep=rnd.choice([0, 1, 2, 2, 2]),
                        bias=rnd.random() < 0.5, empty_rows=(0,) if rnd.random() < 0.3 else (),
                        voff=rnd.choice([0, 0, 0, 1]), moff=rnd.choice([0, 0, 1]), xpad=rnd.choice([0, 0, 3]),
                        xoff=rnd.choice([0, 0, 1]))
    if kind in ("bm", "bmc"):  # bmc: with the column list (the column-list kernel)
        K = rnd.randint(300, 5000) if split_knobs else rnd.randint(0, 3000)
        c = bitmap_case(f"bitmap {dt} M={M} N={N} K={K}", dt, M, N, K, g, density=rnd.choice([0, .05, .3, .5, .9, 1]),
                        bias=rnd.random() < 0.5, voff=rnd.choice([0, 0, 1, 3]), xpad=rnd.choice([0, 0, 3]),
                        xoff=rnd.choice([0, 1]))
        return with_columns([c])[0] if kind == "bmc" else c
    if kind == "bsr":
        R, C = rnd.choice([(1, 1), (2, 2), (3, 7), (16, 16), (32, 1), (1, 33), (5, 4), (16, 48), (32, 32), (16, 64)])
        nr = rnd.randint(1, 6)
        nc = rnd.randint(0, 6) if rnd.random() < 0.7 else rnd.randint(20, 160)  # long rows: K split (tensor cores)
        shuffled = tuple(i for i in range(nr) if rnd.random() < 0.3)  # block columns not ascending
        return bsr_case(f"bsr {dt} M={M} {R}x{C} K={C * nc} shuffled {shuffled}", dt, M, R * nr, C * nc, R, C, g,
                        density=rnd.choice([0, .2, .6, 1]), bias=rnd.random() < 0.5, voff=rnd.choice([0, 1]),
                        xpad=rnd.choice([0, 2]), xoff=rnd.choice([0, 1]), shuffled_rows=shuffled)
    return csr_case(f"csr {dt} M={M}", dt, M, N, rnd.randint(1, 300), g, density=rnd.choice([0, .1, .5, 1]),
                    bias=rnd.random() < 0.5, voff=rnd.choice([0, 1]), xpad=rnd.choice([0, 2]), xoff=rnd.choice([0, 1]))


@pytest.mark.skipif(FUZZ <= 0, reason="random cases: set SPARSEKIT_EMU_FUZZ=<cases per device> (SPARSEKIT_EMU_SEED)")
@pytest.mark.parametrize("knobs", [{}, SPLIT_24, SPLIT_BITMAP, {"EMU_SMS": 132},
                                   {"EMU_SMEM_PER_SM": 60000, "EMU_SMEM_OPTIN": 60000, "EMU_SCHEDULE": "fair"},
                                   {"SPARSEKIT_CUDA_DECODE": "v3", "EMU_SMEM_PER_SM": 80000, "EMU_SMEM_OPTIN": 80000}],
                         ids=["default", "split 2:4", "split bitmap", "132 SMs", "60 KB fair", "v3 80 KB"])
def test_random_cases(driver, tmp_path, knobs):
    rnd = random.Random(f"{os.environ.get('SPARSEKIT_EMU_SEED', '0')} {sorted(knobs.items())}")
    cases = [random_mm_case(rnd, split_knobs=bool(knobs.get("EMU_SMEM_PER_SM", 0) in (20000, 40000)))
             for _ in range(FUZZ)]
    res = run(driver, cases, tmp_path, knobs)
    check_mm_cases(res, [c for c in cases if c.op not in ("w8a8_mm", "w8a8_linear")])
    check_w8a8_cases(res, [c for c in cases if c.op == "w8a8_mm"])
    check_w8a8_linear_cases(res, [c for c in cases if c.op == "w8a8_linear"])
