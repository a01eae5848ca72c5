"""bench/gpu_floor.py, the performance model the GPU benchmarks print beside each measured time: its
numbers from first principles, and the bench scripts' mapping of their cases onto it."""
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import gpu_floor  # noqa: E402


def test_dense_floor_is_bytes_at_the_copy_rate():
    f = gpu_floor.floor("dense", 14336, 4096, 1)
    nbytes = 14336 * 4096 * 2 + (4096 + 14336) * 2
    assert f["bytes"] == nbytes and f["bound"] == "bytes"
    assert f["floor_us"] == pytest.approx(nbytes / 4.3e12 * 1e6)  # 27.3 us; 30.3 measured on the H200
    assert f["cap"] == 1.0 and f["goal"] is None


def test_large_m_is_flop_bound_and_2_4_doubles_the_rate():
    d = gpu_floor.floor("dense", 4096, 4096, 8192)
    s = gpu_floor.floor("2:4", 4096, 4096, 8192)
    assert d["bound"] == s["bound"] == "flops"
    assert d["floor_us"] == pytest.approx(2 * 8192 * 4096 * 4096 / 790e12 * 1e6)
    assert s["cap"] == pytest.approx(2.0)


# bitmap 90 %: values + bitmap, 2.6 bits a weight (word_offsets, a bit more, is read once a row: 4.44x if it
# were read per word)
@pytest.mark.parametrize("fmt,cap", [("2:4", 1.78), ("bitmap90", 6.13), ("bsr64_90", 9.97), ("int8-wo", 2.0),
                                     ("2:4+int8", 3.19)])
def test_byte_caps_at_m1(fmt, cap):
    assert gpu_floor.floor(fmt, 14336, 4096, 1)["cap"] == pytest.approx(cap, abs=0.01)


def test_goals_by_m_bucket_and_what_they_need():
    assert [gpu_floor.goal("2:4", m) for m in (1, 7, 333, 2048)] == [1.5, 1.3, 1.1, 1.3]
    assert gpu_floor.goal("bitmap70", 48) is None
    f = gpu_floor.floor("2:4", 14336, 4096, 1)
    # 1.5x over a dense kernel at 90 % of its floor needs 1.5 * 15.37 / (27.32 / 0.9) of the 2:4 floor
    assert f["needed_of_floor"] == pytest.approx(1.5 * f["floor_us"] / (f["dense_floor_us"] / 0.9))


def test_named_formats_equal_their_parameters():
    a = gpu_floor.floor("bsr64_90", 4096, 4096, 16)
    b = gpu_floor.floor("bsr", 4096, 4096, 16, density=0.1, block=64)
    assert a["bytes"] == b["bytes"] and a["floor_us"] == b["floor_us"]
    with pytest.raises(ValueError, match="unknown format"):
        gpu_floor.floor("coo", 8, 8, 1)


def test_bench_scripts_map_their_cases_onto_the_model(monkeypatch):
    import cuda_gpu
    import triton_gpu

    assert cuda_gpu.model_args("bsr 64x64 d=0.1") == ("bsr", {"density": 0.1, "block": 64})
    assert cuda_gpu.model_args("bitmap d=0.3") == ("bitmap", {"density": 0.3})
    assert cuda_gpu.model_args("2:4+int8") == ("2:4+int8", {})
    assert triton_gpu.model_args("bitmap", {"sparsity": 0.7}) == ("bitmap", {"density": pytest.approx(0.3)})
    assert triton_gpu.model_args("w8a16", {}) == ("int8-wo", {})
    assert triton_gpu.model_args("w8a16_norefill", {}) == ("int8-wo", {})
    assert triton_gpu.model_args("w8a8_linear_norefill", {}) == ("int8", {})
    assert triton_gpu.model_args("w8a16_cuda_16", {}) == ("int8-wo", {})
    assert triton_gpu.model_args("w8a8_cuda", {}) == ("int8", {})
    assert set(triton_gpu.WIDE_AB) <= set(triton_gpu.KERNELS)
    assert triton_gpu.model_args("bitmap_tile", {"sparsity": 0.5}) == ("bitmap", {"density": pytest.approx(0.5)})
    rec = gpu_floor.annotate({}, "2:4", 14336, 4096, 1, 2, 0.0205)  # 20.5 us measured
    assert rec["of_floor"] == pytest.approx(rec["floor_us"] / 20.5)


def test_triton_gpu_holds_bitmap_mm_to_each_design(tmp_path):
    """bench/triton_gpu.py's bitmap_tile / bitmap_expand / bitmap_slices (gpu_all.sh's bitmap_large_m step): a dry
    run under the interpreter checks each design's result against the reference; EXPAND only where the candidate
    list has it (M >= 256), no design below M = 16."""
    import subprocess

    env = dict(os.environ, TRITON_INTERPRET="1")
    p = subprocess.run([sys.executable, str(BENCH / "triton_gpu.py"), "--check-only", "--device", "cpu",
                        "--kernels", "dense,bitmap_tile,bitmap_expand,bitmap_slices", "--shapes", "40x200",
                        "--m", "3,17,300", "--bitmap-sparsity", "0.7", "--dtype", "bf16", "--out", str(tmp_path),
                        "--name", "designs"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads(ln) for ln in (tmp_path / "designs.jsonl").read_text().splitlines()]
    got = {(r["kernel"], r["M"]) for r in recs}
    assert got == {("dense", 3), ("dense", 17), ("dense", 300), ("bitmap_tile", 17), ("bitmap_slices", 17),
                   ("bitmap_tile", 300), ("bitmap_expand", 300), ("bitmap_slices", 300)}, got
    assert all(r["ok"] for r in recs), [r for r in recs if not r["ok"]]


def test_cli_writes_the_table(tmp_path):
    md = tmp_path / "floor.md"
    assert gpu_floor.main(["--shapes", "4096x4096", "--m", "1,2048", "--md", str(md)]) == 0
    text = md.read_text()
    assert "| 4096x4096 | 1 | 2:4 |" in text and "Not a measurement" in text


def test_decode_inflight_model_reads_the_committed_resources():
    """bench/decode_inflight.py (the bytes-in-flight model of csrc/cuda/README.md) finds every kernel it
    needs in bench/results/gpu_static_cuda.jsonl and says what the README's table says: v1 short of the
    copy rate's need at 90 %, v2 above it, 2:4 above it."""
    import decode_inflight as D

    regs = D.regs_table()
    need_900 = D.RATE * D.LAT[1] / D.SMS
    for N, K in D.SHAPES:
        for M in (1, 4, 16):
            for dens in (0.5, 0.3, 0.1):
                a, b = D.bitmap_row(N, K, M, dens, 1, regs), D.bitmap_row(N, K, M, dens, 2, regs)
                assert a is not None and b is not None, (N, K, M, dens)
                assert b["per_sm"] > a["per_sm"]
                assert b["warps"] == 16 and b["regs"] <= 128
            assert D.s24_row(N, K, M, regs)["per_sm"] > need_900
    assert D.bitmap_row(14336, 4096, 1, 0.1, 1, regs)["per_sm"] < need_900 / 2
    assert D.bitmap_row(14336, 4096, 1, 0.1, 2, regs)["per_sm"] > need_900


def test_cuda_gpu_fastest_per_cell_names_the_winner_and_the_routed_one():
    import cuda_gpu

    base = dict(shape="14336x4096", M=7)
    recs = [dict(base, impl="dense F.linear (cuBLAS)", fmt="dense", ms=0.03, graph_ms=0.03, speedup=1.0),
            dict(base, impl="sparsekit sparse24_mm (CUDA)", fmt="2:4", ms=0.05, graph_ms=0.025, speedup=0.6,
                 speedup_graph=1.2),
            dict(base, impl="sparsekit sparse24_mm decode v3", fmt="2:4", ms=0.05, graph_ms=0.02, speedup=0.6,
                 speedup_graph=1.5),
            dict(base, impl="sparsekit cslt_mm (cuSPARSELt, cached plans)", fmt="2:4", status="unsupported: x"),
            dict(base, impl="sparsekit bitmap_mm (compiled)", fmt="bitmap d=0.1", ms=0.02, graph_ms=None,
                 speedup=1.5, speedup_graph=None)]
    rows = cuda_gpu.fastest_per_cell(recs)
    assert rows == [["2:4", "14336x4096", 7, "sparsekit sparse24_mm decode v3", "1.50", "sparsekit sparse24_mm (CUDA)",
                     "1.20", "0.80"],
                    ["bitmap d=0.1", "14336x4096", 7, "sparsekit bitmap_mm (compiled)", "1.50",
                     "sparsekit bitmap_mm (compiled)", "1.50", "1.00"]]


def test_refill_ab_pairs_each_cell_timed_both_ways(tmp_path):
    """bench/refill_ab.py (what bench/gpu_all.sh sums up of the refill A/B): a 2:4 design from
    bench/cuda_gpu.py --refill-ab and the int8 kernels of bench/triton_gpu.py, each against its no-refill twin;
    graph times where both have one; cells timed one way only, wrong or cut-short records left out."""
    import refill_ab

    cuda = [dict(impl="sparsekit sparse24_mm decode v1", N=14336, K=4096, M=1, ms=0.05, graph_ms=0.020),
            dict(impl="sparsekit sparse24_mm decode v1 no refill", N=14336, K=4096, M=1, ms=0.05, graph_ms=0.025),
            dict(impl="sparsekit sparse24_mm decode v2", N=14336, K=4096, M=16, ms=0.040, graph_ms=None),
            dict(impl="sparsekit sparse24_mm decode v2 no refill", N=14336, K=4096, M=16, ms=0.036, graph_ms=0.03),
            dict(impl="sparsekit sparse24_mm decode v3", N=14336, K=4096, M=3, ms=0.04, graph_ms=0.03),  # one way
            dict(impl="sparsekit bitmap_mm (v2)", N=14336, K=4096, M=1, ms=0.04, graph_ms=0.03)]
    int8 = [dict(kernel="w8a16", N=4096, K=14336, M=3, ok=True, ms=0.03, graph_ms=0.018),
            dict(kernel="w8a16_norefill", N=4096, K=14336, M=3, ok=True, ms=0.04, graph_ms=0.018),
            dict(kernel="w8a8_linear", N=4096, K=14336, M=3, ok=True, ms=0.03, graph_ms=0.02),
            dict(kernel="w8a8_linear_norefill", N=4096, K=14336, M=3, ok=False, ms=None, graph_ms=None),  # wrong
            dict(kernel="dense", N=4096, K=14336, M=3, ok=True, ms=0.05, graph_ms=0.04)]
    rows = refill_ab.pairs(cuda, int8)
    assert [(r[0], r[3], r[6]) for r in rows] == [("sparse24_mm decode v1", 1, "graph"),
                                                  ("sparse24_mm decode v2", 16, "eager"), ("w8a16", 3, "graph")]
    assert rows[0][4:6] == (0.020, 0.025) and rows[1][4:6] == (0.040, 0.036)
    assert refill_ab.summary(rows) == "3 cells, the refill faster in 1; without / with: median 1.00, min 0.90, max 1.25"
    assert refill_ab.summary([]).startswith("no pairs")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in cuda) + "\n{\"impl\": \"cut")
    md = tmp_path / "ab.md"
    assert refill_ab.main(["--cuda", str(tmp_path / "c.jsonl"), "--int8", str(tmp_path / "none.jsonl"),
                           "--md", str(md)]) == 0
    assert "| sparse24_mm decode v1 | 14336x4096 | 1 | 20.0 | 25.0 | 1.25 | graph |" in md.read_text()


def test_routes_reads_the_measured_routes_of_a_run(tmp_path, monkeypatch):
    """bench/routes.py (what bench/gpu_all.sh records of the measured routes): the route entries of the autotune
    cache that the 2:4 formats and the int8 ops write (through the same autotune.select), one row per shape, one
    column per M bucket; Triton configurations and foreign files left out."""
    import routes

    from sparsekit.triton import autotune

    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path))
    autotune.clear()
    for bucket, path in ((1, "own"), (4, "own"), (16, "cslt")):
        autotune.select("sparse24_route", (14336, 4096, "bf16", bucket), "Fake_GPU", [{"path": path}], lambda c: 1.0)
    autotune.select("sparse24_int8_route", (4096, 14336, "fp16", 1), "Fake_GPU", [{"path": "own"}], lambda c: 1.0)
    autotune.select("int8_weight_only_mm_route", (4096, 4096, "bf16", 32), "Fake_GPU", [{"path": "triton"}],
                    lambda c: 1.0)
    autotune.select("bitmap_columns_route", (4096, 4096, "bf16", 4), "Fake_GPU", [{"path": "compiled"}], lambda c: 1.0)
    autotune.select("bsr_mm", (4096, 4096, 16), "Fake_GPU", [{"BLOCK_M": 16}], lambda c: 1.0)
    (tmp_path / "junk.json").write_text("{not json")
    autotune.clear()
    got = routes.read_routes(tmp_path)
    assert got == {("sparse24_route", 14336, 4096, "bf16"): {1: "own", 4: "own", 16: "cslt"},
                   ("sparse24_int8_route", 4096, 14336, "fp16"): {1: "own"},
                   ("int8_weight_only_mm_route", 4096, 4096, "bf16"): {32: "triton"},
                   ("bitmap_columns_route", 4096, 4096, "bf16"): {4: "compiled"}}
    md = routes.markdown(got)
    assert "| 2:4: own kernel / cuSPARSELt | 14336x4096 | bf16 | own | own | cslt |  |" in md
    assert "| 2:4+int8: compiled W8A8 kernel / cuSPARSELt | 4096x14336 | fp16 | own |  |  |  |" in md
    assert "| int8 weight-only: compiled kernel / Triton | 4096x4096 | bf16 |  |  |  | triton |" in md
    assert ("| bitmap layer with a column list: column-list kernel (compiled) / the op (triton) | 4096x4096 | bf16 |  "
            "| compiled |  |  |") in md
    assert routes.summary(got) == ("6 measured (shape, M bucket) routes over 4 shapes: the decode kernel in 4, "
                                   "cuSPARSELt, Triton or the op in 2; the decode kernel's largest bucket per shape: "
                                   "0-4")
    assert routes.summary({}) == "no measured routes in the cache"
    out = tmp_path / "routes.md"
    assert routes.main([str(tmp_path), "--md", str(out)]) == 0 and "cuSPARSELt" in out.read_text()
    assert routes.main([str(tmp_path / "missing")]) == 0


def test_bitmap_banks_model():
    """bench/bitmap_banks.py (the shared-memory model of the bitmap walk, csrc/cuda/README.md): the walk's x loads
    are one wavefront a round at M = 1 and one or two at M = 2 and 4 (WalkTile puts lane l's word in bank l), and
    the walk takes fewer wavefronts per tile than the list at every density and M it counts; a load of 32 lanes at
    one bank's words is 32."""
    import bitmap_banks as B
    import numpy as np

    assert B.wavefronts([4 * 32 * i for i in range(32)]) == 32 and B.wavefronts([4 * i for i in range(32)]) == 1
    assert B.wavefronts([0, 2]) == 1  # two halves of one word: one wavefront
    rng = np.random.default_rng(1)
    for d, w in ((0.1, 2), (0.3, 2), (0.5, 1)):
        rounds, val, x = np.array([B.walk(rng, d, w) for _ in range(6)]).sum(0)
        stores, consumer = np.array([B.listed(rng, d, w) for _ in range(6)]).sum(0)
        assert x == rounds and val >= rounds
        assert val + x < stores + consumer, (d, val + x, stores + consumer)
    assert B.wavefronts([8 * i for i in range(32)], 8) == 2 and B.wavefronts([0], 8) == 1  # 256 bytes: two
    assert B.wavefronts([256 * i for i in range(16)], 8) == 16  # 16 lanes on banks 0-1
    for m in (2, 4):  # x's 8-byte loads: one or two wavefronts a round, never more; the walk under the list
        for d, w in ((0.1, 2), (0.3, 2), (0.5, 1)):
            rounds, val, x = np.array([B.walk(rng, d, w, m) for _ in range(4)]).sum(0)
            stores, consumer = np.array([B.listed(rng, d, w, m) for _ in range(4)]).sum(0)
            assert rounds <= x <= 2 * rounds and val >= rounds
            assert val + x < stores + consumer, (m, d, val + x, stores + consumer)
    assert B.main(["--density", "0.3", "--tiles", "2"]) == 0
    assert B.main(["--density", "0.3", "--m", "2,4", "--tiles", "1"]) == 0
